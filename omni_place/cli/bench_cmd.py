"""`omni-place bench` and `omni-place calibrate`."""
from __future__ import annotations

import itertools
import json
import sys
from typing import Any
from pathlib import Path

import click

from .. import bench
from ..engines import BENCH_ENGINES, engine_of_binary
from ..errors import InvalidArgumentError
from . import cli
from .params import FiniteFloat
from .plan_cmd import _cluster_spec, cluster_option


SNIFF_BYTES = 1 << 20  # the head of a RECORDS file that says its kind (its reader then checks its size)
MAX_RECORD_FILES = 10_000  # files RECORDS / --holdout may name, folders expanded


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        k, eq, p = v.partition("=")
        if not eq or not k or not p:
            raise InvalidArgumentError(f"{what} {v!r} is not NAME=PATH", hint=f"e.g. {what} moe33=moe33.gguf")
        out[k] = p
    return out


def _binaries(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        engine, eq, path = v.partition("=")
        if eq and engine in BENCH_ENGINES:
            pass
        else:
            engine, path = engine_of_binary(v), v
        if not Path(path).exists():
            raise InvalidArgumentError(f"no llama-bench at {path}", hint="pass the path of a built llama-bench binary")
        if engine in out:
            raise InvalidArgumentError(f"two llama-bench builds for {engine}",
                                       hint="name them ENGINE=PATH, e.g. ik_llama.cpp=/ik/build/bin/llama-bench")
        out[engine] = path
    return out


@cli.command("bench")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--llama-bench", "binaries", multiple=True, required=True,
              help="A llama-bench binary: PATH (a path containing 'ik' is ik_llama.cpp) or ENGINE=PATH. "
                   "Repeat per engine.")
@cluster_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench-results", show_default=True,
              help="Folder for records.jsonl, matrix.json, logs/ and the chart.")
@click.option("--n-prompt", type=click.IntRange(0, 1 << 20), default=512, show_default=True)
@click.option("--n-gen", type=click.IntRange(0, 1 << 20), default=64, show_default=True)
@click.option("--ubatch", type=click.IntRange(1, 65536), default=512, show_default=True)
@click.option("--reps", type=click.IntRange(1, 100), default=3, show_default=True, help="llama-bench -r.")
@click.option("--threads", type=click.IntRange(1, 4096), help="llama-bench -t (default: the engine's).")
@click.option("--objective", default="balanced", show_default=True,
              help="omni_place's objective: balanced, tg, pp or a weight on decode in [0, 1].")
@click.option("--config", "configs", multiple=True, type=click.Choice(list(bench.CONFIG_ORDER)),
              help="Run only these configurations (repeatable; default all).")
@click.option("--timeout", type=FiniteFloat(1, 86400), default=900, show_default=True,
              help="Seconds before one llama-bench run is stopped (recorded as failed).")
@click.option("--plot", is_flag=True, help="Also write chart_tg.svg and chart_pp.svg.")
def bench_cmd(model: str, binaries: tuple[str, ...], cluster_file: str | None, preset: str | None, out_dir: str,
              n_prompt: int, n_gen: int, ubatch: int, reps: int, threads: int | None, objective: str,
              configs: tuple[str, ...], timeout: float, plot: bool) -> None:
    """Run MODEL with each engine's default split, its --fit, the community recipes and
    omni_place's plan, in each engine's llama-bench dialect; print the comparison table.

    Every run is recorded in OUT/records.jsonl with omni_place's prediction beside it (a failed
    load is recorded, not dropped); feed the records to `omni-place calibrate`.

    \b
    Example:
      omni-place bench model.gguf --cluster rig.toml \\
          --llama-bench ~/llama.cpp/build/bin/llama-bench \\
          --llama-bench ik_llama.cpp=~/ik_llama.cpp/build/bin/llama-bench --plot
    """
    from ..devices import resolve_cluster
    from ..objective import parse_objective

    obj = parse_objective(objective)
    bins = _binaries(binaries)
    cluster = resolve_cluster(_cluster_spec(cluster_file, preset))
    out = Path(out_dir)
    records = bench.run_bench(model, cluster, bins, out, n_prompt=n_prompt, n_gen=n_gen, ubatch=ubatch, reps=reps,
                              threads=threads, objective=obj, configs=configs or bench.CONFIG_ORDER,
                              progress_stream=sys.stderr, timeout=timeout)
    table = bench.comparison_table(records)
    (out / "table.md").write_text(table + "\n")
    click.echo(table)
    click.echo("")
    for line in bench.target_check(records):
        click.echo(line)
    if plot:
        (out / "chart_tg.svg").write_text(bench.svg_chart(records, "tg"))
        (out / "chart_pp.svg").write_text(bench.svg_chart(records, "pp"))
        click.echo(f"charts: {out / 'chart_tg.svg'}, {out / 'chart_pp.svg'}")
    click.echo(f"records: {out / 'records.jsonl'}")


def _fmt_err(e: dict[str, Any]) -> str:
    """``tg: median 3.1 %, max 8.0 % (n=12), rank 0.95, pp: ...`` (rank: Spearman's, when defined)."""
    return ", ".join(f"{k}: median {v['median_abs'] * 100:.1f} %, max {v['max_abs'] * 100:.1f} % (n={v['n']})"
                     + (f", rank {v['rank']:.2f}" if v.get("rank") is not None else "") for k, v in e.items())


@cli.command("calibrate")
@click.argument("records", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--holdout", multiple=True, type=click.Path(exists=True),
              help="Records to score only (never fitted on), e.g. a re-run: a file (repeat the option per file) or "
                   "a folder of them. Without it: leave-one-configuration-out.")
@click.option("--model", "models", multiple=True,
              help="The model of plain llama-bench output (a GGUF; a header-only one is enough), or NAME=PATH "
                   "for `omni-place bench` records.")
@click.option("--cluster", "clusters", multiple=True,
              help="The cluster TOML of plain llama-bench output, or RIG=FILE for `omni-place bench` records.")
@click.option("--preset", help="A shipped cluster preset for plain llama-bench output or --run.")
@click.option("--engine", type=click.Choice(list(BENCH_ENGINES)),
              help="The engine that wrote plain llama-bench output (default: read from its fields), or --run's.")
@click.option("--run", "run_exe", type=click.Path(exists=True, dir_okay=False),
              help="Measure instead: run this llama-bench on the model given as the one argument.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="calibrate-runs", show_default=True,
              help="--run: folder for each run's -v log and output.")
@click.option("--budget", type=FiniteFloat(10, 86400), default=180, show_default=True,
              help="--run: seconds the whole design may take, model loads included.")
@click.option("--threads", type=click.IntRange(1, 4096), help="--run: llama-bench -t (default: the engine's).")
@click.option("--timeout", type=FiniteFloat(1, 86400), default=300, show_default=True,
              help="--run: seconds before one run is stopped (reported and skipped).")
@click.option("--dry-run", is_flag=True, help="--run: print the design and its time estimate, run nothing.")
@click.option("--machine", help="Store under this machine id (default: each rig cluster's name).")
@click.option("--no-save", is_flag=True, help="Fit and report only.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def calibrate_cmd(records: tuple[str, ...], holdout: tuple[str, ...], models: tuple[str, ...],
                  clusters: tuple[str, ...], preset: str | None, engine: str | None, run_exe: str | None,
                  out_dir: str, budget: float, threads: int | None, timeout: float, dry_run: bool,
                  machine: str | None, no_save: bool, fmt: str) -> None:
    """Fit the speed model's efficiencies and split costs to llama-bench measurements, per
    engine, and store them for the machine; later plans use them.

    RECORDS are files, or folders of them, of `omni-place bench` records or llama-bench's own output (`-o jsonl` of
    llama.cpp, `-o json` of either fork; written with `-v ... > out.jsonl 2>&1`, the file also
    holds the log, where the placement is read from, which fitted runs need) with --model and
    --cluster/--preset. Records that cannot be used (a -pg test, a fitted run without its log,
    a malformed record, a test whose repetitions differ by more than 25 %: the machine's speed
    moved) are skipped and counted. The error (median, max and the rank correlation of predicted
    against measured) is reported on measurements the fit did not see.

    With --run LLAMA_BENCH the one argument is the MODEL (its GGUF): a few runs that separate
    GPU and CPU bandwidth, host-link streaming, per-split cost and prompt compute are designed
    to take about --budget seconds, run with progress on stderr, and fitted. A run that came
    out unsteady runs once more while the budget has room; the first decode is repeated last
    to show how far the machine's speed moved (drift).

    \b
    Examples:
      omni-place calibrate bench-results/records.jsonl
      omni-place calibrate out.jsonl --model model.gguf --cluster rig.toml
      omni-place calibrate --run ~/llama.cpp/build/bin/llama-bench model.gguf --cluster rig.toml
    """
    if run_exe is not None:
        _calibrate_run(run_exe, records, clusters, preset, engine, Path(out_dir), budget, threads, timeout,
                       dry_run, machine, no_save, fmt)
        return
    records, holdout = _files_of(records, "RECORDS"), _files_of(holdout, "--holdout")
    # llama-bench's own output by its fields; a file with no usable object goes with what the
    # options ask for (a plain --model means llama-bench output)
    kinds = {_file_kind(p) for p in records + holdout}
    if None in kinds:
        kinds.discard(None)
        kinds.add("plain" if any("=" not in m for m in models) else "records")
    if "plain" in kinds:
        if "records" in kinds:
            raise InvalidArgumentError("some files are llama-bench output and some `omni-place bench` records",
                                       hint="calibrate them in separate runs")
        _calibrate_plain(records, holdout, models, clusters, preset, engine, machine, no_save, fmt)
        return
    _calibrate_records(records, holdout, models, clusters, machine, no_save, fmt)


def _files_of(paths: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Each path, a folder as its files (not hidden, not in sub-folders, by name): a run's outputs."""
    out: list[str] = []
    for p in map(Path, paths):
        if not p.is_dir():
            out.append(str(p))
            continue
        try:
            entries = list(itertools.islice(p.iterdir(), MAX_RECORD_FILES + 1))
            files = sorted(str(f) for f in entries if not f.name.startswith(".") and f.is_file())
        except OSError as err:
            raise InvalidArgumentError(f"cannot list {what} folder {p}: {err.strerror or err}",
                                       hint="check the folder's permissions") from None
        if not files:
            raise InvalidArgumentError(f"{what} folder {p} holds no files", hint="give the folder of a run's outputs")
        out += files
        if len(out) > MAX_RECORD_FILES or len(entries) > MAX_RECORD_FILES:
            raise InvalidArgumentError(f"{what} names more than {MAX_RECORD_FILES} files",
                                       hint="give the folders of the runs to calibrate on, not a whole tree")
    return tuple(out)


def _file_kind(path: str) -> str | None:
    """"plain" for llama-bench's own output, "records" for `omni-place bench` records, None when
    the file's head holds no JSON object that says."""
    from ..bench.llamabench import scan_objects
    from ..validate import read_file

    head = read_file(path, limit=SNIFF_BYTES, what="records file", head=True)
    first = next((v for v in scan_objects(head.decode("utf-8", errors="replace"))[0] if isinstance(v, dict)), None)
    if first is None:
        return None
    return "records" if "config" in first else "plain" if "avg_ts" in first or "avg_ns" in first else None


def _one(values: tuple[str, ...], what: str, example: str) -> str | None:
    """The one plain value of --model/--cluster for llama-bench output (no NAME= pairs)."""
    plain = [v for v in values if "=" not in v or Path(v).exists()]
    if len(plain) != len(values) or len(plain) > 1:
        raise InvalidArgumentError(f"llama-bench output takes one {what} PATH", hint=f"e.g. {what} {example}")
    return plain[0] if plain else None


def _load_profile(path: str) -> Any:
    from ..bench.calibrate import _load_xz_header
    from ..model import load_model

    return _load_xz_header(Path(path)) if path.endswith(".xz") else load_model(path)


def _fit_report(points: list[Any], held: list[Any], names: tuple[str, ...] | None = None,
                base: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per engine: fitted params and their report (fit error; held-out or cross-validated error)."""
    from ..bench import calibrate as cal

    report: dict[str, Any] = {}
    fitted: dict[str, Any] = {}
    names_ = names or cal.FIT_NAMES
    for eng in sorted({p.engine for p in points}):
        ep = [p for p in points if p.engine == eng]
        params = cal.fit_params(ep, base, names_)
        fitted[eng] = params
        train = cal.errors(ep, [cal.predict_point(p, params) for p in ep])
        if held:
            hp = [p for p in held if p.engine == eng]
            heldout, how = cal.errors(hp, [cal.predict_point(p, params) for p in hp]), "holdout records"
        else:
            cv = cal.cross_validate(ep, base, lambda pts, b: cal.fit_params(pts, b, names_))
            heldout, how = cal.errors([a for a, _ in cv], [b for _, b in cv]), "leave-one-configuration-out"
        report[eng] = {"params": params.to_dict(), "fitted": list(names_), "train": train, "heldout": heldout,
                       "heldout_kind": how, "n_points": len(ep)}
    return fitted, report


def _emit_report(report: dict[str, Any], fmt: str, headline: str) -> None:
    """A calibration report as JSON, or as text: the headline, the fits, where they were saved."""
    if fmt == "json":
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(headline)
    _echo_engines(report)
    for s in report["saved"]:
        click.echo(f"saved: {s}")


def _echo_engines(report: dict[str, Any]) -> None:
    for eng, r in report["engines"].items():
        p = r["params"]
        click.echo(f"{eng}: fitted on {r['n_points']} measurements")
        click.echo("  " + ", ".join(f"{k}={p[k]:.4g}" for k in r["fitted"]))
        click.echo(f"  fit error:  {_fmt_err(r['train'])}")
        if r["heldout"]:
            click.echo(f"  held-out ({r['heldout_kind']}): {_fmt_err(r['heldout'])}")


def _save(fitted: dict[str, Any], report: dict[str, Any], ids: list[str], no_save: bool) -> list[str]:
    from ..calibration import save_calibration

    return [] if no_save else [str(save_calibration(mid, fitted, {"report": report})) for mid in ids]


def _calibrate_plain(records: tuple[str, ...], holdout: tuple[str, ...], models: tuple[str, ...],
                     clusters: tuple[str, ...], preset: str | None, engine: str | None, machine: str | None,
                     no_save: bool, fmt: str) -> None:
    from ..bench.llamabench import import_files, require_points
    from ..calibration import machine_id
    from ..devices import resolve_cluster

    model_path = _one(models, "--model", "model.gguf")
    if model_path is None:
        raise InvalidArgumentError("llama-bench output does not say which model it ran",
                                   hint="pass --model MODEL.gguf (a header-only GGUF is enough)")
    model = _load_profile(model_path)
    cluster = resolve_cluster(_cluster_spec(_one(clusters, "--cluster", "rig.toml"), preset))
    imported = import_files(records, model, cluster, engine=engine)
    points = require_points(imported, ", ".join(records))
    held = import_files(holdout, model, cluster, engine=engine) if holdout else None
    fitted, engines = _fit_report(points, held.points if held else [])
    report: dict[str, Any] = {"engines": engines, "records": imported.summary(),
                              "skipped": dict(imported.skipped)}
    report["saved"] = _save(fitted, report, [machine or machine_id(cluster)], no_save)
    _emit_report(report, fmt, f"llama-bench output: {imported.summary()}")


def _calibrate_run(exe: str, args: tuple[str, ...], clusters: tuple[str, ...], preset: str | None,
                   engine: str | None, out: Path, budget: float, threads: int | None, timeout: float,
                   dry_run: bool, machine: str | None, no_save: bool, fmt: str) -> None:
    from ..bench.design import describe, design_drift, design_runs, run_design
    from ..bench.llamabench import require_points
    from ..calibration import machine_id, read_calibrated
    from ..devices import resolve_cluster

    if len(args) != 1:
        raise InvalidArgumentError("--run takes one MODEL argument (the GGUF llama-bench loads)",
                                   hint="omni-place calibrate --run PATH/llama-bench MODEL.gguf --cluster rig.toml")
    model = _load_profile(args[0])
    cluster = resolve_cluster(_cluster_spec(_one(clusters, "--cluster", "rig.toml"), preset))
    eng = engine or engine_of_binary(exe)
    base, _ = read_calibrated(cluster, eng)
    design = design_runs(model, cluster, eng, params=base, budget_s=budget)
    for line in describe(design):
        click.echo(line, err=True)
    if dry_run:
        return
    imported = run_design(design, exe, args[0], model, cluster, out, threads=threads, timeout=timeout,
                          progress_stream=sys.stderr)
    points = require_points(imported, f"the runs of {exe} (logs in {out})")
    fitted, engines = _fit_report(points, [], design.fit_names, base)
    drift = design_drift(design, imported)
    report: dict[str, Any] = {"engines": engines, "records": imported.summary(), "skipped": dict(imported.skipped),
                              "design": [{"name": r.name, "argv": r.argv(design.reps)} for r in design.runs],
                              "logs": str(out), "drift": drift.to_dict() if drift else None}
    report["saved"] = _save(fitted, report, [machine or machine_id(cluster)], no_save)
    _emit_report(report, fmt, f"measured: {imported.summary()}" + (f"\n{drift.line()}" if drift else ""))


def _calibrate_records(records: tuple[str, ...], holdout: tuple[str, ...], models: tuple[str, ...],
                       clusters: tuple[str, ...], machine: str | None, no_save: bool, fmt: str) -> None:
    """`omni-place bench` records: each names its model and rig, found beside the records."""
    from ..bench import calibrate as cal
    from ..calibration import machine_id

    recs = bench.load_records(records)
    hrecs = bench.load_records(holdout) if holdout else []
    search = list(dict.fromkeys(Path(r).resolve().parent for r in records + holdout))
    mp, cp = _pairs(models, "--model"), _pairs(clusters, "--cluster")
    pts = cal.points_from_records(recs, search=search, models=mp, clusters=cp)
    hpts = cal.points_from_records(hrecs, search=search, models=mp, clusters=cp) if hrecs else []
    if not pts:
        raise InvalidArgumentError("no successful records with a placement to calibrate on",
                                   hint="records need the engine's -v log read back (omni-place bench does it)")
    fitted, engines = _fit_report(pts, hpts)
    report: dict[str, Any] = {"engines": engines, "oom": cal.feasibility_check(recs + hrecs)}
    ids = [machine] if machine else sorted({machine_id(p.cluster) for p in pts})
    report["saved"] = _save(fitted, report, ids, no_save)
    if fmt == "json":
        click.echo(json.dumps(report, indent=1))
        return
    _echo_engines(report)
    ooms = report["oom"]
    bad = [o for o in ooms if o["predicted_feasible"] is not False]
    click.echo(f"out-of-memory runs: {len(ooms)}, predicted infeasible: {len(ooms) - len(bad)}")
    for o in bad:
        click.echo(f"  NOT predicted infeasible: {o['rig']} {o['model']} {o['engine']} {o['config']} "
                   f"{' '.join(o['argv'] or [])} ({o['test']}, predicted feasible={o['predicted_feasible']})")
    for s in report["saved"]:
        click.echo(f"saved: {s}")
