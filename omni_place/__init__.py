"""omni_place: compute the fastest placement of an LLM's layers and tensors across an asymmetric
machine, print the exact llama.cpp / ik_llama.cpp / vLLM flags, predict tokens/s, and verify the
placement through the real libllama.

Public names are imported lazily, so ``import omni_place`` stays cheap and never needs libllama.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "plan_split": "plan",
    "evaluate": "plan",
    "Plan": "plan",
    "render_plan": "report",
    "OmniPlaceError": "errors",
    "ModelProfile": "model",
    "load_model": "model",
    "Device": "devices",
    "Cluster": "devices",
    "discover": "devices",
    "load_cluster": "devices",
    "load_preset": "devices",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'omni_place' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
