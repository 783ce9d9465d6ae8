"""plan_split / evaluate / the llama.cpp dialect: feasibility, round trips, traps, CLI exits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_place.cli import main
from omni_place.cost import CPU, EXPERT_OPTIONS, Placement, expert_kind
from omni_place.devices import Cluster, Device
from omni_place.engines import llama_cpp
from omni_place.errors import InvalidArgumentError, NothingFitsError
from omni_place.model import load_model
from omni_place.plan import evaluate, plan_split
from omni_place.reference_models import deepseek_v3, write_header_only
from omni_place.units import GiB


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory: pytest.TempPathFactory):
    p = write_header_only(deepseek_v3(), tmp_path_factory.mktemp("ds") / "ds.gguf")[0]
    return load_model(p)


def rig(*gpus: tuple[float, float], ram_gib: float = 512, cpu_bw: float = 300) -> Cluster:
    devs = [Device(f"CUDA{i}", "gpu", int(mem * GiB), bw, tflops=200.0, link_gbs=63.0)
            for i, (mem, bw) in enumerate(gpus)]
    devs.append(Device("CPU", "cpu", int(ram_gib * GiB), cpu_bw, threads=32))
    return Cluster("test", tuple(devs))


def roundtrip(model, plan) -> Placement:
    """Decode the emitted flags with the engine's own rules."""
    parsed = llama_cpp.parse_args(plan.args("server"))
    return llama_cpp.decode(model, parsed, list(plan.default_order))


def test_seed_plan_fits_and_flags_reproduce_it(deepseek) -> None:
    plan = plan_split(deepseek, "seed", ctx=32768)
    assert plan.feasible
    assert all(u.used_bytes <= u.capacity_bytes for u in plan.usage if u.kind != "cpu")
    back = roundtrip(deepseek, plan)
    assert back.layer_home == plan.placement.layer_home
    assert back.output == plan.placement.output
    for il, home in enumerate(back.layer_home):
        if home != CPU and deepseek.layers[il].has_experts:
            present = {expert_kind(t) for t in deepseek.layers[il].expert_tensors}
            assert back.cpu_experts[il] == plan.placement.cpu_experts[il] & present, il
    # the same flags in llama-bench's dialect
    bench = plan.args("bench")
    assert "/" in bench[bench.index("-ts") + 1] and "," not in bench[bench.index("-ts") + 1]
    d = plan.to_dict()
    for key in ("engine", "args", "n_gpu_layers", "tensor_split", "overrides", "devices", "predicted", "feasible"):
        assert key in d
    assert d["predicted"]["tg_tps"] > 0 and d["predicted"]["pp_tps"] > 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m0=st.floats(8, 200), m1=st.floats(4, 64), bw0=st.floats(300, 3000), bw1=st.floats(300, 3000),
       ctx=st.sampled_from([4096, 32768, 131072]))
def test_every_plan_fits_and_roundtrips(deepseek, m0: float, m1: float, bw0: float, bw1: float, ctx: int) -> None:
    cluster = rig((m0, bw0), (m1, bw1))
    plan = plan_split(deepseek, cluster, ctx=ctx)
    assert plan.feasible
    for u in plan.usage:
        if u.kind != "cpu":
            assert u.used_bytes <= u.capacity_bytes
    back = roundtrip(deepseek, plan)
    assert back.layer_home == plan.placement.layer_home and back.output == plan.placement.output


@given(counts=st.lists(st.integers(0, 40), min_size=1, max_size=6), n_layer=st.integers(1, 160))
def test_exact_count_encoding_matches_engine_rule(counts: list[int], n_layer: int) -> None:
    # -ngl ΣL+1, -ts L0..L_last+1 gives exactly L_d layers per device: llama.cpp offloads the
    # last ngl of the n_layer+1 slots and picks each slot's device by upper_bound over the
    # cumulative -ts fractions (src/llama-model.cpp:1580-1618, load_tensors)
    while sum(counts) > n_layer:
        counts[counts.index(max(counts))] -= 1
    if sum(counts) == 0:
        return
    ts = list(counts)
    last = max(i for i, c in enumerate(counts) if c > 0)
    ts[last] += 1
    slots = llama_cpp.assign_layers(n_layer + 1, sum(counts) + 1, ts, len(counts))
    assert [sum(1 for s in slots[:-1] if s == d) for d in range(len(counts))] == counts
    assert slots[-1] == last
    assert sum(1 for s in slots[:-1] if s < 0) == n_layer - sum(counts)


def test_engine_rule_worked_example() -> None:
    # 61 layers + output, -ts 75,25 (the rule of src/llama-model.cpp:1580-1618): ngl 99 gives
    # 47 / 14 + output, ngl 19 keeps 43 layers on the CPU and gives 15 / 3 + output
    a = llama_cpp.assign_layers(62, 99, [75, 25], 2)
    assert a[:-1].count(0) == 47 and a[:-1].count(1) == 14 and a[-1] == 1
    b = llama_cpp.assign_layers(62, 19, [75, 25], 2)
    assert b[:-1].count(-1) == 43 and b[:-1].count(0) == 15 and b[:-1].count(1) == 3


def test_n_cpu_moe_trap_is_infeasible_and_plan_is_not(deepseek) -> None:
    # --n-cpu-moe moves the FIRST layers' experts: the small last card keeps all its experts
    cluster = rig((96, 1790), (32, 1790))
    checked = evaluate(deepseek, cluster, ["-ngl", "99", "-ts", "75,25", "--n-cpu-moe", "40", "-c", "32768"])
    assert not checked.feasible
    over = [u for u in checked.usage if not u.fits]
    assert [u.name for u in over] == ["CUDA1"]
    assert "CUDA1 overflows by" in checked.notes[0]
    assert plan_split(deepseek, cluster, ctx=32768).feasible


def test_ngl_past_compute_buffers_is_infeasible(deepseek) -> None:
    args = ["-ngl", "99", "-cmoe", "-c", "8192"]
    big = next(u for u in evaluate(deepseek, rig((200, 1000)), args).usage if u.name == "CUDA0")
    assert big.compute_bytes > 0
    # a card where the weights and KV fit but the compute buffers do not
    cap_gib = (big.weights_bytes + big.kv_bytes + big.compute_bytes // 2) / GiB + 0.5  # + default margin
    checked = evaluate(deepseek, rig((cap_gib, 1000)), args)
    gpu = next(u for u in checked.usage if u.name == "CUDA0")
    assert gpu.weights_bytes + gpu.kv_bytes <= gpu.capacity_bytes
    assert not checked.feasible


def test_threads_flag_prices_the_cpu_at_its_thread_count(deepseek) -> None:
    """-t N prices the CPU at N threads (Cluster.with_cpu_threads): decode with CPU-held experts reads
    at 1 / (1/B - 1/(T b) + 1/(N b)) (b = CPU_THREAD_GBS), the figure B at the CPU's T threads kept;
    0 or less is the engine's default and more than the CPU's threads compute no faster, so both
    price as no -t. A CPU whose figure its threads alone could not read is thread-bound: linear."""
    from omni_place.devices import CPU_THREAD_GBS

    cluster = rig((96, 1790), cpu_bw=100)  # 32 threads: their 320 GB/s beyond the memory's 100
    base = ["-ngl", "99", "-cmoe", "-c", "4096"]
    full = evaluate(deepseek, cluster, base)
    half = evaluate(deepseek, cluster, [*base, "-t", "16"])
    assert not any("-t" in a for a in half.assumptions)
    assert half.predicted.tg_tps < full.predicted.tg_tps
    b = CPU_THREAD_GBS
    rate16 = 1 / (1 / 100 - 1 / (32 * b) + 1 / (16 * b))
    cpu_full = full.predicted.tg_breakdown[CPU]
    assert half.predicted.tg_breakdown[CPU] == pytest.approx(cpu_full * 100 / rate16, rel=0.05)
    for same in (["-t", "0"], ["--threads", "-1"], ["-t", "32"], ["--threads=64"]):
        assert evaluate(deepseek, cluster, [*base, *same]).predicted.tg_tps == full.predicted.tg_tps
    slow = rig((96, 1790), cpu_bw=500)  # beyond 32 threads' 320 GB/s: half the threads, half the rate
    assert slow.with_cpu_threads(16).cpu.bandwidth_gbs == pytest.approx(250)
    assert llama_cpp.parse_args(["-t", "12"]).threads == 12
    with pytest.raises(InvalidArgumentError, match="not an integer"):
        llama_cpp.parse_args(["-t", "16,8"], tool="bench")
    with pytest.raises(InvalidArgumentError, match="out of range"):
        llama_cpp.parse_args(["-t", "5000"])


def test_no_host_is_named_in_check_refused_by_ik_and_left_out_of_calibration(deepseek) -> None:
    """--no-host (mainline's switch; llama-bench's 0|1) puts CPU-held weights in the CPU's extra buffers,
    which op offload cannot copy: check says so instead of listing it among the flags assumed not to
    matter; ik_llama.cpp has no such flag; calibrate leaves a record of it out, counted."""
    from omni_place.bench.llamabench import import_text
    from omni_place.engines import dialect
    from omni_place.engines.common import NO_HOST_NOTE

    cluster = rig((96, 1790))
    for argv, tool in ((["-ngl", "99", "-cmoe", "--no-host"], "server"), (["-ngl", "99", "--no-host", "1"], "bench")):
        plan = evaluate(deepseek, cluster, argv, tool=tool)
        assert NO_HOST_NOTE in plan.assumptions and not any("not priced (assumed" in a for a in plan.assumptions)
    assert not llama_cpp.parse_args(["--no-host", "0"], tool="bench").no_host
    with pytest.raises(InvalidArgumentError, match="no --no-host"):
        dialect("ik_llama.cpp").parse_args(["--no-host"], "server")
    record = {"n_prompt": 512, "n_gen": 0, "avg_ts": 380.0, "samples_ts": [380.0, 381.0], "n_gpu_layers": 20,
              "n_batch": 2048, "n_ubatch": 512, "flash_attn": 1, "type_k": "f16", "type_v": "f16",
              "split_mode": "layer", "tensor_split": "0.00", "tensor_buft_overrides": "none", "n_cpu_moe": 0,
              "devices": "auto", "no_op_offload": 0, "n_threads": 16, "n_depth": 0}
    both = "\n".join(json.dumps(dict(record, no_host=flag)) for flag in (True, False))
    got = import_text(both, deepseek, cluster)
    assert len(got.points) == 1 and sum("--no-host" in k for k in got.skipped) == 1


def test_parse_args_errors() -> None:
    with pytest.raises(InvalidArgumentError, match="not an integer"):
        llama_cpp.parse_args(["-ngl", "14,18"])
    with pytest.raises(InvalidArgumentError, match="not <regex>="):
        llama_cpp.parse_args(["-ot", "exps"])
    with pytest.raises(InvalidArgumentError, match="valid regex"):
        llama_cpp.parse_args(["-ot", "blk.(=CPU"])
    with pytest.raises(InvalidArgumentError, match="needs a value"):
        llama_cpp.parse_args(["-ts"])


def test_nothing_fits(deepseek) -> None:
    with pytest.raises(NothingFitsError, match="nothing fits"):
        plan_split(deepseek, rig((8, 900), ram_gib=2), ctx=163840)


def test_cli_plan_formats_and_exit_codes(deepseek, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(deepseek.path)
    assert main(["plan", model, "--preset", "seed", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["feasible"] and d["devices"][0]["name"] == "CUDA0"
    assert main(["plan", model, "--preset", "seed", "--format", "args"]) == 0
    assert capsys.readouterr().out.startswith("-ngl ")
    assert main(["plan", model, "--preset", "seed", "--format", "env", "--objective", "tg"]) in (0, 2)
    out, err = capsys.readouterr()
    # env carries the plan, or says which flag has no variable (--no-op-offload has none)
    assert "LLAMA_ARG_N_GPU_LAYERS=" in out or "has no LLAMA_ARG_ environment variable" in err
    assert main(["plan", model, "--preset", "seed"]) == 0
    assert "predicted: decode" in capsys.readouterr().out
    # bad input: exit 2, one line + hint
    assert main(["plan", model, "--preset", "seed", "--objective", "fast"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and err[1].startswith("hint: ")
    assert main(["plan", str(tmp_path / "missing.gguf"), "--preset", "seed"]) == 2
    assert main(["plan", model, "--preset", "seed", "--cluster", "x.toml"]) == 2
    # nothing fits: exit 3
    small = tmp_path / "small.toml"
    small.write_text('[[devices]]\nname = "CUDA0"\nkind = "gpu"\nmemory_gib = 8\nbandwidth_gbs = 900\n'
                     '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 2\nbandwidth_gbs = 80\n')
    assert main(["plan", model, "--cluster", str(small), "--ctx", "163840"]) == 3
    assert "nothing fits" in capsys.readouterr().err
    # check: fits -> 0, overflow -> 3
    capsys.readouterr()
    assert main(["check", model, "--preset", "seed", "--format", "json", "--", "-ngl", "99", "-ts", "3,1"]) == 3
    out = json.loads(capsys.readouterr().out)
    assert out["feasible"] is False
    plan_args = plan_split(deepseek, "seed").args("server")
    assert main(["check", model, "--preset", "seed", "--", *plan_args]) == 0


def test_cli_pin_and_split_mode_switches(deepseek, capsys: pytest.CaptureFixture[str]) -> None:
    """--no-pin keeps mmap and --no-split-modes the layer split, whatever the planner would take."""
    model = str(deepseek.path)
    assert main(["plan", model, "--preset", "seed", "--format", "argv", "--objective", "pp"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["-lm", "none"]  # pinning pays the prompt here
    assert main(["plan", model, "--preset", "seed", "--format", "argv", "--objective", "pp", "--no-pin"]) == 0
    assert "-lm" not in capsys.readouterr().out.splitlines()
    assert main(["plan", "llama-3.3-70b", "--preset", "seed", "--format", "argv"]) == 0
    assert "-sm" in capsys.readouterr().out.splitlines()  # a dense model on 96 + 32 GB: -sm tensor
    assert main(["plan", "llama-3.3-70b", "--preset", "seed", "--format", "json", "--no-split-modes"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert "-sm" not in d["args"] and [m["mode"] for m in d["split_modes"]] in ([], ["layer"])


def test_expert_options_are_the_override_sets() -> None:
    assert EXPERT_OPTIONS[0] == frozenset() and EXPERT_OPTIONS[-1] >= {"gate", "up", "down"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m0=st.floats(8, 200), m1=st.floats(4, 64), ctx=st.sampled_from([4096, 32768, 131072]),
       ubatch=st.sampled_from([128, 512, 2048]), rpc=st.booleans())
def test_what_the_core_returns_fits_by_the_byte_model(deepseek, m0: float, m1: float, ctx: int, ubatch: int,
                                                     rpc: bool) -> None:
    """The core's memory arrays are the usage model rounded up: every optimum it returns, in
    both memory variants, must fit when re-priced in exact bytes (no silent fallback)."""
    from omni_place.cost import Context, CostModel
    from omni_place.problem import build_arrays, candidate_orders, core_candidates

    cluster = rig((m0, 1800), (m1, 900))
    if rpc:
        devs = (Device("RPC0", "rpc", int(24 * GiB), 900.0, link_gbs=1.25, link_latency_us=150,
                       endpoint="10.0.0.2:50052"),) + cluster.devices
        cluster = Cluster("rpc", devs)
    cost = CostModel(deepseek, cluster, Context(ctx=ctx, n_ubatch=ubatch))
    orders = candidate_orders(cluster, cost)
    arr = build_arrays(cost, orders)
    for _, placement, _ in core_candidates(arr, orders, cost, 1.0, 1e-3, {}):
        over = [(u.name, u.used_bytes - u.capacity_bytes) for u in cost.usage(placement) if not u.fits]
        assert not over, over


def test_public_contract_names() -> None:
    import omni_place

    assert omni_place.plan_split is plan_split and omni_place.evaluate is evaluate
    assert {"plan_split", "evaluate", "Plan"} <= set(omni_place.__all__)


# --- CPU RAM is a limit ---------------------------------------------------------------------------

def test_ram_too_small_is_infeasible_and_names_the_cpu(deepseek) -> None:
    """DeepSeek-V3 Q4_K_M (~377 GiB) on 2x 96 GiB + 128 GiB RAM: the CPU share cannot fit."""
    with pytest.raises(NothingFitsError, match=r"CPU RAM needs .* short by [\d.]+ GiB") as err:
        plan_split(deepseek, rig((96, 1800), (96, 1800), ram_gib=128))
    assert "--allow-paging" in (err.value.hint or "")


def test_allow_paging_plans_and_prices_the_disk(deepseek) -> None:
    small = rig((96, 1800), (96, 1800), ram_gib=128)
    paged = plan_split(deepseek, small, allow_paging=True)
    cpu = next(u for u in paged.usage if u.name == CPU)
    assert paged.feasible and cpu.paged_bytes > 0 and cpu.paged_bytes == cpu.used_bytes - cpu.capacity_bytes
    assert paged.predicted.tg_breakdown["disk"] > 0
    assert any("page" in n and "from disk" in n for n in paged.notes)
    # a faster disk is a faster plan; enough RAM removes the disk term
    fast_devs = tuple(d if d.kind != "cpu" else Device("CPU", "cpu", d.memory_bytes, d.bandwidth_gbs, threads=32,
                                                       disk_gbs=14.0) for d in small.devices)
    fast = plan_split(deepseek, Cluster("fast-disk", fast_devs), allow_paging=True)
    assert fast.predicted.tg_tps > paged.predicted.tg_tps
    roomy = plan_split(deepseek, rig((96, 1800), (96, 1800), ram_gib=512), allow_paging=True)
    assert "disk" not in roomy.predicted.tg_breakdown


def test_experts_ik_pins_cannot_page(deepseek) -> None:
    """ik_llama.cpp pins the experts it overrides to the CPU (CUDA_Host, src/llama-load-tensors.cpp:
    260-271): under --allow-paging only mmap'd weights page, so `-ot exps=CPU` on too little RAM
    still fails on ik where mainline pages it."""
    small = rig((96, 1800), (96, 1800), ram_gib=128)
    argv = ["-ngl", "99", "-ot", "exps=CPU", "-c", "4096"]
    mainline = evaluate(deepseek, small, argv, allow_paging=True)
    ik = evaluate(deepseek, small, argv, engine="ik_llama.cpp", allow_paging=True)
    main_cpu, ik_cpu = (next(u for u in e.usage if u.name == CPU) for e in (mainline, ik))
    assert mainline.feasible and main_cpu.paged_bytes > 0
    # what stays pageable on ik is the mapped token embedding alone
    assert ik_cpu.pageable_bytes == deepseek.input_bytes()
    assert not ik.feasible and ik_cpu.weights_bytes > ik_cpu.capacity_bytes


def test_cli_exit_3_without_paging_and_0_with_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = tmp_path / "small-ram.toml"
    cluster.write_text('name = "small-ram"\ndiscover = false\n'
                       '[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "RTX 4090"\n'
                       '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 64\nbandwidth_gbs = 80\n'
                       'disk_gbs = 3.5\n')
    assert main(["plan", "qwen3-235b-a22b", "--cluster", str(cluster)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: nothing fits: CPU RAM needs") and "hint: add --allow-paging" in err
    assert main(["plan", "qwen3-235b-a22b", "--cluster", str(cluster), "--allow-paging", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cpu = next(d for d in doc["devices"] if d["name"] == "CPU")
    assert doc["feasible"] and cpu["paged_bytes"] > 0
    assert main(["check", "qwen3-235b-a22b", "--cluster", str(cluster), "--", "-ngl", "99", "-ot", "exps=CPU"]) == 3
    assert "CPU RAM overflows by" in capsys.readouterr().err
    assert main(["check", "qwen3-235b-a22b", "--cluster", str(cluster), "--allow-paging", "--",
                 "-ngl", "99", "-ot", "exps=CPU"]) == 0
