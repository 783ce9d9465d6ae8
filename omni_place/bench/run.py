"""Running llama-bench over a matrix of configurations and recording every attempt.

Only the standard library and :mod:`omni_place.errors` are imported here, so the running half
works on a GPU machine that has no compiled omni_place core: the matrix (:mod:`.matrix`) carries
each engine's full common argv, and results are appended to ``records.jsonl`` as they arrive.
A failed run (out of memory at load or at context creation, or any other non-zero exit) is
recorded with its status and the tail of its log, never dropped.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import EngineError

SCHEMA = "omni_place.bench/1"
CONFIG_ORDER = ("default", "fit", "ot-exps", "ncmoe", "ngl", "omni_place")
OK = "ok"
OOM_LOAD = "oom_load"
OOM_CONTEXT = "oom_context"
FAILED = "error"


@dataclass
class Attempt:
    """One llama-bench invocation: placement flags and omni_place's prediction for them."""

    argv: list[str]
    predicted: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES for a device order


@dataclass
class BenchConfig:
    """A configuration of one engine; ``attempts`` are tried in order until one runs (only the
    hand-tuned recipes have more than one)."""

    engine: str
    name: str
    attempts: list[Attempt]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchConfig:
        return cls(d["engine"], d["name"], [Attempt(**a) for a in d["attempts"]], d.get("note", ""))


def parse_output(text: str) -> list[dict[str, Any]]:
    """llama-bench records from ``-o jsonl`` (mainline) or ``-o json`` (ik, a pretty-printed
    array that a crash may leave unterminated): every complete top-level JSON object."""
    out: list[dict[str, Any]] = []
    dec = json.JSONDecoder()
    i, n = 0, len(text)
    while i < n:
        j = text.find("{", i)
        if j < 0:
            break
        try:
            obj, end = dec.raw_decode(text, j)
        except json.JSONDecodeError:
            i = j + 1
            continue
        if isinstance(obj, dict) and ("avg_ts" in obj or "avg_ns" in obj):
            out.append(obj)
        i = end
    return out


# An allocation that failed while loading (a load that failed for any other reason, e.g. a
# tensor the architecture needs is missing, is an ``error``).
_OOM_LOAD = re.compile(r"unable to allocate .*buffer|failed to allocate .*buffer for|cudaMalloc failed: out of memory",
                       re.IGNORECASE)
_OOM_CTX = re.compile(r"failed to create context|failed to allocate compute|failed to initialize the context|"
                      r"llama_init_from_model: failed|failed to reserve", re.IGNORECASE)


def classify_failure(rc: int, log: str) -> str:
    """``oom_load`` / ``oom_context`` / ``error`` for a failed run, from its exit code and log."""
    if rc == 0:
        return OK
    ctx_hit = _OOM_CTX.search(log)
    load_hit = _OOM_LOAD.search(log)
    if load_hit and (not ctx_hit or load_hit.start() < ctx_hit.start()):
        return OOM_LOAD
    if ctx_hit:
        return OOM_CONTEXT
    if re.search(r"out of memory", log, re.IGNORECASE):
        return OOM_LOAD
    return FAILED


def test_name(rec: dict[str, Any]) -> str:
    if rec.get("test"):
        return str(rec["test"])
    n_p, n_g = int(rec.get("n_prompt", 0)), int(rec.get("n_gen", 0))
    if n_p and n_g:
        return f"pp{n_p}+tg{n_g}"
    return f"pp{n_p}" if n_p else f"tg{n_g}"


def _log_tail(log: str, n: int = 12) -> list[str]:
    lines = [ln for ln in log.splitlines() if ln.strip()]
    keep = [ln for ln in lines if re.search(r"error|fail|out of memory|alloc", ln, re.IGNORECASE)]
    return (keep[-n:] if keep else lines[-n:])


def run_attempt(exe: str, argv: Sequence[str], log_path: Path | None, *, timeout: float = 900,
                env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """Run llama-bench; returns (exit code, stdout, stderr, seconds)."""
    t0 = time.time()
    try:
        proc = subprocess.run([exe, *argv], check=False, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, errors="replace")
        rc, so, se = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        rc = 124
        so = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        se = ((err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or ""))
              + "\n[timeout]")
    except OSError as err:
        raise EngineError(f"cannot run {exe}: {err}", hint="pass the path of a built llama-bench") from None
    dt = time.time() - t0
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"$ {shlex.join([exe, *argv])}\n# rc={rc} seconds={dt:.1f}\n{se}\n# stdout\n{so}")
    return rc, so, se, dt


def expected_tests(n_prompt: int, n_gen: int) -> list[str]:
    return ([f"pp{n_prompt}"] if n_prompt else []) + ([f"tg{n_gen}"] if n_gen else [])


@dataclass
class Progress:
    """Progress lines on a stream: ``[3/10] llama.cpp fit ... 12.3 s, ok``."""

    total: int
    stream: TextIO | None = sys.stderr
    done: int = 0
    t0: float = field(default_factory=time.time)

    def start(self, label: str) -> None:
        if self.stream is not None:
            el = time.time() - self.t0
            print(f"[{self.done + 1}/{self.total}] {label} (elapsed {el:.0f} s)", file=self.stream, flush=True)

    def end(self, label: str, status: str, seconds: float, summary: str = "") -> None:
        self.done += 1
        if self.stream is not None:
            print(f"      {label}: {status} in {seconds:.1f} s {summary}", file=self.stream, flush=True)


def run_config(cfg: BenchConfig, exe: str, common: Sequence[str], *, tests: Sequence[str],
               log_dir: Path | None = None, meta: dict[str, Any] | None = None,
               progress: Progress | None = None, timeout: float = 900,
               env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run a configuration's attempts until one succeeds; every attempt's records are returned."""
    records: list[dict[str, Any]] = []
    for k, att in enumerate(cfg.attempts):
        label = f"{cfg.engine} {cfg.name}" + (f" #{k + 1} {shlex.join(att.argv)}" if len(cfg.attempts) > 1 else "")
        if progress:
            progress.start(label)
        argv = list(common) + list(att.argv)
        log_path = (log_dir / f"{cfg.engine}.{cfg.name}.{k}.log") if log_dir else None
        run_env = {**(env or {}), **att.env}
        rc, so, se, dt = run_attempt(exe, argv, log_path, timeout=timeout, env=run_env)
        found = parse_output(so)
        status = OK if rc == 0 and found else classify_failure(rc if rc else 1, se + so)
        base = {"schema": SCHEMA, **(meta or {}), "engine": cfg.engine, "config": cfg.name, "attempt": k,
                "argv": list(att.argv), "env": run_env,
                "command": " ".join([*(f"{k}={v}" for k, v in run_env.items()),
                                     shlex.join([os.path.basename(exe), *argv])]),
                "predicted": att.predicted, "seconds": round(dt, 1), "log": log_path.name if log_path else None}
        got = {test_name(r): r for r in found}
        for t in tests:
            rec = dict(base, test=t)
            if t in got:
                r = got[t]
                rec.update(status=OK, avg_ts=r.get("avg_ts"), stddev_ts=r.get("stddev_ts"),
                           samples_ts=r.get("samples_ts"), engine_record=r)
            else:
                rec.update(status=status if status != OK else FAILED, avg_ts=None, stddev_ts=None,
                           error=_log_tail(se + so))
            records.append(rec)
        if progress:
            summ = ", ".join(f"{t} {got[t].get('avg_ts', 0):.1f}" for t in tests if t in got)
            progress.end(label, status, dt, summ)
        if status == OK:
            break
    return records


def run_matrix(matrix: dict[str, Any], binaries: dict[str, str], out_dir: Path, *,
               progress_stream: TextIO | None = sys.stderr, timeout: float = 900,
               env: dict[str, str] | None = None, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Run every configuration of a matrix (``build_matrix``'s JSON) for the engines given in
    ``binaries``; appends each record to ``out_dir/records.jsonl`` as soon as it exists."""
    out_dir.mkdir(parents=True, exist_ok=True)
    only_set = set(only) if only else None
    todo = [(BenchConfig.from_dict(c)) for c in matrix["configs"]
            if c["engine"] in binaries and (only_set is None or c["name"] in only_set)]
    prog = Progress(sum(len(c.attempts) for c in todo), progress_stream)
    out: list[dict[str, Any]] = []
    meta: dict[str, Any] = {k: matrix[k]
                            for k in ("model", "model_file", "cluster", "rig", "n_prompt", "n_gen", "ubatch", "threads")
                            if k in matrix}
    with open(out_dir / "records.jsonl", "a") as fh:
        for cfg in todo:
            recs = run_config(cfg, binaries[cfg.engine], matrix["common"][cfg.engine],
                              tests=expected_tests(matrix["n_prompt"], matrix["n_gen"]),
                              log_dir=out_dir / "logs", meta=meta, progress=prog, timeout=timeout, env=env)
            fh.writelines(json.dumps(r) + "\n" for r in recs)
            fh.flush()
            out += recs
    return out
