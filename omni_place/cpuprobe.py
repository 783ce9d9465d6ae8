"""The host CPU: model, physical cores, RAM, and short memory- and disk-bandwidth probes.

Everything here degrades to a portable fallback (``os.cpu_count``, ``os.sysconf``) when
``/proc`` is missing, so it works off Linux too. Nothing here raises on an odd system: a figure
that cannot be read comes back as None.
"""
from __future__ import annotations

import mmap
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from .errors import InvalidArgumentError
from .units import GB, GiB, MiB

T = TypeVar("T")

#: Memory bandwidth assumed for the CPU when neither a probe nor a cluster file gives one, GB/s.
#: Conservative on purpose: dual-channel DDR4-3200 peaks at 51.2 GB/s and sustains ~40 GB/s;
#: servers are much faster, so run ``omni-place devices --measure`` or write it in a cluster file.
DEFAULT_CPU_BANDWIDTH_GBS = 40.0
# Read bandwidth assumed for the disk that weights page in from when RAM is short: a PCIe 3/4
# NVMe drive under mmap page faults (sequential reads reach 3-7 GB/s; faulting reaches less).
DEFAULT_DISK_GBS = 2.0
_DISK_PROBE_BYTES = 256 * MiB

_PROBE_BYTES = GiB  # read probe: well above the last-level cache of nearly every CPU


@dataclass(frozen=True)
class CpuInfo:
    """What the OS says about the host CPU and its memory (bytes; None where unknown)."""

    model: str | None
    physical_cores: int
    logical_cpus: int
    total_bytes: int | None
    available_bytes: int | None
    flags: frozenset[str] = frozenset()  # the instruction-set flags of /proc/cpuinfo (x86 "flags")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _usable_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _parse_cpuinfo(text: str, usable: set[int] | None) -> tuple[str | None, int, int, frozenset[str]]:
    """(model name, physical cores, logical CPUs, flags) from /proc/cpuinfo, limited to ``usable``."""
    model: str | None = None
    flags: frozenset[str] | None = None
    cores: set[tuple[str, str]] = set()
    logical = 0
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" not in fields or not fields["processor"].isdigit():
            model = model or fields.get("Hardware") or fields.get("Model")
            continue
        if usable is not None and int(fields["processor"]) not in usable:
            continue
        logical += 1
        model = model or fields.get("model name") or fields.get("Model") or fields.get("cpu model")
        if flags is None and "flags" in fields:
            flags = frozenset(fields["flags"].split())
        # Without topology fields (some ARM kernels, VMs) every logical CPU counts as a core.
        cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    return model, len(cores), logical, flags or frozenset()


def _meminfo() -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo, else from sysconf."""
    text = _read("/proc/meminfo")
    if text:
        values: dict[str, int] = {}
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * 1024  # the kernel writes kB meaning KiB
        if "MemTotal" in values:
            return values["MemTotal"], values.get("MemAvailable", values.get("MemFree"))
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (AttributeError, ValueError, OSError):
        return None, None


def _cgroup_memory() -> tuple[int | None, int | None]:
    """(limit, current usage) of this process's cgroup v2, when a limit is set."""
    limit = (_read("/sys/fs/cgroup/memory.max") or "").strip()
    if not limit.isdigit():
        return None, None
    current = (_read("/sys/fs/cgroup/memory.current") or "").strip()
    return int(limit), int(current) if current.isdigit() else None


def cpu_info() -> CpuInfo:
    """Model, cores and RAM of this machine, honouring CPU affinity and a cgroup memory limit."""
    usable = _usable_cpus()
    model, physical, logical, flags = _parse_cpuinfo(_read("/proc/cpuinfo") or "", usable)
    if logical == 0:  # no /proc/cpuinfo (or nothing parsable)
        logical = len(usable) if usable else (os.cpu_count() or 1)
        physical = logical
    total, available = _meminfo()
    limit, used = _cgroup_memory()
    if limit is not None and (total is None or limit < total):
        total = limit
        if used is not None:
            available = max(0, min(available if available is not None else limit, limit - used))
    return CpuInfo(
        model=model or platform.processor() or None,
        physical_cores=max(1, physical),
        logical_cpus=max(1, logical),
        total_bytes=total,
        available_bytes=available,
        flags=flags,
    )


def measure_memory_bandwidth(threads: int | None = None, size_bytes: int | None = None,
                             reps: int = 5) -> float:
    """Sustained multi-threaded read bandwidth of this machine's memory in GB/s: what decode does.

    CPU decode in llama.cpp streams every CPU-held weight once per token, split across its
    threads, so this reads a buffer with ``threads`` threads at once (default: the physical
    cores) in the C core (csrc/membw.c): each thread first-touches its slice, then sums it with
    independent accumulators so the loop waits on memory only. The figure is bytes read per
    second of the fastest of ``reps`` reads after a warm-up read. The buffer is ``size_bytes``
    (default 1 GiB, capped at an eighth of available memory), far above any last-level cache;
    the probe takes about a second.

    A copy (numpy's ``copyto``, counted as read + write) is not used: on a 16-core H200 host it
    gave 27.6 GB/s with threads against llama.cpp decoding at 67 GB/s, as numpy's copy did not
    scale past one core there.

    Raises:
        InvalidArgumentError: ``threads``, ``size_bytes`` or ``reps`` is out of range (threads
            1..4096, at least 1 MiB, reps 1..1000).
        NativeCoreError: the buffer or the threads cannot be created.
    """
    from ._native import core  # here, not at the top: discovery works without the compiled core

    info = cpu_info()
    threads = info.physical_cores if threads is None else threads
    if size_bytes is None:
        size_bytes = _PROBE_BYTES
        if info.available_bytes:
            size_bytes = max(16 * MiB, min(size_bytes, info.available_bytes // 8))
    if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes < MiB:
        raise InvalidArgumentError(f"bandwidth probe needs a buffer of at least 1 MiB (got {size_bytes!r} bytes)")
    seconds, _ = core.membw_read(size_bytes, threads, reps)
    return (size_bytes // 8 * 8) / seconds / GB


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot from /proc/stat; None off Linux."""
    line = (_read("/proc/stat") or "").split("\n", 1)[0].split()
    if len(line) < 6 or line[0] != "cpu" or not all(x.isdigit() for x in line[1:9]):
        return None
    ticks = [int(x) for x in line[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def others_cpu_share(run: Callable[[], T]) -> tuple[T, float | None]:
    """``run()``, and the share of the machine's CPU time that *other* processes used meanwhile
    (0..1; None where /proc/stat is missing). A bandwidth probe that shares the cores and the
    memory bus with a compile or an inference reads low (an H200 host measured 48.5 GB/s during a
    16-job build, where llama.cpp decode alone read about 75)."""
    before, own_before = _cpu_jiffies(), time.process_time()
    result = run()
    after, own = _cpu_jiffies(), time.process_time() - own_before
    if before is None or after is None or after[1] <= before[1]:
        return result, None
    busy, total = after[0] - before[0], after[1] - before[1]
    others = busy - own * (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)
    return result, min(1.0, max(0.0, others / total))


def measure_disk_read_bandwidth(folder: str | os.PathLike[str] | None = None,
                                size_bytes: int = _DISK_PROBE_BYTES) -> float:
    """Read bandwidth of the disk under ``folder`` (default: the temp folder) in GB/s.

    Writes a ``size_bytes`` file of random bytes, flushes it and drops it from the page cache
    (``posix_fadvise(DONTNEED)``), then times reading it back in 4 MiB chunks with ``O_DIRECT``
    where the file system allows it. The file is created with ``mkstemp`` and removed.
    """
    if size_bytes < MiB:
        raise InvalidArgumentError(f"disk probe needs at least 1 MiB (got {size_bytes} bytes)")
    chunk = 4 * MiB
    fd, name = tempfile.mkstemp(prefix="omni_place_disk_", dir=folder)
    try:
        block = np.random.default_rng(0).integers(0, 256, chunk, dtype=np.uint8).tobytes()
        with os.fdopen(fd, "wb") as out:
            for _ in range(max(1, size_bytes // chunk)):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        flags = os.O_RDONLY | getattr(os, "O_DIRECT", 0)
        try:
            rfd = os.open(name, flags)
        except OSError:  # a file system without O_DIRECT (tmpfs): drop the cache instead
            rfd = os.open(name, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(rfd, 0, 0, os.POSIX_FADV_DONTNEED)
            buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT requires
            total = 0
            start = time.perf_counter()
            while True:
                n = os.readv(rfd, [buf])
                if n <= 0:
                    break
                total += n
            elapsed = time.perf_counter() - start
        finally:
            os.close(rfd)
    finally:
        os.unlink(name)
    return total / max(elapsed, 1e-9) / GB
