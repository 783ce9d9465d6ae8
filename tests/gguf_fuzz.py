"""Structured mutations of real GGUF headers: the fuzzer shared by tests/test_fuzz_gguf.py (under
hypothesis) and benchmarks/fuzz_gguf.py (the >= 100k-case run).

Seeds are headers written by the project's own writers (``reference_models.write_header_only``,
``arch_models.write_model``): small and DeepSeek-sized llamas, a 5000-token vocabulary (the C skip
path), every test architecture, and 3-way split models. Each case applies 1-3 mutations that know
the GGUF layout (absurd lengths and counts, wrong magic/version/types/alignment, truncation at
field boundaries, duplicated or dropped KVs and tensor infos, bit flips, inserted bytes, shard
swaps, deletions and cross-shard duplicates, and hyper-parameters given hostile values of any
type: 2^64-1, negative, NaN, strings, arrays of the wrong length). Case ``i`` of run ``s`` is
deterministic.
"""
from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass
from pathlib import Path

from omni_place import _core
from omni_place.reference_models import deepseek_v3, write_header_only

from .arch_models import ARCHS, shard_paths, write_model
from .arch_models import tiny_llama_spec as small_spec

__all__ = ["Seed", "layout", "make_case", "make_seeds", "small_spec", "write_case"]

# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------


@dataclass
class Seed:
    name: str
    files: list[bytes]  # one per shard, in shard order
    weight: float


def make_seeds(workdir: Path, *, archs: bool = True) -> list[Seed]:
    """Real headers from the project's writers (deterministic)."""
    d = workdir / "seeds"
    d.mkdir(parents=True, exist_ok=True)
    seeds: list[Seed] = []

    def add(name: str, paths: list[Path], weight: float) -> None:
        seeds.append(Seed(name, [p.read_bytes() for p in paths], weight))

    add("llama-tiny", write_header_only(small_spec(), d / "tiny.gguf"), 4.0)
    add("llama-vocab5000", write_header_only(small_spec(5000), d / "vocab.gguf", with_vocab=True), 1.0)
    add("llama-split3", write_header_only(small_spec(), d / "split.gguf", shards=3), 2.0)
    add("deepseek-v3", write_header_only(deepseek_v3(), d / "ds.gguf"), 0.5)
    if archs:
        for arch in ARCHS:
            p = write_model(d / f"{arch}.gguf", arch, header_only=True)
            add(f"arch-{arch}", [p], 0.5)
        p = write_model(d / "qwen3moe-split.gguf", "qwen3moe", header_only=True, split=2)
        add("arch-qwen3moe-split2", shard_paths(p.with_name("qwen3moe-split.gguf"), 2), 0.5)
        # ik_llama.cpp's own types, with per-row scales (omni_place/data/ik_types.toml)
        p = write_model(d / "ik-types.gguf", "qwen3moe", header_only=True, weight_type="iq4_ks",
                        tensor_types={r"_exps\.": "iq2_kt", r"attn_v": "q6_0"})
        add("ik-types", [p], 0.5)
    return seeds


# ---------------------------------------------------------------------------------------------
# GGUF field map of a valid header (where each length, count, type and name lies)
# ---------------------------------------------------------------------------------------------

_SCALAR = _core.GGUF_TYPE_SIZES  # bytes of each fixed-size value type


@dataclass
class Field:
    kind: str  # magic version count_t count_kv len u32type ndims dim ggml_type offset value
    off: int
    size: int


@dataclass
class Layout:
    fields: list[Field]
    kvs: list[tuple[int, int, str]]  # (start, end, key)
    tensors: list[tuple[int, int]]  # (start, end) of each tensor info
    end: int  # end of the tensor infos


def layout(data: bytes) -> Layout:
    f: list[Field] = [Field("magic", 0, 4), Field("version", 4, 4), Field("count_t", 8, 8), Field("count_kv", 16, 8)]
    n_t, n_kv = struct.unpack_from("<QQ", data, 8)
    if (n_t + n_kv) * 8 > len(data):
        raise ValueError("counts too large")
    pos = 24
    kvs, tensors = [], []

    def check() -> None:
        if pos > len(data):
            raise ValueError("past the end")

    def u32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<I", data, pos)
        pos += 4
        return v

    def u64() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        return v

    def string(record: bool = True) -> str:
        nonlocal pos
        if record:
            f.append(Field("len", pos, 8))
        n = u64()
        s = data[pos:pos + n].decode("utf-8", "replace")
        pos += n
        check()
        return s

    for _ in range(n_kv):
        start = pos
        key = string()
        f.append(Field("u32type", pos, 4))
        vt = u32()
        if vt in _SCALAR:
            f.append(Field("value", pos, _SCALAR[vt]))
            pos += _SCALAR[vt]
        elif vt == 8:
            string()
        elif vt == 9:
            f.append(Field("u32type", pos, 4))
            et = u32()
            f.append(Field("len", pos, 8))
            n = u64()
            if et == 8:
                if n * 8 > len(data) - pos:
                    raise ValueError("array too long")
                for i in range(n):
                    string(record=i < 4)
            else:
                if n:
                    f.append(Field("value", pos, _SCALAR[et]))
                pos += n * _SCALAR[et]
        else:
            raise ValueError("unknown type")
        check()
        kvs.append((start, pos, key))
    for _ in range(n_t):
        start = pos
        string()
        f.append(Field("ndims", pos, 4))
        nd = u32()
        if nd > 8:
            raise ValueError("too many dims")
        for _ in range(nd):
            f.append(Field("dim", pos, 8))
            pos += 8
        f.append(Field("ggml_type", pos, 4))
        pos += 4
        f.append(Field("offset", pos, 8))
        pos += 8
        check()
        tensors.append((start, pos))
    return Layout(f, kvs, tensors, pos)


# ---------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------

U64_EDGES = (0, 1, 2, 7, 8, 31, 32, 255, 4096, 4097, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
             (1 << 62), (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
U32_EDGES = (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14, 15, 16, 30, 31, 39, 40, 255, 1 << 16,
             (1 << 31) - 1, 1 << 31, (1 << 32) - 1)


# Hyper-parameter keys (after "<arch>.") whose values later code uses: a mutation gives one a
# hostile value of any GGUF type (2^64-1, negative, NaN, a string, an array of the wrong length).
HPARAM_KEYS = ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv", "vocab_size",
               "expert_count", "expert_used_count", "context_length", "feed_forward_length",
               "attention.key_length", "attention.value_length", "attention.kv_lora_rank", "nextn_predict_layers",
               "attention.sliding_window", "attention.sliding_window_pattern", "rope.dimension_count",
               "expert_feed_forward_length", "leading_dense_block_count", "ssm.inner_size", "ssm.state_size",
               "ssm.conv_kernel", "attention.key_length_mla")
_ARRAY_ITEMS = {4: ("<I", (0, 1, 2, 4, 8, 64, (1 << 32) - 1)), 10: ("<Q", (0, 1, 8, (1 << 64) - 1)),
                5: ("<i", (-1, 0, 1, 8)), 7: ("<?", (False, True))}


def _hostile_kv(rnd: random.Random, key: bytes) -> bytes:
    """One KV: ``key`` with a value of a random GGUF type, chosen at the edges."""
    vt = rnd.choice((4, 4, 10, 10, 5, 12, 6, 8, 9, 9, 7))
    if vt == 4:
        body = struct.pack("<I", rnd.choice(U32_EDGES))
    elif vt == 10:
        body = struct.pack("<Q", rnd.choice(U64_EDGES))
    elif vt == 5:
        body = struct.pack("<i", rnd.choice((-1, -(1 << 31), 0, 1, 3)))
    elif vt in (12, 6):
        body = struct.pack("<d" if vt == 12 else "<f", rnd.choice((math.nan, math.inf, -0.0, 2.0, 1e30)))
    elif vt == 8:
        text = rnd.choice((b"", b"abc", b"12", b"\xff\xfe"))
        body = struct.pack("<Q", len(text)) + text
    elif vt == 9:
        et = rnd.choice(tuple(_ARRAY_ITEMS))
        fmt, items = _ARRAY_ITEMS[et]
        n = rnd.choice((0, 1, 2, 3, 4, 61, 62, 5000))
        body = struct.pack("<IQ", et, n) + b"".join(struct.pack(fmt, rnd.choice(items)) for _ in range(n))
    else:
        body = b"\x01"
    return struct.pack("<Q", len(key)) + key + struct.pack("<I", vt) + body


def _put(buf: bytearray, off: int, size: int, value: int) -> None:
    if off + size <= len(buf):
        buf[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _edge(rnd: random.Random, size: int, near: int) -> int:
    r = rnd.random()
    if r < 0.6:
        return rnd.choice(U64_EDGES if size == 8 else U32_EDGES)
    if r < 0.85:  # near a meaningful size: the remaining bytes, the old value
        return max(0, near + rnd.randint(-9, 9))
    return rnd.getrandbits(8 * size)


def _mutate_one(rnd: random.Random, files: list[bytearray], idx: int) -> str:
    """Apply one mutation to files[idx] (or to the shard set); return its name."""
    buf = files[idx]
    try:
        lay = layout(bytes(buf))
    except (struct.error, ValueError, KeyError, MemoryError, OverflowError):
        lay = None  # already broken by an earlier mutation: fall back to byte-level ones
    ops = ["bitflip", "bytes", "truncate", "insert"]
    if lay is not None:
        ops += ["field"] * 8 + ["truncate_field"] * 2 + ["dup_kv", "dup_tensor", "drop_kv", "drop_tensor",
                                                         "alignment", "magic", "version", "retype_kv",
                                                         "big_count"] + ["hparam"] * 4
    if len(files) > 1:
        ops += ["swap_shards", "delete_shard", "cross_dup", "copy_shard"]
    op = rnd.choice(ops)
    end = lay.end if lay is not None else len(buf)
    if op == "bitflip":
        for _ in range(rnd.randint(1, 8)):
            if buf:
                i = rnd.randrange(min(len(buf), end + 16))
                buf[i] ^= 1 << rnd.randrange(8)
    elif op == "bytes":
        if buf:
            i = rnd.randrange(min(len(buf), end + 16))
            n = rnd.randint(1, 16)
            buf[i:i + n] = bytes(rnd.getrandbits(8) for _ in range(n))
    elif op == "truncate":
        del buf[rnd.randrange(max(1, min(len(buf), end + 64))):]
    elif op == "insert":
        i = rnd.randrange(max(1, min(len(buf), end)))
        buf[i:i] = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 24)))
    elif op == "field":
        fl = rnd.choice(lay.fields)
        old = int.from_bytes(buf[fl.off:fl.off + fl.size], "little")
        near = len(buf) - fl.off - fl.size if fl.kind == "len" and rnd.random() < 0.5 else old
        _put(buf, fl.off, fl.size, _edge(rnd, 8 if fl.size >= 8 else 4, near) if fl.size in (4, 8)
             else rnd.getrandbits(8 * fl.size))
        op = f"field:{fl.kind}"
    elif op == "truncate_field":
        fl = rnd.choice(lay.fields)
        del buf[fl.off + rnd.randrange(fl.size + 1):]
    elif op in ("dup_kv", "drop_kv") and lay.kvs:
        s, e, _ = rnd.choice(lay.kvs)
        if op == "dup_kv":
            buf[e:e] = buf[s:e]
            if rnd.random() < 0.8:
                _put(buf, 16, 8, int.from_bytes(buf[16:24], "little") + 1)
        else:
            del buf[s:e]
            if rnd.random() < 0.5:
                _put(buf, 16, 8, int.from_bytes(buf[16:24], "little") - 1)
    elif op in ("dup_tensor", "drop_tensor") and lay.tensors:
        s, e = rnd.choice(lay.tensors)
        if op == "dup_tensor":
            buf[e:e] = buf[s:e]
            if rnd.random() < 0.8:
                _put(buf, 8, 8, int.from_bytes(buf[8:16], "little") + 1)
        else:
            del buf[s:e]
            if rnd.random() < 0.5:
                _put(buf, 8, 8, int.from_bytes(buf[8:16], "little") - 1)
    elif op == "alignment":
        key = b"general.alignment"
        vt = rnd.choice([4, 4, 4, 10, 5, 8, 6, 7])
        val = rnd.choice([0, 1, 3, 8, 16, 24, 32, 48, 64, 4096, 1 << 31, (1 << 32) - 1])
        body = {4: struct.pack("<I", val & 0xFFFFFFFF), 5: struct.pack("<i", val & 0x7FFFFFFF),
                10: struct.pack("<Q", val), 8: struct.pack("<Q", 2) + b"32", 6: struct.pack("<f", 32.0),
                7: b"\x01"}[vt]
        kv = struct.pack("<Q", len(key)) + key + struct.pack("<I", vt) + body
        buf[24:24] = kv
        _put(buf, 16, 8, int.from_bytes(buf[16:24], "little") + 1)
        op = f"alignment:{vt}:{val}"
    elif op == "magic":
        buf[0:4] = rnd.choice([b"GGML", b"FUGG", b"\0\0\0\0", b"GGJT", b"gguf",
                               bytes(rnd.getrandbits(8) for _ in range(4))])
    elif op == "version":
        buf[4:8] = struct.pack("<I", rnd.choice([0, 1, 2, 4, 0x03000000, 0x00030000, 0xFFFFFFFF]))
    elif op == "retype_kv" and lay.kvs:
        s, _, _ = rnd.choice(lay.kvs)
        (klen,) = struct.unpack_from("<Q", buf, s)
        _put(buf, s + 8 + klen, 4, rnd.choice(range(0, 14)))
    elif op == "hparam":
        arch = next((k.split(".")[0] for _, _, k in lay.kvs
                     if "." in k and k.split(".")[0] not in ("general", "tokenizer", "split")), None)
        if arch is None:
            return "hparam:skip"
        key = f"{arch}.{rnd.choice(HPARAM_KEYS)}".encode()
        found = next(((s_, e_) for s_, e_, k in lay.kvs if k.encode() == key), None)
        if found is not None and rnd.random() < 0.8:
            buf[found[0]:found[1]] = _hostile_kv(rnd, key)
        elif found is None:
            buf[24:24] = _hostile_kv(rnd, key)
            _put(buf, 16, 8, int.from_bytes(buf[16:24], "little") + 1)
        else:
            s_, e_ = found
            del buf[s_:e_]
            _put(buf, 16, 8, int.from_bytes(buf[16:24], "little") - 1)
    elif op == "big_count":
        _put(buf, rnd.choice([8, 16]), 8, rnd.choice([len(buf) // 12, len(buf) // 32, len(buf), 1 << 20, 1 << 40]))
    elif op == "swap_shards":
        i, j = rnd.sample(range(len(files)), 2)
        files[i], files[j] = files[j], files[i]
    elif op == "delete_shard":
        files[rnd.randrange(1, len(files))] = bytearray()  # empty = not written
        op = "delete_shard"
    elif op == "cross_dup":
        j = rnd.choice([k for k in range(len(files)) if k != idx])
        try:
            other = layout(bytes(files[j]))
        except (struct.error, ValueError, KeyError, MemoryError, OverflowError):
            return "cross_dup:skip"
        if other.tensors and lay is not None:
            s, e = rnd.choice(other.tensors)
            buf[lay.end:lay.end] = files[j][s:e]
            _put(buf, 8, 8, int.from_bytes(buf[8:16], "little") + 1)
    elif op == "copy_shard":
        j = rnd.choice([k for k in range(len(files)) if k != idx])
        files[j] = bytearray(buf)
    else:
        op += ":skip"
    return op


def make_case(seeds: list[Seed], seed: int, case: int, rnd: random.Random | None = None,
              ) -> tuple[str, list[bytearray], list[str]]:
    """Case `case` of run `seed`: (seed name, shard contents, mutation names). Deterministic;
    pass `rnd` to draw from another source (hypothesis)."""
    rnd = rnd or random.Random(f"{seed}:{case}")
    s = rnd.choices(seeds, weights=[x.weight for x in seeds])[0]
    files = [bytearray(b) for b in s.files]
    ops = []
    for _ in range(rnd.choice([1, 1, 1, 2, 2, 3])):
        idx = rnd.randrange(len(files)) if len(files) > 1 and rnd.random() < 0.5 else 0
        ops.append(_mutate_one(rnd, files, idx))
    return s.name, files, ops


def write_case(dirpath: Path, files: list[bytearray]) -> Path:
    """Write one case's shard contents into ``dirpath`` (emptied first); return the path to load.
    An empty shard (a deleted one) is not written."""
    for p in dirpath.iterdir():
        p.unlink()
    if len(files) == 1:
        p = dirpath / "m.gguf"
        p.write_bytes(files[0])
        return p
    n = len(files)
    for i, b in enumerate(files, start=1):
        if i == 1 or b:
            (dirpath / f"m-{i:05d}-of-{n:05d}.gguf").write_bytes(b)
    return dirpath / f"m-00001-of-{n:05d}.gguf"
