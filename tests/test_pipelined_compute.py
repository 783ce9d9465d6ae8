"""A pipelined layer split (every layer and the output head on the devices, llama-context.cpp's
pipeline parallelism) is priced as the engine sizes it: the scheduler's four copies of every
input (ggml-backend.cpp n_copies) replayed, on committed H200 dry runs of CUDA0 beside RPC
servers and on the real libllama's dry runs over two loopback RPC servers."""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pytest

from benchmarks.compute_fit import _profile, record_ubatch
from benchmarks.compute_sweep import random_shape
from benchmarks.split_compute import DEFAULT_FILES, cluster_of, engine_buffers, placement_of, read_sweep
from omni_place.cost import CostModel
from omni_place.devices import Cluster, Device
from omni_place.gguf import read_model_files
from omni_place.gguf_write import sparse_copy
from omni_place.model import ModelProfile
from omni_place.placement import CPU, Context
from omni_place.units import GiB, MiB
from tests.arch_models import write_model

PER_FILE = 3  # the first pipelined records of each sweep the planner prices as pipelined


def test_pipelined_splits_are_priced_exactly() -> None:
    cache: dict[str, ModelProfile] = {}
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        for sweep in map(read_sweep, DEFAULT_FILES):
            picked = 0
            for rec in sweep.records:
                if not rec.get("pipeline_parallel") or picked == PER_FILE:
                    continue
                model = _profile(cache, Path(tmp), rec["arch"], rec["shape"])
                p = placement_of(rec, model, sweep.devices)
                cost = CostModel(model, cluster_of(sweep), Context(
                    ctx=rec["n_ctx"], n_ubatch=record_ubatch(rec), type_k=rec["kv_type"], type_v=rec["kv_type"],
                    flash_attn=rec["flash_attn"]))
                if not cost.pipeline_parallel(p):  # the head on a device of no layer: an -ot override
                    continue
                priced = {u.name: round(u.compute_bytes / MiB, 2) for u in cost.usage(p)}
                engine = {name: round(size / MiB, 2) for name, size in engine_buffers(rec, sweep).items()}
                assert {name: priced[name] for name in engine} == engine, (sweep.path.name, rec["case"])
                picked += 1
            checked += picked
    assert checked == PER_FILE * len(DEFAULT_FILES)



@pytest.mark.parametrize("arch, head_alone", [("qwen3", False), ("gemma3", False), ("deepseek32", False),
                                              ("qwen3", True)])
def test_a_pipelined_split_over_rpc_servers_is_priced_as_the_engine_sizes_it(
        tmp_path: Path, rpc_pair: list[str], arch: str, head_alone: bool) -> None:
    """Every layer and the head over two loopback RPC servers: the real libllama pipelines it
    (verify_plan's dry run), and every `compute buffer size` line is the planner's price;
    ``head_alone``: every layer on RPC0 and the head alone on RPC1 by its -ts slot (no override)."""
    from omni_place.llama.verify import verify_plan
    from omni_place.plan import evaluate

    rng = random.Random(9300)
    shape = random_shape(rng, arch)
    shape["n_layer"] = max(shape["n_layer"], 5)
    header = write_model(tmp_path / "m.gguf", arch, header_only=True, tokenizer="spm", **shape)
    full = sparse_copy(read_model_files(header), tmp_path / "full")
    rpc = tuple(Device(name=f"RPC{i}", kind="rpc", memory_bytes=64 * GiB, bandwidth_gbs=10, endpoint=ep)
                for i, ep in enumerate(rpc_pair))
    cluster = Cluster("rpc2", (*rpc, Device(name=CPU, kind="cpu", memory_bytes=256 * GiB, bandwidth_gbs=100)))
    ts = f"{shape['n_layer']},1" if head_alone else "2,3"
    argv = ["-ngl", "99", "-ts", ts, "-dev", "RPC0,RPC1", "-c", "4096", "-b", "512", "-ub", "512", "-fa", "on"]
    plan = evaluate(str(full), cluster, argv)
    if head_alone:
        assert plan.placement.output == "RPC1" and set(plan.placement.layer_home) == {"RPC0"}
    report = verify_plan(plan, dry_run=True, timeout=120)
    load = report.load
    assert report.error is None and load is not None and load.pipeline_parallel, report.error
    engine = {CPU: load.compute_buffers["CPU"],
              **{f"RPC{i}": load.compute_buffers[f"RPC0[{ep}]"] for i, ep in enumerate(rpc_pair)}}
    priced = {u.name: round(u.compute_bytes / MiB, 2) for u in plan.usage}
    assert priced == {n: round(b / MiB, 2) for n, b in engine.items()}, shape
