"""Write GGUF files from a description: metadata, tensor infos and, optionally, tensor data.

This is the one GGUF writer of the project. The shipped header-only reference models
(:mod:`omni_place.reference_models`), the tests' tiny real models and the benchmarks' synthetic
models are all written here. It drives ``gguf.GGUFWriter`` (gguf-py, maintained next to
llama.cpp), so the layout is the one llama.cpp's converters produce:

* ``general.architecture`` comes first, then the metadata in the order given;
* without ``data`` the file is header-only: it ends right after the tensor infos, like a
  download that has not reached the weights yet;
* with ``data`` every tensor's bytes follow, each aligned to 32 bytes. Data is requested and
  written one tensor at a time, so a model of any size streams through a small buffer;
* ``split=N`` writes N shards named ``<stem>-0000i-of-0000N.gguf`` with the tensors spread as
  evenly as possible. As with llama.cpp's ``gguf-split``, the first shard carries all the
  metadata and every shard carries ``split.no``, ``split.count`` and ``split.tensors.count``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from gguf import GGUFWriter, Keys, TokenType

from .ggml_types import ggml_type
from .gguf import GGUFModelFiles

# llama.cpp's llama_split_path() and gguf-py's gguf_writer.SHARD_NAME_FORMAT
SHARD_NAME_FORMAT = "{:s}-{:05d}-of-{:05d}.gguf"


class GGUFTensor(NamedTuple):
    """One tensor info: ``shape`` in ggml order (ne0, the row length, first)."""

    name: str
    shape: tuple[int, ...]
    qtype: int  # a ggml type id (GGMLQuantizationType, or one of ik_llama.cpp's: ggml_types)


TensorData = Callable[[GGUFTensor], np.ndarray]
"""Returns a tensor's bytes as an array of exactly ``tensor_nbytes(shape, qtype)`` bytes."""


def tensor_nbytes(shape: Iterable[int], qtype: int) -> int:
    """Bytes of a tensor as stored in the file (``ggml_nbytes``); ``shape`` in ggml order."""
    shape = tuple(int(d) for d in shape)
    t = ggml_type(qtype)
    if shape[0] % t.block:
        raise ValueError(f"row length {shape[0]} is not a multiple of the {t.name} block size {t.block}")
    return t.tensor_bytes(shape)


def shard_paths(path: str | os.PathLike[str], split: int) -> list[Path]:
    """The files ``write_gguf(path, ..., split=split)`` writes, first shard first."""
    path = Path(path)
    if split <= 1:
        return [path]
    return [path.with_name(SHARD_NAME_FORMAT.format(path.stem, i + 1, split)) for i in range(split)]


def spm_vocab(n_vocab: int) -> dict[str, Any]:
    """Metadata of a llama-style SentencePiece vocabulary of ``n_vocab`` tokens: <unk> <s> </s>,
    256 byte tokens, then filler pieces. Enough for the engine to load a model whose header has
    no tokenizer (shipped header-only descriptions); buffer sizes depend only on the count."""
    if n_vocab < 260:
        raise ValueError("n_vocab must be >= 260 (3 specials + 256 byte tokens + 1)")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    n_fill = n_vocab - len(tokens)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    fill: list[str] = []
    i = 0
    while len(fill) < n_fill:
        # "▁e", "▁t", ... then "▁ee", "▁et", ...: unique, plausible pieces
        s, k = "", i
        while True:
            s += letters[k % 26]
            k //= 26
            if k == 0:
                break
        fill.append("\u2581" + s)
        i += 1
    tokens += fill
    types += [TokenType.NORMAL] * n_fill
    scores = [0.0] * 259 + [-float(j) for j in range(n_fill)]
    return {Keys.Tokenizer.MODEL: "llama", Keys.Tokenizer.LIST: tokens, Keys.Tokenizer.SCORES: scores,
            Keys.Tokenizer.TOKEN_TYPE: [int(t) for t in types], Keys.Tokenizer.BOS_ID: 1,
            Keys.Tokenizer.EOS_ID: 2, Keys.Tokenizer.UNK_ID: 0, Keys.Tokenizer.ADD_BOS: True,
            Keys.Tokenizer.ADD_EOS: False}


def _add_kv(w: GGUFWriter, key: str, value: Any) -> None:
    """One metadata entry, typed from its Python value: bool, int (uint32, else uint64; int32 or
    int64 if negative), float (float32), str, or a list/tuple (an array of its first element's
    type). Empty strings and arrays are skipped, as ``GGUFWriter`` does."""
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        if value >= 0:
            w.add_uint32(key, value) if value < 1 << 32 else w.add_uint64(key, value)
        else:
            w.add_int32(key, value) if value >= -(1 << 31) else w.add_int64(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        w.add_array(key, list(value))
    else:
        raise TypeError(f"unsupported metadata value for {key}: {value!r}")


def write_gguf(
    path: str | os.PathLike[str],
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Iterable[tuple[str, tuple[int, ...], int]],
    *,
    data: TensorData | None = None,
    split: int = 1,
) -> list[Path]:
    """Write a GGUF model; return its files (one unless ``split`` > 1), first shard first.

    ``metadata`` maps keys to values typed as in :func:`_add_kv` (``general.architecture`` is
    ``arch`` and comes first). ``tensors`` are ``(name, ggml shape, type)`` in file order.
    ``data`` (optional) is called once per tensor, in file order, for its bytes; without it the
    files are header-only.
    """
    infos = [GGUFTensor(name, tuple(int(d) for d in shape), qtype) for name, shape, qtype in tensors]
    if split < 1:
        raise ValueError(f"split must be >= 1, got {split}")
    if split > max(1, len(infos)):
        raise ValueError(f"split={split} > {len(infos)} tensors")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(path, arch)
    for key, value in metadata.items():
        _add_kv(w, key, value)

    # shard k holds sizes[k] consecutive tensors
    sizes = [len(infos) // split + (1 if k < len(infos) % split else 0) for k in range(split)]
    nbytes = [tensor_nbytes(t.shape, t.qtype) for t in infos]
    for t, n in zip(infos, nbytes):
        if split > 1:
            # GGUFWriter starts a new shard once the current one holds split_max_tensors tensors
            w.split_max_tensors = sizes[min(len(w.tensors), split) - 1]
        # GGUFWriter packs raw_dtype as a uint32: ik_llama.cpp's type ids pass through unchanged
        w.add_tensor_info(t.name, tuple(reversed(t.shape)), np.dtype(np.float32), n, raw_dtype=t.qtype)  # type: ignore[arg-type]
    assert len(w.tensors) == split, (len(w.tensors), split)

    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    if data is not None:
        for t, n in zip(infos, nbytes):
            arr = np.ascontiguousarray(data(t))
            if arr.nbytes != n:
                raise ValueError(f"{t.name}: data has {arr.nbytes} bytes, {ggml_type(t.qtype).name} {list(t.shape)} "
                                 f"needs {n}")
            w.write_tensor_data(arr)
    w.close()
    return shard_paths(path, split)


def full_sizes(files: GGUFModelFiles) -> list[int]:
    """Each shard's size with all of its tensor data: up to the end of its last tensor."""
    out = []
    for i, shard in enumerate(files.shards):
        ends = [t.offset + t.n_bytes for t in files.tensors if t.shard == i]
        out.append(shard.data_offset + (max(ends) if ends else 0))
    return out


def has_tensor_data(files: GGUFModelFiles) -> bool:
    """Whether every shard holds its tensor data (not a header-only file or a cut download)."""
    return all(shard.file_size >= size for shard, size in zip(files.shards, full_sizes(files)))


def sparse_copy(files: GGUFModelFiles, dest: str | os.PathLike[str]) -> Path:
    """A copy of a model whose shards hold the real headers followed by a hole as long as the
    tensor data: every tensor is within the file's bounds (``llama_model_loader`` checks that),
    but no data block is written, so a full-size copy of a 400 GB model costs a few MB of disk.
    Enough for a no-alloc dry run (``load_mode`` none reads no tensor data). A header without a
    tokenizer (a shipped description) is rewritten as one file with :func:`spm_vocab`. Returns
    the first shard's path in ``dest``."""
    out_dir = Path(dest)
    out_dir.mkdir(parents=True, exist_ok=True)
    if Keys.Tokenizer.MODEL not in files.metadata:
        return _sparse_with_vocab(files, out_dir / files.shards[0].path.name)
    for shard, size in zip(files.shards, full_sizes(files)):
        with open(shard.path, "rb") as src:
            header = src.read(shard.data_offset)
        fd = os.open(out_dir / shard.path.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            out.truncate(size)
    return out_dir / files.shards[0].path.name



def _sparse_with_vocab(files: GGUFModelFiles, path: Path) -> Path:
    md = {k: v for k, v in files.metadata.items() if k != "general.architecture" and not k.startswith("split.")}
    arch = str(files.metadata["general.architecture"])
    n_vocab = int(md.get(f"{arch}.vocab_size") or next(
        (t.shape[1] for t in files.tensors if t.name == "token_embd.weight" and len(t.shape) > 1), 0))
    md.update(spm_vocab(n_vocab))
    tensors = [(t.name, t.shape, t.ggml_type) for t in files.tensors]
    write_gguf(path, arch, md, tensors)
    header_end = path.stat().st_size
    align = int(md.get("general.alignment", 32))
    data = 0
    for t in files.tensors:  # GGUFWriter's layout: each tensor's data aligned in file order
        data = -(-data // align) * align + t.n_bytes
    with open(path, "r+b") as out:
        out.truncate(-(-header_end // align) * align + data)
    return path


__all__ = ["GGUFTensor", "SHARD_NAME_FORMAT", "TensorData", "full_sizes", "has_tensor_data", "shard_paths",
           "sparse_copy", "spm_vocab", "tensor_nbytes",
           "write_gguf"]
