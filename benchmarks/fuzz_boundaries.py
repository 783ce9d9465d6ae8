"""Fuzz the data boundaries past the GGUF reader at scale: cluster TOML, plan JSON, bench records,
the Python API and engine command lines (``evaluate()``, and ``check -- ARGS`` every ~97th case),
with the structured mutations of ``tests/boundary_fuzz.py`` (shared with
tests/test_fuzz_boundaries.py, which runs them under hypothesis in CI).

Each target runs in ``--workers`` processes. Outcomes per case: ``ok``, ``error:<Class>`` (an
OmniPlaceError: one line, exit code 2, or 3 where a plan is made), ``long_message`` (such an
error over 2,000 characters), ``crash`` (any other exception, or a worker killed by a signal),
``bad_error`` (a multi-line message or another exit code), ``hang`` (over ``--timeout``
seconds; a worker silent for 4x that is killed) and ``rss`` (a worker whose peak RSS passed
``--rss-mib``). Case ``i`` of ``--seed s`` is reproducible with ``--replay TARGET:i``.

From the repository root:

    python -m benchmarks.fuzz_boundaries                        # cluster 100k, plan/records/flags 20k, api 5k
    python -m benchmarks.fuzz_boundaries --target plan --cases 2000 --no-write
    python -m benchmarks.fuzz_boundaries --replay plan:1234     # one case, with its traceback
"""
from __future__ import annotations

import argparse
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

from omni_place import __version__
from benchmarks.fuzzrun import CaseTimeout, mark, merge, rss_kib, run_pool, start_worker
from tests.boundary_fuzz import TARGETS, execute, make_case, make_seeds, run_case

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results"
DEFAULT_CASES = {"cluster": 100_000, "plan": 20_000, "records": 20_000, "api": 5_000, "flags": 20_000}
FAILURES = ("crash", "hang", "bad_error", "rss")


def _rss_mib() -> float:
    return rss_kib() / 1024


def worker(args: argparse.Namespace) -> None:
    """Run cases [start, start+count) of one target; write counts and failures to --out."""
    work, progress = start_worker("fuzzb-", args.tmp, args.progress)
    seeds = make_seeds(work / "seeds")
    casedir = work / "case"
    casedir.mkdir()
    counts: dict[str, int] = {}
    ops: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    slowest = (0.0, -1)
    base_rss = _rss_mib()
    rss_flagged = False
    t0 = time.perf_counter()
    for case in range(args.start, args.start + args.count):
        mark(progress, case)
        c = make_case(seeds, args.target, args.seed, case)
        for op in c.ops:
            ops[op] = ops.get(op, 0) + 1
        t = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            outcome, detail = run_case(seeds, c, casedir)
        except CaseTimeout:
            outcome, detail = "hang", f"over {args.timeout} s"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for p in casedir.iterdir():
            p.unlink()
        dt = time.perf_counter() - t
        if dt > slowest[0]:
            slowest = (dt, case)
        if _rss_mib() > args.rss_mib and not rss_flagged:
            rss_flagged = True
            failures.append({"case": case, "outcome": "rss", "ops": c.ops, "detail": f"peak RSS {_rss_mib():.0f} MiB"})
        key = outcome.split(":")[0] if outcome.startswith("error:") else outcome
        counts[outcome] = counts.get(outcome, 0) + 1
        if key in FAILURES or key == "long_message":
            failures.append({"case": case, "outcome": key, "ops": c.ops, "detail": detail[:400]})
    wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    with open(args.out, "w") as fh:
        json.dump({"counts": counts, "ops": ops, "failures": failures, "base_rss_mib": base_rss,
                   "peak_rss_mib": _rss_mib(), "slowest_case_s": slowest[0], "slowest_case": slowest[1],
                   "wall_s": wall}, fh)


def drive(target: str, cases: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one target's cases over --workers processes; a worker that dies or goes silent is
    recorded as a crash or hang at its current case and restarted after it."""
    extra = ["--target", target, "--seed", str(args.seed), "--rss-mib", str(args.rss_mib)]
    parts, crashes, wall = run_pool("benchmarks.fuzz_boundaries", extra, cases, args.workers, args.timeout,
                                    f"fuzz-{target}-", args.tmp, f"{target} ")
    counts, ops, failures, n_cases = merge(parts, crashes)
    return {
        "target": target, "cases": n_cases,
        **{k + "s" if k != "rss" else "rss_over_limit": sum(1 for f in failures if f["outcome"] == k)
           for k in FAILURES},
        "long_messages": counts.get("long_message", 0),
        "outcomes": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "mutations": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "peak_rss_mib": max((r["peak_rss_mib"] for r in parts), default=0.0),
        "slowest_case_ms": max((r["slowest_case_s"] for r in parts), default=0.0) * 1e3,
        "wall_s": wall, "cases_per_s": n_cases / wall if wall else 0.0,
        "failures": [f for f in failures if f["outcome"] != "long_message"][:100],
        "long_message_examples": [f for f in failures if f["outcome"] == "long_message"][:10],
    }


def table(rec: dict[str, Any]) -> str:
    out = ["# Boundary fuzz: cluster TOML, plan JSON, bench records, API calls, engine flags", "",
           f"`{rec['command']}` — omni_place {rec['omni_place']}, Python {rec['python']}, {rec['machine']}, "
           f"seed {rec['seed']}, {rec['workers']} workers, per-case limit {rec['per_case_timeout_s']} s, "
           f"RSS limit {rec['rss_limit_mib']} MiB", "",
           "| target | cases | tracebacks | hangs | RSS over limit | wrong exit code / multi-line | "
           "messages over 2,000 chars | peak RSS | slowest case | wall |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in rec["targets"]:
        out.append(f"| {t['target']} | {t['cases']:,} | {t['crashs']} | {t['hangs']} | {t['rss_over_limit']} | "
                   f"{t['bad_errors']} | {t['long_messages']} | {t['peak_rss_mib']:.0f} MiB | "
                   f"{t['slowest_case_ms']:.0f} ms | {t['wall_s']:.0f} s |")
    earlier = [t for t in rec["targets"] if t.get("command", rec["command"]) != rec["command"]]
    if earlier:
        out += ["", "Carried over from earlier runs: " + "; ".join(f"{t['target']} (`{t['command']}`)"
                                                                  for t in earlier)]
    for t in rec["targets"]:
        out += ["", f"## {t['target']}", "", "| outcome | cases |", "|---|---:|"]
        out += [f"| {k} | {v:,} |" for k, v in t["outcomes"].items()]
        out += ["", "Mutations (a case stacks 1-3): " + ", ".join(f"{k} {v:,}" for k, v in t["mutations"].items())]
        for f in t["failures"][:10] + t["long_message_examples"][:3]:
            out.append(f"- case {f['case']} ({f['outcome']}): {f.get('ops', '')} {f['detail'][:240]}")
    return "\n".join(out) + "\n"


def _keep_earlier(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's targets plus, from the results file, those it did not run (with the command
    that ran them), so a run of one target does not drop the others' numbers."""
    path = OUT / "fuzz_boundaries.json"
    try:
        old = json.loads(path.read_text())
        earlier = {t["target"]: {"command": old.get("command", ""), **t} for t in old["targets"]}
    except (OSError, ValueError, KeyError, TypeError):
        earlier = {}
    earlier.update({t["target"]: t for t in results})
    return [earlier[t] for t in TARGETS if t in earlier]


def replay(spec: str, seed: int) -> None:
    target, _, case = spec.partition(":")
    with tempfile.TemporaryDirectory() as d:
        seeds = make_seeds(Path(d) / "seeds")
        c = make_case(seeds, target, seed, int(case))
        casedir = Path(d) / "case"
        casedir.mkdir()
        print(f"{target} case {case}: mutations {c.ops}; call {c.call}")
        for name, data in c.files.items():
            print(f"--- {name} ({len(data)} bytes): {data[:600]!r}")
        try:
            execute(seeds, c, casedir)
            print("ok")
        except Exception:  # noqa: BLE001 - shown in full
            traceback.print_exc()
        print(run_case(seeds, c, casedir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=TARGETS, action="append", help="(repeatable) default: all five")
    ap.add_argument("--cases", type=int, help="cases per target (default: cluster 100k, plan/records/flags 20k, "
                                                       "api 5k)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--timeout", type=float, default=5.0, help="per-case limit in seconds")
    ap.add_argument("--rss-mib", type=float, default=512.0, help="peak RSS limit per worker")
    ap.add_argument("--replay", help="TARGET:CASE: run one case in-process and print it")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    for hidden in ("--start", "--count"):
        ap.add_argument(hidden, type=int, default=0, help=argparse.SUPPRESS)
    for hidden in ("--progress", "--out", "--tmp"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.target = args.target[0]
        worker(args)
        return 0
    if args.replay:
        replay(args.replay, args.seed)
        return 0
    args.tmp = args.tmp or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    results = [drive(t, args.cases or DEFAULT_CASES[t], args) for t in (args.target or TARGETS)]
    command = " ".join(["python -m benchmarks.fuzz_boundaries", *sys.argv[1:]])
    for t in results:
        t["command"] = command
    if not args.no_write:
        results = _keep_earlier(results)
    rec = {"benchmark": "fuzz_boundaries", "command": command,
           "omni_place": __version__, "python": platform.python_version(),
           "machine": f"{platform.machine()} {os.cpu_count()} cpus", "seed": args.seed, "workers": args.workers,
           "per_case_timeout_s": args.timeout, "rss_limit_mib": args.rss_mib, "targets": results}
    text = table(rec)
    print(text)
    if not args.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "fuzz_boundaries.json").write_text(json.dumps(rec, indent=1) + "\n")
        (OUT / "fuzz_boundaries.md").write_text(text)
    bad = sum(t["crashs"] + t["hangs"] + t["bad_errors"] + t["rss_over_limit"] for t in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
