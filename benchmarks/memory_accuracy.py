"""Predicted vs engine memory per architecture: model weights, KV cache, compute buffers.

Writes tiny real models (tests/arch_models.py) of every verified architecture, loads each in the
real libllama (llama-cpp-python) on the CPU, reads the engine's own buffer-size log lines and
records them beside omni_place's prediction. Output: benchmarks/results/memory_accuracy.json
and memory_accuracy.md.

From the repository root (it imports the tests' models, ``tests.arch_models``):

    python -m benchmarks.memory_accuracy [--ctx 1024]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from omni_place import __version__
from omni_place.compute import compute_buffer_estimate
from omni_place.model import load_model
from omni_place.units import MiB
from tests.arch_models import ARCHS, engine_load, write_model

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
N_UBATCH = 64  # engine_load's n_ubatch for these contexts


def measure(arch: str, weight_type: str, ctx: int, d: Path) -> dict:
    path = write_model(d / f"{arch}-{weight_type}.gguf", arch, weight_type=weight_type)
    eng = engine_load(path, n_ctx=ctx)
    m = load_model(path)
    ce = compute_buffer_estimate(m, n_ctx=ctx, n_ubatch=N_UBATCH)
    pred = {
        "model": m.input_bytes() + sum(lc.dense["cpu"] + lc.experts["cpu"] for lc in m.layers) + m.output_bytes("cpu"),
        "kv": sum(m.kv_layer_bytes(ctx, n_ubatch=N_UBATCH)),
        "compute": ce.cpu_only_bytes(),
    }
    engine = {
        "model": sum(x for _, x in eng.model_buffers) * MiB,
        "kv": sum(x for _, x in eng.kv_buffers) * MiB,
        "compute": sum(x for _, x in eng.compute_buffers) * MiB,
    }
    return {"arch": arch, "weight_type": weight_type, "ctx": ctx, "n_ubatch": N_UBATCH, "engine_ok": eng.ok,
            "predicted_bytes": pred, "engine_bytes": {k: round(v) for k, v in engine.items()},
            "engine_buffers": {"model": eng.model_buffers, "kv": eng.kv_buffers, "compute": eng.compute_buffers}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", type=int, default=1024)
    args = ap.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as d:
        for arch in ARCHS:
            records.append(measure(arch, "f16", args.ctx, Path(d)))
    OUT.mkdir(exist_ok=True)
    meta = {"omni_place": __version__, "engine": "llama-cpp-python 0.3.36 libllama (CPU)", "ctx": args.ctx,
            "note": "engine prints MiB with 2 decimals (resolution 0.01 MiB)"}
    (OUT / "memory_accuracy.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    lines = ["| arch | model MiB pred / engine | KV MiB pred / engine | compute MiB pred / engine |",
             "|---|---:|---:|---:|"]
    for r in records:
        p, e = r["predicted_bytes"], r["engine_bytes"]
        lines.append(f"| {r['arch']} | "
                     + " | ".join(f"{p[k] / MiB:.3f} / {e[k] / MiB:.2f}" for k in ("model", "kv", "compute"))
                     + " |")
    lines.append(f"\nTiny real F16 models, ctx {args.ctx}, ubatch {N_UBATCH}, flash attention auto, CPU backend.")
    (OUT / "memory_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
