"""plan_split, the reader and the core called from several threads at once.

The core keeps no global or static mutable state and solves without the GIL (``with nogil`` in
_core.pyx; tests/test_core_exact.py checks GIL release and concurrent solves of one problem). Here:
whole plans, header reads and mixed ok / infeasible / invalid solves race each other on a shared
model, and every result must equal the one computed alone.
"""
from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from omni_place import _core
from omni_place.errors import NativeCoreError, NothingFitsError, OmniPlaceError
from omni_place.gguf import read_model_files
from omni_place.model import ModelProfile, load_model
from omni_place.plan import plan_split
from omni_place.reference_models import deepseek_v3, write_header_only

PRESETS = ["seed", "4090x2-ddr5", "3090-ddr4", "h100-x2", "4090-rpc-3090"]
THREADS = 8


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_header_only(deepseek_v3(), tmp_path_factory.mktemp("ds") / "ds.gguf", shards=3)[0]


@pytest.fixture(scope="module")
def deepseek(ds_path: Path) -> ModelProfile:
    return load_model(ds_path)


@pytest.fixture(autouse=True)
def fast_switching() -> Any:
    """Switch threads every 5 us instead of 5 ms so that Python code interleaves finely."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-6)
    yield
    sys.setswitchinterval(old)


def outcome(fn: Callable[[], Any]) -> str:
    """A comparable fingerprint: the plan's JSON, or the error class and message."""
    try:
        return fn()
    except OmniPlaceError as err:
        return f"{type(err).__name__}: {err.message}"


def race(jobs: list[Callable[[], Any]], repeat: int = 3) -> None:
    """Run each job alone, then all of them `repeat` times over THREADS threads started together;
    every concurrent result must equal the job's result alone."""
    alone = [outcome(j) for j in jobs]
    work = [i for _ in range(repeat) for i in range(len(jobs))]
    n_threads = min(THREADS, len(work))
    barrier = threading.Barrier(n_threads)

    def start(i: int) -> Any:
        return outcome(jobs[i])

    def init() -> None:
        barrier.wait(timeout=30)

    with ThreadPoolExecutor(max_workers=n_threads, initializer=init) as pool:
        got = list(pool.map(start, work))
    for i, g in zip(work, got):
        assert g == alone[i], f"job {i} differs under threads"


def test_plan_split_on_a_shared_model_from_threads(deepseek: ModelProfile) -> None:
    jobs = []
    for preset in PRESETS:
        for ctx, obj in ((4096, "tg"), (32768, "pp"), (16384, 0.5)):
            jobs.append(lambda p=preset, c=ctx, o=obj: plan_split(deepseek, p, ctx=c, objective=o).to_json())
    race(jobs, repeat=2)


def test_plans_and_nothing_fits_interleave(deepseek: ModelProfile) -> None:
    jobs = [
        lambda: plan_split(deepseek, "3090-ddr4", ctx=1 << 24).to_json(),  # far too much KV cache
        lambda: plan_split(deepseek, "seed", ctx=8192, kv_type="q8_0").to_json(),
        lambda: plan_split(deepseek, "h100-x2", ctx=4096, objective="bogus").to_json(),  # invalid
        lambda: plan_split(deepseek, "4090x2-ddr5", ctx=65536, depth=4096).to_json(),
    ]
    alone = [outcome(j) for j in jobs]
    assert alone[0].startswith(NothingFitsError.__name__), alone[0][:200]
    assert alone[2].startswith("InvalidArgumentError"), alone[2][:200]
    race(jobs, repeat=3)


def test_each_thread_reads_its_own_files(ds_path: Path) -> None:
    """plan_split from a path: every thread parses the three shards itself."""
    def read() -> str:
        files = read_model_files(ds_path)
        return repr([(t.name, t.shape, t.ggml_type, t.offset, t.shard) for t in files.tensors])

    race([read, lambda: plan_split(str(ds_path), "seed", ctx=8192).to_json()], repeat=4)


def _problem(seed: int, kind: str) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    L, D, K = 24, 3, 3
    kw: dict[str, Any] = dict(
        orders=np.array([[0, 1, 2], [2, 1, 0], [1, -1, -1]], np.int32),
        time=rng.uniform(0.1, 1.0, (D, L, K)), time_cpu=rng.uniform(1.0, 3.0, L),
        mem_dense=rng.integers(5, 20, (D, L)), mem_exp=rng.integers(0, 30, (D, L, K)),
        trans=rng.uniform(0, 0.1, (D + 1, D + 1)), out_time=rng.uniform(0.1, 0.5, D),
        out_mem=rng.integers(0, 10, D), fixed_mem=rng.integers(0, 10, D), first_mem=rng.integers(0, 10, D),
        cap=rng.integers(200, 600, D), out_time_cpu=2.0)
    if kind == "infeasible":
        kw["orders"] = np.array([[0, 1, 2]], np.int32)
        kw["cap"] = np.zeros(D, np.int64)
    elif kind == "invalid":
        kw["time"] = kw["time"].copy()
        kw["time"][1, 3, 2] = np.nan
    elif kind == "state limit":
        kw["max_states"] = 4
    return kw


def test_core_statuses_and_error_details_do_not_leak_between_threads() -> None:
    def job(seed: int, kind: str) -> Callable[[], str]:
        kw = _problem(seed, kind)

        def run() -> str:
            try:
                return repr(_core.solve(**kw).as_dict())
            except NativeCoreError as err:  # EINVAL / ENOMEM: the detail names this problem's fault
                return f"NativeCoreError: {err.message}"
        return run

    kinds = ["ok", "infeasible", "invalid", "state limit"]
    jobs = [job(s, kinds[s % 4]) for s in range(12)]
    alone = [j() for j in jobs]
    assert "INFEASIBLE" in alone[1] and "NativeCoreError" in alone[2] and "NativeCoreError" in alone[3]
    race(jobs, repeat=4)
