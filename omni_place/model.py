"""ModelProfile: what every tensor and layer of a GGUF model costs in memory, per engine rule.

Everything here is derived from the header alone (see :mod:`omni_place.gguf`). The rules mirror
llama.cpp (vendored in llama-cpp-python 0.3.36, close to b11434); the line references point there:

- weight bytes as stored (``ggml_nbytes``) and as allocated: CUDA pads the last row of quantized
  tensors to a multiple of 512 elements and aligns to 128 B (``ggml-cuda.cu:903-920``); CPU and
  RPC (a CPU backend behind a socket) align to 32 B with no padding.
- the repeating-layer count is ``{arch}.block_count`` and includes NextN/MTP blocks; those blocks
  take a layer slot but no KV cache (``llama-model.cpp`` create_memory filter ``il < n_layer()``).
- KV cache per layer: ``row_size(type_k, n_embd_head_k * n_head_kv(il))`` (+ the same for V unless
  MLA) times ``pad256(n_ctx)`` cells (``llama-kv-cache.cpp:180-260``, ``llama-context.cpp:290``);
  SWA layers hold ``pad256(min(n_ctx, n_swa + n_ubatch))`` cells unless ``swa_full``
  (``llama-kv-cache-iswa.cpp:69-81``); recurrent layers hold ctx-independent F32 state
  (``llama-memory-recurrent.cpp``). DeepSeek-V3.2 (``deepseek32``, DSA) adds a second cache per
  trunk layer for its lightning indexer: one key head of ``attention.indexer.key_length`` in
  ``type_k``, no V (``llama-kv-cache-dsa.cpp:30-52``, ``llama-model.cpp:2397-2447``); GLM-5
  (``glm-dsa``) only on the layers that run a full indexer (``attention.indexer.types``);
  MiniMax-M3's MSA indexer a one-head GQA cache (its key, and a value of the model's head width)
  on every layer after the leading dense ones (``llama-kv-cache-msa.cpp:13-50``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from gguf import GGMLQuantizationType

from .errors import GGUFFormatError, InvalidArgumentError, UnsupportedModelError
from .ggml_types import ggml_type
from .gguf import GGUFModelFiles, LongArray, TensorInfo, iter_layer_tensors, read_model_files
from .hparams import ARCHITECTURES, NOT_COVERED, HParams, arch_spec, is_recurrent_layer, read_hparams
from .sources import resolve_model_source


CUDA_ROW_PADDING = 512  # MATRIX_ROW_PADDING, ggml-cuda/common.cuh
BACKEND_ALIGNMENT = {"cuda": 128, "cpu": 32, "rpc": 32}
KV_CELL_PADDING = 256  # n_ctx is padded to a multiple of 256 (llama-context.cpp:290)

# KV cache element types a user can pick (-ctk / -ctv), by their llama.cpp names.
KV_TYPES: dict[str, GGMLQuantizationType] = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q5_1": GGMLQuantizationType.Q5_1,
    "q5_0": GGMLQuantizationType.Q5_0,
    "q4_1": GGMLQuantizationType.Q4_1,
    "q4_0": GGMLQuantizationType.Q4_0,
    "iq4_nl": GGMLQuantizationType.IQ4_NL,
}


class Role(str, Enum):
    """What a tensor is for, as far as placement is concerned."""

    EMBEDDING = "embedding"  # token_embd & co: always on the CPU in llama.cpp
    OUTPUT = "output"  # output head: on the output device (the last layer slot)
    OUTPUT_NORM = "output_norm"
    ATTENTION = "attention"  # incl. MLA projections and attention sinks
    NORM = "norm"
    FFN = "ffn"  # dense feed-forward
    SHARED_EXPERT = "shared_expert"
    ROUTED_EXPERT = "routed_expert"  # ffn_{gate,up,down,gate_up}_exps: what -ot / --n-cpu-moe move
    ROUTER = "router"  # ffn_gate_inp, exp_probs_b
    NEXTN = "nextn"  # NextN/MTP-only tensors (eh_proj, enorm, hnorm, shared_head_*)
    RECURRENT = "recurrent"  # SSM / linear-attention state projections
    OTHER = "other"  # known tensors that need no special treatment (rope_freqs, ...)
    UNKNOWN = "unknown"  # not recognised: reported, priced with its layer


# The one table of tensor roles: (regex on the name inside "blk.N." without .weight/.bias, role).
# First match wins; order matters (norms before attention, shared experts before dense FFN).
LAYER_ROLE_RULES: tuple[tuple[re.Pattern[str], Role], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"^nextn\.", Role.NEXTN),
        (r"^ffn_(gate|up|down|gate_up)_(ch)?exps$", Role.ROUTED_EXPERT),
        (r"^ffn_(gate_inp|exp_probs_b)$|^exp_probs_b$", Role.ROUTER),
        (r"^ffn_(gate|up|down|gate_inp)_shexp$", Role.SHARED_EXPERT),
        (r"(^|_)norm(_\d+)?$|^(attn|ffn)_(q_|k_|kv_a_|q_a_|post_)?norm", Role.NORM),
        (r"^attn_|^indexer\.", Role.ATTENTION),  # indexer.*: DSA lightning indexer (deepseek32)
        (r"^ffn_(gate|up|down|gate_up)$", Role.FFN),
        (r"^(ssm_|time_mix_|channel_mix_|shortconv)", Role.RECURRENT),
        # per-layer embeddings' gate and projection (Gemma 3n / 4: src/llama-arch.cpp:570-571)
        (r"^(rope_freqs|layer_output_scale|altup_|laurel_|per_layer_)|^(inp_gate|proj)$", Role.OTHER),
    )
)
GLOBAL_ROLES: dict[str, Role] = {
    "token_embd": Role.EMBEDDING,
    "token_types": Role.EMBEDDING,
    "position_embd": Role.EMBEDDING,
    "per_layer_token_embd": Role.EMBEDDING,
    "output": Role.OUTPUT,
    "output_norm": Role.OUTPUT_NORM,
    "rope_freqs": Role.OTHER,
    # Gemma 3n's AltUp projections in and out of its four streams: output-layer tensors
    # (LLM_TENSOR_LAYER_OUTPUT, src/llama-arch.cpp:924-925), on the output device
    "altup_proj": Role.OUTPUT,
    "altup_unembd_proj": Role.OUTPUT,
}
# Tensors named without a block that the engine places with layer 0: repeating-layer tensors made
# with layer number 0, in dev_layer[0]'s buffer (src/llama-arch.cpp:732, 922-923; src/llama-model.cpp:1964);
# LFM2's token_embd_norm is its final norm, an output tensor (src/llama-arch.cpp:442, 740)
LAYER_0_GLOBALS = frozenset({"per_layer_model_proj", "per_layer_proj_norm", "token_embd_norm"})
OUTPUT_NORM_AS_EMBD_NORM = frozenset({"lfm2", "lfm2moe"})
# Tensors that stay with the layer's home device (everything but routed experts).
DENSE_ROLES = frozenset(set(Role) - {Role.ROUTED_EXPERT, Role.EMBEDDING, Role.OUTPUT, Role.OUTPUT_NORM})


def _strip_suffix(name: str) -> str:
    for suffix in (".weight", ".bias", ".scale", ".scales"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def classify(layer: int | None, inner_name: str) -> Role:
    """Role of a tensor from its name (``inner_name`` is the part after ``blk.N.``)."""
    base = _strip_suffix(inner_name)
    if layer is None:
        return GLOBAL_ROLES.get(base, Role.UNKNOWN)
    for pattern, role in LAYER_ROLE_RULES:
        if pattern.search(base):
            return role
    return Role.UNKNOWN


def row_bytes(type_id: int, n: int) -> int:
    """``ggml_row_size``: bytes of a row of ``n`` elements of a type."""
    return ggml_type(type_id).row_bytes(n)


def align_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def alloc_bytes(t: TensorInfo, backend: str) -> int:
    """Bytes the engine allocates for a weight on a backend ('cuda', 'cpu' or 'rpc')."""
    size = t.n_bytes
    if backend == "cuda":
        if ggml_type(t.ggml_type).block > 1 and t.shape[0] % CUDA_ROW_PADDING:
            size += row_bytes(t.ggml_type, CUDA_ROW_PADDING - t.shape[0] % CUDA_ROW_PADDING)
    try:
        return align_up(size, BACKEND_ALIGNMENT[backend])
    except KeyError:
        raise InvalidArgumentError(f"unknown backend {backend!r} (cuda, cpu, rpc)") from None


@dataclass(frozen=True)
class TensorRecord:
    """A tensor with its placement role. ``layer`` is None for non-layer tensors."""

    name: str
    layer: int | None
    role: Role
    info: TensorInfo
    n_expert: int = 0  # > 0 for routed-expert tensors: experts stacked in the last dimension

    @property
    def bytes(self) -> int:
        return self.info.n_bytes

    @property
    def bytes_per_expert(self) -> int:
        return self.info.n_bytes // self.n_expert if self.n_expert else 0

    def alloc_bytes(self, backend: str) -> int:
        return alloc_bytes(self.info, backend)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "layer": self.layer,
            "role": self.role.value,
            "type": self.info.type_name,
            "shape": list(self.info.shape),
            "bytes": self.bytes,
            "bytes_cuda": self.alloc_bytes("cuda"),
        }
        if self.n_expert:
            d["n_expert"] = self.n_expert
            d["bytes_per_expert"] = self.bytes_per_expert
        return d


@dataclass(frozen=True)
class LayerCost:
    """Bytes of one repeating layer, split the way the optimizer decides on them."""

    index: int
    is_nextn: bool
    dense: dict[str, int]  # backend -> bytes of everything that stays with the layer's device
    experts: dict[str, int]  # backend -> bytes of routed-expert tensors
    expert_tensors: tuple[TensorRecord, ...]
    stored_bytes: int

    @property
    def has_experts(self) -> bool:
        return bool(self.expert_tensors)


@dataclass
class ModelProfile:
    """Per-tensor and per-layer memory costs of a GGUF model, from its header only."""

    path: Path
    architecture: str
    name: str
    hparams: HParams
    tensors: list[TensorRecord]
    n_shards: int
    tied_output: bool
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)

    # -- tensors and layers ---------------------------------------------------------------
    @property
    def n_layer(self) -> int:
        """Repeating layers (``block_count``), NextN blocks included: the engine's layer slots."""
        return self.hparams.n_layer

    @property
    def total_bytes(self) -> int:
        """Weight bytes as stored in the file(s)."""
        return sum(t.bytes for t in self.tensors)

    @property
    def unknown_tensors(self) -> list[str]:
        return [t.name for t in self.tensors if t.role is Role.UNKNOWN]

    @property
    def coverage(self) -> str:
        """'verified', 'generic' or 'not covered': how far the KV/memory rules are proven."""
        if self.architecture in NOT_COVERED:
            return "not covered"
        return "verified" if arch_spec(self.architecture).verified else "generic"

    @cached_property
    def cuda_weights(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        """Every tensor by name: the bytes CUDA allocates for it and its shape (the compute graph
        replay's weights, read once per model)."""
        return {t.name: (t.alloc_bytes("cuda"), tuple(t.info.shape)) for t in self.tensors}

    @cached_property
    def layers(self) -> list[LayerCost]:
        per: list[list[TensorRecord]] = [[] for _ in range(self.n_layer)]
        for t in self.tensors:
            if t.layer is not None:
                per[t.layer].append(t)
        out = []
        first_nextn = self.n_layer - self.hparams.n_layer_nextn
        for il, ts in enumerate(per):
            is_nextn = il >= first_nextn
            stored = sum(t.bytes for t in ts)
            if is_nextn:
                # NextN/MTP blocks load only with load_mtp (default false: TENSOR_SKIP, 0 bytes),
                # but still take a layer slot (deepseek2.cpp / glm4-moe.cpp create_tensor flags)
                ts = []
            exps = tuple(t for t in ts if t.role is Role.ROUTED_EXPERT)
            dense = [t for t in ts if t.role is not Role.ROUTED_EXPERT]
            out.append(
                LayerCost(
                    index=il,
                    is_nextn=is_nextn,
                    dense={b: sum(t.alloc_bytes(b) for t in dense) for b in BACKEND_ALIGNMENT},
                    experts={b: sum(t.alloc_bytes(b) for t in exps) for b in BACKEND_ALIGNMENT},
                    expert_tensors=exps,
                    stored_bytes=stored,
                )
            )
        return out

    def role_tensors(self, *roles: Role) -> list[TensorRecord]:
        return [t for t in self.tensors if t.role in roles]

    def output_bytes(self, backend: str) -> int:
        """Bytes of the output slot (head + final norm) on the output device; a tied head is a
        second copy of token_embd there (except on the CPU, where both map the same file data)."""
        n = sum(t.alloc_bytes(backend) for t in self.role_tensors(Role.OUTPUT, Role.OUTPUT_NORM))
        if self.tied_output and backend != "cpu":
            n += sum(t.alloc_bytes(backend) for t in self.tensors if t.name == "token_embd.weight")
        return n

    def input_bytes(self) -> int:
        """Bytes that always stay on the CPU (token embeddings)."""
        return sum(t.alloc_bytes("cpu") for t in self.role_tensors(Role.EMBEDDING))

    # -- KV cache ---------------------------------------------------------------------------
    def kv_cells(self, ctx: int, n_seq: int = 1) -> int:
        if ctx <= 0:
            raise InvalidArgumentError(f"context length must be positive, got {ctx}", hint="use --ctx 4096 or larger")
        if ctx > 1 << 24:
            raise InvalidArgumentError(f"context length {ctx} is beyond 16M tokens",
                                       hint="check --ctx / -c, or llama-bench's test sizes (-p, -n, -d, -pg, -gp)")
        return align_up(max(1, ctx // n_seq), KV_CELL_PADDING) * n_seq

    def swa_kv_cells(self, cells: int, n_ubatch: int, n_seq: int = 1, swa_full: bool = False) -> int:
        """KV cells of a sliding-window layer out of ``cells`` (all streams): per stream
        ``pad256(min(cells, n_swa + n_ubatch))``, all of them with ``swa_full``."""
        if swa_full:
            return cells
        return min(cells // n_seq, align_up(self.hparams.n_swa + n_ubatch, KV_CELL_PADDING)) * n_seq

    def check_kv_types(self, type_k: str, type_v: str, flash_attn: bool) -> None:
        """Refuse KV cache types the engine refuses: a quantized row must hold whole blocks
        (K rows are head_dim_k wide, or the MLA latent; V rows head_dim_v), and a quantized V
        cache needs flash attention (llama-context.cpp)."""
        hp = self.hparams
        widths = {(hp.dim_k(il), hp.dim_v(il)) for il in range(hp.n_layer)}
        rows = ([("K", type_k, hp.kv_lora_rank + hp.n_rot)] if hp.is_mla else  # MLA: no V cache
                [row for k, v in sorted(widths) for row in (("K", type_k, k), ("V", type_v, v))])
        for which, name, row in rows:
            block = ggml_type(_kv_type(name)).block
            if block > 1 and row % block:
                raise InvalidArgumentError(
                    f"{which} cache type {name}: a row of {row} values is not a whole number of {block}-value blocks",
                    hint="use f16 (or bf16) for this model's KV cache")
        if ggml_type(_kv_type(type_v)).block > 1 and not flash_attn and not hp.is_mla:
            raise InvalidArgumentError(f"a quantized V cache ({type_v}) needs flash attention",
                                       hint="drop --no-flash-attn, or use --kv-type f16")

    def kv_layer_bytes(
        self,
        ctx: int,
        type_k: str = "f16",
        type_v: str | None = None,
        *,
        n_seq: int = 1,
        swa_full: bool = False,
        n_ubatch: int = 512,
        flash_attn: bool = True,
        ik_indexer: str | None = None,
    ) -> list[int]:
        """KV cache (or recurrent state) bytes of every layer slot, as llama.cpp allocates them;
        ``ik_indexer``: a DSA indexer's keys as ik_llama.cpp caches them, in that type
        (:meth:`ik_indexer_layers`)."""
        hp = self.hparams
        if self.coverage == "not covered":
            raise UnsupportedModelError(
                f"the KV/state layout of architecture {self.architecture!r} is not modelled",
                hint="covered: " + ", ".join(sorted(ARCHITECTURES)),
            )
        tk = _kv_type(type_k)
        tv = _kv_type(type_v or type_k)
        ti, indexer = (tk, hp.indexer_width) if ik_indexer is None else (_kv_type(ik_indexer), self._ik_indexer_width)
        if tv not in (GGMLQuantizationType.F16, GGMLQuantizationType.F32, GGMLQuantizationType.BF16) and not flash_attn:
            raise InvalidArgumentError("a quantized V cache needs flash attention",
                                       hint="add -fa on or use --kv-type f16")
        cells = self.kv_cells(ctx, n_seq)  # all streams
        swa_cells = self.swa_kv_cells(cells, n_ubatch, n_seq, swa_full)
        out: list[int] = []
        v_width_max = max(
            (hp.dim_v(il) * h for il, h in enumerate(hp.n_head_kv) if il < hp.n_layer_kv and h), default=0
        )
        for il in range(hp.n_layer):
            if not hp.owns_kv(il):  # a NextN block, or a layer attending to an earlier layer's cache
                out.append(0)
                continue
            state = self.recurrent_state_bytes(n_seq) if self.is_recurrent(il) else 0
            if not self.attends(il):
                out.append(state)
                continue
            n_cells = swa_cells if hp.is_swa[il] else cells
            k = row_bytes(tk, hp.dim_k(il) * hp.n_head_kv[il]) * n_cells
            if hp.is_mla:
                # MLA caches the latent only (no V); DSA adds the indexer's single key head, for
                # every cell whatever the layer's window (its cache has none)
                out.append(k + row_bytes(ti, indexer(il)) * cells)
                continue
            v_width = hp.dim_v(il) * hp.n_head_kv[il] if flash_attn else v_width_max  # transposed V uses the max
            # an MSA indexer's cache (minimax-m3): a GQA cache of one head, its key the indexer's width
            msa = (row_bytes(ti, indexer(il)) + row_bytes(tv, hp.dim_v(il))) * cells if indexer(il) else 0
            out.append(k + row_bytes(tv, v_width) * n_cells + msa + state)
        return out

    @cached_property
    def ik_indexer_layers(self) -> tuple[bool, ...]:
        """The layers ik_llama.cpp caches an indexer key for: GLM-DSA's 0, 1 and every fourth from 2,
        whatever the header's indexer types (ik src/llama-hparams.cpp:1918), of the trunk that carry
        an indexer (src/llama.cpp:1432); none of MiniMax-M3's (ik runs its attention dense, no MSA:
        src/graphs/build_minimaxm3.cpp); mainline's rule for the other DSA architectures."""
        hp = self.hparams
        if self.architecture == "minimax-m3":
            return (False,) * hp.n_layer_kv
        if self.architecture != "glm-dsa":
            return tuple(bool(hp.indexer_width(il)) for il in range(hp.n_layer_kv))
        names = {t.name for t in self.tensors}
        return tuple(bool(hp.indexer_head_size) and (il <= 1 or il % 4 == 2)
                     and f"blk.{il}.indexer.attn_k.weight" in names for il in range(hp.n_layer_kv))

    def _ik_indexer_width(self, il: int) -> int:
        layers = self.ik_indexer_layers
        return self.hparams.indexer_head_size if il < len(layers) and layers[il] else 0

    def is_recurrent(self, il: int) -> bool:
        """Whether layer ``il`` holds a recurrent state (F32 conv and SSM / delta-rule state, its size
        independent of the context: llama-memory-recurrent.cpp) instead of a KV cache: every layer of
        a recurrent architecture, a hybrid's layers without KV heads."""
        return is_recurrent_layer(self.architecture, self.hparams, il)

    def attends(self, il: int) -> bool:
        """Whether layer ``il`` runs attention over a KV cache of its own: all but a hybrid's recurrent
        layers (a parallel one's run both: ``ArchSpec.parallel_ssm``)."""
        return not self.is_recurrent(il) or arch_spec(self.architecture).parallel_ssm

    @property
    def msa_indexer(self) -> bool:
        """Whether attention is MiniMax-M3's MSA: GQA whose indexer picks the blocks each head
        attends to (an indexer beside MLA is DSA's, the other layout)."""
        return not self.hparams.is_mla and any(self.hparams.indexer_full)

    def _conv_channels(self) -> int:
        """The channels of a recurrent layer's conv state (Mamba-2 / delta-net: x, B and C)."""
        hp = self.hparams
        return hp.ssm_d_inner + 2 * hp.ssm_n_group * hp.ssm_d_state

    def recurrent_state_bytes(self, n_seq: int = 1) -> int:
        """A recurrent layer's F32 state for ``n_seq`` sequences: its conv taps and its SSM / delta-rule state."""
        hp = self.hparams
        n_conv = max(hp.ssm_d_conv - 1, 0) * self._conv_channels()
        n_state = hp.ssm_d_state * hp.ssm_d_inner
        return 4 * (n_conv + n_state) * max(1, n_seq)

    def recurrent_store_bytes(self, n_tokens: int, n_seq: int = 1, whole_conv_input: bool = True) -> int:
        """Bytes a recurrent layer's state stores read per ubatch of ``n_tokens``: the new SSM /
        delta-rule state (src/models/mamba-base.cpp:132) and the conv state's last d_conv - 1
        columns, which mainline takes as a strided view across the whole concatenated conv input of
        n_tokens + n_seq (d_conv - 1) columns (src/models/delta-net-base.cpp:472-496,
        mamba-base.cpp:57-64 and 207-217); ``whole_conv_input`` False: a contiguous copy of the
        conv state alone (ik_llama.cpp). A CPU-held layer under op offload runs the stores on the
        CPU, so the scheduler copies what they read from the GPU (ggml_nbytes of the view)."""
        conv_input = whole_conv_input and self.hparams.ssm_d_conv > 1  # the ubatch's columns beside the state
        return self.recurrent_state_bytes(n_seq) + (4 * n_tokens * self._conv_channels() if conv_input else 0)

    def kv_bytes_per_token(self, type_k: str = "f16", type_v: str | None = None) -> float:
        """KV bytes per context token summed over layers (full-attention layers at full size;
        SWA layers counted as full too, i.e. the ``swa_full`` upper bound; recurrent state excluded)."""
        tk, tv = _kv_type(type_k), _kv_type(type_v or type_k)
        hp = self.hparams
        total = 0
        for il in range(hp.n_layer_kv):
            if hp.n_head_kv[il] == 0 or not hp.owns_kv(il):
                continue
            total += row_bytes(tk, hp.dim_k(il) * hp.n_head_kv[il])
            if hp.is_mla:
                total += row_bytes(tk, hp.indexer_width(il))
            else:
                total += row_bytes(tv, hp.dim_v(il) * hp.n_head_kv[il])
                if hp.indexer_width(il):  # an MSA indexer's one-head cache (kv_layer_bytes)
                    total += row_bytes(tk, hp.indexer_width(il)) + row_bytes(tv, hp.dim_v(il))
        return float(total)

    def kv_write_bytes(self, il: int) -> int:
        """Bytes of one token's new cache entries of layer ``il`` as the graph computes them (F32 K,
        and V unless MLA, before ``set_rows`` stores them in the cache's type: src/llama-graph.cpp
        ``build_attn``, src/llama-kv-cache.cpp ``cpy_k``/``cpy_v``); 0 for a layer without a KV cache.
        A DSA or MSA indexer's cache takes its key alone: MiniMax-M3's graph never writes the value
        its MSA cache allocates (src/models/minimax-m3.cpp:358, ``cpy_k`` only)."""
        hp = self.hparams
        if not hp.owns_kv(il) or not hp.n_head_kv[il]:
            return 0
        if hp.is_mla:
            return 4 * (hp.head_dim_k * hp.n_head_kv[il] + hp.indexer_width(il))
        return 4 * ((hp.dim_k(il) + hp.dim_v(il)) * hp.n_head_kv[il] + hp.indexer_width(il))

    # -- reporting --------------------------------------------------------------------------
    def to_dict(self, ctx: int = 4096, kv_type: str = "f16", n_ubatch: int = 512,
                flash_attn: bool = True) -> dict[str, Any]:
        hp = self.hparams
        kv = self.kv_layer_bytes(ctx, kv_type, n_ubatch=n_ubatch, flash_attn=flash_attn)
        layers = []
        for lc, kvb in zip(self.layers, kv):
            layers.append(
                {
                    "layer": lc.index,
                    "nextn": lc.is_nextn,
                    "recurrent": self.is_recurrent(lc.index),
                    "attends": self.attends(lc.index),
                    "bytes": lc.stored_bytes,
                    "dense_bytes": lc.dense["cpu"],
                    "expert_bytes": lc.experts["cpu"],
                    "dense_bytes_cuda": lc.dense["cuda"],
                    "expert_bytes_cuda": lc.experts["cuda"],
                    "kv_bytes": kvb,
                }
            )
        return {
            "path": str(self.path),
            "name": self.name,
            "architecture": self.architecture,
            "coverage": self.coverage,
            "n_shards": self.n_shards,
            "n_layer": hp.n_layer,
            "n_layer_nextn": hp.n_layer_nextn,
            "n_embd": hp.n_embd,
            "n_vocab": hp.n_vocab,
            "n_expert": hp.n_expert,
            "n_expert_used": hp.n_expert_used,
            "is_mla": hp.is_mla,
            "n_swa": hp.n_swa,
            "tied_output": self.tied_output,
            "total_bytes": self.total_bytes,
            "ctx": ctx,
            "kv_type": kv_type,
            "kv_bytes_per_token": self.kv_bytes_per_token(kv_type),
            "kv_bytes": sum(kv),
            "recurrent_state_bytes": self.recurrent_state_bytes() * sum(map(self.is_recurrent, range(hp.n_layer))),
            "output_bytes": self.output_bytes("cpu"),
            "input_bytes": self.input_bytes(),
            "layers": layers,
            "unknown_tensors": self.unknown_tensors,
            "tensors": [t.to_dict() for t in self.tensors],
        }


def _kv_type(name: str) -> int:
    try:
        return int(KV_TYPES[name.lower()])
    except KeyError:
        raise InvalidArgumentError(
            f"unknown KV cache type {name!r}", hint="use one of: " + ", ".join(KV_TYPES)
        ) from None


def _n_vocab_from_tokens(md: dict[str, Any]) -> int:
    toks = md.get("tokenizer.ggml.tokens")
    if isinstance(toks, (list, LongArray)):
        return len(toks)
    return 0


def _expert_count(t: TensorInfo, n_expert: int) -> int:
    # Routed-expert weights stack experts in the last dim; biases ([n_ff, n_expert]) too.
    return t.shape[-1] if len(t.shape) >= 2 and t.shape[-1] == n_expert else 0


def profile_from_files(files: GGUFModelFiles) -> ModelProfile:
    md = files.metadata
    arch = md.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise GGUFFormatError(f"{files.path}: general.architecture is missing", hint="this GGUF is not a model file")
    if not files.tensors:
        raise GGUFFormatError(f"{files.path}: the header lists no tensors",
                              hint="a model file lists its weights; this one is a vocabulary or an empty header")
    try:
        hp = read_hparams(arch, md, _n_vocab_from_tokens(md))
    except GGUFFormatError as err:
        raise GGUFFormatError(f"{files.path}: {err.message}", hint=err.hint) from None
    records: list[TensorRecord] = []
    for layer, inner, info in iter_layer_tensors(files.tensors):
        base = _strip_suffix(inner)
        lfm2_output_norm = arch in OUTPUT_NORM_AS_EMBD_NORM and base == "token_embd_norm"
        if layer is None and base in LAYER_0_GLOBALS and not lfm2_output_norm:
            layer = 0
        if layer is not None and layer >= hp.n_layer:
            # Blocks past block_count go with the output device in the engine; report them.
            records.append(TensorRecord(info.name, None, Role.UNKNOWN, info))
            continue
        role = Role.OUTPUT_NORM if lfm2_output_norm else classify(layer, inner)
        n_exp = _expert_count(info, hp.n_expert) if role is Role.ROUTED_EXPERT else 0
        records.append(TensorRecord(info.name, layer, role, info, n_exp))
    empty = sorted(set(range(hp.n_layer_kv)) - {r.layer for r in records if r.layer is not None})
    if empty:  # the engine loads every trunk block's weights (a missing one is "missing tensor")
        shown = ", ".join(map(str, empty[:8])) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        raise GGUFFormatError(f"{files.path}: block_count is {hp.n_layer} but layer {shown} has no tensors",
                              hint="the header is truncated or corrupt; re-download it")
    names = {r.name for r in records}
    return ModelProfile(
        path=files.path,
        architecture=arch,
        name=str(md.get("general.name") or files.path.stem),
        hparams=hp,
        tensors=records,
        n_shards=len(files.shards),
        tied_output="output.weight" not in names,
        metadata=md,
    )


def load_model(path: str | os.PathLike[str] | ModelProfile) -> ModelProfile:
    """Read a model's GGUF header (single file or split shards, any shard) into a profile. MODEL
    may also be a shipped name, ``hf:OWNER/REPO[:QUANT]``, an http(s) URL or ``ollama:NAME``
    (:func:`omni_place.sources.resolve_model_source`)."""
    if isinstance(path, ModelProfile):
        return path
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"model must be a path or a ModelProfile (got {type(path).__name__})")
    return profile_from_files(read_model_files(resolve_model_source(path)))


def role_totals(tensors: Iterable[TensorRecord]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tensors:
        out[t.role.value] = out.get(t.role.value, 0) + t.bytes
    return out
