"""What attention over a filled KV cache costs, with and without flash attention: llama-bench's
``-d`` (depth) runs of dense shapes on the whole GPU, turned into the constants of
``omni_place/attention.py`` (``report``) and checked on runs the fit did not use.

Prompt: each ubatch token attends to the cache, ``2 x n_head x (head_dim_k + head_dim_v)`` FLOPs per
cached token a layer. Flash attention runs it as one tiled kernel that skips the masked half of the
ubatch (ggml/src/ggml-cuda/fattn-common.cuh, ``KV_max``); without it the scores are materialized:
KQ and KQV are cuBLAS matmuls over every cell, the softmax a separate pass
(src/llama-graph.cpp build_attn_mha), and a fixed cost per layer and ubatch comes on top. Decode
reads the cache once a token; its time at depth is measured against the bytes read at the GPU's
decode rate.

On the GPU machine (mainline llama-bench built from source, not committed)::

    llama-bench -m MODEL -ngl 99 -fa 0,1 -p 512 -n 32 -d 0,4096,16384 -r 3 -o jsonl

Models: speed_models ``llama8b`` (q4_k, also at ``-d 8192``) and ``dense11`` (q4_k_m) fitted; ``llama8b`` iq4_xs
and ``moe256`` at ``-d 8192`` held out (benchmarks/results/attention_depth/records.jsonl). Here::

    python -m benchmarks.attention_depth report   # -> benchmarks/results/attention_depth.{md,json}
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.quant_speed import medians, priced

RESULTS = Path(__file__).resolve().parent / "results"
RECORDS = RESULTS / "attention_depth" / "records.jsonl"
#: the files whose depth sweeps the constants are fitted on (the others are held out)
FITTED = ("llama8b.q4_k", "dense11.q4_k_m")
GPU = "H200"


def _key(r: dict[str, Any]) -> tuple[str, int, int, str]:
    """A record's (model file stem, flash_attn, depth, test): its group for quant_speed's medians and
    prices (each record imported as a user's llama-bench output)."""
    return (Path(r["model_filename"]).stem, int(r["flash_attn"]), r["n_depth"], "pp" if r["n_prompt"] else "tg")


def _shape(stem: str, folder: Path) -> dict[str, float]:
    """Per model: layers, attention FLOPs per token per cached token (all layers), KV bytes per
    cached token (all layers)."""
    from benchmarks.speed_models import write_speed_model
    from omni_place.model import load_model

    shape, wtype = stem.split(".")[:2]
    model = load_model(write_speed_model(shape, folder, header_only=True, weight_type=wtype))
    hp, n = model.hparams, model.n_layer
    kv_per_cell = sum(model.kv_layer_bytes(4096, "f16", "f16")) / model.kv_cells(4096)
    return {"layers": n, "flops_per_kv": sum(2.0 * hp.n_head[il] * (hp.head_dim_k + hp.head_dim_v) for il in range(n)),
            "kv_bytes_per_cell": kv_per_cell}


def derive(records: list[dict[str, Any]], folder: Path) -> dict[str, float]:
    """The constants, by least squares over the FITTED models' pp and tg at every depth and -fa.

    Prompt, seconds per token: ``w_m + F x kv_fa / R1`` (fa 1) and ``w_m + L x c / 512 + F x kv / R0``
    (fa 0), with ``w_m`` each model's weights time, ``F`` its FLOPs per cached token, ``kv_fa`` =
    depth + 256 (half the ubatch), ``kv`` = depth + 512; R1, R0 and c (seconds a layer and ubatch) are
    returned as shares of the GPU's FP16 tensor peak (``fp16_tflops``, ``CostModel.attention_rate``:
    attention runs on the FP16 tensor cores, the matmuls' MMQ on the int8 ones, whose ratio differs
    by GPU class; its tiles do not follow the matmuls' ubatch curve) and of its ``layer_us``. Decode: ``v_m + f x KV
    bytes at depth / decode bandwidth`` per -fa, f returned."""
    import numpy as np

    from omni_place.catalog import lookup, speed_share

    gpu = lookup(GPU)
    assert gpu is not None
    row = speed_share(gpu.compute_capability)
    fp16 = gpu.fp16_tflops * 1e12
    bw = gpu.bandwidth_gbs * 1e9 * row.decode_bw_share
    med = medians(records, _key)
    shapes = {m: _shape(m, folder) for m in FITTED}
    pp_rows, pp_t, tg_rows, tg_t = [], [], [], []
    for (m, fa, depth, test), tps in med.items():
        if m not in FITTED:
            continue
        s, onehot = shapes[m], [1.0 if m == other else 0.0 for other in FITTED]
        if test == "pp":
            pp_rows.append(onehot + ([0.0, s["flops_per_kv"] * (depth + 256), 0.0] if fa else
                                     [s["layers"] / 512, 0.0, s["flops_per_kv"] * (depth + 512)]))
            pp_t.append(1 / tps)
        else:
            cells, zero = s["kv_bytes_per_cell"] * depth / bw, [0.0] * len(FITTED)
            # columns: each model's base with -fa 1, then with -fa 0; the cache's cost with -fa 1, -fa 0
            tg_rows.append(onehot + zero + [cells, 0.0] if fa else zero + onehot + [0.0, cells])
            tg_t.append(1 / tps)
    pp, *_ = np.linalg.lstsq(np.array(pp_rows), np.array(pp_t), rcond=None)
    tg, *_ = np.linalg.lstsq(np.array(tg_rows), np.array(tg_t), rcond=None)
    n = len(FITTED)
    fixed_s, inv_r1, inv_r0 = pp[n:]
    return {"fa_prompt_share": round(float(1 / inv_r1 / fp16), 3),
            "no_fa_prompt_share": round(float(1 / inv_r0 / fp16), 3),
            "no_fa_prompt_layer_share": round(float(fixed_s / (row.layer_us * 1e-6)), 1),
            "fa_decode_kv_cost": round(float(tg[2 * n]), 2), "no_fa_decode_kv_cost": round(float(tg[2 * n + 1]), 2)}


def report(records: list[dict[str, Any]], folder: Path, before: dict[str, Any] | None = None) -> dict[str, Any]:
    med, pred = medians(records, _key), priced(records, folder, _key)
    old = {tuple(r["key"]): r.get("before") for r in (before or {}).get("rows", [])}  # the first pricing, kept
    rows = [{"key": list(k), "fitted": k[0] in FITTED, "measured": round(v, 1), "predicted": round(pred[k], 1),
             "before": old.get(k)} for k, v in sorted(med.items())]
    return {"derived": derive(records, folder), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    d = result["derived"]
    lines = ["# Attention over a filled KV cache, with and without flash attention", "",
             "`python -m benchmarks.attention_depth report` (see its docstring): mainline llama-bench (the vendored "
             "llama.cpp of llama-cpp-python 0.3.36, CUDA sm_90) on one H200, `-ngl 99 -p 512 -n 32 -r 3`, records in "
             "[attention_depth/records.jsonl](attention_depth/records.jsonl), each priced as an imported llama-bench "
             "output.", "",
             "Fitted (llama8b q4_k at depths 0 / 4096 / 8192 / 16384, dense11 q4_k_m at 0 / 4096 / 16384): "
             "prompt attention with flash attention "
             f"at {d['fa_prompt_share']} of the GPU's FP16 tensor peak, without it at {d['no_fa_prompt_share']} plus "
             f"{d['no_fa_prompt_layer_share']} x `layer_us` a layer and ubatch; decode reads the cache in "
             f"{d['fa_decode_kv_cost']} x (flash attention) / {d['no_fa_decode_kv_cost']} x (without) the time its "
             "bytes take at the decode bandwidth (`omni_place/attention.py`).", "",
             "| model | -fa | depth | test | fitted | measured | predicted | before |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    for r in result["rows"]:
        m, fa, depth, test = r["key"]
        err = 100 * (r["predicted"] / r["measured"] - 1)
        was = "-" if r["before"] is None else f"{r['before']:g} ({100 * (r['before'] / r['measured'] - 1):+.0f} %)"
        lines.append(f"| {m} | {fa} | {depth} | {test} | {'yes' if r['fitted'] else 'held out'} | {r['measured']:g} "
                     f"| {r['predicted']:g} ({err:+.0f} %) | {was} |")
    for label, pick in (("fitted", True), ("held out", False)):
        for test in ("pp", "tg"):
            errs = [abs(r["predicted"] / r["measured"] - 1) * 100 for r in result["rows"]
                    if r["fitted"] is pick and r["key"][3] == test]
            olds = [abs(r["before"] / r["measured"] - 1) * 100 for r in result["rows"]
                    if r["fitted"] is pick and r["key"][3] == test and r["before"] is not None]
            if errs:
                lines.append(f"\n{label} {test}: |error| median {statistics.median(errs):.0f} % / max {max(errs):.0f} %"
                             + (f" (before: {statistics.median(olds):.0f} % / {max(olds):.0f} %)" if olds else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.attention_depth", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("report", help="fit the constants and price every record (-> results/attention_depth.{md,json})")
    sub.add_parser("derive", help="print the fitted constants")
    a = ap.parse_args(argv)
    import tempfile

    records = [json.loads(line) for line in RECORDS.read_text().splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        if a.cmd == "derive":
            print(json.dumps(derive(records, Path(tmp)), indent=1))
            return 0
        out = RESULTS / "attention_depth.json"
        before = json.loads(out.read_text()) if out.exists() else None
        result = report(records, Path(tmp), before)
    out.write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "attention_depth.md").write_text(markdown(result))
    print((RESULTS / "attention_depth.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
