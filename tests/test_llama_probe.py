"""probe_load against the real libllama: exact layer splits over CPU + two loopback RPC servers,
dry runs, overrides, buffer accounting, and failures (missing file, engine error, GGML_ABORT,
timeout) contained in the child. Plus the log parser and spec/report plumbing (no engine)."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omni_place.errors import InvalidArgumentError
from omni_place.llama import LoadReport, LoadSpec, probe_load, rpc_servers
from omni_place.llama._child import child_env
from omni_place.llama.logcapture import MIB_PRINT_TOLERANCE_BYTES, LogCapture, LogLine, mib_to_bytes, parse_log
from omni_place.llama.probe import buffer_device
from omni_place.llama.rpc import RPC_CONN_CAPS_SIZE, client_protocol

from .arch_models import TinyModel

REPO = Path(__file__).resolve().parents[1]


def expected_slots(n_layer_all: int, ngl: int, tensor_split: list[float], devices: list[str]) -> dict[int, str]:
    """llama.cpp's layer -> device rule (src/llama-model.cpp:1579-1604, load_tensors), in float32 like the
    engine: the last ``ngl`` of the n_layer_all + 1 slots go to upper_bound(cumsum(ts)/sum, j/act)."""
    n_slots = n_layer_all + 1
    ngl = n_slots if ngl < 0 else ngl
    splits = np.cumsum(np.asarray(tensor_split, dtype=np.float32), dtype=np.float32)
    splits = (splits / splits[-1]).astype(np.float32)
    start, act = max(n_slots - ngl, 0), min(ngl, n_slots)
    out = {}
    for il in range(n_slots):
        if il < start:
            out[il] = "CPU"
        else:
            frac = np.float32(il - start) / np.float32(act)
            out[il] = devices[int(np.searchsorted(splits, frac, side="right"))]
    return out


def _close(actual: int, expected: int, lines: int = 1) -> bool:
    return abs(actual - expected) <= lines * MIB_PRINT_TOLERANCE_BYTES


# ---------------------------------------------------------------------------------------------
# The real engine
# ---------------------------------------------------------------------------------------------

engine = pytest.mark.engine


@pytest.fixture(scope="module")
def split_spec(tiny_llama: TinyModel, rpc_pair: list[str]) -> LoadSpec:
    # wanted: CPU 2 layers, RPC0 2, RPC1 2 + output -> ngl = 2 + 2 + 1, ts = [2, 2 + 1]
    return LoadSpec(str(tiny_llama.path), n_gpu_layers=5, tensor_split=[2, 3], rpc_servers=rpc_pair)


@pytest.fixture(scope="module")
def split_report(split_spec: LoadSpec) -> LoadReport:
    report = probe_load(split_spec, timeout=60)
    assert report.ok, report.error
    return report


@engine
def test_exact_split_over_rpc_devices(split_report: LoadReport) -> None:
    r = split_report
    assert (r.n_layer, r.n_layer_all, r.n_slots) == (6, 6, 7)
    assert r.devices_used == ["RPC0", "RPC1"]  # default order: RPC devices first, in add order
    assert [d.name for d in parse_log(r.log).devices_used] == r.devices_used  # log == llama_model_get_device
    want = expected_slots(6, 5, [2, 3], r.devices_used)
    assert r.layer_devices == {il: want[il] for il in range(6)}
    assert r.layer_devices == {0: "CPU", 1: "CPU", 2: "RPC0", 3: "RPC0", 4: "RPC1", 5: "RPC1"}
    assert r.output_device == want[6] == "RPC1"
    assert r.offloaded == [5, 7]
    assert r.graph_splits is not None and r.graph_splits >= 3
    assert not r.pipeline_parallel  # not every slot is on a GPU-type device


@engine
def test_buffers_map_to_devices_by_endpoint(
    split_report: LoadReport, tiny_llama: TinyModel, rpc_pair: list[str]
) -> None:
    r = split_report
    # both servers expose their device 0, so both buffer types are "RPC0[...]": the endpoint decides
    assert r.buffer_devices[f"RPC0[{rpc_pair[0]}]"] == "RPC0"
    assert r.buffer_devices[f"RPC0[{rpc_pair[1]}]"] == "RPC1"
    per_dev = r.device_bytes()
    m = tiny_llama
    assert _close(per_dev["RPC0"]["model"], m.layer_bytes(2) + m.layer_bytes(3))
    assert _close(per_dev["RPC1"]["model"], m.layer_bytes(4) + m.layer_bytes(5) + m.output_bytes)
    kv_layer = m.kv_bytes_per_layer(512)
    for dev in ("CPU", "RPC0", "RPC1"):  # the KV cache follows the layer's device: 2 layers each
        assert _close(per_dev[dev]["KV"], 2 * kv_layer), (dev, per_dev[dev])
    assert {"CPU", "RPC0", "RPC1"} <= {d for d, kinds in per_dev.items() if kinds.get("compute", 0) > 0}
    assert r.caches and r.caches[0]["cells"] == 512 and r.caches[0]["layers"] == 6
    assert r.n_ctx == 512 and r.n_ubatch == 512


@engine
def test_dry_run_places_the_same_and_sizes_compute(split_spec: LoadSpec, split_report: LoadReport) -> None:
    spec = LoadSpec.from_json({**split_spec.to_json(), "dry_run": True})
    dry = probe_load(spec, timeout=60)
    assert dry.ok, dry.error
    assert dry.load_mode == "none" and dry.dry_run
    assert dry.layer_devices == split_report.layer_devices and dry.output_device == split_report.output_device
    assert all(v == 0 for v in dry.model_buffers.values()) and all(v == 0 for v in dry.kv_buffers.values())
    # compute buffers are sized exactly as in the real load (no_alloc only skips allocation)
    assert dry.compute_buffers == split_report.compute_buffers


@engine
def test_explicit_device_order(tiny_llama: TinyModel, rpc_pair: list[str]) -> None:
    spec = LoadSpec(str(tiny_llama.path), n_gpu_layers=5, tensor_split=[2, 3], rpc_servers=rpc_pair,
                    devices=["RPC1", "RPC0"], dry_run=True)
    r = probe_load(spec, timeout=60)
    assert r.ok, r.error
    assert r.devices_used == ["RPC1", "RPC0"]
    assert r.layers_on("RPC1") == [2, 3] and r.layers_on("RPC0") == [4, 5] and r.output_device == "RPC0"


@engine
def test_override_moves_weights_but_not_kv(
    tiny_llama: TinyModel, rpc_pair: list[str], split_report: LoadReport
) -> None:
    pattern = r"blk\.4\.ffn_(up|down|gate)\."
    spec = LoadSpec(str(tiny_llama.path), n_gpu_layers=5, tensor_split=[2, 3], rpc_servers=rpc_pair,
                    overrides=[(pattern, "CPU")])
    r = probe_load(spec, timeout=60)
    assert r.ok, r.error
    assert r.layer_devices == split_report.layer_devices  # the layer's home does not move
    before, after = split_report.device_bytes(), r.device_bytes()
    assert _close(before["RPC1"]["model"] - after["RPC1"]["model"], tiny_llama.bytes_matching(pattern), lines=2)
    assert after["RPC1"]["KV"] == before["RPC1"]["KV"]
    assert not r.pipeline_parallel


@engine
def test_default_split_follows_advertised_memory(tiny_llama: TinyModel, libllama) -> None:
    with rpc_servers(2, threads=1, mem_gib=[1, 3]) as endpoints:
        r = probe_load(LoadSpec(str(tiny_llama.path), rpc_servers=endpoints, dry_run=True), timeout=60)
    assert r.ok, r.error
    free = {d["name"]: d["memory_free"] for d in r.devices}
    assert (free["RPC0"], free["RPC1"]) == (1 << 30, 3 << 30)
    want = expected_slots(6, -1, [1, 3], ["RPC0", "RPC1"])  # all-zero ts: split by free memory
    assert r.layer_devices == {il: want[il] for il in range(6)} and r.output_device == want[6]
    assert r.layers_on("RPC0") == [0, 1]


@engine
def test_missing_model_file(libllama, tmp_path: Path) -> None:
    r = probe_load(LoadSpec(str(tmp_path / "absent.gguf")), timeout=60)
    assert not r.ok and r.error == f"model file not found: {tmp_path / 'absent.gguf'}"


@engine
def test_engine_error_is_reported(libllama, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    r = probe_load(LoadSpec(str(bad)), timeout=60)
    assert not r.ok and r.returncode == 0
    assert "failed to load model" in (r.error or "")


@engine
def test_invalid_override_target_names_the_known_ones(tiny_llama: TinyModel, libllama) -> None:
    r = probe_load(LoadSpec(str(tiny_llama.path), overrides=[("output", "CUDA7")]), timeout=60)
    assert not r.ok and "'CUDA7' is neither a device nor a buffer type" in (r.error or "")
    assert "CPU" in (r.error or "")


@pytest.fixture
def fake_rpc_server(libllama) -> Iterator[str]:
    """Answers the RPC HELLO like a server of this build, then closes every connection at the
    next command: the handshake passes, the client's next request fails and ggml aborts."""
    version = client_protocol()
    reply = bytes([*version, 0]) + bytes(RPC_CONN_CAPS_SIZE)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    if conn.recv(1 + 8 + RPC_CONN_CAPS_SIZE):
                        conn.sendall(len(reply).to_bytes(8, "little") + reply)
                        conn.recv(64)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(2)
    server.close()


@engine
def test_ggml_abort_in_the_child_is_contained(tiny_llama: TinyModel, fake_rpc_server: str, libllama) -> None:
    r = probe_load(LoadSpec(str(tiny_llama.path), rpc_servers=[fake_rpc_server]), timeout=60)
    assert not r.ok
    assert r.returncode == -signal.SIGABRT
    assert "SIGABRT" in (r.error or "") and "GGML_ABORT" in (r.error or "")


@engine
def test_timeout_kills_the_child(tiny_llama: TinyModel, libllama) -> None:
    silent = socket.socket()  # listens but never answers: the RPC hello blocks forever
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        started = time.monotonic()
        r = probe_load(LoadSpec(str(tiny_llama.path), rpc_servers=[f"127.0.0.1:{silent.getsockname()[1]}"]),
                       timeout=2)
    finally:
        silent.close()
    assert not r.ok and "timed out after 2 s" in (r.error or "")
    assert time.monotonic() - started < 20


@engine
def test_rpc_server_cli(libllama) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_place", "rpc-server", "--port", str(port), "--threads", "1", "--mem-gib", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert f"serving CPU on 127.0.0.1:{port} (1 thread, 2 GiB advertised)" in err
    assert "warning" not in err


def test_rpc_server_cli_rejects_non_ipv4_host() -> None:
    r = subprocess.run([sys.executable, "-m", "omni_place", "rpc-server", "--host", "::1"],
                       capture_output=True, text=True, env=child_env(), timeout=60)
    assert r.returncode == 2 and "must be an IPv4 address" in r.stderr


# ---------------------------------------------------------------------------------------------
# No engine needed
# ---------------------------------------------------------------------------------------------

LOG = """\
llama_prepare_model_devices: using device RPC0 (127.0.0.1:50052) (unknown id) - 4096 MiB free
llama_prepare_model_devices: using device CUDA0 (NVIDIA GeForce RTX 4090) (0000:01:00.0) - 23000 MiB free
print_info: n_layer               = 3
print_info: n_layer_all           = 4
load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
load_tensors: layer   0 assigned to device CPU, is_swa = 0
load_tensors: layer   1 assigned to device RPC0, is_swa = 1
load_tensors: layer   2 assigned to device CUDA0, is_swa = 0
load_tensors: layer   3 assigned to device CUDA0, is_swa = 0
load_tensors: layer   4 assigned to device CUDA0, is_swa = 0
load_tensors: offloading output layer to GPU
load_tensors: offloading 3 repeating layers to GPU
load_tensors: offloaded 4/5 layers to GPU
load_tensors:   CPU_Mapped model buffer size =     0.61 MiB
load_tensors: RPC0[127.0.0.1:50052] model buffer size =  1024.00 MiB
load_tensors:        CUDA0 model buffer size =  2000.50 MiB
load_tensors:        CUDA0 model buffer size =    10.25 MiB
llama_context:  CUDA_Host  output buffer size =     0.58 MiB
llama_kv_cache:      CUDA0 KV buffer size =   128.00 MiB
llama_kv_cache: size =  160.00 MiB (  4096 cells,   4 layers,  1/1 seqs), K (f16):   80.00 MiB, V (q8_0):   80.00 MiB
llama_memory_recurrent:        CPU RS buffer size =     0.02 MiB
llama_memory_recurrent: size =    0.02 MiB (     1 cells,   4 layers,  1 seqs  0 rs_seq), R (f32):    0.01 MiB, \
S (f32):    0.01 MiB, P (f32):    0.00 MiB
llama_context: pipeline parallelism enabled
sched_reserve:      CUDA0 compute buffer size =   300.01 MiB
sched_reserve:  CUDA_Host compute buffer size =    12.00 MiB
~llama_context:      CUDA0 compute buffer size is 300.0100 MiB, matches expectation of 300.0100 MiB
sched_reserve: graph (pp bs=512, tg bs=1): nodes = 200 / 190, splits = 5 / 3, input objects = 2, input tensors = 3
sched_reserve: reserve took 1.52 ms, sched copies = 4
llama_context: layer 3 is assigned to device CUDA0 but the fused op is assigned to device CPU \
(usually due to missing support)
"""


def test_parse_log_formats() -> None:
    log = parse_log(LOG.splitlines())
    assert log.layer_devices == {0: "CPU", 1: "RPC0", 2: "CUDA0", 3: "CUDA0", 4: "CUDA0"}
    assert log.layer_is_swa[1] and not log.layer_is_swa[0]
    assert [(d.name, d.description, d.device_id, d.free_mib) for d in log.devices_used] == [
        ("RPC0", "127.0.0.1:50052", None, 4096),
        ("CUDA0", "NVIDIA GeForce RTX 4090", "0000:01:00.0", 23000),
    ]
    assert (log.n_layer, log.n_layer_all, log.load_mode) == (3, 4, "mmap")
    assert log.buffer_bytes("model") == {
        "CPU_Mapped": mib_to_bytes(0.61),
        "RPC0[127.0.0.1:50052]": 1024 << 20,
        "CUDA0": mib_to_bytes(2000.50) + mib_to_bytes(10.25),  # two buffers of one type are summed
    }
    assert log.buffer_lines("model") == 4
    assert log.buffer_bytes("output") == {"CUDA_Host": mib_to_bytes(0.58)}
    assert log.buffer_bytes("KV") == {"CUDA0": 128 << 20}
    assert log.buffer_bytes("RS") == {"CPU": mib_to_bytes(0.02)}
    assert log.buffer_bytes("compute") == {"CUDA0": mib_to_bytes(300.01), "CUDA_Host": 12 << 20}
    kv, rs = log.caches
    assert (kv.func, kv.mib, kv.cells, kv.layers, kv.parts) == (
        "llama_kv_cache", 160.0, 4096, 4, {"K": ("f16", 80.0), "V": ("q8_0", 80.0)})
    assert rs.func == "llama_memory_recurrent" and set(rs.parts) == {"R", "S", "P"}
    assert log.graph is not None and (log.graph.nodes_pp, log.graph.nodes_tg) == (200, 190)
    assert (log.graph.splits_pp, log.graph.splits_tg) == (5, 3)
    assert log.offloaded == (4, 5) and log.offloading_output and log.offloading_repeating == 3
    assert log.pipeline_parallel and log.sched_copies == 4
    assert MIB_PRINT_TOLERANCE_BYTES == 5243  # 0.005 MiB, rounded up


def test_log_capture_assembles_chunks() -> None:
    cap = LogCapture()
    cap.feed(2, "load_tensors: loading")
    cap.feed(5, " model tensors\n")
    cap.feed(2, ".")
    cap.feed(5, "..\n")
    cap.feed(1, "load_tensors: layer   0 assigned to device CPU, is_swa = 0\nsecond line\n")
    cap.feed(4, "unterminated error")
    assert cap.records == [
        LogLine(2, "load_tensors: loading model tensors"),
        LogLine(2, "..."),
        LogLine(1, "load_tensors: layer   0 assigned to device CPU, is_swa = 0"),
        LogLine(1, "second line"),
        LogLine(4, "unterminated error"),
    ]
    log = parse_log(cap.records)
    assert log.layer_devices == {0: "CPU"} and log.errors == ["unterminated error"]


def test_buffer_device_mapping() -> None:
    devices: list[dict[str, Any]] = [
        {"name": "CPU", "description": "Xeon", "buffer_type": "CPU", "host_buffer_type": None},
        {"name": "CUDA0", "description": "RTX", "buffer_type": "CUDA0", "host_buffer_type": "CUDA_Host"},
        {"name": "RPC0", "description": "10.0.0.2:50052", "buffer_type": None, "host_buffer_type": None},
        {"name": "RPC1", "description": "10.0.0.3:50052", "buffer_type": None, "host_buffer_type": None},
    ]
    assert buffer_device("CUDA0", devices) == "CUDA0"
    assert buffer_device("RPC0[10.0.0.3:50052]", devices) == "RPC1"
    assert buffer_device("RPC0[10.0.0.2:50052]", devices) == "RPC0"
    assert buffer_device("RPC1[10.0.0.2:50052]", devices) is None  # that server has one device
    for host in ("CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host"):
        assert buffer_device(host, devices) == "CPU"
    assert buffer_device("Vulkan0", devices) is None


def test_spec_validation_and_json_roundtrip(tmp_path: Path) -> None:
    # a path-like model_path and a split-mode name are normalised (to str and LLAMA_SPLIT_MODE_LAYER)
    spec = LoadSpec(tmp_path / "m.gguf", split_mode="layer",  # type: ignore[arg-type]
                    tensor_split=[1, 2], overrides=[(r"exps", "CPU")])
    assert (spec.model_path, spec.split_mode) == (str(tmp_path / "m.gguf"), 1)
    data = json.loads(json.dumps(spec.to_json()))
    assert LoadSpec.from_json(data) == spec
    with pytest.raises(InvalidArgumentError, match="dry run needs load_mode 'none'"):
        LoadSpec("m.gguf", dry_run=True, load_mode="mmap").validate()
    with pytest.raises(InvalidArgumentError, match="not a KV cache type"):
        LoadSpec("m.gguf", type_k="q3_k").validate()
    with pytest.raises(InvalidArgumentError, match="host:port"):
        LoadSpec("m.gguf", rpc_servers=["localhost"]).validate()
    with pytest.raises(InvalidArgumentError, match="unknown LoadSpec field"):
        LoadSpec.from_json({"model_path": "m.gguf", "ngl": 3})


def test_report_json_roundtrip() -> None:
    report = LoadReport(ok=True, layer_devices={0: "CPU", 1: "RPC0"}, output_device="RPC0",
                        model_buffers={"RPC0[h:1]": 10}, buffer_devices={"RPC0[h:1]": "RPC0"}, n_layer_all=2)
    back = LoadReport.from_json(json.loads(json.dumps(report.to_json())))
    assert back == report and back.n_slots == 3
    assert back.device_bytes() == {"RPC0": {"model": 10}}


def test_float32_rule_on_61_layers_split_75_25() -> None:
    """The rule of llama.cpp's load_tensors (src/llama-model.cpp:1579-1604: float32 prefix sums of
    tensor_split, upper_bound of slot/act) on 61 layers + output, ts 75,25: ngl 99 -> 47/14 with
    the output on the second device, ngl 19 -> 43 CPU, 15/3."""
    full = expected_slots(61, 99, [75, 25], ["A", "B"])
    assert sum(1 for il in range(61) if full[il] == "A") == 47 and full[61] == "B"
    part = expected_slots(61, 19, [75, 25], ["A", "B"])
    counts = {d: sum(1 for il in range(61) if part[il] == d) for d in ("CPU", "A", "B")}
    assert counts == {"CPU": 43, "A": 15, "B": 3}
