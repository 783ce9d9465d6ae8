"""Header-only descriptions of popular large models: real tensor names, shapes and the quant mix
of a common GGUF release, without weights. They let people (and tests, benchmarks and the
README's first command) plan before downloading hundreds of GB.

Each description is built by a function from the published hyper-parameters, then written with
``gguf``'s writer as a header-only GGUF (tensor infos, no data).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

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


def _nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=object)) // block * size


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


REFERENCE_MODELS: dict[str, Callable[[], ModelSpec]] = {
    "deepseek-v3": deepseek_v3,
}


def cache_dir() -> Path:
    """Where generated reference headers live: $OMNI_PLACE_CACHE or ~/.cache/omni_place."""
    base = os.environ.get("OMNI_PLACE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "omni_place")
    return Path(base) / "models"


def cached_reference_model(name: str) -> Path:
    """Path of the header-only GGUF of a reference model, written on first use."""
    spec = REFERENCE_MODELS[name]()
    path = cache_dir() / f"{name}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        write_header_only(spec, tmp)
        os.replace(tmp, path)
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
    path = Path(path)
    if shards > 1:
        stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.name
        paths = [path.with_name(f"{stem}-{i:05d}-of-{shards:05d}.gguf") for i in range(1, shards + 1)]
    else:
        paths = [path]
    per_shard = -(-len(spec.tensors) // shards)
    for i, p in enumerate(paths):
        w = GGUFWriter(str(p), spec.arch if i == 0 else spec.arch, use_temp_file=False)
        if i == 0:
            w.add_name(spec.name)
            for key, value in spec.metadata.items():
                if key.startswith(f"{spec.arch}.") or key.startswith("general."):
                    _add_kv(w, key, value)
            if with_vocab and spec.n_vocab:
                toks = _vocab(spec.n_vocab)
                w.add_tokenizer_model("gpt2")
                w.add_token_list(toks)
                w.add_token_types([1] * spec.n_vocab)
                w.add_token_merges([f"t{j} o{j}" for j in range(spec.n_vocab - 1500)])
        if shards > 1:
            w.add_uint16("split.no", i)
            w.add_uint16("split.count", shards)
            w.add_int32("split.tensors.count", len(spec.tensors))
        for name, shape, qtype in spec.tensors[i * per_shard : (i + 1) * per_shard]:
            block, type_size = GGML_QUANT_SIZES[qtype]
            # GGUFWriter takes numpy (row-major) shapes, with rows in bytes for raw types.
            byte_shape = (*reversed(shape[1:]), shape[0] // block * type_size)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), _nbytes(shape, qtype), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
    return paths


def _add_kv(w: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if 0 <= value < 1 << 32 else w.add_uint64(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        w.add_array(key, list(value))
    else:  # pragma: no cover - specs only use the types above
        raise TypeError(f"unsupported metadata value for {key}: {value!r}")


__all__ = ["ModelSpec", "REFERENCE_MODELS", "cached_reference_model", "write_header_only", "deepseek_v3"]
