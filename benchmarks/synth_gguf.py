"""Write synthetic GGUF models with real architectures for engine benchmarks (no downloads).

Speed does not depend on weight values, routing does: every 2-D weight is Q4_K made of one
tiled random pattern of valid 144-byte blocks (a small finite fp16 ``d``), norms are F32 ones,
and each MoE router is random F32 so tokens spread over the experts. The vocabulary is an SPM
one with the 256 byte tokens. The same call with ``--header-only`` writes exactly the file's
header (metadata and tensor infos, no data) -- enough for ``omni_place.load_model``.

    python benchmarks/synth_gguf.py moe33 /models/moe33.gguf
    python benchmarks/synth_gguf.py dense15 /models/dense15.gguf --header-only

Needs the ``gguf`` package (gguf-py from the llama.cpp source tree works: PYTHONPATH=gguf-py).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QK_K = 256
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


def q4k_bytes(ne0: int, n_rows: int) -> int:
    if ne0 % QK_K:
        raise ValueError(f"Q4_K rows need a multiple of {QK_K} elements (got {ne0})")
    return ne0 // QK_K * Q4_K_BLOCK * n_rows


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
    rows = int(np.prod(ne[1:])) if len(ne) > 1 else 1
    return q4k_bytes(ne[0], rows) if kind == "q4_k" else int(np.prod(ne)) * 4


def _metadata(w, s: Shape) -> None:  # type: ignore[no-untyped-def]
    a = s.arch
    w.add_name(f"omni-place synthetic {a}")
    w.add_uint32(f"{a}.block_count", s.n_layer)
    w.add_uint32(f"{a}.context_length", s.n_ctx_train)
    w.add_uint32(f"{a}.embedding_length", s.n_embd)
    w.add_uint32(f"{a}.feed_forward_length", s.n_ff)
    w.add_uint32(f"{a}.attention.head_count", s.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", s.n_head_kv)
    w.add_uint32(f"{a}.attention.key_length", s.head_dim)
    w.add_uint32(f"{a}.attention.value_length", s.head_dim)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(f"{a}.rope.freq_base", 1e6)
    w.add_uint32(f"{a}.rope.dimension_count", s.head_dim)
    w.add_uint32(f"{a}.vocab_size", s.n_vocab)
    if s.n_expert:
        w.add_uint32(f"{a}.expert_count", s.n_expert)
        w.add_uint32(f"{a}.expert_used_count", s.n_expert_used)
        w.add_uint32(f"{a}.expert_feed_forward_length", s.n_ff_exp)
    w.add_uint32("general.file_type", 15)  # MOSTLY_Q4_K_M
    w.add_uint32("general.quantization_version", 2)
    # SPM vocab: <unk> <s> </s>, the 256 byte tokens, then filler pieces
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(s.n_vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (s.n_vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(s.n_vocab - 259)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)


def write(shape: str | Shape, path: str | Path, *, header_only: bool = False, seed: int = 0,
          log=print) -> int:  # type: ignore[no-untyped-def]
    """Write the model (or its header only); returns the file size in bytes."""
    import gguf

    s = SHAPES[shape] if isinstance(shape, str) else shape
    plan = tensor_plan(s)
    w = gguf.GGUFWriter(str(path), s.arch)
    _metadata(w, s)
    for name, ne, kind in plan:
        raw = gguf.GGMLQuantizationType.Q4_K if kind == "q4_k" else gguf.GGMLQuantizationType.F32
        w.add_tensor_info(name, tuple(reversed(ne)), np.dtype(np.float32), nbytes(ne, kind), raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    if header_only:
        w.close()
        return Path(path).stat().st_size
    rng = np.random.default_rng(seed)
    biggest = max(nbytes(ne, k) for _, ne, k in plan if k == "q4_k")
    pattern = rng.integers(0, 256, size=(4096, Q4_K_BLOCK), dtype=np.uint8)
    pattern[:, 0:2] = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)  # d
    pattern[:, 2:4] = 0  # dmin = 0
    q4 = np.resize(pattern.reshape(-1), biggest)
    ones = np.ones(max(int(np.prod(ne)) for _, ne, k in plan if k == "f32_one"), dtype=np.float32)
    t0 = time.time()
    done = 0
    total = sum(nbytes(ne, k) for _, ne, k in plan)
    for i, (name, ne, kind) in enumerate(plan):
        n = nbytes(ne, kind)
        if kind == "q4_k":
            data = q4[:n]
        elif kind == "f32_one":
            data = ones[: n // 4]
        else:
            data = rng.standard_normal(n // 4, dtype=np.float32)
        w.write_tensor_data(data)
        done += n
        if log and (i % 50 == 0 or i == len(plan) - 1):
            log(f"  {done / 1e9:6.1f} / {total / 1e9:.1f} GB  {time.time() - t0:5.1f} s", flush=True)
    w.close()
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
