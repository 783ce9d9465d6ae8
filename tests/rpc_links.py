"""Decode over emulated network links: omni_place's predicted slowdown against the measured one.

Two llama.cpp RPC servers run on loopback; each is reached through
:mod:`omni_place.llama.linkproxy` (round-trip time + bandwidth; this kernel has no ``sch_netem``).
A small llama model (vocabulary 32k, so the logits coming back cost real bandwidth) is split
RPC0 | RPC1 with the output head on RPC1 (``--rpc P0,P1 -ngl 99 -ts 1,1``); for every link setting a
fresh process (``python -m tests.rpc_links MODEL CLUSTER TOKENS``, run from the repository root)
loads it through libllama and times single-token decodes. The prediction is ``evaluate()`` on a
cluster file carrying the link's bandwidth and round trip.

Used by tests/test_rpc_network.py and benchmarks/rpc_network.py (which records more settings).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .arch_models import write_model

ROOT = Path(__file__).resolve().parents[1]

# (name, round trip ms, Gbit/s): a fast LAN, 10 GbE, 1 GbE, a slow 1 GbE hop
LINKS = [("fast", 0.1, 10.0), ("10gbe", 0.5, 10.0), ("1gbe", 1.0, 1.0), ("10gbe-2ms", 2.0, 10.0),
         ("1gbe-2ms", 2.0, 1.0)]
ARGS = ["-ngl", "99", "-ts", "1,1", "-c", "512", "-ub", "64"]


def cluster_file(path: Path, endpoints: list[str], rtt_ms: float, gbit: float) -> Path:
    lines = ['name = "rpc-link"', ""]
    for i, ep in enumerate(endpoints):
        lines += ["[[devices]]", f'name = "RPC{i}"', 'kind = "rpc"', f'endpoint = "{ep}"', "memory_gib = 4",
                  "bandwidth_gbs = 10", f"link_gbs = {gbit / 8}", f"link_latency_us = {rtt_ms * 1000}", ""]
    lines += ["[[devices]]", 'name = "CPU"', 'kind = "cpu"', "memory_gib = 8", "bandwidth_gbs = 10", "threads = 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def worker(model: str, cluster: str, tokens: int) -> dict[str, Any]:
    """In a fresh process: predict, load the plan for real, time decodes."""
    from omni_place.llama import apply
    from omni_place.llama.timing import time_decode
    from omni_place.plan import evaluate

    plan = evaluate(model, cluster, ["--rpc", ",".join(_endpoints(cluster))] + ARGS)
    with apply(plan, dry_run=False, check_first=False, n_threads=1) as loaded:
        timing = time_decode(loaded.context, n_tokens=tokens, warmup=6)
        layers = {d: loaded.report.layers_on(d) for d in ("RPC0", "RPC1")}
    return {"predicted_ms": 1e3 / plan.predicted.tg_tps,
            "predicted_transfers_ms": 1e3 * plan.predicted.tg_breakdown.get("transfers", 0.0),
            "measured": timing.to_dict(), "layers": {k: len(v) for k, v in layers.items()}}


def _endpoints(cluster: str) -> list[str]:
    import tomllib

    data = tomllib.loads(Path(cluster).read_text())
    return [d["endpoint"] for d in data["devices"] if d.get("kind") == "rpc"]


def measure(tokens: int, links: list[tuple[str, float, float]] = LINKS, workdir: Path | None = None,
            repeats: int = 3) -> list[dict[str, Any]]:
    """Run every link setting ``repeats`` times, interleaved (so load drifts hit every setting
    alike); each record has the prediction and the median of the runs' median decode times."""
    import statistics

    from omni_place.llama import rpc_servers
    from omni_place.llama.linkproxy import link_proxy

    work = workdir or Path(tempfile.mkdtemp())
    model = write_model(work / "llama-32k.gguf", "llama", n_layer=8, n_embd=256, n_head=4, n_head_kv=2,
                        n_ff=512, n_vocab=32000, weight_type="q8_0")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in links}
    with rpc_servers(2, threads=1) as servers:
        for _ in range(repeats):
            for name, rtt_ms, gbit in links:
                with link_proxy(servers[0], rtt_ms=rtt_ms, gbit=gbit) as p0, \
                        link_proxy(servers[1], rtt_ms=rtt_ms, gbit=gbit) as p1:
                    cfile = cluster_file(work / f"{name}.toml", [p0, p1], rtt_ms, gbit)
                    r = subprocess.run([sys.executable, "-m", "tests.rpc_links", str(model), str(cfile), str(tokens)],
                                       capture_output=True, text=True, timeout=600, cwd=ROOT)
                    if r.returncode != 0:
                        raise RuntimeError(f"worker failed for {name}: {r.stderr.strip()[-2000:]}")
                    runs[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
    out = []
    for name, rtt_ms, gbit in links:
        first = runs[name][0]
        medians = [run["measured"]["median_ms"] for run in runs[name]]
        out.append({"link": name, "rtt_ms": rtt_ms, "gbit": gbit, "predicted_ms": first["predicted_ms"],
                    "predicted_transfers_ms": first["predicted_transfers_ms"], "layers": first["layers"],
                    "measured": {"median_ms": statistics.median(medians), "runs_median_ms": medians,
                                 "tokens_per_run": tokens}})
    base = out[0]
    for rec in out:
        rec["predicted_slowdown_ms"] = rec["predicted_ms"] - base["predicted_ms"]
        rec["measured_slowdown_ms"] = rec["measured"]["median_ms"] - base["measured"]["median_ms"]
        if rec is not base:
            rec["slowdown_error"] = rec["predicted_slowdown_ms"] / rec["measured_slowdown_ms"] - 1.0
    return out


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
