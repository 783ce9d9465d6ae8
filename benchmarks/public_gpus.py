"""What llama.cpp achieves on GPUs this project does not have: the catalog's ``[[speed]]`` rows.

Reads ``benchmarks/results/public_gpus/records.json``: llama-bench results of whole models on one
GPU (``-ngl 99``, the default ubatch 512), copied with their source from llama.cpp's own pull
requests, its CUDA scoreboard (discussion 15013) and third-party comparisons, plus this project's
H200 runs of the same shapes (``h200_*.jsonl``). Each record is priced as it ran, by the planner
(:func:`omni_place.plan.evaluate` on a one-GPU cluster of the catalog entry, the model's header
written from its published shape). The price is linear in 1 / share and in the fixed cost per
layer, so pricing each record at the catalog's row, at twice its share and at twice its layer
cost splits its time into those parts and the rest (:func:`parts`).

A compute capability's row is fitted on its records (:func:`fit_row`): for decode, least squares
on relative errors over (1 / ``decode_bw_share``, ``layer_us``), the share at most 1, and the
layer cost fitted only where the records hold two model shapes (else the default row's); for the
prompt, the median share that prices each record exactly (``mmq_share``). Its accuracy is stated
with each GPU left out: its records priced with a row fitted on every other GPU of the derived
capabilities, beside the default row alone (the planner before these rows). Only GDDR cards'
capabilities are derived (``DERIVED_CCS``); the H200's row stays the fit of 60 placements in
speed_truth.md, with its records here as a check.

    python -m benchmarks.public_gpus          # -> benchmarks/results/public_gpus.{md,json}

The test (tests/test_gpu_speed_rows.py) checks the shipped ``[[speed]]`` rows equal what this derives.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RECORDS = RESULTS / "public_gpus" / "records.json"

_LLAMA2_7B = dict(arch="llama", n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, head_dim=128, n_ff=11008,
                  n_vocab=32000)
_LLAMA3_8B = dict(arch="llama", n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336,
                  n_vocab=128256)
_QWEN3_30B_A3B = dict(arch="qwen3moe", n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_ff=6144,
                      n_expert=128, n_expert_used=8, n_ff_exp=768, n_vocab=151936)
#: llama-bench's model names -> the published shape and the type of its matrices
SHAPES: dict[str, dict[str, Any]] = {
    "llama 7B Q4_0": dict(_LLAMA2_7B, weight_type="q4_0"),
    "llama 7B Q5_K_M": dict(_LLAMA2_7B, weight_type="q5_k"),
    "llama 8B Q4_0": dict(_LLAMA3_8B, weight_type="q4_0"),
    "llama 8B Q4_K_S": dict(_LLAMA3_8B, weight_type="q4_k"),
    "llama 8B Q8_0": dict(_LLAMA3_8B, weight_type="q8_0"),
    "llama 3B Q4_K_M": dict(arch="llama", n_layer=28, n_embd=3072, n_head=24, n_head_kv=8, head_dim=128, n_ff=8192,
                            n_vocab=128256, weight_type="q4_k"),
    "llama 1B Q4_0": dict(arch="llama", n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, head_dim=64, n_ff=8192,
                          n_vocab=128256, weight_type="q4_0"),
    "qwen3 8B Q8_0": dict(arch="qwen3", n_layer=36, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=12288,
                          n_vocab=151936, weight_type="q8_0"),
    "qwen3moe 30B.A3B Q4_0": dict(_QWEN3_30B_A3B, weight_type="q4_0"),
    "qwen3moe 30B.A3B Q4_K_M": dict(_QWEN3_30B_A3B, weight_type="q4_k"),
}
#: compute capabilities whose rows are derived here (GDDR cards); the others keep the default row
DERIVED_CCS = ("8.6", "8.9", "12.0")
SCALE_OF = {"tg": "gpu_bw_scale", "pp": "gpu_compute_scale"}
SHARE_OF = {"tg": "decode_bw_share", "pp": "mmq_share"}


def _headers(folder: Path) -> dict[str, Path]:
    from tests.arch_models import write_model

    out = {}
    for i, (name, shape) in enumerate(SHAPES.items()):
        out[name] = write_model(folder / f"m{i}.gguf", tokenizer="spm", header_only=True, **shape)
    return out


def one_gpu_cluster(folder: Path, gpu: str) -> Path:
    """The cluster file of one catalog GPU beside a 16-thread, 80 GB/s CPU, in ``folder``."""
    path = folder / f"{gpu.replace(' ', '_')}.toml"
    path.write_text(f'name = "one {gpu}"\n[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "{gpu}"\n'
                    '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 64\nbandwidth_gbs = 80\nthreads = 16\n')
    return path


def price(rec: dict[str, Any], header: Path, cluster: Path, scale: float = 1.0, layer_scale: float = 1.0) -> float:
    """Predicted seconds per token of one record at ``scale`` times the catalog's share (and
    ``layer_scale`` times its fixed decode cost per layer)."""
    from omni_place.placement import SpeedParams
    from omni_place.plan import evaluate

    kind, n = rec["test"][:2], int(rec["test"][2:])
    argv = ["-ngl", "99", "-fa", str(1 if rec.get("fa") is None else rec["fa"]),
            "-p", str(n if kind == "pp" else 0), "-n", str(n if kind == "tg" else 0)]
    params = replace(SpeedParams(), **{SCALE_OF[kind]: scale}, gpu_layer_scale=layer_scale)
    pred = evaluate(str(header), str(cluster), argv, engine="llama.cpp", tool="bench", params=params).predicted
    return 1.0 / (pred.tg_tps if kind == "tg" else pred.pp_tps)


def parts(rec: dict[str, Any], header: Path, cluster: Path) -> tuple[float, float, float]:
    """(scaled, layers, rest): a record's predicted seconds per token at the catalog's row split
    into the part inversely proportional to the share, the fixed per-layer part (decode) and the
    rest: the model is linear in 1 / share and in the per-layer cost."""
    t = price(rec, header, cluster)
    scaled = 2.0 * (t - price(rec, header, cluster, 2.0))
    layers = price(rec, header, cluster, 1.0, 2.0) - t if rec["test"].startswith("tg") else 0.0
    return scaled, layers, t - scaled - layers


def _shape(model: str) -> tuple[Any, ...]:
    """A model's shape without its weight type (records of one shape cannot separate the
    per-layer cost from the bandwidth: their quant kernels differ more than their layers)."""
    return tuple(sorted((k, v) for k, v in SHAPES[model].items() if k != "weight_type"))


def fit_row(recs: list[dict[str, Any]], kind: str, default_layer_us: float) -> dict[str, float]:
    """The share (and, for decode, the per-layer microseconds) that price ``recs`` best: least
    squares on relative errors, linear in (1 / share, layer_us); share at most 1. Records of one
    shape keep ``default_layer_us``."""
    import numpy as np
    from scipy.optimize import lsq_linear

    if kind == "pp":  # one unknown: the median of the implied shares
        return {"mmq_share": round(statistics.median(r["share_now"] * r["scaled"] / max(1 / r["tps"] - r["rest"], 1e-9)
                                                     for r in recs), 2)}
    rows = np.array([[r["share_now"] * r["scaled"] * r["tps"], r["layers"] / r["layer_now"] * r["tps"]] for r in recs])
    rhs = np.array([1.0 - r["rest"] * r["tps"] for r in recs])
    one_shape = len({_shape(r["model"]) for r in recs}) < 2  # quant kernels differ more than their layers
    if one_shape:
        rhs = rhs - rows[:, 1] * default_layer_us
        rows = rows[:, :1]
    sol = lsq_linear(rows, rhs, bounds=([1.0] * rows.shape[1], [50.0, 300.0][:rows.shape[1]])).x
    return {"decode_bw_share": round(1.0 / sol[0], 2), "layer_us": round(default_layer_us if one_shape else sol[1], 1)}


def derive(records: list[dict[str, Any]]) -> dict[str, Any]:
    from omni_place.catalog import DEFAULT_SPEED_ROW, lookup, speed_share

    default = speed_share(None)
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        headers = _headers(folder)
        for rec in records:
            spec = lookup(rec["gpu"])
            assert spec is not None, rec["gpu"]
            kind = rec["test"][:2]
            row = speed_share(spec.compute_capability)
            header, cluster = headers[rec["model"]], one_gpu_cluster(folder, spec.name)
            scaled, layers, rest = parts(rec, header, cluster)
            out.append(dict(rec, gpu=spec.name, cc=spec.compute_capability, kind=kind, scaled=scaled, layers=layers,
                            rest=rest, share_now=getattr(row, SHARE_OF[kind]), layer_now=row.layer_us))

        def predict(r: dict[str, Any], row: dict[str, float]) -> float:
            share = row.get(SHARE_OF[r["kind"]], getattr(default, SHARE_OF[r["kind"]]))
            layer = row.get("layer_us", default.layer_us) if r["kind"] == "tg" else r["layer_now"]
            return 1.0 / (r["scaled"] * r["share_now"] / share + r["layers"] * layer / r["layer_now"] + r["rest"])

        rows: dict[str, dict[str, float]] = {}
        for cc in DERIVED_CCS:
            row: dict[str, float] = {}
            for kind in ("tg", "pp"):
                recs = [r for r in out if r["cc"] == cc and r["kind"] == kind]
                row.update(fit_row(recs, kind, default.layer_us) if recs else {})
            if row:
                rows[cc] = row
        for r in out:
            r["pred_default"] = predict(r, {})
            # held out: the rows fitted on the other GPUs of every derived compute capability
            others = [o for o in out if o["gpu"] != r["gpu"] and o["cc"] in DERIVED_CCS and o["kind"] == r["kind"]]
            r["pred_held_out"] = predict(r, fit_row(others, r["kind"], default.layer_us)
                                         if r["cc"] in DERIVED_CCS and others else {})
            r["pred_rows"] = predict(r, rows.get(r["cc"], {}))
    return {"default_row": DEFAULT_SPEED_ROW, "rows": {cc: {k: row.get(k, getattr(default, k)) for k in
                                                             ("decode_bw_share", "layer_us", "mmq_share")}
                                                        for cc, row in rows.items()}, "records": out}


def _err(pred: float, meas: float) -> float:
    return 100.0 * (pred / meas - 1.0)


def report(result: dict[str, Any]) -> str:
    lines = ["# llama.cpp on GPUs this project does not have: the catalog's speed rows", "",
             "`python -m benchmarks.public_gpus` (see its docstring for the method). Whole models on one GPU, "
             "llama-bench's default ubatch 512; each record priced as it ran. Errors: prediction / measured - 1.",
             "",
             "Rows derived (`[[speed]]` in omni_place/data/gpu_catalog.toml; the others keep the default row, "
             "the H200's: decode 0.93 of the bandwidth at most, the weight types' kernel rates at most "
             "(benchmarks/results/quant_speed.md), MMQ 0.174 beside 223 us per layer and ubatch and the host's "
             "work on each llama_decode call's first ubatch (benchmarks/results/gpu_shapes.md); every row "
             "prices the prompt with those fixed costs, so its share is the rate of the matmuls alone):", "",
             "| compute capability | decode_bw_share | layer_us | mmq_share |", "|---|---:|---:|---:|"]
    for cc, row in result["rows"].items():
        lines.append(f"| {cc} | {row['decode_bw_share']:.2f} | {row['layer_us']:.1f} | {row['mmq_share']:.2f} |")
    lines += ["", "| GPU (cc) | model | test | measured t/s | default row | held out (GPU left out) "
              "| shipped rows | source |", "|---|---|---|---:|---:|---:|---:|---|"]
    for r in result["records"]:
        lines.append(f"| {r['gpu']} ({r['cc']}) | {r['model']} | {r['test']}"
                     f"{'' if r.get('fa') is None else ' fa' + str(r['fa'])} | {r['tps']:g} "
                     f"| {r['pred_default']:.0f} ({_err(r['pred_default'], r['tps']):+.0f} %) "
                     f"| {r['pred_held_out']:.0f} ({_err(r['pred_held_out'], r['tps']):+.0f} %) "
                     f"| {r['pred_rows']:.0f} ({_err(r['pred_rows'], r['tps']):+.0f} %) | {r['source']} |")
    lines += ["", "## What the records say", "",
              "- The first H200 fit for every GPU (decode 0.47 of the datasheet bandwidth plus 55 us per layer, "
              "MMQ 0.15 of `fp16_tflops`) priced every GDDR card 29-76 % slow, decode and prompt alike. In decode "
              "the H200 is not memory-bound: its quant kernels are (quant_speed.md), and pricing their work at "
              "each GPU's MMQ rate beside the memory (0.93 of it) prices the GDDR cards' decode within a "
              "median 4 % with the default row alone (the 'default row' column). In MMQ those cards reach "
              "0.46-0.62 of their FP16-accumulate tensor peak beside the call cost (int8 tensor cores, "
              "twice that peak on these chips), where the H200 reaches 0.174 (its datasheet peak needs wgmma, "
              "which MMQ does not use).",
              "- Rows are keyed by compute capability because llama.cpp's CUDA backend picks its kernels by it "
              "(ggml/src/ggml-cuda/common.cuh:53-60, `GGML_CUDA_CC_*`). Capabilities without records (6.1, 7.0, 7.5, "
              "8.0: the A100's HBM is closer to the H200) keep the default row.",
              "- The per-layer cost is fitted only where a capability has records of two model shapes (8.9, "
              "12.0); one shape in several quants (the 3090's) cannot separate it from the bandwidth. 8.9's "
              "decode share sits at its bound, 1.0: a share of 1 with 60 us per layer, not a measured full "
              "bandwidth.",
              "- Caveats: the records come from different llama.cpp builds (2025-2026); the 4090, 3090 and "
              "4060 Ti llama 7B figures are the CUDA scoreboard's as a third-party document quotes them; the "
              "5090's are a third-party comparison's llama.cpp column. MoE decode changed between builds: the "
              "row prices the 4090's qwen3moe record (October 2025) 33 % fast and the 5090's (2026) exactly. "
              "The H200's 1B model was priced 50-88 % fast before the fixed prompt costs (a ubatch's kernels "
              "take about 223 us a layer whatever its width, and the host's work on a call's first ubatch ~2 ms: "
              "gpu_shapes.md); "
              "with them every H200 record here is within 10 %.",
              "", "Summary, |error| median / max:", "",
              "| records | default row | held out | shipped rows |", "|---|---|---|---|"]
    for label, sel in (("GDDR GPUs, decode", lambda r: r["kind"] == "tg" and r["cc"] in DERIVED_CCS),
                       ("GDDR GPUs, prompt", lambda r: r["kind"] == "pp" and r["cc"] in DERIVED_CCS),
                       ("H200 (default row), decode", lambda r: r["kind"] == "tg" and r["cc"] not in DERIVED_CCS),
                       ("H200 (default row), prompt", lambda r: r["kind"] == "pp" and r["cc"] not in DERIVED_CCS)):
        rs = [r for r in result["records"] if sel(r)]
        if not rs:
            continue
        cells = []
        for key in ("pred_default", "pred_held_out", "pred_rows"):
            errs = [abs(_err(r[key], r["tps"])) for r in rs]
            cells.append(f"{statistics.median(errs):.0f} % / {max(errs):.0f} %")
        lines.append(f"| {label} ({len(rs)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", default=str(RECORDS))
    ap.add_argument("--out", default=str(RESULTS / "public_gpus"), help="writes OUT.md and OUT.json")
    a = ap.parse_args()
    result = derive(json.loads(Path(a.records).read_text()))
    Path(a.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    Path(a.out + ".md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
