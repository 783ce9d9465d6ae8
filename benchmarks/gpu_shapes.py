"""Whether a GPU's prompt rate per FLOP depends on the model's shape: dense Llama layers 1024-8192
wide, at ubatch 128-2048, in Q4_K and Q8_0, everything on one GPU.

The planner prices a GPU's prompt matmuls at one full-batch MMQ rate per compute capability (the
catalog's ``mmq_share``, fitted on 3-8B models) times a batch-width share
(``gpu_matmul.batch_rate``). On an H100, narrow models ran well below it (a 2048-wide dense model's
prompt over-predicted by ~65 %, a 3072-wide one by ~15 %, 4096-wide within 5 %:
benchmarks/results/hybrid_speed.md). MMQ splits a product's output into 128-row x J-token tiles
and, where they fill the SMs poorly, splits their K loop over one block per SM ("stream-k",
ggml/src/ggml-cuda/mmq.cuh ``launch_mul_mat_q``) and sums the partial tiles in a fixup kernel: a
product of few tiles and a short K runs a few iterations per block beside a fixed cost. This sweep
measures that over the range real models span. :data:`SWEEP` writes one model per point (weights
as holes: zeros, speed_models), ``run`` times ``-p 2048 -n 0 -ngl 99 -fa 1`` at each ubatch through
a llama-bench binary (one invocation per model, rounds interleaved), ``report`` prices each record
as a user's llama-bench output on the rig's cluster file.

    python -m benchmarks.gpu_shapes models /root/gs
    python -m benchmarks.gpu_shapes run BIN/llama-bench /root/gs -o OUT.jsonl --rig RIG.toml --round 1
    python -m benchmarks.gpu_shapes report benchmarks/results/gpu_shapes/*.jsonl
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.quant_speed import RESULTS

FOLDER = RESULTS / "gpu_shapes"
UBATCHES = (128, 256, 512, 1024, 2048)
N_PROMPT = 2048
TYPES = ("q4_k", "q8_0")
_LLAMA = dict(arch="llama", head_dim=128, n_vocab=32000)


def _dense(n_layer: int, n_embd: int, n_ff: int) -> dict[str, Any]:
    n_head = n_embd // 128
    return dict(_LLAMA, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=max(1, n_head // 4), n_ff=n_ff)


#: dense Llama layers (head_dim 128, GQA 4) over the widths real models have; FFN 2.75-4x
SWEEP: dict[str, dict[str, Any]] = {
    "gpu_d1024": _dense(24, 1024, 2816),
    "gpu_d1536": _dense(24, 1536, 4096),
    "gpu_d2048": _dense(16, 2048, 5632),
    "gpu_d2048f8192": _dense(16, 2048, 8192),
    "gpu_d2560": _dense(16, 2560, 6912),
    "gpu_d3072": _dense(16, 3072, 8192),
    "gpu_d4096": _dense(8, 4096, 14336),
    "gpu_d5120": _dense(8, 5120, 13824),
    "gpu_d6144": _dense(6, 6144, 16384),
    "gpu_d8192": _dense(4, 8192, 22528),
    # the same widths with other head counts: 32 heads of 64 (2048), 16 of 256 (4096)
    "gpu_d2048h64": dict(_dense(16, 2048, 5632), n_head=32, n_head_kv=8, head_dim=64),
    "gpu_d4096h256": dict(_dense(8, 4096, 14336), n_head=16, n_head_kv=4, head_dim=256),
}
#: the tests a run times: ``ubatch``, a 2048-token prompt at each of UBATCHES; ``depth``, a
#: 512-token prompt and a 64-token decode after each of DEPTHS cached tokens
TESTS = {"ubatch": ["-p", str(N_PROMPT), "-n", "0", "-b", str(N_PROMPT), "-ub", ",".join(map(str, UBATCHES))],
         "depth": ["-p", "512", "-n", "64", "-ub", "512", "-d", "0,2048,8192,32768"],
         "offload": ["-p", "512,2048", "-n", "32", "-b", "2048", "-ub", "512"]}


def write_models(folder: Path, header_only: bool = False) -> dict[tuple[str, str], Path]:
    from benchmarks.speed_models import write_speed_model

    return {(name, t): write_speed_model(name, folder, weight_type=t, shape=dims, header_only=header_only)
            for t in TYPES for name, dims in SWEEP.items()}


def run(binary: Path, folder: Path, output: Path, rig: Path, round_: int, reps: int, test: str = "ubatch",
        types: tuple[str, ...] = TYPES, shapes: list[str] | None = None, env: dict[str, str] | None = None,
        gpu_share: float = 1.0, threads: int | None = None) -> None:
    """llama-bench's ``test`` (a key of TESTS) on the models ``models`` wrote into ``folder`` (of
    ``types`` and ``shapes``, all by default), with ``env`` set and ``gpu_share`` of each model's
    layers on the GPU (the rest on the CPU, ``threads`` of it); round ``round_``'s order is the
    reverse of the one before it. Records (llama-bench's own, plus the shape, type, rig, round and
    ``env``) are appended to ``output``."""
    import os

    jobs = [(name, t) for t in types for name in shapes or SWEEP]
    if round_ % 2 == 0:
        jobs.reverse()
    with output.open("a") as fh:
        for name, t in jobs:
            path = folder / f"{name}.{t}.gguf"
            ngl = 99 if gpu_share >= 1 else round(SWEEP[name]["n_layer"] * gpu_share)
            argv = [str(binary), "-m", str(path), *TESTS[test], "-ngl", str(ngl), "-fa", "1", "-r", str(reps),
                    "-o", "jsonl", *(["-t", str(threads)] if threads else [])]
            proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
            if proc.returncode:
                print(f"{name} {t}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
            for line in proc.stdout.splitlines():
                if line.startswith("{"):
                    rec = json.loads(line)
                    rec.update(shape=name, type=t, rig=rig.name, round=round_, machine=platform.node(), env=env or {})
                    fh.write(json.dumps(rec) + "\n")
            fh.flush()
            print(f"{name} {t} r{round_}: done", flush=True)


def load(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.startswith("{")]


def price(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record priced as it ran (the llama.cpp dialect's reading of its fields, :func:`_jobs`) on its rig."""
    from benchmarks.hybrid_speed import predict

    with tempfile.TemporaryDirectory(prefix="omni_place_gpu_shapes_") as tmp:
        headers: dict[Any, Path] = dict(write_models(Path(tmp), header_only=True))
        rows = []
        for r, (header, rig, argv) in zip(records, _jobs(records, headers, FOLDER)):
            tps = predict(header, rig, argv)
            dims = SWEEP[r["shape"]]
            rows.append({"gpu": r["gpu_info"], "round": r["round"], "shape": r["shape"], "type": r["type"],
                         "n_embd": dims["n_embd"], "n_ff": dims["n_ff"], "n_layer": dims["n_layer"],
                         "ubatch": r["n_ubatch"], "depth": r.get("n_depth", 0), "ngl": r["n_gpu_layers"],
                         "test": f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}",
                         "env": " ".join(f"{k}={v}" for k, v in sorted(r.get("env", {}).items())),
                         "measured_tps": r["avg_ts"], "stdev_tps": r["stddev_ts"],
                         "predicted_tps": round(tps, 1), "error_pct": round(100 * (tps / r["avg_ts"] - 1), 1)})
    return rows


def _jobs(records: list[dict[str, Any]], headers: dict[Any, Path], folder: Path) -> list[tuple[Path, Path, list[str]]]:
    """(header, rig file, llama-bench flags) of each record, as ``calibrate`` reads a user's record."""
    from omni_place.engines import dialect

    out = []
    for r in records:
        flags = dialect("llama.cpp").bench_record_flags(r)
        key = (r["shape"], r["type"]) if "type" in r and (r["shape"], r["type"]) in headers else r["shape"]
        out.append((headers[key], folder / r["rig"], [*flags.argv, "-t", str(flags.threads)]))
    return out


def prompt_seconds(jobs: list[tuple[Path, Path, list[str]]], mmq_share: float, prompt_layer_us: float,
                   prompt_call_s: float) -> list[float]:
    """Seconds per prompt token of each job with Hopper's ``[[speed]]`` row (compute capability 9.0)
    at ``mmq_share`` and ``prompt_layer_us`` and SpeedParams' ``prompt_call_s``."""
    from dataclasses import replace
    from unittest import mock

    from omni_place.catalog import speed_share
    from omni_place.devices import cluster as cluster_mod
    from omni_place.placement import SpeedParams
    from omni_place.plan import evaluate

    def row(cc: str | None) -> Any:
        base = speed_share(cc)
        return replace(base, mmq_share=mmq_share, prompt_layer_us=prompt_layer_us) if cc == "9.0" else base

    params = SpeedParams(prompt_call_s=max(prompt_call_s, 1e-12))
    with mock.patch.object(cluster_mod, "speed_share", row):
        return [1.0 / evaluate(str(h), str(rig), argv, engine="llama.cpp", tool="bench", params=params).predicted.pp_tps
                for h, rig, argv in jobs]


def fit(train: list[tuple[Path, Path, list[str]]], measured_s: list[float], call_s: float | None = None,
        ) -> tuple[float, float, float]:
    """(mmq_share, prompt_layer_us, prompt_call_s) that price ``train``'s prompts best (least squares
    on log errors; ``call_s`` given: the call cost held at it). A job's price is linear in 1 / share,
    in the per-layer and in the per-call cost, so four pricings split it into those parts and the rest."""
    import numpy as np
    from scipy.optimize import least_squares

    base = np.array(prompt_seconds(train, 0.15, 0.0, 0.0))
    matmul = 2 * (base - np.array(prompt_seconds(train, 0.30, 0.0, 0.0)))  # at share 0.15
    per_us = (np.array(prompt_seconds(train, 0.15, 100.0, 0.0)) - base) / 100.0
    per_ms = np.array(prompt_seconds(train, 0.15, 0.0, 1e-3)) - base
    rest, meas = base - matmul, np.array(measured_s)

    def residuals(x: Any) -> Any:
        return np.log((rest + matmul * 0.15 / x[0] + per_us * x[1] + per_ms * x[2]) / meas)

    if call_s is not None:
        x = least_squares(lambda y: residuals([*y, call_s * 1e3]), [0.15, 100.0], bounds=([0.05, 0.0], [1.0, 2000.0])).x
        return float(x[0]), float(x[1]), call_s
    x = least_squares(residuals, [0.15, 100.0, 1.0], bounds=([0.05, 0.0, 0.0], [1.0, 2000.0, 100.0])).x
    return float(x[0]), float(x[1]), float(x[2]) * 1e-3


#: the call cost the shipped fit holds: the sweep prices within a point of its best from 1.5 to 3.5 ms
#: (it cannot pin it); a one-call 512-token test ran 1.0-1.4 ms a 512 tokens slower than four 512-token
#: ubatches of one call (1.3-1.9 ms a call), and the older H200 runs of speed_truth's models allow at
#: most ~2.3 ms (tests/test_speed_model.py::test_later_ubatches_of_a_prompt_attend_to_the_earlier)
CALL_S = 2.0e-3


def fit_report(paths: list[Path], hybrid: list[Path]) -> dict[str, Any]:
    """Fit Hopper's prompt parameters on the sweep's prompt records at ubatch 128-1024, each GPU's
    alone and both together (all three free), and both with the call cost held at CALL_S (the
    shipped fit); price every set with each fit: the sweeps, their ubatch-2048 runs and (held out)
    ``hybrid`` (benchmarks/hybrid_speed.py's whole-GPU runs of published shapes)."""
    from benchmarks import hybrid_speed

    with tempfile.TemporaryDirectory(prefix="omni_place_gpu_shapes_") as tmp:
        recs = [r for r in load(paths) if r["n_prompt"]]
        held = [r for r in load(hybrid) if r["n_prompt"] and r["n_gpu_layers"] >= 99 and not r.get("n_cpu_moe")]
        headers: dict[Any, Path] = dict(write_models(Path(tmp), header_only=True))
        headers.update(hybrid_speed.write_headers(Path(tmp), sorted({r["shape"] for r in held}), header_only=True))
        sets = {f"{gpu} ubatch 128-1024": [r for r in recs if r["gpu_info"] == gpu and r["n_ubatch"] <= 1024]
                for gpu in sorted({r["gpu_info"] for r in recs})}
        sets["both GPUs ubatch 2048"] = [r for r in recs if r["n_ubatch"] == 2048]
        sets["held out: whole-GPU runs of published shapes (H100)"] = held
        jobs = {name: (_jobs(rs, headers, FOLDER if rs is not held else hybrid_speed.FOLDER),
                       [1.0 / r["avg_ts"] for r in rs]) for name, rs in sets.items()}
        train_sets = [n for n in sets if "128-1024" in n]
        fits = {n: fit(*jobs[n]) for n in train_sets}
        both = ([j for n in train_sets for j in jobs[n][0]], [m for n in train_sets for m in jobs[n][1]])
        fits["both"] = fit(*both)
        fits["shipped"] = fit(*both, call_s=CALL_S)
        out: dict[str, Any] = {"fits": {}}
        for fname, x in fits.items():
            errs = {}
            for name, (js, meas) in jobs.items():
                e = [m / t - 1 for t, m in zip(prompt_seconds(js, *x), meas)]  # predicted tok/s / measured - 1
                errs[name] = {"n": len(e), "median_abs_pct": round(100 * statistics.median(map(abs, e)), 1),
                              "min_pct": round(100 * min(e), 1), "max_pct": round(100 * max(e), 1)}
            out["fits"][fname] = {"mmq_share": round(x[0], 3), "prompt_layer_us": round(x[1], 1),
                                  "prompt_call_ms": round(x[2] * 1e3, 2), "errors": errs}
    return out


def cpu_layer_sweep(paths: list[Path], hybrid: list[Path], values_us: list[float]) -> list[dict[str, Any]]:
    """Decode of the records with layers on the CPU (``paths``: the offload runs; ``hybrid``: held-out
    hybrid_speed gpu-run records at depth 0, no ``-ncmoe``) priced at each ``SpeedParams.cpu_layer_s``
    of ``values_us``: each set's median |error| and range."""
    from omni_place.placement import SpeedParams
    from omni_place.plan import evaluate

    from benchmarks import hybrid_speed

    sets = {"sweep": ([r for r in load(paths) if r["n_gen"] and r["n_gpu_layers"] < 99], FOLDER),
            "held out": ([r for r in load(hybrid) if r["n_gen"] and r["n_gpu_layers"] < 99 and not r.get("n_cpu_moe")
                          and not r.get("n_depth")], hybrid_speed.FOLDER)}
    with tempfile.TemporaryDirectory(prefix="omni_place_gpu_shapes_") as tmp:
        headers: dict[Any, Path] = dict(write_models(Path(tmp), header_only=True))
        headers.update(hybrid_speed.write_headers(Path(tmp), sorted({r["shape"] for r in sets["held out"][0]}),
                                                  header_only=True))
        jobs = {name: (rs, _jobs(rs, headers, folder)) for name, (rs, folder) in sets.items()}
        out = []
        for us in values_us:
            params = SpeedParams(cpu_layer_s=us * 1e-6)
            row: dict[str, Any] = {"cpu_layer_us": us}
            for name, (rs, js) in jobs.items():
                e = [evaluate(str(h), str(rig), argv, tool="bench", params=params).predicted.tg_tps / r["avg_ts"] - 1
                     for r, (h, rig, argv) in zip(rs, js)]
                row[name] = {"n": len(e), "median_abs_pct": round(100 * statistics.median(map(abs, e)), 1),
                             "min_pct": round(100 * min(e), 1), "max_pct": round(100 * max(e), 1)} if e else {}
            out.append(row)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """One line per (shape, type, ubatch): the rounds' measurements and the price's error range."""
    by: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["gpu"], r["env"], r["test"][:2], r["n_embd"], r["n_ff"], r["shape"], r["type"], r["ngl"],
                       r["test"], r["ubatch"], r["depth"]), []).append(r)
    out = ["| GPU | env | shape | type | -ngl | test | ubatch | depth | measured t/s (rounds) | predicted | error |",
           "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for (gpu, env, _, _, _, shape, t, ngl, test, ub, depth), rs in sorted(by.items()):
        meas = " / ".join(f"{r['measured_tps']:.0f}" for r in rs)
        errs = [r["error_pct"] for r in rs]
        out.append(f"| {gpu} | {env} | {shape} | {t} | {ngl} | {test} | {ub} | {depth} | {meas} | "
                   f"{rs[0]['predicted_tps']:.0f} | {min(errs):+.1f}..{max(errs):+.1f} % |")
    errs = [abs(r["error_pct"]) for r in rows]
    if errs:
        out.append(f"\n{len(rows)} records: median |error| {statistics.median(errs):.1f} %, max {max(errs):.1f} %")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_shapes", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="write the SWEEP models (Q4_K and Q8_0)")
    m.add_argument("folder", type=Path)
    r = sub.add_parser("run", help="time every model in FOLDER with a llama-bench binary")
    r.add_argument("binary", type=Path)
    r.add_argument("folder", type=Path)
    r.add_argument("-o", "--output", type=Path, required=True)
    r.add_argument("--rig", type=Path, required=True, help="the cluster file the records are priced on")
    r.add_argument("--round", type=int, default=1)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--test", choices=sorted(TESTS), default="ubatch")
    r.add_argument("--types", nargs="+", default=list(TYPES))
    r.add_argument("--shapes", nargs="+", choices=sorted(SWEEP))
    r.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="environment for llama-bench")
    r.add_argument("--gpu-share", type=float, default=1.0, help="share of each model's layers on the GPU")
    r.add_argument("--threads", type=int, help="llama-bench -t")
    f = sub.add_parser("fit", help="fit Hopper's prompt parameters on the records; price held-out runs")
    f.add_argument("records", nargs="+", type=Path)
    f.add_argument("--held-out", nargs="+", type=Path, default=[], help="hybrid_speed gpu-run records")
    f.add_argument("--json", type=Path)
    c = sub.add_parser("cpu-layer", help="decode with CPU layers priced at several cpu_layer_s")
    c.add_argument("records", nargs="+", type=Path)
    c.add_argument("--held-out", nargs="+", type=Path, default=[], help="hybrid_speed gpu-run records")
    c.add_argument("--us", nargs="+", type=float, default=[300.0, 200.0, 150.0, 100.0, 80.0])
    q = sub.add_parser("report", help="price the records")
    q.add_argument("records", nargs="+", type=Path)
    q.add_argument("--json", type=Path, help="also write the priced rows here")
    a = ap.parse_args(argv)
    if a.cmd == "models":
        for p in write_models(a.folder).values():
            print(p, flush=True)
    elif a.cmd == "fit":
        result = fit_report(a.records, a.held_out)
        print(json.dumps(result, indent=1))
        if a.json:
            a.json.write_text(json.dumps(result, indent=1) + "\n")
    elif a.cmd == "cpu-layer":
        print(json.dumps(cpu_layer_sweep(a.records, a.held_out, a.us), indent=1))
    elif a.cmd == "run":
        run(a.binary, a.folder, a.output, a.rig, a.round, a.reps, a.test, tuple(a.types), a.shapes,
            dict(kv.split("=", 1) for kv in a.env), a.gpu_share, a.threads)
    else:
        rows = price(load(a.records))
        print(table(rows))
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
