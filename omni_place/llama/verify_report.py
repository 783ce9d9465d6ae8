"""What verification reports: per layer, per overridden tensor and per device buffer, the plan's
prediction next to what the engine did, under the one :class:`Tolerance` table."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import EngineMismatchError, InvalidArgumentError
from ..termtext import printable
from ..units import MiB
from .logcapture import MIB_PRINT_TOLERANCE_BYTES
from .probe import LoadReport

KINDS = ("model", "kv", "compute")
"""Buffer kinds compared per device: plan weights/kv/compute vs engine model/KV(+RS)/compute(+output)."""


# ---------------------------------------------------------------------------------------------
# Tolerances: the one place they are decided
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """How far engine bytes may be from the plan's before it is a mismatch.

    * **model and KV buffers** (exact formulas in :mod:`omni_place.model`): the engine's bytes
      must be within ``max(rel * predicted, abs_bytes)`` of the prediction -- by default
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
    abs_bytes: int = 16 * MiB
    compute_under_bytes: int = 1 * MiB
    compute_over_factor: float = 2.5
    compute_over_bytes: int = 1 * MiB

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
        """Raise :class:`EngineMismatchError` (CLI exit 4) unless everything matched; a load that
        could not even be attempted here (no libllama, a device this machine lacks) is bad input
        or environment, :class:`InvalidArgumentError` (exit 2), not a disagreement."""
        if self.load is not None and self.load.error_kind == "input":
            raise InvalidArgumentError(f"cannot load the plan on this machine: {self.error or self.load.error}",
                                       hint="verify where the plan's devices and a libllama are present "
                                       "(`omni-place env` shows what this machine has)")
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
        return "\n".join(printable(line) for line in lines)  # paths, tensor and device names from files


def _describe_build(build: Mapping[str, Any]) -> str:
    return (f"{build.get('flavor', '')} llama {build.get('llama_version') or '?'} / ggml "
            f"{build.get('ggml_version') or '?'} ({build.get('ggml_commit') or 'unknown commit'}), "
            f"{build.get('library') or ''}").strip()


def _mib(n: float, signed: bool = False) -> str:
    return f"{n / MiB:+.2f} MiB" if signed else f"{n / MiB:.2f} MiB"


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
