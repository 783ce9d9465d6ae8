"""The boundary fuzzer (tests/boundary_fuzz.py) under hypothesis, a bounded number of cases per
target: hostile cluster TOML, plan JSON, bench records, API calls and engine command lines end in a result or in one
OmniPlaceError line with the documented exit code, never in another exception, within 5 s.
benchmarks/fuzz_boundaries.py runs the same cases by the hundred thousand."""
from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import boundary_fuzz as bf

SCALE = float(os.environ.get("OMNI_PLACE_FUZZ_SCALE", "1"))
EXAMPLES = {"cluster": 250, "plan": 200, "records": 200, "api": 250, "flags": 400}
CASE_LIMIT_S = 5.0


def fuzz(target: str):  # noqa: ANN201 - a hypothesis settings decorator
    return settings(max_examples=max(1, int(EXAMPLES[target] * SCALE)), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> bf.Seeds:
    return bf.make_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def casedir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("case")


class _Hang(BaseException):
    pass


def _check(seeds: bf.Seeds, casedir: Path, target: str, rnd: random.Random) -> str:
    case = bf.make_case(seeds, target, 0, 0, rnd=rnd)

    def alarm(signum: int, frame: object) -> None:
        raise _Hang

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_LIMIT_S)
    t0 = time.perf_counter()
    try:
        outcome, detail = bf.run_case(seeds, case, casedir)
    except _Hang:
        pytest.fail(f"{target} case {case.ops} ran over {CASE_LIMIT_S} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        for p in casedir.iterdir():
            p.unlink()
    assert outcome not in ("crash", "bad_error"), f"{target} {case.ops} {case.call}: {detail}"
    assert time.perf_counter() - t0 < CASE_LIMIT_S
    return outcome


@fuzz("cluster")
@given(rnd=st.randoms(use_true_random=False))
def test_cluster_files(seeds: bf.Seeds, casedir: Path, rnd: random.Random) -> None:
    _check(seeds, casedir, "cluster", rnd)


@fuzz("plan")
@given(rnd=st.randoms(use_true_random=False))
def test_plan_json(seeds: bf.Seeds, casedir: Path, rnd: random.Random) -> None:
    _check(seeds, casedir, "plan", rnd)


@fuzz("records")
@given(rnd=st.randoms(use_true_random=False))
def test_bench_records(seeds: bf.Seeds, casedir: Path, rnd: random.Random) -> None:
    _check(seeds, casedir, "records", rnd)


@fuzz("api")
@given(rnd=st.randoms(use_true_random=False))
def test_api_calls(seeds: bf.Seeds, casedir: Path, rnd: random.Random) -> None:
    _check(seeds, casedir, "api", rnd)


@fuzz("flags")
@given(rnd=st.randoms(use_true_random=False))
def test_engine_flags(seeds: bf.Seeds, casedir: Path, rnd: random.Random) -> None:
    _check(seeds, casedir, "flags", rnd)


@pytest.mark.parametrize("target", bf.TARGETS)
def test_seeds_themselves_are_accepted(seeds: bf.Seeds, casedir: Path, target: str) -> None:
    """The unmutated inputs pass, so mutations (not broken seeds) make the errors."""
    case = bf.make_case(seeds, target, 0, 0)
    if target == "cluster":
        case.files = {"rig.toml": seeds.clusters[-1].encode()}
    elif target == "plan":
        case.files = {"plan.json": bf.json.dumps(seeds.plans[0]).encode()}
    elif target == "records":
        case.files = {"records.jsonl": "".join(bf.json.dumps(r) + "\n" for r in seeds.records).encode()}
    elif target == "flags":
        case.call = ("evaluate", {"argv": bf.FLAG_SEEDS[0][1], "engine": "llama.cpp", "tool": "server",
                                  "cluster": "RIG"})
        assert bf.run_case(seeds, case, casedir) == ("ok", "")
        case.call = ("check", {**case.call[1], "cluster": "seed"})
    else:
        case.call = ("plan_split", {"model": "MODEL", "cluster": "RIG"})
    assert bf.run_case(seeds, case, casedir) == ("ok", "")
    for p in casedir.iterdir():
        p.unlink()


def test_cases_are_reproducible(seeds: bf.Seeds) -> None:
    for target in bf.TARGETS:
        a, b = bf.make_case(seeds, target, 3, 41), bf.make_case(seeds, target, 3, 41)
        assert (a.ops, a.files, repr(a.call)) == (b.ops, b.files, repr(b.call))
