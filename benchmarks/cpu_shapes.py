"""Whether a CPU's prompt rate per FLOP depends on the model's shape: a matrix's width, a routed
expert's FFN width, and the tokens a ubatch gives each expert.

The planner prices a CPU's prompt matmuls at one dense rate (``cpu_tflops_per_core``, Q4_K's time;
other types at their kernels' factors, benchmarks/cpu_prompt.py) and routed experts at
``cpu_moe_compute_eff`` of it. Both were fitted on a few shapes. Real models span 1024-8192 wide
dense layers, 256-2048 wide experts, and 4-256 tokens per expert at ubatch 512 (8 of 8 used..
8 of 256). :data:`SWEEP` writes one Q4_K model per point of that range (zero weights, random
embeddings, a unit-scale router: even routing), ``run`` times 512-token prompts through a
llama-bench binary (``cpu_prompt.run_bench``: ``-ngl 0 -fa 1``, rounds interleaved), ``report``
imports each record as a user's llama-bench output and prices it: the dense rate calibrated on
one shape per engine, each other shape's error, and the expert share each MoE shape needs.

    python -m benchmarks.cpu_shapes models /tmp/cpm_sw
    python -m benchmarks.cpu_shapes run BIN/llama-bench /tmp/cpm_sw -o .../shapes_<cpu>.jsonl --threads 2
    python -m benchmarks.cpu_shapes report benchmarks/results/cpu_prompt/shapes_*.jsonl --cpu-gbs 40
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks import cpu_prompt

_LLAMA = dict(arch="llama", head_dim=128, n_vocab=32000)
_MOE_2048 = dict(arch="qwen3moe", n_embd=2048, n_head=16, n_head_kv=4, head_dim=128, n_ff=5632, n_vocab=32000)
#: Q4_K everywhere; dense Llama layers 1024-8192 wide (head_dim 128, GQA 4), qwen3moe layers 2048
#: wide with experts 256-2048 wide and 2-128 experts per used one
SWEEP: dict[str, dict[str, Any]] = {
    "cpu_d1024": dict(_LLAMA, n_layer=8, n_embd=1024, n_head=8, n_head_kv=2, n_ff=2816),
    "cpu_d2048": dict(_LLAMA, n_layer=4, n_embd=2048, n_head=16, n_head_kv=4, n_ff=5632),
    "cpu_d4096": dict(_LLAMA, n_layer=2, n_embd=4096, n_head=32, n_head_kv=8, n_ff=11264),
    "cpu_d8192": dict(_LLAMA, n_layer=2, n_embd=8192, n_head=64, n_head_kv=8, n_ff=22528),
    "cpu_moe_e128f256": dict(_MOE_2048, n_layer=2, n_expert=128, n_expert_used=8, n_ff_exp=256),
    "cpu_moe_e128f768": dict(_MOE_2048, n_layer=2, n_expert=128, n_expert_used=8, n_ff_exp=768),
    "cpu_moe_e128f2048": dict(_MOE_2048, n_layer=2, n_expert=128, n_expert_used=8, n_ff_exp=2048),
    "cpu_moe_e256f768": dict(_MOE_2048, n_layer=2, n_expert=256, n_expert_used=8, n_ff_exp=768),
    "cpu_moe_e32f768": dict(_MOE_2048, n_layer=2, n_expert=32, n_expert_used=8, n_ff_exp=768),
    "cpu_moe_e8f768": dict(_MOE_2048, n_layer=2, n_expert=8, n_expert_used=2, n_ff_exp=768),
}
#: the dense shape each engine's CPU rate is calibrated on (a common real width)
CALIBRATION_SHAPE = "cpu_d4096"


def write_models(folder: Path) -> list[Path]:
    from benchmarks.speed_models import write_speed_model

    return [write_speed_model(name, folder, weight_type="xq4_k" if "n_expert" in dims else "q4_k", shape=dims)
            for name, dims in SWEEP.items()]


def tokens_per_expert(shape: str, n_ubatch: int = cpu_prompt.N_PROMPT) -> float:
    dims = SWEEP[shape]
    return n_ubatch * dims["n_expert_used"] / dims["n_expert"]


def points(records: list[dict[str, Any]], cpu_gbs: float, threads: int) -> dict[tuple[str, str], list[Any]]:
    """(engine, shape) -> the records as the planner imports a user's llama-bench output, on a
    CPU-only cluster of ``cpu_gbs`` and ``threads``."""
    from omni_place.bench.llamabench import import_text
    from omni_place.devices import resolve_cluster
    from omni_place.model import load_model

    from benchmarks.speed_models import write_speed_model

    scratch = Path(cpu_prompt._scratch().name)  # removed at exit
    cluster = resolve_cluster(str(cpu_prompt.cpu_cluster(scratch, cpu_gbs, threads)))
    headers = {name: load_model(write_speed_model(name, scratch, header_only=True, shape=dims,
                                                  weight_type="xq4_k" if "n_expert" in dims else "q4_k"))
               for name, dims in SWEEP.items()}
    out: dict[tuple[str, str], list[Any]] = {}
    for rec in records:
        if rec["shape"] in SWEEP and not rec.get("n_gen"):
            imported = import_text(json.dumps(rec["bench"]), headers[rec["shape"]], cluster)
            out.setdefault((rec["engine"], rec["shape"]), []).extend(imported.points)
    return out


def fitted(pts: list[Any], name: str, base: Any, lo: float, hi: float) -> float:
    """The value of SpeedParams field ``name`` (the others ``base``'s) that prices ``pts``'s
    median measurement exactly."""
    from dataclasses import replace

    from scipy.optimize import brentq

    from omni_place.bench.calibrate import predict_point

    measured = statistics.median(p.measured for p in pts)
    return float(brentq(lambda x: predict_point(pts[0], replace(base, **{name: x})) - measured, lo, hi))


def _fitted_or_none(pts: list[Any], name: str, base: Any, lo: float, hi: float) -> float | None:
    try:
        return round(fitted(pts, name, base, lo, hi), 3)
    except ValueError:  # no value in [lo, hi] prices it (a model whose experts no prompt runs)
        return None


def report(paths: list[Path], cpu_gbs: float, threads: int) -> list[dict[str, Any]]:
    """Per engine: the dense rate that prices CALIBRATION_SHAPE exactly, each dense shape's error
    at that rate, and the expert share (``cpu_moe_compute_eff``) each MoE shape needs at it."""
    from omni_place.bench.calibrate import predict_point
    from omni_place.cost import SpeedParams

    by = points(cpu_prompt.load(paths), cpu_gbs, threads)
    rows = []
    for engine in sorted({e for e, _ in by}):
        if (engine, CALIBRATION_SHAPE) not in by:
            continue
        rate = fitted(by[engine, CALIBRATION_SHAPE], "cpu_tflops_per_core", SpeedParams(), 0.005, 2.0)
        params = SpeedParams(cpu_tflops_per_core=rate)
        for shape in SWEEP:
            pts = by.get((engine, shape))
            if not pts:
                continue
            measured = statistics.median(p.measured for p in pts)
            row: dict[str, Any] = {"engine": engine, "shape": shape, "measured_tps": round(measured, 1),
                                   "spread": round((max(p.measured for p in pts) - min(p.measured for p in pts))
                                                   / measured, 3),
                                   "priced_tps": round(predict_point(pts[0], params), 1),
                                   "cpu_tflops_per_core": round(rate, 4)}
            if "n_expert" in SWEEP[shape]:
                row["tokens_per_expert"] = tokens_per_expert(shape)
                row["n_ff_exp"] = SWEEP[shape]["n_ff_exp"]
                row["fitted_moe_eff"] = _fitted_or_none(pts, "cpu_moe_compute_eff", params, 0.02, 20.0)
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| engine | shape | measured tok/s | spread | priced tok/s | error | tokens/expert | expert share fitted |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        err = r["priced_tps"] / r["measured_tps"] - 1
        print(f"| {r['engine']} | {r['shape']} | {r['measured_tps']} | {r['spread']:.0%} | {r['priced_tps']} | "
              f"{err:+.0%} | {r.get('tokens_per_expert', '')} | {r.get('fitted_moe_eff', '')} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpu_shapes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="write the SWEEP models")
    m.add_argument("folder", type=Path)
    cpu_prompt.add_run_options(sub.add_parser("run", help="time 512-token prompts of every model in FOLDER with a "
                                                          "llama-bench binary"), binary=True)
    q = sub.add_parser("report", help="price the records: each shape's error at one calibrated rate")
    q.add_argument("records", nargs="+", type=Path)
    q.add_argument("--cpu-gbs", type=float, required=True, help="the CPU's bandwidth (devices --measure)")
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args(argv)
    if a.cmd == "models":
        for p in write_models(a.folder):
            print(p)
    elif a.cmd == "run":
        cpu_prompt.run_bench(a.binary, a.folder, a.output, a.threads, a.rounds, a.reps)
    else:
        rows = report(a.records, a.cpu_gbs, a.threads)
        print_table(rows)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
