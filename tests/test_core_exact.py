"""The C placement core against independent oracles.

- small random instances (L <= 6, D <= 3, K <= 3, random orders incl. subsets and shared
  prefixes): optimum == brute force, and the returned plan re-priced from the definition;
- medium instances (L 12-20, D 3, K 3): optimum == a MILP per order (scipy / HiGHS);
- infeasible, invalid and over-limit inputs; determinism and thread safety; the GGUF skip helpers.

Hypothesis settings stay in this module: HYPOTHESIS_PROFILE=ci (200 examples), dev (default, 50),
debug (10, verbose).
"""
from __future__ import annotations

import itertools
import math
import os
import struct
import threading
import time as _time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Verbosity, given, settings
from hypothesis import strategies as st

from omni_place import _core
from omni_place.errors import GGUFFormatError, NativeCoreError

from .reference_solvers import CoreProblem, brute_force, milp_fixed_order, placement_cost

_PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"max_examples": 200},
    "dev": {"max_examples": 50},
    "debug": {"max_examples": 10, "verbosity": Verbosity.verbose},
}
PROFILE = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    **_PROFILES.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), _PROFILES["dev"]),
)

REL = 1e-9


def close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def check_plan(pb: CoreProblem, res: _core.CoreResult) -> float:
    """The returned plan is valid, its memory is as reported and its cost is the reported time."""
    t, mem, err = placement_cost(pb, res.order, res.n_cpu, res.home, res.option, res.out_device)
    assert err is None, err
    assert close(t, res.time), (t, res.time)
    assert mem.tolist() == res.mem_used.tolist()
    assert all(res.mem_used[d] <= pb.cap[d] for d in pb.seq(res.order))
    return t


# ---------------------------------------------------------------------------------------------
# Random instances
# ---------------------------------------------------------------------------------------------

# Times: quarter steps (many exact ties) or arbitrary floats.
times = st.one_of(st.integers(0, 8).map(lambda x: x / 4),
                  st.floats(0.0, 2.0, allow_nan=False, allow_subnormal=False))


@st.composite
def problems(draw: st.DrawFn, max_l: int = 6, max_d: int = 3, max_k: int = 3,
             negative: bool = False, huge: bool = False) -> CoreProblem:
    L = draw(st.integers(1, max_l))
    D = draw(st.integers(0, max_d))
    K = draw(st.integers(1, max_k))
    tv = st.floats(-1.0, 1.0, allow_nan=False, allow_subnormal=False) if negative else times

    def farr(*shape: int, elems: st.SearchStrategy[float] = tv) -> np.ndarray:
        n = int(np.prod(shape))
        return np.array(draw(st.lists(elems, min_size=n, max_size=n)), dtype=np.float64).reshape(shape)

    def iarr(lo: int, hi: int, *shape: int) -> np.ndarray:
        n = int(np.prod(shape))
        return np.array(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)),
                        dtype=np.int64).reshape(shape)

    rows = []
    for _ in range(draw(st.integers(1, 5))):
        perm = draw(st.permutations(range(D))) if D else []
        m = draw(st.integers(0, D))
        rows.append(list(perm[:m]) + [-1] * (D - m))
    streaming = draw(st.booleans())
    big = 1e6 if huge else 0.0  # "forbid by cost", as the planner does for CPU layers
    allow = None
    if draw(st.booleans()):
        allow = (iarr(0, 5, D, L, K) > 0).astype(np.uint8)
    return CoreProblem(
        orders=np.array(rows, dtype=np.int32).reshape(len(rows), D),
        time=farr(D, L, K) + big * iarr(0, 1, D, L, K), time_cpu=farr(L) * 2 + big * iarr(0, 1, L),
        mem_dense=iarr(0, 4, D, L),
        mem_exp=iarr(0, 5, D, L, K), trans=farr(D + 1, D + 1) / 4, out_time=farr(D),
        out_mem=iarr(0, 3, D), fixed_mem=iarr(0, 3, D), first_mem=iarr(0, 2, D),
        cap=iarr(0, 22, D), out_time_cpu=float(draw(tv)), allow=allow,
        stream=farr(L, K) if streaming else None, stream_cpu=farr(L) if streaming else None,
        stream_rate=farr(D) / 4 if streaming else None,
    )


def assert_matches_brute_force(pb: CoreProblem) -> None:
    res = _core.solve(**pb.kwargs())
    ref = brute_force(pb)
    if ref is None:
        assert res.status == _core.INFEASIBLE
        return
    assert res.ok, res
    assert close(res.time, ref.time), (res.time, ref.time, res, ref)
    check_plan(pb, res)


@PROFILE
@given(problems())
def test_small_equals_brute_force(pb: CoreProblem) -> None:
    assert_matches_brute_force(pb)


@PROFILE
@given(problems(negative=True))
def test_small_negative_costs_equal_brute_force(pb: CoreProblem) -> None:
    assert_matches_brute_force(pb)


@PROFILE
@given(problems(huge=True))
def test_small_with_huge_costs_equal_brute_force(pb: CoreProblem) -> None:
    assert_matches_brute_force(pb)


@PROFILE
@given(problems(max_l=4, max_d=3, max_k=2))
def test_order_of_rows_does_not_change_the_optimum(pb: CoreProblem) -> None:
    a = _core.solve(**pb.kwargs())
    flipped = pb.kwargs()
    flipped["orders"] = pb.orders[::-1].copy()
    b = _core.solve(**flipped)
    assert a.status == b.status
    if a.ok:
        assert close(a.time, b.time)
        check_plan(pb, a)


# ---------------------------------------------------------------------------------------------
# Medium instances against the MILP
# ---------------------------------------------------------------------------------------------


def medium_problem(seed: int, L: int, D: int = 3, K: int = 3, structured: bool = False) -> CoreProblem:
    """Random (or bandwidth-structured: time ~ bytes / speed, experts on CPU are slower) instance
    whose memory constraints bind."""
    rng = np.random.default_rng(seed)
    perms = [list(p) for r in range(1, D + 1) for p in itertools.permutations(range(D), r)]
    rows = [perms[i] + [-1] * (D - len(perms[i]))
            for i in rng.choice(len(perms), size=4, replace=False)] + [[-1] * D]
    if structured:
        speed = rng.uniform(1.0, 3.0, D)
        dense = rng.integers(2, 5, L)
        exp = np.where(rng.uniform(size=L) < 0.8, rng.integers(8, 14, L), 0)
        frac = np.linspace(1.0, 0.0, K)
        mem_dense = np.tile(dense, (D, 1)).astype(np.int64)
        mem_exp = np.zeros((D, L, K), np.int64)
        time = np.zeros((D, L, K))
        for d in range(D):
            for o in range(K):
                mem_exp[d, :, o] = np.ceil(frac[o] * exp)
                time[d, :, o] = (dense + frac[o] * exp * 0.1) / speed[d] + (1 - frac[o]) * exp * 0.1 / 0.3
        time_cpu = (dense + exp * 0.1) / 0.3
        cap = (rng.uniform(0.2, 0.5, D) * (dense.sum() + exp.sum())).astype(np.int64)
    else:
        mem_dense = rng.integers(1, 4, (D, L))
        mem_exp = rng.integers(0, 6, (D, L, K))
        time = rng.uniform(0.1, 1.0, (D, L, K))
        time_cpu = rng.uniform(0.5, 3.0, L)
        cap = rng.integers(L, 3 * L, D)
    return CoreProblem(
        orders=np.array(rows, np.int32), time=time, time_cpu=time_cpu, mem_dense=mem_dense,
        mem_exp=mem_exp, trans=rng.uniform(0.0, 0.3, (D + 1, D + 1)), out_time=rng.uniform(0, 1, D),
        out_mem=rng.integers(0, 4, D), fixed_mem=rng.integers(0, 4, D), first_mem=rng.integers(0, 3, D),
        cap=cap, out_time_cpu=float(rng.uniform(0, 2)),
        allow=(rng.uniform(size=(D, L, K)) < 0.9).astype(np.uint8),
        stream=rng.uniform(0, 1, (L, K)), stream_cpu=rng.uniform(0, 1, L),
        stream_rate=rng.uniform(0, 0.2, D),
    )


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_medium_equals_milp(seed: int, structured: bool) -> None:
    pb = medium_problem(seed, L=12 + 2 * seed, structured=structured)
    res = _core.solve(**pb.kwargs())
    assert res.ok
    check_plan(pb, res)
    per_order = []
    for o in range(len(pb.orders)):
        one = pb.kwargs()
        one["orders"] = pb.orders[o:o + 1]
        r1 = _core.solve(**one)
        m = milp_fixed_order(pb, o)
        if m is None:
            assert r1.status == _core.INFEASIBLE
            continue
        t, _, err = placement_cost(pb, o, m.n_cpu, m.home, m.option, m.out_device)
        assert err is None, err
        assert r1.ok
        assert r1.time <= t * (1 + 1e-9) + 1e-12        # never worse than the MILP's plan
        assert close(r1.time, m.time, rel=1e-6), (o, r1.time, m.time)
        per_order.append(r1.time)
    assert close(res.time, min(per_order))


# ---------------------------------------------------------------------------------------------
# Status codes
# ---------------------------------------------------------------------------------------------


def tiny(**over: Any) -> dict[str, Any]:
    """A valid 3-layer, 2-device, 2-option problem as keyword arguments."""
    L, D, K = 3, 2, 2
    kw: dict[str, Any] = dict(
        orders=np.array([[0, 1], [1, -1]], np.int32), time=np.full((D, L, K), 0.5),
        time_cpu=np.full(L, 2.0), mem_dense=np.ones((D, L), np.int64),
        mem_exp=np.ones((D, L, K), np.int64), trans=np.full((D + 1, D + 1), 0.1),
        out_time=np.full(D, 0.2), out_mem=np.ones(D, np.int64), fixed_mem=np.ones(D, np.int64),
        first_mem=np.zeros(D, np.int64), cap=np.full(D, 10, np.int64), out_time_cpu=1.0,
    )
    kw.update(over)
    return kw


def test_tiny_ok() -> None:
    res = _core.solve(**tiny())
    assert res.ok and res.status_name == "OK"
    assert res.as_dict()["status"] == "OK"


def test_infeasible_is_a_status() -> None:
    res = _core.solve(**tiny(fixed_mem=np.array([11, 11], np.int64)))
    assert res.status == _core.INFEASIBLE and not res.ok
    assert math.isinf(res.time) and res.order == -1
    assert (res.home == -1).all()


def test_first_device_memory_makes_infeasible() -> None:
    res = _core.solve(**tiny(orders=np.array([[0, -1]], np.int32), first_mem=np.array([10, 0], np.int64)))
    assert res.status == _core.INFEASIBLE


def test_cpu_only_row_is_always_feasible() -> None:
    res = _core.solve(**tiny(fixed_mem=np.array([11, 11], np.int64),
                             orders=np.array([[0, 1], [-1, -1]], np.int32)))
    assert res.ok and res.order == 1 and res.n_cpu == 3 and res.out_device == -1
    assert close(res.time, 3 * 2.0 + 1.0)


def test_no_devices() -> None:
    res = _core.solve(orders=np.zeros((1, 0), np.int32), time=np.zeros((0, 2, 1)), time_cpu=[1.0, 2.0],
                      mem_dense=np.zeros((0, 2), np.int64), mem_exp=np.zeros((0, 2, 1), np.int64),
                      trans=np.zeros((1, 1)), out_time=np.zeros(0), out_mem=np.zeros(0, np.int64),
                      fixed_mem=np.zeros(0, np.int64), first_mem=np.zeros(0, np.int64),
                      cap=np.zeros(0, np.int64), out_time_cpu=0.5)
    assert res.ok and res.n_cpu == 2 and close(res.time, 3.5) and res.mem_used.shape == (0,)


def test_output_alone_on_last_device() -> None:
    # no layer fits on a device, the output does (the engine's -ngl 1): only on the last device
    kw = tiny(mem_dense=np.full((2, 3), 20, np.int64), out_time_cpu=5.0,
              out_time=np.array([0.1, 0.3]), orders=np.array([[0, 1]], np.int32))
    res = _core.solve(**kw)
    assert res.ok and res.n_cpu == 3 and res.out_device == 1
    assert close(res.time, 3 * 2.0 + 0.1 + 0.3)  # CPU layers + crossing CPU->1 + head on 1
    assert res.mem_used.tolist() == [1, 2]


@pytest.mark.parametrize("over, needle", [
    ({"time": np.full((2, 3, 2), np.nan)}, "time"),
    ({"trans": np.array([[0.1, np.inf, 0], [0, 0, 0], [0, 0, 0]])}, "trans"),
    ({"time_cpu": np.array([1.0, -np.inf, 1.0])}, "time_cpu"),
    ({"out_time_cpu": float("nan")}, "out_time_cpu"),
    ({"mem_dense": -np.ones((2, 3), np.int64)}, "mem_dense"),
    ({"mem_exp": np.full((2, 3, 2), 2**61, np.int64)}, "mem_exp"),
    ({"cap": np.array([-1, 5], np.int64)}, "cap"),
    ({"time": np.zeros((2, 4, 2))}, "shape"),
    ({"trans": np.zeros((2, 2))}, "shape"),
    ({"mem_exp": np.zeros((2, 3, 2))}, "dtype"),
    ({"orders": np.array([[0, 0]], np.int32)}, "orders"),
    ({"orders": np.array([[2, -1]], np.int32)}, "orders"),
    ({"orders": np.array([[-1, 0]], np.int32)}, "orders"),
    ({"orders": np.zeros((0, 2), np.int32)}, "orders"),
    ({"allow": np.ones((2, 3, 3), np.uint8)}, "shape"),
    ({"stream": np.zeros((3, 2)), "stream_rate": np.array([np.nan, 0.0])}, "stream_rate"),
    ({"time": np.zeros((2, 3, 9)), "mem_exp": np.zeros((2, 3, 9), np.int64)}, "K=9"),
    ({"max_states": -1}, "max_states"),
])
def test_invalid_input_raises(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(NativeCoreError) as err:
        _core.solve(**tiny(**over))
    assert needle in str(err.value)


def test_state_limit_gives_enomem() -> None:
    pb = medium_problem(1, L=20, structured=True)
    kw = pb.kwargs()
    kw["max_states"] = 50
    with pytest.raises(NativeCoreError, match="state limit") as err:
        _core.solve(**kw)
    assert "coarser memory unit" in err.value.hint


# ---------------------------------------------------------------------------------------------
# Determinism and threads
# ---------------------------------------------------------------------------------------------


def fingerprint(res: _core.CoreResult) -> tuple[object, ...]:
    return (res.status, res.time, res.order, res.n_cpu, res.out_device, res.home.tobytes(),
            res.option.tobytes(), res.mem_used.tobytes())


def test_deterministic() -> None:
    pb = medium_problem(3, L=18, structured=True)
    assert fingerprint(_core.solve(**pb.kwargs())) == fingerprint(_core.solve(**pb.kwargs()))


def test_concurrent_solves_give_identical_results() -> None:
    pbs = [medium_problem(s, L=16 + s, structured=bool(s % 2)) for s in range(8)]
    serial = [fingerprint(_core.solve(**pb.kwargs())) for pb in pbs]
    jobs = [pbs[i % len(pbs)] for i in range(64)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda pb: fingerprint(_core.solve(**pb.kwargs())), jobs))
    assert got == [serial[i % len(pbs)] for i in range(64)]


def big_problem() -> CoreProblem:
    """Bandwidth-structured 96-layer, 8-device MoE instance at fine memory units (tens of ms)."""
    rng = np.random.default_rng(7)
    L, D, K = 96, 8, 4
    speed = rng.uniform(1.0, 2.0, D)
    dense = rng.integers(150, 200, L)
    exp = rng.integers(4000, 4400, L)
    frac = np.array([1.0, 2 / 3, 1 / 3, 0.0])
    time = np.zeros((D, L, K))
    mem_exp = np.zeros((D, L, K), np.int64)
    for d in range(D):
        for o in range(K):
            mem_exp[d, :, o] = np.ceil(frac[o] * exp)
            time[d, :, o] = (dense + 0.03 * frac[o] * exp) / speed[d] * 1e-4 + (1 - frac[o]) * 0.03 * exp * 1e-3
    orders = np.array([rng.permutation(D) for _ in range(4)], np.int32)
    return CoreProblem(orders=orders, time=time, time_cpu=(dense + 0.03 * exp) * 1e-3,
                       mem_dense=np.tile(dense, (D, 1)).astype(np.int64), mem_exp=mem_exp,
                       trans=np.full((D + 1, D + 1), 3e-5), out_time=np.full(D, 5e-4),
                       out_mem=np.full(D, 1300, np.int64), fixed_mem=np.full(D, 1800, np.int64),
                       first_mem=np.full(D, 600, np.int64),
                       cap=rng.choice([24576, 32768, 49152], D).astype(np.int64), out_time_cpu=5e-3)


def test_gil_is_released() -> None:
    """The main thread keeps running while another thread is inside a long solve."""
    kw = big_problem().kwargs()
    t0 = _time.perf_counter()
    ref = fingerprint(_core.solve(**kw))
    one = _time.perf_counter() - t0
    if one < 0.02 or (os.cpu_count() or 1) < 2:
        pytest.skip(f"a solve takes {one * 1e3:.1f} ms here: too short to tell GIL release apart")
    runs = max(2, int(0.5 / one))

    def count_while(thread: threading.Thread) -> float:
        n, t = 0, _time.perf_counter()
        thread.start()
        while thread.is_alive():
            n += 1
        return n / (_time.perf_counter() - t)

    idle_rate = count_while(threading.Thread(target=_time.sleep, args=(0.2,)))
    out: list[tuple[object, ...]] = []
    busy_rate = count_while(threading.Thread(
        target=lambda: out.extend(fingerprint(_core.solve(**kw)) for _ in range(runs))))
    assert out == [ref] * runs
    # Holding the GIL through each solve would leave the main thread only the 5 ms switch slices
    # between solves (well under 30 % of its idle rate for solves of 20 ms and more).
    assert busy_rate > 0.3 * idle_rate, (busy_rate, idle_rate, one)


# ---------------------------------------------------------------------------------------------
# GGUF skip helpers
# ---------------------------------------------------------------------------------------------


def gguf_strings(*items: bytes) -> bytes:
    return b"".join(struct.pack("<Q", len(s)) + s for s in items)


def test_skip_strings_valid() -> None:
    buf = b"HEAD" + gguf_strings(b"a", b"", b"hello") + b"TAIL"
    assert _core.skip_strings(buf, 4, 3) == len(buf) - 4
    assert _core.skip_strings(buf, 4, 0) == 4
    for view in (bytearray(buf), memoryview(buf), np.frombuffer(buf, np.uint8)):
        assert _core.skip_strings(view, 4, 3) == len(buf) - 4


def test_skip_strings_vocab_sized() -> None:
    vocab = [f"tok{i}".encode() for i in range(129_280)]
    buf = gguf_strings(*vocab)
    assert _core.skip_strings(buf, 0, len(vocab)) == len(buf)


def test_skip_strings_truncated_and_absurd() -> None:
    buf = gguf_strings(b"abc", b"de")
    with pytest.raises(GGUFFormatError, match=f"offset {len(buf)}"):
        _core.skip_strings(buf, 0, 3)                      # length field missing
    with pytest.raises(GGUFFormatError, match="offset 11"):
        _core.skip_strings(buf[:-1], 0, 2)                 # second string cut short
    absurd = struct.pack("<Q", 2**62) + b"xx"
    with pytest.raises(GGUFFormatError, match="length 4611686018427387904"):
        _core.skip_strings(absurd, 0, 1)
    with pytest.raises(GGUFFormatError):
        _core.skip_strings(buf, len(buf) + 1, 0)           # offset past the end
    with pytest.raises(GGUFFormatError):
        _core.skip_strings(b"", 0, 2**63)                  # huge count, nothing to read: no hang


@pytest.mark.parametrize("etype, size", sorted(_core.GGUF_TYPE_SIZES.items()))
def test_skip_array_scalars(etype: int, size: int) -> None:
    buf = bytes(3 + 5 * size)
    assert _core.skip_array(buf, 3, etype, 5) == len(buf)
    with pytest.raises(GGUFFormatError, match="run past the end"):
        _core.skip_array(buf, 4, etype, 5)
    with pytest.raises(GGUFFormatError):
        _core.skip_array(buf, 0, etype, 2**64 - 1)


def test_skip_array_strings_nested_unknown() -> None:
    buf = gguf_strings(b"x", b"yz")
    assert _core.skip_array(buf, 0, _core.GGUF_STRING, 2) == len(buf)
    with pytest.raises(GGUFFormatError, match="nested"):
        _core.skip_array(buf, 0, _core.GGUF_ARRAY, 1)
    with pytest.raises(GGUFFormatError, match="unknown element type 13"):
        _core.skip_array(buf, 0, 13, 1)
    with pytest.raises(GGUFFormatError):
        _core.skip_array(buf, -1, 0, 1)
