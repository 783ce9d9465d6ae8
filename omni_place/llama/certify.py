"""Certify a plan with the engine itself, and tighten it: the engine's no-alloc dry run of the
chosen plan (a child process; nothing is allocated or read, so it costs no VRAM and takes about a
second) gives every device's real compute buffer. Where the estimate was off, the device's memory
is corrected by the difference and the plan is solved again (:func:`omni_place.plan.replan`):
slack beyond the margin goes to more layers or experts, an overflow backs off. At most
``max_runs`` dry runs; the result says what the engine measured for the plan it returns.

It runs only where the plan can load: a libllama that verifies this engine's plans and the
plan's devices present (the engine places every layer where the plan does). Otherwise the plan
comes back unchanged, with ``certified["status"] == "skipped"`` and the reason. A header-only
model is dry-run from a sparse copy (:func:`omni_place.gguf_write.sparse_copy`).
"""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..cost import CostModel, placement_from_counts
from ..errors import OmniPlaceError
from ..gguf import read_model_files
from ..gguf_write import has_tensor_data, sparse_copy
from ..model import load_model
from ..plan import Plan, replan
from ..splitcost import cost_model
from ..units import MiB
from ._abi import get_abi
from ._loader import load_libllama
from .plan_spec import absent_devices
from .verify import VerifyReport, verify_plan

MAX_RUNS = 4
SLACK_UNIT = 64 * MiB  # the slack worth another dry run when the model has no repeating layer


def _compute_by_device(report: VerifyReport) -> dict[str, int]:
    return {d.name: b.actual for d in report.devices for b in d.buffers if b.kind == "compute" and b.actual is not None}


def _skipped(plan: Plan, reason: str) -> Plan:
    return replace(plan, certified={"status": "skipped", "reason": reason})


def certify(plan: Plan, *, library: str | None = None, max_runs: int = MAX_RUNS, timeout: float = 300) -> Plan:
    """``plan`` (or a tighter one) with ``certified`` set: per device, the engine's compute
    buffer and the free memory it leaves; see the module doc."""
    if not plan.dialect.traits.libllama:
        return _skipped(plan, f"this libllama loads llama.cpp plans, not {plan.engine}")
    if plan.context.split_mode != "layer":  # see plan_spec.preflight
        return _skipped(plan, f"under -sm {plan.context.split_mode} the engine reports one Meta() buffer, not each "
                              "device's")
    absent = absent_devices(plan, library)
    if absent:
        return _skipped(plan, absent)
    try:
        build = get_abi(load_libllama(library)).build.describe()
    except OmniPlaceError as err:
        return _skipped(plan, f"no libllama: {err}")
    files = read_model_files(plan.model.path)
    with tempfile.TemporaryDirectory(prefix="omni_place_certify_") as tmp:
        dry_model = plan.model if has_tensor_data(files) else load_model(sparse_copy(files, Path(tmp)))
        delta: dict[str, int] = {}
        runs: list[dict[str, Any]] = []
        best: tuple[Plan, dict[str, int], dict[str, int]] | None = None  # plan, engine, estimate

        def measure(candidate: Plan) -> tuple[dict[str, int], str | None]:
            try:
                report = verify_plan(replace(candidate, model=dry_model), dry_run=True, library=library,
                                     timeout=timeout)
            except OmniPlaceError as err:  # e.g. the probe placement names a GPU that is not here
                return {}, err.message
            if report.error:
                return {}, f"the engine's dry run failed: {report.error}"
            moved = [c for c in report.layers if not c.match]
            if moved:
                return {}, (f"the plan's devices are not all present here (layer {moved[0].layer}: plan "
                            f"{moved[0].predicted}, engine {moved[0].actual})")
            return _compute_by_device(report), None

        backoff: dict[str, int] = {}

        def correct(candidate: Plan, measured: dict[str, int]) -> None:
            # move each accelerator's memory by what the estimate got wrong there in the last
            # measured placement (an over-prediction gives room, an under-prediction takes it),
            # less what overflowed before
            for u in candidate.usage:
                if u.kind != "cpu" and u.name in measured:
                    delta[u.name] = u.compute_bytes - measured[u.name] - backoff.get(u.name, 0)

        # slack below the smallest layer is not worth another dry run
        cost = cost_model(plan.model, plan.cluster, plan.context, plan.params)
        step = min((lc.dense["cpu"] + kv for lc, kv in zip(plan.model.layers, cost.kv) if not lc.is_nextn),
                   default=SLACK_UNIT)
        current = plan
        probe = _probe_plan(plan, cost)
        if probe is not None:  # accelerators the plan leaves empty: size their buffers first
            measured, why = measure(probe)
            if why:
                return _skipped(plan, why)
            runs.append({"probe": True, "compute_bytes": measured})
            correct(probe, measured)
            current = replan(plan, delta)
        while len(runs) < max_runs:
            measured, why = measure(current)
            if why:
                return _skipped(plan, why)
            usage = [replace(u, compute_bytes=measured.get(u.name, u.compute_bytes)) for u in current.usage]
            free = {u.name: u.headroom_bytes for u in usage}
            runs.append({"compute_bytes": measured, "free_bytes": free})
            fits = all(u.fits for u in usage)
            if fits:
                estimated = {u.name: u.compute_bytes for u in current.usage}
                best = (replace(current, usage=usage), measured, estimated)
            busy = [u for u in usage if u.kind != "cpu" and (u.n_layers or u.holds_output)]
            if fits and all(free[u.name] < step for u in busy):
                break
            for u in usage:
                if u.kind != "cpu" and not u.fits:
                    backoff[u.name] = backoff.get(u.name, 0) + u.shortfall_bytes + MiB
            correct(current, measured)
            candidate = replan(plan, delta)
            if candidate.placement == current.placement and fits:
                break
            current = candidate
    if best is None:
        return _skipped(plan, f"no plan the engine sized fit in {len(runs)} dry runs")
    final, measured, estimated = best
    return replace(final, model=plan.model, certified={
        "status": "certified", "by": build, "dry_runs": len(runs),
        "devices": {u.name: {"compute_estimated_bytes": estimated.get(u.name),
                             "compute_engine_bytes": measured.get(u.name), "free_bytes": u.free_bytes}
                    for u in final.usage},
        "runs": runs})


def _probe_plan(plan: Plan, cost: CostModel) -> Plan | None:
    """A placement that puts layers on every accelerator the plan leaves empty (the layers
    split evenly over all accelerators, the output on the last), priced but not meant to fit:
    a no-alloc dry run sizes its compute buffers without allocating them. None when the plan
    already uses every accelerator."""
    accel = [d.name for d in plan.cluster.gpus]
    p = plan.placement
    if not accel or all(n in p.layer_home or n == p.output for n in accel):
        return None
    n = plan.model.n_layer
    counts = [n // len(accel) + (i < n % len(accel)) for i in range(len(accel))]
    probe = placement_from_counts(plan.model, accel, 0, counts)
    usage = cost.usage(probe)
    return replace(plan, placement=probe, usage=usage,
                   engine_args=plan.dialect.encode(plan.model, probe, plan.cluster, plan.context, usage))


__all__ = ["MAX_RUNS", "certify"]
