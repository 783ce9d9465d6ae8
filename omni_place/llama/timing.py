"""Decode speed of a loaded context, measured through the bindings (the engine's own
``llama_decode``, one token per call, as llama-bench's ``tg`` test does)."""
from __future__ import annotations

import ctypes
import statistics
import time
from dataclasses import dataclass, field

from ..errors import EngineError
from . import bindings as b


@dataclass
class DecodeTiming:
    """Wall seconds of each single-token decode after the warm-up steps."""

    seconds: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.median_s

    def to_dict(self) -> dict[str, float]:
        s = sorted(self.seconds)
        return {"n": len(s), "median_ms": 1e3 * self.median_s, "p10_ms": 1e3 * s[len(s) // 10],
                "p90_ms": 1e3 * s[(9 * len(s)) // 10], "tokens_per_s": self.tokens_per_s}


def time_decode(ctx: b.llama_context_p, *, n_tokens: int = 32, warmup: int = 4, token: int = 1) -> DecodeTiming:
    """Clear the KV cache, then decode ``warmup + n_tokens`` single tokens and time the last
    ``n_tokens`` (each call synchronized, so device work is inside the measurement)."""
    mem = b.llama_get_memory(ctx)
    if mem:
        b.llama_memory_clear(mem, True)
    tok = (ctypes.c_int32 * 1)(token)
    out = DecodeTiming()
    for i in range(warmup + n_tokens):
        t0 = time.perf_counter()
        rc = b.llama_decode(ctx, b.llama_batch_get_one(tok, 1))
        b.llama_synchronize(ctx)
        dt = time.perf_counter() - t0
        if rc != 0:
            raise EngineError(f"llama_decode failed with status {rc} at step {i}")
        if i >= warmup:
            out.seconds.append(dt)
    return out
