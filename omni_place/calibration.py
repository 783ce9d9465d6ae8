"""This machine's calibrated speed parameters, stored per machine and engine.

``omni-place calibrate`` (:mod:`omni_place.bench.calibrate`) writes them as JSON under
``$OMNI_PLACE_CONFIG/calibration/`` (or ``$XDG_CONFIG_HOME/omni_place/calibration/``), one file per
machine id with one :class:`~omni_place.cost.SpeedParams` per engine; plans read them through
:func:`read_calibrated`. A store that cannot be used (a corrupt or foreign file, a value that is
not a finite positive number) is ignored with a note in the plan naming the file, so one bad file
never breaks every later plan.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from .cost import SpeedParams
from .devices import Cluster
from .errors import InvalidArgumentError
from .safeio import write_atomic
from .validate import decode_text, dump_json, integer, load_json, number, read_file, safe_file_name, show

# /2: the GPU efficiencies became scales on the catalog's per-compute-capability shares
# /3: cpu_tflops_per_core became the CPU's dense rate, routed experts at cpu_moe_compute_eff of it
SCHEMA = "omni_place.calibration/3"
MAX_STORE_BYTES = 1 << 22  # a store holds a few numbers per engine and the fit report


def config_dir() -> Path:
    base = os.environ.get("OMNI_PLACE_CONFIG")
    root = Path(base) if base else Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "omni_place"
    return root / "calibration"


def machine_id(cluster: Cluster | str) -> str:
    """A file-name-safe id of a machine: the cluster's name (cluster files and presets name the
    machine; discovery names it after the host), with unsafe characters replaced and a long name
    shortened (plus a hash of the whole), so any name is one path component under config_dir()."""
    name = getattr(cluster, "name", None) or str(cluster)
    return safe_file_name(name, "machine")


def store_path(machine: str) -> Path:
    """The store file of a machine id (sanitized again: callers may pass any string)."""
    return config_dir() / f"{safe_file_name(machine, 'machine')}.json"


def save_calibration(machine: str, per_engine: dict[str, SpeedParams], meta: dict[str, Any] | None = None,
                     path: Path | None = None) -> Path:
    """Write ``{engine: SpeedParams}`` for a machine; returns the file. The file is replaced
    atomically (a temporary file beside it, then a rename), so a reader never sees half of it."""
    path = path or store_path(machine)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {"schema": SCHEMA, "machine": machine,
           "engines": {e: dataclasses.asdict(p) for e, p in per_engine.items()}, **(meta or {})}
    text = dump_json(doc, indent=1)
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _params(d: Any, where: str) -> SpeedParams:
    """SpeedParams from a stored mapping: known fields only, each finite and positive."""
    if not isinstance(d, dict):
        raise InvalidArgumentError(f"{where} is not an object of parameters")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(SpeedParams):
        if f.name not in d:
            continue
        if f.type in (int, "int"):
            values[f.name] = integer(d[f.name], f"{where}.{f.name}", lo=1, hi=1 << 20)
        else:
            values[f.name] = number(d[f.name], f"{where}.{f.name}", lo=0.0, lo_open=True, hi=1e6)
    return SpeedParams(**values)


def checked_params(params: Any, where: str = "params") -> SpeedParams:
    """``params`` if it is a SpeedParams whose every field is finite and positive (an API caller's
    NaN efficiency would otherwise become an Infinity tok/s in the plan)."""
    if not isinstance(params, SpeedParams):
        raise InvalidArgumentError(f"{where} must be a SpeedParams (got {show(params)})")
    return _params(dataclasses.asdict(params), where)


def read_calibration(machine: str, engine: str = "llama.cpp",
                     path: Path | None = None) -> tuple[SpeedParams | None, str | None]:
    """(params, problem): the stored SpeedParams of ``machine`` for ``engine`` (None when none
    is stored), and a one-line note when a store exists but is unusable (not a regular file,
    too large, binary, not JSON, wrong schema, a value that is not a finite positive number).
    An unusable store is ignored, never fatal: it must not break every later plan."""
    path = path or store_path(machine)
    if not os.path.lexists(path):
        return None, None
    try:
        doc = load_json(decode_text(read_file(path, limit=MAX_STORE_BYTES, what="saved calibration"),
                                    f"saved calibration {path}"), f"saved calibration {path}")
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("engines"), dict):
            raise InvalidArgumentError(f"saved calibration {path} is not an {SCHEMA} file")
        if engine not in doc["engines"]:
            return None, None
        return _params(doc["engines"][engine], f"saved calibration {path}: engines.{engine}"), None
    except InvalidArgumentError as err:
        return None, (f"ignored: {err.message}; delete it or run `omni-place calibrate` again "
                      "(speeds use the defaults)")


def load_calibration(machine: str, engine: str = "llama.cpp", path: Path | None = None) -> SpeedParams | None:
    """The stored SpeedParams of ``machine`` for ``engine``; None when none is stored or the
    store is unusable (:func:`read_calibration` says why)."""
    return read_calibration(machine, engine, path)[0]


def read_calibrated(cluster: Cluster, engine: str = "llama.cpp") -> tuple[SpeedParams | None, str | None]:
    """:func:`read_calibration` for this cluster's machine: (params or None, problem note or None)."""
    return read_calibration(machine_id(cluster), engine)


def load_calibrated(cluster: Cluster, engine: str = "llama.cpp") -> SpeedParams | None:
    """The calibrated SpeedParams of this cluster's machine for ``engine``, or None."""
    return read_calibrated(cluster, engine)[0]


__all__ = ["MAX_STORE_BYTES", "SCHEMA", "checked_params", "config_dir", "load_calibrated", "load_calibration",
           "machine_id", "read_calibrated", "read_calibration", "save_calibration", "store_path"]
