"""The reports of ``speed_truth``'s measurements, run anywhere (``speed_truth report``, ``vram``,
``versus``): each measured configuration priced as it ran (the placement read from its ``-v``
log, the routing replayed from each speed model's router), the engine's CUDA0 buffers against the
price, and each objective's plan against every recipe.

They read ``speed_truth run`` folders (records.jsonl + logs/) and two archived layouts:
benchmarks/results/speed_truth's and plans_vs_fit's (records_<level>.jsonl + logs.tar.xz) and
benchmarks/results/engine_compare's (records.jsonl and records_rerun.jsonl + logs.tar.xz); see
``_rows``.
"""
from __future__ import annotations

import argparse
import json
import re
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.speed_models import SPEED_MODELS, replay_routing


def _emit(lines: list[str], out: list[dict[str, Any]], json_path: str | None) -> int:
    """Print a table; write its rows as JSON when asked."""
    print("\n".join(lines))
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1))
    return 0


# engine_compare's records files -> the folder of logs.tar.xz that holds their logs (run 1 and the re-run)
_RUN_FOLDERS = {"records": "res", "records_rerun": "res2"}


def _rows(results: list[str], only_model: str | None = None,
          steady: bool = False) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per (rig, model, configuration): the measured tok/s of every round and the first round's
    ``-v`` log, from ``run`` folders (records.jsonl + logs/), from benchmarks/results/speed_truth's
    layout (records_<level>.jsonl + logs.tar.xz, logs under res/res_<level>/logs/<model>.<rig>.r<round>/)
    or from engine_compare's (records.jsonl and records_rerun.jsonl + logs.tar.xz, logs under
    res/<model>.<rig>/ and res2/<model>.<rig>/; a re-run counts as more rounds). ``steady``: leaves
    out the tests whose repetitions differ as `calibrate` leaves them out (records.UNSTEADY_SPREAD)."""
    from omni_place.bench.records import UNSTEADY_SPREAD, load_records, sample_spread, steady_tps

    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    tmp = tempfile.TemporaryDirectory(prefix="speed_truth-")
    sources: list[tuple[Path, Path]] = []  # (records file, the folder of its logs)
    for res in results:
        root = Path(res)
        if (root / "records.jsonl").exists() and (root / "logs").is_dir():
            sources.append((root / "records.jsonl", root / "logs"))
            continue
        dest = Path(tmp.name) / str(len(sources))
        with tarfile.open(root / "logs.tar.xz") as tar:
            tar.extractall(dest, filter="data")
        for rec in sorted(root.glob("records*.jsonl")):
            level = rec.stem.removeprefix("records_")
            logs = dest / "res" / f"res_{level}" / "logs"
            sources.append((rec, logs if logs.is_dir() else dest / _RUN_FOLDERS.get(rec.stem, rec.stem)))
    for records, logs in sources:
        for r in load_records([records]):
            if r["status"] != "ok" or not r.get("avg_ts") or (only_model and r["model"] != only_model):
                continue
            key = (r["rig"], r["model"], r["config"])
            if key in rows and rows[key]["engine"] != r["engine"]:  # another engine's configuration of that name
                key = (r["rig"], r["model"], f"{r['config']}@{r['engine']}")
            row = rows.setdefault(key, {"tg": [], "pp": [], "argv": r["argv"], "engine": r["engine"],
                                        "ubatch": int(r.get("ubatch") or 512), "command": r.get("command"),
                                        "ctx": int(r.get("n_prompt") or 512) + int(r.get("n_gen") or 32),
                                        "env": r.get("env") or {}})
            prompt = r["test"].startswith("pp")
            if steady and sample_spread(r, r["engine"], prompt) > UNSTEADY_SPREAD:
                continue
            row["pp" if prompt else "tg"].append(float(steady_tps(r, r["engine"], prompt) or r["avg_ts"]))
            if "log" not in row:
                run = f"{r['model']}.{r['rig']}" + (f".r{r['round']}" if "round" in r else "")
                row["log"] = (logs / run / r["log"]).read_text(errors="replace")
    tmp.cleanup()
    return rows


def _header(folder: Path, model: str, keep: Path) -> Path:
    """``model``'s header in ``folder``: <model>.hdr.gguf, or <model>.hdr.gguf.xz unpacked into ``keep``."""
    import lzma

    plain, packed = folder / f"{model}.hdr.gguf", folder / f"{model}.hdr.gguf.xz"
    if plain.exists() or not packed.exists():
        return plain
    out = keep / plain.name
    out.write_bytes(lzma.decompress(packed.read_bytes()))
    return out


def _rig_file(folder: Path, rig: str) -> str:
    """The cluster file of ``rig``: <rig>.toml, or rig_<level>.toml for speed_truth's <gpu>-<level>."""
    own = folder / f"{rig}.toml"
    return str(own if own.exists() else folder / f"rig_{rig.rpartition('-')[2]}.toml")


def _placed(a: argparse.Namespace, rows: dict[tuple[str, str, str], dict[str, Any]]) -> Iterator[
        tuple[tuple[str, str, str], dict[str, Any], Any, Any, Any, Any]]:
    """Each row whose placements its ``-v`` log shows: (rig, model, configuration), the row, the
    model's profile (from ``--headers``), the rig's cluster (``--rigs``; ``--cpu-gbs`` replaces its
    CPU bandwidth), the prompt test's placement (the load that served the ubatch's context: a
    fitter loads again per test) and the decode test's (the last load); each header and rig is
    read once. The engine's device i is the cluster's GPU the run's CUDA_VISIBLE_DEVICES names."""
    import dataclasses

    from omni_place.bench.logread import placement_from_log
    from omni_place.devices import resolve_cluster
    from omni_place.model import load_model

    models: dict[str, Any] = {}
    clusters: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="speed_truth-hdr-") as keep:
        for model in sorted({m for _, m, _ in rows}):
            models[model] = load_model(_header(Path(a.headers), model, Path(keep)))
    cpu_gbs = getattr(a, "cpu_gbs", None)
    for (rig, model, config), row in sorted(rows.items()):
        if rig not in clusters:
            cluster = resolve_cluster(_rig_file(Path(a.rigs), rig))
            if cpu_gbs:
                cluster = dataclasses.replace(cluster, devices=tuple(
                    dataclasses.replace(d, bandwidth_gbs=cpu_gbs) if d.kind == "cpu" else d for d in cluster.devices))
            clusters[rig] = cluster
        visible = row["env"].get("CUDA_VISIBLE_DEVICES")
        accel = ([f"CUDA{v.strip()}" for v in visible.split(",")] if visible
                 else [d.name for d in clusters[rig].gpus])
        pp, tg = (placement_from_log(row["log"], models[model], accel, row["engine"], row["argv"], n_ubatch=ub)
                  for ub in (row["ubatch"], None))
        if pp is not None and tg is not None:
            yield (rig, model, config), row, models[model], clusters[rig], pp, tg


def _run_context(row: dict[str, Any]) -> Any:
    """The context a row's runs had, from its llama-bench command line (test sizes, batches, ``-fa``,
    the KV types, load mode and op offload) and the engine's traits."""
    import shlex

    from omni_place.engines import dialect

    rules = dialect(row["engine"])
    words = shlex.split(row.get("command") or "")  # [VAR=value ...] llama-bench FLAGS
    argv = words[1 + words.index("llama-bench"):] if "llama-bench" in words else row["argv"]
    return rules.run_context(rules.parse_args(argv, tool="bench"), "bench", 0, row["ctx"])[1]


def report(a: argparse.Namespace) -> int:
    """Price every measured configuration as it ran (the placement read from its -v log) and
    compare with the measured tok/s: per configuration, the median over rounds; per rig and
    engine, the median and largest |error|."""
    import statistics

    from omni_place.cost import CostModel, SpeedParams

    params = SpeedParams(**json.loads(a.params)) if a.params else None
    calibrated = json.loads(Path(a.calibration).read_text())["engines"] if a.calibration else {}
    rows = _rows(a.results, a.only_model, a.steady)
    out = []
    routing: dict[str, list[list[int]]] = {}
    moe: set[str] = set()
    for (rig, model, config), row, prof, cluster, placement, tg_placement in _placed(a, rows):
        if prof.hparams.n_expert:
            moe.add(model)
        if model not in routing:  # the share of experts a ubatch touched in these runs: replayable
            # for the speed models only (their router and embeddings are known), else uniform
            header = Path(a.headers) / f"{model}.hdr.gguf"
            replay = a.routing == "replayed" and model in SPEED_MODELS
            routing[model] = replay_routing(header, a.router) if replay else []
        if calibrated:  # `omni-place calibrate --format json` output
            if row["engine"] not in calibrated:
                raise SystemExit(f"{a.calibration} calibrates {', '.join(calibrated)}, not {row['engine']}")
            params = SpeedParams(**calibrated[row["engine"]]["params"])
        cost = CostModel(prof, cluster, _run_context(row), params)
        if routing[model]:
            cost = cost.with_routing(routing[model])
        pred = cost.predict(placement)
        pred_tg = pred if tg_placement == placement else cost.predict(tg_placement)
        tg, pp = statistics.median(row["tg"]), statistics.median(row["pp"])
        n_cpu = sum(h == "CPU" for h in placement.layer_home)
        n_exp = sum(bool(k) for k in placement.cpu_experts)
        out.append({"rig": rig, "model": model, "engine": row["engine"], "config": config.split("@")[0],
                    "argv": row["argv"], "cpu_layers": n_cpu, "cpu_expert_layers": n_exp, "tg": tg, "pp": pp,
                    "tg_runs": row["tg"], "pp_runs": row["pp"], "tg_spread": [min(row["tg"]), max(row["tg"])],
                    "pp_spread": [min(row["pp"]), max(row["pp"])], "pred_tg": round(pred_tg.tg_tps, 2),
                    "pred_pp": round(pred.pp_tps, 2), "tg_err": round(pred_tg.tg_tps / tg - 1, 3),
                    "pp_err": round(pred.pp_tps / pp - 1, 3),
                    "tg_ms": {k: round(v * 1e3, 4) for k, v in pred_tg.tg_breakdown.items()},
                    "pp_ms_per_1k": {k: round(v * 1e6, 4) for k, v in pred.pp_breakdown.items()}})
    lines = ["| rig | model | engine | config | CPU layers / expert layers | tg (min-max) | pred tg | err | "
             "pp (min-max) | pred pp | err |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in out:
        lines.append(f"| {o['rig']} | {o['model']} | {o['engine']} | {o['config']} | {o['cpu_layers']} / "
                     f"{o['cpu_expert_layers']} | {o['tg']:.1f} ({o['tg_spread'][0]:.1f}-{o['tg_spread'][1]:.1f}) | "
                     f"{o['pred_tg']:.1f} | {o['tg_err']:+.0%} | {o['pp']:.0f} ({o['pp_spread'][0]:.0f}-"
                     f"{o['pp_spread'][1]:.0f}) | {o['pred_pp']:.0f} | {o['pp_err']:+.0%} |")
    if any(routing.values()):
        lines.append("\nexperts one ubatch touched (replayed): " + ", ".join(
            f"{m} {np.mean([np.count_nonzero(c) / len(c) for c in v]):.0%}" for m, v in sorted(routing.items()) if v))
    uniform = sorted(m for m, v in routing.items() if not v and m in moe)
    if uniform:
        lines.append("\nrouting priced uniform (each token picks k of N): " + ", ".join(uniform))
    for rig, engine in sorted({(o["rig"], o["engine"]) for o in out}):
        for kind in ("tg", "pp"):
            errs = sorted(abs(o[f"{kind}_err"]) for o in out if (o["rig"], o["engine"]) == (rig, engine))
            lines.append(f"\n{rig} {engine} {kind}: {len(errs)} configurations, median |error| "
                         f"{statistics.median(errs):.1%}, max {errs[-1]:.1%}")
        ranks = [f"{model} {kind} {rho:.2f} ({n})" for model in sorted({o["model"] for o in out})
                 for kind in ("tg", "pp")
                 for rho, n in [rank_correlation([o for o in out if (o["rig"], o["engine"], o["model"])
                                                  == (rig, engine, model)], kind)] if n >= 3]
        if ranks:
            lines.append(f"\n{rig} {engine} rank correlation (Spearman, distinct placements): " + ", ".join(ranks))
    return _emit(lines, out, a.json)


def rank_correlation(rows: list[dict[str, Any]], kind: str) -> tuple[float, int]:
    """(Spearman's rho of predicted against measured ``kind`` tok/s, placements): configurations
    priced alike are one placement run under several names (a recipe that is also the plan), so
    their measured medians are averaged into one point first."""
    from scipy.stats import spearmanr

    by_pred: dict[float, list[float]] = {}
    for o in rows:
        by_pred.setdefault(o[f"pred_{kind}"], []).append(o[kind])
    if len(by_pred) < 3:
        return float("nan"), len(by_pred)
    preds = sorted(by_pred)
    rho = spearmanr(preds, [float(np.mean(by_pred[p])) for p in preds]).statistic
    return float(rho), len(preds)


# mainline: "load_tensors: CUDA0 model buffer size", "llama_kv_cache: CUDA0 KV buffer size",
# "sched_reserve: CUDA0 compute buffer size"; ik: "llm_load_tensors: CUDA0 buffer size",
# "llama_kv_cache_init: CUDA0 KV buffer size", "llama_new_context_with_model: CUDA0 compute buffer size"
_BUFFER = re.compile(r"^(\w+): +CUDA0 (?:(model|KV|compute) )?buffer size = +([0-9.]+) MiB", re.M)
_CONTEXT_START = re.compile(r"^(?:llama_context|llama_new_context_with_model): +n_ctx += ", re.M)


def vram(a: argparse.Namespace) -> int:
    """CUDA0's buffers as the engine allocated them for the prompt test (the weights of the load
    that served the ubatch's context, that context's KV cache and compute buffer), next to
    omni_place's price of that placement: the issue-14 check of --fit against the plan at equal
    margins and one context."""
    from omni_place.bench.logread import CONTEXT_UBATCH, load_serving
    from omni_place.cost import CostModel

    lines = ["| rig | model | config | engine MiB (model / KV / compute) | total | predicted total | "
             "predicted compute |", "|---|---|---|---|---:|---:|---:|"]
    out = []
    for (rig, model, config), row, prof, cluster, placement, _ in _placed(a, _rows(a.results)):
        load = load_serving(row["log"], row["ubatch"])
        starts = [m.start() for m in _CONTEXT_START.finditer(load)] + [len(load)]
        contexts = [load[x:y] for x, y in zip(starts, starts[1:])] or [""]  # a load that made no context
        # the prompt test's context (the engine may clamp the ubatch to the context: then the first)
        ctx = next((c for c in contexts if row["ubatch"] in (int(u) for u in CONTEXT_UBATCH.findall(c))), contexts[0])
        got = {"model": 0.0, "KV": 0.0, "compute": 0.0}
        for _, kind, mib in _BUFFER.findall(load[:starts[0]]) + _BUFFER.findall(ctx):
            kind = kind or "model"
            got[kind] = max(got[kind], float(mib)) if kind == "compute" else got[kind] + float(mib)
        use = next(u for u in CostModel(prof, cluster, _run_context(row)).usage(placement) if u.name == "CUDA0")
        total = sum(got.values())
        out.append({"rig": rig, "model": model, "config": config, "engine_mib": got, "engine_total_mib": total,
                    "predicted_total_mib": use.used_bytes / 2**20, "predicted_compute_mib": use.compute_bytes / 2**20})
        lines.append(f"| {rig} | {model} | {config} | {got['model']:.0f} / {got['KV']:.0f} / {got['compute']:.0f} | "
                     f"{total:.0f} | {use.used_bytes / 2**20:.0f} | {use.compute_bytes / 2**20:.0f} |")
    return _emit(lines, out, a.json)


RECIPES = ("fit", "ot-exps", "ncmoe", "ngl")


def _objective_configs(results: list[str]) -> dict[tuple[str, str], dict[str, str]]:
    """(rig, model) -> objective -> the configuration that ran that objective's plan, from the
    matrices `prepare` wrote (kept in logs.tar.xz); a rig without one ran the balanced plan only."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for res in results:
        tar_path = Path(res) / "logs.tar.xz"
        if not tar_path.exists():
            continue
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if re.fullmatch(r"res/matrix_[^/]+\.json", member.name):
                    fh = tar.extractfile(member)
                    m = json.load(fh) if fh else {}
                    out[(m["rig"], m["model"])] = m.get("objectives", {})
    return out


def versus(a: argparse.Namespace) -> int:
    """Each objective's plan against every recipe, measured: medians over the interleaved rounds,
    the spread (max - min) / median of both, and whether the plan is at least as good within it
    (on its objective: a balanced plan's decode against recipes within its prompt floor)."""
    import statistics

    from omni_place.objective import BALANCED_PROMPT_FLOOR

    rows = _rows(a.results)
    objectives = _objective_configs(a.results)
    lines = ["| rig | model | objective (config) | metric | plan | recipe | recipe value | ratio | noise | verdict |",
             "|---|---|---|---|---:|---|---:|---:|---:|---|"]
    out = []
    for rig, model in sorted({(r, m) for r, m, _ in rows}):
        objs = objectives.get((rig, model), {"balanced": "omni_place"})
        for objective, config in sorted(objs.items()):
            plan = rows.get((rig, model, config))
            if plan is None:
                continue
            # balanced ranks by decode among the plans within BALANCED_PROMPT_FLOOR of the best
            # prompt (objective.py): a recipe measured below that floor cannot beat a plan above it
            prompts = [statistics.median(r["pp"]) for (g, m, c), r in rows.items()
                       if (g, m) == (rig, model) and r["pp"] and (c == config or c in RECIPES)]
            floor = BALANCED_PROMPT_FLOOR * max(prompts, default=0.0)
            for metric in (("tg", "pp") if objective == "balanced" else (objective,)):
                for recipe in RECIPES:
                    rec = rows.get((rig, model, recipe))
                    if rec is None:
                        continue
                    pv, rv = statistics.median(plan[metric]), statistics.median(rec[metric])
                    noise = max((max(x) - min(x)) / statistics.median(x) for x in (plan[metric], rec[metric]))
                    ok = pv >= rv * (1 - noise)
                    verdict = "ok" if ok else "BELOW"
                    if objective == "balanced" and plan["pp"] and rec["pp"]:
                        plan_in = statistics.median(plan["pp"]) >= floor * (1 - noise)
                        by_floor = metric == "tg" and not ok and statistics.median(rec["pp"]) < floor
                        ok = plan_in and (ok or by_floor) if metric == "tg" else plan_in
                        verdict = ("ok: recipe's prompt below the floor" if by_floor and ok else
                                   "ok" if ok else "BELOW" if plan_in else "BELOW: plan's prompt below the floor")
                    out.append({"rig": rig, "model": model, "objective": objective, "config": config,
                                "metric": metric, "plan": pv, "recipe": recipe, "recipe_value": rv,
                                "ratio": pv / rv, "noise": noise, "at_least_as_good": ok})
                    lines.append(f"| {rig} | {model} | {objective} ({config}) | {metric} | {pv:.1f} | {recipe} | "
                                 f"{rv:.1f} | {pv / rv:.2f} | {noise:.0%} | {verdict} |")
    return _emit(lines, out, a.json)
