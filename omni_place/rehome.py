"""Experts off the CPU onto other local GPUs: a priced greedy pass after the core's solution.

The C core places each layer's routed experts with the layer or in CPU RAM. llama.cpp also runs
a layer's experts on another local GPU than the layer's own (the weights move; the scheduler
runs an op on the backend holding its weight and copies the activations there and back,
``ggml/src/ggml-backend.cpp:951-980``), which pays where one GPU has memory left over after its
own layers and another's layers keep experts in RAM -- the seed rig's 96 + 32 GB. This pass
takes the core's placement and moves CPU-held experts of whole layers to such GPUs -- all of a
layer's kinds in RAM, or the ``down`` or ``gate``/``up`` part of them (the core's
:data:`EXPERT_OPTIONS`) -- the most seconds saved per byte first, keeping a move only when every device still fits
(margin, KV cache and compute buffers included: :meth:`CostModel.usage`) and the weighted time
``w_tg * t_tg + w_pp * t_pp`` of the whole placement (:meth:`CostModel.predict`) goes down.
"""
from __future__ import annotations

from dataclasses import replace

from .cost import EXPERT_OPTIONS, CostModel, Placement, on_cpu
from .placement import ExpertHomes


def _weighted(cost: CostModel, p: Placement, w_tg: float, w_pp: float) -> float:
    pred = cost.predict(p)
    return w_tg / pred.tg_tps + w_pp / pred.pp_tps


def _moved(homes: ExpertHomes, kinds: frozenset[str], target: str) -> ExpertHomes:
    """A layer's expert homes with ``kinds`` moved from the CPU to ``target``."""
    return (homes - on_cpu(kinds)) | {(k, target) for k in kinds}


def rehome_experts(cost: CostModel, p: Placement, w_tg: float, w_pp: float) -> Placement:
    """``p`` with CPU-held experts of whole layers moved to other local GPUs where that fits
    and lowers the weighted time (see the module doc); ``p`` itself when nothing does, or when
    it does not fit to begin with."""
    local = [d.name for d in cost.cluster.gpus if d.kind == "gpu"]
    movable = [il for il, home in enumerate(p.layer_home) if home in local and p.cpu_experts[il]
               and cost.model.layers[il].has_experts and not cost.model.layers[il].is_nextn]
    if len(local) < 2 or not movable or not all(u.fits for u in cost.usage(p)):
        return p
    moves: list[tuple[float, int, str, frozenset[str], int]] = []  # (s saved per byte, layer, GPU, kinds, bytes)
    first = cost.offload_device(p)
    for il in movable:
        home, old, in_ram = p.layer_home[il], p.expert_homes[il], p.cpu_experts[il]
        before_tg, before_pp = cost.layer_tg(il, home, old), cost.layer_pp(il, home, old, first)
        for kinds in {in_ram & option for option in EXPERT_OPTIONS[1:]} - {frozenset()}:
            for target in local:
                if target == home:
                    continue
                new = _moved(old, kinds, target)
                gain = (w_tg * (sum(before_tg.values()) - sum(cost.layer_tg(il, home, new).values()))
                        + w_pp * (sum(before_pp.values()) - sum(cost.layer_pp(il, home, new, first).values())))
                size = cost.expert_bytes(il, cost.backend(target), kinds, True)
                if gain > 0 and size:
                    moves.append((gain / size, il, target, kinds, size))
    best, score = p, _weighted(cost, p, w_tg, w_pp)
    too_big: dict[str, int] = {}  # per target: the smallest move that did not fit
    for _, il, target, kinds, size in sorted(moves, key=lambda m: (-m[0], m[1], m[2], sorted(m[3]))):
        if not kinds <= best.cpu_experts[il] or size >= too_big.get(target, size + 1):
            continue  # moved already, or cannot fit where a smaller move did not
        homes = list(best.expert_homes)
        homes[il] = _moved(homes[il], kinds, target)
        order = best.order if target in best.order else (*best.order, target)
        q = replace(best, order=order, expert_homes=tuple(homes))
        if not all(u.fits for u in cost.usage(q)):
            too_big[target] = min(size, too_big.get(target, size))
            continue
        s = _weighted(cost, q, w_tg, w_pp)
        if s < score:
            best, score = q, s
    return best


__all__ = ["rehome_experts"]
