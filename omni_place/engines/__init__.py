"""Engine flag dialects, one module each (one source of truth per dialect), and what the planner
must know of each engine (:class:`EngineTraits`)."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from ..errors import InvalidArgumentError
from . import ik_llama, llama_cpp, vllm


@dataclass(frozen=True)
class EngineTraits:
    """Placement rules that differ between engines."""

    cpu_weights: bool  # layers / routed experts may stay in CPU RAM
    rpc_devices: bool  # llama.cpp RPC servers can be devices
    swa_full: bool  # the SWA KV cache is sized for the whole context
    embedding_on_first: bool  # the token embedding lives on the first device, not in CPU RAM
    output_only_offload: bool = True  # the output head alone may sit on an accelerator


DIALECTS: dict[str, ModuleType] = {llama_cpp.NAME: llama_cpp, ik_llama.NAME: ik_llama, vllm.NAME: vllm}
TRAITS: dict[str, EngineTraits] = {
    llama_cpp.NAME: EngineTraits(cpu_weights=True, rpc_devices=True, swa_full=False, embedding_on_first=False),
    # ik: -ngl 0 drops every override, so a head on a GPU needs a layer there too
    ik_llama.NAME: EngineTraits(cpu_weights=True, rpc_devices=True, swa_full=True, embedding_on_first=False,
                                output_only_offload=False),
    vllm.NAME: EngineTraits(cpu_weights=False, rpc_devices=False, swa_full=False, embedding_on_first=True),
}
ENGINES = tuple(DIALECTS)


def traits(engine: str) -> EngineTraits:
    """The traits of a supported engine; a clear error for any other name."""
    try:
        return TRAITS[engine]
    except KeyError:
        raise InvalidArgumentError(f"unknown engine {engine!r}", hint="use one of: " + ", ".join(ENGINES)) from None


__all__ = ["DIALECTS", "ENGINES", "TRAITS", "EngineTraits", "ik_llama", "llama_cpp", "traits", "vllm"]
