"""The compute-buffer model (omni_place/compute.py) against the real libllama on shapes it was not
fitted to: realistic random models of every architecture the tests can write, dry-run with
no_alloc on the CPU backend (a sparse full-size copy of a header-only file; nothing is allocated)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from benchmarks.compute_sweep import random_shape
from omni_place.compute_graph import CPU_CHECKED, Offload
from omni_place.cost import CPU, Context, CostModel, Placement
from omni_place.devices import Cluster, Device
from omni_place.gguf import read_model_files
from omni_place.gguf_write import sparse_copy
from omni_place.model import load_model
from omni_place.units import GiB, MiB
from tests.arch_models import ARCHS, engine_available, write_model

pytestmark = pytest.mark.skipif(not engine_available(), reason="needs libllama (llama-cpp-python)")

# The fit's held-out error on the CPU backend (benchmarks/results/compute_fit.md) bounds what a
# test can ask; the target is max(3 %, 32 MiB).
REL, ABS = 0.15, 32 * MiB
CASES = [(arch, seed) for seed, arch in enumerate(ARCHS, start=9000)]


@pytest.mark.parametrize(("arch", "seed"), CASES, ids=[a for a, _ in CASES])
def test_cpu_backend_peak_matches_the_engine(tmp_path: Path, arch: str, seed: int) -> None:
    """A CPU-only load's compute buffer as the planner prices it (CostModel.usage) against the real
    libllama's dry run: exact (to the log's 0.01 MiB) where the CPU replay is trace-checked
    (compute_graph.CPU_CHECKED), within the fitted pieces' error elsewhere."""
    from omni_place.llama import LoadSpec, probe_load

    rng = random.Random(seed)
    shape = random_shape(rng, arch)
    ub, ctx, fa = rng.choice((256, 512, 1024)), rng.choice((4096, 16384)), rng.random() < 0.5
    kv = "q8_0" if fa and rng.random() < 0.5 else "f16"
    header = write_model(tmp_path / "m.gguf", arch, header_only=True, **shape)
    full = sparse_copy(read_model_files(header), tmp_path / "full")
    rep = probe_load(LoadSpec(model_path=str(full), n_gpu_layers=0, n_ctx=ctx, n_batch=ub, n_ubatch=ub,
                              dry_run=True, flash_attn="on" if fa else "off", type_k=kv, type_v=kv), timeout=120)
    assert rep.ok, rep.error
    engine = sum(rep.compute_buffers.values())
    model = load_model(header)
    cpu = Device(name=CPU, kind="cpu", memory_bytes=256 * GiB, bandwidth_gbs=100, tflops=2)
    cost = CostModel(model, Cluster("cpu", (cpu,)), Context(ctx=ctx, n_ubatch=ub, flash_attn=fa, type_k=kv, type_v=kv))
    placement = Placement((), (CPU,) * model.n_layer, (frozenset(),) * model.n_layer, CPU)
    predicted = next(u for u in cost.usage(placement) if u.name == CPU).compute_bytes
    if arch in CPU_CHECKED:
        assert round(predicted / MiB, 2) == round(engine / MiB, 2), (shape, ub, ctx, fa, kv)
    else:
        assert abs(predicted - engine) <= max(REL * engine, ABS), (shape, ub, ctx, fa, predicted / MiB, engine / MiB)


def test_a_device_holds_a_peak_not_a_sum(tmp_path: Path) -> None:
    """The output device's buffer is the larger of the logits and the layers' peak (ggml-alloc
    reuses freed blocks), so moving the output head onto a GPU adds far less than the logits
    plus the layer peak; the CPU beside a GPU that runs every layer keeps only its host share."""
    path = write_model(tmp_path / "l.gguf", "llama", header_only=True, n_layer=4, n_embd=4096, n_head=32,
                       n_head_kv=8, n_ff=14336, n_vocab=128256)
    model = load_model(path)
    gpu = Device(name="CUDA0", kind="gpu", memory_bytes=80 * GiB, bandwidth_gbs=2000, tflops=400)
    cpu = Device(name=CPU, kind="cpu", memory_bytes=256 * GiB, bandwidth_gbs=100, tflops=2)
    cost = CostModel(model, Cluster("t", (gpu, cpu)), Context(ctx=8192, n_ubatch=512))
    on_gpu = Placement(("CUDA0",), ("CUDA0",) * model.n_layer, (frozenset(),) * model.n_layer, "CUDA0")
    use = {u.name: u for u in cost.usage(on_gpu)}
    est = cost.compute
    logits = 4 * model.hparams.n_vocab * 512
    assert logits <= use["CUDA0"].compute_bytes < logits + est.device_bytes(True, False)
    # the host's share replayed from the GPU's graph (the CUDA_Host line), no longer the fitted host_base
    assert est.host_replay is not None
    assert use[CPU].compute_bytes == est.host_replay(Offload(), True) < use["CUDA0"].compute_bytes


RPC_CASES = [("llama", 9100), ("qwen3moe", 9101), ("gpt-oss", 9102)]


@pytest.mark.parametrize(("arch", "seed"), RPC_CASES, ids=[a for a, _ in RPC_CASES])
def test_an_rpc_device_running_everything_is_priced_as_the_engine_sizes_it(tmp_path: Path, arch: str,
                                                                            seed: int) -> None:
    """An RPC server running every layer and the output head: its buffer is the server's CPU
    backend's, the graph inputs copied in from the host (compute_graph ``backend="rpc"``); the
    planner's price equals a real loopback RPC dry run's ``RPC0`` line."""
    from omni_place.llama import LoadSpec, probe_load, rpc_servers

    rng = random.Random(seed)
    shape = random_shape(rng, arch)
    ub, ctx, fa = rng.choice((128, 512, 2048)), rng.choice((2048, 8192)), rng.random() < 0.6
    kv = "q8_0" if fa and rng.random() < 0.5 else "f16"
    header = write_model(tmp_path / "m.gguf", arch, header_only=True, tokenizer="spm", **shape)
    full = sparse_copy(read_model_files(header), tmp_path / "full")
    with rpc_servers(1) as endpoints:
        rep = probe_load(LoadSpec(model_path=str(full), n_gpu_layers=-1, n_ctx=ctx, n_batch=ub, n_ubatch=ub,
                                  dry_run=True, flash_attn="on" if fa else "off", type_k=kv, type_v=kv,
                                  devices=["RPC0"], rpc_servers=endpoints), timeout=120)
    assert rep.ok, rep.error
    engine = next(b for name, b in rep.compute_buffers.items() if name.startswith("RPC0"))
    model = load_model(header)
    rpc = Device(name="RPC0", kind="rpc", memory_bytes=256 * GiB, bandwidth_gbs=10, endpoint=endpoints[0])
    cpu = Device(name=CPU, kind="cpu", memory_bytes=256 * GiB, bandwidth_gbs=100, tflops=2)
    cost = CostModel(model, Cluster("rpc", (rpc, cpu)), Context(ctx=ctx, n_ubatch=ub, flash_attn=fa, type_k=kv,
                                                                 type_v=kv))
    placement = Placement(("RPC0",), ("RPC0",) * model.n_layer, (frozenset(),) * model.n_layer, "RPC0")
    predicted = next(u for u in cost.usage(placement) if u.name == "RPC0").compute_bytes
    assert round(predicted / MiB, 2) == round(engine / MiB, 2), (shape, ub, ctx, fa, kv)


# layer splits over the two loopback RPC servers (rpc_pair: devices RPC0, RPC1) with no pipelining:
# some layers on the CPU and some layers' down experts; iSWA with the head on the CPU (an override,
# so no pipelining); DSA with layers on the CPU, flash attention off
SPLIT_CASES = [("qwen3moe", 9200, ["-ngl", "4", "-ts", "1,2", "-ot", r"blk\.[0-3]\.ffn_down_exps=CPU"]),
               ("gemma3", 9201, ["-ngl", "99", "-ts", "1,1", "-ot", "^output=CPU"]),
               ("deepseek32", 9202, ["-ngl", "3", "-ts", "2,3", "-fa", "off"])]


@pytest.mark.parametrize(("arch", "seed", "flags"), SPLIT_CASES, ids=[a for a, _, _ in SPLIT_CASES])
def test_a_layer_split_over_rpc_servers_is_priced_as_the_engine_sizes_it(
        tmp_path: Path, rpc_pair: list[str], arch: str, seed: int, flags: list[str]) -> None:
    """A command line over two RPC servers, priced by the planner (evaluate: every device's
    compute buffer and the CPU's from one replayed split), then dry-run by the real libllama with
    exactly the plan's parameters (verify_plan): every `compute buffer size` line is the price."""
    from omni_place.llama.verify import verify_plan
    from omni_place.plan import evaluate

    rng = random.Random(seed)
    shape = random_shape(rng, arch)
    shape["n_layer"] = max(shape["n_layer"], 5)
    ub, ctx = rng.choice((128, 512, 1024)), rng.choice((2048, 8192))
    kv = "q8_0" if "off" not in flags and rng.random() < 0.5 else "f16"
    header = write_model(tmp_path / "m.gguf", arch, header_only=True, tokenizer="spm", **shape)
    full = sparse_copy(read_model_files(header), tmp_path / "full")
    rpc = tuple(Device(name=f"RPC{i}", kind="rpc", memory_bytes=64 * GiB, bandwidth_gbs=10, endpoint=ep)
                for i, ep in enumerate(rpc_pair))
    cluster = Cluster("rpc2", (*rpc, Device(name=CPU, kind="cpu", memory_bytes=256 * GiB, bandwidth_gbs=100)))
    argv = [*flags, "-dev", "RPC0,RPC1", "-c", str(ctx), "-b", str(ub), "-ub", str(ub), "-ctk", kv, "-ctv", kv]
    plan = evaluate(str(full), cluster, argv if "-fa" in flags else [*argv, "-fa", "on"])
    assert any(h == CPU for h in plan.placement.layer_home) or plan.placement.output == CPU  # no pipelining
    report = verify_plan(plan, dry_run=True, timeout=120)
    load = report.load
    assert report.error is None and load is not None and not load.pipeline_parallel, report.error
    # each server's one device is RPC0 there: its buffer type is RPC0[endpoint]
    engine = {CPU: load.compute_buffers["CPU"],
              **{f"RPC{i}": load.compute_buffers[f"RPC0[{ep}]"] for i, ep in enumerate(rpc_pair)}}
    priced = {u.name: u.compute_bytes for u in plan.usage}
    assert all(priced.values())  # every device and the CPU compute
    assert {n: round(b / MiB, 2) for n, b in priced.items()} == {n: round(b / MiB, 2) for n, b in engine.items()}, \
        (shape, argv)
