"""Engine switches a plan may flip besides the placement, each priced: op offload off (mainline
``--no-op-offload``), CPU-held weights pinned (loaded without mmap), and no device at all
(``-dev none``). They change prompt speed and a GPU's compute buffer, not where tensors live."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from .cost import CPU, EXPERT_OPTIONS, CostModel, Placement, Prediction, on_cpu
from .engines import Dialect
from .engines.common import format_share
from .engines.splitmodes import refusal
from .errors import InvalidArgumentError
from .recipes import Recipe, first_true, priced
from .splitcost import SplitCostModel, cost_model
from .units import GiB



def expressible(cost: CostModel, rules: Dialect, p: Placement) -> bool:
    """Whether the engine's flags for ``p`` make the engine place it so (a dialect without -dev
    cannot leave the GPUs out)."""
    try:
        ea = rules.encode(cost.model, p, cost.cluster, cost.context, cost.usage(p))
        back = rules.decode(cost.model, rules.parse_args(ea.args("server")), cost.cluster, cost.context)
    except InvalidArgumentError:
        return False
    return back.order == p.order and back.layer_home == p.layer_home


def without_op_offload(cost: CostModel, off: CostModel, options: Sequence[Recipe]) -> list[Recipe]:
    """The fitting options that hold weights on the CPU and op-offload them, priced on ``off``
    (``cost`` with op offload off; for an engine that can turn it off): copying CPU-held weights
    to the GPU per ubatch (from pageable memory at a few GB/s) can be slower than computing them
    on the CPU, e.g. a large sparse MoE whose ubatch touches every expert of every layer."""
    out = []
    for o in options:
        p = o.placement
        if (not o.fits or p is None or not o.op_offload or not p.order or not cost.offloads_to(p.order[0])
                or not cost.has_cpu_weights(p)):
            continue
        r = priced(off, o.name, f"{o.label}, --no-op-offload", o.argv, p)
        out.append(replace(r, op_offload=False))
    return out


# Loading without mmap pins the CPU-held weights: op offload then copies them at link speed (3-5x
# the prompt speed on the H200 runs, benchmarks/results/plans_vs_fit.md), but that RAM cannot
# page, the load reads the whole file first, and MoE decode measured 5-15 % slower there (not in
# the model). A plan pins only when its objective gains more than this (objective.adopt_pinned),
# and notes the switch when the prompt would.
PIN_MARGIN = 0.10


def pinned_variants(pinned: CostModel, options: Sequence[Recipe]) -> list[Recipe]:
    """The fitting options that hold weights in CPU RAM, once per placement, priced on ``pinned``
    (op offload on, the weights loaded without mmap so the CPU-held ones land in the first GPU's
    pinned host buffer, src/llama-model-loader.cpp:1269-1277): op offload then copies them at link
    speed. A placement whose RAM cannot hold those weights unpageable, or whose first GPU lacks the
    op-offload room, does not fit and is left out. (Where the driver refuses to pin that much,
    llama.cpp falls back to an ordinary CPU buffer, ggml-cuda.cu:1289-1295, and the run copies at
    the pageable rate again; GGML_CUDA_NO_PINNED does the same on purpose.)"""
    seen: set[Placement] = set()
    out = []
    for o in options:
        p = o.placement
        if (not o.fits or o.pinned or p is None or p in seen or not p.order or not pinned.offloads_to(p.order[0])
                or not pinned.has_cpu_weights(p)):
            continue
        seen.add(p)
        r = priced(pinned, o.name, f"{o.label}, pinned", o.argv, p)
        if r.fits:
            out.append(replace(r, pinned=True))
    return out


def pinned_adopted_note(pinned: CostModel, p: Placement, flags: Sequence[str]) -> list[str]:
    """What a plan that pins its CPU-held weights gains and costs, against the same placement
    loaded with mmap."""
    cpu = next(u for u in pinned.usage(p) if u.name == CPU)
    before, after = pinned.with_switches(pinned_weights=False).predict(p), pinned.predict(p)
    return [f"{' '.join(flags)} loads the {cpu.weights_bytes / GiB:.1f} GiB of CPU-held weights into pinned memory "
            f"(no mmap: the whole file is read at start and that RAM cannot page): prompt {before.pp_tps:.0f} -> "
            f"{after.pp_tps:.0f} tok/s by the model against the same placement mmap'd; H200 hosts measured "
            "3-7x the prompt speed pinned, decode -15..+8 % (benchmarks/results/plans_vs_fit_23.md)"]


def pinned_note(cost: CostModel, p: Placement, pred: Prediction, flags: Sequence[str]) -> list[str]:
    """The prompt speed of the same placement with its CPU-held weights pinned (loaded without
    mmap, src/llama-model-loader.cpp:1269-1277), when that changes it and the RAM holds them."""
    if not flags or not p.order or cost.context.pinned_weights or cost.device(p.order[0]).kind != "gpu":
        return []
    pinned = cost.with_switches(pinned_weights=True, op_offload=True)
    cpu = next(u for u in pinned.usage(p) if u.name == CPU)
    faster = pinned.predict(p).pp_tps
    if not cpu.weights_bytes or not cpu.fits or faster < pred.pp_tps * (1 + PIN_MARGIN):
        return []
    instead = "" if cost.context.op_offload else " instead of --no-op-offload"
    return [f"{' '.join(flags)}{instead} loads the {cpu.weights_bytes / GiB:.1f} GiB of CPU-held weights into pinned "
            f"memory (no mmap; a longer load, RAM that cannot page): prompt {pred.pp_tps:.0f} -> {faster:.0f} tok/s "
            "by the model (op offload copies pinned memory at link speed, pageable memory far slower)"]


def expert_offload_ubatch(cost: CostModel) -> int | None:
    """The smallest power-of-two ubatch (up to 4096) at which an engine that offloads routed
    experts only at n_tokens x used >= 32 x experts (``Context.moe_offload_by_share``) takes them,
    where this context's does not; None where it already does, or never will."""
    c = cost.context
    if not (c.moe_offload_by_share and c.op_offload and cost.model.hparams.n_expert) or cost.experts_offloaded:
        return None
    ubatch = 1 << max(0, cost.expert_offload_batch - 1).bit_length()
    return ubatch if c.n_ubatch < ubatch <= 4096 else None


def expert_offload_note(cost: CostModel, p: Placement, pred: Prediction) -> list[str]:
    """With routed experts in RAM that the engine computes on the CPU at this ubatch (ik_llama.cpp,
    ggml-cuda.cu:5180-5207), the ubatch at which the GPU takes them, priced on the same placement
    (its prompt speed, and whether the larger compute buffers still fit)."""
    ubatch = expert_offload_ubatch(cost)
    held = any(lc.has_experts and (home == CPU or p.cpu_experts[il])  # a CPU layer's experts, or overridden ones
               for il, (lc, home) in enumerate(zip(cost.model.layers, p.layer_home)))
    if ubatch is None or not held:
        return []
    hp = cost.model.hparams
    larger = cost_model(cost.model, cost.cluster, replace(cost.context, n_ubatch=ubatch), cost.params)
    over = [u.name for u in larger.usage(p) if not u.fits]
    fits = (f"this placement then overflows {', '.join(over)}: `omni-place plan --ubatch {ubatch}` plans for it"
            if over else "this placement still fits")
    return [f"{cost.context.n_ubatch} tokens x {hp.n_expert_used} experts used < 32 x {hp.n_expert} experts: the "
            "engine computes the CPU-held experts on the CPU (ik ggml-cuda.cu:5180-5207); -ub "
            f"{ubatch} lets the GPU take them: prompt {pred.pp_tps:.0f} -> {larger.predict(p).pp_tps:.0f} tok/s by "
            f"the model, larger compute buffers ({fits})"]


@dataclass
class SplitCandidate:
    """One ``-sm`` mode of the engine besides the layer split: why the engine refuses it here
    (never emitted then), or its priced options with the cost model each was priced on."""

    mode: str
    refused: str | None = None
    options: list[tuple[Recipe, CostModel]] = field(default_factory=list)


def split_candidates(cost: CostModel, rules: Dialect) -> list[SplitCandidate]:
    """Every split mode of the engine but ``layer`` and ``none``: a parallel mode the engine runs
    for this model on two or more local GPUs is priced with every layer and the output head split
    across them, by shares proportional to their usable memory, to their bandwidth, or equal;
    any other is listed with the engine's reason (:func:`omni_place.engines.splitmodes.refusal`)."""
    gpus = [d for d in cost.cluster.gpus if d.kind == "gpu"]
    out = []
    for rule in rules.traits.split_modes:
        if rule.name in ("layer", "none"):
            continue
        why = refusal(rule, rules.name, cost.model, [d.kind for d in gpus], cost.context.flash_attn)
        if why is None and len(gpus) < 2:
            why = f"-sm {rule.name} splits over two or more local GPUs; the cluster has {len(gpus)}"
        cand = SplitCandidate(rule.name, why)
        if why is None:
            ratios = {_ratio([d.usable_bytes for d in gpus]), _ratio([d.bandwidth_gbs for d in gpus]),
                      _ratio([1.0] * len(gpus))}
            cand.options = [_split_option(cost, rule.name, gpus, shares) for shares in sorted(ratios) if any(shares)]
        out.append(cand)
    return out


def _ratio(values: Sequence[float]) -> tuple[float, ...]:
    """Shares as a short -ts: the smallest positive one 1, two decimals (``3.03,1``)."""
    low = min((v for v in values if v > 0), default=1.0)
    return tuple(round(v / low, 2) for v in values)


def _split_option(cost: CostModel, mode: str, gpus: Sequence[Any], shares: Sequence[float]
                  ) -> tuple[Recipe, CostModel]:
    """Every layer and the output head split across ``gpus`` by ``shares`` under ``-sm mode``;
    when that does not fit a MoE model, the routed experts of the fewest leading layers in CPU
    RAM that make it fit (recipes.first_true: memory only falls as layers' experts leave)."""
    order = tuple(d.name for d in gpus)
    split = SplitCostModel(cost.model, cost.cluster, replace(cost.context, split_mode=mode,
                                                              split_shares=tuple(shares)), cost.params)
    n = cost.model.n_layer
    moe = [il for il, lc in enumerate(cost.model.layers) if lc.has_experts and not lc.is_nextn]

    def with_cpu_experts(k: int) -> Placement:
        homes = tuple(on_cpu(EXPERT_OPTIONS[-1]) if il in moe[:k] else frozenset() for il in range(n))
        return Placement(order, (order[0],) * n, homes, order[0])

    def fits(k: int) -> bool:
        return all(u.fits for u in split.usage(with_cpu_experts(k)))

    k = 0
    if moe and not fits(0) and fits(len(moe)):  # RAM holds every expert: fits(k) only turns true
        k = first_true(1, len(moe), fits, guess=1) or 0
    argv = ("-sm", mode, "-ts", ",".join(format_share(x) for x in shares))
    label = f"-sm {mode}" + (f", experts of the first {k} MoE layers on the CPU" if k else "")
    return priced(split, "split", label, argv, with_cpu_experts(k)), split


__all__ = ["PIN_MARGIN", "SplitCandidate", "expressible", "pinned_adopted_note", "pinned_note", "pinned_variants",
           "split_candidates", "without_op_offload"]
