"""The shipped header-only models: real tensor names and shapes, the quant mix of the named
release (sizes checked against the sizes llama.cpp prints for those files), cached on first use,
and every one of them plans on the seed rig."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from omni_place.errors import InvalidArgumentError
from omni_place.gguf_write import tensor_nbytes
from omni_place.model import load_model
from omni_place.plan import plan_split
from omni_place.reference_models import (
    REFERENCE_MODELS,
    ModelSpec,
    _apply_q4_k_m,
    cached_reference_model,
    deepseek_v3,
    q4_k_m_type,
)
from omni_place.units import GiB


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OMNI_PLACE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def total_gib(spec: ModelSpec) -> float:
    return sum(tensor_nbytes(shape, q) for _, shape, q in spec.tensors) / GiB


# llama.cpp's own size line (llama-bench "size" / print_info "file size", GiB) for the release
@pytest.mark.parametrize("name,gib", [
    ("llama-3.3-70b", 39.59),  # Llama-3.3-70B-Instruct-Q4_K_M: llama 70B Q4_K - Medium 39.59 GiB
    ("qwen3-235b-a22b", 132.39),  # Qwen3-235B-A22B-Q4_K_M: 132.39 GiB
    ("gpt-oss-120b", 59.02),  # ggml-org gpt-oss-120b MXFP4: gpt-oss 120B MXFP4 MoE 59.02 GiB
])
def test_sizes_match_the_releases(name: str, gib: float) -> None:
    assert total_gib(REFERENCE_MODELS[name]()) == pytest.approx(gib, abs=0.01)


def test_deepseek_v3_stock_q4_k_m_rules_match_the_release() -> None:
    # DeepSeek-V3 Q4_K_M: 376.65 GiB in llama-bench (docs/USERS.md table 2a row 7); that file
    # predates the attn_k_b/attn_v_b split, hence the small difference
    base = deepseek_v3(n_nextn=0)
    spec = _apply_q4_k_m(ModelSpec(base.arch, base.name, base.metadata, list(base.tensors)), n_layer_all=61)
    assert total_gib(spec) == pytest.approx(376.65, abs=0.2)


def test_tensor_counts_and_types() -> None:
    qwen = REFERENCE_MODELS["qwen3-235b-a22b"]()
    types = Counter(q for _, _, q in qwen.tensors)
    assert len(qwen.tensors) == 1131 and types[Q.F32] == 471  # as in the released GGUF's loader log
    oss = REFERENCE_MODELS["gpt-oss-120b"]()
    assert len(oss.tensors) == 687
    t = {n: q for n, _, q in oss.tensors}
    assert t["blk.0.ffn_down_exps.weight"] == Q.MXFP4 and t["blk.0.attn_q.weight"] == Q.Q8_0
    assert t["output.weight"] == Q.Q8_0 and t["blk.0.ffn_down_exps.bias"] == Q.F32
    ds = {n: q for n, _, q in REFERENCE_MODELS["deepseek-v3.2"]().tensors}
    assert ds["blk.5.indexer.attn_q_b.weight"] == Q.Q4_K and ds["blk.5.indexer.k_norm.bias"] == Q.F32
    assert ds["blk.5.attn_k_b.weight"] == Q.Q5_0  # ne0 = 128: Q4_K falls back to Q5_0
    assert ds["output.weight"] == Q.Q6_K and ds["token_embd.weight"] == Q.Q4_K
    llama = {n: q for n, _, q in REFERENCE_MODELS["llama-3.3-70b"]().tensors}
    assert {llama[f"blk.{i}.attn_v.weight"] for i in range(80)} == {Q.Q5_K, Q.Q6_K}  # the 70B bump


def test_q4_k_m_rules() -> None:
    kw = dict(n_layer_all=62, i_attn_v=0, n_attn_v=62)
    # ffn_down: more bits in the first/last eighth and every third layer between
    down = [q4_k_m_type(f"blk.{i}.ffn_down_exps.weight", (2048, 7168, 256), layer=i, **kw) for i in range(62)]
    assert down[:7] == [Q.Q6_K] * 7 and down[7:9] == [Q.Q4_K] * 2 and down[9] == Q.Q6_K and down[-1] == Q.Q6_K
    assert q4_k_m_type("blk.3.ffn_up_exps.weight", (7168, 2048, 256), layer=3, **kw) == Q.Q4_K
    assert q4_k_m_type("output.weight", (4000, 10), layer=None, **kw) == Q.Q8_0  # row not a multiple of 256


@pytest.mark.parametrize("name", list(REFERENCE_MODELS))
def test_every_reference_model_loads_and_plans_on_the_seed_rig(name: str) -> None:
    m = load_model(cached_reference_model(name))
    assert m.unknown_tensors == [] and m.coverage == "verified"
    plan = plan_split(m, "seed", ctx=8192)
    assert plan.feasible and plan.predicted.tg_tps > 0 and plan.predicted.pp_tps > 0


def test_deepseek_v32_profile() -> None:
    m = load_model(cached_reference_model("deepseek-v3.2"))
    assert ((m.architecture, m.n_layer, m.hparams.n_layer_nextn, m.hparams.indexer_head_size)
            == ("deepseek32", 62, 1, 128))
    # MLA latent (576) + indexer key (128) per trunk layer, f16
    assert m.kv_bytes_per_token("f16") == 61 * (576 + 128) * 2
    assert {t.role.value for t in m.tensors if ".indexer." in t.name} == {"attention", "norm"}


def test_cache_is_written_once_and_keyed_by_content(cache: Path) -> None:
    p = cached_reference_model("llama-3.3-70b")
    assert p.parent == cache and p.name.startswith("llama-3.3-70b-") and p.suffix == ".gguf"
    mtime = p.stat().st_mtime_ns
    assert cached_reference_model("llama-3.3-70b") == p and p.stat().st_mtime_ns == mtime
    assert p.stat().st_size < 256 * 1024  # header only: small enough to ship and to cache
    assert [x.name for x in cache.iterdir()] == [p.name]  # no temp files left


def test_unknown_reference_model() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown reference model"):
        cached_reference_model("gpt-5")
