"""Engine switches a plan may flip besides the placement, each priced: op offload off (mainline
``--no-op-offload``), CPU-held weights pinned (loaded without mmap), and no device at all
(``-dev none``). They change prompt speed and a GPU's compute buffer, not where tensors live."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from .cost import CPU, CostModel, Placement, Prediction
from .engines import Dialect
from .errors import InvalidArgumentError
from .recipes import Recipe, priced
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
        if not o.fits or p is None or not o.op_offload or not p.order or not cost.offloads_to(p.order[0]):
            continue
        if not any(h == CPU for h in p.layer_home) and not any(p.cpu_experts):
            continue
        r = priced(off, o.name, f"{o.label}, --no-op-offload", o.argv, p)
        out.append(replace(r, op_offload=False))
    return out


def pinned_note(cost: CostModel, p: Placement, pred: Prediction, flags: Sequence[str]) -> list[str]:
    """The prompt speed of the same placement with its CPU-held weights pinned (loaded without
    mmap, src/llama-model-loader.cpp:1269-1277), when that changes it and the RAM holds them."""
    if not flags or not p.order or cost.context.pinned_weights or cost.device(p.order[0]).kind != "gpu":
        return []
    pinned = cost.with_switches(pinned_weights=True, op_offload=True)
    cpu = next(u for u in pinned.usage(p) if u.name == CPU)
    faster = pinned.predict(p).pp_tps
    if not cpu.weights_bytes or not cpu.fits or faster < pred.pp_tps * 1.1:
        return []
    instead = "" if cost.context.op_offload else " instead of --no-op-offload"
    return [f"{' '.join(flags)}{instead} loads the {cpu.weights_bytes / GiB:.1f} GiB of CPU-held weights into pinned "
            f"memory (no mmap; a longer load, RAM that cannot page): prompt {pred.pp_tps:.0f} -> {faster:.0f} tok/s "
            "by the model (op offload copies pinned memory at link speed, pageable memory far slower)"]


__all__ = ["expressible", "pinned_note", "without_op_offload"]
