"""The CPU's prompt matmul rates against llama-bench runs with op offload off: the cpu-compute
runs of `omni-place calibrate --run` on an H200 host, 16 threads (benchmarks/results/calibrate_31,
logs.tar.xz). One dense rate (``cpu_tflops_per_core``) prices the Q4_K layers of a dense model
on the CPU, and routed experts run at ``cpu_moe_compute_eff`` of it (MUL_MAT_ID gives each expert
a few tokens of the ubatch); before, one rate for both priced the dense run 62 % slow."""
from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest

from omni_place.bench.calibrate import Point, fit_params, predict_point
from omni_place.bench.llamabench import import_files
from omni_place.cost import SpeedParams
from omni_place.devices import resolve_cluster
from omni_place.model import load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.speed_models import write_speed_model  # noqa: E402

RES = ROOT / "benchmarks" / "results" / "calibrate_31"


def _cpu_compute(model: str, run: str, tmp_path: Path) -> list[Point]:
    """The prompt point of ``model``'s calibrate --run log ``run`` (its plain llama-bench output and
    -v log), on the machine's rig file as that run had it."""
    with tarfile.open(RES / "logs.tar.xz") as tar:
        member = tar.getmember(f"res/cal/{model}/{run}.log")
        log = tmp_path / f"{model}.{run}.log"
        fh = tar.extractfile(member)
        assert fh is not None
        log.write_bytes(fh.read())
    header = load_model(write_speed_model(model, tmp_path, header_only=True))
    imported = import_files([log], header, resolve_cluster(str(RES / "rig_a.toml")))
    assert not imported.skipped and [p.kind for p in imported.points] == ["pp"]
    assert imported.points[0].context is not None and not imported.points[0].context.op_offload
    return imported.points


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Point]]:
    tmp = tmp_path_factory.mktemp("cpu_prompt")
    return {"dense": _cpu_compute("dense11", "3.cpu-compute", tmp),
            "experts": _cpu_compute("moe15", "4.cpu-compute", tmp)}


def test_dense_layers_and_experts_are_priced_at_their_rates(runs: dict[str, list[Point]]) -> None:
    """dense11 -ngl 16 -nopo 1 (183.6 tok/s) and moe15 with every expert in RAM -nopo 1 (462.8):
    both within 10 % with the defaults; one rate for both (the old 0.05 per core) is 2.6x off
    on one of them whichever it is fitted to."""
    for kind, points in runs.items():
        for pt in points:
            assert predict_point(pt, SpeedParams()) == pytest.approx(pt.measured, rel=0.10), kind
    one_rate = SpeedParams(cpu_moe_compute_eff=1.0, cpu_tflops_per_core=0.05)
    dense, = runs["dense"]
    assert predict_point(dense, one_rate) < 0.45 * dense.measured


def test_either_run_calibrates_the_same_cpu_rate(runs: dict[str, list[Point]]) -> None:
    """Fitted alone (no prior), the dense run and the experts' run give the same dense rate
    within 10 %: the experts' share of it is a property of MUL_MAT_ID, not of the machine."""
    rates = {kind: fit_params(points, names=("cpu_tflops_per_core",), prior_weight=0.0).cpu_tflops_per_core
             for kind, points in runs.items()}
    assert rates["dense"] == pytest.approx(rates["experts"], rel=0.10)
    assert 0.08 < rates["dense"] < 0.2
