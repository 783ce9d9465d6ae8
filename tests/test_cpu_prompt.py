"""The CPU's prompt matmul rates against llama-bench runs with op offload off: the cpu-compute
runs of `omni-place calibrate --run` on an H200 host, 16 threads (benchmarks/results/calibrate_31,
logs.tar.xz). One dense rate (``cpu_tflops_per_core``) prices the Q4_K layers of a dense model
on the CPU, and routed experts run at ``cpu_moe_compute_eff`` of it (MUL_MAT_ID gives each expert
a few tokens of the ubatch); before, one rate for both priced the dense run 62 % slow.

Each weight type then costs its own kernel's time (kernels.py: ``cpu_prompt``,
``cpu_expert_prompt``), measured by benchmarks/cpu_prompt.py through libllama on a 2-vCPU EPYC
and by llama-bench on the H200's Xeon (benchmarks/results/cpu_prompt/)."""
from __future__ import annotations

import json
import statistics
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from omni_place.bench.calibrate import Point, fit_params, predict_point
from omni_place.bench.llamabench import import_files, import_text
from omni_place.cost import SpeedParams
from omni_place.devices import resolve_cluster
from omni_place.model import load_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import cpu_prompt, quant_speed  # noqa: E402
from benchmarks.speed_models import write_speed_model  # noqa: E402

RES = ROOT / "benchmarks" / "results" / "calibrate_31"


def _cpu_compute(model: str, run: str, tmp_path: Path) -> list[Point]:
    """The prompt point of ``model``'s calibrate --run log ``run`` (its plain llama-bench output and
    -v log), on the machine's rig file as that run had it."""
    with tarfile.open(RES / "logs.tar.xz") as tar:
        member = tar.getmember(f"res/cal/{model}/{run}.log")
        log = tmp_path / f"{model}.{run}.log"
        fh = tar.extractfile(member)
        assert fh is not None
        log.write_bytes(fh.read())
    header = load_model(write_speed_model(model, tmp_path, header_only=True))
    imported = import_files([log], header, resolve_cluster(str(RES / "rig_a.toml")))
    assert not imported.skipped and [p.kind for p in imported.points] == ["pp"]
    assert imported.points[0].context is not None and not imported.points[0].context.op_offload
    return imported.points


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Point]]:
    tmp = tmp_path_factory.mktemp("cpu_prompt")
    return {"dense": _cpu_compute("dense11", "3.cpu-compute", tmp),
            "experts": _cpu_compute("moe15", "4.cpu-compute", tmp)}


def test_dense_layers_and_experts_are_priced_at_their_rates(runs: dict[str, list[Point]]) -> None:
    """dense11 -ngl 16 -nopo 1 (183.6 tok/s) and moe15 with every expert in RAM -nopo 1 (462.8):
    both within 10 % with the defaults; one rate for both (the old 0.05 per core) is 2.6x off
    on one of them whichever it is fitted to."""
    for kind, points in runs.items():
        for pt in points:
            assert predict_point(pt, SpeedParams()) == pytest.approx(pt.measured, rel=0.10), kind
    one_rate = SpeedParams(cpu_moe_compute_eff=1.0, cpu_tflops_per_core=0.05)
    dense, = runs["dense"]
    assert predict_point(dense, one_rate) < 0.45 * dense.measured


def test_either_run_calibrates_the_same_cpu_rate(runs: dict[str, list[Point]]) -> None:
    """Fitted alone (no prior), the dense run and the experts' run give the same dense rate
    within 10 %: the experts' share of it is a property of MUL_MAT_ID, not of the machine."""
    rates = {kind: fit_params(points, names=("cpu_tflops_per_core",), prior_weight=0.0).cpu_tflops_per_core
             for kind, points in runs.items()}
    assert rates["dense"] == pytest.approx(rates["experts"], rel=0.10)
    assert 0.08 < rates["dense"] < 0.2


@pytest.fixture(scope="module")
def expert_types(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Point]]:
    """llama-bench's records of moe15 with its routed experts in Q4_K, Q5_0, Q8_0 and IQ2_XXS
    (Q4_K elsewhere) held by the CPU (-ngl 99 -ot exps=CPU -nopo 1,0 -t 16), imported as a
    user's output on the H200 machine; by type."""
    tmp = tmp_path_factory.mktemp("expert_types")
    (tmp / "cluster.toml").write_text(quant_speed.CLUSTER)
    cluster = resolve_cluster(str(tmp / "cluster.toml"))
    out: dict[str, list[Point]] = {}
    for rec in cpu_prompt.load([RES.parent / "cpu_prompt" / "h200_moe15.jsonl"]):
        wtype = Path(rec["model_filename"]).name.split(".")[1]
        model = load_model(write_speed_model("moe15", tmp, header_only=True, weight_type=wtype))
        out.setdefault(wtype[1:], []).extend(import_text(json.dumps(rec), model, cluster).points)
    return out


def test_each_expert_type_costs_the_cpu_its_own_kernel(expert_types: dict[str, list[Point]]) -> None:
    """The CPU computed the experts' prompt at 436 (Q4_K, repacked), 432 (IQ2_XXS), 227 (Q8_0)
    and 171 tok/s (Q5_0): each within 45 % now (+9 / +42 / +27 / +32 %), where one rate for every
    type priced Q5_0 +167 % and Q8_0 +101 %. The AVX-512 columns are three tables' geometric mean,
    two of them 2-vCPU machines', whose IQ2_XXS experts ran at 0.64-0.71 of Q4_K's time where this
    16-thread Xeon's ran at 1.01, its Q5_0 at 2.56 against their 1.88-1.95: how a type's kernel
    scales with threads is not in the table. The op-offloaded runs, which the CPU's prompt kernels
    do not touch, within 12 % (-2..+11 %; the last layer's experts, streamed before, are not since
    cost.CostModel.ffn_in_prompt), decodes within 10 %. (The decodes of the op-offload-off runs are
    the same placement, run first: 68-77 tok/s for Q4_K between the two, not used.)"""
    assert sorted(expert_types) == ["iq2_xxs", "q4_k", "q5_0", "q8_0"]
    for wtype, points in expert_types.items():
        # pp512 and tg32, op offload off and on; Q4_K's op-offloaded prompt read 415 and 543 tok/s
        # in one test and is left out (records.UNSTEADY_SPREAD)
        assert len(points) == (3 if wtype == "q4_k" else 4)
        for pt in points:
            assert pt.context is not None
            bound = 0.45 if not pt.context.op_offload else 0.12 if pt.kind == "pp" else 0.10
            if pt.kind == "pp" or pt.context.op_offload:
                assert predict_point(pt, SpeedParams()) == pytest.approx(pt.measured, rel=bound), (wtype, pt.kind)


def test_shipped_columns_are_what_the_records_give() -> None:
    """weight_types.toml's CPU prompt columns are benchmarks/cpu_prompt.py's derivation of the
    committed records: mainline's 21 types dense and as experts on the EPYC by libllama (an AVX2
    build) and by a native llama-bench (AVX-512), four as experts on the Xeon; ik_llama.cpp's 37
    (its own 16 with them) by its native llama-bench beside mainline's on the same EPYC."""
    folder = RES.parent / "cpu_prompt"
    derived = cpu_prompt.derive(cpu_prompt.load([*sorted(folder.glob("libllama_*.jsonl")),
                                                 *sorted(folder.glob("bench_*.jsonl")),
                                                 *sorted(folder.glob("decode_*_epyc2.jsonl"))]),
                                cpu_prompt.load([folder / "h200_moe15.jsonl"]))
    assert len(derived) == len(cpu_prompt.TYPES) + len(cpu_prompt.IK_TYPES)
    assert (derived["Q4_K"]["cpu_prompt"], derived["Q4_K"]["cpu_expert_prompt"]) == (1.0, 1.0)
    from omni_place.kernels import CPU_KERNEL_COLUMNS, weight_type_speeds

    shipped = weight_type_speeds()
    for name, row in derived.items():
        assert set(row) <= set(CPU_KERNEL_COLUMNS) and all(getattr(shipped[name], c) == v for c, v in row.items()), name
    # the kernels differ by more than the machines do: Q5_0's vec_dot experts against Q4_K's repacked GEMM
    assert derived["Q5_0"]["cpu_expert_prompt"] > 2.0 and derived["IQ2_XXS"]["cpu_expert_prompt"] < 1.3
    # ik's own GEMMs (ggml/src/iqk) take 0.5-0.8 of mainline's Q4_K time for every quantized type
    assert all(0.45 < row[c] < 0.85 for name, row in derived.items() if name not in ("F16", "BF16")
               for c in ("ik_cpu_prompt", "ik_cpu_expert_prompt"))
    # its decode differs where mainline's kernel, not the memory, binds: the seven mainline i-quants
    # (2 threads: IQ3_XXS 285 tok/s against 222, IQ1_M 249 against 304)
    ik_decode = {name: row["ik_cpu_decode_share"] for name, row in derived.items() if "ik_cpu_decode_share" in row}
    assert sorted(ik_decode) == ["IQ1_M", "IQ1_S", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ3_S", "IQ3_XXS"]
    assert ik_decode["IQ3_XXS"] > 1.2 * shipped["IQ3_XXS"].cpu_decode_share
    assert ik_decode["IQ1_M"] < shipped["IQ1_M"].cpu_decode_share


def _heldout_errors(tmp_path: Path) -> dict[tuple[str, str, str], float]:
    """Predicted / measured - 1 of each held-out llama-bench record (two shapes the columns did not
    use, both engines, 2 threads on the EPYC), imported as a user's output; the CPU's dense rate and
    its experts' share calibrated on mainline's Q4_K run of each shape alone."""
    from scipy.optimize import brentq

    (tmp_path / "cpu.toml").write_text('name = "epyc"\n[[devices]]\nname = "CPU"\nkind = "cpu"\n'
                                       'memory_gib = 16\nbandwidth_gbs = 58.6\nthreads = 2\nsimd = "avx512"\n')
    cluster = resolve_cluster(str(tmp_path / "cpu.toml"))
    records = cpu_prompt.load([RES.parent / "cpu_prompt" / "heldout_epyc2.jsonl"])
    points = {}
    for rec in records:
        model = load_model(write_speed_model(rec["shape"], tmp_path, header_only=True, shape=cpu_prompt.HELD_OUT[
            rec["shape"]], weight_type=cpu_prompt.weight_type_of(rec["shape"], rec["type"])))
        points[rec["engine"], rec["shape"], rec["type"]], = import_text(json.dumps(rec["bench"]), model, cluster).points
    wide, moe = points["llama.cpp", "cpu_wide", "q4_k"], points["llama.cpp", "cpu_moe64", "q4_k"]
    rate = brentq(lambda x: predict_point(wide, SpeedParams(cpu_tflops_per_core=x)) - wide.measured, 0.01, 1)
    eff = brentq(lambda e: predict_point(moe, SpeedParams(cpu_tflops_per_core=rate, cpu_moe_compute_eff=e))
                 - moe.measured, 0.05, 5)
    params = SpeedParams(cpu_tflops_per_core=rate, cpu_moe_compute_eff=eff)
    return {key: predict_point(pt, params) / pt.measured - 1 for key, pt in points.items()}


def test_each_engines_kernels_carry_over_to_other_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cpu_wide (2048 wide, Llama) and cpu_moe64 (64 experts of 8 used, 768 wide), 2 layers each:
    ik_llama.cpp's 20 records (ten types, its own among them) within 10 % (median 2 %), where its CPU
    priced at mainline's Q4_K time for every type (before session 33) was 1.3-2x slow on all of them.
    Mainline's other ten within 18 % (median 4 %) by the AVX-512 build's columns (this native build's).
    Session 33 had 17 % and 29 %: the last layer's FFN, priced then, is half of these models' and
    runs for one token (cost.CostModel.ffn_in_prompt); the two Q4_K runs are the calibration."""
    errors = _heldout_errors(tmp_path)
    ik = [e for (engine, *_), e in errors.items() if engine == "ik_llama.cpp"]
    mainline = [e for (engine, *_), e in errors.items() if engine == "llama.cpp"]
    assert len(ik) == 20 and len(mainline) == 12
    assert max(map(abs, ik)) < 0.11 and statistics.median(map(abs, ik)) < 0.04
    assert max(map(abs, mainline)) < 0.20 and statistics.median(map(abs, mainline)) < 0.06
    from omni_place import kernels
    from omni_place.bench import calibrate
    from omni_place.kernels import WeightTypeSpeed

    mainline_time = WeightTypeSpeed.cpu_prompt_time
    monkeypatch.setattr(WeightTypeSpeed, "cpu_prompt_time",
                        lambda self, routed, ik, simd=None: 1.0 if ik else mainline_time(self, routed, ik, simd))
    monkeypatch.setattr(kernels, "ik_expert_time_scale", lambda tokens_per_expert: 1.0)
    monkeypatch.setattr(calibrate, "_COSTS", {})
    before = _heldout_errors(tmp_path)
    assert all(e < -0.25 for (engine, *_), e in before.items() if engine == "ik_llama.cpp")


def test_the_cpu_kernels_per_type_are_each_engines(tmp_path: Path) -> None:
    """A dense Q5_0 model on a CPU-only machine: llama.cpp's prompt costs Q5_0's tinyBLAS time
    per FLOP, ik_llama.cpp's its own GEMM's; decode reads the same, but for an i-quant's (the
    per-layer costs beside the weights' read are the engines' alike)."""
    from omni_place.kernels import weight_type_speed
    from omni_place.plan import evaluate

    (tmp_path / "cpu.toml").write_text('name = "cpu"\n[[devices]]\nname = "CPU"\nkind = "cpu"\n'
                                       'memory_gib = 64\nbandwidth_gbs = 60\nthreads = 8\n')

    def priced(weight_type: str) -> tuple[Any, Any]:
        model = load_model(write_speed_model("cpu_dense", tmp_path, header_only=True, weight_type=weight_type,
                                             shape=cpu_prompt.SHAPES["cpu_dense"]))
        ml, ik = (evaluate(model, str(tmp_path / "cpu.toml"), ["-ngl", "0", "-fa", "1"], tool="bench",
                           engine=engine).predicted for engine in ("llama.cpp", "ik_llama.cpp"))
        return ml, ik

    ml, ik = priced("q5_0")
    q5_0 = weight_type_speed("Q5_0")
    assert q5_0.ik_cpu_prompt is not None and q5_0.cpu_prompt > 2 * q5_0.ik_cpu_prompt
    assert ik.pp_tps / ml.pp_tps == pytest.approx(q5_0.cpu_prompt / q5_0.ik_cpu_prompt, rel=0.1)
    assert ml.tg_tps == pytest.approx(ik.tg_tps, rel=0.05)
    # an i-quant, whose decode mainline's kernel binds, decodes at each engine's own share
    ml, ik = priced("iq3_xxs")
    row = weight_type_speed("IQ3_XXS")
    assert row.ik_cpu_decode_share is not None and ik.tg_tps > 1.05 * ml.tg_tps
    assert ik.tg_tps / ml.tg_tps < row.ik_cpu_decode_share / row.cpu_decode_share


def test_a_cpus_prompt_kernels_are_its_builds(tmp_path: Path) -> None:
    """Both CPUs (a 2-vCPU EPYC and a 2-vCPU Xeon), each through an AVX2 build (libllama's wheel)
    and an AVX-512 one (llama-bench): for the quantized types, each CPU's factors are the other
    CPU's of the same build within 20 % (median 8 %), where the mean over both builds misses by up to
    26-38 % on each (IQ4_XS: 1.03 / 1.04 on AVX2, 0.63 / 0.70 on AVX-512). A cluster's ``simd``
    picks the build's column; without it, the mean over both."""
    import math

    from omni_place.kernels import weight_type_speed
    from omni_place.plan import evaluate

    res = RES.parent / "cpu_prompt"
    tables = cpu_prompt.local_factors(cpu_prompt.load([res / f"{k}_{cpu}.jsonl" for k in ("libllama", "bench_ml")
                                                       for cpu in ("epyc2", "xeon2")]))
    by = {(label.split()[0], cpu_prompt.label_simd(label)): tab for label, tab in tables.items()}
    assert sorted(by) == [("AMD", "avx2"), ("AMD", "avx512"), ("Intel(R)", "avx2"), ("Intel(R)", "avx512")]
    for (cpu, simd), tab in by.items():
        other = "Intel(R)" if cpu == "AMD" else "AMD"
        same, across = by[other, simd], by[other, "avx512" if simd == "avx2" else "avx2"]
        keys = [k for k in tab.keys() & same.keys() if k.split(":")[1] not in ("q4_k", "f16", "bf16", "q8_0")]
        assert len(keys) == 12
        err = [abs(math.log(tab[k] / same[k])) for k in keys]
        mean = [abs(math.log(tab[k] / math.sqrt(same[k] * across[k]))) for k in keys]
        assert max(err) < math.log(1.2) and statistics.median(err) < math.log(1.08), (cpu, simd)
        assert max(mean) > math.log(1.25), (cpu, simd)

    def pp(simd: str) -> float:
        model = load_model(write_speed_model("cpu_dense", tmp_path, header_only=True, weight_type="iq4_xs",
                                             shape=cpu_prompt.SHAPES["cpu_dense"]))
        (tmp_path / "cpu.toml").write_text('name = "cpu"\n[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 64\n'
                                           f'bandwidth_gbs = 60\nthreads = 8\n{simd}\n')
        return evaluate(model, str(tmp_path / "cpu.toml"), ["-ngl", "0", "-fa", "1"], tool="bench").predicted.pp_tps

    row = weight_type_speed("IQ4_XS")
    assert row.avx2_cpu_prompt is not None and row.avx512_cpu_prompt is not None
    assert row.avx2_cpu_prompt > 1.4 * row.avx512_cpu_prompt
    avx2, avx512, unknown = pp('simd = "avx2"'), pp('simd = "avx512"'), pp("")
    assert avx2 < unknown < avx512
    assert avx512 / avx2 > 1.25  # the matmuls' share of the prompt runs 1.5x faster
