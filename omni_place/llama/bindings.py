# mypy: disable-error-code="empty-body"
"""ctypes bindings to libllama / libggml / libggml-rpc, in llama-cpp-python's style.

Each binding is a stub whose C prototype is copied above it; :func:`ctypes_function` replaces the
body with the library function, resolved lazily on first call (``import`` never loads anything).
Resolution loads libllama through :func:`omni_place.llama._loader.load_libllama` and runs the ABI
check of :mod:`omni_place.llama._abi` first, so a by-value struct is only ever passed to a build
whose layout has been verified. Structs whose layout is version-specific appear in signatures as
:data:`MODEL_PARAMS` / :data:`CONTEXT_PARAMS` and are bound to the detected layout.

Optional symbols (absent in some builds) are declared with ``optional=True``; ask
``available(binding)`` before calling them. Calling a missing one raises LibLlamaVersionError.

The bottom of the module has a few intermediate helpers with Python types (device listing,
backend loading, RPC registration); everything above them is a 1:1 mirror of the C API.
"""
from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NewType, TypeVar

from ..errors import EngineError, LibLlamaVersionError
from ._abi import (
    _ContextParamsBase,
    get_abi,
    ggml_backend_dev_props,
    llama_batch,
    llama_model_params_mainline,
)
from ._loader import LoadedLibrary, load_libllama

# ---------------------------------------------------------------------------------------------
# Opaque pointers: a NewType for hints and a ctypes type for argtypes
# ---------------------------------------------------------------------------------------------
llama_model_p = NewType("llama_model_p", int)
llama_model_p_ctypes = ctypes.c_void_p
llama_context_p = NewType("llama_context_p", int)
llama_context_p_ctypes = ctypes.c_void_p
llama_memory_t = NewType("llama_memory_t", int)
llama_memory_t_ctypes = ctypes.c_void_p
ggml_backend_dev_t = NewType("ggml_backend_dev_t", int)
ggml_backend_dev_t_ctypes = ctypes.c_void_p
ggml_backend_reg_t = NewType("ggml_backend_reg_t", int)
ggml_backend_reg_t_ctypes = ctypes.c_void_p
ggml_backend_buffer_type_t = NewType("ggml_backend_buffer_type_t", int)
ggml_backend_buffer_type_t_ctypes = ctypes.c_void_p

# typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data);
ggml_log_callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
# typedef void (*ggml_abort_callback_t)(const char * error_message);
ggml_abort_callback_t = ctypes.CFUNCTYPE(None, ctypes.c_char_p)

# ---------------------------------------------------------------------------------------------
# Constants (enums are C int)
# ---------------------------------------------------------------------------------------------
# enum ggml_log_level
GGML_LOG_LEVEL_NONE = 0
GGML_LOG_LEVEL_DEBUG = 1
GGML_LOG_LEVEL_INFO = 2
GGML_LOG_LEVEL_WARN = 3
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5

# enum llama_split_mode
LLAMA_SPLIT_MODE_NONE = 0
LLAMA_SPLIT_MODE_LAYER = 1
LLAMA_SPLIT_MODE_ROW = 2
LLAMA_SPLIT_MODE_TENSOR = 3

# enum llama_load_mode
LLAMA_LOAD_MODE_AUTO = -1
LLAMA_LOAD_MODE_NONE = 0
LLAMA_LOAD_MODE_MMAP = 1
LLAMA_LOAD_MODE_MLOCK = 2
LLAMA_LOAD_MODE_MMAP_MLOCK = 3
LLAMA_LOAD_MODE_DIRECT_IO = 4
LOAD_MODE_BY_NAME: dict[str, int] = {
    "auto": LLAMA_LOAD_MODE_AUTO,
    "none": LLAMA_LOAD_MODE_NONE,
    "mmap": LLAMA_LOAD_MODE_MMAP,
    "mlock": LLAMA_LOAD_MODE_MLOCK,
    "mmap_mlock": LLAMA_LOAD_MODE_MMAP_MLOCK,
    "direct_io": LLAMA_LOAD_MODE_DIRECT_IO,
}

# enum llama_flash_attn_type
LLAMA_FLASH_ATTN_TYPE_AUTO = -1
LLAMA_FLASH_ATTN_TYPE_DISABLED = 0
LLAMA_FLASH_ATTN_TYPE_ENABLED = 1
FLASH_ATTN_BY_NAME: dict[str, int] = {
    "auto": LLAMA_FLASH_ATTN_TYPE_AUTO,
    "off": LLAMA_FLASH_ATTN_TYPE_DISABLED,
    "on": LLAMA_FLASH_ATTN_TYPE_ENABLED,
}

# enum ggml_backend_dev_type
GGML_BACKEND_DEVICE_TYPE_CPU = 0
GGML_BACKEND_DEVICE_TYPE_GPU = 1
GGML_BACKEND_DEVICE_TYPE_IGPU = 2
GGML_BACKEND_DEVICE_TYPE_ACCEL = 3
GGML_BACKEND_DEVICE_TYPE_META = 4
DEVICE_TYPE_NAMES: dict[int, str] = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}

# enum ggml_type: the KV cache types (-ctk/-ctv) and their values have one home,
# omni_place.model.KV_TYPES (gguf's GGMLQuantizationType carries ggml's enum values); the probe
# reads them there, so importing the bindings (RPC servers, the package) does not import gguf.

# ---------------------------------------------------------------------------------------------
# The decorator
# ---------------------------------------------------------------------------------------------


class _AbiType:
    """Placeholder for a struct whose layout depends on the build; resolved when binding."""

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def __repr__(self) -> str:
        return f"<layout-dependent {self.attr}>"


MODEL_PARAMS = _AbiType("model_params")
"""``struct llama_model_params`` of the detected layout."""
CONTEXT_PARAMS = _AbiType("context_params")
"""``struct llama_context_params`` of the detected layout."""

_BIND_LOCK = threading.RLock()


def _resolve_type(t: Any, lib: LoadedLibrary) -> Any:
    return getattr(get_abi(lib), t.attr) if isinstance(t, _AbiType) else t


class _Binding:
    __slots__ = ("name", "argtypes", "restype", "optional", "_fn")

    def __init__(self, name: str, argtypes: Sequence[Any], restype: Any, optional: bool) -> None:
        self.name = name
        self.argtypes = list(argtypes)
        self.restype = restype
        self.optional = optional
        self._fn: Any = None

    def resolve(self) -> Any:
        fn = self._fn
        if fn is None:
            with _BIND_LOCK:
                fn = self._fn
                if fn is None:
                    lib = load_libllama()
                    get_abi(lib)  # refuse unknown layouts / ik_llama.cpp before the first call
                    fn = lib.function(self.name)
                    if fn is None:
                        raise LibLlamaVersionError(
                            f"{lib.path} does not export {self.name}"
                            + (" (optional in some builds)" if self.optional else ""),
                        )
                    fn.argtypes = [_resolve_type(t, lib) for t in self.argtypes]
                    fn.restype = _resolve_type(self.restype, lib)
                    self._fn = fn
        return fn

    def available(self) -> bool:
        if self._fn is not None:
            return True
        return load_libllama().has(self.name)


F = TypeVar("F", bound=Callable[..., Any])


def ctypes_function(name: str, argtypes: Sequence[Any], restype: Any, *, optional: bool = False) -> Callable[[F], F]:
    """Bind the decorated stub to the C function ``name`` (resolved on first call)."""

    def decorator(stub: F) -> F:
        binding = _Binding(name, argtypes, restype, optional)

        @functools.wraps(stub)
        def wrapper(*args: Any) -> Any:
            return binding.resolve()(*args)

        wrapper.binding = binding  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def available(function: Callable[..., Any]) -> bool:
    """Whether the loaded library exports the C function behind a binding (loads libllama)."""
    binding: _Binding = function.binding  # type: ignore[attr-defined]
    return binding.available()


# ---------------------------------------------------------------------------------------------
# llama.h
# ---------------------------------------------------------------------------------------------

# LLAMA_API void llama_backend_init(void);
@ctypes_function("llama_backend_init", [], None)
def llama_backend_init() -> None:
    """Initialize the llama + ggml backend (call once at the start of the program)."""
    ...


# LLAMA_API void llama_backend_free(void);
@ctypes_function("llama_backend_free", [], None)
def llama_backend_free() -> None:
    """Free the backend (call once at the end of the program)."""
    ...


# LLAMA_API struct llama_model_params llama_model_default_params(void);
@ctypes_function("llama_model_default_params", [], MODEL_PARAMS)
def llama_model_default_params() -> llama_model_params_mainline:
    """The library's default model params (struct of the detected layout)."""
    ...


# LLAMA_API struct llama_context_params llama_context_default_params(void);
@ctypes_function("llama_context_default_params", [], CONTEXT_PARAMS)
def llama_context_default_params() -> _ContextParamsBase:
    """The library's default context params (struct of the detected layout)."""
    ...


# LLAMA_API struct llama_model * llama_model_load_from_file(
#                          const char * path_model,
#           struct llama_model_params   params);
@ctypes_function("llama_model_load_from_file", [ctypes.c_char_p, MODEL_PARAMS], llama_model_p_ctypes)
def llama_model_load_from_file(path_model: bytes, params: llama_model_params_mainline, /) -> llama_model_p | None:
    """Load a model (the first shard of a split model loads all shards). NULL on failure."""
    ...


# LLAMA_API struct llama_model * llama_model_load_from_splits(
#                          const char ** paths,
#                              size_t    n_paths,
#           struct llama_model_params    params);
@ctypes_function(
    "llama_model_load_from_splits",
    [ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t, MODEL_PARAMS],
    llama_model_p_ctypes,
)
def llama_model_load_from_splits(
    paths: Any, n_paths: int, params: llama_model_params_mainline, /
) -> llama_model_p | None:
    """Load a model from explicitly listed shard files (in order). NULL on failure."""
    ...


# LLAMA_API void llama_model_free(struct llama_model * model);
@ctypes_function("llama_model_free", [llama_model_p_ctypes], None)
def llama_model_free(model: llama_model_p, /) -> None:
    ...


# LLAMA_API struct llama_context * llama_init_from_model(
#                  struct llama_model * model,
#         struct llama_context_params   params);
@ctypes_function("llama_init_from_model", [llama_model_p_ctypes, CONTEXT_PARAMS], llama_context_p_ctypes)
def llama_init_from_model(model: llama_model_p, params: _ContextParamsBase, /) -> llama_context_p | None:
    """Create a context (KV cache, compute buffers) for a model. NULL on failure."""
    ...


# LLAMA_API void llama_free(struct llama_context * ctx);
@ctypes_function("llama_free", [llama_context_p_ctypes], None)
def llama_free(ctx: llama_context_p, /) -> None:
    ...


# LLAMA_API void llama_log_set(ggml_log_callback log_callback, void * user_data);
@ctypes_function("llama_log_set", [ggml_log_callback, ctypes.c_void_p], None)
def llama_log_set(log_callback: Any, user_data: int | None, /) -> None:
    """Route llama *and* ggml log output to ``log_callback`` (it calls ggml_log_set too).
    Keep the CFUNCTYPE object alive for as long as the library may log."""
    ...


# LLAMA_API size_t llama_max_devices(void);
@ctypes_function("llama_max_devices", [], ctypes.c_size_t)
def llama_max_devices() -> int:
    """Number of floats read from llama_model_params.tensor_split (16 in current builds)."""
    ...


# LLAMA_API size_t llama_max_tensor_buft_overrides(void);
@ctypes_function("llama_max_tensor_buft_overrides", [], ctypes.c_size_t, optional=True)
def llama_max_tensor_buft_overrides() -> int:
    ...


# LLAMA_API bool llama_supports_mmap       (void);
@ctypes_function("llama_supports_mmap", [], ctypes.c_bool)
def llama_supports_mmap() -> bool:
    ...


# LLAMA_API bool llama_supports_gpu_offload(void);
@ctypes_function("llama_supports_gpu_offload", [], ctypes.c_bool)
def llama_supports_gpu_offload() -> bool:
    ...


# LLAMA_API bool llama_supports_rpc        (void);
@ctypes_function("llama_supports_rpc", [], ctypes.c_bool)
def llama_supports_rpc() -> bool:
    ...


# LLAMA_API const char * llama_print_system_info(void);
@ctypes_function("llama_print_system_info", [], ctypes.c_char_p)
def llama_print_system_info() -> bytes:
    ...


# LLAMA_API const char * llama_version(void);
@ctypes_function("llama_version", [], ctypes.c_char_p, optional=True)
def llama_version() -> bytes:
    ...


# LLAMA_API int32_t llama_model_n_layer      (const struct llama_model * model);
@ctypes_function("llama_model_n_layer", [llama_model_p_ctypes], ctypes.c_int32)
def llama_model_n_layer(model: llama_model_p, /) -> int:
    """Repeating layers *without* NextN/MTP blocks (n_layer_all - n_layer_nextn)."""
    ...


# LLAMA_API int32_t llama_model_n_layer_nextn(const struct llama_model * model);
@ctypes_function("llama_model_n_layer_nextn", [llama_model_p_ctypes], ctypes.c_int32, optional=True)
def llama_model_n_layer_nextn(model: llama_model_p, /) -> int:
    """NextN/MTP blocks; they take layer slots too (slots = n_layer + n_layer_nextn + 1)."""
    ...


# LLAMA_API int32_t llama_model_n_embd       (const struct llama_model * model);
@ctypes_function("llama_model_n_embd", [llama_model_p_ctypes], ctypes.c_int32)
def llama_model_n_embd(model: llama_model_p, /) -> int:
    ...


# LLAMA_API int32_t llama_model_n_head       (const struct llama_model * model);
@ctypes_function("llama_model_n_head", [llama_model_p_ctypes], ctypes.c_int32)
def llama_model_n_head(model: llama_model_p, /) -> int:
    ...


# LLAMA_API int32_t llama_model_n_head_kv    (const struct llama_model * model);
@ctypes_function("llama_model_n_head_kv", [llama_model_p_ctypes], ctypes.c_int32)
def llama_model_n_head_kv(model: llama_model_p, /) -> int:
    ...


# LLAMA_API int32_t llama_model_n_ctx_train  (const struct llama_model * model);
@ctypes_function("llama_model_n_ctx_train", [llama_model_p_ctypes], ctypes.c_int32)
def llama_model_n_ctx_train(model: llama_model_p, /) -> int:
    ...


# LLAMA_API uint64_t llama_model_size(const struct llama_model * model);
@ctypes_function("llama_model_size", [llama_model_p_ctypes], ctypes.c_uint64)
def llama_model_size(model: llama_model_p, /) -> int:
    """Total bytes of all tensors in the model."""
    ...


# LLAMA_API uint64_t llama_model_n_params(const struct llama_model * model);
@ctypes_function("llama_model_n_params", [llama_model_p_ctypes], ctypes.c_uint64)
def llama_model_n_params(model: llama_model_p, /) -> int:
    ...


# LLAMA_API int32_t llama_model_meta_val_str(const struct llama_model * model, const char * key,
#                                            char * buf, size_t buf_size);
@ctypes_function(
    "llama_model_meta_val_str",
    [llama_model_p_ctypes, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t],
    ctypes.c_int32,
)
def llama_model_meta_val_str(model: llama_model_p, key: bytes, buf: Any, buf_size: int, /) -> int:
    """Metadata value as a string; returns its length, or -1 if the key is absent."""
    ...


# LLAMA_API int32_t llama_model_meta_count(const struct llama_model * model);
@ctypes_function("llama_model_meta_count", [llama_model_p_ctypes], ctypes.c_int32)
def llama_model_meta_count(model: llama_model_p, /) -> int:
    ...


# LLAMA_API int32_t llama_model_meta_key_by_index(const struct llama_model * model, int32_t i,
#                                                 char * buf, size_t buf_size);
@ctypes_function(
    "llama_model_meta_key_by_index",
    [llama_model_p_ctypes, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t],
    ctypes.c_int32,
)
def llama_model_meta_key_by_index(model: llama_model_p, i: int, buf: Any, buf_size: int, /) -> int:
    ...


# LLAMA_API int32_t llama_model_meta_val_str_by_index(const struct llama_model * model, int32_t i,
#                                                     char * buf, size_t buf_size);
@ctypes_function(
    "llama_model_meta_val_str_by_index",
    [llama_model_p_ctypes, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t],
    ctypes.c_int32,
)
def llama_model_meta_val_str_by_index(model: llama_model_p, i: int, buf: Any, buf_size: int, /) -> int:
    ...


# C++ (mangled, but plain C types): int32_t llama_model_n_devices(const struct llama_model * model);
@ctypes_function("_Z21llama_model_n_devicesPK11llama_model", [llama_model_p_ctypes], ctypes.c_int32, optional=True)
def llama_model_n_devices(model: llama_model_p, /) -> int:
    """Number of devices the model uses (excluding the CPU)."""
    ...


# C++ (mangled): ggml_backend_dev_t llama_model_get_device(const struct llama_model * model, int i);
@ctypes_function(
    "_Z22llama_model_get_devicePK11llama_modeli",
    [llama_model_p_ctypes, ctypes.c_int],
    ggml_backend_dev_t_ctypes,
    optional=True,
)
def llama_model_get_device(model: llama_model_p, i: int, /) -> ggml_backend_dev_t | None:
    """The i-th model device, in the order tensor_split indexes."""
    ...


# LLAMA_API uint32_t llama_n_ctx      (const struct llama_context * ctx);
@ctypes_function("llama_n_ctx", [llama_context_p_ctypes], ctypes.c_uint32)
def llama_n_ctx(ctx: llama_context_p, /) -> int:
    ...


# LLAMA_API uint32_t llama_n_batch    (const struct llama_context * ctx);
@ctypes_function("llama_n_batch", [llama_context_p_ctypes], ctypes.c_uint32)
def llama_n_batch(ctx: llama_context_p, /) -> int:
    ...


# LLAMA_API uint32_t llama_n_ubatch   (const struct llama_context * ctx);
@ctypes_function("llama_n_ubatch", [llama_context_p_ctypes], ctypes.c_uint32)
def llama_n_ubatch(ctx: llama_context_p, /) -> int:
    ...


# LLAMA_API uint32_t llama_n_seq_max  (const struct llama_context * ctx);
@ctypes_function("llama_n_seq_max", [llama_context_p_ctypes], ctypes.c_uint32)
def llama_n_seq_max(ctx: llama_context_p, /) -> int:
    ...


# LLAMA_API llama_memory_t llama_get_memory(const struct llama_context * ctx);
@ctypes_function("llama_get_memory", [llama_context_p_ctypes], llama_memory_t_ctypes)
def llama_get_memory(ctx: llama_context_p, /) -> llama_memory_t | None:
    ...


# LLAMA_API void llama_memory_clear(llama_memory_t mem, bool data);
@ctypes_function("llama_memory_clear", [llama_memory_t_ctypes, ctypes.c_bool], None)
def llama_memory_clear(mem: llama_memory_t, data: bool, /) -> None:
    """Clear the KV cache / recurrent state (``data``: also zero the buffers)."""
    ...


# LLAMA_API struct llama_batch llama_batch_get_one(
#               llama_token * tokens,
#                   int32_t   n_tokens);
@ctypes_function("llama_batch_get_one", [ctypes.POINTER(ctypes.c_int32), ctypes.c_int32], llama_batch)
def llama_batch_get_one(tokens: Any, n_tokens: int, /) -> llama_batch:
    """A single-sequence batch over ``tokens`` (the array must outlive the decode)."""
    ...


# LLAMA_API int32_t llama_decode(
#         struct llama_context * ctx,
#           struct llama_batch   batch);
@ctypes_function("llama_decode", [llama_context_p_ctypes, llama_batch], ctypes.c_int32)
def llama_decode(ctx: llama_context_p, batch: llama_batch, /) -> int:
    """0 on success, 1 if no KV slot was found, 2 aborted, -1 invalid input, < -1 error."""
    ...


# LLAMA_API void llama_synchronize(struct llama_context * ctx);
@ctypes_function("llama_synchronize", [llama_context_p_ctypes], None)
def llama_synchronize(ctx: llama_context_p, /) -> None:
    """Wait until all computations of ``ctx`` have finished (for timing)."""
    ...


# ---------------------------------------------------------------------------------------------
# ggml.h / ggml-backend.h / ggml-cpu.h
# ---------------------------------------------------------------------------------------------

# GGML_API const char * ggml_version(void);
@ctypes_function("ggml_version", [], ctypes.c_char_p, optional=True)
def ggml_version() -> bytes:
    ...


# GGML_API const char * ggml_commit(void);
@ctypes_function("ggml_commit", [], ctypes.c_char_p, optional=True)
def ggml_commit() -> bytes:
    ...


# GGML_API ggml_abort_callback_t ggml_set_abort_callback(ggml_abort_callback_t callback);
@ctypes_function("ggml_set_abort_callback", [ggml_abort_callback_t], ctypes.c_void_p, optional=True)
def ggml_set_abort_callback(callback: Any, /) -> int | None:
    """Called with the message before GGML_ABORT aborts the process; returns the old callback."""
    ...


# GGML_API void ggml_backend_load_all(void);
@ctypes_function("ggml_backend_load_all", [], None, optional=True)
def ggml_backend_load_all() -> None:
    """Load dynamically built backends (GGML_BACKEND_DL builds) from the default paths."""
    ...


# GGML_API void ggml_backend_load_all_from_path(const char * dir_path);
@ctypes_function("ggml_backend_load_all_from_path", [ctypes.c_char_p], None, optional=True)
def ggml_backend_load_all_from_path(dir_path: bytes | None, /) -> None:
    ...


# GGML_API size_t ggml_backend_dev_count(void);
@ctypes_function("ggml_backend_dev_count", [], ctypes.c_size_t)
def ggml_backend_dev_count() -> int:
    ...


# GGML_API ggml_backend_dev_t ggml_backend_dev_get(size_t index);
@ctypes_function("ggml_backend_dev_get", [ctypes.c_size_t], ggml_backend_dev_t_ctypes)
def ggml_backend_dev_get(index: int, /) -> ggml_backend_dev_t | None:
    ...


# GGML_API ggml_backend_dev_t ggml_backend_dev_by_name(const char * name);
@ctypes_function("ggml_backend_dev_by_name", [ctypes.c_char_p], ggml_backend_dev_t_ctypes)
def ggml_backend_dev_by_name(name: bytes, /) -> ggml_backend_dev_t | None:
    """Case-insensitive lookup by device name (e.g. b"CUDA0", b"RPC1"); NULL when absent."""
    ...


# GGML_API ggml_backend_dev_t ggml_backend_dev_by_type(enum ggml_backend_dev_type type);
@ctypes_function("ggml_backend_dev_by_type", [ctypes.c_int], ggml_backend_dev_t_ctypes)
def ggml_backend_dev_by_type(type_: int, /) -> ggml_backend_dev_t | None:
    ...


# GGML_API const char * ggml_backend_dev_name(ggml_backend_dev_t device);
@ctypes_function("ggml_backend_dev_name", [ggml_backend_dev_t_ctypes], ctypes.c_char_p)
def ggml_backend_dev_name(device: ggml_backend_dev_t, /) -> bytes:
    ...


# GGML_API const char * ggml_backend_dev_description(ggml_backend_dev_t device);
@ctypes_function("ggml_backend_dev_description", [ggml_backend_dev_t_ctypes], ctypes.c_char_p)
def ggml_backend_dev_description(device: ggml_backend_dev_t, /) -> bytes:
    """Model name for GPUs; the ``host:port`` endpoint for RPC devices."""
    ...


# GGML_API enum ggml_backend_dev_type ggml_backend_dev_type(ggml_backend_dev_t device);
@ctypes_function("ggml_backend_dev_type", [ggml_backend_dev_t_ctypes], ctypes.c_int)
def ggml_backend_dev_type(device: ggml_backend_dev_t, /) -> int:
    ...


# GGML_API void ggml_backend_dev_memory(ggml_backend_dev_t device, size_t * free, size_t * total);
@ctypes_function(
    "ggml_backend_dev_memory",
    [ggml_backend_dev_t_ctypes, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
    None,
)
def ggml_backend_dev_memory(device: ggml_backend_dev_t, free: Any, total: Any, /) -> None:
    """Current free and total memory in bytes (pass ctypes.byref(c_size_t()))."""
    ...


# GGML_API void ggml_backend_dev_get_props(ggml_backend_dev_t device, struct ggml_backend_dev_props * props);
@ctypes_function(
    "ggml_backend_dev_get_props",
    [ggml_backend_dev_t_ctypes, ctypes.POINTER(ggml_backend_dev_props)],
    None,
)
def ggml_backend_dev_get_props(device: ggml_backend_dev_t, props: Any, /) -> None:
    ...


# GGML_API ggml_backend_reg_t ggml_backend_dev_backend_reg(ggml_backend_dev_t device);
@ctypes_function("ggml_backend_dev_backend_reg", [ggml_backend_dev_t_ctypes], ggml_backend_reg_t_ctypes)
def ggml_backend_dev_backend_reg(device: ggml_backend_dev_t, /) -> ggml_backend_reg_t | None:
    ...


# GGML_API ggml_backend_buffer_type_t ggml_backend_dev_buffer_type(ggml_backend_dev_t device);
@ctypes_function("ggml_backend_dev_buffer_type", [ggml_backend_dev_t_ctypes], ggml_backend_buffer_type_t_ctypes)
def ggml_backend_dev_buffer_type(device: ggml_backend_dev_t, /) -> ggml_backend_buffer_type_t | None:
    """The device's default buffer type (what `-ot regex=DEV` selects)."""
    ...


# GGML_API ggml_backend_buffer_type_t ggml_backend_dev_host_buffer_type(ggml_backend_dev_t device);
@ctypes_function(
    "ggml_backend_dev_host_buffer_type", [ggml_backend_dev_t_ctypes], ggml_backend_buffer_type_t_ctypes
)
def ggml_backend_dev_host_buffer_type(device: ggml_backend_dev_t, /) -> ggml_backend_buffer_type_t | None:
    """Pinned host buffer type (e.g. CUDA_Host), or NULL when the device has none."""
    ...


# GGML_API const char * ggml_backend_reg_name(ggml_backend_reg_t reg);
@ctypes_function("ggml_backend_reg_name", [ggml_backend_reg_t_ctypes], ctypes.c_char_p)
def ggml_backend_reg_name(reg: ggml_backend_reg_t, /) -> bytes:
    ...


# GGML_API ggml_backend_reg_t ggml_backend_reg_by_name(const char * name);
@ctypes_function("ggml_backend_reg_by_name", [ctypes.c_char_p], ggml_backend_reg_t_ctypes)
def ggml_backend_reg_by_name(name: bytes, /) -> ggml_backend_reg_t | None:
    ...


# GGML_API void ggml_backend_register(ggml_backend_reg_t reg);
@ctypes_function("ggml_backend_register", [ggml_backend_reg_t_ctypes], None)
def ggml_backend_register(reg: ggml_backend_reg_t, /) -> None:
    """Add a backend (e.g. an RPC server's registry) to the global registry."""
    ...


# GGML_BACKEND_API ggml_backend_buffer_type_t ggml_backend_cpu_buffer_type(void);
@ctypes_function("ggml_backend_cpu_buffer_type", [], ggml_backend_buffer_type_t_ctypes)
def ggml_backend_cpu_buffer_type() -> ggml_backend_buffer_type_t:
    """The plain CPU buffer type; as an override target the loader picks the best host buft."""
    ...


# GGML_API const char * ggml_backend_buft_name(ggml_backend_buffer_type_t buft);
@ctypes_function("ggml_backend_buft_name", [ggml_backend_buffer_type_t_ctypes], ctypes.c_char_p)
def ggml_backend_buft_name(buft: ggml_backend_buffer_type_t, /) -> bytes:
    ...


# GGML_API bool ggml_backend_buft_is_host(ggml_backend_buffer_type_t buft);
@ctypes_function("ggml_backend_buft_is_host", [ggml_backend_buffer_type_t_ctypes], ctypes.c_bool)
def ggml_backend_buft_is_host(buft: ggml_backend_buffer_type_t, /) -> bool:
    ...


# GGML_API ggml_backend_dev_t ggml_backend_buft_get_device(ggml_backend_buffer_type_t buft);
@ctypes_function("ggml_backend_buft_get_device", [ggml_backend_buffer_type_t_ctypes], ggml_backend_dev_t_ctypes)
def ggml_backend_buft_get_device(buft: ggml_backend_buffer_type_t, /) -> ggml_backend_dev_t | None:
    ...


# ---------------------------------------------------------------------------------------------
# ggml-rpc.h (RPC_PROTO 7.0.0 in the supported builds; client and server must be the same build)
# ---------------------------------------------------------------------------------------------

# GGML_BACKEND_API ggml_backend_reg_t ggml_backend_rpc_add_server(const char * endpoint);
@ctypes_function("ggml_backend_rpc_add_server", [ctypes.c_char_p], ggml_backend_reg_t_ctypes, optional=True)
def ggml_backend_rpc_add_server(endpoint: bytes, /) -> ggml_backend_reg_t | None:
    """Connect to an RPC server and return a registry with its devices (named RPC<n>, a
    process-global counter). Register it with ggml_backend_register before resolving devices.
    Aborts the process (GGML_ABORT) when the endpoint does not answer."""
    ...


# GGML_BACKEND_API ggml_backend_buffer_type_t ggml_backend_rpc_buffer_type(const char * endpoint, uint32_t device);
@ctypes_function(
    "ggml_backend_rpc_buffer_type", [ctypes.c_char_p, ctypes.c_uint32], ggml_backend_buffer_type_t_ctypes, optional=True
)
def ggml_backend_rpc_buffer_type(endpoint: bytes, device: int, /) -> ggml_backend_buffer_type_t | None:
    """Buffer type ``RPC<device>[endpoint]`` (device = index on that server)."""
    ...


# GGML_BACKEND_API void ggml_backend_rpc_get_device_memory(const char * endpoint, uint32_t device,
#                                                          size_t * free, size_t * total);
@ctypes_function(
    "ggml_backend_rpc_get_device_memory",
    [ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
    None,
    optional=True,
)
def ggml_backend_rpc_get_device_memory(endpoint: bytes, device: int, free: Any, total: Any, /) -> None:
    ...


# GGML_BACKEND_API void ggml_backend_rpc_start_server(const char * endpoint, const char * cache_dir,
#                                                     size_t n_threads, size_t n_devices, ggml_backend_dev_t * devices);
@ctypes_function(
    "ggml_backend_rpc_start_server",
    [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)],
    None,
    optional=True,
)
def ggml_backend_rpc_start_server(
    endpoint: bytes, cache_dir: bytes | None, n_threads: int, n_devices: int, devices: Any, /
) -> None:
    """Serve ``devices`` on ``endpoint``; blocks forever (one client at a time, no stop API).
    The advertised memory is each device's ggml_backend_dev_memory (no parameter for it)."""
    ...


# ---------------------------------------------------------------------------------------------
# Intermediate helpers (Python types; errors through omni_place.errors)
# ---------------------------------------------------------------------------------------------


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


@dataclass(frozen=True)
class DeviceInfo:
    """One ggml device as the backend registry reports it (JSON-serialisable via asdict)."""

    index: int
    name: str
    description: str
    type: str
    memory_free: int
    memory_total: int
    device_id: str | None
    buffer_type: str | None
    host_buffer_type: str | None


_BACKENDS_LOCK = threading.Lock()
_backends_ready = False


def ensure_backends() -> None:
    """``llama_backend_init()`` once, and load dynamically built backends when the registry is
    empty (GGML_BACKEND_DL builds ship backends as modules next to libggml)."""
    global _backends_ready
    if _backends_ready:
        return
    with _BACKENDS_LOCK:
        if _backends_ready:
            return
        llama_backend_init()
        if ggml_backend_dev_count() == 0:
            lib = load_libllama()
            if lib.lib_dir and available(ggml_backend_load_all_from_path):
                ggml_backend_load_all_from_path(lib.lib_dir.encode())
            if ggml_backend_dev_count() == 0 and available(ggml_backend_load_all):
                ggml_backend_load_all()
        if ggml_backend_dev_count() == 0:
            raise EngineError(
                f"libllama at {load_libllama().path} sees no ggml backend device (not even the CPU)",
                hint="the ggml backend modules are missing next to libggml; reinstall the build",
            )
        _backends_ready = True


def device_info(index: int, dev: ggml_backend_dev_t) -> DeviceInfo:
    props = ggml_backend_dev_props()
    ggml_backend_dev_get_props(dev, ctypes.byref(props))
    buft = ggml_backend_dev_buffer_type(dev)
    host = ggml_backend_dev_host_buffer_type(dev)
    return DeviceInfo(
        index=index,
        name=_text(ggml_backend_dev_name(dev)),
        description=_text(ggml_backend_dev_description(dev)),
        type=DEVICE_TYPE_NAMES.get(ggml_backend_dev_type(dev), str(ggml_backend_dev_type(dev))),
        memory_free=int(props.memory_free),
        memory_total=int(props.memory_total),
        device_id=_text(props.device_id) if props.device_id else None,
        buffer_type=_text(ggml_backend_buft_name(buft)) if buft else None,
        host_buffer_type=_text(ggml_backend_buft_name(host)) if host else None,
    )


def list_devices() -> list[DeviceInfo]:
    """Every device in the ggml registry, in registry order (CPU included)."""
    ensure_backends()
    out = []
    for i in range(ggml_backend_dev_count()):
        dev = ggml_backend_dev_get(i)
        if dev:
            out.append(device_info(i, dev))
    return out


def device_by_name(name: str) -> ggml_backend_dev_t:
    """The device called ``name`` (case-insensitive), or EngineError listing the known names."""
    ensure_backends()
    dev = ggml_backend_dev_by_name(name.encode())
    if not dev:
        known = ", ".join(d.name for d in list_devices())
        raise EngineError(
            f"no ggml device named {name!r} (devices: {known})",
            hint="RPC devices exist only after their servers are added (rpc_servers); names are RPC0, RPC1, ...",
        )
    return dev


_RPC_LOCK = threading.Lock()
_rpc_devices: dict[str, list[str]] = {}


def add_rpc_server(endpoint: str) -> list[str]:
    """``ggml_backend_rpc_add_server`` + ``ggml_backend_register``; returns the new device names.

    Each endpoint is registered once per process; adding it again returns the same names. The
    server must be listening: ggml aborts the process when it cannot connect.
    """
    ensure_backends()
    if not available(ggml_backend_rpc_add_server):
        raise LibLlamaVersionError(
            f"{load_libllama().path} was built without RPC (no ggml_backend_rpc_add_server)",
            hint='rebuild with CMAKE_ARGS="-DGGML_RPC=on"',
        )
    with _RPC_LOCK:
        if endpoint in _rpc_devices:
            return list(_rpc_devices[endpoint])
        before = {d.name for d in list_devices()}
        reg = ggml_backend_rpc_add_server(endpoint.encode())
        if not reg:
            raise EngineError(f"RPC server {endpoint} reported no devices")
        ggml_backend_register(reg)
        added = [d.name for d in list_devices() if d.name not in before]
        _rpc_devices[endpoint] = added
        return list(added)
