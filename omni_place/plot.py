"""The plan as a picture: a self-contained SVG (no plotting library) with the same content as the
terminal report -- per-device memory bars (weights / KV / compute / free), the layer map (where
each layer's attention + KV cache and its routed experts live) and the predicted tok/s with the
decode-time breakdown.

Every drawn element carries a class (``mem-weights``, ``layer-attn``, ``tg-part``, ...) and
``data-*`` attributes with its numbers, so tests and scripts can read the picture back.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import InvalidArgumentError
from .safeio import write_atomic
from .report import device_symbols, layer_strip

if TYPE_CHECKING:
    from .compare import CompareRow
    from .plan import Plan

GiB = 1 << 30
GENERATOR = "omni-place"
WIDTH = 960
# weights / KV / compute / free, and one colour per device (the CPU grey)
MEM_COLOURS = {"weights": "#4c72b0", "kv": "#dd8452", "compute": "#c44e52", "free": "#e5e5e5"}
DEVICE_COLOURS = ("#4c72b0", "#55a868", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
CPU_COLOUR = "#b0b0b0"
SPLIT_COLOUR = "#f2c14e"
NONE_COLOUR = "#ffffff"


def _el(parent: ET.Element, tag: str, **attrs: object) -> ET.Element:
    # python names -> SVG names: class_ -> class, font_size -> font-size, data_layer -> data-layer
    return ET.SubElement(parent, tag, {k.rstrip("_").replace("_", "-"): str(v) for k, v in attrs.items()})


def _text(parent: ET.Element, x: float, y: float, s: str, size: int = 12, **attrs: object) -> ET.Element:
    t = _el(parent, "text", x=f"{x:.1f}", y=f"{y:.1f}", font_size=size, **attrs)
    t.text = s
    return t


def device_colours(plan: Plan) -> dict[str, str]:
    out, n = {}, 0
    for u in plan.usage:
        if u.kind == "cpu":
            out[u.name] = CPU_COLOUR
        else:
            out[u.name] = DEVICE_COLOURS[n % len(DEVICE_COLOURS)]
            n += 1
    return out


def plan_svg(plan: Plan) -> str:
    """The SVG document (a string) of a plan."""
    m, c, p = plan.model, plan.context, plan.predicted
    colours = device_colours(plan)
    sym = device_symbols(plan)
    by_sym = {s: name for name, s in sym.items()}
    n_layer = m.n_layer
    row_h, left, bar_w = 26, 110, WIDTH - 110 - 250
    mem_top = 70
    map_top = mem_top + row_h * len(plan.usage) + 50
    cell = max(2.0, min(14.0, (WIDTH - left - 30) / max(1, n_layer)))
    speed_top = map_top + 2 * 18 + 70
    height = speed_top + 110

    svg = ET.Element("svg", {"xmlns": "http://www.w3.org/2000/svg", "width": str(WIDTH), "height": str(height),
                             "viewBox": f"0 0 {WIDTH} {height}", "font-family": "sans-serif",
                             "data-generator": GENERATOR})
    _el(svg, "title").text = f"omni-place plan: {m.name} on {plan.cluster.name}"
    _el(svg, "rect", x=0, y=0, width=WIDTH, height=height, fill="#ffffff")
    _text(svg, 10, 24, f"{m.name} ({m.architecture}, {m.n_layer} layers, {m.total_bytes / GiB:.1f} GiB) "
                       f"on {plan.cluster.name}", 15, font_weight="bold")
    _text(svg, 10, 44, f"ctx {c.ctx}, ubatch {c.n_ubatch}, KV {c.type_k}/{c.type_v}, objective {plan.objective}", 12)

    # memory bars
    _text(svg, 10, mem_top - 8, "memory per device (GiB)", 13, font_weight="bold")
    g = _el(svg, "g", id="memory")
    for i, u in enumerate(plan.usage):
        y = mem_top + i * row_h
        cap = max(u.capacity_bytes, u.used_bytes, 1)
        _text(g, 10, y + 15, u.name, 12)
        x = float(left)
        parts = (("weights", u.weights_bytes), ("kv", u.kv_bytes), ("compute", u.compute_bytes),
                 ("free", max(0, u.free_bytes)))
        for kind, n in parts:
            w = bar_w * n / cap
            _el(g, "rect", x=f"{x:.2f}", y=y, width=f"{w:.2f}", height=18, fill=MEM_COLOURS[kind],
                class_=f"mem-{kind}", data_device=u.name, data_bytes=n)
            x += w
        if not u.fits:
            _el(g, "rect", x=left, y=y, width=bar_w, height=18, fill="none", stroke="#c00", stroke_width=2,
                class_="mem-overflow", data_device=u.name)
        _text(g, left + bar_w + 8, y + 14,
              f"w {u.weights_bytes / GiB:.1f}  kv {u.kv_bytes / GiB:.2f}  c {u.compute_bytes / GiB:.2f}  "
              f"free {u.free_bytes / GiB:.1f} / {u.capacity_bytes / GiB:.1f}", 11)
    lx = left
    for kind, colour in MEM_COLOURS.items():
        _el(svg, "rect", x=lx, y=map_top - 40, width=10, height=10, fill=colour)
        _text(svg, lx + 14, map_top - 31, kind, 11)
        lx += 90

    # layer map
    _text(svg, 10, map_top - 8, "layer map", 13, font_weight="bold")
    attn, exps = layer_strip(plan)
    g = _el(svg, "g", id="layers")
    for r, (label, row, cls) in enumerate((("attn + KV", attn, "layer-attn"), ("experts", exps, "layer-experts"))):
        y = map_top + r * 18
        _text(g, 10, y + 12, label, 12)
        for il, ch in enumerate(row):
            if ch == "n":
                fill, where = NONE_COLOUR, "NextN (not loaded)"
            elif ch == "-":
                fill, where = NONE_COLOUR, "no routed experts"
            elif ch == "m":
                fill, where = SPLIT_COLOUR, plan.layer_map()[il]["experts"]
            else:
                where = by_sym[ch]
                fill = colours[where]
            rect = _el(g, "rect", x=f"{left + il * cell:.2f}", y=y, width=f"{max(cell - 0.5, 1):.2f}", height=15,
                       fill=fill, stroke="#999999", stroke_width=0.3, class_=cls, data_layer=il, data_device=where)
            _el(rect, "title").text = f"layer {il}: {where}"
    y = map_top + 2 * 18 + 14
    for il in range(0, n_layer, 10):
        _text(g, left + il * cell, y, str(il), 10)
    lx = left
    for name, colour in list(colours.items()) + [("experts split with CPU", SPLIT_COLOUR)]:
        _el(svg, "rect", x=lx, y=y + 10, width=10, height=10, fill=colour, stroke="#999999", stroke_width=0.3)
        _text(svg, lx + 14, y + 19, name, 11)
        lx += 24 + 7 * len(name)
    _text(svg, lx + 10, y + 19, f"output: {plan.placement.output}", 11)

    # predicted speed + decode breakdown
    _text(svg, 10, speed_top, f"predicted: decode {p.tg_tps:.1f} tok/s, prompt {p.pp_tps:.0f} tok/s", 14,
          font_weight="bold", id="predicted", data_tg_tps=f"{p.tg_tps:.3f}", data_pp_tps=f"{p.pp_tps:.3f}")
    for r, (label, breakdown, cls) in enumerate((("decode ms/token", p.tg_breakdown, "tg-part"),
                                             ("prompt ms/token", p.pp_breakdown, "pp-part"))):
        y = speed_top + 14 + r * 40
        _text(svg, 10, y + 13, label, 12)
        total = sum(breakdown.values()) or 1.0
        x = float(left)
        for i, (k, v) in enumerate(sorted(breakdown.items(), key=lambda kv: -kv[1])):
            w = (WIDTH - left - 30) * v / total
            _el(svg, "rect", x=f"{x:.2f}", y=y, width=f"{w:.2f}", height=18,
                fill=colours.get(k, DEVICE_COLOURS[(i + 3) % len(DEVICE_COLOURS)]), class_=cls,
                data_part=k, data_ms=f"{v * 1e3:.4f}")
            if w > 60:
                _text(svg, x + 3, y + 13, f"{k} {v * 1e3:.2f}", 10, fill="#ffffff")
            x += w
    ET.indent(svg)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"


def _ours(path: Path) -> bool:
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return False
    return f'data-generator="{GENERATOR}"'.encode() in head


def write_plot(plan: Plan, path: str | os.PathLike[str]) -> Path:
    """Write the plan's SVG to ``path``. An existing file is replaced only when it is an earlier
    omni-place picture; anything else is left alone (InvalidArgumentError)."""
    return write_svg(plan_svg(plan), path, "--plot", "plan.svg")


def write_svg(svg: str, path: str | os.PathLike[str], option: str = "--plot", example: str = "plan.svg") -> Path:
    """Write an SVG document to ``path``, replacing only an earlier omni-place picture."""
    path = Path(path)
    if path.suffix.lower() != ".svg":
        raise InvalidArgumentError(f"{option} {path}: the picture is SVG", hint=f"name it like {example}")
    if path.is_dir() or (path.exists() and not _ours(path)):
        raise InvalidArgumentError(f"{option} {path}: the file exists and is not an omni-place picture",
                                   hint="remove it or choose another name; omni-place never overwrites other files")
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"{option} {path}: folder {path.parent} does not exist")
    written = write_atomic(path, lambda tmp: tmp.write_text(svg, encoding="utf-8"))
    written.chmod(0o644)  # a picture to share, not a private file (mkstemp creates 0600)
    return written


def compare_svg(rows: Sequence[CompareRow], picks: Mapping[Any, CompareRow | None] | None = None,
                min_tg: float | None = None) -> str:
    """A grouped bar chart of a comparison: decode (top) and prompt (bottom) tok/s per model, one
    bar per setting (cluster, ctx, KV, engine) in the plan picture's colours; a setting that does
    not fit is an empty outlined bar marked ``x``, --best's picks are outlined in black, and
    ``--min-tg`` is a dashed line. Bars carry ``class="bar"`` and ``data-*`` with their numbers."""
    models = list(dict.fromkeys(r.label for r in rows))
    settings = list(dict.fromkeys(r.setting for r in rows))
    chosen = {id(r) for r in (picks or {}).values() if r is not None}
    colour = {s: DEVICE_COLOURS[i % len(DEVICE_COLOURS)] for i, s in enumerate(settings)}
    left, panel_h, top, gap = 70, 220, 60, 60
    legend_h = 18 * len(settings)
    height = top + 2 * (panel_h + gap) + legend_h + 20
    svg = ET.Element("svg", {"xmlns": "http://www.w3.org/2000/svg", "width": str(WIDTH), "height": str(height),
                             "viewBox": f"0 0 {WIDTH} {height}", "font-family": "sans-serif",
                             "data-generator": GENERATOR})
    _text(svg, left, 28, "omni-place compare: predicted tok/s", 16, font_weight="bold")
    group_w = (WIDTH - left - 20) / max(1, len(models))
    bar_w = max(2.0, min(40.0, (group_w - 16) / max(1, len(settings))))
    for p, (key, title) in enumerate((("tg_tps", "decode tok/s"), ("pp_tps", "prompt tok/s"))):
        y0 = top + p * (panel_h + gap)
        vals = [getattr(r, key) or 0.0 for r in rows]
        vmax = max([*vals, (min_tg or 0.0) * (key == "tg_tps"), 1e-9]) * 1.1
        _text(svg, 8, y0 + 12, title, 12, font_weight="bold")
        _el(svg, "line", x1=left, y1=y0 + panel_h, x2=WIDTH - 20, y2=y0 + panel_h, stroke="#333333")
        _text(svg, left - 6, y0 + 10, f"{vmax / 1.1:.1f}", 10, text_anchor="end")
        for r in rows:
            gi, si = models.index(r.label), settings.index(r.setting)
            x = left + gi * group_w + 8 + si * bar_w
            v = getattr(r, key) or 0.0
            h = panel_h * v / vmax
            attrs: dict[str, object] = dict(class_="bar", data_model=r.model, data_cluster=r.cluster, data_ctx=r.ctx,
                                            data_kv=r.kv_type, data_engine=r.engine, data_fits=str(r.fits).lower(),
                                            data_metric=key, data_value=f"{v:.3f}",
                                            data_best=str(id(r) in chosen).lower())
            if r.fits:
                _el(svg, "rect", x=f"{x:.1f}", y=f"{y0 + panel_h - h:.1f}", width=f"{bar_w - 2:.1f}", height=f"{h:.1f}",
                    fill=colour[r.setting], stroke="#000000" if id(r) in chosen else "none", stroke_width=2, **attrs)
            else:
                _el(svg, "rect", x=f"{x:.1f}", y=f"{y0 + panel_h - 14:.1f}", width=f"{bar_w - 2:.1f}", height="14",
                    fill=NONE_COLOUR, stroke=colour[r.setting], **attrs)
                _text(svg, x + (bar_w - 2) / 2, y0 + panel_h - 3, "x", 10, text_anchor="middle")
        if key == "tg_tps" and min_tg:
            y = y0 + panel_h - panel_h * min_tg / vmax
            _el(svg, "line", x1=left, y1=f"{y:.1f}", x2=WIDTH - 20, y2=f"{y:.1f}", stroke="#c44e52",
                stroke_dasharray="6,4", class_="min-tg", data_value=min_tg)
            _text(svg, WIDTH - 22, y - 4, f">= {min_tg:g} tok/s", 10, text_anchor="end", fill="#c44e52")
        for gi, m in enumerate(models):
            _text(svg, left + gi * group_w + group_w / 2, y0 + panel_h + 16, m, 11, text_anchor="middle")
    y = top + 2 * (panel_h + gap) - 10
    for s in settings:
        _el(svg, "rect", x=left, y=y, width=12, height=12, fill=colour[s])
        _text(svg, left + 18, y + 11, f"{s[0]}, ctx {s[1]}, KV {s[2]}, {s[3]}", 11)
        y += 18
    ET.indent(svg)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(svg, encoding="unicode") + "\n"


__all__ = ["compare_svg", "plan_svg", "write_plot", "write_svg"]
