"""The private folder where remote models' headers are kept: ``<omni_place cache>/sources``,
next to the shipped models' headers ($OMNI_PLACE_CACHE or ~/.cache/omni_place).

Folders are private (:func:`omni_place.safeio.private_dir`: 0700, this user's, writable by no
one else; otherwise a fresh folder for this process), so nobody can plant a doctored header;
files are written under a random name and renamed into place, so a reader sees a whole header
or none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError
from ..reference_models import cache_dir
from ..safeio import private_dir, write_atomic
from ..validate import dump_json, load_json, read_file, safe_file_name

MAX_RECORD_BYTES = 16 << 20  # a listing of a repo with many thousands of files stays far below


def cache_path() -> Path:
    """The cache folder of remote headers (not created)."""
    return cache_dir().parent / "sources"


def cache_root() -> Path:
    """The private cache folder of remote headers, created if needed."""
    return private_dir(cache_path(), "sources")


def subdir(root: Path, *parts: str) -> Path:
    """A private folder under ``root``, one safe file-name component per part."""
    path = root
    for part in parts:
        path = private_dir(path / safe_file_name(part), "sources")
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record written by :func:`write_record`, or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        doc = load_json(read_file(path, limit=MAX_RECORD_BYTES, what="cache record").decode("utf-8"),
                        "cache record")
    except (InvalidArgumentError, UnicodeDecodeError):
        return None  # a damaged record is fetched again, never trusted
    return doc if isinstance(doc, dict) else None


def write_record(path: Path, record: dict[str, Any]) -> Path:
    return write_bytes(path, dump_json(record, indent=1).encode("utf-8"))


__all__ = ["cache_path", "cache_root", "read_record", "subdir", "write_bytes", "write_record"]
