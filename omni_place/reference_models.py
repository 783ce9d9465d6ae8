"""Header-only descriptions of popular large models: real tensor names, shapes and the quant mix
of a common GGUF release, without weights. They let people (and tests, benchmarks and the
README's first command) plan before downloading hundreds of GB.

Each description is built by a function from the published hyper-parameters, then written as a
header-only GGUF (tensor infos, no data) by :mod:`omni_place.gguf_write`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import InvalidArgumentError
from .ggml_types import ggml_type, is_ik_only
from .gguf_write import write_gguf
from .safeio import is_own_file, make_private, private_dir, write_atomic

Q = GGMLQuantizationType


@dataclass
class ModelSpec:
    """A model as metadata + tensor infos (name, ggml shape ne0-first, type)."""

    arch: str
    name: str
    metadata: dict[str, Any]
    tensors: list[tuple[str, tuple[int, ...], GGMLQuantizationType]] = field(default_factory=list)
    n_vocab: int = 0

    def add(self, name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> None:
        self.tensors.append((name, shape, qtype))


def deepseek_v3(n_nextn: int = 1) -> ModelSpec:
    """DeepSeek-V3 / V3.1 (671B, 256 experts, MLA) as in a Q4_K_M release: attention and
    gate/up in Q4_K, ffn_down in Q6_K, MLA k_b/v_b in Q8_0, norms and router in F32."""
    n_layer, n_embd, n_vocab = 61, 7168, 129280
    n_head, q_lora, kv_lora, rope, nope, v_head = 128, 1536, 512, 64, 128, 128
    n_ff, n_ff_exp, n_expert = 18432, 2048, 256
    arch = "deepseek2"
    spec = ModelSpec(arch, "DeepSeek-V3 Q4_K_M (header only)", {}, n_vocab=n_vocab)
    a = arch
    spec.metadata = {
        f"{a}.block_count": n_layer + n_nextn,
        f"{a}.context_length": 163840,
        f"{a}.embedding_length": n_embd,
        f"{a}.feed_forward_length": n_ff,
        f"{a}.attention.head_count": n_head,
        f"{a}.attention.head_count_kv": 1,
        f"{a}.attention.key_length": kv_lora + rope,
        f"{a}.attention.value_length": kv_lora,
        f"{a}.attention.key_length_mla": nope + rope,
        f"{a}.attention.value_length_mla": v_head,
        f"{a}.attention.q_lora_rank": q_lora,
        f"{a}.attention.kv_lora_rank": kv_lora,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{a}.rope.dimension_count": rope,
        f"{a}.rope.freq_base": 10000.0,
        f"{a}.leading_dense_block_count": 3,
        f"{a}.expert_count": n_expert,
        f"{a}.expert_used_count": 8,
        f"{a}.expert_shared_count": 1,
        f"{a}.expert_feed_forward_length": n_ff_exp,
        f"{a}.expert_weights_scale": 2.5,
        f"{a}.expert_weights_norm": True,
        f"{a}.expert_gating_func": 2,
        f"{a}.nextn_predict_layers": n_nextn,
        f"{a}.vocab_size": n_vocab,
    }
    spec.add("token_embd.weight", (n_embd, n_vocab), Q.Q4_K)
    for il in range(n_layer + n_nextn):
        b = f"blk.{il}."
        spec.add(b + "attn_norm.weight", (n_embd,), Q.F32)
        spec.add(b + "attn_q_a_norm.weight", (q_lora,), Q.F32)
        spec.add(b + "attn_kv_a_norm.weight", (kv_lora,), Q.F32)
        spec.add(b + "attn_q_a.weight", (n_embd, q_lora), Q.Q4_K)
        spec.add(b + "attn_q_b.weight", (q_lora, n_head * (nope + rope)), Q.Q4_K)
        spec.add(b + "attn_kv_a_mqa.weight", (n_embd, kv_lora + rope), Q.Q4_K)
        spec.add(b + "attn_k_b.weight", (nope, kv_lora, n_head), Q.Q8_0)
        spec.add(b + "attn_v_b.weight", (kv_lora, v_head, n_head), Q.Q8_0)
        spec.add(b + "attn_output.weight", (n_head * v_head, n_embd), Q.Q4_K)
        spec.add(b + "ffn_norm.weight", (n_embd,), Q.F32)
        if il < 3:
            spec.add(b + "ffn_gate.weight", (n_embd, n_ff), Q.Q4_K)
            spec.add(b + "ffn_up.weight", (n_embd, n_ff), Q.Q4_K)
            spec.add(b + "ffn_down.weight", (n_ff, n_embd), Q.Q6_K)
        else:
            spec.add(b + "ffn_gate_inp.weight", (n_embd, n_expert), Q.F32)
            spec.add(b + "exp_probs_b.bias", (n_expert,), Q.F32)
            spec.add(b + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert), Q.Q4_K)
            spec.add(b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert), Q.Q4_K)
            spec.add(b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert), Q.Q6_K)
            spec.add(b + "ffn_gate_shexp.weight", (n_embd, n_ff_exp), Q.Q4_K)
            spec.add(b + "ffn_up_shexp.weight", (n_embd, n_ff_exp), Q.Q4_K)
            spec.add(b + "ffn_down_shexp.weight", (n_ff_exp, n_embd), Q.Q6_K)
        if il >= n_layer:
            spec.add(b + "nextn.eh_proj.weight", (2 * n_embd, n_embd), Q.Q4_K)
            spec.add(b + "nextn.enorm.weight", (n_embd,), Q.F32)
            spec.add(b + "nextn.hnorm.weight", (n_embd,), Q.F32)
            spec.add(b + "nextn.shared_head_norm.weight", (n_embd,), Q.F32)
    spec.add("output_norm.weight", (n_embd,), Q.F32)
    spec.add("output.weight", (n_embd, n_vocab), Q.Q6_K)
    return spec


# --- the quant mix of a stock `llama-quantize` release -------------------------------------
# bartowski's Q4_K_M and ggml-org's MXFP4 GGUFs are made with stock llama-quantize (an imatrix
# changes the values, not the types), so their per-tensor types follow llama.cpp's rules:
# src/llama-quant.cpp llama_tensor_get_type_impl (vendored llama.cpp of llama-cpp-python 0.3.36,
# lines 446-715) and tensor_allows_quantization (lines 287-345). unsloth's "UD" dynamic quants
# use other per-tensor types and are not modelled here.

def _use_more_bits(i: int, n: int) -> bool:
    # llama-quant.cpp:452: the first and last eighth of the layers and every third in between
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


# What llama-quantize writes instead of a type whose block does not divide a tensor's row length
# ne0 (src/llama-quant.cpp:390-443, tensor_type_fallback): the 256-block K- and IQ-quants fall back
# to a 32-block type; when that does not divide ne0 either (or the type is not listed), F16.
QUANT_FALLBACK: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    **dict.fromkeys((Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_XS), Q.IQ4_NL),
    **dict.fromkeys((Q.Q2_K, Q.Q3_K, Q.TQ1_0, Q.TQ2_0), Q.Q4_0),
    Q.Q4_K: Q.Q5_0,
    Q.Q5_K: Q.Q5_1,
    Q.Q6_K: Q.Q8_0,
}


def fit_quant_type(qtype: int, ne0: int) -> int:
    """The type llama-quantize gives a tensor of row length ``ne0`` when asked for ``qtype`` (a ggml
    type id; ik_llama.cpp's types, which mainline's table lacks, fall back to F16)."""
    if ne0 % ggml_type(qtype).block == 0:
        return qtype
    fb = Q.F16 if is_ik_only(qtype) else QUANT_FALLBACK.get(Q(qtype), Q.F16)
    return fb if ne0 % GGML_QUANT_SIZES[fb][0] == 0 else Q.F16


def q4_k_m_type(name: str, shape: tuple[int, ...], *, layer: int | None, n_layer_all: int,
                i_attn_v: int, n_attn_v: int, is_70b: bool = False) -> GGMLQuantizationType:
    """Type llama-quantize Q4_K_M gives a quantizable (2-D+, ``*.weight``) tensor."""
    ne0 = shape[0]
    if name == "output.weight":  # llama-quant.cpp:490-510
        return Q.Q6_K if ne0 % 256 == 0 else Q.Q8_0
    t = Q.Q4_K
    if name.endswith(("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")):  # :586-598
        t = Q.Q6_K if _use_more_bits(i_attn_v, n_attn_v) else Q.Q4_K
        if is_70b and t == Q.Q4_K:
            t = Q.Q5_K
    elif "ffn_down" in name and layer is not None:  # :624-652, MoE: layer from the name
        t = Q.Q6_K if _use_more_bits(layer, n_layer_all) else Q.Q4_K
    return Q(fit_quant_type(t, ne0))


def _quantizable(name: str, shape: tuple[int, ...]) -> bool:
    # llama-quant.cpp:287-345: 2-D+ weights, not norms, not routers
    return (len(shape) >= 2 and name.endswith(".weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name)


def _apply_q4_k_m(spec: ModelSpec, n_layer_all: int, *, is_70b: bool = False) -> ModelSpec:
    attn_v = ("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")
    n_attn_v = sum(1 for n, _, _ in spec.tensors if n.endswith(attn_v))
    i_attn_v = 0
    out = []
    for name, shape, qtype in spec.tensors:
        if _quantizable(name, shape):
            layer = int(name.split(".")[1]) if name.startswith("blk.") else None
            qtype = q4_k_m_type(name, shape, layer=layer, n_layer_all=n_layer_all, i_attn_v=i_attn_v,
                                n_attn_v=n_attn_v, is_70b=is_70b)
            if name.endswith(("attn_v.weight", "attn_qkv.weight", "attn_kv_b.weight")):
                i_attn_v += 1
        out.append((name, shape, qtype))
    spec.tensors = out
    return spec


def _apply_mxfp4_moe(spec: ModelSpec) -> ModelSpec:
    # llama-quant.cpp:511-524 (MXFP4_MOE): 3-D expert tensors MXFP4, other weights (output too) Q8_0
    spec.tensors = [(n, s, (Q.MXFP4 if len(s) == 3 else Q.Q8_0) if _quantizable(n, s) else q)
                    for n, s, q in spec.tensors]
    return spec


W = Q.F16  # placeholder type of a quantizable weight before the mix is applied


def deepseek_v32() -> ModelSpec:
    """DeepSeek-V3.2 (685B, 256 experts, MLA + DSA lightning indexer; arch ``deepseek32``) as a
    stock Q4_K_M (hyper-parameters: deepseek-ai/DeepSeek-V3.2 config.json: index_n_heads 64,
    index_head_dim 128, index_topk 2048; tensors: src/models/deepseek32.cpp:70-160)."""
    base = deepseek_v3(n_nextn=1)
    a = "deepseek32"
    spec = ModelSpec(a, "DeepSeek-V3.2 Q4_K_M (header only)", {}, n_vocab=base.n_vocab)
    spec.metadata = {k.replace("deepseek2.", f"{a}.", 1): v for k, v in base.metadata.items()}
    spec.metadata.update({f"{a}.attention.indexer.head_count": 64, f"{a}.attention.indexer.key_length": 128,
                          f"{a}.attention.indexer.top_k": 2048})
    n_embd, q_lora, n_ihead, ihead = 7168, 1536, 64, 128
    for name, shape, qtype in base.tensors:
        spec.add(name, shape, qtype if qtype == Q.F32 else W)
        if name.endswith(".attn_output.weight"):
            b = name[: -len("attn_output.weight")]
            spec.add(b + "indexer.k_norm.weight", (ihead,), Q.F32)
            spec.add(b + "indexer.k_norm.bias", (ihead,), Q.F32)
            spec.add(b + "indexer.proj.weight", (n_embd, n_ihead), W)
            spec.add(b + "indexer.attn_k.weight", (n_embd, ihead), W)
            spec.add(b + "indexer.attn_q_b.weight", (q_lora, n_ihead * ihead), W)
    return _apply_q4_k_m(spec, n_layer_all=62)



def _add_gqa_attention(spec: ModelSpec, prefix: str, n_embd: int, n_head: int, n_kv: int, hd: int, w: Q) -> None:
    """A block's norm and grouped-query attention projections (llama/qwen/glm naming)."""
    spec.add(prefix + "attn_norm.weight", (n_embd,), Q.F32)
    spec.add(prefix + "attn_q.weight", (n_embd, n_head * hd), w)
    spec.add(prefix + "attn_k.weight", (n_embd, n_kv * hd), w)
    spec.add(prefix + "attn_v.weight", (n_embd, n_kv * hd), w)
    spec.add(prefix + "attn_output.weight", (n_head * hd, n_embd), w)


def qwen3_235b_a22b() -> ModelSpec:
    """Qwen3-235B-A22B (94 layers, 128 experts, 8 used, GQA 64/4) as a stock Q4_K_M
    (Qwen/Qwen3-235B-A22B config.json; 1131 tensors, 471 of them F32, as in the released GGUFs)."""
    n_layer, n_embd, n_vocab, n_head, n_kv, hd, n_exp, n_ff_exp = 94, 4096, 151936, 64, 4, 128, 128, 1536
    a = "qwen3moe"
    spec = ModelSpec(a, "Qwen3-235B-A22B Q4_K_M (header only)", {
        f"{a}.block_count": n_layer, f"{a}.context_length": 40960, f"{a}.embedding_length": n_embd,
        f"{a}.feed_forward_length": 12288, f"{a}.attention.head_count": n_head,
        f"{a}.attention.head_count_kv": n_kv, f"{a}.attention.key_length": hd, f"{a}.attention.value_length": hd,
        f"{a}.rope.freq_base": 1e6, f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{a}.expert_count": n_exp, f"{a}.expert_used_count": 8, f"{a}.expert_feed_forward_length": n_ff_exp,
        f"{a}.vocab_size": n_vocab,
    }, n_vocab=n_vocab)
    spec.add("token_embd.weight", (n_embd, n_vocab), W)
    for il in range(n_layer):
        b = f"blk.{il}."
        _add_gqa_attention(spec, b, n_embd, n_head, n_kv, hd, W)
        spec.add(b + "attn_q_norm.weight", (hd,), Q.F32)
        spec.add(b + "attn_k_norm.weight", (hd,), Q.F32)
        spec.add(b + "ffn_norm.weight", (n_embd,), Q.F32)
        spec.add(b + "ffn_gate_inp.weight", (n_embd, n_exp), Q.F32)
        spec.add(b + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_exp), W)
        spec.add(b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_exp), W)
        spec.add(b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_exp), W)
    spec.add("output_norm.weight", (n_embd,), Q.F32)
    spec.add("output.weight", (n_embd, n_vocab), W)
    return _apply_q4_k_m(spec, n_layer_all=n_layer)


def glm_4_6() -> ModelSpec:
    """GLM-4.6 (355B-A32B: 92 layers + 1 NextN, 160 experts, 8 used, 3 dense, GQA 96/8, partial
    RoPE) as a stock Q4_K_M (zai-org/GLM-4.6 config.json; tensors: src/models/glm4-moe.cpp)."""
    n_layer, n_nextn, n_embd, n_vocab, n_head, n_kv, hd = 92, 1, 5120, 151552, 96, 8, 128
    n_ff, n_exp, n_ff_exp, n_dense = 12288, 160, 1536, 3
    a = "glm4moe"
    spec = ModelSpec(a, "GLM-4.6 Q4_K_M (header only)", {
        f"{a}.block_count": n_layer + n_nextn, f"{a}.context_length": 202752, f"{a}.embedding_length": n_embd,
        f"{a}.feed_forward_length": n_ff, f"{a}.attention.head_count": n_head, f"{a}.attention.head_count_kv": n_kv,
        f"{a}.attention.key_length": hd, f"{a}.attention.value_length": hd, f"{a}.rope.dimension_count": hd // 2,
        f"{a}.rope.freq_base": 1e6, f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{a}.expert_count": n_exp, f"{a}.expert_used_count": 8, f"{a}.expert_shared_count": 1,
        f"{a}.expert_feed_forward_length": n_ff_exp, f"{a}.leading_dense_block_count": n_dense,
        f"{a}.expert_weights_scale": 2.5, f"{a}.expert_weights_norm": True, f"{a}.expert_gating_func": 2,
        f"{a}.nextn_predict_layers": n_nextn, f"{a}.vocab_size": n_vocab,
    }, n_vocab=n_vocab)
    spec.add("token_embd.weight", (n_embd, n_vocab), W)
    for il in range(n_layer + n_nextn):
        b = f"blk.{il}."
        spec.add(b + "attn_norm.weight", (n_embd,), Q.F32)
        spec.add(b + "attn_q.weight", (n_embd, n_head * hd), W)
        spec.add(b + "attn_k.weight", (n_embd, n_kv * hd), W)
        spec.add(b + "attn_v.weight", (n_embd, n_kv * hd), W)
        spec.add(b + "attn_q.bias", (n_head * hd,), Q.F32)
        spec.add(b + "attn_k.bias", (n_kv * hd,), Q.F32)
        spec.add(b + "attn_v.bias", (n_kv * hd,), Q.F32)
        spec.add(b + "attn_output.weight", (n_head * hd, n_embd), W)
        spec.add(b + "attn_q_norm.weight", (hd,), Q.F32)
        spec.add(b + "attn_k_norm.weight", (hd,), Q.F32)
        spec.add(b + "post_attention_norm.weight", (n_embd,), Q.F32)
        if il < n_dense:
            spec.add(b + "ffn_gate.weight", (n_embd, n_ff), W)
            spec.add(b + "ffn_up.weight", (n_embd, n_ff), W)
            spec.add(b + "ffn_down.weight", (n_ff, n_embd), W)
        else:
            spec.add(b + "ffn_gate_inp.weight", (n_embd, n_exp), Q.F32)
            spec.add(b + "exp_probs_b.bias", (n_exp,), Q.F32)
            spec.add(b + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_exp), W)
            spec.add(b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_exp), W)
            spec.add(b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_exp), W)
            spec.add(b + "ffn_gate_shexp.weight", (n_embd, n_ff_exp), W)
            spec.add(b + "ffn_up_shexp.weight", (n_embd, n_ff_exp), W)
            spec.add(b + "ffn_down_shexp.weight", (n_ff_exp, n_embd), W)
        if il >= n_layer:
            spec.add(b + "nextn.eh_proj.weight", (2 * n_embd, n_embd), W)
            spec.add(b + "nextn.enorm.weight", (n_embd,), Q.F32)
            spec.add(b + "nextn.hnorm.weight", (n_embd,), Q.F32)
            spec.add(b + "nextn.shared_head_norm.weight", (n_embd,), Q.F32)
    spec.add("output_norm.weight", (n_embd,), Q.F32)
    spec.add("output.weight", (n_embd, n_vocab), W)
    return _apply_q4_k_m(spec, n_layer_all=n_layer + n_nextn)


def gpt_oss_120b() -> ModelSpec:
    """gpt-oss-120b (36 layers, 128 experts, 4 used, GQA 64/8 of 64, every other layer SWA 128) as
    ggml-org/gpt-oss-120b-GGUF: MXFP4_MOE (experts MXFP4, other weights Q8_0, biases/sinks F32)."""
    n_layer, n_embd, n_vocab, n_head, n_kv, hd, n_exp, n_ff_exp = 36, 2880, 201088, 64, 8, 64, 128, 2880
    a = "gpt-oss"
    spec = ModelSpec(a, "gpt-oss-120b MXFP4 (header only)", {
        f"{a}.block_count": n_layer, f"{a}.context_length": 131072, f"{a}.embedding_length": n_embd,
        f"{a}.feed_forward_length": n_ff_exp, f"{a}.attention.head_count": n_head,
        f"{a}.attention.head_count_kv": n_kv, f"{a}.attention.key_length": hd, f"{a}.attention.value_length": hd,
        f"{a}.rope.freq_base": 150000.0, f"{a}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{a}.attention.sliding_window": 128, f"{a}.expert_count": n_exp, f"{a}.expert_used_count": 4,
        f"{a}.expert_feed_forward_length": n_ff_exp, f"{a}.vocab_size": n_vocab,
    }, n_vocab=n_vocab)
    spec.add("token_embd.weight", (n_embd, n_vocab), W)
    for il in range(n_layer):
        b = f"blk.{il}."
        spec.add(b + "attn_norm.weight", (n_embd,), Q.F32)
        for t, width in (("q", n_head * hd), ("k", n_kv * hd), ("v", n_kv * hd)):
            spec.add(b + f"attn_{t}.weight", (n_embd, width), W)
            spec.add(b + f"attn_{t}.bias", (width,), Q.F32)
        spec.add(b + "attn_output.weight", (n_head * hd, n_embd), W)
        spec.add(b + "attn_output.bias", (n_embd,), Q.F32)
        spec.add(b + "attn_sinks.weight", (n_head,), Q.F32)
        spec.add(b + "post_attention_norm.weight", (n_embd,), Q.F32)
        spec.add(b + "ffn_gate_inp.weight", (n_embd, n_exp), Q.F32)
        spec.add(b + "ffn_gate_inp.bias", (n_exp,), Q.F32)
        for t in ("gate", "up", "down"):
            spec.add(b + f"ffn_{t}_exps.weight", (n_embd, n_ff_exp, n_exp), W)
            spec.add(b + f"ffn_{t}_exps.bias", (n_ff_exp, n_exp), Q.F32)
    spec.add("output_norm.weight", (n_embd,), Q.F32)
    spec.add("output.weight", (n_embd, n_vocab), W)
    return _apply_mxfp4_moe(spec)


def llama_3_3_70b() -> ModelSpec:
    """Llama-3.3-70B-Instruct (80 layers, GQA 64/8, dense) as a stock Q4_K_M (attn_v Q5_K/Q6_K: the
    70B bump of llama-quant.cpp:592-596)."""
    n_layer, n_embd, n_vocab, n_head, n_kv, hd, n_ff = 80, 8192, 128256, 64, 8, 128, 28672
    a = "llama"
    spec = ModelSpec(a, "Llama-3.3-70B-Instruct Q4_K_M (header only)", {
        f"{a}.block_count": n_layer, f"{a}.context_length": 131072, f"{a}.embedding_length": n_embd,
        f"{a}.feed_forward_length": n_ff, f"{a}.attention.head_count": n_head, f"{a}.attention.head_count_kv": n_kv,
        f"{a}.rope.freq_base": 500000.0, f"{a}.rope.dimension_count": hd,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-5, f"{a}.vocab_size": n_vocab,
    }, n_vocab=n_vocab)
    spec.add("token_embd.weight", (n_embd, n_vocab), W)
    spec.add("rope_freqs.weight", (hd // 2,), Q.F32)  # llama-3 rope scaling factors
    for il in range(n_layer):
        b = f"blk.{il}."
        _add_gqa_attention(spec, b, n_embd, n_head, n_kv, hd, W)
        spec.add(b + "ffn_norm.weight", (n_embd,), Q.F32)
        spec.add(b + "ffn_gate.weight", (n_embd, n_ff), W)
        spec.add(b + "ffn_up.weight", (n_embd, n_ff), W)
        spec.add(b + "ffn_down.weight", (n_ff, n_embd), W)
    spec.add("output_norm.weight", (n_embd,), Q.F32)
    spec.add("output.weight", (n_embd, n_vocab), W)
    return _apply_q4_k_m(spec, n_layer_all=n_layer, is_70b=True)


# Shipped header-only models: name -> builder. The first is the default of `omni-place plan`.
REFERENCE_MODELS: dict[str, Callable[[], ModelSpec]] = {
    "deepseek-v3.2": deepseek_v32,
    "deepseek-v3": deepseek_v3,
    "qwen3-235b-a22b": qwen3_235b_a22b,
    "glm-4.6": glm_4_6,
    "gpt-oss-120b": gpt_oss_120b,
    "llama-3.3-70b": llama_3_3_70b,
}


def _fallback_cache_dir() -> Path:
    """Where headers go when the cache folder is not usable (a read-only home, a folder another
    user owns): a folder under the temp dir, used only when it is private (see
    :func:`omni_place.safeio.private_dir`)."""
    return Path(tempfile.gettempdir()) / f"omni_place-{os.getuid()}"


def is_reference_header(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a header written by :func:`cached_reference_model` (no weights)."""
    p = Path(path)
    session = p.parent.name.startswith("omni_place-models-")  # safeio.private_dir's own folder
    known = p.name.rsplit("-", 1)[0] in REFERENCE_MODELS
    return p.parent in (cache_dir(), _fallback_cache_dir()) or (session and known)


def cache_dir() -> Path:
    """Where generated reference headers live: $OMNI_PLACE_CACHE or ~/.cache/omni_place."""
    base = os.environ.get("OMNI_PLACE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "omni_place")
    return Path(base) / "models"


def spec_digest(spec: ModelSpec) -> str:
    """Short hash of a spec's content: a changed description gets a new cache file."""
    h = hashlib.sha256(repr((spec.arch, spec.name, sorted(spec.metadata.items()), spec.n_vocab)).encode())
    for name, shape, qtype in spec.tensors:
        h.update(f"{name}{shape}{int(qtype)};".encode())
    return h.hexdigest()[:12]


def cached_reference_model(name: str) -> Path:
    """Path of the header-only GGUF of a reference model, written on first use (a changed
    description gets a new file name, so a stale cache is never read).

    The cache folder is used only when private (this user's, writable by no one else; else the
    temp-dir fallback, else a fresh folder for this process), a cached file only when it is a
    regular file of this user's; anything else at that name is replaced by a header written
    under a random name and renamed into place (:mod:`omni_place.safeio`)."""
    try:
        builder = REFERENCE_MODELS[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown reference model {name!r}",
                                   hint="shipped: " + ", ".join(REFERENCE_MODELS)) from None
    spec = builder()
    folder = cache_dir() if make_private(cache_dir()) else private_dir(_fallback_cache_dir(), "models")
    path = folder / f"{name}-{spec_digest(spec)}.gguf"
    if not is_own_file(path):
        write_atomic(path, lambda tmp: write_header_only(spec, tmp))
    return path


def _vocab(n_vocab: int) -> list[str]:
    # Distinct, realistic-length token strings (the header reader only needs their count).
    return [f"tok{i:06d}" for i in range(n_vocab)]


def write_header_only(
    spec: ModelSpec,
    path: str | os.PathLike[str],
    *,
    shards: int = 1,
    with_vocab: bool = False,
) -> list[Path]:
    """Write ``spec`` as a header-only GGUF (no tensor data), optionally split into ``shards``
    files named like llama.cpp's gguf-split output, and optionally with a full-size tokenizer
    vocabulary (tokens + merges) to exercise readers on real header sizes."""
    metadata: dict[str, Any] = {"general.name": spec.name}
    metadata.update((k, v) for k, v in spec.metadata.items() if k.startswith((f"{spec.arch}.", "general.")))
    if with_vocab and spec.n_vocab:
        metadata["tokenizer.ggml.model"] = "gpt2"
        metadata["tokenizer.ggml.tokens"] = _vocab(spec.n_vocab)
        metadata["tokenizer.ggml.token_type"] = [1] * spec.n_vocab
        metadata["tokenizer.ggml.merges"] = [f"t{j} o{j}" for j in range(spec.n_vocab - 1500)]
    return write_gguf(path, spec.arch, metadata, spec.tensors, split=shards)


__all__ = ["ModelSpec", "QUANT_FALLBACK", "REFERENCE_MODELS", "cached_reference_model", "fit_quant_type",
           "is_reference_header", "write_header_only", "deepseek_v3", "deepseek_v32", "qwen3_235b_a22b", "glm_4_6",
           "gpt_oss_120b", "llama_3_3_70b", "q4_k_m_type"]
