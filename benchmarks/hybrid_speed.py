"""Gated DeltaNet hybrids (Qwen3-Next, Qwen3.5): their recurrent layers priced against llama-bench.

A hybrid's linear-attention layer attends to no growing cache. Each decoded token moves its fixed
state (``attention.RECURRENT_STATE_PASSES``) and runs ``ArchSpec.recurrent_layer_ops`` more graph
nodes than the model's attention layer; each prompt token runs the delta rule over the state and
a mixer of elementwise passes (``attention.delta_rule_work``). Two sets of records, each priced by
the planner as it ran, uncalibrated:

- ``cpu_*.jsonl``: this project's CPU runs of mainline's llama-bench (``-ngl 0``), models written by
  ``models``: a qwen3 and qwen35 of one shape (24 layers of 2048, Q4_K), the qwen35 with every 2nd,
  4th and 8th layer full attention (so recurrent layers swap in for attention ones), and a qwen3moe
  beside a qwen35moe. The pairs separate what a recurrent layer costs beyond its matmuls.
- ``public.json``: Qwen3.5 9B / 27B / 35B-A3B and GLM-4.7-Flash (deepseek2 MLA, beside them) on an
  RTX 4090 (llama.cpp build 8396, ``-p 1024 -n 64`` at depths), from a public log (its address in
  the file); headers written from the published shapes (:data:`SHAPES`: the 9B's size and parameter
  count match the log's exactly, the others' quant mixes are approximations within 4 % of its sizes).
  GLM-4.7-Flash's records set the catalog's ``mla_decode_share`` of compute capability 8.9.
- ``gpu_<gpu>_round*.jsonl``: this project's runs (``gpu-models``, ``gpu-run``) of the same shapes as speed
  models on one GPU: all layers at depths, routed experts (``-ncmoe``) or layers (``-ngl``) on the CPU,
  priced on the run's cluster file (``gpu_<gpu>_rig.toml``) through the dialect's reading of each record;
  the H100's GLM-4.7-Flash decodes set ``mla_decode_share`` of 9.0 and the default row. Round 1 ran the
  first configurations of each model; round 2 (the same machine, minutes later) added GLM ``-ncmoe 24``,
  the 27B's CPU layers at depth and the 9B's ``-ngl 20``. ``gpu_h100s40_round*.jsonl`` (session 40, another
  H100 VM): the 9B beside its all-attention control (``Qwen3-shaped 9B Q8_0``), all layers and ``-ngl 20``.
  ``gpu_h100s41_round*.jsonl`` (session 41, a third H100 VM, 8 minutes apart): every configuration,
  GLM's decode-only depth sweep among them; its ``-v`` logs and ``devices --measure`` in ``gpu_h100s41/``.
  ``gpu_h100s43_round*.jsonl``, ``gpu_h100s43b_round*.jsonl`` (session 43, two more H100 VMs): the 35B beside
  its plain-MoE controls (``Qwen3-shaped 35B-A3B``; on the first VM also ``... wide experts``), ``-ncmoe``
  0-40; ``gpu_h100s43b/threads.jsonl``: the control's ``-ncmoe 40`` decode at 8, 12 and 16 threads.
- ``calibrate_run_<rig>[_<model>].json`` (``.progress.txt``: its stderr): ``omni-place calibrate --run``
  on that VM, ``--no-save --format json``.
- ``threads_prompt_h100s41.jsonl``: the CPU's prompt compute at 1-16 threads on session 41's VM (``-ngl 0
  -nopo 1 -p 256``: qwen3_2b of the CPU models at 1, 2, 4, 8, 12, 16 threads with its decode, the control
  at 4, 8, 16).

- ``switches_<gpu>.jsonl``: the 9B pair at ``-ngl 20`` on the same machine with engine switches
  varied (session 40): ``-t 16,8 --poll 50,0``, ``-lm mmap,none`` (none: the CPU-held weights in the
  GPU's pinned host buffer), ``--no-host 0,1``, ``-ub 2048``, and the CPU's decode at 1-16 threads.
  Priced as the others; ``--no-host 1`` is not priced (on this AMX host its Q8_0 weights go to the AMX
  buffer type, which op offload cannot copy), its rows show what it costs. ``switches_h100s41.jsonl``:
  the first three of them again on session 41's VM.

``ik_logs/<arch>.log``: ik_llama.cpp's llama-bench (8337e4cd3, native CPU build, ``-p 0 -n 2 -v``) loading
:data:`IK_SHAPE` of each hybrid: it keeps a recurrent layer's state in its KV buffer (src/llama.cpp:1373-1386),
sized as mainline's separate RS buffer (tests/test_hybrid_models.py compares them).
``ik_bench/<model>.json``: the same llama-bench on four of the CPU models (``-t 2 -fa 1 -ngl 0 -p 256
-n 32 -r 3 -o json``), kept unpriced: its qwen35 prompt ran at 0.44x its qwen3's (mainline's at
0.73x), ~300 us a recurrent layer and token beyond the matmuls against mainline's ~90; the speed
model prices ik's recurrent layers as mainline's.

    python -m benchmarks.hybrid_speed models /tmp/hyb
    python -m benchmarks.hybrid_speed run LLAMA_BENCH /tmp/hyb -o benchmarks/results/hybrid_speed/cpu_xeon2.jsonl \\
        --threads 2 --cpu-gbs 18.8
    python -m benchmarks.hybrid_speed gpu-models /root/gm       # on the GPU machine
    python -m benchmarks.hybrid_speed gpu-run LLAMA_BENCH /root/gm -o gpu_records.jsonl --logs logs --rig rig.toml \\
        --threads 16                              # rig.toml: ``speed_truth rig`` of the machine
    python -m benchmarks.hybrid_speed report      # -> benchmarks/results/hybrid_speed.{md,json}
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.cpu_prompt import cpu_cluster
from benchmarks.public_gpus import one_gpu_cluster
from omni_place.bench.records import UNSTEADY_SPREAD
from omni_place.placement import SpeedParams

RESULTS = Path(__file__).resolve().parent / "results"
FOLDER = RESULTS / "hybrid_speed"

_GDN_2B = {"head_dim": 128, "k_heads": 16, "v_heads": 16, "d_conv": 4}
_DENSE_2B = dict(n_layer=24, n_embd=2048, n_head=8, n_head_kv=2, head_dim=256, n_ff=6144, n_vocab=32000,
                 weight_type="q4_k")
_MOE_16L = dict(n_layer=16, n_embd=2048, n_head=16, n_head_kv=2, head_dim=256, n_ff=512, n_vocab=32000,
                n_expert=64, n_expert_used=8, n_ff_exp=512, weight_type="q4_k")
_GDN_35B = {"head_dim": 128, "k_heads": 16, "v_heads": 32, "d_conv": 4, "interval": 4}
#: model name -> write_model arguments; the CPU models, then the public records' (published shapes)
SHAPES: dict[str, dict[str, Any]] = {
    "qwen3_2b": dict(_DENSE_2B, arch="qwen3"),
    **{f"qwen35_2b_i{iv}": dict(_DENSE_2B, arch="qwen35", gdn=dict(_GDN_2B, interval=iv)) for iv in (2, 4, 8)},
    "qwen3moe_16l": dict(_MOE_16L, arch="qwen3moe"),
    "qwen35moe_16l": dict(_MOE_16L, arch="qwen35moe", gdn=_GDN_35B),
    "Qwen3.5-9B Q8_0": dict(arch="qwen35", n_layer=32, n_embd=4096, n_head=16, n_head_kv=4, head_dim=256, n_ff=12288,
                            n_vocab=248320, n_nextn=1, weight_type="q8_0", gdn=_GDN_35B),
    "Qwen3.5-27B UD-Q4_K_XL": dict(arch="qwen35", n_layer=64, n_embd=5120, n_head=24, n_head_kv=4, head_dim=256,
                                   n_ff=17408, n_vocab=248320, n_nextn=1, weight_type="q4_k",
                                   tensor_types={r"ffn_down|output|attn_qkv": "q6_k"},
                                   gdn=dict(_GDN_35B, v_heads=48)),
    "Qwen3.5-35B-A3B UD-Q4_K_XL": dict(arch="qwen35moe", n_layer=40, n_embd=2048, n_head=16, n_head_kv=2,
                                       head_dim=256, n_ff=512, n_vocab=248320, n_expert=256, n_expert_used=8,
                                       n_ff_exp=512, n_nextn=1, weight_type="q4_k",
                                       tensor_types={r"down_exps": "q5_k", r"exps": "q4_k", r"output": "q6_k",
                                                     r".*": "q8_0"}, gdn=_GDN_35B),
    # the 9B's shape with every layer full attention: what its recurrent layers cost beside attention ones
    "Qwen3-shaped 9B Q8_0": dict(arch="qwen3", n_layer=32, n_embd=4096, n_head=16, n_head_kv=4, head_dim=256,
                                 n_ff=12288, n_vocab=248320, weight_type="q8_0"),
    # the 35B's shape with every layer full attention and no shared expert (qwen35moe of interval 1 aborts),
    # then the same expert bytes in a quarter as many experts four times as wide: what its CPU experts cost
    # beside a plain MoE's, and what an expert's width costs on the CPU at equal bytes
    "Qwen3-shaped 35B-A3B": dict(arch="qwen3moe", n_layer=40, n_embd=2048, n_head=16, n_head_kv=2, head_dim=256,
                                 n_ff=512, n_vocab=248320, n_expert=256, n_expert_used=8, n_ff_exp=512,
                                 weight_type="q4_k", tensor_types={r"down_exps": "q5_k", r"exps": "q4_k",
                                                                   r"output": "q6_k", r".*": "q8_0"}),
    "Qwen3-shaped 35B-A3B wide experts": dict(arch="qwen3moe", n_layer=40, n_embd=2048, n_head=16, n_head_kv=2,
                                              head_dim=256, n_ff=512, n_vocab=248320, n_expert=64, n_expert_used=2,
                                              n_ff_exp=2048, weight_type="q4_k",
                                              tensor_types={r"down_exps": "q5_k", r"exps": "q4_k",
                                                            r"output": "q6_k", r".*": "q8_0"}),
    # Falcon-H1 7B's published dims (attention and a Mamba-2 mixer in every layer: 24 heads of 128,
    # a 256-wide state; transformers' FalconH1 table), n_ff and one SSM group assumed; then its
    # attention and FFN alone as llama: what the mixer beside them costs
    "Falcon-H1-7B Q4_K": dict(arch="falcon-h1", n_layer=44, n_embd=3072, n_head=12, n_head_kv=2, head_dim=128,
                              n_ff=12288, n_vocab=130048, weight_type="q4_k", tensor_types={r"output": "q6_k"},
                              gdn={"head_dim": 256, "k_heads": 1, "v_heads": 24, "d_conv": 4, "inner": 3072}),
    "Llama-shaped Falcon-H1-7B": dict(arch="llama", n_layer=44, n_embd=3072, n_head=12, n_head_kv=2, head_dim=128,
                                      n_ff=12288, n_vocab=130048, weight_type="q4_k", tensor_types={r"output": "q6_k"}),
    # Gemma 3n E2B's dims (30 layers, 2048 wide, 8 heads of 256 over 2 KV heads, a 512-token window on
    # four layers of five): 100 / 90 / 78 graph nodes a layer, three times a llama layer's; then Gemma 3's
    # layer at the same widths (40 nodes): what its per-layer ops cost at decode
    "Gemma-3n-E2B Q4_K": dict(arch="gemma3n", n_layer=30, n_embd=2048, n_head=8, n_head_kv=2, head_dim=256,
                              n_ff=8192, n_vocab=262144, n_swa=512, weight_type="q4_k",
                              tensor_types={r"per_layer_token_embd": "q8_0"}),
    "Gemma-3-shaped E2B": dict(arch="gemma3", n_layer=30, n_embd=2048, n_head=8, n_head_kv=2, head_dim=256,
                               n_ff=8192, n_vocab=262144, n_swa=512, weight_type="q4_k"),
    # deepseek2 MLA (glm4_moe_lite); its value heads (256) written as wide as its nope part (192)
    "GLM-4.7-Flash UD-Q4_K_XL": dict(arch="deepseek2", n_layer=47, n_embd=2048, n_head=20, n_head_kv=20, n_ff=10240,
                                     n_vocab=154880, n_expert=64, n_expert_used=4, n_ff_exp=1536, n_expert_shared=1,
                                     n_dense_lead=1, head_dim=192, n_rot=64, kv_lora_rank=512, q_lora_rank=768,
                                     weight_type="q4_k", tensor_types={r"down": "q5_k", r"output": "q6_k"}),
}
CPU_MODELS = [m for m in SHAPES if " " not in m]  # the public records' models are named as published
#: each hybrid CPU model and the model it is compared with (the same shape without recurrent layers)
CONTROLS = {"qwen35_2b_i2": "qwen3_2b", "qwen35_2b_i4": "qwen3_2b", "qwen35_2b_i8": "qwen3_2b",
            "qwen35moe_16l": "qwen3moe_16l"}
#: write_model arguments of the tiny hybrids ik_llama.cpp loaded for ik_logs/ (a 256-cell context)
IK_SHAPE = dict(n_layer=8, n_embd=256, head_dim=64, gdn={"head_dim": 128, "k_heads": 2, "v_heads": 4, "interval": 4},
                weight_type="f16", tokenizer="gpt2")
IK_CTX = 256
#: the catalog's name of each public record's GPU
GPUS = {"RTX 4090": "RTX 4090"}
#: ``gpu-run``: each published shape's llama-bench configurations on one big GPU (all layers at
#: depths, then experts or layers on the CPU); every run adds ``-fa 1 -t THREADS -r REPS -o jsonl``
GPU_RUNS: dict[str, list[list[str]]] = {
    "GLM-4.7-Flash UD-Q4_K_XL": [["-ngl", "99", "-p", "1024", "-n", "64", "-d", "0,8192,32768"],
                                 ["-ngl", "99", "-ncmoe", "47", "-p", "512", "-n", "32"],
                                 ["-ngl", "99", "-ncmoe", "24", "-p", "512", "-n", "32"],
                                 ["-ngl", "99", "-p", "0", "-n", "32", "-d", "2048,4096,16384,24576"]],
    "Qwen3.5-35B-A3B UD-Q4_K_XL": [["-ngl", "99", "-p", "1024", "-n", "64", "-d", "0,8192,32768"],
                                   ["-ngl", "99", "-ncmoe", "40", "-p", "512", "-n", "32"],
                                   ["-ngl", "99", "-ncmoe", "20", "-p", "512", "-n", "32"]],
    "Qwen3.5-27B UD-Q4_K_XL": [["-ngl", "99", "-p", "1024", "-n", "64", "-d", "0,8192"],
                               ["-ngl", "48", "-p", "512", "-n", "32", "-d", "0,8192"]],
    "Qwen3.5-9B Q8_0": [["-ngl", "99", "-p", "1024", "-n", "64", "-d", "0,32768"],
                        ["-ngl", "20", "-p", "512", "-n", "32"]],
    "Qwen3-shaped 9B Q8_0": [["-ngl", "99", "-p", "512", "-n", "32"], ["-ngl", "20", "-p", "512", "-n", "32"]],
    **{name: [["-ngl", "99", "-p", "1024", "-n", "64", "-d", "0,8192,32768"], ["-ngl", "22", "-p", "512", "-n", "32"]]
       for name in ("Falcon-H1-7B Q4_K", "Llama-shaped Falcon-H1-7B")},
    **{name: [["-ngl", "99", "-p", "1024", "-n", "64", "-d", "0,8192"], ["-ngl", "15", "-p", "512", "-n", "32"]]
       for name in ("Gemma-3n-E2B Q4_K", "Gemma-3-shaped E2B")},
    **{name: [["-ngl", "99", "-p", "1024", "-n", "64"],
              *(["-ngl", "99", "-ncmoe", str(n), "-p", "512", "-n", "32"] for n in (40, 30, 20, 10))]
       for name in ("Qwen3-shaped 35B-A3B", "Qwen3-shaped 35B-A3B wide experts")},
}


def write_headers(folder: Path, names: list[str], header_only: bool) -> dict[str, Path]:
    from tests.arch_models import write_model

    out = {}
    for name in names:
        kw = dict(SHAPES[name])
        out[name] = write_model(folder / model_file(name), kw.pop("arch"), tokenizer="gpt2", header_only=header_only,
                                **kw)
    return out


def model_file(name: str) -> str:
    return name.replace(" ", "_") + ".gguf"


def predict(header: Path, cluster: Path, argv: list[str]) -> float:
    """The planner's tokens/s of one llama-bench test (``argv``: its flags)."""
    from omni_place.plan import evaluate

    pred = evaluate(str(header), str(cluster), argv, engine="llama.cpp", tool="bench").predicted
    return pred.pp_tps if "-p" in argv and argv[argv.index("-p") + 1] != "0" else pred.tg_tps


def run(binary: Path, folder: Path, output: Path, threads: int, cpu_gbs: float, reps: int) -> None:
    """llama-bench on every CPU model (``models`` wrote them into ``folder``), records to ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as fh:
        for name in CPU_MODELS:
            path = folder / model_file(name)
            proc = subprocess.run([str(binary), "-m", str(path), "-t", str(threads), "-fa", "1", "-ngl", "0",
                                   "-p", "256", "-n", "32", "-r", str(reps), "-o", "jsonl"],
                                  capture_output=True, text=True, check=True)
            for line in proc.stdout.splitlines():
                rec = json.loads(line)
                rec.update(shape=name, cpu_gbs=cpu_gbs, machine=platform.node())
                fh.write(json.dumps(rec) + "\n")
            print(f"{name}: done", flush=True)


def write_gpu_models(folder: Path, only: list[str] | None = None) -> None:
    """The ``GPU_RUNS`` shapes (or ``only`` these) as speed models (``speed_models``: zero matrices,
    real routers and embeddings, so MoE prompts spread over the experts as a trained model's do)."""
    from benchmarks.speed_models import write_speed_model

    for name in GPU_RUNS:
        if (only and name not in only) or (folder / model_file(name)).exists():
            continue
        shape = dict(SHAPES[name])
        path = write_speed_model(Path(model_file(name)).stem, folder, shape=shape)
        print(f"{path} {path.stat().st_size / 1e9:.2f} GB", flush=True)


def run_gpu(binary: Path, folder: Path, output: Path, logs: Path, rig: Path, threads: int, reps: int,
            only: list[str] | None = None) -> None:
    """llama-bench on every ``GPU_RUNS`` configuration (models from ``write_gpu_models``), records
    to ``output`` (each with its shape and the cluster file ``rig`` it is priced on), ``-v`` logs to
    ``logs``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    with output.open("a") as fh:
        for name, configs in GPU_RUNS.items():
            for i, config in enumerate(configs if not only or name in only else []):
                argv = [str(binary), "-m", str(folder / model_file(name)), *config, "-fa", "1", "-t", str(threads),
                        "-r", str(reps), "-o", "jsonl", "-v"]
                proc = subprocess.run(argv, capture_output=True, text=True)
                (logs / f"{Path(model_file(name)).stem}.{i}.log").write_text(proc.stderr)
                if proc.returncode:
                    print(f"{name} {' '.join(config)}: exit {proc.returncode}", flush=True)
                for line in proc.stdout.splitlines():
                    if line.startswith("{"):
                        rec = json.loads(line)
                        rec.update(shape=name, rig=rig.name, machine=platform.node())
                        fh.write(json.dumps(rec) + "\n")
                fh.flush()
                print(f"{name} {' '.join(config)}: done", flush=True)


def price_gpu(records: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Each record of a ``gpu-run``, priced through the llama.cpp dialect's reading of its fields
    (as ``calibrate`` imports plain llama-bench output) on its rig's cluster file."""
    from omni_place.bench.records import sample_spread
    from omni_place.engines import dialect

    headers = write_headers(folder, sorted({r["shape"] for r in records}), header_only=True)
    out = []
    for r in records:
        flags = dialect("llama.cpp").bench_record_flags(r)
        tps = predict(headers[r["shape"]], FOLDER / r["rig"], [*flags.argv, "-t", str(flags.threads)])
        row = _record_row(r)
        out.append(dict(row, spread_pct=100.0 * sample_spread(r, "llama.cpp", row["test"][:2] == "pp"),
                        predicted=tps, error_pct=_err(tps, r["avg_ts"])))
    return out


def _record_row(r: dict[str, Any]) -> dict[str, Any]:
    """What a table row says of a GPU run's record before its price."""
    kind = "pp" if r["n_prompt"] else "tg"
    return {"gpu": r["gpu_info"], "round": r.get("round", ""), "model": r["shape"], "rig": r["rig"],
            "threads": r.get("n_threads"), "poll": r.get("poll"), "load": r.get("load_mode", "auto"),
            "ubatch": r.get("n_ubatch"), "test": f"{kind}{r['n_prompt'] or r['n_gen']}",
            "depth": r.get("n_depth", 0), "ngl": r["n_gpu_layers"], "ncmoe": r.get("n_cpu_moe", 0),
            "tps": r["avg_ts"]}


def price_switches(records: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """The ``switches_*.jsonl`` records priced as :func:`price_gpu` prices a GPU run's; ``--no-host 1``
    ones unpriced (predicted None): the planner does not price that switch."""
    priced = iter(price_gpu([r for r in records if not r.get("no_host")], folder))
    rows = []
    for r in records:
        rows.append(dict(_record_row(r), spread_pct=None, predicted=None, error_pct=None, no_host=True)
                    if r.get("no_host") else dict(next(priced), no_host=False))
    return rows


def calibrate_gpu(records: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """Per model of a GPU run, ``omni-place calibrate`` as a user runs it on plain llama-bench output:
    fitted on the first round's records, scored on the others' (``--holdout``); its JSON ``engines``."""
    out = []
    for (model, rig), recs in sorted(_group(records, ("shape", "rig")).items()):
        rounds = sorted({r["round"] for r in recs})
        if len(rounds) < 2:
            continue
        header = write_headers(folder, [model], header_only=True)[model]
        files = []
        for rnd in rounds:
            path = folder / f"{header.stem}.{rnd}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in recs if r["round"] == rnd))
            files.append(path)
        holdout = [a for f in files[1:] for a in ("--holdout", str(f))]
        argv = [sys.executable, "-m", "omni_place", "calibrate", str(files[0]), *holdout, "--model",
                str(header), "--cluster", str(FOLDER / rig), "--no-save", "--format", "json"]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"calibrate {model}: {proc.stderr.strip()}")
        fit = json.loads(proc.stdout)
        out.append({"model": model, "rig": rig, "fitted_on": rounds[0], "held_out": rounds[1:],
                    "skipped": fit["skipped"], **fit["engines"]["llama.cpp"]})
    return out


def _held(errors: dict[str, Any]) -> str:
    return f"{100 * errors['median_abs']:.1f} / {100 * errors['max_abs']:.1f} % (n={errors['n']})"


def _group(records: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _err(pred: float, meas: float) -> float:
    return 100.0 * (pred / meas - 1.0)


def price_cpu(records: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    headers = write_headers(folder, sorted({r["shape"] for r in records}), header_only=True)
    out = []
    for r in records:
        kind = "pp" if r["n_prompt"] else "tg"
        cluster = cpu_cluster(folder, r["cpu_gbs"], r["n_threads"], r.get("simd", "avx512"))
        argv = ["-ngl", "0", "-t", str(r["n_threads"]), "-fa", "1", "-p", str(r["n_prompt"]), "-n", str(r["n_gen"])]
        pred = predict(headers[r["shape"]], cluster, argv)
        out.append({"shape": r["shape"], "test": kind, "threads": r["n_threads"], "measured": r["avg_ts"],
                    "predicted": pred, "error_pct": _err(pred, r["avg_ts"]), "cpu": r.get("cpu_info", "")})
    by = {(o["shape"], o["test"]): o for o in out}
    for o in out:  # the hybrid's error beside its control's: what the recurrent layers add
        control = by.get((CONTROLS.get(o["shape"], ""), o["test"]))
        o["vs_control_pct"] = o["error_pct"] - control["error_pct"] if control else None
    return out


def price_public(records: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    headers = write_headers(folder, sorted({r["model"] for r in records}), header_only=True)
    out = []
    for r in records:
        kind, n = r["test"][:2], r["test"][2:]
        argv = ["-ngl", "99", "-fa", "1", "-d", str(r["depth"]), "-p", n if kind == "pp" else "0",
                "-n", n if kind == "tg" else "0"]
        pred = predict(headers[r["model"]], one_gpu_cluster(folder, GPUS[r["gpu"]]), argv)
        out.append(dict(r, predicted=pred, error_pct=_err(pred, r["tps"])))
    return out


def load_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def price_compute(records: list[dict[str, Any]], folder: Path) -> dict[str, list[float]]:
    """Architecture -> the CPU backend's compute buffer as estimated beside the engine's dry runs
    (``compute_sweep.py`` records of random shapes), prediction / engine - 1 in %."""
    from omni_place.compute import compute_buffer_estimate
    from omni_place.model import load_model
    from tests.arch_models import write_model

    out: dict[str, list[float]] = {}
    for r in records:
        if "meta" in r or not r.get("ok"):
            continue
        model = load_model(write_model(folder / f"c{r['case']}.gguf", r["arch"], header_only=True, tokenizer="spm",
                                       **r["shape"]))
        est = compute_buffer_estimate(model, n_ctx=r["n_ctx"], n_ubatch=r["n_ubatch"], flash_attn=r["flash_attn"],
                                      kv_quantized=r["kv_type"] != "f16")
        out.setdefault(r["arch"], []).append(_err(est.cpu_only_bytes(), r["compute"]["CPU"]))
    return out


def report() -> dict[str, Any]:
    cpu = [r for p in sorted(FOLDER.glob("cpu_*.jsonl")) for r in load_records(p)]
    gpu = [dict(r, round=p.stem) for p in sorted(FOLDER.glob("gpu_*.jsonl")) for r in load_records(p)]
    public = json.loads((FOLDER / "public.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        result = {"cpu": price_cpu(cpu, Path(tmp)), "public": price_public(public["records"], Path(tmp)),
                  "gpu": price_gpu(gpu, Path(tmp)),
                  "gpu_calibrated": calibrate_gpu(gpu, Path(tmp)),
                  "switches": price_switches([r for p in sorted(FOLDER.glob("switches_*.jsonl"))
                                              for r in load_records(p)], Path(tmp)),
                  "public_source": public["source"],
                  "compute": price_compute(load_records(RESULTS / "compute_sweep_hybrid_cpu.jsonl"), Path(tmp)),
                  "compute_held_out": price_compute(load_records(RESULTS / "compute_sweep_hybrid_cpu_heldout.jsonl"),
                                                    Path(tmp))}
    lines = ["# Gated DeltaNet hybrids: recurrent layers priced against llama-bench", "",
             "`python -m benchmarks.hybrid_speed report` (see its docstring for the method). Uncalibrated; errors: "
             "prediction / measured - 1.", "", "## This project's CPU (mainline llama-bench, `-ngl 0 -fa 1`)", "",
             "| model | test | threads | measured t/s | predicted | error | beside its control |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["cpu"]:
        vs = "" if r["vs_control_pct"] is None else f"{r['vs_control_pct']:+.1f} pts"
        lines.append(f"| {r['shape']} | {r['test']} | {r['threads']} | {r['measured']:.2f} | {r['predicted']:.2f} "
                     f"| {r['error_pct']:+.1f} % | {vs} |")
    lines += ["", f"## Public records: {result['public_source']}", "",
              "| GPU | model | test | depth | measured t/s | predicted | error |", "|---|---|---|---:|---:|---:|---:|"]
    for r in result["public"]:
        lines.append(f"| {r['gpu']} | {r['model']} | {r['test']} | {r['depth']} | {r['tps']:g} "
                     f"| {r['predicted']:.1f} | {r['error_pct']:+.1f} % |")
    lines += ["", "## This project's GPU runs (`gpu-run`: speed models of the published shapes)", "",
              "| GPU | round | model | -ngl | -ncmoe | test | depth | measured t/s | spread | predicted | error |",
              "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in result["gpu"]:
        lines.append(f"| {r['gpu']} | {r['round'].removeprefix('gpu_')} | {r['model']} | {r['ngl']} | {r['ncmoe']} "
                     f"| {r['test']} | {r['depth']} "
                     f"| {r['tps']:.1f} | {r['spread_pct']:.1f} % | {r['predicted']:.1f} | {r['error_pct']:+.1f} % |")
    lines += ["", "### Calibrated from the same plain llama-bench output", "",
              "`omni-place calibrate ROUND1.jsonl --holdout ROUND2.jsonl --model HEADER --cluster RIG` per model "
              "(each round's records of it, llama-bench's own `-o jsonl` lines): fitted on one round, scored on the "
              "other; records whose repetitions lie more than 25 % apart are left out and counted.", "",
              "| model | fitted on | tests fitted | held out: decode median / max | prompt median / max "
              "| rank tg / pp |",
              "|---|---|---:|---|---|---|"]
    for c in result["gpu_calibrated"]:
        tg, pp = (c["heldout"][kind] for kind in ("tg", "pp"))
        ranks = " / ".join("-" if k["rank"] is None else f"{k['rank']:.2f}" for k in (tg, pp))
        lines.append(f"| {c['model']} | {c['fitted_on']} | {c['n_points']} | {_held(tg)} | {_held(pp)} | {ranks} |")
    lines += ["", "### Engine switches beside the all-attention control (`switches_*.jsonl`)", "",
              "The 9B pair at `-ngl 20 -fa 1` on the same H100, each configuration llama-bench's own `-r 3` "
              "(`-r 2` for the thread sweep); load `none` is `-lm none` (pinned CPU weights), `auto`/`mmap` the "
              "default mapping.", "",
              "| model | -ngl | -t | --poll | load | --no-host | -ub | test | measured t/s | spread | predicted "
              "| error |", "|---|---:|---:|---:|---|---|---:|---|---:|---:|---:|---:|"]
    for r in result["switches"]:
        spread = "" if r["spread_pct"] is None else f"{r['spread_pct']:.1f} %"
        pred = "not priced" if r["predicted"] is None else f"{r['predicted']:.1f}"
        err = "" if r["error_pct"] is None else f"{r['error_pct']:+.1f} %"
        lines.append(f"| {r['model']} | {r['ngl']} | {r['threads']} | {r['poll']} | {r['load']} "
                     f"| {int(r['no_host'])} | {r['ubatch']} | {r['test']} | {r['tps']:.1f} | {spread} | {pred} "
                     f"| {err} |")
    (RESULTS / "hybrid_speed.md").write_text("\n".join(lines + notes(result)) + "\n")
    (RESULTS / "hybrid_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def notes(result: dict[str, Any]) -> list[str]:
    """What the records say, with the figures of this pricing."""
    def worst(rows: list[dict[str, Any]], key: str = "error_pct") -> str:
        errs = [r[key] for r in rows if r[key] is not None]
        return f"{min(errs):+.1f} .. {max(errs):+.1f}"

    cpu, pub = result["cpu"], result["public"]
    hybrid = [r for r in cpu if r["shape"] in CONTROLS]
    controls = [r for r in cpu if r["shape"] not in CONTROLS]
    decode, prompt = ([r for r in pub if r["test"][:2] == kind] for kind in ("tg", "pp"))
    return ["", "## What the records say", "",
            f"- This CPU: the hybrids are priced {worst(hybrid)} % (their controls {worst(controls)} %), "
            f"{worst(hybrid, 'vs_control_pct')} points beside their controls. The CPU's delta-rule rate "
            "(`attention.SCAN_RATE_SHARE`) was chosen on an earlier run of these shapes on this machine; the "
            "dense pairs swap 6 and 3 layers, so the cost of a recurrent layer beyond its matmuls is what the "
            "differences measure.",
            f"- RTX 4090, three Qwen3.5 models and GLM-4.7-Flash at depths 0-65536: decode {worst(decode)} %, "
            f"prompt {worst(prompt)} %. "
            "The prompt at depth depends on the "
            "attention's rate: priced as a multiple of the MMQ rate (the H200's fit) it was +18..+209 % at 8192-65536 "
            "cells, as a share of the FP32-accumulate tensor rate (half the catalog's FP16 figure on a GeForce card) "
            "it is within the table's errors. The GPU's delta-rule rate is a prior (0.1 of the MMQ rate): no GPU "
            "run separates it here.",
            "- GLM-4.7-Flash (deepseek2 MLA): its 576-wide heads have no vector kernel, so a decoded token runs the "
            "mma kernel, bound by its FLOPs; priced by its bytes, decode at 8192-32768 cells was +120 .. +397 % on "
            "the 4090. The kernel's share of the FP32-accumulate rate is a row of the GPU catalog by compute "
            "capability (`mla_decode_share`), as the engine picks the kernel by it (ggml/src/ggml-cuda/fattn.cu): "
            "0.009 for 8.9 from these 4090 records, 0.025 for 9.0 and the default row from this project's H100 "
            "(below); one GPU each, so each row is a fit on its records. The 4090 ran a decoded token's attention "
            "at 32768 cells ~17x slower than the H100 (45 against 2.7 ms), far beyond their tensor rates' ratio "
            "(6x); its log's build (8396, `-fa auto`) may have run another kernel. Its prompt at depth stays "
            "-45 .. -51 % while the H100's MLA prompts at depth are priced within the table's errors, so the 4090's "
            "is left unexplained.",
            *gpu_notes(result["gpu"]),
            *[line for i, rig in enumerate(sorted({r["rig"] for r in result["switches"]}))
              for line in switch_notes([r for r in result["switches"] if r["rig"] == rig], result["gpu"], i == 0)],
            *calibrate_run_notes(),
            *threads_prompt_notes(),
            *control_notes(result["gpu"]),
            *layer_ops_notes(result["gpu"]),
            "- Compute buffers: hybrids are not replayed (compute_graph.REPLAYED); their widths-only estimate "
            "against the CPU backend's dry runs of random shapes (compute_sweep_hybrid_cpu.jsonl: `python -m "
            "benchmarks.compute_sweep --cases 40 --archs qwen35,qwen35moe,qwen3next` and `--cases 30 --archs "
            "granitehybrid,nemotron_h,nemotron_h_moe`): "
            + "; ".join(f"{arch} {min(e):+.0f} .. {max(e):+.0f} % ({len(e)} runs)"
                        for arch, e in sorted(result["compute"].items()))
            + ". The widths know no Mamba-2 layer: its live tensors are a floor of the buffer "
            "(`compute.mamba2_floor`, set on the two runs it was -49 and -57 % on). On 30 shapes drawn after it "
            "(`--seed 7`, compute_sweep_hybrid_cpu_heldout.jsonl): "
            + "; ".join(f"{arch} {min(e):+.0f} .. {max(e):+.0f} %"
                        for arch, e in sorted(result["compute_held_out"].items()))
            + ". `plan` notes that a hybrid's buffers are estimated, and certifies its estimate with a dry run of "
            "the real engine where libllama is installed."]


def gpu_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The notes on this project's GPU runs (``price_gpu`` rows), their figures computed."""
    if not rows:
        return []

    def span(rs: list[dict[str, Any]]) -> str:
        errs = [r["error_pct"] for r in rs]
        return f"{min(errs):+.1f} .. {max(errs):+.1f} % ({len(errs)} tests)" if errs else "no tests"

    def part(rs: list[dict[str, Any]], kind: str, steady: bool = False) -> list[dict[str, Any]]:
        return [r for r in rs if r["test"][:2] == kind and (not steady or r["spread_pct"] <= 100 * UNSTEADY_SPREAD)]

    gpu = sorted({r["gpu"] for r in rows})
    on_gpu = [r for r in rows if r["ngl"] >= 99 and not r["ncmoe"]]
    experts = [r for r in rows if r["ncmoe"]]
    layers = [r for r in rows if r["ngl"] < 99 and r["model"] in GPU_RUNS]
    hybrid_layers = [r for r in layers if "qwen3-shaped" not in r["model"].lower()]
    control_layers = [r for r in layers if "qwen3-shaped" in r["model"].lower()]
    out = [f"- {', '.join(gpu)} (`gpu-run`, uncalibrated; a test is steady when its repetitions lie within "
           f"{100 * UNSTEADY_SPREAD:.0f} % of each other). All layers on the GPU, depths 0-32768: decode "
           f"{span(part(on_gpu, 'tg'))}, prompt {span(part(on_gpu, 'pp'))}, steady prompts "
           f"{span(part(on_gpu, 'pp', True))}. A whole-GPU prompt test at depth 0 is measured by its repetitions "
           "after the first, which runs at 0.50-0.92 of them (234 committed tests): the CUDA backend captures "
           "its graphs in it (records.steady_tps; cuda_graph_warmup.md).",
           f"- Routed experts on the CPU (`-ncmoe`): decode {span(part(experts, 'tg'))}, steady "
           f"{span(part(experts, 'tg', True))}; prompt {span(part(experts, 'pp'))}."]
    nine_b = {rig: [r for r in hybrid_layers if r["rig"] == rig and r["model"].startswith("Qwen3.5-9B")]
              for rig in sorted({r["rig"] for r in hybrid_layers})}
    if hybrid_layers:
        out.append("- Hybrid layers on the CPU (`-ngl` below the layer count): decode "
                   f"{span(part(hybrid_layers, 'tg'))}, prompt {span(part(hybrid_layers, 'pp'))}"
                   + (f"; the all-attention control of the 9B's shape: decode {span(part(control_layers, 'tg'))}, "
                      f"prompt {span(part(control_layers, 'pp'))}." if control_layers else ".")
                   + " Routed experts streamed per prompt ubatch are priced within a few percent. The 9B hybrid's "
                   "`-ngl 20` prompt by VM: "
                   + "; ".join(f"{rig.removesuffix('_rig.toml')} {span(part(rows_9b, 'pp'))}"
                               for rig, rows_9b in nine_b.items())
                   + " (session 38's rig priced the pageable copies at 0.12 of the link, 7.6 GB/s, where 8.9 was "
                   "measured; the later rigs carry the measured rate, `stream_gbs`). The graph is the engine's: "
                   "in a CPU-held Gated DeltaNet layer the scheduler keeps on the CPU only the recurrent cache's "
                   "bookkeeping (build_rs's SCALE, GET_ROWS and CPY and the two state stores, "
                   "src/llama-graph.cpp:3512-3546, "
                   "src/models/delta-net-base.cpp:449-560); the delta rule and every other op follow their "
                   "offloaded weights to the GPU (the scheduler's pass 2, ggml/src/ggml-backend.cpp:1124-1200). "
                   "One split per offloaded weight (14 in a recurrent layer, 11 in an attention one), three CPU "
                   "splits per recurrent layer and two per attention layer (its cache store on the CPU, the "
                   "attention's split after it) give the 9B's 14 CPU layers 228 splits, as its log says "
                   "(`splits = 228 / 24`; the split list is tests/data/sched_splits_qwen35_9b_ngl20.txt). "
                   "The run beside the all-attention control (engine switches, below) parts the gap. "
                   "Calibrating on records with CPU layers fits it (the 27B's held-out prompt); where the fitted "
                   "records hold none it stays.")
    return out


def calibrate_run_notes() -> list[str]:
    """The notes on ``calibrate --run`` (``calibrate_run_*.json``): the 9B on the session-40 H100, then
    each run of session 41's VM, one line each."""
    out = []
    for path in sorted(FOLDER.glob("calibrate_run_*.json")):
        run = json.loads(path.read_text())
        fit = run["engines"]["llama.cpp"]
        progress = path.with_suffix(".progress.txt").read_text()
        predicted = re.search(r"cpu-compute: .*predicted pp (\d+)", progress)
        measured = re.search(r"cpu-compute: ok .* pp ([\d.]+) tok/s", progress)
        share = fit["params"]["cpu_tflops_per_core"] / SpeedParams().cpu_tflops_per_core
        held = fit["heldout"]
        model = next(m for m in GPU_RUNS if Path(model_file(m)).stem in run["logs"])
        cpu = (f" (uncalibrated {predicted.group(1)} t/s, measured {measured.group(1)}: this CPU's prompt "
               f"compute fitted at {share:.2f}x the default per-core rate)" if predicted and measured else "")
        out.append(f"- `omni-place calibrate --run` on {model} ({path.stem.removeprefix('calibrate_run_')}; design: "
                   + "; ".join(f"{d['name']} `{' '.join(d['argv'])}`" for d in run["design"])
                   + f"): {fit['n_points']} tests fitted ({', '.join(fit['fitted'])}), leave-one-configuration-"
                   f"out decode {_held(held['tg'])}, prompt {_held(held['pp'])}, drift {run['drift']['change']:+.1%}: "
                   "a left-out prompt test is priced by the others, and the CPU-compute run (`-nopo 1`, the only "
                   f"one whose prompt the CPU computes) cannot be{cpu}."
                   + (" Its `gpu` run was `-ngl 33`, which kept layer 0 on the CPU (-ngl k offloads the last k of "
                      "n_layer + 1); fixed after this run (the design's GPU run is now -ngl n_layer + 1)."
                      if "s40" in path.stem else ""))
    return out


def threads_prompt_notes() -> list[str]:
    """The note on the CPU's prompt compute at 1-16 threads (``threads_prompt_h100s41.jsonl``)."""
    path = FOLDER / "threads_prompt_h100s41.jsonl"
    if not path.exists():
        return []
    with tempfile.TemporaryDirectory() as tmp:  # priced as the CPU runs are, each at its threads
        rows = [(r["shape"], r["threads"], r["measured"], r["error_pct"])
                for r in price_cpu([r for r in load_records(path) if r["n_prompt"]], Path(tmp))]
    one = {shape: tps for shape, t, tps, _ in rows if t == 1}
    return ["- The CPU's prompt compute against its threads (session 41's VM, `-ngl 0 -nopo 1 -p 256`): "
            + "; ".join(f"{shape} at {t} threads {tps:.0f} t/s"
                        + (f" ({tps / one[shape]:.1f}x one thread)" if shape in one and t > 1 else "")
                        + f", priced {err:+.0f} %" for shape, t, tps, err in rows)
            + ". The model's rate is linear in threads (`cpu_tflops_per_core` a thread): the 2B's Q4_K is "
            "priced within 1 % at 4 threads and 55 % fast at 12-16, where each thread ran at half its lone "
            "rate; the 9B's Q8_0 is 2.3-2.8x fast at every count, its kernel on this host, not the threads. "
            "Not priced: one VM, two shapes, and the 16-vCPU VM may give hyperthreads as vCPUs. "
            "`calibrate --run` fits the per-core rate on the machine (0.36-0.49x the default here)."]



def _probe(rig: str) -> float:
    """The CPU bandwidth (GB/s, ``devices --measure``) a rig file carries."""
    import tomllib

    devices = tomllib.loads((FOLDER / rig).read_text())["devices"]
    return float(next(d["bandwidth_gbs"] for d in devices if d["kind"] == "cpu"))


def expert_layer_slopes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rig and MoE model: the decode seconds one more layer's routed experts on the CPU adds
    (a least-squares line through ``-ncmoe`` 0..40's seconds per token), measured and priced."""
    import numpy as np

    out = []
    for (rig, model), rs in sorted(_group([r for r in rows if r["test"][:2] == "tg" and not r["depth"]
                                           and r["ngl"] >= 99], ("rig", "model")).items()):
        n = np.array([r["ncmoe"] for r in rs], dtype=float)
        if len(set(n)) < 2:
            continue
        slope = [float(np.polyfit(n, [1e6 / r[k] for r in rs], 1)[0]) for k in ("tps", "predicted")]
        out.append({"rig": rig, "model": model, "probe_gbs": _probe(rig), "measured_us": slope[0],
                    "priced_us": slope[1]})
    return out


def pair_gaps(rows: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """(rig, hybrid, its depth-0 whole-GPU prompt error less its all-attention control's, in points,
    each the mean over the rig's rounds) for every hybrid measured beside its control on one rig."""
    pairs = {"Qwen3.5-35B-A3B UD-Q4_K_XL": "Qwen3-shaped 35B-A3B", "Qwen3.5-9B Q8_0": "Qwen3-shaped 9B Q8_0"}

    def mean_err(rig: str, model: str) -> float | None:
        e = [r["error_pct"] for r in rows if r["rig"] == rig and r["model"] == model and r["test"][:2] == "pp"
             and not r["depth"] and r["ngl"] >= 99 and not r["ncmoe"]]
        return sum(e) / len(e) if e else None

    out = []
    for rig in sorted({r["rig"] for r in rows}):
        for hybrid, control in pairs.items():
            h, c = mean_err(rig, hybrid), mean_err(rig, control)
            if h is not None and c is not None:
                out.append((rig, hybrid, h - c))
    return out


def layer_ops_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The notes on Falcon-H1 and Gemma 3n beside controls of their widths (session 44's VM)."""
    rig = "gpu_h100s44_rig.toml"

    def span(model: str, kind: str, whole: bool) -> str:
        e = [r["error_pct"] for r in rows if r["rig"] == rig and r["model"] == model and r["test"][:2] == kind
             and (r["ngl"] >= 99) == whole]
        return f"{min(e):+.0f} .. {max(e):+.0f} %" if e else "-"

    models = ("Gemma-3n-E2B Q4_K", "Gemma-3-shaped E2B", "Falcon-H1-7B Q4_K", "Llama-shaped Falcon-H1-7B")
    if not any(r["rig"] == rig for r in rows):
        return []
    table = "; ".join(f"{m}: whole-GPU decode {span(m, 'tg', True)}, prompt {span(m, 'pp', True)}, "
                      f"part on the CPU decode {span(m, 'tg', False)}, prompt {span(m, 'pp', False)}" for m in models)
    return [f"- Layers with more graph nodes than a llama layer (session 44, one H100 VM, `{rig}`, four rounds "
            f"of these models): {table}. A layer's fixed decode cost scales with its graph nodes "
            "(`ArchSpec.layer_ops`): Gemma 3n's 90 a layer (a llama layer's 31) priced so, its whole-GPU decode is "
            "within 10 %, without them twice too fast (tests/test_hybrid_models.py). Falcon-H1's Mamba-2 mixer "
            "nodes cost about half a llama layer's each at decode: its whole-GPU decode is priced ~20 % slow. "
            "Narrow models' whole-GPU prompt (Gemma's 2048-wide layers were priced +60 %, the 3072-wide llama "
            "control +15 %) is priced with the GPU's fixed cost per layer and ubatch (`prompt_layer_us`, "
            "benchmarks/results/gpu_shapes.md). Not priced: Gemma 3n's AltUp (its four-stream copies and permutes: "
            "it prompts at half Gemma 3's speed at the same widths) and Falcon-H1's mixer on the CPU at prompt "
            "(with layers there about +70 %, its control's +15 % at most). "
            "Layers on this VM's CPU (its probe 132 GB/s, "
            "the fastest seen) decode faster than priced where layers are small (a llama layer's fixed CPU cost "
            "fits ~100 us here, cpu_layer_s 300 us from an H200 VM): the VM spread `calibrate` fits."]


def control_notes(rows: list[dict[str, Any]]) -> list[str]:
    """The notes on the 35B hybrid beside its plain-MoE controls (session 43's two VMs)."""
    rigs = ("gpu_h100s43_rig.toml", "gpu_h100s43b_rig.toml")
    mine = [r for r in rows if r["rig"] in rigs]
    if not mine:
        return []

    def errs(model: str, test: str, **keys: Any) -> str:
        e = [r["error_pct"] for r in mine if r["model"] == model and r["test"][:2] == test
             and all(r[k] == v for k, v in keys.items())]
        return f"{min(e):+.0f} .. {max(e):+.0f} %" if e else "none"

    hybrid, control, wide = "Qwen3.5-35B-A3B UD-Q4_K_XL", "Qwen3-shaped 35B-A3B", "Qwen3-shaped 35B-A3B wide experts"
    slopes = expert_layer_slopes(rows)
    fastest = min(slopes, key=lambda x: x["measured_us"])

    def rng_max(key: str) -> float:
        return max(x[key] for x in slopes)

    def rng(key: str) -> str:
        return f"{min(x[key] for x in slopes):.0f}-{rng_max(key):.0f}"

    by = {(s["rig"], s["model"]): s for s in slopes}

    def ratio(ncmoe: int) -> str:
        tps = {m: [r["tps"] for r in mine if r["model"] == m and r["test"][:2] == "tg" and r["ncmoe"] == ncmoe
                   and r["rig"] == rigs[0]] for m in (wide, control)}
        return f"{sum(tps[wide]) / sum(tps[control]):.2f}x" if all(tps.values()) else "-"

    threads = FOLDER / "gpu_h100s43b" / "threads.jsonl"
    t_line = ""
    if threads.exists():
        by_threads = _by_threads(load_records(threads))
        with tempfile.TemporaryDirectory() as tmp:
            header = write_headers(Path(tmp), [control], header_only=True)[control]
            argv = ["-ngl", "99", "-ncmoe", "40", "-n", "32", "-p", "0", "-fa", "1", "-t"]
            priced = {t: predict(header, FOLDER / rigs[1], [*argv, str(t)]) for t in by_threads}
        t_line = (" The CPU's decode against its threads (the control at `-ncmoe 40`, `-t 8,12,16`, twice, "
                  "second VM): " + ", ".join(
                      f"{t} threads {min(v):.1f}-{max(v):.1f} t/s priced {priced[t]:.1f}"
                      for t, v in sorted(by_threads.items()))
                  + ": the threads' share of it is priced as it runs.")
    return [
        "- The 35B beside plain-MoE controls of its shape (session 43, two H100 VMs, `gpu_h100s43*`): "
        f"`Qwen3-shaped 35B-A3B` (every layer attention, no shared expert) and `{wide}` (the same expert bytes in "
        "a quarter as many experts, four times as wide, two routed). Whole-GPU prompt: the hybrid "
        f"{errs(hybrid, 'pp', ncmoe=0)}, the control {errs(control, 'pp', ncmoe=0)}, the wide one "
        f"{errs(wide, 'pp', ncmoe=0)}. A hybrid's depth-0 whole-GPU prompt error less its control's on the same VM "
        "(the 9B's control ran `-p 512`, the others `-p 1024`): "
        + "; ".join(f"{rig.removesuffix('_rig.toml')} {model.split()[0]} {d:+.1f} pts"
                    for rig, model, d in pair_gaps(rows))
        + ". Before `attention.GPU_SCAN_STEP_S` (session 43; a GPU runs the delta rule's tokens one after another, "
        "and the FLOPs alone priced it at a third of a microsecond a token and layer) the same gaps were +5 .. +14 "
        f"pts. Prompts with experts on the CPU: the control {errs(control, 'pp', ngl=99)} including whole-GPU.",
        "- Decode seconds one more layer of routed experts on the CPU adds (`-ncmoe` 0-40, a line through "
        "each rig's tests), against the CPU probe of that VM: "
        + "; ".join(f"{s['rig'].removesuffix('_rig.toml')} {s['model']} {s['measured_us']:.0f} us, priced "
                    f"{s['priced_us']:.0f} (probe {s['probe_gbs']:.0f} GB/s)" for s in slopes)
        + ". On one VM the hybrid's expert layer costs "
        + ", ".join(f"{by[(rig, hybrid)]['measured_us'] / by[(rig, control)]['measured_us']:.2f}x"
                    for rig in rigs if (rig, hybrid) in by and (rig, control) in by)
        + " the control's (priced equal), so the 35B's CPU-expert decode is a MoE's; what moves it is the VM: "
        f"over VMs whose probes read {rng('probe_gbs')} GB/s the layer cost {rng('measured_us')} us, "
        "far more spread than the probe's"
        + (", and the fastest VM read the highest probe" if fastest["probe_gbs"] == rng_max("probe_gbs") else "")
        + ". Uncalibrated, the price "
        f"sits inside that spread ({min(x['priced_us'] / x['measured_us'] for x in slopes):.2f}-"
        f"{max(x['priced_us'] / x['measured_us'] for x in slopes):.2f}x the measured slope); `calibrate` on the "
        "machine fits it (above). Expert width at equal bytes (wide / narrow decode, first VM): "
        f"whole-GPU {ratio(0)}, `-ncmoe 40` {ratio(40)}, `-ncmoe 10` {ratio(10)}; the CPU's part of it is a few "
        "percent at 16 threads, so decode prices "
        "no width term." + t_line,
    ]


def _by_threads(records: list[dict[str, Any]]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in records:
        out.setdefault(int(r["n_threads"]), []).append(float(r["avg_ts"]))
    return out


def switch_notes(rows: list[dict[str, Any]], gpu: list[dict[str, Any]], first: bool = True) -> list[str]:
    """The notes on one rig's engine-switch records (``price_switches`` rows; ``gpu``: the ``price_gpu``
    rows of the rounds), their figures computed; the scheduler's account of a CPU-held recurrent layer
    only in the ``first`` rig's."""
    def pick(model: str, test: str, **keys: Any) -> list[dict[str, Any]]:
        return [r for r in rows if r["model"].startswith(model) and r["test"].startswith(test)
                and all(r[k] == v for k, v in keys.items())]

    def excess(rs: list[dict[str, Any]]) -> str:  # measured - predicted seconds of a 512-token ubatch, ms
        ms = [512e3 * (1 / r["tps"] - 1 / r["predicted"]) for r in rs if r["predicted"]]
        return f"{min(ms):.0f}-{max(ms):.0f}" if len(ms) > 1 else f"{ms[0]:.0f}" if ms else "-"

    def errs(rs: list[dict[str, Any]]) -> str:
        e = [r["error_pct"] for r in rs if r["error_pct"] is not None]
        return (f"{min(e):+.1f} .. {max(e):+.1f} %" if len(e) > 1 else f"{e[0]:+.1f} %") if e else "-"

    if not rows:
        return []
    hyb, ctl = "Qwen3.5-9B", "Qwen3-shaped"
    rigs = {r["rig"] for r in rows}
    session = re.search(r"s(\d+)_rig", next(iter(rigs)))
    vm = f"session {session.group(1)}'s H100 VM" if session else "one H100 VM"

    mapped = {m: pick(m, "pp512", load="mmap", no_host=False) + pick(m, "pp512", load="auto", threads=16, poll=50)
              for m in (hyb, ctl)}

    def spread(model: str) -> str:  # default-switch -ngl 20 prompts of the rig's rounds and switch runs
        tps = [r["tps"] for r in mapped[model]]
        tps += [r["tps"] for r in gpu if r["model"].startswith(model) and r["ngl"] == 20 and r["test"] == "pp512"
                and r["rig"] in rigs]
        return f"{min(tps):.0f}-{max(tps):.0f} t/s ({len(tps)} runs)"
    pinned_h = pick(hyb, "pp512", load="none", poll=50, no_host=False)
    steady_h = [r for r in pinned_h if r["error_pct"] is not None and r["error_pct"] < 100]
    outlier = [r for r in pinned_h if r not in steady_h]
    no_host = [r for r in rows if r["no_host"]]
    with_host = [r["tps"] for r in rows if r["load"] in ("mmap", "none") and r["poll"] == 50 and not r["no_host"]
                 and r["error_pct"] is not None and r["error_pct"] < 100]
    hosted = f"{min(with_host):.0f}-{max(with_host):.0f}" if with_host else "-"
    ctl_pinned = pick(ctl, "pp512", load="none", poll=50, no_host=False)
    faster = [p["tps"] / m["tps"] for p in ctl_pinned for m in mapped[ctl]]
    if not first:  # the same runs again on another VM: the figures, the account stays with the first
        return [f"- Engine switches at `-ngl 20` on {vm}: the control {errs(mapped[ctl])} mapped, "
                f"{errs(ctl_pinned)} pinned, {errs(pick(ctl, 'pp2048'))} at `-ub 2048`; the hybrid "
                f"{errs(mapped[hyb])} mapped ({errs(pick(hyb, 'pp512', load='auto', poll=0, threads=16))} at "
                f"`--poll 0`, {errs(pick(hyb, 'pp512', load='auto', threads=8, poll=50))} at 8 threads), "
                f"{errs(steady_h)} "
                f"pinned, {errs(pick(hyb, 'pp2048'))} at `-ub 2048`. Its default `-ngl 20` prompt ran "
                f"{spread(hyb)} here, the control {spread(ctl)}."]
    return [
        f"- Engine switches at `-ngl 20` (the 9B pair, {vm}): the all-attention "
        f"control's prompt is priced {errs(mapped[ctl])} with mapped weights (copied at the measured pageable "
        f"rate, `stream_gbs`), {errs(ctl_pinned)} pinned (`-lm none`, "
        f"{min(faster):.1f}-{max(faster):.1f}x faster) and {errs(pick(ctl, 'pp2048'))} at `-ub 2048`: the "
        f"op-offload structure and both copy rates are the engine's. The hybrid is priced {errs(mapped[hyb])} "
        f"mapped, {errs(steady_h)} pinned, "
        f"{errs(pick(hyb, 'pp2048'))} at `-ub 2048`: {excess(steady_h)} ms a 512-token ubatch beyond the "
        f"prediction pinned, {excess(mapped[hyb])} mapped, over its 11 CPU-held recurrent layers. "
        "The scheduler's log of the pinned run (GGML_SCHED_DEBUG=2, tests/data/sched_splits_qwen35_9b_ngl20.txt) "
        "shows what a CPU-held recurrent layer adds to an attention one: three CPU splits (build_rs's gather, the "
        "conv-state store, the state store), the 2 MiB state up and down, and the whole conv input (16 MiB at 512 "
        "tokens: the stored last 3 columns are a strided view across it) down to the CPU; the cost model prices "
        "these (`CostModel.cpu_cache_pp`, `ModelProfile.recurrent_store_bytes`), a few ms of the excess. "
        "With mapped weights the hybrid also runs faster at `--poll 0` and at 8 threads "
        f"({errs(pick(hyb, 'pp512', load='auto', poll=0))}; the control moves less): its CPU splits wake the "
        "thread pool, whose spinning competes with the CPU-driven pageable copies; pinned copies are DMA and "
        f"`--poll 0` costs there ({errs(pick(hyb, 'pp512', load='none', poll=0))}, control "
        f"{errs(pick(ctl, 'pp512', load='none', poll=0))}). Not priced: polling and the thread pool. The "
        "mapped hybrid is also the least steady: its default `-ngl 20` prompt ran "
        f"{spread(hyb)} on this rig (the rounds and the switches' default rows, minutes apart), "
        f"the control {spread(ctl)}.",
        *([f"- One pinned hybrid run ran at {outlier[0]['tps']:.0f} t/s (the first call), the same configuration "
           f"{', '.join(format(r['tps'], '.0f') for r in steady_h)} t/s in the second; left unexplained (llama-bench "
           "without -v prints no allocation warning; a failed pinned allocation falls back to a plain CPU "
           "buffer)."] if outlier else []),
        *(["- `--no-host 1`: "
        + ", ".join(f"{r['model'].split()[0]} {r['load']} {r['tps']:.0f} t/s" for r in no_host)
        + f" against {hosted} without it. Without the host buffer first in the CPU's list "
        "(src/llama-model.cpp:1099-1107) the extra buffer types come first, and this host's CPU has AMX "
        "(amx_int8 in gpu_h100s40_lscpu.txt; the native build enables the AMX buffer type): AMX takes Q8_0 "
        "(ggml/src/ggml-cpu/amx/common.h:106-115) and is no host buffer (amx.cpp:236), so op offload cannot "
        "copy those weights and the CPU computes the CPU layers' prompt with its AMX kernels. "
        "Not priced (the planner does not know a build's AMX): `check` says what the flag changes "
        "(`engines.common.NO_HOST_NOTE`), `calibrate` leaves such records out."] if no_host else []),
        *(["- CPU decode at fewer threads (`-t`, `Cluster.with_cpu_threads`: one thread's 10 GB/s, "
        "`devices.CPU_THREAD_GBS`, in series with the memory's rate, the figure at the CPU's threads kept; set "
        f"on these records): all layers on the CPU {errs(pick(ctl, 'tg', ngl=0))} from 1 to 16 threads, at "
        f"`-ngl 20` {errs(pick(ctl, 'tg', ngl=20) + pick(hyb, 'tg', ngl=20))}. With a power law, (threads / the "
        "CPU's) ^ 0.7 (fitted on the H200 host's 4 and 8 threads), 1-2 threads were +30 .. +47 %; before `-t` was "
        "priced at all, 8 threads were +33 .. +48 %."] if pick(ctl, "tg", ngl=0) else []),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.hybrid_speed", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="write the CPU models (random weights)")
    m.add_argument("folder", type=Path)

    def bench_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("binary", type=Path)
        p.add_argument("folder", type=Path)
        p.add_argument("-o", "--output", type=Path, required=True)
        p.add_argument("--threads", type=int, required=True)
        p.add_argument("--reps", type=int, default=3)
        return p

    r = bench_parser("run", "llama-bench on the CPU models")
    r.add_argument("--cpu-gbs", type=float, required=True, help="the CPU's bandwidth, as `devices --measure` gives it")
    g = sub.add_parser("gpu-models", help="write the GPU_RUNS shapes as speed models")
    g.add_argument("folder", type=Path)
    g.add_argument("--only", nargs="*", help="these models of GPU_RUNS alone")
    gr = bench_parser("gpu-run", "llama-bench on the GPU_RUNS configurations")
    gr.add_argument("--logs", type=Path, required=True, help="folder for each run's -v log")
    gr.add_argument("--rig", type=Path, required=True,
                    help="the machine's cluster file (speed_truth rig), kept in benchmarks/results/hybrid_speed")
    gr.add_argument("--only", nargs="*", help="these models of GPU_RUNS alone")
    sub.add_parser("report", help="price every record; write benchmarks/results/hybrid_speed.{md,json}")
    args = ap.parse_args(argv)
    if args.cmd == "models":
        args.folder.mkdir(parents=True, exist_ok=True)
        write_headers(args.folder, CPU_MODELS, header_only=False)
    elif args.cmd == "run":
        run(args.binary, args.folder, args.output, args.threads, args.cpu_gbs, args.reps)
    elif args.cmd == "gpu-models":
        write_gpu_models(args.folder, args.only)
    elif args.cmd == "gpu-run":
        run_gpu(args.binary, args.folder, args.output, args.logs, args.rig, args.threads, args.reps, args.only)
    else:
        for row in report()["cpu"]:
            print(row["shape"], row["test"], f"{row['error_pct']:+.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
