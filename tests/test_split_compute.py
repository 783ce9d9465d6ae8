"""benchmarks/split_compute.py rebuilds the engine's split layouts and matches every buffer.

What the scorer itself must get right, on a few committed H200 records of each split sweep: each
layer, the output head and the routed experts on the device the engine's log names, and every
compute buffer of the record (RPC servers that all print as ``RPC0[...]``, the host's
``CUDA_Host``) matched to the device the planner prices. The accuracy of those prices is the
table's business, not this test's.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from benchmarks.compute_fit import _profile
from benchmarks.split_compute import (
    DEFAULT_FILES,
    HOST,
    PLACEMENTS,
    Sweep,
    cluster_of,
    engine_buffers,
    main,
    placement_of,
    read_sweep,
    score_record,
)
from omni_place.model import ModelProfile
from omni_place.placement import CPU
from omni_place.units import MiB


def _sample(sweep: Sweep) -> list[dict[str, Any]]:
    """The first record of each placement, and the first whose devices do not all print a buffer."""
    picks = [next(r for r in sweep.records if r["placement"] == place) for place in PLACEMENTS]
    picks.append(next(r for r in sweep.records if len(r["compute"]) < len(sweep.devices) + 1))
    return picks


@pytest.fixture(scope="module")
def samples() -> list[tuple[Sweep, dict[str, Any], ModelProfile]]:
    cache: dict[str, ModelProfile] = {}
    with tempfile.TemporaryDirectory() as tmp:
        return [(sweep, rec, _profile(cache, Path(tmp), rec["arch"], rec["shape"]))
                for sweep in map(read_sweep, DEFAULT_FILES) for rec in _sample(sweep)]


def test_placement_puts_everything_where_the_engine_did(
        samples: list[tuple[Sweep, dict[str, Any], ModelProfile]]) -> None:
    for sweep, rec, model in samples:
        p = placement_of(rec, model, sweep.devices)
        homes = {str(il): home for il, home in enumerate((*p.layer_home, p.output))}
        assert homes == rec["layer_devices"]
        assert p.order == sweep.devices  # the -dev list, a device holding nothing included
        for il, lc in enumerate(model.layers):
            on_cpu = {kind for kind, where in p.expert_homes[il] if where == CPU}
            assert bool(on_cpu) == (rec["placement"] == "split_exps" and bool(lc.expert_tensors))


def test_every_engine_buffer_is_matched_to_its_device(
        samples: list[tuple[Sweep, dict[str, Any], ModelProfile]]) -> None:
    assert len({len(sweep.endpoints) for sweep, _, _ in samples}) == 2  # one and two RPC servers
    for sweep, rec, model in samples:
        buffers = engine_buffers(rec, sweep)
        assert len(buffers) == len(rec["compute"])
        # the engine's own per-device summary (MiB, truncated) names each device: the RPC servers'
        # endpoints must have been named as it names them
        printed = {line.split()[0]: int(line.split()[3]) for line in rec["fit_print"].splitlines()}
        for name, size in buffers.items():
            assert abs(printed["Host" if name == CPU else name] - size / MiB) < 1, (rec["case"], name)
        rows = score_record(rec, model, sweep, cluster_of(sweep))
        assert {r["device"] for r in rows} == set(buffers)
        assert all(r["predicted"] is not None for r in rows)
        assert {r["role"] for r in rows if r["device"] == CPU} == {HOST}


def test_cli_writes_both_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = DEFAULT_FILES[1].read_text().splitlines()
    small = tmp_path / "split3.jsonl"
    small.write_text("\n".join(lines[:4]) + "\n")  # meta + split, split_partial, split_exps of one model
    main([str(small), "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out.json").read_text())
    assert {r["role"] for r in report["records"]} == {"CUDA0", "RPC0", "RPC1", HOST}
    assert len(report["records"]) == 12
    assert "| split3.jsonl | RPC1 | split_exps | 1 |" in (tmp_path / "out.md").read_text()
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "compute_sweep_split_26.jsonl" in capsys.readouterr().out


def test_servers_listed_in_two_orders_are_refused(tmp_path: Path) -> None:
    meta, first, *_ = DEFAULT_FILES[1].read_text().splitlines()
    rec = json.loads(first)
    rec["compute"] = dict(reversed(list(rec["compute"].items())))  # the servers' buffers the other way round
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([meta, first, json.dumps(rec)]) + "\n")
    with pytest.raises(SystemExit, match="not one fixed list"):
        read_sweep(bad)
