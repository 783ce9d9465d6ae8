"""plan_split(): the fastest placement that provably fits, and evaluate(): price a given one.

Python prepares the problem (memory in MiB units, rounded up so a solution always fits in
bytes; seconds from :class:`~omni_place.cost.CostModel`), the C core solves it exactly over the
candidate device orders, and the result is re-priced in exact bytes and seconds for the report.
"""
from __future__ import annotations

import itertools
import json
import math
import shlex
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from . import _core
from .compute import PIPELINE_COPIES
from .cost import CPU, EXPERT_OPTIONS, Context, CostModel, DeviceUsage, Placement, Prediction, SpeedParams, backend_of
from .devices import Cluster, resolve_cluster
from .engines import ik_llama, llama_cpp, traits, vllm
from .engines.common import EngineArgs, rpc_buffer_names, rpc_servers
from .errors import ClusterError, InvalidArgumentError, NothingFitsError
from .model import MiB, ModelProfile, load_model

MAX_EXHAUSTIVE_ORDERS = 4  # accelerators up to which every ordered subset is tried
# From this many accelerators on, memory is counted in coarser units so the exact DP stays fast
# (its states grow with capacity/unit; benchmarks/planner_speed.py): each device's capacity is
# at most this many units. Sizes are rounded up, so a plan still fits in bytes.
IK_FIT_MARGIN = 1 << 30  # ik_llama.cpp keeps 1 GiB free per GPU in its default split (k_default_mem_margin)
COARSE_FROM_DEVICES = 8
MAX_UNITS_PER_DEVICE = 4096
OBJECTIVES = ("tg", "pp")
TIE_BREAK = 1e-3  # weight of the other objective, so equal-speed plans prefer the better other


@dataclass(frozen=True)
class HostCommand:
    """One command of a deployment: where it runs, what it is, its argv and environment."""

    host: str  # "local" for the machine that runs the engine
    role: str  # "rpc-server" or "engine"
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + shlex.join(self.argv)

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "role": self.role, "argv": self.argv, "env": self.env, "shell": self.shell()}


def _model_argument(model: ModelProfile) -> str:
    """The -m argument: the model's path, or a placeholder for a shipped header-only description."""
    from .reference_models import is_reference_header

    return "MODEL.gguf" if is_reference_header(model.path) else str(model.path)


@dataclass
class Plan:
    """A placement with its flags, memory per device and predicted speed."""

    model: ModelProfile
    cluster: Cluster
    engine: str
    objective: str | float
    context: Context
    placement: Placement
    usage: list[DeviceUsage]
    predicted: Prediction
    engine_args: Any  # the dialect's args object: engines.common.EngineArgs or engines.vllm.VllmArgs
    default_order: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    solve_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return all(u.fits for u in self.usage)

    @property
    def n_gpu_layers(self) -> int:
        return self.engine_args.n_gpu_layers

    @property
    def tensor_split(self) -> list[int]:
        return self.engine_args.tensor_split

    @property
    def overrides(self) -> list[tuple[str, str]]:
        return self.engine_args.overrides

    @property
    def memory(self) -> list[DeviceUsage]:
        return self.usage

    def args(self, tool: str = "server") -> list[str]:
        """Flags for llama-server / llama-cli (``tool="server"``) or llama-bench (``"bench"``)."""
        c = self.context
        return self.engine_args.args(tool, ctx=c.ctx, n_ubatch=c.n_ubatch, type_k=c.type_k,
                                     type_v=c.type_v, flash_attn=c.flash_attn)

    def env(self) -> dict[str, str]:
        """Environment variables that carry the placement (vLLM: stages; llama.cpp: LLAMA_ARG_*)."""
        if self.engine == vllm.NAME:
            return self.engine_args.env()
        if self.engine == ik_llama.NAME:
            raise InvalidArgumentError("ik_llama.cpp reads no environment variable for -ts, -ot or -dev",
                                       hint="use --format args and pass the flags on its command line")
        from .report import llama_env

        return llama_env(self.args("server"))

    def host_commands(self, tool: str = "server", model_path: str | None = None) -> list[HostCommand]:
        """What to run on every host: an ``rpc-server`` per remote server the plan registers
        (``-c``: cache tensors on the server's disk, so only the first load uploads weights), then
        the engine on this host with the plan's flags (vLLM: ``vllm serve`` with its stage env)."""
        model_arg = model_path or _model_argument(self.model)
        if self.engine == vllm.NAME:
            return [HostCommand("local", "engine", ["vllm", "serve", model_arg] + self.args("server"), self.env())]
        out = []
        for endpoint in getattr(self.engine_args, "rpc", []):
            host, _, port = endpoint.rpartition(":")
            out.append(HostCommand(host.strip("[]"), "rpc-server", ["rpc-server", "-H", host.strip("[]"), "-p", port, "-c"]))
        binary = "llama-bench" if tool == "bench" else "llama-server"
        out.append(HostCommand("local", "engine", [binary, "-m", model_arg] + self.args(tool)))
        return out

    def layer_map(self) -> list[dict[str, Any]]:
        out = []
        for il, home in enumerate(self.placement.layer_home):
            lc = self.model.layers[il]
            kinds = self.placement.cpu_experts[il]
            if not lc.has_experts:
                experts = None
            elif home == CPU or kinds == EXPERT_OPTIONS[-1]:
                experts = CPU
            elif not kinds:
                experts = home
            else:
                experts = f"{home}+CPU({','.join(sorted(k for k in kinds if k != 'gate_up'))})"
            out.append({"layer": il, "device": home, "experts": experts, "nextn": lc.is_nextn})
        return out

    def to_dict(self) -> dict[str, Any]:
        c = self.context
        return {
            "engine": self.engine,
            "model": str(self.model.path),
            "architecture": self.model.architecture,
            "cluster": self.cluster.name,
            "objective": self.objective,
            "ctx": c.ctx,
            "n_ubatch": c.n_ubatch,
            "kv_type": {"k": c.type_k, "v": c.type_v},
            "flash_attn": c.flash_attn,
            "feasible": self.feasible,
            "args": self.args("server"),
            "bench_args": self._bench_args(),
            "env": self._env_or_none(),
            "n_gpu_layers": self.n_gpu_layers,
            "tensor_split": self.tensor_split,
            "overrides": [f"{p}={b}" for p, b in self.overrides],
            "device_order": list(self.placement.order),
            "output_device": self.placement.output,
            "n_cpu_layers": sum(1 for h in self.placement.layer_home if h == CPU),
            "devices": [u.to_dict() for u in self.usage],
            "predicted": self.predicted.to_dict(),
            "layers": self.layer_map(),
            "notes": self.notes,
            "hosts": [h.to_dict() for h in self.host_commands()],
            "solve": self.solve_stats,
        }

    def _bench_args(self) -> list[str] | None:
        try:
            return self.args("bench")
        except InvalidArgumentError:
            return None  # vLLM has no bench dialect; ik's llama-bench cannot reorder devices

    def _env_or_none(self) -> dict[str, str] | None:
        try:
            return self.env()
        except InvalidArgumentError:
            return None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def explain(self) -> str:
        from .report import render_plan

        return render_plan(self)


# --- candidate device orders -------------------------------------------------------------

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
        key = "local" if dev.kind == "gpu" else (dev.host if dev.host not in (None, "local") else (dev.endpoint or n).rpartition(":")[0])
        hosts.setdefault(key, []).append(n)
    local = hosts.pop("local", [])
    remote = [n for group in hosts.values() for n in group]
    cands += [tuple(local + remote), tuple(remote + local)]
    seen: list[tuple[str, ...]] = []
    for c in cands:
        if c and c not in seen:
            seen.append(c)
    return seen


# --- the core problem ----------------------------------------------------------------------

@dataclass
class _Arrays:
    names: list[str]
    orders: np.ndarray
    tg: dict[str, np.ndarray]
    pp: dict[str, np.ndarray]
    mem: dict[str, np.ndarray]
    allow: np.ndarray
    stream: np.ndarray  # [L][K] bytes per prompt token of CPU-held experts under each option
    stream_cpu: np.ndarray  # [L] the same for a layer wholly on the CPU
    first_mem_no_cpu: np.ndarray  # [D] what the first device holds when no weight is on the CPU
    fixed_mem_no_cpu: np.ndarray  # [D] per-device compute buffers then (pipeline parallelism)


def memory_unit(cluster: Cluster) -> int:
    """Bytes per memory unit of the core problem for this cluster (see :func:`unit_for_capacities`)."""
    return unit_for_capacities([d.usable_bytes for d in cluster.gpus])


def unit_for_capacities(caps: Sequence[int]) -> int:
    """1 MiB, or for 8+ accelerators the power of two that keeps the largest capacity within
    MAX_UNITS_PER_DEVICE units."""
    if len(caps) < COARSE_FROM_DEVICES:
        return MiB
    return max(MiB, 1 << max(0, math.ceil(math.log2(max(caps) / MAX_UNITS_PER_DEVICE))))


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
    flops_streamed = 0.0
    amount_streamed = 0.0
    for il, lc in enumerate(model.layers):
        nextn = lc.is_nextn
        tcpu_tg[il] = 0.0 if nextn else sum(cost.layer_tg(il, CPU, frozenset()).values())
        # pp of CPU-held weights goes through stream x stream_rate[first]
        dense_p, exp_p = cost._layer_params(il)
        exp_total = sum(cost._expert_split[il]["stored"].values())
        stream_cpu[il] = 0.0 if nextn else (lc.dense["cpu"] + exp_total * cost.expert_hit) / cost.n_tokens
        if not nextn:
            flops_streamed += 2 * (dense_p + exp_p * cost.k_over_n)
            amount_streamed += stream_cpu[il]
        for o, kinds in enumerate(EXPERT_OPTIONS):
            on_cpu = cost.expert_bytes(il, "stored", kinds, True)
            stream[il, o] = 0.0 if nextn else on_cpu * cost.expert_hit / cost.n_tokens
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
                t_tg[d, il, o] = sum(cost.layer_tg(il, name, kinds).values()) + (1e-12 * il if o else 0.0)
                pp = cost.layer_pp(il, name, kinds, None)  # first=None: CPU part priced via stream
                t_pp[d, il, o] = sum(v for k, v in pp.items() if k != CPU)
    # seconds per streamed byte-per-token when device f is first (see CostModel._cpu_weights_pp)
    flops_per_amount = flops_streamed / amount_streamed if amount_streamed else 0.0
    rate = np.zeros(D)
    for d, name in enumerate(names):
        if cost.offloads_to(name):
            rate[d] = 1.0 / cost.stream_bandwidth(name) + flops_per_amount / cost.flops(name)
        else:
            rate[d] = flops_per_amount / cost.flops(CPU)
    trans_tg = np.zeros((D + 1, D + 1))
    trans_pp = np.zeros((D + 1, D + 1))
    all_names = names + [CPU]
    for a, na in enumerate(all_names):
        for b, nb in enumerate(all_names):
            trans_tg[a, b] = cost.hop_tg(na, nb)
            trans_pp[a, b] = cost.hop_pp(na, nb)
    out_tg = np.array([cost.output_tg(n) for n in names])
    comp = cost.compute
    offload = cost.op_offload_bytes
    embedding = model.input_bytes() if cost.context.embedding_on_first else 0
    mem = {
        "mem_dense": mem_dense,
        "mem_exp": mem_exp,
        "out_mem": np.array([_units(model.output_bytes(backend_of(cluster.by_name(n))) + comp.output_extra) for n in names], dtype=np.int64),
        "fixed_mem": np.array([_units(comp.layer_device + comp.mask) for _ in names], dtype=np.int64),
        "first_mem": np.array([_units(offload + embedding) if cluster.by_name(n).kind == "gpu" else _units(embedding)
                               for n in names], dtype=np.int64),
        "cap": np.array([cluster.by_name(n).usable_bytes // unit for n in names], dtype=np.int64),
    }
    tg = {"time": t_tg, "time_cpu": tcpu_tg, "trans": trans_tg, "out_time": out_tg,
          "out_time_cpu": cost.output_tg(CPU), "stream_rate": np.zeros(D)}
    pp = {"time": t_pp, "time_cpu": np.zeros(L), "trans": trans_pp, "out_time": np.zeros(D),
          "out_time_cpu": 0.0, "stream_rate": rate}
    first_no_cpu = np.array([_units(embedding)] * len(names), dtype=np.int64)
    # with no weight on the CPU llama.cpp may pipeline (CostModel.pipeline_parallel): the graph
    # inputs, the KQ mask among them, are then kept PIPELINE_COPIES times on every device
    fixed_pp = np.array([_units(comp.layer_device + comp.mask * PIPELINE_COPIES) for _ in names], dtype=np.int64)
    return _Arrays(names, order_arr, tg, pp, mem, allow, stream, stream_cpu, first_no_cpu, fixed_pp)


def _placement_of(arr: _Arrays, res: Any, order_list: Sequence[tuple[str, ...]]) -> Placement:
    order = order_list[res.order]
    homes = tuple(CPU if h < 0 else arr.names[h] for h in res.home)
    cpu_exp = tuple(EXPERT_OPTIONS[o] if o >= 0 else frozenset() for o in res.option)
    output = CPU if res.out_device < 0 else arr.names[res.out_device]
    return Placement(tuple(order), homes, cpu_exp, output)


def _cpu_only(model: ModelProfile) -> Placement:
    L = model.n_layer
    return Placement((), (CPU,) * L, (frozenset(),) * L, CPU)


def plan_split(
    model: str | ModelProfile,
    cluster: str | Cluster = "auto",
    *,
    ctx: int = 4096,
    ubatch: int = 512,
    kv_type: str = "f16",
    kv_type_v: str | None = None,
    flash_attn: bool = True,
    objective: str | float = "tg",
    engine: str = "llama.cpp",
    depth: int = 0,
    params: SpeedParams | None = None,
) -> Plan:
    """The fastest placement of ``model`` on ``cluster`` that fits every device's memory.

    ``objective`` is "tg" (decode tok/s), "pp" (prompt tok/s) or a weight W in [0, 1] that
    minimizes ``W*t_tg/t_tg* + (1-W)*t_pp/t_pp*`` (each time relative to its own optimum).
    Raises :class:`NothingFitsError` when no placement fits (not even all on the CPU).
    """
    rules = traits(engine)
    w_tg, w_pp = _objective_weights(objective)
    prof = load_model(model)
    clus = resolve_cluster(cluster)
    if ubatch < 1 or ubatch > 65536:
        raise InvalidArgumentError(f"ubatch {ubatch} is out of range (1..65536)")
    context = Context(ctx=ctx, n_ubatch=ubatch, type_k=kv_type, type_v=kv_type_v or kv_type,
                      flash_attn=flash_attn, depth=depth, swa_full=rules.swa_full,
                      embedding_on_first=rules.embedding_on_first)
    if engine == vllm.NAME:
        vllm.check_kv_types(context.type_k, context.type_v)
    prof.check_kv_types(context.type_k, context.type_v, context.flash_attn)
    if len(clus.gpus) > _core.MAX_DEVICES:
        raise ClusterError(f"cluster {clus.name!r} has {len(clus.gpus)} accelerators; the planner takes at most "
                           f"{_core.MAX_DEVICES}", hint="plan for a subset of the devices (llama.cpp takes at most 16)")
    calibrated = None if params is not None else _calibrated(clus, engine)
    cost = CostModel(prof, clus, context, params or calibrated)
    orders = candidate_orders(clus, cost, rpc=rules.rpc_devices)
    default_order = tuple(d.name for d in clus.gpus)
    candidates: list[tuple[float, Placement, dict[str, Any]]] = []
    unit = memory_unit(clus)
    stats: dict[str, Any] = {"orders": len(orders), "unit_mib": unit / MiB}
    variants = (True, False) if rules.cpu_weights else (True,)
    if orders:
        arr = build_arrays(cost, orders, unit)
        if isinstance(objective, (int, float)) and not isinstance(objective, bool):
            # relative weights need both optima first
            t_tg = _best_time(arr, orders, cost, 1.0, TIE_BREAK, variants)
            t_pp = _best_time(arr, orders, cost, TIE_BREAK, 1.0, variants)
            w_tg, w_pp = float(objective) / t_tg, (1.0 - float(objective)) / t_pp
        candidates += _core_candidates(arr, orders, cost, w_tg, w_pp, stats, variants)
    if not rules.output_only_offload:  # such an engine keeps a lone output head on the CPU
        candidates = [_without_lone_head(cost, c, w_tg, w_pp) for c in candidates]
    cpu_only = _cpu_only(prof)
    if rules.cpu_weights:
        pred_cpu = cost.predict(cpu_only)
        candidates.append((w_tg / pred_cpu.tg_tps + w_pp / pred_cpu.pp_tps, cpu_only, {}))
    feasible = [(t, p, s) for t, p, s in candidates if all(u.fits for u in cost.usage(p))]
    if not feasible:
        if not rules.cpu_weights:
            raise NothingFitsError(
                f"nothing fits for {engine}: the weights, KV cache and compute buffers do not fit on "
                f"the GPUs ({', '.join(d.name for d in clus.gpus if d.kind == 'gpu') or 'none'}) and "
                f"{engine} cannot keep layers or experts in CPU RAM",
                hint="plan with --engine llama.cpp (CPU offload), a shorter --ctx, or more GPUs")
        raise _nothing_fits(cost, cpu_only)
    _, best, core = min(feasible, key=lambda c: c[0])
    stats["core"] = core
    usage = cost.usage(best)
    notes = _notes(cost, best, usage)
    stats["speed_params"] = "given" if params is not None else ("calibrated" if calibrated else "defaults")
    if calibrated is not None:
        notes.append(f"speeds use this machine's calibration for {engine} (omni-place calibrate)")
    return Plan(prof, clus, engine, objective, context, best, usage, cost.predict(best),
                encode_placement(engine, prof, best, clus, context, usage), default_order, notes, stats)


def _without_lone_head(cost: CostModel, cand: tuple[float, Placement, dict[str, Any]], w_tg: float,
                       w_pp: float) -> tuple[float, Placement, dict[str, Any]]:
    """A candidate with every layer on the CPU but the output head on an accelerator, re-priced
    with the head on the CPU (what an engine without that option can run)."""
    t, p, stats = cand
    if p.output == CPU or any(h != CPU for h in p.layer_home):
        return cand
    p = _cpu_only(cost.model)
    pred = cost.predict(p)
    return (w_tg / pred.tg_tps + w_pp / pred.pp_tps, p, stats)


def _calibrated(cluster: Cluster, engine: str) -> SpeedParams | None:
    """This machine's calibrated speed parameters for ``engine`` (``omni-place calibrate``), if any."""
    from .calibrate import load_calibrated

    return load_calibrated(cluster, engine)


def encode_placement(engine: str, model: ModelProfile, p: Placement, cluster: Cluster, context: Context,
                     usage: Sequence[DeviceUsage]) -> Any:
    """The engine's flags for a placement (its dialect module's ``encode``)."""
    default_order = tuple(d.name for d in cluster.gpus)
    if engine == vllm.NAME:
        return vllm.encode(model, p, cluster, usage)
    rpc = rpc_servers(cluster.devices)
    if engine == ik_llama.NAME:
        return ik_llama.encode(model, p, default_order, context, rpc_buffer_names(cluster.devices), rpc)
    return llama_cpp.encode(model, p, default_order, rpc, rpc_buffer_names(cluster.devices))


def _solve_with_stream(arr: _Arrays, cost: CostModel, w_tg: float, w_pp: float, *, no_cpu_weights: bool) -> Any:
    mem = dict(arr.mem)
    allow = arr.allow
    time_cpu = w_tg * arr.tg["time_cpu"] + w_pp * arr.pp["time_cpu"]
    if no_cpu_weights:
        mem["first_mem"] = arr.first_mem_no_cpu
        mem["fixed_mem"] = arr.fixed_mem_no_cpu
        allow = arr.allow.copy()
        allow[:, :, 1:] = 0
        time_cpu = time_cpu + 1e6  # a CPU layer now costs more than any real plan
    return _core.solve(
        orders=arr.orders,
        time=w_tg * arr.tg["time"] + w_pp * arr.pp["time"],
        time_cpu=time_cpu,
        trans=w_tg * arr.tg["trans"] + w_pp * arr.pp["trans"],
        out_time=w_tg * arr.tg["out_time"] + w_pp * arr.pp["out_time"],
        out_time_cpu=w_tg * arr.tg["out_time_cpu"] + w_pp * arr.pp["out_time_cpu"],
        stream=arr.stream,
        stream_cpu=arr.stream_cpu,
        stream_rate=w_pp * arr.pp["stream_rate"],
        allow=allow,
        **mem,
    )


def _core_candidates(arr: _Arrays, orders: Sequence[tuple[str, ...]], cost: CostModel, w_tg: float,
                     w_pp: float, stats: dict[str, Any], variants: Sequence[bool] = (True, False),
                     ) -> list[tuple[float, Placement, dict[str, Any]]]:
    """Core optima of the memory variants (``no_cpu_weights`` True / False): without CPU-held
    weights (no op-offload buffer on devices[0]) and with them."""
    out = []
    for no_cpu in variants:
        res = _solve_with_stream(arr, cost, w_tg, w_pp, no_cpu_weights=no_cpu)
        stats["states"] = stats.get("states", 0) + res.n_states
        if not res.ok:
            continue
        p = _placement_of(arr, res, orders)
        if no_cpu and any(h == CPU for h in p.layer_home):
            continue  # only reachable through the 1e6 penalty: the other variant prices it right
        out.append((res.time, p, res.as_dict()))
    return out


def _best_time(arr: _Arrays, orders: Sequence[tuple[str, ...]], cost: CostModel, w_tg: float, w_pp: float,
               variants: Sequence[bool] = (True, False)) -> float:
    """Seconds per token of the better objective (tg if w_tg >= w_pp) at its own optimum."""
    def own(p: Placement) -> float:
        pr = cost.predict(p)
        return (1 / pr.tg_tps) if w_tg >= w_pp else (1 / pr.pp_tps)

    times = [own(p) for _, p, _ in _core_candidates(arr, orders, cost, w_tg, w_pp, {}, variants)]
    return min(times) if times else own(_cpu_only(cost.model))


def _objective_weights(objective: str | float) -> tuple[float, float]:
    if objective == "tg":
        return 1.0, TIE_BREAK
    if objective == "pp":
        return TIE_BREAK, 1.0
    if isinstance(objective, (int, float)) and not isinstance(objective, bool) and 0.0 <= objective <= 1.0:
        return float(objective), 1.0 - float(objective)
    raise InvalidArgumentError(f"objective {objective!r} is not tg, pp or a weight in [0, 1]",
                               hint="e.g. --objective 0.8 weighs decode 80 %, prompt 20 %")


def _nothing_fits(cost: CostModel, cpu_only: Placement) -> NothingFitsError:
    cpu = next(u for u in cost.usage(cpu_only) if u.name == CPU)
    return NothingFitsError(
        f"nothing fits: all on the CPU needs {(cpu.kv_bytes + cpu.compute_bytes) / 2**30:.1f} GiB of KV "
        f"cache and compute buffers in {cpu.capacity_bytes / 2**30:.1f} GiB usable RAM, and no split "
        f"over the accelerators ({', '.join(d.name for d in cost.cluster.gpus) or 'none'}) fits"
    )


def _notes(cost: CostModel, p: Placement, usage: list[DeviceUsage]) -> list[str]:
    notes = []
    cpu = next(u for u in usage if u.name == CPU)
    if cpu.weights_bytes > cpu.capacity_bytes:
        notes.append(
            f"CPU-held weights ({cpu.weights_bytes / 2**30:.1f} GiB) exceed usable RAM "
            f"({cpu.capacity_bytes / 2**30:.1f} GiB): mmap will page from disk and decode will be slower"
        )
    for u in usage:
        if u.kind == "rpc" and u.weights_bytes:
            bw, _ = cost.link(u.name)
            notes.append(
                f"the first load uploads {u.weights_bytes / 2**30:.1f} GiB to {u.name} over its "
                f"{bw / 1e9:.2f} GB/s link (~{u.weights_bytes / bw:.0f} s); rpc-server -c keeps them "
                "in its cache so later loads skip it")
    if any(u.kind == "rpc" for u in usage):
        notes.append("rpc-server has no authentication: run it only on a trusted network")
    if cost.model.hparams.n_layer_nextn:
        notes.append("NextN/MTP blocks are placed (they take layer slots) but not priced: they run only with MTP drafting")
    return notes


def evaluate(model: str | ModelProfile, cluster: str | Cluster, argv: Sequence[str], *,
             ctx: int | None = None, params: SpeedParams | None = None, engine: str = "llama.cpp",
             tool: str = "server") -> Plan:
    """Price a user's llama.cpp / ik_llama.cpp command line (``tool`` "server" for llama-server /
    llama-cli, "bench" for llama-bench): memory per device, whether it fits, tg/pp."""
    rules = traits(engine)
    if engine == vllm.NAME:
        raise InvalidArgumentError("omni-place check reads llama.cpp and ik_llama.cpp command lines",
                                   hint="use --engine llama.cpp or ik_llama.cpp")
    prof = load_model(model)
    clus = resolve_cluster(cluster)
    ik = engine == ik_llama.NAME
    parsed = ik_llama.parse_args(argv, tool) if ik else llama_cpp.parse_args(argv)
    context = Context(ctx=parsed.ctx or ctx or 4096, n_ubatch=parsed.n_ubatch, type_k=parsed.type_k,
                      type_v=parsed.type_v, flash_attn=parsed.flash_attn if parsed.flash_attn is not None else True,
                      swa_full=rules.swa_full, embedding_on_first=rules.embedding_on_first)
    prof.check_kv_types(context.type_k, context.type_v, context.flash_attn)
    cost = CostModel(prof, clus, context, params or _calibrated(clus, engine))
    accel = [d.name for d in clus.gpus]
    if ik:
        # ik's default split: free memory less its 1 GiB fit margin
        free = [max(0.0, float(clus.by_name(n).memory_bytes) - IK_FIT_MARGIN) for n in accel]
        placement = ik_llama.decode(prof, parsed, accel, context, free_mem=free,
                                    rpc_names=rpc_buffer_names(clus.devices), tool=tool)
        syntax = ik_llama.SYNTAX
    else:
        free = [float(clus.by_name(n).memory_bytes) for n in accel]
        placement = llama_cpp.decode(prof, parsed, accel, free_mem=free, rpc_names=rpc_buffer_names(clus.devices))
        syntax = llama_cpp.SYNTAX
    usage = cost.usage(placement)
    notes = [f"{u.name} overflows by {(u.used_bytes - u.capacity_bytes) / 2**30:.2f} GiB "
             f"(needs {u.used_bytes / 2**30:.2f} GiB of {u.capacity_bytes / 2**30:.2f} GiB usable)"
             if u.kind != "cpu" else
             f"CPU RAM: KV cache + compute need {(u.kv_bytes + u.compute_bytes) / 2**30:.2f} GiB of "
             f"{u.capacity_bytes / 2**30:.2f} GiB usable"
             for u in usage if not u.fits]
    args = EngineArgs(parsed.n_gpu_layers, list(parsed.tensor_split or []), parsed.devices or [],
                      parsed.overrides, syntax, rpc=list(parsed.rpc))
    return Plan(prof, clus, engine, "given", context, placement, usage, cost.predict(placement), args,
                tuple(accel), notes, {})
