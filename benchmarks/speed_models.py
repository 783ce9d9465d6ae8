"""The speed models: full-size GGUFs of three real architectures (a dense llama, a qwen3moe, a
deepseek2 with MLA, shared experts and a leading dense layer), ~6-9 GB each, that
``speed_truth models`` writes for the GPU machine and ``speed_report`` prices.

Every large weight is a hole (zeros: a matmul's speed does not depend on its values), while the
tensors that decide *routing* hold real values: F32 norms of ones, a random F32 router per MoE
layer and random token embeddings. With zero attention and FFN outputs the router sees each
token's normalised embedding. The router's values are scaled by 1/sqrt(n_embd) so its logits have
unit spread (``ROUTERS["unit"]``, a trained router's scale): llama-bench's random prompt tokens
then spread over all experts as a real model's do. The first H200 runs used unscaled routers
(``"raw"``): deepseek2's sigmoid saturated on their ~45-sd logits and a ubatch used ~59 % of
mla16's experts (``replay_routing``). (A tiled all-positive Q4_K pattern, as ``synth_gguf``
writes, drives every token to the same few experts and makes op offload copy almost nothing: its
MoE prompt speeds are not what a real model gets.)

Speed models are deterministic: ``header_only`` writes the same headers (the same bytes up to the
data), which is all that pricing needs.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SPEED_MODELS: dict[str, dict[str, Any]] = {
    # 32 layers of a 13B-like shape (GQA 40/8): 10.6 B parameters, ~6.3 GB in Q4_K
    "dense11": dict(arch="llama", n_layer=32, n_embd=5120, n_head=40, n_head_kv=8, head_dim=128, n_ff=17408,
                    n_vocab=65536),
    # 24 layers of a Qwen3-30B-A3B-like shape (128 experts, 8 used): ~8.6 GB in Q4_K
    "moe15": dict(arch="qwen3moe", n_layer=24, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_ff=6144,
                  n_expert=128, n_expert_used=8, n_ff_exp=768, n_vocab=151936),
    # 16 layers of 256 experts (8 used), DeepSeek-V3's ratio: ik_llama.cpp computes CPU-held experts
    # on the CPU below ubatch 1024 (ggml-cuda.cu:5180-5207), ~7.3 GB in Q4_K
    "moe256": dict(arch="qwen3moe", n_layer=16, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_ff=6144,
                   n_expert=256, n_expert_used=8, n_ff_exp=512, n_vocab=151936),
    # Llama-3-8B and Llama-3.2-1B shapes in Q4_0: the models of llama.cpp's own performance tables
    "llama8b": dict(arch="llama", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336,
                    n_vocab=128256, weight_type="q4_0"),
    "llama1b": dict(arch="llama", n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, head_dim=64, n_ff=8192,
                    n_vocab=128256, weight_type="q4_0"),
    # DeepSeek-V2-Lite-like: MLA (kv_lora 512), 64 experts (6 used) + 2 shared, 1 leading dense layer;
    # 28 layers: llama.cpp takes a 26- or 27-layer deepseek2 for a "lite" one without q LoRA
    # (src/models/deepseek2.cpp:8) and would not find attn_q.weight
    "mla16": dict(arch="deepseek2", n_layer=28, n_embd=2048, n_head=16, n_head_kv=1, head_dim=128, n_rot=64,
                  kv_lora_rank=512, q_lora_rank=768, n_ff=10944, n_expert=64, n_expert_used=6, n_ff_exp=1408,
                  n_expert_shared=2, n_dense_lead=1, n_vocab=102400),
}


# the router's values: standard normal times this factor of n_embd (see the module doc)
ROUTERS = {"unit": lambda n_embd: n_embd ** -0.5, "raw": lambda n_embd: 1.0}


#: llama.cpp-style mixes (src/llama-quant.cpp gives ffn_down, attn_v and the head more bits):
#: name -> (the matrices' type, {tensor-name regex: type}); the token embeddings stay Q4_K
MIXES: dict[str, tuple[str, dict[str, str]]] = {
    "q4_k_m": ("q4_k", {r"ffn_down|attn_v|attn_kv_b|^output\.": "q6_k"}),
    # an IQ2_XXS-style MoE: i-quant experts, attention and shared tensors in Q4_K
    "iq2_xxs_moe": ("q4_k", {r"_exps\.": "iq2_xxs"}),
    # an ik_llama.cpp-style MoE (ubergarm's quants): IQ2_KS experts, IQ4_KS elsewhere
    "iq2_ks_moe": ("iq4_ks", {r"_exps\.": "iq2_ks"}),
}


def mix(weight_type: str) -> tuple[str, dict[str, str]]:
    """(the matrices' type, {tensor-name regex: type}) of ``weight_type``: a key of ``MIXES``,
    ``x<type>`` (the routed experts in <type>, Q4_K elsewhere) or a ggml type name."""
    if weight_type in MIXES:
        return MIXES[weight_type]
    if weight_type.startswith("x"):
        return "q4_k", {r"_exps\.": weight_type[1:]}
    return weight_type, {}


def write_speed_model(name: str, folder: Path, *, header_only: bool = False, router: str = "unit",
                      weight_type: str | None = None, shape: dict[str, Any] | None = None) -> Path:
    """Write speed model ``name`` into ``folder`` (see the module doc) with ``router`` values
    (a key of ``ROUTERS``); returns its path. ``weight_type`` (a ggml type name, or a key of
    ``MIXES``) replaces the model's own for every matrix but the token embeddings (Q4_K, random)
    and names the file ``{name}.{weight_type}``; ``shape`` replaces ``SPEED_MODELS[name]``."""
    from omni_place.gguf import read_model_files
    from omni_place.gguf_write import sparse_copy
    from tests.arch_models import write_model

    folder.mkdir(parents=True, exist_ok=True)
    shape = dict(shape or SPEED_MODELS[name])
    own_type = shape.pop("weight_type", "q4_k")
    types: dict[str, Any] = {}
    if weight_type is not None:
        base, extra = mix(weight_type.lower())
        name, own_type = f"{name}.{weight_type.lower()}", base
        types = {"tensor_types": {r"^token_embd\.": "q4_k", **extra}}
    header = write_model(folder / f"{name}.hdr.gguf", weight_type=own_type, tokenizer="spm",
                         header_only=True, **types, **shape)
    if header_only:
        return header
    files = read_model_files(header)
    full = sparse_copy(files, folder / "full")
    target = folder / f"{name}.gguf"
    full.rename(target)
    (folder / "full").rmdir()
    shard = files.shards[0]
    with open(target, "r+b") as fh:
        for t, data in _valued_tensors(files, router):
            assert len(data) == t.n_bytes, (t.name, len(data), t.n_bytes)
            fh.seek(shard.data_offset + t.offset)
            fh.write(data)
    return target


def _valued_tensors(files: Any, router: str) -> Iterator[tuple[Any, bytes]]:
    """The tensors of a speed model that hold values, with their bytes, in file order (one
    seeded generator: the same values every time); ``router`` scales the routers (``ROUTERS``)."""
    rng = np.random.default_rng(0)
    for t in files.tensors:
        n = t.n_elements
        if t.name.endswith("norm.weight") or "_norm" in t.name:
            yield t, np.ones(n, dtype=np.float32).tobytes()
        elif t.name.endswith("ffn_gate_inp.weight"):
            gain = np.float32(ROUTERS[router](t.shape[0]))  # shape [n_embd, n_expert]
            yield t, (rng.standard_normal(n, dtype=np.float32) * gain).tobytes()
        elif t.name == "token_embd.weight" and t.type_name in _RANDOM_BLOCKS:
            yield t, _RANDOM_BLOCKS[t.type_name](rng, t.n_bytes)
        elif t.name == "token_embd.weight":
            raise SystemExit(f"{t.name} is {t.type_name}; the speed models write "
                             f"{', '.join(_RANDOM_BLOCKS)} embeddings")


def replay_routing(header: Path, router: str = "unit", n_tokens: int = 512, trials: int = 4) -> list[list[int]]:
    """How many of a ubatch's ``n_tokens`` random prompt tokens (llama-bench's ``std::rand() %
    n_vocab``) each expert of each MoE layer gets, replayed from the speed model's own router and
    embeddings (the header names them, ``_valued_tensors`` regenerates their values), ``trials``
    ubatches per layer, for the speed model written with ``router`` values; for
    ``CostModel.with_routing``. Empty for a dense model. With zero attention and FFN outputs each
    layer's router sees the token's RMS-normed embedding. A ``"raw"`` sigmoid router (deepseek2's
    ``expert_gating_func`` 2) meets logits of ~45 sd: F32 sigmoid rounds
    the top ones to 1.0 and the tie goes to the lowest expert index
    (ggml/src/ggml-cuda/topk-moe.cu:210), so a ubatch of mla16 touches ~59 % of its experts, the
    low-numbered ones with several MMQ tiles of tokens, where ~1-sd logits (a trained router's)
    spread tokens over all of them."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from omni_place.gguf import read_model_files

    files = read_model_files(header)
    meta = files.metadata
    arch = meta["general.architecture"]
    n_exp, k = meta.get(f"{arch}.expert_count", 0), meta.get(f"{arch}.expert_used_count", 0)
    if not n_exp:
        return []
    sigmoid = meta.get(f"{arch}.expert_gating_func") == 2  # LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID
    n_embd = meta[f"{arch}.embedding_length"]
    emb, emb_type, n_vocab, routers = b"", "Q4_K", 0, []
    for t, data in _valued_tensors(files, router):
        if t.name == "token_embd.weight":
            emb, emb_type, n_vocab = data, t.type_name, t.shape[1]
        elif t.name.endswith("ffn_gate_inp.weight"):
            routers.append(np.frombuffer(data, dtype=np.float32).reshape(n_exp, n_embd))
    rows = np.frombuffer(emb, dtype=np.uint8).reshape(n_vocab, -1)
    pick = np.random.default_rng(1)
    counts = []
    for _ in range(trials):
        tokens = rows[pick.integers(0, n_vocab, n_tokens)]
        x = dequantize(tokens, GGMLQuantizationType[emb_type]).astype(np.float32).reshape(n_tokens, n_embd)
        x /= np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6)
        for w in routers:
            logits = x @ w.T
            # softmax is monotone in the logits; sigmoid in F32 saturates (ties)
            score = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32) if sigmoid else logits
            ties_low = np.broadcast_to(np.arange(n_exp), score.shape)
            top = np.lexsort((ties_low, -score), axis=1)[:, :k]
            counts.append(np.bincount(top.ravel(), minlength=n_exp).tolist())
    return counts


def _random_q4_0(rng: np.random.Generator, nbytes: int) -> bytes:
    """Q4_0 blocks of random nibbles with scale 0.12: a weight is 0.12 (q - 8)."""
    blocks = rng.integers(0, 256, size=(nbytes // 18, 18), dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.float16(0.12).tobytes(), dtype=np.uint8)
    return blocks.tobytes()


def _random_q8_0(rng: np.random.Generator, nbytes: int) -> bytes:
    """Q8_0 blocks of random int8 with scale 0.004: a weight is 0.004 q."""
    blocks = rng.integers(0, 256, size=(nbytes // 34, 34), dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.float16(0.004).tobytes(), dtype=np.uint8)
    return blocks.tobytes()


def _random_q4_k(rng: np.random.Generator, nbytes: int) -> bytes:
    """Q4_K blocks whose values are centred: every sub-block scale and min is 32 and
    dmin = 7.5 d, so a weight is 32 d (q - 7.5) for a random nibble q."""
    blocks = rng.integers(0, 256, size=(nbytes // 144, 144), dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.float16(0.004).tobytes(), dtype=np.uint8)
    blocks[:, 2:4] = np.frombuffer(np.float16(0.03).tobytes(), dtype=np.uint8)
    blocks[:, 4:12] = 0xA0  # 6-bit scales / mins 0..3 = 32, high bits of 4..7 = 2
    blocks[:, 12:16] = 0x00  # low nibbles of scales / mins 4..7
    return blocks.tobytes()


#: ggml type name -> the writer of random blocks of it (the speed models' token embeddings)
_RANDOM_BLOCKS = {"Q4_K": _random_q4_k, "Q4_0": _random_q4_0, "Q8_0": _random_q8_0}
