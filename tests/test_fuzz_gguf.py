"""Hostile GGUF files, fuzzed: the reader never crashes, hangs or allocates much.

The >= 100k-case run is ``benchmarks/fuzz_gguf.py`` (its record is in benchmarks/results/); this
module runs the same structured mutations (tests/gguf_fuzz.py) under hypothesis in CI
(OMNI_PLACE_FUZZ_EXAMPLES, default 300), raw bytes after a valid preamble, the C skip helpers
against a Python oracle (with gguf-py's value sizes, not the core's own table), and
the cases a mutator reaches poorly: FIFOs and devices, huge (sparse) files whose lengths point
into gigabytes of tensor data, the allocation limits, and split shards that disagree.
Every failure must be a GGUFFormatError / MissingShardError with a one-line message, and the
CLI must print ``error:`` + ``hint:`` and exit 2.
"""
from __future__ import annotations

import io
import json
import os
import random
import resource
import struct
import threading
import tracemalloc
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_place import _core, gguf
from omni_place.cli import main
from omni_place.errors import GGUFFormatError, MissingShardError, NothingFitsError, OmniPlaceError
from omni_place.gguf import read_header, read_model_files
from omni_place.model import load_model
from omni_place.plan import plan_split
from omni_place.reference_models import write_header_only
from omni_place.units import MiB

from . import gguf_fuzz as fz

EXAMPLES = int(os.environ.get("OMNI_PLACE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list:
    return fz.make_seeds(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def casedir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("case")


def assert_clean_error(err: OmniPlaceError) -> None:
    assert err.message and "\n" not in err.message and len(err.message) <= 1000, err.message
    assert "\n" not in (err.hint or "")
    assert err.exit_code == (3 if isinstance(err, NothingFitsError) else 2), (type(err), err.exit_code)


def read_or_clean_error(path: Path) -> str:
    """'ok' or the error class; anything but an OmniPlaceError propagates (= a crash)."""
    try:
        read_model_files(path)
        json.loads(plan_split(load_model(path), "seed").to_json())  # what the reader lets through is usable
        return "ok"
    except OmniPlaceError as err:
        assert_clean_error(err)
        return type(err).__name__


# ---------------------------------------------------------------------------------------------
# Fuzzing
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_structured_mutations_of_real_headers(seeds: list, casedir: Path, rnd: random.Random) -> None:
    _, files, _ = fz.make_case(seeds, 0, 0, rnd=rnd)
    read_or_clean_error(fz.write_case(casedir, files))


@FUZZ
@given(body=st.binary(max_size=512), n_tensors=st.sampled_from([0, 1, 2, 3, 1 << 20, 1 << 63]),
       n_kv=st.sampled_from([0, 1, 2, 5, 1 << 32, (1 << 64) - 1]), version=st.sampled_from([2, 3]))
def test_random_bytes_after_a_valid_preamble(casedir: Path, body: bytes, n_tensors: int, n_kv: int,
                                             version: int) -> None:
    p = casedir / "raw.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + body)
    try:
        read_header(p)
    except GGUFFormatError as err:
        assert_clean_error(err)


# bytes of each fixed-size value type as gguf-py reads them: independent of the C core's table
_GGUF_PY_SIZES = {int(t): np.dtype(v).itemsize for t, v in GGUFReader.gguf_scalar_to_np.items()}


def _skip_oracle(buf: bytes, off: int, etype: int, n: int) -> int | None:
    """Python reference for op_gguf_skip_array: end offset or None for an error."""
    if off > len(buf):
        return None
    if etype == _core.GGUF_STRING:
        for _ in range(n):
            if len(buf) - off < 8:
                return None
            (ln,) = struct.unpack_from("<Q", buf, off)
            if ln > len(buf) - off - 8:
                return None
            off += 8 + ln
        return off
    size = _GGUF_PY_SIZES.get(etype)
    if size is None or n * size > len(buf) - off:
        return None
    return off + n * size


@st.composite
def string_blobs(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        s = draw(st.binary(max_size=12))
        ln = draw(st.sampled_from([len(s), len(s), len(s), len(s) + 1, 1 << 63, (1 << 64) - 1, 0]))
        parts.append(struct.pack("<Q", ln) + s)
    return b"".join(parts) + draw(st.binary(max_size=9))


@FUZZ
@given(buf=string_blobs(), off=st.integers(0, 40), etype=st.integers(0, 14),
       n=st.one_of(st.integers(0, 8), st.sampled_from([1 << 32, 1 << 62, (1 << 64) - 1])))
def test_c_skip_helpers_match_a_python_oracle(buf: bytes, off: int, etype: int, n: int) -> None:
    want = _skip_oracle(buf, off, etype, n) if etype != _core.GGUF_ARRAY else None
    for view in (buf, bytearray(buf), memoryview(buf)):
        try:
            got = _core.skip_array(view, off, etype, n)
        except GGUFFormatError as err:
            assert want is None, (want, err)
            assert_clean_error(err)
        else:
            assert got == want


# ---------------------------------------------------------------------------------------------
# Bounded memory: lengths that point into gigabytes of (sparse) tensor data
# ---------------------------------------------------------------------------------------------


def _kv_str_header(key: bytes, value_len: int, n_tensors: int = 0) -> bytes:
    return (b"GGUF" + struct.pack("<IQQ", 3, n_tensors, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IQ", 8, value_len))


def _sparse(path: Path, head: bytes, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)  # sparse: no disk blocks, reads as zeros
    return path


@pytest.mark.parametrize("what, head", [
    ("metadata string", _kv_str_header(b"general.name", 1 << 30)),
    ("metadata key", struct.pack("<4sIQQQ", b"GGUF", 3, 0, 1, 1 << 30)),
    ("tensor name", struct.pack("<4sIQQQ", b"GGUF", 3, 1, 0, 1 << 30)),
    ("string array", b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1) + b"k"
     + struct.pack("<IIQ", 9, 8, 4000) + struct.pack("<Q", 1 << 28)),
], ids=lambda x: x if isinstance(x, str) else "")
def test_huge_lengths_inside_a_huge_file_do_not_allocate(tmp_path: Path, what: str, head: bytes) -> None:
    """A corrupt length in a 2 GiB shard must not copy gigabytes into a Python string."""
    p = _sparse(tmp_path / "big.gguf", head, 2 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(GGUFFormatError) as err:
            read_header(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_clean_error(err.value)
    assert peak < 64 * MiB, f"{what}: {peak / MiB:.0f} MiB allocated"


def test_all_strings_of_a_header_together_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many values each under the per-string limit still hit the per-header budget."""
    monkeypatch.setattr(gguf, "MAX_STRING_BYTES", 1000)
    monkeypatch.setattr(gguf, "MAX_MATERIALIZED_BYTES", 3500)
    n = 5
    body = b"".join(struct.pack("<Q", 2) + f"k{i}".encode() + struct.pack("<IQ", 8, 900) + b"v" * 900
                    for i in range(n))
    p = tmp_path / "many.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, n) + body)
    with pytest.raises(GGUFFormatError, match="'k3': string of 900 bytes exceeds the limit") as err:
        read_header(p)
    assert_clean_error(err.value)
    monkeypatch.setattr(gguf, "MAX_MATERIALIZED_BYTES", 5000)
    assert read_header(p).metadata["k4"] == "v" * 900


def test_long_names_are_refused_and_shortened_in_the_message(tmp_path: Path) -> None:
    name = b"blk.0." + b"x\n" * (gguf.MAX_NAME_BYTES // 2)
    p = tmp_path / "long.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 1, 0, len(name)) + name + b"\0" * 64)
    with pytest.raises(GGUFFormatError, match="exceeds the limit") as err:
        read_header(p)
    assert_clean_error(err.value)
    # a name under the limit but full of newlines, in a later error: escaped and shortened
    name = b"t\n" * 300
    p.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 1, 0, len(name)) + name + struct.pack("<I", 9) + b"\0" * 64)
    with pytest.raises(GGUFFormatError, match="9 dimensions") as err:
        read_header(p)
    assert_clean_error(err.value)
    assert len(err.value.message) < 300


def test_counts_over_the_limits_are_refused_before_parsing(tmp_path: Path) -> None:
    head = b"GGUF" + struct.pack("<IQQ", 3, gguf.MAX_TENSORS + 1, 0)
    p = _sparse(tmp_path / "many.gguf", head, (gguf.MAX_TENSORS + 2) * 64)
    with pytest.raises(GGUFFormatError, match="65537 tensors; omni_place reads at most"):
        read_header(p)


# ---------------------------------------------------------------------------------------------
# Not a regular file
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    box: list[BaseException | None] = []

    def target() -> None:
        try:
            read_header(fifo)
            box.append(None)
        except BaseException as err:  # noqa: BLE001
            box.append(err)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader so the test process can exit, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail("read_header blocked on a FIFO")
    assert isinstance(box[0], GGUFFormatError) and "not a regular file" in str(box[0])


@pytest.mark.parametrize("dev", ["/dev/null", "/dev/zero", "/proc/self/status"])
def test_devices_and_proc_files(dev: str) -> None:
    if not os.path.exists(dev):
        pytest.skip(f"no {dev}")
    with pytest.raises(GGUFFormatError) as err:
        read_header(dev)
    assert_clean_error(err.value)


def test_unreadable_file(tmp_path: Path, small_header: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    small_header.chmod(0)
    with pytest.raises(GGUFFormatError, match="cannot open"):
        read_header(small_header)


# ---------------------------------------------------------------------------------------------
# Shards that disagree
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_header(tmp_path: Path) -> Path:
    return write_header_only(fz.small_spec(), tmp_path / "tiny.gguf")[0]


def _set_kv(data: bytes, key: str, vtype: int, packed: bytes) -> bytes:
    """Replace the value of an existing scalar KV (same size)."""
    k = key.encode()
    i = data.index(struct.pack("<Q", len(k)) + k) + 8 + len(k)
    assert struct.unpack_from("<I", data, i)[0] == vtype
    return data[:i + 4] + packed + data[i + 4 + len(packed):]


def _split(tmp_path: Path, shards: int = 3) -> list[Path]:
    return write_header_only(fz.small_spec(), tmp_path / "m.gguf", shards=shards)


@pytest.mark.parametrize("case, match", [
    ("count disagrees", "split.count=4|expected 2 of 3"),
    ("no disagrees", "split.no=2"),
    ("tensors.count wrong", "split.tensors.count says 99"),
    ("tensor in two shards", "also appears in another shard"),
    ("split.count zero", "invalid split.count 0"),
    ("renamed first shard", "name is not"),
    ("shard not GGUF", "not a GGUF file"),
    ("split.count vs file name", "split.count=5 but the file name says 3 shards"),
    ("many shards missing", "missing: m-00002-of-00050.gguf, .* and 41 more"),
    ("shard truncated", "truncated header|more than 100 bytes"),
])
def test_shards_that_disagree(tmp_path: Path, case: str, match: str) -> None:
    paths = _split(tmp_path)
    first, second = paths[0], paths[1]
    if case == "count disagrees":
        second.write_bytes(_set_kv(second.read_bytes(), "split.count", 2, struct.pack("<H", 4)))
    elif case == "no disagrees":
        second.write_bytes(_set_kv(second.read_bytes(), "split.no", 2, struct.pack("<H", 2)))
    elif case == "tensors.count wrong":
        first.write_bytes(_set_kv(first.read_bytes(), "split.tensors.count", 5, struct.pack("<i", 99)))
    elif case == "tensor in two shards":
        b = second.read_bytes()
        h = read_header(second)
        name = h.tensors[0].name.encode()
        # rename shard 2's first tensor to shard 1's first tensor (same length names)
        other = next(t.name for t in read_header(first).tensors if len(t.name) == len(name) and t.name.encode() != name)
        second.write_bytes(b.replace(struct.pack("<Q", len(name)) + name,
                                     struct.pack("<Q", len(name)) + other.encode(), 1))
    elif case == "split.count zero":
        first.write_bytes(_set_kv(first.read_bytes(), "split.count", 2, struct.pack("<H", 0)))
    elif case == "split.count vs file name":
        first.write_bytes(_set_kv(first.read_bytes(), "split.count", 2, struct.pack("<H", 5)))
    elif case == "many shards missing":
        data = _set_kv(first.read_bytes(), "split.count", 2, struct.pack("<H", 50))
        first = tmp_path / "m-00001-of-00050.gguf"
        first.write_bytes(data)
    elif case == "renamed first shard":
        first = first.rename(tmp_path / "renamed.gguf")
    elif case == "shard not GGUF":
        paths[2].write_bytes(b"<html>404 Not Found</html>" + b"\0" * 64)
    elif case == "shard truncated":
        paths[2].write_bytes(paths[2].read_bytes()[:100])  # cut mid-header
    with pytest.raises((GGUFFormatError, MissingShardError), match=match) as err:
        read_model_files(first)
    assert_clean_error(err.value)


# ---------------------------------------------------------------------------------------------
# Through the CLI: exit 2, `error:` + `hint:`, no traceback
# ---------------------------------------------------------------------------------------------


HOSTILE_FILES = {
    "empty": b"",
    "html": b"<!DOCTYPE html><html>rate limited</html>",
    "truncated": b"GGUF\x03\0\0\0\x05",
    "absurd kv count": b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 60) + b"\0" * 8,
    "absurd string": _kv_str_header(b"general.name", 1 << 62) + b"\0" * 16,
    "version 9": b"GGUF" + struct.pack("<IQQ", 9, 0, 0),
}


@pytest.mark.parametrize("command", ["inspect", "plan"])
@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_cli_on_hostile_files(tmp_path: Path, command: str, case: str) -> None:
    p = tmp_path / "model.gguf"
    p.write_bytes(HOSTILE_FILES[case])
    args = [command, str(p)] + (["--preset", "seed"] if command == "plan" else [])
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    lines = err.getvalue().splitlines()
    assert code == 2, err.getvalue()
    assert out.getvalue() == ""
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), lines
    assert str(p) in lines[0]


def test_fuzz_peak_rss_is_flat(seeds: list, casedir: Path) -> None:
    """A few hundred deterministic mutations add no resident memory to speak of."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for case in range(300):
        _, files, _ = fz.make_case(seeds, 1, case)
        read_or_clean_error(fz.write_case(casedir, files))
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, grown_mib


@pytest.mark.parametrize(("seed", "case"), [
    (2323, 1056),  # llama-split3, hparams mutated: a KV head width of 0 divided split-mode pricing by zero
    (2323, 4445),  # glm4moe, hparams mutated: an unpriced recipe reached the split modes' prompt floor
])
def test_cases_the_fuzz_driver_found(seeds: list, tmp_path: Path, seed: int, case: int) -> None:
    """Crashes ``python -m benchmarks.fuzz_gguf --seed 2323`` found in ``plan_split``'s split-mode
    pricing (``--replay CASE`` reproduces each), now a plan or a clean error."""
    _, files, _ = fz.make_case(seeds, seed, case)
    read_or_clean_error(fz.write_case(tmp_path, files))
