"""Tiny, real GGUF models for tests: small enough to write in milliseconds, complete enough that
the real libllama loads them (hyper-parameters, an SPM vocabulary with byte tokens, every tensor
the architecture requires).

Each writer returns a :class:`TinyModel` describing what was written (tensor names, ggml types,
shapes and byte sizes), so tests can compute expected per-layer / per-device bytes independently
of the code under test.

Add an architecture by writing ``write_<arch>(path, ...)`` on top of :class:`_Builder`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType

from omni_place.reference_models import ModelSpec

# ggml element size in bytes for the unquantized types the writers use
_ELEMENT_BYTES = {GGMLQuantizationType.F32: 4, GGMLQuantizationType.F16: 2}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: str
    shape: tuple[int, ...]
    """numpy shape (ggml ``ne`` reversed)."""
    nbytes: int


@dataclass
class TinyModel:
    """What a writer put into the file."""

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


class _Builder:
    """Shared plumbing: deterministic random tensors, bookkeeping, the SPM vocabulary."""

    def __init__(self, path: Path, arch: str, seed: int) -> None:
        self.path = Path(path)
        self.writer = GGUFWriter(str(self.path), arch)
        self.rng = np.random.default_rng(seed)
        self.tensors: dict[str, TensorInfo] = {}

    def tensor(self, name: str, shape: tuple[int, ...], f16: bool = True) -> None:
        data = (self.rng.standard_normal(shape) * 0.02).astype(np.float16 if f16 else np.float32)
        qtype = GGMLQuantizationType.F16 if f16 else GGMLQuantizationType.F32
        self.writer.add_tensor(name, data, raw_dtype=qtype)
        nbytes = int(np.prod(shape)) * _ELEMENT_BYTES[qtype]
        self.tensors[name] = TensorInfo(name, qtype.name, tuple(shape), nbytes)

    def norm(self, name: str, n: int) -> None:
        data = np.ones((n,), dtype=np.float32)
        self.writer.add_tensor(name, data, raw_dtype=GGMLQuantizationType.F32)
        self.tensors[name] = TensorInfo(name, "F32", (n,), 4 * n)

    def spm_vocab(self, n_vocab: int) -> None:
        """A llama-style SentencePiece vocabulary: <unk> <s> </s>, 256 byte tokens, then words."""
        if n_vocab < 3 + 256 + 1:
            raise ValueError(f"n_vocab must be >= 260 for an SPM vocab with byte tokens, got {n_vocab}")
        tokens: list[str] = ["<unk>", "<s>", "</s>"]
        types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
        tokens += [f"<0x{i:02X}>" for i in range(256)]
        types += [TokenType.BYTE] * 256
        letters = "abcdefghijklmnopqrstuvwxyz"
        i = 0
        while len(tokens) < n_vocab:
            word = "\u2581" + letters[i % 26] + (letters[(i // 26) % 26] if i >= 26 else "")
            if word not in tokens:
                tokens.append(word)
                types.append(TokenType.NORMAL)
            i += 1
        scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(k) for k in range(len(tokens) - 259)]
        w = self.writer
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)

    def finish(self) -> None:
        w = self.writer
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


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

    Matrices are F16 and norms F32, written in the order token_embd, blk.0 .. blk.N-1,
    output_norm, output (so the CPU-mapped range of the first layers is contiguous).
    """
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    if n_expert and not 0 < n_expert_used <= n_expert:
        raise ValueError(f"n_expert_used must be in 1..n_expert ({n_expert}), got {n_expert_used}")
    bld = _Builder(Path(path), "llama", seed)
    w = bld.writer
    head_dim = n_embd // n_head
    w.add_name("omni-place tiny llama")
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(n_vocab)
    w.add_file_type(LlamaFileType.MOSTLY_F16)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
    bld.spm_vocab(n_vocab)

    bld.tensor("token_embd.weight", (n_vocab, n_embd))
    for il in range(n_layer):
        p = f"blk.{il}."
        bld.norm(p + "attn_norm.weight", n_embd)
        bld.tensor(p + "attn_q.weight", (n_embd, n_embd))
        bld.tensor(p + "attn_k.weight", (n_head_kv * head_dim, n_embd))
        bld.tensor(p + "attn_v.weight", (n_head_kv * head_dim, n_embd))
        bld.tensor(p + "attn_output.weight", (n_embd, n_embd))
        bld.norm(p + "ffn_norm.weight", n_embd)
        if n_expert:
            bld.tensor(p + "ffn_gate_inp.weight", (n_expert, n_embd), f16=False)
            bld.tensor(p + "ffn_gate_exps.weight", (n_expert, n_ff, n_embd))
            bld.tensor(p + "ffn_down_exps.weight", (n_expert, n_embd, n_ff))
            bld.tensor(p + "ffn_up_exps.weight", (n_expert, n_ff, n_embd))
        else:
            bld.tensor(p + "ffn_gate.weight", (n_ff, n_embd))
            bld.tensor(p + "ffn_down.weight", (n_embd, n_ff))
            bld.tensor(p + "ffn_up.weight", (n_ff, n_embd))
    bld.norm("output_norm.weight", n_embd)
    if not tied_output:
        bld.tensor("output.weight", (n_vocab, n_embd))
    bld.finish()
    return TinyModel(
        path=bld.path,
        arch="llama",
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ff=n_ff,
        n_vocab=n_vocab,
        n_ctx_train=n_ctx_train,
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        tied_output=tied_output,
        tensors=bld.tensors,
    )


def tiny_llama_spec(n_vocab: int = 0) -> ModelSpec:
    """A 2-layer llama header (n_embd 256, 1000-token vocab) with a realistic quant mix, written
    with the project's header-only writer: the tests' and the fuzzer's smallest real GGUF."""
    Q = GGMLQuantizationType
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
