"""Decode attention on the CPU at depth: far slower than a read of the KV cache.

llama.cpp's CPU flash attention decodes one query row per head over the cache
(ggml/src/ggml-cpu/ops.cpp:8843 ggml_compute_forward_flash_attn_ext_f16_one_chunk: per cell an
F16 dot of the key, an online-softmax step with expf, an F16 axpy of the value), split over the
threads by cells from 512 cells on (ops.cpp:9490-9520) and by heads below; without flash
attention it is two F16 matmuls around a softmax. The planner read the cache at the memory's rate
and priced its depth slope 2.6-57x too fast. Now (``omni_place/attention.py``) a CPU layer's
decode attention takes the slowest of its cache at the memory's rate, its cache at a rate that
grows with the threads (``CPU_DECODE_KV_BYTES_PER_FLOP``) and its FLOPs at a share of the CPU's
matmul rate (``CPU_DECODE_FLOP_SHARE``, what binds MLA's shared latent row).

``run`` writes small CPU-only models (zero weights, Q4_K; ``speed_models``) that differ in heads,
head size and attention (GQA, MHA, MLA), and times single-token decodes through libllama (llama-cpp-python) after
filling the cache to each depth, flash attention on and off, at the given thread counts;
``run-bench`` times the same with a llama-bench binary (ik_llama.cpp's: ``-gp DEPTH,16``); ``report``
prices each record as a llama-bench ``-ngl 0 -n 16 -d DEPTH`` on the measured CPU, by its engine.

    python -m benchmarks.cpu_attention run -o benchmarks/results/cpu_attention/libllama_epyc2.jsonl \\
        --threads 2,1 --bandwidth-gbs 34.4
    python -m benchmarks.cpu_attention report benchmarks/results/cpu_attention/libllama_epyc2.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, Any]] = {
    # GQA 32/8, 128-wide heads (Llama-3-8B's attention), a small FFN so attention dominates at depth
    "attn_gqa": dict(arch="llama", n_layer=2, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=1024,
                     n_vocab=32000),
    # MHA 16/16, 64-wide heads: other heads, other bytes per FLOP
    "attn_mha": dict(arch="llama", n_layer=2, n_embd=1024, n_head=16, n_head_kv=16, head_dim=64, n_ff=1024,
                     n_vocab=32000),
    # MLA (deepseek2, mla16's attention): 16 heads share one 576-wide latent row a cell
    "attn_mla": dict(arch="deepseek2", n_layer=2, n_embd=2048, n_head=16, n_head_kv=1, head_dim=128, n_rot=64,
                     kv_lora_rank=512, q_lora_rank=768, n_ff=1024, n_expert=64, n_expert_used=6, n_ff_exp=256,
                     n_expert_shared=2, n_dense_lead=1, n_vocab=32000),
}
DEPTHS = (0, 1024, 4096, 8192)
N_GEN = 16


def write(folder: Path, shapes: list[str]) -> dict[str, Path]:
    from benchmarks.speed_models import write_speed_model

    return {name: write_speed_model(name, folder, weight_type="q4_k", shape=SHAPES[name]) for name in shapes}


def time_decode(path: Path, threads: int, flash_attn: bool) -> dict[int, list[float]]:
    """Seconds of each of N_GEN single-token decodes after filling the cache to each depth."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_gpu_layers=0, n_ctx=max(DEPTHS) + 2 * N_GEN, n_batch=512, n_ubatch=512,
                n_threads=threads, n_threads_batch=threads, flash_attn=flash_attn, verbose=False)
    rng = random.Random(0)
    out = {}
    for depth in DEPTHS:
        llm.reset()
        if depth:
            llm.eval([rng.randrange(1, llm.n_vocab()) for _ in range(depth)])
        samples = []
        for i in range(N_GEN + 1):
            start = time.perf_counter()
            llm.eval([rng.randrange(1, llm.n_vocab())])
            if i:  # the first decode after the prompt is a warm-up
                samples.append(time.perf_counter() - start)
        out[depth] = samples
    llm.close()
    return out


def run(output: Path, threads: list[int], bandwidth_gbs: float, folder: Path, shapes: list[str]) -> None:
    import llama_cpp

    from benchmarks.cpu_prompt import cpu_name

    paths = write(folder, shapes)
    with output.open("a") as fh:
        for n in threads:
            for name, path in paths.items():
                for fa in (True, False):
                    for depth, samples in time_decode(path, n, fa).items():
                        rec = {"machine": cpu_name(), "bandwidth_gbs": bandwidth_gbs, "threads": n, "shape": name,
                               "flash_attn": fa, "depth": depth, "samples_s": samples,
                               "llama_cpp_python": llama_cpp.__version__}
                        fh.write(json.dumps(rec) + "\n")
                        print(f"{name} -t {n} -fa {int(fa)} -d {depth}: {1e3 * statistics.median(samples):.2f} ms",
                              flush=True)


def run_bench(binary: Path, output: Path, threads: list[int], bandwidth_gbs: float, folder: Path,
              shapes: list[str], reps: int, flash_attn: tuple[bool, ...] = (True, False)) -> None:
    """:func:`run` with a llama-bench binary: ``-n 16 -d DEPTH`` (mainline), ``-gp DEPTH,16``
    (ik_llama.cpp: the prompt untimed, examples/llama-bench/llama-bench.cpp:2245), one record per
    test with llama-bench's own inside (``samples_s``: each repetition's seconds a token)."""
    import subprocess

    from omni_place.engines import engine_of_bench_record, engine_of_binary

    from benchmarks.cpu_prompt import cpu_name

    paths, ik = write(folder, shapes), engine_of_binary(str(binary)) == "ik_llama.cpp"
    tests = ["-p", "0", "-n", "0", *(a for d in DEPTHS for a in ("-gp", f"{d},{N_GEN}"))] if ik else [
        "-p", "0", "-n", str(N_GEN), "-d", ",".join(map(str, DEPTHS))]
    with output.open("a") as fh:
        for n in threads:
            for name, path in paths.items():
                for fa in flash_attn:
                    out = subprocess.run([str(binary), "-m", str(path), "-ngl", "0", "-t", str(n), "-fa", str(int(fa)),
                                          "-r", str(reps), "-o", "json", *tests],
                                         capture_output=True, text=True, check=True).stdout
                    for bench in json.loads(out):
                        depth = bench["n_prompt"] if ik else bench["n_depth"]
                        rec = {"machine": cpu_name(), "bandwidth_gbs": bandwidth_gbs, "threads": n, "shape": name,
                               "flash_attn": fa, "depth": depth, "engine": engine_of_bench_record(bench),
                               "samples_s": [1 / ts for ts in bench["samples_ts"]], "bench": bench}
                        fh.write(json.dumps(rec) + "\n")
                        print(f"{rec['engine']} {name} -t {n} -fa {int(fa)} -d {depth}: "
                              f"{1e3 * statistics.median(rec['samples_s']):.2f} ms", flush=True)


def priced(records: list[dict[str, Any]], folder: Path, cpu_tflops_per_core: float | None = None,
           ) -> list[tuple[dict[str, Any], float, float]]:
    """(record, measured ms, priced ms) per record: a llama-bench ``-ngl 0 -n 16 -d DEPTH`` (ik's:
    ``-gp DEPTH,16``) of the record's model on a CPU-only cluster of its machine (its matmul rate
    ``cpu_tflops_per_core``, else the planner's default)."""
    from omni_place.model import load_model
    from omni_place.placement import SpeedParams
    from omni_place.plan import evaluate

    from benchmarks.cpu_prompt import cpu_cluster
    from benchmarks.speed_models import write_speed_model

    params = SpeedParams() if cpu_tflops_per_core is None else SpeedParams(cpu_tflops_per_core=cpu_tflops_per_core)
    models = {name: load_model(write_speed_model(name, folder, header_only=True, weight_type="q4_k", shape=dims))
              for name, dims in SHAPES.items() if any(r["shape"] == name for r in records)}
    out = []
    for r in records:
        cluster = cpu_cluster(folder, r["bandwidth_gbs"], r["threads"])
        test = (["-n", "0", "-gp", f"{r['depth']},{N_GEN}"] if r.get("engine") == "ik_llama.cpp"  # ik has no -d
                else ["-n", str(N_GEN), "-d", str(r["depth"])])
        argv = ["-ngl", "0", "-p", "0", *test, "-fa", str(int(r["flash_attn"])), "-t", str(r["threads"])]
        tg = evaluate(models[r["shape"]], str(cluster), argv, tool="bench", params=params,
                      engine=r.get("engine") or "llama.cpp").predicted.tg_tps
        out.append((r, 1e3 * statistics.median(r["samples_s"]), 1e3 / tg))
    return out


def report(paths: list[Path], cpu_tflops_per_core: float | None) -> int:
    import tempfile

    from benchmarks.cpu_prompt import load

    records = load(paths)
    with tempfile.TemporaryDirectory() as tmp:
        rows = priced(records, Path(tmp), cpu_tflops_per_core)
    print("| model | threads | -fa | depth | measured ms | priced ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for r, measured, price in rows:
        print(f"| {r['shape']} | {r['threads']} | {int(r['flash_attn'])} | {r['depth']} | {measured:.2f} "
              f"| {price:.2f} ({price / measured - 1:+.0%}) |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpu_attention", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="time CPU decodes at depth through libllama")
    r.add_argument("-o", "--output", type=Path, required=True)
    r.add_argument("--threads", default="2", help="comma-separated thread counts")
    r.add_argument("--bandwidth-gbs", type=float, required=True, help="`omni-place devices --measure`'s CPU figure")
    r.add_argument("--folder", type=Path, default=Path("/tmp/omni_place_cpu_attention"))
    r.add_argument("--shapes", default=",".join(SHAPES), help="some of: " + ", ".join(SHAPES))
    b = sub.add_parser("run-bench", help="the same with a llama-bench binary (mainline's or ik_llama.cpp's)")
    b.add_argument("binary", type=Path)
    b.add_argument("-o", "--output", type=Path, required=True)
    b.add_argument("--threads", default="2", help="comma-separated thread counts")
    b.add_argument("--bandwidth-gbs", type=float, required=True, help="`omni-place devices --measure`'s CPU figure")
    b.add_argument("--folder", type=Path, default=Path("/tmp/omni_place_cpu_attention"))
    b.add_argument("--shapes", default=",".join(SHAPES), help="some of: " + ", ".join(SHAPES))
    b.add_argument("--reps", type=int, default=3)
    b.add_argument("--fa", default="1,0", help="flash attention settings to run")
    q = sub.add_parser("report", help="measured against priced")
    q.add_argument("records", nargs="+", type=Path)
    q.add_argument("--cpu-tflops-per-core", type=float, help="the CPU's Q4_K matmul rate (cpu_prompt's records)")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        run(a.output, [int(t) for t in a.threads.split(",")], a.bandwidth_gbs, a.folder, a.shapes.split(","))
        return 0
    if a.cmd == "run-bench":
        run_bench(a.binary, a.output, [int(t) for t in a.threads.split(",")], a.bandwidth_gbs, a.folder,
                  a.shapes.split(","), a.reps, tuple(f == "1" for f in a.fa.split(",")))
        return 0
    return report(a.records, a.cpu_tflops_per_core)


if __name__ == "__main__":
    sys.exit(main())
