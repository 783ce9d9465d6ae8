"""Gated DeltaNet hybrids (Qwen3-Next ``qwen3next``, Qwen3.5 ``qwen35`` / ``qwen35moe``): which layers
are recurrent, and what a recurrent layer costs, checked against llama-bench records.

The engine's own sizes of their state and cache are in tests/test_model_engine.py; here:
- the recurrent layers come from ``attention.recurrent_layers`` or ``full_attention_interval``
  (src/models/qwen35moe.cpp load_arch_hparams), NextN blocks never, bad metadata refused;
- a recurrent layer attends to no cells: its decode moves its state whatever the depth, its prompt
  runs the delta rule and its mixer, and its fixed cost counts its extra graph nodes;
- priced as they ran, mainline llama-bench on this project's CPU (the hybrid beside a model of the
  same shape without recurrent layers, benchmarks/results/hybrid_speed/cpu_*.jsonl) and public RTX
  4090 records of Qwen3.5 9B / 27B / 35B-A3B (public.json).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from omni_place.attention import RECURRENT_STATE_PASSES
from omni_place.cost import CPU, LAYER_OPS, Context, CostModel, placement_from_counts
from omni_place.devices import resolve_cluster
from omni_place.errors import GGUFFormatError
from omni_place.hparams import ARCHITECTURES, is_recurrent_layer, read_hparams
from omni_place.model import load_model
from omni_place.units import MiB

from .arch_models import write_model


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import hybrid_speed  # noqa: E402


def _md(arch: str = "qwen35", n_layer: int = 8, **extra: Any) -> dict[str, Any]:
    md = {f"{arch}.block_count": n_layer, f"{arch}.embedding_length": 256, f"{arch}.attention.head_count": 4,
          f"{arch}.attention.head_count_kv": 2, f"{arch}.ssm.inner_size": 256, f"{arch}.ssm.state_size": 64,
          f"{arch}.ssm.group_count": 2, f"{arch}.ssm.conv_kernel": 4}
    md.update({f"{arch}.{k}": v for k, v in extra.items()})
    return md


def _recurrent(md: dict[str, Any], arch: str = "qwen35") -> list[int]:
    hp = read_hparams(arch, md, 320)
    return [il for il, h in enumerate(hp.n_head_kv) if h == 0]


def test_recurrent_layers_from_the_interval_or_the_flags() -> None:
    assert _recurrent(_md()) == [0, 1, 2, 4, 5, 6]  # default interval 4: layers 3 and 7 attend
    assert _recurrent(_md(full_attention_interval=2)) == [0, 2, 4, 6]
    assert _recurrent(_md(n_layer=9, full_attention_interval=2, nextn_predict_layers=1)) == [0, 2, 4, 6]
    flags = [True, False] * 4
    assert _recurrent(_md(full_attention_interval=4, **{"attention.recurrent_layers": flags})) == [0, 2, 4, 6]
    # the converter writes False for NextN blocks; a True there is not a recurrent layer either
    assert _recurrent(_md(nextn_predict_layers=1, **{"attention.recurrent_layers": [True] * 8})) == list(range(7))
    # an architecture without the rule keeps its head counts
    assert _recurrent(_md("qwen3"), "qwen3") == []


def test_hybrids_without_kv_heads_are_read_not_refused() -> None:
    """A layer without KV heads is a hybrid's recurrent layer (granitehybrid, jamba) or, in
    Nemotron-H, an FFN-only layer where its feed_forward_length is set (src/models/nemotron-h.cpp:
    recurrent iff head_count_kv and feed_forward_length are 0); an architecture without such layers
    refuses the header."""
    def recurrent(arch: str, kv: list[int], ff: list[int]) -> list[int]:
        hp = read_hparams(arch, _md(arch, n_layer=len(kv), **{"attention.head_count_kv": kv,
                                                                "feed_forward_length": ff}), 320)
        return [il for il in range(hp.n_layer) if is_recurrent_layer(arch, hp, il)]

    kv, ff = [0, 2, 0, 0], [0, 0, 512, 0]  # mamba, attention, MLP, mamba
    assert recurrent("nemotron_h_moe", kv, ff) == [0, 3]
    assert recurrent("granitehybrid", kv, [512] * 4) == [0, 2, 3]
    with pytest.raises(GGUFFormatError, match="has no recurrent layers"):
        read_hparams("qwen3", _md("qwen3", n_layer=4, **{"attention.head_count_kv": kv}), 320)


@pytest.mark.parametrize("extra, needle", [
    ({"attention.recurrent_layers": [True, False]}, "recurrent_layers has 2 entries, need 8"),
    ({"attention.recurrent_layers": [2] * 8}, "recurrent_layers"),
    ({"full_attention_interval": 0}, "full_attention_interval"),
])
def test_bad_recurrent_metadata_is_one_format_error(extra: dict[str, Any], needle: str) -> None:
    with pytest.raises(GGUFFormatError, match=needle):
        read_hparams("qwen35", _md(**extra), 320)


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Qwen3.5-35B-A3B header (its published shape) and a one-GPU-plus-CPU rig."""
    folder = tmp_path_factory.mktemp("hybrid")
    headers = hybrid_speed.write_headers(folder, ["Qwen3.5-35B-A3B UD-Q4_K_XL"], header_only=True)
    return load_model(headers["Qwen3.5-35B-A3B UD-Q4_K_XL"]), resolve_cluster(hybrid_speed.one_gpu_cluster(folder,
                                                                                                       "RTX 4090"))


def _cost(model: Any, cluster: Any, depth: int) -> CostModel:
    return CostModel(model, cluster, Context(ctx=65536, depth=depth, prompt_depth=depth))


def test_a_recurrent_layer_moves_its_state_whatever_the_depth(hybrid: Any) -> None:
    model, cluster = hybrid
    shallow, deep = _cost(model, cluster, 0), _cost(model, cluster, 32768)
    rec = next(il for il in range(model.n_layer) if model.is_recurrent(il))
    att = next(il for il in range(model.hparams.n_layer_kv) if not model.is_recurrent(il))
    state = model.kv_layer_bytes(65536)[rec]
    assert state == 4 * (3 * (4096 + 2 * 2048) + 128 * 4096)  # conv and delta-rule state, F32
    for cost in (shallow, deep):  # the state's passes, and the delta rule's step (as a prompt token's)
        for name in ("CUDA0", CPU):
            assert cost.kv_tg(rec, name) == pytest.approx(RECURRENT_STATE_PASSES * state / cost.bandwidth(name)
                                                          + cost.attention_pp(rec, name))
    assert deep.attention_pp(rec, "CUDA0") == shallow.attention_pp(rec, "CUDA0") > 0
    assert deep.attention_pp(att, "CUDA0") > 5 * shallow.attention_pp(att, "CUDA0")
    assert deep.kv_tg(att, "CUDA0") > 100 * shallow.kv_tg(att, "CUDA0")


def test_a_recurrent_layer_pays_for_its_extra_graph_nodes(hybrid: Any) -> None:
    model, cluster = hybrid
    cost = _cost(model, cluster, 0)
    ops = ARCHITECTURES["qwen35moe"].recurrent_layer_ops
    per_layer = {"CUDA0": cluster.by_name("CUDA0").speed.layer_us * 1e-6 * cost.params.gpu_layer_scale,
                 CPU: cost.params.cpu_layer_s}  # what a llama layer's LAYER_OPS nodes cost
    for name, llama_layer in per_layer.items():
        extra = cost._layer_overhead(name, False, True, True) - cost._layer_overhead(name, True, True)
        assert extra == pytest.approx(llama_layer * ops / LAYER_OPS)
    # the whole model on the GPU: a recurrent layer's decode costs more than an attention layer's
    p = placement_from_counts(model, ["CUDA0"], 0, [model.n_layer])
    tg = [sum(cost.layer_tg(il, "CUDA0", p.expert_homes[il]).values()) for il in range(model.hparams.n_layer_kv)]
    assert min(t for il, t in enumerate(tg) if model.is_recurrent(il)) > max(
        t for il, t in enumerate(tg) if not model.is_recurrent(il)) * 0.98


def test_cpu_records_priced_as_their_controls() -> None:
    """Each hybrid on this project's CPU is priced within a few points of the model of its shape
    without recurrent layers (what the recurrent layers add, priced right), and within 30 %."""
    records = [r for p in sorted(hybrid_speed.FOLDER.glob("cpu_*.jsonl"))
               for r in hybrid_speed.load_records(p)]
    assert {r["shape"] for r in records} == set(hybrid_speed.CPU_MODELS)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        rows = hybrid_speed.price_cpu(records, Path(tmp))
    for r in rows:
        assert abs(r["error_pct"]) < 30, r
        if r["vs_control_pct"] is not None:
            assert abs(r["vs_control_pct"]) < 12, r


def test_public_rtx4090_records() -> None:
    """Qwen3.5 and GLM-4.7-Flash on an RTX 4090 as published, at depths 0-65536: decode within 20 %,
    Qwen3.5's prompt 25 %. The attention over a filled cache carries over from the H200's fit only as
    a share of the FP32-accumulate tensor rate (half the catalog's FP16 figure on a GeForce card); as
    a multiple of the MMQ rate it priced the 65536-deep prompt +209 %. MLA's decode at depth is bound
    by the mma kernel's FLOPs: priced by its bytes, +397 % at 32768 cells. GLM's prompt at depth runs
    twice as fast as priced, unexplained (benchmarks/results/hybrid_speed.md)."""
    import json
    import tempfile
    public = json.loads((hybrid_speed.FOLDER / "public.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        rows = hybrid_speed.price_public(public["records"], Path(tmp))
    assert len(rows) == 32
    for r in rows:
        if r["test"].startswith("tg"):
            assert abs(r["error_pct"]) < 20, r
        elif r["model"].startswith("Qwen"):
            assert abs(r["error_pct"]) < 25, r
        else:  # MLA's prompt at depth, priced at half the speed this GPU ran it
            assert r["error_pct"] < 35 and (r["depth"] == 0 or r["error_pct"] < -40), r


def test_gpu_delta_rule_priced_beside_controls(tmp_path: Path) -> None:
    """On a GPU the delta rule runs a ubatch's tokens one after another (attention.GPU_SCAN_STEP_S):
    each hybrid's whole-GPU prompt (llama-bench on H100 VMs, benchmarks/results/hybrid_speed/gpu_*)
    is priced within 8 points of its all-attention control of the same shape on the same VM; priced
    by the delta rule's FLOPs alone the gaps were +5 .. +14 points."""
    records = [dict(r, round=p.stem) for p in sorted(hybrid_speed.FOLDER.glob("gpu_*.jsonl"))
               for r in hybrid_speed.load_records(p)
               if r["n_prompt"] and not r.get("n_depth") and r["n_gpu_layers"] >= 99 and not r.get("n_cpu_moe")]
    gaps = hybrid_speed.pair_gaps(hybrid_speed.price_gpu(records, tmp_path))
    assert {model for _, model, _ in gaps} == {"Qwen3.5-35B-A3B UD-Q4_K_XL", "Qwen3.5-9B Q8_0"}
    assert len(gaps) >= 4 and all(abs(gap) < 8 for _, _, gap in gaps), gaps


def test_rwkv7_compute_buffers_beside_the_engines_dry_runs(tmp_path: Path) -> None:
    """RWKV-7's time mix holds 19 rows of the embedding at its peak (compute.wkv_floor): of the CPU
    backend's dry runs of random shapes the estimate stays within -1 .. +11 % of the 24 it was set on and
    of 24 drawn after it, where the widths alone read as low as -90 % (benchmarks/results/
    compute_sweep_rwkv7_cpu*.jsonl: `python -m benchmarks.compute_sweep --cases 24 --archs rwkv7`, then
    `--seed 7`)."""
    for name in ("compute_sweep_rwkv7_cpu.jsonl", "compute_sweep_rwkv7_cpu_heldout.jsonl"):
        errors = hybrid_speed.price_compute(hybrid_speed.load_records(hybrid_speed.RESULTS / name), tmp_path)["rwkv7"]
        assert len(errors) == 24 and -1 < min(errors) and max(errors) < 11, (name, sorted(errors))


def test_a_layers_graph_nodes_priced_at_gpu_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemma 3n runs three times a llama layer's graph nodes, Gemma 3 a third more (ArchSpec.layer_ops):
    its whole-GPU decode, llama-bench on an H100 (benchmarks/results/hybrid_speed/gpu_h100s44_*),
    is priced within 10 % with them and was priced twice as fast without (Gemma 3: +12 %)."""
    import dataclasses

    records = [dict(r, round=p.stem) for p in sorted(hybrid_speed.FOLDER.glob("gpu_h100s44_round*.jsonl"))
               for r in hybrid_speed.load_records(p)
               if r["shape"].startswith("Gemma") and r["n_gen"] and r["n_gpu_layers"] >= 99]

    def errors() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for row in hybrid_speed.price_gpu(records, tmp_path):
            out.setdefault(row["model"], []).append(row["error_pct"])
        return out

    priced = errors()
    assert len(priced) == 2 and all(len(e) >= 8 and max(map(abs, e)) < 10 for e in priced.values()), priced
    for arch in ("gemma3", "gemma3n"):
        monkeypatch.setitem(ARCHITECTURES, arch, dataclasses.replace(ARCHITECTURES[arch], layer_ops=0))
    unpriced = errors()
    assert min(unpriced["Gemma-3n-E2B Q4_K"]) > 50 and min(unpriced["Gemma-3-shaped E2B"]) > 8, unpriced


@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe", "qwen3next"])
def test_ik_llama_cpp_holds_the_state_in_its_kv_buffer(tmp_path: Path, arch: str) -> None:
    """ik_llama.cpp keeps a recurrent layer's state in its KV buffer, beside the attention layers'
    cache, of mainline's size (its llama-bench -v log, benchmarks/results/hybrid_speed/ik_logs)."""
    log = (hybrid_speed.FOLDER / "ik_logs" / f"{arch}.log").read_text()
    assert f"n_ctx         = {hybrid_speed.IK_CTX}" in log
    (mib,) = [float(m) for m in re.findall(r"CPU KV buffer size =\s+([0-9.]+) MiB", log)]
    model = load_model(write_model(tmp_path / f"{arch}.gguf", arch, header_only=True, **hybrid_speed.IK_SHAPE))
    kv = model.kv_layer_bytes(hybrid_speed.IK_CTX)
    assert sum(kv[il] for il in range(model.n_layer) if model.is_recurrent(il)) > sum(kv) / 2  # the state dominates
    assert abs(sum(kv) - mib * MiB) <= 0.005 * MiB


def test_inspect_and_plan_name_the_recurrent_layers(hybrid: Any, capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    """`inspect` tells the recurrent layers and their state apart from the cache; `plan` fits
    Qwen3.5-35B-A3B at a 131072-token context on a 24 GB card (its cache is 10 layers') and notes
    that its compute buffers are estimated, not replayed."""
    import json

    from omni_place.cli import main

    model, _ = hybrid
    assert main(["inspect", str(model.path), "--ctx", "131072"]) == 0
    out = capsys.readouterr().out
    assert "30 recurrent layers" in out and out.count(" recurrent\n") == 30
    assert main(["inspect", str(model.path), "--ctx", "131072", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    kv = model.kv_layer_bytes(131072)
    assert report["recurrent_state_bytes"] == sum(kv[il] for il in range(model.n_layer) if model.is_recurrent(il))
    assert report["recurrent_state_bytes"] == 30 * kv[0] and kv[3] == 256 * 2**20  # 2 heads x 256 x K and V
    rig = hybrid_speed.one_gpu_cluster(tmp_path, "RTX 4090")
    assert main(["plan", str(model.path), "--cluster", str(rig), "--ctx", "131072", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["feasible"] and plan["n_cpu_layers"] == 0 and plan["predicted"]["tg_tps"] > 0
    assert any("compute buffers are estimated from its widths" in note for note in plan["notes"])


def test_hybrid_compute_buffers_against_the_engines_dry_runs(tmp_path: Path) -> None:
    """The CPU backend's compute buffer of hybrids (widths, and a Mamba-2 layer's live tensors as a
    floor) against libllama's dry runs of random shapes: within 15 % on the 30 drawn after the
    floor was set, and no architecture more than a quarter below the engine on the others."""
    held_out = hybrid_speed.price_compute(
        hybrid_speed.load_records(hybrid_speed.RESULTS / "compute_sweep_hybrid_cpu_heldout.jsonl"), tmp_path)
    assert set(held_out) == {"granitehybrid", "nemotron_h", "nemotron_h_moe"}
    assert all(abs(e) < 15 for errs in held_out.values() for e in errs), held_out
    first = hybrid_speed.price_compute(
        hybrid_speed.load_records(hybrid_speed.RESULTS / "compute_sweep_hybrid_cpu.jsonl"), tmp_path)
    assert len(first) == 6 and min(e for errs in first.values() for e in errs) > -25, first


def test_kimi_linear_compute_buffers_against_the_engines_dry_runs(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Kimi-Linear's CPU compute buffer (widths, and its MLA layers and output replayed as a floor:
    compute.replayed_layers_floor) against libllama's dry runs of random shapes
    (`python -m benchmarks.compute_sweep --cases 24 --archs kimi-linear`, then `--cases 40 --seed 7`
    after the floor): the widths alone were 26.5 % under on the first set, the floor leaves none of
    either set more than 15 % under."""
    import omni_place.compute as compute

    files = ("compute_sweep_kimi_cpu.jsonl", "compute_sweep_kimi_cpu_heldout.jsonl")
    errors = [hybrid_speed.price_compute(hybrid_speed.load_records(hybrid_speed.RESULTS / f), tmp_path)["kimi-linear"]
              for f in files]
    assert [len(e) for e in errors] == [24, 40] and min(min(e) for e in errors) > -15, errors
    monkeypatch.setattr(compute, "replayed_layers_floor", lambda *a, **k: 0)  # the widths alone
    widths = hybrid_speed.price_compute(hybrid_speed.load_records(hybrid_speed.RESULTS / files[0]), tmp_path)
    assert min(widths["kimi-linear"]) < -25


def test_falcon_h1_compute_buffers_against_the_engines_dry_runs(tmp_path: Path) -> None:
    """Falcon-H1's CPU compute buffer (widths, and its Mamba-2 mixer's live tensors with the
    attention's output beside them as a floor: compute.mamba2_floor) against libllama's dry runs of
    random shapes (`python -m benchmarks.compute_sweep --cases 24 --archs falcon-h1`, then
    `--cases 30 --seed 7`): none more than 22 % under, 11 % over."""
    errors = [hybrid_speed.price_compute(hybrid_speed.load_records(hybrid_speed.RESULTS / f), tmp_path)["falcon-h1"]
              for f in ("compute_sweep_falcon_cpu.jsonl", "compute_sweep_falcon_cpu_heldout.jsonl")]
    assert [len(e) for e in errors] == [24, 30], errors
    assert min(min(e) for e in errors) > -22 and max(max(e) for e in errors) < 11, errors


def test_minimax_m3_compute_buffers_against_the_engines_dry_runs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """MiniMax-M3's CPU compute buffer with flash attention (widths, and its MSA block mask as a
    floor: compute.msa_floor) against libllama's dry runs of random shapes (`python -m
    benchmarks.compute_sweep --cases 30 --archs minimax-m3`, then `--cases 40 --seed 7` after the
    floor): the widths alone were 90 % under; the floor (the block mask's two copies and the KQ
    mask's F32 copy) leaves none more than 21 % under, without the mask's copy a third."""
    import omni_place.compute as compute

    def errors() -> list[list[float]]:
        return [hybrid_speed.price_compute([r for r in hybrid_speed.load_records(hybrid_speed.RESULTS / f)
                                            if r.get("flash_attn")], tmp_path)["minimax-m3"]
                for f in ("compute_sweep_minimax_cpu.jsonl", "compute_sweep_minimax_cpu_heldout.jsonl")]

    floored = errors()
    assert [len(e) for e in floored] == [19, 26] and min(min(e) for e in floored) > -21, floored
    assert max(max(e) for e in floored) < 17, floored
    msa_floor = compute.msa_floor
    monkeypatch.setattr(compute, "msa_floor",  # the block mask's copies alone
                        lambda model, n_tokens, n_kv, flash_attn=True: msa_floor(model, n_tokens, n_kv, flash_attn)
                        * 2 * max(model.hparams.n_head_kv) // (2 * max(model.hparams.n_head_kv) + 1))
    assert min(min(e) for e in errors()) < -30
    monkeypatch.setattr(compute, "msa_floor", lambda *a, **k: 0)  # the widths alone
    assert min(min(e) for e in errors()) < -90


def test_mla_decode_at_depth_is_bound_by_flops_in_mainline_only(tmp_path: Path) -> None:
    """Mainline has no vector flash-attention kernel for MLA's 576-wide heads: at depth a decoded
    token's attention is priced by its FLOPs at its compute capability's ``mla_decode_share``
    (GLM-4.7-Flash on an RTX 4090, public.json; on this project's H100 SXM, gpu_h100_round*.jsonl);
    ik_llama.cpp runs its own MLA kernels, priced by the cache's bytes as before."""
    from omni_place.catalog import speed_share
    from omni_place.engines import dialect

    assert speed_share("8.9").mla_decode_share < speed_share("9.0").mla_decode_share
    assert speed_share("8.6").mla_decode_share == speed_share("default").mla_decode_share  # no row of its own
    headers = hybrid_speed.write_headers(tmp_path, ["GLM-4.7-Flash UD-Q4_K_XL"], header_only=True)
    model = load_model(headers["GLM-4.7-Flash UD-Q4_K_XL"])
    cluster = resolve_cluster(hybrid_speed.one_gpu_cluster(tmp_path, "RTX 4090"))
    placement = placement_from_counts(model, ["CUDA0"], 0, [model.n_layer])
    tps = {}
    for engine in ("llama.cpp", "ik_llama.cpp"):
        context = dialect(engine).traits.context(ctx=32768 + 64, depth=32768, n_gen=64)
        tps[engine] = CostModel(model, cluster, context).predict(placement).tg_tps
    assert tps["llama.cpp"] == pytest.approx(19.02, rel=0.1)  # measured
    assert tps["ik_llama.cpp"] > 3 * tps["llama.cpp"]
    h100 = [r for p in sorted(hybrid_speed.FOLDER.glob("gpu_h100_round*.jsonl")) for r in hybrid_speed.load_records(p)
            if r["shape"].startswith("GLM") and r["n_gen"] and r["n_depth"] >= 8192 and not r["n_cpu_moe"]]
    priced = hybrid_speed.price_gpu(h100, tmp_path)
    assert len(priced) == 4 and all(abs(r["error_pct"]) < 15 for r in priced), priced


def test_calibrate_from_the_h100_runs_plain_llama_bench_output(tmp_path: Path) -> None:
    """`omni-place calibrate` on plain llama-bench output of a hybrid MoE (Qwen3.5-35B-A3B) and an MLA
    MoE (GLM-4.7-Flash) with routed experts on the CPU: fitted on one round of the H100 run, the
    other round held out: decode within 10 % at the median (issue 15's calibrated bound; GLM's worst
    test 11 %), prompt within 15 %."""
    records = [dict(r, round=p.stem) for p in sorted(hybrid_speed.FOLDER.glob("gpu_h100_round*.jsonl"))
               for r in hybrid_speed.load_records(p) if not r["shape"].startswith("Qwen3.5-9B")
               and not r["shape"].startswith("Qwen3.5-27B")]
    fits = {c["model"]: c for c in hybrid_speed.calibrate_gpu(records, tmp_path)}
    assert set(fits) == {"GLM-4.7-Flash UD-Q4_K_XL", "Qwen3.5-35B-A3B UD-Q4_K_XL"}
    for fit in fits.values():
        assert fit["skipped"] and fit["n_points"] >= 6  # unsteady tests left out and counted
        assert fit["heldout"]["tg"]["max_abs"] < 0.12 and fit["heldout"]["tg"]["median_abs"] < 0.10, fit
        assert fit["heldout"]["pp"]["max_abs"] < 0.15, fit


def test_lfm2_compute_buffers_beside_the_engines_dry_runs(tmp_path: Path) -> None:
    """LFM2 is not replayed: its widths-only compute estimate beside the CPU backend's dry runs of
    12 random lfm2 / lfm2moe shapes (benchmarks/results/compute_sweep_lfm2_cpu.jsonl: `python -m
    benchmarks.compute_sweep --cases 12 --seed 5 --archs lfm2,lfm2moe`): within 10 %."""
    errors = hybrid_speed.price_compute(
        hybrid_speed.load_records(hybrid_speed.RESULTS / "compute_sweep_lfm2_cpu.jsonl"), tmp_path)
    assert set(errors) == {"lfm2", "lfm2moe"} and sum(map(len, errors.values())) == 12
    assert all(abs(e) < 10 for errs in errors.values() for e in errs), errors


SPLIT_LINE = re.compile(r"## SPLIT #(\d+): (\w+) # \d+ inputs(?::(.*))?")
SPLIT_INPUT = re.compile(r"\[(.+?) \(\s*(\d+)([KM])\)\]")


def _splits(path: Path) -> list[tuple[str, list[tuple[str, int]]]]:
    """(backend, [(input, size in the log's truncated KiB / MiB units as bytes)]) per split; an input's
    name without the log's " (view)" / " (permuted)" marks."""
    out = []
    for line in path.read_text().splitlines():
        m = SPLIT_LINE.match(line)
        if m:
            inputs = [(name.split(" (")[0], int(n) * (MiB if unit == "M" else 1024)) for name, n, unit in
                      SPLIT_INPUT.findall(m.group(3) or "")]
            out.append((m.group(2), inputs))
    return out


def test_cpu_held_recurrent_layer_as_the_engines_scheduler_splits_it(tmp_path: Path) -> None:
    """The H100's scheduler log of Qwen3.5-9B at -ngl 20 (tests/data/sched_splits_qwen35_9b_ngl20.txt):
    each CPU-held layer's weights go up one split each (as many as the cost model counts), a recurrent
    layer runs three CPU splits (an attention layer one, its cache store), its state goes up whole
    (the cost's kv_pp_bytes) and its stores read the whole conv input and the new state back down
    (model.recurrent_store_bytes), in the log's truncated units."""
    header = hybrid_speed.write_headers(tmp_path, ["Qwen3.5-9B Q8_0"], header_only=True)["Qwen3.5-9B Q8_0"]
    model = load_model(header)
    cluster = resolve_cluster(str(hybrid_speed.FOLDER / "gpu_h100s40_rig.toml"))
    cost = CostModel(model, cluster, Context(ctx=512, n_ubatch=512, n_prompt=512, n_gen=0))
    splits = _splits(Path(__file__).parent / "data" / "sched_splits_qwen35_9b_ngl20.txt")
    assert len(splits) == 228
    d_state, d_inner = model.hparams.ssm_d_state, model.hparams.ssm_d_inner
    state = 4 * d_state * d_inner
    for il in range(14):  # -ngl 20 of 33 + 1: layers 0-13 on the CPU
        weights = {n for _, inputs in splits for n, _ in inputs if n.startswith(f"blk.{il}.")}
        assert len(weights) == cost._pp_tensors[il][0], il
        moved = {n.rsplit("-", 1)[0]: size for b, inputs in splits for n, size in inputs if n.endswith(f"-{il}")}
        cpu_splits = sum(1 for b, inputs in splits if b == "CPU" and any(n.endswith(f"-{il}") for n, _ in inputs))
        if not model.is_recurrent(il):
            assert set(moved) == {"Kcur", "Vcur"} and cpu_splits == 1, il
            continue
        assert set(moved) == {"conv_states_reshaped", "state_predelta", "conv_state_last", "new_state"}, il
        # the CPU splits that start the layer (build_rs's gather, no inputs) are not named by the layer
        assert cpu_splits == 2, il
        up = moved["conv_states_reshaped"] + moved["state_predelta"]
        assert up == cost.kv_pp_bytes[il] == model.kv_layer_bytes(512)[il]
        assert moved["new_state"] == state
        assert moved["conv_state_last"] == (cost.rs_store_bytes[il] - state) // MiB * MiB
        assert cost.rs_store_bytes[il] - state > 512 * 8192 * 4  # the whole conv input, not its last 3 columns
        priced = cost.cpu_cache_pp(il, "CUDA0")  # per token: up at the cache's rate, down at the pinned one
        assert priced["transfers"] == pytest.approx(3 * cost.params.split_s / 512)
        down = cost.rs_store_bytes[il] / cost.stream_bandwidth("CUDA0", True)
        assert priced["pcie_stream"] == pytest.approx((up / cost.stream_bandwidth("CUDA0", False) + down) / 512,
                                                      rel=1e-3)
    assert sum(b == "CPU" for b, _ in splits) == 1 + 3 * 11 + 3  # the input split, 11 recurrent, 3 attention
    # ik_llama.cpp stores a contiguous copy of the conv state: what comes down is the state, whole
    from omni_place.engines import dialect

    ik = CostModel(model, cluster, dialect("ik_llama.cpp").traits.context(ctx=512, n_ubatch=512, n_prompt=512))
    assert not ik.context.conv_store_reads_input
    assert ik.rs_store_bytes[0] == model.kv_layer_bytes(512)[0] < cost.rs_store_bytes[0] // 7
