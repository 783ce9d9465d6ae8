"""The speed model against real llama-bench runs on an H200 (benchmarks/results/speed_truth):
the placement each run made is read from its -v log and priced with the default parameters.

The defaults were fitted on the runs of rig ``h200-a`` and ``h200-full``; rig ``h200-b`` (other
free memory, other placements) is held out. Also: the structure the runs showed (pageable vs
pinned op-offload copies, per-layer fixed costs, MMQ tiles of routed experts) and the flags that
pin CPU-held weights."""
from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from omni_place.bench.logread import placement_from_log
from omni_place.bench.records import load_records
from omni_place.cost import (PAGEABLE_LINK_FRACTION, PINNED_LINK_FRACTION, CPU, Context, CostModel,
                             SpeedParams)
from omni_place.compute_price import repacked_bytes
from omni_place.devices import resolve_cluster
from omni_place.engines import dialect, ik_llama, llama_cpp
from omni_place.errors import InvalidArgumentError
from omni_place.gpu_matmul import expert_time_factor, tile_tokens
from omni_place.objective import BALANCED_PROMPT_FLOOR
from omni_place.variants import PIN_MARGIN
from omni_place.model import load_model
from omni_place.plan import evaluate, plan_split
from omni_place.problem import cpu_only
from omni_place.units import GB

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "speed_truth"


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Per (rig, model, configuration): the median measured tg/pp over rounds and the priced
    placement it ran with."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.speed_models import write_speed_model

    tmp = tmp_path_factory.mktemp("speed_truth")
    with tarfile.open(RESULTS / "logs.tar.xz") as tar:
        tar.extractall(tmp, filter="data")
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in sorted(RESULTS.glob("records_*.jsonl")):
        logs = tmp / "res" / f"res_{rec.stem.removeprefix('records_')}" / "logs"
        for r in load_records([rec]):
            if r["status"] != "ok" or not r.get("avg_ts"):
                continue
            row = rows.setdefault((r["rig"], r["model"], r["config"]), {"tg": [], "pp": [], "argv": r["argv"]})
            row["pp" if r["test"].startswith("pp") else "tg"].append(float(r["avg_ts"]))
            row.setdefault("log", (logs / f"{r['model']}.{r['rig']}.r{r['round']}" / r["log"]).read_text())
    models = {m: load_model(write_speed_model(m, tmp / "hdr", header_only=True)) for m in {k[1] for k in rows}}
    out = []
    for (rig, model, config), row in sorted(rows.items()):
        prof = models[model]
        cluster = resolve_cluster(str(RESULTS / f"rig_{rig.removeprefix('h200-')}.toml"))
        placement = placement_from_log(row["log"], prof, ["CUDA0"], "llama.cpp", row["argv"])
        assert placement is not None, (rig, model, config)
        out.append({"rig": rig, "model": model, "config": config, "placement": placement,
                    "cost": CostModel(prof, cluster, Context(ctx=512 + 32, n_ubatch=512)),
                    "tg": statistics.median(row["tg"]), "pp": statistics.median(row["pp"])})
    return out


def _errors(rows: list[dict[str, Any]], params: SpeedParams | None = None) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"tg": [], "pp": []}
    for r in rows:
        cost = r["cost"]
        cost = CostModel(cost.model, cost.cluster, cost.context, params)
        pred = cost.predict(r["placement"])
        out["tg"].append(pred.tg_tps / r["tg"] - 1)
        out["pp"].append(pred.pp_tps / r["pp"] - 1)
    return out


def test_the_runs_cover_both_models_rigs_and_cpu_shares(truth: list[dict[str, Any]]) -> None:
    assert {(r["rig"], r["model"]) for r in truth} >= {(rig, m) for rig in ("h200-a", "h200-b")
                                                        for m in ("dense11", "moe15")}
    shares = {sum(h == CPU for h in r["placement"].layer_home) for r in truth if r["model"] == "dense11"}
    assert min(shares) == 0 and max(shares) == 32 and len(shares) >= 6


# The rig files carry the CPU figure of the probe of that time (a copy, read + write, that did not
# scale with threads: 27.6 GB/s); llama.cpp's decode read 2.83x that, fitted on rig h200-a.
RIG_CPU = SpeedParams(cpu_bw_eff=2.83)


def test_held_out_rig_is_priced_within_the_issue_bounds(truth: list[dict[str, Any]]) -> None:
    """The default parameters (the CPU figure's ratio aside) on the held-out rig: decode within
    15 %, prompt within 25 %."""
    held = [r for r in truth if r["rig"] == "h200-b"]
    err = _errors(held, RIG_CPU)
    assert len(held) >= 12
    assert max(map(abs, err["tg"])) < 0.15, err["tg"]
    assert max(map(abs, err["pp"])) < 0.25, err["pp"]
    assert statistics.median(map(abs, err["tg"])) < 0.06 and statistics.median(map(abs, err["pp"])) < 0.10


def test_the_old_structure_missed_by_far(truth: list[dict[str, Any]]) -> None:
    """The same runs priced as before (op offload at 75 % of the link, no per-layer costs): the
    prompt of every partially offloaded run was predicted 2.5-4x too fast."""
    partial = [r for r in truth if r["rig"] != "h200-full"]
    old = SpeedParams(stream_eff=0.75 / PAGEABLE_LINK_FRACTION, gpu_layer_scale=1e-9/55e-6, cpu_layer_s=1e-9)
    assert min(_errors(partial, old)["pp"]) > 1.5


def test_pinned_weights_stream_at_link_speed_and_never_page(truth: list[dict[str, Any]]) -> None:
    row = next(r for r in truth if r["rig"] == "h200-a" and r["config"] == "ngl0" and r["model"] == "dense11")
    cost: CostModel = row["cost"]
    pinned = CostModel(cost.model, cost.cluster, dataclasses.replace(cost.context, pinned_weights=True))
    link = cost.link("CUDA0")[0]
    assert cost.stream_bandwidth("CUDA0") == pytest.approx(link * PAGEABLE_LINK_FRACTION)
    assert pinned.stream_bandwidth("CUDA0") == pytest.approx(link * PINNED_LINK_FRACTION)
    assert pinned.predict(row["placement"]).pp_tps > 3 * cost.predict(row["placement"]).pp_tps
    paging = CostModel(cost.model, cost.cluster, dataclasses.replace(cost.context, pinned_weights=True,
                                                                     allow_paging=True))
    assert all(u.pageable_bytes == 0 for u in paging.usage(row["placement"]))


def test_a_measured_pageable_rate_wins_over_the_link_fraction(truth: list[dict[str, Any]]) -> None:
    row = truth[0]
    cost: CostModel = row["cost"]
    gpu = cost.cluster.by_name("CUDA0")
    if not hasattr(gpu, "stream_gbs"):
        pytest.skip("this Device has no stream_gbs field")
    measured = dataclasses.replace(cost.cluster, devices=tuple(
        dataclasses.replace(d, stream_gbs=6.5) if d.name == "CUDA0" else d for d in cost.cluster.devices))
    assert CostModel(cost.model, measured, cost.context).stream_bandwidth("CUDA0") == pytest.approx(6.5 * GB)


def test_routed_experts_cost_a_whole_mmq_tile_on_a_gpu(truth: list[dict[str, Any]]) -> None:
    cost: CostModel = next(r["cost"] for r in truth if r["model"] == "moe15")
    il = next(i for i, lc in enumerate(cost.model.layers) if lc.has_experts)
    per_expert = cost.n_tokens * cost.k_over_n / cost.expert_hit  # 512 * 8/128: 32 tokens
    assert tile_tokens(cost.n_tokens) == 128 and cost.tile_factor == pytest.approx(128 / per_expert)
    slower = expert_time_factor(cost.tile_factor, cost.params.gpu_moe_compute_eff)
    assert slower > cost.tile_factor
    # the CPU's are its dense-rate equivalent: the raw FLOPs over cpu_moe_compute_eff
    raw = cost.expert_flops(il, gpu=False) * cost.params.cpu_moe_compute_eff
    assert cost.expert_flops(il, gpu=True) == pytest.approx(raw * slower)


@pytest.mark.parametrize(("n_tokens", "width"), [(1, 8), (32, 32), (64, 64), (100, 104), (128, 128), (200, 104),
                                                 (512, 128), (520, 104), (4096, 128)])
def test_mmq_tiles_are_the_narrowest_that_cover_the_batch_in_fewest_tiles(n_tokens: int, width: int) -> None:
    """mul_mat_q_switch_J (ggml-cuda/mmq.cuh): J in steps of 8 up to 128, fewest tiles first."""
    assert tile_tokens(n_tokens) == width
    best = min(range(8, 129, 8), key=lambda j: (-(-n_tokens // j), j))
    assert width == best


UBATCH_SWEEP = ROOT / "benchmarks" / "results" / "plans_vs_fit_25"


def _ubatch_runs() -> list[tuple[str, int, int, float]]:
    """(model, n_prompt, n_ubatch, measured tok/s) of the whole-GPU ubatch sweeps (llama-bench -o jsonl)."""
    runs = []
    with tarfile.open(UBATCH_SWEEP / "logs.tar.xz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if not (name.startswith(("ub_", "ub512_")) and name.endswith(".jsonl")):
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            for line in fh.read().decode().splitlines():
                r = json.loads(line)
                if r["n_prompt"]:
                    runs.append((name.split("_", 1)[1].removesuffix(".jsonl"), r["n_prompt"], r["n_ubatch"],
                                 r["avg_ts"]))
    return runs


def test_gpu_prompt_follows_the_ubatch_for_dense_and_moe(tmp_path: Path) -> None:
    """Everything on one H200, ubatch 64..4096: the tile-width, batch-rate and MUL_MAT_ID terms
    (gpu_matmul) price dense, GQA MoE and MLA MoE prompt within 20 % (a fixed 128-token tile and
    the dense rate for experts priced MoE +26..+144 % and dense ubatch 64 +73 %)."""
    runs = _ubatch_runs()
    assert {m for m, *_ in runs} == {"dense11", "moe15", "mla16"} and len(runs) == 30
    sys.path.insert(0, str(ROOT))
    from benchmarks.speed_models import write_speed_model

    headers = {m: write_speed_model(m, tmp_path, header_only=True) for m in ("dense11", "moe15", "mla16")}
    rig = PVF23 / "rig_full.toml"
    errors = {}
    for model, n_prompt, ub, measured in runs:
        argv = ["-ngl", "99", "-fa", "1", "-b", "4096", "-ub", str(ub), "-p", str(n_prompt), "-n", "0"]
        plan = evaluate(headers[model], str(rig), argv, tool="bench")
        errors[(model, n_prompt, ub)] = plan.predicted.pp_tps / measured - 1
    # moe15 at ubatch 128: -19 % before mean depths; ubatch 64, below the range the fixed per-layer
    # prompt cost was fitted on (128-1024, benchmarks/results/gpu_shapes.md), -22..-25 % (dense11, moe15)
    assert max(map(abs, errors.values())) < 0.25, errors
    # 5.6 % while a 4096-token prompt's later ubatches were priced free of attention to the earlier,
    # which hid the -4..-7 % this machine's dense11 prompts run above the prices at every ubatch
    assert statistics.median(map(abs, errors.values())) < 0.08, errors


def test_later_ubatches_of_a_prompt_attend_to_the_earlier(tmp_path: Path) -> None:
    """A 4096-token prompt in ubatches of 512 against a 512-token one, everything on the H200: its
    ubatch j attends to j x 512 more cells (attention.mean_depths). Measured per-token speed ratios
    1.01 (dense11), 0.94 (moe15), 0.88 (mla16); pricing every ubatch as the first gave 1.0 for all.
    The 512-token test's one llama_decode call (SpeedParams.prompt_call_s) lifts every ratio a little."""
    measured = {(m, p): ts for m, p, ub, ts in _ubatch_runs() if ub == 512}
    sys.path.insert(0, str(ROOT))
    from benchmarks.speed_models import write_speed_model

    rig = str(PVF23 / "rig_full.toml")
    ratios: dict[str, float] = {}
    for model in ("dense11", "moe15", "mla16"):
        header = write_speed_model(model, tmp_path, header_only=True)
        tps = {p: evaluate(header, rig, ["-ngl", "99", "-fa", "1", "-b", "4096", "-ub", "512", "-p", str(p), "-n", "0"],
                           tool="bench").predicted.pp_tps for p in (512, 4096)}
        ratio, truth = tps[4096] / tps[512], measured[(model, 4096)] / measured[(model, 512)]
        assert abs(ratio - truth) < 0.06, (model, ratio, truth)
        ratios[model] = ratio
    assert ratios["mla16"] < min(ratios["moe15"], ratios["dense11"]) - 0.03  # MLA attends most to earlier cells


def test_fixed_layer_costs_bound_decode_of_small_layers(truth: list[dict[str, Any]]) -> None:
    full = next(r for r in truth if r["rig"] == "h200-full" and r["model"] == "moe15")
    cost: CostModel = full["cost"]
    pred = cost.predict(full["placement"])
    n_layers = cost.model.n_layer
    assert 1 / pred.tg_tps > n_layers * cost.device("CUDA0").speed.layer_us * 1e-6  # the launches alone
    assert abs(pred.tg_tps / full["tg"] - 1) < 0.15


@pytest.mark.parametrize(("engine", "tool", "argv", "pinned"), [
    ("llama.cpp", "server", ["-ngl", "10", "-lm", "none"], True),
    ("llama.cpp", "server", ["-ngl", "10", "--load-mode", "mmap"], False),
    ("llama.cpp", "bench", ["-ngl", "10", "-lm", "mlock"], True),
    ("llama.cpp", "server", ["-ngl", "10"], False),
    ("ik_llama.cpp", "server", ["-ngl", "10", "--no-mmap"], True),
    ("ik_llama.cpp", "bench", ["-ngl", "10", "-mmp", "0"], True),
    ("ik_llama.cpp", "bench", ["-ngl", "10", "-mmp", "1"], False),
])
def test_flags_that_pin_cpu_weights(engine: str, tool: str, argv: list[str], pinned: bool) -> None:
    assert dialect(engine).parse_args(argv, tool).pinned_weights is pinned
    spelled = {"llama.cpp": llama_cpp.SYNTAX, "ik_llama.cpp": ik_llama.SYNTAX}[engine][tool].pin_weights
    assert dialect(engine).parse_args(["-ngl", "1", *spelled], tool).pinned_weights
    server = {"llama.cpp": llama_cpp.SYNTAX, "ik_llama.cpp": ik_llama.SYNTAX}[engine]["server"]
    assert dialect(engine).traits.pin_flags == server.pin_weights != ()


@pytest.mark.parametrize("argv", [["-lm", "fast"], ["-mmp", "2"]])
def test_bad_load_modes_are_refused(argv: list[str]) -> None:
    with pytest.raises(InvalidArgumentError):
        dialect("llama.cpp").parse_args(argv, "bench")


def test_check_prices_pinned_flags_and_plan_offers_them(truth: list[dict[str, Any]]) -> None:
    row = next(r for r in truth if r["rig"] == "h200-a" and r["model"] == "dense11")
    model, cluster = row["cost"].model, row["cost"].cluster
    mapped = evaluate(model, cluster, ["-ngl", "8", "-c", "4096"])
    pinned = evaluate(model, cluster, ["-ngl", "8", "-c", "4096", "-lm", "none"])
    assert pinned.predicted.pp_tps > 2 * mapped.predicted.pp_tps
    assert pinned.predicted.tg_tps == pytest.approx(mapped.predicted.tg_tps)
    plan = plan_split(model, cluster, ctx=4096)
    assert any(n.startswith("-lm none loads the") for n in plan.notes), plan.notes


def test_plan_pins_cpu_weights_where_the_objective_gains(tmp_path: Path) -> None:
    """Pinning (-lm none / ik --no-mmap) is a priced decision: the pp plan of a MoE with experts in
    RAM takes it (op offload then copies at link speed), the balanced plan only when the unpinned
    plans fall below its prompt floor (above it, decode decides and pinning must gain it), tg plans
    do not (no decode gain by the margin), and RAM that cannot hold the CPU weights unpageable
    rules it out."""
    model = load_model("deepseek-v3")
    fast = plan_split(model, "seed", ctx=8192, objective="pp")
    assert fast.context.pinned_weights and fast.context.op_offload
    assert fast.args("server")[-2:] == ["-lm", "none"] and fast.args("bench")[-2:] == ["-lm", "none"]
    assert fast.env()["LLAMA_ARG_LOAD_MODE"] == "none"
    unpinned = fast.solve_stats["unpinned"]
    assert fast.predicted.pp_tps > unpinned["pp_tps"] * (1 + PIN_MARGIN)
    assert any(n.startswith("-lm none loads the") and "tok/s by the model" in n for n in fast.notes)
    back = evaluate(model, "seed", fast.args("server"))
    assert back.predicted.pp_tps == pytest.approx(fast.predicted.pp_tps)
    assert back.placement.layer_home == fast.placement.layer_home
    balanced = plan_split(model, "seed", ctx=8192)
    floor = BALANCED_PROMPT_FLOOR * fast.predicted.pp_tps * (1 - 1e-9)
    if balanced.context.pinned_weights:
        assert balanced.solve_stats["unpinned"]["pp_tps"] < floor
    else:
        assert balanced.predicted.pp_tps >= floor and "-lm" not in balanced.args("server")
        assert any(n.startswith("-lm none") for n in balanced.notes)  # offered, not taken
    tg = plan_split(model, "seed", ctx=8192, objective="tg")
    assert not tg.context.pinned_weights and "-lm" not in tg.args("server")
    assert any(n.startswith("-lm none") for n in tg.notes)  # offered, not taken
    ik = plan_split(model, "seed", ctx=8192, engine="ik_llama.cpp")
    # ik pins experts overridden to the CPU under mmap already: --no-mmap gains it nothing here
    assert not ik.context.pinned_weights and "--no-mmap" not in ik.args("server")
    assert all(h != "CPU" for h in ik.placement.layer_home)
    # 200 GiB of RAM: the ~250 GiB of CPU-held experts fit only pageable (paged from disk), so no
    # pinned plan; the same machine with the seed's 496 GiB pins them
    seed = (Path(__file__).parent.parent / "omni_place" / "data" / "presets" / "seed.toml").read_text()
    small = tmp_path / "small.toml"
    small.write_text(seed.replace("memory_gib = 496", "memory_gib = 200"))
    assert "memory_gib = 200" in small.read_text()
    paged = plan_split(model, str(small), ctx=8192, allow_paging=True)
    assert paged.feasible and not paged.context.pinned_weights and "-lm" not in paged.args("server")


@pytest.mark.parametrize(("tool", "argv", "on"), [
    ("server", ["--no-op-offload"], False), ("server", ["--no-op-offload", "--op-offload"], True),
    ("server", [], True), ("bench", ["-nopo", "1"], False), ("bench", ["--no-op-offload", "0"], True),
])
def test_op_offload_flags(tool: str, argv: list[str], on: bool) -> None:
    assert dialect("llama.cpp").parse_args(["-ngl", "10", *argv], tool).op_offload is on


def test_plan_turns_op_offload_off_only_where_it_pays(truth: list[dict[str, Any]]) -> None:
    """Op offload on or off is a priced decision: the plan's flags say which, read back the same,
    and the chosen way is at least as fast at prompt as the other for the same placement."""
    model = load_model("deepseek-v3")
    for objective in ("pp", "balanced"):
        plan = plan_split(model, "seed", ctx=8192, objective=objective)
        argv = plan.args("server")
        parsed = dialect("llama.cpp").parse_args(argv)
        assert parsed.op_offload is plan.context.op_offload
        other = [a for a in argv if a != "--no-op-offload"]
        if plan.context.op_offload:
            other.append("--no-op-offload")
        flipped = evaluate(model, "seed", other)
        assert plan.predicted.pp_tps >= flipped.predicted.pp_tps * 0.999
        if not plan.context.op_offload:
            assert plan.args("bench")[-2:] == ["-nopo", "1"] or "-nopo" in plan.args("bench")
    with pytest.raises(InvalidArgumentError):
        dialect("ik_llama.cpp").encode(model, plan.placement, plan.cluster, plan.context, plan.usage).args(
            "server", op_offload=False)


@pytest.mark.parametrize(("arch", "weight_type", "moe"), [("llama", "q4_0", False), ("qwen3moe", "q4_k", True),
                                                         ("gpt-oss", "mxfp4", True)])
def test_cpu_repack_bytes_are_the_engines(tmp_path: Path, arch: str, weight_type: str, moe: bool) -> None:
    """With no GPU in front, the CPU backend copies Q4_0/Q4_K/IQ4_NL/MXFP4 matmul weights (experts
    too) into CPU_REPACK buffers: allocated memory, which never pages from the file. The real
    libllama's `CPU_REPACK model buffer size` line is the model's repacked bytes."""
    sys.path.insert(0, str(ROOT))
    from tests.arch_models import engine_available, engine_load, write_model

    if not engine_available():
        pytest.skip("no libllama")
    kw: dict[str, Any] = dict(n_expert=8, n_expert_used=2, n_ff_exp=256) if moe else {}
    path = write_model(tmp_path / f"{arch}.gguf", arch, n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512,
                       n_vocab=512, weight_type=weight_type, **kw)
    lines = engine_load(path, n_ctx=256).log_lines("CPU_REPACK model buffer size")
    assert lines, "the engine repacked nothing"
    engine_mib = float(lines[0].split("=")[1].split()[0])
    model = load_model(path)
    cost = CostModel(model, resolve_cluster("seed"), Context(ctx=256, allow_paging=True))
    cpu = cpu_only(model)
    assert repacked_bytes(cost, cpu) / 2**20 == pytest.approx(engine_mib, abs=0.006)
    use = next(u for u in cost.usage(cpu) if u.name == CPU)
    assert use.pageable_bytes == use.weights_bytes - repacked_bytes(cost, cpu) < use.weights_bytes
    # a GPU first in the device list: its pinned host buffer (CPU_Mapped with mmap) wins, no repack
    assert repacked_bytes(cost, cpu_only(model, ("CUDA0", "CUDA1"))) == 0


def test_switches_share_bytes_and_change_prompt_work(truth: list[dict[str, Any]]) -> None:
    row = next(r for r in truth if r["rig"] == "h200-a" and r["model"] == "moe15" and r["config"] == "ncmoe")
    cost: CostModel = row["cost"]
    off = cost.with_switches(op_offload=False)
    p = row["placement"]
    assert off.kv == cost.kv and off.compute is cost.compute  # the byte tables are shared
    assert cost.context.op_offload and not off.context.op_offload
    assert off.op_offload_bound == 0 < cost.op_offload_bound
    # both the placement replayed: off, the GPU's own layers' peak (the fitted role's within 1 MiB);
    # on, with its expert copies, which the engine may fit in less (moe15 --n-cpu-moe 20 on the
    # H200: 342.26 MiB, all on the GPU 341.5)
    gpu_off, gpu_on = (next(u for u in c.usage(p) if u.name == "CUDA0").compute_bytes for c in (off, cost))
    own = cost.compute.device_bytes(True, True)
    assert abs(gpu_off - own) < 2**20 and gpu_on != gpu_off
    assert "pcie_stream" in cost.predict(p).pp_breakdown and "pcie_stream" not in off.predict(p).pp_breakdown
    assert cost.with_switches().context == cost.context


PLANS = ROOT / "benchmarks" / "results" / "plans_vs_fit"


@pytest.fixture(scope="module")
def mla_runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The mla16 (deepseek2, MLA, 64 experts) and moe15 runs of benchmarks/results/plans_vs_fit,
    each priced as it ran (placement from its -v log, op offload and pinning from its flags, the
    CPU figure of the rig files corrected by cpu_bw_eff 1.4) with the routing replayed from the
    speed model's own router."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.speed_models import replay_routing, write_speed_model

    tmp = tmp_path_factory.mktemp("plans_vs_fit")
    with tarfile.open(PLANS / "logs.tar.xz") as tar:
        tar.extractall(tmp, filter="data", members=[m for m in tar.getmembers() if "dense11" not in m.name])
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rec in sorted(PLANS.glob("records_*.jsonl")):
        logs = tmp / "res" / f"res_{rec.stem.removeprefix('records_')}" / "logs"
        for r in load_records([rec]):
            if r["model"] == "dense11" or r["status"] != "ok" or not r.get("avg_ts"):
                continue
            row = rows.setdefault((r["rig"], r["model"], r["config"]), {"tg": [], "pp": [], "argv": r["argv"]})
            row["pp" if r["test"].startswith("pp") else "tg"].append(float(r["avg_ts"]))
            row.setdefault("log", (logs / f"{r['model']}.{r['rig']}.r{r['round']}" / r["log"]).read_text())
    headers = {m: write_speed_model(m, tmp / "hdr", header_only=True) for m in ("mla16", "moe15")}
    routing = {m: replay_routing(h, "raw") for m, h in headers.items()}  # the routers those runs had
    models = {m: load_model(h) for m, h in headers.items()}
    rules = dialect("llama.cpp")
    out = []
    for (rig, model, config), row in sorted(rows.items()):
        parsed = rules.parse_args(row["argv"], "bench")
        context = rules.traits.context(ctx=512 + 32, n_ubatch=512, pinned_weights=parsed.pinned_weights,
                                       op_offload=parsed.op_offload)
        cluster = resolve_cluster(str(PLANS / f"rig_{rig.removeprefix('h200-')}.toml"))
        uniform = CostModel(models[model], cluster, context, SpeedParams(cpu_bw_eff=1.4))
        placement = placement_from_log(row["log"], models[model], ["CUDA0"], "llama.cpp", row["argv"])
        assert placement is not None, (rig, model, config)
        out.append({"rig": rig, "model": model, "config": config, "placement": placement, "uniform": uniform,
                    "cost": uniform.with_routing(routing[model]), "pinned": parsed.pinned_weights,
                    "tg": statistics.median(row["tg"]), "pp": statistics.median(row["pp"])})
    return out


def _err(row: dict[str, Any], kind: str, cost: str = "cost") -> float:
    pred = row[cost].predict(row["placement"])
    return float((pred.tg_tps if kind == "tg" else pred.pp_tps) / row[kind] - 1)


def test_mla_experts_in_ram_are_priced_with_the_routing_they_had(mla_runs: list[dict[str, Any]]) -> None:
    """deepseek2's sigmoid router saturates on the speed model (logits of ~45 sd: F32 sigmoid
    ties at 1.0, the lowest index wins), so each ubatch touched ~59 % of mla16's experts and op
    offload copied only those rows. Priced with that routing, every mla16 run with weights in
    RAM is within 30 % at prompt (uniform routing: 24-47 % too slow, every run) and, unpinned,
    within 20 % at decode."""
    partial = [r for r in mla_runs if r["model"] == "mla16" and r["rig"] != "h200-full"]
    assert len(partial) >= 20
    cost: CostModel = partial[0]["cost"]
    assert 0.5 < cost.expert_hit < 0.7 and partial[0]["uniform"].expert_hit > 0.999
    pp = [_err(r, "pp") for r in partial]
    assert max(map(abs, pp)) < 0.30, pp
    assert statistics.median(map(abs, pp)) < 0.12, pp
    assert max(_err(r, "pp", "uniform") for r in partial) < -0.2
    tg = [_err(r, "tg") for r in partial if not r["pinned"]]
    assert max(map(abs, tg)) < 0.20, tg


def test_replayed_routing_of_a_spreading_router_is_the_uniform_default(mla_runs: list[dict[str, Any]]) -> None:
    """moe15's softmax router spreads each ubatch over all 128 experts: its replay prices as the
    default (every expert copied, one MMQ tile each)."""
    for r in (r for r in mla_runs if r["model"] == "moe15"):
        assert r["cost"].expert_hit == pytest.approx(1.0)
        assert r["cost"].tile_factor == pytest.approx(r["uniform"].tile_factor)
        assert _err(r, "pp") == pytest.approx(_err(r, "pp", "uniform"), abs=1e-9)


def test_a_routing_must_count_one_ubatch(mla_runs: list[dict[str, Any]]) -> None:
    cost: CostModel = mla_runs[0]["uniform"]
    n, k = cost.model.hparams.n_expert, cost.model.hparams.n_expert_used
    with pytest.raises(InvalidArgumentError):
        cost.with_routing([[k * cost.n_tokens - 1] + [0] * (n - 1)])  # one token short
    with pytest.raises(InvalidArgumentError):
        cost.with_routing([])
    skewed = cost.with_routing([[k * cost.n_tokens] + [0] * (n - 1)])
    assert skewed.expert_hit == pytest.approx(1 / n)
    assert skewed.tile_factor == pytest.approx(1.0)  # 3072 tokens: 24 whole tiles


PVF23 = ROOT / "benchmarks" / "results" / "plans_vs_fit_23"


@pytest.fixture(scope="module")
def idle_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """benchmarks/results/plans_vs_fit_23 (CPU probed on the idle machine, routers of unit-spread
    logits) priced by ``speed_truth report`` with the default parameters, and with MLA's fixed
    decode cost left out."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.speed_models import write_speed_model
    from benchmarks.speed_truth import main

    tmp = tmp_path_factory.mktemp("pvf23")
    for m in ("dense11", "moe15", "mla16"):
        write_speed_model(m, tmp / "hdr", header_only=True)
    out = {}
    for name, extra in (("default", []), ("no_mla", ["--params", '{"gpu_mla_layer_s": 0}', "--only-model", "mla16"])):
        path = tmp / f"{name}.json"
        assert main(["report", str(PVF23), "--headers", str(tmp / "hdr"), "--rigs", str(PVF23), "--json", str(path),
                     *extra]) == 0
        out[name] = json.loads(path.read_text())
    return out


def test_whole_gpu_decode_prices_mla_attention(idle_runs: dict[str, list[dict[str, Any]]],
                                               mla_runs: list[dict[str, Any]]) -> None:
    """Decode on the GPU alone is kernel-bound for these small layers: dense, GQA MoE and MLA MoE
    within 6 % with MLA attention's and a MoE FFN's own fixed costs per layer (``gpu_mla_layer_s``
    and ``gpu_moe_layer_s`` were set from this run's mla16 and moe15 rows, so those are in-sample;
    the dense row is the weight types' H200 fit, quant_speed.md); held out: the first run's
    whole-GPU mla16 rows (another machine, raw routers) and this run's partial offloads, which
    without the MLA term are priced too fast by more than with it."""
    full = {r["model"]: r for r in idle_runs["default"] if r["rig"] == "h200-full"}
    assert set(full) == {"dense11", "moe15", "mla16"}
    assert all(abs(r["tg_err"]) < 0.06 for r in full.values()), full
    first = [r for r in mla_runs if r["model"] == "mla16" and r["rig"] == "h200-full"]
    assert first and all(abs(_err(r, "tg")) < 0.05 for r in first)
    bare = {(r["rig"], r["config"]): r["tg_err"] for r in idle_runs["no_mla"]}
    assert bare[("h200-full", "fit")] > 0.4
    with_mla = [r["tg_err"] for r in idle_runs["default"] if r["model"] == "mla16" and r["rig"] != "h200-full"]
    assert statistics.median(map(abs, with_mla)) < statistics.median(
        abs(e) for (rig, _), e in bare.items() if rig != "h200-full")


def test_uncalibrated_decode_on_the_idle_machine(idle_runs: dict[str, list[dict[str, Any]]]) -> None:
    """With the CPU figure ``devices --measure`` read on the idle machine and the default
    parameters, partial offloads of all three architectures decode within the issue's +/-25 %
    but for one single-sample run (the same placement measured 47.0 and 41.2 tok/s at the two
    levels), median within 10 % per level; prompt within +/-36 %."""
    rows = [r for r in idle_runs["default"] if r["rig"] != "h200-full"]
    assert {r["model"] for r in rows} == {"dense11", "moe15", "mla16"} and len(rows) >= 30
    tg = sorted(abs(r["tg_err"]) for r in rows)
    assert tg[-2] < 0.25 and tg[-1] < 0.30, tg
    for rig in ("h200-a", "h200-b"):
        assert statistics.median(abs(r["tg_err"]) for r in rows if r["rig"] == rig) < 0.10
    assert max(abs(r["pp_err"]) for r in rows) < 0.36


def test_a_fitters_prompt_test_is_read_from_its_own_load(tmp_path: Path) -> None:
    """Under ``-fitt`` llama-bench loads again for each test: dense11's ``pp512`` ran with 12
    layers in RAM (the load that served the 512-token context), its ``tg32`` with 11 (the last
    load); ``report``, ``vram`` and calibration import price each test on its own load."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.speed_models import write_speed_model

    name = "res/res_a/logs/dense11.h200-a.r2/llama.cpp.fit.0.log"
    with tarfile.open(PVF23 / "logs.tar.xz") as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        log = fh.read().decode(errors="replace")
    model = load_model(write_speed_model("dense11", tmp_path, header_only=True))
    cpu_layers = {ub: sum(h == CPU for h in placement.layer_home)
                  for ub in (512, None)
                  if (placement := placement_from_log(log, model, ["CUDA0"], "llama.cpp", ["-fitt", "1024"],
                                                      n_ubatch=ub)) is not None}
    assert cpu_layers == {512: 12, None: 11}


def test_ik_pins_overridden_experts_even_under_mmap(truth: list[dict[str, Any]]) -> None:
    """ik_llama.cpp puts tensors overridden to the CPU in CUDA_Host even with mmap on
    (src/llama-load-tensors.cpp:260-271; H200 -v logs: `buffer type overridden to CUDA_Host`, and
    `-ot exps=CPU` prompted 2419 tok/s mmap'd against 2604 with -mmp 0, moe15,
    benchmarks/results/ik_24.md); its whole CPU layers stay mapped (`CPU buffer`, dense11 -ngl 10
    780 tok/s against 2765 with -mmp 0). Mainline maps both."""
    row = next(r for r in truth if r["model"] == "moe15")
    model, cluster = row["cost"].model, row["cost"].cluster
    experts = ["-ngl", "999", "-ot", "exps=CPU", "-c", "4096"]
    ik_mapped, ik_pinned = (evaluate(model, cluster, argv, engine="ik_llama.cpp")
                            for argv in (experts, [*experts, "-mmp", "0"]))
    assert ik_mapped.predicted.pp_tps == pytest.approx(ik_pinned.predicted.pp_tps, rel=1e-6)
    ml_mapped, ml_pinned = (evaluate(model, cluster, argv) for argv in (experts, [*experts, "-lm", "none"]))
    assert ml_pinned.predicted.pp_tps > 2 * ml_mapped.predicted.pp_tps
    layers = ["-ngl", "8", "-c", "4096"]
    ik_layers_mapped, ik_layers_pinned = (evaluate(model, cluster, argv, engine="ik_llama.cpp")
                                          for argv in (layers, [*layers, "-mmp", "0"]))
    assert ik_layers_pinned.predicted.pp_tps > 2 * ik_layers_mapped.predicted.pp_tps


def test_a_head_left_on_the_cpu_is_copied_into_the_first_gpus_compute_buffer(
        truth: list[dict[str, Any]]) -> None:
    """ik_llama.cpp's -ngl leaves the output head on the CPU; op offload then copies it into
    CUDA0's compute buffer: dense11 -ngl 10 at 512 tokens measured 328.02 MiB there, -ngl 33
    (head on the GPU) 152.13 (benchmarks/results/ik_24 logs). Priced as mainline's replay plus
    ik's margin (ik_llama.IK_COMPUTE_MARGIN): never under, at most that margin over."""
    row = next(r for r in truth if r["model"] == "dense11")
    model, cluster = row["cost"].model, row["cost"].cluster

    def cuda0_compute_mib(argv: list[str]) -> float:
        plan = evaluate(model, cluster, [*argv, "-p", "512", "-n", "0", "-ub", "512", "-fa", "1"],
                        engine="ik_llama.cpp", tool="bench")
        return next(u.compute_bytes for u in plan.usage if u.name == "CUDA0") / 2**20

    partial = cuda0_compute_mib(["-ngl", "10"])
    assert 328.02 - 32 <= partial <= 328.02 + ik_llama.IK_COMPUTE_MARGIN / 2**20
    assert cuda0_compute_mib(["-ngl", "33"]) < partial - 100


@pytest.fixture(scope="module")
def second_rig(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """benchmarks/results/engine_compare (2x H200 with ballasts, both engines, the synthetic
    dense15 / moe33 of synth_gguf) priced by ``speed_truth report`` with the default parameters:
    the rig files as recorded (a CPU copy probe of 49 GB/s, read while the engines were being
    built) and with an idle probe's figure (rescore_25.md)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.cpu_prompt import ENGINE_COMPARE, ENGINE_COMPARE_CPU_GBS
    from benchmarks.speed_truth import main

    tmp = tmp_path_factory.mktemp("engine_compare")
    out = {}
    for name, extra in (("recorded", []), ("idle_cpu", ["--cpu-gbs", str(ENGINE_COMPARE_CPU_GBS)])):
        path = tmp / f"{name}.json"
        folder = str(ENGINE_COMPARE)
        assert main(["report", folder, "--headers", folder, "--rigs", folder, "--json", str(path), *extra]) == 0
        out[name] = json.loads(path.read_text())
    return out


def _by_rig_engine(rows: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        # mainline's moe33 prompt: the synthetic router's collapse, tested on its own below
        if not (kind == "pp" and r["model"] == "moe33" and r["engine"] == "llama.cpp"):
            out.setdefault((r["rig"], r["engine"]), []).append(abs(r[f"{kind}_err"]))
    return out


def test_second_rig_uncalibrated_accuracy(second_rig: dict[str, list[dict[str, Any]]]) -> None:
    """Held out from every fit: both engines on both rigs, 28 configurations (the re-run's rounds
    merged). With the idle CPU figure decode is within the issue's +/-25 % but for two ik runs of
    moe33 on rig_12 (one sample each: --n-cpu-moe +26 %, and the plan +42 %, which ran at 44.7
    tok/s where -ot exps=CPU, 14 more expert layers in RAM, ran 54.1), median <= 20 % per rig and
    engine (ik's fused experts priced: its moe33 on rig_12_4 -19..+1 %, was -28..-9 %); prompt
    (mainline's moe33 aside) median <= 22 % (ik's <= 35 %), max 58 %: ik's omni_place plan of moe33
    on one GPU, one sample at 633 tok/s where -ot exps=CPU, 14 more expert layers in RAM, ran 690
    (its decode is the +42 % above). As recorded, the CPU figure read under load prices every
    decode too slow."""
    recorded, idle = second_rig["recorded"], second_rig["idle_cpu"]
    assert len(idle) == 28 and {(r["rig"], r["engine"]) for r in idle} == {
        (rig, eng) for rig in ("rig_12", "rig_12_4") for eng in ("llama.cpp", "ik_llama.cpp")}
    for (rig, engine), errs in _by_rig_engine(idle, "tg").items():
        assert statistics.median(errs) < 0.22 and max(errs) < 0.45, (rig, engine, errs)
    assert sum(e > 0.25 for errs in _by_rig_engine(idle, "tg").values() for e in errs) <= 2
    for (rig, engine), errs in _by_rig_engine(idle, "pp").items():
        bound = 0.35 if engine == "ik_llama.cpp" else 0.25
        assert statistics.median(errs) < bound and max(errs) < 0.58, (rig, engine, errs)
    assert all(r["tg_err"] < 0 for r in recorded)
    assert all(statistics.median(e) > 0.25 for e in _by_rig_engine(recorded, "tg").values())


def test_second_rig_moe_prompt_shows_the_synthetic_routers_collapse(
        second_rig: dict[str, list[dict[str, Any]]]) -> None:
    """synth_gguf's moe33 routes every token of a ubatch to nearly the same experts (tiled
    all-positive weights; its routing cannot be replayed, so it is priced uniform). Mainline
    copies only the experts a ubatch touched and ran 16-20x the uniform price. ik_llama.cpp
    offloads no expert matmul of moe33 at ubatch 512 (256 experts, 8 used: 512 x 8 < 32 x 256,
    ik ggml-cuda.cu:5180-5207), so the CPU computes them at ik's own kernels' rate
    (weight_types.toml ik_cpu_expert_prompt; Q4_K's is the geometric mean of two 2-vCPU machines'
    measured and this Xeon's from these runs, benchmarks/cpu_prompt.ik_host_factors), at 16 tokens
    per expert 1.2x their time (kernels.ik_expert_time_scale): -11..+5 % but for the plan's one
    sample on rig_12 (+37 %, see above). At mainline's rate (before session 33) they came out 2-38 %
    under what ran; at the EPYC's alone, +7..+73 %; session 33's columns -0..+19 % (+57 %)."""
    moe = [r for r in second_rig["idle_cpu"] if r["model"] == "moe33"]
    assert all(r["pp_err"] < -0.9 for r in moe if r["engine"] == "llama.cpp")
    ik = {(r["rig"], r["config"]): r["pp_err"] for r in moe if r["engine"] == "ik_llama.cpp"}
    assert len(ik) == 8 and ik.pop(("rig_12", "omni_place")) < 0.45
    assert all(-0.13 < e < 0.1 for e in ik.values()), ik


@pytest.mark.parametrize("simd", [None, "avx512"])
def test_rig_file_states_the_cpu_simd_it_is_given(tmp_path: Path, simd: str | None) -> None:
    from benchmarks import speed_truth
    from omni_place.devices.cluster_file import load_cluster

    out = tmp_path / "rig.toml"
    argv = ["rig", "h200-x", "--gpu-free-mib", "3059", "--cpu-gbs", "92", "--cpu-gib", "100", "--threads", "16",
            "-o", str(out), *(["--simd", simd] if simd else [])]
    assert speed_truth.main(argv) == 0
    cpu = next(d for d in load_cluster(out).devices if d.kind == "cpu")
    assert (cpu.simd, cpu.threads, cpu.memory_bytes) == (simd, 16, 100 << 30)
