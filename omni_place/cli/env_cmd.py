"""`omni-place env`: everything a bug report needs, in one paste (like `hf env`)."""
from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from typing import Any

import click

from .. import __version__
from ..termtext import printable
from . import cli

GIB = 1 << 30
PACKAGES = ("click", "gguf", "numpy", "nvidia-ml-py", "llama_cpp_python")


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _core() -> str:
    try:
        from .. import _core

        return f"ok ({os.path.basename(_core.__file__ or '?')})"
    except ImportError as err:  # the wheel was not built: say so rather than fail
        return f"missing ({err})"


def _libllama() -> dict[str, Any]:
    from ..errors import OmniPlaceError
    from ..llama import ENV_VAR, build_info

    out: dict[str, Any] = {ENV_VAR: os.environ.get(ENV_VAR)}
    try:
        build = build_info()
    except OmniPlaceError as err:
        out.update(found=False, error=err.message, hint=err.hint)
    else:
        out.update(found=True, build=build.describe(), system_info=build.system_info)
    return out


def _devices() -> dict[str, Any]:
    from ..devices import discover

    cluster = discover()
    devices = []
    for d in cluster.devices:
        devices.append({
            "name": d.name, "kind": d.kind, "model": d.model,
            "memory_gib": round(d.memory_bytes / GIB, 2), "bandwidth_gbs": d.bandwidth_gbs,
            "catalog_match": d.model if d.source.get("bandwidth") == "catalog" else None,
            "source": dict(d.source),
        })
    return {"devices": devices, "notes": list(cluster.notes)}


def collect() -> dict[str, Any]:
    """The environment report as JSON-ready data."""
    from ..reference_models import REFERENCE_MODELS, cache_dir

    return {
        "omni_place": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {p: _package_version(p) for p in PACKAGES},
        "c_core": _core(),
        "libllama": _libllama(),
        **_devices(),
        "reference_models": list(REFERENCE_MODELS),
        "reference_cache": str(cache_dir()),
        "env": {k: v for k, v in sorted(os.environ.items())
                if k.startswith(("OMNI_PLACE_", "LLAMA_ARG_", "GGML_", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"))},
    }


@cli.command("env")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def env_cmd(fmt: str) -> None:
    """Versions, the libllama found, the GPUs and their catalog matches: paste this into bug
    reports. Never fails for a missing GPU, driver or libllama (it says so instead)."""
    info = collect()
    if fmt == "json":
        click.echo(json.dumps(info, indent=1))
        return
    lines = [
        f"omni-place {info['omni_place']} (python {info['python']}, {info['platform']}, {info['cpu_count']} CPUs)",
        f"executable: {info['executable']}",
        "packages: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in info["packages"].items()),
        f"C core: {info['c_core']}",
    ]
    lib = info["libllama"]
    lines.append(f"libllama: {lib['build']}" if lib["found"] else f"libllama: not found ({lib['error']})")
    lines.append("devices:")
    for d in info["devices"]:
        match = f", catalog: {d['catalog_match']}" if d["catalog_match"] else ""
        lines.append(f"  {d['name']:<6} {d['kind']:<4} {d['model'] or '-'}  {d['memory_gib']:.1f} GiB, "
                     f"{d['bandwidth_gbs']:.0f} GB/s{match}")
    lines += [f"  note: {n}" for n in info["notes"]]
    lines.append("reference models: " + ", ".join(info["reference_models"]) + f" (cache {info['reference_cache']})")
    if info["env"]:
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in info["env"].items()))
    click.echo("\n".join(printable(line) for line in lines))  # paths and variables may hold anything
