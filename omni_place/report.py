"""Terminal rendering of a plan: flags, per-device memory bars, layer map, predicted speed."""
from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import Plan

GiB = 1 << 30
BAR = 40
# Environment variables llama-server reads for each flag (common/arg.cpp set_env).
LLAMA_ENV = {
    "-dev": "LLAMA_ARG_DEVICE",
    "-ngl": "LLAMA_ARG_N_GPU_LAYERS",
    "-ts": "LLAMA_ARG_TENSOR_SPLIT",
    "-ot": "LLAMA_ARG_OVERRIDE_TENSOR",
    "-c": "LLAMA_ARG_CTX_SIZE",
    "-ub": "LLAMA_ARG_UBATCH",
    "-ctk": "LLAMA_ARG_CACHE_TYPE_K",
    "-ctv": "LLAMA_ARG_CACHE_TYPE_V",
    "-fa": "LLAMA_ARG_FLASH_ATTN",
}


def env_lines(args: list[str]) -> list[str]:
    """``export LLAMA_ARG_...=...`` lines equivalent to llama-server flags."""
    out = []
    for flag, value in zip(args[::2], args[1::2]):
        out.append(f"export {LLAMA_ENV[flag]}={shlex.quote(value)}")
    return out


def _bar(weights: int, kv: int, compute: int, capacity: int) -> str:
    if capacity <= 0:
        return ""
    cells = []
    for n, ch in ((weights, "#"), (kv, "k"), (compute, "c")):
        cells.append(ch * round(BAR * n / capacity))
    s = "".join(cells)
    return "[" + (s[:BAR] if len(s) > BAR else s + "." * (BAR - len(s))) + ("]" if len(s) <= BAR else "!")


def render_plan(plan: Plan) -> str:
    m, c = plan.model, plan.context
    lines = [
        f"{m.name} ({m.architecture}, {m.n_layer} layers) on {plan.cluster.name}, ctx {c.ctx}, "
        f"ubatch {c.n_ubatch}, KV {c.type_k}/{c.type_v}, objective {plan.objective}",
        "",
        "llama-server / llama-cli flags:",
        "  " + shlex.join(plan.args("server")),
        "llama-bench flags:",
        "  " + shlex.join(plan.args("bench")),
        "",
        "memory per device (# weights, k KV, c compute, . free; GiB):",
    ]
    for u in plan.usage:
        cap = u.capacity_bytes
        status = "" if u.fits else f"  OVERFLOW by {(u.used_bytes - cap) / GiB:.2f} GiB"
        lines.append(
            f"  {u.name:<8} {_bar(u.weights_bytes, u.kv_bytes, u.compute_bytes, cap)} "
            f"w {u.weights_bytes / GiB:7.2f}  kv {u.kv_bytes / GiB:6.2f}  c {u.compute_bytes / GiB:5.2f}  "
            f"free {u.free_bytes / GiB:7.2f} of {cap / GiB:7.2f}{status}"
        )
    lines += ["", "layer map (attention@device / experts@device):"]
    runs: list[tuple[int, int, str]] = []
    for row in plan.layer_map():
        label = row["device"] + ("" if row["experts"] in (None, row["device"]) else f" / experts {row['experts']}")
        if row["nextn"]:
            label += " (NextN, not loaded)"
        if runs and runs[-1][2] == label and runs[-1][1] == row["layer"] - 1:
            runs[-1] = (runs[-1][0], row["layer"], label)
        else:
            runs.append((row["layer"], row["layer"], label))
    for a, b, label in runs:
        lines.append(f"  {f'{a}-{b}' if a != b else str(a):>9}  {label}")
    lines.append(f"  {'output':>9}  {plan.placement.output}")
    p = plan.predicted
    lines += [
        "",
        f"predicted: decode {p.tg_tps:.1f} tok/s, prompt {p.pp_tps:.0f} tok/s",
        "  decode ms/token: " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in sorted(p.tg_breakdown.items(), key=lambda x: -x[1])),
        "  prompt ms/token: " + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in sorted(p.pp_breakdown.items(), key=lambda x: -x[1])),
    ]
    if not plan.feasible:
        lines.append("DOES NOT FIT: " + "; ".join(plan.notes))
    else:
        lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


__all__ = ["render_plan", "env_lines"]
