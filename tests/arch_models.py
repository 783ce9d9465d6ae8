"""Tiny but valid, loadable GGUF models with random weights: the tests' (and benchmarks') models.

``write_model(path, arch, ...)`` writes a model of one of ``ARCHS`` through the package's writer
(:func:`omni_place.gguf_write.write_gguf`): the metadata keys and tensor names/shapes follow the
vendored llama.cpp loaders (``src/models/<arch>.cpp``) and converters (``conversion/*.py``), so
the real libllama loads the file and decodes with it. Everything is deterministic for a given
``seed``.

``write_llama(path, ...)`` writes a small llama whose tensors are listed layer by layer (token_embd,
blk.0 .. blk.N-1, output_norm, output) and returns a :class:`TinyModel` that describes every
tensor, so tests can compute expected per-layer / per-device bytes independently of the code
under test. ``tiny_llama_spec()`` is the smallest header-only model (a
:class:`omni_place.reference_models.ModelSpec` with a realistic quant mix).

Conventions
-----------
* ``n_layer`` counts the *trunk* layers. NextN/MTP layers (``n_nextn``; NEXTN_ARCHS only)
  come on top, as in real GGUFs: ``block_count = n_layer + n_nextn`` and the NextN blocks are
  ``blk.{n_layer}..``.
* ``n_layer=None`` means 4, except gemma3 (6: with the default SWA pattern 6, layers 0-4 are
  sliding-window and layer 5 is full attention, so both kinds exist).
* ``weight_type`` applies to every 2-D/3-D matrix (token_embd and output included). A tensor
  whose row length ne0 is not a multiple of the type's block size falls back the way
  ``llama-quantize`` does (``omni_place.reference_models.fit_quant_type``: Q4_K->Q5_0,
  Q5_K->Q5_1, Q6_K->Q8_0, Q2_K/Q3_K->Q4_0; then F16).
  Norms are F32 ones; routers (``ffn_gate_inp``), biases, ``attn_sinks`` and ``exp_probs_b``
  are F32. ``tensor_types`` ({regex: type}) overrides per tensor name (first match wins).
  Quantized data are valid blocks: ``gguf.quants.quantize`` where gguf-py implements it
  (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4, BF16), otherwise random quants with small finite fp16
  super-block scales (K-quants).
* ``header_only=True``: header, metadata and tensor infos only -- no tensor data (the file ends
  right after the tensor infos), like a download that has not started.
* ``split=N``: N shards ``<stem>-0000i-of-0000N.gguf``; the first carries all metadata plus
  ``split.no/split.count/split.tensors.count``, the others only the split keys (the layout of
  llama.cpp's ``gguf-split`` and gguf-py). Returns the first shard's path.

The vocabulary is a SentencePiece-style ``"llama"`` tokenizer (``<unk>``, ``<s>``, ``</s>``, 256
byte tokens ``<0x00>``..``<0xFF>``, filler pieces), accepted by the loader for every arch here;
``tokenizer="gpt2"`` writes a byte-level BPE vocabulary instead (what qwen*/gpt-oss/glm use).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT, Keys

from omni_place.ggml_types import ggml_type_named
from omni_place.gguf_write import GGUFTensor, shard_paths, spm_vocab, tensor_nbytes, write_gguf
from omni_place.reference_models import ModelSpec, fit_quant_type

__all__ = [
    "ARCHS",
    "EngineResult",
    "engine_available",
    "engine_load",
    "MOE_ARCHS",
    "SWA_ARCHS",
    "NEXTN_ARCHS",
    "DSA_ARCHS",
    "MLA_ARCHS",
    "TensorInfo",
    "TensorSpec",
    "TinyModel",
    "model_tensors",
    "shard_paths",
    "tiny_llama_spec",
    "write_llama",
    "write_model",
]

ARCHS: tuple[str, ...] = ("llama", "qwen2", "qwen3", "qwen3moe", "deepseek2", "gpt-oss", "gemma3", "glm4moe",
                          "deepseek32", "glm-dsa", "qwen35", "qwen35moe", "qwen3next", "granitehybrid",
                          "nemotron_h", "nemotron_h_moe", "mamba2", "gemma4", "lfm2", "lfm2moe", "kimi-linear",
                          "minimax-m3", "llama4", "olmo2", "deci", "falcon-h1", "gemma3n", "rwkv7")
MOE_ARCHS: frozenset[str] = frozenset({"qwen3moe", "deepseek2", "gpt-oss", "glm4moe", "deepseek32", "glm-dsa",
                                       "kimi-linear", "minimax-m3", "qwen35moe", "llama4",
                                       "qwen3next", "nemotron_h_moe", "lfm2moe"})
# LFM2 (src/models/lfm2.cpp, lfm2moe.cpp): every ``gdn["interval"]``-th layer attention, the others a
# gated short convolution of ``gdn["d_conv"]`` taps whose state is its last taps (head_count_kv 0)
LFM2_ARCHS: frozenset[str] = frozenset({"lfm2", "lfm2moe"})
# Gated DeltaNet hybrids (src/models/qwen3next.cpp, qwen35.cpp, qwen35moe.cpp): every
# full_attention_interval-th layer is gated full attention, the others linear attention with a
# recurrent state; MoE ones have a gated shared expert
HYBRID_ARCHS: frozenset[str] = frozenset({"qwen35", "qwen35moe", "qwen3next"})
# Mamba-2 hybrids (src/models/granite-hybrid.cpp): a layer is an SSM where head_count_kv is 0 (here
# all but every ``gdn["interval"]``-th), its inner width 2 x n_embd
MAMBA_HYBRIDS: frozenset[str] = frozenset({"granitehybrid", "nemotron_h", "nemotron_h_moe", "mamba2"})
NEMOTRON_ARCHS: frozenset[str] = frozenset({"nemotron_h", "nemotron_h_moe"})
# Nemotron-H's layers, one kind each (src/models/nemotron-h.cpp): Mamba-2 (M), attention (A) or an
# MLP (F: up and down, a squared ReLU; nemotron_h_moe: routed experts of the same two beside a shared
# one, src/models/nemotron-h.cpp load_arch_tensors), the pattern repeating
NEMOTRON_PATTERN = "MAFM"


def layer_kind(arch: str, il: int, interval: int = 4) -> str:
    """A Mamba-2 hybrid's layer ``il``: "M" (Mamba-2), "A" (attention, every ``interval``-th in
    granitehybrid) or "F" (FFN only)."""
    if arch in NEMOTRON_ARCHS:
        return NEMOTRON_PATTERN[il % len(NEMOTRON_PATTERN)]
    return "A" if arch != "mamba2" and (il + 1) % interval == 0 else "M"
SWA_ARCHS: frozenset[str] = frozenset({"gpt-oss", "gemma3", "gemma4", "olmo2", "gemma3n"})
# Gemma 3n (src/models/gemma3n.cpp): four AltUp streams, LAuReL and per-layer embeddings at widths the
# engine fixes (src/llama-hparams.h n_altup, laurel_rank, n_embd_altup); only the first
# GEMMA3N_KV_LAYERS layers hold a cache, the rest attend to the last of their kind before them
GEMMA3N_ALTUP, GEMMA3N_LAUREL, GEMMA3N_PLE, GEMMA3N_KV_LAYERS = 4, 64, 256, 20
# Llama 4 (src/models/llama4.cpp): chunked attention on three layers of four at the engine's own
# window (LLAMA4_WINDOW, the header's ignored unless 0); every LLAMA4_MOE_STEP-th layer routed experts
# beside a shared one of their width, the others a dense FFN
LLAMA4_WINDOW, LLAMA4_MOE_STEP = 8192, 2
# DeciLM / Nemotron-NAS (src/models/deci.cpp): a layer's attention full (A), linear (L: an output
# projection alone, no KV heads) or none (N), per DECI_PATTERN; its FFN absent where DECI_FFN is 0
# (not the last layer's: this engine build then aborts in its first decode, ggml-backend.cpp:205)
DECI_PATTERN, DECI_FFN = "ALNA", (1, 0, 1, 1)
# OLMo 2 / 3 (src/models/olmo2.cpp): no pre-norms; full-width Q and K norms, norms after attention and
# FFN; with a window in the header, three SWA layers of four
# Gemma 4 (src/models/gemma4.cpp): every ``interval``-th layer full attention (its head ``head_dim``
# wide), the others sliding-window with ``head_dim_swa``-wide heads; the last ``shared`` layers
# attend to an earlier layer's cache and carry no K projection of their own; ``ple``: the per-layer
# embeddings' width (E2B / E4B: 256), 0 for none
_GEMMA4_DEFAULTS: dict[str, int] = {"interval": 3, "head_dim_swa": 8, "shared": 3, "moe": 0, "ple": 0}


def gemma4_is_swa(il: int, interval: int) -> bool:
    """Whether layer ``il`` of a ``write_model`` gemma4 is sliding-window."""
    return (il + 1) % interval != 0
NEXTN_ARCHS: frozenset[str] = frozenset({"deepseek2", "glm4moe", "deepseek32", "glm-dsa", "qwen35", "qwen35moe",
                                         "qwen3next"})
# DSA archs: deepseek2's MLA + the lightning indexer (src/models/deepseek32.cpp, glm-dsa.cpp)
DSA_ARCHS: frozenset[str] = frozenset({"deepseek32", "glm-dsa"})
MLA_ARCHS: frozenset[str] = frozenset({"deepseek2"}) | DSA_ARCHS
# DeepSeek-style MoE: leading dense layers, shared experts, exp_probs_b, NextN
_DS_MOE: frozenset[str] = frozenset({"deepseek2", "glm4moe"}) | DSA_ARCHS
# archs whose attention is MLA. Kimi-Linear (src/models/kimi-linear.cpp): every ``gdn["interval"]``-th
# layer MLA attention (its Q uncompressed), the others Kimi Delta Attention: Q, K and V each through a
# short convolution, a ``gdn["head_dim"]``-square state per head; DeepSeek-style MoE
_MLA_ATTENTION: frozenset[str] = MLA_ARCHS | {"kimi-linear"}
# archs with leading dense FFN layers before their MoE ones
_DENSE_LEAD: frozenset[str] = _DS_MOE | {"lfm2moe", "kimi-linear", "minimax-m3"}
# MiniMax-M3 (src/models/minimax-m3.cpp): GQA attention with per-head Q/K norms; its MoE layers
# (after the leading dense ones) carry the MSA indexer's projections and a key cache of its own
# archs whose loader requires a separate output.weight (no tied embeddings)
_UNTIED_ONLY: frozenset[str] = frozenset({"gpt-oss", "rwkv7"})
# RWKV-7 (src/models/rwkv7.cpp): every layer a time mix of wkv heads RWKV7_HEAD wide (its state a
# head-square matrix per head and two token shifts) and a channel mix; its LoRA ranks
RWKV7_HEAD, RWKV7_LORA = 16, 8

_TYPE_NAMES: dict[str, QT] = {
    "f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16,
    "q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1, "q5_0": QT.Q5_0, "q5_1": QT.Q5_1,
    "q2_k": QT.Q2_K, "q3_k": QT.Q3_K, "q4_k": QT.Q4_K, "q5_k": QT.Q5_K, "q6_k": QT.Q6_K,
    "mxfp4": QT.MXFP4,
    # i-quants: headers and hole-filled speed models only (``_tensor_data`` has no generator), as
    # ik_llama.cpp's own types (any name in omni_place/data/ik_types.toml, through ``_qtype``)
    "iq4_xs": QT.IQ4_XS, "iq4_nl": QT.IQ4_NL, "iq3_s": QT.IQ3_S, "iq3_xxs": QT.IQ3_XXS,
    "iq2_s": QT.IQ2_S, "iq2_xs": QT.IQ2_XS, "iq2_xxs": QT.IQ2_XXS, "iq1_m": QT.IQ1_M, "iq1_s": QT.IQ1_S,
}
_FILE_TYPES: dict[QT, int] = {
    QT.F32: gguf.LlamaFileType.ALL_F32, QT.F16: gguf.LlamaFileType.MOSTLY_F16,
    QT.BF16: gguf.LlamaFileType.MOSTLY_BF16, QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
    QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, QT.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
    QT.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0, QT.Q5_1: gguf.LlamaFileType.MOSTLY_Q5_1,
    QT.Q2_K: gguf.LlamaFileType.MOSTLY_Q2_K, QT.Q3_K: gguf.LlamaFileType.MOSTLY_Q3_K_M,
    QT.Q4_K: gguf.LlamaFileType.MOSTLY_Q4_K_M, QT.Q5_K: gguf.LlamaFileType.MOSTLY_Q5_K_M,
    QT.Q6_K: gguf.LlamaFileType.MOSTLY_Q6_K, QT.MXFP4: gguf.LlamaFileType.MOSTLY_MXFP4_MOE,
    QT.IQ4_XS: gguf.LlamaFileType.MOSTLY_IQ4_XS, QT.IQ4_NL: gguf.LlamaFileType.MOSTLY_IQ4_NL,
    QT.IQ3_S: gguf.LlamaFileType.MOSTLY_IQ3_S, QT.IQ3_XXS: gguf.LlamaFileType.MOSTLY_IQ3_XXS,
    QT.IQ2_S: gguf.LlamaFileType.MOSTLY_IQ2_S, QT.IQ2_XS: gguf.LlamaFileType.MOSTLY_IQ2_XS,
    QT.IQ2_XXS: gguf.LlamaFileType.MOSTLY_IQ2_XXS, QT.IQ1_M: gguf.LlamaFileType.MOSTLY_IQ1_M,
    QT.IQ1_S: gguf.LlamaFileType.MOSTLY_IQ1_S,
}
# byte offsets of the fp16 scale fields inside one K-quant super-block (ggml-common.h)
_KQUANT_FP16_FIELDS: dict[QT, tuple[int, ...]] = {
    QT.Q2_K: (80, 82),   # scales[16], qs[64], d, dmin
    QT.Q3_K: (108,),     # hmask[32], qs[64], scales[12], d
    QT.Q4_K: (0, 2),     # d, dmin, scales[12], qs[128]
    QT.Q5_K: (0, 2),     # d, dmin, scales[12], qh[32], qs[128]
    QT.Q6_K: (208,),     # ql[128], qh[64], scales[16] (int8), d
}
_PYTHON_QUANTIZE = frozenset({QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.MXFP4})

# deepseek2 MLA dims used unless overridden (real V3: 512 / 1536 / 64)
_MLA_DEFAULTS = {"kv_lora_rank": 64, "q_lora_rank": 64, "rope_dim": 16}
# deepseek32 lightning-indexer dims (real V3.2: 64 heads of 128, top-k 2048)
_INDEXER_DEFAULTS = {"head_count": 4, "key_length": 64, "top_k": 16}  # key_length >= 64: Hadamard sizes
# Gated DeltaNet dims (real Qwen3.5-35B-A3B: conv 4, heads of 128, 16 key heads, 32 value heads)
_GDN_DEFAULTS = {"d_conv": 4, "head_dim": 16, "k_heads": 2, "v_heads": 4, "interval": 4}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: ``shape`` in ggml order (ne0 first), ``kind`` selects type and data."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "w" (matrix: weight_type), "norm" (F32 ones), "f32" (F32 small random)


def _qtype(t: str | QT) -> int:
    """A type name's ggml id: mainline's (``_TYPE_NAMES``) or ik_llama.cpp's (header-only files)."""
    if isinstance(t, QT):
        return t
    try:
        return _TYPE_NAMES.get(t.lower()) or ggml_type_named(t).id
    except KeyError:
        raise ValueError(f"unsupported tensor type {t!r}; use one of {sorted(_TYPE_NAMES)} or an "
                         "ik_llama.cpp type (omni_place/data/ik_types.toml)") from None


# --------------------------------------------------------------------------------------------
# per-architecture tensor lists
# --------------------------------------------------------------------------------------------

def model_tensors(arch: str, *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int, n_ff: int,
                  n_vocab: int, n_expert: int, n_ff_exp: int, head_dim: int, n_rot: int,
                  tied_output: bool, n_nextn: int = 0, n_dense_lead: int = 1, n_expert_shared: int = 1,
                  kv_lora_rank: int = 64, q_lora_rank: int = 64,
                  gdn: Mapping[str, int] = _GDN_DEFAULTS,
                  gemma4: Mapping[str, int] = _GEMMA4_DEFAULTS) -> list[TensorSpec]:
    """Tensor names and ggml shapes ``write_model`` writes for ``arch`` (in file order)."""
    T: list[TensorSpec] = []

    def add(name: str, shape: tuple[int, ...], kind: str = "w") -> None:
        T.append(TensorSpec(name, tuple(int(s) for s in shape), kind))

    E, V = n_embd, n_vocab
    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim

    add("token_embd.weight", (E, V))
    add("token_embd_norm.weight" if arch in LFM2_ARCHS else "output_norm.weight", (E,), "norm")  # LFM2's final norm
    if arch == "rwkv7":  # the block-0 layer norm of the embeddings, and the final norm's bias
        add("token_embd_norm.weight", (E,), "norm")
        add("token_embd_norm.bias", (E,), "f32")
        add("output_norm.bias", (E,), "f32")
    if not tied_output:
        add("output.weight", (E, V))
    if arch == "gemma4":  # the full layers' proportional rope (src/models/gemma4.cpp load_arch_tensors)
        add("rope_freqs.weight", (head_dim // 2,), "f32")
    ple = gemma4["ple"] if arch == "gemma4" else GEMMA3N_PLE if arch == "gemma3n" else 0
    if ple:  # per-layer embeddings, their projection and its norm
        add("per_layer_token_embd.weight", (ple * n_layer, V))
        add("per_layer_model_proj.weight", (E, ple * n_layer))
        add("per_layer_proj_norm.weight", (ple,), "norm")
    if arch == "gemma3n":  # AltUp's projections into and out of its extra streams
        add("altup_proj.weight", (E, E, GEMMA3N_ALTUP - 1))
        add("altup_unembd_proj.weight", (E, E, GEMMA3N_ALTUP - 1))

    for i in range(n_layer + n_nextn):
        b = f"blk.{i}."
        if arch == "rwkv7":
            _rwkv7_layer(add, b, E, n_ff)
            continue
        if arch == "deci":
            kind = DECI_PATTERN[i % len(DECI_PATTERN)]
            if kind != "N":
                add(b + "attn_norm.weight", (E,), "norm")
            if kind == "A":
                _gqa_attention(add, b, E, q_dim, kv_dim)
            elif kind == "L":
                add(b + "attn_output.weight", (E, E))
            if DECI_FFN[i % len(DECI_FFN)]:
                add(b + "ffn_norm.weight", (E,), "norm")
                add(b + "ffn_gate.weight", (E, n_ff))
                add(b + "ffn_up.weight", (E, n_ff))
                add(b + "ffn_down.weight", (n_ff, E))
            continue
        if arch != "olmo2":
            add(b + "attn_norm.weight", (E,), "norm")

        # ---- attention
        kind = layer_kind(arch, i, gdn["interval"]) if arch in MAMBA_HYBRIDS else "A"
        if arch in NEMOTRON_ARCHS | {"mamba2"}:  # one kind a layer, the attention norm its only norm
            if kind == "M":
                _mamba2_mixer(add, b, E, gdn)
            elif kind == "A":
                _gqa_attention(add, b, E, q_dim, kv_dim)
            elif arch == "nemotron_h":
                add(b + "ffn_up.weight", (E, n_ff))
                add(b + "ffn_down.weight", (n_ff, E))
            else:
                add(b + "ffn_gate_inp.weight", (E, n_expert), "f32")
                add(b + "exp_probs_b.bias", (n_expert,), "f32")
                add(b + "ffn_down_exps.weight", (n_ff_exp, E, n_expert))
                add(b + "ffn_up_exps.weight", (E, n_ff_exp, n_expert))
                add(b + "ffn_down_shexp.weight", (n_ff_exp * n_expert_shared, E))
                add(b + "ffn_up_shexp.weight", (E, n_ff_exp * n_expert_shared))
            continue
        if arch in LFM2_ARCHS:
            if (i + 1) % gdn["interval"]:
                add(b + "shortconv.conv.weight", (gdn["d_conv"], E), "f32")
                add(b + "shortconv.in_proj.weight", (E, 3 * E))
                add(b + "shortconv.out_proj.weight", (E, E))
            else:
                add(b + "attn_q_norm.weight", (head_dim,), "norm")
                add(b + "attn_k_norm.weight", (head_dim,), "norm")
                add(b + "attn_q.weight", (E, q_dim))
                add(b + "attn_k.weight", (E, kv_dim))
                add(b + "attn_v.weight", (E, kv_dim))
                add(b + "attn_output.weight", (q_dim, E))
        elif arch == "gemma4":
            swa = gemma4_is_swa(i, gemma4["interval"])
            dk = gemma4["head_dim_swa"] if swa else head_dim
            owns = i < n_layer - gemma4["shared"]
            add(b + "attn_q.weight", (E, n_head * dk))
            if owns:
                add(b + "attn_k.weight", (E, n_head_kv * dk))
                add(b + "attn_v.weight", (E, n_head_kv * dk))
            add(b + "attn_output.weight", (n_head * dk, E))
            add(b + "attn_q_norm.weight", (dk,), "norm")
            if owns:
                add(b + "attn_k_norm.weight", (dk,), "norm")
        elif kind == "M":
            _mamba2_mixer(add, b, E, gdn)
        elif arch == "falcon-h1":  # attention and a Mamba-2 mixer side by side (src/models/falcon-h1.cpp)
            _gqa_attention(add, b, E, q_dim, kv_dim)
            _mamba2_mixer(add, b, E, gdn)
        elif arch in HYBRID_ARCHS:
            _hybrid_mixer(add, b, arch, E, n_head * head_dim, kv_dim, head_dim, gdn,
                          recurrent=i < n_layer and (i + 1) % gdn["interval"] != 0)
        elif arch == "kimi-linear":
            _kimi_mixer(add, b, E, n_head, head_dim, n_rot, kv_lora_rank, gdn,
                        recurrent=(i + 1) % gdn["interval"] != 0)
        elif arch in MLA_ARCHS:
            rope = n_rot
            k_mla = head_dim + rope  # qk_nope + qk_rope
            add(b + "attn_q_a_norm.weight", (q_lora_rank,), "norm")
            add(b + "attn_kv_a_norm.weight", (kv_lora_rank,), "norm")
            add(b + "attn_q_a.weight", (E, q_lora_rank))
            add(b + "attn_q_b.weight", (q_lora_rank, n_head * k_mla))
            add(b + "attn_kv_a_mqa.weight", (E, kv_lora_rank + rope))
            add(b + "attn_k_b.weight", (head_dim, kv_lora_rank, n_head))
            add(b + "attn_v_b.weight", (kv_lora_rank, head_dim, n_head))
            add(b + "attn_output.weight", (n_head * head_dim, E))
            if arch in DSA_ARCHS:
                ih, ik = _INDEXER_DEFAULTS["head_count"], _INDEXER_DEFAULTS["key_length"]
                add(b + "indexer.k_norm.weight", (ik,), "norm")
                add(b + "indexer.k_norm.bias", (ik,), "f32")
                add(b + "indexer.proj.weight", (E, ih))
                add(b + "indexer.attn_k.weight", (E, ik))
                add(b + "indexer.attn_q_b.weight", (q_lora_rank, ih * ik))
        else:
            add(b + "attn_q.weight", (E, q_dim))
            add(b + "attn_k.weight", (E, kv_dim))
            add(b + "attn_v.weight", (E, kv_dim))
            if arch in ("qwen2", "glm4moe", "gpt-oss"):
                add(b + "attn_q.bias", (q_dim,), "f32")
                add(b + "attn_k.bias", (kv_dim,), "f32")
                add(b + "attn_v.bias", (kv_dim,), "f32")
            add(b + "attn_output.weight", (q_dim, E))
            if arch == "gpt-oss":
                add(b + "attn_output.bias", (E,), "f32")
                add(b + "attn_sinks.weight", (n_head,), "f32")
            if arch in ("qwen3", "qwen3moe", "gemma3", "glm4moe", "minimax-m3", "gemma3n"):
                add(b + "attn_q_norm.weight", (head_dim,), "norm")
                add(b + "attn_k_norm.weight", (head_dim,), "norm")
            elif arch == "olmo2":
                add(b + "attn_q_norm.weight", (q_dim,), "norm")
                add(b + "attn_k_norm.weight", (kv_dim,), "norm")

        # ---- norms between attention and FFN
        if arch in HYBRID_ARCHS:
            add(b + "post_attention_norm.weight", (E,), "norm")
        elif arch in ("gemma3", "gemma4", "gemma3n"):
            add(b + "post_attention_norm.weight", (E,), "norm")
            add(b + "ffn_norm.weight", (E,), "norm")
            add(b + "post_ffw_norm.weight", (E,), "norm")
        elif arch in ("gpt-oss", "glm4moe", "olmo2"):
            add(b + "post_attention_norm.weight", (E,), "norm")
        elif arch == "falcon-h1":  # its loader asks for the FFN norm without a suffix (src/models/falcon-h1.cpp)
            add(b + "ffn_norm", (E,), "norm")
        else:
            add(b + "ffn_norm.weight", (E,), "norm")

        # ---- FFN
        moe = arch in MOE_ARCHS and not (arch in _DENSE_LEAD and i < n_dense_lead) and not (
            arch == "llama4" and (i + 1) % LLAMA4_MOE_STEP)
        if arch == "gemma4" and gemma4["moe"]:  # routed experts beside the dense FFN, each normed
            add(b + "ffn_gate.weight", (E, n_ff))
            add(b + "ffn_up.weight", (E, n_ff))
            add(b + "ffn_down.weight", (n_ff, E))
            add(b + "ffn_gate_inp.weight", (E, n_expert), "f32")
            add(b + "ffn_gate_inp.scale", (E,), "norm")
            add(b + "pre_ffw_norm_2.weight", (E,), "norm")
            add(b + "post_ffw_norm_1.weight", (E,), "norm")
            add(b + "post_ffw_norm_2.weight", (E,), "norm")
            add(b + "ffn_gate_up_exps.weight", (E, 2 * n_ff_exp, n_expert))
            add(b + "ffn_down_exps.weight", (n_ff_exp, E, n_expert))
            add(b + "ffn_down_exps.scale", (n_expert,), "norm")
        elif not moe:
            add(b + "ffn_gate.weight", (E, n_ff))
            add(b + "ffn_up.weight", (E, n_ff))
            add(b + "ffn_down.weight", (n_ff, E))
            if arch == "olmo2":
                add(b + "post_ffw_norm.weight", (E,), "norm")
        else:
            add(b + "ffn_gate_inp.weight", (E, n_expert), "f32")
            if arch == "gpt-oss":
                add(b + "ffn_gate_inp.bias", (n_expert,), "f32")
            if arch in _DS_MOE or arch in ("lfm2moe", "kimi-linear", "minimax-m3"):
                add(b + "exp_probs_b.bias", (n_expert,), "f32")
            add(b + "ffn_gate_exps.weight", (E, n_ff_exp, n_expert))
            add(b + "ffn_up_exps.weight", (E, n_ff_exp, n_expert))
            add(b + "ffn_down_exps.weight", (n_ff_exp, E, n_expert))
            if arch == "gpt-oss":
                add(b + "ffn_gate_exps.bias", (n_ff_exp, n_expert), "f32")
                add(b + "ffn_up_exps.bias", (n_ff_exp, n_expert), "f32")
                add(b + "ffn_down_exps.bias", (E, n_expert), "f32")
            if arch in HYBRID_ARCHS:
                add(b + "ffn_gate_inp_shexp.weight", (E,), "f32")
            if (arch in _DS_MOE | HYBRID_ARCHS | {"kimi-linear", "minimax-m3", "llama4"}) and n_expert_shared > 0:
                n_sh = n_ff_exp * (1 if arch == "llama4" else n_expert_shared)
                add(b + "ffn_gate_shexp.weight", (E, n_sh))
                add(b + "ffn_up_shexp.weight", (E, n_sh))
                add(b + "ffn_down_shexp.weight", (n_sh, E))
            if arch == "minimax-m3":  # the MSA indexer: a head per KV head (its graph asserts it)
                ik = _INDEXER_DEFAULTS["key_length"]
                add(b + "indexer.q_proj.weight", (E, n_head_kv * ik))
                add(b + "indexer.k_proj.weight", (E, ik))
                add(b + "indexer.q_norm.weight", (ik,), "norm")
                add(b + "indexer.k_norm.weight", (ik,), "norm")

        if ple:
            add(b + "inp_gate.weight", (E, ple))
            add(b + "proj.weight", (ple, E))
            add(b + "post_norm.weight", (E,), "norm")
        if arch == "gemma3n":
            n = GEMMA3N_ALTUP
            add(b + "altup_correct_coef.weight", (n, n), "f32")
            add(b + "altup_correct_scale.weight", (E,), "norm")
            add(b + "altup_predict_coef.weight", (n, n * n), "f32")
            add(b + "altup_router.weight", (E, n))
            add(b + "altup_router_norm.weight", (E,), "norm")
            add(b + "laurel_l.weight", (E, GEMMA3N_LAUREL))
            add(b + "laurel_r.weight", (GEMMA3N_LAUREL, E))
            add(b + "laurel_post_norm.weight", (E,), "norm")

        # ---- NextN / MTP block extras
        if i >= n_layer:
            add(b + "nextn.eh_proj.weight", (2 * E, E))
            add(b + "nextn.enorm.weight", (E,), "norm")
            add(b + "nextn.hnorm.weight", (E,), "norm")
            add(b + "nextn.shared_head_norm.weight", (E,), "norm")
    return T


def _gqa_attention(add: Any, b: str, E: int, q_dim: int, kv_dim: int) -> None:
    """A plain GQA attention's projections (no biases, no norms)."""
    add(b + "attn_q.weight", (E, q_dim))
    add(b + "attn_k.weight", (E, kv_dim))
    add(b + "attn_v.weight", (E, kv_dim))
    add(b + "attn_output.weight", (q_dim, E))


def _rwkv7_layer(add: Any, b: str, E: int, n_ff: int) -> None:
    """An RWKV-7 layer's tensors (src/models/rwkv7.cpp load_arch_tensors): layer norms with biases,
    the time mix's LoRAs, lerps and projections, the channel mix."""
    r = RWKV7_LORA
    for norm in ("attn_norm", "attn_norm_2", "time_mix_ln"):
        add(b + f"{norm}.weight", (E,), "norm")
        add(b + f"{norm}.bias", (E,), "f32")
    for x in ("w", "a", "v", "g"):
        if x != "g":
            add(b + f"time_mix_{x}0.weight", (E,), "f32")
        add(b + f"time_mix_{x}1.weight", (E, r))
        add(b + f"time_mix_{x}2.weight", (r, E))
    add(b + "time_mix_lerp_fused.weight", (E, 1, 1, 6), "f32")
    for x in ("k_k", "k_a", "r_k"):
        add(b + f"time_mix_{x}.weight", (E,), "f32")
    for x in ("key", "value", "receptance", "output"):
        add(b + f"time_mix_{x}.weight", (E, E))
    add(b + "channel_mix_lerp_k.weight", (E, 1, 1), "f32")
    add(b + "channel_mix_key.weight", (E, n_ff))
    add(b + "channel_mix_value.weight", (n_ff, E))


def _mamba2_inner(n_embd: int, g: Mapping[str, int]) -> int:
    """A Mamba-2 mixer's inner width: ``g["inner"]`` where given (Falcon-H1's heads x head width),
    else 2 x n_embd (Mamba-2's expand)."""
    return g.get("inner") or 2 * n_embd


def _mamba2_mixer(add: Any, b: str, E: int, g: Mapping[str, int]) -> None:
    """A Mamba-2 layer (granite-hybrid.cpp load_arch_tensors): inner width ``inner`` (default
    2 x n_embd) in ``v_heads`` heads, ``k_heads`` groups of a ``head_dim``-wide state."""
    d_inner, d_state, n_group, n_head = _mamba2_inner(E, g), g["head_dim"], g["k_heads"], g["v_heads"]
    conv = d_inner + 2 * n_group * d_state
    add(b + "ssm_in.weight", (E, 2 * d_inner + 2 * n_group * d_state + n_head))
    add(b + "ssm_conv1d.weight", (g["d_conv"], conv), "f32")
    add(b + "ssm_conv1d.bias", (conv,), "f32")
    add(b + "ssm_dt.bias", (n_head,), "f32")
    add(b + "ssm_a", (1, n_head), "f32")
    add(b + "ssm_d", (1, n_head), "f32")
    add(b + "ssm_norm.weight", (d_inner // n_group, n_group), "norm")
    add(b + "ssm_out.weight", (d_inner, E))


def _kimi_mixer(add: Any, b: str, E: int, n_head: int, head_dim: int, rope: int, kv_lora_rank: int,
                g: Mapping[str, int], *, recurrent: bool) -> None:
    """Kimi-Linear's token mixer (load_arch_tensors): MLA with an uncompressed Q, or KDA."""
    if not recurrent:
        add(b + "attn_kv_a_norm.weight", (kv_lora_rank,), "norm")
        add(b + "attn_q.weight", (E, n_head * (head_dim + rope)))
        add(b + "attn_kv_a_mqa.weight", (E, kv_lora_rank + rope))
        add(b + "attn_k_b.weight", (head_dim, kv_lora_rank, n_head))
        add(b + "attn_v_b.weight", (kv_lora_rank, head_dim, n_head))
        add(b + "attn_output.weight", (n_head * head_dim, E))
        return
    kda, inner = g["head_dim"], g["head_dim"] * n_head
    for x in "qkv":
        add(b + f"ssm_conv1d_{x}.weight", (g["d_conv"], 1, inner), "f32")
        add(b + f"attn_{x}.weight", (E, inner))
    add(b + "ssm_f_a.weight", (E, kda))
    add(b + "ssm_f_b.weight", (kda, inner))
    add(b + "ssm_beta.weight", (E, n_head))
    add(b + "ssm_a", (1, n_head), "f32")
    add(b + "ssm_dt.bias", (inner,), "f32")
    add(b + "ssm_g_a.weight", (E, kda))
    add(b + "ssm_g_b.weight", (kda, inner))
    add(b + "ssm_norm.weight", (kda,), "norm")
    add(b + "attn_output.weight", (inner, E))


def _hybrid_mixer(add: Any, b: str, arch: str, E: int, q_dim: int, kv_dim: int, head_dim: int,
                  g: Mapping[str, int], *, recurrent: bool) -> None:
    """A Gated DeltaNet hybrid's token mixer: gated full attention (Q twice as wide: query and
    gate) or linear attention (the loaders' load_block_trunk)."""
    if not recurrent:
        add(b + "attn_q.weight", (E, 2 * q_dim))
        add(b + "attn_k.weight", (E, kv_dim))
        add(b + "attn_v.weight", (E, kv_dim))
        add(b + "attn_output.weight", (q_dim, E))
        add(b + "attn_q_norm.weight", (head_dim,), "norm")
        add(b + "attn_k_norm.weight", (head_dim,), "norm")
        return
    key_dim, value_dim = g["head_dim"] * g["k_heads"], g["head_dim"] * g["v_heads"]
    add(b + "attn_qkv.weight", (E, 2 * key_dim + value_dim))
    add(b + "attn_gate.weight", (E, value_dim))
    add(b + "ssm_conv1d.weight", (g["d_conv"], 2 * key_dim + value_dim), "f32")
    add(b + "ssm_dt.bias", (g["v_heads"],), "f32")
    add(b + "ssm_a", (g["v_heads"],), "f32")
    if arch == "qwen3next":
        add(b + "ssm_ba.weight", (E, 2 * g["v_heads"]))
    else:
        add(b + "ssm_beta.weight", (E, g["v_heads"]))
        add(b + "ssm_alpha.weight", (E, g["v_heads"]))
    add(b + "ssm_norm.weight", (g["head_dim"],), "norm")
    add(b + "ssm_out.weight", (value_dim, E))


# --------------------------------------------------------------------------------------------
# tensor data
# --------------------------------------------------------------------------------------------

def _random_kquant(rng: np.random.Generator, qt: QT, shape: tuple[int, ...]) -> np.ndarray:
    blck, tsize = GGML_QUANT_SIZES[qt]
    n_blocks = math.prod(shape) // blck
    blocks = rng.integers(0, 256, size=(n_blocks, tsize), dtype=np.uint8)
    for off in _KQUANT_FP16_FIELDS[qt]:
        scale = rng.uniform(2e-4, 1e-3, size=n_blocks).astype(np.float16)
        blocks[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    np_shape = tuple(reversed(shape))
    return blocks.reshape(*np_shape[:-1], shape[0] // blck * tsize)


def _tensor_data(rng: np.random.Generator, spec: TensorSpec, qt: QT) -> np.ndarray:
    np_shape = tuple(reversed(spec.shape))
    if spec.kind == "norm":
        return np.ones(np_shape, dtype=np.float32)
    if spec.kind == "f32":
        return (rng.standard_normal(np_shape, dtype=np.float32) * 0.1).astype(np.float32)
    if qt in _KQUANT_FP16_FIELDS:
        return _random_kquant(rng, qt, spec.shape)
    w = rng.standard_normal(np_shape, dtype=np.float32) * 0.05
    if qt == QT.F32:
        return w
    if qt == QT.F16:
        return w.astype(np.float16)
    if qt in _PYTHON_QUANTIZE:
        return gguf.quants.quantize(w, qt)
    raise ValueError(f"cannot generate data for {qt.name}")


# --------------------------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _gpt2_vocab(n_vocab: int) -> dict[str, Any]:
    """Metadata of a byte-level BPE vocabulary (what qwen*/gpt-oss/glm use)."""
    if n_vocab < 260:
        raise ValueError("n_vocab must be >= 260 (256 byte tokens + merges + 2 specials)")
    byte_chars = [_bytes_to_unicode()[b] for b in range(256)]
    tokens = list(byte_chars)
    merges: list[str] = []
    seen = set(tokens)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    n_merged = n_vocab - 256 - 2
    for a in "Ġ" + letters:
        for c in letters:
            if len(merges) >= n_merged:
                break
            if a + c not in seen:
                merges.append(f"{a} {c}")
                tokens.append(a + c)
                seen.add(a + c)
    while len(tokens) < n_vocab - 2:  # tiny vocab sizes only come here if letters run out
        tokens.append(f"[PAD{len(tokens)}]")
    tokens += ["<|endoftext|>", "<|im_end|>"]
    types = [gguf.TokenType.NORMAL] * (n_vocab - 2) + [gguf.TokenType.CONTROL] * 2
    return {Keys.Tokenizer.MODEL: "gpt2", Keys.Tokenizer.PRE: "default", Keys.Tokenizer.LIST: tokens,
            Keys.Tokenizer.TOKEN_TYPE: [int(t) for t in types], Keys.Tokenizer.MERGES: merges,
            Keys.Tokenizer.BOS_ID: n_vocab - 2, Keys.Tokenizer.EOS_ID: n_vocab - 1, Keys.Tokenizer.ADD_BOS: False}


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------

def write_model(path: str | Path, arch: str, *, n_layer: int | None = None, n_embd: int = 64,
                n_head: int = 4, n_head_kv: int = 2, n_ff: int = 128, n_vocab: int = 320,
                n_expert: int = 8, n_expert_used: int = 2, n_ff_exp: int = 32,
                weight_type: str = "f16", tensor_types: Mapping[str, str] | None = None,
                tied_output: bool = False, n_nextn: int = 0, n_swa: int | None = None,
                head_dim: int | None = None, n_rot: int | None = None, n_ctx_train: int = 4096,
                n_dense_lead: int = 1, n_expert_shared: int = 1,
                kv_lora_rank: int | None = None, q_lora_rank: int | None = None,
                tokenizer: str = "spm", seed: int = 0, header_only: bool = False,
                split: int = 1, gdn: Mapping[str, int] | None = None,
                gemma4: Mapping[str, int] | None = None,
                indexer_types: Sequence[int] | int | None = None) -> Path:
    """Write a tiny random model of ``arch`` to ``path``; return the (first) file's path.

    MoE knobs (``n_expert``, ``n_expert_used``, ``n_ff_exp``, ``n_expert_shared``,
    ``n_dense_lead``) only apply to MoE archs; ``n_dense_lead``/``n_expert_shared`` to
    deepseek2/glm4moe (leading dense FFN layers, shared experts). ``n_swa`` (default 64) only
    applies to gpt-oss/gemma3/olmo2 (and llama4, below). ``n_nextn`` (NextN/MTP blocks) only to NEXTN_ARCHS.
    deepseek2: ``head_dim`` is qk_nope_head_dim = v_head_dim (default 32), ``n_rot`` is
    qk_rope_head_dim (16), plus ``kv_lora_rank`` (64) and ``q_lora_rank`` (64); the KV cache
    row is ``kv_lora_rank + n_rot`` (MLA). deepseek32: deepseek2 plus the DSA lightning indexer
    (``indexer.*`` tensors, ``_INDEXER_DEFAULTS``), whose key cache is a second KV cache; glm-dsa
    the same, its cache on the layers ``indexer_types`` flags (one value for all, or one per trunk
    layer; None: no key, the engine's default by the training context), the indexer tensors on
    every trunk layer.
    glm4moe: ``n_rot`` defaults to head_dim/2 (partial rotary, as GLM-4.5).
    qwen35 / qwen35moe / qwen3next (Gated DeltaNet hybrids): ``gdn`` overrides the linear
    attention's dims in ``_GDN_DEFAULTS`` (``d_conv``, ``head_dim``, ``k_heads``, ``v_heads``,
    ``interval``: every interval-th trunk layer is full attention); ``n_rot`` defaults to
    head_dim/4 (partial rotary); MoE ones have a shared expert of ``n_ff_exp * n_expert_shared``.
    granitehybrid / nemotron_h / nemotron_h_moe (Mamba-2 hybrids) and falcon-h1: ``gdn`` gives the
    SSM's state width (``head_dim``), groups (``k_heads``), heads (``v_heads``) and inner width
    (``inner``, default 2 x n_embd); the hybrids' layer kinds are :func:`layer_kind`'s.
    lfm2 / lfm2moe: every ``gdn["interval"]``-th layer attention, the others short convolutions of
    ``gdn["d_conv"]`` taps; lfm2moe's first ``n_dense_lead`` layers dense.
    llama4: every ``LLAMA4_MOE_STEP``-th layer routed experts beside a shared one, the others dense;
    no window key unless ``n_swa`` is given (the engine's own window then, unless 0). olmo2: a
    window of ``n_swa`` (default 64; 0: none). lfm2: no window key unless ``n_swa`` is given.
    gemma4: ``gemma4`` overrides ``_GEMMA4_DEFAULTS`` (the full-attention ``interval``, the SWA
    layers' ``head_dim_swa``, the ``shared`` last layers that reuse an earlier layer's cache,
    ``moe``: routed experts beside every layer's dense FFN, as the 26B-A4B).
    """
    gdn = {**_GDN_DEFAULTS, **(gdn or {})}
    g4 = {**_GEMMA4_DEFAULTS, **(gemma4 or {})}
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; supported: {ARCHS}")
    if n_layer is None:
        n_layer = 6 if arch in ("gemma3", "gemma4") else 5 if arch == "gemma3n" else 4
    if n_nextn and arch not in NEXTN_ARCHS:
        raise ValueError(f"{arch} has no NextN/MTP layers")
    if tied_output and arch in _UNTIED_ONLY:
        raise ValueError(f"{arch}: llama.cpp requires output.weight (no tied embeddings)")
    if n_head % n_head_kv:
        raise ValueError("n_head must be a multiple of n_head_kv")
    if split < 1:
        raise ValueError("split must be >= 1")
    is_moe = arch in MOE_ARCHS or arch == "gemma4" and bool(g4["moe"])
    if is_moe and not (0 < n_expert_used <= n_expert):
        raise ValueError("need 0 < n_expert_used <= n_expert")

    if head_dim is None:
        head_dim = 32 if arch in _MLA_ATTENTION else n_embd // n_head
    if n_rot is None:
        n_rot = (_MLA_DEFAULTS["rope_dim"] if arch in _MLA_ATTENTION else head_dim // 2 if arch == "glm4moe"
                 else head_dim // 4 if arch in HYBRID_ARCHS else head_dim)
    if arch in ("llama", "gpt-oss") and n_rot != head_dim:
        raise ValueError(f"{arch} requires n_rot == head_dim")
    kv_lora_rank = kv_lora_rank or _MLA_DEFAULTS["kv_lora_rank"]
    q_lora_rank = q_lora_rank or _MLA_DEFAULTS["q_lora_rank"]
    if arch in SWA_ARCHS and n_swa is None:
        n_swa = 64
    n_dense_lead = n_dense_lead if arch in _DENSE_LEAD else 0
    if arch in _DENSE_LEAD and not (0 <= n_dense_lead < n_layer):
        raise ValueError("need 0 <= n_dense_lead < n_layer (the NextN block must be MoE)")

    specs = model_tensors(arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                          n_ff=n_ff, n_vocab=n_vocab, n_expert=n_expert, n_ff_exp=n_ff_exp,
                          head_dim=head_dim, n_rot=n_rot, tied_output=tied_output, n_nextn=n_nextn,
                          n_dense_lead=n_dense_lead, n_expert_shared=n_expert_shared,
                          kv_lora_rank=kv_lora_rank, q_lora_rank=q_lora_rank, gdn=gdn, gemma4=g4)
    if split > len(specs):
        raise ValueError(f"split={split} > {len(specs)} tensors")

    base_type = _qtype(weight_type)
    overrides = [(re.compile(p), _qtype(t)) for p, t in (tensor_types or {}).items()]

    def type_of(spec: TensorSpec) -> int:
        if spec.kind != "w":
            return QT.F32
        for rx, t in overrides:
            if rx.search(spec.name):
                return fit_quant_type(t, spec.shape[0])
        return fit_quant_type(base_type, spec.shape[0])

    # ---- metadata
    md: dict[str, Any] = {}

    def kv(key: str, value: Any) -> None:
        md[key.format(arch=arch)] = value

    L, A, R = Keys.LLM, Keys.Attention, Keys.Rope
    kv(Keys.General.NAME, f"omni-place tiny {arch}")
    kv(Keys.General.TYPE, "model")
    kv(Keys.General.FILE_TYPE, int(_FILE_TYPES.get(base_type, gguf.LlamaFileType.MOSTLY_F16)))
    if base_type not in (QT.F32, QT.F16, QT.BF16) or any(t not in (QT.F32, QT.F16, QT.BF16) for _, t in overrides):
        kv(Keys.General.QUANTIZATION_VERSION, gguf.GGML_QUANT_VERSION)
    kv(L.CONTEXT_LENGTH, n_ctx_train)
    kv(L.EMBEDDING_LENGTH, n_embd)
    kv(L.BLOCK_COUNT, n_layer + n_nextn)
    kv(L.FEED_FORWARD_LENGTH, n_ff)
    kv(A.HEAD_COUNT, n_head)
    kv(A.HEAD_COUNT_KV, 1 if arch in MLA_ARCHS else n_head_kv)
    kv(A.LAYERNORM_RMS_EPS, 1e-6 if arch != "gpt-oss" else 1e-5)
    kv(R.FREQ_BASE, {"gemma3": 1e6, "qwen3": 1e6, "qwen3moe": 1e6, "qwen2": 1e6,
                     "gpt-oss": 150000.0}.get(arch, 10000.0))

    if arch in _MLA_ATTENTION:
        # MLA is stored as MQA with one big head (converter: conversion/deepseek.py, kimi_linear.py)
        kv(A.KEY_LENGTH, kv_lora_rank + n_rot)
        kv(A.VALUE_LENGTH, kv_lora_rank)
        kv(A.KEY_LENGTH_MLA, head_dim + n_rot)
        kv(A.VALUE_LENGTH_MLA, head_dim)
        kv(A.KV_LORA_RANK, kv_lora_rank)
        kv(R.DIMENSION_COUNT, n_rot)
        kv(L.VOCAB_SIZE, n_vocab)
    if arch in MLA_ARCHS:
        kv(A.Q_LORA_RANK, q_lora_rank)
        if arch in DSA_ARCHS:
            kv(A.Indexer.HEAD_COUNT, _INDEXER_DEFAULTS["head_count"])
            kv(A.Indexer.KEY_LENGTH, _INDEXER_DEFAULTS["key_length"])
            kv(A.Indexer.TOP_K, _INDEXER_DEFAULTS["top_k"])
        if indexer_types is not None:  # glm-dsa: which trunk layers run a full indexer
            kv("{arch}.attention.indexer.types",
               int(indexer_types) if isinstance(indexer_types, int) else [int(t) for t in indexer_types])
    elif arch not in _MLA_ATTENTION:
        if arch not in ("llama", "qwen2") or head_dim != n_embd // n_head:
            kv(A.KEY_LENGTH, head_dim)
            kv(A.VALUE_LENGTH, head_dim)
        kv(R.DIMENSION_COUNT, n_rot)

    if is_moe:
        kv(L.EXPERT_COUNT, n_expert)
        kv(L.EXPERT_USED_COUNT, n_expert_used)
        kv(L.EXPERT_FEED_FORWARD_LENGTH, n_ff_exp)
    if arch == "nemotron_h_moe":
        kv(L.EXPERT_SHARED_FEED_FORWARD_LENGTH, n_ff_exp * n_expert_shared)
        kv(L.EXPERT_WEIGHTS_NORM, True)
    if arch in _DS_MOE:
        kv(L.LEADING_DENSE_BLOCK_COUNT, n_dense_lead)
        kv(L.EXPERT_SHARED_COUNT, n_expert_shared)
        kv(L.EXPERT_WEIGHTS_SCALE, 2.5 if arch in MLA_ARCHS else 1.0)
        kv(L.EXPERT_WEIGHTS_NORM, True)
        kv(L.EXPERT_GATING_FUNC, int(gguf.ExpertGatingFuncType.SIGMOID))
        if n_nextn:
            kv(L.NEXTN_PREDICT_LAYERS, n_nextn)
    if arch in MAMBA_HYBRIDS | {"falcon-h1"}:
        kv(Keys.SSM.CONV_KERNEL, gdn["d_conv"])
        kv(Keys.SSM.STATE_SIZE, gdn["head_dim"])
        kv(Keys.SSM.GROUP_COUNT, gdn["k_heads"])
        kv(Keys.SSM.TIME_STEP_RANK, gdn["v_heads"])
        kv(Keys.SSM.INNER_SIZE, _mamba2_inner(n_embd, gdn))
    if arch == "rwkv7":
        kv(A.HEAD_COUNT, 0)
        kv(A.HEAD_COUNT_KV, 0)
        kv(A.LAYERNORM_EPS, 1e-5)
        kv(Keys.WKV.HEAD_SIZE, RWKV7_HEAD)
        kv(L.TOKEN_SHIFT_COUNT, 2)
        for rank in (A.DECAY_LORA_RANK, A.ICLR_LORA_RANK, A.VALUE_RESIDUAL_MIX_LORA_RANK, A.GATE_LORA_RANK):
            kv(rank, RWKV7_LORA)
    if arch in MAMBA_HYBRIDS:
        kinds = [layer_kind(arch, i, gdn["interval"]) for i in range(n_layer)]
        kv(A.HEAD_COUNT_KV, [n_head_kv if k == "A" else 0 for k in kinds])
        if arch == "mamba2":  # no attention at all
            kv(A.HEAD_COUNT, 0)
            kv(A.HEAD_COUNT_KV, 0)
        if arch in NEMOTRON_ARCHS:  # the engine's rule: recurrent iff no KV heads and no FFN
            kv(L.FEED_FORWARD_LENGTH, [n_ff if k == "F" else 0 for k in kinds])
            kv(A.LAYERNORM_EPS, 1e-5)
    if arch in HYBRID_ARCHS:
        g = gdn
        kv(Keys.SSM.CONV_KERNEL, g["d_conv"])
        kv(Keys.SSM.STATE_SIZE, g["head_dim"])
        kv(Keys.SSM.GROUP_COUNT, g["k_heads"])
        kv(Keys.SSM.TIME_STEP_RANK, g["v_heads"])
        kv(Keys.SSM.INNER_SIZE, g["head_dim"] * g["v_heads"])
        kv(L.FULL_ATTENTION_INTERVAL, g["interval"])
        if is_moe:
            kv(L.EXPERT_SHARED_FEED_FORWARD_LENGTH, n_ff_exp * n_expert_shared)
        if arch != "qwen3next":  # interleaved MRoPE over n_rot / 2 pairs (conversion/qwen.py)
            half = n_rot // 2
            kv(R.DIMENSION_SECTIONS, [half - 2 * (half // 3), half // 3, half // 3, 0])
        if n_nextn:
            kv(L.NEXTN_PREDICT_LAYERS, n_nextn)
    if arch == "kimi-linear":  # conversion/kimi_linear.py: one KV head on the MLA layers, none on KDA ones
        kv(A.HEAD_COUNT_KV, [0 if (i + 1) % gdn["interval"] else 1 for i in range(n_layer)])
        kv(Keys.SSM.CONV_KERNEL, gdn["d_conv"])
        kv("{arch}.kda.head_dim", gdn["head_dim"])
        kv(L.LEADING_DENSE_BLOCK_COUNT, n_dense_lead)
        kv(L.EXPERT_SHARED_COUNT, n_expert_shared)
        kv(L.EXPERT_GATING_FUNC, int(gguf.ExpertGatingFuncType.SIGMOID))
    if arch == "minimax-m3":  # its MSA indexer: heads, key width, top-k blocks of block_size cells
        kv(A.Indexer.HEAD_COUNT, n_head_kv)
        kv(A.Indexer.KEY_LENGTH, _INDEXER_DEFAULTS["key_length"])
        kv(A.Indexer.TOP_K, _INDEXER_DEFAULTS["top_k"])
        kv("{arch}.attention.indexer.block_size", 16)
        kv("{arch}.attention.indexer.local_blocks", 1)
        kv(L.LEADING_DENSE_BLOCK_COUNT, n_dense_lead)
        kv(L.EXPERT_SHARED_COUNT, n_expert_shared)
        kv(L.EXPERT_GATING_FUNC, int(gguf.ExpertGatingFuncType.SIGMOID))
    if arch in LFM2_ARCHS:
        kv("{arch}.shortconv.l_cache", gdn["d_conv"])
        kv(A.HEAD_COUNT_KV, [0 if (i + 1) % gdn["interval"] else n_head_kv for i in range(n_layer)])
        if arch == "lfm2moe":
            kv(L.LEADING_DENSE_BLOCK_COUNT, n_dense_lead)
            kv(L.EXPERT_GATING_FUNC, int(gguf.ExpertGatingFuncType.SIGMOID))
    if arch in SWA_ARCHS or arch in ("llama4", "lfm2") and n_swa is not None:  # llama4: none unless asked, as
        # conversion/llama.py writes Scout and Maverick (0 for an all-full-attention checkpoint)
        kv(A.SLIDING_WINDOW, int(n_swa))  # pattern: gpt-oss 2 (even layers SWA), gemma3 6 (5 SWA + 1 full)
    if arch == "llama4":
        kv(L.INTERLEAVE_MOE_LAYER_STEP, LLAMA4_MOE_STEP)
    if arch == "deci":  # per-layer heads and FFN widths, as conversion/deci.py writes them
        kinds = [DECI_PATTERN[i % len(DECI_PATTERN)] for i in range(n_layer)]
        kv(A.HEAD_COUNT, [0 if k == "N" else n_head for k in kinds])
        kv(A.HEAD_COUNT_KV, [n_head_kv if k == "A" else 0 for k in kinds])
        kv(L.FEED_FORWARD_LENGTH, [n_ff * DECI_FFN[i % len(DECI_FFN)] for i in range(n_layer)])
    if arch in ("gemma3", "gemma3n"):
        kv(R.FREQ_BASE_SWA, 10000.0)
    if arch == "gemma4":
        kv(R.FREQ_BASE_SWA, 10000.0)
        kv(A.SLIDING_WINDOW_PATTERN, [gemma4_is_swa(i, g4["interval"]) for i in range(n_layer)])
        kv(A.SHARED_KV_LAYERS, g4["shared"])
        kv(A.KEY_LENGTH_SWA, g4["head_dim_swa"])
        kv(A.VALUE_LENGTH_SWA, g4["head_dim_swa"])
        kv(Keys.Rope.DIMENSION_COUNT_SWA, g4["head_dim_swa"])
        kv(L.EMBD_LENGTH_PER_LAYER_INP, g4["ple"])

    if tokenizer == "spm":
        md.update(spm_vocab(n_vocab))
    elif tokenizer == "gpt2":
        md.update(_gpt2_vocab(n_vocab))
    else:
        raise ValueError("tokenizer must be 'spm' or 'gpt2'")

    # ---- tensors (data drawn in file order)
    kinds = {spec.name: spec for spec in specs}
    tensors = [GGUFTensor(spec.name, spec.shape, type_of(spec)) for spec in specs]
    rng = np.random.default_rng(seed)

    def data(t: GGUFTensor) -> np.ndarray:
        return _tensor_data(rng, kinds[t.name], t.qtype)

    return write_gguf(path, arch, md, tensors, data=None if header_only else data, split=split)[0]


# --------------------------------------------------------------------------------------------
# a llama listed layer by layer, described tensor by tensor
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: str
    shape: tuple[int, ...]
    """numpy shape (ggml ``ne`` reversed)."""
    nbytes: int


@dataclass
class TinyModel:
    """What :func:`write_llama` put into the file."""

    path: Path
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    n_expert: int = 0
    n_expert_used: int = 0
    tied_output: bool = False
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def layer_bytes(self, il: int) -> int:
        """Bytes of every ``blk.<il>.*`` tensor."""
        prefix = f"blk.{il}."
        return sum(t.nbytes for n, t in self.tensors.items() if n.startswith(prefix))

    def bytes_matching(self, pattern: str) -> int:
        """Bytes of the tensors whose name matches ``pattern`` (regex_search, like -ot)."""
        rx = re.compile(pattern)
        return sum(t.nbytes for n, t in self.tensors.items() if rx.search(n))

    @property
    def output_bytes(self) -> int:
        """The output slot's own tensors (output_norm, and output.weight unless tied)."""
        return sum(t.nbytes for n, t in self.tensors.items() if n.startswith("output"))

    def kv_bytes_per_layer(self, n_ctx: int, type_bytes: int = 2) -> int:
        """K + V cache bytes of one layer for ``n_ctx`` cells (f16 by default; n_ctx padded to 256)."""
        cells = -(-n_ctx // 256) * 256
        return 2 * self.n_head_kv * self.head_dim * type_bytes * cells


def write_llama(
    path: str | Path,
    *,
    n_layer: int = 6,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_vocab: int = 300,
    n_ctx_train: int = 2048,
    n_expert: int = 0,
    n_expert_used: int = 0,
    tied_output: bool = False,
    seed: int = 0,
) -> TinyModel:
    """A llama-architecture model (Mixtral-style MoE when ``n_expert`` > 0).

    Matrices are F16 (routers F32) and norms F32 ones, written in the order token_embd, blk.0 ..
    blk.N-1, output_norm, output (so the CPU-mapped range of the first layers is contiguous).
    """
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    if n_expert and not 0 < n_expert_used <= n_expert:
        raise ValueError(f"n_expert_used must be in 1..n_expert ({n_expert}), got {n_expert_used}")
    head_dim = n_embd // n_head
    tensors: list[GGUFTensor] = []
    norms: set[str] = set()

    def matrix(name: str, np_shape: tuple[int, ...], f16: bool = True) -> None:
        tensors.append(GGUFTensor(name, tuple(reversed(np_shape)), QT.F16 if f16 else QT.F32))

    def norm(name: str, n: int) -> None:
        tensors.append(GGUFTensor(name, (n,), QT.F32))
        norms.add(name)

    matrix("token_embd.weight", (n_vocab, n_embd))
    for il in range(n_layer):
        p = f"blk.{il}."
        norm(p + "attn_norm.weight", n_embd)
        matrix(p + "attn_q.weight", (n_embd, n_embd))
        matrix(p + "attn_k.weight", (n_head_kv * head_dim, n_embd))
        matrix(p + "attn_v.weight", (n_head_kv * head_dim, n_embd))
        matrix(p + "attn_output.weight", (n_embd, n_embd))
        norm(p + "ffn_norm.weight", n_embd)
        if n_expert:
            matrix(p + "ffn_gate_inp.weight", (n_expert, n_embd), f16=False)
            matrix(p + "ffn_gate_exps.weight", (n_expert, n_ff, n_embd))
            matrix(p + "ffn_down_exps.weight", (n_expert, n_embd, n_ff))
            matrix(p + "ffn_up_exps.weight", (n_expert, n_ff, n_embd))
        else:
            matrix(p + "ffn_gate.weight", (n_ff, n_embd))
            matrix(p + "ffn_down.weight", (n_embd, n_ff))
            matrix(p + "ffn_up.weight", (n_ff, n_embd))
    norm("output_norm.weight", n_embd)
    if not tied_output:
        matrix("output.weight", (n_vocab, n_embd))

    md: dict[str, Any] = {
        Keys.General.NAME: "omni-place tiny llama",
        "llama.context_length": n_ctx_train,
        "llama.embedding_length": n_embd,
        "llama.block_count": n_layer,
        "llama.feed_forward_length": n_ff,
        "llama.attention.head_count": n_head,
        "llama.attention.head_count_kv": n_head_kv,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.dimension_count": head_dim,
        "llama.vocab_size": n_vocab,
        Keys.General.FILE_TYPE: int(gguf.LlamaFileType.MOSTLY_F16),
    }
    if n_expert:
        md["llama.expert_count"] = n_expert
        md["llama.expert_used_count"] = n_expert_used
    md.update(spm_vocab(n_vocab))

    rng = np.random.default_rng(seed)

    def data(t: GGUFTensor) -> np.ndarray:
        np_shape = tuple(reversed(t.shape))
        if t.name in norms:
            return np.ones(np_shape, dtype=np.float32)
        return (rng.standard_normal(np_shape) * 0.02).astype(np.float16 if t.qtype == QT.F16 else np.float32)

    path = write_gguf(path, "llama", md, tensors, data=data)[0]
    return TinyModel(
        path=path, arch="llama", n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff,
        n_vocab=n_vocab, n_ctx_train=n_ctx_train, n_expert=n_expert, n_expert_used=n_expert_used,
        tied_output=tied_output,
        tensors={t.name: TensorInfo(t.name, t.qtype.name, tuple(reversed(t.shape)), tensor_nbytes(t.shape, t.qtype))
                 for t in tensors},
    )


def tiny_llama_spec(n_vocab: int = 0) -> ModelSpec:
    """A 2-layer llama header (n_embd 256, 1000-token vocab) with a realistic quant mix, written
    with the project's header-only writer: the tests' and the fuzzer's smallest real GGUF."""
    Q = QT
    spec = ModelSpec("llama", "tiny", {"llama.block_count": 2, "llama.embedding_length": 256,
                                        "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                                        "llama.feed_forward_length": 512, "llama.context_length": 4096,
                                        "llama.vocab_size": 1000, "llama.rope.dimension_count": 64})
    spec.add("token_embd.weight", (256, 1000), Q.Q4_K)
    for il in range(2):
        for name, shape, q in (("attn_norm.weight", (256,), Q.F32), ("attn_q.weight", (256, 256), Q.Q8_0),
                               ("attn_k.weight", (256, 128), Q.Q8_0), ("attn_v.weight", (256, 128), Q.Q6_K),
                               ("attn_output.weight", (256, 256), Q.Q4_0), ("ffn_norm.weight", (256,), Q.F32),
                               ("ffn_gate.weight", (256, 512), Q.Q4_K), ("ffn_up.weight", (256, 512), Q.Q4_K),
                               ("ffn_down.weight", (512, 256), Q.Q6_K)):
            spec.add(f"blk.{il}.{name}", shape, q)
    spec.add("output_norm.weight", (256,), Q.F32)
    spec.add("output.weight", (256, 1000), Q.Q6_K)
    if n_vocab:
        spec.n_vocab = n_vocab
    return spec


# --------------------------------------------------------------------------------------------
# loading through the real engine (subprocess: a libllama abort must not kill pytest)
# --------------------------------------------------------------------------------------------

_ENGINE_RUNNER = r"""
import json, sys
import numpy as np
import llama_cpp as L
import llama_cpp._logger as _lg
_lg.set_verbose(True)  # engine log lines go to stderr

path, n_ctx, n_threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[5])
load_mtp, swa_full = sys.argv[3] == "1", sys.argv[4] == "1"
L.llama_backend_init()
mp = L.llama_model_default_params()
mp.n_gpu_layers = 0
mp.check_tensors = True   # validates every tensor's data (NaN/Inf, quant blocks)
mp.load_mtp = load_mtp
model = L.llama_model_load_from_file(path.encode(), mp)
if not model:
    print(json.dumps({"loaded": False}))
    sys.exit(3)
cp = L.llama_context_default_params()
cp.n_ctx = n_ctx
cp.n_batch = cp.n_ubatch = min(n_ctx, 64)
cp.n_seq_max = 1
cp.n_threads = cp.n_threads_batch = n_threads
cp.swa_full = swa_full
ctx = L.llama_init_from_model(model, cp)
if not ctx:
    print(json.dumps({"loaded": True, "context": False}))
    sys.exit(4)
vocab = L.llama_model_get_vocab(model)
n_vocab = L.llama_vocab_n_tokens(vocab)
out = {"loaded": True, "context": True, "n_vocab": n_vocab,
       "n_layer": L.llama_model_n_layer(model), "n_layer_nextn": L.llama_model_n_layer_nextn(model),
       "n_swa": L.llama_model_n_swa(model), "n_params": L.llama_model_n_params(model),
       "model_size": L.llama_model_size(model), "decode_rc": []}
finite = True
absmax = 0.0
for toks in ([1, 5, 100, n_vocab - 1], [7]):   # a prompt, then one generated token
    arr = (L.llama_token * len(toks))(*toks)
    rc = L.llama_decode(ctx, L.llama_batch_get_one(arr, len(toks)))
    out["decode_rc"].append(rc)
    if rc != 0:
        break
    logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
    finite = finite and bool(np.isfinite(logits).all())
    absmax = max(absmax, float(np.abs(logits).max()))
out["logits_finite"] = finite
out["logits_absmax"] = absmax
L.llama_free(ctx)
L.llama_model_free(model)
sys.stdout.flush()
print("\n" + json.dumps(out))
"""

_KV_RE = re.compile(r"llama_kv_cache:\s+(\S+) KV buffer size =\s+([0-9.]+) MiB")
_RS_RE = re.compile(r"llama_memory_recurrent:\s+(\S+) RS buffer size =\s+([0-9.]+) MiB")
# llama_memory_recurrent's debug lines: a layer given a state, or skipped (llama-memory-recurrent.cpp)
_RS_LAYER_RE = re.compile(r"llama_memory_recurrent[,:] layer\s+(\d+): (dev|skipped)")
_KV_SIZE_RE = re.compile(r"llama_kv_cache: size =\s+([0-9.]+) MiB \(\s*(\d+) cells,\s+(\d+) layers")
_MODEL_BUF_RE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([0-9.]+) MiB")
_COMPUTE_RE = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s+([0-9.]+) MiB")


@dataclass
class EngineResult:
    """What ``engine_load`` saw: the runner's JSON (``info``) plus parsed engine log lines."""

    returncode: int
    info: dict
    log: str
    kv_buffers: list[tuple[str, float]]        # (buffer type, MiB) per "KV buffer size" line
    kv_caches: list[tuple[float, int, int]]    # (MiB, cells, layers) per "llama_kv_cache: size =" line
    rs_buffers: list[tuple[str, float]]        # (buffer type, MiB) per recurrent "RS buffer size" line
    rs_layers: list[int]                       # the layers llama_memory_recurrent gave a state
    model_buffers: list[tuple[str, float]]     # (buffer type, MiB)
    compute_buffers: list[tuple[str, float]]   # (buffer type, MiB)

    @property
    def ok(self) -> bool:
        i = self.info
        return (self.returncode == 0 and i.get("loaded") is True and i.get("context") is True
                and i.get("decode_rc") == [0, 0] and i.get("logits_finite") is True)

    def log_lines(self, needle: str) -> list[str]:
        return [ln for ln in self.log.splitlines() if needle in ln]


def engine_available() -> bool:
    """True when the real engine (llama-cpp-python's libllama) imports in this interpreter."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("llama_cpp") is None:
        return False
    r = subprocess.run([sys.executable, "-c", "import llama_cpp; llama_cpp.llama_backend_init()"],
                       capture_output=True, timeout=120)
    return r.returncode == 0


def engine_load(path: str | Path, *, n_ctx: int = 256, load_mtp: bool = False, swa_full: bool = False,
                n_threads: int = 1, timeout: float = 120.0) -> EngineResult:
    """Load ``path`` (first shard) in the real libllama on CPU in a subprocess, decode a 4-token
    prompt then one more token, and return the result with the engine's buffer-size log lines.

    ``n_threads=1`` on purpose: with 2+ OpenMP threads on a busy 2-core box a tiny decode spends
    up to a second in barrier spin-waits; one thread decodes these models in milliseconds."""
    import json
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", _ENGINE_RUNNER, str(path), str(n_ctx), "1" if load_mtp else "0",
         "1" if swa_full else "0", str(n_threads)],
        capture_output=True, text=True, timeout=timeout)
    info: dict = {}
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                info = json.loads(line)
            except ValueError:
                pass
            break
    log = r.stderr
    return EngineResult(
        returncode=r.returncode, info=info, log=log,
        kv_buffers=[(m[1], float(m[2])) for m in _KV_RE.finditer(log)],
        kv_caches=[(float(m[1]), int(m[2]), int(m[3])) for m in _KV_SIZE_RE.finditer(log)],
        rs_buffers=[(m[1], float(m[2])) for m in _RS_RE.finditer(log)],
        rs_layers=[int(m[1]) for m in _RS_LAYER_RE.finditer(log) if m[2] == "dev"],
        model_buffers=[(m[1], float(m[2])) for m in _MODEL_BUF_RE.finditer(log)],
        compute_buffers=[(m[1], float(m[2])) for m in _COMPUTE_RE.finditer(log)],
    )
