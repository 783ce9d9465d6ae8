"""Golden tests of the engine dialects against the engines' own layer-assignment rules.

ik_llama.cpp: ``ik_assign_reference`` transcribes ik_llama.cpp's byte-weighted LAYER split
(``src/llama.cpp:4436-4470`` in ``llm_load_tensors``) as an independent reference for
``ik_llama.assign_layers``; plans emitted for ik must
come back unchanged through ik's byte-weighted walk, also when our per-layer sizes are off by a
few percent (the nearest-rounding margin the encoding is built around).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from omni_place.cost import CPU, Context, expert_kind, placement_from_counts
from omni_place.devices import Cluster, Device
from omni_place.engines import ENGINES, ik_llama, llama_cpp, traits, vllm
from omni_place.errors import InvalidArgumentError, NothingFitsError
from omni_place.model import load_model
from omni_place.plan import evaluate, plan_split
from omni_place.problem import memory_unit
from omni_place.reference_models import deepseek_v3, write_header_only
from omni_place.units import GiB

from .arch_models import write_model


def ik_assign_reference(layer_bytes, out_bytes, max_compute, n_gpu_layers, splits_frac, margins=None):
    """ik_llama.cpp's LAYER split (src/llama.cpp:4436-4470): byte-weighted, each device charged
    max_compute first, a straddling layer goes where the overshoot is smaller (nearest rounding),
    leftovers to the last device (in float64; ``margins`` collects each decision's distance from a
    tie, relative to the total)."""
    n_layer = len(layer_bytes)
    sizes = list(layer_bytes) + [out_bytes]
    nd = len(splits_frac)
    dev = [nd - 1] * (n_layer + 1)
    i_gpu_start = max(n_layer - n_gpu_layers, 0)
    n_last = n_layer + 1 if n_gpu_layers > n_layer else n_layer
    total = max_compute * nd + sum(sizes[i_gpu_start:n_last])
    cum = np.cumsum(splits_frac) / np.sum(splits_frac)
    last, loaded = i_gpu_start, 0.0
    for d in range(nd):
        loaded += max_compute
        split_size = cum[d] * total
        il = last
        while il < n_last:
            if margins is not None:
                margins.append(min(abs(loaded + sizes[il] - split_size),
                                   abs((loaded + sizes[il] - split_size) - (split_size - loaded))) / total)
            if loaded + sizes[il] <= split_size:
                dev[il] = d
                loaded += sizes[il]
                il += 1
            else:
                if loaded + sizes[il] - split_size < split_size - loaded:
                    dev[il] = d
                    loaded += sizes[il]
                    il += 1
                break
        last = il
    for i in range(i_gpu_start):
        dev[i] = -1
    if n_gpu_layers <= n_layer:
        dev[n_layer] = -1
    return dev


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory: pytest.TempPathFactory):
    return load_model(write_header_only(deepseek_v3(), tmp_path_factory.mktemp("ds") / "ds.gguf")[0])


def rig(*gpus: tuple[float, float], ram_gib: float = 512, cpu_bw: float = 300, rpc: int = 0) -> Cluster:
    devs = [Device(f"RPC{i}", "rpc", int(24 * GiB), 200.0, link_gbs=1.25, endpoint=f"10.0.0.{i + 2}:50052")
            for i in range(rpc)]
    devs += [Device(f"CUDA{i}", "gpu", int(mem * GiB), bw, tflops=200.0, link_gbs=63.0)
             for i, (mem, bw) in enumerate(gpus)]
    devs.append(Device("CPU", "cpu", int(ram_gib * GiB), cpu_bw, threads=32))
    return Cluster("test", tuple(devs))


def same_placement(model, got, want) -> None:
    assert got.layer_home == want.layer_home
    assert got.output == want.output
    for il, home in enumerate(got.layer_home):
        if home != CPU and model.layers[il].has_experts:
            present = {expert_kind(t) for t in model.layers[il].expert_tensors}
            assert ({(k, d) for k, d in got.expert_homes[il] if k in present}
                    == {(k, d) for k, d in want.expert_homes[il] if k in present}), il


# --- ik_llama.cpp --------------------------------------------------------------------------

def test_ik_worked_example_uniform_layers() -> None:
    # uniform layers, output about one layer, compute ignored: ik's ngl counts repeating layers
    # only and the output goes to a GPU only if ngl > n_layer (ik_llama.cpp src/llama.cpp:4318)
    a = ik_llama.assign_layers([1.0] * 61 + [1.0], 0.0, 99, [75, 25], 2)
    assert a[:61].count(0) == 46 and a[:61].count(1) == 15 and a[61] == 1
    b = ik_llama.assign_layers([1.0] * 61 + [1.0], 0.0, 19, [75, 25], 2)
    assert b[:42] == [-1] * 42 and b[42:61].count(0) == 14 and b[42:61].count(1) == 5 and b[61] == -1


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.floats(1e6, 8e9), min_size=1, max_size=100), out=st.floats(1e6, 3e9),
       compute=st.floats(0, 2e9), ngl=st.integers(0, 120),
       ts=st.lists(st.floats(0.5, 100), min_size=2, max_size=5))
def test_ik_assign_matches_reference(sizes, out, compute, ngl, ts) -> None:
    margins: list[float] = []
    want = ik_assign_reference(sizes, out, compute, ngl, ts, margins)
    # the engine keeps its running sum and split points in float32: exact ties may go either way
    assume(min(margins, default=1.0) > 1e-6)
    assert ik_llama.assign_layers(sizes + [out], compute, ngl, ts, len(ts)) == want


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m0=st.floats(8, 200), m1=st.floats(4, 64), bw0=st.floats(300, 3000), bw1=st.floats(300, 3000),
       ctx=st.sampled_from([4096, 32768, 131072]), seed=st.integers(0, 2**31))
def test_ik_plans_come_back_through_the_byte_weighted_walk(deepseek, m0, m1, bw0, bw1, ctx, seed) -> None:
    # the layer split's walk (-sm graph plans come back through tests/test_split_modes.py)
    plan = plan_split(deepseek, rig((m0, bw0), (m1, bw1)), ctx=ctx, engine="ik_llama.cpp", split_modes=False)
    args = plan.args("server")
    parsed = ik_llama.parse_args(args)
    back = ik_llama.decode(deepseek, parsed, list(plan.default_order), plan.context)
    same_placement(deepseek, back, plan.placement)
    if not plan.engine_args.devices:  # llama-bench sizes layers at the training context: own -ts
        bench = ik_llama.parse_args(plan.args("bench"), "bench")
        same_placement(deepseek, ik_llama.decode(deepseek, bench, list(plan.default_order), plan.context,
                                                 tool="bench"), plan.placement)
    # robust to our size model being off (±3 % per layer, compute allowance ±50 %) wherever the
    # layers at the boundaries are large enough to absorb it (half a layer is the margin)
    sizes, max_compute = ik_llama.layer_sizes(deepseek, plan.context)
    homes = plan.placement.layer_home
    boundary = [il for il in range(1, len(homes)) if homes[il] != homes[il - 1] and homes[il - 1] != CPU]
    assume(all(min(sizes[il - 1], sizes[il]) > 0.25 * max(sizes) for il in boundary))
    rng = np.random.default_rng(seed)
    noisy = [s * rng.uniform(0.97, 1.03) for s in sizes]
    order = list(parsed.devices or plan.default_order)
    slots = ik_llama.assign_layers(noisy, max_compute * rng.uniform(0.5, 1.5), parsed.n_gpu_layers,
                                   parsed.tensor_split, len(order))
    assert tuple(CPU if s < 0 else order[s] for s in slots[:-1]) == plan.placement.layer_home


ENGINE_COMPARE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "engine_compare"


@pytest.mark.parametrize("model_name,rig", [("dense15", "rig_12"), ("moe33", "rig_12")])
def test_ik_layer_sizes_equal_the_engines_own_table(tmp_path: Path, model_name: str, rig: str) -> None:
    """ik_llama.cpp (built for sm_90, run by benchmarks/engine_compare.py) logs its per-layer
    size table; ours, from the same model header and context, must print the same numbers."""
    import lzma
    import re
    import tarfile

    header = tmp_path / f"{model_name}.gguf"
    header.write_bytes(lzma.decompress((ENGINE_COMPARE / f"{model_name}.hdr.gguf.xz").read_bytes()))
    with tarfile.open(ENGINE_COMPARE / "logs.tar.xz") as tar:
        log = tar.extractfile(f"./res/{model_name}.{rig}/ik_llama.cpp.fit.0.log").read().decode()
    rows = {int(m[1]): (float(m[2]), float(m[3]), float(m[4]))
            for m in re.finditer(r"^Layer +(\d+): +([\d.]+), +([\d.]+), +([\d.]+)", log, re.M)}
    compute = {float(m[1]) for m in re.finditer(r"^Layer +\d+: +[\d.]+, +[\d.]+, +[\d.]+ +([\d.]+) +MiB", log, re.M)}
    model = load_model(header)
    # llama-bench passes no context size: ik sizes the KV cache at the training context
    sizes, max_compute = ik_llama.layer_sizes(model,
                                              ik_llama.bench_context(model, Context(n_ubatch=512, swa_full=True)))
    assert len(rows) == model.n_layer + 1
    for il, (_, _, total) in rows.items():
        assert sizes[il] / 2**20 == pytest.approx(total, abs=0.01), il
    assert compute == {round(max_compute / 2**20, 2)}


@pytest.mark.parametrize("n_cpu,counts,output", [(20, [30, 12], None), (20, [30, 12], "CUDA0"),
                                                 (0, [40, 22], None), (0, [40, 22], CPU), (62, [0, 0], CPU)])
def test_ik_ngl_counts_repeating_layers_and_output_needs_all(deepseek, n_cpu, counts, output) -> None:
    ctx = Context(ctx=8192, swa_full=True)
    p = placement_from_counts(deepseek, ("CUDA0", "CUDA1"), n_cpu, counts, [3] * deepseek.n_layer, output)
    if p.output == "CUDA1" and n_cpu:
        p = replace(p, output="CUDA1")
    args = ik_llama.encode(deepseek, p, ("CUDA0", "CUDA1"), ctx)
    # ik: the first n_layer - ngl layers run on the CPU; the head is on a GPU only past n_layer
    all_gpu_head = n_cpu == 0 and p.output != CPU
    assert args.n_gpu_layers == sum(counts) + (1 if all_gpu_head else 0)
    natural = "CUDA1" if all_gpu_head else CPU
    assert ((r"^output\.", p.output) in args.overrides) == (p.output != natural)
    back = ik_llama.decode(deepseek, ik_llama.parse_args(args.args("server")), ["CUDA0", "CUDA1"], ctx)
    same_placement(deepseek, back, p)
    # mainline counts the output slot in -ngl
    assert llama_cpp.encode(deepseek, p, ("CUDA0", "CUDA1")).n_gpu_layers == sum(counts) + (1 if sum(counts) else 0)


def test_ik_cannot_offload_only_the_head(deepseek) -> None:
    p = placement_from_counts(deepseek, ("CUDA0",), deepseek.n_layer, [0], None, "CUDA0")
    with pytest.raises(InvalidArgumentError, match="only the output head"):
        ik_llama.encode(deepseek, p, ("CUDA0",), Context())


def test_ik_flag_spelling_per_tool(deepseek) -> None:
    plan = plan_split(deepseek, rig((48, 1800), (48, 1800), cpu_bw=100), ctx=32768, engine="ik_llama.cpp")
    assert not plan.engine_args.devices  # the engine's own order: its bench can spell it
    server, bench = plan.args("server"), plan.args("bench")
    ot_server, ot_bench = server[server.index("-ot") + 1], bench[bench.index("-ot") + 1]
    assert ot_server == ot_bench and ";" not in ot_bench  # ik's llama-bench splits -ot on ','
    assert "/" in bench[bench.index("-ts") + 1] and "," in server[server.index("-ts") + 1]
    assert server[server.index("-fa") + 1] == "1" and "-c" in server and "-c" not in bench
    assert plan.to_dict()["env"] is None  # ik reads no LLAMA_ARG_* for -ts/-ot
    with pytest.raises(InvalidArgumentError, match="no environment variable"):
        plan.env()


def test_ik_bench_cannot_reorder_devices(deepseek) -> None:
    # a fast small card listed second: the plan wants it first, which needs -dev
    cluster = rig((24, 300), (24, 3000))
    plan = plan_split(deepseek, cluster, ctx=4096, engine="ik_llama.cpp")
    if plan.engine_args.devices:
        assert plan.args("server")[:2] == ["-dev", ",".join(plan.engine_args.devices)]
        with pytest.raises(InvalidArgumentError, match="no -dev"):
            plan.args("bench")
        assert plan.to_dict()["bench_args"] is None


def test_ik_rpc_devices_are_named_with_their_endpoint(deepseek) -> None:
    cluster = rig((24, 1000), rpc=1)
    plan = plan_split(deepseek, cluster, ctx=4096, engine="ik_llama.cpp")
    names = [a for a in plan.args("server") if "RPC" in a]
    for name in names:
        assert "RPC0[10.0.0.2:50052]" in name and "RPC0=" not in name


def test_ik_ncmoe_is_last_layers_on_one_gpu_and_shared_on_two(deepseek) -> None:
    ctx = Context(ctx=4096, swa_full=True)
    one = ik_llama.decode(deepseek, ik_llama.parse_args(["-ngl", "999", "-ncmoe", "5"]), ["CUDA0"], ctx)
    expert_layers = [il for il, lc in enumerate(deepseek.layers) if lc.has_experts and not lc.is_nextn]
    on_cpu = [il for il, k in enumerate(one.cpu_experts) if k]
    assert on_cpu == expert_layers[-5:]
    two = ik_llama.decode(deepseek, ik_llama.parse_args(["-ngl", "999", "-ts", "3,1", "-ncmoe", "8"]),
                          ["CUDA0", "CUDA1"], ctx)
    per_dev = {d: [il for il, k in enumerate(two.cpu_experts) if k and two.layer_home[il] == d]
               for d in ("CUDA0", "CUDA1")}
    # 8 patterns, shared 6/2 by layer count, highest layers first; on CUDA1 the highest block is
    # the NextN block, which is not loaded without MTP, so one pattern matches nothing (as in ik)
    assert deepseek.layers[-1].is_nextn and two.layer_home[-1] == "CUDA1"
    assert len(per_dev["CUDA0"]) == 6 and len(per_dev["CUDA1"]) == 1
    last0 = max(il for il, h in enumerate(two.layer_home) if h == "CUDA0")
    assert per_dev["CUDA0"] == list(range(last0 - len(per_dev["CUDA0"]) + 1, last0 + 1))  # highest first
    # llama-bench --n-cpu-moe takes the first N layers instead
    bench = ik_llama.decode(deepseek, ik_llama.parse_args(["-ngl", "999", "--n-cpu-moe", "5"], "bench"),
                            ["CUDA0"], ctx)
    assert [il for il, k in enumerate(bench.cpu_experts) if k] == [il for il in range(5) if il in expert_layers]


def test_check_prices_ik_commands(deepseek) -> None:
    plan = evaluate(deepseek, "seed", ["-ngl", "999", "-ts", "75,25", "-c", "32768"], engine="ik_llama.cpp")
    assert not plan.feasible and plan.engine == "ik_llama.cpp"
    ok = plan_split(deepseek, "seed", ctx=32768, engine="ik_llama.cpp")
    again = evaluate(deepseek, "seed", ok.args("server"), engine="ik_llama.cpp")
    assert again.feasible
    assert again.predicted.tg_tps == pytest.approx(ok.predicted.tg_tps)


# --- vLLM ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory):
    path = write_model(tmp_path_factory.mktemp("vllm") / "moe.gguf", "qwen3moe", n_layer=24, n_embd=1024,
                       n_head=16, n_head_kv=4, n_ff=2048, n_expert=32, n_expert_used=4, n_ff_exp=512,
                       n_vocab=32000, weight_type="q8_0", header_only=True)
    return load_model(path)


def test_vllm_stages_partition_every_hidden_layer(moe) -> None:
    # 1.33 GiB of weights; 1.6 GiB cards keep 512 MiB free and need both stages
    cluster = rig((1.6, 2000), (1.6, 900), rpc=1)
    plan = plan_split(moe, cluster, ctx=8192, engine="vllm")
    va = plan.engine_args
    assert sum(va.partition) == moe.n_layer - moe.hparams.n_layer_nextn
    assert len(va.partition) == 2 and all(n > 0 for n in va.partition)
    assert all(h != CPU for h in plan.placement.layer_home) and not any(plan.placement.cpu_experts)
    assert "RPC0" not in plan.placement.order  # RPC servers are not vLLM stages
    env = plan.env()
    assert env[vllm.PARTITION_ENV] == ",".join(map(str, va.partition))
    assert env["CUDA_VISIBLE_DEVICES"] == ",".join(n.removeprefix("CUDA") for n in plan.placement.order
                                                   if n in plan.placement.layer_home)
    args = plan.args("server")
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"
    assert args[args.index("--max-model-len") + 1] == "8192"
    assert 0 < float(args[args.index("--gpu-memory-utilization") + 1]) <= 0.99
    first = next(n for n in plan.placement.order if n in plan.placement.layer_home)
    first_use = next(u for u in plan.usage if u.name == first)
    assert first_use.weights_bytes >= moe.input_bytes()  # the embedding sits on stage 0
    assert plan.to_dict()["bench_args"] is None


def test_vllm_refuses_what_it_cannot_run(moe) -> None:
    with pytest.raises(NothingFitsError, match="cannot keep layers or experts in CPU RAM"):
        plan_split(moe, rig((0.5, 1000)), ctx=8192, engine="vllm")
    with pytest.raises(InvalidArgumentError, match="vLLM"):
        plan_split(moe, rig((40, 1000)), ctx=8192, engine="vllm", kv_type="q8_0")


# --- all dialects ------------------------------------------------------------------------------

def test_engine_table_is_the_single_list() -> None:
    assert set(ENGINES) == {"llama.cpp", "ik_llama.cpp", "vllm"}
    with pytest.raises(InvalidArgumentError, match="unknown engine"):
        traits("exllama")


@pytest.mark.parametrize("tool,ot_sep,ts_sep", [("server", ",", ","), ("bench", ";", "/")])
def test_llama_cpp_separators(deepseek, tool, ot_sep, ts_sep) -> None:
    plan = plan_split(deepseek, "seed", ctx=32768)
    args = plan.args(tool)
    assert ts_sep in args[args.index("-ts") + 1]
    if len(plan.overrides) > 1:
        assert ot_sep in args[args.index("-ot") + 1]
    back = llama_cpp.decode(deepseek, llama_cpp.parse_args(args), list(plan.default_order))
    same_placement(deepseek, back, plan.placement)


def test_memory_unit_grows_only_for_large_clusters() -> None:
    assert memory_unit(rig((96, 1800), (32, 1800))) == 1 << 20
    big = rig(*[(48, 900)] * 16)
    unit = memory_unit(big)
    assert unit > 1 << 20 and max(d.usable_bytes for d in big.gpus) / unit <= 4096


def test_ik_bench_tests_are_its_own(deepseek: Any) -> None:
    """ik_llama.cpp's llama-bench has no -d (it stops: "invalid parameter"); its -gp D,N decodes N
    tokens after an untimed D-token prompt in a context of D + N
    (examples/llama-bench/llama-bench.cpp:559-569, 1046): the decode is priced at that depth, the
    -p prompt test at its own (none), and the context holds the deepest test. -pg P,N (both
    engines) sizes the context; anything but two counts is refused as the engine refuses it."""
    with pytest.raises(InvalidArgumentError, match="has no -d"):
        evaluate(deepseek, "seed", ["-ngl", "99", "-ot", "exps=CPU", "-d", "4096"], engine="ik_llama.cpp", tool="bench")
    for bad in ("4096", "4096,128,1", "a,1", "4096,-1"):
        with pytest.raises(InvalidArgumentError, match="-gp"):
            evaluate(deepseek, "seed", ["-ngl", "99", "-gp", bad], engine="ik_llama.cpp", tool="bench")
    base = ["-ngl", "99", "-ot", "exps=CPU"]
    plain = evaluate(deepseek, "seed", base, engine="ik_llama.cpp", tool="bench")
    deep = evaluate(deepseek, "seed", [*base, "-gp", "16384,64", "-gp", "1024,64"], engine="ik_llama.cpp",
                    tool="bench")
    assert (plain.context.ctx, deep.context.ctx) == (512, 16384 + 64)
    assert (deep.context.depth, deep.context.n_gen, deep.context.prompt_depth) == (16384, 64, 0)
    assert deep.predicted.tg_tps < plain.predicted.tg_tps
    assert deep.predicted.pp_tps == pytest.approx(plain.predicted.pp_tps, rel=0.02)  # pp512 at depth 0 in both
    assert not any("-gp" in a for a in deep.assumptions if a.startswith("not priced"))
    pg = evaluate(deepseek, "seed", [*base, "-pg", "2048,128", "-d", "1024"], tool="bench")
    assert pg.context.ctx == 2048 + 128 + 1024
    with pytest.raises(InvalidArgumentError, match="beyond 16M") as err:  # a sum no engine could hold
        evaluate(deepseek, "seed", [*base, "-gp", "2147483647,2147483647"], engine="ik_llama.cpp", tool="bench")
    assert "-gp" in (err.value.hint or "")
