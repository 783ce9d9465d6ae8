"""`omni-place compare`: five quants of a Hub repository (the local fake Hub) x two clusters, one
table, one chart, and --best checked against plans made one by one."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from omni_place.cli import main
from omni_place.compare import best, compare, expand_models
from omni_place.errors import InvalidArgumentError, NothingFitsError
from omni_place.plan import plan_split
from omni_place.reference_models import llama_3_3_70b

from .fake_hub import FakeHub, Q, quantized

QUANTS = {"Q2_K": Q.Q2_K, "IQ3_XXS": Q.IQ3_XXS, "Q4_K_M": Q.Q4_K, "Q6_K": Q.Q6_K, "Q8_0": Q.Q8_0}
REPO = "o/Llama-70B-GGUF"
PRESETS = ("seed", "3090-ddr4")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("hub")
    with FakeHub() as h:
        base = llama_3_3_70b()
        for tag, q in QUANTS.items():
            h.add_model(REPO, f"{tag}/Llama-3.3-70B-{tag}.gguf", quantized(base, q, tag), tmp, shards=2)
        yield h


@pytest.fixture(autouse=True)
def env(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_PLACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def _one_by_one(quant: str, preset: str) -> float | None:
    """Decode tok/s of the plan made alone, None when nothing fits."""
    try:
        return plan_split(f"hf:{REPO}:{quant}", preset).predicted.tg_tps
    except NothingFitsError:
        return None


def test_table_chart_and_best(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alone = {(q, p): _one_by_one(q, p) for q in QUANTS for p in PRESETS}
    on_seed = {q: alone[q, "seed"] for q in QUANTS}
    fitting = [q for q in QUANTS if on_seed[q] is not None]  # QUANTS is worst to best
    assert len(fitting) >= 2, on_seed
    # a threshold between the two best quants that fit: the second best must win on seed
    hi, lo = fitting[-1], fitting[-2]
    assert on_seed[lo] > on_seed[hi]  # type: ignore[operator]
    min_tg = (on_seed[lo] + on_seed[hi]) / 2  # type: ignore[operator]
    svg = tmp_path / "compare.svg"
    args = ["compare", f"hf:{REPO}", "--quant", "all", "--preset", PRESETS[0], "--preset", PRESETS[1], "--best",
            "--min-tg", f"{min_tg:.4f}", "--plot", str(svg)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert main([*args, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    assert [(r["quant"], r["cluster"]) for r in rows] == [(q, p) for q in QUANTS for p in PRESETS]
    for r in rows:  # the table is the plans made one by one
        want = alone[r["quant"], r["cluster"]]
        assert r["fits"] == (want is not None)
        assert r["tg_tps"] == (pytest.approx(want) if want is not None else None)
    picks = {b["cluster"]: b["quant"] for b in doc["best"]}
    assert picks["seed"] == lo
    want_3090 = [q for q in QUANTS if (alone[q, "3090-ddr4"] or 0) >= min_tg]
    assert picks["3090-ddr4"] == (want_3090[-1] if want_3090 else None)
    assert f"best at >= {float(f'{min_tg:.4f}'):g} tok/s on seed, ctx 4096, KV f16, llama.cpp: {lo}" in text
    assert sum(line.startswith("*") for line in text.splitlines()) == sum(v is not None for v in picks.values())
    # the chart: a bar per row and panel, the picks outlined, the threshold drawn
    root = ET.parse(svg).getroot()
    bars = [e for e in root.iter() if e.get("class") == "bar"]
    assert len(bars) == 2 * len(rows)
    assert {b.get("data-model") for b in bars if b.get("data-best") == "true"} == \
        {f"hf:{REPO}:{q}" for q in picks.values() if q}
    assert [e for e in root.iter() if e.get("class") == "min-tg"]
    assert all((b.get("data-fits") == "true") == (float(b.get("data-value", 0)) > 0) for b in bars)


def test_best_none_exits_3_and_quant_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", f"hf:{REPO}", "--quant", "Q2_K,Q8_0", "--preset", "seed", "--best",
                 "--min-tg", "100000"]) == 3
    out = capsys.readouterr()
    assert "none fits that fast" in out.out and out.err.startswith("error: no quant fits")
    with pytest.raises(InvalidArgumentError, match="no quant 'Q5_K_M'"):
        compare(expand_models([f"hf:{REPO}"], ["Q5_K_M"]), ["seed"])
    with pytest.raises(InvalidArgumentError, match="Hub repository"):
        expand_models(["llama-3.3-70b"], ["Q4_K_M"])


def test_contexts_kv_types_and_clusters_cross(tmp_path: Path) -> None:
    rows = compare([f"hf:{REPO}:Q4_K_M", "llama-3.3-70b"], ["seed"], ctxs=(4096, 32768), kv_types=("f16", "q8_0"))
    assert len(rows) == 8 and {r.ctx for r in rows} == {4096, 32768} and {r.kv_type for r in rows} == {"f16", "q8_0"}
    # the shipped description's cache file name carries no quant tag: --best ranks it by its bpw
    assert [r.quant for r in rows] == ["Q4_K_M"] * 4 + [None] * 4
    assert set(best(rows, 0)) == {("seed", c, k, "llama.cpp") for c in (4096, 32768) for k in ("f16", "q8_0")}
