"""Wall time of the whole `omni-place plan` command (process start, imports, header read, solve,
output), as a user runs it. Target: < 0.5 s.

Each case runs the installed console script in a fresh process ``--reps`` times after one warm-up
run (which writes the shipped reference model's header into the cache, and the package's bytecode:
the runs drop PYTHONDONTWRITEBYTECODE, as ``pip install`` compiles it for users); the median and
spread are recorded in ``benchmarks/results/plan_command.json`` and ``.md``.

    python benchmarks/plan_command.py [--reps 9]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 0.5


def rpc_cluster_file(path: Path, n_rpc: int = 14) -> Path:
    """Two local GPUs, ``n_rpc`` 24 GiB RPC hosts on 10 GbE and the CPU: a 16-accelerator rig."""
    lines = ['name = "rpc16"', ""]
    for i in range(n_rpc):
        lines += ["[[devices]]", f'name = "RPC{i}"', 'kind = "rpc"', f'endpoint = "10.0.0.{i + 2}:50052"',
                  "memory_gib = 24", "bandwidth_gbs = 900", "link_gbs = 1.25", "link_latency_us = 100", ""]
    for i, (mem, bw) in enumerate(((96, 1792), (32, 1792))):
        lines += ["[[devices]]", f'name = "CUDA{i}"', 'kind = "gpu"', f"memory_gib = {mem}",
                  f"bandwidth_gbs = {bw}", "tflops = 400", "link_gbs = 63", ""]
    lines += ["[[devices]]", 'name = "CPU"', 'kind = "cpu"', "memory_gib = 512", "bandwidth_gbs = 300", "threads = 32"]
    path.write_text("\n".join(lines) + "\n")
    return path


# an installed package runs from bytecode (pip compiles it): compiling 60 modules per run is ~0.2 s
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def time_command(argv: list[str], reps: int) -> dict[str, Any]:
    # warm-up: reference model cache, page cache, bytecode
    subprocess.run(argv, check=True, capture_output=True, env=USER_ENV)
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=USER_ENV)
        walls.append(time.perf_counter() - t0)
    walls.sort()
    return {"argv": argv[1:], "reps": reps, "median_s": statistics.median(walls), "min_s": walls[0],
            "max_s": walls[-1], "meets_target": statistics.median(walls) < TARGET_S}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    # the console script next to this interpreter (a pyenv shim in front of it costs ~0.1 s)
    exe = str(Path(sys.executable).with_name("omni-place"))
    if not Path(exe).exists():
        exe = shutil.which("omni-place")
    if exe is None:
        sys.exit("omni-place is not installed: pip install -e .")
    tmp = Path(tempfile.mkdtemp())
    rig = rpc_cluster_file(tmp / "rpc16.toml")
    cases = {
        "seed_default": [exe, "plan", "--preset", "seed"],
        "seed_ctx32k_args": [exe, "plan", "--preset", "seed", "--ctx", "32768", "--format", "args"],
        "seed_ik_llama": [exe, "plan", "--preset", "seed", "--ctx", "32768", "--engine", "ik_llama.cpp"],
        "seed_objective_mix": [exe, "plan", "--preset", "seed", "--ctx", "32768", "--objective", "0.7"],
        "rpc16_json": [exe, "plan", "--cluster", str(rig), "--ctx", "32768", "--format", "json"],
        "version_only": [exe, "--version"],
    }
    results = {name: time_command(argv, args.reps) for name, argv in cases.items()}
    for r in results.values():
        r["argv"] = [a if a != str(rig) else "rpc16.toml" for a in r["argv"]]
    record = {
        "benchmark": "plan_command", "target_s": TARGET_S, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "git_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip(),
        "cases": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan_command.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Whole `omni-place plan` command, wall time (`benchmarks/plan_command.py`)", "",
             f"{record['machine']['cpu']}, {record['machine']['logical_cores']} logical cores, Python "
             f"{record['machine']['python']}, commit {record['git_commit']}; fresh process per run, "
             f"median of {args.reps} after one warm-up. Target < {TARGET_S} s.", "",
             "| case | command | median s | min s | max s | < 0.5 s |", "|---|---|---:|---:|---:|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | `omni-place {' '.join(r['argv'])}` | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                     f"{r['max_s']:.3f} | {'yes' if r['meets_target'] else '**no**'} |")
    (args.out / "plan_command.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
