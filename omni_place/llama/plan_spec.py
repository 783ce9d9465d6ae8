"""A plan's engine arguments as a :class:`~omni_place.llama.probe.LoadSpec`, and the checks
before the engine is asked to load it; what both :func:`~omni_place.llama.applied.apply` and
:func:`~omni_place.llama.verify.verify_plan` load.

The plan's engine arguments become a :class:`~omni_place.llama.probe.LoadSpec`: ``n_gpu_layers``,
``tensor_split`` (padded to 16 floats, what ``llama_model_params.tensor_split`` must point to), the
device list in plan order when the plan sets one (``-dev``), the overrides (``-ot``) with each
target looked up as a device, the context settings (``-c``, ``-ub``, ``-ctk``/``-ctv``, ``-fa``),
and the cluster's RPC servers, added in ``RPC0, RPC1, ...`` order so the engine numbers them as
the cluster does.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..engines.common import rpc_servers
from ..errors import InvalidArgumentError
from .probe import LoadSpec
from .rpc import check_rpc_server

if TYPE_CHECKING:
    from ..plan import Plan

TENSOR_SPLIT_FLOATS = 16
"""llama_max_devices() of the supported builds: tensor_split must point to this many floats."""


def preflight(plan: Plan) -> None:
    """Refuse, with one line and a hint, what cannot be loaded: another engine's plan, a missing
    model file, an RPC server that does not answer (ggml would abort on it)."""
    if not plan.dialect.traits.libllama:
        raise InvalidArgumentError(
            f"this plan is for {plan.engine}; omni-place loads plans through mainline libllama (llama.cpp)",
            hint="plan with --engine llama.cpp to verify through the engine",
        )
    path = Path(plan.model.path)
    if not path.is_file():
        raise InvalidArgumentError(f"model file not found: {path}", hint="verify needs the model's weights on disk")
    for endpoint in rpc_servers(plan.cluster.devices):
        check_rpc_server(endpoint)


def _target(target: str, names: Mapping[str, str]) -> str:
    return names.get(target, target)


def load_spec(plan: Plan, *, dry_run: bool = True, load_mode: str | None = None, n_threads: int | None = None,
              names: Mapping[str, str] | None = None, explicit_devices: bool = False) -> LoadSpec:
    """The :class:`LoadSpec` that loads ``plan`` with exactly its parameters.

    ``names`` maps cluster device names to the engine's when they differ (an engine that already
    registered other RPC servers numbers them differently); ``explicit_devices`` passes the plan's
    device order even where the flags leave it to the engine's default (the same order in a
    fresh engine process).
    """
    ea = plan.engine_args
    names = dict(names or {})
    order = list(ea.devices) or (list(plan.default_order) if explicit_devices else [])
    split = [float(x) for x in ea.tensor_split or []]
    if split:
        split += [0.0] * max(0, TENSOR_SPLIT_FLOATS - len(split))
    c = plan.context
    return LoadSpec(
        model_path=str(plan.model.path),
        n_gpu_layers=int(ea.n_gpu_layers),
        tensor_split=split or None,
        devices=[_target(n, names) for n in order] if order else None,
        overrides=[(p, _target(t, names)) for p, t in ea.overrides],
        rpc_servers=rpc_servers(plan.cluster.devices),
        n_ctx=int(c.ctx),
        n_ubatch=int(c.n_ubatch),
        n_seq_max=int(getattr(c, "n_seq", 1)),
        type_k=c.type_k,
        type_v=c.type_v,
        flash_attn="on" if c.flash_attn else "off",
        swa_full=bool(getattr(c, "swa_full", False)),
        dry_run=dry_run,
        load_mode=load_mode,
        n_threads=n_threads,
    )


__all__ = ["TENSOR_SPLIT_FLOATS", "load_spec", "preflight"]
