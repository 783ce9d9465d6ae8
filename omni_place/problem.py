"""The core problem: a cost model turned into the C core's arrays, solved over candidate
device orders.

Memory is counted in units (1 MiB, coarser for large clusters), rounded up so that a solution
always fits in bytes; times are seconds per token from :class:`~omni_place.cost.CostModel`. The
core returns one optimum per memory variant (with and without CPU-held weights); the planner
re-prices them exactly.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._native import core as _core
from .compute import PIPELINE_COPIES
from .cost import CPU, EXPERT_OPTIONS, CostModel, Placement, backend_of, on_cpu
from .devices import Cluster
from .errors import InvalidArgumentError, NativeCoreError
from .model import ModelProfile
from .units import MiB

MAX_EXHAUSTIVE_ORDERS = 4  # accelerators up to which every ordered subset is tried
# From this many accelerators on, memory is counted in coarser units so the exact DP stays fast
# (its states grow with capacity/unit; benchmarks/planner_speed.py): each device's capacity is
# at most this many units. Sizes are rounded up, so a plan still fits in bytes.
COARSE_FROM_DEVICES = 8
MAX_UNITS_PER_DEVICE = 4096
MAX_DEVICES = _core.MAX_DEVICES
Candidate = tuple[float, Placement, dict[str, Any]]  # (objective, placement, core statistics)


def candidate_orders(cluster: Cluster, cost: CostModel, *, rpc: bool = True) -> list[tuple[str, ...]]:
    """Device orders the core chooses from: every ordered subset of up to 4 accelerators;
    beyond that the default order, fastest-first and slowest-first, and those without the
    slowest device. ``rpc=False`` leaves RPC devices out (engines that cannot use them)."""
    names = [d.name for d in cluster.gpus if rpc or d.kind != "rpc"]
    if not names:
        return []
    if len(names) <= MAX_EXHAUSTIVE_ORDERS:
        out: list[tuple[str, ...]] = []
        for r in range(1, len(names) + 1):
            out += list(itertools.permutations(names, r))
        return out
    by_bw = sorted(names, key=lambda n: -cost.bandwidth(n))
    cands = [tuple(names), tuple(by_bw), tuple(reversed(by_bw)), tuple(by_bw[:-1]), tuple(names[:-1])]
    # each host's devices together, so the network is crossed once per host: local GPUs first,
    # then the remote hosts; and the remote hosts first (llama.cpp's default puts RPC first)
    hosts: dict[str, list[str]] = {}
    for n in by_bw:
        dev = cluster.by_name(n)
        key = "local" if dev.kind == "gpu" else (dev.host if dev.host not in (None, "local")
                                                 else (dev.endpoint or n).rpartition(":")[0])
        hosts.setdefault(key, []).append(n)
    local = hosts.pop("local", [])
    remote = [n for group in hosts.values() for n in group]
    cands += [tuple(local + remote), tuple(remote + local)]
    seen: list[tuple[str, ...]] = []
    for c in cands:
        if c and c not in seen:
            seen.append(c)
    return seen


@dataclass
class _Arrays:
    names: list[str]
    orders: np.ndarray
    tg: dict[str, Any]  # per-layer/device time arrays and scalar output times (seconds per token)
    pp: dict[str, Any]
    mem: dict[str, np.ndarray]
    allow: np.ndarray
    stream: np.ndarray  # [L][K] bytes per prompt token of CPU-held experts under each option
    stream_cpu: np.ndarray  # [L] the same for a layer wholly on the CPU
    first_mem_no_cpu: np.ndarray  # [D] what the first device holds when no weight is on the CPU
    fixed_mem_no_cpu: np.ndarray  # [D] per-device compute buffers then (pipeline parallelism)
    # rows of ``orders`` whose first device takes op offload, or none of whose devices does: the
    # engine offloads a CPU-held weight's op to the first device that takes it (ggml-backend.cpp:
    # 951-980), where ``first_mem`` reserves its buffer; an order with an RPC device before a GPU
    # would put it on the GPU behind
    offload_rows: np.ndarray


def memory_unit(cluster: Cluster) -> int:
    """Bytes per memory unit of the core problem for this cluster (see :func:`unit_for_capacities`)."""
    return unit_for_capacities([d.usable_bytes for d in cluster.gpus])


def unit_for_capacities(caps: Sequence[int]) -> int:
    """1 MiB, or for 8+ accelerators the power of two that keeps the largest capacity within
    MAX_UNITS_PER_DEVICE units."""
    if len(caps) < COARSE_FROM_DEVICES:
        return MiB
    biggest = max(max(caps), 1)  # every device full (memory == margin) leaves 0 usable bytes
    return max(MiB, 1 << max(0, math.ceil(math.log2(biggest / MAX_UNITS_PER_DEVICE))))


def build_arrays(cost: CostModel, orders: Sequence[tuple[str, ...]], unit: int = MiB) -> _Arrays:
    """Fill the core's arrays from the cost model (times per token, memory in ``unit`` bytes,
    rounded up so that a solution always fits in bytes)."""

    def _units(n: float) -> int:
        return int(math.ceil(n / unit))

    model, cluster = cost.model, cost.cluster
    names = [d.name for d in cluster.gpus]
    L, D, K = model.n_layer, len(names), len(EXPERT_OPTIONS)
    idx = {n: i for i, n in enumerate(names)}
    order_arr = np.full((max(1, len(orders)), D), -1, dtype=np.int32)
    for r, order in enumerate(orders):
        order_arr[r, : len(order)] = [idx[n] for n in order]
    t_tg = np.zeros((D, L, K))
    t_pp = np.zeros((D, L, K))
    mem_dense = np.zeros((D, L), dtype=np.int64)
    mem_exp = np.zeros((D, L, K), dtype=np.int64)
    allow = np.ones((D, L, K), dtype=np.uint8)
    stream = np.zeros((L, K))
    stream_cpu = np.zeros(L)
    tcpu_tg = np.zeros(L)
    tcpu_pp = np.zeros(L)
    # routed experts the CPU holds are streamed to the first device only if op offload takes them
    experts_streamed = cost.experts_offloaded
    offloading = [n for n in names if cost.offloads_to(n)]
    split_pp = cost.params.split_s / cost.n_tokens  # a graph split per op-offloaded weight (offload_splits)
    flops_streamed = 0.0
    amount_streamed = 0.0
    for il, lc in enumerate(model.layers):
        nextn = lc.is_nextn
        tcpu_tg[il] = 0.0 if nextn else sum(cost.layer_tg(il, CPU, frozenset()).values())
        # pp of CPU-held weights goes through stream x stream_rate[first]
        stream_cpu[il] = 0.0 if nextn else cost.cpu_layer_pp_bytes(il, experts_streamed) / cost.n_tokens
        if not nextn:
            flops_streamed += cost.dense_flops(il, gpu=True)
            flops_streamed += cost.expert_flops(il, gpu=True) if experts_streamed else 0.0
            amount_streamed += stream_cpu[il]
            if not experts_streamed:  # a CPU layer's experts computed by the CPU
                tcpu_pp[il] = cost.expert_flops(il, gpu=False) / cost.flops(CPU)
            if offloading:  # beside its weights' bytes: its KV cache's traffic and the splits
                tcpu_pp[il] += max(sum(cost.cpu_cache_pp(il, g).values()) for g in offloading) + split_pp * (
                    cost.offload_splits(il, True, cost.ffn_in_prompt[il] if experts_streamed else 0.0))
        for o, kinds in enumerate(EXPERT_OPTIONS):
            # (a prompt's last layer copies none of its FFN: CostModel.ffn_in_prompt)
            cpu_bytes = cost.expert_bytes(il, "stored", kinds, True) * cost.ffn_in_prompt[il] if experts_streamed else 0
            stream[il, o] = 0.0 if nextn else cpu_bytes * cost.expert_hit / cost.n_tokens
        for d, name in enumerate(names):
            backend = backend_of(cluster.by_name(name))
            mem_dense[d, il] = _units(lc.dense[backend] + cost.kv[il])
            for o, kinds in enumerate(EXPERT_OPTIONS):
                if o and not lc.has_experts:
                    allow[d, il, o] = 0
                mem_exp[d, il, o] = _units(cost.expert_bytes(il, backend, kinds, False))
                if nextn:
                    continue
                # + a negligible tie-break so CPU experts gather in the lowest layers (short -ot)
                t_tg[d, il, o] = sum(cost.layer_tg(il, name, on_cpu(kinds)).values()) + (1e-12 * il if o else 0.0)
                parts = cost.layer_pp(il, name, on_cpu(kinds), None)  # first=None: CPU part priced via stream
                t_pp[d, il, o] = sum(v for k, v in parts.items() if k != CPU or not experts_streamed)
                if experts_streamed and offloading and stream[il, o]:
                    stored = cost.expert_bytes(il, "stored", None, False)
                    t_pp[d, il, o] += split_pp * cost.offload_splits(
                        il, False, cost.expert_bytes(il, "stored", kinds, True) / stored if stored else 0.0)
    # seconds per streamed byte-per-token when device f is first (see CostModel._cpu_weights_pp)
    flops_per_amount = flops_streamed / amount_streamed if amount_streamed else 0.0
    rate = np.zeros(D)
    for d, name in enumerate(names):
        if cost.offloads_to(name):
            rate[d] = 1.0 / cost.stream_bandwidth(name) + flops_per_amount / cost.flops(name)
        else:
            rate[d] = flops_per_amount / cost.flops(CPU)
    if cost.experts_pinned and not cost.context.pinned_weights:
        # the engine pins overridden experts but not whole CPU layers: the one rate per first
        # device is the layers' (pageable), so the experts' amounts shrink by the pinned rate's
        # share, the largest over the GPUs (never cheaper than any); predict() prices both exactly
        shares = [(1.0 / cost.stream_bandwidth(n, True) + flops_per_amount / cost.flops(n)) / rate[d]
                  for d, n in enumerate(names) if cost.offloads_to(n)]
        stream *= max(shares, default=1.0)
    trans_tg = np.zeros((D + 1, D + 1))
    trans_pp = np.zeros((D + 1, D + 1))
    all_names = names + [CPU]
    for a, na in enumerate(all_names):
        for b, nb in enumerate(all_names):
            trans_tg[a, b] = cost.hop_tg(na, nb)
            trans_pp[a, b] = cost.hop_pp(na, nb)
    out_tg = np.array([cost.output_tg(n) for n in names])
    comp = cost.compute
    offload = cost.op_offload_bound
    embedding = model.input_bytes() if cost.context.embedding_on_first else 0
    # a device's compute buffer is a peak: its layers' alone, or theirs with the output head's
    margin = cost.context.compute_margin if comp.split_replay is not None else 0  # compute_price.add_compute_margins
    layers_only = [comp.device_bytes(True, False, backend=backend_of(cluster.by_name(n))) + margin for n in names]
    with_output = [comp.device_bytes(True, True, backend=backend_of(cluster.by_name(n))) + margin for n in names]
    mem = {
        "mem_dense": mem_dense,
        "mem_exp": mem_exp,
        "out_mem": np.array([_units(model.output_bytes(backend_of(cluster.by_name(n))) + max(0, w - l))
                             for n, w, l in zip(names, with_output, layers_only)], dtype=np.int64),
        "fixed_mem": np.array([_units(b) for b in layers_only], dtype=np.int64),
        "first_mem": np.array([_units(offload + embedding) if cluster.by_name(n).kind == "gpu" else _units(embedding)
                               for n in names], dtype=np.int64),
        "cap": np.array([cluster.by_name(n).usable_bytes // unit for n in names], dtype=np.int64),
    }
    tg: dict[str, Any] = {"time": t_tg, "time_cpu": tcpu_tg, "trans": trans_tg, "out_time": out_tg,
          "out_time_cpu": cost.output_tg(CPU), "stream_rate": np.zeros(D)}
    pp: dict[str, Any] = {"time": t_pp, "time_cpu": tcpu_pp, "trans": trans_pp, "out_time": np.zeros(D),
          "out_time_cpu": 0.0, "stream_rate": rate}
    first_no_cpu = np.array([_units(embedding)] * len(names), dtype=np.int64)
    # with no weight on the CPU llama.cpp may pipeline (CostModel.pipeline_parallel): the graph
    # inputs, the KQ mask among them, are then kept PIPELINE_COPIES times on every device
    fixed_pp = np.array([_units(b + comp.mask * (PIPELINE_COPIES - 1)) for b in layers_only], dtype=np.int64)
    takes = [cost.offloads_to(n) for n in names]
    rows = np.array([r for r, seq in enumerate(order_arr)
                     if (seq[0] >= 0 and takes[seq[0]]) or not any(takes[d] for d in seq if d >= 0)], dtype=np.int64)
    return _Arrays(names, order_arr, tg, pp, mem, allow, stream, stream_cpu, first_no_cpu, fixed_pp, rows)


def placement_of(arr: _Arrays, res: Any, order_list: Sequence[tuple[str, ...]]) -> Placement:
    order = order_list[res.order]
    homes = tuple(CPU if h < 0 else arr.names[h] for h in res.home)
    experts = tuple(on_cpu(EXPERT_OPTIONS[o]) if o >= 0 and h != CPU else frozenset()
                    for h, o in zip(homes, res.option))
    output = CPU if res.out_device < 0 else arr.names[res.out_device]
    return Placement(tuple(order), homes, experts, output)


def default_order(cost: CostModel) -> tuple[str, ...]:
    """The engine's devices when no ``-dev`` is given: the cluster's accelerators in order."""
    return tuple(d.name for d in cost.cluster.gpus)


def cpu_only(model: ModelProfile, order: Sequence[str] = ()) -> Placement:
    """Every layer and the output on the CPU. ``order`` names the accelerators the engine still
    has (``-ngl 0`` keeps them: the first one takes op-offloaded prompt work and its compute
    buffer); empty for an engine without devices."""
    L = model.n_layer
    return Placement(tuple(order), (CPU,) * L, (frozenset(),) * L, CPU)


def _solve_with_stream(arr: _Arrays, cost: CostModel, w_tg: float, w_pp: float, *, no_cpu_weights: bool,
                       rows: np.ndarray) -> Any:
    mem = dict(arr.mem)
    allow: np.ndarray = arr.allow
    time_cpu = w_tg * arr.tg["time_cpu"] + w_pp * arr.pp["time_cpu"]
    if no_cpu_weights:
        mem["first_mem"] = arr.first_mem_no_cpu
        mem["fixed_mem"] = arr.fixed_mem_no_cpu
        allow = arr.allow.copy()
        allow[:, :, 1:] = 0
        time_cpu = time_cpu + 1e6  # a CPU layer now costs more than any real plan
    try:
        return _core.solve(
            orders=arr.orders[rows],
            time=w_tg * arr.tg["time"] + w_pp * arr.pp["time"],
            time_cpu=time_cpu,
            trans=w_tg * arr.tg["trans"] + w_pp * arr.pp["trans"],
            out_time=w_tg * arr.tg["out_time"] + w_pp * arr.pp["out_time"],
            out_time_cpu=w_tg * arr.tg["out_time_cpu"] + w_pp * arr.pp["out_time_cpu"],
            stream=arr.stream,
            stream_cpu=arr.stream_cpu,
            stream_rate=w_pp * arr.pp["stream_rate"],
            allow=allow,
            mem_dense=mem["mem_dense"],
            mem_exp=mem["mem_exp"],
            out_mem=mem["out_mem"],
            fixed_mem=mem["fixed_mem"],
            first_mem=mem["first_mem"],
            cap=mem["cap"],
        )
    except NativeCoreError as err:
        # EINVAL / ENOMEM: the arrays came from the model and cluster, so it is their values that
        # the core refuses (a capacity out of range, a non-finite time) -- not a broken install
        raise InvalidArgumentError(
            f"the placement core refuses the problem built from this model and cluster: {err.message}",
            hint="check the cluster's memory, margin and bandwidth figures (`omni-place devices`); "
                 "fewer or coarser devices when the state limit is hit") from None


def core_candidates(arr: _Arrays, orders: Sequence[tuple[str, ...]], cost: CostModel, w_tg: float,
                     w_pp: float, stats: dict[str, Any], variants: Sequence[bool] = (True, False),
                    ) -> list[Candidate]:
    """Core optima of the memory variants (``no_cpu_weights`` True / False): without CPU-held
    weights (no op-offload buffer on devices[0]) and with them (over the orders whose op offload
    goes to devices[0], :attr:`_Arrays.offload_rows`)."""
    out = []
    for no_cpu in variants:
        rows = np.arange(len(arr.orders)) if no_cpu else arr.offload_rows
        if not len(rows):
            continue
        res = _solve_with_stream(arr, cost, w_tg, w_pp, no_cpu_weights=no_cpu, rows=rows)
        stats["states"] = stats.get("states", 0) + res.n_states
        if not res.ok:
            continue
        p = placement_of(arr, res, [orders[int(r)] for r in rows] if len(orders) else orders)
        if no_cpu and any(h == CPU for h in p.layer_home):
            continue  # only reachable through the 1e6 penalty: the other variant prices it right
        out.append((res.time, p, res.as_dict()))
    return out
