"""The speed model's accuracy bounds, uncalibrated and after `calibrate --run`, against a matrix no fit has
seen: benchmarks/results/calibrate_47, real llama-bench runs of dense11, moe15 and mla16 on an H100 VM held
down to 3 GiB free (27 configurations, three rounds, every test steady), each priced as it ran (its
placement read from its -v log)."""
from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "calibrate_47"
MODELS = ("dense11", "moe15", "mla16")
# the one dense placement (-ngl 10) spelled three ways, whose prompt read 670-899 tok/s by spelling: the
# VM's pageable copy rate moved from run to run (calibrate_47.md)
NGL10 = {"fit", "ngl", "omni_place_tg"}


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The speed models' headers under ``hdr/`` and the runs' logs under ``res/``."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.speed_models import write_speed_model

    tmp = tmp_path_factory.mktemp("calibrate_47")
    for m in MODELS:
        write_speed_model(m, tmp / "hdr", header_only=True)
    with tarfile.open(RESULTS / "logs.tar.xz") as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def _report(unpacked: Path, name: str, *extra: str, folder: Path = RESULTS) -> list[dict[str, Any]]:
    """``speed_truth report --steady`` of ``folder``'s records on its rig files, the rows as JSON."""
    from benchmarks.speed_truth import main

    out = unpacked / f"{name}.json"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", str(folder), "--headers", str(unpacked / "hdr"), "--rigs", str(folder),
                     "--steady", "--json", str(out), *extra]) == 0
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    return rows


def _calibrate(unpacked: Path, model: str) -> Path:
    """`omni-place calibrate` of the model's own `calibrate --run` logs, as JSON in a file."""
    from omni_place.cli import main

    logs = sorted(str(p) for p in (unpacked / "res" / "cal" / model).glob("*.log"))
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = main(["calibrate", *logs, "--model", str(unpacked / "hdr" / f"{model}.hdr.gguf"),
                   "--cluster", str(RESULTS / "rig_c.toml"), "--no-save", "--format", "json"])
    assert rc == 0
    path = unpacked / f"calibrated_{model}.json"
    path.write_text(text.getvalue())
    return path


def test_uncalibrated_defaults_meet_the_issue_bounds_on_every_configuration(unpacked: Path) -> None:
    """Decode within 25 % and prompt within 35 % on all 27 configurations of the three models (measured:
    -13..+3 % and -21..+9 %, medians 4.3 and 14.8 %); decode ranks within a model >= 0.9."""
    from benchmarks.speed_report import rank_correlation

    rows = _report(unpacked, "uncalibrated")
    assert len(rows) == 27 and {r["model"] for r in rows} == set(MODELS)
    tg, pp = [abs(r["tg_err"]) for r in rows], [abs(r["pp_err"]) for r in rows]
    assert max(tg) < 0.25 and max(pp) < 0.35, (max(tg), max(pp))
    assert statistics.median(tg) < 0.08 and statistics.median(pp) < 0.2
    for m in MODELS:
        rho, n = rank_correlation([r for r in rows if r["model"] == m], "tg")
        assert n >= 3 and rho >= 0.9, (m, rho, n)


def test_the_copy_probes_later_reading_prices_the_streamed_prompts(unpacked: Path, tmp_path: Path) -> None:
    """The machine's pageable copy probe read 7.14 GB/s before the runs and 8.33 after the third round;
    at the later reading every prompt is within 15 % but the -ngl 10 spellings (their own spread)."""
    rig = tmp_path / "rig_c.toml"
    rig.write_text((RESULTS / "rig_c.toml").read_text().replace("stream_gbs = 7.14", "stream_gbs = 8.33"))
    assert "stream_gbs = 8.33" in rig.read_text()
    (tmp_path / "records_c.jsonl").write_bytes((RESULTS / "records_c.jsonl").read_bytes())
    (tmp_path / "logs.tar.xz").write_bytes((RESULTS / "logs.tar.xz").read_bytes())
    rows = _report(unpacked, "later", folder=tmp_path)
    assert all(abs(r["pp_err"]) < 0.15 for r in rows if not (r["model"] == "dense11" and r["config"] in NGL10))
    assert statistics.median(abs(r["pp_err"]) for r in rows) < 0.08


@pytest.mark.parametrize("model", MODELS)
def test_calibrate_run_meets_the_calibrated_bounds(unpacked: Path, model: str) -> None:
    """Each model's own `calibrate --run` runs (five llama-bench invocations, ~1 minute), fitted as a user's
    plain llama-bench output, price the matrix's decodes within 10 % (measured max: moe15 -ngl 1, -10.0 %)
    and its prompts within 15 % but dense11's -ngl 10 spellings; the fit is the committed one."""
    path = _calibrate(unpacked, model)
    fitted = json.loads(path.read_text())["engines"]["llama.cpp"]
    committed = json.loads((RESULTS / f"calibrated_{model}.json").read_text())["engines"]["llama.cpp"]
    assert fitted["fitted"] == committed["fitted"]
    assert fitted["params"] == pytest.approx(committed["params"], rel=1e-3)
    rows = _report(unpacked, f"calibrated_{model}", "--calibration", str(path), "--only-model", model)
    assert rows and {r["model"] for r in rows} == {model}
    assert all(abs(r["tg_err"]) < 0.105 for r in rows), [(r["config"], r["tg_err"]) for r in rows]
    assert all(abs(r["pp_err"]) < 0.15 for r in rows if not (model == "dense11" and r["config"] in NGL10))
