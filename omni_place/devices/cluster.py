"""The device model: :class:`Device`, :class:`Cluster`, the engine's device order and this machine's CPU.

Everything else in :mod:`omni_place.devices` builds these: :mod:`.nvml` (discovered GPUs),
:mod:`.cluster_file` (TOML cluster files and presets), :mod:`.resolve` (``cluster=`` specs).
Devices are named and ordered the way llama.cpp names and orders them by default: ``RPC0``,
``RPC1``, ... first (in ``--rpc`` order), then ``CUDA0``, ``CUDA1``, ... in CUDA's enumeration
order, then ``CPU``. Figures: memory in bytes, bandwidth and links in GB/s (10**9 B/s), compute
in dense FP16 tensor TFLOPS (see ``data/gpu_catalog.toml``).
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal

from ..cpuprobe import (DEFAULT_CPU_BANDWIDTH_GBS, cpu_info, measure_disk_read_bandwidth, measure_memory_bandwidth,
                        others_cpu_share)
from ..catalog import DEFAULT_SPEED_ROW, SpeedShare, lookup, speed_share
from ..errors import ClusterError
from ..kernels import CPU_SIMD, cpu_simd
from ..units import GiB, MiB
from ..validate import choice, flag, integer, number, show, text

__all__ = [
    "CPU_THREAD_GBS", "DEFAULT_GPU_BANDWIDTH_GBS", "DEFAULT_MARGIN_BYTES", "DEFAULT_PCIE",
    "DEFAULT_PCIE_LATENCY_US", "DEFAULT_RPC_LATENCY_US", "DEFAULT_RPC_LINK_GBS", "GPU_BACKENDS", "KINDS",
    "MAX_ACCELERATORS",
    "Cluster", "Device", "DeviceKind", "list_presets",
]

DeviceKind = Literal["gpu", "cpu", "rpc"]
KINDS: tuple[str, ...] = ("gpu", "cpu", "rpc")

#: The most memory a device may claim (1 PiB; the core counts memory in int64 units).
MAX_MEMORY_BYTES = 1 << 50
#: The most threads a CPU (or an RPC server) may run.
MAX_THREADS = 4096
#: One thread's decode read rate through the CPU's kernels, GB/s: at t threads a CPU whose figure B
#: was measured at T reads 1 / (1/B - 1/(T x this) + 1/(t x this)) (its memory's share and the
#: threads' in series, the figure at T kept). Fits two hosts of 16 vCPUs: an H100's (Q8_0, 1-16
#: threads within 5 %, 11 % beside a GPU, benchmarks/results/hybrid_speed.md) and an H200's (22 types at 4 and 8
#: threads, median error 6 / 9 %, quant_speed.md); a power law (threads / T) ** 0.7 had priced
#: 1-2 threads +30..+47 % fast.
CPU_THREAD_GBS = 10.0
# the slowest rate (GB/s, TFLOPS) a device may declare: 1 MB/s; below it (1e-308 passes "positive")
# a token takes longer than any float can say
MIN_RATE = 1e-3
#: Memory kept free on every device for what no formula sees (CUDA context, cuBLAS workspace).
DEFAULT_MARGIN_BYTES = 512 * MiB
#: Assumed latency of a small host<->GPU copy over PCIe, microseconds.
DEFAULT_PCIE_LATENCY_US = 10.0
#: Assumed host link of a GPU described without one: PCIe 4.0 x16.
DEFAULT_PCIE = (4, 16)
#: Assumed network to an RPC host described without one: 10 GbE and a LAN round trip.
DEFAULT_RPC_LINK_GBS = 1.25
DEFAULT_RPC_LATENCY_US = 100.0
#: Assumed memory bandwidth of a GPU NVML cannot describe and the catalog does not know, GB/s.
DEFAULT_GPU_BANDWIDTH_GBS = 300.0

#: ggml backend device-name prefixes for GPUs, in ggml's registration (= default) order.
GPU_BACKENDS: tuple[str, ...] = ("CUDA", "ROCm", "MTL", "SYCL", "Vulkan", "CANN")
# The engine's names: ASCII digits without leading zeros (ggml prints "CUDA%d"), so CUDA00, a
# fullwidth CUDA\uff10 or an Arabic-Indic digit is no device of the engine's.
_GPU_NAME = re.compile(r"(?P<prefix>[A-Za-z]+?)(?P<index>0|[1-9][0-9]{0,3})", re.ASCII)
_RPC_NAME = re.compile(r"RPC(?P<index>0|[1-9][0-9]{0,3})", re.ASCII)
#: Accelerators a cluster may have: the C core's OP_MAX_DEVICES (csrc/), checked by cluster files
#: while they are read (tests/test_cluster_file.py checks the two agree).
MAX_ACCELERATORS = 64


# --------------------------------------------------------------------------------------------
# Device and Cluster
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    """One place tensors can live: a local GPU, the CPU, or a device behind a llama.cpp RPC server.

    Attributes:
        name: the engine's device name (``CUDA0``, ``RPC0``, ``CPU``).
        kind: ``"gpu"``, ``"cpu"`` or ``"rpc"``.
        memory_bytes: capacity the planner may fill, before ``margin_bytes`` is kept free
            (free memory for NVML GPUs, available RAM for the local CPU, the file's figure else).
        bandwidth_gbs: memory bandwidth, GB/s.
        model: catalog or marketing name (``RTX 5090``), None when unknown.
        total_bytes / free_bytes: installed and currently free memory, None when unknown.
        tflops: dense FP16 tensor TFLOPS (FP16 accumulate), None when unknown.
        link_gbs / link_latency_us: the path to the host (PCIe for a GPU, the network for RPC);
            None for the CPU itself.
        pcie_gen / pcie_width: the PCIe link ``link_gbs`` was derived from, when it was.
        stream_gbs: GPU only -- GB/s at which the engine copies CPU-held weights from pageable
            host memory to this GPU for op offload (far below ``link_gbs``: the driver stages
            pageable copies); ``devices --measure`` measures it, None when unknown.
        peer_access: GPU only -- True when peer-to-peer reads work with every other GPU of the
            cluster, False when some pair cannot, None when unknown or there is no other GPU.
        endpoint: ``host:port`` of the RPC server (rpc only).
        host: the machine the device sits in (``"local"`` for this one).
        threads: CPU threads the engine should use (cpu only).
        simd: the SIMD the engine's CPU kernels are built for, one of kernels.CPU_SIMD (cpu only;
            None: unknown, priced over both).
        disk_gbs: read bandwidth of the disk the model file is on, GB/s (cpu only): what
            weights that do not fit in RAM are paged in at (``--allow-paging``).
        margin_bytes: memory kept free on this device.
        compute_capability / uuid / pci_bus_id: NVML facts, None when unknown.
        source: where each figure came from -- ``{"memory": "nvml", "bandwidth": "catalog",
            ...}`` with values ``nvml``, ``catalog``, ``file``, ``os``, ``measured`` or
            ``estimated``.
    """

    name: str
    kind: DeviceKind
    memory_bytes: int
    bandwidth_gbs: float
    model: str | None = None
    total_bytes: int | None = None
    free_bytes: int | None = None
    tflops: float | None = None
    link_gbs: float | None = None
    link_latency_us: float | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    stream_gbs: float | None = None
    peer_access: bool | None = None
    endpoint: str | None = None
    host: str = "local"
    threads: int | None = None
    simd: str | None = None
    disk_gbs: float | None = None
    margin_bytes: int = DEFAULT_MARGIN_BYTES
    compute_capability: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    source: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        def bad(problem: str) -> ClusterError:
            return ClusterError(f"device {show(self.name)}: {problem}")

        text(self.name, "name", max_len=128, error=bad)
        choice(self.kind, "kind", KINDS, error=bad)
        if integer(self.memory_bytes, "memory_bytes", hi=MAX_MEMORY_BYTES, error=bad) < 1:
            raise bad(f"memory must be positive (got {self.memory_bytes} bytes)")
        number(self.bandwidth_gbs, "bandwidth_gbs", lo=MIN_RATE, hi=1e6, error=bad)
        integer(self.margin_bytes, "margin_bytes", lo=0, hi=MAX_MEMORY_BYTES, error=bad)
        for key in ("total_bytes", "free_bytes"):
            if getattr(self, key) is not None:
                integer(getattr(self, key), key, lo=0, hi=MAX_MEMORY_BYTES, error=bad)
        for key in ("tflops", "link_gbs", "stream_gbs", "disk_gbs"):
            if getattr(self, key) is not None:
                number(getattr(self, key), key, lo=MIN_RATE, hi=1e6, error=bad)
        if self.stream_gbs is not None and self.kind != "gpu":
            raise bad(f"stream_gbs applies to gpu devices only (this one is {self.kind})")
        if self.link_latency_us is not None:
            number(self.link_latency_us, "link_latency_us", lo=0, hi=1e7, error=bad)
        if self.threads is not None:
            integer(self.threads, "threads", lo=1, hi=MAX_THREADS, error=bad)
        if self.simd is not None:
            choice(self.simd, "simd", CPU_SIMD, error=bad)
            if self.kind != "cpu":
                raise bad(f"simd applies to the cpu device only (this one is {self.kind})")
        for key in ("model", "endpoint", "host", "compute_capability", "uuid", "pci_bus_id"):
            if getattr(self, key) is not None:
                text(getattr(self, key), key, max_len=300, error=bad)
        if self.peer_access is not None:
            flag(self.peer_access, "peer_access", error=bad)
        if self.kind == "rpc" and not self.endpoint:
            raise bad("an rpc device needs an endpoint (host:port)")
        if not isinstance(self.source, Mapping):
            raise bad(f"source must be a mapping (got {show(self.source)})")
        object.__setattr__(self, "source", MappingProxyType(dict(self.source)))

    @property
    def speed(self) -> SpeedShare:
        """What llama.cpp achieves of this GPU's datasheet figures: the catalog's row of its
        compute capability (:func:`omni_place.catalog.speed_share`)."""
        return speed_share(self.compute_capability)

    @cached_property
    def fp32_accumulate_share(self) -> float:
        """FP16 tensor math accumulating in FP32 (attention's) as a share of ``tflops``: the catalog
        entry's (GeForce cards: 0.5), 1 for a GPU the catalog does not know."""
        spec = lookup(self.model) if self.model else None
        return spec.fp32_accumulate_share if spec else 1.0

    @property
    def usable_bytes(self) -> int:
        """Memory the planner may fill: ``memory_bytes - margin_bytes`` (never negative)."""
        return max(0, self.memory_bytes - self.margin_bytes)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values (``source`` as a dict)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["source"] = dict(self.source)
        return out


@dataclass(frozen=True)
class Cluster:
    """The devices of a machine (or of several, through RPC), in the engine's default order.

    ``notes`` say what discovery could not see (no NVML, a hidden GPU, an estimated figure).
    """

    name: str
    devices: tuple[Device, ...]
    description: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        text(self.name, "cluster name", max_len=4096, error=ClusterError)
        text(self.description, "cluster description", max_len=1 << 16, error=ClusterError)
        devices = tuple(self.devices) if isinstance(self.devices, (list, tuple)) else None
        if devices is None or not all(isinstance(d, Device) for d in devices):
            raise ClusterError(f"cluster {show(self.name)}: devices must be a list of Device objects "
                               f"(got {show(self.devices)})")
        object.__setattr__(self, "devices", devices)
        object.__setattr__(self, "notes", tuple(str(n) for n in self.notes))
        seen: set[str] = set()
        for dev in self.devices:
            if dev.name in seen:
                raise ClusterError(f"cluster {self.name!r}: two devices are named {dev.name!r}")
            seen.add(dev.name)
        if sum(dev.kind == "cpu" for dev in self.devices) > 1:
            raise ClusterError(f"cluster {self.name!r}: more than one cpu device")

    @property
    def gpus(self) -> tuple[Device, ...]:
        """The accelerators (gpu and rpc) in the engine's default order: RPC first, then GPUs."""
        return (tuple(d for d in self.devices if d.kind == "rpc")
                + tuple(d for d in self.devices if d.kind == "gpu"))

    @property
    def cpu(self) -> Device | None:
        """The CPU device, if the cluster has one."""
        return next((d for d in self.devices if d.kind == "cpu"), None)

    def by_name(self, name: str) -> Device:
        """The device called ``name``.

        Raises:
            ClusterError: no such device (the message lists the cluster's devices).
        """
        for dev in self.devices:
            if dev.name == name:
                return dev
        names = [d.name for d in self.devices]
        close = difflib.get_close_matches(name, names, n=1)
        raise ClusterError(
            f"cluster {self.name!r} has no device {name!r} (devices: {', '.join(names)})",
            hint=f"did you mean {close[0]!r}?" if close else "run `omni-place devices` to list them")

    def with_cpu_threads(self, threads: int) -> Cluster:
        """This cluster with its CPU running ``threads`` threads (llama.cpp's ``-t``): fewer than its
        figure was measured with read slower (:data:`CPU_THREAD_GBS`); more than its ``threads`` (the
        cores it gives) compute no faster, so its figures stay."""
        cpu = self.cpu
        if cpu is None or cpu.threads == threads or (cpu.threads and threads > cpu.threads):
            return self
        bandwidth = cpu.bandwidth_gbs
        if cpu.threads:
            memory = 1 / bandwidth - 1 / (cpu.threads * CPU_THREAD_GBS)  # 1 / the memory's own rate
            bandwidth = (1 / (memory + 1 / (threads * CPU_THREAD_GBS)) if memory > 0  # else thread-bound
                         else bandwidth * threads / cpu.threads)
        slower = replace(cpu, threads=threads, bandwidth_gbs=bandwidth)
        return replace(self, devices=tuple(slower if d is cpu else d for d in self.devices))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "devices": [d.to_dict() for d in self.devices],
            "notes": list(self.notes),
        }


def _engine_order(devices: Sequence[Device]) -> tuple[Device, ...]:
    """RPC devices by index, then GPUs by backend and index, then the CPU (llama.cpp default)."""
    def key(dev: Device) -> tuple[int, int, int]:
        if dev.kind == "rpc":
            m = _RPC_NAME.fullmatch(dev.name)
            return (0, 0, int(m["index"]) if m else 0)
        if dev.kind == "gpu":
            m = _GPU_NAME.fullmatch(dev.name)
            if m and m["prefix"] in GPU_BACKENDS:
                return (1, GPU_BACKENDS.index(m["prefix"]), int(m["index"]))
            return (1, len(GPU_BACKENDS), 0)
        return (2, 0, 0)
    return tuple(sorted(devices, key=key))


# --------------------------------------------------------------------------------------------
# The local CPU
# --------------------------------------------------------------------------------------------

# Other processes' share of the CPU during the bandwidth probe above which the figure is flagged
_BUSY_SHARE = 0.2


def _gpu_speed_notes(devices: Sequence[Device]) -> list[str]:
    """A note naming the GPUs priced with the catalog's default speed row (no llama-bench
    records of their compute capability)."""
    unknown = [f"{d.name} ({d.compute_capability or 'compute capability unknown'})" for d in devices
               if d.kind == "gpu" and d.speed.compute_capability == DEFAULT_SPEED_ROW]
    if not unknown:
        return []
    return [f"speed of {', '.join(unknown)} is priced with the GPU catalog's default row (one H200's "
            "efficiencies; no llama-bench records of that compute capability): `omni-place calibrate` fits "
            "this machine's"]


def _cpu_notes(cpu: Device) -> list[str]:
    if "others_busy" in cpu.source:
        return [f"CPU memory bandwidth {cpu.bandwidth_gbs:.1f} GB/s was measured while other processes used "
                f"{float(cpu.source['others_busy']):.0%} of the CPU: it reads low under load; run devices "
                "--measure again on an idle machine (decode speeds are priced from it)"]
    if cpu.source.get("bandwidth") != "estimated":
        return []
    return [f"CPU memory bandwidth assumed {cpu.bandwidth_gbs:g} GB/s; use --measure or "
            f"bandwidth_gbs in a cluster file for a real figure"]


def _local_cpu(*, measure: bool, given: Mapping[str, Any] | None = None) -> Device:
    """The CPU device of this machine; figures in ``given`` (from a cluster file) win. ``simd`` is
    the engine build's, not only the CPU's: this CPU's flags give it only where no file describes
    the CPU (``given`` None); a file's CPU without it is priced over both builds."""
    probe_simd = given is None
    given = dict(given or {})
    info = cpu_info()
    source: dict[str, str] = {}
    threads = given.pop("threads", None)
    if threads is None:
        threads = info.physical_cores
        source["threads"] = "os"
    else:
        source["threads"] = "file"
    memory = given.pop("memory_bytes", None)
    total = given.pop("total_bytes", None)
    free = None
    if memory is None:
        total = info.total_bytes
        free = info.available_bytes if info.available_bytes is not None else info.total_bytes
        memory = free if free else 1 * GiB  # an OS that reports nothing: assume almost nothing
        source["memory"] = "os" if free else "estimated"
    else:
        source["memory"] = "file"
    bandwidth = given.pop("bandwidth_gbs", None)
    if bandwidth is not None:
        source["bandwidth"] = "file"
    elif measure:
        bandwidth, busy = others_cpu_share(lambda: measure_memory_bandwidth(threads=threads))
        source["bandwidth"] = "measured"
        if busy is not None and busy > _BUSY_SHARE:
            source["others_busy"] = f"{busy:.2f}"
    else:
        bandwidth = DEFAULT_CPU_BANDWIDTH_GBS
        source["bandwidth"] = "estimated"
    if given.get("tflops") is not None:
        source["tflops"] = "file"
    if given.get("disk_gbs") is not None:
        source["disk"] = "file"
    elif measure:
        given["disk_gbs"] = measure_disk_read_bandwidth()
        source["disk"] = "measured"
    if given.get("simd") is not None:
        source["simd"] = "file"
    elif probe_simd and (simd := cpu_simd(info.flags)) is not None:
        given["simd"] = simd
        source["simd"] = "os"
    model = given.pop("model", None) or info.model
    return Device(name="CPU", kind="cpu", memory_bytes=int(memory), bandwidth_gbs=float(bandwidth),
                  model=model, total_bytes=total if total is not None else int(memory),
                  free_bytes=free, threads=int(threads), source=source, **given)


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

def _preset_dir() -> Any:
    return resources.files("omni_place") / "data" / "presets"


def list_presets() -> list[str]:
    """Names of the presets shipped with omni_place, sorted."""
    return sorted(entry.name.removesuffix(".toml") for entry in _preset_dir().iterdir()
                  if entry.name.endswith(".toml"))

