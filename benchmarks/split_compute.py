"""Score the planner's compute buffers of layer splits (a GPU beside RPC servers) against the engine's.

Reads ``benchmarks/compute_sweep.py`` records of dry runs over several devices (``--devices
CUDA0 --rpc N``: placements ``split``, ``split_partial``, ``split_exps``), rebuilds each record's
model, cluster (CUDA0, the RPC servers at the record's endpoints, the CPU) and placement (every
layer and the output head on the device the engine's log names, the routed experts on the CPU for
``split_exps``), prices it with :meth:`omni_place.cost.CostModel.usage`, and compares each
device's ``compute_bytes`` with the engine's ``compute buffer size`` line of that device: CUDA0,
each RPC server and the host (``CUDA_Host``, the CPU's share). Every RPC server prints as
``RPC0[host:port]``; the engine lists them in device order, so a file's endpoints are named RPC0,
RPC1, ... in the order a record with all of them lists them. Writes a table per file, device role
and architecture (and per placement) to ``benchmarks/results/split_compute.md`` and one record per
(dry run, device) to ``split_compute.json``.

    python -m benchmarks.split_compute benchmarks/results/compute_sweep_split_26.jsonl \\
        benchmarks/results/compute_sweep_split3_26.jsonl
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.compute_fit import _RIG, RESULTS, TOLERANCE_MIB, _profile, _stats, record_ubatch
from omni_place.cost import CostModel
from omni_place.devices import Cluster, Device
from omni_place.model import ModelProfile
from omni_place.placement import CPU, Context, Placement, expert_kind, on_cpu
from omni_place.units import GiB, MiB

HOST = "CUDA_Host"  # the engine's name of the CPU's compute buffer beside a CUDA GPU
PLACEMENTS = ("split", "split_partial", "split_exps")
DEFAULT_FILES = (RESULTS / "compute_sweep_split_26.jsonl", RESULTS / "compute_sweep_split3_26.jsonl")


@dataclass(frozen=True)
class Sweep:
    """One sweep file: its path, devices (the -dev order) and RPC endpoints by device name."""

    path: Path
    devices: tuple[str, ...]
    endpoints: dict[str, str]
    records: list[dict[str, Any]]


def endpoint(buffer: str) -> str | None:
    """The ``host:port`` of an RPC server's buffer name (``RPC0[host:port]``), None for another device's."""
    return buffer.split("[", 1)[1].rstrip("]") if buffer.startswith("RPC") and "[" in buffer else None


def rpc_endpoints(compute: dict[str, int]) -> tuple[str, ...]:
    """The endpoints of a record's RPC compute buffers, in the order the engine printed them."""
    return tuple(ep for ep in map(endpoint, compute) if ep is not None)


def read_sweep(path: Path) -> Sweep:
    """A sweep file's meta line and its successful split records; the RPC servers' endpoints are
    named in the engine's order, learnt from the records that print a buffer for every server."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines or "meta" not in lines[0]:
        raise SystemExit(f"{path}: the first line is not a compute_sweep meta line")
    devices = tuple(lines[0]["meta"]["devices"])
    records = [r for r in lines[1:] if r["ok"] and r["placement"] in PLACEMENTS]
    rpcs = [d for d in devices if d.startswith("RPC")]
    orders = {rpc_endpoints(r["compute"]) for r in records}
    complete = {order for order in orders if len(order) == len(rpcs)}
    if len(complete) != 1 or not all(set(order) <= set(next(iter(complete))) for order in orders):
        raise SystemExit(f"{path}: the RPC servers' endpoints are not one fixed list ({sorted(orders)})")
    return Sweep(path, devices, dict(zip(rpcs, next(iter(complete)))), records)


def cluster_of(sweep: Sweep) -> Cluster:
    """The sweep's rig: the one GPU and the CPU of compute_fit's rig, and the RPC servers
    (capacities and speeds do not enter the compute buffers)."""
    rpcs = tuple(Device(name=name, kind="rpc", memory_bytes=1024 * GiB, bandwidth_gbs=100, endpoint=endpoint)
                 for name, endpoint in sweep.endpoints.items())
    return Cluster("split-sweep", (*rpcs, *_RIG.devices))


def placement_of(rec: dict[str, Any], model: ModelProfile, devices: tuple[str, ...]) -> Placement:
    """The record's layout: each layer and the output head (key ``n_layer``) where the engine's
    log put it, the routed experts on the CPU for ``split_exps``; the order is the -dev list, a
    device that holds nothing included (it still counts towards pipelining, llama-context.cpp:431)."""
    homes = tuple(rec["layer_devices"][str(il)] for il in range(model.n_layer + 1))
    if rec["placement"] == "split_exps":
        experts = tuple(on_cpu({expert_kind(t) for t in lc.expert_tensors}) for lc in model.layers)
    else:
        experts = (frozenset(),) * model.n_layer
    return Placement(tuple(devices), homes[:-1], experts, homes[-1])


def engine_buffers(rec: dict[str, Any], sweep: Sweep) -> dict[str, int]:
    """The record's compute buffers by the planner's device name (RPC servers by endpoint, the
    host's ``CUDA_Host`` as the CPU); a buffer no device accounts for is an error."""
    by_endpoint = {ep: name for name, ep in sweep.endpoints.items()}
    out: dict[str, int] = {}
    for buffer, size in rec["compute"].items():
        if (ep := endpoint(buffer)) in by_endpoint:
            name = by_endpoint[ep]
        elif buffer == HOST:
            name = CPU
        elif buffer in sweep.devices:
            name = buffer
        else:
            raise SystemExit(f"{sweep.path}: case {rec['case']}: compute buffer {buffer!r} is no device of the sweep")
        out[name] = int(size)
    return out


def score_record(rec: dict[str, Any], model: ModelProfile, sweep: Sweep, cluster: Cluster) -> list[dict[str, Any]]:
    """One row per engine compute buffer of a record: the device, its role and both prices."""
    context = Context(ctx=rec["n_ctx"], n_ubatch=record_ubatch(rec), type_k=rec["kv_type"], type_v=rec["kv_type"],
                      flash_attn=rec["flash_attn"])
    cost, placement = CostModel(model, cluster, context), placement_of(rec, model, sweep.devices)
    usage = {u.name: u.compute_bytes for u in cost.usage(placement)}
    # the engine pipelines a head alone on a layer-less device set by -ts; the planner spells that with -ot
    pipelined = (("engine and planner" if cost.pipeline_parallel(placement) else "engine only")
                 if rec.get("pipeline_parallel") else "no")
    return [{"file": sweep.path.name, "case": rec["case"], "arch": rec["arch"], "placement": rec["placement"],
             "pipelined": pipelined,
             "device": name, "role": HOST if name == CPU else name, "engine": size, "predicted": usage.get(name)}
            for name, size in engine_buffers(rec, sweep).items()]


def score(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """:func:`score_record` rows of every record of the files."""
    cache: dict[str, ModelProfile] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            sweep = read_sweep(path)
            cluster = cluster_of(sweep)
            for rec in sweep.records:
                yield from score_record(rec, _profile(cache, Path(tmp), rec["arch"], rec["shape"]), sweep, cluster)


def summarize(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Rows per (file, role, ``by``), ``by`` "all" first: count, within max(3 %, 32 MiB), under by
    more than 32 MiB, median and worst (largest absolute) error in MiB."""
    groups: dict[tuple[str, str, str], list[tuple[int, int]]] = defaultdict(list)
    for r in rows:
        for key in ("all", r[by]):
            groups[r["file"], r["role"], key].append((r["predicted"] or 0, r["engine"]))
    out = []
    for (file, role, key), pairs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "all",
                                                                           kv[0][2])):
        pred, truth = (np.array(col, dtype=float) for col in zip(*pairs))
        err = (pred - truth) / MiB
        stats = _stats(pred, truth)
        out.append({"file": file, "role": role, by: key, "n": stats["rows"], "within": stats["within_target"],
                    "under": stats["under_32mib"], "median_mib": round(float(np.median(err)), 1),
                    "worst_mib": round(float(err[np.argmax(np.abs(err))]), 1)})
    return out


def table(rows: list[dict[str, Any]], by: str) -> list[str]:
    head = ["| file | role | " + by + " | n | within max(3 %, 32 MiB) | under by > 32 MiB | median error MiB | "
            "worst error MiB |", "|---|---|---|---:|---:|---:|---:|---:|"]
    return head + [f"| {r['file']} | {r['role']} | {r[by]} | {r['n']} | {r['within']:.0%} | {r['under']} | "
                   f"{r['median_mib']:+.1f} | {r['worst_mib']:+.1f} |" for r in rows]


def main(argv: list[str] | None = None) -> None:
    summary, details = __doc__.split("\n\n", 1)
    ap = argparse.ArgumentParser(description=summary, epilog=details,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, default=list(DEFAULT_FILES),
                    help="compute_sweep JSONL files of split runs (default: the two committed sweeps)")
    ap.add_argument("--out", type=Path, default=RESULTS / "split_compute",
                    help="where to write OUT.md and OUT.json (default: benchmarks/results/split_compute)")
    args = ap.parse_args(argv)
    rows = list(score(args.files))
    by_arch, by_place, by_pipe = (summarize(rows, by) for by in ("arch", "placement", "pipelined"))
    lines = (["# The planner's compute buffers of layer splits against the engine's", "",
              "`python -m benchmarks.split_compute " + " ".join(p.name for p in args.files) + "`: each record's "
              "layout (a GPU beside RPC servers) priced by `CostModel.usage`, per engine `compute buffer size` "
              f"line (role `{HOST}`: the CPU's). Error = planner - engine; under = the planner below the engine "
              f"by more than {TOLERANCE_MIB:.0f} MiB.", "", "## By architecture", "", *table(by_arch, "arch"),
              "", "## By placement", "", *table(by_place, "placement"),
              "", "## By pipelining (the engine's log; whether the planner prices the placement pipelined)", "",
              *table(by_pipe, "pipelined")])
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(
        {"files": [p.name for p in args.files], "by_arch": by_arch, "by_placement": by_place, "by_pipelining": by_pipe,
         "records": rows},
        indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
