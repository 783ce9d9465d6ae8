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
    python -m benchmarks.gpu_shapes fit RECORDS... --held-out HYBRID_SPEED_RECORDS...
    python -m benchmarks.gpu_shapes cpu-threads benchmarks/results/gpu_shapes/h100s46b_cpu_round*.jsonl

``fit`` fits the prompt's fixed costs: the host's (tokens, KQ mask) on the ``gpu_tiny`` models, the GPU's per
layer and MMQ share on the rest; ``cpu-layer`` and ``cpu-threads`` price and split decode with CPU layers.
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
    # layers too small to cost the GPU anything: their prompt is the host's work per call and
    # ubatch (the KQ mask), one layer or three
    "gpu_tiny_l1": dict(_LLAMA, n_layer=1, n_embd=256, n_head=1, n_head_kv=1, head_dim=64, n_ff=256),
    "gpu_tiny_l3": dict(_LLAMA, n_layer=3, n_embd=256, n_head=1, n_head_kv=1, head_dim=64, n_ff=256),
}
#: the tests a run times: ``ubatch``, a 2048-token prompt at each of UBATCHES; ``depth``, a
#: 512-token prompt and a 64-token decode after each of DEPTHS cached tokens; ``offload``, prompts and a
#: decode with a share of the layers on the CPU; ``decode``, a 32-token decode alone (``--threads 1,2,4``)
TESTS = {"ubatch": ["-p", str(N_PROMPT), "-n", "0", "-b", str(N_PROMPT), "-ub", ",".join(map(str, UBATCHES))],
         "depth": ["-p", "512", "-n", "64", "-ub", "512", "-d", "0,2048,8192,32768"],
         "offload": ["-p", "512,2048", "-n", "32", "-b", "2048", "-ub", "512"],
         "decode": ["-p", "0", "-n", "32"]}


def write_models(folder: Path, header_only: bool = False) -> dict[tuple[str, str], Path]:
    from benchmarks.speed_models import write_speed_model

    return {(name, t): write_speed_model(name, folder, weight_type=t, shape=dims, header_only=header_only)
            for t in TYPES for name, dims in SWEEP.items()}


def run(binary: Path, folder: Path, output: Path, rig: Path, round_: int, reps: int, test: str = "ubatch",
        types: tuple[str, ...] = TYPES, shapes: list[str] | None = None, env: dict[str, str] | None = None,
        gpu_share: float = 1.0, threads: str | None = None) -> None:
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


#: the prompt parameters ``fit`` fits: Hopper's ``[[speed]]`` row's ``mmq_share`` and ``prompt_layer_us``,
#: SpeedParams' host costs ``prompt_token_s``, ``mask_cell_s`` and ``mask_byte_s``
PARAMS = ("mmq_share", "prompt_layer_us", "prompt_token_s", "mask_cell_s", "mask_byte_s")


def prompt_seconds(jobs: list[tuple[Path, Path, list[str]]], mmq_share: float, prompt_layer_us: float,
                   prompt_token_s: float = 0.0, mask_cell_s: float = 0.0, mask_byte_s: float = 0.0) -> list[float]:
    """Seconds per prompt token of each job with Hopper's ``[[speed]]`` row (compute capability 9.0)
    at ``mmq_share`` and ``prompt_layer_us`` and SpeedParams' host costs at the rest (:data:`PARAMS`)."""
    from dataclasses import replace
    from unittest import mock

    from omni_place.catalog import speed_share
    from omni_place.devices import cluster as cluster_mod
    from omni_place.placement import SpeedParams
    from omni_place.plan import evaluate

    def row(cc: str | None) -> Any:
        base = speed_share(cc)
        return replace(base, mmq_share=mmq_share, prompt_layer_us=prompt_layer_us) if cc == "9.0" else base

    tiny = 1e-18  # SpeedParams' costs are positive; this prices as none
    params = SpeedParams(prompt_token_s=max(prompt_token_s, tiny), mask_cell_s=max(mask_cell_s, tiny),
                         mask_byte_s=max(mask_byte_s, tiny))
    with mock.patch.object(cluster_mod, "speed_share", row):
        return [1.0 / evaluate(str(h), str(rig), argv, engine="llama.cpp", tool="bench", params=params).predicted.pp_tps
                for h, rig, argv in jobs]


#: each parameter's unit in the fits' search, its starting value and bounds there
_UNITS = {"mmq_share": (1.0, 0.15, 0.05, 1.0), "prompt_layer_us": (1.0, 100.0, 0.0, 2000.0),
          "prompt_token_s": (1e-6, 1.0, 0.0, 100.0),
          "mask_cell_s": (1e-9, 1.0, 0.0, 100.0), "mask_byte_s": (1e-9, 0.1, 0.0, 10.0)}
#: the GPU's parameters and the host's
GPU_PARAMS, HOST_PARAMS = PARAMS[:2], PARAMS[2:]


def _least_squares(residuals: Any, free: tuple[str, ...]) -> dict[str, float]:
    from scipy.optimize import least_squares

    x = least_squares(lambda y: residuals({n: v * _UNITS[n][0] for n, v in zip(free, y)}), [_UNITS[n][1] for n in free],
                      bounds=([_UNITS[n][2] for n in free], [_UNITS[n][3] for n in free])).x
    return {n: float(v) * _UNITS[n][0] for n, v in zip(free, x)}


def fit_host(jobs: list[tuple[Path, Path, list[str]]], measured_s: list[float],
             gpu: dict[str, float]) -> dict[str, float]:
    """The host's :data:`HOST_PARAMS` that price ``jobs`` (tests of layers too small to cost the GPU
    anything: SWEEP's gpu_tiny models) best, least squares on log errors, priced whole at each step
    (a later ubatch's host work shows only beyond the device time before it), the GPU's at ``gpu``."""
    import numpy as np

    meas = np.array(measured_s)
    return _least_squares(lambda v: np.log(np.array(prompt_seconds(jobs, *(gpu | v).values())) / meas), HOST_PARAMS)


def fit_gpu(train: list[tuple[Path, Path, list[str]]], measured_s: list[float], host: dict[str, float],
            share: float | None = None) -> dict[str, float]:
    """The GPU's :data:`GPU_PARAMS` that price ``train``'s prompts best (least squares on log errors),
    the host's at ``host`` (``share``: the MMQ share held there). A job's price is linear in 1 / share
    and in the per-layer cost (the host's work hidden behind wide layers' ubatches), so three pricings
    split it into those parts and the rest."""
    import numpy as np

    def priced(mmq: float, layer_us: float) -> Any:
        return np.array(prompt_seconds(train, mmq, layer_us, *host.values()))

    base = priced(0.15, 0.0)
    matmul, per_us = 2 * (base - priced(0.30, 0.0)), (priced(0.15, 100.0) - base) / 100.0  # matmuls at 0.15
    rest, meas = base - matmul, np.array(measured_s)
    held = {} if share is None else {"mmq_share": share}
    free = tuple(n for n in GPU_PARAMS if n not in held)

    def residuals(v: dict[str, float]) -> Any:
        v = held | v
        return np.log((rest + matmul * 0.15 / v["mmq_share"] + per_us * v["prompt_layer_us"]) / meas)

    return held | _least_squares(residuals, free)


def fit(host_jobs: tuple[list[Any], list[float]], gpu_jobs: tuple[list[Any], list[float]],
        share: float | None = None, rounds: int = 2) -> dict[str, float]:
    """All :data:`PARAMS`: the host's on ``host_jobs`` and the GPU's on ``gpu_jobs`` in turn (the tiny
    layers' device time is the per-layer cost), from the shipped values; ``share``: the MMQ share held."""
    from omni_place.catalog import speed_share
    from omni_place.placement import SpeedParams

    row, sp = speed_share("9.0"), SpeedParams()
    values = {"mmq_share": row.mmq_share, "prompt_layer_us": row.prompt_layer_us}
    values |= {n: getattr(sp, n) for n in HOST_PARAMS}
    for _ in range(rounds):
        values |= fit_host(*host_jobs, {n: values[n] for n in GPU_PARAMS})
        values |= fit_gpu(*gpu_jobs, {n: values[n] for n in HOST_PARAMS}, share)
    return {n: values[n] for n in PARAMS}


#: the MMQ share the shipped fit holds: Hopper's row's from session 45's fit, the one the GPU decode's
#: kernel floor and the weight types' decode factors were derived against (kernels.KERNEL_FLOPS_PER_BYTE,
#: quant_speed report --write); the free fit moves it by 3 %, within the per-layer cost's reach
SHIPPED_SHARE = 0.174


def fit_report(paths: list[Path], hybrid: list[Path]) -> dict[str, Any]:
    """Fit Hopper's prompt parameters (:func:`fit`): the host's on the gpu_tiny records, the GPU's on
    the rest of the sweep's prompt records (ubatch 128-2048, depth 0-32768), each GPU's alone and both
    together, and both with the MMQ share held (the shipped fit); price every set with each fit: the
    sweeps, their ubatch-2048 and depth-32768 runs and (held out) ``hybrid`` (benchmarks/hybrid_speed.py's
    whole-GPU runs of published shapes)."""
    from benchmarks import hybrid_speed

    with tempfile.TemporaryDirectory(prefix="omni_place_gpu_shapes_") as tmp:
        recs = [r for r in load(paths) if r["n_prompt"]]
        held = [r for r in load(hybrid) if r["n_prompt"] and r["n_gpu_layers"] >= 99 and not r.get("n_cpu_moe")]
        headers: dict[Any, Path] = dict(write_models(Path(tmp), header_only=True))
        headers.update(hybrid_speed.write_headers(Path(tmp), sorted({r["shape"] for r in held}), header_only=True))
        tiny = [r for r in recs if r["shape"].startswith("gpu_tiny")]
        wide = [r for r in recs if not r["shape"].startswith("gpu_tiny")]
        sets = {"host: gpu_tiny layers": tiny}
        sets |= {f"{gpu} ubatch 128-2048": [r for r in wide if r["gpu_info"] == gpu]
                 for gpu in sorted({r["gpu_info"] for r in wide})}
        sets["both GPUs ubatch 2048"] = [r for r in wide if r["n_ubatch"] == 2048]
        sets["both GPUs depth 32768"] = [r for r in wide if r.get("n_depth") == 32768]
        sets["held out: whole-GPU runs of published shapes (H100)"] = held
        jobs = {name: (_jobs(rs, headers, FOLDER if rs is not held else hybrid_speed.FOLDER),
                       [1.0 / r["avg_ts"] for r in rs]) for name, rs in sets.items()}
        gpu_sets = [n for n in sets if "128-2048" in n]
        fits = {n: fit(jobs["host: gpu_tiny layers"], jobs[n]) for n in gpu_sets}
        both = ([j for n in gpu_sets for j in jobs[n][0]], [m for n in gpu_sets for m in jobs[n][1]])
        fits["both"] = fit(jobs["host: gpu_tiny layers"], both)
        fits["shipped"] = fit(jobs["host: gpu_tiny layers"], both, share=SHIPPED_SHARE)
        out: dict[str, Any] = {"fits": {}}
        for fname, x in fits.items():
            errs = {}
            for name, (js, meas) in jobs.items():
                priced = prompt_seconds(js, *(x[n] for n in PARAMS))
                errs[name] = _spread([m / t - 1 for t, m in zip(priced, meas)])  # predicted / measured - 1
            out["fits"][fname] = {"mmq_share": round(x["mmq_share"], 3),
                                  "prompt_layer_us": round(x["prompt_layer_us"], 1),
                                  "prompt_token_us": round(x["prompt_token_s"] * 1e6, 3),
                                  "mask_cell_ns": round(x["mask_cell_s"] * 1e9, 3),
                                  "mask_byte_ns": round(x["mask_byte_s"] * 1e9, 4), "errors": errs}
    return out


def cpu_layer_sweep(paths: list[Path], hybrid: list[Path], values_us: list[float]) -> list[dict[str, Any]]:
    """Decode of the records with layers on the CPU (``paths``: gpu_shapes runs; ``hybrid``: held-out
    hybrid_speed gpu-run records at depth 0, no ``-ncmoe``) priced at each ``SpeedParams.cpu_layer_s``
    of ``values_us``: each set's median |error| and range, and by threads."""
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
                row[name] = _spread(e)
                for t in sorted({r["n_threads"] for r in rs}):
                    row[f"{name} -t {t}"] = _spread([x for x, r in zip(e, rs) if r["n_threads"] == t])
            out.append(row)
    return out


def cpu_threads(paths: list[Path]) -> list[dict[str, Any]]:
    """Per CPU thread count of the records (``decode`` tests with layers on the CPU), the per-layer
    cost that splits their decode time best into the priced weights' reads (times a factor fitted
    beside it, so the CPU's measured bandwidth need not be right) and a cost a CPU layer: least
    squares over the shapes; the layers counted in llama layers' graph nodes (cost.LAYER_OPS)."""
    import numpy as np

    from omni_place.placement import SpeedParams
    from omni_place.plan import evaluate

    recs = [r for r in load(paths) if r["n_gen"] and r["n_gpu_layers"] < 99]
    with tempfile.TemporaryDirectory(prefix="omni_place_gpu_shapes_") as tmp:
        headers: dict[Any, Path] = dict(write_models(Path(tmp), header_only=True))

        def seconds(job: tuple[Path, Path, list[str]], layer_us: float) -> float:
            params = SpeedParams(cpu_layer_s=max(layer_us, 1e-6) * 1e-6)
            return 1.0 / evaluate(str(job[0]), str(job[1]), job[2], tool="bench", params=params).predicted.tg_tps

        rows = []
        for (ngl_zero, t), rs in sorted(_group(recs, lambda r: (r["n_gpu_layers"] == 0, r["n_threads"])).items()):
            js = _jobs(rs, headers, FOLDER)
            reads = np.array([seconds(j, 0.0) for j in js])
            layers = (np.array([seconds(j, 100.0) for j in js]) - reads) / 100e-6
            meas = np.array([1.0 / r["avg_ts"] for r in rs])
            (factor, layer_s), *_ = np.linalg.lstsq(np.column_stack([reads, layers]), meas, rcond=None)
            rows.append({"cpu_only": ngl_zero, "threads": t, "n": len(rs), "reads_factor": round(float(factor), 2),
                         "layer_us": round(float(layer_s) * 1e6), "residual_pct": [
                             round(float(x)) for x in 100 * (meas - factor * reads - layer_s * layers) / meas]})
    return rows


def _group(rows: list[dict[str, Any]], key: Any) -> dict[Any, list[dict[str, Any]]]:
    """``rows`` by ``key(row)``, in their order."""
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def _spread(errors: list[float]) -> dict[str, Any]:
    """Median |error| and range of ``errors`` (predicted / measured - 1), in %."""
    return {"n": len(errors), "median_abs_pct": round(100 * statistics.median(map(abs, errors)), 1),
            "min_pct": round(100 * min(errors), 1), "max_pct": round(100 * max(errors), 1)} if errors else {}


def table(rows: list[dict[str, Any]]) -> str:
    """One line per (shape, type, ubatch): the rounds' measurements and the price's error range."""
    by = _group(rows, lambda r: (r["gpu"], r["env"], r["test"][:2], r["n_embd"], r["n_ff"], r["shape"], r["type"],
                                 r["ngl"], r["test"], r["ubatch"], r["depth"]))
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
    r.add_argument("--threads", help="llama-bench -t (a comma list runs each)")
    f = sub.add_parser("fit", help="fit Hopper's prompt parameters on the records; price held-out runs")
    f.add_argument("records", nargs="+", type=Path)
    f.add_argument("--held-out", nargs="+", type=Path, default=[], help="hybrid_speed gpu-run records")
    f.add_argument("--json", type=Path)
    c = sub.add_parser("cpu-layer", help="decode with CPU layers priced at several cpu_layer_s")
    c.add_argument("records", nargs="+", type=Path)
    c.add_argument("--held-out", nargs="+", type=Path, default=[], help="hybrid_speed gpu-run records")
    c.add_argument("--us", nargs="+", type=float, default=[300.0, 200.0, 150.0, 100.0, 80.0])
    t = sub.add_parser("cpu-threads", help="the per-layer CPU decode cost at each thread count of the records")
    t.add_argument("records", nargs="+", type=Path)
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
    elif a.cmd == "cpu-threads":
        print(json.dumps(cpu_threads(a.records), indent=1))
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
