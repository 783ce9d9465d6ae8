"""The tiny random models of ``tests/arch_models.py`` are valid: the real libllama loads every
architecture (and the tied-output, NextN, K-quant, MXFP4, split and BPE-vocab variants) with
``check_tensors`` on, decodes a prompt and one more token, and reports the KV cache we expect.

Engine runs happen in a subprocess (``arch_models.engine_load``) so an abort in libllama fails
one test instead of killing pytest.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import gguf
import numpy as np
import pytest

from omni_place.units import MiB

from .arch_models import (
    ARCHS,
    DSA_ARCHS,
    DECI_PATTERN,
    HYBRID_ARCHS,
    LLAMA4_WINDOW,
    MLA_ARCHS,
    MOE_ARCHS,
    NEXTN_ARCHS,
    SWA_ARCHS,
    engine_available,
    engine_load,
    layer_kind,
    shard_paths,
    write_model,
)

MAX_MODEL_BYTES = 2 * MiB


@pytest.fixture(scope="module")
def engine() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp (llama-cpp-python, the real libllama) is not importable")
    if not engine_available():
        pytest.skip("llama_cpp is installed but libllama fails to initialise")


def _mib(n_bytes: float) -> float:
    return n_bytes / MiB


def _expected_kv(arch: str, *, n_ctx: int, n_layer: int, n_head_kv: int = 2, head_dim: int | None = None,
                 n_embd: int = 64, n_head: int = 4, n_swa: int = 64, n_ubatch: int = 64):
    """[(cells, layers, K bytes, V bytes)] per KV cache, non-SWA first (F16 cache)."""
    if arch == "deepseek2":
        # MLA: one 'head' of kv_lora_rank + rope dims, no V cache (V is a view of K)
        return [(n_ctx, n_layer, n_ctx * n_layer * (64 + 16) * 2, 0)]
    if arch in DSA_ARCHS:
        # MLA latent cache, then the DSA indexer's key cache (one head of indexer.key_length = 64; glm-dsa
        # without indexer types and a training context under 1 Mi: on every trunk layer)
        return [(n_ctx, n_layer, n_ctx * n_layer * (64 + 16) * 2, 0), (n_ctx, n_layer, n_ctx * n_layer * 64 * 2, 0)]
    if arch == "minimax-m3":  # GQA on every layer; the MSA indexer's one-head cache (its 64-wide key, a
        # head-wide value) on the layers after the leading dense one
        row = n_head_kv * (head_dim or n_embd // n_head) * 2
        idx_k, idx_v = 64 * 2, (head_dim or n_embd // n_head) * 2
        return [(n_ctx, n_layer, n_ctx * n_layer * row, n_ctx * n_layer * row),
                (n_ctx, n_layer - 1, n_ctx * (n_layer - 1) * idx_k, n_ctx * (n_layer - 1) * idx_v)]
    if arch == "kimi-linear":  # every 4th layer MLA (its latent cache alone), the others KDA states
        return [(n_ctx, n_layer // 4, n_ctx * (n_layer // 4) * (64 + 16) * 2, 0)]
    if arch == "deci":  # every layer holds a cache; those without KV heads (linear, no-op) of zero width
        n_attn = sum(DECI_PATTERN[il % len(DECI_PATTERN)] == "A" for il in range(n_layer))
        size = n_ctx * n_attn * n_head_kv * (head_dim or n_embd // n_head) * 2
        return [(n_ctx, n_layer, size, size)]
    if arch in ("mamba2", "rwkv7"):  # every layer recurrent: no KV cache at all
        return []
    head_dim = head_dim or n_embd // n_head
    row = n_head_kv * head_dim * 2
    if arch in HYBRID_ARCHS | {"granitehybrid", "lfm2", "lfm2moe"}:  # every 4th layer attends, the others hold a state
        n_layer //= 4
    if arch in ("nemotron_h", "nemotron_h_moe"):  # one layer in NEMOTRON_PATTERN attends
        n_layer = sum(layer_kind(arch, il) == "A" for il in range(n_layer))

    def cache(cells: int, layers: int):
        return (cells, layers, cells * layers * row, cells * layers * row)

    if arch == "llama4":  # chunked attention at the engine's window on three layers of four
        n_swa, n_chunked = LLAMA4_WINDOW, sum(1 for il in range(n_layer) if il % 4 < 3)
        swa_cells = math.ceil(min(n_ctx, n_swa + n_ubatch) / 256) * 256
        return [cache(n_ctx, n_layer - n_chunked), cache(swa_cells, n_chunked)]
    if arch not in SWA_ARCHS:
        return [cache(n_ctx, n_layer)]
    swa_cells = math.ceil(min(n_ctx, n_swa + n_ubatch) / 256) * 256
    if arch == "gemma4":  # write_model's default: layers 0-2 hold caches, 2 full, 0 and 1 SWA of 8-wide heads
        swa_row = n_head_kv * 8 * 2
        return [cache(n_ctx, 1), (swa_cells, 2, swa_cells * 2 * swa_row, swa_cells * 2 * swa_row)]
    n_pattern = {"gpt-oss": 2, "gemma3": 6, "olmo2": 4, "gemma3n": 5}[arch]
    n_swa_layers = sum(1 for il in range(n_layer) if il % n_pattern < n_pattern - 1)
    return [cache(n_ctx, n_layer - n_swa_layers), cache(swa_cells, n_swa_layers)]


def _assert_loads(path: Path, *, load_mtp: bool = False, n_ctx: int = 256):
    r = engine_load(path, n_ctx=n_ctx, load_mtp=load_mtp)
    assert r.ok, f"engine failed (rc={r.returncode}, info={r.info}):\n" + "\n".join(r.log.splitlines()[-40:])
    assert r.kv_buffers or r.rs_buffers, "no KV or RS buffer line in the engine log"
    return r


def _assert_kv(r, expected) -> None:
    got = [(c, l) for _, c, l in r.kv_caches]
    assert got == [(c, l) for c, l, _, _ in expected], (r.kv_caches, expected)
    lines = r.log_lines("llama_kv_cache: size =")
    for line, (_, _, k_bytes, v_bytes) in zip(lines, expected):
        k = float(line.split("K (f16):")[1].split("MiB")[0])
        v = float(line.split("V (f16):")[1].split("MiB")[0])
        assert abs(k - _mib(k_bytes)) <= 0.0051 and abs(v - _mib(v_bytes)) <= 0.0051, (line, k_bytes, v_bytes)
    total = sum(_mib(k + v) for _, _, k, v in expected)
    assert abs(sum(mib for _, mib in r.kv_buffers) - total) <= 0.0051 * len(expected), (r.kv_buffers, total)


# ------------------------------------------------------------------------------------------------
# every architecture, default (F16) tiny model
# ------------------------------------------------------------------------------------------------

@pytest.mark.engine
@pytest.mark.parametrize("arch", ARCHS)
def test_arch_loads_and_decodes(arch: str, tmp_path: Path, engine: None) -> None:
    p = write_model(tmp_path / f"{arch}.gguf", arch, seed=1)
    assert p.stat().st_size < MAX_MODEL_BYTES
    n_ctx = 512 if arch in SWA_ARCHS else 256  # 512 > padded SWA window: the two caches differ
    r = _assert_loads(p, n_ctx=n_ctx)
    n_layer = 6 if arch in ("gemma3", "gemma4") else 5 if arch == "gemma3n" else 4
    assert r.info["n_layer"] == n_layer and r.info["n_vocab"] == 320
    assert r.info["n_swa"] == (64 if arch in SWA_ARCHS else LLAMA4_WINDOW if arch == "llama4" else 0)
    _assert_kv(r, _expected_kv(arch, n_ctx=n_ctx, n_layer=n_layer))
    # all weights in one CPU (mmap) buffer; the engine's model size equals the file's tensor bytes
    reader = gguf.GGUFReader(p)
    assert r.info["model_size"] == sum(int(t.n_bytes) for t in reader.tensors)


# ------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------

@pytest.mark.engine
@pytest.mark.parametrize("arch,weight_type", [("llama", "f16"), ("qwen3", "q8_0"), ("gemma3", "q4_0"),
                                              ("deepseek2", "q8_0"), ("glm4moe", "f16")])
def test_tied_output(arch: str, weight_type: str, tmp_path: Path, engine: None) -> None:
    p = write_model(tmp_path / "tied.gguf", arch, tied_output=True, weight_type=weight_type)
    names = {t.name for t in gguf.GGUFReader(p).tensors}
    assert "output.weight" not in names and "token_embd.weight" in names
    _assert_loads(p)


def test_gpt_oss_cannot_be_tied(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_model(tmp_path / "x.gguf", "gpt-oss", tied_output=True)


@pytest.mark.engine
@pytest.mark.parametrize("arch", sorted(NEXTN_ARCHS))
def test_nextn(arch: str, tmp_path: Path, engine: None) -> None:
    p = write_model(tmp_path / "mtp.gguf", arch, n_nextn=1, weight_type="q8_0")
    rd = gguf.GGUFReader(p)
    names = {t.name for t in rd.tensors}
    assert rd.fields[f"{arch}.block_count"].contents() == 5  # trunk + NextN
    assert rd.fields[f"{arch}.nextn_predict_layers"].contents() == 1
    assert "blk.4.nextn.eh_proj.weight" in names and ("blk.4.ffn_gate_exps.weight" in names) == (arch in MOE_ARCHS)
    runs = {}
    for load_mtp in (False, True):
        r = runs[load_mtp] = _assert_loads(p, load_mtp=load_mtp)
        assert r.info["n_layer"] == 4 and r.info["n_layer_nextn"] == 1  # llama_model_n_layer: trunk only
        # the NextN block gets no KV cache of its own (trunk layers only), MTP loaded or not
        _assert_kv(r, _expected_kv(arch, n_ctx=256, n_layer=4))
    # the NextN block's weights are only allocated when MTP is loaded
    without, with_mtp = (sum(mib for _, mib in runs[m].model_buffers) for m in (False, True))
    assert with_mtp > without


@pytest.mark.engine
@pytest.mark.parametrize("arch,kw", [
    ("llama", dict(weight_type="q4_k", n_embd=256, n_ff=512, n_layer=2)),
    ("qwen3moe", dict(weight_type="q4_k", n_embd=256, n_ff=256, n_ff_exp=256, n_expert=4, n_layer=2)),
    ("qwen2", dict(weight_type="q6_k", n_embd=256, n_ff=256, n_layer=2)),
    ("gpt-oss", dict(weight_type="q8_0", tensor_types={r"_exps\.weight$": "mxfp4"})),
])
def test_quantized(arch: str, kw: dict, tmp_path: Path, engine: None) -> None:
    p = write_model(tmp_path / "q.gguf", arch, **kw)
    assert p.stat().st_size < MAX_MODEL_BYTES
    reader = gguf.GGUFReader(p)
    quant = [t for t in reader.tensors if t.tensor_type not in (gguf.GGMLQuantizationType.F32,
                                                              gguf.GGMLQuantizationType.F16)]
    assert quant
    # CUDA pads quantized rows to 512 elements: make sure some rows need it
    assert any(int(t.shape[0]) % 512 != 0 for t in quant)
    for t in quant:  # valid blocks: finite when dequantized
        assert np.isfinite(gguf.quants.dequantize(t.data, t.tensor_type)).all(), t.name
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    if arch == "gpt-oss":
        assert types["blk.0.ffn_up_exps.weight"] == "MXFP4" and types["blk.0.ffn_up_exps.bias"] == "F32"
        assert types["blk.0.ffn_gate_inp.weight"] == "F32" and types["blk.0.attn_q.weight"] == "Q8_0"
    else:
        assert types["blk.0.attn_q.weight"] == kw["weight_type"].upper()
    _assert_loads(p)


def test_kquant_fallback_for_short_rows(tmp_path: Path) -> None:
    # n_embd=64: no row is a multiple of 256, so Q4_K falls back (Q5_0 for 32-multiples)
    p = write_model(tmp_path / "fb.gguf", "llama", weight_type="q4_k")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(p).tensors}
    assert types["blk.0.attn_q.weight"] == "Q5_0"


@pytest.mark.engine
def test_split(tmp_path: Path, engine: None) -> None:
    first = write_model(tmp_path / "m.gguf", "qwen3moe", weight_type="q8_0", split=3)
    shards = shard_paths(tmp_path / "m.gguf", 3)
    assert first == shards[0] and [s.name for s in shards] == [f"m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    n_total = 0
    for i, s in enumerate(shards):
        rd = gguf.GGUFReader(s)
        assert rd.fields["split.no"].contents() == i and rd.fields["split.count"].contents() == 3
        assert ("general.architecture" in rd.fields) == (i == 0)  # only the first has model metadata
        assert len(rd.tensors) > 0
        n_total += len(rd.tensors)
        total_field = rd.fields["split.tensors.count"].contents()
    assert n_total == total_field
    r = _assert_loads(first)
    assert len(r.model_buffers) == 3  # one mmap buffer per shard


@pytest.mark.engine
@pytest.mark.parametrize("arch", ["qwen2", "gpt-oss"])
def test_bpe_vocab(arch: str, tmp_path: Path, engine: None) -> None:
    p = write_model(tmp_path / "bpe.gguf", arch, tokenizer="gpt2")
    assert gguf.GGUFReader(p).fields["tokenizer.ggml.model"].contents() == "gpt2"
    _assert_loads(p)


# ------------------------------------------------------------------------------------------------
# no engine needed
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("split", [1, 2])
def test_header_only_is_the_full_files_header(arch: str, split: int, tmp_path: Path) -> None:
    kw = dict(weight_type="q8_0", split=split, n_nextn=1 if arch in NEXTN_ARCHS else 0)
    write_model(tmp_path / "full.gguf", arch, **kw)
    write_model(tmp_path / "head.gguf", arch, header_only=True, **kw)
    for full, head in zip(shard_paths(tmp_path / "full.gguf", split), shard_paths(tmp_path / "head.gguf", split)):
        h = head.read_bytes()
        f = full.read_bytes()
        assert len(h) < len(f) and f[: len(h)] == h  # same header + KV + tensor infos, no data


@pytest.mark.parametrize("arch", ARCHS)
def test_deterministic_and_tiny(arch: str, tmp_path: Path) -> None:
    a = write_model(tmp_path / "a.gguf", arch, seed=3).read_bytes()
    b = write_model(tmp_path / "b.gguf", arch, seed=3).read_bytes()
    c = write_model(tmp_path / "c.gguf", arch, seed=4).read_bytes()
    assert a == b and a != c and len(a) < MAX_MODEL_BYTES


@pytest.mark.parametrize("arch", ARCHS)
def test_structure(arch: str, tmp_path: Path) -> None:
    rd = gguf.GGUFReader(write_model(tmp_path / "s.gguf", arch))
    f = {k: v.contents() for k, v in rd.fields.items() if not k.startswith("tokenizer.ggml.")}
    names = {t.name for t in rd.tensors}
    assert f["general.architecture"] == arch
    # Nemotron-H: the pattern's layer 2 is its first FFN layer, experts of up and down only
    expert = "blk.2.ffn_up_exps.weight" if arch == "nemotron_h_moe" else "blk.1.ffn_gate_exps.weight"
    assert (expert in names) == (arch in MOE_ARCHS)
    if arch in MOE_ARCHS:
        assert f[f"{arch}.expert_count"] == 8 and f[f"{arch}.expert_used_count"] == 2
    if arch in {"deepseek2", "glm4moe"} | DSA_ARCHS:
        assert f[f"{arch}.leading_dense_block_count"] == 1 and f[f"{arch}.expert_shared_count"] == 1
        assert "blk.0.ffn_gate.weight" in names and "blk.1.exp_probs_b.bias" in names
        assert "blk.1.ffn_up_shexp.weight" in names
    if arch in MLA_ARCHS:
        assert f[f"{arch}.attention.key_length_mla"] == 48 and f[f"{arch}.attention.value_length_mla"] == 32
        assert f[f"{arch}.attention.kv_lora_rank"] == 64 and f[f"{arch}.attention.q_lora_rank"] == 64
        assert f[f"{arch}.attention.head_count_kv"] == 1
    if arch in DSA_ARCHS:
        assert f[f"{arch}.attention.indexer.head_count"] == 4 and f[f"{arch}.attention.indexer.key_length"] == 64
        assert {"blk.0.indexer.attn_k.weight", "blk.0.indexer.k_norm.bias", "blk.3.indexer.proj.weight"} <= names
    if arch in SWA_ARCHS:
        assert f[f"{arch}.attention.sliding_window"] == 64
    if arch == "gpt-oss":
        assert "blk.0.attn_sinks.weight" in names and "blk.0.ffn_down_exps.bias" in names
    if arch == "gemma3":
        assert f["gemma3.block_count"] == 6  # layers 0-4 SWA, layer 5 full (pattern 6)
