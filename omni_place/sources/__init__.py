"""Where a model comes from: MODEL, in any of its forms, as a local GGUF path.

======================================  ================================================
MODEL                                   resolved to
======================================  ================================================
``path/to/model.gguf`` (any shard)      itself
a shipped name (``deepseek-v3.2``...)   its header-only description (reference_models)
``hf:OWNER/REPO[:QUANT|/PATH.gguf]``    the shards' headers, read by HTTP Range and kept
``[@REVISION]``                         in a private cache (:mod:`.hf`)
``https://.../model.gguf``              the same for any web server with Range (:mod:`.url`)
``ollama:NAME[:TAG]``                   the model blob in ollama's store (:mod:`.ollama`)
======================================  ================================================

:func:`omni_place.model.load_model` resolves through here, so ``plan``, ``check``, ``inspect``,
``compare``, ``plan_split()`` and ``evaluate()`` take every form. The remote readers import
huggingface_hub only when a remote MODEL is given.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..reference_models import REFERENCE_MODELS, cached_reference_model, is_reference_header
from .cache import cache_path

REMOTE_PREFIXES = ("hf:", "https://", "http://")


def resolve_model_source(model: str | os.PathLike[str]) -> Path:
    """The local GGUF (first shard) for MODEL in any form (see the module's table). A path that
    exists wins over a shipped name of the same spelling."""
    if isinstance(model, os.PathLike):
        return Path(model)
    if model.startswith("hf:"):
        from .hf import resolve_hf

        return resolve_hf(model)
    if model.startswith(("https://", "http://")):
        from .url import resolve_url

        return resolve_url(model)
    if model.startswith("ollama:"):
        from .ollama import resolve_ollama

        return resolve_ollama(model)
    if model in REFERENCE_MODELS and not Path(model).exists():
        return cached_reference_model(model)
    return Path(model)


def is_header_copy(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a header without weights that omni_place wrote (a shipped model's
    description, or a remote model's cached headers): an engine cannot load it."""
    p = Path(path)
    if is_reference_header(p):
        return True
    try:
        p = p.resolve()
        # the cache, or the per-process folder safeio.private_dir gives when it is not private
        return p.is_relative_to(cache_path().resolve()) or any(d.startswith("omni_place-sources-") for d in p.parts)
    except OSError:
        return False


def model_argument(path: str | os.PathLike[str]) -> str:
    """What to pass as the engine's ``-m`` for a model read from ``path``: the path itself, the
    file's own name for a remote model's cached header (the file to download), or ``MODEL.gguf``
    for a shipped description."""
    if is_reference_header(path):
        return "MODEL.gguf"
    return Path(path).name if is_header_copy(path) else str(path)


__all__ = ["REMOTE_PREFIXES", "is_header_copy", "model_argument", "resolve_model_source"]
