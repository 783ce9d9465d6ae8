"""How a GPU runs a prompt batch's quantized matrix products (llama.cpp's CUDA MMQ kernels).

MMQ computes a product in tiles of J columns (tokens): J is the narrowest multiple of 8 up to 128
that covers the batch in the fewest tiles, picked against the whole batch on NVIDIA
(ggml/src/ggml-cuda/mmq.cuh:1494-1510 ``mul_mat_q_switch_J``; mmq.cu:299-304 ``ncols_opt``).

- A batch narrower than a full tile runs at a lower rate (each block loads its weights for fewer
  columns): :func:`batch_rate`, half the full rate at ``half_tokens``.
- MUL_MAT_ID (routed experts) runs every expert a ubatch touches in whole tiles, and even on full
  tiles at a fraction of a dense product's rate (no stream-k, short per-expert products): its time
  is the root-sum-square of two bounds, whole tiles at the dense rate and the routed tokens at
  ``moe_eff`` of it (:func:`expert_time_factor`).

Both were measured on an H200: prompt throughput over ubatch 64..4096 of a dense, a GQA MoE and an
MLA MoE model, everything on the GPU (benchmarks/results/plans_vs_fit_25.md).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

MMQ_MAX_TILE = 128  # the widest J (mmq.cuh:1494)


def tile_tokens(n_tokens: int) -> int:
    """MMQ's tile width J for a batch of ``n_tokens`` tokens."""
    if n_tokens <= 0:
        return MMQ_MAX_TILE
    tiles = math.ceil(n_tokens / MMQ_MAX_TILE)
    return math.ceil(math.ceil(n_tokens / tiles) / 8) * 8


def uniform_tile_factor(n_tokens: int, k_over_n: float, expert_hit: float) -> float:
    """Token slots run per routed token when each of the experts a ubatch of ``n_tokens`` touches
    gets its even share (every token picks k of N independently), each in whole tiles."""
    per_expert = n_tokens * k_over_n / expert_hit if expert_hit else 0.0
    if not per_expert:
        return 1.0
    j = tile_tokens(n_tokens)
    return math.ceil(per_expert / j) * j / per_expert


def routed_tile_factor(routed: Sequence[Sequence[int]], n_tokens: int, n_used: int) -> float:
    """The same for a replayed routing: per layer, the tokens each expert got, averaged over layers."""
    j, want = tile_tokens(n_tokens), n_used * n_tokens
    tiles = [sum(math.ceil(n / j) for n in layer) * j / want for layer in routed]
    return sum(tiles) / len(tiles)


def batch_rate(n_tokens: int, half_tokens: float) -> float:
    """Share of its full-batch rate a GPU's matrix products reach on ``n_tokens`` tokens."""
    return n_tokens / (n_tokens + half_tokens) if n_tokens > 0 else 1.0


def expert_time_factor(tile_factor: float, moe_eff: float) -> float:
    """Routed-expert time on a GPU as a multiple of the same FLOPs run densely."""
    return math.hypot(tile_factor, 1.0 / moe_eff)


__all__ = ["MMQ_MAX_TILE", "batch_rate", "expert_time_factor", "routed_tile_factor", "tile_tokens",
           "uniform_tile_factor"]
