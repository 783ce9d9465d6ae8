"""The header reader on real (header-only and split) files and on hostile bytes."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from omni_place import _core, gguf
from omni_place.errors import GGUFFormatError, MissingShardError
from omni_place.gguf import LongArray, read_header, read_model_files
from omni_place.reference_models import write_header_only

from .arch_models import tiny_llama_spec as small_spec


def test_value_type_sizes_have_one_source() -> None:
    """The C core's sizes (the one table) are gguf-py's, and the reader decodes with them."""
    fixed = {int(t) for t in GGUFValueType} - {GGUFValueType.STRING, GGUFValueType.ARRAY}
    assert set(_core.GGUF_TYPE_SIZES) == fixed
    assert _core.GGUF_TYPE_SIZES == {int(t): np.dtype(v).itemsize for t, v in GGUFReader.gguf_scalar_to_np.items()}
    assert (_core.GGUF_STRING, _core.GGUF_ARRAY) == (GGUFValueType.STRING, GGUFValueType.ARRAY)
    assert gguf._SCALAR_SIZES == _core.GGUF_TYPE_SIZES
    assert {t: struct.calcsize(f) for t, f in gguf._SCALAR_FORMATS.items()} == _core.GGUF_TYPE_SIZES


@pytest.fixture
def header_only(tmp_path: Path) -> Path:
    return write_header_only(small_spec(), tmp_path / "tiny.gguf", with_vocab=False)[0]


def test_header_only_file_reads_every_tensor(header_only: Path) -> None:
    h = read_header(header_only)
    assert h.version == 3
    assert h.metadata["llama.block_count"] == 2
    spec = small_spec()
    assert [t.name for t in h.tensors] == [n for n, _, _ in spec.tensors]
    by_name = {t.name: t for t in h.tensors}
    # bytes as stored: elements / block * type size, exactly
    assert by_name["blk.0.attn_q.weight"].n_bytes == 256 * 256 // 32 * 34
    assert by_name["blk.0.attn_v.weight"].n_bytes == 256 * 128 // 256 * 210
    assert by_name["token_embd.weight"].n_bytes == 256 * 1000 // 256 * 144
    assert by_name["blk.1.ffn_down.weight"].shape == (512, 256)
    assert h.file_size < 8192  # no tensor data


def test_long_arrays_keep_only_their_length(tmp_path: Path) -> None:
    spec = small_spec()
    spec.n_vocab = 20000
    p = write_header_only(spec, tmp_path / "v.gguf", with_vocab=True)[0]
    md = read_header(p).metadata
    assert isinstance(md["tokenizer.ggml.tokens"], LongArray)
    assert len(md["tokenizer.ggml.tokens"]) == 20000
    assert len(md["tokenizer.ggml.merges"]) == 20000 - 1500


def test_split_model_reads_all_shards_from_any_shard(tmp_path: Path) -> None:
    paths = write_header_only(small_spec(), tmp_path / "m.gguf", shards=3)
    assert [p.name for p in paths] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    files = read_model_files(paths[1])  # any shard finds the first
    assert len(files.shards) == 3
    assert len(files.tensors) == len(small_spec().tensors)
    assert {t.shard for t in files.tensors} == {0, 1, 2}


def test_missing_shard_is_named(tmp_path: Path) -> None:
    paths = write_header_only(small_spec(), tmp_path / "m.gguf", shards=3)
    paths[2].unlink()
    with pytest.raises(MissingShardError, match="m-00003-of-00003.gguf"):
        read_model_files(paths[0])


def test_shards_from_different_splits_are_refused(tmp_path: Path) -> None:
    a = write_header_only(small_spec(), tmp_path / "a" / "m.gguf", shards=3) if (tmp_path / "a").mkdir() is None else []
    b = write_header_only(small_spec(), tmp_path / "b" / "m.gguf", shards=2) if (tmp_path / "b").mkdir() is None else []
    a[1].write_bytes(b[1].read_bytes())  # shard 2 of a 2-way split dropped into a 3-way split
    with pytest.raises(GGUFFormatError, match="expected 1 of 3|split.count"):
        read_model_files(a[0])


# --- hostile bytes ------------------------------------------------------------------------

def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _tensor(name: str, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    n = name.encode()
    return (struct.pack("<Q", len(n)) + n + struct.pack("<I", len(dims))
            + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ggml_type, offset))


HOSTILE = {
    "bad magic": (b"GGML" + b"\0" * 40, "not a GGUF file"),
    "version 1": (_header(0, 0, version=1) + b"\0" * 8, "version 1 is not supported"),
    "version 4": (_header(0, 0, version=4) + b"\0" * 8, "version 4 is not supported"),
    "big endian": (b"GGUF" + struct.pack(">I", 3) + b"\0" * 24, "big-endian"),
    "absurd kv count": (_header(0, 1 << 60), "more than"),
    "absurd tensor count": (_header(1 << 59, 0), "more than"),
    "absurd string length": (_header(0, 1) + struct.pack("<Q", 1 << 62) + b"x" * 16, "truncated header"),
    "absurd array length": (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 1 << 61)
                            + b"\0" * 16, "truncated header"),
    "nested array": (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 9, 1) + b"\0" * 16, "nested"),
    "unknown value type": (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77) + b"\0" * 16,
                           "unknown value type"),
    "duplicate key": (_header(0, 2) + _kv_string("a", "x") + _kv_string("a", "y"), "duplicate metadata key"),
    "five dims": (_header(1, 0) + _tensor("t", [1, 1, 1, 1, 1]), "5 dimensions"),
    "zero dim": (_header(1, 0) + _tensor("t", [4, 0]), "invalid shape"),
    "unknown ggml type": (_header(1, 0) + _tensor("t", [4], ggml_type=250), "unknown ggml type"),
    "row not a block multiple": (_header(1, 0) + _tensor("t", [100], ggml_type=8), "multiple of 32"),
    "duplicate tensor": (_header(2, 0) + _tensor("t", [4]) + _tensor("t", [4], offset=32), "duplicate tensor name"),
    "misaligned offset": (_header(1, 0) + _tensor("t", [4], offset=7), "not 32-aligned"),
    "alignment not power of two": (
        _header(0, 1) + struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 48), "power of two"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_give_one_clear_error(tmp_path: Path, case: str) -> None:
    data, message = HOSTILE[case]
    p = tmp_path / "bad.gguf"
    p.write_bytes(data + b"\0" * max(0, 24 - len(data)))
    with pytest.raises(GGUFFormatError, match=message) as err:
        read_header(p)
    assert "\n" not in str(err.value)


def test_every_truncation_of_a_real_header_is_a_format_error(header_only: Path, tmp_path: Path) -> None:
    data = header_only.read_bytes()
    h = read_header(header_only)
    end = h.data_offset
    p = tmp_path / "cut.gguf"
    for cut in range(0, end - 32, 7):
        p.write_bytes(data[:cut])
        with pytest.raises(GGUFFormatError):
            read_header(p)


def test_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFFormatError, match="no such file"):
        read_header(tmp_path / "nope.gguf")
    with pytest.raises(GGUFFormatError, match="is a directory"):
        read_header(tmp_path)


def test_truncation_inside_a_long_vocabulary_names_the_key(tmp_path: Path) -> None:
    spec = small_spec()
    spec.n_vocab = 20000
    data = write_header_only(spec, tmp_path / "v.gguf", with_vocab=True)[0].read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in (len(data) // 8, len(data) // 4):  # both inside tokenizer.ggml.tokens
        cut.write_bytes(data[:n])
        with pytest.raises(GGUFFormatError, match="truncated header: 'tokenizer.ggml.tokens'"):
            read_header(cut)
