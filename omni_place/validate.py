"""Checks at the boundaries: every value that enters from a file, the environment or an API call
is checked here once, for type and range, and becomes the documented error naming it.

Each check takes the value's name for the message and an ``error`` factory (a callable taking
the message; default :class:`InvalidArgumentError`, exit 2), so a cluster file can prefix its
file and line and a GGUF header can raise :class:`GGUFFormatError`. Files are read with
:func:`read_file` (regular files only, a size cap, never blocking on a FIFO) and JSON through
:func:`load_json` (no NaN/Infinity, no 400-digit numbers, bounded nesting), so no boundary can
be made to hang, allocate without bound or raise a bare ``ValueError``.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import reprlib
import stat
from collections.abc import Callable, Collection
from typing import Any, NoReturn

from .errors import InvalidArgumentError, OmniPlaceError

ErrorFactory = Callable[[str], OmniPlaceError]

#: JSON integers longer than this are refused before Python converts them (the int() of a
#: 100k-digit string is quadratic; no count, byte size or index we read has 30 digits).
MAX_JSON_INT_DIGITS = 30
#: The longest file-name component the stores write (NAME_MAX is 255 bytes on Linux and macOS).
MAX_NAME_CHARS = 100
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*", re.ASCII)


class _Repr(reprlib.Repr):
    """``reprlib`` with few items per level (a million-item list costs nothing to show, a
    thousand-deep one raises no RecursionError) and huge integers as their digit count."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 6, 6, 4, 6
        self.maxstring = self.maxother = 60

    def repr_int(self, x: int, level: int) -> str:
        if abs(x) < 10 ** 40:
            return repr(x)
        digits = int(abs(x).bit_length() * math.log10(2)) + 1  # str() of 5000 digits raises
        return f"{'-' if x < 0 else ''}<{digits}-digit integer>"


_REPR = _Repr()


def show(value: Any, limit: int = 48) -> str:
    """``repr(value)`` for a one-line message: bounded in depth and items, a huge integer as its
    digit count, cut to ``limit`` characters."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _range(lo: Any, hi: Any) -> str:
    return f"{'' if lo is None else lo}..{'' if hi is None else hi}"


def integer(value: Any, name: str, *, lo: int | None = None, hi: int | None = None,
            error: ErrorFactory = InvalidArgumentError) -> int:
    """``value`` as an int in ``[lo, hi]``; bools, floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{name} must be an integer (got {show(value)})")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise error(f"{name} = {show(v)} is out of range ({_range(lo, hi)})")
    return v


def number(value: Any, name: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           error: ErrorFactory = InvalidArgumentError) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); ints are
    accepted, bools, strings, NaN and infinities are not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number (got {show(value)})")
    try:
        v = float(value)
    except OverflowError:  # an int beyond any float
        raise error(f"{name} = {show(value)} is beyond any finite number") from None
    if not math.isfinite(v):
        raise error(f"{name} must be finite (got {show(value)})")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
        interval = ("(" if lo_open else "[") + f"{'' if lo is None else _num(lo)}, {'' if hi is None else _num(hi)}]"
        raise error(f"{name} = {_num(v)} is out of range {interval}")
    return v


def flag(value: Any, name: str, *, error: ErrorFactory = InvalidArgumentError) -> bool:
    """``value`` as a bool; 0/1 and strings are refused (a typo, not a choice)."""
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false (got {show(value)})")
    return value


def choice(value: Any, name: str, choices: Collection[str], *, error: ErrorFactory = InvalidArgumentError) -> str:
    """``value``, which must be one of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise error(f"{name} {show(value)} is not one of {', '.join(choices)}")
    return value


def text(value: Any, name: str, *, max_len: int = 4096, error: ErrorFactory = InvalidArgumentError) -> str:
    """``value`` as a string of at most ``max_len`` characters."""
    if not isinstance(value, str):
        raise error(f"{name} must be a string (got {show(value)})")
    if len(value) > max_len:
        raise error(f"{name} is {len(value)} characters long (at most {max_len})")
    return value


def file_component(value: Any, name: str, *, error: ErrorFactory = InvalidArgumentError) -> str:
    """``value`` if it is safe as one file-name component (ASCII letters, digits, ``._+-``, not
    starting with a dot, at most MAX_NAME_CHARS); names joined to paths go through here, so
    ``../..`` or ``/etc`` cannot leave their folder."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or len(value) > MAX_NAME_CHARS:
        raise error(f"{name} {show(value)} is not a plain file name (letters, digits, '._+-', "
                    f"at most {MAX_NAME_CHARS} characters)")
    return value


def safe_file_name(value: str, default: str = "unnamed") -> str:
    """A file-name component made from any text: unsafe runs become ``_``, and a name over
    MAX_NAME_CHARS keeps its start plus a hash of the whole (so long names stay distinct)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", value, flags=re.ASCII).strip("._-") or default
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        name = f"{name[: MAX_NAME_CHARS - 13]}-{digest}"
    return name


def read_file(path: str | os.PathLike[str], *, limit: int, what: str,
              error: ErrorFactory = InvalidArgumentError, head: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (``head``: its first ``limit``
    bytes, whatever its size). FIFOs, devices (``/dev/zero``), sockets and folders are refused
    without blocking (``O_NONBLOCK`` + ``fstat``), and a file that grows while it is read is cut
    at ``limit + 1`` bytes and refused."""
    p = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except ValueError:  # a NUL byte in the path
        raise error(f"{what} path {show(p)} is not a valid path") from None
    except FileNotFoundError:
        raise error(f"{what} not found: {p}") from None
    except IsADirectoryError:
        raise error(f"{what} {p} is a folder, not a file") from None
    except OSError as err:
        raise error(f"cannot open {what} {p}: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {p} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {p} is not a regular file (a pipe, socket or device)")
        if st.st_size > limit and not head:
            raise error(f"{what} {p} has {st.st_size} bytes, more than the {limit} a {what} can have")
        chunks: list[bytes] = []
        left = limit if head else limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:
            raise error(f"{what} {p} grew past {limit} bytes while it was read")
        return data
    except OSError as err:
        raise error(f"cannot read {what} {p}: {err.strerror or err}") from None
    finally:
        os.close(fd)


def decode_text(data: bytes, what: str, *, error: ErrorFactory = InvalidArgumentError) -> str:
    """UTF-8 text of a file's bytes; a binary file is refused with the offset of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} is not UTF-8 text (byte {err.start}): a binary or corrupt file") from None


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text[:24]} is beyond any finite number")
    return v


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


# the strict decoder load_json uses; for callers that scan several JSON values in one text
# (``raw_decode``), e.g. llama-bench output inside a -v log
STRICT_JSON = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)


def load_json(doc: str, what: str, *, error: ErrorFactory = InvalidArgumentError) -> Any:
    """Parse JSON text strictly: NaN/Infinity, numbers beyond a float (``1e400``), integers over
    MAX_JSON_INT_DIGITS digits and nesting beyond the interpreter's recursion limit are errors,
    not values (the C scanner counts its depth, so deep nesting fails fast and cleanly)."""
    try:
        return STRICT_JSON.decode(doc)
    except json.JSONDecodeError as err:
        raise error(f"{what} is not JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise error(f"{what} nests too deeply to be a plan or a record") from None
    except ValueError as err:
        raise error(f"{what} is not valid JSON: {err}") from None


def dump_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN and infinities (``Infinity`` is not JSON) instead of
    writing them: the one way plans and stores are serialized."""
    return json.dumps(value, allow_nan=False, **kwargs)


__all__ = ["MAX_JSON_INT_DIGITS", "MAX_NAME_CHARS", "STRICT_JSON", "ErrorFactory", "choice", "decode_text",
           "dump_json", "file_component", "flag", "integer", "load_json", "number", "read_file", "safe_file_name",
           "show", "text"]
