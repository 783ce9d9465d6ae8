"""How fast llama.cpp reads each weight type: decode and prompt of one dense shape in every common
ggml type, on the GPU and on the CPU, measured on one machine (``run``) and turned into the
per-type speed factors the planner prices with (``report``).

Decode is a matrix-vector product per weight: its time is the bytes read at the memory's rate only
if the kernel keeps up with the memory. It does not for every type: a K-quant or i-quant block
costs more instructions per byte than Q4_0 or Q8_0 (ggml/src/ggml-cuda/vecdotq.cuh,
ggml/src/ggml-cpu/quants.c), and on a fast memory (HBM, a many-channel CPU) the kernel, not the
memory, sets the pace. The prompt's matrix-matrix products (MMQ, ggml/src/ggml-cuda/mmq.cuh) have
per-type tile costs too. Models: ``speed_models``' ``llama8b`` and ``llama1b`` shapes (Llama-3-8B,
Llama-3.2-1B) with every matrix in one type and Q4_K token embeddings, weights as holes (zeros:
no kernel skips zeros).

On the GPU machine (llama-bench built from source, not committed)::

    python -m benchmarks.quant_speed models DIR
    python -m benchmarks.quant_speed run DIR --bin PATH/llama-bench --out OUT --round 1 [--reverse]

``run`` is resumable (a file per finished test) and alternates type order between rounds. Here::

    python -m benchmarks.quant_speed report [--write]   # -> benchmarks/results/quant_speed.{md,json}

derives (:func:`derive`) the H200's ``[[speed]]`` row (decode share and per-layer cost from the
memory-bound F16/BF16 runs of both shapes) and the per-type rows of
``omni_place/data/weight_types.toml`` (``--write`` rewrites them; tests/test_weight_types.py checks
they equal the derivation), then prices every record with the planner.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RECORDS = RESULTS / "quant_speed" / "records.jsonl"
IK_RECORDS = RESULTS / "ik_types" / "records.jsonl"
IK_VALIDATION = RESULTS / "ik_types" / "validation.jsonl"
TABLE = Path(__file__).resolve().parents[1] / "omni_place" / "data" / "weight_types.toml"

#: types whose GPU decode is memory-bound on the H200 (no kernel ceiling): the rows' memory side
MEMORY_BOUND = ("f16", "bf16")
#: CPU records that measure the synthetic weights, not the type: MXFP4's zero E8M0 scales are
#: 2^-128, denormal in F32, and every FMA with them takes a microcode assist (1.6 tok/s where Q4_0
#: runs 14.5); its AVX2 kernel is IQ4_NL's 16-entry lookup (ggml-cpu/arch/x86/quants.c), whose rate it gets
CPU_STAND_IN = {"mxfp4": "iq4_nl"}
#: the machine: the catalog entry of its GPU, llama-bench's threads
GPU, THREADS = "H200", 16

#: the types measured: every ggml type common in published GGUFs (unsloth / bartowski / ggml-org
#: quants: K-quants, i-quants, legacy, MXFP4 of gpt-oss, F16/BF16)
TYPES = ("f16", "bf16", "q8_0", "q6_k", "q5_k", "q5_0", "q5_1", "q4_k", "q4_0", "q4_1", "iq4_xs", "iq4_nl",
         "mxfp4", "q3_k", "iq3_s", "iq3_xxs", "q2_k", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s")
SHAPES = ("llama8b", "llama1b")
#: the tests per model: (name, shape, llama-bench arguments)
TESTS = (
    ("gpu", "llama8b", ["-ngl", "99", "-fa", "0,1", "-p", "512", "-n", "64", "-r", "2"]),
    ("gpu", "llama1b", ["-ngl", "99", "-fa", "1", "-p", "512", "-n", "64", "-r", "2"]),
    ("cpu", "llama8b", ["-ngl", "0", "-fa", "1", "-p", "0", "-n", "16", "-r", "2"]),
)
#: ik_llama.cpp's own weight types (omni_place/data/ik_types.toml) as ubergarm's quants use them,
#: beside mainline types run by ik's kernels (its CPU has its own i-quant code, ggml/src/iqk)
IK_TYPES = ("iq2_k", "iq3_k", "iq4_k", "iq5_k", "iq6_k", "iq2_ks", "iq3_ks", "iq4_ks", "iq5_ks", "iq4_kss",
            "iq2_kl", "iq1_kt", "iq2_kt", "iq3_kt", "iq4_kt", "q6_0")
IK_REFERENCE = ("q4_k", "q8_0", "f16", "q6_k", "iq2_xxs", "iq4_xs")
IK_TESTS = (
    ("gpu", "llama8b", ["-ngl", "99", "-fa", "1", "-p", "512", "-n", "64", "-r", "2"]),
    ("cpu", "llama8b", ["-ngl", "0", "-fa", "1", "-p", "0", "-n", "16", "-r", "2"]),
)


def group(r: dict[str, Any]) -> tuple[Any, ...]:
    """A record's (shape, type, where, test, flash_attn, threads)."""
    shape, wtype = Path(r["model_filename"]).name.split(".")[:2]
    return (shape, wtype, "gpu" if r["n_gpu_layers"] else "cpu", "pp" if r["n_prompt"] else "tg",
            int(r["flash_attn"]), r["n_threads"])


#: what a record is grouped by (:func:`group` here, other keys in the validation tables and
#: benchmarks.attention_depth)
RecordKey = Callable[[dict[str, Any]], tuple[Any, ...]]


def medians(records: list[dict[str, Any]], key: RecordKey = group) -> dict[tuple[Any, ...], float]:
    """Median tok/s over the warm samples (records.warm_samples: ik's first prompt repetition
    runs cold) of each group of records (``key``)."""
    from omni_place.bench.records import warm_samples
    from omni_place.engines import engine_of_bench_record

    samples: dict[tuple[Any, ...], list[float]] = {}
    for r in records:
        warm = warm_samples(r, engine_of_bench_record(r) or "llama.cpp", r["n_prompt"] > 0)
        samples.setdefault(key(r), []).extend(warm)
    return {k: statistics.median(v) for k, v in samples.items()}


def priced(records: list[dict[str, Any]], folder: Path, key: RecordKey = group) -> dict[tuple[Any, ...], float]:
    """The planner's tok/s per group of records (``key``): each record imported as a user's
    llama-bench output (``omni_place.bench.llamabench``: its -ngl, -fa, -t and -d go through the
    dialect) on the H200 machine (CLUSTER), of the speed model its file name names
    (``{shape}.{type}.gguf``), and priced with the default parameters."""
    from benchmarks.speed_models import write_speed_model
    from omni_place.bench.calibrate import predict_point
    from omni_place.bench.llamabench import import_text
    from omni_place.devices import resolve_cluster
    from omni_place.model import ModelProfile, load_model
    from omni_place.placement import SpeedParams

    path = folder / "cluster.toml"
    path.write_text(CLUSTER)
    cluster, models = resolve_cluster(str(path)), {}
    out: dict[tuple[Any, ...], list[float]] = {}
    for r in records:
        shape, wtype = Path(r["model_filename"]).name.split(".")[:2]
        model: ModelProfile = models.get((shape, wtype)) or models.setdefault(
            (shape, wtype), load_model(write_speed_model(shape, folder, header_only=True, weight_type=wtype)))
        points = import_text(json.dumps(r), model, cluster).points
        out.setdefault(key(r), []).extend(predict_point(p, SpeedParams()) for p in points)
    return {k: statistics.median(v) for k, v in out.items() if v}  # a group import left out has no price


def weights(header: Path) -> tuple[int, int, int]:
    """(bytes, elements, layers) that one decoded token reads: every weight but the token
    embeddings (one row of them is read)."""
    from omni_place.gguf import read_model_files

    files = read_model_files(header)
    read = [t for t in files.tensors if t.name != "token_embd.weight"]
    meta = files.metadata
    return (sum(t.n_bytes for t in read), sum(t.n_elements for t in read),
            meta[f"{meta['general.architecture']}.block_count"])


def derive(records: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """The H200's decode row and the per-type rows (see the module doc): the row from least
    squares of ``t = bytes / (share x bandwidth) + layers x layer_us`` over the memory-bound types'
    decode of both shapes; a type's GPU work per weight from its decode time less the layers' cost
    over both shapes, at the row's MMQ rate (0 where within 10 % of the memory's time); its prompt
    factor and CPU share from its 8B prompt and 16-thread CPU decode (net of the CPU's per-layer
    cost) against Q4_K's."""
    import numpy as np

    from benchmarks.speed_models import write_speed_model
    from omni_place.catalog import lookup, speed_share
    from omni_place.placement import SpeedParams

    gpu, med = lookup(GPU), medians(records)
    assert gpu is not None
    shapes = {(sh, t): weights(write_speed_model(sh, folder, header_only=True, weight_type=t))
              for sh in SHAPES for t in TYPES}
    rows = [(shapes[sh, t][0], shapes[sh, t][2], 1 / med[sh, t, "gpu", "tg", 1, THREADS])
            for t in MEMORY_BOUND for sh in SHAPES]
    (inv_bw, layer_s), *_ = np.linalg.lstsq(np.array([[b, n] for b, n, _ in rows]),
                                            np.array([t for *_, t in rows]), rcond=None)
    share = round(1 / inv_bw / (gpu.bandwidth_gbs * 1e9), 2)
    layer_s = round(layer_s * 1e6, 1) * 1e-6
    bw, rate = gpu.bandwidth_gbs * 1e9 * share, gpu.fp16_tflops * 1e12 * speed_share("9.0").mmq_share
    cpu_layer_s = SpeedParams().cpu_layer_s

    def cpu_rate(t: str) -> float:  # bytes/s of the 8B CPU decode, net of the CPU's per-layer cost
        b, _, nl = shapes["llama8b", t]
        return b / (1 / med["llama8b", CPU_STAND_IN.get(t, t), "cpu", "tg", 1, THREADS] - nl * cpu_layer_s)

    def pp_time(t: str) -> float:
        return 1 / med["llama8b", t, "gpu", "pp", 1, THREADS]

    types, fa_off = {}, []
    for t in TYPES:
        kernel = [(1 / med[sh, t, "gpu", "tg", 1, THREADS] - shapes[sh, t][2] * layer_s, *shapes[sh, t][:2])
                  for sh in SHAPES]
        bound = t in MEMORY_BOUND or all(k <= 1.1 * b / bw for k, b, _ in kernel)
        types[t.upper()] = {
            "gpu_decode_flops": 0.0 if bound else round(float(rate * sum(k for k, _, _ in kernel)
                                                              / sum(n for *_, n in kernel)), 1),
            "gpu_prompt": round(pp_time(t) / pp_time("q4_k"), 2),
            "cpu_decode_share": round(cpu_rate(t) / cpu_rate("q4_k"), 2)}
        fa_off.append((1 / med["llama8b", t, "gpu", "tg", 0, THREADS] - 1 / med["llama8b", t, "gpu", "tg", 1, THREADS])
                      / shapes["llama8b", t][2])
    ik = derive_ik([json.loads(line) for line in IK_RECORDS.read_text().splitlines()], folder, types["Q4_K"],
                   layer_s, bw)
    return {"gpu_row": {"compute_capability": "9.0", "decode_bw_share": float(share),
                        "layer_us": round(float(layer_s) * 1e6, 1)},
            "fa_off_layer_share": round(statistics.median(fa_off) / layer_s, 2), "types": {**types, **ik}}


def derive_ik(records: list[dict[str, Any]], folder: Path, q4_k: dict[str, float], layer_s: float,
              bw: float) -> dict[str, dict[str, float]]:
    """Rows of ik_llama.cpp's own types (IK_TYPES) from ik's llama-bench runs of the 8B shape
    (IK_TESTS): each against Q4_K as the same engine ran it, beside it in the same rounds, and put
    on the scale of Q4_K's mainline row (``q4_k``): GPU decode work from the kernel time net of the
    layers' cost (0 where within 10 % of the memory's time at ``bw``), the prompt's MMQ time, the
    CPU's decode rate net of its per-layer cost."""
    from benchmarks.speed_models import write_speed_model
    from omni_place.placement import SpeedParams

    med, cpu_layer_s = medians(records), SpeedParams().cpu_layer_s
    shapes = {t: weights(write_speed_model("llama8b", folder, header_only=True, weight_type=t))
              for t in (*IK_TYPES, "q4_k")}

    def kernel_s(t: str) -> float:
        return 1 / med["llama8b", t, "gpu", "tg", 1, THREADS] - shapes[t][2] * layer_s

    def pp_time(t: str) -> float:
        return 1 / med["llama8b", t, "gpu", "pp", 1, THREADS]

    def cpu_rate(t: str) -> float:
        return shapes[t][0] / (1 / med["llama8b", t, "cpu", "tg", 1, THREADS] - shapes[t][2] * cpu_layer_s)

    return {t.upper(): {
        "gpu_decode_flops": 0.0 if kernel_s(t) <= 1.1 * shapes[t][0] / bw else round(
            float(q4_k["gpu_decode_flops"] * kernel_s(t) / kernel_s("q4_k")), 1),
        "gpu_prompt": round(float(q4_k["gpu_prompt"] * pp_time(t) / pp_time("q4_k")), 2),
        "cpu_decode_share": round(float(q4_k["cpu_decode_share"] * cpu_rate(t) / cpu_rate("q4_k")), 2)}
        for t in IK_TYPES}


_TABLE_HEAD = """\
# How fast llama.cpp's matrix kernels consume each ggml weight type (omni_place/kernels.py says
# how the planner uses them). Written by `python -m benchmarks.quant_speed report --write` from
# llama-bench runs on one H200 and its 16-vCPU Xeon host (benchmarks/results/quant_speed.md):
#   gpu_decode_flops  the GPU matrix-vector kernel's work per weight, in FLOPs at the GPU's MMQ rate
#                     (fp16_tflops x mmq_share of gpu_catalog.toml); 0: memory-bound on every GPU
#   gpu_prompt        MMQ time per FLOP relative to Q4_K (F16/BF16: cuBLAS)
#   cpu_decode_share  the CPU's decode read rate relative to Q4_K's, 16 threads (MXFP4: IQ4_NL's,
#                     quant_speed.CPU_STAND_IN)
#   cpu_prompt        the CPU's prompt matmul (MUL_MAT) time per FLOP relative to Q4_K's, and
#   cpu_expert_prompt the same for routed experts (MUL_MAT_ID): written by `python -m
#                     benchmarks.cpu_prompt report --write` (benchmarks/results/cpu_prompt.md);
#                     absent: Q4_K's; over the CPUs and both SIMD builds (a CPU whose build is unknown)
#   avx2_cpu_prompt, avx2_cpu_expert_prompt, avx512_...  the same by one SIMD build's kernels (the
#                     cluster's cpu `simd`); absent: the columns above
#   ik_cpu_prompt, ik_cpu_expert_prompt  the same by ik_llama.cpp's CPU kernels, relative to
#                     mainline's Q4_K on one CPU (the same report); absent: ik's Q4_K
#   ik_cpu_decode_share  cpu_decode_share by ik's kernels where mainline's compute binds (the same
#                     report); absent: mainline's
# Types not listed price as Q4_K.
"""
_IK_HEAD = """\
# ik_llama.cpp's own types (omni_place/data/ik_types.toml), run by ik's llama-bench on the same
# machine (benchmarks/results/ik_types/): each against Q4_K as ik ran it, on Q4_K's scale above
"""


def table_text(types: dict[str, dict[str, float]]) -> str:
    """``data/weight_types.toml`` for the derived ``types`` (mainline's, then ik_llama.cpp's); the
    CPU prompt columns a row lacks are kept from the shipped table (benchmarks/cpu_prompt.py)."""
    from omni_place.kernels import weight_type_speeds

    shipped = weight_type_speeds()
    rows = [(_IK_HEAD if t == IK_TYPES[0].upper() else "") + f'[[type]]\ntype = "{t}"\n'
            + "".join(f"{k} = {v}\n" for k, v in {**row, **_cpu_prompt_columns(shipped.get(t), row)}.items())
            for t, row in types.items()]
    return _TABLE_HEAD + "\n" + "\n".join(rows)


def _cpu_prompt_columns(shipped: Any, row: dict[str, float]) -> dict[str, float]:
    from omni_place.kernels import CPU_KERNEL_COLUMNS

    return {k: getattr(shipped, k) for k in CPU_KERNEL_COLUMNS
            if shipped and k not in row and not is_default(k, getattr(shipped, k))}


def is_default(column: str, value: Any) -> bool:
    """Whether ``value`` is what a row of data/weight_types.toml without ``column`` reads as."""
    from omni_place.kernels import WeightTypeSpeed

    return bool(value == WeightTypeSpeed.__dataclass_fields__[column].default)


#: the H200 machine as `omni-place devices --measure` saw it (results/quant_speed/devices.txt); its
#: llama.cpp a native build on an AVX-512 Xeon
CLUSTER = (f'name = "h200-vm"\n[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "{GPU}"\n'
           '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 120\nbandwidth_gbs = 87.7\nthreads = 16\n'
           'simd = "avx512"\n')


MOE_RECORDS = RESULTS / "quant_speed" / "moe15_ot_exps.jsonl"
#: held-out placements priced before they ran (``predict-validation``): llama.cpp-style mixed
#: quants (speed_models.MIXES) of the three speed-model architectures, whole and partly on the CPU
VALIDATION: tuple[tuple[str, str, str], ...] = (
    ("dense11", "q4_k_m", "-ngl 99"), ("dense11", "q4_k_m", "-ngl 20"), ("dense11", "q4_k_m", "-ngl 8"),
    ("moe15", "iq2_xxs_moe", "-ngl 99"), ("moe15", "iq2_xxs_moe", "-ngl 99 -ot exps=CPU"),
    ("moe15", "iq2_xxs_moe", "-ngl 99 -ncmoe 12"),
    ("mla16", "q4_k_m", "-ngl 99"), ("mla16", "q4_k_m", "-ngl 99 -ot exps=CPU"),
)
VALIDATION_FLAGS = "-fa 1 -p 512 -n 32 -r 2 -t 16"
#: the same for ik_llama.cpp's llama-bench: its expert-offload rule (a CPU-held MUL_MAT_ID runs on the
#: GPU only from n_tokens x used >= 32 x experts: moe256 at -ub 1024) and its own types
VALIDATION_IK: tuple[tuple[str, str, str], ...] = (
    ("moe256", "q4_k", "-ngl 99 -ot exps=CPU -ub 512"), ("moe256", "q4_k", "-ngl 99 -ot exps=CPU -ub 1024"),
    ("moe256", "q4_k", "-ngl 99 -ot exps=CPU -ub 2048"), ("moe256", "iq2_ks_moe", "-ngl 99 -ot exps=CPU -ub 512"),
    ("moe256", "iq2_ks_moe", "-ngl 99"), ("dense11", "q4_k_m", "-ngl 8"), ("dense11", "q4_k_m", "-ngl 20"),
    ("dense11", "iq4_ks", "-ngl 20"),
)
VALIDATION_IK_FLAGS = "-p 2048 -b 2048 -n 32 -r 2 -t 16"
VALIDATION_FILE = RESULTS / "quant_speed" / "validation.json"
VALIDATION_IK_FILE = RESULTS / "quant_speed" / "validation_ik.json"


def validation_rows() -> list[dict[str, Any]]:
    """The VALIDATION placements as they ran (quant_speed/validation.jsonl: median of every
    sample of two interleaved rounds) beside the prices made before the runs (validation.json)."""
    measured = medians([json.loads(line) for line in (RESULTS / "quant_speed" / "validation.jsonl").read_text()
                        .splitlines()],
                       lambda r: (Path(r["model_filename"]).stem, r["n_gpu_layers"], r["n_cpu_moe"],
                                  r["tensor_buft_overrides"], "pp" if r["n_prompt"] else "tg"))
    rows = []
    for row in json.loads(VALIDATION_FILE.read_text())["rows"]:
        flags = row["flags"].split()
        key = (row["model"], int(_flag(flags, "-ngl", "0")), int(_flag(flags, "-ncmoe", "0")),
               _flag(flags, "-ot", "none"))
        rows += _test_rows(row, measured, key, {t: row[f"{t}_predicted"] for t in ("tg", "pp")},
                           {t: row[f"{t}_before"] for t in ("tg", "pp")})
    return rows


def _flag(flags: list[str], name: str, default: str) -> str:
    """The value of ``name`` in a split command line, else ``default``."""
    return flags[flags.index(name) + 1] if name in flags else default


def _test_rows(row: dict[str, Any], measured: dict[tuple[Any, ...], float], key: tuple[Any, ...],
               predicted: dict[str, float], before: dict[str, float]) -> list[dict[str, Any]]:
    """A validation placement's tg and pp rows: its median tok/s (``measured``, by ``key`` + the test)."""
    return [{"model": row["model"], "flags": row["flags"], "test": test, "measured": round(measured[(*key, test)], 1),
             "predicted": predicted[test], "before": before[test]} for test in ("tg", "pp")]


def predict_validation(folder: Path, engine: str = "llama.cpp") -> list[dict[str, Any]]:
    """The planner's tok/s for every VALIDATION placement (VALIDATION_IK for ik_llama.cpp) on the
    H200 machine (CLUSTER)."""
    from benchmarks.speed_models import write_speed_model
    from omni_place.plan import evaluate

    cluster = folder / "cluster.toml"
    cluster.write_text(CLUSTER)
    runs, common = (VALIDATION, VALIDATION_FLAGS) if engine == "llama.cpp" else (VALIDATION_IK, VALIDATION_IK_FLAGS)
    out = []
    for shape, mix, flags in runs:
        header = write_speed_model(shape, folder, header_only=True, weight_type=mix)
        pred = evaluate(str(header), str(cluster), [*flags.split(), *common.split()], engine=engine,
                        tool="bench").predicted
        out.append({"model": f"{shape}.{mix}", "flags": flags, "tg_predicted": round(pred.tg_tps, 1),
                    "pp_predicted": round(pred.pp_tps, 1)})
    return out


def _moe_rows(folder: Path) -> list[dict[str, Any]]:
    """moe15 in four types with every expert in CPU RAM (-ot exps=CPU), 16 and 8 threads: checks the
    CPU shares on MUL_MAT_ID (routed experts) and the prompt's op offload, which the fit did not use."""
    records = [json.loads(line) for line in MOE_RECORDS.read_text().splitlines()]
    predicted = priced(records, folder)
    return [{"shape": "moe15 -ot exps=CPU", "type": key[1], "where": "gpu+cpu", "test": key[3], "fa": key[4],
             "threads": key[5], "measured": round(tps, 1), "predicted": round(predicted[key], 1)}
            for key, tps in sorted(medians(records).items()) if key in predicted]


def report(records: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """Every record group priced by the planner with the shipped tables (whole-GPU and all-CPU
    runs, :func:`priced`, and moe15 with its experts in CPU RAM)."""
    predicted = priced(records, folder)
    rows = [{"shape": key[0], "type": key[1], "where": key[2], "test": key[3], "fa": key[4], "threads": key[5],
             "measured": round(tps, 1), "predicted": round(predicted[key], 1)}
            for key, tps in sorted(medians(records).items()) if key in predicted]  # import left the rest out
    return {"rows": rows + _moe_rows(folder)}


def ik_validation_rows(folder: Path) -> list[dict[str, Any]]:
    """The VALIDATION_IK placements as ik's llama-bench ran them (ik_types/validation.jsonl: median of
    every sample of three interleaved rounds) beside the prices made before the runs
    (validation_ik.json, ik's own types priced as Q4_K then) and the prices of this commit."""
    measured = medians([json.loads(line) for line in IK_VALIDATION.read_text().splitlines()],
                       lambda r: (Path(r["model_filename"]).stem, r["n_gpu_layers"], r["n_ubatch"],
                                  r["override_tensor"] or "none", "pp" if r["n_prompt"] else "tg"))
    now = predict_validation(folder, "ik_llama.cpp")
    rows = []
    for row, after in zip(json.loads(VALIDATION_IK_FILE.read_text())["rows"], now):
        flags = row["flags"].split()
        key = (row["model"], int(_flag(flags, "-ngl", "0")), int(_flag(flags, "-ub", "512")),
               _flag(flags, "-ot", "none"))
        rows += _test_rows(row, measured, key, {t: after[f"{t}_predicted"] for t in ("tg", "pp")},
                           {t: row[f"{t}_predicted"] for t in ("tg", "pp")})
    return rows


def ik_markdown(derived: dict[str, Any], folder: Path) -> list[str]:
    """The ik_llama.cpp section of quant_speed.md: its types' rows, each record priced as an
    imported llama-bench output, and the held-out ik placements."""
    records = [json.loads(line) for line in IK_RECORDS.read_text().splitlines()]
    med, pred = medians(records), priced(records, folder)
    lines = ["", "## ik_llama.cpp: its own types, its expert offload", "",
             "ik_llama.cpp's llama-bench (8337e4cd3, CUDA sm_90) on the same kind of H200 machine, two rounds in "
             "alternating type order ([ik_types/records.jsonl](ik_types/records.jsonl)); the files were written by "
             "omni_place's GGUF writer and ik reported every one at exactly the bytes `ggml_types` gives "
             "(26 files, 16 ik types with and without row scales). Rows: each type against Q4_K as ik ran it "
             "(`derive_ik`). Mainline types as ik runs them are listed for comparison (their rows stay "
             "mainline's).", "",
             "| type | gpu_decode_flops | gpu_prompt | cpu_decode_share | 8B GPU tg (meas / pred) | 8B GPU pp "
             "| 8B CPU tg, 16 threads |", "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(t: str, where: str, test: str) -> str:
        key = ("llama8b", t, where, test, 1, THREADS)
        m, p = med[key], pred[key]
        return f"{m:.1f} / {p:.1f} ({100 * (p / m - 1):+.0f} %)"

    for t in (*IK_TYPES, *IK_REFERENCE):
        row = derived["types"][t.upper()]
        name = t.upper() if t in IK_TYPES else f"{t.upper()} (mainline row)"
        lines.append(f"| {name} | {row['gpu_decode_flops']:g} | {row['gpu_prompt']:g} | {row['cpu_decode_share']:g} "
                     f"| {cell(t, 'gpu', 'tg')} | {cell(t, 'gpu', 'pp')} | {cell(t, 'cpu', 'tg')} |")
    lines += ["", f"Held out (ik's llama-bench `{VALIDATION_IK_FLAGS}`, three interleaved rounds, "
              "[ik_types/validation.jsonl](ik_types/validation.jsonl)); priced before the runs "
              "([quant_speed/validation_ik.json](quant_speed/validation_ik.json): ik's types then priced as "
              "Q4_K) and by this commit:", "",
              "| model | flags | test | measured | now | before the runs |", "|---|---|---|---:|---:|---:|"]
    for v in ik_validation_rows(folder):
        lines.append(f"| {v['model']} | `{v['flags']}` | {v['test']} | {v['measured']:g} | {v['predicted']:g} "
                     f"({_err(v):+.0f} %) | {v['before']:g} ({_err({**v, 'predicted': v['before']}):+.0f} %) |")
    return lines


def _err(row: dict[str, Any]) -> float:
    return 100.0 * (row["predicted"] / row["measured"] - 1)


def markdown(derived: dict[str, Any], result: dict[str, Any], before: dict[str, Any] | None,
             ik: list[str] = ()) -> str:  # type: ignore[assignment]
    """benchmarks/results/quant_speed.md: the derived rows, then the accuracy of the planner, then
    ``ik`` (:func:`ik_markdown`)."""
    lines = ["# Weight types: what llama.cpp's kernels make of each ggml type", "",
             "`python -m benchmarks.quant_speed report` (see its docstring). llama-bench (mainline, the vendored "
             "llama.cpp of llama-cpp-python 0.3.36, CUDA sm_90, GGML_NATIVE) on one H200 and its 16-vCPU Xeon "
             "(AVX-512, AMX; `devices --measure`: CPU 87.7 GB/s, [quant_speed/devices.txt](quant_speed/devices.txt)), "
             "3 rounds in alternating type order, records in [quant_speed/](quant_speed/). Models: Llama-3-8B and "
             "Llama-3.2-1B shapes with every matrix in one type (weights as holes; Q4_K token embeddings).", "",
             f"H200 decode row: `decode_bw_share` {derived['gpu_row']['decode_bw_share']}, `layer_us` "
             f"{derived['gpu_row']['layer_us']} (least squares on F16/BF16, memory-bound, both shapes); decode "
             f"without flash attention costs {derived['fa_off_layer_share']} x `layer_us` more per layer "
             "(`kernels.FA_OFF_LAYER_SHARE`).", "",
             "| type | gpu_decode_flops | gpu_prompt | cpu_decode_share | 8B GPU tg (meas / pred) | 8B GPU pp "
             "| 8B CPU tg, 16 threads |", "|---|---:|---:|---:|---:|---:|---:|"]
    by = {(r["shape"], r["type"], r["where"], r["test"], r["fa"], r["threads"]): r for r in result["rows"]}

    def cell(key: tuple[Any, ...]) -> str:
        r = by.get(key)
        return "-" if r is None else f"{r['measured']:g} / {r['predicted']:g} ({_err(r):+.0f} %)"

    for t, row in derived["types"].items():
        lo = t.lower()
        if lo not in TYPES:
            continue  # ik_llama.cpp's: ik_markdown
        lines.append(f"| {t} | {row['gpu_decode_flops']:g} | {row['gpu_prompt']:g} | {row['cpu_decode_share']:g} "
                     f"| {cell(('llama8b', lo, 'gpu', 'tg', 1, THREADS))} "
                     f"| {cell(('llama8b', lo, 'gpu', 'pp', 1, THREADS))} "
                     f"| {cell(('llama8b', lo, 'cpu', 'tg', 1, THREADS))} |")
    lines += ["", "## Accuracy (prediction / measured - 1, |error| median / max)", "",
              "| records | now | before (every type priced as Q4_K bytes; H200 row 0.47 / 55 us) |", "|---|---|---|"]
    groups = {}
    for r in result["rows"]:
        if r["where"] == "cpu" and r["type"] in CPU_STAND_IN:
            continue  # the synthetic weights' artifact (CPU_STAND_IN), not the type's speed
        label = (f"{r['shape']} {r['where']} {r['test']}" + ("" if r["where"] == "cpu" else f" fa{r['fa']}")
                 + (f" {r['threads']} threads" if r["where"] != "gpu" else ""))
        groups.setdefault(label, []).append(r)
    old = {(r["shape"], r["type"], r["where"], r["test"], r["fa"], r["threads"]): r
           for r in (before or {}).get("rows", [])}
    for label, rs in groups.items():
        errs = [abs(_err(r)) for r in rs]
        olds = [abs(_err(o)) for r in rs if (o := old.get((r["shape"], r["type"], r["where"], r["test"], r["fa"],
                                                             r["threads"]))) is not None]
        was = f"{statistics.median(olds):.0f} % / {max(olds):.0f} %" if olds else "-"
        lines.append(f"| {label} ({len(rs)}) | {statistics.median(errs):.0f} % / {max(errs):.0f} % | {was} |")
    lines += ["", "## Held out: mixed quants, whole and partly on the CPU", "",
              "Priced before they ran (`predict-validation`, "
              "[quant_speed/validation.json](quant_speed/validation.json)); "
              f"llama-bench `{VALIDATION_FLAGS}`, two interleaved rounds on the same H200 "
              "([quant_speed/validation.jsonl](quant_speed/validation.jsonl)). Models: speed_models.MIXES (`q4_k_m`: "
              "Q4_K with Q6_K ffn_down/attn_v/head; `iq2_xxs_moe`: IQ2_XXS experts, Q4_K elsewhere).", "",
              "| model | flags | test | measured | predicted | before |", "|---|---|---|---:|---:|---:|"]
    for v in validation_rows():
        lines.append(f"| {v['model']} | `{v['flags']}` | {v['test']} | {v['measured']:g} | {v['predicted']:g} "
                     f"({_err(v):+.0f} %) | {v['before']:g} ({_err({**v, 'predicted': v['before']}):+.0f} %) |")
    lines += ["", "(CPU records of MXFP4 left out: see below. Only the 16-thread CPU records and the 8B GPU "
              "records were fitted; the 1B shape checks the split between layers and weights, moe15 the CPU "
              "shares on routed experts.)"]
    return "\n".join(lines + ik + [""] + NOTES) + "\n"


#: what the runs showed, below the tables of quant_speed.md
NOTES = [
    "## What the runs showed",
    "",
    "(Every record is priced as a user's imported llama-bench output: `omni_place.bench.llamabench`.)",
    "",
    "- **On an HBM GPU decode is kernel-bound, not memory-bound.** The 8B model decodes at 194-377 tok/s "
    "in every quant type whatever its size (1.8-8.3 GB), while F16 (15 GB) reads at 0.93 of the "
    "bandwidth: Q4_1 (5.0 GB) beats Q4_0 (4.5 GB), IQ1_S beats Q2_K, Q3_K and Q6_K are the slowest. "
    "The old H200 row (0.47 of the bandwidth, 55 us per layer) was Q4_K's kernel rate in disguise and "
    "priced an 8B Q4_0 21 % slow, and every GDDR card, whose compute per byte is 4-6x the H200's, "
    "30-50 % slow. Kernel work is priced at each GPU's MMQ rate (`fp16_tflops` x `mmq_share`), so "
    "the same type is memory-bound on a 4090 and kernel-bound on an H200.",
    "- **On the CPU, i-quants are compute-bound.** At 16 threads IQ1-IQ3 types read at 0.25-0.46 of "
    "Q4_K's rate, K-quants and legacy types at 0.85-1.28 (F16/BF16 fastest per byte). An IQ2_XXS "
    "DeepSeek with its experts in RAM decodes at a third of what its bytes suggest.",
    "- MXFP4 on the CPU measured 1.6 tok/s (Q4_0: 14.5): the holes' zero E8M0 scales are denormal "
    "in F32 and every FMA takes a microcode assist. A property of the synthetic weights, not of the "
    "type: its row takes IQ4_NL's rate (same 16-entry lookup kernel).",
    "- Prompt (MMQ) per FLOP: Q2_K 1.6x Q4_K's time, Q6_K 1.18x, IQ2_S/XS 1.16x; F16/BF16 go to "
    "cuBLAS at 0.37-0.43x. Without flash attention the prompt ran a median 16 % slower at depth 0 (priced "
    "since session 30 by omni_place/attention.py: benchmarks/results/attention_depth.md).",
    "- Held out, IQ2_XXS experts in RAM beside Q4_K attention decoded at 47 tok/s (`-ot exps=CPU`, two "
    "rounds 42-56) where the same experts beside IQ2_XXS attention had decoded at 64-68 in the sweep "
    "(priced 71-72 both): not explained by the model (the GPU side differs by 0.4 ms a token at most); "
    "the price is 41-51 % fast there, 129-162 % before the shares.",
    "- **Limits.** One machine: the GPU rows are Hopper's and scale to other GPUs through their MMQ rate; "
    "the CPU shares are this Xeon's at 16 threads (llama-cpp-python's libllama on a 2-vCPU EPYC here, "
    "llama1b at 2 threads: IQ2_XXS 0.23, Q6_K 0.97, F16 1.10 of Q4_K's rate). Records run with fewer "
    "threads than the CPU figure was measured with read slower, one thread's rate in series with the "
    "memory's (`devices.CPU_THREAD_GBS`, 10 GB/s a thread, set on an H100 host's 1-16-thread sweep: "
    "these 4- and 8-thread rows are held out from it; a power law fitted on them first, (threads / "
    "those) ^ 0.7, priced them within 6 / 13 % but 1-2 threads there +30..+47 %; with neither they "
    "were +142 % and +37 %); `plan` prices the cluster's `threads`, `check` the command's `-t`. The 1B "
    "model's prompt is priced 60-170 % fast (its matmuls do not fill 132 SMs).",
]


def _models(a: argparse.Namespace) -> int:
    from benchmarks.speed_models import write_speed_model

    for shape in a.shapes:
        for t in a.types:
            print(write_speed_model(shape, Path(a.dir), weight_type=t), flush=True)
    return 0


def _run(a: argparse.Namespace) -> int:
    out = Path(a.out) / f"round{a.round}"
    out.mkdir(parents=True, exist_ok=True)
    types = list(reversed(a.types)) if a.reverse else list(a.types)
    for t in types:
        for where, shape, args in IK_TESTS if a.ik else TESTS:
            if where not in a.where:
                continue
            done = out / f"{shape}.{t}.{where}.jsonl"
            if done.exists():
                continue
            model = Path(a.dir) / f"{shape}.{t}.gguf"
            # ik's llama-bench writes a JSON array (it has no jsonl): kept as one record a line
            cmd = [a.bin, "-m", str(model), "-t", str(a.threads), "-o", "json" if a.ik else "jsonl", *args]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            if r.returncode:
                (out / f"{shape}.{t}.{where}.err").write_text(r.stderr[-4000:])
                print(f"{t} {shape} {where}: exit {r.returncode}", flush=True)
                continue
            records = (json.loads(r.stdout) if a.ik else
                       [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")])
            done.write_text("".join(json.dumps(rec) + "\n" for rec in records))
            tps = [round(rec["avg_ts"], 1) for rec in records]
            print(f"{t} {shape} {where}: {tps}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quant_speed", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="write the per-type speed models into DIR")
    m.add_argument("dir")
    m.add_argument("--types", nargs="+", default=list(TYPES))
    m.add_argument("--shapes", nargs="+", default=list(SHAPES))
    r = sub.add_parser("run", help="run llama-bench over the models of DIR")
    r.add_argument("dir")
    r.add_argument("--bin", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--round", type=int, default=1)
    r.add_argument("--reverse", action="store_true")
    r.add_argument("--threads", type=int, default=16)
    r.add_argument("--timeout", type=int, default=300)
    r.add_argument("--types", nargs="+", default=list(TYPES))
    r.add_argument("--where", nargs="+", default=["gpu", "cpu"], choices=["gpu", "cpu"])
    r.add_argument("--ik", action="store_true", help="ik_llama.cpp's llama-bench: its tests (IK_TESTS)")
    v = sub.add_parser("predict-validation", help="price the VALIDATION placements (-> quant_speed/validation.json)")
    v.add_argument("--engine", default="llama.cpp", choices=["llama.cpp", "ik_llama.cpp"])
    v.set_defaults(cmd="predict_validation")
    w = sub.add_parser("report", help="derive the rows and price every record (-> results/quant_speed.{md,json})")
    w.add_argument("--write", action="store_true", help="rewrite omni_place/data/weight_types.toml")
    a = ap.parse_args(argv)
    return {"models": _models, "run": _run, "report": _report, "predict_validation": _predict}[a.cmd](a)


def _predict(a: argparse.Namespace) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rows = predict_validation(Path(tmp), a.engine)
    target = VALIDATION_FILE if a.engine == "llama.cpp" else VALIDATION_IK_FILE
    target.write_text(json.dumps({"predicted_with": "the planner of this commit, before the runs",
                                  "rows": rows}, indent=1) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


def _report(a: argparse.Namespace) -> int:
    import tempfile

    records = [json.loads(line) for line in RECORDS.read_text().splitlines()]
    out = RESULTS / "quant_speed.json"
    before = json.loads(out.read_text()).get("before") if out.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        derived = derive(records, Path(tmp))
        if a.write:
            TABLE.write_text(table_text(derived["types"]))
        result = report(records, Path(tmp))
        ik = ik_markdown(derived, Path(tmp))
    out.write_text(json.dumps({"derived": derived, **result, "before": before}, indent=1) + "\n")
    (RESULTS / "quant_speed.md").write_text(markdown(derived, result, before, ik))
    print((RESULTS / "quant_speed.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
