"""`devices --measure`: the C core's read-bandwidth kernel, the measured host->GPU copy rate
(``stream_gbs``) through the CUDA driver API, and ``stream_gbs`` in cluster files.

The CUDA driver is replaced by a fake at the ctypes boundary only (this machine has no GPU): it
receives the same ctypes arguments libcuda would, writes through the same pointers and answers
with CUresult codes; everything above it is the real code.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from omni_place._native import core
from omni_place.cli import main
from omni_place.cpuprobe import measure_memory_bandwidth, others_cpu_share
from omni_place.devices import Device, discover, load_cluster
from omni_place.devices import cudacopy
from omni_place.errors import ClusterError, InvalidArgumentError
from omni_place.units import GB, GiB, MiB


# ---------------------------------------------------------------------------------------------
# CPU: the C read kernel
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads, nbytes", [(1, 32 * MiB), (2, 32 * MiB + 8), (3, 16 * MiB + 5 * 8 + 3)])
def test_read_kernel_reads_every_word_once(threads: int, nbytes: int) -> None:
    seconds, checksum = core.membw_read(nbytes, threads, 2)
    n = nbytes // 8
    assert checksum == n * (n - 1) // 2 % 2**64  # word i holds i: each word summed exactly once
    assert 0.1 < n * 8 / seconds / GB < 10_000


def test_read_kernel_more_threads_than_cores() -> None:
    seconds, checksum = core.membw_read(64 * 9, 9, 1)  # one 64-byte slice per thread
    assert seconds > 0 and checksum == 72 * 71 // 2


@pytest.mark.parametrize("nbytes, threads, reps", [
    (MiB, 0, 1), (MiB, -1, 1), (MiB, 4097, 1), (MiB, 1, 0), (MiB, 1, 1001),
    (15, 2, 1), (-8, 1, 1), (2**41, 1, 1), (MiB, True, 1), (MiB, 1.5, 1), (float(MiB), 1, 1),
])
def test_read_kernel_rejects_bad_arguments(nbytes: Any, threads: Any, reps: Any) -> None:
    start = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match="bandwidth probe"):
        core.membw_read(nbytes, threads, reps)
    assert time.perf_counter() - start < 1  # rejected before any allocation


def test_measure_memory_bandwidth_is_the_read_kernel() -> None:
    gbs = measure_memory_bandwidth(threads=2, size_bytes=64 * MiB, reps=2)
    assert 0.5 < gbs < 10_000
    with pytest.raises(InvalidArgumentError, match="at least 1 MiB"):
        measure_memory_bandwidth(threads=1, size_bytes=1000)
    with pytest.raises(InvalidArgumentError, match="threads"):
        measure_memory_bandwidth(threads=0, size_bytes=64 * MiB)


def test_others_cpu_share_sees_a_busy_neighbour() -> None:
    """Processes spinning beside a probe show up in the share; the probe's own threads do not."""
    n = min(os.cpu_count() or 1, 4)
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.3)
        _, share = others_cpu_share(lambda: time.sleep(1.0))
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert share is not None and share > 0.6 * n / (os.cpu_count() or 1)
    gbs, _ = others_cpu_share(lambda: measure_memory_bandwidth(threads=2, size_bytes=64 * MiB, reps=2))
    assert gbs > 0


def test_busy_probe_is_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("omni_place.devices.cluster.others_cpu_share", lambda run: (41.5, 0.45))
    monkeypatch.setattr("omni_place.devices.cluster.measure_disk_read_bandwidth", lambda: 2.0)
    cluster = discover(measure=True)
    assert cluster.cpu is not None and cluster.cpu.bandwidth_gbs == 41.5
    assert any("measured while other processes used 45% of the CPU" in n for n in cluster.notes)
    monkeypatch.setattr("omni_place.devices.cluster.others_cpu_share", lambda run: (41.5, 0.05))
    assert not any("other processes" in n for n in discover(measure=True).notes)


# ---------------------------------------------------------------------------------------------
# GPU: host->GPU copies through a fake libcuda
# ---------------------------------------------------------------------------------------------

_ERROR_NAMES = {2: b"CUDA_ERROR_OUT_OF_MEMORY", 100: b"CUDA_ERROR_NO_DEVICE", 201: b"CUDA_ERROR_INVALID_CONTEXT",
                999: b"CUDA_ERROR_UNKNOWN"}


class FakeCuda:
    """The driver API functions cudacopy calls, with libcuda's calling convention.

    ``fail`` maps a function name (or ``(name, ordinal)``) to the CUresult it returns; copies
    sleep ``seconds_per_mib`` (pageable or pinned) so the measured rates are known.
    """

    def __init__(self, bus_ids: list[str], fail: dict[Any, int] | None = None,
                 pageable_s_per_mib: float = 2e-4, pinned_s_per_mib: float = 2e-5) -> None:
        self.bus_ids = bus_ids
        self.fail = fail or {}
        self.rates = (pageable_s_per_mib, pinned_s_per_mib)
        self.calls: list[str] = []
        self.pinned: dict[int, Any] = {}      # address -> ctypes buffer
        self.device_mem: set[int] = set()
        self.retained: list[int] = []
        self.current: int | None = None
        self.initialized = False

    def _enter(self, name: str, ordinal: int | None = None) -> int:
        self.calls.append(name)
        return self.fail.get((name, ordinal), self.fail.get(name, 0))

    def cuGetErrorName(self, code: ctypes.c_int, out: Any) -> int:
        if code.value not in _ERROR_NAMES:
            return 1
        out.contents.value = _ERROR_NAMES[code.value]
        return 0

    def cuInit(self, flags: ctypes.c_uint) -> int:
        assert flags.value == 0
        rc = self._enter("cuInit")
        self.initialized = rc == 0
        return rc

    def cuDeviceGetCount(self, count: Any) -> int:
        assert self.initialized
        count.contents.value = len(self.bus_ids)
        return self._enter("cuDeviceGetCount")

    def cuDeviceGet(self, dev: Any, ordinal: ctypes.c_int) -> int:
        assert 0 <= ordinal.value < len(self.bus_ids)
        dev.contents.value = 100 + ordinal.value  # a handle, not the ordinal
        return self._enter("cuDeviceGet", ordinal.value)

    def cuDeviceGetPCIBusId(self, buf: Any, length: ctypes.c_int, dev: ctypes.c_int) -> int:
        buf.value = self.bus_ids[dev.value - 100].encode()
        assert len(buf.value) < length.value
        return self._enter("cuDeviceGetPCIBusId", dev.value - 100)

    def cuDevicePrimaryCtxRetain(self, ctx: Any, dev: ctypes.c_int) -> int:
        rc = self._enter("cuDevicePrimaryCtxRetain", dev.value - 100)
        if rc == 0:
            ctx.contents.value = 0x1000 + dev.value
            self.retained.append(dev.value)
        return rc

    def cuDevicePrimaryCtxRelease_v2(self, dev: ctypes.c_int) -> int:
        self.retained.remove(dev.value)
        return self._enter("cuDevicePrimaryCtxRelease_v2")

    def cuCtxSetCurrent(self, ctx: ctypes.c_void_p) -> int:
        self.current = ctx.value
        return self._enter("cuCtxSetCurrent")

    def cuMemAlloc_v2(self, dptr: Any, size: ctypes.c_size_t) -> int:
        assert self.current is not None, "cuMemAlloc without a current context"
        rc = self._enter("cuMemAlloc_v2", self.current - 0x1000 - 100)
        if rc == 0:
            dptr.contents.value = 0x7000_0000 + len(self.device_mem)
            self.device_mem.add(dptr.contents.value)
        return rc

    def cuMemFree_v2(self, dptr: ctypes.c_uint64) -> int:
        self.device_mem.remove(dptr.value)
        return self._enter("cuMemFree_v2")

    def cuMemHostAlloc(self, ptr: Any, size: ctypes.c_size_t, flags: ctypes.c_uint) -> int:
        if not self.current:
            self.calls.append("cuMemHostAlloc")
            return 201  # CUDA_ERROR_INVALID_CONTEXT, as the real driver answers without a context
        rc = self._enter("cuMemHostAlloc")
        if rc == 0:
            buf = ctypes.create_string_buffer(size.value)
            ptr.contents.value = ctypes.addressof(buf)
            self.pinned[ctypes.addressof(buf)] = buf
        return rc

    def cuMemFreeHost(self, ptr: ctypes.c_void_p) -> int:
        del self.pinned[ptr.value]
        return self._enter("cuMemFreeHost")

    def cuMemcpyHtoD_v2(self, dptr: ctypes.c_uint64, host: ctypes.c_void_p, size: ctypes.c_size_t) -> int:
        assert dptr.value in self.device_mem
        assert ctypes.string_at(host.value, 64) == b"\x01" * 64, "the host buffer was not written"
        pinned = host.value in self.pinned
        time.sleep(self.rates[pinned] * size.value / MiB)
        return self._enter("cuMemcpyHtoD_v2")

    def cuCtxSynchronize(self) -> int:
        return self._enter("cuCtxSynchronize")


@pytest.fixture()
def small_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cudacopy, "COPY_BYTES", 16 * MiB)


def use_cuda(monkeypatch: pytest.MonkeyPatch, fake: FakeCuda | None) -> None:
    monkeypatch.setattr(cudacopy, "_load_libcuda", lambda: fake)


def test_rates_and_call_sequence(monkeypatch: pytest.MonkeyPatch, small_copies: None) -> None:
    fake = FakeCuda(["0000:81:00.0", "0000:41:00.0"])
    use_cuda(monkeypatch, fake)
    rates, notes = cudacopy.measure_host_copies()
    assert notes == [] and sorted(rates) == [0, 1]
    for i, rate in rates.items():
        # 16 MiB at 0.2 ms/MiB pageable, 0.02 ms/MiB pinned: sleep only lengthens a copy
        assert 0.5 < rate.pageable_gbs <= 16 * MiB / (16 * 2e-4) / GB * 1.01
        assert rate.pinned_gbs is not None and rate.pinned_gbs > 2 * rate.pageable_gbs
        assert rate.pci_bus_id == fake.bus_ids[i] and rate.ordinal == i
    per_gpu = ["cuDeviceGet", "cuDeviceGetPCIBusId", "cuDevicePrimaryCtxRetain", "cuCtxSetCurrent",
               "cuMemAlloc_v2", *["cuMemcpyHtoD_v2", "cuCtxSynchronize"] * 4, "cuMemHostAlloc",
               *["cuMemcpyHtoD_v2", "cuCtxSynchronize"] * 4, "cuMemFreeHost", "cuMemFree_v2",
               "cuCtxSetCurrent", "cuDevicePrimaryCtxRelease_v2"]
    assert fake.calls == ["cuInit", "cuDeviceGetCount", *per_gpu, *per_gpu]
    assert not fake.retained and not fake.device_mem and not fake.pinned  # everything given back


def test_errors_become_notes_and_resources_are_released(monkeypatch: pytest.MonkeyPatch,
                                                        small_copies: None) -> None:
    fake = FakeCuda(["0000:81:00.0", "0000:41:00.0"], fail={("cuMemAlloc_v2", 1): 2, "cuMemHostAlloc": 999})
    use_cuda(monkeypatch, fake)
    rates, notes = cudacopy.measure_host_copies()
    assert list(rates) == [0] and rates[0].pinned_gbs is None and rates[0].pageable_gbs > 0
    assert notes == ["CUDA0: pinned host memory unavailable (cuMemHostAlloc failed: CUDA_ERROR_UNKNOWN): only "
                     "pageable copies measured",
                     "CUDA1: host->GPU copy rate not measured (cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY)"]
    assert not fake.retained and not fake.device_mem and not fake.pinned

    fake = FakeCuda(["0000:81:00.0"], fail={"cuInit": 100})
    use_cuda(monkeypatch, fake)
    assert cudacopy.measure_host_copies() == (
        {}, ["CUDA driver unusable (cuInit failed: CUDA_ERROR_NO_DEVICE): host->GPU copy rate not measured"])

    fake = FakeCuda(["0000:81:00.0"], fail={"cuCtxSynchronize": 12345})  # a code without a name
    use_cuda(monkeypatch, fake)
    rates, notes = cudacopy.measure_host_copies()
    assert rates == {}
    assert notes == ["CUDA0: host->GPU copy rate not measured (cuCtxSynchronize failed: CUresult 12345)"]
    assert not fake.retained and not fake.device_mem and not fake.pinned


def test_old_driver_without_v2_release(monkeypatch: pytest.MonkeyPatch, small_copies: None) -> None:
    class OldDriver(FakeCuda):
        cuDevicePrimaryCtxRelease_v2 = None  # type: ignore[assignment]

        def cuDevicePrimaryCtxRelease(self, dev: ctypes.c_int) -> int:
            self.retained.remove(dev.value)
            return self._enter("cuDevicePrimaryCtxRelease")

    fake = OldDriver(["0000:81:00.0"])
    use_cuda(monkeypatch, fake)
    rates, notes = cudacopy.measure_host_copies()
    assert list(rates) == [0] and notes == [] and "cuDevicePrimaryCtxRelease" in fake.calls and not fake.retained


def test_no_libcuda_is_a_note(monkeypatch: pytest.MonkeyPatch, two_gpus: None) -> None:
    use_cuda(monkeypatch, None)
    assert cudacopy.measure_host_copies() == (
        {}, ["libcuda.so.1 not found (no NVIDIA driver): host->GPU copy rate not measured"])
    monkeypatch.setattr("omni_place.devices.cluster.measure_memory_bandwidth", lambda threads: 50.0)
    monkeypatch.setattr("omni_place.devices.cluster.measure_disk_read_bandwidth", lambda: 2.0)
    cluster = discover(measure=True)
    assert [d.stream_gbs for d in cluster.gpus] == [None, None]
    assert any("libcuda.so.1 not found" in n for n in cluster.notes)


def test_discover_fills_stream_gbs_by_cuda_ordinal(monkeypatch: pytest.MonkeyPatch, two_gpus: None,
                                                   small_copies: None) -> None:
    monkeypatch.setattr("omni_place.devices.cluster.measure_memory_bandwidth", lambda threads: 50.0)
    monkeypatch.setattr("omni_place.devices.cluster.measure_disk_read_bandwidth", lambda: 2.0)
    use_cuda(monkeypatch, FakeCuda(["0000:81:00.0", "0000:41:00.0"]))
    assert [d.stream_gbs for d in discover().gpus] == [None, None]  # only --measure measures
    cluster = discover(measure=True)
    assert [d.name for d in cluster.gpus] == ["CUDA0", "CUDA1"]
    for dev in cluster.gpus:
        assert dev.stream_gbs is not None and dev.stream_gbs > 0 and dev.source["stream"] == "measured"
    assert sum("from pageable memory (stream_gbs)" in n for n in cluster.notes) == 2
    # the driver enumerates in another order than NVML: no GPU gets another GPU's figure
    use_cuda(monkeypatch, FakeCuda(["0000:41:00.0", "0000:81:00.0"]))
    cluster = discover(measure=True)
    assert [d.stream_gbs for d in cluster.gpus] == [None, None]
    assert any(n.startswith("CUDA0: NVML says PCI 00000000:81:00.0, CUDA device 0 is 0000:41:00.0")
               for n in cluster.notes)


def test_cli_measure_json_and_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                    two_gpus: None, small_copies: None) -> None:
    use_cuda(monkeypatch, FakeCuda(["0000:81:00.0", "0000:41:00.0"]))
    assert main(["devices", "--measure", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cpu = doc["devices"][-1]
    assert cpu["source"]["bandwidth"] == "measured" and 0.5 < cpu["bandwidth_gbs"] < 10_000  # the C kernel
    cuda0 = doc["devices"][0]
    assert cuda0["stream_gbs"] > 0 and cuda0["source"]["stream"] == "measured"
    assert main(["devices", "--measure"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()[1:]
    assert "STREAM GB/s" in header
    column = header.index("STREAM GB/s") + len("STREAM GB/s")  # right-aligned
    assert all(row[:column].rstrip()[-1].isdigit() for row in rows[:2]) and rows[2][:column].endswith("-")


# ---------------------------------------------------------------------------------------------
# stream_gbs in cluster files and on Device
# ---------------------------------------------------------------------------------------------

GPU = '[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "H100 PCIe"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "box.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_cluster_file_stream_gbs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = load_cluster(write(tmp_path, GPU + "stream_gbs = 6.5\n"))
    dev = cluster.by_name("CUDA0")
    assert dev.stream_gbs == 6.5 and dev.source["stream"] == "file"
    assert load_cluster(write(tmp_path, GPU)).by_name("CUDA0").stream_gbs is None
    assert main(["devices", "--cluster", str(tmp_path / "box.toml"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["devices"][0]["stream_gbs"] is None


@pytest.mark.parametrize("text, message", [
    (GPU + "stream_gbs = -3\n", "box.toml:5: device 'CUDA0': stream_gbs must be positive (got -3)"),
    (GPU + "stream_gbs = 0\n", "stream_gbs must be positive"),
    (GPU + "stream_gbs = 1e9\n", "box.toml:5: device 'CUDA0': stream_gbs = 1000000000.0 is beyond any real device"),
    (GPU + "stream_gbs = 'fast'\n", "box.toml:5: stream_gbs must be a number"),
    (GPU + "stream_gbs = nan\n", "box.toml:5:"),
    ("[[devices]]\nname = 'CPU'\nkind = 'cpu'\nstream_gbs = 6\n",
     "box.toml:4: device 'CPU': 'stream_gbs' does not apply to kind 'cpu'"),
    ("[[devices]]\nname = 'RPC0'\nkind = 'rpc'\ncatalog = 'RTX 3090'\nendpoint = '10.0.0.2:50052'\n"
     "stream_gbs = 6\n", "'stream_gbs' does not apply to kind 'rpc'"),
])
def test_cluster_file_stream_gbs_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                        message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ClusterError) as err:
        load_cluster(path)
    assert message in str(err.value)
    assert main(["devices", "--cluster", str(path)]) == 2
    out, errtext = capsys.readouterr()
    assert out == "" and errtext.startswith("error: ") and "Traceback" not in errtext


def test_device_validates_stream_gbs() -> None:
    gpu_dev = Device("CUDA0", "gpu", 8 * GiB, 900.0, stream_gbs=7.0)
    assert gpu_dev.to_dict()["stream_gbs"] == 7.0
    for bad in (-1.0, 0.0, float("inf"), float("nan"), "7"):
        with pytest.raises(ClusterError, match="stream_gbs"):
            Device("CUDA0", "gpu", 8 * GiB, 900.0, stream_gbs=bad)  # type: ignore[arg-type]
    with pytest.raises(ClusterError, match="stream_gbs applies to gpu devices only"):
        Device("CPU", "cpu", 8 * GiB, 50.0, stream_gbs=7.0)
