"""Measured prompt and decode speed of many placements on a real GPU machine (the truth the
speed model is checked against), with plain llama-bench records and ``-v`` logs kept.

Three subcommands, run in this order on the GPU machine:

``models DIR``
    Write the speed models (``benchmarks/speed_models.py``): full-size GGUFs of a dense llama, a
    qwen3moe and a deepseek2 with MLA, ~6-9 GB each, whose large weights are holes and whose
    norms, routers and token embeddings hold real values, so that llama-bench's random prompt
    tokens spread over the experts as a real model's do. ``--router`` picks the routers' scale
    (``ROUTERS``: ``unit``, a trained router's; ``raw``, the first H200 runs').

``prepare MODEL --cluster TOML --rig NAME -o MATRIX``
    The configurations of one model on one rig: the engine's ``--fit``, the recipes of
    ``omni-place bench`` (``-ot exps=CPU``, the smallest ``--n-cpu-moe``, the largest ``-ngl``),
    omni_place's plans for each objective (balanced, ``tg``, ``pp``; a plan equal to an earlier
    configuration runs once, the matrix's ``objectives`` names it), the balanced plan with its
    CPU weights pinned (``-lm none``, op offload on), and a sweep of placements that spans the
    CPU share (``-ngl`` / ``--n-cpu-moe`` steps), each with omni_place's prediction.

``run MATRIX... --bin llama-bench --out DIR --rounds N``
    Every configuration of every matrix, in rounds that alternate the order (A B C, C B A, ...)
    so slow drifts of the machine do not favour one configuration; one ``-v`` log per run.

Then, anywhere (``benchmarks/speed_report.py``): ``report`` (each run priced as it ran, with the
routing replayed from each speed model's router; it also reads benchmarks/results/engine_compare),
``versus`` (each objective's plan against every recipe, with the rounds' spread) and ``vram`` (the
engine's buffers against the price).

Measure the CPU (``devices --measure``, ``host_link.py``) on an idle machine: the first H200 runs
probed it beside a 16-job compile and read 48.5 GB/s where decode alone reached ~75.

Speed models are deterministic: ``models DIR --header-only`` here writes the same headers
(the same bytes up to the data), which is all that pricing needs (``report --headers DIR``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _models(a: argparse.Namespace) -> int:
    from benchmarks.speed_models import SPEED_MODELS, write_speed_model

    unknown = sorted(set(a.names) - set(SPEED_MODELS))
    if unknown:
        raise SystemExit(f"unknown speed models {unknown}; known: {', '.join(SPEED_MODELS)}")
    for name in a.names or list(SPEED_MODELS):
        path = write_speed_model(name, Path(a.folder), header_only=a.header_only, router=a.router)
        print(f"{path} {path.stat().st_size / 1e9:.2f} GB", flush=True)
    return 0


def _prepare(a: argparse.Namespace) -> int:
    from omni_place.bench.matrix import build_configs, common_args
    from omni_place.bench.run import CONFIG_ORDER, SCHEMA, Attempt, BenchConfig
    from omni_place.cost import EXPERT_KINDS
    from omni_place.devices import resolve_cluster
    from omni_place.engines import dialect
    from omni_place.engines.common import KIND_REGEX, layer_regex
    from omni_place.model import load_model
    from omni_place.plan import evaluate

    cluster = resolve_cluster(a.cluster)
    prof = load_model(a.model)
    ctx = a.n_prompt + a.n_gen
    engine = a.engine
    rules = dialect(engine)
    wanted = a.configs.split(",") if a.configs else ["fit", "ot-exps", "ncmoe", "ngl", "omni_place", "omni_place_tg",
                                                      "omni_place_pp", "omni_place_pin", "tail-exps", "sweep"]
    configs = build_configs(prof, cluster, engine, n_prompt=a.n_prompt, n_gen=a.n_gen, ubatch=a.ubatch,
                            configs=[c for c in wanted if c in CONFIG_ORDER])
    # the plan of each objective ("omni_place" is the default, balanced); a plan equal to an
    # earlier one runs once, and ``objectives`` names the configuration that measured it
    objectives = {"balanced": "omni_place"} if "omni_place" in wanted else {}
    for objective in ("tg", "pp"):
        if f"omni_place_{objective}" not in wanted:
            continue
        cfg = build_configs(prof, cluster, engine, n_prompt=a.n_prompt, n_gen=a.n_gen, ubatch=a.ubatch,
                            objective=objective, configs=("omni_place",))[0]
        same = next((c for c in configs if c.attempts[0].argv == cfg.attempts[0].argv), None)
        if same is None:
            cfg.name = f"omni_place_{objective}"
            configs.append(cfg)
        objectives[objective] = cfg.name if same is None else same.name
    seen = {tuple(att.argv) for c in configs for att in c.attempts}

    def feasible(argv: list[str]) -> dict[str, Any] | None:
        pred = evaluate(prof, cluster, [*argv, "-ub", str(a.ubatch)], ctx=ctx, engine=engine, tool="bench")
        return ({"feasible": True, "tg_tps": round(pred.predicted.tg_tps, 3),
                 "pp_tps": round(pred.predicted.pp_tps, 3)} if pred.feasible else None)

    def add(name: str, argv: list[str], note: str) -> None:
        price = feasible(argv)
        if price is not None and tuple(argv) not in seen:
            seen.add(tuple(argv))
            configs.append(BenchConfig(engine, name, [Attempt(argv, price)], note))

    plan = next((c for c in configs if c.name == "omni_place"), None)
    if "omni_place_pin" in wanted and plan is not None:
        # the balanced plan's placement the other way round: pinned (op offload on) when the plan
        # keeps mmap, mmap'd when the plan pins -- what the plan's note prices
        syntax = rules.syntax["bench"]
        argv = list(plan.attempts[0].argv)
        for flag in (syntax.no_op_offload, syntax.pin_weights):
            if flag and flag[0] in argv:
                i = argv.index(flag[0])
                del argv[i:i + len(flag)]
        if rules.parse_args(plan.attempts[0].argv, "bench").pinned_weights:
            add("omni_place_mmap", argv, "the balanced plan's placement, mmap'd (op offload on)")
        elif syntax.pin_weights:
            add("omni_place_pin", [*argv, *syntax.pin_weights], "the balanced plan, CPU weights pinned, op offload on")
    ncmoe = next((c for c in configs if c.name == "ncmoe"), None)
    if "tail-exps" in wanted and prof.hparams.n_expert:
        # as many expert layers in RAM as the smallest --n-cpu-moe, but the last ones: which end's
        # experts go to the CPU (issue 16's layer-position question)
        if ncmoe is None or rules.bench is None:
            raise SystemExit("tail-exps takes its count from the ncmoe configuration: add ncmoe to --configs")
        n = int(ncmoe.attempts[0].argv[ncmoe.attempts[0].argv.index(rules.bench.n_cpu_moe) + 1])
        moe = [il for il, lc in enumerate(prof.layers) if lc.has_experts and not lc.is_nextn]
        tail = moe[len(moe) - sum(il < n for il in moe):]
        add("tail-exps", ["-ngl", rules.bench.ngl_all, "-ot", layer_regex(tail) + KIND_REGEX[frozenset(EXPERT_KINDS)]
                          + "=CPU"], f"the experts of the last {len(tail)} expert layers on the CPU (the smallest "
                                     "--n-cpu-moe's count)")
    if "sweep" in wanted:
        # placements across the CPU's share: whole layers on the CPU (-ngl), and for MoE the
        # experts of the first layers (--n-cpu-moe)
        L = prof.n_layer
        n_max = max((n for n in range(L + 2) if feasible(["-ngl", str(n)])), default=0)
        for n in sorted({0, n_max // 3, (2 * n_max) // 3}):
            add(f"ngl{n}", ["-ngl", str(n)], "whole layers on the CPU")
        if prof.hparams.n_expert:
            n0 = next((n for n in range(L + 1) if feasible(["-ngl", "99", "-ncmoe", str(n)])), L)
            for n in sorted({L, (L + n0) // 2}):
                add(f"ncmoe{n}", ["-ngl", "99", "-ncmoe", str(n)], "experts of the first layers on the CPU")
    matrix = {"schema": SCHEMA, "model": Path(a.model).name.split(".")[0], "model_file": a.model_file or a.model,
              "cluster": cluster.name, "rig": a.rig, "n_prompt": a.n_prompt, "n_gen": a.n_gen, "ubatch": a.ubatch,
              "threads": a.threads, "objectives": objectives, "configs": [c.to_dict() for c in configs],
              "common": {engine: common_args(engine, a.model_file or a.model, n_prompt=a.n_prompt, n_gen=a.n_gen,
                                             ubatch=a.ubatch, reps=a.reps, threads=a.threads)}}
    Path(a.output).write_text(json.dumps(matrix, indent=1))
    for c in configs:
        print(f"{c.name:14s} {' | '.join(' '.join(att.argv) for att in c.attempts)[:150]}")
    return 0


def _rig(a: argparse.Namespace) -> int:
    """A cluster file of the measured machine: one GPU with the free memory llama.cpp reported
    (its ``-v`` line ``using device CUDA0 ... - N MiB free``, after the ballast and its own CUDA
    context), the same margin as ``-fitt``, its pageable copy rate and the CPU as ``devices --measure``
    measured them."""
    text = (f'# {a.description}\nname = "{a.name}"\n\n'
            f'[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "{a.catalog}"\n'
            f"memory_gib = {a.gpu_free_mib / 1024:.4f}\nmargin_mib = {a.margin_mib}\n"
            + (f"stream_gbs = {a.stream_gbs}\n" if a.stream_gbs else "") + "\n"
            f'[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = {a.cpu_gib}\n'
            f"bandwidth_gbs = {a.cpu_gbs}\nthreads = {a.threads}\n" + (f'simd = "{a.simd}"\n' if a.simd else ""))
    Path(a.output).write_text(text)
    print(text)
    return 0


def _run(a: argparse.Namespace) -> int:
    from omni_place.bench.run import BenchConfig, Progress, expected_tests, run_config

    matrices = [json.loads(Path(m).read_text()) for m in a.matrices]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    items = [(m, BenchConfig.from_dict(c)) for m in matrices for c in m["configs"]]
    done_path = out / "done.txt"
    done = set(done_path.read_text().split()) if done_path.exists() else set()
    prog = Progress(len(items) * a.rounds)
    with open(out / "records.jsonl", "a") as fh:
        for rnd in range(a.rounds):
            order = items if rnd % 2 == 0 else items[::-1]
            for m, cfg in order:
                key = f"{m['model']}.{m['rig']}.{cfg.name}.r{rnd}"
                if key in done:
                    prog.done += 1
                    continue
                meta = {k: m[k] for k in ("model", "model_file", "cluster", "rig", "n_prompt", "n_gen", "ubatch",
                                          "threads")}
                meta["round"] = rnd
                recs = run_config(cfg, a.bin, m["common"][cfg.engine], tests=expected_tests(m["n_prompt"], m["n_gen"]),
                                  log_dir=out / "logs" / f"{m['model']}.{m['rig']}.r{rnd}", meta=meta, progress=prog,
                                  timeout=a.timeout)
                fh.writelines(json.dumps(r) + "\n" for r in recs)
                fh.flush()
                with open(done_path, "a") as d:
                    d.write(key + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    # imported here: run as a script, the repository root is on sys.path only once main runs
    from benchmarks import speed_report
    from benchmarks.speed_models import ROUTERS, SPEED_MODELS
    from omni_place.kernels import CPU_SIMD

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models")
    m.add_argument("folder")
    m.add_argument("names", nargs="*", help="some of: " + ", ".join(SPEED_MODELS) + " (default: all)")
    m.add_argument("--header-only", action="store_true")
    m.add_argument("--router", choices=sorted(ROUTERS), default="unit", help="the routers' scale (module doc)")
    p = sub.add_parser("prepare")
    p.add_argument("model")
    p.add_argument("--cluster", required=True)
    p.add_argument("--rig", required=True)
    p.add_argument("--model-file")
    p.add_argument("--engine", default="llama.cpp", help="the dialect of the configurations (llama.cpp, ik_llama.cpp)")
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--n-gen", type=int, default=32)
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--configs", help="comma-separated subset of: fit, ot-exps, ncmoe, ngl, omni_place, "
                                      "omni_place_tg, omni_place_pp, omni_place_pin (the balanced plan pinned, "
                                      "or mmap'd when it pins), tail-exps (the smallest --n-cpu-moe's count of "
                                      "expert layers, the last ones), sweep (default: all)")
    p.add_argument("-o", "--output", required=True)
    g = sub.add_parser("rig")
    g.add_argument("name")
    g.add_argument("--gpu-free-mib", type=float, required=True)
    g.add_argument("--margin-mib", type=int, default=1024)
    g.add_argument("--cpu-gbs", type=float, required=True)
    g.add_argument("--cpu-gib", type=float, required=True)
    g.add_argument("--threads", type=int, required=True)
    g.add_argument("--simd", choices=CPU_SIMD, help="the CPU build's SIMD (default: none written, priced over both)")
    g.add_argument("--catalog", default="H200", help="the GPU's catalog name (devices --measure: its model)")
    g.add_argument("--stream-gbs", type=float, help="the GPU's pageable host->GPU rate (devices --measure: stream_gbs)")
    g.add_argument("--description", default="one GPU held down by a ballast, plus CPU RAM")
    g.add_argument("-o", "--output", required=True)
    r = sub.add_parser("run")
    r.add_argument("matrices", nargs="+")
    r.add_argument("--bin", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--timeout", type=float, default=300)
    q = sub.add_parser("report")
    q.add_argument("results", nargs="+", help="folders `run` wrote (records.jsonl + logs/), or result folders "
                                              "of speed_truth's or engine_compare's layout (_rows)")
    q.add_argument("--headers", required=True, help="folder of the models' headers, <model>.hdr.gguf or "
                                                    ".hdr.gguf.xz (speed models: models --header-only)")
    q.add_argument("--rigs", required=True, help="folder of the cluster files, <rig>.toml or rig_<level>.toml")
    q.add_argument("--cpu-gbs", type=float, help="price with this CPU bandwidth instead of the rig files' (e.g. "
                                                 "an idle probe's where theirs was read under load)")
    q.add_argument("--params", help="SpeedParams as JSON (default: the model's defaults)")
    q.add_argument("--calibration", help="price with the parameters of `omni-place calibrate --format json`")
    q.add_argument("--only-model", help="only this model's configurations")
    q.add_argument("--steady", action="store_true", help="leave out tests whose repetitions differ by more than "
                   "omni_place.bench.records.UNSTEADY_SPREAD, as `calibrate` does")
    q.add_argument("--routing", choices=("replayed", "uniform"), default="replayed",
                   help="the share of experts a ubatch touches: replayed from each speed model's router "
                        "(what the runs did, replay_routing) or the cost model's uniform-routing default "
                        "(always for models that are not speed models)")
    q.add_argument("--router", choices=sorted(ROUTERS), default="unit",
                   help="the routers the measured speed models had (raw: the first H200 runs)")
    q.add_argument("--json")
    w = sub.add_parser("versus")
    w.add_argument("results", nargs="+")
    w.add_argument("--json")
    v = sub.add_parser("vram")
    v.add_argument("results", nargs="+")
    v.add_argument("--headers", required=True)
    v.add_argument("--rigs", required=True)
    v.add_argument("--json")
    a = ap.parse_args(argv)
    return {"models": _models, "prepare": _prepare, "rig": _rig, "run": _run, "report": speed_report.report,
            "vram": speed_report.vram, "versus": speed_report.versus}[a.cmd](a)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
