"""Sweep the engine's compute buffers over random model shapes, contexts and placements.

Each case draws an architecture the tests can write (``tests.arch_models.ARCHS``) with random
but realistic dimensions, writes it header-only, makes a sparse full-size copy (real header, a
hole for the data) and dry-runs it through the real libllama with ``no_alloc``: buffers are
sized, nothing is allocated or read, so a case costs well under a second and no memory. Each
record holds the model's ``write_model`` arguments (so a fit can rebuild the profile), the
context, the placement and the engine's per-buffer ``compute buffer size`` lines.

Placements per backend (``--devices``):

* ``cpu``: everything on the CPU backend (no accelerator).
* ``CUDA0`` (or any device names): ``all`` (every layer and the output on the devices),
  ``partial`` (half the layers and the output), ``exps_cpu`` (all layers, routed experts
  overridden to the CPU; MoE only), ``none`` (``-ngl 0`` with the devices present, so only op
  offload can use them).
* ``--rpc N``: N loopback RPC servers as (more) devices, after ``--devices`` (CPU-only machines,
  or a GPU beside RPC servers).
* several devices: a layer split with an uneven random ``-ts``: ``split`` (every layer and the
  output), ``split_partial`` (some layers on the CPU), ``split_exps`` (routed experts on the CPU).

``--fit-params PATH`` runs the engine's own ``llama-fit-params --fit-print on -v`` (the same
no-alloc dry run, in C++, with llama.cpp's argument parser) instead of the ctypes probe, and
reads the same log lines; use it where only the engine's tools are built. ``--ik-bench PATH``
runs ik_llama.cpp's llama-bench instead (ik has no no-alloc dry run: each case really loads the
sparse model, ``--max-gib`` bounds it, and runs its context as one prompt).

    python -m benchmarks.compute_sweep --cases 300 --out benchmarks/results/compute_sweep_cpu.jsonl
    python -m benchmarks.compute_sweep --devices CUDA0 --cases 400 --out .../compute_sweep_cuda.jsonl
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator

from omni_place.gguf import read_model_files
from omni_place.gguf_write import sparse_copy
from omni_place.units import GiB, MiB
from omni_place.llama import LoadSpec, build_info, parse_log, probe_load, rpc_servers
from tests.arch_models import ARCHS, HYBRID_ARCHS, MLA_ARCHS, MOE_ARCHS, write_model

UBATCHES = (128, 256, 512, 1024, 2048, 4096)
CONTEXTS = (512, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
IK_CONTEXTS = CONTEXTS[:6]  # ik runs the context as a prompt


def random_shape(rng: random.Random, arch: str) -> dict[str, Any]:
    """``write_model`` keyword arguments of a realistic random model of ``arch``."""
    head_dim = rng.choice((64, 128)) if arch not in MLA_ARCHS else rng.choice((64, 128))
    n_head = rng.choice((8, 16, 32, 64))
    n_head_kv = rng.choice([h for h in (1, 2, 4, 8, 16) if n_head % h == 0 and h <= n_head])
    n_embd = rng.choice((1024, 2048, 3072, 4096, 5120, 7168))
    kw: dict[str, Any] = dict(n_layer=rng.choice((3, 4, 6)), n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
                              n_ff=rng.choice((1536, 4096, 8192, 14336, 18432, 28672)),
                              n_vocab=rng.choice((1024, 32000, 65536, 129280, 151936, 201088)),
                              head_dim=head_dim, weight_type=rng.choice(("q4_k", "q8_0", "f16")))
    if arch in MOE_ARCHS:
        n_expert = rng.choice((8, 32, 64, 128, 256))
        kw.update(n_expert=n_expert, n_expert_used=rng.choice([k for k in (1, 2, 4, 8) if k <= n_expert]),
                  n_ff_exp=rng.choice((256, 512, 768, 1536, 2048, 2880)))
    if arch in MLA_ARCHS:
        kw.update(n_head_kv=n_head, kv_lora_rank=rng.choice((256, 512)), q_lora_rank=rng.choice((768, 1536)),
                  n_rot=64)
    if arch == "gemma3":
        kw["n_layer"] = 6
    if arch == "gemma4":  # full heads twice the SWA ones; the last whole periods may share their caches
        interval, periods = rng.choice((3, 4, 6)), rng.choice((1, 2))
        moe = rng.random() < 0.5
        kw.update(n_layer=interval * periods, head_dim=rng.choice((256, 512)),
                  gemma4={"interval": interval, "head_dim_swa": rng.choice((128, 256)),
                          "shared": interval * rng.randrange(periods), "moe": int(moe)})
        if moe:
            kw.update(n_expert=rng.choice((8, 32, 128)), n_expert_used=rng.choice((2, 4, 8)),
                      n_ff_exp=rng.choice((256, 704)))
            kw["n_expert_used"] = min(kw["n_expert_used"], kw["n_expert"])
    if arch in HYBRID_ARCHS:  # Qwen3-Next / Qwen3.5: 16 key heads and 16-64 value heads of 128, every 4th layer full
        k_heads = rng.choice((8, 16))
        kw.update(n_layer=rng.choice((4, 8)), head_dim=rng.choice((128, 256)),
                  gdn={"head_dim": 128, "k_heads": k_heads, "v_heads": k_heads * rng.choice((1, 2, 4)),
                       "d_conv": 4, "interval": 4})
        if arch in MOE_ARCHS:
            kw["n_expert_shared"] = 1
    if arch == "kimi-linear":  # Kimi-Linear-48B-A3B: 32 KDA heads of 128, 4-tap convs, MLA every 4th layer
        kw.update(n_layer=rng.choice((4, 8)), head_dim=128, n_rot=64, kv_lora_rank=512,
                  gdn={"head_dim": 128, "d_conv": 4, "interval": 4}, n_expert_shared=1)
    if arch in ("lfm2", "lfm2moe"):  # attention as wide as the embedding; 3-tap short convolutions between
        kw.update(head_dim=n_embd // n_head, n_layer=rng.choice((4, 8)),
                  gdn={"d_conv": 3, "interval": rng.choice((2, 4))})
    if arch == "falcon-h1":  # Falcon-H1: a Mamba-2 mixer of 64-wide heads over twice the embedding beside
        # every layer's attention, one or two groups of a 128-256-wide state
        kw.update(n_layer=rng.choice((4, 8)), gdn={"head_dim": rng.choice((128, 256)), "k_heads": rng.choice((1, 2)),
                                                   "v_heads": 2 * n_embd // 64, "d_conv": 4, "interval": 4})
    if arch == "gemma3n":  # E2B / E4B: 256-wide heads, 30 or 35 layers (a cache on the first 20 only),
        # whole periods of four SWA layers and a full one
        kw.update(n_layer=rng.choice((5, 10, 30, 35)), head_dim=256)
    if arch == "qwen2":  # its loader takes head_dim = n_embd / n_head
        kw["head_dim"] = n_embd // n_head
    return kw


def placements(devices: list[str], arch: str, n_layer: int,
               rng: random.Random | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    if not devices:
        yield "cpu", {"n_gpu_layers": 0}
        return
    if len(devices) > 1:  # a layer split over the devices, uneven (-ts), every device holding a layer
        rng = rng or random.Random(n_layer)
        ts = [float(rng.randint(1, 4)) for _ in devices]
        yield "split", {"n_gpu_layers": -1, "tensor_split": ts}
        yield "split_partial", {"n_gpu_layers": n_layer // 2 + len(devices), "tensor_split": ts}
        if arch in MOE_ARCHS:
            yield "split_exps", {"n_gpu_layers": -1, "tensor_split": ts,
                                 "overrides": [(r"\.ffn_(up|down|gate)_exps", "CPU")]}
        return
    yield "all", {"n_gpu_layers": -1}
    yield "partial", {"n_gpu_layers": n_layer // 2 + 1}
    yield "none", {"n_gpu_layers": 0}
    if arch in MOE_ARCHS:
        yield "exps_cpu", {"n_gpu_layers": -1, "overrides": [(r"\.ffn_(up|down|gate)_exps", "CPU")]}


def _run_tool(argv: list[str], spec: LoadSpec, log_path: Path | None) -> subprocess.CompletedProcess[str] | None:
    """Run an engine tool with ``spec``'s tensor overrides appended; its stderr kept at ``log_path``
    when given; None if it timed out."""
    if spec.overrides:
        argv = argv + ["-ot", ",".join(f"{pattern}={target}" for pattern, target in spec.overrides)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return None
    if log_path is not None:
        log_path.write_text(proc.stderr)
    return proc


def fit_params_run(tool: str, spec: LoadSpec, log_path: Path | None = None) -> dict[str, Any]:
    """One dry run through ``llama-fit-params``; the record fields read from its log (kept whole
    at ``log_path`` when given: with an engine built to trace its graph allocator, the trace)."""
    argv = [tool, "--fit-print", "on", "-v", "-m", spec.model_path, "-c", str(spec.n_ctx), "-b", str(spec.n_ubatch),
            "-ub", str(spec.n_ubatch), "-fa", spec.flash_attn, "-ctk", spec.type_k, "-ctv", spec.type_v,
            "-ngl", str(spec.n_gpu_layers if spec.n_gpu_layers >= 0 else 999)]
    if spec.rpc_servers:  # registers the RPC devices, so before -dev names them
        argv += ["--rpc", ",".join(spec.rpc_servers)]
    if spec.devices:
        argv += ["-dev", ",".join(spec.devices)]
    if spec.tensor_split:
        argv += ["-ts", ",".join(f"{x:g}" for x in spec.tensor_split)]
    proc = _run_tool(argv, spec, log_path)
    if proc is None:
        return {"ok": False, "error": "timeout", "compute": {}}
    log = parse_log((proc.stderr + proc.stdout).splitlines())
    compute = log.buffer_bytes("compute")
    return {"ok": proc.returncode == 0 and bool(compute), "compute": compute,
            "error": None if proc.returncode == 0 else proc.stderr[-400:],
            "layer_devices": {str(k): v for k, v in log.layer_devices.items()},
            "pipeline_parallel": log.pipeline_parallel, "fit_print": proc.stdout[-400:]}


_IK_COMPUTE = re.compile(r"^\w+: +(\S+) compute buffer size = +([0-9.]+) MiB", re.M)


def ik_bench_run(tool: str, spec: LoadSpec, log_path: Path | None = None) -> dict[str, Any]:
    """One load of ik_llama.cpp's llama-bench (``-p n_ctx -n 0``: the context is the prompt, so it
    reserves the same graph a server of that context does) with ik's server defaults where its
    llama-bench's differ (``-amb``); the compute buffer lines of its one context."""
    argv = [tool, "-m", spec.model_path, "-p", str(spec.n_ctx), "-n", "0", "-b", str(spec.n_ubatch),
            "-ub", str(spec.n_ubatch), "-fa", "1" if spec.flash_attn == "on" else "0", "-ctk", spec.type_k,
            "-ctv", spec.type_v, "-ngl", str(spec.n_gpu_layers if spec.n_gpu_layers >= 0 else 999),
            "-amb", "256", "-r", "1", "-w", "0", "-v", "-o", "json"]
    proc = _run_tool(argv, spec, log_path)
    if proc is None:
        return {"ok": False, "error": "timeout", "compute": {}}
    compute: dict[str, int] = {}
    for buft, mib in _IK_COMPUTE.findall(proc.stderr):
        compute.setdefault(buft, round(float(mib) * MiB))  # the first context (one test, one context)
    return {"ok": proc.returncode == 0 and bool(compute), "compute": compute, "argv": argv[1:],
            "error": None if proc.returncode == 0 else proc.stderr[-400:]}


def model_bytes(path: Path) -> int:
    return sum(t.n_bytes for t in read_model_files(path).tensors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200, help="random models (each runs every placement)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--archs", help=f"comma-separated architectures to draw from (default: all of {', '.join(ARCHS)})")
    ap.add_argument("--devices", default="", help="comma-separated device names, e.g. CUDA0")
    ap.add_argument("--rpc", type=int, default=0, help="loopback RPC servers as the devices")
    ap.add_argument("--workers", type=int, default=1, help="dry runs at once (each is a child process)")
    ap.add_argument("--fit-params", help="llama-fit-params binary: dry-run through the engine's own tool")
    ap.add_argument("--ik-bench", help="ik_llama.cpp's llama-bench: one real (allocating) load and prompt per "
                    "dry run instead, the context as the prompt (ik has no no-alloc dry run)")
    ap.add_argument("--max-gib", type=float, default=16.0, help="--ik-bench: skip models larger than this")
    ap.add_argument("--logs", help="folder for each --fit-params run's whole log (case<N>.<placement>.log)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    archs = tuple(a for a in (args.archs or "").split(",") if a) or ARCHS
    if unknown := sorted(set(archs) - set(ARCHS)):
        ap.error(f"unknown architecture {', '.join(unknown)}; the sweep writes {', '.join(ARCHS)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.logs:
        Path(args.logs).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    n = 0
    with contextlib.ExitStack() as stack, out.open("w") as fh:
        endpoints: list[str] = stack.enter_context(rpc_servers(args.rpc, threads=1)) if args.rpc else []
        devices = [d for d in args.devices.split(",") if d] + [f"RPC{i}" for i in range(args.rpc)]
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        # the engine that sized the buffers: --fit-params' own libllama (built beside it), else ours;
        # ik's libllama has another ABI, so its llama-bench names it
        library = Path(args.fit_params).parent / "libllama.so" if args.fit_params else None
        engine = (f"ik_llama.cpp llama-bench {args.ik_bench}" if args.ik_bench
                  else build_info(str(library) if library and library.exists() else None).describe())
        fh.write(json.dumps({"meta": {"engine": engine, "devices": devices,
                                      "seed": args.seed, "cases": args.cases}}) + "\n")
        jobs: list[tuple[dict[str, Any], LoadSpec]] = []
        for case in range(args.cases):
            arch = rng.choice(archs)
            shape = random_shape(rng, arch)
            try:
                header = write_model(tmp / f"m{case}.gguf", arch, header_only=True, tokenizer="spm", **shape)
            except (ValueError, KeyError) as err:  # a shape the writer refuses (e.g. block sizes)
                print(f"case {case}: {arch} {shape}: {err}")
                continue
            full = sparse_copy(read_model_files(header), tmp / f"m{case}-full")
            ub, ctx = rng.choice(UBATCHES), rng.choice(IK_CONTEXTS if args.ik_bench else CONTEXTS)
            fa = rng.random() < 0.6
            kv = rng.choice(("f16", "q8_0")) if fa else "f16"
            if args.ik_bench and model_bytes(header) > args.max_gib * GiB:  # ik allocates what it loads
                print(f"case {case}: {arch} {model_bytes(header) / GiB:.1f} GiB > --max-gib, skipped")
                continue
            for name, placement in placements(devices, arch, shape["n_layer"], rng):
                spec = LoadSpec(model_path=str(full), n_ctx=ctx, n_batch=ub, n_ubatch=ub, dry_run=True, type_k=kv,
                                type_v=kv, flash_attn="on" if fa else "off", devices=devices or None,
                                rpc_servers=endpoints, **placement)
                jobs.append(({"case": case, "arch": arch, "shape": shape, "n_ubatch": ub, "n_ctx": ctx,
                              "n_batch": ub, "flash_attn": fa, "kv_type": kv, "placement": name}, spec))
        print(f"{len(jobs)} dry runs of {args.cases} models written in {time.time() - t0:.0f} s", flush=True)
        def run(job: tuple[dict[str, Any], LoadSpec]) -> dict[str, Any]:
            if args.ik_bench:
                log = Path(args.logs) / f"case{job[0]['case']}.{job[0]['placement']}.log" if args.logs else None
                return ik_bench_run(args.ik_bench, job[1], log)
            if args.fit_params:
                log = Path(args.logs) / f"case{job[0]['case']}.{job[0]['placement']}.log" if args.logs else None
                return fit_params_run(args.fit_params, job[1], log)
            rep = probe_load(job[1], timeout=300)
            return {"ok": rep.ok, "error": rep.error, "compute": rep.compute_buffers,
                    "layer_devices": {str(k): v for k, v in rep.layer_devices.items()},
                    "output_device": rep.output_device, "pipeline_parallel": rep.pipeline_parallel,
                    "graph_splits": rep.graph_splits}

        with ThreadPoolExecutor(max(1, args.workers)) as pool:  # records as they finish: a slow run holds none back
            futures = {pool.submit(run, job): job[0] for job in jobs}
            for future in as_completed(futures):
                rec = futures[future]
                rec.update(future.result())
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                n += 1
                if n % 50 == 0:
                    print(f"{n}/{len(jobs)} dry runs, {time.time() - t0:.0f} s", flush=True)
    print(f"{n} dry runs in {time.time() - t0:.0f} s -> {out}")


if __name__ == "__main__":
    main()
