"""Bench records: reading them, pricing the placement each run made (``as_run``), and the
comparison table with the targets."""
from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cost import CPU, EXPERT_KINDS, Context, CostModel, DeviceUsage, ExpertHomes, Placement, Prediction, on_cpu
from ..devices import Cluster
from ..engines import BENCH_ENGINES, dialect
from ..errors import InvalidArgumentError
from ..model import ModelProfile, load_model
from ..units import GiB
from ..validate import decode_text, file_component, flag, integer, load_json, number, read_file, show, text
from .logread import placement_from_log
from .run import CONFIG_ORDER, OK


def price(usage: Sequence[DeviceUsage], pred: Prediction) -> dict[str, Any]:
    """Feasibility, tok/s and per-device memory of a priced placement, as records keep them."""
    return {
        "feasible": all(u.fits for u in usage),
        "tg_tps": round(pred.tg_tps, 3),
        "pp_tps": round(pred.pp_tps, 3),
        "devices": [{"name": u.name, "used_gib": round(u.used_bytes / GiB, 3),
                     "usable_gib": round(u.capacity_bytes / GiB, 3), "fits": u.fits} for u in usage],
    }


def placement_to_dict(p: Placement) -> dict[str, Any]:
    """``expert_homes``: per layer, [kind, device] pairs of the expert kinds not with the layer."""
    return {"order": list(p.order), "layer_home": list(p.layer_home),
            "expert_homes": [sorted([k, d] for k, d in e) for e in p.expert_homes], "output": p.output}


def _expert_homes(d: dict[str, Any]) -> tuple[ExpertHomes, ...]:
    """A record's expert homes; records written before experts could live on another GPU name
    the kinds in CPU RAM per layer (``cpu_experts``)."""
    if "expert_homes" in d:
        return tuple(frozenset((k, dev) for k, dev in e) for e in d["expert_homes"])
    return tuple(on_cpu(k) for k in d["cpu_experts"])


def placement_from_dict(d: dict[str, Any], model: ModelProfile | None = None, cluster: Cluster | None = None,
                        where: str = "placement") -> Placement:
    """A Placement from its dict (:func:`placement_to_dict`). With ``model`` and ``cluster`` it is
    checked against them: one home and one expert set per layer slot, every device named in
    the cluster, expert kinds the cost model knows (InvalidArgumentError naming ``where``)."""
    p = Placement(tuple(d["order"]), tuple(d["layer_home"]), _expert_homes(d), d["output"])
    if model is None or cluster is None:
        return p
    names = {dev.name for dev in cluster.gpus}
    problem = None
    kinds = {k for e in p.expert_homes for k, _ in e}
    if len(p.layer_home) != model.n_layer or len(p.expert_homes) != model.n_layer:
        problem = (f"{len(p.layer_home)} layer homes and {len(p.expert_homes)} expert sets for a model of "
                   f"{model.n_layer} layer slots")
    elif len(set(p.order)) != len(p.order) or not set(p.order) <= names:
        problem = f"device order {show(list(p.order), 200)} is not a list of this cluster's accelerators"
    elif not set(p.layer_home) | {p.output} <= names | {CPU}:
        unknown = sorted((set(p.layer_home) | {p.output}) - names - {CPU})
        problem = f"it names devices the cluster does not have: {show(unknown, 200)}"
    elif not kinds <= set(EXPERT_KINDS):
        problem = f"unknown expert kinds {show(sorted(kinds - set(EXPERT_KINDS)), 200)}"
    elif not {dev for e in p.expert_homes for _, dev in e} <= set(p.order) | {CPU}:
        problem = "experts on a device outside the device order"
    if problem:
        raise InvalidArgumentError(f"{where}: the placement does not fit the model and cluster: {problem}",
                                   hint="pass the model and cluster the records were measured with")
    return p


def price_placement(model: ModelProfile, cluster: Cluster, placement: Placement, *, ctx: int, ubatch: int,
                    params: Any = None, flash_attn: bool = True) -> dict[str, Any]:
    """Memory and speed of a placement at a bench context (what ``as_run`` holds)."""
    cost = CostModel(model, cluster, Context(ctx=ctx, n_ubatch=ubatch, flash_attn=flash_attn), params)
    return price(cost.usage(placement), cost.predict(placement))


def attach_placements(records: list[dict[str, Any]], model: str | ModelProfile, cluster: Cluster,
                      log_dir: Path | None, params: Any = None) -> list[dict[str, Any]]:
    """Add ``placement`` (read from each run's -v log) and ``as_run`` (its price) to records."""
    prof = load_model(model)
    accel = [d.name for d in cluster.gpus]
    cache: dict[tuple[str, int | None], Any] = {}
    texts: dict[str, str] = {}
    for r in records:
        name = r.get("log")
        if not name or log_dir is None:
            continue
        file_component(name, "record log", error=InvalidArgumentError)  # joined to log_dir
        if not (log_dir / name).exists():
            continue
        # a prompt test ran on the load that served its ubatch's context (a fitter loads per test)
        ub = int(r.get("ubatch", 512)) if str(r.get("test", "")).startswith("pp") else None
        if (name, ub) not in cache:
            if name not in texts:  # a pp and a tg record share one log
                texts[name] = (log_dir / name).read_text(errors="replace")
            text = texts[name]
            vis = (r.get("env") or {}).get("CUDA_VISIBLE_DEVICES")
            # engine device i is the i-th visible GPU: name it as the cluster does
            names = [f"CUDA{v.strip()}" for v in vis.split(",")] if vis else accel
            cache[(name, ub)] = placement_from_log(text, prof, names, r["engine"], r.get("argv") or (), n_ubatch=ub)
        p = cache[(name, ub)]
        if p is None:
            continue
        r["placement"] = placement_to_dict(p)
        ctx = int(r.get("n_prompt", 512)) + int(r.get("n_gen", 64))
        r["as_run"] = price_placement(prof, cluster, p, ctx=ctx, ubatch=int(r.get("ubatch", 512)), params=params)
    return records


MAX_RECORDS_BYTES = 1 << 28  # a bench of thousands of runs is a few MiB
MAX_TPS = 1e9  # tokens per second beyond any machine
_RECORD_HINT = "records come from `omni-place bench` / benchmarks/engine_compare.py"
# Keys later code reads, by type: text, counts, speeds (finite, >= 0, or null), lists of text.
_TEXT_KEYS = ("engine", "status", "config", "test", "model", "rig", "log", "schema", "cluster", "command")
_INT_KEYS = {"n_prompt": (0, 1 << 20), "n_gen": (0, 1 << 20), "ubatch": (1, 65536), "attempt": (0, 1 << 20),
             "threads": (0, 1 << 16)}
_SPEED_KEYS = ("avg_ts", "stddev_ts")
_NULLABLE = ("log", "threads")  # a run without a log file; the engine's default thread count
_PRICE_KEYS = ("predicted", "as_run")


def check_record(rec: Any, where: str) -> dict[str, Any]:
    """A bench record with every key the harness reads checked for type and range (one error
    naming ``where`` and the key). ``placement`` is checked for shape here and against the model
    and cluster by :func:`placement_from_dict`."""
    def bad(message: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{where}: {message}", hint=_RECORD_HINT)

    if not isinstance(rec, dict) or not all(k in rec for k in ("engine", "status", "config", "test")):
        raise bad("not an omni_place bench record (an object with engine, status, config and test)")
    for key in _TEXT_KEYS:
        if key in rec and (rec[key] is not None or key not in _NULLABLE):
            text(rec[key], key, max_len=4096, error=bad)
    for key, (lo, hi) in _INT_KEYS.items():
        if key in rec and (rec[key] is not None or key not in _NULLABLE):
            integer(rec[key], key, lo=lo, hi=hi, error=bad)
    for key in _SPEED_KEYS:
        if rec.get(key) is not None:
            number(rec[key], key, lo=0.0, hi=MAX_TPS, error=bad)
    if rec.get("argv") is not None and (not isinstance(rec["argv"], list)
                                        or not all(isinstance(a, str) for a in rec["argv"])):
        raise bad(f"argv must be a list of strings (got {show(rec['argv'])})")
    if rec.get("env") is not None and (not isinstance(rec["env"], dict)
                                       or not all(isinstance(v, str) for v in rec["env"].values())):
        raise bad(f"env must map names to strings (got {show(rec['env'])})")
    for key in _PRICE_KEYS:
        price_ = rec.get(key)
        if price_ is None:
            continue
        if not isinstance(price_, dict):
            raise bad(f"{key} must be an object (got {show(price_)})")
        if price_.get("feasible") is not None:
            flag(price_["feasible"], f"{key}.feasible", error=bad)
        for k in ("tg_tps", "pp_tps"):
            if price_.get(k) is not None:
                number(price_[k], f"{key}.{k}", lo=0.0, hi=MAX_TPS, error=bad)
    placement = rec.get("placement")
    if placement is not None:
        experts_key = "expert_homes" if isinstance(placement, dict) and "expert_homes" in placement else "cpu_experts"
        if not isinstance(placement, dict) or any(k not in placement for k in ("order", "layer_home",
                                                                                 experts_key, "output")):
            raise bad("placement must be an object with order, layer_home, expert_homes and output")
        for key in ("order", "layer_home"):
            if not isinstance(placement[key], list) or not all(isinstance(x, str) for x in placement[key]):
                raise bad(f"placement.{key} must be a list of device names")
        if experts_key == "cpu_experts" and (not isinstance(placement["cpu_experts"], list) or not all(
                isinstance(k, list) and all(isinstance(x, str) for x in k) for k in placement["cpu_experts"])):
            raise bad("placement.cpu_experts must be a list of lists of expert kinds")
        if experts_key == "expert_homes" and (not isinstance(placement["expert_homes"], list) or not all(
                isinstance(e, list) and all(isinstance(x, list) and len(x) == 2 and all(isinstance(y, str) for y in x)
                                            for x in e) for e in placement["expert_homes"])):
            raise bad("placement.expert_homes must be a list of lists of [expert kind, device] pairs")
        text(placement["output"], "placement.output", max_len=64, error=bad)
    return rec


def load_records(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Records from JSONL files (one record per line; blank lines skipped), each checked by
    :func:`check_record`. Files are read as regular files of at most MAX_RECORDS_BYTES (a FIFO,
    ``/dev/zero`` or a binary file is an error, not a hang), each line as strict JSON."""
    out: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        if not os.path.lexists(path):
            raise InvalidArgumentError(f"no records file {path}",
                                       hint="pass the records.jsonl that `omni-place bench` wrote")
        raw = read_file(path, limit=MAX_RECORDS_BYTES, what="records file")
        for i, line in enumerate(decode_text(raw, f"records file {path}").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{i}"
            rec = load_json(line, f"record {where}",
                            error=lambda m: InvalidArgumentError(m, hint=_RECORD_HINT))
            out.append(check_record(rec, where))
    return out


def _samples(rec: dict[str, Any]) -> list[float]:
    """A llama-bench record's ``samples_ts`` when they are all tok/s (finite, > 0), else none."""
    samples = rec.get("samples_ts")
    if not isinstance(samples, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < MAX_TPS for x in samples):
        return []
    return [float(x) for x in samples]


def _cold_first(rec: dict[str, Any], samples: list[float], engine: str, prompt: bool) -> bool:
    """Whether a test's first timed repetition ran cold, a prompt test of two or more samples:
    every one of an engine whose llama-bench warms prompts up with one token
    (EngineTraits.bench_cold_first_prompt), and a CUDA build's with its weights on the GPUs and no
    depth run before it, where the CUDA graphs' warmup outlasts llama-bench's
    (EngineTraits.bench_cuda_graph_warmup). ``rec`` is llama-bench's record or an ``omni-place
    bench`` record holding it (``engine_record``)."""
    if not (prompt and len(samples) >= 2 and engine in BENCH_ENGINES):
        return False
    traits = dialect(engine).traits
    inner = rec.get("engine_record")
    bench: dict[str, Any] = inner if isinstance(inner, dict) else rec
    return traits.bench_cold_first_prompt or (
        traits.bench_cuda_graph_warmup and "CUDA" in str(bench.get("backends", "")).upper()
        and not bench.get("n_depth") and weights_on_gpus(bench))


def weights_on_gpus(bench: dict[str, Any]) -> bool:
    """Whether a llama-bench record ran every layer on its GPUs (``-ngl`` 99, llama-bench's default,
    or more; negative: all, src/llama-model.cpp) with no tensor kept in RAM (``-ncmoe``, ``-ot``) and
    no fitter to move any there (``-fitt``: its record says ``-ngl -1`` whatever it placed): where the
    GPU's kernels make the prompt's time and the graphs' capture shows. The first ran at 0.50-0.92
    of the later repetitions in 234 committed tests, median 0.76, where with tensors in RAM or a
    fitter's placement (344) or layers on the CPU (378) the medians were 0.97 and 0.95
    (benchmarks/results/cuda_graph_warmup.md)."""
    ngl, overrides = bench.get("n_gpu_layers", 99), str(bench.get("tensor_buft_overrides") or "none")
    return (isinstance(ngl, int) and (ngl >= 99 or ngl < 0) and not bench.get("n_cpu_moe")
            and not bench.get("fit_target") and overrides.lower() in ("none", ""))


def warm_samples(rec: dict[str, Any], engine: str, prompt: bool) -> list[float]:
    """A llama-bench test's ``samples_ts`` that ran warm: all of them, but a first prompt
    repetition that ran cold (:func:`steady_tps`); none when the record's samples are not all tok/s."""
    samples = _samples(rec)
    return samples[1:] if _cold_first(rec, samples, engine, prompt) else samples


def steady_tps(rec: dict[str, Any], engine: str, prompt: bool) -> float | None:
    """The tok/s a llama-bench test ran at once warm, what a server sees and the speed model
    prices: the record's ``avg_ts``, but the mean of the samples after the first where that one ran
    cold: every prompt test of ik_llama.cpp, whose llama-bench warms prompts up with one token
    (examples/llama-bench/llama-bench.cpp:2226-2232; 0.45-0.9 of the others on an H200,
    benchmarks/results/calibrate_31.md), and a prompt test of mainline's CUDA build at depth 0,
    whose graphs are captured in it (EngineTraits.bench_cuda_graph_warmup). None when the record
    has no ``avg_ts``."""
    samples = _samples(rec)
    if _cold_first(rec, samples, engine, prompt):
        return sum(samples[1:]) / (len(samples) - 1)
    avg = rec.get("avg_ts")
    return None if avg is None else float(avg)


#: a record whose warm repetitions differ by more than this (max / min - 1) ran while the machine's
#: speed moved: an H100 VM's decodes read 15 and 74 tok/s in one test (benchmarks/results/calibrate_36.md)
UNSTEADY_SPREAD = 0.25


def sample_spread(rec: dict[str, Any], engine: str, prompt: bool) -> float:
    """max / min - 1 of a record's :func:`warm_samples`; 0 for fewer than two."""
    warm = warm_samples(rec, engine, prompt)
    return max(warm) / min(warm) - 1 if len(warm) >= 2 else 0.0


def kind_of_test(test: str) -> str:
    """"pp" for a llama-bench prompt test ("pp512"), "tg" for a decode or prompt+decode test."""
    return "pp" if test.startswith("pp") and "+" not in test else "tg"


def final_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (rig, model, engine, config): the successful attempt, else the last one."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.get("rig", ""), r.get("model", ""), r["engine"], r["config"]), []).append(r)
    rows = []
    for key, recs in groups.items():
        by_att: dict[int, list[dict[str, Any]]] = {}
        for r in recs:
            by_att.setdefault(int(r.get("attempt", 0)), []).append(r)
        ok = [a for a, rs in by_att.items() if all(x["status"] == OK for x in rs)]
        att = min(ok) if ok else max(by_att)
        rs = by_att[att]
        row: dict[str, Any] = {"rig": key[0], "model": key[1], "engine": key[2], "config": key[3],
                               "argv": rs[0].get("argv", []), "attempts": len(by_att), "status": rs[0]["status"]}
        for r in rs:
            k = kind_of_test(r["test"])
            row[k] = steady_tps(r, r["engine"], k == "pp")
            row[k + "_sd"] = r.get("stddev_ts")
            row[k + "_test"] = r["test"]
            pred = r.get("as_run") or r.get("predicted") or {}
            row[k + "_pred"] = pred.get(k + "_tps") if isinstance(pred, dict) else None
            if r["status"] != OK:
                row["status"] = r["status"]
        pred = rs[0].get("predicted") or {}
        row["pred_feasible"] = pred.get("feasible") if isinstance(pred, dict) else None
        row["failed_attempts"] = [{"argv": v[0].get("argv"), "status": v[0]["status"],
                                   "pred_feasible": (v[0].get("predicted") or {}).get("feasible")}
                                  for a, v in sorted(by_att.items()) if a != att]
        rows.append(row)
    order = {c: i for i, c in enumerate(CONFIG_ORDER)}
    rows.sort(key=lambda r: (r["rig"], r["model"],
                             BENCH_ENGINES.index(r["engine"]) if r["engine"] in BENCH_ENGINES else 9,
                             order.get(r["config"], 99)))
    return rows


def _fmt(v: Any, sd: Any = None) -> str:
    if v is None:
        return "-"
    s = f"{v:.1f}"
    if sd is not None:
        s += f" ±{sd:.1f}"
    return s


def comparison_table(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table: per rig/model/engine, each configuration's measured pp/tg (mean ± sd of
    the repetitions), omni_place's prediction, and failures."""
    rows = final_rows(records)
    head = ("| rig | model | engine | config | flags | pp t/s | tg t/s | pred pp | pred tg | status |\n"
            "|---|---|---|---|---|---:|---:|---:|---:|---|")
    lines = [head]
    for r in rows:
        flags = shlex.join(r["argv"]) if r["argv"] else "(none)"
        if len(flags) > 60:
            flags = flags[:57] + "..."
        status = r["status"]
        if r["failed_attempts"]:
            status += f" (after {len(r['failed_attempts'])} failed: " + ", ".join(
                f"{shlex.join(f['argv'] or [])} {f['status']}" for f in r["failed_attempts"]) + ")"
        lines.append(f"| {r['rig']} | {r['model']} | {r['engine']} | {r['config']} | `{flags}` | "
                     f"{_fmt(r.get('pp'), r.get('pp_sd'))} | {_fmt(r.get('tg'), r.get('tg_sd'))} | "
                     f"{_fmt(r.get('pp_pred'))} | {_fmt(r.get('tg_pred'))} | {status} |")
    return "\n".join(lines)


def target_check(records: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's targets per rig/model/engine: omni_place's tg >= fit's and every recipe's;
    its pp not below fit's. One line each, with the margins."""
    rows = final_rows(records)
    out = []
    groups: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["rig"], r["model"], r["engine"]), {})[r["config"]] = r
    for key, cfgs in groups.items():
        om = cfgs.get("omni_place")
        if om is None or not om.get("tg"):
            out.append(f"{' / '.join(key)}: omni_place has no measurement ({om['status'] if om else 'not run'})")
            continue
        parts = []
        for name, r in cfgs.items():
            if name == "omni_place":
                continue
            if not r.get("tg"):
                parts.append(f"{name} {r['status']}")
                continue
            d = (om["tg"] / r["tg"] - 1) * 100
            s = f"tg vs {name} {d:+.1f}%"
            if name == "fit" and r.get("pp") and om.get("pp"):
                s += f", pp vs fit {(om['pp'] / r['pp'] - 1) * 100:+.1f}%"
            parts.append(s)
        out.append(f"{' / '.join(key)}: " + "; ".join(parts))
    return out
