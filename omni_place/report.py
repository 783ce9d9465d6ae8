"""Terminal rendering of a plan: flags, per-device memory bars, layer map, predicted speed; and
its environment form."""
from __future__ import annotations

import shlex
from typing import Any

from .engines.common import format_share
from .objective import SPLIT_MODE_MARGIN
from .plan import Plan
from .splitcost import PARALLEL_MODES
from .termtext import printable
from .units import GiB, MiB

BAR = 40
STRIP = 64  # layers per line of the layer strip
MAX_RUNS = 12  # list the layer ranges too when there are at most this many


def env_lines(plan: Plan) -> list[str]:
    """``export NAME=value`` lines of the plan's environment form, after the dialect's note."""
    note = plan.dialect.env_note
    return ([f"# {note}"] if note else []) + [printable(f"export {k}={shlex.quote(v)}") for k, v in plan.env().items()]


def _bar(weights: int, kv: int, compute: int, capacity: int, overflow: bool = False) -> str:
    """``[###kkc....]``: each part rounded by the largest remainder so the cells add up; ``!``
    closes the bar only when the device overflows (CPU weights beyond RAM page from disk: full
    bar, no ``!``)."""
    if capacity <= 0:
        return ""
    parts = [weights, kv, compute]
    used = sum(parts)
    total = min(BAR, round(BAR * used / capacity)) if used <= capacity else BAR
    exact = [BAR * n / max(capacity, used) for n in parts]
    cells = [int(x) for x in exact]
    for i in sorted(range(3), key=lambda i: exact[i] - cells[i], reverse=True)[: max(0, total - sum(cells))]:
        cells[i] += 1
    s = "".join(ch * n for ch, n in zip("#kc", cells))
    return "[" + s + "." * (BAR - len(s)) + ("!" if overflow else "]")


def device_symbols(plan: Plan) -> dict[str, str]:
    """One character per device for the layer strip: accelerators 0-9 then a-z, the CPU 'C'."""
    out: dict[str, str] = {}
    n = 0
    for u in plan.usage:
        if u.kind == "cpu":
            out[u.name] = "C"
        else:
            out[u.name] = "0123456789abdefghijklopqrstuvwxyz"[n] if n < 33 else "?"
            n += 1
    return out


def layer_strip(plan: Plan) -> tuple[str, str]:
    """(attention/KV row, experts row) with one character per layer slot."""
    sym = device_symbols(plan)
    attn, exps = [], []
    for row in plan.layer_map():
        attn.append("n" if row["nextn"] else sym.get(row["device"], "?"))
        e = row["experts"]
        if row["nextn"]:
            exps.append("n")
        elif e is None:
            exps.append("-")
        elif e in sym:
            exps.append(sym[e])
        else:
            exps.append("m")  # split: expert kinds on more than one device (the layer's, the CPU, another GPU)
    return "".join(attn), "".join(exps)


def _runs(plan: Plan) -> list[tuple[int, int, str]]:
    runs: list[tuple[int, int, str]] = []
    for row in plan.layer_map():
        label = row["device"] + ("" if row["experts"] in (None, row["device"]) else f" / experts {row['experts']}")
        if row["nextn"]:
            label += " (NextN, not loaded)"
        if runs and runs[-1][2] == label and runs[-1][1] == row["layer"] - 1:
            runs[-1] = (runs[-1][0], row["layer"], label)
        else:
            runs.append((row["layer"], row["layer"], label))
    return runs


def _ruler(a: int, b: int) -> str:
    """Layer numbers at every tenth column of [a, b)."""
    out = [" "] * (b - a)
    for i in range(a, b):
        if i % 10 == 0 and i - a + len(str(i)) <= b - a:
            out[i - a: i - a + len(str(i))] = str(i)
    return "".join(out)


def _breakdown(parts: dict[str, float], digits: int) -> str:
    total = sum(parts.values()) or 1.0
    return ", ".join(f"{k} {v * 1e3:.{digits}f} ({100 * v / total:.0f}%)"
                     for k, v in sorted(parts.items(), key=lambda x: -x[1]))


def render_plan(plan: Plan) -> str:
    m, c = plan.model, plan.context
    lines = [
        f"{m.name} ({m.architecture}, {m.n_layer} layers, {m.total_bytes / GiB:.1f} GiB) on {plan.cluster.name}, "
        f"ctx {c.ctx}, ubatch {c.n_ubatch}, KV {c.type_k}/{c.type_v}, objective {plan.objective}",
        "",
        f"{plan.engine} commands (run the rpc-servers first):" if len(plan.host_commands()) > 1
        else f"{plan.engine} command:",
        *[f"  [{h.host}] {h.shell()}" if h.host != "local" else f"  {h.shell()}" for h in plan.host_commands()],
    ]
    bench = plan.to_dict()["bench_args"]
    if bench is not None:
        lines += ["llama-bench flags:", "  " + shlex.join(bench)]
    lines += [
        "",
        "memory per device (# weights, k KV cache, c compute buffers, . free; GiB):",
    ]
    for u in plan.usage:
        cap = u.capacity_bytes
        status = "" if u.fits else f"  OVERFLOW by {(u.used_bytes - cap) / GiB:.2f} GiB"
        lines.append(
            f"  {u.name:<8} {_bar(u.weights_bytes, u.kv_bytes, u.compute_bytes, cap, not u.fits)} "
            f"w {u.weights_bytes / GiB:7.2f}  kv {u.kv_bytes / GiB:6.2f}  c {u.compute_bytes / GiB:5.2f}  "
            f"free {u.free_bytes / GiB:7.2f} of {cap / GiB:7.2f}{status}"
        )
    sym = device_symbols(plan)
    attn, exps = layer_strip(plan)
    legend = ", ".join(f"{s} {name}" for name, s in sym.items())
    lines += ["", f"layer map (a column per layer: {legend}; m experts split over devices, - no experts, "
                  "n NextN slot):"]
    for start in range(0, len(attn), STRIP):
        ruler = _ruler(start, min(len(attn), start + STRIP))
        lines += [f"  {'layer':<9}{ruler}",
                  f"  {'attn+KV':<9}{attn[start:start + STRIP]}",
                  f"  {'experts':<9}{exps[start:start + STRIP]}"]
    lines.append(f"  {'output':<9}{plan.placement.output}")
    if c.split_mode in PARALLEL_MODES:
        shares = ":".join(format_share(x) for x in c.split_shares)
        lines.append(f"  {'split':<9}-sm {c.split_mode}: every GPU layer and the output head split across "
                     f"{', '.join(plan.placement.order)} by {shares} (shown as {plan.placement.order[0]})")
    runs = _runs(plan)
    if len(runs) <= MAX_RUNS:  # short enough to list; the strip above always shows everything
        lines += [f"  {f'{a}-{b}' if a != b else str(a):>9}  {label}" for a, b, label in runs]
    p = plan.predicted
    lines += [
        "",
        f"predicted: decode {p.tg_tps:.1f} tok/s, prompt {p.pp_tps:.0f} tok/s",
        "  decode ms/token: " + _breakdown(p.tg_breakdown, 2),
        "  prompt ms/token: " + _breakdown(p.pp_breakdown, 3),
    ]
    if not plan.feasible:
        lines.append("DOES NOT FIT: " + "; ".join(plan.notes))
    else:
        lines += [f"note: {n}" for n in plan.notes]
    lines += [f"assumed: {a}" for a in plan.assumptions]
    lines += _certified_lines(plan.certified)
    lines += compared_lines(plan)
    lines += split_mode_lines(plan)
    lines += alternative_lines(plan)
    # model, cluster and device names, paths and notes come from files: one printable line each
    return "\n".join(printable(line) for line in lines)


def split_mode_lines(plan: Plan) -> list[str]:
    """The plan's split-mode comparison: each -sm mode's predicted speeds, or why the engine
    refuses it here, and which one the plan took."""
    rows = plan.split_modes
    if len(rows) < 2:
        return []
    out = ["", f"split modes (tok/s; a parallel mode is taken only when better by more than "
               f"{SPLIT_MODE_MARGIN:.0%} on the objective: its all-reduce cost is an unmeasured prior):",
           f"  {'mode':<8}{'fits':>5}{'decode':>8}{'prompt':>8}  shares"]
    for r in rows:
        mark = "  <- plan" if r["chosen"] else ""
        if r["refused"]:
            out.append(f"  {r['mode']:<8}{'-':>5}{'':>8}{'':>8}  refused: {r['refused']}")
            continue
        shares = ",".join(format_share(x) for x in r["shares"]) if r["shares"] else ""
        out.append(f"  {r['mode']:<8}{'yes' if r['feasible'] else 'no':>5}{r['tg_tps']:8.1f}{r['pp_tps']:8.0f}  "
                   f"{shares}{mark}")
    return out


def _certified_lines(cert: dict[str, Any] | None) -> list[str]:
    """What the engine's own dry run said of the plan (``omni_place.llama.certify``)."""
    if not cert:
        return []
    if cert.get("status") != "certified":
        return [f"not certified by the engine: {cert.get('reason')}"]
    out = [f"certified by {cert['by']} ({cert['dry_runs']} no-alloc dry run{'s' if cert['dry_runs'] != 1 else ''}):"]
    for name, d in cert["devices"].items():
        if d.get("compute_engine_bytes") is None:
            continue
        out.append(f"  {name:<8} compute {d['compute_engine_bytes'] / MiB:.1f} MiB (estimated "
                   f"{d['compute_estimated_bytes'] / MiB:.1f}), free {d['free_bytes'] / GiB:.2f} GiB")
    return out


def _vs(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:+.0%}" if abs(ratio) >= 0.005 else "0%"


def compared_lines(plan: Plan) -> list[str]:
    """"plan vs recipes": each recipe priced on the plan's context, with its speeds relative to
    the plan's (the plan is at least as good on its objective as every one that fits)."""
    if not plan.compared:
        return []
    p = plan.predicted
    rows = [("plan (this one)", "yes", f"{p.tg_tps:.1f}", "", f"{p.pp_tps:.0f}", "", "")]
    for c in plan.compared:
        if c["error"]:
            rows.append((c["label"], "-", "", "", "", "", c["error"]))
            continue
        rows.append((c["label"], "yes" if c["feasible"] else "NO", f"{c['tg_tps']:.1f}", _vs(c["tg_vs_plan"]),
                     f"{c['pp_tps']:.0f}", _vs(c["pp_vs_plan"]), shlex.join(c["args"])))
    head = ("", "fits", "decode", "vs plan", "prompt", "vs plan", "flags")
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(6)]
    out = ["", f"plan vs recipes (tok/s, same context; objective {plan.objective}):"]
    for r in [head, *rows]:
        out.append(("  " + "  ".join(f"{v:<{width[i]}}" if i == 0 else f"{v:>{width[i]}}" for i, v in enumerate(r[:6]))
                    + f"  {r[6]}").rstrip())
    return out


def alternative_lines(plan: Plan) -> list[str]:
    """The tg/pp frontier (``--alternatives``): no plan below is faster at both."""
    if not plan.alternatives:
        return []
    n = len(plan.alternatives)
    out = ["", f"alternatives (tg/pp frontier, {n} plan{'s' if n != 1 else ''}; * this plan):"]
    for a in plan.alternatives:
        mark = "*" if a["chosen"] else " "
        out.append(f"  {mark} decode {a['tg_tps']:7.1f}  prompt {a['pp_tps']:7.0f}  {a['source']}")
        out.append(f"      {shlex.join(a['args'])}")
    return out


def plot_data(plan: Plan) -> dict[str, Any]:
    """What the picture shows, engine-neutral (used by :mod:`omni_place.plot`)."""
    attn, exps = layer_strip(plan)
    return {"symbols": device_symbols(plan), "attn": attn, "experts": exps}


__all__ = ["alternative_lines", "compared_lines", "device_symbols", "env_lines", "layer_strip", "render_plan"]
