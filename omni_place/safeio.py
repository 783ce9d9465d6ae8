"""Files that omni_place writes for itself (the reference-model cache, decompressed headers),
created so that no other user can plant or swap them.

A cache in a shared folder (the temp dir) is only as trustworthy as the folder: another user
can create ``/tmp/omni_place-1000`` first, or plant a symlink where a file will be written. So
a cache folder is used only when it is *private*: a real folder (not a symlink), owned by this
user, writable by no one else (:func:`private_dir`); otherwise a fresh :func:`tempfile.mkdtemp`
folder serves this process. Files are written under a random name (``mkstemp``: ``O_EXCL``,
mode 0600) and renamed into place (:func:`write_atomic`), so a reader never sees half a file
and a planted name is replaced, never followed.
"""
from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

_SESSION_DIRS: dict[str, Path] = {}


def is_private(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder (itself, not a symlink to one) owned by this user that no
    other user can write to."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return False
    return not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def make_private(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` (mode 0700) unless it exists; whether it is now a private folder."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        pass
    return is_private(p)


def private_dir(path: str | os.PathLike[str], purpose: str = "cache") -> Path:
    """``path`` when it is (or could be created as) a private folder; else a fresh private
    folder for this process (``omni_place-<purpose>-*`` in the temp dir, removed at exit), so a
    folder another user planted is never used."""
    p = Path(path)
    if make_private(p):
        return p
    if purpose not in _SESSION_DIRS:
        d = Path(tempfile.mkdtemp(prefix=f"omni_place-{purpose}-"))
        atexit.register(shutil.rmtree, d, True)
        _SESSION_DIRS[purpose] = d
    return _SESSION_DIRS[purpose]


def is_own_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file (not a symlink) owned by this user, writable by no one else."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    own = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return stat.S_ISREG(st.st_mode) and own and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Create ``path`` through ``write(tmp)`` on a fresh ``mkstemp`` file in the same folder,
    then an atomic rename over whatever ``path`` was (a planted file or symlink is replaced)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


__all__ = ["is_own_file", "is_private", "make_private", "private_dir", "write_atomic"]
