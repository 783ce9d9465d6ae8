"""plan_split(): the fastest placement that provably fits, and evaluate(): price a given one.

:mod:`omni_place.problem` turns the cost model into the C core's arrays and solves them over the
candidate device orders; here the optima are re-priced in exact bytes and seconds, the engine's
dialect (:func:`omni_place.engines.dialect`) spells the winner as flags, and :class:`Plan` carries
it all. Rendering a plan is :mod:`omni_place.report`'s job.
"""
from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from .calibration import checked_params, read_calibrated
from .compute import estimate_note as compute_estimate_note
from .cost import CPU, Context, CostModel, DeviceUsage, Placement, Prediction, SpeedParams, expert_kind
from .devices import Cluster, resolve_cluster
from .engines import Dialect, PlacementArgs, dialect
from .errors import ClusterError, InvalidArgumentError, NothingFitsError
from .hparams import MAX_CONTEXT
from .model import KV_TYPES, ModelProfile, load_model
from .objective import (FRONTIER_WEIGHTS, TIE_BREAK, adopt_pinned, beats, choose, choose_split_mode, frontier,
                        parse_objective, prompt_floor, speeds)
from .problem import MAX_DEVICES, build_arrays, candidate_orders, core_candidates, cpu_only, default_order, memory_unit
from .recipes import Recipe, decoded, placement_flags, priced, standard_recipes
from .rehome import rehome_experts
from .splitcost import cost_model
from .variants import (expert_offload_note, expressible, pinned_adopted_note, pinned_note, pinned_variants,
                       split_candidates, without_op_offload)
from .sources import model_argument
from .units import GB, GiB, MiB
from .validate import choice, dump_json, flag, integer, show, text

MAX_ALTERNATIVES = 10
BALANCE_STEPS = 4  # bisection steps over the decode weight when the fastest decode plan prompts too slowly


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


def _bind_address(host: str) -> str:
    """What ``rpc-server -H`` can bind for an endpoint's host: rpc-server takes an IPv4 literal
    only (``inet_addr``, ggml-rpc transport.cpp socket_t::create_server), so a host name becomes
    127.0.0.1 for localhost and 0.0.0.0 (every interface of that host) otherwise."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return "0.0.0.0"


def _model_argument(model: ModelProfile) -> str:
    """The -m argument: the model's path, or a name for a header without weights."""
    return model_argument(model.path)


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
    engine_args: PlacementArgs  # the dialect's flags: engines.common.EngineArgs or engines.vllm.VllmArgs
    default_order: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    solve_stats: dict[str, Any] = field(default_factory=dict)
    params: SpeedParams | None = None  # the speed parameters it was priced with (None: defaults)
    certified: dict[str, Any] | None = None  # the engine's own dry run of it (omni_place.llama.certify)
    assumptions: list[str] = field(default_factory=list)  # what pricing a command line assumed (evaluate)
    compared: list[dict[str, Any]] = field(default_factory=list)  # recipes priced beside it (plan_split)
    alternatives: list[dict[str, Any]] = field(default_factory=list)  # its tg/pp frontier (--alternatives)
    split_modes: list[dict[str, Any]] = field(default_factory=list)  # each -sm mode priced or refused (plan_split)

    @property
    def dialect(self) -> Dialect:
        return dialect(self.engine)

    @property
    def feasible(self) -> bool:
        return all(u.fits for u in self.usage)

    @property
    def n_gpu_layers(self) -> int:
        return self.engine_args.n_gpu_layers

    @property
    def tensor_split(self) -> list[float]:
        return list(self.engine_args.tensor_split)

    @property
    def overrides(self) -> list[tuple[str, str]]:
        return list(self.engine_args.overrides)

    @property
    def memory(self) -> list[DeviceUsage]:
        return self.usage

    def args(self, tool: str = "server") -> list[str]:
        """Flags for llama-server / llama-cli (``tool="server"``) or llama-bench (``"bench"``)."""
        c = self.context
        return self.engine_args.args(tool, ctx=c.ctx, n_ubatch=c.n_ubatch, type_k=c.type_k,
                                     type_v=c.type_v, flash_attn=c.flash_attn, op_offload=c.op_offload,
                                     pinned_weights=c.pinned_weights)

    def env(self) -> dict[str, str]:
        """Environment variables that carry the placement (vLLM: stages; llama.cpp: LLAMA_ARG_*)."""
        return self.dialect.env(self.engine_args, self.args("server"))

    def host_commands(self, tool: str = "server", model_path: str | None = None) -> list[HostCommand]:
        """What to run on every host: an ``rpc-server`` per remote server the plan registers
        (``-c``: cache tensors on the server's disk, so only the first load uploads weights), then
        the engine on this host with the plan's flags (vLLM: ``vllm serve`` with its stage env)."""
        model_arg = model_path or _model_argument(self.model)
        if not self.dialect.traits.llama_family:
            return [HostCommand("local", "engine", ["vllm", "serve", model_arg] + self.args("server"), self.env())]
        out = []
        for endpoint in getattr(self.engine_args, "rpc", []):
            host, _, port = endpoint.rpartition(":")
            out.append(HostCommand(host, "rpc-server", ["rpc-server", "-H", _bind_address(host), "-p", port, "-c"]))
        binary = "llama-bench" if tool == "bench" else "llama-server"
        out.append(HostCommand("local", "engine", [binary, "-m", model_arg] + self.args(tool)))
        return out

    def layer_map(self) -> list[dict[str, Any]]:
        out = []
        for il, home in enumerate(self.placement.layer_home):
            lc = self.model.layers[il]
            present = frozenset(expert_kind(t) for t in lc.expert_tensors)
            experts = self.placement.experts_where(il, present) if lc.has_experts else None
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
            "certified": self.certified,
            "assumptions": self.assumptions,
            "compared": self.compared,
            "alternatives": self.alternatives,
            "split_mode": c.split_mode,
            "split_modes": self.split_modes,
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
        return dump_json(self.to_dict(), indent=1)


def plan_split(
    model: str | ModelProfile,
    cluster: str | Cluster = "auto",
    *,
    ctx: int = 4096,
    ubatch: int = 512,
    kv_type: str = "f16",
    kv_type_v: str | None = None,
    flash_attn: bool = True,
    objective: str | float = "balanced",
    engine: str = "llama.cpp",
    depth: int = 0,
    params: SpeedParams | None = None,
    allow_paging: bool = False,
    alternatives: int = 0,
    vs: Sequence[str] | None = None,
    split_modes: bool = True,
    pin_weights: bool = True,
) -> Plan:
    """The fastest placement of ``model`` on ``cluster`` that fits every device's memory.

    ``objective`` is "balanced" (the best decode among plans within 80 % of the best prompt
    speed), "tg" (decode tok/s), "pp" (prompt tok/s) or a weight W in [0, 1] on decode (see
    :mod:`omni_place.objective`). The plan is chosen among the core's optima and the recipes
    people use instead (:mod:`omni_place.recipes`: ``--fit``, ``-ot exps=CPU``, ``--n-cpu-moe``,
    ``-ngl``) plus ``vs``, the user's own placement flags in the engine's dialect; all are priced
    on the same context and listed in :attr:`Plan.compared`, and the plan is at least as good on
    its objective as each one (it takes a recipe's placement when that one is better, and says
    so). ``alternatives`` N > 0 also lists up to N plans of the tg/pp Pareto frontier
    (:attr:`Plan.alternatives`). ``split_modes`` prices the engine's parallel split modes beside
    the layer split and takes one that beats it by the margin (:attr:`Plan.split_modes`; False:
    the layer split only). ``pin_weights`` lets the plan load without mmap (``-lm none``, ik
    ``--no-mmap``) when pinning the CPU-held weights gains more than ``objective.PIN_MARGIN``
    (False: keep mmap).
    CPU RAM is a limit like any device's: weights, KV cache and compute buffers must fit in it,
    unless ``allow_paging`` lets the CPU-held weights that do not fit page from disk (mmap),
    priced at the CPU device's ``disk_gbs``.
    Raises :class:`NothingFitsError` when no placement fits (not even all on the CPU), and
    :class:`InvalidArgumentError` naming the argument for one of the wrong type or range (``ctx``
    1..2^24, ``ubatch`` 1..65536, ``depth`` 0..2^24, ``kv_type`` one of ``model.KV_TYPES``, bools
    for the flags, a ``SpeedParams`` of finite positive values, ``alternatives`` 0..10, ``vs`` a
    list of strings the engine parses).
    """
    engine_rules = dialect(engine)
    rules = engine_rules.traits
    objective = parse_objective(objective)
    ctx, ubatch, depth = _int_arg(ctx, "ctx", 1), _int_arg(ubatch, "ubatch", 1, MAX_UBATCH), _int_arg(depth, "depth", 0)
    kv_type, kv_type_v = _kv_arg(kv_type, "kv_type"), None if kv_type_v is None else _kv_arg(kv_type_v, "kv_type_v")
    flash_attn, allow_paging = flag(flash_attn, "flash_attn"), flag(allow_paging, "allow_paging")
    split_modes, pin_weights = flag(split_modes, "split_modes"), flag(pin_weights, "pin_weights")
    alternatives = integer(alternatives, "alternatives", lo=0, hi=MAX_ALTERNATIVES)
    vs = None if vs is None else _argv_arg(vs, "vs")
    _params_arg(params)
    prof = load_model(model)
    clus = resolve_cluster(cluster)
    context = rules.context(ctx=ctx, n_ubatch=ubatch, type_k=kv_type, type_v=kv_type_v or kv_type,
                            flash_attn=flash_attn, depth=depth, allow_paging=allow_paging)
    engine_rules.check_context(context)
    model_notes = engine_rules.model_notes(prof)
    prof.check_kv_types(context.type_k, context.type_v, context.flash_attn)
    if len(clus.gpus) > MAX_DEVICES:
        raise ClusterError(f"cluster {clus.name!r} has {len(clus.gpus)} accelerators; the planner takes at most "
                           f"{MAX_DEVICES}", hint="plan for a subset of the devices (llama.cpp takes at most 16)")
    calibrated, store_note = (None, None) if params is not None else read_calibrated(clus, engine)
    cost = CostModel(prof, clus, context, params or calibrated)
    stats: dict[str, Any] = {"unit_mib": memory_unit(clus) / MiB, "alternatives": alternatives, "vs": vs}
    solver = _Solver(cost, engine_rules, stats)
    compared = standard_recipes(cost, engine_rules)
    vs_note = None
    if vs is not None:
        compared.append(priced(cost, "vs", "your flags", vs, decoded(cost, engine_rules, vs)))
        if placement_flags(vs) != vs:
            vs_note = "the context flags in --vs are not priced: every row uses the plan's context"
    options = solver.options(objective, compared, alternatives)
    cost_off = cost.with_switches(op_offload=False)
    solver_off = None
    switchable = engine_rules.traits.op_offload_switch and any(d.kind == "gpu" for d in clus.gpus)
    if switchable:
        # the same optima without op offload: no copies to reserve room for on the first GPU,
        # CPU-held weights computed by the CPU in prompt batches
        solver_off = _Solver(cost_off, engine_rules, {})
        optima = (solver_off.solve(1.0, TIE_BREAK, "solver (decode)")
                  + solver_off.solve(TIE_BREAK, 1.0, "solver (prompt)"))
        options += [replace(o, op_offload=False, label=f"{o.label}, --no-op-offload") for o in optima]
    if rules.cpu_weights:
        options.append(priced(cost, "solver", "all on the CPU", (), cpu_only(prof, default_order(cost))))
        if default_order(cost) and expressible(cost, engine_rules, cpu_only(prof)):
            # -dev none: no device at all, so no GPU compute buffer and no op offload either
            options.append(priced(cost, "solver", "all on the CPU, no device", (), cpu_only(prof)))
    options += compared
    if switchable:  # the recipes too (the solver's own optima were solved without it above)
        options += without_op_offload(cost, cost_off, [o for o in options if o.name != "solver"])
    if not any(o.fits for o in options):
        if not rules.cpu_weights:
            raise NothingFitsError(
                f"nothing fits for {engine}: the weights, KV cache and compute buffers do not fit on "
                f"the GPUs ({', '.join(d.name for d in clus.gpus if d.kind == 'gpu') or 'none'}) and "
                f"{engine} cannot keep layers or experts in CPU RAM",
                hint="plan with --engine llama.cpp (CPU offload), a shorter --ctx, or more GPUs")
        raise _nothing_fits(cost, [o.placement for o in options if o.placement is not None])
    chosen = choose(options, objective)
    best = chosen.placement
    assert best is not None and chosen.predicted is not None
    if not chosen.op_offload:
        context, cost = cost_off.context, cost_off
    pin_flags = engine_rules.traits.pin_flags if pin_weights else ()
    stats["pin_weights"] = pin_weights
    if pin_flags:
        pinned = cost.with_switches(op_offload=True, pinned_weights=True)
        pick = adopt_pinned(chosen, pinned_variants(pinned, options), options, objective)
        if pick is not None:
            stats["unpinned"] = {"tg_tps": chosen.predicted.tg_tps, "pp_tps": chosen.predicted.pp_tps}
            chosen, best, context, cost = pick, pick.placement, pinned.context, pinned
    stats["split_modes"] = split_modes
    candidates = split_candidates(cost, engine_rules) if split_modes else []
    split_table, split_pick = choose_split_mode(chosen, candidates, objective, options)
    if split_pick is not None:  # a parallel split mode, by more than the margin
        chosen, cost = split_pick
        context, best = cost.context, chosen.placement
    assert best is not None and chosen.predicted is not None
    stats["core"] = solver.core_stats.get(best) or (solver_off.core_stats.get(best) if solver_off else None)
    stats["chosen_from"] = chosen.name
    stats["prompt_floor_tps"] = prompt_floor([o for o in options if o.fits])
    usage = cost.usage(best)
    notes = (_notes(cost, best, usage) + _objective_notes(chosen, options, objective)
             + (pinned_adopted_note(cost, best, pin_flags) if context.pinned_weights
                else pinned_note(cost, best, chosen.predicted, pin_flags))
             + expert_offload_note(cost, best, chosen.predicted))
    stats["speed_params"] = "given" if params is not None else ("calibrated" if calibrated else "defaults")
    if calibrated is not None:
        notes.append(f"speeds use this machine's calibration for {engine} (omni-place calibrate)")
    notes += [n for n in (store_note, vs_note) if n] + model_notes
    ea = engine_rules.encode(prof, best, clus, context, usage)
    plan = Plan(prof, clus, engine, objective, context, best, usage, chosen.predicted, ea,
                tuple(d.name for d in clus.gpus), notes, stats, params or calibrated)
    plan.compared = [_compared_entry(o, chosen.predicted) for o in compared]
    plan.split_modes = split_table
    plan.alternatives = [_alternative_entry(plan, cost if o.op_offload else cost_off, o, chosen)
                         for o in frontier(options, alternatives)]
    return plan


def replan(plan: Plan, capacity_delta: Mapping[str, int]) -> Plan:
    """The refine step of certification: :func:`plan_split` again for the same model, context,
    objective and engine, with each named device's memory moved by ``capacity_delta`` bytes (the
    engine's measured compute buffers minus the estimate, negated), reported on the plan's own
    cluster."""
    devices = tuple(replace(d, memory_bytes=max(1, d.memory_bytes + int(capacity_delta.get(d.name, 0))))
                    for d in plan.cluster.devices)
    shifted = Cluster(plan.cluster.name, devices, plan.cluster.description, plan.cluster.notes)
    c = plan.context
    new = plan_split(plan.model, shifted, ctx=c.ctx, ubatch=c.n_ubatch, kv_type=c.type_k, kv_type_v=c.type_v,
                     flash_attn=c.flash_attn, objective=plan.objective, engine=plan.engine, depth=c.depth,
                     params=plan.params, allow_paging=c.allow_paging,
                     alternatives=plan.solve_stats.get("alternatives", 0), vs=plan.solve_stats.get("vs"),
                     split_modes=plan.solve_stats.get("split_modes", True),
                     pin_weights=plan.solve_stats.get("pin_weights", True))
    usage = cost_model(plan.model, plan.cluster, new.context, plan.params).usage(new.placement)
    return replace(new, cluster=plan.cluster, usage=usage, notes=list(new.notes))


MAX_UBATCH = 65536  # llama.cpp's n_ubatch is a uint32; larger batches are not a real setting


def _int_arg(value: Any, name: str, lo: int, hi: int = MAX_CONTEXT) -> int:
    return integer(value, name, lo=lo, hi=hi)


def _kv_arg(value: Any, name: str) -> str:
    return choice(text(value, name, max_len=16).lower(), name, KV_TYPES)


def _params_arg(params: Any) -> None:
    if params is not None:
        checked_params(params)


def _without_lone_head(cost: CostModel, p: Placement) -> Placement:
    """A placement with every layer on the CPU but the output head on an accelerator, as one
    with the head on the CPU (what an engine without that option can run)."""
    if p.output == CPU or any(h != CPU for h in p.layer_home):
        return p
    return cpu_only(cost.model, p.order)


def _argv_arg(value: Any, name: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not all(isinstance(a, str) for a in value):
        raise InvalidArgumentError(f"{name} must be a list of strings (got {show(value)})",
                                   hint='e.g. ["-ngl", "99", "-ts", "3,1"]')
    return list(value)


class _Solver:
    """The core's optima for objective weights, each priced exactly; one set of arrays for all."""

    def __init__(self, cost: CostModel, rules: Dialect, stats: dict[str, Any]) -> None:
        self.cost, self.rules, self.stats = cost, rules, stats
        self.orders = candidate_orders(cost.cluster, cost, rpc=rules.traits.rpc_devices)
        stats["orders"] = len(self.orders)
        self.variants = (True, False) if rules.traits.cpu_weights else (True,)
        self.arr = build_arrays(cost, self.orders, memory_unit(cost.cluster)) if self.orders else None
        self.core_stats: dict[Placement, dict[str, Any]] = {}
        self.optimum = (1.0, 1.0)  # seconds per token of the decode and the prompt optimum

    def solve(self, w_tg: float, w_pp: float, label: str) -> list[Recipe]:
        if self.arr is None:
            return []
        out = []
        for _, p, core in core_candidates(self.arr, self.orders, self.cost, w_tg, w_pp, self.stats, self.variants):
            if not self.rules.traits.output_only_offload:  # such an engine keeps a lone output head on the CPU
                p = _without_lone_head(self.cost, p)
            p = rehome_experts(self.cost, p, w_tg, w_pp)  # CPU-held experts onto other local GPUs
            self.core_stats.setdefault(p, core)
            out.append(priced(self.cost, "solver", label, (), p))
        return out

    def weighted(self, w: float, label: str) -> list[Recipe]:
        """The optima of ``w * t_tg/t_tg* + (1 - w) * t_pp/t_pp*`` (times relative to the optima)."""
        return self.solve(w / self.optimum[0], (1.0 - w) / self.optimum[1], label)

    def options(self, objective: str | float, compared: list[Recipe], alternatives: int) -> list[Recipe]:
        """The optima ``objective`` needs: decode's and prompt's always (a pp plan is never slower
        at prompt than the tg plan; balanced needs the best prompt speed); a weight's own; for
        balanced, when the decode optimum prompts below the floor, a bisection over the weight
        for the most decode-heavy optimum above it; the frontier's for ``alternatives``."""
        decode = self.solve(1.0, TIE_BREAK, "solver (decode)")
        out = decode + self.solve(TIE_BREAK, 1.0, "solver (prompt)")
        if not out:
            return out
        self.optimum = (min(1 / speeds(o)[0] for o in out), min(1 / speeds(o)[1] for o in out))
        if isinstance(objective, float):
            out += self.weighted(objective, f"solver (weight {objective:g})")
        fits = [o for o in out + compared if o.fits]
        floor = prompt_floor(fits) if fits else 0.0
        if objective == "balanced" and fits and not any(o.fits and speeds(o)[1] >= floor for o in decode):
            lo, hi = 0.0, 1.0
            for _ in range(BALANCE_STEPS):
                mid = (lo + hi) / 2
                got = self.weighted(mid, f"solver (weight {mid:g})")
                out += got
                lo, hi = (mid, hi) if any(o.fits and speeds(o)[1] >= floor for o in got) else (lo, mid)
        for w in FRONTIER_WEIGHTS if alternatives else ():
            if 0.0 < w < 1.0:
                out += self.weighted(w, f"solver (weight {w:g})")
        return out


def _objective_notes(chosen: Recipe, options: Sequence[Recipe], objective: str | float) -> list[str]:
    """What the objective traded, and where the plan's placement came from."""
    fits = [o for o in options if o.fits]
    tg, pp = speeds(chosen)
    notes = []
    if chosen.name not in ("solver", "split"):  # a split mode's choice is its own table (report)
        notes.append(f"the {chosen.label} placement ({shlex.join(chosen.argv)}) is at least as good as the solver's "
                     f"optima on objective {objective} by the model: the plan takes it")
    fastest = choose(fits, "tg")
    if objective != "tg" and beats(fastest, chosen, "tg", fits):
        ftg, fpp = speeds(fastest)
        notes.append(f"objective {objective}: the fastest decode plan ({ftg:.1f} tok/s, {ftg / tg - 1:+.0%}) "
                     f"prompts at {fpp:.0f} tok/s ({fpp / pp - 1:+.0%}); --objective tg takes it")
    elif objective == "tg" and pp < prompt_floor(fits):
        btg, bpp = speeds(choose(fits, "balanced"))
        notes.append(f"objective tg: this plan prompts at {pp:.0f} tok/s, {max(speeds(o)[1] for o in fits) / pp:.1f}x "
                     f"slower than the fastest prompt plan, for {tg / btg - 1:+.0%} decode over the default "
                     f"(balanced: {btg:.1f} tok/s decode, {bpp:.0f} prompt)")
    return notes


def _compared_entry(o: Recipe, plan: Prediction) -> dict[str, Any]:
    """One row of "plan vs recipes": the recipe's flags, whether it fits, tok/s, and its speeds
    relative to the plan's (-0.2: 20 % slower)."""
    pred = o.predicted
    return {"name": o.name, "label": o.label, "args": list(o.argv), "feasible": o.fits,
            "tg_tps": None if pred is None else pred.tg_tps, "pp_tps": None if pred is None else pred.pp_tps,
            "tg_vs_plan": None if pred is None else pred.tg_tps / plan.tg_tps - 1,
            "pp_vs_plan": None if pred is None else pred.pp_tps / plan.pp_tps - 1, "error": o.error}


def _alternative_entry(plan: Plan, cost: CostModel, o: Recipe, chosen: Recipe) -> dict[str, Any]:
    """One plan of the frontier: where it came from, tok/s and its flags (the plan's dialect)."""
    assert o.placement is not None
    tg, pp = speeds(o)
    c = cost.context
    ea = plan.dialect.encode(plan.model, o.placement, plan.cluster, c, cost.usage(o.placement))
    return {"source": o.label, "tg_tps": tg, "pp_tps": pp,
            "chosen": (o.placement, o.op_offload, o.pinned) == (chosen.placement, chosen.op_offload, chosen.pinned),
            "args": ea.args("server", ctx=c.ctx, n_ubatch=c.n_ubatch, type_k=c.type_k, type_v=c.type_v,
                            flash_attn=c.flash_attn, op_offload=c.op_offload,
                            pinned_weights=c.pinned_weights)}


def _nothing_fits(cost: CostModel, tried: Sequence[Placement]) -> NothingFitsError:
    """What is missing for the closest placement the planner tried: the device that overflows
    by the least (the CPU when only RAM is short), and by how much."""
    def shortfall(p: Placement) -> tuple[int, int]:  # the accelerators' first: RAM is what a user can page
        usage = cost.usage(p)
        return sum(u.shortfall_bytes for u in usage if u.kind != "cpu"), sum(u.shortfall_bytes for u in usage)

    best = min(tried, key=shortfall)
    short = [u for u in cost.usage(best) if not u.fits]
    parts = []
    for u in short:
        weights = "" if u.pageable_bytes else f"weights {u.weights_bytes / GiB:.1f} + "
        what = f"{weights}KV {u.kv_bytes / GiB:.1f} + compute {u.compute_bytes / GiB:.1f} GiB"
        parts.append(f"{'CPU RAM' if u.kind == 'cpu' else u.name} needs {what} in {u.capacity_bytes / GiB:.1f} GiB "
                     f"usable, short by {u.shortfall_bytes / GiB:.2f} GiB")
    accel = ", ".join(d.name for d in cost.cluster.gpus) or "none"
    cpu_short = any(u.kind == "cpu" for u in short) and not cost.context.allow_paging
    return NothingFitsError(
        f"nothing fits: {'; '.join(parts)} (accelerators: {accel})",
        hint=("add --allow-paging to let weights beyond RAM page from disk (slow), or use more RAM, "
              "more GPUs, a smaller quant or a shorter --ctx") if cpu_short else None)


def _notes(cost: CostModel, p: Placement, usage: list[DeviceUsage]) -> list[str]:
    notes = []
    cpu = next(u for u in usage if u.name == CPU)
    if cpu.weights_bytes > cpu.capacity_bytes:
        notes.append(
            f"CPU-held weights ({cpu.weights_bytes / GiB:.1f} GiB) exceed usable RAM "
            f"({cpu.capacity_bytes / GiB:.1f} GiB): mmap will page {cpu.paged_bytes / GiB:.1f} GiB from disk "
            f"at {cost.disk_bandwidth() / GB:.1f} GB/s (--allow-paging), which the prediction includes"
        )
    for u in usage:
        if u.kind == "rpc" and u.weights_bytes:
            bw, _ = cost.link(u.name)
            notes.append(
                f"the first load uploads {u.weights_bytes / GiB:.1f} GiB to {u.name} over its "
                f"{bw / 1e9:.2f} GB/s link (~{u.weights_bytes / bw:.0f} s); rpc-server -c keeps them "
                "in its cache so later loads skip it")
    if any(u.kind == "rpc" for u in usage):
        notes.append("rpc-server has no authentication: run it only on a trusted network")
    if cost.model.hparams.n_layer_nextn:
        notes.append("NextN/MTP blocks are placed (they take layer slots) but not priced: "
                     "they run only with MTP drafting")
    if (estimated := compute_estimate_note(cost.model, cost.context.flash_attn)) is not None:
        notes.append(estimated)
    return notes


def evaluate(model: str | ModelProfile, cluster: str | Cluster, argv: Sequence[str], *,
             ctx: int | None = None, params: SpeedParams | None = None, engine: str = "llama.cpp",
             tool: str = "server", allow_paging: bool = False) -> Plan:
    """Price a user's llama.cpp / ik_llama.cpp command line (``tool`` "server" for llama-server /
    llama-cli, "bench" for llama-bench): memory per device, whether it fits, tg/pp
    (``allow_paging``: as :func:`plan_split`). Settings the command line leaves out take the
    tool's defaults (no ``-c``: ``ctx`` when given, else llama.cpp's training context, or
    llama-bench's test context); what was assumed, and flags that are not priced, are listed in
    :attr:`Plan.assumptions`. ``argv`` is a list of strings; an argument of the wrong type or
    range raises :class:`InvalidArgumentError` naming it."""
    engine_rules = dialect(engine)
    if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence) or not all(isinstance(a, str) for a in argv):
        raise InvalidArgumentError(f"argv must be a list of strings (got {show(argv)})",
                                   hint='e.g. ["-ngl", "99", "-ts", "3,1"]')
    tool = choice(tool, "tool", ("server", "bench"))
    ctx = None if ctx is None else _int_arg(ctx, "ctx", 1)
    allow_paging = flag(allow_paging, "allow_paging")
    _params_arg(params)
    parsed = engine_rules.parse_args(list(argv), tool)
    prof = load_model(model)
    clus = resolve_cluster(cluster)
    if parsed.threads is not None:
        clus = clus.with_cpu_threads(parsed.threads)
    run, context = engine_rules.run_context(parsed, tool, prof.hparams.n_ctx_train, ctx, allow_paging=allow_paging)
    prof.check_kv_types(context.type_k, context.type_v, context.flash_attn)
    model_notes = engine_rules.model_notes(prof)
    calibrated, store_note = (None, None) if params is not None else read_calibrated(clus, engine)
    placement = engine_rules.decode(prof, parsed, clus, context, tool)
    mode, shares = engine_rules.split_run(prof, parsed, clus, placement.order, context.flash_attn, tool)
    context = replace(context, split_mode=mode, split_shares=shares)
    cost = cost_model(prof, clus, context, params or calibrated)
    usage = cost.usage(placement)
    predicted = cost.predict(placement)
    notes = [f"{u.name} overflows by {u.shortfall_bytes / GiB:.2f} GiB "
             f"(needs {u.used_bytes / GiB:.2f} GiB of {u.capacity_bytes / GiB:.2f} GiB usable)"
             if u.kind != "cpu" else
             f"CPU RAM overflows by {u.shortfall_bytes / GiB:.2f} GiB (needs "
             f"{(u.used_bytes - u.pageable_bytes) / GiB:.2f} GiB of {u.capacity_bytes / GiB:.2f} GiB usable"
             + ("; --allow-paging lets weights page from disk)" if not allow_paging else ")")
             for u in usage if not u.fits] + ([store_note] if store_note else []) + model_notes
    notes += expert_offload_note(cost, placement, predicted)
    return Plan(prof, clus, engine, "given", context, placement, usage, predicted,
                engine_rules.flags_of(parsed), tuple(d.name for d in clus.gpus), notes, {},
                assumptions=list(run.assumptions))
