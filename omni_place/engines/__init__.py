"""Engine dialects, one module each (one source of truth per dialect), behind one interface
(:class:`~.base.Dialect`) and one registry: ``dialect(name)``."""
from __future__ import annotations

import re

from . import ik_llama, llama_cpp, vllm
from typing import Any, Mapping

from .base import BenchRecordFlags, BenchSpelling, Dialect, EngineTraits, PlacementArgs, by_name

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


def engine_of_bench_record(record: Mapping[str, Any]) -> str | None:
    """The engine whose llama-bench printed a plain output record, from the keys only its
    output has (mainline's ``tensor_buft_overrides``/``n_cpu_moe``, ik's ``override_tensor``/
    ``mla_attn``, ...); None when the record has none of them or both engines' keys."""
    hits = [n for n in BENCH_ENGINES if DIALECTS[n].bench_record_keys & record.keys()]
    return hits[0] if len(hits) == 1 else None


__all__ = ["BENCH_ENGINES", "DIALECTS", "ENGINES", "LLAMA_FAMILY", "BenchRecordFlags", "BenchSpelling", "Dialect",
           "EngineTraits", "PlacementArgs", "dialect", "engine_of_bench_record", "engine_of_binary", "ik_llama",
           "llama_cpp", "traits", "vllm"]
