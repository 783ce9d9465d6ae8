"""Compare a plan with what the engine did when it loaded it: layer by layer, tensor by tensor,
buffer by buffer.

:func:`verify_plan` loads a :class:`~omni_place.plan.Plan` through the real libllama (a child
process, see :func:`omni_place.llama.probe.probe_load`) and :func:`compare` turns the plan's
prediction (:class:`Expected`) and the engine's :class:`~omni_place.llama.probe.LoadReport` into
a :class:`VerifyReport`. Device names in a report are the *cluster's* names: the engine numbers
RPC devices in the order their servers were added, so engine devices are matched to cluster
devices by endpoint (:func:`engine_device_names`).

What is compared
  * the device of every layer slot and of the output head (``layer N assigned to device`` log
    lines) -- exact;
  * the device of every tensor an override matches (``buffer type overridden to`` lines), and of
    any tensor the engine moved off its layer's device on its own (``cannot be used with preferred
    buffer type`` lines) -- exact; tensors the engine does not load (NextN blocks without MTP,
    ``model has unused tensor``) are left out;
  * the accelerator order (``using device`` lines) -- exact;
  * per device, model / KV / compute buffer bytes against the plan's weights / KV / compute,
    under the rules of :class:`Tolerance` (the one place they live). A dry run (no_alloc) sizes no
    model or KV buffer, so those are "unmeasured" there and compute is still checked.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cost import CPU
from ..engines.common import override_device as common_override_device
from ..engines.common import rpc_buffer_names
from .logcapture import parse_log
from .plan_spec import load_spec, preflight
from .probe import LoadReport, buffer_device, probe_load
from .verify_report import KINDS, BufferCheck, DeviceCheck, LayerCheck, TensorCheck, Tolerance, VerifyReport

if TYPE_CHECKING:
    from ..devices import Cluster
    from ..plan import Plan


_RE_OVERRIDDEN = re.compile(r"tensor (?P<name>\S+) \(.*\) buffer type overridden to (?P<buft>\S+)")
_RE_FALLBACK = re.compile(
    r"tensor '(?P<name>[^']+)' \([^)]*\)(?: \(and (?P<others>\d+) others\))? cannot be used with "
    r"preferred buffer type (?P<preferred>\S+), using (?P<used>\S+) instead"
)
_RE_UNUSED = re.compile(r"model has unused tensor (?P<name>\S+)")


@dataclass
class Expected:
    """What a plan says the engine will do, in cluster device names."""

    model_path: str
    order: list[str]
    """Accelerators in engine device order (what tensor_split indexes)."""
    layers: list[str]
    """Device of every layer slot (NextN blocks included), then :attr:`output` for the head."""
    output: str
    tensors: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Tensor name -> (device, override pattern) for every tensor an override matches."""
    devices: dict[str, dict[str, int]] = field(default_factory=dict)
    """Device -> {"model", "kv", "compute"} -> predicted bytes."""
    home: dict[str, str] = field(default_factory=dict)
    """Tensor name -> device it has without an override (its layer's, the output's, or CPU)."""

    def __post_init__(self) -> None:
        self.order = list(self.order)
        self.layers = list(self.layers)


def override_device(target: str, cluster: Cluster | None) -> str:
    """Cluster device an override target means (:func:`omni_place.engines.common.override_device`)."""
    return common_override_device(target, rpc_buffer_names(cluster.devices) if cluster is not None else None)


def tensor_targets(tensor_names: Iterable[str], overrides: Sequence[tuple[str, str]],
                   cluster: Cluster | None = None) -> dict[str, tuple[str, str]]:
    """Tensor -> (device, pattern) for tensors an override matches: first match wins, the
    pattern is searched anywhere in the name (ECMAScript ``regex_search``, which Python's
    ``re.search`` agrees with for these patterns)."""
    compiled = [(re.compile(p), p, override_device(t, cluster)) for p, t in overrides]
    out: dict[str, tuple[str, str]] = {}
    for name in tensor_names:
        for rx, pattern, device in compiled:
            if rx.search(name):
                out[name] = (device, pattern)
                break
    return out


def expected_from_plan(plan: Plan) -> Expected:
    """The prediction of a :class:`~omni_place.plan.Plan`: its placement, the tensors its
    overrides move, and its per-device memory."""
    p = plan.placement
    model = plan.model
    homes = list(p.layer_home)
    loaded = [t for t in model.tensors if t.layer is None or not model.layers[t.layer].is_nextn]
    home: dict[str, str] = {}
    for t in loaded:
        if t.layer is not None:
            home[t.name] = homes[t.layer]
        elif t.name.startswith("output"):
            home[t.name] = p.output
        else:
            home[t.name] = CPU
    tensors = tensor_targets([t.name for t in loaded], plan.overrides, plan.cluster)
    devices = {u.name: {"model": u.weights_bytes, "kv": u.kv_bytes, "compute": u.compute_bytes} for u in plan.usage}
    return Expected(str(model.path), list(p.order), homes, p.output, tensors, devices, home)


def expected_from_json(data: Mapping[str, Any], plan: Plan) -> Expected:
    """The prediction a plan JSON (``Plan.to_dict()``) states: its ``layers``, ``output_device``,
    ``device_order`` and per-device bytes, with tensor targets from ``plan`` (the plan rebuilt from
    the JSON's ``args``). Where the JSON and its own flags disagree, the engine will disagree with
    the JSON: that is reported as a mismatch, not hidden."""
    exp = expected_from_plan(plan)
    layers = data.get("layers")
    if isinstance(layers, list) and layers:
        exp.layers = [str(entry.get("device")) for entry in layers if isinstance(entry, Mapping)]
    if data.get("output_device") is not None:
        exp.output = str(data["output_device"])
    if isinstance(data.get("device_order"), list):
        exp.order = [str(d) for d in data["device_order"]]
    if isinstance(data.get("devices"), list):
        exp.devices = {
            str(d["name"]): {"model": int(d.get("weights_bytes") or 0), "kv": int(d.get("kv_bytes") or 0),
                             "compute": int(d.get("compute_bytes") or 0)}  # null: unknown, as absent
            for d in data["devices"] if isinstance(d, Mapping) and "name" in d
        }
    return exp


# ---------------------------------------------------------------------------------------------
# The engine side
# ---------------------------------------------------------------------------------------------


def engine_device_names(report: LoadReport, cluster: Cluster | None) -> dict[str, str]:
    """Engine device name -> cluster device name. RPC devices are matched by endpoint (the
    engine's description of an RPC device); every other device keeps its name."""
    out: dict[str, str] = {}
    endpoints: dict[str, list[str]] = {}
    if cluster is not None:
        for dev in cluster.devices:
            if dev.kind == "rpc" and dev.endpoint:
                endpoints.setdefault(dev.endpoint, []).append(dev.name)
    taken: set[str] = set()
    for info in report.devices:
        name = str(info.get("name"))
        candidates = [n for n in endpoints.get(str(info.get("description")), []) if n not in taken]
        if name.startswith("RPC") and candidates:
            out[name] = candidates[0]
            taken.add(candidates[0])
        else:
            out[name] = name
    return out


@dataclass
class EngineTensors:
    """Tensor placements the engine logged."""

    overridden: dict[str, str] = field(default_factory=dict)
    """Tensor -> buffer type an override put it in."""
    fallbacks: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    """Named tensor -> (preferred buffer type, used buffer type, how many others like it)."""
    unused: set[str] = field(default_factory=set)


def parse_tensor_lines(lines: Iterable[str]) -> EngineTensors:
    out = EngineTensors()
    for text in lines:
        if "overridden to" in text:
            m = _RE_OVERRIDDEN.search(text)
            if m:
                out.overridden[m["name"]] = m["buft"]
        elif "cannot be used with preferred buffer type" in text:
            m = _RE_FALLBACK.search(text)
            if m:
                out.fallbacks[m["name"]] = (m["preferred"], m["used"], int(m["others"] or 0))
        elif "unused tensor" in text:
            m = _RE_UNUSED.search(text)
            if m:
                out.unused.add(m["name"])
    return out


def compare(expected: Expected, report: LoadReport, cluster: Cluster | None = None,
            tolerance: Tolerance | None = None) -> VerifyReport:
    """Plan vs engine. Engine device names are translated to the cluster's first."""
    tol = tolerance or Tolerance()
    names = engine_device_names(report, cluster)

    def dev(engine_name: str | None) -> str | None:
        return None if engine_name is None else names.get(engine_name, engine_name)

    def buft_dev(buft: str) -> str:
        return dev(buffer_device(buft, report.devices)) or buft

    notes: list[str] = []
    error = None if report.ok else (report.error or "load failed")
    layers = [LayerCheck(il, want, dev(report.layer_devices.get(il))) for il, want in enumerate(expected.layers)]
    extra = sorted(set(report.layer_devices) - set(range(len(expected.layers))))
    if extra:
        notes.append(f"the engine has {report.n_layer_all} layer slots, the plan {len(expected.layers)}")
        layers += [LayerCheck(il, "-", dev(report.layer_devices[il])) for il in extra]
    order = (list(expected.order), [dev(n) or n for n in report.devices_used])

    # tensors: every one an override should move, plus any the engine moved on its own
    engine = parse_tensor_lines(report.log)
    # the output head is where output.weight is: the output slot's device unless overridden
    out_buft = engine.overridden.get("output.weight")
    output = LayerCheck("output", expected.output,
                        buft_dev(out_buft) if out_buft is not None else dev(report.output_device))
    tensors: list[TensorCheck] = []
    for name, (want, pattern) in sorted(expected.tensors.items(), key=lambda kv: _tensor_key(kv[0])):
        if name in engine.unused:
            continue
        buft = engine.overridden.get(name)
        tensors.append(TensorCheck(name, want, None if buft is None else buft_dev(buft), pattern))
    for name in sorted(set(engine.overridden) - set(expected.tensors), key=_tensor_key):
        tensors.append(TensorCheck(name, expected.home.get(name, "?"), buft_dev(engine.overridden[name]),
                                   None, "overridden by no pattern of the plan"))
    for name, (preferred, used, others) in engine.fallbacks.items():
        if buft_dev(preferred) == buft_dev(used):
            continue  # e.g. CPU_REPACK -> CPU: the same device
        planned = expected.tensors.get(name, (expected.home.get(name, buft_dev(preferred)), None))
        note = f"the engine could not use {preferred}" + (f"; {others} more tensors likewise" if others else "")
        tensors.append(TensorCheck(name, planned[0], buft_dev(used), planned[1], note))

    # buffers per device
    per_dev: dict[str, dict[str, int]] = {}
    lines: dict[str, dict[str, int]] = {}  # printed lines per device and kind: each is +-0.005 MiB
    mapped: set[str] = set()
    ours = {"model": "model", "KV": "kv", "RS": "kv", "compute": "compute", "output": "compute"}
    printed = [(buf.buffer_type, ours[buf.kind]) for buf in parse_log(report.log).buffers if buf.kind in ours]
    for kind, bufs in (("model", report.model_buffers), ("kv", report.kv_buffers), ("kv", report.rs_buffers),
                       ("compute", report.compute_buffers), ("compute", report.output_buffers)):
        for buft, nbytes in bufs.items():
            d = buft_dev(buft)
            per_dev.setdefault(d, {})[kind] = per_dev.get(d, {}).get(kind, 0) + nbytes
            n_printed = max(1, sum(1 for pb in printed if pb == (buft, kind)))
            lines.setdefault(d, {})[kind] = lines.get(d, {}).get(kind, 0) + n_printed
            if kind == "model" and buft == "CPU_Mapped":
                mapped.add(d)
    if mapped:
        notes.append("CPU weights are mmap'd (CPU_Mapped = the file range of the CPU-held tensors): "
                     "only a lower bound is checked; load with load_mode='none' for exact CPU bytes")
    if report.dry_run:
        notes.append("dry run (no_alloc): the engine sizes no model or KV buffer; placement and compute are checked")
    if report.pipeline_parallel:
        notes.append(f"the engine enabled pipeline parallelism (sched copies = {report.sched_copies}): "
                     "compute buffers hold several copies of the graph inputs")
    devices: list[DeviceCheck] = []
    for dev_name in [*expected.devices, *sorted(set(per_dev) - set(expected.devices))]:
        planned_bytes = expected.devices.get(dev_name, {})
        got = per_dev.get(dev_name, {})
        checks = []
        for kind in KINDS:
            predicted = int(planned_bytes.get(kind, 0))
            n_lines = lines.get(dev_name, {}).get(kind, 0)
            low, high = tol.bounds(kind, predicted, n_lines, mapped=(kind == "model" and dev_name in mapped))
            measured = report.ok and not (report.dry_run and kind in ("model", "kv"))
            checks.append(BufferCheck(kind, predicted, got.get(kind, 0) if measured else None, low, high))
        devices.append(DeviceCheck(dev_name, checks))
    return VerifyReport(expected.model_path, report.dry_run, layers, output, tensors, devices, order, tol,
                        error, notes, report)


def _tensor_key(name: str) -> tuple[int, str]:
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m[1]) if m else -1, name)


def verify_plan(plan: Plan, *, dry_run: bool = False, library: str | None = None, load_mode: str | None = None,
                timeout: float = 600, tolerance: Tolerance | None = None, expected: Expected | None = None,
                n_threads: int | None = None) -> VerifyReport:
    """Load ``plan`` with exactly its parameters through the real libllama (in a child process,
    so an engine abort cannot take the caller down) and compare. A real load (the default) reads
    the weights, with ``load_mode="none"`` unless given so every CPU byte is counted exactly; a
    dry run only sizes compute buffers. Never raises for an engine disagreement or a failed
    load: see :attr:`VerifyReport.matches` and :meth:`VerifyReport.raise_for_mismatch`."""
    preflight(plan, dry_run=dry_run)
    spec = load_spec(plan, dry_run=dry_run, load_mode=load_mode if (load_mode or dry_run) else "none",
                     n_threads=n_threads)
    report = probe_load(spec, timeout=timeout, library=library)
    return compare(expected or expected_from_plan(plan), report, plan.cluster, tolerance)


__all__ = [
    "BufferCheck",
    "DeviceCheck",
    "EngineTensors",
    "Expected",
    "LayerCheck",
    "TensorCheck",
    "Tolerance",
    "VerifyReport",
    "compare",
    "engine_device_names",
    "expected_from_json",
    "expected_from_plan",
    "override_device",
    "parse_tensor_lines",
    "tensor_targets",
    "verify_plan",
]
