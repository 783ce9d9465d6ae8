"""An architecture's hyper-parameters as the memory and speed models need them, read from GGUF
metadata (``src/llama-model.cpp`` load_hparams reads the same keys), and the one table of
architectures the memory model knows."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import GGUFFormatError, UnsupportedModelError
from .gguf import LongArray
from .validate import integer


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters the memory and speed models need, read from GGUF metadata."""

    n_layer: int  # block_count: repeating layers incl. NextN blocks (= layer slots before the output)
    n_layer_nextn: int
    n_embd: int
    n_head: tuple[int, ...]  # per layer
    n_head_kv: tuple[int, ...]  # per layer; 0 marks a recurrent layer in hybrid models
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ctx_train: int
    n_expert: int
    n_expert_used: int
    n_ff: tuple[int, ...]  # per layer dense FFN width (0 if none)
    n_ff_exp: int
    n_layer_dense_lead: int
    is_mla: bool
    kv_lora_rank: int
    n_rot: int
    n_swa: int
    is_swa: tuple[bool, ...]
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    ssm_n_head: int = 0  # ssm.time_step_rank: a Mamba-2 mixer's heads (the gated delta rule's value heads)
    indexer_head_size: int = 0  # DSA lightning indexer key width (DSA_ARCHITECTURES); 0 = no indexer cache
    # the trunk layers that run a full indexer and cache its key (attention.indexer.types; every
    # trunk layer of deepseek32)
    indexer_full: tuple[bool, ...] = ()
    # SWA layers' head widths (attention.key_length_swa / value_length_swa; 0: the full layers' widths)
    head_dim_k_swa: int = 0
    head_dim_v_swa: int = 0
    n_layer_kv_shared: int = 0  # last layers that attend to an earlier layer's cache (attention.shared_kv_layers)

    @property
    def n_layer_kv(self) -> int:
        """Layers that can hold a KV cache (NextN blocks are filtered out of the main context)."""
        return self.n_layer - self.n_layer_nextn

    def dim_k(self, il: int) -> int:
        """Layer ``il``'s K head width: its kind's (src/llama-hparams.cpp n_embd_head_k(il))."""
        return self.head_dim_k_swa if self.is_swa[il] and self.head_dim_k_swa else self.head_dim_k

    def dim_v(self, il: int) -> int:
        """Layer ``il``'s V head width (n_embd_head_v(il))."""
        return self.head_dim_v_swa if self.is_swa[il] and self.head_dim_v_swa else self.head_dim_v

    def indexer_width(self, il: int) -> int:
        """Layer ``il``'s DSA indexer key width in the cache: ``indexer_head_size`` where it runs a
        full indexer (the engine's filter_lid, src/llama-model.cpp:2431), else 0."""
        return self.indexer_head_size if il < len(self.indexer_full) and self.indexer_full[il] else 0

    def owns_kv(self, il: int) -> bool:
        """Whether layer ``il`` has a cache of its own: not a NextN block, nor one of the last
        ``n_layer_kv_shared`` layers (the engine's has_kv, src/llama-hparams.cpp)."""
        return il < self.n_layer_kv and il < self.n_layer - self.n_layer_kv_shared

    def kv_source(self, il: int) -> int:
        """The layer whose cache layer ``il`` attends: its own, or for a shared layer the last SWA or
        full layer with a cache (the reuse rule of src/llama-model.cpp create_memory, gemma3n/gemma4)."""
        start = self.n_layer - self.n_layer_kv_shared
        if not self.n_layer_kv_shared or il < start:
            return il
        return start - (2 if self.is_swa[il] else 1)


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture needs beyond the generic GQA rules. ``verified`` archs are checked
    against the real engine in tests/test_model_engine.py."""

    swa_pattern: int = 0  # default sliding_window_pattern (n: layer il is SWA iff il % n < n-1)
    swa_dense_first: bool = False
    # the window the engine sets in its load_arch_hparams: where the header has no
    # attention.sliding_window (``swa_without_key``: SWA on then; else off), or whatever the header
    # says (``swa_window_forced``; a header's 0 still turns it off); ``swa_n_layer``: SWA only at
    # that layer count (the engine keys it to one model size)
    swa_window: int = 0
    swa_window_forced: bool = False
    swa_without_key: bool = False
    swa_n_layer: int = 0
    # a window in the header makes every attention layer SWA, the recurrent ones none (lfm2)
    swa_on_attention: bool = False
    recurrent: bool = False  # every layer is recurrent (mamba)
    # a hybrid (the engine's llm_arch_is_hybrid, src/llama-arch.cpp): a layer without KV heads is
    # recurrent (or, with ``ffn_layers``, an FFN-only layer where its feed_forward_length is set:
    # Nemotron-H's MLP and MoE layers, src/models/nemotron-h.cpp load_arch_hparams)
    hybrid: bool = False
    ffn_layers: bool = False
    # Gated DeltaNet hybrids: the layers `attention.recurrent_layers` flags, else all but every
    # `full_attention_interval`-th (default 4) of the trunk are linear attention with a recurrent
    # state (src/models/qwen35moe.cpp load_arch_hparams); NextN blocks are full attention
    recurrent_interval: bool = False
    # graph nodes a recurrent layer runs beyond the model's own attention layer (a recurrent
    # architecture's: beyond a llama layer's, cost.LAYER_OPS), from the engine's `sched_reserve:
    # graph: nodes = N` over models that differ in their layer mix: its decode costs that many more
    # kernels on a GPU and thread barriers on the CPU
    recurrent_layer_ops: int = 0
    # graph nodes every layer runs beyond a llama layer's (cost.LAYER_OPS), the engine's count as
    # above: Gemma's norms around attention and FFN; Gemma 3n's AltUp, LAuReL and per-layer inputs
    layer_ops: int = 0
    # the last attention.shared_kv_layers layers attend to earlier layers' caches (gemma4); or all
    # but the first ``kv_layers``, a count the engine sets in code (gemma3n)
    kv_sharing: bool = False
    kv_layers: int = 0
    # Gemma 3n's AltUp: the residual stream kept as ALTUP_STREAMS copies, beside per-layer
    # embeddings PLE_WIDTH wide per layer (widths the engine fixes, src/llama-hparams.h:264-267)
    altup: bool = False
    # a recurrent layer is a short convolution of shortconv.l_cache taps (lfm2 load_arch_hparams)
    short_conv: bool = False
    # a recurrent layer is Kimi Delta Attention (kda.head_dim; kimi-linear load_arch_hparams), the
    # others MLA with DeepSeek-style MoE, which compute_graph rebuilds
    kda: bool = False
    # every layer an RWKV-7 time mix: its state two token shifts of the embedding and a
    # wkv.head_size-square matrix per head (src/llama-hparams.cpp n_embd_r / n_embd_s)
    wkv: bool = False
    # a layer may have no KV heads without being recurrent: DeciLM / Nemotron-NAS's linear attention
    # (an output projection alone) and no-op attention (src/models/deci.cpp load_arch_tensors); the
    # engine still gives it a cache, of zero-width keys (src/llama-hparams.cpp has_kv)
    kvless_layers: bool = False
    # every layer runs attention and a Mamba-2 mixer side by side, and holds a KV cache and a
    # recurrent state (Falcon-H1: src/models/falcon-h1.cpp; both memory filters take every layer,
    # src/llama-model.cpp:2688-2690)
    parallel_ssm: bool = False
    verified: bool = False

    @property
    def ssm_scan(self) -> bool:
        """A recurrent layer's mixer is Mamba's selective scan (GGML_OP_SSM_SCAN: mamba, jamba, and the
        Mamba-2 mixer of mamba2, granitehybrid, falcon-h1, nemotron_h), not RWKV's, KDA's, a short
        convolution or the gated delta rule."""
        return (self.recurrent or self.hybrid) and not (self.wkv or self.kda or self.short_conv
                                                        or self.recurrent_interval)


# The one table of architectures the memory model knows. Others with standard attention keys are
# priced with the generic GQA rules and reported as "generic" (not verified against the engine).
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec(verified=True),
    "qwen2": ArchSpec(verified=True),
    "qwen3": ArchSpec(verified=True),
    "qwen3moe": ArchSpec(verified=True),
    "qwen2moe": ArchSpec(),
    "deepseek2": ArchSpec(verified=True),
    "deepseek32": ArchSpec(verified=True),  # deepseek2 MLA + the DSA indexer's key cache
    "glm-dsa": ArchSpec(verified=True),  # deepseek32's layout, the indexer's cache on its full layers only
    "minimax-m3": ArchSpec(verified=True),  # GQA, and the MSA indexer's cache on its MoE layers
    "glm4moe": ArchSpec(verified=True),
    "gpt-oss": ArchSpec(swa_pattern=2, verified=True),
    "gemma3": ArchSpec(swa_pattern=6, layer_ops=9, verified=True),
    "gemma4": ArchSpec(kv_sharing=True, layer_ops=9, verified=True),
    # Gemma 3n: SWA four layers of five unless the header says otherwise, and a cache on the first 20
    # layers only, whatever the header (src/models/gemma3n.cpp:3-12); 100 graph nodes a layer with
    # activation sparsity (its first 10), 90 after, 78 attending to another's cache: 58 beyond a
    # llama layer over E2B's 30
    "gemma3n": ArchSpec(swa_pattern=5, kv_layers=20, altup=True, layer_ops=58, verified=True),
    # LFM2: a layer without KV heads is a gated short convolution, its state the last taps; it runs
    # 2 graph nodes fewer than the model's attention layer
    # LFM2 with a window in its header: every attention layer SWA (src/models/lfm2.cpp:26-31); not LFM2-MoE
    "lfm2": ArchSpec(hybrid=True, short_conv=True, recurrent_layer_ops=-2, swa_on_attention=True, verified=True),
    "lfm2moe": ArchSpec(hybrid=True, short_conv=True, recurrent_layer_ops=-2, verified=True),
    "gemma2": ArchSpec(swa_pattern=2, swa_window=4096, swa_without_key=True),
    "qwen3next": ArchSpec(hybrid=True, recurrent_interval=True, recurrent_layer_ops=34, verified=True),
    "qwen35": ArchSpec(hybrid=True, recurrent_interval=True, recurrent_layer_ops=26, verified=True),
    "qwen35moe": ArchSpec(hybrid=True, recurrent_interval=True, recurrent_layer_ops=26, verified=True),
    "mistral3": ArchSpec(),
    "deci": ArchSpec(kvless_layers=True, verified=True),
    # SWA patterns the engine sets where the header has no sliding_window_pattern (converters write
    # none for these): src/models/cohere2.cpp:5, afmoe.cpp:17, cohere2moe.cpp:28, laguna.cpp:39
    "cohere2": ArchSpec(swa_pattern=4),
    # windows and patterns set in code (src/models/<arch>.cpp load_arch_hparams; a header's
    # sliding_window_pattern overrides the pattern): Llama 4's chunked attention, 8192 tokens on three
    # layers of four unless the header's window is 0 (llama4.cpp:8-23; its cache sized as a
    # window's, src/llama-kv-cache-iswa.cpp:72); OLMo 3, Mellum, PLaMo 3 and SmallThinker only with
    # a window in the header (olmo2.cpp:4-15, mellum.cpp:4-17, plamo3.cpp:3-10, smallthinker.cpp:4-16,
    # the last at 4096 whatever it says); EXAONE 4.0's 64-layer 32B alone (exaone4.cpp:4-14);
    # EXAONE-MoE and Muse Glimmer with theirs (exaone-moe.cpp:2-9, muse-glimmer.cpp:3-11); Gemma 2
    # at 4096 without one (gemma2.cpp:2-10)
    "llama4": ArchSpec(swa_pattern=4, swa_window=8192, swa_window_forced=True, swa_without_key=True, verified=True),
    "olmo2": ArchSpec(swa_pattern=4, verified=True),
    "mellum": ArchSpec(swa_pattern=4),
    "plamo3": ArchSpec(swa_pattern=8),
    "smallthinker": ArchSpec(swa_pattern=4, swa_dense_first=True, swa_window=4096, swa_window_forced=True),
    "exaone4": ArchSpec(swa_pattern=4, swa_window=4096, swa_without_key=True, swa_n_layer=64),
    "exaone-moe": ArchSpec(swa_pattern=4),
    "muse-glimmer": ArchSpec(swa_pattern=4),
    "afmoe": ArchSpec(swa_pattern=4),
    "cohere2moe": ArchSpec(swa_pattern=4, swa_dense_first=True),
    "laguna": ArchSpec(swa_pattern=4, swa_dense_first=True),
    "mamba": ArchSpec(recurrent=True),
    # RWKV-7: 114 graph nodes a layer (its time mix and channel mix), 83 beyond a llama layer's
    "rwkv7": ArchSpec(recurrent=True, wkv=True, recurrent_layer_ops=83, verified=True),
    "mamba2": ArchSpec(recurrent=True, recurrent_layer_ops=19, verified=True),
    "jamba": ArchSpec(hybrid=True),
    "granitehybrid": ArchSpec(hybrid=True, recurrent_layer_ops=26, verified=True),
    # Falcon-H1: attention and a Mamba-2 mixer in every layer, 50 graph nodes beyond a llama layer's
    "falcon-h1": ArchSpec(hybrid=True, parallel_ssm=True, recurrent_layer_ops=50, verified=True),
    # Nemotron-H's Mamba-2 layers run granitehybrid's mixer (src/models/mamba-base.cpp build_mamba2_layer)
    "nemotron_h": ArchSpec(hybrid=True, ffn_layers=True, recurrent_layer_ops=26, verified=True),
    "nemotron_h_moe": ArchSpec(hybrid=True, ffn_layers=True, recurrent_layer_ops=26, verified=True),
    # Kimi-Linear: a layer without KV heads is Kimi Delta Attention, its state Q, K and V's conv taps
    # and a kda.head_dim-square matrix per head (src/llama-hparams.cpp n_embd_r / n_embd_s); the
    # others MLA
    "kimi-linear": ArchSpec(hybrid=True, recurrent_layer_ops=58, kda=True, verified=True),
}
# MLA with the DSA lightning indexer's key cache on its full-indexer layers, at the full context
# (llama_kv_cache_dsa, src/llama-kv-cache-dsa.cpp:14-52; dots3note's beside its SWA layers' cache,
# src/llama-kv-cache-dsa-iswa.cpp:33-75); MiniMax-M3's MSA indexer on every layer after the leading
# dense ones, its cache a GQA one of one head: a key of the indexer's width and a value of the
# model's (llama_kv_cache_msa, src/llama-kv-cache-msa.cpp:13-50; src/llama-model.cpp:2375-2395)
DSA_ARCHITECTURES = frozenset({"deepseek32", "glm-dsa", "hy_v4", "dots3note", "minimax-m3"})
# Gemma 3n's AltUp streams and per-layer embedding width, fixed by the engine (src/llama-hparams.h:264-267)
ALTUP_STREAMS, PLE_WIDTH = 4, 256
# Architectures whose memory layout is known to differ from what this module models.
NOT_COVERED = {
    "rwkv6", "arwkv7", "rwkv6qwen2",
    "t5", "t5encoder",
    "bert", "nomic-bert", "jina-bert-v2", "whisper",
    # linear-attention hybrids whose recurrent layers the header does not mark as the rules here
    # read them (src/models/minimax-01.cpp:12-16, qwen4exp.cpp:131-136; kimi-k3, glm5-next,
    # bailingmoe3: KDA layers with heads but no KV heads)
    "minimax-01", "qwen4exp", "kimi-k3", "glm5-next", "bailingmoe3",
    # DeepSeek-V4's compressed caches (src/llama-kv-cache-dsv4.cpp:1253-1329); nanbeige's looped
    # blocks, a cache per loop (src/models/nanbeige.cpp:7-31)
    "deepseek4", "nanbeige",
}


# Bounds on what a header may claim, checked once here so later code only sees usable numbers.
# The engine's own limits (llama.cpp src/llama-hparams.h) where it has them: LLAMA_MAX_LAYERS 512,
# LLAMA_MAX_EXPERTS 1024, and load_hparams GGML_ASSERTs on block_count (1..LLAMA_MAX_LAYERS),
# nextn_predict_layers (<= block_count) and expert_used_count (1..expert_count with experts, 0
# without: src/llama-model.cpp after LLM_KV_EXPERT_GROUP_USED_COUNT). The rest are generous
# sanity limits, ~50x the largest released model, so 2^64-1 cannot reach the cost model.
MAX_LAYERS = 512
MAX_EXPERTS = 1024
MAX_WIDTH = 1 << 20  # embedding, FFN and SSM widths
MAX_HEADS = 1 << 12  # attention heads per layer
MAX_HEAD_DIM = 1 << 14  # key/value/rope/indexer widths, MLA ranks
MAX_CONTEXT = 1 << 24  # training context and sliding window, in tokens
MAX_VOCAB = 1 << 24


def _bad(key: str) -> Callable[[str], GGUFFormatError]:
    def make(message: str) -> GGUFFormatError:
        return GGUFFormatError(f"metadata {message}",
                               hint=f"the header's {key} is unusable (the engine refuses such a model too); "
                               "re-download or re-convert the GGUF")
    return make


def _meta(md: dict[str, Any], key: str, default: Any = None) -> Any:
    v = md.get(key, default)
    return default if isinstance(v, LongArray) else v


def _int(md: dict[str, Any], key: str, default: int | None = None, *, lo: int = 0, hi: int) -> int:
    """A scalar integer key in ``[lo, hi]`` (``default`` when absent; missing and no default:
    UnsupportedModelError)."""
    v = _meta(md, key, default)
    if v is None:
        raise UnsupportedModelError(f"metadata key {key!r} is missing", hint="the GGUF is incomplete or too old")
    return integer(v, key, lo=lo, hi=hi, error=_bad(key))


def _swa_width(md: dict[str, Any], key: str, full: int, swa: bool) -> int:
    """An SWA layer's head width: ``key`` where the header gives it (at least 1 where layers are
    SWA: the engine would make empty K/V projections), else the full layers' ``full``."""
    return _int(md, key, lo=int(swa), hi=MAX_HEAD_DIM) if key in md else full


def _per_layer(md: dict[str, Any], key: str, n: int, default: int | None, *, hi: int) -> tuple[int, ...]:
    """A key the engine reads with get_key_or_arr: one integer for every layer, or one each."""
    v = _meta(md, key, default)
    if isinstance(v, list):
        if len(v) != n:
            raise GGUFFormatError(f"metadata {key} has {len(v)} entries, the model has {n} layers",
                                  hint=f"the header's {key} is unusable; re-download or re-convert the GGUF")
        return tuple(integer(x, f"{key}[{il}]", lo=0, hi=hi, error=_bad(key)) for il, x in enumerate(v))
    return (_int(md, key, default, hi=hi),) * n


def arch_spec(arch: str) -> ArchSpec:
    """``arch``'s entry in :data:`ARCHITECTURES`; the generic rules' (a default ArchSpec) where it has none."""
    return ARCHITECTURES.get(arch, ArchSpec())


def is_recurrent_layer(arch: str, hp: HParams, il: int) -> bool:
    """Whether layer ``il`` of ``arch`` holds a recurrent state (instead of a KV cache, or beside one:
    ``ArchSpec.parallel_ssm``), by the engine's rule: every trunk layer of a recurrent or parallel
    architecture, a hybrid's layers without KV heads (Nemotron-H's: and without an FFN)."""
    spec = arch_spec(arch)
    ffn_only = spec.ffn_layers and hp.n_ff[il] > 0
    return il < hp.n_layer_kv and (spec.recurrent or spec.parallel_ssm
                                   or (hp.n_head_kv[il] == 0 and hp.ssm_d_inner > 0 and not ffn_only))


def _sliding_window(md: dict[str, Any], a: str, spec: ArchSpec, n_main: int) -> int:
    """The window the engine runs ``a``'s SWA layers at, 0 for none: the header's
    attention.sliding_window, or the one the architecture sets in code (:class:`ArchSpec`)."""
    key = f"{a}.attention.sliding_window"
    if spec.swa_n_layer and n_main != spec.swa_n_layer:
        return 0
    if key not in md:
        return spec.swa_window if spec.swa_without_key else 0
    n_swa = _int(md, key, 0, hi=MAX_CONTEXT)
    return spec.swa_window if n_swa and spec.swa_window_forced else n_swa


def _flags(md: dict[str, Any], key: str, n: int) -> tuple[bool, ...] | None:
    """A per-layer flag array (BOOL as converters write it, or 0/1 integers), its first ``n``
    entries; None when the key is absent or not an array."""
    v = md.get(key)
    if not isinstance(v, list):
        return None
    if len(v) < n:
        raise GGUFFormatError(f"metadata {key} has {len(v)} entries, need {n}",
                              hint=f"the header's {key} is unusable; re-download or re-convert the GGUF")
    return tuple(bool(integer(int(x) if isinstance(x, bool) else x, f"{key}[{il}]", lo=0, hi=1, error=_bad(key)))
                 for il, x in enumerate(v[:n]))


# GLM-5.2's indexer types where its header has none: layers 0, 1 and every fourth from 2 run a full
# indexer (src/models/glm-dsa.cpp:5-26 GLM_5_2_DEFAULT_INDEXER_TYPES, 78 entries)
_GLM_5_2_INDEXER_LAYERS = 78


def _indexer_full(md: dict[str, Any], a: str, n_main: int, n_ctx_train: int) -> tuple[bool, ...]:
    """The trunk layers that cache a DSA indexer key: every one of deepseek32; else the header's
    ``attention.indexer.types`` (one value or one per trunk layer, nonzero: full; the engine's
    get_key_or_arr); without it glm-dsa's defaults (src/models/glm-dsa.cpp load_arch_hparams: GLM 5 /
    5.1 all, a 1 Mi training context GLM-5.2's pattern) and none for the others (hy_v4 needs the key
    or is a full-attention checkpoint without an indexer, indexer.top_k 0: src/models/hy-v4.cpp:45-59,
    src/llama-model.cpp:2494-2534; dots3note requires it: src/models/dots3note.cpp:40)."""
    key = f"{a}.attention.indexer.types"
    if a == "deepseek32":
        return (True,) * n_main
    if a == "minimax-m3":
        lead = _int(md, f"{a}.leading_dense_block_count", 0, hi=n_main)
        return tuple(il >= lead for il in range(n_main))
    if a == "hy_v4" and not _int(md, f"{a}.attention.indexer.top_k", 0, hi=MAX_CONTEXT):
        return (False,) * n_main
    if key in md:
        return tuple(bool(t) for t in _per_layer(md, key, n_main, None, hi=(1 << 32) - 1))
    if a == "glm-dsa":
        if n_ctx_train < 1048576:
            return (True,) * n_main
        return tuple(il < _GLM_5_2_INDEXER_LAYERS and (il < 2 or (il - 2) % 4 == 0) for il in range(n_main))
    return (False,) * n_main


def _recurrent_layers(md: dict[str, Any], a: str, n_layer: int, n_nextn: int) -> tuple[bool, ...]:
    """Which layers of a Gated DeltaNet hybrid are recurrent: ``attention.recurrent_layers``, else
    all but every ``full_attention_interval``-th of the trunk (NextN blocks never)."""
    n_main = n_layer - n_nextn
    flags = _flags(md, f"{a}.attention.recurrent_layers", n_layer)
    if flags is not None:
        return tuple(f and il < n_main for il, f in enumerate(flags))
    interval = _int(md, f"{a}.full_attention_interval", 4, lo=1, hi=MAX_LAYERS)
    return tuple(il < n_main and (il + 1) % interval != 0 for il in range(n_layer))


def read_hparams(arch: str, md: dict[str, Any], n_vocab_fallback: int) -> HParams:
    """The hyper-parameters of ``arch`` from GGUF metadata, every value checked for type and
    range (GGUFFormatError naming the key and value; UnsupportedModelError for a missing key)."""
    a = arch
    n_layer = _int(md, f"{a}.block_count", lo=1, hi=MAX_LAYERS)
    n_nextn = _int(md, f"{a}.nextn_predict_layers", 0, hi=n_layer - 1)
    n_embd = _int(md, f"{a}.embedding_length", lo=1, hi=MAX_WIDTH)
    n_head = _per_layer(md, f"{a}.attention.head_count", n_layer, 0, hi=MAX_HEADS)
    n_head_kv = _per_layer(md, f"{a}.attention.head_count_kv", n_layer, max(n_head), hi=MAX_HEADS)
    spec = arch_spec(arch)
    # llama.cpp requires heads of every attention model
    if not max(n_head) and a not in NOT_COVERED and not spec.recurrent:
        raise _bad(f"{a}.attention.head_count")(f"{a}.attention.head_count is missing or 0 in every layer")
    for il, (h, h_kv) in enumerate(zip(n_head, n_head_kv)):
        if h and h_kv > h:  # the engine's n_gqa() = n_head / n_head_kv would be 0
            raise _bad(f"{a}.attention.head_count_kv")(
                f"{a}.attention.head_count_kv = {h_kv} exceeds head_count = {h} in layer {il}")
        if h and not h_kv and not (spec.hybrid or spec.recurrent or spec.kvless_layers) and a not in NOT_COVERED:
            raise _bad(f"{a}.attention.head_count_kv")(  # only hybrids and deci have layers without KV heads
                f"{a}.attention.head_count_kv = 0 in layer {il} (head_count {h}): {a} has no recurrent layers")
    if spec.recurrent_interval:  # a recurrent layer's head_count_kv is 0, as hybrids' own arrays have it
        recurrent = _recurrent_layers(md, a, n_layer, n_nextn)
        n_head_kv = tuple(0 if r else h for r, h in zip(recurrent, n_head_kv))
    h0 = max(n_head)
    head_dim_k = _int(md, f"{a}.attention.key_length", n_embd // h0 if h0 else 0, hi=MAX_HEAD_DIM)
    head_dim_v = _int(md, f"{a}.attention.value_length", n_embd // h0 if h0 else 0, hi=MAX_HEAD_DIM)
    k_mla = _int(md, f"{a}.attention.key_length_mla", 0, hi=MAX_HEAD_DIM)
    v_mla = _int(md, f"{a}.attention.value_length_mla", 0, hi=MAX_HEAD_DIM)
    n_vocab = _int(md, f"{a}.vocab_size", 0, hi=MAX_VOCAB) or integer(
        n_vocab_fallback, "tokenizer.ggml.tokens length", lo=0, hi=MAX_VOCAB, error=_bad("tokenizer.ggml.tokens"))
    n_expert = _int(md, f"{a}.expert_count", 0, hi=MAX_EXPERTS)
    used = _per_layer(md, f"{a}.expert_used_count", n_layer, 0, hi=MAX_EXPERTS)
    n_expert_used = max(used)
    if n_expert and not 1 <= n_expert_used <= n_expert or not n_expert and n_expert_used:
        raise _bad(f"{a}.expert_used_count")(
            f"{a}.expert_used_count = {n_expert_used} with expert_count = {n_expert}: the engine needs "
            + ("1..expert_count experts per token" if n_expert else "0 without experts"))
    n_shared = (max(n_layer - spec.kv_layers, 0) if spec.kv_layers else
                _int(md, f"{a}.attention.shared_kv_layers", 0, hi=max(n_layer - 2, 0)) if spec.kv_sharing else 0)
    shortconv = _int(md, f"{a}.shortconv.l_cache", 0, hi=MAX_HEAD_DIM) if spec.short_conv else 0
    # KDA as the Mamba-2 fields put it: d_inner = heads x head_dim, one group of head_dim per head (conv
    # channels 3 d_inner: Q, K and V), a head_dim x d_inner state
    kda = _int(md, f"{a}.kda.head_dim", lo=1, hi=MAX_HEAD_DIM) if spec.kda else 0
    # RWKV's the same way: token_shift_count shifts of the embedding as the conv taps, a head_size x
    # n_embd state
    wkv = _int(md, f"{a}.wkv.head_size", lo=1, hi=MAX_HEAD_DIM) if spec.wkv else 0
    shifts = _int(md, f"{a}.token_shift_count", 2, lo=2, hi=2) if spec.wkv else 0  # asserted: src/models/rwkv7.cpp:126
    n_main = n_layer - n_nextn
    n_swa = _sliding_window(md, a, spec, n_main)
    pattern = md.get(f"{a}.attention.sliding_window_pattern")
    swa_flags = _flags(md, f"{a}.attention.sliding_window_pattern", n_main)
    if spec.swa_on_attention:
        is_swa = tuple(bool(n_swa) and h > 0 for h in n_head_kv)
    elif swa_flags is not None and n_swa:  # without a window the engine leaves SWA off (swa_type NONE)
        is_swa = swa_flags + (False,) * n_nextn
    else:
        n_pat = (spec.swa_pattern if pattern is None or isinstance(pattern, LongArray) else
                 _int(md, f"{a}.attention.sliding_window_pattern", hi=MAX_LAYERS))
        if n_swa and n_pat:
            if spec.swa_dense_first:
                is_swa = tuple(il % n_pat != 0 for il in range(n_main))
            else:
                is_swa = tuple(il % n_pat < n_pat - 1 for il in range(n_main))
            is_swa += (False,) * n_nextn
        else:
            is_swa = (False,) * n_layer
    indexer_full = (_indexer_full(md, a, n_main, _int(md, f"{a}.context_length", 0, hi=MAX_CONTEXT))
                    if arch in DSA_ARCHITECTURES else ())
    hp = HParams(
        n_layer=n_layer,
        n_layer_nextn=n_nextn,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        n_vocab=n_vocab,
        n_ctx_train=_int(md, f"{a}.context_length", 0, hi=MAX_CONTEXT),
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        n_ff=_per_layer(md, f"{a}.feed_forward_length", n_layer, 0, hi=MAX_WIDTH),
        n_ff_exp=_int(md, f"{a}.expert_feed_forward_length", 0, hi=MAX_WIDTH),
        n_layer_dense_lead=_int(md, f"{a}.leading_dense_block_count", 0, hi=n_layer),
        is_mla=bool(k_mla and v_mla),
        kv_lora_rank=_int(md, f"{a}.attention.kv_lora_rank", 0, hi=MAX_HEAD_DIM),
        n_rot=_int(md, f"{a}.rope.dimension_count", head_dim_k, hi=MAX_HEAD_DIM),
        n_swa=n_swa,
        is_swa=is_swa,
        # LFM2's short convolution: a conv state of (l_cache - 1) taps of n_embd channels, no SSM state
        # (src/llama-hparams.cpp n_embd_r)
        ssm_d_conv=shifts + 1 if wkv else shortconv or _int(md, f"{a}.ssm.conv_kernel", 0, hi=MAX_HEAD_DIM),
        ssm_d_inner=(n_embd if shortconv or wkv else kda * max(n_head) if kda
                     else _int(md, f"{a}.ssm.inner_size", 0, hi=MAX_WIDTH)),
        ssm_d_state=kda or wkv or _int(md, f"{a}.ssm.state_size", 0, hi=MAX_HEAD_DIM),
        ssm_n_group=max(n_head) if kda else _int(md, f"{a}.ssm.group_count", 0, hi=MAX_HEADS),
        ssm_n_head=_int(md, f"{a}.ssm.time_step_rank", 0, hi=MAX_WIDTH),
        indexer_head_size=_int(md, f"{a}.attention.indexer.key_length", 0, hi=MAX_HEAD_DIM) if any(indexer_full) else 0,
        indexer_full=indexer_full,
        head_dim_k_swa=_swa_width(md, f"{a}.attention.key_length_swa", head_dim_k, any(is_swa)),
        head_dim_v_swa=_swa_width(md, f"{a}.attention.value_length_swa", head_dim_v, any(is_swa)),
        n_layer_kv_shared=n_shared,
    )
    for il in range(n_layer - n_shared, n_layer):  # the engine finds the reused layer in its kind's cache
        if is_swa[hp.kv_source(il)] != is_swa[il]:
            raise _bad(f"{a}.attention.shared_kv_layers")(
                f"{a}.attention.shared_kv_layers = {n_shared}: shared layer {il} would reuse layer {hp.kv_source(il)}, "
                "a layer of the other attention kind (the engine asserts on it)")
    return hp


__all__ = ["ALTUP_STREAMS", "ARCHITECTURES", "DSA_ARCHITECTURES", "MAX_CONTEXT", "MAX_EXPERTS", "MAX_LAYERS",
           "NOT_COVERED", "PLE_WIDTH", "ArchSpec", "HParams", "arch_spec", "is_recurrent_layer",
           "read_hparams"]
