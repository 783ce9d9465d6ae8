"""The configurations ``omni-place bench`` runs per engine, in that engine's llama-bench dialect:

- ``default``  -- no placement flags: the engine's default split (all layers offloaded, split by
  free memory);
- ``fit``      -- the engine's memory fitter (mainline ``-fitt 1024``, ik ``--fit 1``, both with
  their default 1 GiB margin);
- ``ot-exps``  -- the community recipe ``-ngl 99 -ot exps=CPU`` (MoE only);
- ``ncmoe``    -- ``--n-cpu-moe N`` with the smallest N the memory model says loads, then larger N
  on an out-of-memory failure, as a user would (MoE only);
- ``ngl``      -- ``-ngl N`` with the largest N that loads (dense only);

(the recipes' flags and searches are :mod:`omni_place.recipes`', shared with ``plan``'s comparison);
- ``omni_place`` -- :func:`omni_place.plan.plan_split` for that engine.

Beside each attempt sits omni_place's prediction (memory per device, feasible, tg/pp) for its
flags; :mod:`.records` later adds the price of the placement the engine actually made.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .. import recipes
from ..cost import CPU, Placement
from ..devices import Cluster
from ..engines import BENCH_ENGINES, BenchSpelling, dialect
from ..errors import InvalidArgumentError
from ..model import ModelProfile, load_model
from ..plan import Plan, evaluate, plan_split
from .records import attach_placements, price
from .run import CONFIG_ORDER, SCHEMA, Attempt, BenchConfig, run_matrix

def _prediction(plan: Plan) -> dict[str, Any]:
    return {**price(plan.usage, plan.predicted), "notes": list(plan.notes)}


def _evaluate(model: ModelProfile, cluster: Cluster, engine: str, argv: Sequence[str], ctx: int, ubatch: int,
              params: Any) -> dict[str, Any]:
    """omni_place's price of a llama-bench flag set in ``engine``'s dialect (an error entry
    when omni_place cannot price it)."""
    full = list(argv) + ["-ub", str(ubatch)]  # llama-bench has no -c: the context is ``ctx``
    try:
        return _prediction(evaluate(model, cluster, full, ctx=ctx, params=params, engine=engine, tool="bench"))
    except Exception as err:  # noqa: BLE001 - an unpriceable recipe is still benchmarked
        return {"error": str(err)}


def _bench_spelling(engine: str) -> BenchSpelling:
    spelling = dialect(engine).bench
    if spelling is None:
        raise InvalidArgumentError(f"{engine} has no llama-bench", hint="use one of: " + ", ".join(BENCH_ENGINES))
    return spelling


def _gpus_fit(priced: dict[str, Any]) -> bool:
    """Whether a priced flag set's accelerators fit (what the recipe searches step on)."""
    return "devices" in priced and all(d["fits"] for d in priced["devices"] if d["name"] != CPU)


def _moe(model: ModelProfile) -> bool:
    return bool(model.hparams.n_expert)


def build_configs(model: str | ModelProfile, cluster: Cluster, engine: str, *, n_prompt: int = 512, n_gen: int = 64,
                  ubatch: int = 512, objective: str | float = "balanced", params: Any = None,
                  configs: Sequence[str] = CONFIG_ORDER, retries: int = 3) -> list[BenchConfig]:
    """The configurations of one engine for ``model`` on ``cluster`` (see the module doc)."""
    d = _bench_spelling(engine)
    prof = load_model(model)
    ctx = n_prompt + n_gen
    out: list[BenchConfig] = []

    def ev(argv: Sequence[str]) -> dict[str, Any]:
        return _evaluate(prof, cluster, engine, argv, ctx, ubatch, params)

    for name in configs:
        if name == "default":
            out.append(BenchConfig(engine, name, [Attempt([], ev([]))], "engine default split"))
        elif name == "fit":
            out.append(BenchConfig(engine, name, [Attempt(list(d.fit), None)],
                                   "engine's own fitter; priced from the placement it made (-v log)"))
        elif name == "ot-exps" and _moe(prof):
            argv = recipes.ot_exps_argv(d)
            out.append(BenchConfig(engine, name, [Attempt(argv, ev(argv))], shlex.join(argv)))
        elif name == "ncmoe" and _moe(prof):
            L = prof.n_layer
            n0 = recipes.smallest_ncmoe(L, lambda n: _gpus_fit(ev(recipes.ncmoe_argv(d, n))))
            ns = sorted({min(L, n0 + k * 2) for k in range(retries)})
            out.append(BenchConfig(engine, name,
                                   [Attempt(recipes.ncmoe_argv(d, n), ev(recipes.ncmoe_argv(d, n))) for n in ns],
                                   "smallest --n-cpu-moe that loads (memory model first, +2 on OOM)"))
        elif name == "ngl" and not _moe(prof):
            n0 = recipes.largest_ngl(prof.n_layer, lambda n: _gpus_fit(ev(recipes.ngl_argv(n))))
            ns = [max(0, n0 - k * 2) for k in range(retries)]
            out.append(BenchConfig(engine, name,
                                   [Attempt(recipes.ngl_argv(n), ev(recipes.ngl_argv(n))) for n in dict.fromkeys(ns)],
                                   "largest -ngl that loads (memory model first, -2 on OOM)"))
        elif name == "omni_place":
            plan = plan_split(prof, cluster, ctx=ctx, ubatch=ubatch, objective=objective, params=params, engine=engine)
            argv, env = _plan_bench_args(plan, prof, cluster)
            pred = _prediction(plan)
            out.append(BenchConfig(engine, name, [Attempt(argv, pred, env)], f"objective {objective}"))
    return out


def _plan_bench_args(plan: Plan, model: ModelProfile, cluster: Cluster) -> tuple[list[str], dict[str, str]]:
    """A plan's llama-bench placement flags. A bench without ``-dev`` (ik's) cannot reorder the
    GPUs: then the GPUs are renamed into the plan's order and CUDA_VISIBLE_DEVICES reorders them."""
    try:
        return recipes.placement_flags(plan.args("bench")), {}
    except InvalidArgumentError:
        order = list(plan.placement.order)
        gpus = [d.name for d in cluster.gpus]
        if not all(re.fullmatch(r"CUDA\d+", n) for n in gpus) or sorted(order) != sorted(gpus):
            raise
    rename = {old: f"CUDA{i}" for i, old in enumerate(order)}
    devs = [dataclasses.replace(d, name=rename.get(d.name, d.name)) for d in cluster.devices]
    devs.sort(key=lambda d: (d.kind != "gpu", d.name))
    renamed = Cluster(cluster.name, tuple(devs), cluster.description, cluster.notes)
    p = plan.placement
    q = Placement(tuple(rename[n] for n in p.order), tuple(rename.get(h, h) for h in p.layer_home),
                  tuple(frozenset((k, rename.get(d, d)) for k, d in e) for e in p.expert_homes),
                  rename.get(p.output, p.output), p.extra_overrides)
    usage = [dataclasses.replace(u, name=rename.get(u.name, u.name)) for u in plan.usage]
    ea = plan.dialect.encode(model, q, renamed, plan.context, usage)
    new = dataclasses.replace(plan, engine_args=ea, placement=q, cluster=renamed)
    env = {"CUDA_VISIBLE_DEVICES": ",".join(n.removeprefix("CUDA") for n in order)}
    return recipes.placement_flags(new.args("bench")), env


def common_args(engine: str, model_path: str, *, n_prompt: int, n_gen: int, ubatch: int, reps: int,
                threads: int | None) -> list[str]:
    """The flags every configuration of an engine shares (tests, batch, repetitions, output)."""
    d = _bench_spelling(engine)
    out = ["-m", str(model_path), "-p", str(n_prompt), "-n", str(n_gen), "-ub", str(ubatch),
           "-b", str(max(ubatch, 2048)), "-fa", "1", "-r", str(reps)]
    if threads:
        out += ["-t", str(threads)]
    return out + list(d.output) + ["-v"]


# --------------------------------------------------------------------------------------------
# running (standard library only)
# --------------------------------------------------------------------------------------------

def build_matrix(model_path: str, cluster: Cluster, engines: Sequence[str], *, model_file: str | None = None,
                 n_prompt: int = 512, n_gen: int = 64, ubatch: int = 512, reps: int = 3,
                 threads: int | None = None, objective: str | float = "balanced", params: Any = None,
                 configs: Sequence[str] = CONFIG_ORDER, rig: str | None = None) -> dict[str, Any]:
    """Every engine's configurations with their predictions and its common llama-bench argv,
    as one JSON-ready matrix (what :func:`~.run.run_matrix` runs)."""
    prof = load_model(model_path)
    cfgs: list[dict[str, Any]] = []
    for eng in engines:
        cfgs += [c.to_dict() for c in build_configs(prof, cluster, eng, n_prompt=n_prompt, n_gen=n_gen,
                                                    ubatch=ubatch, objective=objective, params=params,
                                                    configs=configs)]
    return {"schema": SCHEMA, "model": Path(model_path).name.split(".")[0], "model_file": model_file or str(model_path),
            "cluster": cluster.name, "rig": rig or cluster.name, "n_prompt": n_prompt, "n_gen": n_gen,
            "ubatch": ubatch, "reps": reps, "threads": threads, "objective": objective, "configs": cfgs,
            "common": {eng: common_args(eng, model_file or str(model_path), n_prompt=n_prompt, n_gen=n_gen,
                                        ubatch=ubatch, reps=reps, threads=threads) for eng in engines}}


def run_bench(model_path: str, cluster: Cluster, binaries: dict[str, str], out_dir: Path, *, n_prompt: int = 512,
              n_gen: int = 64, ubatch: int = 512, reps: int = 3, threads: int | None = None,
              objective: str | float = "balanced", params: Any = None, configs: Sequence[str] = CONFIG_ORDER,
              rig: str | None = None, progress_stream: TextIO | None = sys.stderr,
              timeout: float = 900) -> list[dict[str, Any]]:
    """Build, run and price the whole comparison in one process (the ``bench`` command)."""
    matrix = build_matrix(model_path, cluster, list(binaries), n_prompt=n_prompt, n_gen=n_gen, ubatch=ubatch,
                          reps=reps, threads=threads, objective=objective, params=params, configs=configs, rig=rig)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "matrix.json").write_text(json.dumps(matrix, indent=1))
    records = run_matrix(matrix, binaries, out_dir, progress_stream=progress_stream, timeout=timeout)
    attach_placements(records, model_path, cluster, out_dir / "logs", params)
    (out_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records
