"""The environment of engine child processes: the probe (``python -m omni_place.llama.probe``)
and RPC servers (``python -m omni_place.llama.rpc``) both start one, so it lives below both."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for engine child processes: omni_place importable, no gdb backtraces."""
    env = dict(os.environ)
    root = _package_root()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("GGML_NO_BACKTRACE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


__all__ = ["child_env"]
