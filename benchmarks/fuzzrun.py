"""Shared machinery of the fuzz drivers (fuzz_gguf, fuzz_boundaries): per-case alarm, worker
progress files, and a pool of worker processes that records crashes and hangs and resumes."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class CaseTimeout(BaseException):
    """Raised by SIGALRM when a case runs past its limit."""


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def rss_kib() -> int:
    """This process's peak RSS in KiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def start_worker(prefix: str, tmp: str | None, progress: str) -> tuple[Path, int]:
    """Install the alarm handler; return a fresh work dir and the progress file's descriptor."""
    signal.signal(signal.SIGALRM, _alarm)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
    return work, os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def mark(progress: int, case: int) -> None:
    """Record the case a worker is on (read by the pool to locate crashes and hangs)."""
    os.pwrite(progress, f"{case:>12}\n".encode(), 0)


def tally(into: dict[str, int], items: dict[str, int]) -> None:
    """Add counts ``items`` into ``into``."""
    for k, v in items.items():
        into[k] = into.get(k, 0) + v


def run_pool(module: str, extra: list[str], cases: int, workers: int, timeout: float, prefix: str,
             tmp: str | None, label: str = "") -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """Run ``python -m module --worker`` over cases split across ``workers`` processes.

    A worker that dies or goes silent is recorded as a crash or hang at its current case and
    restarted after it. Returns (worker result dicts, crash/hang records, wall seconds)."""
    run_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))
    per = -(-cases // workers)
    slots = [{"pending": [(s, min(per, cases - s))], "results": []} for s in range(0, cases, per)]
    crashes: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def launch(slot: dict[str, Any]) -> None:
        s, n = slot["pending"].pop(0)
        prog, out = run_dir / f"progress-{s}", run_dir / f"out-{s}.json"
        cmd = [sys.executable, "-m", module, "--worker", *extra, "--start", str(s), "--count", str(n),
               "--timeout", str(timeout), "--progress", str(prog), "--out", str(out), "--tmp", str(run_dir)]
        slot.update(proc=subprocess.Popen(cmd, cwd=ROOT), cur=(s, n, prog, out), last=(time.monotonic(), None))

    for slot in slots:
        launch(slot)
    while any("proc" in slot for slot in slots):
        time.sleep(0.5)
        for slot in slots:
            if "proc" not in slot:
                continue
            s, n, prog, out = slot["cur"]
            rc = slot["proc"].poll()
            try:
                at: int | None = int(prog.read_text().strip() or -1)
            except (OSError, ValueError):
                at = None
            if rc is None:
                if at != slot["last"][1]:
                    slot["last"] = (time.monotonic(), at)
                    continue
                if at is None or time.monotonic() - slot["last"][0] < max(20.0, 4 * timeout):
                    continue
                slot["proc"].kill()  # silent for too long: a hang the alarm could not break
                slot["proc"].wait()
                crashes.append({"case": at, "outcome": "hang", "detail": "worker silent; killed"})
                rc = "hang"
            if rc == 0:
                slot["results"].append(json.loads(out.read_text()))
            else:
                if at is None or at < s:
                    raise SystemExit(f"{label}worker for cases {s}..{s + n - 1} failed before its first case"
                                     f" (exit {rc})")
                if rc != "hang":
                    crashes.append({"case": at, "outcome": "crash", "detail": f"worker exited with {rc}"})
                if at + 1 < s + n:  # resume after the case that killed the worker
                    slot["pending"].insert(0, (at + 1, s + n - at - 1))
            del slot["proc"]
            if slot["pending"]:
                launch(slot)
    wall = time.perf_counter() - t0
    shutil.rmtree(run_dir, ignore_errors=True)
    return [r for slot in slots for r in slot["results"]], crashes, wall


def merge(parts: list[dict[str, Any]], crashes: list[dict[str, Any]]
          ) -> tuple[dict[str, int], dict[str, int], list[dict[str, Any]], int]:
    """(outcome counts, mutation counts, failures, number of cases) over the workers' results."""
    counts: dict[str, int] = {}
    ops: dict[str, int] = {}
    failures = list(crashes)
    for r in parts:
        tally(counts, r["counts"])
        tally(ops, r["ops"])
        failures += r["failures"]
    return counts, ops, failures, sum(counts.values()) + len(crashes)
