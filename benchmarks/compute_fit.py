"""Fit the compute-buffer model to the engine's dry-run records, and test it on unseen shapes.

Reads the records of ``benchmarks/compute_sweep.py`` (CPU backend and CUDA), turns each into
(device role, per-token widths, engine bytes) rows (:func:`omni_place.compute.features`), and
fits, per backend class and role, a maximum of non-negative linear functions (a
max-affine fit, one piece per phase of the graph (:data:`PHASES`): rows are assigned to the
piece that attains the maximum and each piece is re-fitted by non-negative least squares on
relative error). A quarter of
the random models (``case % 4 == 0``) is held out; the report gives the error on them. A final
per-role scale leaves at most 5 % of the training rows below the engine by more than the target
(max(3 %, 32 MiB)), so that predictions err on the side the planner can afford.

    python -m benchmarks.compute_fit benchmarks/results/compute_sweep_cpu.jsonl \\
        benchmarks/results/compute_sweep_cuda.jsonl          # writes omni_place/data/compute_model.json
"""
from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from omni_place.compute import F32, FEATURES, ROLES, features
from omni_place.model import ModelProfile, Role, load_model
from omni_place.units import MiB
from tests.arch_models import write_model

ROOT = Path(__file__).resolve().parents[1]
MODEL_JSON = ROOT / "omni_place" / "data" / "compute_model.json"
RESULTS = ROOT / "benchmarks" / "results"
UNDER_SHARE = 0.05  # the share of training rows the fit may leave under by more than the target
DEFAULT_N_BATCH = 2048  # llama_context_default_params().n_batch
TOLERANCE_MIB, TOLERANCE_REL = 32.0, 0.03  # the target: within max(3 %, 32 MiB) of the engine


def _profile(cache: dict[str, ModelProfile], tmp: Path, arch: str, shape: dict[str, Any]) -> ModelProfile:
    key = json.dumps([arch, shape], sort_keys=True)
    if key not in cache:
        path = write_model(tmp / f"m{len(cache)}.gguf", arch, header_only=True, tokenizer="spm", **shape)
        cache[key] = load_model(path)
    return cache[key]


def _largest(model: ModelProfile, on_cpu: Any) -> int:
    """Bytes of the largest weight (as CUDA would hold it) among the tensors ``on_cpu`` selects."""
    return max((t.alloc_bytes("cuda") for t in model.tensors if on_cpu(t)), default=0)


def rows_of(rec: dict[str, Any], model: ModelProfile) -> list[tuple[str, str, np.ndarray, float]]:
    """(backend class, role, features, engine bytes) of one record's buffers."""
    # the engine caps n_ubatch at n_batch; the ctypes probe left n_batch at llama.cpp's default
    ubatch = min(rec["n_ubatch"], rec.get("n_batch") or (rec["n_ubatch"] if "fit_print" in rec else DEFAULT_N_BATCH))
    kv = max(model.kv_layer_bytes(rec["n_ctx"], rec["kv_type"], rec["kv_type"], n_seq=1, n_ubatch=ubatch,
                                  flash_attn=rec["flash_attn"]), default=0)
    f = features(model, n_ctx=rec["n_ctx"], n_ubatch=ubatch, flash_attn=rec["flash_attn"],
                 kv_quantized=rec["kv_type"] != "f16", kv_layer_bytes=kv)
    n_tokens = 1.0 / f[0]
    comp, place = rec["compute"], rec["placement"]

    def with_weight(w: int) -> np.ndarray:
        g = f.copy()
        g[FEATURES.index("cpu_weight")] = w / F32 / n_tokens
        return g

    if place == "cpu":
        return [("cpu", "layers_output", f, comp["CPU"])]
    gpu, host = comp.get("CUDA0", 0), comp.get("CUDA_Host", comp.get("CPU", 0))
    if place == "all":
        return [("cuda", "layers_output", f, gpu), ("cuda", "host_base", f, host)]
    if place == "none":
        w = _largest(model, lambda t: t.layer is not None or t.role is Role.OUTPUT)
        return [("cuda", "host_all", f, host), ("cuda", "offload_none", with_weight(w), gpu)]
    if place == "partial":
        cpu_layers = {int(k) for k, v in rec["layer_devices"].items() if v == "CPU"}
        w = _largest(model, lambda t: t.layer in cpu_layers)
        return [("cuda", "host_partial", f, host), ("cuda", "gpu_partial", with_weight(w), gpu)]
    if place == "exps_cpu":
        w = _largest(model, lambda t: t.role is Role.ROUTED_EXPERT)
        return [("cuda", "host_base", f, host), ("cuda", "gpu_exps", with_weight(w), gpu)]
    return []


# Each piece is one phase of the graph and may only use the widths alive in that phase
# (ggml-alloc frees a tensor after its last consumer, so phases do not add up).
PHASES: dict[str, tuple[str, ...]] = {
    # the logits need one block of n_vocab x n_tokens; when the layers' freed blocks are too
    # fragmented for it the allocator grows past their peak, so this phase may use every width
    "output": ("inv_tokens", "embd", "vocab", "mask", "ff", "shexp", "moe", "moe_embd", "n_expert", "q", "kv",
               "mla", "kq", "swa_mask", "indexer", "kv_cast"),
    "ffn": ("inv_tokens", "embd", "ff", "shexp", "mask", "swa_mask", "indexer"),
    "moe": ("inv_tokens", "embd", "moe", "moe_embd", "n_expert", "shexp", "mask", "swa_mask", "indexer"),
    "attention": ("inv_tokens", "embd", "q", "kv", "mla", "kq", "mask", "swa_mask", "indexer", "kv_cast", "kv_layer"),
    "offload": ("inv_tokens", "embd", "cpu_weight", "vocab", "kq", "mask", "kv_cast", "kv_layer"),
}


# the starting multiplicities: what a reading of the graph says is alive at each phase's peak
START: dict[str, dict[str, float]] = {
    "output": {"vocab": 1, "embd": 2},
    "ffn": {"ff": 3, "embd": 3, "shexp": 3, "mask": 1, "swa_mask": 1},
    "moe": {"moe": 3, "moe_embd": 1, "n_expert": 2, "embd": 3, "shexp": 3, "mask": 1, "swa_mask": 1},
    "attention": {"q": 2, "kv": 2, "mla": 2, "kq": 1, "mask": 1, "swa_mask": 1, "embd": 2, "indexer": 1,
                  "kv_cast": 1},
    "offload": {"cpu_weight": 1, "embd": 2, "kq": 1, "mask": 1, "kv_layer": 1},
}
OFFLOAD_ONLY = ("cpu_weight", "kv_layer")  # widths of copies that only op offload makes


def fit_phases(X: np.ndarray, y: np.ndarray, offload: bool, iters: int = 60) -> np.ndarray:
    """A max over :data:`PHASES` of non-negative linear functions of their widths, minimizing the
    relative squared error: rows go to the phase that attains the maximum, each phase is re-fitted
    by NNLS on its rows, until the assignment is stable."""
    masks = np.array([[name in cols for name in FEATURES] for cols in PHASES.values()], dtype=float)
    usable = masks * (X.max(axis=0) > 0)  # a width that is always 0 here cannot be fitted
    if not offload:  # no copies: drop their widths and the phase made of them
        usable[:, [FEATURES.index(name) for name in OFFLOAD_ONLY]] = 0.0
        usable[list(PHASES).index("offload")] = 0.0
    coef = usable * np.array([[START.get(name, {}).get(col, 0.0) for col in FEATURES] for name in PHASES])
    assign = np.argmax(X @ coef.T, axis=1)
    for _ in range(iters):
        for k in range(len(PHASES)):
            rows = assign == k
            cols = usable[k] > 0
            if rows.sum() >= max(3, cols.sum()):
                coef[k] = 0.0
                coef[k, cols] = nnls(X[rows][:, cols] / y[rows, None], np.ones(rows.sum()), maxiter=5000)[0]
        new = np.argmax(X @ coef.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    return coef


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", nargs="+", help="compute_sweep JSONL files")
    ap.add_argument("--rows-cache", help="a pickle of the model profiles (building them writes every model)")
    args = ap.parse_args()
    data: dict[tuple[str, str], list[tuple[int, np.ndarray, float, float]]] = defaultdict(list)
    engines: list[str] = []
    cache: dict[str, ModelProfile] = {}
    cached = Path(args.rows_cache) if args.rows_cache else None
    if cached and cached.exists():
        cache.update(pickle.loads(cached.read_bytes()))
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.records:
            for line in Path(path).read_text().splitlines():
                rec = json.loads(line)
                if "meta" in rec:
                    engines.append(rec["meta"]["engine"])
                    continue
                if not rec["ok"]:
                    continue
                model = _profile(cache, Path(tmp), rec["arch"], rec["shape"])
                for cls, role, f, y in rows_of(rec, model):
                    if y > 0:
                        data[cls, role].append((rec["case"], f, y / F32 * f[0], y))
    if cached:
        cached.write_bytes(pickle.dumps(cache))
    out: dict[str, Any] = {"features": list(FEATURES), "engines": engines, "backends": {}}
    report = []
    for (cls, role), rows in sorted(data.items()):
        test = np.array([case % 4 == 0 for case, *_ in rows])
        X = np.array([f for _, f, _, _ in rows])
        y = np.array([t for _, _, t, _ in rows])
        coef = fit_phases(X[~test], y[~test], offload=role.startswith(("offload", "gpu_")))
        truth = np.array([b for *_, b in rows])
        fitted = np.max(X @ coef.T, axis=1) / X[:, 0] * F32
        tol = np.maximum(TOLERANCE_MIB * MiB, TOLERANCE_REL * truth)
        # the smallest scale that leaves at most UNDER_SHARE of the training rows under the target
        scale = next((float(s) for s in np.arange(0.90, 3.0, 0.01)
                      if np.mean((fitted * s < truth - tol)[~test]) <= UNDER_SHARE), 3.0)
        out["backends"].setdefault(cls, {})[role] = {"pieces": coef.round(6).tolist(), "scale": round(scale, 4)}
        pred = fitted * scale
        for split, sel in (("train", ~test), ("held-out", test)):
            if not sel.any():
                continue
            err = (pred[sel] - truth[sel]) / MiB
            rel = pred[sel] / truth[sel] - 1.0
            ok = np.abs(err) <= np.maximum(TOLERANCE_MIB, TOLERANCE_REL * truth[sel] / MiB)
            report.append({"backend": cls, "role": role, "split": split, "rows": int(sel.sum()),
                           "within_target": round(float(ok.mean()), 3),
                           "under_32mib": int((err < -TOLERANCE_MIB).sum()),
                           "median_rel": round(float(np.median(rel)), 4),
                           "p95_abs_rel": round(float(np.quantile(np.abs(rel), 0.95)), 4),
                           "max_over_mib": round(float(err.max()), 1), "max_under_mib": round(float(-err.min()), 1)})
    if not {r for roles in out["backends"].values() for r in roles} <= set(ROLES):
        raise SystemExit("a fitted role is not in omni_place.compute.ROLES")
    MODEL_JSON.write_text(json.dumps(out, indent=1) + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compute_fit.json").write_text(json.dumps({"records": args.records, "report": report}, indent=1))
    lines = ["| backend | role | split | rows | within max(3 %, 32 MiB) | under by > 32 MiB | median rel. error | "
             "95th pct abs. rel. error | max over MiB | max under MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['backend']} | {r['role']} | {r['split']} | {r['rows']} | {r['within_target']:.1%} | "
              f"{r['under_32mib']} | {r['median_rel']:+.1%} | {r['p95_abs_rel']:.1%} | {r['max_over_mib']} | "
              f"{r['max_under_mib']} |" for r in report]
    (RESULTS / "compute_fit.md").write_text(
        "# Compute-buffer model: fit and held-out error\n\n`python -m benchmarks.compute_fit "
        + " ".join(Path(p).name for p in args.records) + "` (engines: " + "; ".join(sorted(set(engines)))
        + ")\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
