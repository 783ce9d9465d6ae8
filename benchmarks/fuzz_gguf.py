"""Fuzz the GGUF reader with structured mutations of real headers (issue 8).

Seeds are headers written by the project's own writers (``reference_models.write_header_only``,
``tests/arch_models.write_model``): small and DeepSeek-sized llamas, a 5000-token vocabulary (the
C skip path), every test architecture, and 3-way split models. Each case applies 1-3 mutations
that know the GGUF layout (absurd lengths and counts, wrong magic/version/types/alignment,
truncation at field boundaries, duplicated or dropped KVs and tensor infos, bit flips, inserted
bytes, shard swaps, deletions and cross-shard duplicates), writes the files and runs
``read_model_files`` and then ``load_model`` on them.

Outcomes: ``ok`` (parsed and profiled), ``error`` (an OmniPlaceError with a one-line message and
exit code 2 for reader errors), ``crash`` (any other exception, or a worker killed by a signal),
``hang`` (a case over ``--timeout`` seconds; a worker silent for 4x that long is killed). Peak RSS
is each worker's ``ru_maxrss``; ``rss_growth`` is the largest growth over its RSS after warm-up.
Every 97th case also goes through ``omni-place inspect`` in-process (exit code and the
``error:``/``hint:`` lines). Case ``i`` of ``--seed s`` is reproducible: ``--replay i``.

    python benchmarks/fuzz_gguf.py --cases 100000 --workers 2      # writes results/fuzz_gguf.*
    python benchmarks/fuzz_gguf.py --replay 1234                     # one case, with traceback

Needs nothing but the package and tests/arch_models.py (it imports the tests' writer).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))  # arch_models (the tests' writer)
if importlib.util.find_spec("omni_place") is None:  # a plain checkout, not installed
    sys.path.insert(0, str(ROOT))


from omni_place import __version__  # noqa: E402
from omni_place.errors import GGUFFormatError, MissingShardError, OmniPlaceError  # noqa: E402
from omni_place.gguf import read_model_files  # noqa: E402
from omni_place.model import load_model  # noqa: E402
from omni_place.reference_models import deepseek_v3, write_header_only  # noqa: E402
from ggufs import tiny_llama_spec as small_spec  # noqa: E402

READER_ERRORS = (GGUFFormatError, MissingShardError)

# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------




@dataclass
class Seed:
    name: str
    files: list[bytes]  # one per shard, in shard order
    weight: float


def make_seeds(workdir: Path, *, archs: bool = True) -> list[Seed]:
    """Real headers from the project's writers (deterministic)."""
    d = workdir / "seeds"
    d.mkdir(parents=True, exist_ok=True)
    seeds: list[Seed] = []

    def add(name: str, paths: list[Path], weight: float) -> None:
        seeds.append(Seed(name, [p.read_bytes() for p in paths], weight))

    add("llama-tiny", write_header_only(small_spec(), d / "tiny.gguf"), 4.0)
    add("llama-vocab5000", write_header_only(small_spec(5000), d / "vocab.gguf", with_vocab=True), 1.0)
    add("llama-split3", write_header_only(small_spec(), d / "split.gguf", shards=3), 2.0)
    add("deepseek-v3", write_header_only(deepseek_v3(), d / "ds.gguf"), 0.5)
    if archs:
        from arch_models import ARCHS, shard_paths, write_model

        for arch in ARCHS:
            p = write_model(d / f"{arch}.gguf", arch, header_only=True)
            add(f"arch-{arch}", [p], 0.5)
        p = write_model(d / "qwen3moe-split.gguf", "qwen3moe", header_only=True, split=2)
        add("arch-qwen3moe-split2", shard_paths(p.with_name("qwen3moe-split.gguf"), 2), 0.5)
    return seeds


# ---------------------------------------------------------------------------------------------
# GGUF field map of a valid header (where each length, count, type and name lies)
# ---------------------------------------------------------------------------------------------

_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@dataclass
class Field:
    kind: str  # magic version count_t count_kv len u32type ndims dim ggml_type offset value
    off: int
    size: int


@dataclass
class Layout:
    fields: list[Field]
    kvs: list[tuple[int, int, str]]  # (start, end, key)
    tensors: list[tuple[int, int]]  # (start, end) of each tensor info
    end: int  # end of the tensor infos


def layout(data: bytes) -> Layout:
    f: list[Field] = [Field("magic", 0, 4), Field("version", 4, 4), Field("count_t", 8, 8), Field("count_kv", 16, 8)]
    n_t, n_kv = struct.unpack_from("<QQ", data, 8)
    if (n_t + n_kv) * 8 > len(data):
        raise ValueError("counts too large")
    pos = 24
    kvs, tensors = [], []

    def check() -> None:
        if pos > len(data):
            raise ValueError("past the end")

    def u32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<I", data, pos)
        pos += 4
        return v

    def u64() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        return v

    def string(record: bool = True) -> str:
        nonlocal pos
        if record:
            f.append(Field("len", pos, 8))
        n = u64()
        s = data[pos:pos + n].decode("utf-8", "replace")
        pos += n
        check()
        return s

    for _ in range(n_kv):
        start = pos
        key = string()
        f.append(Field("u32type", pos, 4))
        vt = u32()
        if vt in _SCALAR:
            f.append(Field("value", pos, _SCALAR[vt]))
            pos += _SCALAR[vt]
        elif vt == 8:
            string()
        elif vt == 9:
            f.append(Field("u32type", pos, 4))
            et = u32()
            f.append(Field("len", pos, 8))
            n = u64()
            if et == 8:
                if n * 8 > len(data) - pos:
                    raise ValueError("array too long")
                for i in range(n):
                    string(record=i < 4)
            else:
                if n:
                    f.append(Field("value", pos, _SCALAR[et]))
                pos += n * _SCALAR[et]
        else:
            raise ValueError("unknown type")
        check()
        kvs.append((start, pos, key))
    for _ in range(n_t):
        start = pos
        string()
        f.append(Field("ndims", pos, 4))
        nd = u32()
        if nd > 8:
            raise ValueError("too many dims")
        for _ in range(nd):
            f.append(Field("dim", pos, 8))
            pos += 8
        f.append(Field("ggml_type", pos, 4))
        pos += 4
        f.append(Field("offset", pos, 8))
        pos += 8
        check()
        tensors.append((start, pos))
    return Layout(f, kvs, tensors, pos)


# ---------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------

U64_EDGES = (0, 1, 2, 7, 8, 31, 32, 255, 4096, 4097, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
             (1 << 62), (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
U32_EDGES = (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 15, 16, 30, 31, 39, 40, 255, 1 << 16,
             (1 << 31) - 1, 1 << 31, (1 << 32) - 1)


def _put(buf: bytearray, off: int, size: int, value: int) -> None:
    if off + size <= len(buf):
        buf[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _edge(rnd: random.Random, size: int, near: int) -> int:
    r = rnd.random()
    if r < 0.6:
        return rnd.choice(U64_EDGES if size == 8 else U32_EDGES)
    if r < 0.85:  # near a meaningful size: the remaining bytes, the old value
        return max(0, near + rnd.randint(-9, 9))
    return rnd.getrandbits(8 * size)


def _mutate_one(rnd: random.Random, files: list[bytearray], idx: int) -> str:
    """Apply one mutation to files[idx] (or to the shard set); return its name."""
    buf = files[idx]
    try:
        lay = layout(bytes(buf))
    except (struct.error, ValueError, KeyError, MemoryError, OverflowError):
        lay = None  # already broken by an earlier mutation: fall back to byte-level ones
    ops = ["bitflip", "bytes", "truncate", "insert"]
    if lay is not None:
        ops += ["field"] * 8 + ["truncate_field"] * 2 + ["dup_kv", "dup_tensor", "drop_kv", "drop_tensor",
                                                         "alignment", "magic", "version", "retype_kv",
                                                         "big_count"]
    if len(files) > 1:
        ops += ["swap_shards", "delete_shard", "cross_dup", "copy_shard"]
    op = rnd.choice(ops)
    end = lay.end if lay is not None else len(buf)
    if op == "bitflip":
        for _ in range(rnd.randint(1, 8)):
            if buf:
                i = rnd.randrange(min(len(buf), end + 16))
                buf[i] ^= 1 << rnd.randrange(8)
    elif op == "bytes":
        if buf:
            i = rnd.randrange(min(len(buf), end + 16))
            n = rnd.randint(1, 16)
            buf[i:i + n] = bytes(rnd.getrandbits(8) for _ in range(n))
    elif op == "truncate":
        del buf[rnd.randrange(max(1, min(len(buf), end + 64))):]
    elif op == "insert":
        i = rnd.randrange(max(1, min(len(buf), end)))
        buf[i:i] = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 24)))
    elif op == "field":
        fl = rnd.choice(lay.fields)
        old = int.from_bytes(buf[fl.off:fl.off + fl.size], "little")
        near = len(buf) - fl.off - fl.size if fl.kind == "len" and rnd.random() < 0.5 else old
        _put(buf, fl.off, fl.size, _edge(rnd, 8 if fl.size >= 8 else 4, near) if fl.size in (4, 8)
             else rnd.getrandbits(8 * fl.size))
        op = f"field:{fl.kind}"
    elif op == "truncate_field":
        fl = rnd.choice(lay.fields)
        del buf[fl.off + rnd.randrange(fl.size + 1):]
    elif op in ("dup_kv", "drop_kv") and lay.kvs:
        s, e, _ = rnd.choice(lay.kvs)
        if op == "dup_kv":
            buf[e:e] = buf[s:e]
            if rnd.random() < 0.8:
                _put(buf, 16, 8, int.from_bytes(buf[16:24], "little") + 1)
        else:
            del buf[s:e]
            if rnd.random() < 0.5:
                _put(buf, 16, 8, int.from_bytes(buf[16:24], "little") - 1)
    elif op in ("dup_tensor", "drop_tensor") and lay.tensors:
        s, e = rnd.choice(lay.tensors)
        if op == "dup_tensor":
            buf[e:e] = buf[s:e]
            if rnd.random() < 0.8:
                _put(buf, 8, 8, int.from_bytes(buf[8:16], "little") + 1)
        else:
            del buf[s:e]
            if rnd.random() < 0.5:
                _put(buf, 8, 8, int.from_bytes(buf[8:16], "little") - 1)
    elif op == "alignment":
        key = b"general.alignment"
        vt = rnd.choice([4, 4, 4, 10, 5, 8, 6, 7])
        val = rnd.choice([0, 1, 3, 8, 16, 24, 32, 48, 64, 4096, 1 << 31, (1 << 32) - 1])
        body = {4: struct.pack("<I", val & 0xFFFFFFFF), 5: struct.pack("<i", val & 0x7FFFFFFF),
                10: struct.pack("<Q", val), 8: struct.pack("<Q", 2) + b"32", 6: struct.pack("<f", 32.0),
                7: b"\x01"}[vt]
        kv = struct.pack("<Q", len(key)) + key + struct.pack("<I", vt) + body
        buf[24:24] = kv
        _put(buf, 16, 8, int.from_bytes(buf[16:24], "little") + 1)
        op = f"alignment:{vt}:{val}"
    elif op == "magic":
        buf[0:4] = rnd.choice([b"GGML", b"FUGG", b"\0\0\0\0", b"GGJT", b"gguf", bytes(rnd.getrandbits(8) for _ in range(4))])
    elif op == "version":
        buf[4:8] = struct.pack("<I", rnd.choice([0, 1, 2, 4, 0x03000000, 0x00030000, 0xFFFFFFFF]))
    elif op == "retype_kv" and lay.kvs:
        s, _, _ = rnd.choice(lay.kvs)
        (klen,) = struct.unpack_from("<Q", buf, s)
        _put(buf, s + 8 + klen, 4, rnd.choice(range(0, 14)))
    elif op == "big_count":
        _put(buf, rnd.choice([8, 16]), 8, rnd.choice([len(buf) // 12, len(buf) // 32, len(buf), 1 << 20, 1 << 40]))
    elif op == "swap_shards":
        i, j = rnd.sample(range(len(files)), 2)
        files[i], files[j] = files[j], files[i]
    elif op == "delete_shard":
        files[rnd.randrange(1, len(files))] = bytearray()  # empty = not written
        op = "delete_shard"
    elif op == "cross_dup":
        j = rnd.choice([k for k in range(len(files)) if k != idx])
        try:
            other = layout(bytes(files[j]))
        except (struct.error, ValueError, KeyError, MemoryError, OverflowError):
            return "cross_dup:skip"
        if other.tensors and lay is not None:
            s, e = rnd.choice(other.tensors)
            buf[lay.end:lay.end] = files[j][s:e]
            _put(buf, 8, 8, int.from_bytes(buf[8:16], "little") + 1)
    elif op == "copy_shard":
        j = rnd.choice([k for k in range(len(files)) if k != idx])
        files[j] = bytearray(buf)
    else:
        op += ":skip"
    return op


def make_case(seeds: list[Seed], seed: int, case: int, rnd: random.Random | None = None,
              ) -> tuple[str, list[bytearray], list[str]]:
    """Case `case` of run `seed`: (seed name, shard contents, mutation names). Deterministic;
    pass `rnd` to draw from another source (hypothesis)."""
    rnd = rnd or random.Random(f"{seed}:{case}")
    s = rnd.choices(seeds, weights=[x.weight for x in seeds])[0]
    files = [bytearray(b) for b in s.files]
    ops = []
    for _ in range(rnd.choice([1, 1, 1, 2, 2, 3])):
        idx = rnd.randrange(len(files)) if len(files) > 1 and rnd.random() < 0.5 else 0
        ops.append(_mutate_one(rnd, files, idx))
    return s.name, files, ops


# ---------------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------------


class CaseTimeout(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def write_case(dirpath: Path, files: list[bytearray]) -> Path:
    for p in dirpath.iterdir():
        p.unlink()
    if len(files) == 1:
        p = dirpath / "m.gguf"
        p.write_bytes(files[0])
        return p
    n = len(files)
    for i, b in enumerate(files, start=1):
        if i == 1 or b:
            (dirpath / f"m-{i:05d}-of-{n:05d}.gguf").write_bytes(b)
    return dirpath / f"m-00001-of-{n:05d}.gguf"


def run_case(path: Path, timeout: float, cli: bool) -> tuple[str, str]:
    """(outcome, detail) where outcome is ok / error:<Class> / crash / hang / bad_error."""
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            files = read_model_files(path)
            load_model(path)
            outcome, detail = "ok", f"{len(files.tensors)} tensors"
        except OmniPlaceError as err:
            msg = err.message
            if "\n" in msg or not msg or "\n" in (err.hint or "") or len(msg) > 1000:
                return "bad_error", f"{type(err).__name__}: multi-line, empty or over-long message: {msg[:300]!r}"
            if isinstance(err, READER_ERRORS) and err.exit_code != 2:
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
            if outcome == "ok":
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


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(args: argparse.Namespace) -> None:
    """Run cases [start, start+count), write JSON lines of failures and a summary to --out."""
    signal.signal(signal.SIGALRM, _alarm)
    work = Path(tempfile.mkdtemp(prefix="fuzzw-", dir=args.tmp))
    seeds = make_seeds(work)
    casedir = work / "case"
    casedir.mkdir()
    progress = os.open(args.progress, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    counts: dict[str, int] = {}
    ops_seen: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    slowest = (0.0, -1)
    # warm up (imports, first parse of each seed) before taking the RSS baseline
    for s in seeds:
        write_case(casedir, [bytearray(b) for b in s.files])
        run_case(next(casedir.glob("*-00001-of-*.gguf"), casedir / "m.gguf"), args.timeout, True)
    base_rss = _rss_kib()
    max_growth = (0, -1)
    t0 = time.perf_counter()
    for case in range(args.start, args.start + args.count):
        os.pwrite(progress, f"{case:>12}\n".encode(), 0)
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
        rss = _rss_kib()
        if rss - base_rss > max_growth[0]:
            max_growth = (rss - base_rss, case)
    wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    with open(args.out, "w") as fh:
        json.dump({"start": args.start, "count": args.count, "counts": counts, "ops": ops_seen,
                   "failures": failures, "base_rss_kib": base_rss, "peak_rss_kib": _rss_kib(),
                   "max_rss_growth_kib": max_growth[0], "max_rss_growth_case": max_growth[1],
                   "slowest_case_s": slowest[0], "slowest_case": slowest[1], "wall_s": wall}, fh)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def drive(args: argparse.Namespace) -> dict[str, Any]:
    tmp = args.tmp or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
    run_dir = Path(tempfile.mkdtemp(prefix="fuzz-gguf-", dir=tmp))
    per = -(-args.cases // args.workers)
    procs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    start = 0
    while start < args.cases:
        n = min(per, args.cases - start)
        procs.append({"start": start, "count": n, "pending": [(start, n)], "results": []})
        start += n

    def launch(p: dict[str, Any]) -> None:
        s, n = p["pending"].pop(0)
        prog = run_dir / f"progress-{s}"
        out = run_dir / f"out-{s}.json"
        cmd = [sys.executable, __file__, "--worker", "--seed", str(args.seed), "--start", str(s),
               "--count", str(n), "--timeout", str(args.timeout), "--progress", str(prog),
               "--out", str(out), "--tmp", str(run_dir)]
        p["proc"] = subprocess.Popen(cmd, cwd=ROOT)
        p["cur"] = (s, n, prog, out)
        p["last"] = (time.monotonic(), None)

    for p in procs:
        launch(p)
    crashes: list[dict[str, Any]] = []
    while any("proc" in p for p in procs):
        time.sleep(0.5)
        for p in procs:
            if "proc" not in p:
                continue
            s, n, prog, out = p["cur"]
            rc = p["proc"].poll()
            try:
                at = int(prog.read_text().strip() or -1)
            except (OSError, ValueError):
                at = None
            if rc is None:
                if at != p["last"][1]:
                    p["last"] = (time.monotonic(), at)
                    continue
                if time.monotonic() - p["last"][0] > max(20.0, 4 * args.timeout) and at is not None:
                    p["proc"].kill()  # silent for too long: a hang the alarm could not break
                    p["proc"].wait()
                    crashes.append({"case": at, "outcome": "hang", "detail": "worker silent; killed"})
                    rc = "hang"
                else:
                    continue
            if rc == 0:
                p["results"].append(json.loads(out.read_text()))
                del p["proc"]
            else:
                if at is None or at < s:
                    raise SystemExit(f"worker for cases {s}..{s + n - 1} failed before its first case (exit {rc})")
                if rc != "hang":
                    crashes.append({"case": at, "outcome": "crash", "detail": f"worker exited with {rc}"})
                # resume after the case that killed the worker
                nxt = (at if at is not None else s) + 1
                if nxt < s + n:
                    p["pending"].insert(0, (nxt, s + n - nxt))
                del p["proc"]
            if "proc" not in p and p["pending"]:
                launch(p)
    wall = time.perf_counter() - t0
    parts = [r for p in procs for r in p["results"]]
    counts: dict[str, int] = {}
    ops: dict[str, int] = {}
    failures = list(crashes)
    for r in parts:
        for k, v in r["counts"].items():
            counts[k] = counts.get(k, 0) + v
        for k, v in r["ops"].items():
            ops[k] = ops.get(k, 0) + v
        failures += r["failures"]
    shutil.rmtree(run_dir, ignore_errors=True)
    n_cases = sum(counts.values()) + len(crashes)
    return {
        "benchmark": "fuzz_gguf",
        "command": " ".join(["python", "benchmarks/fuzz_gguf.py", *sys.argv[1:]]),
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
            load_model(path)
            print("ok")
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
