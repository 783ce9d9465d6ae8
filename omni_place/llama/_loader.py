"""Find and load libllama (and the ggml libraries it needs) lazily, once per process.

Search order, first *specified* source wins and is exclusive (a library the user named is never
silently replaced by another build):

1. the explicit ``path`` argument of :func:`load_libllama` (a file or a folder);
2. the environment variable ``OMNI_PLACE_LIBLLAMA`` (a file or a folder);
3. otherwise, in order until one loads: the ``lib/`` folder of an installed ``llama_cpp`` package
   (llama-cpp-python; located with ``importlib.util.find_spec`` -- the package is never imported),
   then the system search path (``ctypes.util.find_library("llama")``, then a bare ``libllama.so``).

Before libllama, the ggml libraries next to it are loaded with ``RTLD_GLOBAL`` under the *sonames*
libllama records (``libggml.so.0``, ...). llama-cpp-python ships copies, not links, named both
``libggml.so`` and ``libggml.so.0``; loading the unversioned copy after libllama pulled in the
versioned one gives a second ggml with its own backend registry, where RPC servers registered from
Python are invisible to libllama.

Nothing here runs at import time: ``import omni_place`` never needs libllama.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, LibLlamaNotFoundError

ENV_VAR = "OMNI_PLACE_LIBLLAMA"

if sys.platform == "win32":
    LLAMA_NAMES: tuple[str, ...] = ("llama.dll", "libllama.dll")
    # ggml libraries in dependency order (base first); each entry lists the names to try, soname first
    GGML_LIBS: tuple[tuple[str, ...], ...] = (
        ("ggml-base.dll",), ("ggml-cpu.dll",), ("ggml-rpc.dll",), ("ggml.dll",),
    )
elif sys.platform == "darwin":
    LLAMA_NAMES = ("libllama.dylib", "libllama.0.dylib")
    GGML_LIBS = (
        ("libggml-base.0.dylib", "libggml-base.dylib"),
        ("libggml-cpu.0.dylib", "libggml-cpu.dylib"),
        ("libggml-rpc.0.dylib", "libggml-rpc.dylib"),
        ("libggml.0.dylib", "libggml.dylib"),
    )
else:  # Linux, FreeBSD and other ELF systems
    # libllama.so first: the file llama-cpp-python loads, so both share one copy in a process
    LLAMA_NAMES = ("libllama.so", "libllama.so.0")
    GGML_LIBS = (
        ("libggml-base.so.0", "libggml-base.so"),
        ("libggml-cpu.so.0", "libggml-cpu.so"),
        ("libggml-rpc.so.0", "libggml-rpc.so"),
        ("libggml.so.0", "libggml.so"),
    )

_GGML_KEYS = ("ggml_base", "ggml_cpu", "ggml_rpc", "ggml")
_DLL_DIRECTORIES: list[Any] = []


@dataclass(frozen=True)
class LoadedLibrary:
    """A loaded libllama and the ggml libraries loaded next to it.

    ``handles`` is searched in order by :meth:`function`: libllama first, then libggml,
    libggml-base, libggml-rpc and libggml-cpu (those that were loaded from the same folder).
    """

    path: str
    """The libllama file that was loaded (or the bare name given to the system loader)."""
    source: str
    """Where it came from: ``argument``, ``env``, ``llama_cpp`` or ``system``."""
    lib_dir: str | None
    """The folder holding libllama, when known (the ggml libraries were loaded from there)."""
    llama: ctypes.CDLL
    ggml_paths: Mapping[str, str] = field(default_factory=dict)
    """``ggml``/``ggml_base``/``ggml_rpc``/``ggml_cpu`` -> file loaded with RTLD_GLOBAL."""
    handles: tuple[ctypes.CDLL, ...] = ()

    def function(self, name: str) -> Any | None:
        """A *fresh* ctypes function object for ``name`` (so argtypes/restype set on it are
        private to the caller), or ``None`` when no loaded library exports the symbol."""
        for handle in self.handles:
            try:
                return handle._FuncPtr((name, handle))  # noqa: SLF001 - documented ctypes idiom
            except AttributeError:
                continue
        return None

    def has(self, name: str) -> bool:
        """Whether any loaded library exports ``name``."""
        return self.function(name) is not None


@dataclass
class _Attempt:
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


class LibraryLoader:
    """Process-wide holder of the one libllama a process may use (lock + double check)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self._lock = threading.Lock()
        self._lib: LoadedLibrary | None = None

    @property
    def loaded(self) -> LoadedLibrary | None:
        """The library loaded so far, or ``None``; never loads anything."""
        return self._lib

    def load(self, path: str | os.PathLike[str] | None = None) -> LoadedLibrary:
        """Load libllama once; later calls return the same library.

        Raises LibLlamaNotFoundError listing every path tried, and InvalidArgumentError when a
        different libllama than the one already loaded in this process is requested.
        """
        lib = self._lib
        if lib is None:
            with self._lock:
                lib = self._lib
                if lib is None:
                    lib = self._lib = self._load(path)
                    return lib
        if path is not None and not _same_library(lib, Path(path)):
            raise InvalidArgumentError(
                f"libllama is already loaded from {lib.path} in this process; cannot also load {os.fspath(path)}",
                hint="use one libllama per process (probe_load runs each load in a child process)",
            )
        return lib

    # -- search ---------------------------------------------------------------------------------
    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def _load(self, path: str | os.PathLike[str] | None) -> LoadedLibrary:
        attempts: list[_Attempt] = []
        if path is not None:
            lib = _load_from_spec(Path(path), "argument", attempts)
        elif self._env().get(ENV_VAR):
            lib = _load_from_spec(Path(self._env()[ENV_VAR]), "env", attempts, label=ENV_VAR)
        else:
            lib = _load_from_llama_cpp(attempts) or _load_from_system(attempts)
        if lib is None:
            tried = "; ".join(str(a) for a in attempts) or "no candidate found"
            raise LibLlamaNotFoundError(f"could not load libllama (tried {tried})")
        return lib


def _same_library(lib: LoadedLibrary, wanted: Path) -> bool:
    try:
        if wanted.is_dir():
            return lib.lib_dir is not None and Path(lib.lib_dir).resolve() == wanted.resolve()
        return Path(lib.path).resolve() == wanted.resolve()
    except OSError:
        return False


def _load_from_spec(
    spec: Path, source: str, attempts: list[_Attempt], label: str | None = None
) -> LoadedLibrary | None:
    prefix = f"{label}=" if label else ""
    if spec.is_dir():
        files = [spec / name for name in LLAMA_NAMES]
        existing = [f for f in files if f.is_file()]
        if not existing:
            attempts.append(_Attempt(f"{prefix}{spec}", f"folder holds none of {', '.join(LLAMA_NAMES)}"))
            return None
        files = existing
    elif spec.is_file():
        files = [spec]
    elif spec.exists():  # dlopen() of a FIFO blocks, of /dev/zero reads without end
        attempts.append(_Attempt(f"{prefix}{spec}", "not a regular file (a pipe, device or socket)"))
        return None
    else:
        attempts.append(_Attempt(f"{prefix}{spec}", "no such file or folder"))
        return None
    for file in files:
        lib = _load_file(file, source, attempts)
        if lib is not None:
            return lib
    return None


def _llama_cpp_lib_dir() -> Path | None:
    """The ``lib/`` folder of an installed llama_cpp package, found without importing it."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        lib_dir = Path(root) / "lib"
        if lib_dir.is_dir():
            return lib_dir
    return None


def _load_from_llama_cpp(attempts: list[_Attempt]) -> LoadedLibrary | None:
    lib_dir = _llama_cpp_lib_dir()
    if lib_dir is None:
        attempts.append(_Attempt("llama_cpp package", "not installed (no importable llama_cpp with a lib/ folder)"))
        return None
    return _load_from_spec(lib_dir, "llama_cpp", attempts)


def _load_from_system(attempts: list[_Attempt]) -> LoadedLibrary | None:
    names: list[str] = []
    found = ctypes.util.find_library("llama")
    if found:
        names.append(found)
    else:
        attempts.append(_Attempt('find_library("llama")', "not found"))
    names.extend(n for n in LLAMA_NAMES if n not in names)
    for name in names:
        try:
            handle = _cdll(name)
        except OSError as err:
            attempts.append(_Attempt(name, _oserror_text(err)))
            continue
        return _finish(handle, name, "system", None, {}, [])
    return None


def _load_file(file: Path, source: str, attempts: list[_Attempt]) -> LoadedLibrary | None:
    lib_dir = file.parent
    ggml_paths: dict[str, str] = {}
    ggml_handles: list[ctypes.CDLL] = []
    if sys.platform == "win32" and hasattr(os, "add_dll_directory"):
        _DLL_DIRECTORIES.append(os.add_dll_directory(str(lib_dir)))  # removed again when collected
    for key, names in zip(_GGML_KEYS, GGML_LIBS, strict=True):
        candidate = next((lib_dir / n for n in names if (lib_dir / n).is_file()), None)  # regular files only
        if candidate is None:
            continue  # e.g. a build without RPC, or backends built as loadable modules
        try:
            ggml_handles.append(_cdll(str(candidate), global_=True))
        except OSError as err:
            attempts.append(_Attempt(str(candidate), _oserror_text(err)))
            return None
        ggml_paths[key] = str(candidate)
    try:
        handle = _cdll(str(file))
    except OSError as err:
        attempts.append(_Attempt(str(file), _oserror_text(err)))
        return None
    return _finish(handle, str(file), source, str(lib_dir), ggml_paths, ggml_handles)


def _finish(
    handle: ctypes.CDLL,
    path: str,
    source: str,
    lib_dir: str | None,
    ggml_paths: dict[str, str],
    ggml_handles: list[ctypes.CDLL],
) -> LoadedLibrary:
    # search order for symbols: libllama (its dependency tree), then ggml, base, rpc, cpu
    order = {"ggml": 0, "ggml_base": 1, "ggml_rpc": 2, "ggml_cpu": 3}
    by_key = dict(zip(ggml_paths, ggml_handles, strict=True))
    extra = [by_key[k] for k in sorted(by_key, key=order.__getitem__)]
    return LoadedLibrary(
        path=path,
        source=source,
        lib_dir=lib_dir,
        llama=handle,
        ggml_paths=dict(ggml_paths),
        handles=(handle, *extra),
    )


def _cdll(name: str, global_: bool = False) -> ctypes.CDLL:
    mode = ctypes.RTLD_GLOBAL if global_ else ctypes.DEFAULT_MODE
    return ctypes.CDLL(name, mode=mode)


def _oserror_text(err: OSError) -> str:
    return " ".join(str(err).split()) or type(err).__name__


_LOADER = LibraryLoader()


def load_libllama(path: str | os.PathLike[str] | None = None) -> LoadedLibrary:
    """Load libllama for this process (once) and return it.

    ``path`` may be a libllama file or the folder that holds it; without it, ``OMNI_PLACE_LIBLLAMA``
    and then the llama_cpp package and the system are searched (see the module docstring).
    """
    return _LOADER.load(path)


def loaded_libllama() -> LoadedLibrary | None:
    """The libllama loaded in this process so far, or ``None`` (never loads)."""
    return _LOADER.loaded


__all__: list[str] = [
    "ENV_VAR",
    "LibraryLoader",
    "LoadedLibrary",
    "load_libllama",
    "loaded_libllama",
]
