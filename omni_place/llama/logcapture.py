"""Capture libllama's log (every level) and parse the lines that describe a placement.

The engine is the judge of placement and memory, and its log is where it says what it did. The
formats below are the ones printed by the supported builds (vendored llama.cpp of
llama-cpp-python 0.3.36 ~ b11434; ``src/llama-model.cpp``, ``src/llama-context.cpp``,
``src/llama-kv-cache.cpp``, ``src/llama-memory-recurrent.cpp``, ``src/llama.cpp``)::

    load_tensors: layer   3 assigned to device RPC0, is_swa = 0          (DEBUG; slot n_layer_all = output)
    llama_prepare_model_devices: using device RPC0 (127.0.0.1:50052) (unknown id) - 15923 MiB free
    load_tensors: loading model tensors, this can take a while... (load_mode = mmap)
    load_tensors: offloading output layer to GPU
    load_tensors: offloading 4 repeating layers to GPU
    load_tensors: offloaded 5/7 layers to GPU
    load_tensors:   CPU_Mapped model buffer size =     0.61 MiB
    load_tensors: RPC0[127.0.0.1:50052] model buffer size =     0.27 MiB
    llama_context:        CPU  output buffer size =     0.00 MiB
    llama_kv_cache: RPC0[127.0.0.1:50052] KV buffer size =     0.12 MiB
    llama_kv_cache: size =    0.38 MiB (   512 cells,   6 layers,  1/1 seqs), K (f16):    0.19 MiB, V (f16):    0.19 MiB
    llama_memory_recurrent:        CPU RS buffer size =     0.02 MiB
    llama_context: pipeline parallelism enabled
    sched_reserve: RPC0[127.0.0.1:50052] compute buffer size =     1.17 MiB
    sched_reserve: graph nodes = 194, splits = 5, input objects = 2, input tensors = 3
    sched_reserve: graph (pp bs=512, tg bs=1): nodes = 200 / 190, splits = 5 / 3, ...
    sched_reserve: reserve took 1.52 ms, sched copies = 1

Sizes are printed in MiB with two decimals (``%8.2f``): :func:`mib_to_bytes` gives
``round(MiB * 2**20)`` and every such number is only known to +-0.005 MiB
(:data:`MIB_PRINT_TOLERANCE_BYTES` = 5243 bytes per printed line).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..units import MiB
from . import bindings as b

MIB_PRINT_RESOLUTION = 0.005
"""Half a unit of the last printed digit: the true size is within this many MiB of the printed one."""
MIB_PRINT_TOLERANCE_BYTES = math.ceil(MIB_PRINT_RESOLUTION * MiB)

LEVEL_NAMES: Mapping[int, str] = {0: "NONE", 1: "DEBUG", 2: "INFO", 3: "WARN", 4: "ERROR", 5: "CONT"}


def mib_to_bytes(mib: float) -> int:
    """Bytes for a size printed in MiB (exact only to +-MIB_PRINT_TOLERANCE_BYTES)."""
    return round(mib * MiB)


@dataclass(frozen=True)
class LogLine:
    """One complete line of engine output and the level of the message that started it."""

    level: int
    text: str


# ---------------------------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------------------------

_KEEPALIVE: list[Any] = []  # CFUNCTYPE objects handed to C are never freed: C may still call them


class LogCapture:
    """Record every llama/ggml log message (``llama_log_set`` also sets ggml's logger).

    Messages arrive as chunks; a chunk at level CONT continues the previous message. Complete
    lines are kept as :class:`LogLine`. With ``echo_fd`` every chunk is also written to that file
    descriptor immediately (unbuffered), so a process that aborts still leaves its log behind.
    """

    def __init__(self, *, echo_fd: int | None = None) -> None:
        self._echo_fd = echo_fd
        self._lock = threading.Lock()
        self._records: list[LogLine] = []
        self._partial = ""
        self._partial_level = b.GGML_LOG_LEVEL_INFO
        self._callback = b.ggml_log_callback(self._on_log)
        self._installed = False

    # -- the C callback ------------------------------------------------------------------------
    def _on_log(self, level: int, text: bytes | None, _user_data: int | None) -> None:
        try:
            if not text:
                return
            if self._echo_fd is not None:
                with contextlib.suppress(OSError):
                    os.write(self._echo_fd, text)
            self.feed(level, text.decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - an exception must never cross into C
            pass

    def feed(self, level: int, text: str) -> None:
        """Add one message chunk (what the C callback receives), e.g. for replaying a log."""
        with self._lock:
            if level != b.GGML_LOG_LEVEL_CONT:
                if self._partial:  # a new message starts: the pending fragment is a line of its own
                    self._records.append(LogLine(self._partial_level, self._partial))
                    self._partial = ""
                self._partial_level = level
            data = self._partial + text
            *complete, self._partial = data.split("\n")
            self._records.extend(LogLine(self._partial_level, line) for line in complete)

    # -- install / uninstall -------------------------------------------------------------------
    def install(self) -> LogCapture:
        """Route the engine's log here (all levels, DEBUG included)."""
        _KEEPALIVE.append(self._callback)
        b.llama_log_set(self._callback, None)
        self._installed = True
        return self

    def uninstall(self) -> None:
        """Give the log back to the engine's default (stderr)."""
        if self._installed:
            b.llama_log_set(b.ggml_log_callback(), None)  # a NULL callback: the engine's default
            self._installed = False

    def __enter__(self) -> LogCapture:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # -- results ---------------------------------------------------------------------------------
    @property
    def records(self) -> list[LogLine]:
        """Complete lines so far, plus a pending fragment if any."""
        with self._lock:
            out = list(self._records)
            if self._partial:
                out.append(LogLine(self._partial_level, self._partial))
            return out

    @property
    def lines(self) -> list[str]:
        return [r.text for r in self.records]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._partial = ""


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BufferLine:
    """``<func>: <BUFT> <kind> buffer size = <MiB> MiB``; kind is model, KV, compute, output or RS."""

    func: str
    kind: str
    buffer_type: str
    mib: float

    @property
    def bytes(self) -> int:
        return mib_to_bytes(self.mib)


@dataclass(frozen=True)
class UsedDevice:
    """``using device NAME (DESCRIPTION) (DEVICE_ID) - N MiB free``: a model device, in order."""

    name: str
    description: str
    device_id: str | None
    free_mib: int


@dataclass(frozen=True)
class CacheSize:
    """``llama_kv_cache: size = ...`` / ``llama_memory_recurrent: size = ...`` summary line."""

    func: str
    mib: float
    cells: int
    layers: int
    parts: dict[str, tuple[str, float]] = field(default_factory=dict)
    """Per part (``K``, ``V``, or ``R``/``S``/``P``): (ggml type, MiB)."""

    @property
    def bytes(self) -> int:
        return mib_to_bytes(self.mib)


@dataclass(frozen=True)
class GraphInfo:
    """``graph: nodes = N, splits = S`` (with ``/`` separated PP and TG values when they differ)."""

    nodes_pp: int
    nodes_tg: int
    splits_pp: int
    splits_tg: int


@dataclass
class EngineLog:
    """Everything placement-related that one load printed."""

    layer_devices: dict[int, str] = field(default_factory=dict)
    """Slot -> device name for every ``layer N assigned to device`` line (slot n_layer_all = output)."""
    layer_is_swa: dict[int, bool] = field(default_factory=dict)
    devices_used: list[UsedDevice] = field(default_factory=list)
    buffers: list[BufferLine] = field(default_factory=list)
    caches: list[CacheSize] = field(default_factory=list)
    graph: GraphInfo | None = None
    offloaded: tuple[int, int] | None = None
    offloading_output: bool = False
    offloading_repeating: int | None = None
    pipeline_parallel: bool = False
    sched_copies: int | None = None
    load_mode: str | None = None
    n_layer: int | None = None
    """``print_info: n_layer = N`` (printed before the placement lines)."""
    n_layer_all: int | None = None
    """``print_info: n_layer_all = N`` (NextN blocks included): the output slot's index."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def buffer_bytes(self, kind: str) -> dict[str, int]:
        """Buffer type -> bytes for one kind (``model``, ``KV``, ``compute``, ``output``, ``RS``),
        summed over lines (a large buffer type can be split into several buffers)."""
        out: dict[str, int] = {}
        for buf in self.buffers:
            if buf.kind == kind:
                out[buf.buffer_type] = out.get(buf.buffer_type, 0) + buf.bytes
        return out

    def buffer_lines(self, kind: str) -> int:
        """How many lines of ``kind`` were printed (each adds +-MIB_PRINT_TOLERANCE_BYTES)."""
        return sum(1 for buf in self.buffers if buf.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FUNC = r"(?P<func>[A-Za-z_][\w:]*)"
_RE_LAYER = re.compile(r"layer\s+(?P<il>\d+) assigned to device (?P<dev>[^,\s]+)(?:, is_swa = (?P<swa>\d+))?")
_RE_USING = re.compile(
    r"using device (?P<name>\S+) \((?P<desc>.*)\) \((?P<id>[^()]*)\) - (?P<free>\d+) MiB free"
)
_RE_BUFFER = re.compile(
    _FUNC + r":\s+(?P<buft>\S+)\s+(?P<kind>model|KV|compute|output|RS) buffer size =\s*(?P<mib>-?\d+(?:\.\d+)?) MiB"
)
_RE_CACHE = re.compile(
    _FUNC + r": size =\s*(?P<mib>\d+(?:\.\d+)?) MiB \(\s*(?P<cells>\d+) cells,\s*(?P<layers>\d+) layers,[^)]*\)"
    r"(?P<parts>(?:, \w+ \(\w+\):\s*\d+(?:\.\d+)? MiB)*)"
)
_RE_PART = re.compile(r"(?P<name>\w+) \((?P<type>\w+)\):\s*(?P<mib>\d+(?:\.\d+)?) MiB")
_RE_GRAPH = re.compile(
    r"graph(?: \([^)]*\))?: nodes = (?P<n1>\d+)(?: / (?P<n2>\d+))?, splits = (?P<s1>\d+)(?: / (?P<s2>\d+))?"
)
_RE_OFFLOADED = re.compile(r"offloaded (?P<n>\d+)/(?P<total>\d+) layers to GPU")
_RE_OFFLOADING = re.compile(r"offloading (?P<n>\d+) repeating layers to GPU")
_RE_COPIES = re.compile(r"sched copies = (?P<n>\d+)")
_RE_LOAD_MODE = re.compile(r"\(load_mode = (?P<mode>\w+)\)")
_RE_PRINT_INFO = re.compile(r"print_info: (?P<key>n_layer(?:_all)?)\s+= (?P<value>\d+)\s*$")
_RE_ERRORISH = re.compile(
    r"error|failed|GGML_ASSERT|GGML_ABORT|exception|cannot|not supported|out of memory", re.IGNORECASE
)


def parse_log(lines: Iterable[str | LogLine]) -> EngineLog:
    """Parse engine log lines (strings, or LogLine records with levels) into an EngineLog.

    Unknown lines are ignored, so the input may be a whole stderr capture. ERROR-level records
    (or, for plain strings, lines that look like errors) are collected in ``errors``.
    """
    log = EngineLog()
    for item in lines:
        if isinstance(item, LogLine):
            level, text = item.level, item.text
        else:
            level, text = None, item
        text = text.rstrip("\r\n")
        if not text.strip():
            continue
        if level == b.GGML_LOG_LEVEL_ERROR or (level is None and _RE_ERRORISH.search(text)):
            log.errors.append(text.strip())
        elif level == b.GGML_LOG_LEVEL_WARN:
            log.warnings.append(text.strip())

        if "assigned to device" in text:
            m = _RE_LAYER.search(text)
            if m and "is assigned to device" not in text:  # skip the scheduler's mismatch warning
                il = int(m["il"])
                log.layer_devices[il] = m["dev"]
                if m["swa"] is not None:
                    log.layer_is_swa[il] = m["swa"] != "0"
            continue
        if "buffer size =" in text:
            m = _RE_BUFFER.search(text)
            if m:
                log.buffers.append(BufferLine(m["func"], m["kind"], m["buft"], float(m["mib"])))
            continue
        if "using device" in text:
            m = _RE_USING.search(text)
            if m:
                dev_id = m["id"]
                log.devices_used.append(
                    UsedDevice(m["name"], m["desc"], None if dev_id == "unknown id" else dev_id, int(m["free"]))
                )
            continue
        if ": size =" in text:
            m = _RE_CACHE.search(text)
            if m:
                parts = {p["name"]: (p["type"], float(p["mib"])) for p in _RE_PART.finditer(m["parts"] or "")}
                log.caches.append(CacheSize(m["func"], float(m["mib"]), int(m["cells"]), int(m["layers"]), parts))
            continue
        if "nodes =" in text and "splits =" in text:
            m = _RE_GRAPH.search(text)
            if m:
                n1, s1 = int(m["n1"]), int(m["s1"])
                log.graph = GraphInfo(
                    nodes_pp=n1,
                    nodes_tg=int(m["n2"]) if m["n2"] else n1,
                    splits_pp=s1,
                    splits_tg=int(m["s2"]) if m["s2"] else s1,
                )
            continue
        if "layers to GPU" in text:
            m = _RE_OFFLOADED.search(text)
            if m:
                log.offloaded = (int(m["n"]), int(m["total"]))
                continue
            m = _RE_OFFLOADING.search(text)
            if m:
                log.offloading_repeating = int(m["n"])
            continue
        if "offloading output layer to GPU" in text:
            log.offloading_output = True
            continue
        if "pipeline parallelism enabled" in text:
            log.pipeline_parallel = True
            continue
        if "sched copies =" in text:
            m = _RE_COPIES.search(text)
            if m:
                log.sched_copies = int(m["n"])
            continue
        if "print_info: n_layer" in text:
            m = _RE_PRINT_INFO.search(text)
            if m:
                setattr(log, m["key"], int(m["value"]))
            continue
        if "(load_mode =" in text:
            m = _RE_LOAD_MODE.search(text)
            if m:
                log.load_mode = m["mode"]
    return log


__all__ = [
    "BufferLine",
    "CacheSize",
    "EngineLog",
    "GraphInfo",
    "LogCapture",
    "LogLine",
    "MIB_PRINT_RESOLUTION",
    "MIB_PRINT_TOLERANCE_BYTES",
    "UsedDevice",
    "mib_to_bytes",
    "parse_log",
]
