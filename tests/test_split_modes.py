"""Split modes (-sm) as priced decisions: the tensor split's bytes per device against the real
libllama over two loopback RPC devices, the engine's refusals mirrored by omni-place's (exit 2,
one line naming the condition), and plans that never emit a mode the engine refuses.

Mainline's meta device reports one ``Meta()`` buffer per kind whose size is the *largest*
device's slice (``ggml/src/ggml-backend-meta.cpp:1705-1713, 1768``), so each load is read back
as the maximum over devices; shares 3:1 and 1:3 put that maximum on each device in turn.
"""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path

import pytest

from omni_place.cli import main
from omni_place.cost import CPU, CostModel, Placement
from omni_place.devices import Cluster, Device, resolve_cluster
from omni_place.engines import dialect
from omni_place.engines.splitmodes import refusal
from omni_place.errors import NothingFitsError
from omni_place.llama.probe import probe_load
from omni_place.llama.spec import LoadSpec
from omni_place.model import load_model
from omni_place.plan import evaluate, plan_split
from omni_place.reference_models import REFERENCE_MODELS
from omni_place.splitcost import REDUCES_PER_LAYER, SplitCostModel, split_ne

from .arch_models import write_llama, write_model

engine = pytest.mark.engine
PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "omni_place" / "data" / "presets").glob("*.toml"))


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def loop_cluster(endpoints: list[str]) -> Cluster:
    rpc = [Device(f"RPC{i}", "rpc", 1 << 30, 500.0, endpoint=ep, link_gbs=100.0, link_latency_us=1.0)
           for i, ep in enumerate(endpoints)]
    return Cluster("loopback", (*rpc, Device("CPU", "cpu", 16 << 30, 20.0, threads=2)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("split")
    # head 64 (q8_0 KV blocks divide it), n_ff 640: a 3:1 FFN split is not a multiple of 128
    return {"llama": write_llama(d / "llama.gguf", n_layer=4, n_embd=256, n_head=4, n_head_kv=2, n_ff=640).path,
            "qwen3moe": write_model(d / "moe.gguf", "qwen3moe", n_layer=3, n_embd=256, n_head=4, n_head_kv=2,
                                    n_ff=384, n_ff_exp=192, n_expert=4),
            "deepseek2": write_model(d / "ds.gguf", "deepseek2", n_layer=3)}


def test_split_ne_rounds_down_and_rotates() -> None:
    # src/llama-model.cpp:832-862: float32 boundary, floor to the granularity, the last takes the rest
    assert split_ne(640, 128, [3.0, 1.0], 0, True) == [384, 256]  # 480 -> 384
    assert split_ne(640, 128, [3.0, 1.0], 1, True) == [640 - 128, 128]  # rotated: device 1 first, 160 -> 128
    assert split_ne(256, 64, [0.0, 0.0], 0, True) == [128, 128]  # no shares: equal
    assert sum(split_ne(1000, 1, [1.0, 2.0, 4.0], 2, True)) == 1000


@engine
@pytest.mark.parametrize("arch", ["llama", "qwen3moe"])
@pytest.mark.parametrize("shares,kv", [((3.0, 1.0), "f16"), ((1.0, 3.0), "f16"), ((1.0, 1.0), "q8_0"),
                                       ((5.0, 2.0), "f16")])
def test_tensor_split_bytes_match_the_engine(models: dict[str, Path], rpc_pair: list[str], arch: str,
                                             shares: tuple[float, float], kv: str) -> None:
    """`check -sm tensor` over two loopback RPC devices: the largest device's weights and KV
    cache as the engine allocates them (its Meta() buffers), the CPU's token embedding."""
    ts = ",".join(f"{x:g}" for x in shares)
    argv = ["-sm", "tensor", "-ts", ts, "-c", "512", "-ub", "64", "-fa", "on", "-ctk", kv, "-ctv", kv]
    plan = evaluate(models[arch], loop_cluster(rpc_pair), argv)
    assert plan.context.split_mode == "tensor" and plan.context.split_shares == shares
    args = plan.args("server")
    assert args[args.index("-sm") + 1] == "tensor"
    use = {u.name: u for u in plan.usage}
    r = probe_load(LoadSpec(str(models[arch]), split_mode="tensor", tensor_split=list(shares), rpc_servers=rpc_pair,
                            n_ctx=512, n_ubatch=64, flash_attn="on", type_k=kv, type_v=kv, load_mode="none"),
                   timeout=120)
    assert r.ok, r.error
    assert r.devices_used == ["Meta()"]
    per = r.device_bytes()
    model_tol, kv_tol = r.tolerance_bytes("model"), r.tolerance_bytes("KV")
    assert abs(per["Meta()"]["model"] - max(use["RPC0"].weights_bytes, use["RPC1"].weights_bytes)) <= model_tol
    assert abs(per["Meta()"]["KV"] - max(use["RPC0"].kv_bytes, use["RPC1"].kv_bytes)) <= kv_tol + 64
    assert abs(per["CPU"]["model"] - use["CPU"].weights_bytes) <= model_tol
    # the split is not the proportional one: mainline rounds each tensor down to its granularity
    total = use["RPC0"].weights_bytes + use["RPC1"].weights_bytes
    assert use["RPC0"].weights_bytes != round(total * shares[0] / sum(shares)) or shares[0] == shares[1]


@engine
def test_tensor_split_keeps_cpu_layers_and_cpu_experts(models: dict[str, Path], rpc_pair: list[str]) -> None:
    """-ngl below all layers and -ot to the CPU load under -sm tensor; both are priced."""
    argv = ["-sm", "tensor", "-ngl", "3", "-ot", r"blk\.2\.ffn_.*_exps=CPU", "-c", "512", "-fa", "on"]
    plan = evaluate(models["qwen3moe"], loop_cluster(rpc_pair), argv)
    homes = plan.placement.layer_home
    assert homes == ("CPU", "RPC0", "RPC0") and plan.placement.output == "RPC0"  # -ngl counts the output slot
    r = probe_load(LoadSpec(str(models["qwen3moe"]), split_mode="tensor", n_gpu_layers=3, rpc_servers=rpc_pair,
                            overrides=[(r"blk\.2\.ffn_.*_exps", "CPU")], n_ctx=512, flash_attn="on",
                            load_mode="none"), timeout=120)
    assert r.ok, r.error
    assert r.layer_devices == {0: "CPU", 1: "Meta()", 2: "Meta()"}
    use = {u.name: u for u in plan.usage}
    assert abs(r.device_bytes()["CPU"]["model"] - use["CPU"].weights_bytes) <= r.tolerance_bytes("model")
    assert abs(r.device_bytes()["CPU"]["KV"] - use["CPU"].kv_bytes) <= r.tolerance_bytes("KV")


@engine
@pytest.mark.parametrize("case", ["row", "arch", "no-fa"])
def test_engine_and_omni_place_refuse_alike(models: dict[str, Path], rpc_pair: list[str], case: str) -> None:
    """Where the engine refuses a split mode, `check` refuses it too: exit 2, one line naming the
    engine's condition; never a price."""
    arch, mode, fa, said, ours = {
        "row": ("llama", "row", "on", "does not support split buffers", "split buffer"),
        "arch": ("deepseek2", "tensor", "on", "not implemented for architecture", "deepseek2"),
        "no-fa": ("llama", "tensor", "off", "requires flash_attn", "without flash attention"),
    }[case]
    r = probe_load(LoadSpec(str(models[arch]), split_mode=mode, rpc_servers=rpc_pair, n_ctx=512, flash_attn=fa,
                            load_mode="none"), timeout=120)
    assert not r.ok and said in (r.error or ""), r.error
    rpc = "".join(f'[[devices]]\nname = "RPC{i}"\nkind = "rpc"\nmemory_gib = 1\nbandwidth_gbs = 500\n'
                  f'endpoint = "{ep}"\nlink_gbs = 100\nlink_latency_us = 1\n' for i, ep in enumerate(rpc_pair))
    cpu = '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 16\nbandwidth_gbs = 20\nthreads = 2\n'
    path = models[arch].parent / f"loop-{case}.toml"
    path.write_text(f'name = "loopback"\n{rpc}{cpu}')
    code, out, err = run(["check", str(models[arch]), "--cluster", str(path), "--", "-sm", mode, "-fa", fa,
                          "-c", "512"])
    assert (code, out) == (2, "") and "Traceback" not in err
    first, hint = err.strip().splitlines()
    assert first.startswith("error: ") and ours in first and hint.startswith("hint: ")


def test_refusals_without_the_engine(models: dict[str, Path]) -> None:
    seed = resolve_cluster("seed")
    ds = load_model(models["deepseek2"])
    ik = dialect("ik_llama.cpp")
    # ik graph: a listed architecture on two local GPUs is priced; attn is not modelled; RPC has
    # no CUDA split buffer; one device is too few
    graph = ik.traits.split_mode("graph")
    assert graph is not None and graph.parallel
    assert refusal(graph, ik.name, ds, ["gpu", "gpu"], True) is None
    assert "RPC" in (refusal(graph, ik.name, ds, ["gpu", "rpc"], True) or "")
    assert "at least 2" in (refusal(graph, ik.name, ds, ["gpu"], True) or "")
    attn = ik.traits.split_mode("attn")
    assert attn is not None and "not modelled" in (refusal(attn, ik.name, ds, ["gpu", "gpu"], True) or "")
    for argv, fragment in ((["-sm", "attn"], "not modelled"), (["-sm", "tensor"], "no such split mode")):
        code, out, err = run(["check", str(models["deepseek2"]), "--preset", "seed", "--engine", "ik_llama.cpp",
                              "--", *argv, "-c", "4096"])
        assert (code, out) == (2, "") and fragment in err.splitlines()[0]
    # ik's llama-bench has no attn
    code, _, err = run(["check", str(models["llama"]), "--preset", "seed", "--engine", "ik_llama.cpp", "--tool",
                        "bench", "--", "-sm", "attn"])
    assert code == 2 and "llama-bench has no such split mode" in err
    assert len(seed.gpus) == 2


def test_graph_prices_mla_cache_whole_on_every_gpu(models: dict[str, Path]) -> None:
    plan = evaluate(models["deepseek2"], "seed", ["-sm", "graph", "-ts", "3,1", "-c", "4096"], engine="ik_llama.cpp")
    gpus = [u for u in plan.usage if u.kind == "gpu"]
    assert plan.context.split_mode == "graph" and len(gpus) == 2
    assert gpus[0].kv_bytes == gpus[1].kv_bytes > 0  # ik:src/llama.cpp:1256-1262 replicates the MLA cache
    assert gpus[0].weights_bytes > 2 * gpus[1].weights_bytes
    assert "allreduce" in plan.predicted.tg_breakdown


@pytest.mark.parametrize("engine_name", ["llama.cpp", "ik_llama.cpp"])
@pytest.mark.parametrize("preset", PRESETS)
def test_plans_never_emit_a_mode_the_engine_refuses(engine_name: str, preset: str) -> None:
    """Every shipped model on every shipped preset: a plan's -sm is the layer split or a mode
    the engine runs for that model on those devices, with one share per device; the split-mode
    table lists each of the engine's other modes."""
    rules = dialect(engine_name)
    cluster = resolve_cluster(preset)
    gpus = [d for d in cluster.gpus if d.kind == "gpu"]
    for name in REFERENCE_MODELS:
        try:
            plan = plan_split(name, cluster, ctx=8192, engine=engine_name)
        except NothingFitsError:  # a large model on a small preset: nothing to emit
            continue
        args = plan.args("server")
        modes = [r["mode"] for r in plan.split_modes]
        assert modes[0] == "layer" and set(modes[1:]) == {r.name for r in rules.traits.split_modes} - {"layer", "none"}
        assert sum(r["chosen"] for r in plan.split_modes) == 1
        mode = plan.context.split_mode
        if mode == "layer":
            assert "-sm" not in args
            continue
        rule = rules.traits.split_mode(mode)
        assert rule is not None and rule.parallel and len(gpus) >= 2
        assert refusal(rule, rules.name, plan.model, [d.kind for d in gpus], plan.context.flash_attn) is None
        assert args[args.index("-sm") + 1] == mode and len(plan.context.split_shares) == len(gpus)
        assert all(u.fits for u in plan.usage)
        # the emitted flags make the engine place it so: same layers, experts, mode and shares
        parsed = rules.parse_args(args)
        back = rules.decode(plan.model, parsed, cluster, plan.context)
        assert (back.layer_home, back.output, back.cpu_experts) == (
            plan.placement.layer_home, plan.placement.output, plan.placement.cpu_experts)
        assert rules.split_run(plan.model, parsed, cluster, back.order, True) == (mode, plan.context.split_shares)
        row = next(r for r in plan.split_modes if r["chosen"])
        layer = plan.split_modes[0]
        assert row["tg_tps"] > layer["tg_tps"] * 1.15 or row["pp_tps"] > layer["pp_tps"] * 1.15


def test_plan_json_and_text_show_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "llama-3.3-70b", "--preset", "seed", "--ctx", "8192", "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = {r["mode"]: r for r in d["split_modes"]}
    assert set(rows) == {"layer", "row", "tensor"}
    assert rows["row"]["refused"] and "split buffer" in rows["row"]["refused"]
    assert rows["tensor"]["tg_tps"] > 0 and rows["tensor"]["feasible"]
    chosen = next(m for m, r in rows.items() if r["chosen"])
    assert d["split_mode"] == chosen and (("-sm" in d["args"]) == (chosen != "layer"))
    assert main(["plan", "llama-3.3-70b", "--preset", "seed", "--ctx", "8192"]) == 0
    text = capsys.readouterr().out
    assert "split modes (tok/s;" in text and "refused: llama.cpp cannot use -sm row" in text


@pytest.mark.parametrize("op_offload,ubatch", [(True, 512), (False, 512), (True, 16), (False, 16)])
def test_cpu_experts_are_priced_as_under_the_layer_split(models: dict[str, Path], op_offload: bool,
                                                         ubatch: int) -> None:
    """-sm tensor prices a GPU layer's experts in CPU RAM by the cost model's one rule: the CPU's
    decode and prompt seconds and the op-offload stream are the layer split's for the same
    experts. Op offload off, or a ubatch under its 32 tokens: the CPU computes them, without the
    GPU's MMQ tile padding (16 tokens over 4 experts: 8 per expert, a 16x padding on a GPU)."""
    model = load_model(models["qwen3moe"])
    gpus = [Device(f"CUDA{i}", "gpu", 8 << 30, 1000.0, tflops=100.0, link_gbs=25.0) for i in range(2)]
    cluster = Cluster("two-gpus", (*gpus, Device("CPU", "cpu", 16 << 30, 50.0, threads=8)))
    n = model.n_layer
    experts = tuple(frozenset({("up", CPU), ("gate", CPU), ("down", CPU)}) if il == 1 else frozenset()
                    for il in range(n))
    p = Placement(("CUDA0", "CUDA1"), ("CUDA0",) * n, experts, "CUDA0")
    ctx = dialect("llama.cpp").traits.context(ctx=512, n_ubatch=ubatch, flash_attn=True, op_offload=op_offload)
    layer = CostModel(model, cluster, ctx).predict(p)
    split = SplitCostModel(model, cluster, replace(ctx, split_mode="tensor", split_shares=(1.0, 1.0))).predict(p)
    offloaded = op_offload and ubatch >= 32
    assert ("pcie_stream" in split.pp_breakdown) == offloaded and ("CPU" in split.pp_breakdown) != offloaded
    for key in ("CPU", "pcie_stream"):
        assert split.tg_breakdown.get(key) == pytest.approx(layer.tg_breakdown.get(key))
        assert split.pp_breakdown.get(key) == pytest.approx(layer.pp_breakdown.get(key))


def test_parallel_decode_is_the_slowest_share_plus_the_allreduces() -> None:
    """Decode of a dense model split 3:1 over two GPUs: per layer the slower device's read and
    fixed cost, plus REDUCES_PER_LAYER all-reduces of one pairwise hop (2 devices: one step)."""
    plan = evaluate("llama-3.3-70b", "seed", ["-sm", "tensor", "-ts", "3,1", "-c", "8192"])
    cost = SplitCostModel(plan.model, plan.cluster, plan.context)
    n = plan.model.n_layer
    tg = plan.predicted.tg_breakdown
    assert tg["allreduce"] == pytest.approx(REDUCES_PER_LAYER * n * cost.hop_tg("CUDA0", "CUDA1"))
    use = {u.name: u for u in plan.usage}
    assert use["CUDA0"].weights_bytes > 2.5 * use["CUDA1"].weights_bytes  # 3:1, norms mirrored
    even = evaluate("llama-3.3-70b", "seed", ["-sm", "tensor", "-ts", "1,1", "-c", "8192"]).predicted
    assert even.tg_tps > plan.predicted.tg_tps  # equal bandwidths: the even split reads less per device
    assert set(tg) == {"CUDA0", "allreduce", "transfers", "host"}  # the 3/4 share is the slower one every layer
    assert tg["host"] == pytest.approx(cost.mask_s(1, 0))  # the decoded token's KQ mask row


def test_a_zero_granularity_splits_by_element() -> None:
    """A hostile header whose head size reads 0 gives an output projection a granularity of 0
    (head granularity x head_dim_v): the split is by element instead of a ZeroDivisionError
    (found by tests/test_fuzz_gguf.py's structured mutations)."""
    from omni_place.splitcost import split_ne

    assert split_ne(100, 0, [3.0, 1.0], 0, True) == [75, 25]
    assert sum(split_ne(7, 0, [1.0, 1.0, 1.0], 1, True)) == 7
