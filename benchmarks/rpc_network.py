"""Decode speed across an emulated network: predicted vs measured slowdown between link settings.

Two llama.cpp RPC servers run on loopback; each is reached through
:mod:`omni_place.llama.linkproxy` (round-trip time + bandwidth; this kernel has no ``sch_netem``).
A small llama model (vocabulary 32k, so the logits coming back cost real bandwidth) is split
RPC0 | RPC1 with the output head on RPC1 (``--rpc P0,P1 -ngl 99 -ts 1,1``); for every link setting a
fresh process loads it once through libllama (``omni_place.llama.apply``) and times blocks of
single-token decodes (``omni_place.llama.timing``), switching both proxies to every link setting
in turn, round after round. omni_place predicts each setting's decode time with
``evaluate()`` on a cluster file carrying the link's bandwidth and round trip; the comparison is
of the *slowdown* against the fastest link, the median over rounds of ``t(link) - t(fast)`` within
a round: the compute part of a 2-core CPU box is not what the network model predicts. The
measurement itself is ``tests/rpc_links.py`` (tests/test_rpc_network.py runs it on two settings);
this script runs every setting and records.

From the repository root:

    python -m benchmarks.rpc_network [--tokens 16] [--rounds 80] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from tests.rpc_links import ARGS, measure

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=16, help="timed decodes per block")
    ap.add_argument("--rounds", type=int, default=80, help="blocks per link setting, interleaved")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    records = measure(args.tokens, rounds=args.rounds)
    record = {"benchmark": "rpc_network", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cpu": platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
                          "platform": platform.platform()},
              "command": f"python -m benchmarks.rpc_network --tokens {args.tokens} --rounds {args.rounds}",
              "engine_args": ARGS, "links": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rpc_network.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = ["# Decode over an emulated network (`benchmarks/rpc_network.py`)", "",
             f"{record['machine']['cpu']}, {record['machine']['logical_cores']} cores. Llama, 8 layers, "
             "n_embd 256, vocab 32k, Q8_0; RPC0 | RPC1 on loopback behind a delay+rate proxy each; "
             f"one load; {args.rounds} rounds, each a block of {args.tokens} single-token decodes per link "
             "(ABBA order). Slowdown = median over rounds of the block's median time per token minus the "
             "fastest link's in the same round. Proxy late = delay per token the proxies added beyond the "
             "emulated link (thread wake-ups), not subtracted.", "",
             "| link | RTT ms | Gbit/s | measured ms/token | predicted ms/token | measured slowdown ms | "
             "predicted slowdown ms | error | proxy late ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        err = f"{100 * r['slowdown_error']:+.0f} %" if "slowdown_error" in r else ""
        lines.append(f"| {r['link']} | {r['rtt_ms']} | {r['gbit']} | {r['measured']['median_ms']:.2f} | "
                     f"{r['predicted_ms']:.2f} | {r['measured_slowdown_ms']:.2f} | "
                     f"{r['predicted_slowdown_ms']:.2f} | {err} | {r['measured']['proxy_late_ms']:.2f} |")
    (args.out / "rpc_network.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
