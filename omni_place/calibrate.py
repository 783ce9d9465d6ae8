"""Fit the speed model's efficiencies and split costs to measured llama-bench records.

Each successful record of ``omni-place bench`` carries the placement the engine actually made
(read back from its ``-v`` log) and the measured tok/s of one test (``pp<N>`` or ``tg<N>``).
:func:`fit_params` finds the :class:`~omni_place.cost.SpeedParams` that minimise the squared log
ratio predicted/measured over those records (``scipy.optimize.least_squares`` in log-parameter
space, within physical bounds), per engine. Calibration is honest: :func:`cross_validate` fits on
all groups of records but one (a group is one configuration of one model on one rig) and
predicts the group it did not see; :func:`holdout_errors` scores a separate set of records (a
re-run). Failed runs are kept and checked the other way: every out-of-memory record must be
predicted infeasible.

Fitted parameters are stored per machine as JSON under ``$OMNI_PLACE_CONFIG/calibration/`` (or
``~/.config/omni_place/calibration/``), one file per machine id, with one parameter set per
engine; :func:`load_calibrated` returns them for a cluster so later plans and predictions use
them.
"""
from __future__ import annotations

import dataclasses
import json
import lzma
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError

FIT_NAMES = ("gpu_bw_eff", "cpu_bw_eff", "gpu_compute_eff", "cpu_tflops_per_core", "split_s", "stream_eff")
BOUNDS = {
    "gpu_bw_eff": (0.05, 1.2),
    "cpu_bw_eff": (0.05, 3.0),  # the CPU figure may be a conservative measurement
    "gpu_compute_eff": (0.005, 1.0),
    "cpu_tflops_per_core": (0.001, 1.0),
    "split_s": (1e-6, 2e-3),
    "stream_eff": (0.01, 1.0),
    "rpc_bw_eff": (0.05, 1.2),
    "pcie_latency_s": (1e-7, 1e-3),
}
SCHEMA = "omni_place.calibration/1"


@dataclass
class Point:
    """One measured test of one placement."""

    record: dict[str, Any]
    model: Any  # ModelProfile
    cluster: Any  # Cluster
    placement: Any  # Placement
    kind: str  # "tg" | "pp"
    measured: float
    ctx: int
    ubatch: int

    @property
    def group(self) -> str:
        r = self.record
        return f"{r.get('rig', '')}/{r.get('model', '')}/{r['engine']}/{r['config']}"

    @property
    def engine(self) -> str:
        return str(self.record["engine"])


# (model, cluster, ctx, ubatch) identity -> (model, cluster, CostModel). The entry holds the
# model and cluster themselves, so their ids cannot be reused by other objects while cached.
_COSTS: dict[tuple[int, int, int, int], tuple[Any, Any, Any]] = {}


def predict_point(pt: Point, params: Any) -> float:
    """Predicted tok/s of a point's test under ``params`` (the byte model is built once per
    model/cluster/context; only the speed parameters change)."""
    from .cost import Context, CostModel

    key = (id(pt.model), id(pt.cluster), pt.ctx, pt.ubatch)
    entry = _COSTS.get(key)
    if entry is None:
        entry = _COSTS[key] = (pt.model, pt.cluster,
                               CostModel(pt.model, pt.cluster, Context(ctx=pt.ctx, n_ubatch=pt.ubatch), params))
    cost = entry[2]
    cost.params = params
    pred = cost.predict(pt.placement)
    return pred.tg_tps if pt.kind == "tg" else pred.pp_tps


def _resolve_model(name: str, search: Sequence[Path], models: dict[str, str]) -> Any:
    from .model import load_model

    if name in models:
        return load_model(models[name])
    for d in search:
        for cand in (d / f"{name}.hdr.gguf", d / f"{name}.gguf"):
            if cand.exists():
                return load_model(cand)
        xz = d / f"{name}.hdr.gguf.xz"
        if xz.exists():
            out = Path(tempfile.gettempdir()) / f"omni_place_{name}_{xz.stat().st_size}.hdr.gguf"
            if not out.exists():
                out.write_bytes(lzma.decompress(xz.read_bytes()))
            return load_model(out)
    raise InvalidArgumentError(f"no GGUF (header) for model {name!r} in {', '.join(map(str, search))}",
                               hint=f"pass --model {name}=PATH (a header-only GGUF is enough)")


def _resolve_cluster(rig: str, search: Sequence[Path], clusters: dict[str, str]) -> Any:
    from .devices import resolve_cluster

    if rig in clusters:
        return resolve_cluster(clusters[rig])
    for d in search:
        cand = d / f"{rig}.toml"
        if cand.exists():
            return resolve_cluster(str(cand))
    raise InvalidArgumentError(f"no cluster file for rig {rig!r} in {', '.join(map(str, search))}",
                               hint=f"pass --cluster {rig}=FILE (the cluster TOML the records were planned for)")


def points_from_records(records: Sequence[dict[str, Any]], *, search: Sequence[Path] = (),
                        models: dict[str, str] | None = None,
                        clusters: dict[str, str] | None = None) -> list[Point]:
    """Calibration points: successful records that carry a placement (``as_run``)."""
    from .bench import placement_from_dict

    models = models or {}
    clusters = clusters or {}
    mcache: dict[str, Any] = {}
    ccache: dict[str, Any] = {}
    out = []
    for r in records:
        if r.get("status") != "ok" or not r.get("avg_ts") or not r.get("placement"):
            continue
        name, rig = str(r.get("model", "")), str(r.get("rig", ""))
        if name not in mcache:
            mcache[name] = _resolve_model(name, search, models)
        if rig not in ccache:
            ccache[rig] = _resolve_cluster(rig, search, clusters)
        test = str(r["test"])
        kind = "pp" if test.startswith("pp") and "+" not in test else "tg"
        ctx = int(r.get("n_prompt", 512)) + int(r.get("n_gen", 64))
        out.append(Point(r, mcache[name], ccache[rig], placement_from_dict(r["placement"]), kind,
                         float(r["avg_ts"]), ctx, int(r.get("ubatch", 512))))
    return out


def fit_params(points: Sequence[Point], base: Any = None, names: Sequence[str] = FIT_NAMES) -> Any:
    """SpeedParams minimising Σ log(pred/measured)² over ``points`` (tg and pp weighted alike)."""
    import numpy as np
    from scipy.optimize import least_squares  # type: ignore[import-untyped]

    from .cost import SpeedParams

    base = base or SpeedParams()
    if not points:
        raise InvalidArgumentError("no successful records with a placement to calibrate on",
                                   hint="run `omni-place bench` first; records need the engine's -v log")
    x0 = np.array([math.log(getattr(base, n)) for n in names])
    lo = np.array([math.log(BOUNDS[n][0]) for n in names])
    hi = np.array([math.log(BOUNDS[n][1]) for n in names])
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)

    def params_of(x: Any) -> Any:
        return dataclasses.replace(base, **{n: float(math.exp(v)) for n, v in zip(names, x)})

    def resid(x: Any) -> Any:
        p = params_of(x)
        return np.array([math.log(max(predict_point(pt, p), 1e-9) / pt.measured) for pt in points])

    res = least_squares(resid, x0, bounds=(lo, hi), x_scale=1.0, diff_step=1e-3, max_nfev=200)
    return params_of(res.x)


def errors(points: Sequence[Point], preds: Sequence[float]) -> dict[str, Any]:
    """Relative errors (pred/measured - 1) by kind: per point, median and max of |err|."""
    out: dict[str, Any] = {}
    for kind in ("tg", "pp"):
        errs = [(pt, p / pt.measured - 1) for pt, p in zip(points, preds) if pt.kind == kind]
        if not errs:
            continue
        absd = sorted(abs(e) for _, e in errs)
        out[kind] = {"n": len(errs), "median_abs": round(absd[len(absd) // 2], 4), "max_abs": round(absd[-1], 4),
                     "mean_abs": round(sum(absd) / len(absd), 4)}
    return out


def cross_validate(points: Sequence[Point], base: Any = None,
                   fit: Callable[..., Any] = fit_params) -> list[tuple[Point, float]]:
    """Leave-one-group-out: each configuration's records predicted by parameters fitted on all
    the other configurations (of the same engine)."""
    groups = sorted({pt.group for pt in points})
    out: list[tuple[Point, float]] = []
    for g in groups:
        test = [pt for pt in points if pt.group == g]
        train = [pt for pt in points if pt.group != g and pt.engine == test[0].engine]
        if not train:
            continue
        p = fit(train, base)
        out += [(pt, predict_point(pt, p)) for pt in test]
    return out


def feasibility_check(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every failed (out-of-memory) record with omni_place's feasibility verdict for its flags."""
    out = []
    for r in records:
        if str(r.get("status", "")).startswith("oom"):
            pred = r.get("predicted") or {}
            out.append({"rig": r.get("rig"), "model": r.get("model"), "engine": r["engine"], "config": r["config"],
                        "argv": r.get("argv"), "test": r.get("test"), "status": r["status"],
                        "predicted_feasible": pred.get("feasible") if isinstance(pred, dict) else None})
    return out


# --------------------------------------------------------------------------------------------
# storage per machine
# --------------------------------------------------------------------------------------------

def config_dir() -> Path:
    base = os.environ.get("OMNI_PLACE_CONFIG")
    root = Path(base) if base else Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "omni_place"
    return root / "calibration"


def machine_id(cluster: Any) -> str:
    """A file-name-safe id of a machine: the cluster's name (cluster files and presets name the
    machine; discovery names it after the host)."""
    name = getattr(cluster, "name", None) or str(cluster)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "machine"


def save_calibration(machine: str, per_engine: dict[str, Any], meta: dict[str, Any] | None = None,
                     path: Path | None = None) -> Path:
    """Write ``{engine: SpeedParams}`` for a machine; returns the file."""
    path = path or config_dir() / f"{machine}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "machine": machine,
           "engines": {e: dataclasses.asdict(p) for e, p in per_engine.items()}, **(meta or {})}
    path.write_text(json.dumps(doc, indent=1))
    return path


def load_calibration(machine: str, engine: str = "llama.cpp", path: Path | None = None) -> Any | None:
    from .cost import SpeedParams

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


def load_calibrated(cluster: Any, engine: str = "llama.cpp") -> Any | None:
    """The calibrated SpeedParams of this cluster's machine for ``engine``, or None."""
    return load_calibration(machine_id(cluster), engine)


__all__ = ["FIT_NAMES", "Point", "config_dir", "cross_validate", "errors", "feasibility_check", "fit_params",
           "load_calibrated", "load_calibration", "machine_id", "points_from_records", "predict_point",
           "save_calibration"]
