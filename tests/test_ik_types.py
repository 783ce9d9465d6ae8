"""ik_llama.cpp's own ggml types (omni_place/ggml_types.py, data/ik_types.toml) against the engine:
files omni_place's writer made in 16 ik types (some with per-row scales), which ik_llama.cpp's
llama-bench loaded and reported at their exact size (benchmarks/results/ik_types/*.jsonl)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from omni_place.engines import dialect
from omni_place.errors import GGUFFormatError
from omni_place.ggml_types import ggml_type, ggml_type_named, is_ik_only
from omni_place.gguf import read_model_files
from omni_place.model import load_model
from omni_place.plan import evaluate
from omni_place.reference_models import fit_quant_type
from omni_place.sources.quants import nominal_bpw, quant_tag

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import quant_speed  # noqa: E402
from benchmarks.speed_models import write_speed_model  # noqa: E402
from tests.arch_models import write_model  # noqa: E402


def _ik_records() -> dict[str, dict]:
    by_file = {}
    for path in (quant_speed.IK_RECORDS, quant_speed.IK_VALIDATION):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            by_file[Path(r["model_filename"]).name] = r
    return by_file


def test_ik_loaded_our_files_at_the_bytes_we_price(tmp_path: Path) -> None:
    """ik_llama.cpp's model_size (the sum of ggml_nbytes) and parameter count for every file it ran:
    the row scales of IQ4_KS/IQ2_KS/IQ*_KT count once per row; pricing a row-scale type by its
    blocks alone would be short by 4 bytes a row."""
    records = _ik_records()
    assert len(records) == 26
    with_row_scales = 0
    for name, r in records.items():
        shape, weight_type = name.split(".")[:2]
        files = read_model_files(write_speed_model(shape, tmp_path, header_only=True, weight_type=weight_type))
        assert sum(t.n_bytes for t in files.tensors) == r["model_size"], name
        assert sum(t.n_elements for t in files.tensors) == r["model_n_params"], name
        with_row_scales += any(ggml_type(t.ggml_type).row_meta for t in files.tensors)
    assert with_row_scales >= 8


def test_row_scales_and_type_lookup() -> None:
    iq4_ks = ggml_type_named("iq4_ks")
    assert (iq4_ks.id, iq4_ks.block, iq4_ks.bytes, iq4_ks.row_meta) == (144, 256, 136, 4)
    assert iq4_ks.tensor_bytes((4096, 1024)) == 1024 * (4 + 16 * 136)
    assert ggml_type_named("Q4_K").tensor_bytes((4096, 1024)) == 1024 * 16 * 144  # mainline: no row scale
    assert is_ik_only(144) and not is_ik_only(12) and not is_ik_only(10_000)
    with pytest.raises(KeyError):
        ggml_type(36)  # ik's I2_S: its size is a special case, left out


def test_an_unknown_type_id_is_one_clear_error(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", "llama", weight_type="iq4_ks", header_only=True, n_embd=256, n_ff=512)
    data = bytearray(path.read_bytes())
    at = data.index(b"blk.0.attn_q.weight") + len(b"blk.0.attn_q.weight")
    at += 4 + 2 * 8  # n_dims, two dims
    assert int.from_bytes(data[at:at + 4], "little") == 144
    data[at:at + 4] = (36).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFFormatError, match="unknown ggml type 36") as err:
        read_model_files(path)
    assert "ik_types.toml" in err.value.hint


def test_mainline_notes_a_file_it_cannot_load(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", "llama", weight_type="q4_k", header_only=True, n_embd=512, n_ff=1024,
                       tensor_types={r"ffn_down": "iq4_ks"})
    model = load_model(path)
    note, = dialect("llama.cpp").model_notes(model)
    assert "IQ4_KS x 4" in note and "ik_llama.cpp" in note
    assert not any("cannot load" in n for n in dialect("ik_llama.cpp").model_notes(model))
    plain = load_model(write_model(tmp_path / "q.gguf", "llama", weight_type="q4_k", header_only=True,
                                   n_embd=512, n_ff=1024))
    assert dialect("llama.cpp").model_notes(plain) == []


def test_ubergarm_file_names_are_quant_tags() -> None:
    assert quant_tag("DeepSeek-V3-0324-IQ2_K_R4-00001-of-00005.gguf") == "IQ2_K_R4"
    assert quant_tag("Kimi-K2-Instruct-IQ4_KS/x.gguf") == "IQ4_KS"
    assert nominal_bpw("IQ4_KS") == pytest.approx(4.25) and nominal_bpw("IQ2_KT") == pytest.approx(2.125)
    assert fit_quant_type(ggml_type_named("iq4_ks").id, 4096) == 144
    assert fit_quant_type(ggml_type_named("iq4_ks").id, 4000) == 1  # a row of no whole block: F16


def test_ik_bench_runs_flash_attention_unless_told_not_to(tmp_path: Path) -> None:
    """ik's llama-bench turned -fa on by default (ik #863: examples/llama-bench/llama-bench.cpp:299):
    a record or command line without -fa prices as -fa 1, not as -fa 0."""
    header = write_speed_model("llama8b", tmp_path, header_only=True, weight_type="q4_k")
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(quant_speed.CLUSTER)

    def tg(*flags: str) -> float:
        return evaluate(str(header), str(cluster), ["-ngl", "99", "-p", "512", "-n", "64", *flags],
                        engine="ik_llama.cpp", tool="bench").predicted.tg_tps

    assert tg() == tg("-fa", "1") > tg("-fa", "0")


def test_iks_own_json_output_calibrates_whole(tmp_path: Path) -> None:
    """ik's llama-bench -o json (a JSON array, ik's own keys: override_tensor, fused_moe, mla_attn)
    of the held-out runs, as the tool wrote them: every record a calibration point, none skipped,
    ik's placement (its expert-offload rule at -ub 512 vs 2048) in each."""
    from omni_place.bench.llamabench import import_text
    from omni_place.devices import resolve_cluster

    cluster = tmp_path / "cluster.toml"
    cluster.write_text(quant_speed.CLUSTER)
    records = [json.loads(line) for line in quant_speed.IK_VALIDATION.read_text().splitlines()]
    moe = [{k: v for k, v in r.items() if k != "round"} for r in records
           if r["round"] == 1 and Path(r["model_filename"]).stem == "moe256.q4_k"]
    model = load_model(write_speed_model("moe256", tmp_path, header_only=True, weight_type="q4_k"))
    imported = import_text(json.dumps(moe, indent=2), model, resolve_cluster(str(cluster)))
    assert imported.read == len(moe) == 6 and not imported.skipped and len(imported.points) == 6
    by_ub = {(p.context.n_ubatch, p.kind): p for p in imported.points}
    assert by_ub[512, "pp"].context.moe_offload_by_share and by_ub[2048, "pp"].context.flash_attn


def test_ik_fused_experts_decode_on_the_cpu(tmp_path: Path) -> None:
    """ik runs a routed-expert FFN as three ops (-fmoe and fused_mmad, both on by default,
    src/llama-build-context.cpp:1598-1690) where mainline runs 4 + k: the held-out ik decodes with
    every expert in RAM (moe256, 16 layers of 8-of-256 experts; Q4_K and IQ2_KS, three rounds,
    priced by the import as a user's llama-bench output) are within 12 %; the same placement with
    mainline's op count is priced over 10 % slower."""
    import dataclasses

    from omni_place.cost import CostModel

    rows = [r for r in quant_speed.ik_validation_rows(tmp_path)
            if r["test"] == "tg" and "exps=CPU" in r["flags"]]
    assert len(rows) == 4
    for r in rows:
        assert r["predicted"] == pytest.approx(r["measured"], rel=0.12), r
    header = write_speed_model("moe256", tmp_path, header_only=True, weight_type="q4_k")
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(quant_speed.CLUSTER)
    plan = evaluate(str(header), str(cluster), ["-ngl", "99", "-ot", "exps=CPU", "-p", "0", "-n", "32"],
                    engine="ik_llama.cpp", tool="bench")
    assert plan.context.fused_moe
    fused, unfused = (CostModel(plan.model, plan.cluster, dataclasses.replace(plan.context, fused_moe=f))
                      .predict(plan.placement).tg_tps for f in (True, False))
    assert fused > 1.10 * unfused


def test_ik_fused_moe_switches_reach_the_context() -> None:
    """ik's server turns fused MoE off with -no-fmoe (common/common.cpp:1973), its llama-bench with
    -fmoe 0 (and its records say fused_moe); mainline has neither and leaves them unpriced."""
    from omni_place.errors import InvalidArgumentError

    ik, mainline = dialect("ik_llama.cpp"), dialect("llama.cpp")
    assert ik.parse_args(["-ngl", "99", "-fmoe", "0"], "bench").fused_moe is False
    assert ik.parse_args(["--fused-moe=1"], "bench").fused_moe is True
    parsed = ik.parse_args(["-ngl", "99", "-no-fmoe"], "server")
    assert parsed.fused_moe is False and not parsed.unpriced
    assert ik.parse_args(["-ngl", "99"], "server").fused_moe is None
    for bad in (["-fmoe", "x"], ["-fmoe"], ["-fmoe", "-ngl", "9"]):
        with pytest.raises(InvalidArgumentError, match="-fmoe needs 0 or 1"):
            ik.parse_args(bad, "bench")
    assert mainline.parse_args(["-fmoe", "0"], "bench").unpriced == ["-fmoe 0"]
    assert ik.traits.context().fused_moe and not ik.traits.context(fused_moe=False).fused_moe
    assert not mainline.traits.context(fused_moe=True).fused_moe
    record = json.loads(quant_speed.IK_VALIDATION.read_text().splitlines()[0])
    assert "-fmoe" not in ik.bench_record_flags(record).argv
    assert ik.bench_record_flags({**record, "fused_moe": False}).argv[-2:] == ("-fmoe", "0")
