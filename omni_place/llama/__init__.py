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

# probe and rpc are also run as `python -m omni_place.llama.probe|rpc` (child processes). The
# package is imported before a module run as __main__, so it must not import them -- nor what
# imports them (plan_spec, verify, applied): they are imported on first use of one of their names.
_LAZY = {
    "AppliedPlan": "applied",
    "apply": "applied",
    "load_spec": "plan_spec",
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
    from .applied import AppliedPlan, apply
    from .plan_spec import load_spec
    from .probe import LoadReport, LoadSpec, buffer_device, probe_load
    from .rpc import RpcServer, rpc_servers, start_rpc_server
    from .verify import Tolerance, VerifyReport, verify_plan


def build_info(library: str | None = None) -> BuildInfo:
    """Load libllama (once) and describe the build; raises LibLlamaNotFoundError /
    LibLlamaVersionError."""
    return get_abi(load_libllama(library)).build


def __getattr__(name: str) -> Any:
    if name == "__llama_version__":
        return build_info().describe()
    module = _LAZY.get(name)
    if module is not None:
        return getattr(importlib.import_module(f".{module}", __name__), name)
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
