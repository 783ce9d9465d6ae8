"""Decode attention on the CPU at depth against libllama runs (benchmarks/results/cpu_attention/):
three small CPU-only models whose heads differ (GQA 32/8 x 128 and MHA 16 x 64 with the same cache
bytes a cell, and a 16-head MLA sharing one latent row), 1 and 2 threads, flash attention on and
off, 0-8192 cached tokens on a 2-vCPU EPYC. The kernel takes a cell at a time a head, far below
the memory's rate: the planner read the cache at the memory's bandwidth and priced its depth
slope 2.6-57x too fast."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

from omni_place import attention

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import cpu_attention  # noqa: E402
from benchmarks.cpu_prompt import load  # noqa: E402

RECORDS = ROOT / "benchmarks" / "results" / "cpu_attention" / "libllama_epyc2.jsonl"
#: that CPU's Q4_K matmul rate a core, from benchmarks/results/cpu_prompt/libllama_epyc2.jsonl
EPYC_TFLOPS_PER_CORE = 0.106


def _slopes(tmp_path: Path) -> dict[tuple[str, int, bool], tuple[float, float]]:
    """(measured, priced) ms that 8192 cached tokens add to a decoded token, per configuration."""
    rows = cpu_attention.priced(load([RECORDS]), tmp_path, EPYC_TFLOPS_PER_CORE)
    by = {(r["shape"], r["threads"], r["flash_attn"], r["depth"]): (m, p) for r, m, p in rows}
    return {k[:3]: (m - by[(*k[:3], 0)][0], p - by[(*k[:3], 0)][1]) for k, (m, p) in by.items() if k[3] == 8192}


def test_the_cpu_reads_a_decodes_cache_as_fast_as_its_threads_compute(tmp_path: Path) -> None:
    """Twelve configurations: the depth slope within 25 % on nine (median 15 %); MHA at one
    thread without flash attention +48 %, MLA without flash attention -29 / -31 %. Before: the
    cache at the memory's rate, 61-98 % too little."""
    slopes = _slopes(tmp_path)
    assert len(slopes) == 12
    errors = sorted(abs(p / m - 1) for m, p in slopes.values())
    assert errors[8] < 0.25 and errors[-1] < 0.5 and statistics.median(errors) < 0.2
    cell_bytes = {"attn_gqa": 4096, "attn_mha": 4096, "attn_mla": 1152}  # F16 cache a cell and layer
    for (shape, threads, fa), (measured, _) in slopes.items():
        at_memory = 1e3 * attention.cpu_decode_kv_s(2 * 8192 * cell_bytes[shape], 0.0, 34.4e9 * 0.8, float("inf"), fa)
        assert measured > 2.5 * at_memory, (shape, threads, fa)


def test_ik_reads_the_cache_at_the_memorys_rate(tmp_path: Path) -> None:
    """ik_llama.cpp's CPU flash attention (iqk) is its own and not measured: an ik plan keeps the
    cache at the memory's rate, mainline's at its threads'."""
    from omni_place.model import load_model
    from omni_place.plan import evaluate

    from benchmarks.speed_models import write_speed_model

    (tmp_path / "cpu.toml").write_text('name = "cpu"\n[[devices]]\nname = "CPU"\nkind = "cpu"\n'
                                       'memory_gib = 16\nbandwidth_gbs = 34.4\nthreads = 2\n')
    model = load_model(write_speed_model("attn_gqa", tmp_path, header_only=True, weight_type="q4_k",
                                         shape=cpu_attention.SHAPES["attn_gqa"]))
    ms = {(engine, d): 1e3 / evaluate(model, str(tmp_path / "cpu.toml"),
                                      ["-ngl", "0", "-p", "0", "-n", "16", "-d", str(d), "-fa", "1"], tool="bench",
                                      engine=engine).predicted.tg_tps
          for engine in ("llama.cpp", "ik_llama.cpp") for d in (0, 8192)}
    ml_slope = ms["llama.cpp", 8192] - ms["llama.cpp", 0]
    ik_slope = ms["ik_llama.cpp", 8192] - ms["ik_llama.cpp", 0]
    assert ml_slope > 3 * ik_slope > 0


@pytest.mark.parametrize("fa", [True, False])
def test_a_cache_read_is_never_faster_than_the_memory(fa: bool) -> None:
    assert attention.cpu_decode_kv_s(1e9, 0.0, 10e9, 1e15, fa) == pytest.approx(0.1)
    assert attention.cpu_decode_kv_s(1e9, 0.0, 10e9, 1e11, fa) > 0.1
    assert attention.cpu_decode_kv_s(1e9, 1e15, 10e9, 1e15, fa) > 1.0  # bound by the FLOPs
