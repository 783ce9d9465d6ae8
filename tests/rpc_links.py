"""Decode over emulated network links: omni_place's predicted slowdown against the measured one.

Two llama.cpp RPC servers run on loopback; each is reached through
:mod:`omni_place.llama.linkproxy` (round-trip time + bandwidth; this kernel has no ``sch_netem``).
A small llama model (vocabulary 32k, so the logits coming back cost real bandwidth) is split
RPC0 | RPC1 with the output head on RPC1 (``--rpc P0,P1 -ngl 99 -ts 1,1``). One fresh process
(``python -m tests.rpc_links SPEC_JSON``, run from the repository root) loads it once through
libllama and times blocks of single-token decodes, switching both proxies to each link setting in
turn (ABBA order, so a load drift on this shared machine hits every setting alike). A setting's
slowdown is the median over rounds of its block minus the fastest link's block *of the same
round*: a paired difference, so process start-up, memory placement and load that last longer
than one round cancel. The prediction is ``evaluate()`` on a cluster file carrying the link's
bandwidth and round trip.

Used by tests/test_rpc_network.py and benchmarks/rpc_network.py (which records more settings).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .arch_models import write_model

ROOT = Path(__file__).resolve().parents[1]

Link = tuple[str, float, float]  # (name, round trip ms, Gbit/s)
# a fast LAN, 10 GbE, 1 GbE, a slow 1 GbE hop
LINKS: list[Link] = [("fast", 0.1, 10.0), ("10gbe", 0.5, 10.0), ("1gbe", 1.0, 1.0), ("10gbe-2ms", 2.0, 10.0),
                     ("1gbe-2ms", 2.0, 1.0)]
ARGS = ["-ngl", "99", "-ts", "1,1", "-c", "512", "-ub", "64"]
WARMUP = 2  # decodes before each timed block, after its link switch


def cluster_file(path: Path, endpoints: list[str], rtt_ms: float, gbit: float) -> Path:
    lines = ['name = "rpc-link"', ""]
    for i, ep in enumerate(endpoints):
        lines += ["[[devices]]", f'name = "RPC{i}"', 'kind = "rpc"', f'endpoint = "{ep}"', "memory_gib = 4",
                  "bandwidth_gbs = 10", f"link_gbs = {gbit / 8}", f"link_latency_us = {rtt_ms * 1000}", ""]
    lines += ["[[devices]]", 'name = "CPU"', 'kind = "cpu"', "memory_gib = 8", "bandwidth_gbs = 10", "threads = 1"]
    path.write_text("\n".join(lines) + "\n")
    return path


def worker(model: str, servers: list[str], links: list[Link], tokens: int, rounds: int, workdir: str) -> dict[str, Any]:
    """In a fresh process: predict every link, load the model once behind two switchable proxies,
    then per round time a block of ``tokens`` decodes over each link (ABBA order)."""
    from omni_place.llama import apply
    from omni_place.llama.linkproxy import link_proxy
    from omni_place.llama.timing import time_decode
    from omni_place.plan import evaluate

    _, rtt0, gbit0 = links[0]
    with link_proxy(servers[0], rtt_ms=rtt0, gbit=gbit0) as p0, link_proxy(servers[1], rtt_ms=rtt0, gbit=gbit0) as p1:
        proxies = (p0, p1)
        endpoints = [p.endpoint for p in proxies]
        argv = ["--rpc", ",".join(endpoints)] + ARGS
        plans = {name: evaluate(model, str(cluster_file(Path(workdir) / f"{name}.toml", endpoints, rtt, gbit)), argv)
                 for name, rtt, gbit in links}
        out: dict[str, dict[str, Any]] = {
            name: {"predicted_ms": 1e3 / plans[name].predicted.tg_tps,
                   "predicted_transfers_ms": 1e3 * plans[name].predicted.tg_breakdown.get("transfers", 0.0),
                   "block_ms": [], "late_ms": []} for name, _, _ in links}
        with apply(plans[links[0][0]], dry_run=False, check_first=False, n_threads=1) as loaded:
            time_decode(loaded.context, n_tokens=tokens, warmup=0)  # discarded: the first after loading
            for r in range(rounds):
                for name, rtt, gbit in links if r % 2 == 0 else links[::-1]:
                    for p in proxies:
                        p.set_link(rtt_ms=rtt, gbit=gbit)
                    before = [p.stats().late_s for p in proxies]
                    timing = time_decode(loaded.context, n_tokens=tokens, warmup=WARMUP)
                    late = sum(p.stats().late_s - b for p, b in zip(proxies, before))
                    out[name]["block_ms"].append(1e3 * timing.median_s)
                    out[name]["late_ms"].append(1e3 * late / (tokens + WARMUP))
            layers = {d: len(loaded.report.layers_on(d)) for d in ("RPC0", "RPC1")}
    return {"links": out, "layers": layers}


def measure(tokens: int, links: list[Link] = LINKS, workdir: Path | None = None,
            rounds: int = 80) -> list[dict[str, Any]]:
    """Time every link setting in ``rounds`` interleaved blocks of ``tokens`` decodes; each record
    has the prediction, the median block time and the median paired slowdown against ``links[0]``.

    ``proxy_late_ms`` is the delay per decode the proxies added beyond the emulated link (thread
    wake-ups; see :class:`omni_place.llama.linkproxy.LinkStats`): a diagnostic, not subtracted."""
    from omni_place.llama import rpc_servers

    work = workdir or Path(tempfile.mkdtemp())
    model = write_model(work / "llama-32k.gguf", "llama", n_layer=8, n_embd=256, n_head=4, n_head_kv=2,
                        n_ff=512, n_vocab=32000, weight_type="q8_0")
    with rpc_servers(2, threads=1) as servers:
        spec = {"model": str(model), "servers": servers, "links": links, "tokens": tokens, "rounds": rounds,
                "workdir": str(work)}
        r = subprocess.run([sys.executable, "-m", "tests.rpc_links", json.dumps(spec)],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"rpc_links worker failed: {r.stderr.strip()[-2000:]}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    runs = result["links"]
    base = runs[links[0][0]]
    out = []
    for name, rtt_ms, gbit in links:
        run = runs[name]
        paired = [t - b for t, b in zip(run["block_ms"], base["block_ms"])]
        rec = {"link": name, "rtt_ms": rtt_ms, "gbit": gbit, "predicted_ms": run["predicted_ms"],
               "predicted_transfers_ms": run["predicted_transfers_ms"], "layers": result["layers"],
               "measured": {"median_ms": statistics.median(run["block_ms"]), "block_ms": run["block_ms"],
                            "tokens_per_block": tokens, "rounds": rounds,
                            "proxy_late_ms": statistics.median(run["late_ms"]), "late_ms": run["late_ms"]},
               "predicted_slowdown_ms": run["predicted_ms"] - base["predicted_ms"],
               "measured_slowdown_ms": statistics.median(paired), "paired_slowdowns_ms": paired}
        if name != links[0][0]:
            rec["slowdown_error"] = rec["predicted_slowdown_ms"] / rec["measured_slowdown_ms"] - 1.0
        out.append(rec)
    return out


if __name__ == "__main__":
    s = json.loads(sys.argv[1])
    print(json.dumps(worker(s["model"], s["servers"], [tuple(x) for x in s["links"]], s["tokens"], s["rounds"],
                            s["workdir"])))
