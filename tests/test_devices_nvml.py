"""NVML discovery against a fake NVML module: ordering, visibility, missing fields, no NVML."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from omni_place.devices import DEFAULT_GPU_BANDWIDTH_GBS, DEFAULT_PCIE, Cluster, discover
from omni_place.devices import nvml as nvml_mod
from omni_place.units import GiB, MiB


class NVMLError(Exception):
    def __init__(self, value: int = 999) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 12: "NVML Shared Library Not Found", 9: "Driver Not Loaded"}.get(
            self.value, "Unknown Error")


class NVMLError_NotSupported(NVMLError):  # noqa: N801  (pynvml's naming)
    def __init__(self) -> None:
        super().__init__(3)


@dataclass
class FakeGpu:
    name: str
    uuid: str
    bus_id: str
    total: int
    free: int
    cc: tuple[int, int] = (8, 9)
    cores: int = 16384
    sm_clock: int = 2520
    mem_clock: int = 10501
    bus_width: int = 384
    pcie_max: tuple[int, int] = (4, 16)
    pcie_curr: tuple[int, int] = (1, 16)  # idle links drop to gen 1
    missing: set[str] = field(default_factory=set)


RTX3090 = dict(name="NVIDIA GeForce RTX 3090", total=24 * GiB, free=23 * GiB, cc=(8, 6),
               cores=10496, sm_clock=2100, mem_clock=9751)
PRO6000 = dict(name="NVIDIA RTX PRO 6000 Blackwell Workstation Edition", total=97887 * MiB,
               free=95 * GiB, cc=(12, 0), cores=24064, sm_clock=3090, mem_clock=14001,
               bus_width=512, pcie_max=(5, 16))
RTX5090 = dict(name="NVIDIA GeForce RTX 5090", total=32607 * MiB, free=31 * GiB, cc=(12, 0),
               cores=21760, sm_clock=3090, mem_clock=14001, bus_width=512, pcie_max=(5, 16))


def gpu(uuid: str, bus: int, **kw: Any) -> FakeGpu:
    return FakeGpu(uuid=f"GPU-{uuid}", bus_id=f"00000000:{bus:02X}:00.0", **kw)


class FakeNvml:
    """Just enough of pynvml: handles are indices, every query can be made NotSupported."""

    NVMLError = NVMLError
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_P2P_CAPS_INDEX_READ = (0,)  # sic: nvidia-ml-py's constant is a tuple
    NVML_P2P_STATUS_OK = 0
    NVML_P2P_STATUS_NOT_SUPPORTED = 5

    def __init__(self, gpus: list[FakeGpu], p2p: dict[tuple[int, int], int] | None = None,
                 init_error: Exception | None = None) -> None:
        self.gpus = gpus
        self.p2p = p2p
        self.init_error = init_error
        self.active = False
        self.calls: list[str] = []

    def _gpu(self, handle: int, what: str) -> FakeGpu:
        assert self.active, f"{what} called outside nvmlInit/nvmlShutdown"
        g = self.gpus[handle]
        if what in g.missing:
            raise NVMLError_NotSupported()
        return g

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.active = True

    def nvmlShutdown(self) -> None:
        self.active = False
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str | bytes:
        name = self._gpu(h, "name").name
        return name.encode() if h == 0 else name  # old bindings return bytes

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self._gpu(h, "uuid").uuid

    def nvmlDeviceGetPciInfo(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(busId=self._gpu(h, "pci").bus_id.encode())

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        g = self._gpu(h, "memory")
        return SimpleNamespace(total=g.total, free=g.free, used=g.total - g.free)

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return self._gpu(h, "cc").cc

    def nvmlDeviceGetNumGpuCores(self, h: int) -> int:
        return self._gpu(h, "cores").cores

    def nvmlDeviceGetMaxClockInfo(self, h: int, clock: int) -> int:
        g = self._gpu(h, "sm_clock" if clock == self.NVML_CLOCK_SM else "mem_clock")
        return g.sm_clock if clock == self.NVML_CLOCK_SM else g.mem_clock

    def nvmlDeviceGetMemoryBusWidth(self, h: int) -> int:
        return self._gpu(h, "bus_width").bus_width

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: int) -> int:
        return self._gpu(h, "pcie_max").pcie_max[0]

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: int) -> int:
        return self._gpu(h, "pcie_max").pcie_max[1]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: int) -> int:
        return self._gpu(h, "pcie_curr").pcie_curr[0]

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: int) -> int:
        return self._gpu(h, "pcie_curr").pcie_curr[1]

    def nvmlDeviceGetP2PStatus(self, a: int, b: int, index: int) -> int:
        if not isinstance(index, int):  # what ctypes does with pynvml's tuple constant
            raise ctypes.ArgumentError("argument 3: wrong type")
        assert index == 0
        if self.p2p is None:
            raise NVMLError_NotSupported()
        return self.p2p.get((min(a, b), max(a, b)), self.NVML_P2P_STATUS_OK)


@pytest.fixture(autouse=True)
def _clean_cuda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


def three_gpus() -> list[FakeGpu]:
    """NVML (PCI) order: 3090 at bus 01, PRO 6000 at 41, 5090 at 81 -- slowest first."""
    return [gpu("aaaa1111", 0x01, **RTX3090), gpu("bbbb2222", 0x41, **PRO6000),
            gpu("cccc3333", 0x81, **RTX5090)]


def gpu_models(cluster: Cluster) -> list[tuple[str, str | None]]:
    return [(d.name, d.model) for d in cluster.gpus]


def test_asymmetric_gpus_fastest_first_and_catalog_figures() -> None:
    fake = FakeNvml(three_gpus())
    cluster = discover(nvml=fake)
    assert gpu_models(cluster) == [("CUDA0", "RTX PRO 6000 Blackwell Workstation"),
                                   ("CUDA1", "RTX 5090"), ("CUDA2", "RTX 3090")]
    assert [d.name for d in cluster.devices] == ["CUDA0", "CUDA1", "CUDA2", "CPU"]
    pro = cluster.by_name("CUDA0")
    assert pro.kind == "gpu"
    assert pro.total_bytes == 97887 * MiB and pro.free_bytes == 95 * GiB
    assert pro.memory_bytes == 95 * GiB  # plan with what is free now
    assert pro.bandwidth_gbs == 1792 and pro.tflops == 500.0
    assert (pro.pcie_gen, pro.pcie_width) == (5, 16)  # max link, not the idle gen-1 link
    assert pro.link_gbs == pytest.approx(63.0, abs=0.1)
    assert pro.compute_capability == "12.0" and pro.uuid == "GPU-bbbb2222"
    assert pro.pci_bus_id == "00000000:41:00.0"
    assert pro.peer_access is None  # this fake's driver does not answer P2P queries
    assert dict(pro.source) == {"memory": "nvml", "bandwidth": "catalog", "tflops": "catalog",
                                "link": "nvml", "link_latency": "estimated"}
    assert cluster.by_name("CUDA2").model == "RTX 3090"  # bytes name from an old binding decoded
    assert fake.calls == ["shutdown"] and not fake.active
    assert cluster.cpu is not None and cluster.cpu.kind == "cpu"


def test_pci_bus_id_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    assert [m for _, m in gpu_models(discover(nvml=FakeNvml(three_gpus())))] == [
        "RTX 3090", "RTX PRO 6000 Blackwell Workstation", "RTX 5090"]


def test_identical_gpus_tie_by_bus_id_not_nvml_index() -> None:
    gpus = [gpu("late", 0x81, name="NVIDIA GeForce RTX 4090", total=24 * GiB, free=20 * GiB),
            gpu("early", 0x02, name="NVIDIA GeForce RTX 4090", total=24 * GiB, free=22 * GiB)]
    cluster = discover(nvml=FakeNvml(gpus))
    assert [d.uuid for d in cluster.gpus] == ["GPU-early", "GPU-late"]


def test_unknown_score_sorts_last_then_compute_capability() -> None:
    slow = gpu("slow", 0x01, **RTX3090)
    blind = gpu("blind", 0x02, **RTX5090, missing={"cores"})
    cluster = discover(nvml=FakeNvml([blind, slow]))
    assert [d.uuid for d in cluster.gpus] == ["GPU-slow", "GPU-blind"]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("2,0", ["RTX 3090", "RTX PRO 6000 Blackwell Workstation"]),  # indices in CUDA's order
        ("1", ["RTX 5090"]),
        ("GPU-aaaa1111,GPU-bbbb", ["RTX 3090", "RTX PRO 6000 Blackwell Workstation"]),  # prefix
        ("gpu-cccc3333, 0", ["RTX 5090", "RTX PRO 6000 Blackwell Workstation"]),
        ("0,7,1", ["RTX PRO 6000 Blackwell Workstation"]),  # CUDA stops at an invalid entry
        ("1,1,2", ["RTX 5090"]),  # a repeated device stops the list too
        ("GPU-,1", []),  # an empty UUID prefix names no GPU
        ("-1", []),
        ("", []),
    ],
)
def test_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, visible: str,
                              expected: list[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    cluster = discover(nvml=FakeNvml(three_gpus()))
    assert [m for _, m in gpu_models(cluster)] == expected
    assert [d.name for d in cluster.gpus] == [f"CUDA{i}" for i in range(len(expected))]
    if visible in ("0,7,1", "-1", ""):
        assert any("CUDA_VISIBLE_DEVICES" in n for n in cluster.notes)


def test_visible_indices_follow_pci_order_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert [m for _, m in gpu_models(discover(nvml=FakeNvml(three_gpus())))] == ["RTX 3090"]


def test_ambiguous_uuid_prefix_names_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [gpu("abc1", 0x01, **RTX3090), gpu("abc2", 0x02, **RTX3090)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert discover(nvml=FakeNvml(gpus)).gpus == ()


def test_unknown_gpu_bandwidth_from_nvml_clocks() -> None:
    odd = gpu("odd", 0x01, name="NVIDIA Mystery Accelerator", total=48 * GiB, free=47 * GiB,
              mem_clock=10501, bus_width=384)
    dev = discover(nvml=FakeNvml([odd])).by_name("CUDA0")
    assert dev.model == "Mystery Accelerator"
    assert dev.bandwidth_gbs == pytest.approx(1008.1, abs=0.1)  # 10501 MHz x 2 x 384 bit / 8
    assert dev.tflops is None
    assert dev.source["bandwidth"] == "nvml" and "tflops" not in dev.source


def test_catalog_size_mismatch_falls_back_to_nvml() -> None:
    small = gpu("s", 0x01, name="NVIDIA GeForce RTX 3060", total=8 * GiB, free=7 * GiB,
                mem_clock=7501, bus_width=128)
    dev = discover(nvml=FakeNvml([small])).by_name("CUDA0")
    assert dev.model == "GeForce RTX 3060"  # the 8 GB card is not the catalog's 12 GB one
    assert dev.bandwidth_gbs == pytest.approx(240.0, abs=0.1)


def test_every_optional_field_not_supported() -> None:
    everything = {"uuid", "pci", "cc", "cores", "sm_clock", "mem_clock", "bus_width",
                  "pcie_max", "pcie_curr"}
    bare = gpu("x", 0x01, name="NVIDIA Mystery Accelerator", total=16 * GiB, free=15 * GiB,
               missing=everything)
    cluster = discover(nvml=FakeNvml([bare]))
    dev = cluster.by_name("CUDA0")
    assert dev.memory_bytes == 15 * GiB
    assert dev.uuid is None and dev.pci_bus_id is None and dev.compute_capability is None
    assert dev.bandwidth_gbs == DEFAULT_GPU_BANDWIDTH_GBS
    assert dev.source["bandwidth"] == "estimated" and dev.source["link"] == "estimated"
    assert (dev.pcie_gen, dev.pcie_width) == DEFAULT_PCIE
    assert any("bandwidth unknown" in n for n in cluster.notes)


def test_catalog_fills_link_and_memory_when_nvml_is_silent() -> None:
    quiet = gpu("q", 0x01, **RTX5090, missing={"pcie_max", "memory"})
    dev = discover(nvml=FakeNvml([quiet])).by_name("CUDA0")
    assert (dev.pcie_gen, dev.pcie_width) == (5, 16)  # catalog, before the idle current link
    assert dev.source["link"] == "catalog"
    assert dev.total_bytes == 32 * GiB and dev.free_bytes is None
    assert dev.source["memory"] == "catalog"


def test_current_link_when_neither_max_nor_catalog() -> None:
    odd = gpu("o", 0x01, name="NVIDIA Mystery", total=8 * GiB, free=8 * GiB,
              pcie_curr=(3, 8), missing={"pcie_max"})
    dev = discover(nvml=FakeNvml([odd])).by_name("CUDA0")
    assert (dev.pcie_gen, dev.pcie_width, dev.link_gbs) == (3, 8, pytest.approx(7.88))


def test_gpu_without_memory_or_free_memory_is_left_out() -> None:
    gone = gpu("g", 0x01, name="NVIDIA Mystery", total=8 * GiB, free=0, missing=set())
    unknown = gpu("u", 0x02, name="NVIDIA Mystery", total=8 * GiB, free=1, missing={"memory"})
    cluster = discover(nvml=FakeNvml([gone, unknown]))
    assert cluster.gpus == ()
    assert len([n for n in cluster.notes if "left out" in n]) == 2


def test_memory_info_v2_preferred_and_old_binding_falls_back() -> None:
    class V2(FakeNvml):
        nvmlMemory_v2 = object()

        def nvmlDeviceGetMemoryInfo(self, h: int, version: object = None) -> SimpleNamespace:
            info = super().nvmlDeviceGetMemoryInfo(h)
            if version is self.nvmlMemory_v2:
                info.free -= 300 * MiB  # v2 free excludes reserved memory
            return info

    class OldBinding(FakeNvml):
        nvmlMemory_v2 = object()  # constant present, but the function takes no version

    g = gpu("m", 0x01, **RTX3090)
    assert discover(nvml=V2([g])).by_name("CUDA0").free_bytes == 23 * GiB - 300 * MiB
    assert discover(nvml=OldBinding([g])).by_name("CUDA0").free_bytes == 23 * GiB


def test_p2p_binding_mismatch_is_unknown_not_fatal() -> None:
    class Mismatch(FakeNvml):
        def nvmlDeviceGetP2PStatus(self, a: int, b: int, index: int) -> int:
            raise ctypes.ArgumentError("argument 3: wrong type")

    cluster = discover(nvml=Mismatch(three_gpus()))
    assert [d.peer_access for d in cluster.gpus] == [None, None, None]


def test_peer_access_per_gpu() -> None:
    fake = FakeNvml(three_gpus(), p2p={})
    assert [d.peer_access for d in discover(nvml=fake).gpus] == [True, True, True]
    # NVML indices: 0 = 3090, 1 = PRO 6000, 2 = 5090. The 3090 cannot reach the PRO 6000.
    fake = FakeNvml(three_gpus(), p2p={(0, 1): FakeNvml.NVML_P2P_STATUS_NOT_SUPPORTED})
    peers = {d.model: d.peer_access for d in discover(nvml=fake).gpus}
    assert peers == {"RTX 3090": False, "RTX PRO 6000 Blackwell Workstation": False, "RTX 5090": True}
    assert discover(nvml=FakeNvml([gpu("a", 1, **RTX3090)], p2p={})).by_name("CUDA0").peer_access is None


@pytest.mark.parametrize("error", [NVMLError(12), NVMLError(9), OSError("libnvidia-ml.so.1")])
def test_nvml_init_failure_gives_cpu_only(error: Exception) -> None:
    cluster = discover(nvml=FakeNvml(three_gpus(), init_error=error))
    assert [d.kind for d in cluster.devices] == ["cpu"]
    assert any(str(error) in n for n in cluster.notes)


def test_nvml_module_without_functions_gives_cpu_only() -> None:
    cluster = discover(nvml=SimpleNamespace())
    assert [d.name for d in cluster.devices] == ["CPU"]


def test_nvml_error_while_counting_still_shuts_down() -> None:
    class Broken(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            raise NVMLError(15)

    fake = Broken(three_gpus())
    cluster = discover(nvml=fake)
    assert cluster.gpus == () and fake.calls == ["shutdown"]
    assert any("no NVIDIA GPU" in n for n in cluster.notes)


def test_pynvml_missing_gives_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml_mod, "_import_nvml", lambda: None)
    cluster = discover()
    assert [d.name for d in cluster.devices] == ["CPU"]
    assert any("nvidia-ml-py" in n for n in cluster.notes)


def test_real_nvml_never_raises() -> None:
    """Whatever this machine has (often no driver at all), discovery returns a CPU."""
    cluster = discover()
    assert cluster.cpu is not None and cluster.cpu.memory_bytes > 0
    assert all(d.name == f"CUDA{i}" for i, d in enumerate(cluster.gpus))
