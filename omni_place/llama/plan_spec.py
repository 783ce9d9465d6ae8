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

from ..devices.nvml import discover_gpus
from ..engines.common import rpc_servers
from ..errors import InvalidArgumentError, OmniPlaceError
from ..gguf import read_model_files
from ..gguf_write import has_tensor_data
from .probe import LoadSpec
from .rpc import check_rpc_server
from .spec import split_mode_number

if TYPE_CHECKING:
    from ..plan import Plan

TENSOR_SPLIT_FLOATS = 16
"""llama_max_devices() of the supported builds: tensor_split must point to this many floats."""


def preflight(plan: Plan, *, dry_run: bool = True) -> None:
    """Refuse, with one line and a hint (exit 2), what cannot be loaded here: another engine's
    plan, a missing model file, a header-only file for a real load (``dry_run=False``), a GPU
    this machine lacks, an RPC server that does not answer (ggml would abort on it)."""
    if not plan.dialect.traits.libllama:
        raise InvalidArgumentError(
            f"this plan is for {plan.engine}; omni-place loads plans through mainline libllama (llama.cpp)",
            hint="plan with --engine llama.cpp to verify through the engine",
        )
    if plan.context.split_mode != "layer":
        raise InvalidArgumentError(
            f"verify compares each device's buffers with the plan; under -sm {plan.context.split_mode} the engine "
            "reports one Meta() buffer for all devices (the largest device's slice), not each device's",
            hint="tests/test_split_modes.py checks the tensor split's bytes against the engine")
    path = Path(plan.model.path)
    if not path.is_file():
        raise InvalidArgumentError(f"model file not found: {path}", hint="verify needs the model's weights on disk")
    if not dry_run and not has_tensor_data(read_model_files(path)):
        raise InvalidArgumentError(f"{path} is a header-only GGUF (no tensor data): a real load needs the weights",
                                   hint="use --dry-run (no_alloc: placement and compute buffers), or the full model")
    absent = absent_devices(plan)
    if absent:
        raise InvalidArgumentError(f"cannot load the plan here: {absent}",
                                   hint="verify on the machine the plan is for (`omni-place devices` lists this one's)")


def absent_devices(plan: Plan, library: str | None = None) -> str | None:
    """Why the plan's devices are not all here (None when they are): a GPU index NVML does not
    list on this machine, or an RPC server that does not answer."""
    p = plan.placement
    used = [n for n in p.order if n in p.layer_home or n == p.output]
    gpus = [plan.cluster.by_name(n) for n in used if plan.cluster.by_name(n).kind == "gpu"]
    if gpus:
        here = {d.name for d in discover_gpus()[0]}
        missing = [d.name for d in gpus if d.name not in here]
        if missing:
            return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on this machine"
    for endpoint in rpc_servers(plan.cluster.devices):
        try:
            check_rpc_server(endpoint, library)
        except OmniPlaceError as err:
            return f"RPC server {endpoint} is not usable: {err.message}"
    return None


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
    # -dev none (common/arg.cpp parse_device_list): a device list holding only the terminator
    devices = [] if order == ["none"] else ([_target(n, names) for n in order] if order else None)
    split = [float(x) for x in ea.tensor_split or []]
    if split:
        split += [0.0] * max(0, TENSOR_SPLIT_FLOATS - len(split))
    c = plan.context
    return LoadSpec(
        model_path=str(plan.model.path),
        n_gpu_layers=int(ea.n_gpu_layers),
        tensor_split=split or None,
        devices=devices,
        overrides=[(p, _target(t, names)) for p, t in ea.overrides],
        rpc_servers=rpc_servers(plan.cluster.devices),
        n_ctx=int(c.ctx),
        n_ubatch=int(c.n_ubatch),
        n_seq_max=int(getattr(c, "n_seq", 1)),
        type_k=c.type_k,
        type_v=c.type_v,
        flash_attn="on" if c.flash_attn else "off",
        swa_full=bool(getattr(c, "swa_full", False)),
        op_offload=bool(getattr(c, "op_offload", True)),
        split_mode=split_mode_number(c.split_mode),
        dry_run=dry_run,
        load_mode=load_mode,
        n_threads=n_threads,
    )


__all__ = ["TENSOR_SPLIT_FLOATS", "absent_devices", "load_spec", "preflight"]
