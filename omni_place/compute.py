"""Compute-buffer estimate: the scratch memory llama.cpp's scheduler reserves per backend.

The engine sizes these buffers by allocating its worst-case graph (``llama-context.cpp``
``sched_reserve``: a prompt batch of ``n_tokens = min(n_ctx, n_ubatch)`` tokens, all of them
outputs, then a 1-token graph, then the prompt graph again). Each backend's buffer is the peak of
the activations alive at once in the part of the graph it runs: roughly the widest single op of a
layer (attention scores without flash attention, the FFN / MoE intermediates) plus the residual
stream; the output device also holds the logits (``n_vocab x n_tokens`` F32) and the CPU's host
buffer the token-embedding gather.

The widths are exact from the hyper-parameters; how many of them the allocator keeps alive at
once is what :data:`CALIBRATION` holds, fitted to the engine's ``compute buffer size`` log lines
(tests/test_model_engine.py and benchmarks/memory_accuracy.py re-measure it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import ModelProfile

F32 = 4
PIPELINE_COPIES = 4  # GGML_SCHED_MAX_COPIES: input copies kept when the engine pipelines
DSA_INDEXER_BYTES_PER_CELL = 6  # F32 score + F16 mask per (kv cell, token), deepseek32


@dataclass(frozen=True)
class Calibration:
    """How many widest-op activations are alive at the peak (fitted to engine log lines)."""

    layer_live: float = 2.0  # multiples of the widest per-layer intermediate
    residual_live: float = 3.0  # multiples of the residual stream (n_embd)
    output_live: float = 1.0  # multiples of the logits
    host_live: float = 2.0  # CPU host buffer: multiples of the residual stream


CALIBRATION = Calibration()


@dataclass(frozen=True)
class ComputeEstimate:
    """Per-backend compute-buffer bytes for one context configuration."""

    n_tokens: int
    layer_device: int  # any device holding at least one layer
    output_extra: int  # added on the device holding the output head (logits)
    host: int  # the CPU's compute buffer (pinned host memory of devices[0] when a GPU is used)
    mask: int = 0  # the KQ mask input (n_kv x n_tokens), held by every backend of the graph

    def device_bytes(self, holds_layers: bool, holds_output: bool, copies: int = 1) -> int:
        """Bytes of one accelerator; ``copies`` > 1 under pipeline parallelism, where the
        scheduler keeps that many copies of every split's inputs (the mask among them)."""
        if not (holds_layers or holds_output):
            return 0
        return self.layer_device + self.mask * copies + (self.output_extra if holds_output else 0)

    def host_bytes(self, copies: int = 1) -> int:
        return self.host + self.mask * copies

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def widest_layer_activation(model: ModelProfile, n_tokens: int, n_kv: int, flash_attn: bool) -> int:
    """Elements of the widest intermediate of any layer for a batch of ``n_tokens``."""
    hp = model.hparams
    widest = 0
    for il in range(hp.n_layer_kv or hp.n_layer):
        n_head = hp.n_head[il]
        q = n_head * (hp.kv_lora_rank + hp.n_rot if hp.is_mla else hp.head_dim_k)
        attn = q * n_tokens
        if not flash_attn and n_head:
            attn = max(attn, n_kv * n_tokens * n_head)  # KQ scores
        ffn = 2 * hp.n_ff[il] * n_tokens
        moe = 0
        if hp.n_expert and il >= hp.n_layer_dense_lead:
            moe = n_tokens * (hp.n_expert + hp.n_expert_used * (2 * hp.n_ff_exp + hp.n_embd))
        widest = max(widest, attn, ffn, moe)
    return widest


def compute_buffer_estimate(
    model: ModelProfile,
    *,
    n_ctx: int,
    n_ubatch: int = 512,
    flash_attn: bool = True,
    n_seq: int = 1,
    calibration: Calibration = CALIBRATION,
) -> ComputeEstimate:
    """Estimate the compute buffers llama.cpp reserves for ``n_ubatch`` and ``n_ctx``."""
    hp = model.hparams
    n_tokens = min(model.kv_cells(n_ctx, n_seq), n_ubatch)
    n_kv = model.kv_cells(n_ctx, n_seq)
    widest = widest_layer_activation(model, n_tokens, n_kv, flash_attn)
    residual = hp.n_embd * n_tokens
    layer = F32 * int(calibration.layer_live * widest + calibration.residual_live * residual)
    if hp.indexer_head_size:
        # DSA lightning indexer: an F32 score and an F16 mask over n_kv x n_tokens (6 B per cell)
        layer += int(DSA_INDEXER_BYTES_PER_CELL * n_kv * n_tokens)
    logits = F32 * hp.n_vocab * n_tokens
    output = F32 * int(calibration.output_live * logits)
    host = F32 * int(calibration.host_live * residual)
    # KQ mask: F16 with flash attention, F32 without (llama-graph.cpp build_attn_inp_kv)
    mask = (2 if flash_attn else F32) * n_kv * n_tokens
    return ComputeEstimate(n_tokens=n_tokens, layer_device=layer, output_extra=output, host=host, mask=mask)
