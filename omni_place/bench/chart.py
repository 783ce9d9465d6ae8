"""An SVG bar chart of bench records (measured tok/s per configuration, failures marked)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import final_rows

def svg_chart(records: Sequence[dict[str, Any]], metric: str = "tg") -> str:
    """A grouped bar chart (one group per rig/model/engine, one bar per configuration) of the
    measured ``metric`` tok/s; failed configurations are drawn as an 'OOM'/'fail' mark."""
    rows = final_rows(records)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r['rig']} {r['model']} {r['engine']}", []).append(r)
    colors = {"default": "#9e9e9e", "fit": "#1f77b4", "ot-exps": "#ff7f0e", "ncmoe": "#2ca02c",
              "ngl": "#8c564b", "omni_place": "#d62728"}
    vmax = max([r.get(metric) or 0 for r in rows] + [1.0])
    bw, gap, h, top, left = 22, 30, 260, 40, 60
    width = left + sum(len(g) * bw + gap for g in groups.values()) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + top + 150}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="20" font-size="14">measured {metric} tok/s '
           '(llama-bench, mean of repetitions; error bar = 1 sd)</text>',
           f'<line x1="{left}" y1="{top + h}" x2="{width - 10}" y2="{top + h}" stroke="#000"/>']
    for k in range(5):
        v = vmax * k / 4
        y = top + h - h * k / 4
        out.append(f'<text x="{left - 5}" y="{y + 4:.0f}" text-anchor="end">{v:.0f}</text>'
                   f'<line x1="{left}" y1="{y:.0f}" x2="{width - 10}" y2="{y:.0f}" stroke="#ddd"/>')
    x = left + 10
    for gname, grs in groups.items():
        x0 = x
        for r in grs:
            v = r.get(metric)
            c = colors.get(r["config"], "#555")
            if v:
                bh = h * v / vmax
                out.append(f'<rect x="{x}" y="{top + h - bh:.1f}" width="{bw - 4}" height="{bh:.1f}" fill="{c}">'
                           f'<title>{r["config"]}: {v:.1f}</title></rect>')
                sd = r.get(metric + "_sd") or 0
                if sd:
                    y1, y2 = top + h - h * (v + sd) / vmax, top + h - h * max(0, v - sd) / vmax
                    out.append(f'<line x1="{x + (bw - 4) / 2}" y1="{y1:.1f}" '
                               f'x2="{x + (bw - 4) / 2}" y2="{y2:.1f}" stroke="#000"/>')
                out.append(f'<text x="{x + (bw - 4) / 2}" y="{top + h - bh - 3:.1f}" text-anchor="middle" '
                           f'font-size="9">{v:.0f}</text>')
            else:
                mark = "OOM" if str(r["status"]).startswith("oom") else "fail"
                out.append(f'<text x="{x + (bw - 4) / 2}" y="{top + h - 4}" text-anchor="middle" font-size="8" '
                           f'fill="{c}" transform="rotate(-90 {x + (bw - 4) / 2} {top + h - 4})">{mark}</text>')
            out.append(f'<text x="{x + 6}" y="{top + h + 8}" font-size="9" '
                       f'transform="rotate(60 {x + 6} {top + h + 8})">{r["config"]}</text>')
            x += bw
        out.append(f'<text x="{(x0 + x) / 2:.0f}" y="{top + h + 95}" text-anchor="middle" '
                   f'font-size="10">{gname}</text>')
        x += gap
    out.append("</svg>")
    return "\n".join(out)
