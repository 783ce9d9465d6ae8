"""Write synthetic GGUF models with real architectures for engine benchmarks (no downloads).

Speed does not depend on weight values, routing does: every 2-D weight is Q4_K made of one
tiled random pattern of valid 144-byte blocks (a small finite fp16 ``d``), norms are F32 ones,
and each MoE router is random F32 so tokens spread over the experts. The vocabulary is an SPM
one with the 256 byte tokens. The same call with ``--header-only`` writes exactly the file's
header (metadata and tensor infos, no data) -- enough for ``omni_place.load_model``. Files are
written by the package's GGUF writer (``omni_place.gguf_write``), one tensor at a time.

From the repository root (a checkout needs no compiled core for this, only ``gguf`` and numpy):

    python -m benchmarks.synth_gguf moe33 /models/moe33.gguf
    python -m benchmarks.synth_gguf dense15 /models/dense15.gguf --header-only

(``python benchmarks/synth_gguf.py ...`` works the same where omni_place is installed.)
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as QT

from omni_place.gguf_write import GGUFTensor, tensor_nbytes, write_gguf

Q4_K_BLOCK = 144  # half d, half dmin, 12 scale bytes, 128 nibble bytes


@dataclass(frozen=True)
class Shape:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int  # dense FFN width (dense models), 0 for MoE-only layers
    n_vocab: int
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ctx_train: int = 32768


SHAPES = {
    # qwen3moe, 48 layers, 256 experts (8 active) of width 768: 59 B parameters, ~33 GB in Q4_K
    "moe33": Shape("qwen3moe", 48, 2048, 32, 4, 128, 6144, 65536, n_expert=256, n_expert_used=8, n_ff_exp=768),
    # llama, 48 layers of a Mistral-Small-like shape: 27 B parameters, ~15.4 GB in Q4_K
    "dense15": Shape("llama", 48, 5120, 32, 8, 128, 32768, 65536),
    # tiny shapes for tests
    "moe-tiny": Shape("qwen3moe", 4, 256, 4, 2, 64, 512, 512, n_expert=8, n_expert_used=2, n_ff_exp=256),
    "dense-tiny": Shape("llama", 4, 256, 4, 2, 64, 512, 512),
}
_TYPES = {"q4_k": QT.Q4_K, "f32_one": QT.F32, "f32_rand": QT.F32}


def tensor_plan(s: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, ggml ne, 'q4_k' | 'f32_one' | 'f32_rand') in file order."""
    out: list[tuple[str, tuple[int, ...], str]] = [("token_embd.weight", (s.n_embd, s.n_vocab), "q4_k")]
    q, kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    for i in range(s.n_layer):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (s.n_embd,), "f32_one"),
            (b + "attn_q.weight", (s.n_embd, q), "q4_k"),
            (b + "attn_k.weight", (s.n_embd, kv), "q4_k"),
            (b + "attn_v.weight", (s.n_embd, kv), "q4_k"),
            (b + "attn_output.weight", (q, s.n_embd), "q4_k"),
            (b + "ffn_norm.weight", (s.n_embd,), "f32_one"),
        ]
        if s.arch == "qwen3moe":
            out += [
                (b + "attn_q_norm.weight", (s.head_dim,), "f32_one"),
                (b + "attn_k_norm.weight", (s.head_dim,), "f32_one"),
                (b + "ffn_gate_inp.weight", (s.n_embd, s.n_expert), "f32_rand"),
                (b + "ffn_gate_exps.weight", (s.n_embd, s.n_ff_exp, s.n_expert), "q4_k"),
                (b + "ffn_up_exps.weight", (s.n_embd, s.n_ff_exp, s.n_expert), "q4_k"),
                (b + "ffn_down_exps.weight", (s.n_ff_exp, s.n_embd, s.n_expert), "q4_k"),
            ]
        else:
            out += [
                (b + "ffn_gate.weight", (s.n_embd, s.n_ff), "q4_k"),
                (b + "ffn_up.weight", (s.n_embd, s.n_ff), "q4_k"),
                (b + "ffn_down.weight", (s.n_ff, s.n_embd), "q4_k"),
            ]
    out += [("output_norm.weight", (s.n_embd,), "f32_one"), ("output.weight", (s.n_embd, s.n_vocab), "q4_k")]
    return out


def nbytes(ne: tuple[int, ...], kind: str) -> int:
    return tensor_nbytes(ne, _TYPES[kind])


def metadata(s: Shape) -> dict[str, Any]:
    """The model's metadata, in file order (general.architecture comes first, from the writer)."""
    a = s.arch
    md: dict[str, Any] = {
        "general.name": f"omni-place synthetic {a}",
        f"{a}.block_count": s.n_layer,
        f"{a}.context_length": s.n_ctx_train,
        f"{a}.embedding_length": s.n_embd,
        f"{a}.feed_forward_length": s.n_ff,
        f"{a}.attention.head_count": s.n_head,
        f"{a}.attention.head_count_kv": s.n_head_kv,
        f"{a}.attention.key_length": s.head_dim,
        f"{a}.attention.value_length": s.head_dim,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{a}.rope.freq_base": 1e6,
        f"{a}.rope.dimension_count": s.head_dim,
        f"{a}.vocab_size": s.n_vocab,
    }
    if s.n_expert:
        md[f"{a}.expert_count"] = s.n_expert
        md[f"{a}.expert_used_count"] = s.n_expert_used
        md[f"{a}.expert_feed_forward_length"] = s.n_ff_exp
    md["general.file_type"] = 15  # MOSTLY_Q4_K_M
    md["general.quantization_version"] = 2
    # SPM vocab: <unk> <s> </s>, the 256 byte tokens, then filler pieces
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(s.n_vocab - len(tokens))]
    md.update({
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(s.n_vocab - 259)],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * (s.n_vocab - 259),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    })
    return md


def write(shape: str | Shape, path: str | Path, *, header_only: bool = False, seed: int = 0,
          log=print) -> int:  # type: ignore[no-untyped-def]
    """Write the model (or its header only); returns the file size in bytes."""
    s = SHAPES[shape] if isinstance(shape, str) else shape
    plan = tensor_plan(s)
    kinds = {name: kind for name, _, kind in plan}
    tensors = [(name, ne, _TYPES[kind]) for name, ne, kind in plan]
    if header_only:
        write_gguf(path, s.arch, metadata(s), tensors)
        return Path(path).stat().st_size
    rng = np.random.default_rng(seed)
    biggest = max(nbytes(ne, k) for _, ne, k in plan if k == "q4_k")
    pattern = rng.integers(0, 256, size=(4096, Q4_K_BLOCK), dtype=np.uint8)
    pattern[:, 0:2] = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)  # d
    pattern[:, 2:4] = 0  # dmin = 0
    q4 = np.resize(pattern.reshape(-1), biggest)
    ones = np.ones(max(int(np.prod(ne)) for _, ne, k in plan if k == "f32_one"), dtype=np.float32)
    t0 = time.time()
    total = sum(nbytes(ne, k) for _, ne, k in plan)
    state = {"i": 0, "done": 0}

    def data(t: GGUFTensor) -> np.ndarray:
        kind, n = kinds[t.name], nbytes(t.shape, kinds[t.name])
        if kind == "q4_k":
            out = q4[:n]
        elif kind == "f32_one":
            out = ones[: n // 4]
        else:
            out = rng.standard_normal(n // 4, dtype=np.float32)
        state["done"] += n
        if log and (state["i"] % 50 == 0 or state["i"] == len(plan) - 1):
            log(f"  {state['done'] / 1e9:6.1f} / {total / 1e9:.1f} GB  {time.time() - t0:5.1f} s", flush=True)
        state["i"] += 1
        return out

    write_gguf(path, s.arch, metadata(s), tensors, data=data)
    return Path(path).stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("path")
    ap.add_argument("--header-only", action="store_true", help="write the header (metadata + tensor infos) only")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    size = write(a.shape, a.path, header_only=a.header_only, seed=a.seed)
    print(f"wrote {a.path}: {size / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
