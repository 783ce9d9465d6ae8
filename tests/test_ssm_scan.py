"""Mamba's selective scan (GGML_OP_SSM_SCAN) in a layer whose weights are in CPU RAM.

Op offload runs a CPU-held weight's op on the GPU when the op's batch is large enough
(ggml-backend.cpp:967-979, ggml-cuda.cu:5636-5654 ``get_op_batch_size``): the scan's output is one row
(ggml.c ``ggml_ssm_scan``: y and the final states concatenated), so it never is, and it runs where its
``ssm_a`` is, on the CPU, one ubatch token after another over each head's state, the heads dealt out to
the threads in equal runs (ops.cpp:10039-10044). The gated delta rule (no weight among its sources)
runs beside its neighbours on the GPU. Checked against an H100's llama-bench runs of Falcon-H1-7B with
22 of its 44 layers on the CPU (benchmarks/results/hybrid_speed/gpu_h100s44_*), held out from every fit.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

from omni_place.attention import SSM_SCAN_FLOPS, MixerWork, mixer_work, recurrent_prompt_s
from omni_place.cost import CPU, Context, CostModel
from omni_place.devices import resolve_cluster
from omni_place.hparams import ARCHITECTURES
from omni_place.model import load_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks import hybrid_speed  # noqa: E402

SCANS = {"mamba", "mamba2", "jamba", "granitehybrid", "falcon-h1", "nemotron_h", "nemotron_h_moe"}


def test_the_selective_scan_is_the_mamba_architectures_mixer() -> None:
    recurrent = {a for a, s in ARCHITECTURES.items() if s.recurrent or s.hybrid}
    assert SCANS < recurrent
    assert {a for a in recurrent if ARCHITECTURES[a].ssm_scan} == SCANS
    assert not ARCHITECTURES["llama"].ssm_scan


@pytest.mark.parametrize("heads, threads, share", [(24, 16, 0.75), (24, 12, 1.0), (24, 8, 1.0), (24, 32, 0.75),
                                                    (48, 16, 1.0), (40, 16, 40 / 48)])
def test_the_scans_heads_are_dealt_out_in_equal_runs(heads: int, threads: int, share: float) -> None:
    """ceil(heads / threads) heads a thread: 24 heads on 16 threads keep 12 busy twice as long."""
    def seconds(work: MixerWork, n: int) -> float:  # the CPU's FLOP/s: 100 G a thread
        return recurrent_prompt_s(work._replace(act_bytes=0.0), 1e11 * n, 1e11, gpu=False, threads=n)

    scan = mixer_work(128, heads * 64, 1, ssm_heads=heads)
    assert scan.flops == SSM_SCAN_FLOPS * 128 * heads * 64 and scan.heads == heads and scan.static_split
    assert seconds(scan, threads) == pytest.approx(seconds(scan, 1) / threads / share)
    # the delta rule's chunks go to whichever thread is free: only fewer heads than threads idle some
    rule = mixer_work(128, heads * 128, 1)
    assert not rule.static_split and rule.heads == heads
    assert seconds(rule, threads) == pytest.approx(seconds(rule, 1) / min(threads, heads))


@pytest.fixture(scope="module")
def costs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CostModel]:
    names = ["Falcon-H1-7B Q4_K", "Llama-shaped Falcon-H1-7B", "Qwen3.5-9B Q8_0"]
    headers = hybrid_speed.write_headers(tmp_path_factory.mktemp("ssm"), names, header_only=True)
    cluster = resolve_cluster(str(hybrid_speed.FOLDER / "gpu_h100s44_rig.toml"))
    return {n: CostModel(load_model(headers[n]), cluster, Context(ctx=544, n_ubatch=512, n_prompt=512, n_gen=0))
            for n in names}


def test_a_cpu_held_mamba2_layer_scans_on_the_cpu(costs: dict[str, CostModel]) -> None:
    """Falcon-H1's CPU-held layer: its weights go up to the GPU, its scan stays on the CPU at the CPU's
    price of it; its control and a Gated DeltaNet layer put nothing on the CPU but the cache's stores."""
    falcon = costs["Falcon-H1-7B Q4_K"]
    assert falcon.model.hparams.ssm_n_head == 24 and falcon.cpu_scan == [True] * 44
    part = falcon.layer_pp(0, CPU, frozenset(), "CUDA0")
    assert part[CPU] == pytest.approx(falcon.mixer_s(CPU)) and part["CUDA0"] > 0
    on_gpu = falcon.layer_pp(0, "CUDA0", frozenset(), "CUDA0")
    assert CPU not in on_gpu  # a GPU-held layer's scan runs with it
    for name, il in (("Llama-shaped Falcon-H1-7B", 0), ("Qwen3.5-9B Q8_0", 0)):
        cost = costs[name]
        assert not any(cost.cpu_scan) and cost.recurrent[il] == (name == "Qwen3.5-9B Q8_0")
        assert CPU not in cost.layer_pp(il, CPU, frozenset(), "CUDA0")


def test_a_decoded_token_moves_a_mamba_state_four_times(costs: dict[str, CostModel]) -> None:
    """The scan reads the sequence's state where the cache holds it (mamba-base.cpp get_ssm_rows: no
    gather copy, as the delta rule's get_rows) and writes the new one, which a copy stores: four passes
    over the state, the gated delta rule's six."""
    from omni_place.attention import RECURRENT_STATE_PASSES, SSM_STATE_PASSES

    falcon, qwen = costs["Falcon-H1-7B Q4_K"], costs["Qwen3.5-9B Q8_0"]
    assert (SSM_STATE_PASSES, RECURRENT_STATE_PASSES) == (4, 6)
    assert falcon.state_read[0] == SSM_STATE_PASSES * falcon.model.recurrent_state_bytes(1)
    rec = next(il for il in range(qwen.model.n_layer) if qwen.recurrent[il])
    assert qwen.state_read[rec] == RECURRENT_STATE_PASSES * qwen.model.recurrent_state_bytes(1)


def test_falcon_h1_with_layers_on_the_cpu_prompts_as_the_h100_ran_it(tmp_path: Path) -> None:
    """-ngl 22, pp512: four rounds read about 1011 tok/s; priced +67..+72 % with the scans on the GPU, now
    +13..+17 % (the scan's CPU rate measured on a 2-vCPU Xeon, below), as its control of the same widths
    without the mixer (+3..+12 %)."""
    records = [dict(r, round=p.stem) for p in sorted(hybrid_speed.FOLDER.glob("gpu_h100s44_round*.jsonl"))
               for r in hybrid_speed.load_records(p)
               if "Falcon" in r["shape"] and r["n_prompt"] and r["n_gpu_layers"] == 22]
    errors: dict[str, list[float]] = {}
    for row in hybrid_speed.price_gpu(records, tmp_path):
        errors.setdefault(row["model"], []).append(row["error_pct"])
    assert len(errors["Falcon-H1-7B Q4_K"]) == 4 and len(errors["Llama-shaped Falcon-H1-7B"]) == 4
    assert all(abs(e) < 20 for e in errors["Falcon-H1-7B Q4_K"]), errors
    assert all(abs(e) < 15 for e in errors["Llama-shaped Falcon-H1-7B"]), errors


def test_the_scans_cpu_rate_is_the_fit_of_its_records(tmp_path: Path) -> None:
    """benchmarks/results/ssm_scan: libllama's CPU prompts of Mamba-2 layers that differ only in d_state
    (2-vCPU Xeon, AVX-512): the vector loop's share of a thread's FLOP/s (0.23-0.25 at 1 and 2 threads and
    both head widths, the line's residuals within 3 %) and the scalar loop's (0.03) are the shipped ones;
    priced whole, these CPU-only prompts come out +10..+30 % fast (the mixer's other ops on the CPU, its
    convolution's strided rows the most, are priced at the activations' bytes alone); with the delta
    rule's share they were +59 % at 16 states and -55 % at 256."""
    import json

    from benchmarks import ssm_scan
    from omni_place.attention import SSM_SCAN_CPU_SHARE
    from omni_place.placement import SpeedParams
    from omni_place.plan import evaluate

    records = [json.loads(line) for line in (ssm_scan.FOLDER / "cpu_xeon2.jsonl").read_text().splitlines()]
    rows = ssm_scan.fit(records, SpeedParams().cpu_tflops_per_core)
    assert len(rows) == 4 and all(max(map(abs, r["residual_pct"])) < 3 for r in rows)
    assert statistics.median(r["vector_share"] for r in rows) == pytest.approx(SSM_SCAN_CPU_SHARE["vector"], abs=0.01)
    assert statistics.median(r["scalar_share"] for r in rows) == pytest.approx(SSM_SCAN_CPU_SHARE["scalar"], abs=0.005)
    rig = tmp_path / "xeon2.toml"
    rig.write_text('[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 20\nbandwidth_gbs = 23.7\n'
                   'threads = 2\nsimd = "avx512"\n')
    from benchmarks.speed_models import write_speed_model

    for r in records:
        header = write_speed_model(r["shape"], tmp_path, header_only=True, shape=ssm_scan.SHAPES[r["shape"]])
        pred = evaluate(str(header), str(rig), ["-p", "512", "-n", "0", "-ngl", "0", "-t", str(r["n_threads"])],
                        tool="bench").predicted.pp_tps
        assert 0.05 < pred / r["avg_ts"] - 1 < 0.35, (r["shape"], r["n_threads"], pred, r["avg_ts"])


def test_a_scan_without_state_prices_nothing_and_never_divides_by_zero() -> None:
    """A header may say ssm.state_size = 0 (fuzz_gguf case 562 of seed 17 crashed the price): no work."""
    work = mixer_work(0, 3072, 1, ssm_heads=24, simd="avx512")
    assert work.flops == 0 and work.cpu_share > 0
    assert recurrent_prompt_s(work._replace(act_bytes=0.0), 1e12, 1e11, gpu=False, threads=16) == 0.0
