"""GGUF header reading: metadata and tensor infos only, never tensor data.

Why not ``gguf.GGUFReader``: it memory-maps every tensor's data and raises on a header-only file
(tensor data cut off), and people plan before they download 400 GB. This reader stops after the
tensor infos, so a header-only file, a truncated download or a full 100 GB shard all read in
milliseconds. Tensor type sizes come from :mod:`omni_place.ggml_types` (the ``gguf`` package's
table, the reference maintained next to llama.cpp, plus ik_llama.cpp's own types), the value types
from the ``gguf`` package; the byte size of each value type comes from the C core
(``_core.GGUF_TYPE_SIZES``), whose skip helpers step over long arrays.

Hostile input is bounded the way ``ggml/src/gguf.cpp`` bounds it: every length is checked against
the bytes that remain before anything is allocated, ``n_dims <= 4``, element counts are Python
ints, duplicate keys and tensor names are rejected, the alignment must be a power of two.
"""
from __future__ import annotations

import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from gguf import GGUFValueType

from ._native import core as _core
from .errors import GGUFFormatError, MissingShardError, TruncatedHeaderError
from .ggml_types import ggml_type as ggml_type_of
from .validate import show

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
# Arrays longer than this keep only their type and length (tokenizer vocabularies, merges).
MAX_INLINE_ARRAY = 4096
# Bounds on what a header may make us allocate, whatever its length fields say (a corrupt length
# in a 100 GB shard would otherwise copy gigabytes of tensor data into a Python string).
# Real headers are far below: keys and tensor names are < 100 bytes, the longest values (chat
# templates) tens of KiB, at most a few thousand tensors and a few hundred keys.
MAX_NAME_BYTES = 1 << 16  # one key or tensor name (the GGUF spec caps keys at 65535 bytes)
MAX_STRING_BYTES = 1 << 24  # one metadata string value
MAX_MATERIALIZED_BYTES = 1 << 26  # all strings kept from one header together
# Tensor and key counts of one model (all shards together): the largest released GGUFs hold
# under 2,000 tensors and a few dozen keys, and the engine has at most 512 layers
# (LLAMA_MAX_LAYERS). At this limit reading, profiling and planning take ~2.5 s and ~110 MiB;
# a million tiny tensors took 37 s and 1.1 GiB (tests/test_hostile_model.py keeps it linear).
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16

# How to decode each fixed-size value type (GGUFValueType, from the gguf package). Their sizes
# come from the C core, the one table of them (test_gguf_reader checks the two agree).
_SCALAR_FORMATS: dict[int, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALAR_SIZES: dict[int, int] = {t: _core.GGUF_TYPE_SIZES[t] for t in _SCALAR_FORMATS}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SHARD_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.ASCII)


@dataclass(frozen=True)
class LongArray:
    """A metadata array kept by type and length only (e.g. 129k tokenizer tokens)."""

    value_type: int
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it. ``shape`` is in ggml order (ne0 first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the shard's data section
    shard: int  # index into GGUFModelFiles.shards

    @property
    def type_name(self) -> str:
        return ggml_type_of(self.ggml_type).name

    @cached_property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @cached_property
    def n_bytes(self) -> int:
        """Bytes as stored in the file (``ggml_nbytes``)."""
        return ggml_type_of(self.ggml_type).tensor_bytes(self.shape)


@dataclass
class GGUFHeader:
    """The parsed header of one GGUF file."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    alignment: int
    data_offset: int
    file_size: int


@dataclass
class GGUFModelFiles:
    """A model as one or more shards; metadata is the first shard's, tensors are all shards'."""

    shards: list[GGUFHeader]
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def metadata(self) -> dict[str, Any]:
        return self.shards[0].metadata

    @property
    def path(self) -> Path:
        return self.shards[0].path


def _q(name: str, limit: int = 64) -> str:
    """A key or tensor name for a one-line message: quoted, escaped, and shortened if long."""
    if len(name) <= limit:
        return repr(name)
    return f"{name[:limit]!r}... ({len(name)} characters)"


class _Cursor:
    """Bounds-checked little-endian reads over a buffer; every error names the file and offset."""

    __slots__ = ("buf", "pos", "end", "path", "kept")

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.path = path
        self.kept = 0  # bytes of strings copied out of the buffer so far

    def fail(self, what: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.path}: {what} at byte {self.pos}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise TruncatedHeaderError(
                f"{self.path}: truncated header: {what} needs {n} bytes at byte {self.pos}, "
                f"file has {self.end}",
                hint="the download is incomplete or the file is not GGUF; re-download it",
            )

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.u64(what + " length")
        self.need(n, what)
        limit = MAX_STRING_BYTES if limit is None else limit
        if n > limit or self.kept + n > MAX_MATERIALIZED_BYTES:
            self.pos -= 8
            raise self.fail(
                f"{what}: string of {n} bytes exceeds the limit of "
                f"{min(limit, MAX_MATERIALIZED_BYTES - self.kept)} bytes"
            )
        self.kept += n
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        # The C core walks the length prefixes (bounds-checked, no allocation).
        try:
            self.pos = _core.skip_strings(self.buf, self.pos, count)
        except GGUFFormatError as err:
            raise TruncatedHeaderError(
                f"{self.path}: truncated header: {what}: {err.message}",
                hint="the download is incomplete or the file is not GGUF; re-download it",
            ) from None

    def scalar(self, vtype: int, what: str) -> Any:
        fmt = _SCALAR_FORMATS[vtype]
        size = _SCALAR_SIZES[vtype]
        self.need(size, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.scalar(vtype, what)
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            etype = self.u32(what + " element type")
            count = self.u64(what + " element count")
            if etype == GGUFValueType.ARRAY:
                raise self.fail(f"{what}: nested arrays are not valid GGUF")
            if etype == GGUFValueType.STRING:
                if count > MAX_INLINE_ARRAY:
                    self.skip_strings(count, what)
                    return LongArray(etype, count)
                self.need(count * 8, what)
                return [self.string(what) for _ in range(count)]
            if etype not in _SCALAR_FORMATS:
                raise self.fail(f"{what}: unknown array element type {etype}")
            size = _SCALAR_SIZES[etype]
            self.need(count * size, what)
            if count > MAX_INLINE_ARRAY:
                self.pos += count * size
                return LongArray(etype, count)
            vals = list(struct.unpack_from(f"<{count}{_SCALAR_FORMATS[etype][1]}", self.buf, self.pos))
            self.pos += count * size
            return vals
        raise self.fail(f"{what}: unknown value type {vtype}")


def read_header(path: str | os.PathLike[str], shard: int = 0) -> GGUFHeader:
    """Read one GGUF file's metadata and tensor infos; tensor data may be absent."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise GGUFFormatError(f"{path}: no such file", hint="check the model path") from None
    except IsADirectoryError:
        raise GGUFFormatError(f"{path}: is a directory", hint="pass the .gguf file itself") from None
    except OSError as err:
        raise GGUFFormatError(f"{path}: cannot open: {err.strerror}", hint="check the path and permissions") from None
    except ValueError:  # a NUL byte in the path
        raise GGUFFormatError(f"{show(str(path))}: not a valid path", hint="check the model path") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise GGUFFormatError(f"{path}: is a directory", hint="pass the .gguf file itself")
        if not stat.S_ISREG(st.st_mode):
            raise GGUFFormatError(f"{path}: not a regular file (a pipe, socket or device)",
                                  hint="pass the .gguf file itself")
        size = st.st_size
        if size < 24:
            raise GGUFFormatError(f"{path}: {size} bytes is too short for a GGUF header")
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            return _parse(mm, path, size, shard)
    except (ValueError, OverflowError, MemoryError) as err:
        if isinstance(err, GGUFFormatError):
            raise
        raise GGUFFormatError(f"{path}: malformed header: {err}") from None
    except OSError as err:  # mmap refused (e.g. a file system without mmap) or a read error
        raise GGUFFormatError(f"{path}: cannot read: {err.strerror or err}",
                              hint="check the path and permissions") from None
    finally:
        os.close(fd)


def parse_header_prefix(buf: bytes, path: str | os.PathLike[str], file_size: int, shard: int = 0) -> GGUFHeader:
    """Parse a header from the first bytes of a ``file_size``-byte file (a remote file's prefix).
    Raises :class:`TruncatedHeaderError` when ``buf`` ends inside the header: fetch more."""
    path = Path(path)
    if len(buf) < 24:
        raise TruncatedHeaderError(f"{path}: {len(buf)} bytes is too short for a GGUF header")
    try:
        return _parse(buf, path, file_size, shard)
    except (ValueError, OverflowError, MemoryError) as err:
        if isinstance(err, GGUFFormatError):
            raise
        raise GGUFFormatError(f"{path}: malformed header: {err}") from None


def _parse(buf: Any, path: Path, size: int, shard: int) -> GGUFHeader:
    try:
        cur = _Cursor(buf, path)
        if bytes(buf[:4]) != GGUF_MAGIC:
            raise GGUFFormatError(
                f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')",
                hint="pass a .gguf model file (safetensors/PyTorch checkpoints need conversion)",
            )
        cur.pos = 4
        version = cur.u32("version")
        if version & 0xFFFF == 0 and version != 0:
            raise GGUFFormatError(f"{path}: big-endian GGUF files are not supported")
        if version not in SUPPORTED_VERSIONS:
            raise GGUFFormatError(f"{path}: GGUF version {version} is not supported (need 2 or 3)")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # Each KV is at least 8 (key len) + 4 (type) bytes, each tensor info at least 8+4+8+4+8.
        if n_kv * 12 > size or n_tensors * 32 > size:
            raise GGUFFormatError(
                f"{path}: header claims {n_kv} metadata entries and {n_tensors} tensors, "
                f"more than {size} bytes can hold"
            )
        if n_kv > MAX_KV or n_tensors > MAX_TENSORS:
            raise GGUFFormatError(
                f"{path}: header claims {n_kv} metadata entries and {n_tensors} tensors; omni_place reads "
                f"at most {MAX_KV} entries and {MAX_TENSORS} tensors (real models have under 2,000 tensors)",
                hint="this is not a model llama.cpp would load; check the file")
        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"metadata key #{i}", MAX_NAME_BYTES)
            if key in metadata:
                raise GGUFFormatError(f"{path}: duplicate metadata key {_q(key)}")
            vtype = cur.u32(f"type of {_q(key)}")
            metadata[key] = cur.value(vtype, _q(key))

        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFFormatError(f"{path}: general.alignment {alignment!r} is not a power of two")

        tensors: list[TensorInfo] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = cur.string(f"tensor #{i} name", MAX_NAME_BYTES)
            if name in seen:
                raise GGUFFormatError(f"{path}: duplicate tensor name {_q(name)}")
            seen.add(name)
            n_dims = cur.u32(f"{_q(name)} n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFFormatError(f"{path}: tensor {_q(name)} has {n_dims} dimensions (1..{MAX_DIMS})")
            shape = tuple(cur.u64(f"{_q(name)} dim") for _ in range(n_dims))
            ggml_type = cur.u32(f"{_q(name)} type")
            offset = cur.u64(f"{_q(name)} offset")
            try:
                qtype = ggml_type_of(ggml_type)
                block = qtype.block
            except KeyError:
                raise GGUFFormatError(f"{path}: tensor {_q(name)} has unknown ggml type {ggml_type}",
                                      hint="neither llama.cpp's types nor ik_llama.cpp's "
                                           "(omni_place/data/ik_types.toml) have it") from None
            n_el = 1
            for d in shape:
                if d == 0 or d >= 1 << 62:
                    raise GGUFFormatError(f"{path}: tensor {_q(name)} has invalid shape {list(shape)}")
                n_el *= d
            if n_el >= 1 << 62 or shape[0] % block:
                raise GGUFFormatError(
                    f"{path}: tensor {_q(name)} shape {list(shape)} does not fit type {qtype.name} "
                    f"(row length must be a multiple of {block})"
                )
            if offset % alignment:
                raise GGUFFormatError(f"{path}: tensor {_q(name)} data offset {offset} is not {alignment}-aligned")
            tensors.append(TensorInfo(name, shape, ggml_type, offset, shard))
        data_offset = -(-cur.pos // alignment) * alignment
        return GGUFHeader(path, version, metadata, tensors, alignment, data_offset, size)
    except RecursionError:  # pragma: no cover - no recursion in the parser; defensive
        raise GGUFFormatError(f"{path}: malformed header") from None


def shard_paths(first: Path, count: int) -> list[Path]:
    """Paths of every shard of a split model, from the first shard's name."""
    m = _SHARD_RE.match(first.name)
    if not m:
        raise GGUFFormatError(
            f"{first}: metadata says split.count={count} but the name is not *-00001-of-{count:05d}.gguf",
            hint="keep the shard file names as released",
        )
    return [first.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_model_files(path: str | os.PathLike[str]) -> GGUFModelFiles:
    """Read a model's headers: a single file, or every shard of a split model (pass any shard;
    the first is located from its name)."""
    path = Path(path)
    m = _SHARD_RE.match(path.name)
    if m and int(m["no"]) != 1:
        path = path.with_name(f"{m['prefix']}-00001-of-{m['count']}.gguf")
    first = read_header(path, shard=0)
    count = first.metadata.get("split.count", 1)
    if not isinstance(count, int) or count < 1 or count > 9999:
        raise GGUFFormatError(f"{path}: invalid split.count {count!r}")
    shards = [first]
    held = len(first.tensors)
    if count > 1:
        named = _SHARD_RE.match(path.name)
        if named and int(named["count"]) != count:
            raise GGUFFormatError(
                f"{path}: metadata says split.count={count} but the file name says {int(named['count'])} shards",
                hint="shards from different downloads or quantizations were mixed, or a file was renamed",
            )
        paths = shard_paths(path, count)
        missing = [p.name for p in paths[1:] if not p.exists()]
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise MissingShardError(f"{path}: split model has {count} shards; missing: {shown}")
        for i, p in enumerate(paths[1:], start=1):
            h = read_header(p, shard=i)
            no = h.metadata.get("split.no")
            if no != i or h.metadata.get("split.count") != count:
                raise GGUFFormatError(
                    f"{p}: shard says split.no={no!r} split.count={h.metadata.get('split.count')!r}, "
                    f"expected {i} of {count}",
                    hint="shards from different downloads or quantizations were mixed",
                )
            shards.append(h)
            held += len(h.tensors)
            if held > MAX_TENSORS:  # checked per shard: 9999 shards must not all be read first
                raise GGUFFormatError(f"{p}: the first {i + 1} shards hold {held} tensors; omni_place reads at "
                                      f"most {MAX_TENSORS} (real models have under 2,000)",
                                      hint="this is not a model llama.cpp would load; check the files")
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for h in shards:
        for t in h.tensors:
            if t.name in seen:
                raise GGUFFormatError(f"{h.path}: tensor {_q(t.name)} also appears in another shard")
            seen.add(t.name)
            tensors.append(t)
    expected = first.metadata.get("split.tensors.count")
    if count > 1 and isinstance(expected, int) and expected != len(tensors):
        raise GGUFFormatError(
            f"{path}: shards hold {len(tensors)} tensors, split.tensors.count says {expected}"
        )
    return GGUFModelFiles(shards=shards, tensors=tensors)


def iter_layer_tensors(tensors: list[TensorInfo]) -> Iterator[tuple[int | None, str, TensorInfo]]:
    """Yield (layer index or None, name inside the block, tensor) for every tensor."""
    for t in tensors:
        if t.name.startswith("blk."):
            parts = t.name.split(".", 2)
            # the engine names layer il "blk.{il}": ASCII digits, no leading zeros
            idx = parts[1] if len(parts) == 3 else ""
            if 0 < len(idx) <= 6 and idx.isascii() and idx.isdigit() and str(int(idx)) == idx:
                yield int(idx), parts[2], t
                continue
        yield None, t.name, t
