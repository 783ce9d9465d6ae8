"""Plans applied through the real libllama and compared with what the engine did.

Randomized plans (hypothesis) of tiny real models of four architectures -- dense llama, SWA
gemma3, MoE qwen3moe, MoE + MLA + leading dense layer + NextN deepseek2 -- over CPU + two loopback
RPC devices: random device order, CPU prefix, per-device layer counts, per-layer routed-expert
overrides to the CPU, expert kinds on the *other* RPC device (priced like experts on another GPU;
omni-place refuses such flags, the engine takes them), output overrides, context, ubatch, KV type
and flash attention. Each is loaded for real (load_mode none, so every CPU byte is counted) and
must show 0 mismatches of layer, output and tensor devices, model and KV bytes exact up to the
engine's print rounding, and compute buffers within verify.Tolerance's rule.
Plus plan_split's own plans, dry runs, the in-process handle, and the `verify` command's exit codes.
"""
from __future__ import annotations

import ctypes
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_place.cli import main
from omni_place.cost import CPU, EXPERT_OPTIONS, Context, CostModel, Placement, expert_kind, placement_from_counts
from omni_place.devices import Cluster, Device
from omni_place.engines import llama_cpp
from omni_place.engines.common import rpc_servers
from omni_place.errors import EngineMismatchError, InvalidArgumentError
from omni_place.llama import LoadReport, Tolerance, apply, bindings as b, verify_plan
from omni_place.llama.plan_spec import TENSOR_SPLIT_FLOATS, load_spec
from omni_place.llama.verify import (
    Expected,
    compare,
    engine_device_names,
    expected_from_plan,
    override_device,
    parse_tensor_lines,
    tensor_targets,
)
from omni_place.model import ModelProfile, load_model
from omni_place.plan import Plan, plan_split
from omni_place.units import MiB

from .arch_models import write_model

engine = pytest.mark.engine
ARCHS = ("llama", "gemma3", "qwen3moe", "deepseek2")
ACCEL = ("RPC0", "RPC1")
QUICK = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelProfile]:
    root = tmp_path_factory.mktemp("verify-models")
    extra = {"deepseek2": {"n_nextn": 1}}
    return {a: load_model(write_model(root / f"{a}.gguf", a, **extra.get(a, {}))) for a in ARCHS}


def loop_cluster(endpoints: list[str], mem_mib: tuple[float, float] = (64, 64), cpu_gbs: float = 0.01) -> Cluster:
    """CPU + the two loopback RPC servers, described as small fast devices (no margin)."""
    rpc = [Device(name, "rpc", int(mem * MiB), 500.0, endpoint=ep, link_gbs=100.0, link_latency_us=1.0,
                  margin_bytes=0) for name, ep, mem in zip(ACCEL, endpoints, mem_mib)]
    return Cluster("loopback", (*rpc, Device("CPU", "cpu", 16 << 30, cpu_gbs, threads=2)))


def cluster_toml(endpoints: list[str]) -> str:
    rpc = "".join(f'[[devices]]\nname = "{n}"\nkind = "rpc"\nmemory_gib = 0.0625\nbandwidth_gbs = 500\n'
                  f'endpoint = "{ep}"\nlink_gbs = 100\nlink_latency_us = 1\nmargin_mib = 0\n'
                  for n, ep in zip(ACCEL, endpoints))
    cpu = '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 16\nbandwidth_gbs = 0.01\nthreads = 2\n'
    return f'name = "loopback"\n{rpc}{cpu}'


def make_plan(model: ModelProfile, cluster: Cluster, p: Placement, context: Context) -> Plan:
    """A Plan for a given placement, built the way plan_split builds its result."""
    cost = CostModel(model, cluster, context)
    return Plan(model, cluster, "llama.cpp", "tg", context, p, cost.usage(p), cost.predict(p),
                llama_cpp.encode(model, p, ACCEL), ACCEL)


@st.composite
def placements(draw: st.DrawFn, model: ModelProfile) -> tuple[Placement, Context]:
    n = model.n_layer
    order = tuple(draw(st.permutations(ACCEL))[: draw(st.integers(0, 2))])
    n_cpu = n if not order else draw(st.integers(0, n))
    counts = [0] * len(order)
    for _ in range(n - n_cpu):
        counts[draw(st.integers(0, len(order) - 1))] += 1
    options = [draw(st.integers(0, len(EXPERT_OPTIONS) - 1)) if lc.has_experts else 0 for lc in model.layers]
    p = placement_from_counts(model, order, n_cpu, counts, options)
    used = [d for d, c in zip(order, counts) if c]
    output = draw(st.sampled_from([p.output, CPU, *order])) if used else draw(st.sampled_from([CPU, *order]))
    homes = list(p.expert_homes)
    if len(order) == 2 and draw(st.booleans()):  # one layer's experts of a kind onto the *other* RPC device
        movable = [il for il, h in enumerate(p.layer_home) if h != CPU and model.layers[il].has_experts
                   and not model.layers[il].is_nextn]
        if movable:
            il = draw(st.sampled_from(movable))
            other = next(d for d in order if d != p.layer_home[il])
            kind = draw(st.sampled_from(["up", "down", "gate"]))
            homes[il] = frozenset((k, d) for k, d in homes[il] if k != kind) | {(kind, other)}
    p = Placement(p.order, p.layer_home, tuple(homes), output)
    fa = draw(st.booleans())
    hp = model.hparams
    kv_types = ["f16", "f32"]
    if fa and hp.head_dim_k % 32 == 0 and hp.head_dim_v % 32 == 0 and not hp.is_mla:
        kv_types.append("q8_0")  # a quantized V cache needs FA, and rows of whole 32-blocks
    kv = draw(st.sampled_from(kv_types))
    context = Context(ctx=draw(st.sampled_from([256, 512, 1024])), n_ubatch=draw(st.sampled_from([16, 32, 64])),
                      type_k=kv, type_v=kv, flash_attn=fa)
    return p, context


def assert_engine_agrees(plan: Plan, v: Any, *, exact: bool) -> None:
    assert v.error is None, v.error
    problems = v.mismatches()
    assert not problems, v.to_text()
    assert [lc.actual for lc in v.layers] == list(plan.placement.layer_home)
    assert v.output.actual == plan.placement.output
    moved = tensor_targets([t.name for t in plan.model.tensors if t.layer is None
                            or not plan.model.layers[t.layer].is_nextn], plan.overrides, plan.cluster)
    assert {tc.tensor for tc in v.tensors} == set(moved)  # every overridden tensor was checked
    for dc in v.devices:  # compute within 2.5x + 1 MiB, except three known, conservative gaps:
        # a device holding only the output head or only NextN blocks is priced a whole layer's
        # compute buffer, which the engine never needs, and one holding only sliding-window layers
        # without flash attention is priced the full-context KQ scores of the model's widest layer
        # (compute.py prices one widest layer for every device)
        if {b.kind: b for b in dc.buffers}["compute"].status == "over-predicted":
            layers = plan.placement.layers_on(dc.name)
            nextn_only = layers and all(plan.model.layers[il].is_nextn for il in layers)
            swa_only = (layers and not plan.context.flash_attn
                        and all(plan.model.hparams.is_swa[il] for il in layers))
            assert nextn_only or swa_only or (not layers and plan.placement.output == dc.name), v.to_text()
    if exact:  # model and KV bytes: exact up to the engine's 0.01 MiB printing
        strict = compare(expected_from_plan(plan), v.load, plan.cluster, Tolerance.exact())
        assert all(b.match for d in strict.devices for b in d.buffers if b.kind != "compute"), strict.to_text()


# ---------------------------------------------------------------------------------------------
# Randomized plans through the real engine
# ---------------------------------------------------------------------------------------------


@engine
@pytest.mark.parametrize("arch", ARCHS)
def test_random_plans_load_as_planned(arch: str, models: dict[str, ModelProfile], rpc_pair: list[str]) -> None:
    model = models[arch]
    cluster = loop_cluster(rpc_pair)

    @QUICK
    @given(placements(model))
    def check(drawn: tuple[Placement, Context]) -> None:
        p, context = drawn
        plan = make_plan(model, cluster, p, context)
        v = verify_plan(plan, timeout=60)
        assert_engine_agrees(plan, v, exact=True)

    check()


@engine
@pytest.mark.parametrize("arch", ["qwen3moe", "deepseek2"])
def test_moe_experts_on_the_cpu_and_on_the_other_rpc_device(arch: str, models: dict[str, ModelProfile],
                                                           rpc_pair: list[str]) -> None:
    model = models[arch]
    n = model.hparams.n_layer - model.hparams.n_layer_nextn  # trunk layers
    # layer 0 on the CPU; RPC0 gets layer 1 with every expert on the CPU and layer 2 with only its
    # down experts there; RPC1 the rest, one layer's up experts living on RPC0
    p = placement_from_counts(model, ACCEL, 1, (2, model.n_layer - 3), [0, 3, 1] + [0] * (model.n_layer - 3))
    p = Placement(p.order, p.layer_home, p.expert_homes, p.output, ((rf"blk\.{n - 1}\.ffn_up_exps", "RPC0"),))
    plan = make_plan(model, loop_cluster(rpc_pair), p, Context(ctx=512, n_ubatch=32))
    v = verify_plan(plan)
    assert_engine_agrees(plan, v, exact=False)
    where = {t.tensor: t.actual for t in v.tensors}
    assert where[f"blk.{n - 1}.ffn_up_exps.weight"] == "RPC0" and p.layer_home[n - 1] == "RPC1"
    assert {where[f"blk.1.ffn_{k}_exps.weight"] for k in ("up", "down", "gate")} == {CPU}
    assert where["blk.2.ffn_down_exps.weight"] == CPU and "blk.2.ffn_up_exps.weight" not in where
    # the plan does not price the up experts on RPC0 (the cost model keeps experts with their
    # layer or on the CPU): RPC0 holds exactly those bytes more than planned, RPC1 that many less
    size = next(t.info.n_bytes for t in plan.model.tensors if t.name == f"blk.{n - 1}.ffn_up_exps.weight")
    dev = {d.name: {b.kind: b for b in d.buffers}["model"] for d in v.devices}
    assert abs(dev["RPC0"].actual - dev["RPC0"].predicted - size) <= 2 * 5243
    assert abs(dev["RPC1"].predicted - dev["RPC1"].actual - size) <= 2 * 5243


@engine
@pytest.mark.parametrize("arch", ["qwen3moe", "deepseek2"])
def test_experts_on_the_other_rpc_device_load_as_priced_yet_are_refused(arch: str, models: dict[str, ModelProfile],
                                                                       rpc_pair: list[str]) -> None:
    """The engine takes a layer on RPC0 with some of its experts on RPC1 (and one on RPC1 with
    experts on RPC0 and the CPU): the no-alloc load places every tensor as the expert homes say,
    the real load's model bytes per device are exactly the priced ones -- and omni-place still
    refuses such flags (engines.common.check_expert_target: across rpc-servers every layer visit
    relays its activations through this host)."""
    model = models[arch]
    p = placement_from_counts(model, ACCEL, 0, (2, model.n_layer - 2))
    moe = [il for il, lc in enumerate(model.layers) if lc.has_experts and not lc.is_nextn]
    on0 = next(il for il in moe if p.layer_home[il] == "RPC0")
    on1 = next(il for il in moe if p.layer_home[il] == "RPC1")
    homes = list(p.expert_homes)
    homes[on0] = frozenset({("up", "RPC1"), ("gate", "RPC1")})
    homes[on1] = frozenset({("down", "RPC0"), ("up", CPU)})
    q = Placement(p.order, p.layer_home, tuple(homes), p.output)
    cluster = loop_cluster(rpc_pair)
    plan = make_plan(model, cluster, q, Context(ctx=512, n_ubatch=32))
    dry = verify_plan(plan, dry_run=True)
    assert dry.matches, dry.to_text()
    where = {t.tensor: t.actual for t in dry.tensors}
    for il in (on0, on1):
        for t in model.layers[il].expert_tensors:
            assert where.get(t.name, q.layer_home[il]) == q.expert_home(il, expert_kind(t)), t.name
    assert_engine_agrees(plan, verify_plan(plan), exact=True)
    rules = llama_cpp.DIALECT
    with pytest.raises(InvalidArgumentError, match="across an RPC device"):
        rules.decode(model, rules.parse_args(plan.args()), cluster, plan.context)


@engine
@settings(max_examples=16, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arch=st.sampled_from(ARCHS), mem=st.tuples(st.integers(2, 10), st.integers(2, 10)),
       objective=st.sampled_from(["tg", "pp"]), ctx=st.sampled_from([256, 1024]))
def test_planner_plans_load_as_planned(models: dict[str, ModelProfile], rpc_pair: list[str], arch: str,
                                       mem: tuple[int, int], objective: str, ctx: int) -> None:
    plan = plan_split(models[arch], loop_cluster(rpc_pair, mem), ctx=ctx, ubatch=32, objective=objective)
    assert_engine_agrees(plan, verify_plan(plan, timeout=60), exact=True)


@engine
@pytest.mark.parametrize("order", [("RPC0", "RPC1"), ("RPC1", "RPC0")])
def test_gemma4_per_layer_embeddings_load_as_planned(tmp_path: Path, rpc_pair: list[str],
                                                    order: tuple[str, str]) -> None:
    """Gemma 4 E2B / E4B's per-layer embeddings: their table stays with the token embeddings, their
    projection and its norm (named without a block) go with layer 0, the layers' gates with their
    layer: every device's model bytes exact, layer 0 on either RPC device and the CPU holding none."""
    path = write_model(tmp_path / "g4ple.gguf", "gemma4", n_layer=6, n_embd=256, head_dim=64, n_head=4, n_head_kv=2,
                       gemma4={"ple": 128})
    model = load_model(path)
    proj = next(t for t in model.tensors if t.name == "per_layer_model_proj.weight")
    assert proj.layer == 0 and proj.bytes > 0.05 * MiB  # ten times the engine's printing resolution
    assert not model.unknown_tensors
    p = placement_from_counts(model, order, 0, (2, model.n_layer - 2))
    plan = make_plan(model, loop_cluster(rpc_pair, (16, 16)), p, Context(ctx=256, n_ubatch=32))
    assert_engine_agrees(plan, verify_plan(plan, timeout=60), exact=True)


@engine
@pytest.mark.parametrize("arch", ["qwen3moe", "deepseek2"])
def test_dry_run_places_like_the_real_load(arch: str, models: dict[str, ModelProfile], rpc_pair: list[str]) -> None:
    model = models[arch]
    p = placement_from_counts(model, ("RPC1", "RPC0"), 1, (1, model.n_layer - 2), [3, 3, 1, 2, 0][: model.n_layer])
    plan = make_plan(model, loop_cluster(rpc_pair), p, Context(ctx=512, n_ubatch=32))
    real, dry = verify_plan(plan), verify_plan(plan, dry_run=True)
    assert real.matches and dry.matches, dry.to_text()
    assert dry.dry_run and dry.load.load_mode == "none"
    assert [lc.actual for lc in dry.layers] == [lc.actual for lc in real.layers]
    assert [(t.tensor, t.actual) for t in dry.tensors] == [(t.tensor, t.actual) for t in real.tensors]
    assert any(t.actual == CPU for t in dry.tensors)
    for d_dev, r_dev in zip(dry.devices, real.devices):
        d, r = ({b.kind: b for b in dev.buffers} for dev in (d_dev, r_dev))
        assert d["model"].status == d["kv"].status == "unmeasured"
        assert d["compute"].actual == r["compute"].actual  # no_alloc sizes compute exactly


# ---------------------------------------------------------------------------------------------
# apply(): the handle deployment scripts use
# ---------------------------------------------------------------------------------------------


@engine
def test_apply_keeps_a_usable_model_and_context(models: dict[str, ModelProfile], rpc_pair: list[str]) -> None:
    model = models["llama"]
    p = placement_from_counts(model, ACCEL, 1, (2, 1))
    plan = make_plan(model, loop_cluster(rpc_pair), p, Context(ctx=512, n_ubatch=32))
    dry = apply(plan)
    assert dry.model is None and dry.context is None and dry.matches
    with apply(plan, dry_run=False) as loaded:
        assert loaded.model and loaded.context and loaded.matches, loaded.verification.to_text()
        assert b.llama_n_ctx(loaded.context) == 512
        tokens = (ctypes.c_int32 * 4)(1, 5, 9, 13)
        assert b.llama_decode(loaded.context, b.llama_batch_get_one(tokens, 4)) == 0
    assert loaded.model is None and loaded.context is None
    loaded.close()  # idempotent


@engine
def test_apply_spec_is_exactly_the_plans_flags(models: dict[str, ModelProfile], rpc_pair: list[str]) -> None:
    model = models["qwen3moe"]
    p = placement_from_counts(model, ("RPC1", "RPC0"), 1, (1, 2), [0, 3, 1, 0])
    plan = make_plan(model, loop_cluster(rpc_pair), p, Context(ctx=1024, n_ubatch=64, type_k="q8_0", type_v="q8_0"))
    spec = load_spec(plan, dry_run=True)
    assert plan.args()[:4] == ["-dev", "RPC1,RPC0", "-ngl", "4"]
    assert spec.devices == ["RPC1", "RPC0"] and spec.n_gpu_layers == 4
    assert spec.tensor_split == [1.0, 3.0] + [0.0] * (TENSOR_SPLIT_FLOATS - 2)
    assert spec.overrides == plan.overrides and all(t == "CPU" for _, t in spec.overrides)
    assert spec.rpc_servers == rpc_servers(plan.cluster.devices) == rpc_pair
    assert (spec.n_ctx, spec.n_ubatch, spec.type_k, spec.type_v, spec.flash_attn) == (1024, 64, "q8_0", "q8_0", "on")


@engine
def test_engine_disagreement_is_reported(models: dict[str, ModelProfile], rpc_pair: list[str]) -> None:
    model = models["qwen3moe"]
    p = placement_from_counts(model, ACCEL, 0, (2, 2), [0, 0, 3, 0])
    plan = make_plan(model, loop_cluster(rpc_pair), p, Context(ctx=512, n_ubatch=32))
    v = verify_plan(plan, dry_run=True)
    assert v.matches
    wrong = expected_from_plan(plan)
    wrong.layers[0] = "RPC1"
    wrong.tensors["blk.2.ffn_up_exps.weight"] = ("RPC0", "doctored")
    wrong.devices["RPC0"]["compute"] = 0  # under-predicted (with 64 KiB of slack, below)
    wrong.devices["RPC1"]["compute"] = 64 * MiB  # conservative: a warning, not a mismatch
    bad = compare(wrong, v.load, plan.cluster, Tolerance(compute_under_bytes=64 << 10))
    problems = bad.mismatches()
    assert not bad.matches and len(problems) == 3, problems
    assert problems[0] == "layer 0: plan RPC1, engine RPC0"
    assert problems[1] == "tensor blk.2.ffn_up_exps.weight: plan RPC0, engine CPU"
    assert problems[2].startswith("RPC0 compute buffer: plan 0.00 MiB") and "under-predicted" in problems[2]
    assert bad.warnings() and bad.warnings()[0].startswith("RPC1 compute buffer: plan 64.00 MiB")
    with pytest.raises(EngineMismatchError, match="layer 0: plan RPC1, engine RPC0 \\(\\+2 more\\)") as err:
        bad.raise_for_mismatch()
    assert err.value.exit_code == 4
    assert "MISMATCH: 3 difference(s)" in bad.to_text()


def test_other_engines_and_missing_files_are_refused(models: dict[str, ModelProfile], tmp_path: Path) -> None:
    model = models["llama"]
    cluster = loop_cluster(["127.0.0.1:9", "127.0.0.1:10"])
    plan = make_plan(model, cluster, placement_from_counts(model, (), model.n_layer, ()), Context(ctx=256))
    plan.engine = "ik_llama.cpp"
    with pytest.raises(InvalidArgumentError, match="this plan is for ik_llama.cpp"):
        apply(plan)
    plan.engine = "llama.cpp"
    plan.model = load_model(write_model(tmp_path / "gone.gguf", "llama"))
    (tmp_path / "gone.gguf").unlink()
    with pytest.raises(InvalidArgumentError, match="model file not found"):
        verify_plan(plan)


# ---------------------------------------------------------------------------------------------
# omni-place verify
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def planned(models: dict[str, ModelProfile], rpc_pair: list[str], tmp_path: Path,
            capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """`omni-place plan` of the MoE model on the loopback cluster file, saved as plan.json."""
    cluster = tmp_path / "loopback.toml"
    cluster.write_text(cluster_toml(rpc_pair))
    model = str(models["qwen3moe"].path)
    assert main(["plan", model, "--cluster", str(cluster), "--ctx", "512", "--ubatch", "32", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any(d["name"] in ACCEL and d["n_layers"] for d in data["devices"]), data["args"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(data))
    return {"model": model, "cluster": str(cluster), "plan": str(plan), "data": data, "dir": tmp_path}


@engine
def test_verify_command_matches(planned: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["verify", planned["model"], "--plan", planned["plan"], "--cluster", planned["cluster"]]
    assert main([*args, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["matches"] is True and out["mismatches"] == []
    layers = planned["data"]["layers"]
    assert [(e["layer"], e["predicted"], e["actual"]) for e in out["layers"]] == [
        (e["layer"], e["device"], e["device"]) for e in layers]
    names = [d["name"] for d in out["devices"]]
    assert names == [d["name"] for d in planned["data"]["devices"]]
    for dev, want in zip(out["devices"], planned["data"]["devices"]):
        assert dev["predicted_bytes"] == {"model": want["weights_bytes"], "kv": want["kv_bytes"],
                                          "compute": want["compute_bytes"]}
        assert all(isinstance(v, int) for v in dev["actual_bytes"].values())
    assert main(args) == 0
    assert "MATCH: the engine placed and sized everything as planned" in capsys.readouterr().out
    assert main([*args, "--dry-run"]) == 0


@engine
def test_plan_verify_flag(planned: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", planned["model"], "--cluster", planned["cluster"], "--ctx", "512", "--ubatch", "32", "--verify"]
    assert main([*args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # one document: the plan and what the engine did
    assert doc["plan"]["args"] == planned["data"]["args"] and doc["verify"]["matches"] is True
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "predicted: decode" in out and "MATCH: the engine placed and sized everything as planned" in out


@engine
def test_verify_command_exit_4_on_disagreement(planned: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(json.dumps(planned["data"]))
    first = data["layers"][0]["device"]
    data["layers"][0]["device"] = next(d for d in (*ACCEL, CPU) if d != first)
    edited = Path(planned["dir"]) / "edited.json"
    edited.write_text(json.dumps(data))
    assert main(["verify", planned["model"], "--plan", str(edited), "--cluster", planned["cluster"],
                 "--format", "json"]) == 4
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["matches"] is False
    assert out["layers"][0] == {"layer": 0, "predicted": data["layers"][0]["device"], "actual": first, "match": False}
    assert cap.err.startswith(f"error: the engine disagrees with the plan: layer 0: plan {data['layers'][0]['device']}")


@engine
def test_verify_command_bad_input_exits_2(planned: dict[str, Any], models: dict[str, ModelProfile],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model, cluster, d = planned["model"], planned["cluster"], Path(planned["dir"])

    def run(plan: str | Path, *extra: str, model_path: str = model) -> str:
        assert main(["verify", model_path, "--plan", str(plan), "--cluster", cluster, *extra]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and err[0].startswith("error: ") and err[1].startswith("hint: "), err
        return err[0]

    assert "plan file not found" in run(d / "absent.json")
    (d / "garbage.json").write_text("{not json")
    assert "is not JSON" in run(d / "garbage.json")
    (d / "list.json").write_text("[1, 2]")
    assert "is not a plan" in run(d / "list.json")
    (d / "partial.json").write_text(json.dumps({"engine": "llama.cpp", "model": model}))
    assert "is not a plan: no args" in run(d / "partial.json")
    (d / "ik.json").write_text(json.dumps({**planned["data"], "engine": "ik_llama.cpp"}))
    assert "plan.json" not in run(d / "ik.json") and "is a plan for ik_llama.cpp" in run(d / "ik.json")
    other = str(models["llama"].path)
    assert re.search(r"is a plan for .*qwen3moe\.gguf, not .*llama\.gguf", run(planned["plan"], model_path=other))
    # the plan's RPC devices are not in this machine's auto-discovered cluster
    assert main(["verify", model, "--plan", planned["plan"]]) == 2
    assert "does not have" in capsys.readouterr().err
    assert "--cluster and --preset are exclusive" in run(planned["plan"], "--preset", "seed")


# ---------------------------------------------------------------------------------------------
# No engine needed
# ---------------------------------------------------------------------------------------------

TENSOR_LOG = """\
tensor blk.2.ffn_gate_exps.weight (0 MiB f16) buffer type overridden to CPU
tensor blk.3.ffn_down_exps.weight (12 MiB q4_K) buffer type overridden to RPC0[127.0.0.1:50052]
model has unused tensor blk.4.nextn.eh_proj.weight (size = 16384 bytes) -- ignoring
done_getting_tensors: tensor 'token_embd.weight' (f16) (and 4 others) cannot be used with preferred buffer type \
CPU_REPACK, using CPU instead
load_tensors: tensor 'blk.1.attn_q.weight' (q4_0) cannot be used with preferred buffer type \
RPC0[127.0.0.1:50052], using CPU instead
"""


def test_parse_tensor_lines() -> None:
    t = parse_tensor_lines(TENSOR_LOG.splitlines())
    assert t.overridden == {"blk.2.ffn_gate_exps.weight": "CPU",
                            "blk.3.ffn_down_exps.weight": "RPC0[127.0.0.1:50052]"}
    assert t.unused == {"blk.4.nextn.eh_proj.weight"}
    assert t.fallbacks == {"token_embd.weight": ("CPU_REPACK", "CPU", 4),
                           "blk.1.attn_q.weight": ("RPC0[127.0.0.1:50052]", "CPU", 0)}


def test_fallback_off_the_layers_device_is_a_mismatch() -> None:
    devices = [{"name": "CPU", "description": "cpu", "buffer_type": "CPU", "host_buffer_type": None},
               {"name": "RPC0", "description": "127.0.0.1:50052", "buffer_type": "RPC0[127.0.0.1:50052]",
                "host_buffer_type": None}]
    report = LoadReport(ok=True, layer_devices={0: "CPU", 1: "RPC0"}, output_device="RPC0", n_layer_all=2,
                        devices=devices, devices_used=["RPC0"], log=TENSOR_LOG.splitlines())
    exp = Expected("m.gguf", ["RPC0"], ["CPU", "RPC0"], "RPC0",
                   {"blk.2.ffn_gate_exps.weight": ("CPU", "exps=CPU")}, {}, {"blk.1.attn_q.weight": "RPC0"})
    v = compare(exp, report)
    assert [(t.tensor, t.predicted, t.actual) for t in v.tensors] == [
        ("blk.2.ffn_gate_exps.weight", "CPU", "CPU"),
        ("blk.3.ffn_down_exps.weight", "?", "RPC0"),  # moved by no pattern of the plan
        ("blk.1.attn_q.weight", "RPC0", "CPU"),  # the engine could not use RPC0 for it
    ]
    assert not v.matches and len(v.mismatches()) == 2


def test_tolerance_rules() -> None:
    tol = Tolerance()
    pr = 5243  # one printed line: 0.005 MiB
    assert tol.bounds("model", 1000 * MiB) == (1000 * MiB - 16 * MiB - pr, 1000 * MiB + 16 * MiB + pr)
    assert tol.bounds("kv", 4000 * MiB, 2) == (4000 * MiB - 40 * MiB - 2 * pr, 4000 * MiB + 40 * MiB + 2 * pr)
    low, high = tol.bounds("compute", 101 * MiB)
    assert (low, high) == (40 * MiB - pr, 102 * MiB + pr)  # engine >= (pred - 1 MiB) / 2.5, <= pred + 1 MiB
    assert Tolerance.exact().bounds("model", MiB, 3) == (MiB - 3 * pr, MiB + 3 * pr)
    assert tol.bounds("model", MiB, mapped=True)[1] == float("inf")


def test_device_names_follow_endpoints() -> None:
    cluster = loop_cluster(["127.0.0.1:7001", "127.0.0.1:7002"])
    report = LoadReport(ok=True, devices=[
        {"name": "CPU", "description": "x"},
        {"name": "RPC3", "description": "127.0.0.1:7002"},  # numbered by this process's add order
        {"name": "RPC4", "description": "127.0.0.1:7001"},
    ])
    assert engine_device_names(report, cluster) == {"CPU": "CPU", "RPC3": "RPC1", "RPC4": "RPC0"}
    assert override_device("RPC0[127.0.0.1:7002]", cluster) == "RPC1"
    assert override_device("CUDA_Host", cluster) == override_device("CPU_Mapped", cluster) == CPU
    assert override_device("CUDA1", cluster) == "CUDA1"
    names = ["blk.1.ffn_up_exps.weight", "blk.10.ffn_up_exps.weight", "output.weight", "output_norm.weight"]
    assert tensor_targets(names, [(r"blk\.1\.", "CPU"), (r"exps", "RPC1"), (r"^output\.", "RPC0[127.0.0.1:7001]")],
                          cluster) == {
        "blk.1.ffn_up_exps.weight": ("CPU", r"blk\.1\."),
        "blk.10.ffn_up_exps.weight": ("RPC1", "exps"),
        "output.weight": ("RPC0", r"^output\."),
    }
