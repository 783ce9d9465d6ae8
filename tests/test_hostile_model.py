"""Hostile GGUF headers past the reader: metadata values later code cannot use, counts that would
take minutes, compressed headers. Each class is refused at the boundary with exit 2, one
``error:`` line naming the key and value, a ``hint:`` line, and no traceback."""
from __future__ import annotations

import io
import lzma
import struct
import tempfile
import time
import tracemalloc
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from omni_place import gguf
from omni_place.bench.calibrate import MAX_HEADER_BYTES, _load_xz_header
from omni_place.cli import main
from omni_place.errors import GGUFFormatError, InvalidArgumentError
from omni_place.gguf import iter_layer_tensors, read_model_files
from omni_place.hparams import MAX_EXPERTS, MAX_LAYERS
from omni_place.model import load_model
from omni_place.reference_models import write_header_only

from .arch_models import tiny_llama_spec
from .test_cli_errors import assert_one_line_error

U64_MAX = (1 << 64) - 1


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def header(tmp: Path, name: str, **changes: Any) -> Path:
    """The tiny llama header with metadata keys changed (value None: key removed)."""
    spec = tiny_llama_spec()
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            spec.metadata.pop(key, None)
        else:
            spec.metadata[key] = value
    return write_header_only(spec, tmp / f"{name}.gguf")[0]


# (metadata changes, the key the error names, a fragment of the message)
HOSTILE_METADATA = [
    pytest.param({"llama.vocab_size": "abc"}, "llama.vocab_size", "must be an integer", id="vocab string"),
    pytest.param({"llama.vocab_size": float("nan")}, "llama.vocab_size", "must be an integer", id="vocab NaN"),
    pytest.param({"llama.vocab_size": [1, 2, 3]}, "llama.vocab_size", "must be an integer", id="vocab array"),
    pytest.param({"llama.vocab_size": U64_MAX}, "llama.vocab_size", "18446744073709551615", id="vocab 2^64-1"),
    pytest.param({"llama.expert_count": 4, "llama.expert_used_count": 8}, "llama.expert_used_count",
                 "1..expert_count", id="experts used > count"),
    pytest.param({"llama.expert_count": 4, "llama.expert_used_count": 0}, "llama.expert_used_count",
                 "1..expert_count", id="experts used 0"),
    pytest.param({"llama.expert_count": 4}, "llama.expert_used_count", "1..expert_count", id="experts used missing"),
    pytest.param({"llama.expert_used_count": 2}, "llama.expert_used_count", "0 without experts",
                 id="experts used without experts"),
    pytest.param({"llama.expert_count": MAX_EXPERTS + 1, "llama.expert_used_count": 2}, "llama.expert_count",
                 "out of range", id="experts over LLAMA_MAX_EXPERTS"),
    pytest.param({"llama.block_count": MAX_LAYERS + 1}, "llama.block_count", "out of range",
                 id="layers over LLAMA_MAX_LAYERS"),
    pytest.param({"llama.block_count": 0}, "llama.block_count", "out of range", id="no layers"),
    pytest.param({"llama.attention.head_count": U64_MAX}, "llama.attention.head_count", "out of range",
                 id="heads 2^64-1"),
    pytest.param({"llama.attention.head_count_kv": U64_MAX}, "llama.attention.head_count_kv", "out of range",
                 id="kv heads 2^64-1"),
    pytest.param({"llama.attention.head_count_kv": 8}, "llama.attention.head_count_kv", "exceeds head_count",
                 id="kv heads > heads"),
    # found by the GGUF fuzzer: the compute graph's n_head / n_head_kv divided by zero
    pytest.param({"llama.attention.head_count_kv": 0}, "llama.attention.head_count_kv", "no recurrent layers",
                 id="kv heads 0 in a model without recurrent layers"),
    pytest.param({"llama.attention.head_count": 0}, "llama.attention.head_count", "missing or 0",
                 id="no attention heads"),
    pytest.param({"llama.attention.head_count": [4, 4, 4]}, "llama.attention.head_count", "has 3 entries",
                 id="per-layer heads of the wrong length"),
    pytest.param({"llama.attention.head_count": [4, -4]}, "llama.attention.head_count[1]", "out of range",
                 id="negative per-layer heads"),
    pytest.param({"llama.embedding_length": 0}, "llama.embedding_length", "out of range", id="embedding 0"),
    pytest.param({"llama.embedding_length": U64_MAX}, "llama.embedding_length", "out of range",
                 id="embedding 2^64-1"),
    pytest.param({"llama.embedding_length": 2.5}, "llama.embedding_length", "must be an integer",
                 id="embedding float"),
    pytest.param({"llama.embedding_length": True}, "llama.embedding_length", "must be an integer",
                 id="embedding bool"),
    pytest.param({"llama.attention.key_length": U64_MAX}, "llama.attention.key_length", "out of range",
                 id="head dim 2^64-1"),
    pytest.param({"llama.attention.kv_lora_rank": 1 << 63}, "llama.attention.kv_lora_rank", "out of range",
                 id="MLA rank 2^63"),
    pytest.param({"llama.context_length": U64_MAX}, "llama.context_length", "out of range", id="context 2^64-1"),
    pytest.param({"llama.context_length": -1}, "llama.context_length", "out of range", id="context negative"),
    pytest.param({"llama.feed_forward_length": U64_MAX}, "llama.feed_forward_length", "out of range",
                 id="ffn 2^64-1"),
    pytest.param({"llama.nextn_predict_layers": 2}, "llama.nextn_predict_layers", "out of range",
                 id="every block NextN"),
    pytest.param({"llama.leading_dense_block_count": 1 << 40}, "llama.leading_dense_block_count", "out of range",
                 id="dense lead 2^40"),
    pytest.param({"llama.ssm.inner_size": U64_MAX}, "llama.ssm.inner_size", "out of range", id="ssm 2^64-1"),
    pytest.param({"llama.attention.sliding_window": U64_MAX}, "llama.attention.sliding_window", "out of range",
                 id="window 2^64-1"),
    pytest.param({"llama.attention.sliding_window": 128, "llama.attention.sliding_window_pattern": "x"},
                 "llama.attention.sliding_window_pattern", "must be an integer", id="swa pattern string"),
    pytest.param({"llama.attention.sliding_window": 128, "llama.attention.sliding_window_pattern": [3, 1]},
                 "llama.attention.sliding_window_pattern[0]", "out of range", id="swa pattern entry 3"),
    pytest.param({"llama.rope.dimension_count": U64_MAX}, "llama.rope.dimension_count", "out of range",
                 id="rope 2^64-1"),
    pytest.param({"llama.block_count": None}, "llama.block_count", "missing", id="block count missing"),
]


@pytest.mark.parametrize("command", ["inspect", "plan", "check"])
@pytest.mark.parametrize(("changes", "key", "fragment"), HOSTILE_METADATA)
def test_unusable_metadata_is_refused_naming_the_key(tmp_path: Path, command: str, changes: dict[str, Any],
                                                      key: str, fragment: str) -> None:
    path = header(tmp_path, "m", **changes)
    args = {"inspect": ["inspect", str(path)], "plan": ["plan", str(path), "--preset", "seed"],
            "check": ["check", str(path), "--preset", "seed", "--", "-ngl", "99"]}[command]
    code, out, err = run(args)
    assert_one_line_error(code, out, err, key)
    assert fragment in err.splitlines()[0], err
    if "missing" not in fragment:
        assert str(path) in err.splitlines()[0], err  # the file is named too


def test_the_engine_rule_on_expert_counts_is_the_boundary(tmp_path: Path) -> None:
    """1 <= expert_used_count <= expert_count is accepted (llama-model.cpp GGML_ASSERTs both)."""
    for used in (1, 4):
        prof = load_model(header(tmp_path, f"ok{used}", **{"llama.expert_count": 4, "llama.expert_used_count": used}))
        assert (prof.hparams.n_expert, prof.hparams.n_expert_used) == (4, used)
    per_layer = load_model(header(tmp_path, "arr", **{"llama.expert_count": 8, "llama.expert_used_count": [2, 6]}))
    assert per_layer.hparams.n_expert_used == 6  # the engine validates the maximum over layers


def test_a_header_without_tensors_is_refused(tmp_path: Path) -> None:
    spec = tiny_llama_spec()
    spec.tensors = []
    path = write_header_only(spec, tmp_path / "empty.gguf")[0]
    code, out, err = run(["plan", str(path), "--preset", "seed", "--format", "json"])
    assert_one_line_error(code, out, err, "lists no tensors")


@pytest.mark.parametrize("name", ["blk.\u0663.attn_q.weight", "blk.\uff11.attn_q.weight", "blk.01.attn_q.weight",
                                  "blk." + "9" * 5000 + ".attn_q.weight"])
def test_layer_numbers_are_what_the_engine_writes(name: str) -> None:
    """Non-ASCII digits, leading zeros or 5000 digits are no layer number of the engine's
    ("blk.%d."): such a tensor is a global one, never an int() that raises."""
    info = gguf.TensorInfo(name, (32,), 0, 0, 0)
    assert [(layer, inner) for layer, inner, _ in iter_layer_tensors([info])] == [(None, name)]


# ---------------------------------------------------------------------------------------------
# Work bounded by input size
# ---------------------------------------------------------------------------------------------


def _many_tensors(path: Path, n: int) -> Path:
    """A header of ``n`` one-row F32 tensors (raw bytes: the writer would take longer than the reader)."""
    def s(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b
    kv = [(b"general.architecture", 8, s(b"llama")), (b"llama.block_count", 4, struct.pack("<I", 2)),
          (b"llama.embedding_length", 4, struct.pack("<I", 32)),
          (b"llama.attention.head_count", 4, struct.pack("<I", 4))]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, n, len(kv)))
    for k, t, v in kv:
        out += s(k) + struct.pack("<I", t) + v
    for i in range(n):
        out += s(f"blk.{i % 2}.x{i}.weight".encode()) + struct.pack("<IQIQ", 1, 32, 0, 0)
    path.write_bytes(out)
    return path


def test_a_million_tiny_tensors_are_refused_before_reading(tmp_path: Path) -> None:
    """A million tensors took 37 s and 1.1 GiB to read, profile and plan; the count is refused from
    the header's first 24 bytes, in milliseconds and without allocating."""
    path = _many_tensors(tmp_path / "million.gguf", 1_000_000)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(GGUFFormatError, match="1000000 tensors; omni_place reads at most"):
            read_model_files(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 0.5
    assert peak < 8 << 20


def test_reading_time_is_linear_in_the_tensor_count(tmp_path: Path) -> None:
    """Per-tensor cost stays flat from 2k to 16k tensors (no quadratic step), so the limit of
    MAX_TENSORS bounds the time of any header."""
    def per_tensor(n: int) -> float:
        path = _many_tensors(tmp_path / f"t{n}.gguf", n)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            load_model(path)
            best = min(best, time.perf_counter() - t0)
        return best / n
    small, large = per_tensor(2048), per_tensor(16384)
    assert large < 3 * small, (small, large)
    assert large * gguf.MAX_TENSORS < 5.0  # the worst header reads and profiles well under 5 s


def test_shards_are_counted_while_they_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_header_only(tiny_llama_spec(), tmp_path / "m.gguf", shards=3)
    monkeypatch.setattr(gguf, "MAX_TENSORS", 12)  # 21 tensors in 3 shards of 7
    with pytest.raises(GGUFFormatError, match=r"first 2 shards hold 14 tensors") as err:
        read_model_files(paths[0])
    assert str(paths[1]) in err.value.message


# ---------------------------------------------------------------------------------------------
# Compressed headers (calibrate's NAME.hdr.gguf.xz)
# ---------------------------------------------------------------------------------------------


def _temp_entries() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith("omni_place")}


def test_xz_header_is_streamed_into_a_private_folder_and_removed(tmp_path: Path) -> None:
    plain = write_header_only(tiny_llama_spec(), tmp_path / "tiny.hdr.gguf")[0]
    xz = tmp_path / "tiny.hdr.gguf.xz"
    xz.write_bytes(lzma.compress(plain.read_bytes()))
    plain.unlink()
    before = _temp_entries()
    prof = _load_xz_header(xz)
    assert prof.n_layer == 2 and prof.architecture == "llama"
    assert _temp_entries() == before  # nothing left behind, no predictable name reused


def test_xz_bomb_is_cut_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small .xz that inflates to gigabytes stops at MAX_HEADER_BYTES, in bounded memory."""
    import omni_place.bench.calibrate as cal

    monkeypatch.setattr(cal, "MAX_HEADER_BYTES", 8 << 20)
    xz = tmp_path / "bomb.hdr.gguf.xz"
    xz.write_bytes(lzma.compress(b"GGUF" + bytes(64 << 20)))  # 64 MiB of zeros, ~10 KiB packed
    before = _temp_entries()
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgumentError, match="decompresses to more than 8388608 bytes"):
            _load_xz_header(xz)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    assert _temp_entries() == before
    assert MAX_HEADER_BYTES >= 64 << 20  # the real cap fits a header with a full tokenizer


@pytest.mark.parametrize("data, fragment", [(b"not xz at all", "not a valid .xz"),
                                            (lzma.compress(b"GGUF" * 1000)[:40], "truncated|not a valid")])
def test_corrupt_xz_is_refused(tmp_path: Path, data: bytes, fragment: str) -> None:
    xz = tmp_path / "bad.hdr.gguf.xz"
    xz.write_bytes(data)
    with pytest.raises(InvalidArgumentError, match=fragment):
        _load_xz_header(xz)


def test_sliding_window_flags_may_be_bools_or_bits(tmp_path: Path) -> None:
    """A per-layer SWA pattern is a BOOL array as converters write it (or 0/1 integers)."""
    for pattern in ([True, False], [1, 0]):
        prof = load_model(header(tmp_path, f"swa{pattern[1]!r}", **{
            "llama.attention.sliding_window": 128, "llama.attention.sliding_window_pattern": pattern}))
        assert prof.hparams.is_swa == (True, False)


def test_layers_without_tensors_are_refused(tmp_path: Path) -> None:
    """A header whose blocks lost their tensor infos priced at 0 s per token: Infinity tok/s in
    the plan JSON. The engine refuses it ("missing tensor"), and so does the reader now."""
    spec = tiny_llama_spec()
    spec.tensors = [t for t in spec.tensors if not t[0].startswith("blk.1.")]
    path = write_header_only(spec, tmp_path / "holes.gguf")[0]
    code, out, err = run(["plan", str(path), "--preset", "seed", "--format", "json"])
    assert_one_line_error(code, out, err, "block_count is 2 but layer 1 has no tensors")
