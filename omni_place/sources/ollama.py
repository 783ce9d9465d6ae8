"""``ollama:NAME[:TAG]``: a model pulled with ollama, read in place from its store.

The store is $OLLAMA_MODELS or ~/.ollama/models. ``manifests/<registry>/<namespace>/<name>/<tag>``
is a JSON manifest; its layer of media type ``application/vnd.ollama.image.model`` names the
model blob ``sha256:<hex>``, stored as ``blobs/sha256-<hex>``: a complete GGUF. NAME is
``model`` (namespace ``library`` of registry.ollama.ai), ``user/model``, or
``host/user/model`` (e.g. ``hf.co/owner/repo``); TAG defaults to ``latest``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InvalidArgumentError
from ..validate import load_json, read_file

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
MAX_MANIFEST_BYTES = 1 << 20
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})", re.ASCII)


def store_dir() -> Path:
    """ollama's model store: $OLLAMA_MODELS, else ~/.ollama/models."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def manifest_path(spec: str) -> Path:
    """The manifest file of ``ollama:NAME[:TAG]``."""
    body = spec.removeprefix("ollama:")
    name, _, tag = body.rpartition(":") if ":" in body.rsplit("/", 1)[-1] else (body, "", DEFAULT_TAG)
    parts = name.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_REGISTRY, DEFAULT_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_REGISTRY, *parts]
    if len(parts) != 3 or not all(_PART.fullmatch(p) for p in [*parts, tag]):
        raise InvalidArgumentError(f"{spec!r} is not an ollama model name",
                                   hint="ollama:NAME[:TAG], e.g. ollama:qwen3:30b-a3b or ollama:user/model")
    return store_dir() / "manifests" / Path(*parts) / tag


def resolve_ollama(spec: str) -> Path:
    """The GGUF blob of an ollama model (a complete file, read in place)."""
    path = manifest_path(spec)
    if not path.is_file():
        raise InvalidArgumentError(f"{spec}: no such model in the ollama store {store_dir()}",
                                   hint=f"`ollama pull {spec.removeprefix('ollama:')}` first, or set OLLAMA_MODELS "
                                        "to the store's folder")
    doc = load_json(read_file(path, limit=MAX_MANIFEST_BYTES, what="ollama manifest").decode("utf-8", "replace"),
                    f"ollama manifest {path}")
    layers = doc.get("layers") if isinstance(doc, dict) else None
    models = [la for la in layers if isinstance(la, dict) and la.get("mediaType") == MODEL_MEDIA_TYPE] \
        if isinstance(layers, list) else []
    if len(models) != 1:
        raise InvalidArgumentError(f"{spec}: manifest {path} lists {len(models)} model layers, expected one",
                                   hint="re-pull the model with ollama")
    m = _DIGEST.fullmatch(str(models[0].get("digest", "")))
    if m is None:
        raise InvalidArgumentError(f"{spec}: manifest {path} has a malformed model digest",
                                   hint="re-pull the model with ollama")
    blob = store_dir() / "blobs" / f"sha256-{m[1]}"
    if not blob.is_file():
        raise InvalidArgumentError(f"{spec}: the model blob {blob} is missing", hint="re-pull the model with ollama")
    return blob


__all__ = ["manifest_path", "resolve_ollama", "store_dir"]
