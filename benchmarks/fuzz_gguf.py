"""Fuzz the GGUF reader with structured mutations of real headers, at scale.

The seeds and mutations are ``tests/gguf_fuzz.py`` (shared with tests/test_fuzz_gguf.py, which
runs them under hypothesis): real headers from the project's writers, each case mutated 1-3 times
in ways that know the GGUF layout (hyper-parameter values included). This driver writes every
case's files and runs ``read_model_files``, ``load_model`` and ``plan_split`` on them, in
``--workers`` processes.

Outcomes: ``ok`` (parsed, profiled and planned on the seed preset), ``error`` (an OmniPlaceError
with a one-line message and exit code 2, or 3 when nothing fits), ``crash`` (any other
exception, or a worker killed by a signal), ``hang`` (a case over ``--timeout`` seconds; a
worker silent for 4x that long is killed). Peak RSS is each worker's ``ru_maxrss``;
``rss_growth`` is the largest growth over its RSS after warm-up.
Every 97th case also goes through ``omni-place inspect`` in-process (exit code and the
``error:``/``hint:`` lines). Case ``i`` of ``--seed s`` is reproducible: ``--replay i``.

From the repository root (it imports the tests' fuzzer, ``tests.gguf_fuzz``):

    python -m benchmarks.fuzz_gguf --cases 100000 --workers 2      # writes results/fuzz_gguf.*
    python -m benchmarks.fuzz_gguf --replay 1234                     # one case, with traceback
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.fuzzrun import CaseTimeout, mark, merge, rss_kib, run_pool, start_worker
from omni_place import __version__
from omni_place.errors import NothingFitsError, OmniPlaceError
from omni_place.gguf import read_model_files
from omni_place.model import load_model
from omni_place.plan import plan_split
from tests.gguf_fuzz import make_case, make_seeds, write_case

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------------


def run_case(path: Path, timeout: float, cli: bool) -> tuple[str, str]:
    """(outcome, detail) where outcome is ok / error:<Class> / crash / hang / bad_error."""
    signal.setitimer(signal.ITIMER_REAL, timeout)
    loaded = False  # whether the header read and profiled (what `inspect` does)
    try:
        try:
            files = read_model_files(path)
            profile = load_model(path)
            loaded = True
            plan = plan_split(profile, "seed")  # every value the reader let through is usable
            json.loads(plan.to_json())
            outcome, detail = "ok", f"{len(files.tensors)} tensors"
        except OmniPlaceError as err:
            msg = err.message
            if "\n" in msg or not msg or "\n" in (err.hint or "") or len(msg) > 1000:
                return "bad_error", f"{type(err).__name__}: multi-line, empty or over-long message: {msg[:300]!r}"
            if err.exit_code != (3 if isinstance(err, NothingFitsError) else 2):
                return "bad_error", f"{type(err).__name__}: exit code {err.exit_code}"
            outcome, detail = f"error:{type(err).__name__}", msg
        except CaseTimeout:
            return "hang", "over the per-case timeout"
        except Exception as err:  # noqa: BLE001 - that is what we are looking for
            tb = traceback.extract_tb(err.__traceback__)[-1]
            return "crash", f"{type(err).__name__}: {err} at {Path(tb.filename).name}:{tb.lineno}"
        if cli:
            from omni_place.cli import main

            out, errout = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errout):
                try:
                    code = main(["inspect", str(path), "--format", "json"])
                except CaseTimeout:
                    return "hang", "inspect over the per-case timeout"
                except BaseException as err:  # noqa: BLE001
                    return "crash", f"inspect raised {type(err).__name__}: {err}"
            lines = errout.getvalue().splitlines()
            if loaded:
                if code != 0:
                    return "bad_error", f"inspect exit {code} on a model that loads: {lines[:1]}"
            elif not (code == 2 or (code == 3)) or not lines or not lines[0].startswith("error: ") \
                    or len(lines) > 2 or (len(lines) == 2 and not lines[1].startswith("hint: ")):
                return "bad_error", f"inspect exit {code}, stderr {errout.getvalue()!r}"
        return outcome, detail
    except CaseTimeout:
        return "hang", "over the per-case timeout"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def worker(args: argparse.Namespace) -> None:
    """Run cases [start, start+count), write JSON lines of failures and a summary to --out."""
    work, progress = start_worker("fuzzw-", args.tmp, args.progress)
    seeds = make_seeds(work)
    casedir = work / "case"
    casedir.mkdir()
    counts: dict[str, int] = {}
    ops_seen: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    slowest = (0.0, -1)
    # warm up (imports, first parse of each seed) before taking the RSS baseline
    for s in seeds:
        write_case(casedir, [bytearray(b) for b in s.files])
        run_case(next(casedir.glob("*-00001-of-*.gguf"), casedir / "m.gguf"), args.timeout, True)
    base_rss = rss_kib()
    max_growth = (0, -1)
    t0 = time.perf_counter()
    for case in range(args.start, args.start + args.count):
        mark(progress, case)
        name, files, ops = make_case(seeds, args.seed, case)
        for op in ops:
            k = op.split(":")[0] if not op.startswith("field") else op
            ops_seen[k] = ops_seen.get(k, 0) + 1
        path = write_case(casedir, files)
        t = time.perf_counter()
        outcome, detail = run_case(path, args.timeout, case % 97 == 0)
        dt = time.perf_counter() - t
        if dt > slowest[0]:
            slowest = (dt, case)
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome in ("crash", "hang", "bad_error"):
            failures.append({"case": case, "outcome": outcome, "seed": name, "ops": ops, "detail": detail[:400]})
        rss = rss_kib()
        if rss - base_rss > max_growth[0]:
            max_growth = (rss - base_rss, case)
    wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    with open(args.out, "w") as fh:
        json.dump({"start": args.start, "count": args.count, "counts": counts, "ops": ops_seen,
                   "failures": failures, "base_rss_kib": base_rss, "peak_rss_kib": rss_kib(),
                   "max_rss_growth_kib": max_growth[0], "max_rss_growth_case": max_growth[1],
                   "slowest_case_s": slowest[0], "slowest_case": slowest[1], "wall_s": wall}, fh)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def drive(args: argparse.Namespace) -> dict[str, Any]:
    tmp = args.tmp or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
    parts, crashes, wall = run_pool("benchmarks.fuzz_gguf", ["--seed", str(args.seed)], args.cases, args.workers,
                                    args.timeout, "fuzz-gguf-", tmp)
    counts, ops, failures, n_cases = merge(parts, crashes)
    return {
        "benchmark": "fuzz_gguf",
        "command": " ".join(["python", "-m", "benchmarks.fuzz_gguf", *sys.argv[1:]]),
        "omni_place": __version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "seed": args.seed,
        "cases": n_cases,
        "workers": args.workers,
        "per_case_timeout_s": args.timeout,
        "crashes": sum(1 for f in failures if f["outcome"] == "crash"),
        "hangs": sum(1 for f in failures if f["outcome"] == "hang"),
        "bad_errors": sum(1 for f in failures if f["outcome"] == "bad_error"),
        "outcomes": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "mutations": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "peak_rss_mib": max((r["peak_rss_kib"] for r in parts), default=0) / 1024,
        "baseline_rss_mib": max((r["base_rss_kib"] for r in parts), default=0) / 1024,
        "max_rss_growth_mib": max((r["max_rss_growth_kib"] for r in parts), default=0) / 1024,
        "slowest_case_ms": max((r["slowest_case_s"] for r in parts), default=0) * 1e3,
        "wall_s": wall,
        "cases_per_s": n_cases / wall if wall else 0.0,
        "failures": failures[:200],
    }


def table(rec: dict[str, Any]) -> str:
    rows = [("cases", f"{rec['cases']:,}"), ("crashes", rec["crashes"]), ("hangs", rec["hangs"]),
            ("errors not one line / wrong exit code", rec["bad_errors"]),
            ("peak RSS per worker", f"{rec['peak_rss_mib']:.0f} MiB (after warm-up {rec['baseline_rss_mib']:.0f} MiB, "
                                    f"largest growth {rec['max_rss_growth_mib']:.1f} MiB)"),
            ("slowest case", f"{rec['slowest_case_ms']:.1f} ms (timeout {rec['per_case_timeout_s']} s)"),
            ("wall time", f"{rec['wall_s']:.0f} s on {rec['workers']} workers ({rec['cases_per_s']:.0f} cases/s)")]
    out = ["# GGUF reader fuzz", "", f"`{rec['command']}` — omni_place {rec['omni_place']}, Python {rec['python']}, "
           f"{rec['machine']}", "", "| measure | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    out += ["", "| outcome | cases |", "|---|---|"] + [f"| {k} | {v:,} |" for k, v in rec["outcomes"].items()]
    out += ["", "Mutations applied (a case stacks 1-3): "
            + ", ".join(f"{k} {v:,}" for k, v in rec["mutations"].items())]
    if rec["failures"]:
        out += ["", "## Failures (first 20)", ""] + [
            f"- case {f['case']} ({f['outcome']}): {f.get('seed', '')} {f.get('ops', '')} {f['detail']}"
            for f in rec["failures"][:20]]
    return "\n".join(out) + "\n"


def replay(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        seeds = make_seeds(Path(d))
        name, files, ops = make_case(seeds, args.seed, args.replay)
        casedir = Path(d) / "case"
        casedir.mkdir()
        path = write_case(casedir, files)
        print(f"case {args.replay}: seed {name}, mutations {ops}, files {[p.name for p in casedir.iterdir()]}")
        try:
            read_model_files(path)
            print(plan_split(load_model(path), "seed").to_json()[:400])
        except OmniPlaceError as err:
            print(f"{type(err).__name__} (exit {err.exit_code}): {err.message}\n  hint: {err.hint}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=2.0, help="per-case limit in seconds")
    ap.add_argument("--replay", type=int, help="run one case in-process and print its outcome")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--progress", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.replay is not None:
        replay(args)
        return 0
    rec = drive(args)
    text = table(rec)
    print(text)
    if not args.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "fuzz_gguf.json").write_text(json.dumps(rec, indent=1) + "\n")
        (OUT / "fuzz_gguf.md").write_text(text)
    return 1 if rec["crashes"] or rec["hangs"] or rec["bad_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
