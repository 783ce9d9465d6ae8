"""This machine's calibrated speed parameters, stored per machine and engine.

``omni-place calibrate`` (:mod:`omni_place.bench.calibrate`) writes them as JSON under
``$OMNI_PLACE_CONFIG/calibration/`` (or ``$XDG_CONFIG_HOME/omni_place/calibration/``), one file per
machine id with one :class:`~omni_place.cost.SpeedParams` per engine; plans read them through
:func:`load_calibrated`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from .cost import SpeedParams
from .devices import Cluster

SCHEMA = "omni_place.calibration/1"



def config_dir() -> Path:
    base = os.environ.get("OMNI_PLACE_CONFIG")
    root = Path(base) if base else Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "omni_place"
    return root / "calibration"


def machine_id(cluster: Cluster | str) -> str:
    """A file-name-safe id of a machine: the cluster's name (cluster files and presets name the
    machine; discovery names it after the host)."""
    name = getattr(cluster, "name", None) or str(cluster)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "machine"


def save_calibration(machine: str, per_engine: dict[str, SpeedParams], meta: dict[str, Any] | None = None,
                     path: Path | None = None) -> Path:
    """Write ``{engine: SpeedParams}`` for a machine; returns the file."""
    path = path or config_dir() / f"{machine}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "machine": machine,
           "engines": {e: dataclasses.asdict(p) for e, p in per_engine.items()}, **(meta or {})}
    path.write_text(json.dumps(doc, indent=1))
    return path


def load_calibration(machine: str, engine: str = "llama.cpp", path: Path | None = None) -> SpeedParams | None:
    path = path or config_dir() / f"{machine}.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        d = doc["engines"][engine]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    known = {f.name for f in dataclasses.fields(SpeedParams)}
    return SpeedParams(**{k: v for k, v in d.items() if k in known})


def load_calibrated(cluster: Cluster, engine: str = "llama.cpp") -> SpeedParams | None:
    """The calibrated SpeedParams of this cluster's machine for ``engine``, or None."""
    return load_calibration(machine_id(cluster), engine)


__all__ = ["SCHEMA", "config_dir", "load_calibrated", "load_calibration", "machine_id", "save_calibration"]
