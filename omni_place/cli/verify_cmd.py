"""`omni-place verify MODEL --plan plan.json`: load a saved plan through the real libllama and
compare, layer by layer, tensor by tensor and buffer by buffer, what the plan predicted with what
the engine did. Exit 0 when everything matches, 4 when the engine disagrees, 2 on bad input.

:func:`verify_and_emit` is the same comparison for a :class:`~omni_place.plan.Plan` in hand
(what ``omni-place plan ... --verify`` runs).
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import click

from ..engines import DIALECTS
from ..errors import ClusterError, InvalidArgumentError
from ..hparams import MAX_CONTEXT
from ..validate import decode_text, dump_json, integer, load_json, read_file, show, text
from . import cli
from .params import FiniteFloat

_PLAN_HINT = "pass the output of `omni-place plan ... --format json`"
MAX_PLAN_BYTES = 1 << 24  # a plan of 512 layers on 64 devices is well under 1 MiB
MAX_BYTES = 1 << 62


def read_plan_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A plan JSON (``Plan.to_dict()``, ``omni-place plan --format json``), every key verify
    reads checked for type and range: a regular file of at most MAX_PLAN_BYTES (a FIFO or
    ``/dev/zero`` is refused without blocking), strict JSON (no NaN/Infinity, ``1e400`` or
    400-digit numbers, bounded nesting)."""
    p = Path(path)
    bad = partial(InvalidArgumentError, hint=_PLAN_HINT)

    def plan_error(message: str) -> InvalidArgumentError:
        return bad(f"{p}: {message}")

    raw = read_file(p, limit=MAX_PLAN_BYTES, what="plan file",
                    error=partial(InvalidArgumentError,
                                  hint="write one with `omni-place plan MODEL ... --format json > plan.json`"))
    data = load_json(decode_text(raw, f"plan file {p}", error=bad), f"plan file {p}", error=bad)
    if not isinstance(data, dict):
        raise bad(f"{p} is not a plan (a JSON object)")
    missing = [k for k in ("engine", "model", "args") if k not in data]
    if missing:
        raise bad(f"{p} is not a plan: no {', '.join(missing)}")
    text(data["engine"], "engine", max_len=64, error=plan_error)
    text(data["model"], "model", error=plan_error)
    _strings(data["args"], "args", plan_error)
    for key in ("architecture", "cluster", "output_device"):
        if data.get(key) is not None:
            text(data[key], key, max_len=4096, error=plan_error)
    if data.get("ctx") is not None:
        integer(data["ctx"], "ctx", lo=1, hi=MAX_CONTEXT, error=plan_error)
    if "device_order" in data:
        _strings(data["device_order"], "device_order", plan_error)
    for key, fields in (("layers", {"device": str}),
                        ("devices", {"name": str, "weights_bytes": int, "kv_bytes": int, "compute_bytes": int})):
        if key not in data:
            continue
        if not isinstance(data[key], list):
            raise plan_error(f"{key} must be a list (got {show(data[key])})")
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise plan_error(f"{key}[{i}] must be an object (got {show(entry)})")
            for name, kind in fields.items():
                if entry.get(name) is None:
                    continue
                if kind is str:
                    text(entry[name], f"{key}[{i}].{name}", max_len=4096, error=plan_error)
                else:
                    integer(entry[name], f"{key}[{i}].{name}", lo=0, hi=MAX_BYTES, error=plan_error)
    return data


def _strings(value: Any, name: str, error: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise error(f"{name} must be a list of strings (got {show(value)})")


def _same_model(data: dict[str, Any], model_path: Path, profile: Any) -> bool:
    planned = Path(str(data["model"]))
    try:
        if planned.exists() and os.path.samefile(planned, model_path):
            return True
    except OSError:
        pass
    # a moved or copied file: same name, architecture and layer count
    layers = data.get("layers")
    return (planned.name == model_path.name and data.get("architecture") == profile.architecture
            and (not isinstance(layers, list) or len(layers) == profile.n_layer))


def _cluster_for(data: dict[str, Any], cluster_file: str | None, preset: str | None) -> str:
    from ..devices import list_presets

    if cluster_file and preset:
        raise InvalidArgumentError("--cluster and --preset are exclusive", hint="give one of them")
    if cluster_file or preset:
        return str(cluster_file or preset)
    named = data.get("cluster")
    return named if isinstance(named, str) and named in list_presets() else "auto"


def plan_from_json(data: dict[str, Any], model: str, cluster: str, source: str = "plan.json") -> tuple[Any, Any]:
    """(Plan, Expected): the plan rebuilt from the JSON's flags on ``cluster`` (the single source
    of what the engine is asked to do) and the prediction the JSON states. Refuses a plan for
    another model or engine (InvalidArgumentError, exit 2)."""
    from ..devices import resolve_cluster
    from ..llama.verify import expected_from_json
    from ..model import load_model
    from ..plan import evaluate

    verifiable = [name for name, d in DIALECTS.items() if d.traits.libllama]
    if data["engine"] not in verifiable:
        raise InvalidArgumentError(
            f"{source} is a plan for {data['engine']}; verify loads {', '.join(verifiable)} plans "
            "through libllama",
            hint=f"plan with --engine {verifiable[0]} to verify it through the engine")
    model_path = Path(model)
    if not model_path.is_file():
        raise InvalidArgumentError(f"model file not found: {model}", hint="verify needs the model's weights on disk")
    profile = load_model(model_path)
    if not _same_model(data, model_path, profile):
        raise InvalidArgumentError(f"{source} is a plan for {data['model']}, not {model}",
                                   hint=f"plan this model first: omni-place plan {model} ... --format json")
    clus = resolve_cluster(cluster)
    names = {d.name for d in clus.devices}
    planned = [str(d.get("name")) for d in data.get("devices") or [] if isinstance(d, dict)]
    missing = [n for n in planned if n not in names]
    if missing:
        raise ClusterError(
            f"{source} places the model on {show(', '.join(missing), 200)}, which cluster {clus.name!r} does not have "
            f"(devices: {', '.join(sorted(names))})",
            hint="pass the cluster the plan was made for with --cluster FILE or --preset NAME")
    ctx = data.get("ctx")
    plan = evaluate(profile, clus, list(data["args"]), ctx=ctx, engine=data["engine"])
    return plan, expected_from_json(data, plan)


def emit(report: Any, fmt: str, plan: Any = None) -> None:
    """Print a VerifyReport as text or JSON (with ``plan``: one JSON document holding both)."""
    if fmt == "json":
        doc = report.to_dict()
        if plan is not None:
            doc = {"plan": plan.to_dict(), "verify": doc}
        click.echo(dump_json(doc, indent=1))
    else:
        click.echo(report.to_text())


def verify_and_emit(plan: Any, fmt: str = "text", *, dry_run: bool = False, library: str | None = None,
                    timeout: float = 600, include_plan: bool = False) -> int:
    """Load ``plan`` through libllama, print the comparison (``fmt`` "json" or anything else for
    text; ``include_plan`` puts the plan into the same JSON document) and return 0 when the engine
    agrees. A disagreement raises EngineMismatchError (the CLI exits 4 with a one-line summary)."""
    from ..llama.verify import verify_plan

    report = verify_plan(plan, dry_run=dry_run, library=library, timeout=timeout)
    emit(report, fmt, plan if include_plan else None)
    report.raise_for_mismatch()
    return 0


@cli.command("verify")
@click.argument("model")
@click.option("--plan", "plan_file", required=True, type=click.Path(dir_okay=False),
              help="A plan JSON from `omni-place plan MODEL ... --format json`.")
@click.option("--cluster", "cluster_file", type=click.Path(dir_okay=False),
              help="The cluster TOML file the plan was made for (RPC endpoints come from it).")
@click.option("--preset", help="The shipped cluster preset the plan was made for.")
@click.option("--dry-run", is_flag=True,
              help="Size buffers without allocating (no_alloc): checks placement and compute buffers only.")
@click.option("--library", help="libllama file or folder (default: OMNI_PLACE_LIBLLAMA, then llama-cpp-python).")
@click.option("--timeout", type=FiniteFloat(1, 86400), default=600, show_default=True,
              help="Seconds the engine may take to load.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def verify_cmd(model: str, plan_file: str, cluster_file: str | None, preset: str | None, dry_run: bool,
               library: str | None, timeout: float, fmt: str) -> None:
    """Load MODEL with exactly the placement in --plan through your libllama and compare, side by
    side, the plan's prediction with what the engine did: the device of every layer and of every
    overridden tensor, and each device's model / KV / compute buffer bytes.

    The cluster defaults to the plan's preset if it names one, else this machine; RPC servers of
    the cluster must be running (`omni-place rpc-server`). A real load reads the weights (with
    load_mode none, so CPU bytes are exact); --dry-run allocates nothing.

    Exit codes: 0 the engine agrees, 4 it disagrees (every difference is listed), 2 bad input.

    \b
    Example:
      omni-place plan model.gguf --cluster rig.toml --format json > plan.json
      omni-place verify model.gguf --plan plan.json --cluster rig.toml
    """
    from ..llama.verify import verify_plan

    data = read_plan_json(plan_file)
    plan, expected = plan_from_json(data, model, _cluster_for(data, cluster_file, preset), Path(plan_file).name)
    report = verify_plan(plan, dry_run=dry_run, library=library, timeout=timeout, expected=expected)
    emit(report, fmt)
    report.raise_for_mismatch()


__all__ = ["emit", "plan_from_json", "read_plan_json", "verify_and_emit", "verify_cmd"]
