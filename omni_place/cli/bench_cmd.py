"""`omni-place bench` and `omni-place calibrate`."""
from __future__ import annotations

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
@click.option("--objective", default="tg", show_default=True, help="omni_place's objective: tg, pp or a weight.")
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
    from ..plan import objective_weights

    obj: str | float = objective
    try:
        obj = float(objective)
    except ValueError:
        pass
    objective_weights(obj)
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
    return ", ".join(f"{k}: median {v['median_abs'] * 100:.1f} %, max {v['max_abs'] * 100:.1f} % (n={v['n']})"
                     for k, v in e.items())


@cli.command("calibrate")
@click.argument("records", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--holdout", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Records to score only (never fitted on), e.g. a re-run. Without it: leave-one-configuration-out.")
@click.option("--model", "models", multiple=True, help="NAME=PATH of a record's model (a header-only GGUF is enough).")
@click.option("--cluster", "clusters", multiple=True, help="RIG=FILE: the cluster TOML of a record's rig.")
@click.option("--machine", help="Store under this machine id (default: each rig cluster's name).")
@click.option("--no-save", is_flag=True, help="Fit and report only.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def calibrate_cmd(records: tuple[str, ...], holdout: tuple[str, ...], models: tuple[str, ...],
                  clusters: tuple[str, ...], machine: str | None, no_save: bool, fmt: str) -> None:
    """Fit the speed model's efficiencies and split costs to llama-bench RECORDS (from
    `omni-place bench`), per engine, and store them for the machine.

    Models and cluster files are looked up beside the records (NAME.hdr.gguf[.xz], RIG.toml)
    unless given. The error is reported on records the fit did not see.
    """
    from ..bench import calibrate as cal
    from ..calibration import machine_id, save_calibration

    recs = bench.load_records(records)
    hrecs = bench.load_records(holdout) if holdout else []
    search = list(dict.fromkeys(Path(r).resolve().parent for r in records + holdout))
    mp, cp = _pairs(models, "--model"), _pairs(clusters, "--cluster")
    pts = cal.points_from_records(recs, search=search, models=mp, clusters=cp)
    hpts = cal.points_from_records(hrecs, search=search, models=mp, clusters=cp) if hrecs else []
    if not pts:
        raise InvalidArgumentError("no successful records with a placement to calibrate on",
                                   hint="records need the engine's -v log read back (omni-place bench does it)")
    report: dict = {"engines": {}, "oom": cal.feasibility_check(recs + hrecs)}
    fitted = {}
    for eng in sorted({p.engine for p in pts}):
        ep = [p for p in pts if p.engine == eng]
        params = cal.fit_params(ep)
        fitted[eng] = params
        train = cal.errors(ep, [cal.predict_point(p, params) for p in ep])
        if hpts:
            hp = [p for p in hpts if p.engine == eng]
            held = cal.errors(hp, [cal.predict_point(p, params) for p in hp])
            how = "holdout records"
        else:
            cv = cal.cross_validate(ep)
            held = cal.errors([a for a, _ in cv], [b for _, b in cv])
            how = "leave-one-configuration-out"
        report["engines"][eng] = {"params": params.to_dict(), "train": train, "heldout": held, "heldout_kind": how,
                                  "n_points": len(ep)}
    saved = []
    if not no_save:
        ids = [machine] if machine else sorted({machine_id(p.cluster) for p in pts})
        for mid in ids:
            saved.append(str(save_calibration(mid, fitted, {"report": report})))
    report["saved"] = saved
    if fmt == "json":
        click.echo(json.dumps(report, indent=1))
        return
    for eng, r in report["engines"].items():
        p = r["params"]
        click.echo(f"{eng}: fitted on {r['n_points']} measurements")
        click.echo("  " + ", ".join(f"{k}={p[k]:.4g}" for k in cal.FIT_NAMES))
        click.echo(f"  fit error:  {_fmt_err(r['train'])}")
        click.echo(f"  held-out ({r['heldout_kind']}): {_fmt_err(r['heldout'])}")
    ooms = report["oom"]
    bad = [o for o in ooms if o["predicted_feasible"] is not False]
    click.echo(f"out-of-memory runs: {len(ooms)}, predicted infeasible: {len(ooms) - len(bad)}")
    for o in bad:
        click.echo(f"  NOT predicted infeasible: {o['rig']} {o['model']} {o['engine']} {o['config']} "
                   f"{' '.join(o['argv'] or [])} ({o['test']}, predicted feasible={o['predicted_feasible']})")
    for s in saved:
        click.echo(f"saved: {s}")
