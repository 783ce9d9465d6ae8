"""The placement an engine made, read back from its ``-v`` log's last load: layer homes as its
dialect reads them (:meth:`~omni_place.engines.Dialect.layer_homes_from_log`) and the expert
tensors overridden to the CPU or another GPU, which both forks print alike."""
from __future__ import annotations

import re
from collections.abc import Sequence

from ..cost import CPU, Placement
from ..engines import dialect
from ..engines.common import override_device
from ..model import ModelProfile

# src/llama-model-loader.cpp: "tensor <name> (...) buffer type overridden to <buft>"
_OVERRIDE = re.compile(r"[Tt]ensor (blk\.(\d+)\.ffn_(gate_up|gate|up|down)_(?:ch|)exps\.weight) \(.*?\) "
                       r"buffer type overrid+en to (\S+)")
_OUTPUT_OVERRIDE = re.compile(r"[Tt]ensor output\.weight \(.*?\) buffer type overrid+en to (\S+)")
LOAD_START = "llama_model_loader: loaded meta data"  # one per model load (src/llama-model-loader.cpp)
_LOAD_START = re.compile(re.escape(LOAD_START))
# a context's micro-batch: mainline src/llama-context.cpp "llama_context: n_ubatch = N", ik
# "llama_new_context_with_model: n_ubatch = N"
CONTEXT_UBATCH = re.compile(r"^(?:llama_context|llama_new_context_with_model): +n_ubatch += +(\d+)", re.M)
# allocated weights (a fitter's no-alloc probes print 0.00 MiB): mainline "load_tensors: CUDA0
# model buffer size = N MiB", ik "llm_load_tensors: CUDA0 buffer size = N MiB"
_ALLOCATED = re.compile(r"load_tensors: +\S+ (?:model )?buffer size = +(?!0+\.0+ MiB)[0-9.]+ MiB")


def load_serving(log: str, n_ubatch: int | None = None) -> str:
    """The part of a log from the last model load that made a context of micro-batch
    ``n_ubatch`` with its buffers allocated, up to the next load: llama-bench under ``-fitt`` /
    ``--fit`` loads again (and probes without allocating) for each test, so a prompt test's
    placement is not the last load's. The last load when ``n_ubatch`` is None or no load matches."""
    starts = [m.start() for m in _LOAD_START.finditer(log)]
    if not starts:
        return log
    parts = [log[a:b] for a, b in zip(starts, [*starts[1:], len(log)])]
    if n_ubatch is not None:
        for part in reversed(parts):
            if _ALLOCATED.search(part) and n_ubatch in (int(u) for u in CONTEXT_UBATCH.findall(part)):
                return part
    return parts[-1]


def placement_from_log(log: str, model: ModelProfile, accelerators: Sequence[str], engine: str,
                       argv: Sequence[str] = (), n_ubatch: int | None = None) -> Placement | None:
    """The :class:`~omni_place.cost.Placement` an engine made, from its ``-v`` log (the load that
    served a context of ``n_ubatch``, :func:`load_serving`). ``accelerators`` names the engine's
    devices in its order. None when the log does not say."""
    L = model.n_layer
    seg = load_serving(log, n_ubatch)
    found = dialect(engine).layer_homes_from_log(seg, L, accelerators, argv)
    if found is None:
        return None
    homes, output = found

    def device(buft: str) -> str:
        idx = int(buft[4:]) if re.fullmatch(r"CUDA\d+", buft) else None
        return (CPU if override_device(buft) == CPU
                else accelerators[idx] if idx is not None and idx < len(accelerators) else buft)

    moved = _OUTPUT_OVERRIDE.search(seg)  # -ot ^output\.=BUFT: the head is where the override put it
    if moved:
        output = device(moved.group(1))
    away: list[dict[str, str]] = [{} for _ in range(L)]
    for _name, il_s, kind, buft in _OVERRIDE.findall(seg):
        il = int(il_s)
        if il < L and homes[il] != CPU and device(buft) != homes[il]:
            away[il][kind] = device(buft)
    # engine order as run: devices in the order their layers come (the output's device last)
    used = list(dict.fromkeys([h for h in homes if h != CPU] + ([output] if output != CPU else [])))
    order = tuple(used) + tuple(a for a in accelerators if a not in used)
    return Placement(order, tuple(homes), tuple(frozenset(a.items()) for a in away), output)
