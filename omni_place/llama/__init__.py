"""The real engine: libllama through ctypes (loader, ABI check, bindings), log capture, probe
loads in child processes, llama.cpp RPC servers for several devices on one machine, and
``apply(plan)`` / ``verify_plan(plan)``: a plan loaded with exactly its parameters and compared
with what the engine did.

Importing this package loads nothing; libllama is loaded on first use (see ``_loader``).

``omni_place.llama.__llama_version__`` (loads libllama on first access) is the build description,
e.g. ``"llama.cpp llama 0.5.0-dev / ggml 0.25.3 (0c1e570-dirty), layout mainline-80/160, ..."``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._abi import BuildInfo, detect_build, get_abi
from ._loader import ENV_VAR, LoadedLibrary, load_libllama, loaded_libllama
from .logcapture import EngineLog, LogCapture, LogLine, mib_to_bytes, parse_log

# probe and rpc are also run as `python -m omni_place.llama.probe|rpc` (child processes): they
# are imported on first use so that running them as __main__ does not import them twice.
_LAZY = {
    "AppliedPlan": "apply",
    "apply": "apply",
    "load_spec": "apply",
    "Tolerance": "verify",
    "VerifyReport": "verify",
    "verify_plan": "verify",
    "LoadReport": "probe",
    "LoadSpec": "probe",
    "buffer_device": "probe",
    "probe_load": "probe",
    "RpcServer": "rpc",
    "rpc_servers": "rpc",
    "start_rpc_server": "rpc",
}

if TYPE_CHECKING:
    from .apply import AppliedPlan, apply, load_spec
    from .verify import Tolerance, VerifyReport, verify_plan
    from .probe import LoadReport, LoadSpec, buffer_device, probe_load
    from .rpc import RpcServer, rpc_servers, start_rpc_server


def build_info(library: str | None = None) -> BuildInfo:
    """Load libllama (once) and describe the build; raises LibLlamaNotFoundError /
    LibLlamaVersionError."""
    return get_abi(load_libllama(library)).build


def __getattr__(name: str) -> Any:
    if name == "__llama_version__":
        return build_info().describe()
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # `apply` is also a submodule: bind the name to the function
        return value
    raise AttributeError(f"module 'omni_place.llama' has no attribute {name!r}")


__all__ = [
    "AppliedPlan",
    "ENV_VAR",
    "BuildInfo",
    "EngineLog",
    "LoadReport",
    "LoadSpec",
    "LoadedLibrary",
    "LogCapture",
    "LogLine",
    "RpcServer",
    "Tolerance",
    "VerifyReport",
    "apply",
    "buffer_device",
    "build_info",
    "detect_build",
    "load_libllama",
    "load_spec",
    "loaded_libllama",
    "mib_to_bytes",
    "parse_log",
    "probe_load",
    "rpc_servers",
    "start_rpc_server",
    "verify_plan",
]
