"""The machine the planner places a model on: :class:`Device` and :class:`Cluster`.

A cluster comes from one of three places, all giving the same :class:`Cluster`:

* :func:`discover` -- NVIDIA GPUs through NVML (``nvidia-ml-py``) plus this machine's CPU. A
  missing driver, library or field is never an error: the cluster is then the CPU alone.
* :func:`load_cluster` -- a TOML cluster file (schema in ``omni-place devices --help``).
* :func:`load_preset` -- a cluster file shipped in ``omni_place/data/presets``.

:func:`resolve_cluster` accepts any of these specs and is what ``plan_split(cluster=...)`` calls.

Devices are named and ordered the way llama.cpp names and orders them by default: ``RPC0``,
``RPC1``, ... first (in ``--rpc`` order), then ``CUDA0``, ``CUDA1``, ... in CUDA's enumeration
order, then ``CPU``. Figures: memory in bytes, bandwidth and links in GB/s (10**9 B/s), compute
in dense FP16 tensor TFLOPS (see ``data/gpu_catalog.toml``).
"""
from __future__ import annotations

import ctypes
import difflib
import importlib
import ipaddress
import logging
import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .catalog import PCIE_GBS_PER_LANE, PCIE_WIDTHS, GpuSpec, lookup, match_gpu, pcie_gbs, suggest
from .cpuprobe import DEFAULT_CPU_BANDWIDTH_GBS, cpu_info, measure_memory_bandwidth
from .errors import ClusterError, InvalidArgumentError

__all__ = [
    "Cluster", "Device", "DeviceKind", "discover", "list_presets", "load_cluster", "load_preset",
    "pcie_gbs", "resolve_cluster", "DEFAULT_CPU_BANDWIDTH_GBS", "PCIE_GBS_PER_LANE",
]

LOGGER = logging.getLogger(__name__)

MIB = 1 << 20
GIB = 1 << 30

DeviceKind = Literal["gpu", "cpu", "rpc"]
KINDS: tuple[str, ...] = ("gpu", "cpu", "rpc")

#: Memory kept free on every device for what no formula sees (CUDA context, cuBLAS workspace).
DEFAULT_MARGIN_BYTES = 512 * MIB
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
_GPU_NAME = re.compile(r"(?P<prefix>[A-Za-z]+?)(?P<index>\d+)")
_RPC_NAME = re.compile(r"RPC(?P<index>\d+)")


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
        peer_access: GPU only -- True when peer-to-peer reads work with every other GPU of the
            cluster, False when some pair cannot, None when unknown or there is no other GPU.
        endpoint: ``host:port`` of the RPC server (rpc only).
        host: the machine the device sits in (``"local"`` for this one).
        threads: CPU threads the engine should use (cpu only).
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
    peer_access: bool | None = None
    endpoint: str | None = None
    host: str = "local"
    threads: int | None = None
    margin_bytes: int = DEFAULT_MARGIN_BYTES
    compute_capability: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    source: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", MappingProxyType(dict(self.source)))
        problem = None
        if self.kind not in KINDS:
            problem = f"kind {self.kind!r} is not one of {', '.join(KINDS)}"
        elif not self.memory_bytes > 0:
            problem = f"memory must be positive (got {self.memory_bytes} bytes)"
        elif not (self.bandwidth_gbs > 0 and math.isfinite(self.bandwidth_gbs)):
            problem = f"bandwidth must be positive (got {self.bandwidth_gbs} GB/s)"
        elif self.margin_bytes < 0:
            problem = f"margin must not be negative (got {self.margin_bytes} bytes)"
        elif self.kind == "rpc" and not self.endpoint:
            problem = "an rpc device needs an endpoint (host:port)"
        if problem:
            raise ClusterError(f"device {self.name!r}: {problem}")

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
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "notes", tuple(self.notes))
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

def _cpu_notes(cpu: Device) -> list[str]:
    if cpu.source.get("bandwidth") != "estimated":
        return []
    return [f"CPU memory bandwidth assumed {cpu.bandwidth_gbs:g} GB/s; use --measure or "
            f"bandwidth_gbs in a cluster file for a real figure"]


def _local_cpu(*, measure: bool, given: Mapping[str, Any] | None = None) -> Device:
    """The CPU device of this machine; figures in ``given`` (from a cluster file) win."""
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
        memory = free if free else 1 * GIB  # an OS that reports nothing: assume almost nothing
        source["memory"] = "os" if free else "estimated"
    else:
        source["memory"] = "file"
    bandwidth = given.pop("bandwidth_gbs", None)
    if bandwidth is not None:
        source["bandwidth"] = "file"
    elif measure:
        bandwidth = measure_memory_bandwidth(threads=threads)
        source["bandwidth"] = "measured"
    else:
        bandwidth = DEFAULT_CPU_BANDWIDTH_GBS
        source["bandwidth"] = "estimated"
    if given.get("tflops") is not None:
        source["tflops"] = "file"
    model = given.pop("model", None) or info.model
    return Device(name="CPU", kind="cpu", memory_bytes=int(memory), bandwidth_gbs=float(bandwidth),
                  model=model, total_bytes=total if total is not None else int(memory),
                  free_bytes=free, threads=int(threads), source=source, **given)


# --------------------------------------------------------------------------------------------
# NVML discovery
# --------------------------------------------------------------------------------------------

# NVML C enum values (ABI-stable). Not read from pynvml: nvidia-ml-py defines
# NVML_P2P_CAPS_INDEX_READ as the tuple (0,) (a stray comma), which ctypes rejects.
_NVML_CLOCK_SM = 1
_NVML_CLOCK_MEM = 2
_NVML_P2P_CAPS_INDEX_READ = 0
_NVML_P2P_STATUS_OK = 0


class _Nvml:
    """The one place omni_place calls NVML.

    Every query returns ``default`` instead of raising when the binding lacks the function or
    NVML answers with an error (NotSupported, FunctionNotFound with an old driver, GPU lost), or
    ctypes rejects the arguments (a binding that does not match the driver).
    """

    def __init__(self, lib: ModuleType | Any) -> None:
        self.lib = lib
        self.errors: tuple[type[BaseException], ...] = (
            getattr(lib, "NVMLError", OSError), OSError, ctypes.ArgumentError)
        self._init_errors: tuple[type[BaseException], ...] = (*self.errors, AttributeError)
        self._v2_errors: tuple[type[BaseException], ...] = (*self.errors, TypeError)

    def query(self, fn: str, *args: Any, default: Any = None, **kwargs: Any) -> Any:
        func = getattr(self.lib, fn, None)
        if func is None:
            LOGGER.debug("NVML binding has no %s", fn)
            return default
        try:
            return func(*args, **kwargs)
        except self.errors as err:
            LOGGER.debug("NVML %s%r failed: %s", fn, args, err)
            return default

    def start(self) -> str | None:
        """Initialise NVML: None on success, else why it is unusable."""
        try:
            self.lib.nvmlInit()
        except self._init_errors as err:  # AttributeError: a binding without nvmlInit
            return str(err) or type(err).__name__
        return None

    def stop(self) -> None:
        self.query("nvmlShutdown")

    def memory(self, handle: Any) -> tuple[int | None, int | None]:
        """(total, free) bytes; ``nvmlDeviceGetMemoryInfo_v2`` (free excludes reserved) first."""
        v2 = getattr(self.lib, "nvmlMemory_v2", None)
        info = None
        if v2 is not None:
            try:
                info = self.lib.nvmlDeviceGetMemoryInfo(handle, version=v2)
            except self._v2_errors as err:  # old driver, or a binding without `version`
                LOGGER.debug("NVML memory info v2 unavailable (%s); using v1", err)
        if info is None:
            info = self.query("nvmlDeviceGetMemoryInfo", handle)
        return _int_or_none(getattr(info, "total", None)), _int_or_none(getattr(info, "free", None))


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value.strip("\x00 ") if isinstance(value, str) and value.strip("\x00 ") else None


@dataclass
class _NvmlGpu:
    """What NVML says about one GPU (None where it would not say)."""

    index: int
    handle: Any
    name: str
    uuid: str | None = None
    bus_id: str | None = None
    total: int | None = None
    free: int | None = None
    cc: tuple[int, int] | None = None
    cores: int | None = None
    sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    bus_width_bits: int | None = None
    pcie_max: tuple[int | None, int | None] = (None, None)
    pcie_curr: tuple[int | None, int | None] = (None, None)

    @property
    def bus_key(self) -> tuple[int, ...]:
        """PCI (domain, bus, device, function) for sorting; unparsable ids sort last."""
        m = re.fullmatch(r"([0-9a-f]+):([0-9a-f]+):([0-9a-f]+)\.([0-9a-f]+)", (self.bus_id or "").lower())
        return tuple(int(g, 16) for g in m.groups()) if m else (1 << 32, self.index)

    @property
    def speed_score(self) -> int:
        """CUDA cores x max SM clock (MHz): the throughput proxy for fastest-first ordering."""
        return (self.cores or 0) * (self.sm_clock_mhz or 0)


def _read_nvml_gpu(nvml: _Nvml, index: int, handle: Any) -> _NvmlGpu:
    q = nvml.query
    gpu = _NvmlGpu(index=index, handle=handle,
                   name=_text(q("nvmlDeviceGetName", handle)) or f"NVIDIA GPU {index}")
    gpu.uuid = _text(q("nvmlDeviceGetUUID", handle))
    pci = q("nvmlDeviceGetPciInfo", handle)
    gpu.bus_id = _text(getattr(pci, "busId", None)) if pci is not None else None
    gpu.total, gpu.free = nvml.memory(handle)
    cc = q("nvmlDeviceGetCudaComputeCapability", handle)
    if isinstance(cc, tuple) and len(cc) == 2:
        gpu.cc = (int(cc[0]), int(cc[1]))
    gpu.cores = _int_or_none(q("nvmlDeviceGetNumGpuCores", handle))
    gpu.sm_clock_mhz = _int_or_none(q("nvmlDeviceGetMaxClockInfo", handle, _NVML_CLOCK_SM))
    gpu.mem_clock_mhz = _int_or_none(q("nvmlDeviceGetMaxClockInfo", handle, _NVML_CLOCK_MEM))
    gpu.bus_width_bits = _int_or_none(q("nvmlDeviceGetMemoryBusWidth", handle))
    gpu.pcie_max = (_int_or_none(q("nvmlDeviceGetMaxPcieLinkGeneration", handle)),
                    _int_or_none(q("nvmlDeviceGetMaxPcieLinkWidth", handle)))
    gpu.pcie_curr = (_int_or_none(q("nvmlDeviceGetCurrPcieLinkGeneration", handle)),
                     _int_or_none(q("nvmlDeviceGetCurrPcieLinkWidth", handle)))
    return gpu


def _cuda_order(gpus: list[_NvmlGpu], device_order: str | None) -> list[_NvmlGpu]:
    """The GPUs in CUDA's enumeration order.

    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is PCI bus order (nvidia-smi's). CUDA's default,
    FASTEST_FIRST, uses an unpublished heuristic; it is approximated as: most CUDA cores x max
    SM clock first, then the higher compute capability, ties (identical GPUs) by PCI bus id. A
    GPU whose cores or clock NVML will not report sorts after those with a score.
    """
    if (device_order or "").strip().upper() == "PCI_BUS_ID":
        return sorted(gpus, key=lambda g: (g.bus_key, g.index))
    return sorted(gpus, key=lambda g: (-g.speed_score, tuple(-c for c in (g.cc or (0, 0))),
                                       g.bus_key, g.index))


def _apply_visible(ordered: list[_NvmlGpu], visible: str | None) -> tuple[list[_NvmlGpu], list[str]]:
    """Apply ``CUDA_VISIBLE_DEVICES`` the way CUDA does.

    Entries are indices into CUDA's order or GPU UUIDs (``GPU-`` plus a unique prefix). CUDA
    stops at the first entry that names no GPU (``-1``, an index out of range, an unknown UUID)
    and ignores the rest; a repeated device is treated the same way. MIG instances are not
    modelled: a ``MIG-`` entry also stops the list.
    """
    if visible is None:
        return ordered, []
    if not visible.strip():
        return [], ["CUDA_VISIBLE_DEVICES is empty: CUDA sees no GPU"]
    chosen: list[_NvmlGpu] = []
    for raw in visible.split(","):
        token = raw.strip()
        pick: _NvmlGpu | None = None
        if token.isdigit():
            pick = ordered[int(token)] if int(token) < len(ordered) else None
        elif token.upper().startswith("GPU-"):
            want = token[4:].lower()
            hits = [g for g in ordered
                    if want and (g.uuid or "").lower().removeprefix("gpu-").startswith(want)]
            pick = hits[0] if len(hits) == 1 else None
        if pick is None or pick in chosen:
            why = "repeats a GPU" if pick is not None else "names no GPU"
            if token.upper().startswith("MIG-"):
                why = "is a MIG instance (not supported)"
            return chosen, [f"CUDA_VISIBLE_DEVICES entry {token!r} {why}: CUDA ignores it and "
                            f"every entry after it"]
        chosen.append(pick)
    return chosen, []


def _peer_access(nvml: _Nvml, gpus: list[_NvmlGpu]) -> dict[int, bool | None]:
    """Per GPU (NVML index): P2P reads possible with every other GPU (nvmlDeviceGetP2PStatus)."""
    result: dict[int, bool | None] = {}
    for a in gpus:
        statuses = [nvml.query("nvmlDeviceGetP2PStatus", a.handle, b.handle, _NVML_P2P_CAPS_INDEX_READ)
                    for b in gpus if b is not a]
        if any(s is not None and s != _NVML_P2P_STATUS_OK for s in statuses):
            result[a.index] = False
        elif statuses and None not in statuses:
            result[a.index] = True
        else:  # no other GPU, or NVML would not say
            result[a.index] = None
    return result


def _first_valid_link(
        candidates: Sequence[tuple[tuple[int | None, int | None], str]]) -> tuple[int, int, str]:
    """(gen, width, origin) of the first known PCIe link, else the assumed default."""
    for (gen, width), origin in candidates:
        if gen in PCIE_GBS_PER_LANE and width in PCIE_WIDTHS:
            assert gen is not None and width is not None
            return gen, width, origin
    return DEFAULT_PCIE[0], DEFAULT_PCIE[1], "estimated"


def _gpu_device(name: str, gpu: _NvmlGpu, peer: bool | None, notes: list[str]) -> Device | None:
    """A Device for one NVML GPU, filled from the catalog where NVML is silent; None if unusable."""
    spec: GpuSpec | None = match_gpu(gpu.name, gpu.total)
    source: dict[str, str] = {}
    total = gpu.total
    if total is None and spec is not None:
        total = spec.memory_bytes
        source["memory"] = "catalog"
    if total is None:
        notes.append(f"{name} ({gpu.name}): NVML reports no memory size; GPU left out")
        return None
    memory = gpu.free if gpu.free is not None else total
    if memory <= 0:
        notes.append(f"{name} ({gpu.name}): no free memory; GPU left out")
        return None
    source.setdefault("memory", "nvml")

    if spec is not None:
        bandwidth, source["bandwidth"] = spec.bandwidth_gbs, "catalog"
    elif gpu.mem_clock_mhz and gpu.bus_width_bits:
        # NVML's memory clock is half the data rate for GDDR5X/6/6X/7 and HBM alike (RTX 4090:
        # 10501 MHz x 2 x 384 bit / 8 = 1008 GB/s), hence x2.
        bandwidth = gpu.mem_clock_mhz * 1e6 * 2 * gpu.bus_width_bits / 8 / 1e9
        source["bandwidth"] = "nvml"
    else:
        bandwidth, source["bandwidth"] = DEFAULT_GPU_BANDWIDTH_GBS, "estimated"
        notes.append(f"{name} ({gpu.name}): memory bandwidth unknown, assuming "
                     f"{DEFAULT_GPU_BANDWIDTH_GBS:g} GB/s; describe it in a cluster file")
    tflops = spec.fp16_tflops if spec is not None else None
    if tflops is not None:
        source["tflops"] = "catalog"

    # Max link is what device and slot can both do (the current one drops at idle), then the
    # catalog's, then the current link.
    candidates: list[tuple[tuple[int | None, int | None], str]] = [(gpu.pcie_max, "nvml")]
    if spec is not None:
        candidates.append(((spec.pcie_gen, spec.pcie_width), "catalog"))
    candidates.append((gpu.pcie_curr, "nvml"))
    gen, width, source["link"] = _first_valid_link(candidates)
    source["link_latency"] = "estimated"
    if peer is not None:
        source["peer_access"] = "nvml"
    return Device(
        name=name, kind="gpu", memory_bytes=memory, bandwidth_gbs=round(bandwidth, 1),
        model=spec.name if spec is not None else gpu.name.removeprefix("NVIDIA ").strip(),
        total_bytes=total, free_bytes=gpu.free, tflops=tflops,
        link_gbs=round(pcie_gbs(gen, width), 3), link_latency_us=DEFAULT_PCIE_LATENCY_US,
        pcie_gen=gen, pcie_width=width, peer_access=peer,
        compute_capability=f"{gpu.cc[0]}.{gpu.cc[1]}" if gpu.cc else None,
        uuid=gpu.uuid, pci_bus_id=gpu.bus_id, source=source,
    )


def _import_nvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:  # nvidia-ml-py not installed (or shadowed and broken)
        LOGGER.debug("pynvml import failed: %s", err)
        return None


def _discover_gpus(nvml_lib: ModuleType | Any | None) -> tuple[list[Device], list[str]]:
    """GPU devices named CUDA0.. in CUDA's order, and notes on what could not be seen."""
    if nvml_lib is None:
        return [], ["NVML is not available (nvidia-ml-py not installed): no GPU discovered"]
    nvml = _Nvml(nvml_lib)
    why = nvml.start()
    if why is not None:
        return [], [f"NVML is not available ({why}): no GPU discovered"]
    try:
        count = _int_or_none(nvml.query("nvmlDeviceGetCount")) or 0
        gpus = []
        for i in range(count):
            handle = nvml.query("nvmlDeviceGetHandleByIndex", i)
            if handle is not None:
                gpus.append(_read_nvml_gpu(nvml, i, handle))
        ordered = _cuda_order(gpus, os.environ.get("CUDA_DEVICE_ORDER"))
        visible, notes = _apply_visible(ordered, os.environ.get("CUDA_VISIBLE_DEVICES"))
        peers = _peer_access(nvml, visible)
        devices: list[Device] = []
        for gpu in visible:
            dev = _gpu_device(f"CUDA{len(devices)}", gpu, peers[gpu.index], notes)
            if dev is not None:
                devices.append(dev)
        if not devices and not notes:
            notes.append("NVML sees no NVIDIA GPU")
        return devices, notes
    finally:
        nvml.stop()


def discover(nvml: ModuleType | Any | None = None, measure: bool = False) -> Cluster:
    """This machine: NVIDIA GPUs through NVML, then the CPU.

    Respects ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` and names GPUs ``CUDA0``... in
    CUDA's order. Without a driver, NVML or ``nvidia-ml-py`` the cluster is the CPU alone and
    ``notes`` says why; this never raises for a missing or misbehaving NVML.

    Args:
        nvml: an NVML binding module to use instead of ``pynvml`` (tests inject fakes).
        measure: measure the CPU memory bandwidth (about a second) instead of assuming
            :data:`DEFAULT_CPU_BANDWIDTH_GBS`.
    """
    gpus, notes = _discover_gpus(nvml if nvml is not None else _import_nvml())
    cpu = _local_cpu(measure=measure)
    notes += _cpu_notes(cpu)
    return Cluster(name=socket.gethostname() or "local", devices=(*gpus, cpu),
                   description="discovered (NVML + OS)", notes=tuple(notes))


# --------------------------------------------------------------------------------------------
# Cluster files and presets
# --------------------------------------------------------------------------------------------

_TOP_KEYS = ("name", "description", "discover", "devices")
_NUMBER = (int, float)
#: Device keys: the TOML type and the kinds the key applies to.
_DEVICE_KEYS: dict[str, tuple[type | tuple[type, ...], tuple[str, ...]]] = {
    "name": (str, KINDS),
    "kind": (str, KINDS),
    "model": (str, KINDS),
    "catalog": (str, ("gpu", "rpc")),
    "memory_gib": (_NUMBER, KINDS),
    "bandwidth_gbs": (_NUMBER, KINDS),
    "tflops": (_NUMBER, KINDS),
    "link_gbs": (_NUMBER, ("gpu", "rpc")),
    "link_latency_us": (_NUMBER, ("gpu", "rpc")),
    "pcie_gen": (int, ("gpu",)),
    "pcie_width": (int, ("gpu",)),
    "endpoint": (str, ("rpc",)),
    "threads": (int, ("cpu",)),
    "margin_mib": (_NUMBER, KINDS),
    "host": (str, KINDS),
    "peer_access": (bool, ("gpu",)),
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", _NUMBER: "a number"}
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_ENDPOINT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?))"
                       r":(?P<port>\d{1,5})")
_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Locator:
    """Line numbers in a TOML text, which tomllib does not report: table headers and keys."""

    _HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]*?)\s*\]\]?\s*(?:#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        # (line number, header name, is array-of-tables) of every table header
        self.headers: list[tuple[int, str, bool]] = []
        for no, line in enumerate(self.lines, 1):
            m = self._HEADER.match(line)
            if m:
                self.headers.append((no, m[2].replace('"', "").replace("'", ""), m[1] == "[["))

    def _key_in(self, key: str, start: int, stop: int) -> int | None:
        pattern = re.compile(rf"\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")
        for no in range(start, min(stop, len(self.lines) + 1)):
            if pattern.match(self.lines[no - 1]):
                return no
        return None

    def top_key(self, key: str) -> int:
        """Line of a top-level ``key = ...`` (1 if it cannot be found)."""
        stop = self.headers[0][0] if self.headers else len(self.lines) + 1
        return self._key_in(key, 1, stop) or 1

    def device(self, index: int) -> int:
        """Line of the ``index``-th ``[[devices]]`` header (or of ``devices =`` when inline)."""
        found = [no for no, name, array in self.headers if array and name == "devices"]
        return found[index] if index < len(found) else self.top_key("devices")

    def device_key(self, index: int, key: str) -> int:
        """Line of ``key`` inside the ``index``-th device table (its header line if not found)."""
        start = self.device(index)
        stop = next((no for no, _, _ in self.headers if no > start), len(self.lines) + 1)
        return self._key_in(key, start + 1, stop) or start


# Generous upper bounds of device figures (a typo or a hostile file must not reach the core:
# 1e30 GiB overflows its int64 arrays, 1e308 TFLOPS predicts nonsense).
_UPPER_BOUNDS = {"memory_gib": 1 << 20, "bandwidth_gbs": 1e5, "tflops": 1e5, "link_gbs": 1e4, "threads": 4096,
                 "link_latency_us": 1e7, "margin_mib": 1 << 30}


def _gib_to_bytes(gib: float) -> int:
    return int(round(gib * GIB))


def _close(word: str, choices: Sequence[str]) -> str:
    hits = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {hits[0]!r}?" if hits else f"valid keys: {', '.join(choices)}"


def _parse_endpoint(endpoint: str) -> str | None:
    """The host of a valid ``host:port`` endpoint, else None."""
    m = _ENDPOINT.fullmatch(endpoint)
    if not m or not 1 <= int(m["port"]) <= 65535:
        return None
    if m["v6"] is not None:
        try:
            return str(ipaddress.IPv6Address(m["v6"]))
        except ValueError:
            return None
    return m["host"]


class _FileParser:
    """Turns a cluster file's TOML into Devices, with file:line in every error."""

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.loc = _Locator(text)

    def fail(self, line: int, message: str, hint: str | None = None) -> ClusterError:
        return ClusterError(f"{self.path}:{line}: {message}", hint=hint)

    def top_level(self, doc: dict[str, Any]) -> None:
        for key in doc:
            if key not in _TOP_KEYS:
                raise self.fail(self.loc.top_key(key), f"unknown top-level key {key!r}",
                                _close(key, _TOP_KEYS))
        for key, kind in (("name", str), ("description", str), ("discover", bool)):
            if key in doc and not isinstance(doc[key], kind):
                raise self.fail(self.loc.top_key(key), f"{key} must be {_TYPE_NAMES[kind]}")
        devices = doc.get("devices", [])
        if not isinstance(devices, list) or not all(isinstance(t, dict) for t in devices):
            raise self.fail(self.loc.top_key("devices"),
                            "devices must be an array of tables ([[devices]] sections)")
        if not devices and not doc.get("discover", False):
            raise self.fail(1, "the cluster file describes no devices",
                            "add [[devices]] sections, or `discover = true` to use this machine's")

    def device(self, i: int, table: dict[str, Any]) -> dict[str, Any]:
        """Validate one ``[[devices]]`` table; returns Device keyword arguments (+ ``_catalog``)."""
        here = self.loc.device(i)

        def at(key: str) -> int:
            return self.loc.device_key(i, key)

        for key in table:
            if key not in _DEVICE_KEYS:
                raise self.fail(at(key), f"unknown device key {key!r}", _close(key, list(_DEVICE_KEYS)))
        for key in ("name", "kind"):
            if key not in table:
                raise self.fail(here, f"device #{i + 1} has no {key!r}")
        for key, value in table.items():
            kind_of_value = _DEVICE_KEYS[key][0]
            is_bool = isinstance(value, bool)
            if not isinstance(value, kind_of_value) or (is_bool and kind_of_value is not bool):
                raise self.fail(at(key), f"{key} must be {_TYPE_NAMES[kind_of_value]} (got {value!r})")
            if isinstance(value, float) and not math.isfinite(value):
                raise self.fail(at(key), f"{key} must be finite (got {value!r})")
        name, kind = table["name"], table["kind"]
        if kind not in KINDS:
            raise self.fail(at("kind"), f"device {name!r}: kind {kind!r} is not one of "
                            f"{', '.join(KINDS)}", _close(kind, KINDS))
        for key in table:
            if kind not in _DEVICE_KEYS[key][1]:
                raise self.fail(at(key), f"device {name!r}: {key!r} does not apply to kind {kind!r}")
        self._check_name(i, name, kind)
        positive = ("memory_gib", "bandwidth_gbs", "tflops", "link_gbs", "threads")
        for key in positive:
            if key in table and not table[key] > 0:
                raise self.fail(at(key), f"device {name!r}: {key} must be positive (got {table[key]})")
            if key in table and table[key] > _UPPER_BOUNDS[key]:
                raise self.fail(at(key), f"device {name!r}: {key} = {table[key]:g} is beyond any real device "
                                f"(at most {_UPPER_BOUNDS[key]:g})")
        for key in ("link_latency_us", "margin_mib"):
            if key in table and table[key] < 0:
                raise self.fail(at(key), f"device {name!r}: {key} must not be negative (got {table[key]})")
            if key in table and table[key] > _UPPER_BOUNDS[key]:
                raise self.fail(at(key), f"device {name!r}: {key} = {table[key]:g} is beyond any real link "
                                f"(at most {_UPPER_BOUNDS[key]:g})")

        spec = None
        if "catalog" in table:
            spec = lookup(table["catalog"])
            if spec is None:
                close = suggest(table["catalog"])
                raise self.fail(at("catalog"), f"device {name!r}: unknown catalog GPU {table['catalog']!r}",
                                f"did you mean {' or '.join(map(repr, close))}?" if close
                                else "see omni_place/data/gpu_catalog.toml for the known GPUs")
        out: dict[str, Any] = {"name": name, "kind": kind, "_spec": spec, "_line": here}
        source: dict[str, str] = {}

        def take(key: str, dest: str, catalog_value: Any, convert: Callable[[Any], Any]) -> None:
            if key in table:
                out[dest] = convert(table[key])
                source[dest.removesuffix("_bytes").removesuffix("_gbs")] = "file"
            elif catalog_value is not None:
                out[dest] = catalog_value
                source[dest.removesuffix("_bytes").removesuffix("_gbs")] = "catalog"

        take("memory_gib", "memory_bytes", spec.memory_bytes if spec else None, _gib_to_bytes)
        take("bandwidth_gbs", "bandwidth_gbs", spec.bandwidth_gbs if spec else None, float)
        take("tflops", "tflops", spec.fp16_tflops if spec else None, float)
        if "model" in table or spec is not None:
            out["model"] = table.get("model", spec.name if spec else None)
        for key in ("threads", "peer_access", "host"):
            if key in table:
                out[key] = table[key]
        if "margin_mib" in table:
            out["margin_bytes"] = int(round(table["margin_mib"] * MIB))
        if kind != "cpu":
            for key in ("memory_bytes", "bandwidth_gbs"):
                if key not in out:
                    given = key.replace("_bytes", "_gib")
                    raise self.fail(here, f"device {name!r} ({kind}) needs {given} or a catalog GPU",
                                    f'add `{given} = ...` or `catalog = "RTX 4090"`-style')
            out["total_bytes"] = out["memory_bytes"]
        if "peer_access" in table:
            source["peer_access"] = "file"
        if kind == "gpu":
            self._gpu_link(i, table, spec, out, source)
        elif kind == "rpc":
            self._rpc_link(i, table, out, source)
        out["source"] = source
        return out

    def _check_name(self, i: int, name: str, kind: str) -> None:
        line = self.loc.device_key(i, "name")
        if kind == "cpu" and name != "CPU":
            raise self.fail(line, f"the cpu device must be named 'CPU' (got {name!r})",
                            "llama.cpp calls the host device CPU")
        if kind == "rpc" and not _RPC_NAME.fullmatch(name):
            raise self.fail(line, f"rpc device name {name!r} is not RPC<n>",
                            "llama.cpp names RPC devices RPC0, RPC1, ... in --rpc order")
        if kind == "gpu":
            m = _GPU_NAME.fullmatch(name)
            if not m or m["prefix"] not in GPU_BACKENDS:
                fixed = next((p for p in GPU_BACKENDS if m and p.lower() == m["prefix"].lower()), None)
                raise self.fail(line, f"gpu name {name!r} is not a llama.cpp device name",
                                f"did you mean {fixed + m['index']!r}?" if fixed and m else
                                f"use <backend><n>, backend one of {', '.join(GPU_BACKENDS)} (e.g. CUDA0)")

    def _gpu_link(self, i: int, table: dict[str, Any], spec: GpuSpec | None,
                  out: dict[str, Any], source: dict[str, str]) -> None:
        def at(key: str) -> int:
            return self.loc.device_key(i, key)

        gen = table.get("pcie_gen", spec.pcie_gen if spec else None)
        width = table.get("pcie_width", spec.pcie_width if spec else None)
        if "pcie_gen" in table and gen not in PCIE_GBS_PER_LANE:
            raise self.fail(at("pcie_gen"), f"pcie_gen {gen} is not a PCIe generation "
                            f"({', '.join(map(str, PCIE_GBS_PER_LANE))})")
        if "pcie_width" in table and width not in PCIE_WIDTHS:
            raise self.fail(at("pcie_width"), f"pcie_width {width} is not a PCIe lane count "
                            f"({', '.join(map(str, PCIE_WIDTHS))})")
        if (gen is None) != (width is None):
            key = "pcie_width" if gen is not None else "pcie_gen"
            raise self.fail(at("pcie_gen" if gen is not None else "pcie_width"),
                            f"device {table['name']!r}: give {key} too (or a catalog GPU)")
        from_file = "pcie_gen" in table or "pcie_width" in table
        if "link_gbs" in table:
            out["link_gbs"], source["link"] = float(table["link_gbs"]), "file"
        elif gen is not None and width is not None:
            out["link_gbs"], source["link"] = pcie_gbs(gen, width), "file" if from_file else "catalog"
        else:
            gen, width = DEFAULT_PCIE
            out["link_gbs"], source["link"] = pcie_gbs(gen, width), "estimated"
        out["pcie_gen"], out["pcie_width"] = gen, width
        out["link_latency_us"] = float(table.get("link_latency_us", DEFAULT_PCIE_LATENCY_US))
        source["link_latency"] = "file" if "link_latency_us" in table else "estimated"

    def _rpc_link(self, i: int, table: dict[str, Any], out: dict[str, Any],
                  source: dict[str, str]) -> None:
        name = table["name"]
        if "endpoint" not in table:
            raise self.fail(self.loc.device(i), f"rpc device {name!r} has no endpoint",
                            'add `endpoint = "host:port"` (the address rpc-server listens on)')
        host = _parse_endpoint(table["endpoint"])
        if host is None:
            raise self.fail(self.loc.device_key(i, "endpoint"),
                            f"rpc device {name!r}: endpoint {table['endpoint']!r} is not host:port",
                            'write it as "192.168.1.20:50052" or "[fe80::1]:50052" (port 1-65535)')
        out["endpoint"] = table["endpoint"]
        out.setdefault("host", "local" if host in _LOOPBACK else host)
        out["link_gbs"] = float(table.get("link_gbs", DEFAULT_RPC_LINK_GBS))
        out["link_latency_us"] = float(table.get("link_latency_us", DEFAULT_RPC_LATENCY_US))
        source["link"] = "file" if "link_gbs" in table else "estimated"
        source["link_latency"] = "file" if "link_latency_us" in table else "estimated"

    def check_set(self, parsed: list[dict[str, Any]]) -> None:
        """Cross-device rules: unique names, one CPU, engine numbering from 0 without gaps."""
        names: dict[str, int] = {}
        cpu_line = None
        for dev in parsed:
            if dev["name"] in names:
                raise self.fail(dev["_line"], f"duplicate device name {dev['name']!r} "
                                f"(first defined at line {names[dev['name']]})")
            names[dev["name"]] = dev["_line"]
            if dev["kind"] == "cpu":
                if cpu_line is not None:
                    raise self.fail(dev["_line"], f"more than one cpu device (first at line {cpu_line})",
                                    "llama.cpp has one CPU device; describe other machines as rpc")
                cpu_line = dev["_line"]
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for dev in parsed:
            if dev["kind"] == "cpu":
                continue
            m = (_RPC_NAME if dev["kind"] == "rpc" else _GPU_NAME).fullmatch(dev["name"])
            assert m is not None  # checked in _check_name
            prefix = "RPC" if dev["kind"] == "rpc" else m["prefix"]
            groups.setdefault(prefix, []).append((int(m["index"]), dev))
        for prefix, members in groups.items():
            for index, dev in members:
                if index >= len(members):
                    raise self.fail(
                        dev["_line"], f"device {dev['name']!r}: with {len(members)} {prefix} "
                        f"device(s) the engine names them {prefix}0..{prefix}{len(members) - 1}",
                        f"number {prefix} devices from 0 without gaps, as llama.cpp does")


def _parse_cluster(text: str, path: str, *, nvml: ModuleType | Any | None, measure: bool) -> Cluster:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(err)) or "syntax error"
        where = f"{m[1]}:{m[2]}" if m else "1"
        raise ClusterError(f"{path}:{where}: invalid TOML: {msg}",
                           hint="check the TOML syntax (key = value, [[devices]] headers, quotes)") from None
    parser = _FileParser(text, path)
    parser.top_level(doc)
    parsed = [parser.device(i, table) for i, table in enumerate(doc.get("devices", []))]
    parser.check_set(parsed)

    notes: list[str] = []
    base: list[Device] = []
    if doc.get("discover", False):
        for dev in parsed:
            if dev["kind"] == "gpu":
                raise parser.fail(dev["_line"], f"gpu {dev['name']!r}: with discover = true local "
                                  "GPUs come from NVML", 'describe GPUs of other machines as kind = "rpc"')
        base, notes = _discover_gpus(nvml if nvml is not None else _import_nvml())
    devices: list[Device] = list(base)
    cpu_given: dict[str, Any] | None = None
    for dev in parsed:
        kwargs = {k: v for k, v in dev.items() if not k.startswith("_")}
        if dev["kind"] == "cpu":
            cpu_given = kwargs
            continue
        devices.append(Device(**kwargs))
    given = {k: v for k, v in (cpu_given or {}).items() if k not in ("name", "kind", "source")}
    cpu = _local_cpu(measure=measure, given=given)
    if cpu_given is None:
        notes.append("no cpu device in the file: using this machine's CPU")
    notes += _cpu_notes(cpu)
    devices.append(cpu)
    name = doc.get("name") or Path(path).stem
    return Cluster(name=name, devices=_engine_order(devices),
                   description=doc.get("description", ""), notes=tuple(notes))


def load_cluster(path: str | os.PathLike[str], *, nvml: ModuleType | Any | None = None,
                 measure: bool = False) -> Cluster:
    """Read a TOML cluster file (schema: ``omni-place devices --help``).

    CPU figures the file leaves out (and the whole CPU, if the file has none) come from this
    machine; ``measure`` measures its memory bandwidth where the file gives none. With
    ``discover = true`` in the file, NVML GPUs (through ``nvml``, as in :func:`discover`) join
    the file's devices.

    Raises:
        ClusterError: the file is missing, not TOML, or describes an impossible machine; the
            message names the file and line.
    """
    p = Path(path)
    if p.exists() and not p.is_file():
        raise ClusterError(f"cluster file {p} is not a regular file", hint="give the path of a .toml cluster file")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterError(f"cluster file not found: {p}",
                           hint=f"check the path, or use a preset: {', '.join(list_presets())}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ClusterError(f"cannot read cluster file {p}: {err}") from None
    return _parse_cluster(text, str(p), nvml=nvml, measure=measure)


def _preset_dir() -> Any:
    return resources.files("omni_place") / "data" / "presets"


def list_presets() -> list[str]:
    """Names of the presets shipped with omni_place, sorted."""
    return sorted(entry.name.removesuffix(".toml") for entry in _preset_dir().iterdir()
                  if entry.name.endswith(".toml"))


def load_preset(name: str, *, measure: bool = False) -> Cluster:
    """A cluster shipped with omni_place (``omni_place/data/presets/<name>.toml``).

    Raises:
        ClusterError: no preset has that name (the message lists the available ones).
    """
    available = list_presets()
    if not _PRESET_NAME.fullmatch(name) or name not in available:
        close = difflib.get_close_matches(name, available, n=1)
        raise ClusterError(f"unknown preset {name!r} (available: {', '.join(available)})",
                           hint=f"did you mean {close[0]!r}?" if close
                           else "or pass a cluster file with --cluster FILE")
    ref = _preset_dir() / f"{name}.toml"
    with resources.as_file(ref) as path:
        return _parse_cluster(ref.read_text(encoding="utf-8"), str(path), nvml=None, measure=measure)


def resolve_cluster(spec: Cluster | str | os.PathLike[str] = "auto", *, measure: bool = False) -> Cluster:
    """The cluster a ``cluster=`` argument means.

    ``"auto"`` discovers this machine; a :class:`Cluster` is returned as is; an existing path
    (or anything ending in ``.toml`` or containing a path separator) is a cluster file;
    any other string is a preset name.

    Raises:
        ClusterError: the file or preset does not exist or is invalid.
        InvalidArgumentError: ``spec`` is not a Cluster, string or path.
    """
    if isinstance(spec, Cluster):
        return spec
    if isinstance(spec, os.PathLike):
        return load_cluster(spec, measure=measure)
    if not isinstance(spec, str):
        raise InvalidArgumentError(
            "cluster must be 'auto', a Cluster, a cluster file path or a preset name "
            f"(got {type(spec).__name__})")
    if spec == "auto":
        return discover(measure=measure)
    if Path(spec).exists() or spec.endswith(".toml") or os.sep in spec or "/" in spec:
        return load_cluster(spec, measure=measure)
    if spec in list_presets():
        return load_preset(spec, measure=measure)
    close = difflib.get_close_matches(spec, list_presets(), n=1)
    raise ClusterError(f"no cluster file or preset named {spec!r} (presets: {', '.join(list_presets())})",
                       hint=f"did you mean {close[0]!r}?" if close else
                       "pass 'auto', a path to a cluster file, or a preset name")
