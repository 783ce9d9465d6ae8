"""The engine's own compute buffers for full-size models, against omni_place's estimate.

Each shipped model description (DeepSeek-V3.2, Qwen3-235B-A22B, GLM-4.6, gpt-oss-120b,
Llama-3.3-70B) becomes a sparse full-size copy (real header, a hole for the data) and is dry-run
through the real libllama with no_alloc on the CPU backend, over ubatch x context x flash
attention. Each record holds the engine's ``compute buffer size`` and the estimate of
:func:`omni_place.compute.compute_buffer_estimate` for the same device role (everything on one
device, which also holds the output). Output: benchmarks/results/compute_truth.json and .md.

    python -m benchmarks.compute_truth [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

from omni_place import __version__
from omni_place.compute import compute_buffer_estimate
from omni_place.gguf import read_model_files
from omni_place.gguf_write import sparse_copy
from omni_place.llama import LoadSpec, build_info, probe_load
from omni_place.model import load_model
from omni_place.reference_models import REFERENCE_MODELS, cached_reference_model
from omni_place.units import MiB

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one context and ubatch per model")
    args = ap.parse_args()
    ubatches = (512,) if args.quick else (128, 512, 2048)
    contexts = (4096,) if args.quick else (4096, 32768)
    records = []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(REFERENCE_MODELS):
            files = read_model_files(cached_reference_model(name))
            path = sparse_copy(files, Path(tmp) / name)
            model = load_model(path)
            for ub, ctx, fa in itertools.product(ubatches, contexts, (True, False)):
                spec = LoadSpec(model_path=str(path), n_gpu_layers=0, n_ctx=ctx, n_ubatch=ub, dry_run=True,
                                flash_attn="on" if fa else "off")
                report = probe_load(spec, timeout=300)
                est = compute_buffer_estimate(model, n_ctx=ctx, n_ubatch=ub, flash_attn=fa)
                predicted = est.cpu_only_bytes()
                engine = sum(report.compute_buffers.values()) if report.ok else None
                records.append({"model": name, "architecture": model.architecture, "n_ubatch": ub, "ctx": ctx,
                                "flash_attn": fa, "engine_ok": report.ok, "error": report.error,
                                "engine_compute_bytes": engine, "estimated_compute_bytes": predicted,
                                "ratio": round(predicted / engine, 3) if engine else None})
                print(f"{name:16} ub {ub:5} ctx {ctx:6} fa {fa!s:5}  engine "
                      f"{(engine or 0) / MiB:9.1f} MiB  estimate {predicted / MiB:9.1f} MiB", flush=True)
    OUT.mkdir(exist_ok=True)
    meta = {"omni_place": __version__, "engine": build_info().describe(), "backend": "CPU, no_alloc dry run",
            "seconds": round(time.time() - t0, 1),
            "command": "python -m benchmarks.compute_truth" + (" --quick" if args.quick else "")}
    (OUT / "compute_truth.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    ratios = [r["ratio"] for r in records if r["ratio"]]
    lines = ["| model | ubatch | ctx | FA | engine MiB | estimate MiB | estimate / engine |",
             "|---|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['n_ubatch']} | {r['ctx']} | {'on' if r['flash_attn'] else 'off'} | "
              f"{(r['engine_compute_bytes'] or 0) / MiB:.1f} | {r['estimated_compute_bytes'] / MiB:.1f} | "
              f"{r['ratio']} |" for r in records]
    lines.append(f"\n{len(records)} dry runs in {meta['seconds']} s ({meta['engine']}); estimate/engine "
                 f"min {min(ratios):.2f}, median {sorted(ratios)[len(ratios) // 2]:.2f}, max {max(ratios):.2f}.")
    (OUT / "compute_truth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-1:]))


if __name__ == "__main__":
    main()
