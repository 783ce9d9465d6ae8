"""The weight-type table (omni_place/data/weight_types.toml, omni_place/kernels.py) against the
llama-bench runs it was derived from (benchmarks/results/quant_speed/): 22 ggml types of two
Llama shapes on one H200 and its 16-vCPU host, and moe15 with its experts in CPU RAM."""
from __future__ import annotations

import json
import statistics
import sys
import types
from pathlib import Path

import pytest

from omni_place.catalog import DEFAULT_SPEED_ROW, speed_shares
from omni_place.errors import ClusterError
from omni_place import kernels
from omni_place.kernels import FA_OFF_LAYER_SHARE, FALLBACK_TYPE, weight_type_speed, weight_type_speeds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import quant_speed  # noqa: E402


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [json.loads(line) for line in quant_speed.RECORDS.read_text().splitlines()]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quant_speed")
    (path / "cluster.toml").write_text(quant_speed.CLUSTER)
    return path


def test_shipped_rows_are_what_the_records_give(records: list[dict], folder: Path) -> None:
    derived = quant_speed.derive(records, folder)
    assert len(records) >= 500 and set(derived["types"]) == {t.upper() for t in quant_speed.TYPES
                                                              + quant_speed.IK_TYPES}
    shipped = weight_type_speeds()
    for name, row in derived["types"].items():
        assert (shipped[name].gpu_decode_flops, shipped[name].gpu_prompt, shipped[name].cpu_decode_share) == (
            row["gpu_decode_flops"], row["gpu_prompt"], row["cpu_decode_share"]), name
    for cc in ("9.0", DEFAULT_SPEED_ROW):
        row = speed_shares()[cc]
        assert (row.decode_bw_share, row.layer_us) == (derived["gpu_row"]["decode_bw_share"],
                                                       derived["gpu_row"]["layer_us"])
    assert FA_OFF_LAYER_SHARE == derived["fa_off_layer_share"]
    assert (ROOT / "omni_place" / "data" / "weight_types.toml").read_text() == quant_speed.table_text(derived["types"])


def test_the_planner_prices_each_type_as_it_ran(records: list[dict], folder: Path) -> None:
    """The records of six types imported as a user's llama-bench output and priced: decode of
    the 8B model on the whole H200 within 5 %, on its CPU (16 threads) within 15 %: the bytes
    alone priced them -24..+59 % (GPU) and up to +171 % (CPU i-quants)."""
    six = ("f16", "q8_0", "q6_k", "q4_k", "q4_0", "iq2_xxs")
    mine = [r for r in records if quant_speed.group(r)[0] == "llama8b" and quant_speed.group(r)[1] in six
            and quant_speed.group(r)[3:] == ("tg", 1, quant_speed.THREADS)]
    measured, predicted = quant_speed.medians(mine), quant_speed.priced(mine, folder)
    assert len(measured) == 12
    for key, tps in measured.items():
        assert abs(predicted[key] / tps - 1) < (0.05 if key[2] == "gpu" else 0.15), (key, predicted[key], tps)


def test_cpu_shares_hold_on_routed_experts_in_ram(folder: Path) -> None:
    """moe15 with every expert in CPU RAM (-ot exps=CPU) in four types, not used by the fit:
    decode at 16 threads within 10 %; IQ2_XXS experts, a third of Q4_K's bytes, decode slower."""
    rows = [r for r in quant_speed._moe_rows(folder) if r["test"] == "tg" and r["threads"] == quant_speed.THREADS]
    assert {r["type"] for r in rows} == {"iq2_xxs", "q4_k", "q6_k", "q8_0"}
    assert all(abs(r["predicted"] / r["measured"] - 1) < 0.10 for r in rows), rows
    by = {r["type"]: r for r in rows}
    assert by["iq2_xxs"]["measured"] < by["q4_k"]["measured"] and by["iq2_xxs"]["predicted"] < by["q4_k"]["predicted"]


def test_kernel_bound_on_hbm_memory_bound_on_gddr(folder: Path) -> None:
    """An 8B in IQ1_S (1.8 GB) and in Q6_K (6.5 GB): on the H200 the kernels set the pace (the
    measured 368 and 207 tok/s, a ratio far below their bytes'); on a 4090, whose MMQ rate per
    byte of bandwidth is 4x the H200's, decode follows the bytes."""
    from benchmarks.speed_models import write_speed_model
    from omni_place.plan import evaluate

    cluster = folder / "4090.toml"
    cluster.write_text(quant_speed.CLUSTER.replace('catalog = "H200"', 'catalog = "RTX 4090"'))
    argv = ["-ngl", "99", "-fa", "1", "-p", "0", "-n", "64"]
    speed, weight_bytes = {}, {}
    for wtype in ("iq1_s", "q6_k"):
        header = write_speed_model("llama8b", folder, header_only=True, weight_type=wtype)
        weight_bytes[wtype] = quant_speed.weights(header)[0]
        for name, path in (("h200", folder / "cluster.toml"), ("4090", cluster)):
            pred = evaluate(str(header), str(path), argv, engine="llama.cpp", tool="bench").predicted
            speed[name, wtype] = pred.tg_tps
    hbm, gddr = speed["h200", "iq1_s"] / speed["h200", "q6_k"], speed["4090", "iq1_s"] / speed["4090", "q6_k"]
    assert hbm == pytest.approx(368.3 / 207.4, rel=0.08)
    row = speed_shares()["8.9"]
    memory = {t: b / (1008e9 * row.decode_bw_share) + 32 * row.layer_us * 1e-6 for t, b in weight_bytes.items()}
    assert gddr == pytest.approx(memory["q6_k"] / memory["iq1_s"], rel=0.03) and gddr > 1.3 * hbm


def test_types_without_a_row_and_f32_weights() -> None:
    assert weight_type_speed("IQ4_K_R4") is weight_type_speeds()[FALLBACK_TYPE]  # ik's CPU-only repack
    assert weight_type_speed("f32") is weight_type_speeds()["F16"]
    iq = [weight_type_speeds()[t].cpu_decode_share for t in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ3_XXS")]
    assert max(iq) < 0.5 < statistics.median(s.cpu_decode_share for s in weight_type_speeds().values())


@pytest.mark.parametrize("text, what", [
    ('[[type]]\ntype = "Q4_0"\ngpu_decode_flops = 1\ngpu_prompt = 1\ncpu_decode_share = 1\n', "no row for Q4_K"),
    ('[[type]]\ntype = "Q4_K"\ngpu_decode_flops = 1\ngpu_prompt = 0\ncpu_decode_share = 1\n', "positive"),
    ('[[type]]\ntype = "Q4_K"\ngpu_prompt = 1\ncpu_decode_share = 1\n', "needs"),
    ('[[type]]\ntype = "Q4_K"\ngpu_decode_flops = 1\ngpu_prompt = 1\ncpu_decode_share = 1\ncpu_ratio = 1\n',
     "may have"),
    ('[[type]]\ntype = "Q4_K"\ngpu_decode_flops = 1\ngpu_prompt = 1\ncpu_decode_share = 1\ncpu_prompt = -1\n',
     "positive"),
    ('[[type]]\ntype = "Q4_K"\ngpu_decode_flops = 1\ngpu_prompt = 1\ncpu_decode_share = 1\n'
     'cpu_expert_prompt = "2"\n', "with their types"),
    ('[[type]\n', "cannot read"),
])
def test_a_damaged_table_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                            what: str) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "weight_types.toml").write_text(text)
    monkeypatch.setattr(kernels, "resources", types.SimpleNamespace(files=lambda _: tmp_path))
    with pytest.raises(ClusterError, match=what):
        weight_type_speeds.__wrapped__()


def test_imported_records_at_fewer_threads_read_slower(records: list[dict], folder: Path) -> None:
    """The CPU records imported as a user's llama-bench output (-t 4, 8, 16 on the 16-thread
    host): fewer threads than the CPU figure's read slower (devices.CPU_THREAD_GBS, set on another
    host's records), so each thread count is priced within a median 15 %; without it 4 threads were
    priced +142 %."""
    from benchmarks.speed_models import write_speed_model
    from omni_place.bench.calibrate import predict_point
    from omni_place.bench.llamabench import import_files
    from omni_place.devices import resolve_cluster
    from omni_place.model import load_model
    from omni_place.placement import SpeedParams

    cluster = resolve_cluster(str(folder / "cluster.toml"))
    errors: dict[int, list[float]] = {}
    for wtype in ("q8_0", "q4_k", "iq2_xxs", "q2_k"):
        lines = [json.dumps(r) for r in records if not r["n_gpu_layers"] and f"llama8b.{wtype}." in r["model_filename"]]
        path = folder / f"cpu.{wtype}.jsonl"
        path.write_text("\n".join(lines))
        model = load_model(write_speed_model("llama8b", folder, header_only=True, weight_type=wtype))
        for pt in import_files([str(path)], model, cluster).points:
            errors.setdefault(pt.cluster.cpu.threads, []).append(predict_point(pt, SpeedParams()) / pt.measured - 1)
    assert sorted(errors) == [4, 8, 16]
    assert all(abs(statistics.median(e)) < 0.15 for e in errors.values()), errors


def test_decode_kernels_never_slower_per_byte_than_the_h200s(folder: Path) -> None:
    """A Tesla P40's catalog ``fp16_tflops`` is its FP32 figure (Pascal runs MMQ on dp4a): at the
    default row's MMQ share its kernels would price an 8B Q4_K at 5 tok/s. Decode kernels run at
    least KERNEL_FLOPS_PER_BYTE of the bandwidth (the H200's ratio), so its decode stays within 2x
    of its memory's price."""
    from benchmarks.speed_models import write_speed_model
    from omni_place.catalog import lookup
    from omni_place.plan import evaluate

    cluster = folder / "p40.toml"
    cluster.write_text(quant_speed.CLUSTER.replace('catalog = "H200"', 'catalog = "Tesla P40"'))
    header = write_speed_model("llama8b", folder, header_only=True, weight_type="q4_k")
    tg = evaluate(str(header), str(cluster), ["-ngl", "99", "-fa", "1", "-p", "0", "-n", "64"], engine="llama.cpp",
                  tool="bench").predicted.tg_tps
    p40, row = lookup("Tesla P40"), speed_shares()[DEFAULT_SPEED_ROW]
    assert p40 is not None
    assert p40.fp16_tflops * 1e12 * row.mmq_share < kernels.KERNEL_FLOPS_PER_BYTE * p40.bandwidth_gbs * 1e9
    memory = quant_speed.weights(header)[0] / (p40.bandwidth_gbs * 1e9 * row.decode_bw_share) + 32 * row.layer_us * 1e-6
    assert 0.49 / memory < tg < 1 / memory  # 2x, within the derived factors' rounding
