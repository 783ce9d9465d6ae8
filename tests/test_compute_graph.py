"""The replayed compute graph (omni_place/compute_graph.py) and the fitted compute model against the
engine's own buffer lines: the real H200 loads of benchmarks/results/speed_truth (headers written
by the same deterministic generator) and the committed dry-run sweep's held-out models."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.compute_fit import RESULTS, _largest, planner_report, record_ubatch
from benchmarks.speed_models import write_speed_model
from omni_place.compute import batch_tokens, compute_buffer_estimate
from omni_place.compute_alloc import CUDA_ALIGNMENT, Tensor, replay
from omni_place import compute_replay
from omni_place.compute_graph import TRACE_CHECKED, Layout, Offload
from omni_place.compute_replay import device_and_host_peaks, device_peak, layer_signatures, replay_key, split_peaks
from omni_place.errors import UnsupportedModelError
from omni_place.model import ModelProfile, Role, load_model
from omni_place.plan import evaluate
from omni_place.units import MiB
from tests.arch_models import write_model

TARGET_REL, TARGET_MIB = 0.03, 32 * MiB  # issue 14: within max(3 %, 32 MiB), never below by more than 32 MiB


def within(predicted: float, engine: float) -> bool:
    return abs(predicted - engine) <= max(TARGET_REL * engine, TARGET_MIB)


def test_the_allocator_reuses_parents_and_freed_blocks() -> None:
    """ggml-alloc's rules on a hand graph: an in-place op takes over its only parent, a freed
    block is reused by the best-fitting later tensor, a graph output is never freed."""
    a = Tensor(1000)
    b = Tensor(1000, [a], inplace=True)  # takes a's block
    c = Tensor(4000, [b])  # b is freed after c
    d = Tensor(1000, [c], output=True)  # fits b's freed block
    e = Tensor(256, [d, c])  # c is still alive until here
    assert replay([a, b, c, d, e], CUDA_ALIGNMENT) == 1024 + 4096 + 256
    x = Tensor(1000)
    y = Tensor(1000, [x, x])  # two uses of x: not in place
    assert replay([x, y], CUDA_ALIGNMENT) == 2048


@pytest.fixture(scope="module")
def speed_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("speed_models")
    for name in ("dense11", "moe15", "mla16"):
        write_speed_model(name, folder, header_only=True)
    return folder


def _engine_compute(model: str, config: str, rig: str) -> float:
    rows = json.loads((RESULTS / "speed_truth" / "vram.json").read_text())
    return next(r["engine_mib"]["compute"] * MiB for r in rows
                if (r["rig"], r["model"], r["config"]) == (rig, model, config))


# (model, config, rig) of benchmarks/results/speed_truth and what the device ran:
# -ngl 99 (every layer and the head), -ngl 0 (all op-offloaded), -ot exps=CPU
H200_LOADS = [("dense11", "omni_place", "h200-full", "all"), ("dense11", "ngl0", "h200-a", "none"),
              ("moe15", "omni_place", "h200-full", "all"), ("moe15", "ngl0", "h200-a", "none"),
              ("moe15", "ot-exps", "h200-a", "exps")]


@pytest.mark.parametrize(("model", "config", "rig", "role"), H200_LOADS, ids=[f"{m}-{c}" for m, c, _, _ in H200_LOADS])
def test_replayed_graph_matches_the_h200_buffer_lines(speed_models: Path, model: str, config: str, rig: str,
                                                      role: str) -> None:
    """llama-bench -v on one H200 (``-p 512 -ub 512 -fa 1``: the reserve holds 512 tokens over a
    768-cell cache) against the replayed graph, not fitted to them."""
    profile = load_model(speed_models / f"{model}.hdr.gguf")
    n_layer = profile.hparams.n_layer
    offload = {"all": Offload(), "none": Offload(frozenset(range(n_layer)), cpu_experts=True, cpu_output=True),
               "exps": Offload(cpu_experts=True)}[role]
    kv = max(profile.kv_layer_bytes(544, "f16", "f16", n_seq=1, n_ubatch=512, flash_attn=True))
    peak = device_peak(profile, n_tokens=512, n_kv=profile.kv_cells(544), n_kv_swa=profile.kv_cells(544),
                       flash_attn=True, kv_quantized=False, kv_layer_bytes=kv, offload=offload)
    engine = _engine_compute(model, config, rig)
    assert within(peak, engine), (peak / MiB, engine / MiB)


# H200 dry runs with ggml-alloc.c's AT_PRINTF on (the engine's allocations in its CUDA0 buffer, in
# order) and its `compute buffer size` line, extracted from the multi-MB logs: the speed models
# in every kind of op offload, f16 and q8_0 caches, ubatch 512 and 4096, FA on and off; random
# gemma3, gpt-oss, glm4moe and deepseek32 shapes (DSA's indexer and FA CUDA cannot run on the host)
TRACES = json.loads((Path(__file__).parent / "data" / "compute_traces.json").read_text())
RUN_IDS = [" ".join((r.get("model") or r["arch"], r["args"], *(f"{k}={r[k]}" for k in ("n_ubatch", "flash_attn",
                                                                                       "kv_type") if k in r)))
           for r in TRACES["runs"]]


def _offload(fields: dict[str, Any]) -> Offload:
    def layers(key: str) -> frozenset[int]:
        return frozenset(range(*fields.get(key, (0, 0))))

    return Offload(cpu_layers=layers("cpu_layers"), cpu_experts=fields.get("cpu_experts", False),
                   cpu_output=fields.get("cpu_output", False), cpu_expert_layers=layers("cpu_expert_layers"))


def _run_model(run: dict[str, Any], speed_models: Path, tmp_path: Path) -> Path:
    """The traced run's model: a speed model, or the random shape write_model gives."""
    if "model" in run:
        return speed_models / f"{run['model']}.hdr.gguf"
    return write_model(tmp_path / "m.gguf", run["arch"], header_only=True, tokenizer="spm", **run["shape"])


def _run_context(run: dict[str, Any]) -> tuple[int, int, bool, str]:
    """(n_ctx, n_ubatch, flash_attn, cache type) of a traced run: its own, else the file's."""
    return (run.get("n_ctx", TRACES["n_ctx"]), run.get("n_ubatch", TRACES["n_ubatch"]),
            run.get("flash_attn", TRACES["flash_attn"]), run.get("kv_type", "f16"))


@pytest.mark.parametrize("run", TRACES["runs"], ids=RUN_IDS)
def test_replay_makes_the_engines_allocations(speed_models: Path, tmp_path: Path, run: dict[str, Any]) -> None:
    """The replay allocates what the engine allocates, where it does (size and offset of each of
    the first allocations: graph inputs copied by the split that first reads them, weights and
    host-held cache copied per op (a quantized one padded), no view taken over in place, what CUDA
    cannot run left on the host), and reaches its buffer size; so does the host's buffer beside
    it from the same graph (the `CUDA_Host` line: graph inputs first, then the CPU's split with
    the copies of the device tensors it reads: stores into a host-held cache, the DSA indexer,
    flash attention CUDA cannot run)."""
    profile = load_model(_run_model(run, speed_models, tmp_path))
    n_ctx, n_ubatch, fa, kv_type = _run_context(run)
    kv = max(profile.kv_layer_bytes(n_ctx, kv_type, kv_type, n_seq=1, n_ubatch=n_ubatch, flash_attn=fa))
    n_kv = profile.kv_cells(n_ctx)
    n_kv_swa = profile.swa_kv_cells(n_kv, n_ubatch, 1) if any(profile.hparams.is_swa) else n_kv
    trace: list[tuple[int, int]] = []
    host_trace: list[tuple[int, int]] = []
    peak, host = device_and_host_peaks(profile, n_tokens=batch_tokens(n_ctx, n_ubatch), n_kv=n_kv, n_kv_swa=n_kv_swa,
                            flash_attn=fa, kv_quantized=kv_type != "f16", kv_layer_bytes=kv,
                            offload=_offload(run["offload"]), trace=trace, host_trace=host_trace)
    assert [list(a) for a in trace[:len(run["first_allocations"])]] == run["first_allocations"]
    assert peak == run["high_water"]
    assert round(peak / MiB, 2) == run["engine_mib"]
    engine_host = run["host"]
    assert [list(a) for a in host_trace[:len(engine_host["first_allocations"])]] == engine_host["first_allocations"]
    assert host == engine_host["high_water"]
    assert round(host / MiB, 2) == engine_host["engine_mib"]


@pytest.mark.parametrize("run", TRACES["cpu_runs"],
                         ids=[f"{r['arch']} fa{int(r['flash_attn'])} {r['kv_type']} ub{r['n_ubatch']}"
                              for r in TRACES["cpu_runs"]])
def test_cpu_replay_makes_the_engines_allocations(tmp_path: Path, run: dict[str, Any]) -> None:
    """The CPU backend running the whole graph alone (no accelerator): the replay allocates what
    the engine allocates, where it does (graph inputs first, the transposed V cache's per-element
    indices without flash attention, a quantized cache's Hadamard rotations, the DSA indexer and
    mask, no CUDA extras), and reaches its buffer size."""
    model = load_model(write_model(tmp_path / "m.gguf", run["arch"], header_only=True, tokenizer="spm",
                                   **run["shape"]))
    ctx, ub, fa, kv = run["n_ctx"], run["n_ubatch"], run["flash_attn"], run["kv_type"]
    n_kv = model.kv_cells(ctx)
    n_kv_swa = model.swa_kv_cells(n_kv, ub, 1) if any(model.hparams.is_swa) else n_kv
    kw = dict(n_tokens=min(n_kv, ub), n_kv=n_kv, n_kv_swa=n_kv_swa, flash_attn=fa, kv_quantized=kv != "f16",
              kv_layer_bytes=max(model.kv_layer_bytes(ctx, kv, kv, n_seq=1, n_ubatch=ub, flash_attn=fa)),
              backend="cpu")
    trace: list[tuple[int, int]] = []
    peak = device_peak(model, trace=trace, **kw)  # type: ignore[arg-type]
    assert [list(a) for a in trace[:len(run["first_allocations"])]] == run["first_allocations"]
    assert peak == run["high_water"]
    assert round(peak / MiB, 2) == run["engine_mib"]


def _split_layout(run: dict[str, Any], n_layer: int) -> Layout:
    """A traced run's compute_graph.Layout, from its [value, first layer, stop] runs."""
    lay = run["layout"]
    layers, experts = [0] * n_layer, [frozenset[str]()] * n_layer
    for backend, start, stop in lay["layers"]:
        layers[start:stop] = [backend] * (stop - start)
    for kinds, start, stop in lay["cpu_experts"]:
        experts[start:stop] = [frozenset(kinds)] * (stop - start)
    return Layout(tuple(lay["backends"]), tuple(layers), tuple(experts), lay["output"], lay["offload"])


@pytest.mark.parametrize("run", TRACES["split_runs"],
                         ids=[f"{r['arch']} {r['args']} ub{r['n_ubatch']} fa{int(r['flash_attn'])} {r['kv_type']}"
                              for r in TRACES["split_runs"]])
def test_split_replay_makes_the_engines_allocations(tmp_path: Path, run: dict[str, Any]) -> None:
    """A layer split over two or three RPC servers beside the CPU (some layers on the CPU, routed
    experts or some of their kinds on the CPU, the output head on the CPU or the last device,
    uneven -ts): one graph scheduled onto every backend gives each buffer what the engine
    allocates, where it does (the splits' input copies and their dependencies, the ops the CPU
    runs between devices, graph inputs on the CPU) and its size, the CPU's included."""
    model = load_model(write_model(tmp_path / "m.gguf", run["arch"], header_only=True, tokenizer="spm",
                                   **run["shape"]))
    ctx, ub, fa, kv = run["n_ctx"], run["n_ubatch"], run["flash_attn"], run["kv_type"]
    n_kv = model.kv_cells(ctx)
    n_kv_swa = model.swa_kv_cells(n_kv, ub, 1) if any(model.hparams.is_swa) else n_kv
    layout = _split_layout(run, model.hparams.n_layer)
    traces: list[list[tuple[int, int]]] = [[] for _ in run["buffers"]]
    peaks = split_peaks(model, n_tokens=batch_tokens(ctx, ub), n_kv=n_kv, n_kv_swa=n_kv_swa, flash_attn=fa,
                        kv_quantized=kv != "f16", layout=layout, traces=traces,
                        kv_layer_bytes=max(model.kv_layer_bytes(ctx, kv, kv, n_seq=1, n_ubatch=ub, flash_attn=fa)))
    assert len(peaks) == len(run["buffers"]) == len(layout.backends) + 1
    for buffer, trace, peak in zip(run["buffers"], traces, peaks):
        assert [list(a) for a in trace[:len(buffer["first_allocations"])]] == buffer["first_allocations"]
        assert peak == buffer["high_water"]
        assert round(peak / MiB, 2) == buffer["engine_mib"]


def test_run_cap_keeps_the_peak_of_a_deep_dsa_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each DSA layer holds a leaf of its own from the graph's start until its mask is built: with
    the middle layers left out (RUN_CAP, a CUDA device's replays) their leaves are still
    allocated and freed before the next replayed layer, so the buffer is the one every layer
    replayed gives."""
    model = load_model(write_model(tmp_path / "d.gguf", "deepseek32", header_only=True, tokenizer="spm", n_layer=12,
                                   n_embd=2048, n_head=16, n_head_kv=16, n_expert=32, n_expert_used=4, n_ff_exp=768,
                                   kv_lora_rank=512, q_lora_rank=768, n_rot=64))
    for fa in (True, False):
        kw = dict(n_tokens=512, n_kv=model.kv_cells(8192), n_kv_swa=model.kv_cells(8192), flash_attn=fa,
                  kv_quantized=False,
                  kv_layer_bytes=max(model.kv_layer_bytes(8192, "f16", "f16", n_seq=1, n_ubatch=512, flash_attn=fa)))
        capped = device_peak(model, **kw)  # type: ignore[arg-type]
        with monkeypatch.context() as m:
            m.setattr(compute_replay, "RUN_CAP", 1000)
            assert device_peak(model, **kw) == capped  # type: ignore[arg-type]


def test_a_cut_replay_of_two_gpus_equals_the_whole_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where CUDA runs every layer, repeats of a pattern of layer kinds beyond RUN_CAP are left
    out (--fit's partial layers alternate: a pattern of three layers here) and every buffer of
    a two-GPU split is the one every layer replayed gives, op offload on or off; an RPC server's
    layers are all replayed."""
    model = load_model(write_model(tmp_path / "q.gguf", "qwen3moe", header_only=True, tokenizer="spm", n_layer=24,
                                   n_embd=2048, n_head=16, n_head_kv=4, n_expert=64, n_expert_used=4, n_ff_exp=768,
                                   n_vocab=32000, head_dim=128))
    n = model.hparams.n_layer
    pattern = (frozenset(), frozenset({"down"}), frozenset({"gate", "up", "down"}))
    experts = tuple(pattern[il % 3] for il in range(n))
    kv = max(model.kv_layer_bytes(8192, "f16", "f16", n_seq=1, n_ubatch=512, flash_attn=True))
    kw: dict[str, Any] = dict(n_tokens=512, n_kv=model.kv_cells(8192), n_kv_swa=model.kv_cells(8192), flash_attn=True,
                              kv_quantized=False, kv_layer_bytes=kv)
    for offload in (True, False):
        layout = Layout(("cuda", "cuda"), (0,) * 10 + (1,) * (n - 10), experts, 1, offload)
        assert len(compute_replay.replayed_layers(model, layout)) < n
        cut = split_peaks(model, layout=layout, **kw)
        with monkeypatch.context() as m:
            m.setattr(compute_replay, "RUN_CAP", 1000)
            assert split_peaks(model, layout=layout, **kw) == cut
    rpc = Layout(("cuda", "rpc"), (0,) * 10 + (1,) * (n - 10), experts, 1)
    assert compute_replay.replayed_layers(model, rpc) == list(range(n))


@pytest.mark.parametrize("run", TRACES["runs"], ids=RUN_IDS)
def test_plans_price_the_first_gpus_buffer_as_the_engine_sized_it(speed_models: Path, tmp_path: Path,
                                                                   run: dict[str, Any]) -> None:
    """The planner prices a placement by replaying it: the same command lines, priced by
    `check`'s path, give the engine's `CUDA0 compute buffer size` (op offload or a GPU holding
    everything) and its `CUDA_Host` line, both from the same graph."""
    rig = tmp_path / "h200.toml"
    rig.write_text('name = "h200"\n[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "H200"\nmemory_gib = 139\n'
                   '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 120\nbandwidth_gbs = 90\n')
    n_ctx, n_ubatch, fa, kv_type = _run_context(run)
    argv = [*run["args"].split(), "-c", str(n_ctx), "-b", str(max(n_ubatch, 2048)), "-ub", str(n_ubatch),
            "-fa", "on" if fa else "off", "-ctk", kv_type, "-ctv", kv_type]
    plan = evaluate(_run_model(run, speed_models, tmp_path), str(rig), argv)
    cuda0 = next(u for u in plan.usage if u.name == "CUDA0").compute_bytes
    host = next(u for u in plan.usage if u.name == "CPU").compute_bytes
    assert host / MiB == pytest.approx(run["host"]["engine_mib"], abs=0.01)
    assert cuda0 / MiB == pytest.approx(run["engine_mib"], abs=0.01)


def _sweep_rows() -> list[dict[str, Any]]:
    lines = (RESULTS / "compute_sweep_cuda.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "meta" not in r and r["ok"] and r["case"] % 4 == 0]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict[str, Any], ModelProfile]]:
    """The sweep's held-out records (``case % 4 == 0``, never fitted to) with their models."""
    folder = tmp_path_factory.mktemp("held_out")
    models: dict[str, ModelProfile] = {}
    out = []
    for rec in _sweep_rows():
        key = json.dumps([rec["arch"], rec["shape"]], sort_keys=True)
        if key not in models:
            path = write_model(folder / f"m{len(models)}.gguf", rec["arch"], header_only=True, tokenizer="spm",
                               **rec["shape"])
            models[key] = load_model(path)
        out.append((rec, models[key]))
    return out


def _predicted_cuda0(rec: dict[str, Any], model: ModelProfile) -> int:
    """CUDA0's buffer from the fitted pieces alone (what the planner uses for architectures outside
    compute_graph.TRACE_CHECKED; the checked ones it replays, planner_report scores that)."""
    ub = record_ubatch(rec)
    kv = max(model.kv_layer_bytes(rec["n_ctx"], rec["kv_type"], rec["kv_type"], n_seq=1, n_ubatch=ub,
                                  flash_attn=rec["flash_attn"]))
    est = compute_buffer_estimate(model, n_ctx=rec["n_ctx"], n_ubatch=ub, flash_attn=rec["flash_attn"],
                                  kv_quantized=rec["kv_type"] != "f16", kv_layer_bytes=kv)
    place = rec["placement"]
    if place == "all":
        return est.device_bytes(True, True)
    if place == "none":
        every = _largest(model, lambda t: t.layer is not None or t.role is Role.OUTPUT)
        return est.offload_bytes("offload_none", every)
    if place == "partial":
        cpu = {int(k) for k, v in rec["layer_devices"].items() if v == "CPU"}
        return est.offload_bytes("gpu_partial", _largest(model, lambda t: t.layer in cpu))
    return est.offload_bytes("gpu_exps", _largest(model, lambda t: t.role is Role.ROUTED_EXPERT))


# the held-out share within the target each placement's role must keep (compute_fit.md: 100,
# 100, 98.5 and 100 %, every role's fit now the replayed graph alone; 98.5, 95.1, 96.9 and
# 96.9 % before the fixes from the second set of H200 allocator traces; 49, 12, 6 and 29 %
# before the replayed graph) and the most held-out records it may leave below the engine by
# more than 32 MiB (0, 0, 1, 0)
BOUNDS = {"all": (0.98, 0), "none": (0.98, 0), "partial": (0.95, 1), "exps_cpu": (0.97, 0)}


@pytest.mark.parametrize("placement", sorted(BOUNDS))
def test_held_out_sweep_accuracy(held_out: list[tuple[dict[str, Any], ModelProfile]], placement: str) -> None:
    rows = [(rec, m) for rec, m in held_out if rec["placement"] == placement]
    assert len(rows) >= 30
    got = [(_predicted_cuda0(rec, m), rec["compute"]["CUDA0"]) for rec, m in rows]
    share = sum(within(p, e) for p, e in got) / len(got)
    under = sum(p < e - TARGET_MIB for p, e in got)
    min_share, max_under = BOUNDS[placement]
    assert share >= min_share and under <= max_under, (placement, round(share, 3), under)
    assert all(math.isfinite(p) and p > 0 for p, _ in got)


# what the planner prices (CostModel.usage: the placement replayed) for the trace-checked
# architectures' held-out records (every architecture now), the share within the target it must
# keep and the most records below the engine by more than 32 MiB (compute_fit.md's planner
# table: 65/65, 65/65 and 41/41 within 0.05 MiB, 0 under)
PLANNER_BOUNDS = {"gpu_partial": (0.98, 0), "offload_none": (0.98, 0), "gpu_exps": (0.97, 0),
                  # the host's buffer beside the GPU, replayed: every held-out record to 0.01 MiB
                  "host_base": (1.0, 0), "host_all": (1.0, 0), "host_partial": (1.0, 0)}


def test_planner_prices_the_checked_architectures_op_offload(held_out: list[tuple[dict[str, Any], ModelProfile]]
                                                             ) -> None:
    checked = [(rec, m) for rec, m in held_out if rec["arch"] in TRACE_CHECKED]
    report = {r["role"]: r for r in planner_report(checked)["split"]}
    for role, (min_share, max_under) in PLANNER_BOUNDS.items():
        r = report[role]
        assert r["split"] == "held-out" and r["rows"] >= 30, r
        assert r["within_target"] >= min_share and r["under_32mib"] <= max_under, r


def test_an_architecture_without_a_replayed_graph_keeps_the_widths_fit(tmp_path: Path) -> None:
    """An architecture compute_graph does not rebuild is priced by the widths' phases (the fit's
    ``widths_only`` pieces), not by a graph of missing tensors: the same llama relabelled prices
    within the widths fit's error of the replayed one, not near zero."""
    model = load_model(write_model(tmp_path / "l.gguf", "llama", header_only=True, n_layer=4, n_embd=4096,
                                   n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256))
    other = dataclasses.replace(model, architecture="mistral3")
    with pytest.raises(UnsupportedModelError):
        device_peak(other, n_tokens=512, n_kv=8192, n_kv_swa=8192, flash_attn=True, kv_quantized=False,
                    kv_layer_bytes=0)
    replayed = compute_buffer_estimate(model, n_ctx=8192)
    widths = compute_buffer_estimate(other, n_ctx=8192)
    largest = max(t.alloc_bytes("cuda") for t in model.tensors)
    pairs = [(replayed.device_bytes(True, True), widths.device_bytes(True, True)),
             (replayed.offload_bytes("offload_none", largest), widths.offload_bytes("offload_none", largest))]
    for a, b in pairs:
        assert 0.8 * a <= b <= 1.5 * a, (a / MiB, b / MiB)


def test_placements_that_replay_the_same_nodes_share_one_replay(speed_models: Path) -> None:
    """The planner prices dozens of placements that differ only in how many layers' experts stay
    in host memory; those whose replayed layers (RUN_CAP of each run) are the same share a key,
    and the replays they would make are equal. A DSA model's skipped layers are part of its key
    (their mask leaves are allocated up front)."""
    profile = load_model(speed_models / "moe15.hdr.gguf")
    n_layer, sigs = profile.hparams.n_layer, layer_signatures(profile)
    first_10, first_14 = (Offload(cpu_expert_layers=frozenset(range(k))) for k in (10, 14))
    last_10 = Offload(cpu_expert_layers=frozenset(range(n_layer - 10, n_layer)))

    def key(model: ModelProfile, signatures: Any, offload: Offload, with_output: bool) -> tuple[object, ...]:
        return replay_key(model, signatures, offload.layout(model.hparams.n_layer, "cuda"), with_output)

    assert key(profile, sigs, first_10, True) == key(profile, sigs, first_14, True)
    assert key(profile, sigs, first_10, True) != key(profile, sigs, last_10, True)
    assert key(profile, sigs, first_10, True) != key(profile, sigs, first_10, False)
    kv = max(profile.kv_layer_bytes(544, "f16", "f16", n_seq=1, n_ubatch=512, flash_attn=True))
    kw: dict[str, Any] = dict(n_tokens=512, n_kv=profile.kv_cells(544), n_kv_swa=profile.kv_cells(544),
                              flash_attn=True, kv_quantized=False, kv_layer_bytes=kv)
    assert device_peak(profile, offload=first_10, **kw) == device_peak(profile, offload=first_14, **kw)
    dsa = load_model("deepseek-v3.2")
    dsa_sigs = layer_signatures(dsa)
    a, b = (Offload(cpu_expert_layers=frozenset(range(k))) for k in (20, 24))
    assert key(dsa, dsa_sigs, a, True) != key(dsa, dsa_sigs, b, True)
