"""Load a model through the real libllama -- in a child process -- and report what the engine did.

:func:`probe_load` is the API other modules use to verify a placement: it runs
``python -m omni_place.llama.probe`` with a :class:`LoadSpec` as JSON on stdin, and reads a
:class:`LoadReport` as JSON from the child's stdout. Engine loads can ``GGML_ABORT`` (a failed
assertion kills the whole process) or hang; in a child, an abort, a signal or a timeout becomes
``LoadReport(ok=False, error=...)`` with the last log lines, and the caller keeps running.

The child captures the engine log at every level (the per-layer ``assigned to device`` lines are
DEBUG) and echoes it, unbuffered, to its stderr, so even a crashed load leaves a parsable log; it
sends its own stdout to stderr too, so only the report travels on the report pipe.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import EngineError, InvalidArgumentError, OmniPlaceError
from ..model import KV_TYPES
from . import bindings as b
from ._abi import get_abi, llama_model_tensor_buft_override
from ._child import child_env
from ._loader import load_libllama, loaded_libllama
from .logcapture import MIB_PRINT_TOLERANCE_BYTES, EngineLog, LogCapture, LogLine, parse_log
from .rpc import check_rpc_server
from .spec import LoadSpec

ABORT_MARKER = "omni_place: GGML_ABORT: "
"""Prefix of the line the child writes to stderr when ggml aborts (message follows)."""

_HOST_BUFFER_TYPES = frozenset({"CPU", "CPU_Mapped", "CPU_REPACK", "AMX", "KleidiAI", "CPU_KLEIDIAI"})
_RE_RPC_BUFT = re.compile(r"RPC(?P<index>\d+)\[(?P<endpoint>.+)\]")


# ---------------------------------------------------------------------------------------------
# What happened
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What the engine did with a :class:`LoadSpec` (JSON-serialisable, see :meth:`to_json`).

    Buffer dicts map the engine's buffer-type name (``CPU_Mapped``, ``RPC0[127.0.0.1:50052]``,
    ``CUDA0``) to bytes, summed over its lines; each printed line is exact to
    +-:data:`~omni_place.llama.logcapture.MIB_PRINT_TOLERANCE_BYTES`. ``buffer_devices`` maps
    those names to device names (host buffers -> ``"CPU"``). A ``CPU_Mapped`` buffer is the
    mmap'd *file range* from the first to the last CPU-held tensor, so it can include bytes of
    tensors that live on other devices; load with ``load_mode="none"`` for exact CPU sums.
    """

    ok: bool
    error: str | None = None
    error_kind: str | None = None
    """Whose fault a failure is: ``"input"`` when the request cannot be loaded here (no usable
    libllama, no model file, a device or buffer type this machine lacks, an invalid spec) and
    the engine was never asked; ``"engine"`` when the engine refused, aborted or timed out."""
    layer_devices: dict[int, str] = field(default_factory=dict)
    """Repeating layer (0..n_layer_all-1, NextN blocks included) -> device name."""
    output_device: str | None = None
    model_buffers: dict[str, int] = field(default_factory=dict)
    kv_buffers: dict[str, int] = field(default_factory=dict)
    compute_buffers: dict[str, int] = field(default_factory=dict)
    output_buffers: dict[str, int] = field(default_factory=dict)
    rs_buffers: dict[str, int] = field(default_factory=dict)
    buffer_lines: dict[str, int] = field(default_factory=dict)
    """Kind (model/KV/compute/output/RS) -> number of printed lines (for tolerances)."""
    buffer_devices: dict[str, str] = field(default_factory=dict)
    n_layer: int | None = None
    """llama_model_n_layer: repeating layers without NextN/MTP blocks."""
    n_layer_nextn: int = 0
    n_layer_all: int | None = None
    """Layer slots before the output slot (n_layer + n_layer_nextn)."""
    graph_splits: int | None = None
    graph_splits_tg: int | None = None
    graph_nodes: int | None = None
    offloaded: list[int] | None = None
    """``offloaded X/Y layers`` as [X, Y]."""
    pipeline_parallel: bool = False
    sched_copies: int | None = None
    caches: list[dict[str, Any]] = field(default_factory=list)
    """``size = ...`` summary lines of the KV cache(s) / recurrent state."""
    devices_used: list[str] = field(default_factory=list)
    """Model devices in order (``using device`` lines): what tensor_split indexes."""
    devices: list[dict[str, Any]] = field(default_factory=list)
    """Every ggml device after RPC servers were added (name, description, type, memory, bufts)."""
    n_ctx: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    model_size: int | None = None
    n_params: int | None = None
    load_mode: str | None = None
    dry_run: bool = False
    elapsed_s: float | None = None
    returncode: int | None = None
    spec: dict[str, Any] | None = None
    build: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    @property
    def n_slots(self) -> int | None:
        """Layer slots including the output head (what n_gpu_layers counts)."""
        return None if self.n_layer_all is None else self.n_layer_all + 1

    def device_of(self, buffer_type: str) -> str | None:
        return self.buffer_devices.get(buffer_type)

    def device_bytes(self) -> dict[str, dict[str, int]]:
        """Device -> {"model", "KV", "compute", "output", "RS"} -> bytes (unmapped buffer types
        are kept under their own name)."""
        out: dict[str, dict[str, int]] = {}
        for kind, bufs in (
            ("model", self.model_buffers),
            ("KV", self.kv_buffers),
            ("compute", self.compute_buffers),
            ("output", self.output_buffers),
            ("RS", self.rs_buffers),
        ):
            for buft, nbytes in bufs.items():
                dev = self.buffer_devices.get(buft, buft)
                per = out.setdefault(dev, {})
                per[kind] = per.get(kind, 0) + nbytes
        return out

    def tolerance_bytes(self, kind: str) -> int:
        """Print-rounding bound on a sum over every ``kind`` line of this load."""
        return self.buffer_lines.get(kind, 0) * MIB_PRINT_TOLERANCE_BYTES

    def layers_on(self, device: str) -> list[int]:
        return sorted(il for il, dev in self.layer_devices.items() if dev == device)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["layer_devices"] = {str(k): v for k, v in self.layer_devices.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoadReport:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["layer_devices"] = {int(k): v for k, v in (values.get("layer_devices") or {}).items()}
        return cls(**values)


def buffer_device(buffer_type: str, devices: Sequence[Mapping[str, Any] | b.DeviceInfo]) -> str | None:
    """The device a buffer type belongs to, ``"CPU"`` for host memory, or None when unknown.

    RPC buffer types are ``RPC<i>[host:port]`` -- ``i`` is the device index *on that server*, not
    the client-side device number (``RPC1`` may own ``RPC0[127.0.0.1:50053]``) -- so they are
    matched by endpoint (the RPC device's description).
    """
    devs = [asdict(d) if isinstance(d, b.DeviceInfo) else dict(d) for d in devices]
    for d in devs:
        if d.get("buffer_type") == buffer_type:
            return str(d["name"])
    m = _RE_RPC_BUFT.fullmatch(buffer_type)
    if m:
        on_server = [
            d for d in devs if d.get("description") == m["endpoint"] and str(d.get("name", "")).startswith("RPC")
        ]
        index = int(m["index"])
        return str(on_server[index]["name"]) if index < len(on_server) else None
    if (
        buffer_type in _HOST_BUFFER_TYPES
        or buffer_type.startswith("CPU")
        or buffer_type.endswith("_Host")
        or any(d.get("host_buffer_type") == buffer_type for d in devs)
    ):
        return "CPU"
    return None


# ---------------------------------------------------------------------------------------------
# The load itself (runs in the child)
# ---------------------------------------------------------------------------------------------

_ABORT_CALLBACK: Any = None


def _install_abort_marker() -> None:
    """Make ggml write one marked line to stderr before it aborts (the probe child also runs
    with GGML_NO_BACKTRACE=1, see :func:`~omni_place.llama._child.child_env`, so ggml does not
    attach gdb first)."""
    global _ABORT_CALLBACK
    if _ABORT_CALLBACK is not None or not b.available(b.ggml_set_abort_callback):
        return

    def on_abort(message: bytes | None) -> None:
        text = (message or b"").decode("utf-8", "replace").strip().replace("\n", " | ")
        with contextlib.suppress(OSError):
            os.write(2, f"\n{ABORT_MARKER}{text}\n".encode())

    _ABORT_CALLBACK = b.ggml_abort_callback_t(on_abort)
    b.ggml_set_abort_callback(_ABORT_CALLBACK)


def _resolve_override_target(target: str, devices: list[b.DeviceInfo]) -> int:
    """Buffer type for an override target: "CPU" (the loader then picks the best host buffer
    type), a device name (its default buffer type) or a device's default/host buffer-type name."""
    if target.upper() == "CPU":
        return int(b.ggml_backend_cpu_buffer_type())
    candidates: list[b.ggml_backend_buffer_type_t | None] = []
    dev = b.ggml_backend_dev_by_name(target.encode())
    if dev:
        candidates.append(b.ggml_backend_dev_buffer_type(dev))
    for info in devices:
        dev = b.ggml_backend_dev_get(info.index)
        if dev and info.buffer_type == target:
            candidates.append(b.ggml_backend_dev_buffer_type(dev))
        if dev and info.host_buffer_type == target:
            candidates.append(b.ggml_backend_dev_host_buffer_type(dev))
    for buft in candidates:
        if buft:
            return int(buft)
    names = sorted({"CPU"} | {d.name for d in devices} | {d.buffer_type for d in devices if d.buffer_type}
                   | {d.host_buffer_type for d in devices if d.host_buffer_type})
    raise InvalidArgumentError(
        f"override target {target!r} is neither a device nor a buffer type (known: {', '.join(names)})"
    )


def _errors_text(log: EngineLog, fallback: str) -> str:
    errors = [e for e in log.errors if e]
    return " | ".join(errors[-3:]) if errors else fallback


def _check_reachable(endpoint: str) -> None:
    """ggml aborts the process when an RPC endpoint does not answer or speaks another protocol
    version; refuse it plainly instead (a HELLO handshake, :func:`.rpc.check_rpc_server`)."""
    check_rpc_server(endpoint)


def load_in_process(spec: LoadSpec, library: str | None = None, *,
                    handles: dict[str, Any] | None = None) -> LoadReport:
    """Do the load in *this* process (what the probe child runs). A GGML_ABORT kills the
    caller: use :func:`probe_load` unless you are that child.

    With ``handles`` (a dict), a successful load is kept instead of freed: ``handles["model"]``
    and ``handles["context"]`` (None without ``create_context``) are the engine's pointers, and
    ``handles["keepalive"]`` the ctypes arrays the engine was given; the caller frees them
    (``llama_free`` / ``llama_model_free``, see :class:`omni_place.llama.applied.AppliedPlan`)."""
    spec.validate()
    started = time.monotonic()
    lib = load_libllama(library)
    abi = get_abi(lib)
    report = LoadReport(ok=False, dry_run=spec.dry_run, spec=spec.to_json(), build=abi.build.to_dict())
    capture = LogCapture(echo_fd=2 if os.environ.get("OMNI_PLACE_PROBE_CHILD") else None).install()
    keep: list[Any] = []  # ctypes objects the engine reads during the load
    model = ctx = None
    try:
        _install_abort_marker()
        b.ensure_backends()
        if not Path(spec.model_path).is_file():
            raise InvalidArgumentError(f"model file not found: {spec.model_path}")
        for endpoint in spec.rpc_servers:
            _check_reachable(endpoint)
            b.add_rpc_server(endpoint)
        devices = b.list_devices()
        report.devices = [asdict(d) for d in devices]

        mp = b.llama_model_default_params()
        mp.n_gpu_layers = spec.n_gpu_layers
        mp.split_mode = spec.split_mode
        mp.main_gpu = spec.main_gpu
        mp.load_mode = spec.effective_load_mode
        mp.no_alloc = spec.dry_run
        mp.no_host = spec.no_host
        mp.use_extra_bufts = spec.use_extra_bufts
        if spec.devices is not None:
            ptrs = [int(b.device_by_name(name)) for name in spec.devices]
            dev_array = (ctypes.c_void_p * (len(ptrs) + 1))(*ptrs, None)
            keep.append(dev_array)
            mp.devices = ctypes.cast(dev_array, ctypes.c_void_p).value
        if spec.tensor_split is not None:
            n_max = int(b.llama_max_devices())
            if len(spec.tensor_split) > n_max:
                raise InvalidArgumentError(
                    f"tensor_split has {len(spec.tensor_split)} values; this build reads at most {n_max}"
                )
            split = (ctypes.c_float * n_max)(*spec.tensor_split)
            keep.append(split)
            mp.tensor_split = ctypes.cast(split, ctypes.c_void_p).value
        if spec.overrides:
            # {pattern, buft} entries, terminated by a zeroed {NULL, NULL} entry
            table = (llama_model_tensor_buft_override * (len(spec.overrides) + 1))()
            for entry, (pattern, target) in zip(table, spec.overrides, strict=False):
                entry.pattern = pattern.encode()
                entry.buft = _resolve_override_target(target, devices)
            keep.append(table)
            mp.tensor_buft_overrides = ctypes.cast(table, ctypes.c_void_p).value

        model = b.llama_model_load_from_file(os.fsencode(spec.model_path), mp)
        log = parse_log(capture.records)
        if not model:
            raise EngineError(_errors_text(log, f"llama_model_load_from_file failed for {spec.model_path}"))
        report.n_layer = int(b.llama_model_n_layer(model))
        if b.available(b.llama_model_n_layer_nextn):
            report.n_layer_nextn = int(b.llama_model_n_layer_nextn(model))
        report.n_layer_all = report.n_layer + report.n_layer_nextn
        report.devices_used = _model_devices(model)
        report.model_size = int(b.llama_model_size(model))
        report.n_params = int(b.llama_model_n_params(model))

        if spec.create_context:
            cp = b.llama_context_default_params()
            cp.n_ctx = spec.n_ctx
            if spec.n_batch is not None:
                cp.n_batch = spec.n_batch
            cp.n_ubatch = spec.n_ubatch
            cp.n_seq_max = spec.n_seq_max
            cp.type_k = int(KV_TYPES[spec.type_k.lower()])  # ggml_type
            cp.type_v = int(KV_TYPES[spec.type_v.lower()])
            cp.flash_attn_type = b.FLASH_ATTN_BY_NAME[spec.flash_attn.lower()]
            cp.swa_full = spec.swa_full
            cp.offload_kqv = spec.offload_kqv
            cp.op_offload = spec.op_offload
            cp.kv_unified = spec.kv_unified
            if spec.n_threads is not None:
                cp.n_threads = cp.n_threads_batch = spec.n_threads
            ctx = b.llama_init_from_model(model, cp)
            if not ctx:
                raise EngineError(
                    _errors_text(parse_log(capture.records), "llama_init_from_model failed (context creation)")
                )
            report.n_ctx = int(b.llama_n_ctx(ctx))
            report.n_batch = int(b.llama_n_batch(ctx))
            report.n_ubatch = int(b.llama_n_ubatch(ctx))
        report.ok = True
    except OmniPlaceError as err:
        report.error = err.message
        report.error_kind = "engine" if isinstance(err, EngineError) else "input"
    finally:
        if handles is not None and report.ok:
            handles.update(model=model, context=ctx, keepalive=keep)
        else:
            if ctx:
                b.llama_free(ctx)
            if model:
                b.llama_model_free(model)
        capture.uninstall()
        report.elapsed_s = round(time.monotonic() - started, 3)
        _fill_from_log(report, capture.records)
    return report


def _model_devices(model: b.llama_model_p) -> list[str]:
    """The model's devices in tensor_split order, from the (C++-mangled) accessors when exported;
    empty otherwise (the ``using device`` log lines say the same)."""
    if not (b.available(b.llama_model_n_devices) and b.available(b.llama_model_get_device)):
        return []
    names = []
    for i in range(b.llama_model_n_devices(model)):
        dev = b.llama_model_get_device(model, i)
        if dev:
            names.append(b.ggml_backend_dev_name(dev).decode("utf-8", "replace"))
    return names


def _fill_from_log(report: LoadReport, records: Sequence[LogLine | str]) -> None:
    log = parse_log(records)
    if report.n_layer is None:
        report.n_layer = log.n_layer
    if report.n_layer_all is None and log.n_layer_all is not None:
        report.n_layer_all = log.n_layer_all
        if report.n_layer is not None:
            report.n_layer_nextn = log.n_layer_all - report.n_layer
    n_all = report.n_layer_all
    report.layer_devices = {il: dev for il, dev in log.layer_devices.items() if n_all is None or il < n_all}
    report.output_device = log.layer_devices.get(n_all) if n_all is not None else None
    report.model_buffers = log.buffer_bytes("model")
    report.kv_buffers = log.buffer_bytes("KV")
    report.compute_buffers = log.buffer_bytes("compute")
    report.output_buffers = log.buffer_bytes("output")
    report.rs_buffers = log.buffer_bytes("RS")
    report.buffer_lines = {k: log.buffer_lines(k) for k in ("model", "KV", "compute", "output", "RS")}
    all_bufts = {buf.buffer_type for buf in log.buffers}
    mapped = {buft: buffer_device(buft, report.devices) for buft in sorted(all_bufts)}
    report.buffer_devices = {k: v for k, v in mapped.items() if v is not None}
    if log.graph is not None:
        report.graph_splits = log.graph.splits_pp
        report.graph_splits_tg = log.graph.splits_tg
        report.graph_nodes = log.graph.nodes_pp
    report.offloaded = list(log.offloaded) if log.offloaded else None
    report.pipeline_parallel = log.pipeline_parallel
    report.sched_copies = log.sched_copies
    report.caches = [asdict(c) for c in log.caches]
    if not report.devices_used:
        report.devices_used = [d.name for d in log.devices_used]
    report.load_mode = log.load_mode
    report.log = [r.text if isinstance(r, LogLine) else r for r in records]


# ---------------------------------------------------------------------------------------------
# The parent side
# ---------------------------------------------------------------------------------------------


def _failure_from_output(
    spec: LoadSpec, stderr: str, returncode: int | None, timed_out: bool, timeout: float, elapsed: float
) -> LoadReport:
    lines = stderr.splitlines()
    aborts = [ln[len(ABORT_MARKER):] for ln in lines if ln.startswith(ABORT_MARKER)]
    if timed_out:
        what = f"engine load timed out after {timeout:g} s (child killed)"
    elif returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        what = f"engine process died with {name}"
    else:
        what = f"engine process exited with status {returncode} without a report"
    if aborts:
        what += f": GGML_ABORT: {aborts[-1]}"
    tail = [ln.strip() for ln in lines if ln.strip() and not ln.startswith(ABORT_MARKER)][-5:]
    if tail:
        what += "; last log lines: " + " | ".join(tail)
    report = LoadReport(ok=False, error=what, error_kind="engine", dry_run=spec.dry_run, spec=spec.to_json())
    _fill_from_log(report, lines)
    report.returncode = returncode
    report.elapsed_s = round(elapsed, 3)
    return report


def probe_load(spec: LoadSpec, *, timeout: float = 120, library: str | None = None) -> LoadReport:
    """Load ``spec`` through the real libllama in a child process and report what happened.

    ``library`` is a libllama file or folder; by default the child uses the library this process
    already loaded, else the usual search (``OMNI_PLACE_LIBLLAMA``, llama_cpp package, system).
    Never raises for engine failures: those come back as ``ok=False`` with ``error`` set.
    Raises InvalidArgumentError for an invalid spec.
    """
    spec.validate()
    if library is None:
        current = loaded_libllama()
        library = current.path if current is not None else None
    request = json.dumps({"spec": spec.to_json(), "library": library})
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_place.llama.probe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env({"OMNI_PLACE_PROBE_CHILD": "1"}),
        start_new_session=True,  # a timeout kills the whole group
    )
    timed_out = False
    try:
        out, err = proc.communicate(request.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    elapsed = time.monotonic() - started
    stderr = err.decode("utf-8", "replace")
    if not timed_out and out.strip():
        try:
            report = LoadReport.from_json(json.loads(out))
        except (ValueError, TypeError):
            report = None
        if report is not None:
            report.returncode = proc.returncode
            return report
    return _failure_from_output(spec, stderr, proc.returncode, timed_out, timeout, elapsed)


def _child_main() -> int:
    """``python -m omni_place.llama.probe``: request JSON on stdin, report JSON on stdout."""
    report_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # anything the engine prints on stdout goes to stderr, not into the report
    try:
        request = json.load(sys.stdin)
        spec = LoadSpec.from_json(request["spec"])
        report = load_in_process(spec, request.get("library"))
    except OmniPlaceError as err:  # bad request or no libllama: still answer with a report
        report = LoadReport(ok=False, error=err.message, error_kind="input")
    report_out.write(json.dumps(report.to_json()))
    report_out.flush()
    # skip interpreter teardown: engine/RPC destructors at exit must not turn a report into a crash
    os._exit(0)


if __name__ == "__main__":
    _child_main()
