"""Certification: the engine's own no-alloc dry run of a plan, with the measured compute buffers
fed back (real libllama, CPU + two loopback RPC devices)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from omni_place.cli import main
from omni_place.cost import CPU
from omni_place.devices import Cluster, Device
from omni_place.gguf import read_model_files
from omni_place.gguf_write import has_tensor_data
from omni_place.llama.certify import certify
from omni_place.llama.verify import verify_plan
from omni_place.model import load_model
from omni_place.plan import plan_split
from omni_place.units import MiB

from .arch_models import write_model

pytestmark = pytest.mark.engine
ACCEL = ("RPC0", "RPC1")
SHAPE = {"n_layer": 12, "n_embd": 256, "n_ff": 1024, "n_head": 8, "n_head_kv": 2, "n_vocab": 4000}


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("certify") / "dense.gguf", "llama", weight_type="f16", **SHAPE)


def rig(endpoints: list[str], mem_mib: tuple[float, float]) -> Cluster:
    """Two fast RPC devices of the given memory (no margin) and a slow CPU: every layer the
    memory allows goes to the RPC devices."""
    rpc = [Device(name, "rpc", int(mem * MiB), 500.0, endpoint=ep, link_gbs=100.0, link_latency_us=1.0,
                  margin_bytes=0) for name, ep, mem in zip(ACCEL, endpoints, mem_mib)]
    return Cluster("loopback", (*rpc, Device("CPU", "cpu", 16 << 30, 0.01, threads=2)))


def on_accelerators(plan) -> int:
    return sum(h != CPU for h in plan.placement.layer_home)


def test_certified_plan_is_sized_by_the_engine_and_never_looser(rpc_pair, dense: Path) -> None:
    model = load_model(dense)
    cluster = rig(rpc_pair, (14, 14))
    plan = plan_split(model, cluster, ctx=1024, ubatch=256)
    cert = certify(plan)
    c = cert.certified
    assert c is not None and c["status"] == "certified", c
    assert 1 <= c["dry_runs"] <= 4 and c["by"].startswith("llama.cpp")
    # every accelerator holding layers reports the engine's compute buffer, and everything fits
    # with the engine's numbers in place of the estimate
    used = {h for h in cert.placement.layer_home if h != CPU}
    assert used, "the engine's smaller compute buffers leave room for layers on the RPC devices"
    for name in used:
        d = c["devices"][name]
        assert d["compute_engine_bytes"] > 0 and d["free_bytes"] >= 0
    assert cert.feasible and all(u.free_bytes >= 0 for u in cert.usage)
    # the certified plan is priced with the engine's compute buffers, and never packs less
    sized = {u.name: u.compute_bytes for u in cert.usage}
    assert all(sized[n] == c["devices"][n]["compute_engine_bytes"] for n in used)
    assert on_accelerators(cert) >= on_accelerators(plan)
    # the certified plan loads as planned (a dry run: placement and compute buffers)
    report = verify_plan(cert, dry_run=True)
    assert report.matches, report.mismatches()


def test_header_only_models_are_certified_from_a_sparse_copy(rpc_pair, dense: Path, tmp_path: Path) -> None:
    header = write_model(tmp_path / "dense-header.gguf", "llama", weight_type="f16", header_only=True, **SHAPE)
    assert not has_tensor_data(read_model_files(header)) and has_tensor_data(read_model_files(dense))
    cluster = rig(rpc_pair, (14, 14))
    full = certify(plan_split(load_model(dense), cluster, ctx=1024, ubatch=256))
    hdr = certify(plan_split(load_model(header), cluster, ctx=1024, ubatch=256))
    assert hdr.certified is not None and hdr.certified["status"] == "certified", hdr.certified
    assert hdr.placement == full.placement and str(hdr.model.path) == str(header)
    assert {n: d["compute_engine_bytes"] for n, d in hdr.certified["devices"].items()} == \
           {n: d["compute_engine_bytes"] for n, d in full.certified["devices"].items()}


def test_certification_is_skipped_where_the_devices_are_not(libllama, dense: Path) -> None:
    plan = plan_split(load_model(dense), "seed")  # two CUDA GPUs this machine does not have
    out = certify(plan)
    assert out.certified == {"status": "skipped", "reason": "CUDA0, CUDA1 are not on this machine"} or \
        (out.certified["status"] == "skipped" and "CUDA" in out.certified["reason"])
    assert out.placement == plan.placement
    gone = Cluster("gone", (Device("RPC0", "rpc", 1 << 30, 500.0, endpoint="127.0.0.1:9", link_gbs=1.0),
                            Device("CPU", "cpu", 16 << 30, 0.01, threads=2)))
    out = certify(plan_split(load_model(dense), gone))
    assert out.certified["status"] == "skipped" and "127.0.0.1:9" in out.certified["reason"]


def test_plan_command_prints_the_certificate(rpc_pair, dense: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cluster = tmp_path / "loop.toml"
    cluster.write_text('name = "loop"\n' + "".join(
        f'[[devices]]\nname = "{n}"\nkind = "rpc"\nmemory_gib = {14 / 1024}\nbandwidth_gbs = 500\n'
        f'endpoint = "{ep}"\nlink_gbs = 100\nlink_latency_us = 1\nmargin_mib = 0\n' for n, ep in zip(ACCEL, rpc_pair))
        + '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 16\nbandwidth_gbs = 0.01\nthreads = 2\n')
    assert main(["plan", str(dense), "--cluster", str(cluster), "--ctx", "1024", "--ubatch", "256"]) == 0
    out = capsys.readouterr().out
    assert "certified by llama.cpp" in out and "no-alloc dry run" in out
    assert main(["plan", str(dense), "--cluster", str(cluster), "--ctx", "1024", "--ubatch", "256",
                 "--no-certify", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["certified"] is None
