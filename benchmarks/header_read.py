"""Header read speed: a DeepSeek-V3-shaped model, 9 header-only shards, 129k-token vocab + merges.

Target: reading all shards' headers < 300 ms. Writes benchmarks/results/header_read.json
and header_read.md.

    python benchmarks/header_read.py [--reps 20]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from omni_place import __version__
from omni_place.gguf import read_model_files
from omni_place.model import load_model
from omni_place.reference_models import deepseek_v3, write_header_only
from omni_place.units import MiB

OUT = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        paths = write_header_only(deepseek_v3(), Path(d) / "DeepSeek-V3-Q4_K_M.gguf", shards=9, with_vocab=True)
        header_bytes = sum(p.stat().st_size for p in paths)
        read_model_files(paths[0])  # warm the page cache: we time parsing, not the disk
        cases = {"read_model_files (9 shard headers)": lambda: read_model_files(paths[0]),
                 "load_model (headers + roles + per-layer bytes)": lambda: load_model(paths[0]).layers}
        records = []
        for name, fn in cases.items():
            samples = []
            for _ in range(args.reps):
                t = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t)
            records.append({"case": name, "median_ms": statistics.median(samples) * 1e3,
                            "min_ms": min(samples) * 1e3, "max_ms": max(samples) * 1e3,
                            "samples_ms": [s * 1e3 for s in samples]})
    meta = {"omni_place": __version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "shards": 9, "n_vocab": 129280, "header_bytes": header_bytes, "target_ms": 300, "reps": args.reps}
    OUT.mkdir(exist_ok=True)
    (OUT / "header_read.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    lines = ["| case | median ms | min ms | max ms |", "|---|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} |" for r in records]
    lines.append(f"\n{meta['shards']} shards, {header_bytes / MiB:.1f} MiB of headers, vocab {meta['n_vocab']}, "
                 f"{meta['cores']} cores, Python {meta['python']}; target < {meta['target_ms']} ms.")
    (OUT / "header_read.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
