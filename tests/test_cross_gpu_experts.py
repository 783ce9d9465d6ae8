"""Routed experts on another local GPU than their layer's: encoding, decoding, bytes, the RPC
restriction, and the planner's greedy pass (omni_place.rehome).

Real tiny GGUFs (tests/arch_models.py) of two MoE architectures -- qwen3moe, and deepseek2 with
MLA, shared experts, a leading dense layer and a NextN block -- on two local GPUs + CPU (and,
for the restriction, RPC devices). The loads through libllama are in tests/test_verify.py (CI has
only the CPU and loopback RPC devices, where a cross-GPU placement cannot load).
"""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import omni_place.plan as plan_module
from omni_place.bench.calibrate import _load_xz_header
from omni_place.bench.llamabench import import_text
from omni_place.cli import main as cli_main
from omni_place.cost import CPU, Context, CostModel, Placement, SpeedParams, expert_kind, placement_from_counts
from omni_place.devices import Cluster, Device, resolve_cluster
from omni_place.engines import dialect
from omni_place.engines.common import expert_overrides, rpc_buffer_names
from omni_place.errors import InvalidArgumentError
from omni_place.model import ModelProfile, Role, load_model
from omni_place.plan import plan_split
from omni_place.rehome import rehome_experts
from omni_place.units import MiB

from .arch_models import write_model

ARCHS = ("qwen3moe", "deepseek2")
GPUS = ("CUDA0", "CUDA1")
ENGINES = ("llama.cpp", "ik_llama.cpp")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelProfile]:
    root = tmp_path_factory.mktemp("xgpu-models")
    extra = {"qwen3moe": {"n_layer": 6}, "deepseek2": {"n_layer": 6, "n_nextn": 1}}
    return {a: load_model(write_model(root / f"{a}.gguf", a, **extra[a])) for a in ARCHS}


def two_gpus(mem_mib: tuple[float, float] = (512, 512), rpc: int = 0, ram_mib: float = 16384) -> Cluster:
    devs = [Device(f"RPC{i}", "rpc", 512 * MiB, 100.0, link_gbs=1.25, endpoint=f"10.0.0.{i + 2}:50052")
            for i in range(rpc)]
    devs += [Device(name, "gpu", int(mem * MiB), 1000.0, tflops=100.0, link_gbs=25.0, margin_bytes=0)
             for name, mem in zip(GPUS, mem_mib)]
    return Cluster("xgpu", (*devs, Device("CPU", "cpu", int(ram_mib * MiB), 50.0, threads=8, margin_bytes=0)))


def present(model: ModelProfile, il: int) -> list[str]:
    return sorted({expert_kind(t) for t in model.layers[il].expert_tensors})


def homes_present(model: ModelProfile, p: Placement) -> tuple[frozenset[tuple[str, str]], ...]:
    """The expert homes of the kinds each layer has (the core's options also name absent ones)."""
    return tuple(frozenset((k, d) for k, d in homes if k in present(model, il))
                 for il, homes in enumerate(p.expert_homes))


@st.composite
def placements(draw: st.DrawFn, model: ModelProfile) -> Placement:
    """Two GPUs in a random order, a CPU prefix, per-device layer counts, and for every MoE layer
    on a GPU each expert kind with the layer, in RAM, or on the other GPU."""
    order = tuple(draw(st.permutations(GPUS)))
    n = model.n_layer
    n_cpu = draw(st.integers(0, n - 1))
    split = draw(st.integers(0, n - n_cpu))
    p = placement_from_counts(model, order, n_cpu, (split, n - n_cpu - split))
    homes = []
    for il, home in enumerate(p.layer_home):
        if home == CPU or not model.layers[il].has_experts:
            homes.append(frozenset())
            continue
        other = next(g for g in GPUS if g != home)
        where = {k: draw(st.sampled_from([home, CPU, other])) for k in present(model, il)}
        homes.append(frozenset((k, d) for k, d in where.items() if d != home))
    return Placement(p.order, p.layer_home, tuple(homes), p.output)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("arch", ARCHS)
def test_cross_gpu_experts_round_trip_through_the_flags(models: dict[str, ModelProfile], arch: str,
                                                       engine: str) -> None:
    """encode -> the engine's command line -> parse -> decode gives back the same placement, for
    llama-server and (where it can set the device order) llama-bench."""
    model, cluster = models[arch], two_gpus()
    rules = dialect(engine)

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(placements(model))
    def check(p: Placement) -> None:
        context = rules.traits.context(ctx=512, n_ubatch=64)
        cost = CostModel(model, cluster, context)
        ea = rules.encode(model, p, cluster, context, cost.usage(p))
        for tool in ("server", "bench"):
            try:
                argv = ea.args(tool, ctx=context.ctx, n_ubatch=context.n_ubatch)
            except InvalidArgumentError:
                assert tool == "bench" and ea.devices  # ik's llama-bench has no -dev
                continue
            back = rules.decode(model, rules.parse_args(argv, tool), cluster, context, tool)
            assert back.layer_home == p.layer_home and back.output == p.output, argv
            assert back.expert_homes == p.expert_homes, argv
            # (ik's -dev names only the devices used, so an idle one leaves the order)
            assert ({u.name: u.weights_bytes for u in cost.usage(back) if u.weights_bytes}
                    == {u.name: u.weights_bytes for u in cost.usage(p) if u.weights_bytes})

    check()


def test_buffer_types_are_the_engines_device_names(models: dict[str, ModelProfile]) -> None:
    model = models["qwen3moe"]
    p = placement_from_counts(model, GPUS, 0, (3, 3))
    homes = list(p.expert_homes)
    homes[1] = frozenset({("down", "CUDA1")})
    homes[4] = frozenset({("gate", "CUDA0"), ("up", "CUDA0"), ("down", CPU)})
    got = expert_overrides(model, Placement(p.order, p.layer_home, tuple(homes), p.output))
    assert got == [(r"blk\.1\.ffn_down_(ch|)exps", "CUDA1"), (r"blk\.4\.ffn_down_(ch|)exps", "CPU"),
                   (r"blk\.4\.ffn_(gate|up)_(ch|)exps", "CUDA0")]


@pytest.mark.parametrize("arch", ARCHS)
def test_bytes_per_device_follow_the_expert_homes_exactly(models: dict[str, ModelProfile], arch: str) -> None:
    """Per device, the weights are the sum of the GGUF's tensors as that device's backend
    allocates them, each tensor where its expert home (or layer) puts it."""
    model = models[arch]
    cluster = two_gpus()
    p = placement_from_counts(model, GPUS, 1, (2, model.n_layer - 3))
    moe = [il for il in range(model.n_layer) if p.layer_home[il] != CPU and model.layers[il].has_experts]
    homes = list(p.expert_homes)
    for i, il in enumerate(moe):
        other = next(g for g in GPUS if g != p.layer_home[il])
        homes[il] = [frozenset({("up", other), ("gate", other), ("down", other)}),
                     frozenset({("down", other), ("up", CPU)}), frozenset()][i % 3]
    q = Placement(p.order, p.layer_home, tuple(homes), p.output)
    want = {name: 0 for name in (*GPUS, CPU)}
    for t in model.tensors:
        if t.layer is not None and model.layers[t.layer].is_nextn:
            continue  # NextN blocks are not loaded without a draft (src/models/deepseek2.cpp:66, TENSOR_SKIP)
        if t.layer is None:
            where = CPU if t.role is Role.EMBEDDING else q.output
        elif t.role is Role.ROUTED_EXPERT:
            where = q.expert_home(t.layer, expert_kind(t))
        else:
            where = q.layer_home[t.layer]
        want[where] += t.alloc_bytes("cpu" if where == CPU else "cuda")
    usage = {u.name: u for u in CostModel(model, cluster, Context(ctx=512, n_ubatch=64)).usage(q)}
    assert {name: u.weights_bytes for name, u in usage.items()} == want
    assert q.foreign_experts == set(GPUS)  # each GPU runs experts of the other's layers


def test_a_gpu_running_only_other_layers_experts_gets_a_compute_buffer(models: dict[str, ModelProfile]) -> None:
    model = models["qwen3moe"]
    p = placement_from_counts(model, GPUS, 0, (model.n_layer, 0))
    homes = list(p.expert_homes)
    homes[2] = frozenset({("down", "CUDA1")})
    cost = CostModel(model, two_gpus(), Context(ctx=512, n_ubatch=64))
    before = {u.name: u for u in cost.usage(p)}
    after = {u.name: u for u in cost.usage(Placement(p.order, p.layer_home, tuple(homes), p.output))}
    assert before["CUDA1"].compute_bytes == 0 < after["CUDA1"].compute_bytes
    assert after["CUDA1"].compute_bytes == cost.compute.device_bytes(True, False)


def test_cross_gpu_experts_price_a_hop_out_and_back(models: dict[str, ModelProfile]) -> None:
    model = models["qwen3moe"]
    cost = CostModel(model, two_gpus(), Context(ctx=512, n_ubatch=64))
    il = 2
    tg = cost.layer_tg(il, "CUDA0", frozenset({("down", "CUDA1")}))
    assert tg["transfers"] == pytest.approx(2 * cost.hop_tg("CUDA0", "CUDA1"))
    # no P2P: the host relays, so a hop costs the split and both links
    bw, lat = cost.link("CUDA0")
    assert cost.hop_tg("CUDA0", "CUDA1") == pytest.approx(cost.params.split_s + 2 * (lat + cost.act_bytes / bw))
    pp = cost.layer_pp(il, "CUDA0", frozenset({("down", "CUDA1")}), "CUDA0")
    assert pp["transfers"] == pytest.approx(2 * cost.hop_pp("CUDA0", "CUDA1")) and pp["CUDA1"] > 0
    assert "CUDA1" not in cost.layer_tg(il, "CUDA0", frozenset())


def _check(model: ModelProfile, cluster_file: Path, *argv: str) -> tuple[int, list[str]]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(["check", str(model.path), "--cluster", str(cluster_file), "--", *argv])
    return code, [ln for ln in err.getvalue().splitlines() if not ln.startswith("warning: ")]


CLUSTER_TOML = """name = "xgpu-rpc"
[[devices]]
name = "RPC0"
kind = "rpc"
memory_gib = 1
bandwidth_gbs = 100
endpoint = "10.0.0.2:50052"
link_gbs = 1.25
[[devices]]
name = "RPC1"
kind = "rpc"
memory_gib = 1
bandwidth_gbs = 100
endpoint = "10.0.0.3:50052"
link_gbs = 1.25
[[devices]]
name = "CUDA0"
kind = "gpu"
memory_gib = 1
bandwidth_gbs = 1000
[[devices]]
name = "CUDA1"
kind = "gpu"
memory_gib = 1
bandwidth_gbs = 1000
[[devices]]
name = "CPU"
kind = "cpu"
memory_gib = 16
bandwidth_gbs = 50
threads = 8
"""


def test_check_takes_experts_on_the_other_local_gpu(models: dict[str, ModelProfile], tmp_path: Path) -> None:
    model = models["qwen3moe"]
    cluster = tmp_path / "c.toml"
    cluster.write_text(CLUSTER_TOML)
    code, err = _check(model, cluster, "-dev", "CUDA0,CUDA1", "-ngl", "99", "-ts", "1,0", "-c", "512",
                       "-ot", r"blk\.[2-3]\.ffn_(up|gate)_exps=CUDA1")
    assert code == 0, err


# {R0}/{R1}: the RPC devices as the engine's -dev names them (mainline: device names; ik: buffer names)
@pytest.mark.parametrize("argv, says", [
    # a layer on RPC0, its experts on RPC1 (another rpc-server) or on a local GPU
    (["-dev", "{R0},{R1}", "-ngl", "99", "-ts", "1,1", "-ot", r"blk\.1\.ffn_up_exps=RPC0[10.0.0.3:50052]"],
     "across an RPC device"),
    (["-dev", "{R0},CUDA0", "-ngl", "99", "-ts", "1,0", "-ot", r"blk\.1\.ffn_up_exps=CUDA0"], "across an RPC device"),
    # a GPU layer's experts on an RPC device
    (["-dev", "CUDA0,{R0}", "-ngl", "99", "-ts", "1,0", "-ot", r"blk\.1\.ffn_down_exps=RPC0[10.0.0.2:50052]"],
     "across an RPC device"),
    # a GPU outside -dev has no backend in the engine
    (["-dev", "CUDA0", "-ngl", "99", "-ot", r"blk\.1\.ffn_down_exps=CUDA1"], "not one of the engine's devices"),
    # a CPU layer's experts on a GPU
    (["-dev", "CUDA0,CUDA1", "-ngl", "2", "-ot", r"blk\.0\.ffn_down_exps=CUDA1"], "away from its layer on the CPU"),
])
@pytest.mark.parametrize("engine", ENGINES)
def test_check_refuses_experts_where_the_engine_cannot_run_them(models: dict[str, ModelProfile], tmp_path: Path,
                                                                engine: str, argv: list[str], says: str) -> None:
    model = models["qwen3moe"]
    cluster = tmp_path / "c.toml"
    cluster.write_text(CLUSTER_TOML)
    names = ({"R0": "RPC0", "R1": "RPC1"} if engine == "llama.cpp"
             else {"R0": "RPC0[10.0.0.2:50052]", "R1": "RPC0[10.0.0.3:50052]"})
    argv = [a.format(**names) if i and argv[i - 1] == "-dev" else a for i, a in enumerate(argv)]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(["check", str(model.path), "--cluster", str(cluster), "--engine", engine, "--", *argv])
    lines = [ln for ln in err.getvalue().splitlines() if not ln.startswith("warning: ")]
    assert code == 2, lines
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), lines
    assert says in lines[0]


def test_a_placement_with_experts_across_rpc_devices_is_not_encoded(models: dict[str, ModelProfile]) -> None:
    model = models["qwen3moe"]
    cluster = two_gpus(rpc=2)
    p = placement_from_counts(model, ("RPC0", "RPC1"), 0, (3, 3))
    homes = list(p.expert_homes)
    homes[1] = frozenset({("up", "RPC1")})
    q = Placement(p.order, p.layer_home, tuple(homes), p.output)
    with pytest.raises(InvalidArgumentError, match="across an RPC device"):
        expert_overrides(model, q, rpc_buffer_names(cluster.devices))


@pytest.mark.parametrize("room, moved", [(0.8, 0), (1.2, 1), (2.2, 2)])
def test_greedy_pass_fills_the_other_gpu_with_ram_experts_while_it_pays(tmp_path: Path, room: float,
                                                                        moved: int) -> None:
    """Every layer on CUDA0, four layers' experts in RAM, CUDA1 empty with room for ``room``
    layers' experts beside the compute buffer it then needs: the pass moves as many whole
    layers' experts as fit, each move lowering the decode time, and the result fits."""
    model = load_model(write_model(tmp_path / "moe.gguf", "qwen3moe", n_layer=6, n_expert=64, n_ff_exp=256))
    p = placement_from_counts(model, ("CUDA0",), 0, (model.n_layer,), [0, 0, 3, 3, 3, 3])
    probe = CostModel(model, two_gpus(), Context(ctx=4096, n_ubatch=64))
    experts = probe.expert_bytes(2, "cuda", None, False)
    cuda1 = (probe.compute.device_bytes(True, False) + room * experts) / MiB
    cost = CostModel(model, two_gpus((512, cuda1)), Context(ctx=4096, n_ubatch=64))
    got = rehome_experts(cost, p, 1.0, 0.0)
    assert sum(1 for homes in got.expert_homes if ("down", "CUDA1") in homes) == moved
    assert got.cpu_experts.count(frozenset()) == 2 + moved  # whole layers' kinds moved
    if moved:
        assert got.order == ("CUDA0", "CUDA1") and all(u.fits for u in cost.usage(got))
        assert cost.predict(got).tg_tps > cost.predict(p).tg_tps
    else:
        assert got == p
    # a GPU slower than the CPU at these experts (hops and launches included) gets none
    slow = CostModel(model, two_gpus((512, cuda1)), Context(ctx=4096, n_ubatch=64),
                     SpeedParams(gpu_layer_scale=0.05/55e-6))
    assert rehome_experts(slow, p, 1.0, 0.0) == p


def test_seed_plan_for_ik_puts_spare_gpu_memory_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed rig (96 + 32 GB, no P2P) with DeepSeek-V3.2 for ik_llama.cpp: the core leaves
    room on the first GPU (its op-offload reserve, which ik does not need); the pass puts the
    down experts of a CUDA0 layer there, and ik's flags give the placement back."""
    # mmap'd (no pinning): the pass's own effect, on the placement the core chose
    got = plan_split("deepseek-v3.2", "seed", engine="ik_llama.cpp", pin_weights=False)
    monkeypatch.setattr(plan_module, "rehome_experts", lambda cost, p, w_tg, w_pp: p)
    core = plan_split("deepseek-v3.2", "seed", engine="ik_llama.cpp", pin_weights=False)
    p = got.placement
    assert p.foreign_experts and got.feasible and got.solve_stats["chosen_from"] == "solver"
    # without the pass the core's optimum keeps every expert with its layer or in RAM, and loses
    # to --fit, whose first partial layer on CUDA0 overflows its experts onto CUDA1 (fitemu)
    assert core.solve_stats["chosen_from"] == "fit" or not core.placement.foreign_experts
    assert got.predicted.tg_tps > core.predicted.tg_tps and got.predicted.pp_tps >= core.predicted.pp_tps
    rules = dialect("ik_llama.cpp")
    back = rules.decode(got.model, rules.parse_args(got.args()), got.cluster, got.context)
    assert homes_present(got.model, back) == homes_present(got.model, p) and back.layer_home == p.layer_home


def test_calibrate_reads_cross_gpu_experts_from_llama_bench_records() -> None:
    """A mainline llama-bench record (a real H200-pair run, its -ot changed) whose
    ``tensor_buft_overrides`` send a layer's down experts to CUDA1 while -ts keeps every layer on
    CUDA0: the imported point's placement has them there."""
    root = Path(__file__).resolve().parents[1]
    model = _load_xz_header(root / "benchmarks/results/engine_compare/moe33.hdr.gguf.xz")
    cluster = resolve_cluster(str(root / "benchmarks/results/engine_compare/rig_12_4.toml"))
    rec = json.loads((root / "tests/data/llamabench/moe33.rig_12_4.llama.cpp.jsonl").read_text().splitlines()[2])
    rec.update(n_gpu_layers=99, tensor_split="1.00/0.00", devices="auto",
               tensor_buft_overrides=r"blk\.2\.ffn_down_exps=CUDA1;blk\.3\.ffn_(up|gate)_exps=CPU")
    (pt,) = import_text(json.dumps(rec), model, cluster).points
    p = pt.placement
    assert set(p.layer_home) == {"CUDA0"} and p.foreign_experts == {"CUDA1"}
    assert p.expert_homes[2] == {("down", "CUDA1")} and p.expert_homes[3] == {("up", CPU), ("gate", CPU)}
