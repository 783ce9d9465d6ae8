"""``--fit`` emulated (omni_place.fitemu) against the engine's fitter.

Every mainline ``-fitt`` load the repository recorded (benchmarks/fit_emulation.py reads the
``-v`` logs of engine_compare, speed_truth and plans_vs_fit: 2x H200 held to 12 + 4 GiB, one
H200 at three memory levels) is emulated at the context and free memory that fit saw and
compared with the placement the engine made, including the first partial layer whose experts
``--fit`` overflowed onto the next GPU. Then 2-3 GPU synthetic clusters (real GGUF headers of
tests/arch_models.py): the emulated placement fits by omni_place's own memory model within
fit's margin, has fit's shape, and survives the llama.cpp dialect's flags.
"""
from __future__ import annotations

import lzma
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fit_emulation import RESULTS, FittedLoad, cluster_of, recorded_fits, same_placement
from benchmarks.speed_models import write_speed_model
from omni_place.bench.logread import placement_from_log
from omni_place.cost import CPU, CostModel, Placement
from omni_place.devices import Cluster, Device
from omni_place.engines import dialect
from omni_place.fitemu import FIT_TARGET, OVERFLOW_PATTERN, FitEmulator, Fraction, false_position_step, fit_style
from omni_place.model import ModelProfile, Role, load_model
from omni_place.recipes import decoded, standard_recipes
from omni_place.units import GiB, MiB

from .arch_models import write_model

RULES = dialect("llama.cpp")


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit-headers")
    for name in ("moe33", "dense15"):
        (out / f"{name}.hdr.gguf").write_bytes(
            lzma.decompress((RESULTS / "engine_compare" / f"{name}.hdr.gguf.xz").read_bytes()))
    for name in ("dense11", "moe15", "mla16"):
        write_speed_model(name, out, header_only=True)
    return out


def test_false_position_step_is_fit_cpps_integer_arithmetic() -> None:
    assert false_position_step(10, 700, 100, 1100) == 6  # 10 * 600 / 1000, truncated
    assert false_position_step(10, 150, 100, 1100) == 1  # 0 -> at least one
    assert false_position_step(10, 1099, 100, 1100) == 9  # at most delta - 1
    # a lower bound already over its target: C division truncates towards zero, and a
    # negative quotient wraps to a huge uint32
    assert false_position_step(10, 50, 100, 1100) == 1  # -0.5 -> 0
    assert false_position_step(10, 0, 100, 1100) == 9  # -1 -> 2**32 - 1


def test_every_recorded_fit_placement(headers: Path) -> None:
    """The emulation reproduces the engine's placement exactly where omni_place's memory
    model is exact; the rest (moe15 decoding at level b: the compute buffer priced 1.9 MiB over
    the engine's) turn on a probe a few MiB from its target, which the test bounds."""
    models: dict[str, ModelProfile] = {}
    exact, placed, seen_overflow = 0, 0, False
    near: list[FittedLoad] = []
    for load in recorded_fits():
        model = models.setdefault(load.model, load_model(headers / f"{load.model}.hdr.gguf"))
        got = placement_from_log(load.text, model, [d for d, _ in load.free_mib], "llama.cpp")
        if got is None:  # an old build could not load mla16 (speed_truth): nothing was placed
            assert load.model == "mla16" and load.source.startswith("speed_truth")
            continue
        placed += 1
        cost = CostModel(model, cluster_of(load), RULES.traits.context(ctx=load.n_ctx, n_ubatch=load.n_ubatch))
        if same_placement(model, got, fit_style(cost)):
            exact += 1
        else:
            near.append(load)
            shifted = []
            for delta in (-4 * MiB, 4 * MiB):  # every probe's target moved by 4 MiB
                emu = FitEmulator(cost)
                emu.targets = [t + delta for t in emu.targets]
                shifted.append(emu.fit())
            assert any(same_placement(model, got, p) for p in shifted), (load.source, load.test)
        if load.source.startswith("engine_compare") and "moe33.rig_12_4" in load.source:
            # fit.cpp:820-850: CUDA0's first partial layer keeps attention + up, its gate/down
            # experts overflow to CUDA1 (LAYER_FRACTION_UP); CUDA1's first slot whole, its others
            # dense-only, the output last
            assert dict(got.expert_homes[15]) == {"gate": "CUDA1", "down": "CUDA1"}
            assert got.layer_home[15] == "CUDA0" and same_placement(model, got, fit_style(cost))
            seen_overflow = True
    assert seen_overflow and placed == 86
    assert exact >= 78 and len(near) <= 8, [(n.source, n.test) for n in near]


# --- synthetic clusters ----------------------------------------------------------------------

class Models(dict[str, ModelProfile]):
    def __repr__(self) -> str:  # hypothesis prints its arguments
        return f"Models({sorted(self)})"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelProfile]:
    root = tmp_path_factory.mktemp("fit-models")
    def write(arch: str, n_expert_shared: int = 1) -> ModelProfile:  # (MoE knobs: MoE archs only)
        return load_model(write_model(root / f"{arch}.gguf", arch, n_layer=8, n_embd=256, n_head=4, n_head_kv=2,
                                      n_ff=512, n_expert=16, n_ff_exp=256, n_expert_shared=n_expert_shared,
                                      header_only=True))

    return Models({"qwen3moe": write("qwen3moe"), "deepseek2": write("deepseek2", n_expert_shared=2),
                   "llama": write("llama")})


def gpus(extra_mib: list[int]) -> Cluster:
    """GPUs with fit's margin plus ``extra_mib`` free each, and RAM."""
    devs = [Device(f"CUDA{i}", "gpu", FIT_TARGET + m * MiB, 1000.0, free_bytes=FIT_TARGET + m * MiB,
                   margin_bytes=FIT_TARGET, tflops=100.0, link_gbs=25.0) for i, m in enumerate(extra_mib)]
    return Cluster("fit", (*devs, Device(CPU, "cpu", 64 * GiB, 50.0, threads=8, margin_bytes=0)))


def check_shape(cost: CostModel, p: Placement) -> None:
    """fit's layout: CPU layers first, then each device's contiguous range in device order, the
    output with the last slot; experts away on another GPU only for one layer per device, the
    first partial one, and only on the next device."""
    names = [d.name for d in cost.cluster.gpus]
    rank = [-1 if h == CPU else names.index(h) for h in p.layer_home]
    assert rank == sorted(rank)
    if p.output != CPU:
        assert rank[-1] <= names.index(p.output)
    for dev in names:
        away = [il for il in p.layers_on(dev) if any(d != CPU for _, d in p.expert_homes[il])]
        assert len(away) <= 1
        for il in away:
            assert {d for _, d in p.expert_homes[il]} == {names[names.index(dev) + 1]}
            # whole layers before it, dense-only after it
            ils = p.layers_on(dev)
            assert all(not p.expert_homes[j] for j in ils if j < il)
            assert all(p.cpu_experts[j] or not cost.model.layers[j].has_experts for j in ils if j > il)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(arch=st.sampled_from(["qwen3moe", "deepseek2", "llama"]),
       extra=st.lists(st.integers(0, 64), min_size=2, max_size=3),
       ctx=st.sampled_from([256, 2048]), n_ubatch=st.sampled_from([32, 512]))
def test_emulated_fit_fits_within_fit_margin(models: dict[str, ModelProfile], arch: str, extra: list[int],
                                            ctx: int, n_ubatch: int) -> None:
    model = models[arch]
    cost = CostModel(model, gpus(extra), RULES.traits.context(ctx=ctx, n_ubatch=n_ubatch))
    emu = FitEmulator(cost)
    state = emu.solve()
    p = fit_style(cost)
    check_shape(cost, p)
    if state is None:  # the engine's default split already leaves fit's margin everywhere
        assert p == emu.default_placement() and all(u.fits for u in cost.usage(p) if u.kind == "gpu")
        return
    shares, over = state
    assert emu.placement(shares, over) == p
    used = emu.memory(shares, over)
    # fit checks a device only while filling it (and the next one while overflowing onto it).
    # Two later steps can still add to one filled before, as in the engine: once every layer sits
    # on the GPUs without an override the engine pipelines (compute buffers per copy), so only the
    # first device is bounded; and step 4, taking dense-only layers off the last device, moves
    # its first slot (kept whole) to a later layer, worth at most one layer's routed experts.
    experts = max(sum(t.alloc_bytes("cuda") for t in lc.expert_tensors) for lc in model.layers)
    nd = len(used)
    for i in range(1 if cost.pipeline_parallel(p) else nd):
        slack = experts if i == nd - 1 else 0
        # (a device too small for even no layer is given none)
        assert used[i] <= emu.targets[i] + slack or shares[i].n_layer == 0, (i, used[i] - emu.targets[i], shares)
    # the flags of the fit recipe say the same placement to llama.cpp
    fit = next(r for r in standard_recipes(cost, RULES) if r.name == "fit")
    assert fit.placement is not None and fit.error is None
    back = decoded(cost, RULES, fit.argv)
    assert back.layer_home == p.layer_home and back.output == p.output
    assert same_placement(model, back, p)


def test_partial_layer_overflows_to_the_next_gpu(models: dict[str, ModelProfile]) -> None:
    """A qwen3moe on two GPUs of growing size: a device's first partial layer keeps what its
    fraction names and sends the rest of its FFN (routed experts, and for UP/ATTN the router)
    to the next GPU, priced there; on the last GPU the same overflow goes to the CPU."""
    model = models["qwen3moe"]
    found = set()
    for a in range(0, 160, 4):
        cost = CostModel(model, gpus([a, 40]), RULES.traits.context(ctx=256, n_ubatch=32))
        emu = FitEmulator(cost)
        state = emu.solve()
        if state is None:
            continue
        shares, over = state
        p = emu.placement(shares, over)
        bare = {u.name: u.used_bytes for u in cost.usage(p)}
        want = [bare[n] for n in emu.names]
        il0 = model.n_layer + 1 - sum(s.n_layer for s in shares)
        for dev, s in enumerate(shares):
            il = il0 + s.n_full  # the device's first partial layer
            il0 += s.n_layer
            if not s.n_part or s.overflow == Fraction.MOE:
                continue
            found.add((dev, s.overflow, over[dev]))
            kinds = {k for k, _ in p.expert_homes[il]} & {"gate", "up", "down"}
            assert kinds == {"ATTN": {"gate", "up", "down"}, "UP": {"gate", "down"},
                             "GATE": {"down"}}[s.overflow.name]
            assert {d for _, d in p.expert_homes[il]} == {over[dev]}
            # the pattern moves the router too (UP, ATTN): priced off this device and onto the
            # next GPU (the cost model keeps non-expert tensors with their layer)
            moved = sum(t.alloc_bytes(cost.backend(emu.names[dev])) for t in model.tensors
                        if t.role is not Role.ROUTED_EXPERT
                        and re.search(OVERFLOW_PATTERN[s.overflow].format(il=il), t.name))
            assert bool(moved) == (s.overflow != Fraction.GATE)
            want[dev] -= moved
            if over[dev] != CPU:
                want[dev + 1] += moved
        assert emu.memory(shares, over) == want
    assert {(0, "CUDA1"), (1, "CPU")} <= {(dev, target) for dev, _, target in found}, found
    assert {f for _, f, _ in found} == {Fraction.UP, Fraction.GATE, Fraction.ATTN}


def test_default_split_when_it_leaves_every_margin(models: dict[str, ModelProfile]) -> None:
    """Step 1: nothing to fit, so the engine splits by free memory (not fit's back-to-front fill)."""
    model = models["llama"]
    cost = CostModel(model, gpus([3000, 1000]), RULES.traits.context(ctx=256, n_ubatch=32))
    emu = FitEmulator(cost)
    assert emu.solve() is None
    p = fit_style(cost)
    assert p == decoded(cost, RULES, [])
    assert p.layer_home.count("CUDA0") > p.layer_home.count("CUDA1") > 0
