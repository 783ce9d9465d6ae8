"""What-if tables: plan the cross product of models (quants of one Hub repository, or any
MODELs), clusters, contexts, KV types and engines, and answer "the highest-quality quant that
fits at >= N tok/s decode" per setting.

Each model's header is read once and each cluster resolved once; a combination that fits nowhere
is a row with ``fits`` false and the reason, not an error. Quality is the order of
:func:`omni_place.sources.quants.quality_key` (bits per weight of the quant tag).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, Sequence

from .cost import CPU
from .devices import Cluster, resolve_cluster
from .errors import InvalidArgumentError, NothingFitsError
from .model import ModelProfile, load_model
from .plan import plan_split
from .sources.hf import list_quants, parse_hf
from .sources.quants import quality_key, quant_tag
from .units import GiB
from .validate import dump_json

MAX_PLANS = 400  # about 0.1-0.5 s each: a table the user reads, not a sweep


@dataclass(frozen=True)
class CompareRow:
    """One planned combination."""

    model: str  # MODEL as given (or expanded: hf:OWNER/REPO:QUANT)
    quant: str | None  # the quant tag, from the reference or the file name
    weights_gib: float
    bpw: float  # bits per weight of the whole file, as its header says
    cluster: str
    ctx: int
    kv_type: str
    engine: str
    fits: bool
    tg_tps: float | None = None
    pp_tps: float | None = None
    gpu_layers: int | None = None  # layer slots on accelerators
    n_layers: int = 0
    args: list[str] = field(default_factory=list)
    note: str = ""  # why it does not fit

    @property
    def setting(self) -> tuple[str, int, str, str]:
        """What --best compares within: the cluster, context, KV type and engine."""
        return self.cluster, self.ctx, self.kv_type, self.engine

    @property
    def label(self) -> str:
        return self.quant or self.model


def expand_models(models: Sequence[str], quants: Sequence[str]) -> list[str]:
    """MODELs with ``--quant`` applied: each ``hf:OWNER/REPO`` becomes one reference per quant
    (``all``: every quant the repository has, worst to best). Other MODELs pass through."""
    if not models:
        raise InvalidArgumentError("compare needs at least one MODEL", hint="e.g. hf:OWNER/REPO --quant all")
    out: list[str] = []
    for m in models:
        if not quants:
            out.append(m)
            continue
        if not m.startswith("hf:"):
            raise InvalidArgumentError(f"--quant picks quants of a Hub repository; {m} is not hf:OWNER/REPO",
                                       hint="give hf:OWNER/REPO, or list each model file as its own MODEL")
        spec = parse_hf(m)
        if spec.quant or spec.path:
            raise InvalidArgumentError(f"{m} already names a quant or file; --quant needs the bare repository",
                                       hint=f"hf:{spec.repo} --quant {','.join(quants)}")
        wanted = list_quants(spec) if [q.lower() for q in quants] == ["all"] else list(quants)
        out += [str(spec.with_quant(q)) for q in wanted]
    return list(dict.fromkeys(out))


def _quant_of(model: str, profile: ModelProfile) -> str | None:
    if model.startswith("hf:"):
        spec = parse_hf(model)
        if spec.quant:
            return spec.quant.upper()
    return quant_tag(PurePosixPath(model).name) or quant_tag(profile.path.name)


def _bpw(profile: ModelProfile) -> float:
    n = sum(t.info.n_elements for t in profile.tensors)
    return 8 * profile.total_bytes / n if n else 0.0


def compare(models: Sequence[str], clusters: Sequence[str | Cluster], *, ctxs: Sequence[int] = (4096,),
            kv_types: Sequence[str] = ("f16",), engines: Sequence[str] = ("llama.cpp",),
            objective: str | float = "balanced", allow_paging: bool = False) -> list[CompareRow]:
    """One row per (model, cluster, ctx, KV type, engine), in that nesting order."""
    n = len(models) * len(clusters) * len(ctxs) * len(kv_types) * len(engines)
    if n == 0:
        raise InvalidArgumentError("nothing to compare", hint="give MODEL(s) and --preset/--cluster")
    if n > MAX_PLANS:
        raise InvalidArgumentError(f"{n} combinations to plan; compare plans at most {MAX_PLANS}",
                                   hint="narrow --quant, --ctx, --kv-type or the clusters")
    profiles = {m: load_model(m) for m in models}
    resolved = [resolve_cluster(c) for c in clusters]
    rows = []
    for m, clus, ctx, kv, engine in itertools.product(models, resolved, ctxs, kv_types, engines):
        prof = profiles[m]
        base: dict[str, Any] = dict(model=m, quant=_quant_of(m, prof), weights_gib=prof.total_bytes / GiB,
                                    bpw=_bpw(prof), cluster=clus.name, ctx=ctx, kv_type=kv, engine=engine,
                                    n_layers=prof.hparams.n_layer)
        try:
            plan = plan_split(prof, clus, ctx=ctx, kv_type=kv, engine=engine, objective=objective,
                              allow_paging=allow_paging)
        except NothingFitsError as err:
            rows.append(CompareRow(**base, fits=False, note=err.message))
            continue
        rows.append(CompareRow(**base, fits=True, tg_tps=plan.predicted.tg_tps, pp_tps=plan.predicted.pp_tps,
                               gpu_layers=sum(1 for h in plan.placement.layer_home if h != CPU),
                               args=plan.args()))
    return rows


def best(rows: Sequence[CompareRow], min_tg: float) -> dict[tuple[str, int, str, str], CompareRow | None]:
    """Per setting (cluster, ctx, KV type, engine): the highest-quality row that fits at
    ``>= min_tg`` tok/s decode, or None."""
    out: dict[tuple[str, int, str, str], CompareRow | None] = {}
    for r in rows:
        out.setdefault(r.setting, None)
        if r.fits and r.tg_tps is not None and r.tg_tps >= min_tg:
            cur = out[r.setting]
            if cur is None or quality_key(r.quant, r.bpw) > quality_key(cur.quant, cur.bpw):
                out[r.setting] = r
    return out


def _setting_text(s: tuple[str, int, str, str]) -> str:
    return f"{s[0]}, ctx {s[1]}, KV {s[2]}, {s[3]}"


def render_table(rows: Sequence[CompareRow], picks: dict[tuple[str, int, str, str], CompareRow | None] | None = None,
                 min_tg: float | None = None) -> str:
    """The rows as a text table (``*`` marks --best's picks), then the picks."""
    chosen = {id(r) for r in (picks or {}).values() if r is not None}
    head = ("", "model", "GiB", "bpw", "cluster", "ctx", "KV", "engine", "fits", "tg tok/s", "pp tok/s", "GPU layers")
    body = [("*" if id(r) in chosen else "", r.label, f"{r.weights_gib:.1f}", f"{r.bpw:.2f}", r.cluster, str(r.ctx),
             r.kv_type, r.engine, "yes" if r.fits else "no",
             f"{r.tg_tps:.1f}" if r.tg_tps is not None else "-", f"{r.pp_tps:.0f}" if r.pp_tps is not None else "-",
             f"{r.gpu_layers}/{r.n_layers}" if r.gpu_layers is not None else "-") for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    right = {2, 3, 5, 9, 10, 11}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in [head, *body]]
    if picks is not None:
        lines.append("")
        for s, r in picks.items():
            lines.append(f"best at >= {min_tg:g} tok/s on {_setting_text(s)}: "
                         + (f"{r.label} ({r.tg_tps:.1f} tok/s decode, {r.weights_gib:.1f} GiB)" if r and r.tg_tps
                            else "none fits that fast"))
    return "\n".join(lines)


def to_json(rows: Sequence[CompareRow], picks: dict[tuple[str, int, str, str], CompareRow | None] | None = None,
            min_tg: float | None = None) -> str:
    doc: dict[str, Any] = {"rows": [asdict(r) for r in rows]}
    if picks is not None:
        doc["best"] = [{"cluster": s[0], "ctx": s[1], "kv_type": s[2], "engine": s[3], "min_tg": min_tg,
                        "model": r.model if r else None, "quant": r.quant if r else None} for s, r in picks.items()]
    return dump_json(doc, indent=1)


__all__ = ["MAX_PLANS", "CompareRow", "best", "compare", "expand_models", "render_table", "to_json"]
