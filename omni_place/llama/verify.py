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

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..cost import CPU
from ..engines.common import override_device as common_override_device
from ..engines.common import rpc_buffer_names
from ..errors import EngineMismatchError
from .logcapture import MIB, MIB_PRINT_TOLERANCE_BYTES, parse_log
from .probe import LoadReport, buffer_device

if TYPE_CHECKING:
    from ..devices import Cluster
    from ..plan import Plan

KINDS = ("model", "kv", "compute")
"""Buffer kinds compared per device: plan weights/kv/compute vs engine model/KV(+RS)/compute(+output)."""

_RE_OVERRIDDEN = re.compile(r"tensor (?P<name>\S+) \(.*\) buffer type overridden to (?P<buft>\S+)")
_RE_FALLBACK = re.compile(
    r"tensor '(?P<name>[^']+)' \([^)]*\)(?: \(and (?P<others>\d+) others\))? cannot be used with "
    r"preferred buffer type (?P<preferred>\S+), using (?P<used>\S+) instead"
)
_RE_UNUSED = re.compile(r"model has unused tensor (?P<name>\S+)")


# ---------------------------------------------------------------------------------------------
# Tolerances: the one place they are decided
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How far engine bytes may be from the plan's before it is a mismatch.

    * **model and KV buffers** (exact formulas in :mod:`omni_place.model`): the engine's bytes
      must be within ``max(rel * predicted, abs_bytes)`` of the prediction -- the issue's
      ``max(1 %, 16 MiB)`` -- plus the print rounding of the log lines summed
      (``MIB_PRINT_TOLERANCE_BYTES`` = 0.005 MiB per line).
    * **compute buffers** (an *estimate*, :mod:`omni_place.compute`): one-sided in the direction
      that matters. Under-prediction is what makes a plan that "fits" run out of memory, so the
      engine may exceed the prediction only by ``compute_under_bytes`` (1 MiB: ggml's allocator
      alignment and small graph inputs, far below the 512 MiB margin every device keeps); more
      is a mismatch. Over-prediction only makes the plan reserve too much: beyond the compute
      model's documented accuracy, ``predicted > compute_over_factor * engine +
      compute_over_bytes`` (2.5x + 1 MiB, tests/test_model_engine.py), it is a *warning*
      (status ``over-predicted``), not a mismatch.
    * a CPU model buffer that is ``CPU_Mapped`` (mmap) spans the file range from the first to the
      last CPU-held tensor, so it may include other devices' tensors: only the lower bound holds.

    ``Tolerance.exact()`` keeps only the print rounding (model/KV) -- what tests on tiny models
    use to show the formulas are exact, not just inside 16 MiB.
    """

    rel: float = 0.01
    abs_bytes: int = 16 * MIB
    compute_under_bytes: int = 1 * MIB
    compute_over_factor: float = 2.5
    compute_over_bytes: int = 1 * MIB

    @classmethod
    def exact(cls) -> Tolerance:
        return cls(rel=0.0, abs_bytes=0)

    def bounds(self, kind: str, predicted: int, lines: int = 1, *, mapped: bool = False) -> tuple[int, float]:
        """(lowest, highest) engine bytes that still match ``predicted`` for a buffer kind
        (``model``, ``kv`` or ``compute``) printed on ``lines`` log lines."""
        printed = max(1, lines) * MIB_PRINT_TOLERANCE_BYTES
        if kind == "compute":
            low = max(0.0, (predicted - self.compute_over_bytes) / self.compute_over_factor) - printed
            return max(0, math.floor(low)), predicted + self.compute_under_bytes + printed
        slack = max(self.rel * predicted, self.abs_bytes) + printed
        return max(0, math.floor(predicted - slack)), (math.inf if mapped else math.ceil(predicted + slack))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# The prediction side
# ---------------------------------------------------------------------------------------------


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
            str(d["name"]): {"model": int(d.get("weights_bytes", 0)), "kv": int(d.get("kv_bytes", 0)),
                             "compute": int(d.get("compute_bytes", 0))}
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


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerCheck:
    layer: int | str
    """Layer slot, or ``"output"`` for the output head."""
    predicted: str
    actual: str | None

    @property
    def match(self) -> bool:
        return self.predicted == self.actual

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "predicted": self.predicted, "actual": self.actual, "match": self.match}


@dataclass
class TensorCheck:
    tensor: str
    predicted: str
    actual: str | None
    pattern: str | None = None
    """The override that moves it (None: the engine moved it on its own)."""
    note: str | None = None

    @property
    def match(self) -> bool:
        return self.predicted == self.actual

    def to_dict(self) -> dict[str, Any]:
        out = {"tensor": self.tensor, "predicted": self.predicted, "actual": self.actual,
               "pattern": self.pattern, "match": self.match}
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class BufferCheck:
    kind: str
    predicted: int
    actual: int | None
    """None: not measured (model and KV in a dry run)."""
    low: int
    high: float

    @property
    def status(self) -> str:
        if self.actual is None:
            return "unmeasured"
        if self.actual < self.low:
            return "over-predicted" if self.kind == "compute" else "engine smaller"
        if self.actual > self.high:
            return "under-predicted" if self.kind == "compute" else "engine larger"
        return "ok"

    @property
    def match(self) -> bool:
        """Agrees with the plan: ok, unmeasured, or a conservative compute reservation."""
        return self.status in ("ok", "unmeasured", "over-predicted")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "predicted": self.predicted, "actual": self.actual,
                "deviation": None if self.actual is None else self.actual - self.predicted,
                "allowed": [self.low, None if math.isinf(self.high) else int(self.high)],
                "status": self.status}


@dataclass
class DeviceCheck:
    name: str
    buffers: list[BufferCheck]

    @property
    def match(self) -> bool:
        return all(b.match for b in self.buffers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "predicted_bytes": {b.kind: b.predicted for b in self.buffers},
            "actual_bytes": {b.kind: b.actual for b in self.buffers},
            "match": self.match,
            "checks": [b.to_dict() for b in self.buffers],
        }


@dataclass
class VerifyReport:
    """Plan vs engine, side by side. ``matches`` is True when every layer, tensor, the device
    order and every measured buffer agree (within :class:`Tolerance`) and the load succeeded."""

    model_path: str
    dry_run: bool
    layers: list[LayerCheck]
    output: LayerCheck
    tensors: list[TensorCheck]
    devices: list[DeviceCheck]
    order: tuple[list[str], list[str]]
    """(predicted, actual) accelerator order."""
    tolerance: Tolerance
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    load: LoadReport | None = None

    @property
    def matches(self) -> bool:
        return not self.mismatches()

    def mismatches(self) -> list[str]:
        """One line per disagreement, in a stable order."""
        if self.error:  # nothing else was measured
            return [f"the engine could not load the plan: {self.error}"]
        out: list[str] = []
        if self.order[0] and self.order[0] != self.order[1]:  # an empty plan order: all on the CPU
            out.append(f"device order: plan {','.join(self.order[0]) or '-'}, engine {','.join(self.order[1])}")
        for lc in [*self.layers, self.output]:
            if not lc.match:
                what = "output" if lc.layer == "output" else f"layer {lc.layer}"
                out.append(f"{what}: plan {lc.predicted}, engine {lc.actual or 'not reported'}")
        for tc in self.tensors:
            if not tc.match:
                extra = f" ({tc.note})" if tc.note else ""
                out.append(f"tensor {tc.tensor}: plan {tc.predicted}, engine {tc.actual or 'not reported'}{extra}")
        for dc in self.devices:
            for bc in dc.buffers:
                if not bc.match:
                    out.append(f"{dc.name} {bc.kind} buffer: plan {_mib(bc.predicted)}, engine "
                               f"{_mib(bc.actual or 0)} ({bc.status}; allowed {_range(bc.low, bc.high)})")
        return out

    def warnings(self) -> list[str]:
        """Compute reservations far above what the engine needed (safe, but wasteful)."""
        return [f"{dc.name} compute buffer: plan {_mib(bc.predicted)}, engine {_mib(bc.actual or 0)} "
                f"(over-predicted beyond {self.tolerance.compute_over_factor:g}x + "
                f"{_mib(self.tolerance.compute_over_bytes)})"
                for dc in self.devices for bc in dc.buffers if bc.status == "over-predicted"]

    def max_deviation(self, kind: str) -> int:
        """Largest |engine - plan| bytes over the devices for a buffer kind (measured ones)."""
        devs = [abs(b.actual - b.predicted) for d in self.devices for b in d.buffers
                if b.kind == kind and b.actual is not None]
        return max(devs, default=0)

    def raise_for_mismatch(self) -> None:
        """Raise :class:`EngineMismatchError` (CLI exit 4) unless everything matched."""
        problems = self.mismatches()
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise EngineMismatchError(
                f"the engine disagrees with the plan: {problems[0]}{more}",
                hint="the comparison above lists every difference; re-plan with the same libllama, "
                "or report it with `--format json` output",
            )

    def to_dict(self) -> dict[str, Any]:
        load = self.load
        return {
            "matches": self.matches,
            "model": self.model_path,
            "dry_run": self.dry_run,
            "error": self.error,
            "mismatches": self.mismatches(),
            "warnings": self.warnings(),
            "device_order": {"predicted": self.order[0], "actual": self.order[1]},
            "layers": [lc.to_dict() for lc in self.layers],
            "output": self.output.to_dict(),
            "tensors": [tc.to_dict() for tc in self.tensors],
            "devices": [dc.to_dict() for dc in self.devices],
            "tolerance": self.tolerance.to_dict(),
            "notes": self.notes,
            "engine": None if load is None else {
                "build": load.build, "load_mode": load.load_mode, "elapsed_s": load.elapsed_s,
                "graph_splits": load.graph_splits, "pipeline_parallel": load.pipeline_parallel,
                "sched_copies": load.sched_copies, "n_ctx": load.n_ctx, "n_ubatch": load.n_ubatch,
            },
        }

    def to_text(self) -> str:
        lines = [f"verify: {self.model_path} ({'dry run: no_alloc' if self.dry_run else 'real load'}"
                 + (f", load_mode {self.load.load_mode}" if self.load and self.load.load_mode else "") + ")"]
        if self.load is not None and self.load.build:
            lines.append(f"engine: {_describe_build(self.load.build)}")
        n_ok = sum(lc.match for lc in self.layers)
        lines.append(f"layers: {n_ok}/{len(self.layers)} on the planned device ({_ranges(self.layers)}); "
                     f"output: plan {self.output.predicted}, engine {self.output.actual or '-'}")
        if self.tensors:
            t_ok = sum(tc.match for tc in self.tensors)
            lines.append(f"tensors: {t_ok}/{len(self.tensors)} overridden tensors on the planned device")
        lines.append(f"{'device':<8} {'buffer':<8} {'plan':>12} {'engine':>12} {'deviation':>12}  status")
        for dc in self.devices:
            for bc in dc.buffers:
                dev = "-" if bc.actual is None else _mib(bc.actual - bc.predicted, signed=True)
                lines.append(f"{dc.name:<8} {bc.kind:<8} {_mib(bc.predicted):>12} "
                             f"{'-' if bc.actual is None else _mib(bc.actual):>12} {dev:>12}  {bc.status}")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings()]
        problems = self.mismatches()
        if problems:
            lines.append(f"MISMATCH: {len(problems)} difference(s) between the plan and the engine")
            lines += [f"  - {p}" for p in problems]
        else:
            lines.append("MATCH: the engine placed and sized everything as planned")
        return "\n".join(lines)


def _describe_build(build: Mapping[str, Any]) -> str:
    return (f"{build.get('flavor', '')} llama {build.get('llama_version') or '?'} / ggml "
            f"{build.get('ggml_version') or '?'} ({build.get('ggml_commit') or 'unknown commit'}), "
            f"{build.get('library') or ''}").strip()


def _mib(n: float, signed: bool = False) -> str:
    return f"{n / MIB:+.2f} MiB" if signed else f"{n / MIB:.2f} MiB"


def _range(low: float, high: float) -> str:
    return f"{_mib(low)}..{'inf' if math.isinf(high) else _mib(high)}"


def _ranges(layers: Sequence[LayerCheck]) -> str:
    """``CPU 0-1, RPC0 2-3`` from the engine's (else the plan's) layer devices."""
    parts: list[str] = []
    start = 0
    for i in range(1, len(layers) + 1):
        dev = layers[start].actual or layers[start].predicted
        if i == len(layers) or (layers[i].actual or layers[i].predicted) != dev:
            parts.append(f"{dev} {start}" + (f"-{i - 1}" if i - 1 > start else ""))
            start = i
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------


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
    from .apply import load_spec, preflight
    from .probe import probe_load

    preflight(plan)
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
