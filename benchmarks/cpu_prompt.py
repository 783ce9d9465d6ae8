"""The CPU's prompt (matrix-matrix) rate per weight type, dense (MUL_MAT) and routed experts (MUL_MAT_ID).

llama.cpp's CPU backend runs a prompt's matmuls with a different kernel per type and op
(ggml/src/ggml-cpu): Q4_0, Q4_K and IQ4_NL weights are repacked into interleaved blocks with
their own GEMM for both ops (repack.cpp:4974-5120, supports_op 5190-5225); dense F16, BF16,
Q8_0, Q4_0, Q5_0 and IQ4_NL matmuls go to llamafile's tinyBLAS on AVX/AVX2/AVX-512
(llamafile/sgemm.cpp:3805-4140, called at ggml-cpu.c:1311 and 1393, MUL_MAT only); everything
else is one ``vec_dot`` per row and column (ggml-cpu.c:1165 ggml_compute_forward_mul_mat_one_chunk,
1483 the _id one for experts). So a FLOP costs each type its own time, and an expert's is not
what the same type's dense matmul costs.

Two small models per type, written by ``speed_models.write_speed_model`` (zero weights: a
kernel's speed does not depend on their values; random embeddings and a unit-scale router, so a
512-token ubatch gives each of 128 experts ~32 tokens as in moe15):
- ``cpu_dense.<type>``: 4 llama layers, every matrix of the type (attention is 2 % of the FLOPs);
- ``cpu_moe.x<type>``: 4 qwen3moe layers, the routed experts of the type, Q4_K elsewhere (the
  dense part, 10 % of the FLOPs, is taken out at cpu_dense.q4_k's rate).

``run`` times 512-token prompts through libllama (llama-cpp-python, CPU only, flash attention
on, as llama-bench ``-fa 1 -ngl 0``), configurations interleaved over rounds; ``run-bench`` the
same through a llama-bench binary, mainline's or ik_llama.cpp's (ik runs every type with its
own GEMMs, ggml/src/iqk). ``report`` gives each type's time per FLOP relative to Q4_K's per CPU
and build (libllama's wheel and a native llama-bench run different kernels on one CPU), ik's
relative to mainline's Q4_K on the same CPU and build, and, with ``--bench``, mainline's from
llama-bench records of ``moe15.x<type>`` at ``-ngl 99 -ot exps=CPU -nopo 1`` (another CPU; the
GPU's share of those runs, as the planner prices it, taken out). ``--write`` puts the factors into
``omni_place/data/weight_types.toml`` (``cpu_prompt``, ``cpu_expert_prompt``, ``ik_cpu_prompt``,
``ik_cpu_expert_prompt``). ``models --held-out`` writes two other shapes (:data:`HELD_OUT`) for
checking that the factors carry over.

    python -m benchmarks.cpu_prompt models /tmp/cpm [--types ...]
    python -m benchmarks.cpu_prompt run /tmp/cpm -o benchmarks/results/cpu_prompt/libllama_epyc2.jsonl --threads 2
    python -m benchmarks.cpu_prompt run-bench IK/llama-bench /tmp/cpm -o .../bench_ik_epyc2.jsonl --threads 2
    python -m benchmarks.cpu_prompt report benchmarks/results/cpu_prompt/{libllama,bench}_*.jsonl \\
        --bench benchmarks/results/cpu_prompt/h200_moe15.jsonl [--write]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from benchmarks.quant_speed import IK_TYPES, RESULTS

#: the mainline types of data/weight_types.toml that a CPU computes prompts in
TYPES = ("f16", "bf16", "q8_0", "q6_k", "q5_k", "q5_0", "q5_1", "q4_k", "q4_0", "q4_1", "iq4_xs", "iq4_nl",
         "q3_k", "iq3_s", "iq3_xxs", "q2_k", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s")
SHAPES: dict[str, dict[str, Any]] = {
    "cpu_dense": dict(arch="llama", n_layer=4, n_embd=1024, n_head=8, n_head_kv=2, head_dim=64, n_ff=4096,
                      n_vocab=32000),
    "cpu_moe": dict(arch="qwen3moe", n_layer=4, n_embd=1024, n_head=8, n_head_kv=2, head_dim=64, n_ff=4096,
                    n_expert=128, n_expert_used=8, n_ff_exp=512, n_vocab=32000),
}
#: other shapes, kept out of the factors: whether they carry over (``models --held-out``)
HELD_OUT: dict[str, dict[str, Any]] = {
    "cpu_wide": dict(arch="llama", n_layer=2, n_embd=2048, n_head=16, n_head_kv=4, head_dim=128, n_ff=5632,
                     n_vocab=32000),
    "cpu_moe64": dict(arch="qwen3moe", n_layer=2, n_embd=2048, n_head=16, n_head_kv=4, head_dim=128, n_ff=5632,
                      n_expert=64, n_expert_used=8, n_ff_exp=768, n_vocab=32000),
}
N_PROMPT = 512


def weight_type_of(shape: str, t: str) -> str:
    """The speed-model weight type of ``shape`` for ggml type ``t``: every matrix, or the experts."""
    return f"x{t}" if "n_expert" in {**SHAPES, **HELD_OUT}[shape] else t


def write_models(folder: Path, types: tuple[str, ...] = TYPES, shapes: dict[str, dict[str, Any]] = SHAPES,
                 ) -> list[Path]:
    from benchmarks.speed_models import write_speed_model

    return [write_speed_model(shape, folder, weight_type=weight_type_of(shape, t), shape=dims)
            for t in types for shape, dims in shapes.items()]


@functools.cache
def _scratch() -> tempfile.TemporaryDirectory[str]:
    """A folder for the headers and the cluster file that pricing writes (removed at exit)."""
    return tempfile.TemporaryDirectory(prefix="omni_place_cpu_prompt_")


@functools.cache
def _header(name: str, weight_type: str) -> Any:
    """The loaded header of speed model ``name`` (``SHAPES`` here, else speed_models') in ``weight_type``."""
    from omni_place.model import load_model

    from benchmarks.speed_models import write_speed_model

    return load_model(write_speed_model(name, Path(_scratch().name), header_only=True, weight_type=weight_type,
                                        shape={**SHAPES, **HELD_OUT}.get(name)))


def cpu_cluster(folder: Path, cpu_gbs: float, threads: int, simd: str | None = None) -> Path:
    """The cluster file of a CPU alone (``cpu_gbs`` GB/s, ``threads``, its build's ``simd`` where
    known) in ``folder``, written once: what the CPU benchmarks' records are priced on."""
    path = folder / f"cpu{threads}_{cpu_gbs}{'_' + simd if simd else ''}.toml"
    if not path.exists():
        path.write_text(f'name = "cpu"\n[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 16\n'
                        f'bandwidth_gbs = {cpu_gbs}\nthreads = {threads}\n' + (f'simd = "{simd}"\n' if simd else ""))
    return path


def time_prompt(path: Path, threads: int, reps: int) -> list[float]:
    """Seconds of ``reps`` 512-token prompts of the model at ``path`` after one warm-up, CPU only."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_gpu_layers=0, n_ctx=N_PROMPT + 16, n_batch=N_PROMPT, n_ubatch=N_PROMPT,
                n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False)
    rng = random.Random(0)
    tokens = [rng.randrange(1, llm.n_vocab()) for _ in range(N_PROMPT)]
    samples = []
    for i in range(reps + 1):
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        if i:
            samples.append(time.perf_counter() - start)
    llm.close()
    return samples


def _models_in_rounds(folder: Path, output: Path, rounds: int) -> Iterator[tuple[int, Path, str, str]]:
    """(round, model path, shape, ggml type) of every cpu_* model in ``folder``, ``rounds`` times,
    every other round in reverse; rounds numbered on from ``output``'s last."""
    paths = sorted(p for p in folder.glob("cpu_*.gguf") if not p.name.endswith(".hdr.gguf"))
    if not paths:
        raise SystemExit(f"no cpu_dense.* / cpu_moe.* models in {folder}; write them with `models`")
    first = 1 + max((r["round"] for r in load([output])), default=-1) if output.exists() else 0
    for r in range(first, first + rounds):
        for p in paths if r % 2 == 0 else reversed(paths):
            shape, wtype = p.name.split(".")[:2]
            yield r, p, shape, wtype.removeprefix("x") if "moe" in shape else wtype


def run(folder: Path, output: Path, threads: int, rounds: int, reps: int) -> None:
    """Time every model in ``folder``, rounds interleaved (every other one in reverse), appending
    one JSON record per model and round to ``output`` (rounds numbered on from its last)."""
    import llama_cpp

    machine = cpu_name()
    with output.open("a") as fh:
        for r, p, shape, wtype in _models_in_rounds(folder, output, rounds):
            rec = {"machine": machine, "threads": threads, "shape": shape, "type": wtype, "n_prompt": N_PROMPT,
                   "round": r, "samples_s": time_prompt(p, threads, reps), "llama_cpp_python": llama_cpp.__version__,
                   "system_info": llama_cpp.llama_print_system_info().decode().strip()}
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            print(f"{p.name} r{r}: {N_PROMPT / statistics.median(rec['samples_s']):.1f} tok/s", flush=True)


def run_bench(binary: Path, folder: Path, output: Path, threads: int, rounds: int, reps: int, n_gen: int = 0) -> None:
    """:func:`run` with a llama-bench binary (mainline's or ik_llama.cpp's: ``-p 512 -n 0 -ngl 0 -fa 1``;
    ``n_gen``: a decode test, ``-p 0 -n N``, its samples seconds a token), one invocation per model
    and round; each record keeps llama-bench's own and its warm samples (records.warm_samples: ik's
    first prompt repetition runs cold)."""
    import subprocess

    from omni_place.bench.records import warm_samples
    from omni_place.engines import engine_of_bench_record

    machine = cpu_name()
    test = ["-p", "0", "-n", str(n_gen)] if n_gen else ["-p", str(N_PROMPT), "-n", "0"]
    tokens = 1 if n_gen else N_PROMPT
    with output.open("a") as fh:
        for r, p, shape, wtype in _models_in_rounds(folder, output, rounds):
            out = subprocess.run([str(binary), "-m", str(p), *test, "-ngl", "0", "-fa", "1", "-t", str(threads),
                                  "-r", str(reps), "-o", "json"],  # ik's: no jsonl
                                 capture_output=True, text=True, check=True).stdout
            bench, = json.loads(out)
            engine = engine_of_bench_record(bench) or "llama.cpp"
            rec = {"machine": machine, "threads": threads, "shape": shape, "engine": engine, "type": wtype,
                   "round": r, **({"n_gen": n_gen} if n_gen else {"n_prompt": N_PROMPT}),
                   "samples_s": [tokens / ts for ts in warm_samples(bench, engine, not n_gen)], "bench": bench}
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            print(f"{engine} {p.name} r{r}: {tokens / statistics.median(rec['samples_s']):.1f} tok/s", flush=True)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flops(shape: str, t: str) -> tuple[float, float]:
    """(dense, routed-expert) matmul FLOPs per prompt token of a model (header only)."""
    from omni_place.model import Role

    model = _header(shape, weight_type_of(shape, t))
    hp = model.hparams
    dense = sum(x.info.n_elements for x in model.tensors if x.layer is not None and x.role is not Role.ROUTED_EXPERT)
    experts = sum(x.info.n_elements for x in model.tensors if x.role is Role.ROUTED_EXPERT)
    return 2.0 * dense, 2.0 * experts * (hp.n_expert_used / hp.n_expert if hp.n_expert else 0.0)


def local_factors(records: list[dict[str, Any]], base: list[dict[str, Any]] | None = None,
                  ) -> dict[str, dict[str, float]]:
    """Per machine: {"dense"|"expert" + ":" + type: seconds per FLOP relative to Q4_K's}, each
    record's engine against its own Q4_K (the dense part of a cpu_moe model at its engine's dense
    Q4_K rate). ``base``: records of mainline's on the same machines, and every factor is
    relative to *its* Q4_K instead (ik_llama.cpp's kernels on mainline's scale)."""
    out: dict[str, dict[str, float]] = {}
    med, ref = _medians(records), _medians(base if base is not None else records)
    for machine in sorted({m for m, _, _ in med}):
        if not {(machine, "cpu_dense", "q4_k"), (machine, "cpu_moe", "q4_k")} <= med.keys() & ref.keys():
            continue
        moe_d, _ = _flops("cpu_moe", "q4_k")
        flops = sum(_flops("cpu_dense", "q4_k"))  # dense Q4_K's seconds per FLOP, attention in: own, mainline's
        own, mainline = med[machine, "cpu_dense", "q4_k"] / flops, ref[machine, "cpu_dense", "q4_k"] / flops
        expert_q4k = ref[machine, "cpu_moe", "q4_k"] - moe_d * mainline
        rows: dict[str, float] = {}
        for (m, s, t), sec in sorted(med.items()):
            if m == machine:
                rows[f"dense:{t}" if s == "cpu_dense" else f"expert:{t}"] = (
                    sec / ref[machine, "cpu_dense", "q4_k"] if s == "cpu_dense" else (sec - moe_d * own) / expert_q4k)
        out[machine] = rows
    return out


def _medians(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], float]:
    """(machine, shape, type) -> median seconds of a prompt token."""
    by: dict[tuple[str, str, str], list[float]] = {}
    for r in records:
        if r["shape"] in SHAPES and not r.get("n_gen"):  # prompt tests
            by.setdefault((cpu_label(r), r["shape"], r["type"]), []).extend(r["samples_s"])
    return {k: statistics.median(v) / N_PROMPT for k, v in by.items()}


def cpu_label(record: dict[str, Any]) -> str:
    """The CPU and the build that ran a record, with the build's SIMD: libllama's wheel (built for
    AVX2 here, ``GGML_NATIVE=off``) and a llama-bench built for AVX-512 run different kernels on
    one CPU."""
    return f"{record['machine']} {'llama-bench' if 'bench' in record else 'libllama'} ({record_simd(record)})"


def record_simd(record: dict[str, Any]) -> str:
    """The SIMD (kernels.CPU_SIMD, upper case) of the build that ran a record: libllama's from its
    system_info line; llama-bench's AVX512 (every llama-bench record here: native or AVX-512 builds
    on CPUs with AVX-512)."""
    if "bench" in record:
        return record.get("simd", "avx512").upper()
    return "AVX512" if "AVX512 = 1" in record.get("system_info", "") else "AVX2"


def label_simd(label: str) -> str:
    """The SIMD (kernels.CPU_SIMD) of a factor table's label (:func:`cpu_label`)."""
    return label.rsplit("(", 1)[1].rstrip(")").lower()


def by_engine(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records by engine (libllama's, without one: mainline's)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.get("engine", "llama.cpp"), []).append(r)
    return out


def bench_factors(records: list[dict[str, Any]]) -> dict[str, float]:
    """{"expert:" + type: relative time per FLOP} from llama-bench records of moe15.x<type> with
    its experts in RAM and op offload off: the CPU's share of each run's time per prompt token
    (the planner's GPU and transfer share of the same placement taken out), against Q4_K's."""
    from omni_place.bench.records import steady_tps
    from omni_place.devices import resolve_cluster

    from benchmarks.quant_speed import CLUSTER

    cpu_s: dict[str, list[float]] = {}
    path = Path(_scratch().name) / "cluster.toml"
    path.write_text(CLUSTER)
    cluster = resolve_cluster(str(path))
    for r in records:
        if not r.get("n_prompt") or not r.get("no_op_offload"):
            continue
        t = Path(r["model_filename"]).name.split(".")[1][1:]
        tps = steady_tps(r, "llama.cpp", True) or r["avg_ts"]
        others = _gpu_share(r, t, cluster)
        cpu_s.setdefault(t, []).append(1 / tps - others)
    if "q4_k" not in cpu_s:
        return {}
    base = statistics.median(cpu_s["q4_k"])
    return {f"expert:{t}": statistics.median(v) / base for t, v in sorted(cpu_s.items())}


def _gpu_share(record: dict[str, Any], t: str, cluster: Any) -> float:
    """Seconds per prompt token the planner gives a record's placement outside the CPU."""
    from omni_place.bench.llamabench import import_text
    from omni_place.cost import CostModel

    model = _header("moe15", f"x{t}")
    point = import_text(json.dumps(record), model, cluster).points[0]
    assert point.context is not None
    pred = CostModel(model, cluster, point.context).predict(point.placement)
    return sum(v for k, v in pred.pp_breakdown.items() if k != "CPU")


def derive(records: list[dict[str, Any]], bench: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The table's columns per type (upper case) from :func:`factor_tables` of the records."""
    return _columns_of(*factor_tables(records, bench), records)


def factor_tables(records: list[dict[str, Any]], bench: list[dict[str, Any]],
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(mainline's, ik_llama.cpp's) factor tables by the CPU and build that ran them: mainline's from
    its libllama and llama-bench records and ``bench`` (llama-bench records of moe15,
    :func:`bench_factors`); ik's from its records against mainline's on the same CPU and build
    kind and from its runs on an H200 host (:func:`ik_host_factors`)."""
    mainline, ik = local_factors(by_engine(records).get("llama.cpp", [])), ik_factors(records)
    h200, host = bench_factors(bench), ik_host_factors()
    if h200:
        mainline[f"llama-bench: {bench[0].get('cpu_info', '?')} (AVX512)"] = h200  # an H200 host's native build
    if host:
        ik["llama-bench: moe33 on an H200 host's Xeon (engine_compare)"] = host
    return mainline, ik


def _columns_of(mainline: dict[str, dict[str, float]], ik: dict[str, dict[str, float]],
                records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """:func:`columns` of both engines' tables, and ik's decode shares where mainline's compute
    binds (:func:`ik_decode_shares`)."""
    from omni_place.kernels import CPU_SIMD

    out = columns(list(mainline.values()))
    per_simd = [columns([tab for label, tab in mainline.items() if label_simd(label) == simd], f"{simd}_")
                for simd in CPU_SIMD]
    for t, row in [item for table in (*per_simd, columns(list(ik.values()), "ik_", (*TYPES, *IK_TYPES)))
                   for item in table.items()]:
        out.setdefault(t, {}).update(row)
    for t, share in ik_decode_shares(records).items():
        out.setdefault(t, {})["ik_cpu_decode_share"] = share
    return out


#: both engines' llama-bench runs on H200 hosts (ik's of moe33: Q4_K experts, 256 of 8 used, on a
#: 32-vCPU Xeon), and that VM's CPU figure idle: `devices --measure` on an idle H200 VM of the same
#: lender (benchmarks/results/ik_24.md; 85.7-93.9 GB/s on three)
ENGINE_COMPARE = RESULTS / "engine_compare"
ENGINE_COMPARE_CPU_GBS = 89.8


def ik_host_factors() -> dict[str, float]:
    """{"expert:q4_k": ik's time per FLOP relative to mainline's Q4_K experts} on the Xeon of
    ENGINE_COMPARE: ik offloads no MUL_MAT_ID of 256 experts at ubatch 512 (512 x 8 < 32 x 256), so
    its CPU computes every expert it holds. Each run's CPU time (its prompt time less what the
    planner gives the GPUs and transfers) against the CPU time the planner gives it, on the scale
    of the default ``cpu_tflops_per_core`` and ``cpu_moe_compute_eff`` (that Xeon's mainline rates);
    the median over the runs."""
    from omni_place.kernels import weight_type_speed

    from benchmarks.speed_truth import main as speed_truth

    out = Path(_scratch().name) / "engine_compare.json"
    folder = str(ENGINE_COMPARE)
    if not out.exists():
        with contextlib.redirect_stdout(io.StringIO()):  # its table; the rows are in the JSON
            speed_truth(["report", folder, "--headers", folder, "--rigs", folder, "--cpu-gbs",
                         str(ENGINE_COMPARE_CPU_GBS), "--only-model", "moe33", "--json", str(out)])
    shipped = weight_type_speed("Q4_K").cpu_prompt_time(True, True)
    ratios = []
    for row in json.loads(out.read_text()):
        if row["engine"] == "ik_llama.cpp":
            cpu = row["pp_ms_per_1k"].get("CPU", 0.0) / 1e6
            others = sum(v for k, v in row["pp_ms_per_1k"].items() if k != "CPU") / 1e6
            if cpu > 0:
                ratios.append((1 / row["pp"] - others) / cpu)
    return {"expert:q4_k": shipped * statistics.median(ratios)} if ratios else {}


#: mainline's decode is bound by its kernel's compute, not the memory, below this cpu_decode_share
COMPUTE_BOUND_SHARE = 0.5


def ik_decode_shares(records: list[dict[str, Any]]) -> dict[str, float]:
    """``ik_cpu_decode_share`` per type (upper case) from decode tests (``run-bench --decode``) of
    both engines on ``cpu_dense``: where mainline's decode is bound by its compute (its
    ``cpu_decode_share`` below COMPUTE_BOUND_SHARE, the i-quants), ik's kernel reads at that share
    times its speed against mainline's (both compute-bound there; elsewhere the memory binds both)."""
    from omni_place.kernels import weight_type_speed

    by: dict[tuple[str, str], list[float]] = {}
    for r in records:
        if r.get("n_gen") and r["shape"] == "cpu_dense":
            by.setdefault((r.get("engine", "llama.cpp"), r["type"]), []).extend(r["samples_s"])
    out = {}
    for (engine, t), ik in sorted(by.items()):
        mainline = by.get(("llama.cpp", t))
        share = weight_type_speed(t).cpu_decode_share
        if engine == "ik_llama.cpp" and mainline and share < COMPUTE_BOUND_SHARE:
            out[t.upper()] = round(share * statistics.median(mainline) / statistics.median(ik), 2)
    return out


def ik_factors(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """:func:`local_factors` of ik_llama.cpp's records against mainline's among ``records``."""
    engines = by_engine(records)
    if not {"ik_llama.cpp", "llama.cpp"} <= engines.keys():
        return {}
    return local_factors(engines["ik_llama.cpp"], engines["llama.cpp"])


def columns(tables: list[dict[str, float]], prefix: str = "",
            types: tuple[str, ...] = TYPES) -> dict[str, dict[str, float]]:
    """``cpu_prompt`` and ``cpu_expert_prompt`` (after ``prefix``) per type (upper case), each the
    geometric mean of the type's factor over ``tables`` (one per CPU) that have it."""
    out: dict[str, dict[str, float]] = {}
    for t in types:
        for column, key in (("cpu_prompt", f"dense:{t}"), ("cpu_expert_prompt", f"expert:{t}")):
            values = [tab[key] for tab in tables if key in tab]
            if values:
                out.setdefault(t.upper(), {})[prefix + column] = round(statistics.geometric_mean(values), 2)
    return out


def load(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]


def _print_table(tables: dict[str, dict[str, float]], derived: dict[str, dict[str, float]],
                 prefixes: tuple[str, ...], types: tuple[str, ...]) -> None:
    """A markdown table: each factor table's dense and expert columns it has, then the derived ones
    (those of each of ``prefixes``)."""
    cols = [(f"{name}: {label}", kind, tab) for label, tab in tables.items()
            for kind, name in (("dense", "dense"), ("expert", "experts")) if any(k.startswith(kind) for k in tab)]
    names = tuple(prefix + c for prefix in prefixes for c in ("cpu_prompt", "cpu_expert_prompt"))
    print("| type | " + " | ".join(h for h, _, _ in cols) + " | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * (len(cols) + len(names)))
    for t in types:
        cells = [f"{tab[key]:.2f}" if (key := f"{kind}:{t}") in tab else "" for _, kind, tab in cols]
        row = derived.get(t.upper(), {})
        cells += [f"{row[c]:g}" if c in row else "" for c in names]
        if any(cells):
            print(f"| {t.upper()} | " + " | ".join(cells) + " |")


def report(records: list[Path], bench: list[Path], write: bool) -> int:
    rows = load(records)
    mainline, ik = factor_tables(rows, load(bench))
    derived = _columns_of(mainline, ik, rows)
    from omni_place.kernels import CPU_SIMD

    _print_table(mainline, derived, ("", *(f"{simd}_" for simd in CPU_SIMD)), TYPES)
    if ik:  # ik's on mainline's Q4_K scale, beside mainline's own by the same build kind
        print()
        _print_table(ik, derived, ("ik_",), (*TYPES, *IK_TYPES))
    if write:
        write_table(derived)
    return 0


def write_table(derived: dict[str, dict[str, float]]) -> None:
    """Set the CPU prompt columns of data/weight_types.toml's rows from ``derive`` (types not
    measured keep theirs), through quant_speed's writer."""
    from omni_place.kernels import weight_type_speeds

    from benchmarks.quant_speed import TABLE, is_default, table_text

    types = {name: {"gpu_decode_flops": row.gpu_decode_flops, "gpu_prompt": row.gpu_prompt,
                    "cpu_decode_share": row.cpu_decode_share,
                    **{k: v for k, v in derived.get(name, {}).items() if not is_default(k, v)}}
             for name, row in weight_type_speeds().items()}
    TABLE.write_text(table_text(types))
    print(f"wrote {TABLE}")


def add_run_options(parser: argparse.ArgumentParser, binary: bool = False) -> None:
    """A run's arguments: [a llama-bench binary], the models' folder, the records' file, threads,
    interleaved rounds and repetitions."""
    if binary:
        parser.add_argument("binary", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpu_prompt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="write cpu_dense.<type> and cpu_moe.x<type>")
    m.add_argument("folder", type=Path)
    m.add_argument("--types", default=",".join(TYPES))
    m.add_argument("--held-out", action="store_true", help="the HELD_OUT shapes instead")
    add_run_options(sub.add_parser("run", help="time 512-token prompts of every model in FOLDER through libllama"))
    b = sub.add_parser("run-bench", help="the same with a llama-bench binary (mainline's or ik_llama.cpp's)")
    add_run_options(b, binary=True)
    b.add_argument("--decode", type=int, default=0, metavar="N", help="a decode test of N tokens instead")
    q = sub.add_parser("report", help="each type's time per FLOP relative to Q4_K")
    q.add_argument("records", nargs="*", type=Path)
    q.add_argument("--bench", nargs="*", type=Path, default=[], help="llama-bench records of moe15.x<type>")
    q.add_argument("--write", action="store_true", help="write the factors into data/weight_types.toml")
    a = ap.parse_args(argv)
    if a.cmd == "models":
        for p in write_models(a.folder, tuple(a.types.split(",")), HELD_OUT if a.held_out else SHAPES):
            print(p)
        return 0
    if a.cmd == "run":
        run(a.folder, a.output, a.threads, a.rounds, a.reps)
        return 0
    if a.cmd == "run-bench":
        run_bench(a.binary, a.folder, a.output, a.threads, a.rounds, a.reps, a.decode)
        return 0
    return report(a.records, a.bench, a.write)


if __name__ == "__main__":
    sys.exit(main())
