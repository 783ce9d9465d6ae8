"""Identify the loaded libllama build and bind the struct layouts it really uses.

libllama's soname says nothing (it is ``.so.0`` for every 0.x release) and two structs are passed
*by value* (``llama_model_params``, ``llama_context_params``): passing a struct of the wrong size or
field order corrupts the call silently. So, after loading:

1. refuse ik_llama.cpp (a different ABI without the ggml device API);
2. read ``llama_version()``, ``ggml_version()``, ``ggml_commit()`` and probe optional symbols;
3. call ``llama_model_default_params()`` / ``llama_context_default_params()`` with an *oversized*
   return buffer (the structs are returned through a hidden pointer, so a bigger buffer is safe)
   and check the library's known default values at the offsets each candidate layout predicts;
4. bind the first layout whose defaults all match, or raise :class:`LibLlamaVersionError`.

Layouts verified against ``include/llama.h`` (x86-64 SysV; enums are C ``int``, ``bool`` 1 byte):

- ``mainline-80/160``: llama.cpp b11434 and the llama.cpp vendored by llama-cpp-python 0.3.36
  (``llama_version()`` "0.5.0-dev", ggml 0.25.3): model params 80 B, context params 160 B.
- ``moe-cache-80/168``: llama.cpp b11739 (prebuilt ``llama_cpp_py_sync`` wheel): identical model
  params; ``size_t moe_cache_size`` inserted after ``type_v`` (context params 168 B). Taken from that
  build's cffi declarations; recognised by the ``llama_moe_cache`` symbols.
"""
from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import LibLlamaVersionError
from ._loader import LoadedLibrary

# ---------------------------------------------------------------------------------------------
# Structs whose layout has been stable across the supported builds
# ---------------------------------------------------------------------------------------------


# struct llama_model_tensor_buft_override {
#     const char * pattern;
#     ggml_backend_buffer_type_t buft;
# };
class llama_model_tensor_buft_override(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]

    if TYPE_CHECKING:
        pattern: bytes | None
        buft: int | None


# struct ggml_backend_dev_caps { bool async, host_buffer, buffer_from_host_ptr, events, mmap_support; };
class ggml_backend_dev_caps(ctypes.Structure):
    _fields_ = [
        ("async_", ctypes.c_bool),
        ("host_buffer", ctypes.c_bool),
        ("buffer_from_host_ptr", ctypes.c_bool),
        ("events", ctypes.c_bool),
        ("mmap_support", ctypes.c_bool),
    ]


# struct ggml_backend_dev_props {
#     const char * name; const char * description; size_t memory_free; size_t memory_total;
#     enum ggml_backend_dev_type type; const char * device_id; struct ggml_backend_dev_caps caps;
# };
class ggml_backend_dev_props(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("description", ctypes.c_char_p),
        ("memory_free", ctypes.c_size_t),
        ("memory_total", ctypes.c_size_t),
        ("type", ctypes.c_int),
        ("device_id", ctypes.c_char_p),
        ("caps", ggml_backend_dev_caps),
    ]


# typedef struct llama_batch {
#     int32_t n_tokens;
#     llama_token * token; float * embd; llama_pos * pos; int32_t * n_seq_id;
#     llama_seq_id ** seq_id; int8_t * logits;
# } llama_batch;
class llama_batch(ctypes.Structure):
    _fields_ = [
        ("n_tokens", ctypes.c_int32),
        ("token", ctypes.POINTER(ctypes.c_int32)),
        ("embd", ctypes.POINTER(ctypes.c_float)),
        ("pos", ctypes.POINTER(ctypes.c_int32)),
        ("n_seq_id", ctypes.POINTER(ctypes.c_int32)),
        ("seq_id", ctypes.POINTER(ctypes.POINTER(ctypes.c_int32))),
        ("logits", ctypes.POINTER(ctypes.c_int8)),
    ]


# ---------------------------------------------------------------------------------------------
# Version-specific layouts
# ---------------------------------------------------------------------------------------------

_P = ctypes.c_void_p


# struct llama_model_params {            // b11434, b11739, llama-cpp-python 0.3.36: 80 bytes
#     ggml_backend_dev_t * devices;                                   // @0  NULL-terminated
#     const struct llama_model_tensor_buft_override * tensor_buft_overrides;  // @8
#     int32_t n_gpu_layers;                                           // @16 (<0 = all)
#     enum llama_split_mode split_mode;                               // @20
#     enum llama_load_mode  load_mode;                                // @24 (AUTO=-1)
#     enum llama_lazy_mode  lazy_mode;                                // @28
#     int32_t main_gpu;                                               // @32
#     const float * tensor_split;                                     // @40 (llama_max_devices() floats)
#     llama_progress_callback progress_callback; void * progress_callback_user_data;  // @48 @56
#     const struct llama_model_kv_override * kv_overrides;            // @64
#     bool vocab_only, check_tensors, use_extra_bufts, no_host, no_alloc, load_mtp;   // @72..77
# };
class llama_model_params_mainline(ctypes.Structure):
    _fields_ = [
        ("devices", _P),
        ("tensor_buft_overrides", _P),
        ("n_gpu_layers", ctypes.c_int32),
        ("split_mode", ctypes.c_int),
        ("load_mode", ctypes.c_int),
        ("lazy_mode", ctypes.c_int),
        ("main_gpu", ctypes.c_int32),
        ("tensor_split", _P),
        ("progress_callback", _P),
        ("progress_callback_user_data", _P),
        ("kv_overrides", _P),
        ("vocab_only", ctypes.c_bool),
        ("check_tensors", ctypes.c_bool),
        ("use_extra_bufts", ctypes.c_bool),
        ("no_host", ctypes.c_bool),
        ("no_alloc", ctypes.c_bool),
        ("load_mtp", ctypes.c_bool),
    ]

    if TYPE_CHECKING:
        devices: int | None
        tensor_buft_overrides: int | None
        n_gpu_layers: int
        split_mode: int
        load_mode: int
        lazy_mode: int
        main_gpu: int
        tensor_split: int | None
        progress_callback: int | None
        progress_callback_user_data: int | None
        kv_overrides: int | None
        vocab_only: bool
        check_tensors: bool
        use_extra_bufts: bool
        no_host: bool
        no_alloc: bool
        load_mtp: bool


_CONTEXT_HEAD: list[tuple[str, Any]] = [
    # uint32_t n_ctx @0, n_batch @4, n_ubatch @8, n_seq_max @12, n_rs_seq @16,
    #          n_outputs_max @20, n_outputs_max_per_seq @24; int32_t n_threads @28, n_threads_batch @32;
    ("n_ctx", ctypes.c_uint32),
    ("n_batch", ctypes.c_uint32),
    ("n_ubatch", ctypes.c_uint32),
    ("n_seq_max", ctypes.c_uint32),
    ("n_rs_seq", ctypes.c_uint32),
    ("n_outputs_max", ctypes.c_uint32),
    ("n_outputs_max_per_seq", ctypes.c_uint32),
    ("n_threads", ctypes.c_int32),
    ("n_threads_batch", ctypes.c_int32),
    # enum ctx_type @36, rope_scaling_type @40, pooling_type @44, attention_type @48, flash_attn_type @52
    ("ctx_type", ctypes.c_int),
    ("rope_scaling_type", ctypes.c_int),
    ("pooling_type", ctypes.c_int),
    ("attention_type", ctypes.c_int),
    ("flash_attn_type", ctypes.c_int),
    # float rope_freq_base @56 ... yarn_beta_slow @76; uint32_t yarn_orig_ctx @80; float defrag_thold @84
    ("rope_freq_base", ctypes.c_float),
    ("rope_freq_scale", ctypes.c_float),
    ("yarn_ext_factor", ctypes.c_float),
    ("yarn_attn_factor", ctypes.c_float),
    ("yarn_beta_fast", ctypes.c_float),
    ("yarn_beta_slow", ctypes.c_float),
    ("yarn_orig_ctx", ctypes.c_uint32),
    ("defrag_thold", ctypes.c_float),
    # ggml_backend_sched_eval_callback cb_eval @88; void * cb_eval_user_data @96
    ("cb_eval", _P),
    ("cb_eval_user_data", _P),
    # enum ggml_type type_k @104, type_v @108
    ("type_k", ctypes.c_int),
    ("type_v", ctypes.c_int),
]
_CONTEXT_TAIL: list[tuple[str, Any]] = [
    # ggml_abort_callback abort_callback; void * abort_callback_data;
    ("abort_callback", _P),
    ("abort_callback_data", _P),
    # bool embeddings, offload_kqv, no_perf, op_offload, swa_full, kv_unified;
    ("embeddings", ctypes.c_bool),
    ("offload_kqv", ctypes.c_bool),
    ("no_perf", ctypes.c_bool),
    ("op_offload", ctypes.c_bool),
    ("swa_full", ctypes.c_bool),
    ("kv_unified", ctypes.c_bool),
    # struct llama_sampler_seq_config * samplers; size_t n_samplers; struct llama_context * ctx_other;
    ("samplers", _P),
    ("n_samplers", ctypes.c_size_t),
    ("ctx_other", _P),
]


class _ContextParamsBase(ctypes.Structure):
    if TYPE_CHECKING:
        n_ctx: int
        n_batch: int
        n_ubatch: int
        n_seq_max: int
        n_rs_seq: int
        n_outputs_max: int
        n_outputs_max_per_seq: int
        n_threads: int
        n_threads_batch: int
        ctx_type: int
        rope_scaling_type: int
        pooling_type: int
        attention_type: int
        flash_attn_type: int
        rope_freq_base: float
        rope_freq_scale: float
        yarn_ext_factor: float
        yarn_attn_factor: float
        yarn_beta_fast: float
        yarn_beta_slow: float
        yarn_orig_ctx: int
        defrag_thold: float
        cb_eval: int | None
        cb_eval_user_data: int | None
        type_k: int
        type_v: int
        abort_callback: int | None
        abort_callback_data: int | None
        embeddings: bool
        offload_kqv: bool
        no_perf: bool
        op_offload: bool
        swa_full: bool
        kv_unified: bool
        samplers: int | None
        n_samplers: int
        ctx_other: int | None


# b11434 / llama-cpp-python 0.3.36: 160 bytes; abort_callback @112, bools @128..133, samplers @136,
# n_samplers @144, ctx_other @152.
class llama_context_params_mainline(_ContextParamsBase):
    _fields_ = _CONTEXT_HEAD + _CONTEXT_TAIL


# b11739: `size_t moe_cache_size` after type_v (@112); everything later shifts by 8 (168 bytes).
class llama_context_params_moe_cache(_ContextParamsBase):
    _fields_ = _CONTEXT_HEAD + [("moe_cache_size", ctypes.c_size_t)] + _CONTEXT_TAIL


# Library defaults (llama_model_default_params / llama_context_default_params in src/) that every
# supported layout must reproduce at its own offsets. None means a NULL pointer.
_MODEL_DEFAULTS: Mapping[str, object] = {
    "devices": None,
    "tensor_buft_overrides": None,
    "n_gpu_layers": -1,
    "split_mode": 1,  # LLAMA_SPLIT_MODE_LAYER
    "load_mode": -1,  # LLAMA_LOAD_MODE_AUTO
    "lazy_mode": 1,  # LLAMA_LAZY_MODE_AUTO
    "main_gpu": 0,
    "tensor_split": None,
    "progress_callback": None,
    "kv_overrides": None,
    "vocab_only": False,
    "check_tensors": False,
    "use_extra_bufts": True,
    "no_host": False,
    "no_alloc": False,
    "load_mtp": False,
}
_CONTEXT_DEFAULTS: Mapping[str, object] = {
    "n_ctx": 512,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_seq_max": 1,
    "n_rs_seq": 0,
    "ctx_type": 0,
    "rope_scaling_type": -1,
    "pooling_type": -1,
    "attention_type": -1,
    "flash_attn_type": -1,  # LLAMA_FLASH_ATTN_TYPE_AUTO
    "cb_eval": None,
    "type_k": 1,  # GGML_TYPE_F16
    "type_v": 1,
    "abort_callback": None,
    "embeddings": False,
    "offload_kqv": True,
    "op_offload": True,
    "swa_full": True,
    "kv_unified": False,
    "samplers": None,
    "n_samplers": 0,
    "ctx_other": None,
}


@dataclass(frozen=True)
class Layout:
    """One known pair of by-value struct layouts."""

    name: str
    model_params: type[llama_model_params_mainline]
    context_params: type[_ContextParamsBase]
    builds: str
    marker_symbol: str | None = None
    """A symbol whose presence makes this layout the first candidate."""


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "mainline-80/160",
        llama_model_params_mainline,
        llama_context_params_mainline,
        "llama.cpp b11434; llama-cpp-python 0.3.36 (llama_version 0.5.0-dev, ggml 0.25.3)",
    ),
    Layout(
        "moe-cache-80/168",
        llama_model_params_mainline,
        llama_context_params_moe_cache,
        "llama.cpp b11739 (llama_version 0.7.0-dev, ggml 0.27.0)",
        marker_symbol="_ZN15llama_moe_cacheD1Ev",
    ),
)

_PROBE_BYTES = 1024  # far larger than any known params struct (ik's context params: 240 B)


class _Oversized(ctypes.Structure):
    _fields_ = [("raw", ctypes.c_uint8 * _PROBE_BYTES)]


IK_SYMBOL = "llama_model_is_split_mode_graph"


@dataclass(frozen=True)
class BuildInfo:
    """What the loaded library is: versions, layout and optional features (JSON-serialisable)."""

    flavor: str
    llama_version: str | None
    ggml_version: str | None
    ggml_commit: str | None
    layout: str
    model_params_size: int
    context_params_size: int
    max_devices: int
    system_info: str
    library: str
    lib_dir: str | None
    source: str
    features: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for messages and report headers."""
        return (
            f"{self.flavor} llama {self.llama_version or '?'} / ggml {self.ggml_version or '?'} "
            f"({self.ggml_commit or 'unknown commit'}), layout {self.layout}, {self.library}"
        )


@dataclass(frozen=True)
class Abi:
    """The detected build and the struct types to use with it."""

    build: BuildInfo
    layout: Layout

    @property
    def model_params(self) -> type[llama_model_params_mainline]:
        return self.layout.model_params

    @property
    def context_params(self) -> type[_ContextParamsBase]:
        return self.layout.context_params


def _call_str(lib: LoadedLibrary, name: str) -> str | None:
    fn = lib.function(name)
    if fn is None:
        return None
    fn.argtypes = []
    fn.restype = ctypes.c_char_p
    value = fn()
    return value.decode("utf-8", "replace") if value is not None else None


def _oversized_defaults(lib: LoadedLibrary, name: str) -> bytes:
    fn = lib.function(name)
    if fn is None:
        raise LibLlamaVersionError(f"{lib.path} does not export {name}; it is not a llama.cpp libllama")
    fn.argtypes = []
    fn.restype = _Oversized
    return bytes(fn().raw)


def _mismatches(struct_type: type[ctypes.Structure], raw: bytes, expected: Mapping[str, object]) -> list[str]:
    """Fields whose library default differs from the expected value under ``struct_type``."""
    value = struct_type.from_buffer_copy(raw[: ctypes.sizeof(struct_type)])
    bad = []
    for name, want in expected.items():
        got = getattr(value, name)
        if got != want:
            offset = getattr(struct_type, name).offset
            bad.append(f"{name}@{offset}={got!r} (expected {want!r})")
    return bad


def _ensure_not_ik(lib: LoadedLibrary) -> None:
    if lib.has(IK_SYMBOL) or not lib.has("ggml_backend_dev_count"):
        why = f"exports {IK_SYMBOL}" if lib.has(IK_SYMBOL) else "has no ggml_backend_dev_count (no ggml device API)"
        raise LibLlamaVersionError(
            f"{lib.path} is ik_llama.cpp ({why}); ik_llama.cpp is not supported for verification "
            "(its llama_model_params/llama_context_params ABI and device API differ)",
            hint="plan for ik_llama.cpp with --engine ik_llama.cpp, but verify with a llama.cpp libllama "
            "(set OMNI_PLACE_LIBLLAMA)",
        )


def detect_build(lib: LoadedLibrary) -> Abi:
    """Identify ``lib`` and pick its struct layouts; raise LibLlamaVersionError if unknown."""
    _ensure_not_ik(lib)
    llama_version = _call_str(lib, "llama_version")
    ggml_version = _call_str(lib, "ggml_version")
    ggml_commit = _call_str(lib, "ggml_commit")
    system_info = _call_str(lib, "llama_print_system_info") or ""
    versions = (
        f"llama_version={llama_version or 'n/a'}, ggml_version={ggml_version or 'n/a'}, "
        f"ggml_commit={ggml_commit or 'n/a'}"
    )

    model_raw = _oversized_defaults(lib, "llama_model_default_params")
    context_raw = _oversized_defaults(lib, "llama_context_default_params")

    candidates = sorted(LAYOUTS, key=lambda lay: not (lay.marker_symbol and lib.has(lay.marker_symbol)))
    rejected: list[str] = []
    chosen: Layout | None = None
    for layout in candidates:
        bad = _mismatches(layout.model_params, model_raw, _MODEL_DEFAULTS)
        bad += _mismatches(layout.context_params, context_raw, _CONTEXT_DEFAULTS)
        if not bad:
            chosen = layout
            break
        rejected.append(f"{layout.name}: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}")
    if chosen is None:
        raise LibLlamaVersionError(
            f"unknown llama_model_params/llama_context_params layout in {lib.path} ({versions}); "
            f"refusing to pass structs by value. Candidates rejected: {'; '.join(rejected)}",
        )

    max_devices_fn = lib.function("llama_max_devices")
    max_devices = 0
    if max_devices_fn is not None:
        max_devices_fn.argtypes = []
        max_devices_fn.restype = ctypes.c_size_t
        max_devices = int(max_devices_fn())

    def supports(name: str) -> bool:
        fn = lib.function(name)
        if fn is None:
            return False
        fn.argtypes = []
        fn.restype = ctypes.c_bool
        return bool(fn())

    features = {
        "rpc": supports("llama_supports_rpc") and lib.has("ggml_backend_rpc_add_server"),
        "rpc_server": lib.has("ggml_backend_rpc_start_server"),
        "gpu_offload": supports("llama_supports_gpu_offload"),
        "mmap": supports("llama_supports_mmap"),
        "n_layer_nextn": lib.has("llama_model_n_layer_nextn"),
        "model_devices": lib.has("_Z21llama_model_n_devicesPK11llama_model")
        and lib.has("_Z22llama_model_get_devicePK11llama_modeli"),
        "moe_cache": lib.has("_ZN15llama_moe_cacheD1Ev"),
        "abort_callback": lib.has("ggml_set_abort_callback"),
    }
    build = BuildInfo(
        flavor="llama.cpp",
        llama_version=llama_version,
        ggml_version=ggml_version,
        ggml_commit=ggml_commit,
        layout=chosen.name,
        model_params_size=ctypes.sizeof(chosen.model_params),
        context_params_size=ctypes.sizeof(chosen.context_params),
        max_devices=max_devices,
        system_info=system_info.strip(),
        library=lib.path,
        lib_dir=lib.lib_dir,
        source=lib.source,
        features=features,
    )
    return Abi(build=build, layout=chosen)


_ABI_LOCK = threading.Lock()
_ABI_CACHE: dict[int, Abi] = {}


def get_abi(lib: LoadedLibrary) -> Abi:
    """:func:`detect_build` once per loaded library."""
    key = id(lib.llama)
    abi = _ABI_CACHE.get(key)
    if abi is None:
        with _ABI_LOCK:
            abi = _ABI_CACHE.get(key)
            if abi is None:
                abi = _ABI_CACHE[key] = detect_build(lib)
    return abi


__all__ = [
    "Abi",
    "BuildInfo",
    "LAYOUTS",
    "Layout",
    "detect_build",
    "get_abi",
    "ggml_backend_dev_props",
    "llama_batch",
    "llama_context_params_mainline",
    "llama_context_params_moe_cache",
    "llama_model_params_mainline",
    "llama_model_tensor_buft_override",
]
