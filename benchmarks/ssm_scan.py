"""Mamba-2's selective scan on the CPU: its rate per state element, from llama-bench prompt runs.

The CPU runs GGML_OP_SSM_SCAN one token after another over each head's ``d_state x head_dim`` state
(ggml/src/ggml-cpu/ops.cpp ``ggml_compute_forward_ssm_scan_f32``): per state element the decayed state,
the input's product, their sum and the output's FMA, GGML_F32_STEP elements an iteration (64 with
AVX-512, 32 with AVX2) and the rest of a row one at a time. :data:`SHAPES` are Mamba-2 models
whose layers differ only in ``d_state`` (the in_proj's B and C columns aside, 1-3 % of its work) at two
head widths, so a prompt's time grows with ``d_state`` by the scan's per-element cost alone: the
slope over the vectorised widths (64-256) gives the vector loop's rate, the 16-wide model's excess
over the line the scalar loop's. Both are written as shares of the CPU's matmul FLOP/s a thread
(``SpeedParams.cpu_tflops_per_core``), as attention.py prices them.

    python -m benchmarks.ssm_scan models /tmp/ssm
    python -m benchmarks.ssm_scan run BIN/llama-bench /tmp/ssm -o benchmarks/results/ssm_scan/cpu_xeon2.jsonl
    python -m benchmarks.ssm_scan fit benchmarks/results/ssm_scan/cpu_xeon2.jsonl
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.quant_speed import RESULTS

FOLDER = RESULTS / "ssm_scan"
N_LAYER, N_EMBD, D_INNER = 4, 256, 8192
D_STATES = (16, 64, 128, 256)
HEAD_DIMS = (64, 128)
#: layers whose matmuls are small beside the scan: 4 layers, 256 wide, an 8192-wide mixer
SHAPES: dict[str, dict[str, Any]] = {
    f"ssm_d{ds}_h{hd}": dict(arch="mamba2", n_layer=N_LAYER, n_embd=N_EMBD, n_head=8, n_head_kv=8, head_dim=32,
                             n_ff=0, n_vocab=32000, gdn={"head_dim": ds, "k_heads": 1, "v_heads": D_INNER // hd,
                                                         "d_conv": 4, "inner": D_INNER})
    for ds in D_STATES for hd in HEAD_DIMS}


def write_models(folder: Path) -> None:
    from benchmarks.speed_models import write_speed_model

    for name, shape in SHAPES.items():
        write_speed_model(name, folder, shape=shape)


def run(binary: Path, folder: Path, output: Path, threads: list[int], reps: int) -> None:
    """``-p 512 -n 0`` of every model on the CPU at each thread count, llama-bench's records to ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as fh:
        for t in threads:
            for name in SHAPES:
                proc = subprocess.run([str(binary), "-m", str(folder / f"{name}.gguf"), "-p", "512", "-n", "0",
                                       "-ngl", "0", "-t", str(t), "-r", str(reps), "-o", "jsonl"],
                                      capture_output=True, text=True, check=True)
                for line in proc.stdout.splitlines():
                    if line.startswith("{"):
                        fh.write(json.dumps(dict(json.loads(line), shape=name, machine=platform.node())) + "\n")
                print(f"{name} -t {t}: done", flush=True)


def fit(records: list[dict[str, Any]], tflops_per_core: float) -> list[dict[str, Any]]:
    """Per (head width, threads): the seconds per prompt token the scan adds per state element of a
    layer's rows, as the vector loop's share of the threads' FLOP/s, and the scalar loop's from the
    16-wide model (its whole row scalar at this build's step)."""
    import numpy as np

    from omni_place.attention import SSM_SCAN_FLOPS

    out = []
    for hd in HEAD_DIMS:
        for t in sorted({r["n_threads"] for r in records}):
            secs = {ds: statistics.median(1.0 / r["avg_ts"] for r in records
                                          if r["shape"] == f"ssm_d{ds}_h{hd}" and r["n_threads"] == t)
                    for ds in D_STATES}
            vector = [ds for ds in D_STATES if ds >= 64]
            slope, intercept = np.polyfit(vector, [secs[ds] for ds in vector], 1)
            rate = tflops_per_core * 1e12 * t  # the heads (64-128 of them) keep every thread busy
            flops = SSM_SCAN_FLOPS * N_LAYER * D_INNER  # a token's, all layers, per unit of d_state
            scalar = (secs[16] - intercept) / 16
            out.append({"head_dim": hd, "threads": t, "vector_share": round(flops / (slope * rate), 3),
                        "scalar_share": round(flops / (scalar * rate), 3),
                        "residual_pct": [round(100 * (secs[ds] / (intercept + slope * ds) - 1), 1) for ds in vector]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ssm_scan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models")
    m.add_argument("folder", type=Path)
    r = sub.add_parser("run")
    r.add_argument("binary", type=Path)
    r.add_argument("folder", type=Path)
    r.add_argument("-o", "--output", type=Path, required=True)
    r.add_argument("--threads", default="1,2")
    r.add_argument("--reps", type=int, default=5)
    f = sub.add_parser("fit")
    f.add_argument("records", nargs="+", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "models":
        write_models(a.folder)
    elif a.cmd == "run":
        run(a.binary, a.folder, a.output, [int(x) for x in a.threads.split(",")], a.reps)
    else:
        from omni_place.placement import SpeedParams

        recs = [json.loads(line) for p in a.records for line in p.read_text().splitlines() if line.startswith("{")]
        print(json.dumps(fit(recs, SpeedParams().cpu_tflops_per_core), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
