"""Engine dialects, one module each (one source of truth per dialect), behind one interface
(:class:`~.base.Dialect`) and one registry: ``dialect(name)``."""
from __future__ import annotations

import re

from . import ik_llama, llama_cpp, vllm
from .base import BenchSpelling, Dialect, EngineTraits, PlacementArgs, by_name

DIALECTS: dict[str, Dialect] = {d.name: d for d in (llama_cpp.DIALECT, ik_llama.DIALECT, vllm.DIALECT)}
ENGINES = tuple(DIALECTS)
LLAMA_FAMILY = tuple(n for n, d in DIALECTS.items() if d.traits.llama_family)
BENCH_ENGINES = tuple(n for n, d in DIALECTS.items() if d.bench is not None)


def dialect(engine: str) -> Dialect:
    """The dialect of a supported engine; a clear error for any other name."""
    return by_name(DIALECTS, engine)


def traits(engine: str) -> EngineTraits:
    """The traits of a supported engine; a clear error for any other name."""
    return dialect(engine).traits


def engine_of_binary(path: str) -> str:
    """Guess the engine of a llama-bench binary from its path (``ik`` in it means ik_llama.cpp)."""
    ik = re.search(r"(^|[^a-z])ik([^a-z]|$)|ik_llama", str(path).lower())
    return ik_llama.NAME if ik else llama_cpp.NAME


__all__ = ["BENCH_ENGINES", "DIALECTS", "ENGINES", "LLAMA_FAMILY", "BenchSpelling", "Dialect", "EngineTraits",
           "PlacementArgs", "dialect", "engine_of_binary", "ik_llama", "llama_cpp", "traits", "vllm"]
