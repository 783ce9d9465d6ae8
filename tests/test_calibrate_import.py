"""`omni-place calibrate` on llama-bench's own output, and `calibrate --run`.

The fixtures in tests/data/llamabench are real H200 runs (benchmarks/results/engine_compare,
logs.tar.xz): plain ``-o jsonl`` (mainline) and ``-o json`` (ik_llama.cpp) output, and the same
runs' -v logs trimmed to the lines omni_place reads (see the README there). ``--run`` is driven
by a fake llama-bench that replays those recorded runs (a test double of the process boundary).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_place.bench.calibrate import _load_xz_header
from omni_place.bench.design import design_runs
from omni_place.bench.llamabench import MAX_OUTPUT_BYTES, import_files, import_text, scan_objects
from omni_place.bench.records import MAX_RECORDS_BYTES, MAX_TPS
from omni_place.cli import main
from omni_place.cost import CPU
from omni_place.devices import Cluster, Device, resolve_cluster
from omni_place.plan import evaluate

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "benchmarks" / "results" / "engine_compare"
DATA = ROOT / "tests" / "data" / "llamabench"
LOGS = sorted((DATA / "logs").glob("*.log"))


@pytest.fixture(scope="module")
def models() -> dict:
    return {m: _load_xz_header(RES / f"{m}.hdr.gguf.xz") for m in ("moe33", "dense15")}


def _setting(name: str, models: dict) -> tuple:
    model, rig = name.split(".")[:2]
    return models[model], resolve_cluster(str(RES / f"{rig}.toml"))


@pytest.mark.parametrize("log", LOGS, ids=[p.name for p in LOGS])
def test_record_fields_decode_to_the_logged_placement(log: Path, models: dict) -> None:
    """The placement decoded from a record's fields is the one the engine logged for that run,
    wherever the flags determine it."""
    model, cluster = _setting(log.name, models)
    text = log.read_text()
    from_log = import_text(text, model, cluster)
    from_flags = import_text(text.split("\n# stdout\n", 1)[1], model, cluster)
    assert from_log.read == 2 and len(from_log.points) == 2 and not from_log.skipped
    assert {p.kind for p in from_log.points} == {"pp", "tg"}
    if ".fit." in log.name and ".llama.cpp." in log.name:  # -fitt: the record says so; needs the log
        assert not from_flags.points
        assert list(from_flags.skipped) == ["placed by the engine's fitter (-fitt 1024): needs the run's -v log"]
        return
    # where everything is (the log does not repeat the -ot pattern that moved the output head)
    a, b = (dataclasses.replace(r.points[0].placement, extra_overrides=()) for r in (from_log, from_flags))
    if ".fit." in log.name:  # ik prints no trace of --fit: its record reads as the default split
        assert a != b
        return
    if log.name.startswith("moe33.rig_12_4.llama.cpp.") and ("ncmoe" in log.name or "ot-exps" in log.name):
        # no -ts: the engine splits by the free memory it saw, which no record holds; the
        # cluster's figures give the same split within one boundary layer
        counts = [[sum(h == d for h in p.layer_home) for d in ("CUDA0", "CUDA1", CPU)] for p in (a, b)]
        assert all(abs(x - y) <= 1 for x, y in zip(*counts)) and a.cpu_experts == b.cpu_experts
        return
    assert a == b


def test_plain_output_files(models: dict) -> None:
    model, cluster = _setting("moe33.rig_12_4", models)
    mainline = import_files([DATA / "moe33.rig_12_4.llama.cpp.jsonl"], model, cluster)
    assert (mainline.read, len(mainline.points)) == (8, 6)
    assert mainline.skipped == {"placed by the engine's fitter (-fitt 1024): needs the run's -v log": 2}
    assert {p.engine for p in mainline.points} == {"llama.cpp"}
    # the omni_place run: -dev CUDA1/CUDA0 -ngl 49 -ts 9/40 with experts of 38 layers in RAM
    omni = [p for p in mainline.points if p.placement.order == ("CUDA1", "CUDA0")]
    assert len(omni) == 2 and sum(h == "CUDA1" for h in omni[0].placement.layer_home) == 9
    assert {(p.kind, p.ctx, p.ubatch) for p in omni} == {("pp", 512, 512), ("tg", 64, 64)}
    model, cluster = _setting("moe33.rig_12", models)
    ik = import_files([DATA / "moe33.rig_12.ik_llama.cpp.json"], model, cluster)
    assert (ik.read, len(ik.points), {p.engine for p in ik.points}) == (8, 8, {"ik_llama.cpp"})
    assert all(p.context is not None and p.context.swa_full for p in ik.points)


def test_ik_prompt_is_measured_warm(models: dict) -> None:
    """ik's llama-bench warms a prompt test up with one token (examples/llama-bench/
    llama-bench.cpp:2226-2232), so its first timed repetition runs cold (here 696 against 900
    tok/s): a prompt point is the mean of the later samples, a decode point and mainline's
    records are llama-bench's avg_ts."""
    model, cluster = _setting("moe33.rig_12", models)
    raw = json.loads((DATA / "moe33.rig_12.ik_llama.cpp.json").read_text())
    ik = import_files([DATA / "moe33.rig_12.ik_llama.cpp.json"], model, cluster)
    assert len(ik.points) == len(raw) == 8
    for pt, rec in zip(ik.points, raw):
        warm = rec["samples_ts"][1:]
        expect = sum(warm) / len(warm) if pt.kind == "pp" else rec["avg_ts"]
        assert pt.measured == pytest.approx(expect)
    assert ik.points[0].measured == pytest.approx(900.628)
    model, cluster = _setting("moe33.rig_12_4", models)
    mainline = import_files([DATA / "moe33.rig_12_4.llama.cpp.jsonl"], model, cluster)
    assert all(pt.measured == pt.record["avg_ts"] for pt in mainline.points)


@pytest.mark.parametrize("samples", [None, [812.0], "900", [True, 900.0], [float("nan"), 900.0],
                                     [600.0, float("inf")], [600.0, -1.0], [600.0, "900"]])
def test_ik_prompt_samples_that_cannot_be_trusted_keep_avg_ts(samples: object) -> None:
    from omni_place.bench.records import steady_tps, warm_samples

    rec = {"avg_ts": 812.0, "samples_ts": samples}
    assert steady_tps(rec, "ik_llama.cpp", True) == 812.0
    assert steady_tps({"avg_ts": 812.0, "samples_ts": [600.0, 900.0]}, "ik_llama.cpp", True) == 900.0
    assert steady_tps({"avg_ts": 750.0, "samples_ts": [600.0, 900.0]}, "llama.cpp", True) == 750.0
    assert steady_tps({"avg_ts": 750.0, "samples_ts": [600.0, 900.0]}, "ik_llama.cpp", False) == 750.0
    assert warm_samples({"samples_ts": [600.0, 900.0, 910.0]}, "ik_llama.cpp", True) == [900.0, 910.0]
    assert steady_tps({"samples_ts": [600.0]}, "vllm", True) is None


def test_cuda_first_prompt_repetition_at_depth_0_is_left_out() -> None:
    """Mainline's CUDA build captures its graphs in the first timed prompt repetition after
    llama-bench's one-prompt warmup (ggml-cuda.cu:4456-4466): the H100 runs of
    benchmarks/results/cuda_graph_warmup ran it at 0.73-0.85 of the rest; with graphs off, or after a
    depth run, it ran as fast as the rest."""
    from omni_place.bench.records import UNSTEADY_SPREAD, sample_spread, steady_tps, warm_samples

    folder = ROOT / "benchmarks" / "results" / "cuda_graph_warmup"
    cold = [json.loads(line) for stem in ("p1024_r6", "backtoback_p1024x3", "delay3_p1024x3")
            for line in (folder / f"{stem}.jsonl").read_text().splitlines()]
    for rec in cold:
        assert rec["samples_ts"][0] < 0.86 * min(rec["samples_ts"][1:])
        assert warm_samples(rec, "llama.cpp", True) == rec["samples_ts"][1:]
        assert sample_spread(rec, "llama.cpp", True) < 0.02 < UNSTEADY_SPREAD
        assert steady_tps(rec, "llama.cpp", True) > rec["avg_ts"] * 1.03
        assert steady_tps(rec, "llama.cpp", False) == rec["avg_ts"]  # a decode keeps its samples
    at_depth = dict(cold[0], n_depth=8192)
    cpu_build = dict(cold[0], backends="CPU")
    streamed = [dict(cold[0], n_cpu_moe=20), dict(cold[0], tensor_buft_overrides="exps=CPU"),
                dict(cold[0], n_gpu_layers=20),  # RAM-held weights: their copies make the time
                dict(cold[0], n_gpu_layers=-1, fit_target=1024)]  # the fitter's placement, unknown here
    for rec in (at_depth, cpu_build, *streamed):
        assert warm_samples(rec, "llama.cpp", True) == rec["samples_ts"]
        assert steady_tps(rec, "llama.cpp", True) == rec["avg_ts"]
    bench = {"avg_ts": cold[0]["avg_ts"], "samples_ts": cold[0]["samples_ts"], "engine_record": cold[0]}
    assert steady_tps(bench, "llama.cpp", True) == steady_tps(cold[0], "llama.cpp", True)
    graphs_off = json.loads((folder / "p1024_r6_graphs_off.jsonl").read_text())
    assert graphs_off["samples_ts"][0] > 0.98 * min(graphs_off["samples_ts"][1:])


def test_only_whole_gpu_prompts_at_depth_0_ran_their_first_repetition_cold() -> None:
    """The rule's scope, over every committed mainline prompt test (benchmarks/cuda_graph_warmup.py):
    cold where the weights all sat on the GPUs and no depth run came first, not elsewhere. The capture
    costs a test of many ubatches less in proportion (benchmarks/gpu_shapes.py's 2048-token prompts:
    first repetition at a median 0.84-0.94 of the others in 1-2 ubatches, 0.96-0.97 in 16)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.cuda_graph_warmup import survey

    groups = {(g["where"], g["after_depth_run"]): g for g in survey()}
    whole = groups[("CUDA, all layers", False)]
    assert whole["tests"] >= 600 and whole["median"] < 0.9 and whole["max"] < 1.02
    for key in (("CUDA, all layers", True), ("CUDA, tensors in RAM (-ot, -ncmoe) or placed by -fitt", False),
                ("CUDA, some layers on the CPU", False), ("CPU build", False)):
        assert groups[key]["median"] > 0.95, key


def test_record_fields_reach_the_context_and_threads(models: dict) -> None:
    model, cluster = _setting("moe33.rig_12", models)
    rec = json.loads((DATA / "moe33.rig_12_4.llama.cpp.jsonl").read_text().splitlines()[2])
    rec.update(n_ubatch=256, type_k="q8_0", type_v="q8_0", n_threads=8, n_depth=1000, no_op_offload=1,
               devices="auto", tensor_split="0.00", n_gpu_layers=20)
    (pt,) = import_text(json.dumps(rec), model, cluster).points
    assert pt.context is not None
    assert (pt.context.n_ubatch, pt.context.type_k, pt.context.depth, pt.context.ctx) == (256, "q8_0", 1000, 1512)
    assert pt.cluster.cpu is not None and pt.cluster.cpu.threads == 8
    assert not pt.context.op_offload  # -nopo 1
    assert sum(h != CPU for h in pt.placement.layer_home) == 19  # -ngl 20: 19 layers and the output
    assert not pt.context.pinned_weights  # load_mode "auto": mmap
    for mode, pinned in (("none", True), ("mlock", True), ("mmap", False)):
        rec["load_mode"] = mode  # -lm: a run without mmap held its CPU weights pinned
        (pt,) = import_text(json.dumps(rec), model, cluster).points
        assert pt.context is not None and pt.context.pinned_weights is pinned, mode
    ik_model, ik_cluster = _setting("moe33.rig_12", models)
    ik = json.loads((DATA / "moe33.rig_12.ik_llama.cpp.json").read_text())[0]
    for use_mmap, pinned in ((True, False), (False, True)):
        ik["use_mmap"] = use_mmap  # ik's -mmp 0
        (pt,) = import_text(json.dumps([ik]), ik_model, ik_cluster, engine="ik_llama.cpp").points
        assert pt.context is not None and pt.context.pinned_weights is pinned, use_mmap


def test_prompt_generation_and_split_modes_are_skipped(models: dict) -> None:
    model, cluster = _setting("moe33.rig_12", models)
    lines = (DATA / "moe33.rig_12_4.llama.cpp.jsonl").read_text().splitlines()
    pg = dict(json.loads(lines[2]), n_prompt=512, n_gen=64)
    row = dict(json.loads(lines[2]), split_mode="row", devices="auto", tensor_split="0.00")
    got = import_text("\n".join(map(json.dumps, (pg, row))), model, cluster)
    assert not got.points and sum(got.skipped.values()) == 2
    assert "prompt+generation test (-pg): its rate mixes both" in got.skipped
    assert any("-sm row: calibration fits the layer split" in k for k in got.skipped)


def test_more_threads_than_a_cpu_may_run_are_skipped(models: dict) -> None:
    """n_threads beyond a cluster CPU's range (hypothesis found 4097): skipped with a count, not an
    error that stops the whole import; 4096 threads on a 32-thread CPU are priced as its 32 (more
    threads than its cores compute no faster)."""
    model, cluster = _setting("moe33.rig_12", models)
    rec = json.loads((DATA / "moe33.rig_12_4.llama.cpp.jsonl").read_text().splitlines()[2])
    got = import_text("\n".join(json.dumps(dict(rec, n_threads=n)) for n in (4096, 4097, 1 << 40)), model, cluster)
    assert len(got.points) == 1 and got.points[0].cluster.cpu.threads == cluster.cpu.threads == 32
    assert sum(got.skipped.values()) == 2 and all("n_threads" in k for k in got.skipped)


GARBAGE = ['', 'garbage\n', '{"avg_ts": NaN, "n_prompt": 1}', '{"avg_ts": 1e400}', '{"avg_ts": ' + "9" * 400 + "}",
           '[{"avg_ts": 1', '{' * 100000, '{"a":[' + "1,\n" * 1000, '\x00\x01{"avg_ts"', '[1, 2, "x"]', 'null']


@pytest.mark.parametrize("text", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_is_counted_never_raised(text: str, models: dict) -> None:
    model, cluster = _setting("moe33.rig_12", models)
    got = import_text(text, model, cluster)
    assert not got.points and sum(got.skipped.values()) == got.read - len(got.points)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False)
                     | st.text(max_size=20), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                                   max_size=3),
                     max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["n_gpu_layers", "tensor_split", "tensor_buft_overrides", "n_cpu_moe", "devices",
                              "split_mode", "n_ubatch", "n_batch", "flash_attn", "type_k", "n_threads", "n_prompt",
                              "n_gen", "n_depth", "avg_ts", "fit_target", "no_op_offload", "main_gpu", "load_mode"]),
       value=_JSON, drop=st.booleans())
def test_any_field_value_is_used_or_skipped(field: str, value: object, drop: bool, models: dict) -> None:
    """A record with any field of any type, or missing, is used or skipped with a reason."""
    model, cluster = _setting("moe33.rig_12", models)
    rec = json.loads((DATA / "moe33.rig_12_4.llama.cpp.jsonl").read_text().splitlines()[2])
    if drop:
        rec.pop(field)
    else:
        rec[field] = value
    got = import_text(json.dumps(rec), model, cluster)
    assert len(got.points) + sum(got.skipped.values()) == 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_JSON, drop=st.booleans())
def test_any_ik_samples_value_is_used_or_skipped(value: object, drop: bool, models: dict) -> None:
    """An ik prompt record's samples_ts, of any type or missing: the record is used or skipped,
    and a point's measurement is a positive finite tok/s (the warm samples' mean or avg_ts)."""
    model, cluster = _setting("moe33.rig_12", models)
    rec = json.loads((DATA / "moe33.rig_12.ik_llama.cpp.json").read_text())[0]
    if drop:
        rec.pop("samples_ts")
    else:
        rec["samples_ts"] = value
    got = import_text(json.dumps(rec), model, cluster, engine="ik_llama.cpp")
    assert len(got.points) + sum(got.skipped.values()) == 1
    assert all(0 < p.measured < MAX_TPS for p in got.points)


def test_scan_is_linear_on_hostile_text() -> None:
    values, bad = scan_objects('{"a": [\n' * 20000)
    assert values == [] and bad >= 1


def test_calibrate_command_on_plain_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("OMNI_PLACE_CONFIG", str(tmp_path))
    rc = main(["calibrate", str(DATA / "moe33.rig_12_4.llama.cpp.jsonl"),
               str(DATA / "logs" / "moe33.rig_12_4.llama.cpp.fit.log"),
               "--model", str(RES / "moe33.hdr.gguf.xz"), "--cluster", str(RES / "rig_12_4.toml")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "10 records, 8 used; skipped: 2 x placed by the engine's fitter" in out
    assert "llama.cpp: fitted on 8 measurements" in out and "fit error:" in out and "leave-one-configuration-out" in out
    doc = json.loads((tmp_path / "calibration" / "h200x2-12g-4g.json").read_text())
    assert set(doc["engines"]) == {"llama.cpp"}
    assert re.search(r"tg: median [\d.]+ %, max [\d.]+ % \(n=4\), rank -?[01]\.\d\d", out)



def test_calibrate_on_a_run_folder_scored_on_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """A folder stands for its files (RECORDS and --holdout): the session-35 H200 matrix's first
    round of moe15 (11 llama-bench runs, each its -v log with its -o jsonl output) fitted, its second
    round scored; hidden files and sub-folders are not read, an empty folder is one error."""
    import tarfile

    from benchmarks.speed_models import write_speed_model

    monkeypatch.setenv("OMNI_PLACE_CONFIG", str(tmp_path / "cfg"))
    res35 = ROOT / "benchmarks" / "results" / "calibrate_35"
    with tarfile.open(res35 / "logs.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    logs = tmp_path / "res" / "res_b" / "logs"
    (logs / "moe15.h200-b.r0" / ".notes").write_text("not llama-bench output")
    (logs / "moe15.h200-b.r0" / "old").mkdir()
    header = write_speed_model("moe15", tmp_path, header_only=True)
    rc = main(["calibrate", str(logs / "moe15.h200-b.r0"), "--holdout", str(logs / "moe15.h200-b.r1"),
               "--model", str(header), "--cluster", str(res35 / "rig_b.toml"), "--no-save"])
    out = capsys.readouterr().out
    assert rc == 0 and "22 records, 22 used" in out and "fitted on 22 measurements" in out
    assert re.search(r"held-out \(holdout records\): tg: median [\d.]+ %, max [\d.]+ % \(n=11\)", out)
    (tmp_path / "empty").mkdir()
    rc = main(["calibrate", str(tmp_path / "empty"), "--model", str(header), "--cluster", str(res35 / "rig_b.toml")])
    assert rc == 2 and "RECORDS folder" in capsys.readouterr().err

def test_errors_rank_predictions_as_the_engine_ranked_them(models: dict) -> None:
    """calibrate's error report carries Spearman's rank correlation of predicted against measured
    (issue 15's >= 0.9), None where it is undefined (under 3 points, or a constant side)."""
    from omni_place.bench.calibrate import errors

    model, cluster = _setting("moe33.rig_12", models)
    pts = [p for p in import_files([DATA / "moe33.rig_12.ik_llama.cpp.json"], model, cluster).points if p.kind == "tg"]
    measured = [p.measured for p in pts]
    assert len(pts) == 4 and len(set(measured)) == 4
    assert errors(pts, measured)["tg"]["rank"] == 1.0
    assert errors(pts, [-m for m in measured])["tg"]["rank"] == -1.0
    assert errors(pts, [1.0] * 4)["tg"]["rank"] is None and errors(pts[:2], measured[:2])["tg"]["rank"] is None


@pytest.mark.parametrize("text", ["garbage\n", '{"avg_ts": NaN}\n', '[{"avg_ts": 5, "n_prompt": 512, "n_gen": 0}]'])
def test_no_usable_record_is_one_error(text: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "out.jsonl"
    f.write_text(text)
    rc = main(["calibrate", str(f), "--model", str(RES / "moe33.hdr.gguf.xz"), "--cluster", str(RES / "rig_12.toml"),
               "--no-save"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 2
    assert err[0].startswith("error: no usable llama-bench records in") and err[1].startswith("hint: ")


def test_file_kind_is_read_from_the_head(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """calibrate tells llama-bench output from bench records by a file's first MiB, whatever its
    size: llama-bench output grown (sparse) past even a records file's limit is refused by the
    llama-bench reader, in its words."""
    f = tmp_path / "out.jsonl"
    f.write_text((DATA / "moe33.rig_12_4.llama.cpp.jsonl").read_text())
    size = MAX_RECORDS_BYTES + 1
    os.truncate(f, size)
    rc = main(["calibrate", str(f), "--model", str(RES / "moe33.hdr.gguf.xz"), "--cluster", str(RES / "rig_12.toml"),
               "--no-save"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err[0] == (f"error: llama-bench output {f} has {size} bytes, more than the "
                                  f"{MAX_OUTPUT_BYTES} a llama-bench output can have")


# --- calibrate --run ---------------------------------------------------------------------------

@pytest.mark.parametrize("model_name,rig,engine", [("moe33", "rig_12", "llama.cpp"),
                                                   ("moe33", "rig_12_4", "ik_llama.cpp"),
                                                   ("dense15", "rig_12_4", "llama.cpp")])
def test_design_is_feasible_short_and_identifying(model_name: str, rig: str, engine: str, models: dict) -> None:
    model, cluster = models[model_name], resolve_cluster(str(RES / f"{rig}.toml"))
    design = design_runs(model, cluster, engine)
    assert design.seconds <= design.budget_s and 2 <= len(design.runs) <= 6
    assert {"gpu_bw_scale", "cpu_bw_eff", "stream_eff"} <= set(design.fit_names)
    if model_name == "moe33":
        assert "split_s" in design.fit_names
    if engine == "llama.cpp":
        assert "cpu_tflops_per_core" in design.fit_names
    for run in design.runs:
        plan = evaluate(model, cluster, run.argv(), engine=engine, tool="bench")
        assert plan.feasible, (run.name, run.argv())
        assert (1 <= run.n_prompt <= 2048 or run.name == "repeat") and run.n_gen <= 256
        assert run.n_prompt < 512 or run.n_prompt % 512 == 0  # whole ubatches
    first, repeat = next(r for r in design.runs if r.n_gen), design.runs[-1]  # the first decode again, last
    assert (repeat.name, repeat.flags, repeat.n_prompt, repeat.n_gen) == ("repeat", first.flags, 0, first.n_gen)


def test_design_keeps_the_gpu_run_when_ram_cannot_hold_the_experts(models: dict) -> None:
    """An 80 GiB GPU holds the whole 31 GiB MoE beside 16 GiB of RAM that cannot hold its experts:
    the fewest layers' experts in RAM that fit is none, so the design has its GPU run (and the
    split run, the down experts alone fitting in RAM)."""
    gpu = Device("CUDA0", "gpu", 80 << 30, 4800.0, tflops=989.5, link_gbs=63.0)
    cluster = Cluster("80g-gpu-16g-ram", (gpu, Device("CPU", "cpu", 16 << 30, 200.0, threads=16)))
    design = design_runs(models["moe33"], cluster, "llama.cpp")
    assert [r.name for r in design.runs] == ["gpu", "split", "repeat"]
    assert "-ot" not in design.runs[0].flags
    for run in design.runs:
        assert evaluate(models["moe33"], cluster, run.argv(), engine="llama.cpp", tool="bench").feasible


def test_dense_gpu_run_puts_every_layer_and_the_output_on_the_gpu(models: dict) -> None:
    """-ngl k offloads the last k of n_layer + 1 (the output last): the GPU run of a dense model
    that fits is -ngl n_layer + 1, nothing left on the CPU (-ngl n_layer kept layer 0 there)."""
    gpu = Device("CUDA0", "gpu", 80 << 30, 3350.0, tflops=989.5, link_gbs=63.0)
    cluster = Cluster("80g", (gpu, Device("CPU", "cpu", 64 << 30, 100.0, threads=16)))
    model = models["dense15"]
    run = design_runs(model, cluster, "llama.cpp").runs[0]
    assert run.name == "gpu" and run.flags[:2] == ("-ngl", str(model.n_layer + 1))
    predicted = evaluate(model, cluster, run.argv(), engine="llama.cpp", tool="bench").predicted
    assert CPU not in predicted.tg_breakdown


FAKE = r'''#!{python}
"""A fake llama-bench replaying recorded H200 runs (stderr: the -v log, stdout: the output)."""
import sys
from pathlib import Path
argv = sys.argv[1:]
if any("ffn_down" in a for a in argv):
    sys.stderr.write("alloc_buffer: allocating 9000 MiB: cudaMalloc failed: out of memory\n")
    sys.exit(1)
counter = Path({counter!r})
i = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(i + 1))
logs = {logs!r}
log = logs[i % len(logs)]
head, out = Path(log).read_text().split("\n# stdout\n", 1)
sys.stderr.write(head.split("\n", 2)[2] + "\n")
sys.stdout.write(out)
'''


def test_calibrate_run_with_a_fake_llama_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("OMNI_PLACE_CONFIG", str(tmp_path / "cfg"))
    # replayed in turn: the last run, a repeat of the first's decode, gets another run's (a machine that moved)
    logs = [str(DATA / "logs" / f"moe33.rig_12_4.llama.cpp.{c}.log") for c in ("ot-exps", "omni_place", "ncmoe",
                                                                              "omni_place")]
    exe = tmp_path / "llama-bench"
    exe.write_text(FAKE.format(python=sys.executable, counter=str(tmp_path / "n"), logs=logs))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    rc = main(["calibrate", "--run", str(exe), str(RES / "moe33.hdr.gguf.xz"), "--cluster", str(RES / "rig_12_4.toml"),
               "--out", str(tmp_path / "runs")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "estimated" in cap.err and "budget 180 s" in cap.err
    assert "[1/5] gpu" in cap.err and "[3/5] split" in cap.err and "failed (oom_load" in cap.err
    assert "[5/5] repeat" in cap.err
    assert "measured: 8 records, 8 used; skipped: 1 x run failed: oom_load" in cap.out
    drift = re.search(r"drift: gpu's decode ran ([\d.]+) tok/s first and ([\d.]+) last \(([-+][\d.]+)%\); both are "
                      r"fitted; this machine's speed moved", cap.out)
    assert drift and abs(float(drift[2]) / float(drift[1]) - 1 - float(drift[3]) / 100) < 0.005  # as printed
    assert "llama.cpp: fitted on 8 measurements" in cap.out and "fit error:" in cap.out
    assert len(list((tmp_path / "runs").glob("*.log"))) == 5
    doc = json.loads((tmp_path / "cfg" / "calibration" / "h200x2-12g-4g.json").read_text())
    assert doc["report"]["engines"]["llama.cpp"]["fitted"] == ["gpu_bw_scale", "gpu_compute_scale", "cpu_bw_eff",
                                                                 "stream_eff", "split_s", "cpu_tflops_per_core"]
    saved_drift = doc["report"]["drift"]
    assert saved_drift["run"] == "gpu" and abs(saved_drift["change"] - float(drift[3]) / 100) < 0.001


def test_calibrate_run_dry_run_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exe = tmp_path / "llama-bench"
    exe.write_text("#!/bin/sh\nexit 3\n")
    exe.chmod(0o700)
    args = ["calibrate", "--run", str(exe), str(RES / "dense15.hdr.gguf.xz"), "--cluster", str(RES / "rig_12.toml")]
    assert main([*args, "--dry-run"]) == 0
    assert "cpu-layers" in capsys.readouterr().err
    assert main([*args, str(RES / "moe33.hdr.gguf.xz")]) == 2
    assert "--run takes one MODEL" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "o"), "--no-save"]) == 2  # every run fails
    err = capsys.readouterr().err
    assert "failed (error, exit 3" in err and "error: no usable llama-bench records" in err


def test_record_folders_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    """A folder of more files than calibrate reads is one error (not a listing of a whole tree)."""
    from omni_place.cli import bench_cmd

    monkeypatch.setattr(bench_cmd, "MAX_RECORD_FILES", 3)
    folder = tmp_path / "runs"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.log").write_text("{}")
    rc = main(["calibrate", str(folder), "--model", str(RES / "moe33.hdr.gguf.xz"), "--cluster",
               str(RES / "rig_12_4.toml")])
    err = capsys.readouterr().err
    assert rc == 2 and "RECORDS names more than 3 files" in err and err.count("\n") == 2


def test_unsteady_records_are_left_out_and_counted(tmp_path: Path) -> None:
    """An H100 VM's round of decodes whose two repetitions read 15 and 74 tok/s (calibrate_36): such
    records are skipped with their count and reason, the steady ones of the same logs kept; ik's cold
    first prompt repetition is not a spread."""
    import tarfile

    from benchmarks.speed_models import write_speed_model
    from omni_place.bench.records import UNSTEADY_SPREAD, sample_spread
    from omni_place.model import load_model

    assert sample_spread({"samples_ts": [15.2, 74.4]}, "llama.cpp", False) > UNSTEADY_SPREAD
    assert sample_spread({"samples_ts": [600.0, 900.0, 910.0]}, "ik_llama.cpp", True) < 0.02
    assert sample_spread({"samples_ts": [600.0, 900.0]}, "ik_llama.cpp", False) == pytest.approx(0.5)
    assert sample_spread({"samples_ts": [812.0]}, "llama.cpp", True) == sample_spread({}, "llama.cpp", True) == 0.0
    res = ROOT / "benchmarks" / "results" / "calibrate_36"
    with tarfile.open(res / "logs.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    model = load_model(write_speed_model("moe15", tmp_path, header_only=True))
    logs = sorted((tmp_path / "res" / "res_b" / "logs" / "moe15.h100-b.r0").glob("*.log"))
    got = import_files(logs, model, resolve_cluster(str(res / "rig_b.toml")))
    (reason,) = [why for why in got.skipped if why.startswith("unsteady")]
    assert got.skipped[reason] == 9 and len(got.points) == 11
    assert sum(p.kind == "tg" for p in got.points) == 1  # the one decode whose repetitions agreed


def test_calibrate_run_repeats_an_unsteady_run_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    """The first run's decode comes out unsteady (repetitions 15 and 60 tok/s): it runs once more
    within the budget and its decode is taken from there; its prompt, steady the first time, is not
    taken twice."""
    monkeypatch.setenv("OMNI_PLACE_CONFIG", str(tmp_path / "cfg"))
    steady = DATA / "logs" / "moe33.rig_12_4.llama.cpp.ot-exps.log"
    head, out = steady.read_text().split("\n# stdout\n", 1)
    lines = []
    for line in out.splitlines():
        rec = json.loads(line) if line.startswith("{") else None
        if rec is not None and rec["n_gen"]:
            rec["samples_ts"], rec["avg_ts"] = [15.0, 60.0], 37.5
            line = json.dumps(rec)
        lines.append(line)
    unsteady = tmp_path / "unsteady.log"
    unsteady.write_text(head + "\n# stdout\n" + "\n".join(lines) + "\n")
    logs = [str(unsteady), str(steady)] + [str(DATA / "logs" / f"moe33.rig_12_4.llama.cpp.{c}.log")
                                           for c in ("omni_place", "ncmoe", "omni_place")]
    exe = tmp_path / "llama-bench"
    exe.write_text(FAKE.format(python=sys.executable, counter=str(tmp_path / "n"), logs=logs))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    rc = main(["calibrate", "--run", str(exe), str(RES / "moe33.hdr.gguf.xz"), "--cluster", str(RES / "rig_12_4.toml"),
               "--out", str(tmp_path / "runs"), "--no-save"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "gpu: ok (1 unsteady)" in cap.err and "[2/6] gpu again" in cap.err and "[6/6] repeat" in cap.err
    assert (tmp_path / "runs" / "1.gpu.again.log").exists()
    assert "8 used" in cap.out and "1 x measured steadily before the run was repeated" in cap.out
    assert "1 x unsteady" in cap.out and "drift: gpu's decode" in cap.out
