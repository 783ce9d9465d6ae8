"""Decode speed across an emulated network: predicted vs measured slowdown between link settings.

Two llama.cpp RPC servers run on loopback; each is reached through
:mod:`omni_place.llama.linkproxy` (round-trip time + bandwidth; this kernel has no ``sch_netem``).
A small llama model (vocabulary 32k, so the logits coming back cost real bandwidth) is split
RPC0 | RPC1 with the output head on RPC1 (``--rpc P0,P1 -ngl 99 -ts 1,1``); for every link setting a
fresh process loads it through libllama (``omni_place.llama.apply``) and times single-token
decodes (``omni_place.llama.timing``). omni_place predicts each setting's decode time with
``evaluate()`` on a cluster file carrying the link's bandwidth and round trip; the comparison is
of the *slowdown* against the fastest link, ``t(link) - t(fast)``: the compute part of a 2-core
CPU box is not what the network model predicts.

    python benchmarks/rpc_network.py [--tokens 48] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# (name, round trip ms, Gbit/s): a fast LAN, 10 GbE, 1 GbE, a slow 1 GbE hop
LINKS = [("fast", 0.1, 10.0), ("10gbe", 0.5, 10.0), ("1gbe", 1.0, 1.0), ("10gbe-2ms", 2.0, 10.0), ("1gbe-2ms", 2.0, 1.0)]
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
    from omni_place.llama.apply import apply
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

    from arch_models import write_model

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
                    r = subprocess.run([sys.executable, __file__, "--worker", str(model), str(cfile), str(tokens)],
                                       capture_output=True, text=True, timeout=600)
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


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    records = measure(args.tokens, repeats=args.repeats)
    record = {"benchmark": "rpc_network", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
                          "platform": platform.platform()},
              "command": f"python benchmarks/rpc_network.py --tokens {args.tokens} --repeats {args.repeats}",
              "engine_args": ARGS, "links": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rpc_network.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Decode over an emulated network (`benchmarks/rpc_network.py`)", "",
             f"{record['machine']['cpu']}, {record['machine']['logical_cores']} cores. Llama, 8 layers, "
             "n_embd 256, vocab 32k, Q8_0; RPC0 | RPC1 on loopback behind a delay+rate proxy each; "
             f"{args.tokens} single-token decodes per run, median over {args.repeats} interleaved runs. Slowdown = time per token minus "
             "the fastest link's.", "",
             "| link | RTT ms | Gbit/s | measured ms/token | predicted ms/token | measured slowdown ms | "
             "predicted slowdown ms | error |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        err = f"{100 * r['slowdown_error']:+.0f} %" if "slowdown_error" in r else ""
        lines.append(f"| {r['link']} | {r['rtt_ms']} | {r['gbit']} | {r['measured']['median_ms']:.2f} | "
                     f"{r['predicted_ms']:.2f} | {r['measured_slowdown_ms']:.2f} | {r['predicted_slowdown_ms']:.2f} | {err} |")
    (args.out / "rpc_network.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
