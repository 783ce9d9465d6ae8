"""Speed of the exact placement core (omni_place._core.solve) on realistic problem shapes.

Writes benchmarks/results/planner_speed.json (one self-describing record per case, with raw
samples) and benchmarks/results/planner_speed.md. Every solve's plan is re-priced with the pure
Python definition (tests/reference_solvers.py, placement_cost) before timing, so a fast wrong
answer fails the run.

Cases
- deepseek_v3_2gpu: DeepSeek-V3 Q4_K_M shape, 61 layers (3 dense + 58 MoE), 4 expert options
  (all / 2/3 / 1/3 / none of ~6.4 GiB of experts on the GPU), a 96 GiB and a 32 GiB GPU, orders
  [0], [1], [0,1], [1,0] and CPU-only, 1 MiB units. Target: < 5 ms median.
- cluster16_*: a 128-layer MoE on 16 GPUs of 24-96 GiB with different bandwidths, 3 orders using
  all 16. "fits": the model fits the GPUs (target < 100 ms); "membound": 60 % of that memory, so
  experts must go to the CPU (reported at 1, 4 and 16 MiB units: the caller picks the unit).
- scaling_L / scaling_D: the same shapes with more layers (same model size) or more devices.

Usage, from the repository root (it imports the tests' reference solvers):

    python -m benchmarks.planner_speed [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from omni_place import __version__, _core
from omni_place.problem import unit_for_capacities
from omni_place.units import GiB, MiB
from tests.reference_solvers import CoreProblem, placement_cost

ROOT = Path(__file__).resolve().parents[1]


def deepseek_v3(n_layers: int = 61, unit: int = MiB, caps_gib: tuple[float, ...] = (96, 32),
                bw: tuple[float, ...] = (1.6e12, 1.5e12)) -> CoreProblem:
    """DeepSeek-V3 Q4_K_M decode-time problem. With n_layers != 61 the per-layer sizes shrink so
    the model keeps its total size (same memory pressure, more layers)."""
    D, K, n_dense = len(caps_gib), 4, 3
    s = 61 / n_layers
    L = n_layers
    bw_cpu, active = 1.5e11, 8 / 256        # CPU read bandwidth; 8 of 256 experts per token
    ctx_read = 0.5                          # KV cache half full on average
    dense = np.zeros(L)
    exp = np.zeros(L)
    for l in range(L):
        if l < max(1, round(n_dense / s)):
            dense[l] = 420 * MiB * s        # attention + dense FFN
        else:
            i, n = l, L
            more_bits = i < n / 8 or i >= 7 * n / 8 or (i - n // 8) % 3 == 2   # Q6_K ffn_down
            exp[l] = (6554 if more_bits else 5900) * MiB * s
            dense[l] = 155 * MiB * s        # MLA attention + shared expert
    kv = 36 * MiB * s                       # MLA KV cache at 32k context, f16
    on_gpu = np.array([1.0, 2 / 3, 1 / 3, 0.0])
    time = np.zeros((D, L, K))
    mem_dense = np.zeros((D, L), np.int64)
    mem_exp = np.zeros((D, L, K), np.int64)
    stream = np.zeros((L, K))
    for l in range(L):
        for o in range(K):
            f = on_gpu[o] if exp[l] > 0 else 1.0
            stream[l, o] = (1 - f) * exp[l] / GiB        # CPU-held GiB streamed per prompt ubatch
            for d in range(D):
                mem_exp[d, l, o] = int(np.ceil(f * exp[l] / unit))
                time[d, l, o] = ((dense[l] + kv * ctx_read + f * active * exp[l]) / bw[d]
                                 + (1 - f) * active * exp[l] / bw_cpu)
        mem_dense[:, l] = int(np.ceil((dense[l] + kv) / unit))
    trans = np.full((D + 1, D + 1), 3e-5)
    trans[D, :] = trans[:, D] = 4e-5
    np.fill_diagonal(trans, 0.0)
    out_bytes = 760 * MiB                   # output.weight Q6_K
    rows = [[0], [1], [0, 1], [1, 0], []] if D == 2 else [list(range(D)), []]
    orders = np.array([r + [-1] * (D - len(r)) for r in rows], np.int32)
    return CoreProblem(
        orders=orders, time=time, time_cpu=(dense + kv * ctx_read + active * exp) / bw_cpu,
        mem_dense=mem_dense, mem_exp=mem_exp, trans=trans, out_time=out_bytes / np.array(bw),
        out_mem=np.full(D, int(np.ceil(1300 * MiB / unit)), np.int64),
        fixed_mem=np.full(D, int(np.ceil(1800 * MiB / unit)), np.int64),
        first_mem=np.full(D, int(np.ceil(600 * MiB / unit)), np.int64),
        cap=np.array([int(c * GiB // unit) for c in caps_gib], np.int64),
        out_time_cpu=out_bytes / bw_cpu, stream=stream, stream_cpu=(dense + exp) / GiB,
        stream_rate=np.full(D, 0.1 / 25 / 512),   # pp weight 0.1, 25 GB/s PCIe, 512-token ubatch
    )


_GPU_KINDS = {24: 0.9e12, 32: 1.7e12, 48: 0.9e12, 80: 2.0e12, 96: 1.6e12}  # GiB -> bytes/s


def cluster_caps(n_dev: int = 16, cap_scale: float = 1.0, seed: int = 0) -> list[int]:
    """The capacities in bytes :func:`cluster` draws for these arguments."""
    rng = np.random.default_rng(seed)
    caps_gib = rng.choice(list(_GPU_KINDS), size=n_dev) * (16 / n_dev) * cap_scale
    return [int(c * GiB) for c in caps_gib]


def cluster(n_dev: int = 16, n_layers: int = 128, cap_scale: float = 1.0, unit: int = MiB,
            n_orders: int = 3, seed: int = 0) -> CoreProblem:
    """A 128-layer MoE (~675 GiB at 4 options) on n_dev GPUs of 24-96 GiB (RPC cluster style)."""
    rng = np.random.default_rng(seed)
    D, L, K = n_dev, n_layers, 4
    s = 128 / n_layers
    caps_gib = rng.choice(list(_GPU_KINDS), size=D)
    bw = np.array([_GPU_KINDS[c] for c in caps_gib]) * rng.uniform(0.9, 1.1, D)
    caps_gib = caps_gib * (16 / D) * cap_scale    # same total memory for every D
    bw_cpu, active = 2e11, 8 / 128
    exp = np.where(np.arange(L) % 3 == 2, 5.2, 4.6) * GiB * rng.uniform(0.98, 1.02, L) * s
    exp[: max(1, L // 64)] = 0.0
    dense = 0.45 * GiB * rng.uniform(0.95, 1.05, L) * s
    kv = 0.08 * GiB * s
    on_gpu = np.linspace(1.0, 0.0, K)
    time = np.zeros((D, L, K))
    mem_dense = np.tile(np.ceil((dense + kv) / unit).astype(np.int64), (D, 1))
    mem_exp = np.zeros((D, L, K), np.int64)
    stream = np.zeros((L, K))
    for o in range(K):
        f = np.where(exp > 0, on_gpu[o], 1.0)
        stream[:, o] = (1 - f) * exp / GiB
        for d in range(D):
            mem_exp[d, :, o] = np.ceil(f * exp / unit)
            time[d, :, o] = (dense + kv / 2 + f * active * exp) / bw[d] + (1 - f) * active * exp / bw_cpu
    trans = rng.uniform(2e-5, 6e-5, (D + 1, D + 1))
    np.fill_diagonal(trans, 0.0)
    orders = np.array([rng.permutation(D) for _ in range(n_orders)], np.int32)
    return CoreProblem(
        orders=orders, time=time, time_cpu=(dense + kv / 2 + active * exp) / bw_cpu,
        mem_dense=mem_dense, mem_exp=mem_exp, trans=trans, out_time=GiB / bw,
        out_mem=np.full(D, int(1.5 * GiB / unit), np.int64),
        fixed_mem=np.full(D, int(1.2 * GiB / unit), np.int64),
        first_mem=np.full(D, int(0.5 * GiB / unit), np.int64),
        cap=(caps_gib * GiB // unit).astype(np.int64), out_time_cpu=GiB / bw_cpu, stream=stream,
        stream_cpu=(dense + exp) / GiB, stream_rate=np.full(D, 0.1 / 25 / 512),
    )


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "cpu": cpu, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "omni_place": __version__, "git_commit": commit,
    }


def run_case(name: str, pb: CoreProblem, params: dict[str, Any], target_ms: float | None,
             budget_s: float, min_runs: int = 5, max_runs: int = 200) -> dict[str, Any]:
    kw = pb.kwargs()
    kw["max_states"] = 1 << 26
    res = _core.solve(**kw)
    assert res.ok, (name, res)
    t, _, err = placement_cost(pb, res.order, res.n_cpu, res.home, res.option, res.out_device)
    assert err is None and abs(t - res.time) <= 1e-9 * max(1.0, abs(t)), (name, err, t, res.time)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter_ns()
        _core.solve(**kw)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else samples * 9
    rec = {
        "case": name, **params, "repetitions": len(samples),
        "median_ms": statistics.median(samples), "p10_ms": q[0], "p90_ms": q[-1],
        "min_ms": min(samples), "samples_ms": [round(s, 4) for s in samples],
        "n_states": res.n_states, "peak_frontier": res.peak_states, "optimum_s": res.time,
        "order": res.order, "cpu_layers": res.n_cpu,
        "options_used": np.bincount(res.option[res.option >= 0], minlength=pb.K).tolist(),
        "target_ms": target_ms,
        "meets_target": None if target_ms is None else statistics.median(samples) < target_ms,
    }
    print(f"{name:34s} median {rec['median_ms']:9.2f} ms  p90 {rec['p90_ms']:9.2f}  "
          f"states {res.n_states:>9d}  runs {len(samples)}", flush=True)
    return rec


def shape(pb: CoreProblem, unit: int) -> dict[str, Any]:
    return {"L": pb.L, "D": pb.D, "K": pb.K, "n_orders": len(pb.orders), "unit_mib": unit / MiB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and no scaling series")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    budget = 0.5 if args.quick else 2.0
    cases: list[dict[str, Any]] = []

    pb = deepseek_v3()
    cases.append(run_case("deepseek_v3_2gpu", pb, shape(pb, MiB), 5.0, budget, max_runs=500))
    for seed in range(3):
        pb = cluster(seed=seed)
        cases.append(run_case(f"cluster16_fits_s{seed}", pb, shape(pb, MiB), 100.0, budget))
    for unit in (MiB, 4 * MiB, 16 * MiB):
        for seed in range(3):
            pb = cluster(seed=seed, cap_scale=0.6, unit=unit)
            cases.append(run_case(f"cluster16_membound_{unit // MiB}mib_s{seed}", pb, shape(pb, unit),
                                  None, budget, min_runs=3))
    # what plan_split uses: the unit chosen by omni_place.plan.unit_for_capacities
    for seed in range(3):
        unit = unit_for_capacities(cluster_caps(seed=seed, cap_scale=0.6))
        pb = cluster(seed=seed, cap_scale=0.6, unit=unit)
        cases.append(run_case(f"cluster16_membound_auto_s{seed}", pb, shape(pb, unit), 100.0, budget, min_runs=3))
    if not args.quick:
        for L in (31, 61, 122, 244, 488, 976):
            pb = deepseek_v3(n_layers=L)
            cases.append(run_case(f"scaling_L_deepseek_L{L}", pb, shape(pb, MiB), None, budget, min_runs=3))
        for D in (2, 4, 8, 16, 32, 64):
            pb = cluster(n_dev=D)
            cases.append(run_case(f"scaling_D_fits_D{D}", pb, shape(pb, MiB), None, budget, min_runs=3))
        for D in (2, 4, 8, 16, 32):
            pb = cluster(n_dev=D, cap_scale=0.6, unit=4 * MiB)
            cases.append(run_case(f"scaling_D_membound4mib_D{D}", pb, shape(pb, 4 * MiB), None, budget,
                                  min_runs=3))

    m = machine()
    record = {"benchmark": "planner_speed", "machine": m,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cases": cases}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "planner_speed.json").write_text(json.dumps(record, indent=1) + "\n")

    lines = [
        "# Placement core speed (`benchmarks/planner_speed.py`)", "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"{m['platform']}, Python {m['python']}, numpy {m['numpy']}; omni_place {m['omni_place']} "
        f"at {m['git_commit']}. One thread per solve; times are wall clock per `_core.solve` call "
        f"(array checks included), median of the repetitions.", "",
        "| case | L | D | K | orders | unit MiB | median ms | p10 ms | p90 ms | DP states | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cases:
        tgt = "" if c["target_ms"] is None else (f"< {c['target_ms']:g} ms: "
                                                  + ("yes" if c["meets_target"] else "**no**"))
        lines.append(f"| {c['case']} | {c['L']} | {c['D']} | {c['K']} | {c['n_orders']} | "
                     f"{c['unit_mib']:g} | {c['median_ms']:.2f} | {c['p10_ms']:.2f} | "
                     f"{c['p90_ms']:.2f} | {c['n_states']} | {tgt} |")
    (args.out / "planner_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
