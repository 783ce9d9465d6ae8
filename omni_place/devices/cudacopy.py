"""Host->GPU copy rates, measured through the CUDA driver API (``libcuda.so.1`` over ctypes).

With op offload llama.cpp copies CPU-held weights to the GPU for every ubatch with
``cudaMemcpyAsync`` straight from the model's mmap'd, *pageable* memory
(ggml/src/ggml-cuda/ggml-cuda.cu:779-783 ``ggml_backend_cuda_buffer_set_tensor``, called from
``ggml_backend_sched_compute_splits``, ggml/src/ggml-backend.cpp:1708-1800). The driver stages
such copies through its own pinned buffers, so they run far below the PCIe link: 5.2-7.8 GB/s
on an H200 host whose pinned copies reach 55 GB/s over PCIe 5 x16. That rate, a fact of the
machine, decides prompt speed with CPU-held weights; :func:`measure_host_copies` measures it,
and the pinned rate next to it.

Only the driver library is needed (no CUDA runtime, no torch): it is present wherever an NVIDIA
driver is. The driver honours ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER``, so ordinal
``i`` is the engine's ``CUDA{i}``. Nothing here raises for a missing library or a failing call:
the GPU is then left unmeasured and a note says why. ``_load_libcuda`` is the one place the
library is opened: tests patch it.
"""
from __future__ import annotations

import ctypes
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cpuprobe import cpu_info
from ..units import GB, MiB
from .cluster import _GPU_NAME, Device

__all__ = ["HostCopy", "measure_host_copies", "with_stream_rates"]

#: Bytes of one timed copy: large enough that the driver's per-call cost (tens of microseconds)
#: is noise, as a ubatch's expert weights (hundreds of MiB) are.
COPY_BYTES = 512 * MiB
_MIN_COPY_BYTES = 16 * MiB
_CUDA_SUCCESS = 0


@dataclass(frozen=True)
class HostCopy:
    """Measured host->GPU copy rates of one CUDA device, GB/s (10**9 B/s).

    ``pinned_gbs`` is None when page-locked memory could not be allocated.
    """

    ordinal: int
    pageable_gbs: float
    pinned_gbs: float | None
    pci_bus_id: str | None


class _CudaFailure(Exception):
    """A driver call returned an error (internal: turned into a note)."""


def _load_libcuda() -> Any | None:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


class _Driver:
    """Calls into libcuda; every CUresult other than CUDA_SUCCESS raises :class:`_CudaFailure`."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib

    def error_name(self, code: int) -> str:
        name = ctypes.c_char_p()
        fn = getattr(self.lib, "cuGetErrorName", None)
        if fn is not None and fn(ctypes.c_int(code), ctypes.pointer(name)) == _CUDA_SUCCESS and name.value:
            return name.value.decode("ascii", "replace")
        return f"CUresult {code}"

    def __call__(self, fn: str, *args: Any) -> None:
        func = getattr(self.lib, fn, None)
        if func is None:
            raise _CudaFailure(f"{fn} is missing from libcuda (driver too old?)")
        code = func(*args)
        if code != _CUDA_SUCCESS:
            raise _CudaFailure(f"{fn} failed: {self.error_name(int(code))}")


def _bus_key(bus_id: str | None) -> tuple[int, int, int, int] | None:
    """(domain, bus, device, function) of ``"0000:3B:00.0"`` (CUDA) or ``"00000000:3B:00.0"`` (NVML)."""
    try:
        domain, bus, rest = (bus_id or "").split(":")
        device, function = rest.split(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)
    except ValueError:
        return None


def _best_copy_seconds(cuda: _Driver, dptr: int, host: int, size: int, reps: int) -> float:
    """Fastest of ``reps`` synchronous ``size``-byte host->device copies after one warm-up."""
    best = float("inf")
    for rep in range(reps + 1):
        start = time.perf_counter()
        cuda("cuMemcpyHtoD_v2", ctypes.c_uint64(dptr), ctypes.c_void_p(host), ctypes.c_size_t(size))
        cuda("cuCtxSynchronize")
        if rep:
            best = min(best, time.perf_counter() - start)
    return best


def _pinned_seconds(cuda: _Driver, dptr: int, size: int, reps: int, name: str, notes: list[str]) -> float | None:
    """The best copy from ``cuMemHostAlloc``'d memory, allocated in the current context (the
    driver refuses it without one: CUDA_ERROR_INVALID_CONTEXT); None, with a note, when pinned
    memory is unavailable."""
    pinned = ctypes.c_void_p()
    try:
        cuda("cuMemHostAlloc", ctypes.pointer(pinned), ctypes.c_size_t(size), ctypes.c_uint(0))
    except _CudaFailure as err:
        notes.append(f"{name}: pinned host memory unavailable ({err}): only pageable copies measured")
        return None
    try:
        ctypes.memset(pinned, 1, size)
        return _best_copy_seconds(cuda, dptr, pinned.value or 0, size, reps)
    finally:
        _release(cuda, notes, name, "cuMemFreeHost", pinned)


def _measure_one(cuda: _Driver, ordinal: int, pageable: np.ndarray, reps: int, notes: list[str]) -> HostCopy:
    size = pageable.nbytes
    dev = ctypes.c_int()
    cuda("cuDeviceGet", ctypes.pointer(dev), ctypes.c_int(ordinal))
    bus = ctypes.create_string_buffer(64)
    try:
        cuda("cuDeviceGetPCIBusId", bus, ctypes.c_int(len(bus)), dev)
        bus_id: str | None = bus.value.decode("ascii", "replace")
    except _CudaFailure:
        bus_id = None  # only used to check the device order; the rates do not need it
    ctx = ctypes.c_void_p()
    cuda("cuDevicePrimaryCtxRetain", ctypes.pointer(ctx), dev)
    try:
        cuda("cuCtxSetCurrent", ctx)
        dptr = ctypes.c_uint64()
        cuda("cuMemAlloc_v2", ctypes.pointer(dptr), ctypes.c_size_t(size))
        try:
            pageable_s = _best_copy_seconds(cuda, dptr.value, pageable.ctypes.data, size, reps)
            pinned_s = _pinned_seconds(cuda, dptr.value, size, reps, f"CUDA{ordinal}", notes)
        finally:
            _release(cuda, notes, f"CUDA{ordinal}", "cuMemFree_v2", ctypes.c_uint64(dptr.value))
    finally:
        _release(cuda, notes, f"CUDA{ordinal}", "cuCtxSetCurrent", ctypes.c_void_p())
        # CUDA 11 renamed it; drivers before 11.0 have the original only
        v2 = getattr(cuda.lib, "cuDevicePrimaryCtxRelease_v2", None) is not None
        release = "cuDevicePrimaryCtxRelease_v2" if v2 else "cuDevicePrimaryCtxRelease"
        _release(cuda, notes, f"CUDA{ordinal}", release, dev)
    return HostCopy(ordinal, round(size / pageable_s / GB, 2),
                    None if pinned_s is None else round(size / pinned_s / GB, 2), bus_id)


def _release(cuda: _Driver, notes: list[str], name: str, fn: str, *args: Any) -> None:
    """A clean-up call: a failure is noted, never raised over the error that led here."""
    try:
        cuda(fn, *args)
    except _CudaFailure as err:
        notes.append(f"{name}: {err}")


def measure_host_copies(ordinals: Sequence[int] | None = None, *, size_bytes: int | None = None,
                        reps: int = 3) -> tuple[dict[int, HostCopy], list[str]]:
    """Host->GPU copy rates of the visible CUDA devices from pageable and pinned memory.

    Each device gets ``reps`` timed ``cuMemcpyHtoD`` copies of ``size_bytes`` (default
    :data:`COPY_BYTES`; after a warm-up) from a plain numpy buffer and from ``cuMemHostAlloc``'d
    memory (allocated in that device's primary context); the best of each counts. The host
    buffers are capped at an eighth of available memory each. ``ordinals`` limits the devices
    (default: all the driver sees). Returns the rates by ordinal and notes on what could
    not be measured; never raises for a missing driver or a failing call.
    """
    lib = _load_libcuda()
    if lib is None:
        return {}, ["libcuda.so.1 not found (no NVIDIA driver): host->GPU copy rate not measured"]
    cuda = _Driver(lib)
    notes: list[str] = []
    try:
        cuda("cuInit", ctypes.c_uint(0))
        count = ctypes.c_int()
        cuda("cuDeviceGetCount", ctypes.pointer(count))
    except _CudaFailure as err:
        return {}, [f"CUDA driver unusable ({err}): host->GPU copy rate not measured"]
    wanted = [i for i in (range(count.value) if ordinals is None else ordinals) if 0 <= i < count.value]
    if not wanted:
        return {}, []
    size_bytes = COPY_BYTES if size_bytes is None else size_bytes
    available = cpu_info().available_bytes
    if available:
        size_bytes = min(size_bytes, available // 8)
    if size_bytes < _MIN_COPY_BYTES:
        return {}, [f"too little free memory for a {_MIN_COPY_BYTES // MiB} MiB copy: host->GPU copy rate "
                    "not measured"]
    pageable = np.ones(size_bytes, dtype=np.uint8)  # written, so every page is mapped before timing
    rates: dict[int, HostCopy] = {}
    for i in wanted:
        try:
            rates[i] = _measure_one(cuda, i, pageable, reps, notes)
        except _CudaFailure as err:
            notes.append(f"CUDA{i}: host->GPU copy rate not measured ({err})")
    return rates, notes


def with_stream_rates(gpus: Sequence[Device]) -> tuple[list[Device], list[str]]:
    """``gpus`` (NVML's ``CUDA0``, ``CUDA1``, ... in CUDA order) with measured ``stream_gbs``.

    Ordinal ``i`` fills ``CUDA{i}``, unless both PCI bus ids are known and differ (NVML and the
    driver disagree on the order): that GPU stays unmeasured and a note says so.
    """
    ordinal = {}
    for dev in gpus:
        m = _GPU_NAME.fullmatch(dev.name)
        if m and m["prefix"] == "CUDA":
            ordinal[dev.name] = int(m["index"])
    if not ordinal:
        return list(gpus), []
    rates, notes = measure_host_copies(sorted(ordinal.values()))
    out: list[Device] = []
    for dev in gpus:
        rate = rates.get(ordinal.get(dev.name, -1))
        if rate is None:
            out.append(dev)
            continue
        nvml_bus, cuda_bus = _bus_key(dev.pci_bus_id), _bus_key(rate.pci_bus_id)
        if nvml_bus is not None and cuda_bus is not None and nvml_bus != cuda_bus:
            notes.append(f"{dev.name}: NVML says PCI {dev.pci_bus_id}, CUDA device {rate.ordinal} is "
                         f"{rate.pci_bus_id}: host->GPU copy rate not assigned")
            out.append(dev)
            continue
        pinned = f", {rate.pinned_gbs:g} GB/s from pinned memory" if rate.pinned_gbs is not None else ""
        notes.append(f"{dev.name}: host->GPU copies measured at {rate.pageable_gbs:g} GB/s from pageable "
                     f"memory (stream_gbs){pinned}")
        out.append(dataclasses.replace(dev, stream_gbs=rate.pageable_gbs,
                                       source={**dev.source, "stream": "measured"}))
    return out, notes
