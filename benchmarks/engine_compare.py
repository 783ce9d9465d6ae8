"""omni_place's plan against each engine's default split, --fit and the community recipes, with
llama-bench on a real GPU machine (the harness behind benchmarks/results/engine_compare*).

Three steps, so that the GPU machine needs no compiled omni_place core (it has another Python).
Run from the repository root, so that a checkout without ``pip install`` imports omni_place:

    # here: configurations + omni_place's predictions for every engine -> matrix JSON
    python -m benchmarks.engine_compare prepare MODEL.gguf --cluster rig.toml \
        --model-file /models/moe33.gguf --engine llama.cpp --engine ik_llama.cpp -o matrix.json
    # on the GPU machine: run the matrix (standard library only), records + -v logs
    python -m benchmarks.engine_compare run matrix.json --bin llama.cpp=/b/main/llama-bench \
        --bin ik_llama.cpp=/b/ik/llama-bench --out results/
    # here: read the placements back from the logs, price them, table + chart
    python -m benchmarks.engine_compare report results/records.jsonl --model MODEL.gguf \
        --cluster rig.toml --logs results/logs --table table.md --svg chart.svg

`omni-place bench` does the same three steps in one process (omni_place.bench.run_bench).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omni_place import bench


def _prepare(a: argparse.Namespace) -> int:
    from omni_place.devices import resolve_cluster
    from omni_place.engines import BENCH_ENGINES  # imported here: `run` needs no compiled core

    unknown = sorted(set(a.engine) - set(BENCH_ENGINES))
    if unknown:
        raise SystemExit(f"engine_compare prepare: unknown --engine {unknown}; use {', '.join(BENCH_ENGINES)}")
    a.engine = a.engine or list(BENCH_ENGINES)
    cluster = resolve_cluster(a.cluster)
    matrix = bench.build_matrix(a.model, cluster, a.engine, model_file=a.model_file, n_prompt=a.n_prompt,
                                n_gen=a.n_gen, ubatch=a.ubatch, reps=a.reps, threads=a.threads, rig=a.rig,
                                objective=a.objective)
    Path(a.output).write_text(json.dumps(matrix, indent=1))
    for c in matrix["configs"]:
        for att in c["attempts"]:
            p = att["predicted"] or {}
            print(f"{c['engine']:13s} {c['name']:10s} {' '.join(att['argv'])[:90]:90s} "
                  f"feasible={p.get('feasible')} tg={p.get('tg_tps')} pp={p.get('pp_tps')}")
    return 0


def _run(a: argparse.Namespace) -> int:
    matrix = json.loads(Path(a.matrix).read_text())
    if a.threads:
        matrix["threads"] = a.threads
    if a.model_file:
        matrix["model_file"] = a.model_file
    if a.reps:
        matrix["reps"] = a.reps
    binaries = dict(b.split("=", 1) for b in a.bin)
    env = dict(e.split("=", 1) for e in a.env)
    bench.run_matrix(matrix, binaries, Path(a.out), timeout=a.timeout, only=a.only, env=env)
    return 0


def _report(a: argparse.Namespace) -> int:
    from omni_place.devices import resolve_cluster

    records = bench.load_records(a.records)
    if a.model and a.cluster:
        cluster = resolve_cluster(a.cluster)
        bench.attach_placements(records, a.model, cluster, Path(a.logs) if a.logs else None)
    if a.write:
        Path(a.write).write_text("".join(json.dumps(r) + "\n" for r in records))
    table = bench.comparison_table(records)
    print(table)
    print()
    for line in bench.target_check(records):
        print(line)
    if a.table:
        Path(a.table).write_text(table + "\n")
    if a.svg:
        Path(a.svg).write_text(bench.svg_chart(records, "tg"))
    if a.svg_pp:
        Path(a.svg_pp).write_text(bench.svg_chart(records, "pp"))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("model")
    p.add_argument("--cluster", required=True)
    p.add_argument("--model-file", help="the model's path on the machine that runs the matrix")
    p.add_argument("--engine", action="append", default=[], help="llama.cpp or ik_llama.cpp (default: both)")
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--n-gen", type=int, default=64)
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--objective", default="balanced")
    p.add_argument("--rig")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(fn=_prepare)
    r = sub.add_parser("run")
    r.add_argument("matrix")
    r.add_argument("--bin", action="append", required=True, help="ENGINE=PATH of llama-bench")
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int)
    r.add_argument("--reps", type=int)
    r.add_argument("--model-file")
    r.add_argument("--only", action="append", help="run only these configurations")
    r.add_argument("--timeout", type=float, default=900)
    r.add_argument("--env", action="append", default=[], help="K=V for every run (an attempt's own env wins)")
    r.set_defaults(fn=_run)
    q = sub.add_parser("report")
    q.add_argument("records", nargs="+")
    q.add_argument("--model")
    q.add_argument("--cluster")
    q.add_argument("--logs")
    q.add_argument("--write", help="write the records with placements and as-run prices here")
    q.add_argument("--table")
    q.add_argument("--svg")
    q.add_argument("--svg-pp")
    q.set_defaults(fn=_report)
    a = ap.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
