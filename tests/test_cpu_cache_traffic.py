"""Op offload of CPU-held weights at a prompt batch, checked in structure against the engine's own
runs: the H100 matrix of benchmarks/results/calibrate_36 and the H200 ones of calibrate_31.

- Each CPU-held weight an offloaded op uses starts a graph split of its own, and a CPU layer's KV
  cache adds a CPU split (``set_rows``) between two GPU ones: the splits priced
  (``CostModel.offload_splits``, ``cpu_cache_pp``) are the ones llama.cpp reports
  (``sched_reserve: graph (pp bs=512 ...) splits = N``).
- Mainline keeps a CPU layer's cache in pageable memory whatever holds the weights: with ``-lm
  none`` (pinned weights) its traffic goes at the pageable rate, and that dense plan's prompt is
  priced as it measured on three rigs (it was priced 17-28 % fast while the cache went at the
  pinned rate). ik_llama.cpp keeps it pinned; both as their logs say.
"""
from __future__ import annotations

import re
import statistics
import sys
import tarfile
from pathlib import Path

import pytest

from omni_place.bench.calibrate import Point, predict_point
from omni_place.bench.llamabench import import_text
from omni_place.cost import CPU, Context, CostModel, Placement, SpeedParams
from omni_place.devices import resolve_cluster
from omni_place.model import ModelProfile, load_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.speed_models import write_speed_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SPLITS = re.compile(r"graph \(pp bs=512, tg bs=1\): nodes = \d+ / \d+, splits = (\d+) /")


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for run in ("calibrate_31", "calibrate_36"):
        with tarfile.open(RESULTS / run / "logs.tar.xz") as tar:
            tar.extractall(root / run, filter="data")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelProfile]:
    folder = tmp_path_factory.mktemp("hdr")
    return {m: load_model(write_speed_model(m, folder, header_only=True)) for m in ("dense11", "moe15", "mla16")}


def _prompt_points(logs: list[Path], model: ModelProfile, rig: Path) -> list[Point]:
    """The steady prompt tests of these runs' -v logs (an unsteady one is left out, as calibrate does)."""
    cluster = resolve_cluster(str(rig))
    return [p for log in logs for p in import_text(log.read_text(), model, cluster).points if p.kind == "pp"]


def _priced_splits(cost: CostModel, p: Placement) -> float:
    """The op-offload splits a prompt ubatch of ``p`` is priced: per CPU layer its weights' and its
    cache's two, per GPU layer those of the experts the CPU holds."""
    n = 0.0
    for il, home in enumerate(p.layer_home):
        if home == CPU:
            n += cost.offload_splits(il, True, cost.ffn_in_prompt[il]) + 2 * bool(cost.kv_pp_bytes[il])
            continue
        stored = cost.expert_bytes(il, "stored", None, False)
        held = cost.expert_bytes(il, "stored", p.cpu_experts[il], True) if stored else 0
        n += cost.offload_splits(il, False, held / stored * cost.ffn_in_prompt[il]) if stored else 0.0
    return n


@pytest.mark.parametrize("model, config", [
    ("dense11", "ngl0"), ("dense11", "ngl3"), ("dense11", "omni_place"),
    ("moe15", "ngl0"), ("moe15", "ot-exps"), ("moe15", "omni_place"), ("moe15", "ncmoe22"),
    ("mla16", "ngl0"), ("mla16", "ngl3"), ("mla16", "ot-exps"), ("mla16", "omni_place")])
def test_the_splits_priced_are_the_engines(unpacked: Path, models: dict[str, ModelProfile], model: str,
                                           config: str) -> None:
    logs = [unpacked / "calibrate_36" / "res" / "res_b" / "logs" / f"{model}.h100-b.r{r}" / f"llama.cpp.{config}.0.log"
            for r in range(3)]
    point = _prompt_points(logs, models[model], RESULTS / "calibrate_36" / "rig_b.toml")[0]
    log = logs[0]
    cost = CostModel(models[model], point.cluster, point.context or Context(ctx=point.ctx))
    engine = int(SPLITS.findall(log.read_text())[-1])  # the load that ran the tests
    priced = _priced_splits(cost, point.placement)
    # beside them the engine counts a few of its own (2-8 here; 12 for mla16 with the output on the
    # CPU too): the input's, the output's, a prompt's last layer's FFN (one row, left on the CPU)
    assert 0 <= engine - priced <= 12, (engine, priced)


def test_a_cpu_layers_cache_moves_at_the_pageable_rate_with_pinned_weights(models: dict[str, ModelProfile]) -> None:
    cost = CostModel(models["dense11"], resolve_cluster(str(RESULTS / "calibrate_36" / "rig_b.toml")),
                     Context(ctx=576, n_prompt=512, n_gen=64, pinned_weights=True))
    pageable, pinned = cost.stream_bandwidth("CUDA0", False), cost.stream_bandwidth("CUDA0")
    assert pinned > 5 * pageable
    il = 3
    assert cost.cpu_cache_pp(il, "CUDA0")["pcie_stream"] == pytest.approx(cost.kv_pp_bytes[il] / 512 / pageable)
    # the 512 cells the ubatch attends come up, its 512 tokens' F32 K and V go down
    hp = cost.model.hparams
    kv_row = 2 * hp.n_head_kv[il] * hp.head_dim_k
    assert cost.kv_pp_bytes[il] == pytest.approx(512 * kv_row * (2 + 4))
    layer = cost.layer_pp(il, CPU, frozenset(), "CUDA0")
    weights = cost.cpu_layer_pp_bytes(il, True) / 512 / pinned
    assert layer["pcie_stream"] == pytest.approx(weights + cost.kv_pp_bytes[il] / 512 / pageable)


@pytest.mark.parametrize("run, rig, rounds", [("calibrate_31", "b", 3), ("calibrate_31", "c", 2),
                                             ("calibrate_36", "b", 3)])
def test_the_pinned_dense_plan_prompts_as_measured(unpacked: Path, models: dict[str, ModelProfile], run: str,
                                                   rig: str, rounds: int) -> None:
    """dense11 `-ngl 10 -lm none`, 22 CPU layers streamed from pinned memory per ubatch: H200 (two
    VMs) and H100 measured 2793, 2771 and 2568 tok/s (medians of the steady rounds)."""
    kind = "h100" if run == "calibrate_36" else "h200"
    logs = unpacked / run / "res" / f"res_{rig}" / "logs"
    points = _prompt_points([logs / f"dense11.{kind}-{rig}.r{r}" / "llama.cpp.omni_place.0.log" for r in range(rounds)],
                            models["dense11"], RESULTS / run / f"rig_{rig}.toml")
    assert len(points) >= 2 and all(p.context is not None and p.context.pinned_weights for p in points)
    measured = statistics.median(p.measured for p in points)
    assert predict_point(points[0], SpeedParams()) == pytest.approx(measured, rel=0.12)


@pytest.mark.parametrize("engine, run, log", [
    ("llama.cpp", "calibrate_36", "res/res_b/logs/dense11.h100-b.r0/llama.cpp.ngl.0.log"),
    ("ik_llama.cpp", "ik_24", "res/res_b/logs/dense11.h200-b.r0/ik_llama.cpp.ngl.0.log")])
def test_where_each_engine_keeps_a_cpu_layers_cache(tmp_path: Path, models: dict[str, ModelProfile], engine: str,
                                                    run: str, log: str) -> None:
    """Mainline allocates a CPU layer's cache in plain CPU memory, ik_llama.cpp in the GPU's pinned
    host buffer, as their logs say: the cache moves at the pageable or the pinned rate."""
    from omni_place.engines import dialect

    with tarfile.open(RESULTS / run / "logs.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data", members=[m for m in tar.getmembers() if m.name == log])
    buffers = set(re.findall(r"llama_kv_cache(?:_init)?: +(\S+) KV buffer size", (tmp_path / log).read_text()))
    pinned = dialect(engine).traits.pinned_cpu_cache
    assert buffers == {"CUDA0", "CUDA_Host" if pinned else "CPU"}
    cost = CostModel(models["dense11"], resolve_cluster(str(RESULTS / "calibrate_36" / "rig_b.toml")),
                     dialect(engine).traits.context(ctx=576, n_prompt=512))
    rate = cost.stream_bandwidth("CUDA0", pinned)
    assert cost.cpu_cache_pp(3, "CUDA0")["pcie_stream"] == pytest.approx(cost.kv_pp_bytes[3] / 512 / rate)
