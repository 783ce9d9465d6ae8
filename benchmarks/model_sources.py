"""Planning a model where it lives: wall time of `omni-place plan MODEL --preset seed` in a fresh
process for a 9-shard DeepSeek-V3-shaped Q4_K_M (129k-token vocabulary, as released) served by a
local fake Hugging Face Hub (tests/fake_hub.py), as ``hf:OWNER/REPO:Q4_K_M`` and as an https-style
URL, cold (empty header cache) and warm, plus an ``ollama:`` model read in place; and the bytes
read per shard. Targets: < 10 MB per shard, warm < 2 s, cold < 5 s.

    python -m benchmarks.model_sources [--reps 5]

Writes benchmarks/results/model_sources.json and .md.
"""
from __future__ import annotations

import argparse
import hashlib
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

from omni_place import __version__
from omni_place.reference_models import deepseek_v3
from tests.arch_models import write_llama
from tests.fake_hub import FakeHub

OUT = Path(__file__).resolve().parent / "results"
REPO = "deepseek-ai/DeepSeek-V3-GGUF"
MB = 1_000_000


def _run(model: str, env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "omni_place", "plan", model, "--preset", "seed"],
                       capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{model}: exit {r.returncode}\n{r.stderr}")
    return wall


def _ollama(root: Path, tmp: Path) -> None:
    data = write_llama(tmp / "tiny.gguf").path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                                "digest": f"sha256:{digest}"}]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as d, FakeHub() as hub:
        tmp = Path(d)
        names = hub.add_model(REPO, "Q4_K_M/DeepSeek-V3-Q4_K_M.gguf", deepseek_v3(), tmp, shards=9, with_vocab=True)
        url = ""
        for n in names:
            f = hub.repos[REPO].files[n]
            u = hub.add_file(f"m/{Path(n).name}", f.header, f.size)
            url = url or u
        _ollama(tmp / "ollama", tmp)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp / "hf"), "OLLAMA_MODELS": str(tmp / "ollama"),
               "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        env.pop("HF_HUB_OFFLINE", None)
        for label, model, pattern in ((f"hf:{REPO}:Q4_K_M", f"hf:{REPO}:Q4_K_M", "/resolve/"),
                                      ("https URL (http://127.0.0.1 here)", url, "/files/m/"),
                                      ("ollama:tiny", "ollama:tiny", None)):
            cold, warm, per_shard = [], [], {}
            for _ in range(args.reps):
                cache = tmp / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                env["OMNI_PLACE_CACHE"] = str(cache)
                before = hub.sent()
                cold.append(_run(model, env))
                if pattern:
                    per_shard = {p.rsplit("/", 1)[-1]: n - before.get(p, 0) for p, n in hub.sent(pattern).items()
                                 if n > before.get(p, 0)}
                warm.append(_run(model, env))
            records.append({"model": label, "cold_s": statistics.median(cold), "warm_s": statistics.median(warm),
                            "cold_samples_s": cold, "warm_samples_s": warm, "shards": len(per_shard),
                            "max_shard_bytes": max(per_shard.values(), default=0),
                            "total_bytes": sum(per_shard.values()), "bytes_per_shard": per_shard})
    meta = {"omni_place": __version__, "python": platform.python_version(), "cores": os.cpu_count(),
            "machine": platform.machine(), "reps": args.reps, "command": "omni-place plan MODEL --preset seed",
            "targets": {"max_shard_bytes": 10 * MB, "warm_s": 2, "cold_s": 5}}
    OUT.mkdir(exist_ok=True)
    (OUT / "model_sources.json").write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    lines = ["| MODEL | cold s | warm s | shards read | max MB per shard | MB read in all |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| `{r['model']}` | {r['cold_s']:.2f} | {r['warm_s']:.2f} | {r['shards'] or '-'} | "
              f"{r['max_shard_bytes'] / MB:.2f} | {r['total_bytes'] / MB:.2f} |" for r in records]
    lines.append(f"\nMedian of {args.reps} fresh processes each (`{meta['command']}`, certification on), local fake "
                 f"Hub on loopback, {meta['cores']} cores, Python {meta['python']}. Cold: empty header cache; warm: "
                 "hf re-lists the branch (one request), the URL revalidates the first shard (one 1-byte Range read); "
                 "ollama reads the blob in place (nothing is fetched or cached).")
    (OUT / "model_sources.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
