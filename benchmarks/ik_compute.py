"""ik_llama.cpp's compute buffers: measure its margins over mainline's replay, and score the planner.

Reads ``benchmarks/compute_sweep.py --ik-bench`` records (ik's llama-bench on one CUDA GPU, a
real load of a sparse random model per record, the context run as one prompt), rebuilds each
record's placement with ik's own decoder from the flags it ran (:func:`omni_place.engines.ik_llama.decode`),
and prices it with :meth:`omni_place.cost.CostModel.usage` under ik's engine rules (its op offload
of routed experts only when each expert gets 32 tokens on average, ggml-cuda.cu:5180-5207) with
the margins set to zero: mainline's replay of the placement. ik builds its own graphs (fused ops,
its MoE and MLA paths), so the planner adds a margin per buffer (accelerator, host): the smallest
multiple of 8 MiB that leaves at most 5 % of the training records (``case % 4 != 0``) under the
engine by more than 32 MiB, issue 14's bound. The report gives, per buffer, placement and
architecture, the replay alone and the replay plus the chosen margins on the held-out records,
and the margins the planner ships (``IK_COMPUTE_MARGIN``, ``IK_HOST_COMPUTE_MARGIN``).

A record whose run failed after the context was built still has its ``compute buffer size``
lines and counts; one with none (ik refused the model: no ``deepseek32``, mainline-converted MLA
heads other than 576/512, src/llama-hparams.cpp:1083-1097) is skipped. Every run's ``-v`` log of
the committed sweeps (ik_llama.cpp 8337e4cd3, CUDA sm_90, one H200) is in
``benchmarks/results/compute_sweep_ik_27_logs.tar.xz``.

    python -m benchmarks.ik_compute     # the committed sweeps -> benchmarks/results/ik_compute.{md,json}
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compute_sweep import placements
from benchmarks.compute_fit import _RIG, RESULTS, TOLERANCE_MIB, _profile, _stats, record_ubatch
from benchmarks.split_compute import HOST
from omni_place.cost import CostModel
from omni_place.engines import ik_llama
from omni_place.placement import CPU
from omni_place.units import MiB

DEFAULT_FILES = (RESULTS / "compute_sweep_ik_27a.jsonl", RESULTS / "compute_sweep_ik_27b.jsonl")
UNDER_SHARE = 0.05  # training records the margin may leave under by more than TOLERANCE_MIB
STEP = 8 * MiB
BUFFERS = (("CUDA0", "CUDA0"), (HOST, CPU))  # the engine's buffer, the planner's device


def read_records(paths: list[Path]) -> list[dict[str, Any]]:
    """Every record with a CUDA0 compute line, tagged with its file."""
    out = []
    for path in paths:
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "meta" not in rec and rec["compute"].get("CUDA0"):
                out.append({**rec, "file": path.name})
    return out


def replayed(rec: dict[str, Any], tmp: Path, cache: dict[str, Any]) -> dict[str, int]:
    """The record's compute buffers by the planner's device name, priced under ik's rules with
    no margin (mainline's replay of the placement ik makes of the record's flags)."""
    model = _profile(cache, tmp, rec["arch"], rec["shape"])
    context = replace(ik_llama.IkLlama.traits.context(
        ctx=rec["n_ctx"], n_ubatch=record_ubatch(rec), type_k=rec["kv_type"], type_v=rec["kv_type"],
        flash_attn=rec["flash_attn"]), compute_margin=0, host_compute_margin=0)
    # the record keeps the flags before compute_sweep._run_tool appended the placement's overrides
    spec = dict(placements(["CUDA0"], rec["arch"], rec["shape"]["n_layer"]))[rec["placement"]]
    overrides = [f"{pattern}={target}" for pattern, target in spec.get("overrides", ())]
    parsed = ik_llama.parse_args(rec["argv"] + (["-ot", ",".join(overrides)] if overrides else []), tool="bench")
    p = ik_llama.decode(model, parsed, ["CUDA0"], context, tool="bench")
    return {u.name: u.compute_bytes for u in CostModel(model, _RIG, context).usage(p)}


def smallest_margin(pred: np.ndarray, truth: np.ndarray) -> int:
    """The smallest multiple of STEP leaving at most UNDER_SHARE of the rows under by > 32 MiB."""
    margin = 0
    while np.mean(pred + margin < truth - TOLERANCE_MIB * MiB) > UNDER_SHARE:
        margin += STEP
    return margin


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", type=Path, default=list(DEFAULT_FILES), help="compute_sweep --ik-bench JSONL")
    ap.add_argument("--out", type=Path, default=RESULTS / "ik_compute", help="writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rec in read_records(args.files):
            priced = replayed(rec, Path(tmp), cache)
            for buffer, name in BUFFERS:
                if rec["compute"].get(buffer):
                    rows.append({"file": rec["file"], "case": rec["case"], "arch": rec["arch"],
                                 "placement": rec["placement"], "buffer": buffer, "engine": rec["compute"][buffer],
                                 "replay": priced[name], "held_out": rec["case"] % 4 == 0})
    shipped = {"CUDA0": ik_llama.IK_COMPUTE_MARGIN, HOST: ik_llama.IK_HOST_COMPUTE_MARGIN}
    margins, table = {}, []
    for buffer, _ in BUFFERS:
        sel = [r for r in rows if r["buffer"] == buffer]
        train = [r for r in sel if not r["held_out"]]
        margins[buffer] = smallest_margin(np.array([r["replay"] for r in train], dtype=float),
                                          np.array([r["engine"] for r in train], dtype=float))
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in sel:
            if r["held_out"]:
                for key in (("*", "*"), (r["placement"], "*"), ("*", r["arch"])):
                    groups[key].append(r)
        for (place, arch), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "*", kv[0])):
            truth = np.array([r["engine"] for r in rs], dtype=float)
            replay = np.array([r["replay"] for r in rs], dtype=float)
            table.append({"buffer": buffer, "placement": place, "arch": arch,
                          "replay": _stats(replay, truth), "planner": _stats(replay + shipped[buffer], truth)})
    args.out.with_suffix(".json").write_text(json.dumps(
        {"margins_mib": {b: m / MiB for b, m in margins.items()},
         "shipped_mib": {b: m / MiB for b, m in shipped.items()}, "table": table, "rows": rows}, indent=1) + "\n")
    lines = ["# ik_llama.cpp compute buffers: mainline's replay under ik's rules, and the margins over it", "",
             f"{len(rows)} buffers of {len({(r['file'], r['case'], r['placement']) for r in rows})} H200 loads "
             f"({', '.join(p.name for p in args.files)}); held out: `case % 4 == 0`.", "",
             "| buffer | margin from the training records | shipped (`ik_llama.IK_*COMPUTE_MARGIN`) |",
             "|---|---:|---:|"]
    lines += [f"| {b} | {margins[b] / MiB:.0f} MiB | {shipped[b] / MiB:.0f} MiB |" for b, _ in BUFFERS]
    lines += ["", "Held-out records: within max(3 %, 32 MiB), under by > 32 MiB, median relative error, worst "
              "under and over (MiB); `replay` is mainline's replay under ik's rules, `planner` adds the shipped "
              "margin; `*`: every placement or architecture.", "",
              "| buffer | placement | arch | n | replay within | replay under | replay median | replay worst under "
              "| planner within | planner under | planner median | planner worst under | planner worst over |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        a, b = t["replay"], t["planner"]
        lines.append(f"| {t['buffer']} | {t['placement']} | {t['arch']} | {a['rows']} | {a['within_target']:.0%} "
                     f"| {a['under_32mib']} | {a['median_rel']:+.1%} | {a['max_under_mib']:.1f} "
                     f"| {b['within_target']:.0%} | {b['under_32mib']} | {b['median_rel']:+.1%} "
                     f"| {b['max_under_mib']:.1f} | {b['max_over_mib']:.1f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
