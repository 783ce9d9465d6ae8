"""A GPU prompt's fixed costs: every layer's ubatch pays its kernels' shortest runs whatever its
width (the ``[[speed]]`` row's ``prompt_layer_us``) and every llama_decode call its host work
(SpeedParams.prompt_call_s), fitted with Hopper's MMQ share on dense Llama layers 1024-8192 wide
on an H100 and an H200 (benchmarks/gpu_shapes.py, benchmarks/results/gpu_shapes.md)."""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import pytest

from omni_place.catalog import speed_share
from omni_place.placement import SpeedParams

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_shapes  # noqa: E402

SWEEP = gpu_shapes.FOLDER


def _records(pattern: str) -> list[dict]:
    return [r for r in gpu_shapes.load(sorted(SWEEP.glob(pattern))) if r["n_prompt"] and not r.get("env")]


@pytest.fixture(scope="module")
def headers():
    with tempfile.TemporaryDirectory() as tmp:
        yield gpu_shapes.write_models(Path(tmp), header_only=True)


def _errors(records: list[dict], headers: dict, share: float, layer_us: float, call_s: float) -> list[float]:
    jobs = gpu_shapes._jobs(records, headers, SWEEP)
    seconds = gpu_shapes.prompt_seconds(jobs, share, layer_us, call_s)
    return [1.0 / (t * r["avg_ts"]) - 1 for r, t in zip(records, seconds)]  # predicted / measured - 1


def test_shipped_values_are_the_committed_fit() -> None:
    """Hopper's row is the fit of gpu_shapes' committed records with the call cost held at
    ``gpu_shapes.CALL_S`` (``gpu_shapes fit``, benchmarks/results/gpu_shapes/fit.json), rounded."""
    fit = json.loads((SWEEP / "fit.json").read_text())["fits"]["shipped"]
    assert fit["prompt_call_ms"] == gpu_shapes.CALL_S * 1e3
    row = speed_share("9.0")
    assert row.mmq_share == pytest.approx(fit["mmq_share"], abs=0.005)
    assert row.prompt_layer_us == pytest.approx(fit["prompt_layer_us"], abs=1.0)
    assert SpeedParams().prompt_call_s * 1e3 == pytest.approx(fit["prompt_call_ms"], abs=0.05)
    assert speed_share(None).prompt_layer_us == row.prompt_layer_us  # GPUs of no row: Hopper's


def test_narrow_layers_priced_with_their_fixed_costs(headers: dict) -> None:
    """The H100's sweep, fitted on the H200's alone (fit.json) and priced at the shipped values:
    within the fit's spread, where without the fixed costs a 1024-wide model's short prompt is priced
    more than twice as fast as it ran. The test fails if either term stops being priced."""
    held = [r for r in _records("h100s45_depth_round1.jsonl") if r["shape"] in ("gpu_d1024", "gpu_d2048", "gpu_d8192")]
    row = speed_share("9.0")
    errors = _errors(held, headers, row.mmq_share, row.prompt_layer_us, SpeedParams().prompt_call_s)
    assert statistics.median(map(abs, errors)) < 0.08 and max(map(abs, errors)) < 0.2, errors
    narrow = [r for r in held if r["shape"] == "gpu_d1024" and r["n_depth"] <= 2048]
    without = _errors(narrow, headers, row.mmq_share, 0.0, 0.0)
    assert min(without) > 1.0, without
