"""Load a plan through the real libllama with exactly its parameters: ``apply(plan)``.

The plan's engine arguments become a :class:`~omni_place.llama.probe.LoadSpec` (see
:func:`~omni_place.llama.plan_spec.load_spec`): ``n_gpu_layers``, ``tensor_split``, the device
list, the overrides, the context settings and the cluster's RPC servers, numbered as the cluster
numbers them.

* ``apply(plan)`` (``dry_run=True``): a no_alloc load in a child process -- placement and compute
  buffers, nothing allocated, an engine abort cannot take the caller down.
* ``apply(plan, dry_run=False)``: first the same dry run in a child (a plan the engine would
  abort on stops there, as an :class:`~omni_place.errors.EngineError`), then the real load in
  *this* process. The returned :class:`AppliedPlan` holds the engine's ``llama_model *`` and
  ``llama_context *`` for deployment scripts; free them with :meth:`AppliedPlan.close` or a
  ``with`` block.

Both return the engine's :class:`~omni_place.llama.probe.LoadReport` and the comparison with the
plan (:class:`~omni_place.llama.verify.VerifyReport`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engines.common import rpc_servers
from ..errors import EngineError
from . import bindings as b
from ._loader import load_libllama
from .logcapture import LogCapture
from .plan_spec import load_spec, preflight
from .probe import LoadReport, LoadSpec, load_in_process, probe_load
from .verify import Tolerance, VerifyReport, compare, expected_from_plan

if TYPE_CHECKING:
    from ..plan import Plan


class AppliedPlan:
    """A plan loaded by the engine: its report, the comparison with the plan and, after a real
    load, the live ``llama_model *`` / ``llama_context *`` (``model`` / ``context``; both None
    after a dry run or :meth:`close`). Use it as a context manager, or call :meth:`close`."""

    def __init__(self, plan: Plan, spec: LoadSpec, report: LoadReport, verification: VerifyReport,
                 handles: dict[str, Any] | None = None) -> None:
        self.plan = plan
        self.spec = spec
        self.report = report
        self.verification = verification
        self._handles = handles or {}

    @property
    def model(self) -> int | None:
        """``llama_model *`` (an address, what the ctypes bindings take), None when not loaded."""
        return self._handles.get("model") or None

    @property
    def context(self) -> int | None:
        """``llama_context *``, None when not loaded."""
        return self._handles.get("context") or None

    @property
    def dry_run(self) -> bool:
        return self.spec.dry_run

    @property
    def matches(self) -> bool:
        return self.verification.matches

    def close(self) -> None:
        """Free the context and the model (idempotent)."""
        handles, self._handles = self._handles, {}
        if not handles:
            return
        with LogCapture():  # the engine logs its buffer checks while freeing: keep them off stderr
            if handles.get("context"):
                b.llama_free(handles["context"])
            if handles.get("model"):
                b.llama_model_free(handles["model"])

    def __enter__(self) -> AppliedPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "dry run" if self.dry_run else ("loaded" if self.model else "closed")
        return f"<AppliedPlan {Path(self.spec.model_path).name} {state}, matches={self.matches}>"


def _engine_names(plan: Plan, library: str | None) -> dict[str, str]:
    """Cluster RPC device name -> this process's engine name for it (servers are registered once
    per process, numbered in the order they were first added)."""
    load_libllama(library)
    by_endpoint: dict[str, list[str]] = {}
    for endpoint in rpc_servers(plan.cluster.devices):
        by_endpoint[endpoint] = b.add_rpc_server(endpoint)
    out: dict[str, str] = {}
    for dev in plan.cluster.devices:
        if dev.kind == "rpc" and dev.endpoint in by_endpoint and by_endpoint[dev.endpoint]:
            out[dev.name] = by_endpoint[dev.endpoint].pop(0)
    return out


def apply(plan: Plan, *, dry_run: bool = True, library: str | None = None, load_mode: str | None = None,
          n_threads: int | None = None, timeout: float = 600, check_first: bool = True,
          tolerance: Tolerance | None = None) -> AppliedPlan:
    """Load ``plan`` through libllama with exactly its parameters; see the module docstring.

    ``library`` is a libllama file or folder (default: the usual search). ``load_mode`` is the
    engine's (``None``: mmap for a real load, none for a dry run). ``check_first=False`` skips the
    contained dry run before a real in-process load (only for plans known to load).

    Raises EngineError when the engine cannot load the plan (the message is the engine's),
    InvalidArgumentError for another engine's plan or a missing model file.
    """
    preflight(plan, dry_run=dry_run)
    expected = expected_from_plan(plan)
    spec = load_spec(plan, dry_run=True, n_threads=n_threads)
    if dry_run or check_first:
        report = probe_load(spec, timeout=timeout, library=library)
        if not report.ok:
            raise EngineError(f"the engine cannot load this plan: {report.error}",
                              hint="`omni-place verify MODEL --plan plan.json --dry-run` shows the whole comparison")
        if dry_run:
            return AppliedPlan(plan, spec, report, compare(expected, report, plan.cluster, tolerance))
    names = _engine_names(plan, library)
    spec = load_spec(plan, dry_run=False, load_mode=load_mode, n_threads=n_threads, names=names,
                     explicit_devices=True)
    handles: dict[str, Any] = {}
    report = load_in_process(spec, library, handles=handles)
    if not report.ok:
        raise EngineError(f"the engine cannot load this plan: {report.error}")
    return AppliedPlan(plan, spec, report, compare(expected, report, plan.cluster, tolerance), handles)


__all__ = ["AppliedPlan", "apply"]
