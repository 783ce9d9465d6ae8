"""``https://.../model.gguf``: a GGUF on any web server that serves byte ranges (``http://``
too, for local servers). A split model is named by any shard; the others are found by the
``-0000N-of-0000M.gguf`` pattern. Headers are cached per URL; each run revalidates the first
shard's ETag and size with one small Range request, so a replaced file is re-read.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import InvalidArgumentError
from .cache import cache_root, read_record, subdir, write_record
from .quants import shard_names
from ..validate import safe_file_name
from .remote import http_error, probe, read_headers, store_headers

MAX_URL = 4096


def shard_urls(url: str) -> list[str]:
    """Every shard's URL of the model ``url`` names (one URL for a single file)."""
    parts = urlsplit(url)
    first = re.sub(r"-\d{5}-of-(\d{5})\.gguf$", r"-00001-of-\1.gguf", parts.path, flags=re.IGNORECASE)
    return [urlunsplit(parts._replace(path=p)) for p in shard_names(first)]


def _check(url: str) -> None:
    parts = urlsplit(url)
    if len(url) > MAX_URL or parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgumentError(f"{url[:200]!r} is not an http(s) URL", hint="e.g. https://host/path/model.gguf")
    if not unquote(parts.path).lower().endswith(".gguf"):
        raise InvalidArgumentError(f"{url}: the URL does not name a .gguf file",
                                   hint="give the URL of the .gguf (for a split model, of any shard)")


def resolve_url(url: str) -> Path:
    """A local header-only copy of the model at ``url`` (fetched, or revalidated, on use)."""
    _check(url)
    urls = shard_urls(url)
    key = hashlib.sha256(urls[0].encode()).hexdigest()[:24]
    folder = subdir(cache_root(), "url", key)
    names = [safe_file_name(PurePosixPath(unquote(urlsplit(u).path)).name) for u in urls]
    record = read_record(folder / "source.json")
    on_error = http_error(urls[0])
    if record is not None and all((folder / n).is_file() for n in names):
        # One small read of the first shard: the same ETag and size mean the same file.
        size, etag = probe(urls[0], {}, on_error)
        if etag == record.get("etag") and size == record.get("size"):
            return folder / names[0]
    read = read_headers(urls, {}, on_error)
    write_record(folder / "source.json", {"url": urls[0], "etag": read[0].etag, "size": read[0].file_size})
    return store_headers(folder, names, read)


__all__ = ["resolve_url", "shard_urls"]
