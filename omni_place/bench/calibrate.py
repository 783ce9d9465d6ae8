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

Fitted parameters are stored per machine by :mod:`omni_place.calibration`, where later plans
read them.
"""
from __future__ import annotations

import dataclasses
import lzma
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from ..cost import Context, CostModel, Placement, SpeedParams
from ..devices import Cluster, resolve_cluster
from ..errors import InvalidArgumentError
from ..model import ModelProfile, load_model
from ..validate import file_component, read_file
from .records import UNSTEADY_SPREAD, check_record, kind_of_test, placement_from_dict, sample_spread, steady_tps

FIT_NAMES = ("gpu_bw_scale", "cpu_bw_eff", "gpu_compute_scale", "cpu_tflops_per_core", "split_s", "stream_eff")
BOUNDS = {
    "gpu_bw_scale": (0.1, 2.5),
    "cpu_bw_eff": (0.05, 3.0),  # the CPU figure may be a conservative measurement
    "gpu_compute_scale": (0.03, 7.0),
    "cpu_tflops_per_core": (0.001, 1.0),
    "split_s": (1e-6, 2e-3),
    "stream_eff": (0.05, 8.0),  # of the base pageable rate (cost.stream_bandwidth): bare metal may reach more
    "gpu_layer_scale": (0.02, 20.0),
    "gpu_mla_layer_s": (1e-7, 1e-3),
    "gpu_moe_layer_s": (0.0, 1e-3),
    "cpu_layer_s": (1e-6, 5e-3),
    "rpc_bw_eff": (0.05, 1.2),
    "pcie_latency_s": (1e-7, 1e-3),
}


@dataclass
class Point:
    """One measured test of one placement."""

    record: dict[str, Any]
    model: ModelProfile
    cluster: Cluster
    placement: Placement
    kind: str  # "tg" | "pp"
    measured: float
    ctx: int
    ubatch: int
    # the run's full context (KV types, flash attention, depth, op offload); else ctx/ubatch
    context: Context | None = None

    @property
    def group(self) -> str:
        r = self.record
        return f"{r.get('rig', '')}/{r.get('model', '')}/{r['engine']}/{r['config']}"

    @property
    def engine(self) -> str:
        return str(self.record["engine"])


# (model, cluster, context) identity -> (model, cluster, CostModel). The entry holds the
# model and cluster themselves, so their ids cannot be reused by other objects while cached.
_COSTS: dict[tuple[int, int, Context], tuple[ModelProfile, Cluster, CostModel]] = {}


def predict_point(pt: Point, params: SpeedParams) -> float:
    """Predicted tok/s of a point's test under ``params`` (the byte model is built once per
    model/cluster/context; only the speed parameters change)."""
    context = pt.context or Context(ctx=pt.ctx, n_ubatch=pt.ubatch)
    key = (id(pt.model), id(pt.cluster), context)
    entry = _COSTS.get(key)
    if entry is None:
        entry = _COSTS[key] = (pt.model, pt.cluster, CostModel(pt.model, pt.cluster, context, params))
    cost = entry[2]
    cost.params = params
    pred = cost.predict(pt.placement)
    return pred.tg_tps if pt.kind == "tg" else pred.pp_tps


# A header-only GGUF with a full tokenizer is ~10 MiB; decompressing stops well past that.
MAX_HEADER_BYTES = 1 << 28


def _resolve_model(name: str, search: Sequence[Path], models: dict[str, str]) -> ModelProfile:
    if name in models:
        return load_model(models[name])
    file_component(name, "record model name")  # joined to the search folders below
    for d in search:
        for cand in (d / f"{name}.hdr.gguf", d / f"{name}.gguf"):
            if cand.exists():
                return load_model(cand)
        xz = d / f"{name}.hdr.gguf.xz"
        if xz.exists():
            return _load_xz_header(xz)
    raise InvalidArgumentError(f"no GGUF (header) for model {name!r} in {', '.join(map(str, search))}",
                               hint=f"pass --model {name}=PATH (a header-only GGUF is enough)")


def _load_xz_header(xz: Path) -> ModelProfile:
    """The profile of an xz-compressed header: streamed into a file in a private temporary folder
    (``mkdtemp``: mode 0700, a fresh name) with at most MAX_HEADER_BYTES written, read, and
    removed with its folder whatever happens."""
    packed = read_file(xz, limit=MAX_HEADER_BYTES, what="compressed header")
    with tempfile.TemporaryDirectory(prefix="omni_place-") as folder:
        out = Path(folder) / xz.name.removesuffix(".xz")
        dec = lzma.LZMADecompressor()
        written = 0
        try:
            with open(out, "xb") as fh:
                chunk = dec.decompress(packed, max_length=1 << 20)
                while True:
                    written += len(chunk)
                    if written > MAX_HEADER_BYTES:
                        raise InvalidArgumentError(f"{xz}: decompresses to more than {MAX_HEADER_BYTES} bytes, "
                                                   "more than any GGUF header",
                                                   hint="compress the header-only GGUF, not the whole model")
                    fh.write(chunk)
                    if dec.eof or (dec.needs_input and not chunk):
                        break
                    chunk = dec.decompress(b"", max_length=1 << 20)
        except lzma.LZMAError as err:
            raise InvalidArgumentError(f"{xz}: not a valid .xz file ({err})",
                                       hint="re-create it with `xz -k NAME.hdr.gguf`") from None
        if not dec.eof:
            raise InvalidArgumentError(f"{xz}: the .xz stream is truncated", hint="re-create it with `xz -k`")
        return load_model(out)


def _resolve_cluster(rig: str, search: Sequence[Path], clusters: dict[str, str]) -> Cluster:
    if rig in clusters:
        return resolve_cluster(clusters[rig])
    file_component(rig, "record rig name")  # joined to the search folders below
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
    models = models or {}
    clusters = clusters or {}
    mcache: dict[str, ModelProfile] = {}
    ccache: dict[str, Cluster] = {}
    out = []
    for i, r in enumerate(records):
        check_record(r, f"record #{i + 1}")
        test = str(r["test"])
        kind = kind_of_test(test)
        measured = steady_tps(r, str(r["engine"]), kind == "pp")
        if (r.get("status") != "ok" or not measured or not r.get("placement")
                or sample_spread(r, str(r["engine"]), kind == "pp") > UNSTEADY_SPREAD):
            continue
        name, rig = str(r.get("model", "")), str(r.get("rig", ""))
        if name not in mcache:
            mcache[name] = _resolve_model(name, search, models)
        if rig not in ccache:
            ccache[rig] = _resolve_cluster(rig, search, clusters)
        n_prompt, n_gen, ubatch = _count(r, "n_prompt", 512), _count(r, "n_gen", 64), _count(r, "ubatch", 512)
        ctx = max(1, n_prompt + n_gen)
        where = f"record {name}/{rig}/{r['engine']}/{r['config']}/{test}"
        placement = placement_from_dict(r["placement"], mcache[name], ccache[rig], where)
        # the test as it ran: its prompt's ubatches, its decodes' depths (placement.over_prompt_test)
        context = Context(ctx=ctx, n_ubatch=ubatch, n_prompt=n_prompt if kind == "pp" else 0,
                          n_gen=n_gen if kind == "tg" else 0)
        out.append(Point(r, mcache[name], ccache[rig], placement, kind, measured, ctx, ubatch, context))
    return out


def _count(r: dict[str, Any], key: str, default: int) -> int:
    v = r.get(key)
    return default if v is None else int(v)


# Weight of the pull towards the starting parameters, per parameter and in log space: moving a
# parameter by a factor e costs as much as one point predicted e^0.25 - 1 = 28 % off. A handful
# of records cannot pin six parameters (several trade off against each other on one placement);
# the prior keeps the ones the records do not identify near their defaults.
PRIOR_WEIGHT = 0.25


def fit_params(points: Sequence[Point], base: SpeedParams | None = None,
               names: Sequence[str] = FIT_NAMES, prior_weight: float = PRIOR_WEIGHT) -> SpeedParams:
    """SpeedParams minimising Σ log(pred/measured)² over ``points`` (tg and pp weighted alike)
    plus ``prior_weight``² Σ log(param/start)² (see PRIOR_WEIGHT)."""
    base = base or SpeedParams()
    if not points:
        raise InvalidArgumentError("no successful records with a placement to calibrate on",
                                   hint="run `omni-place bench` first; records need the engine's -v log")
    x0 = np.array([math.log(getattr(base, n)) for n in names])
    lo = np.array([math.log(BOUNDS[n][0]) for n in names])
    hi = np.array([math.log(BOUNDS[n][1]) for n in names])
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)

    def params_of(x: Any) -> SpeedParams:
        values: dict[str, Any] = {n: float(math.exp(v)) for n, v in zip(names, x)}
        return dataclasses.replace(base, **values)

    start = x0.copy()

    def resid(x: Any) -> Any:
        p = params_of(x)
        fit = [math.log(max(predict_point(pt, p), 1e-9) / pt.measured) for pt in points]
        return np.concatenate([fit, prior_weight * (x - start)])

    res = least_squares(resid, x0, bounds=(lo, hi), x_scale=1.0, diff_step=1e-3, max_nfev=200)
    return params_of(res.x)


def errors(points: Sequence[Point], preds: Sequence[float]) -> dict[str, Any]:
    """Relative errors (pred/measured - 1) by kind: per point, median and max of |err|, and the
    Spearman rank correlation of predicted against measured (``rank``; None under 3 points or
    when either side is constant)."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    for kind in ("tg", "pp"):
        pairs = [(p, pt.measured) for pt, p in zip(points, preds) if pt.kind == kind]
        if not pairs:
            continue
        absd = sorted(abs(p / m - 1) for p, m in pairs)
        rank = None
        if len(pairs) >= 3 and len({p for p, _ in pairs}) > 1 and len({m for _, m in pairs}) > 1:
            rank = round(float(spearmanr([p for p, _ in pairs], [m for _, m in pairs]).statistic), 3)
        out[kind] = {"n": len(pairs), "median_abs": round(absd[len(absd) // 2], 4), "max_abs": round(absd[-1], 4),
                     "mean_abs": round(sum(absd) / len(absd), 4), "rank": rank}
    return out


def cross_validate(points: Sequence[Point], base: SpeedParams | None = None,
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


__all__ = ["BOUNDS", "FIT_NAMES", "Point", "cross_validate", "errors", "feasibility_check", "fit_params",
           "points_from_records", "predict_point"]
