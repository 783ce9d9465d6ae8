"""`omni-place compare`: one table (and an SVG chart) of the what-ifs."""
from __future__ import annotations

import click

from ..compare import best, compare, expand_models, render_table, to_json
from ..engines import ENGINES
from ..errors import InvalidArgumentError, NothingFitsError
from ..hparams import MAX_CONTEXT
from ..model import KV_TYPES
from ..validate import integer
from . import cli
from .params import FiniteFloat


def _items(values: tuple[str, ...]) -> list[str]:
    """Repeated and comma-separated option values, in order, without repeats."""
    return list(dict.fromkeys(v.strip() for value in values for v in value.split(",") if v.strip()))


@cli.command("compare")
@click.argument("models", nargs=-1, required=True)
@click.option("--quant", "quants", multiple=True,
              help="Quants of each hf:OWNER/REPO to compare: Q4_K_M,IQ3_XXS,Q2_K or `all`.")
@click.option("--preset", "presets", multiple=True, help="A shipped cluster preset (repeatable).")
@click.option("--cluster", "cluster_files", multiple=True, type=click.Path(dir_okay=False),
              help="A cluster TOML file (repeatable), e.g. your rig with one more GPU.")
@click.option("--ctx", "ctxs", multiple=True, help="Context lengths (repeatable or comma-separated).  [default: 4096]")
@click.option("--kv-type", "kv_types", multiple=True,
              help=f"KV cache types ({', '.join(KV_TYPES)}; repeatable or comma-separated).  [default: f16]")
@click.option("--engine", "engines", multiple=True, type=click.Choice(list(ENGINES)),
              help="Engines (repeatable).  [default: llama.cpp]")
@click.option("--allow-paging", is_flag=True, help="Let CPU-held weights beyond RAM page from disk (priced).")
@click.option("--best", "want_best", is_flag=True,
              help="Name, per cluster/ctx/KV/engine, the highest-quality quant that fits at >= --min-tg tok/s.")
@click.option("--min-tg", type=FiniteFloat(0, 1e6), default=0.0, show_default=True,
              help="Decode tok/s --best requires.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also write the comparison as an SVG chart (decode and prompt tok/s per model and setting).")
def compare_cmd(models: tuple[str, ...], quants: tuple[str, ...], presets: tuple[str, ...],
                cluster_files: tuple[str, ...], ctxs: tuple[str, ...], kv_types: tuple[str, ...],
                engines: tuple[str, ...], allow_paging: bool, want_best: bool, min_tg: float, fmt: str,
                plot_path: str | None) -> None:
    """Plan every combination of MODELs (or --quant of a Hub repository), clusters, contexts, KV
    types and engines; print one table of fits / predicted decode and prompt tok/s / layers on
    GPUs, and with --best the highest-quality quant that fits at >= --min-tg tok/s decode.

    MODEL is anything `plan` takes: hf:OWNER/REPO[:QUANT], an https URL, ollama:NAME, a .gguf or
    a shipped name. Only headers are read (a few MB per shard, cached). Quality is bits per
    weight of the quant (Q8_0 > Q6_K > Q4_K_M > IQ3_XXS > Q2_K ...).

    Exit codes: 0 the table, 2 bad input, 3 with --best when no setting has an answer.

    \b
    Examples:
      omni-place compare hf:unsloth/DeepSeek-V3.1-GGUF --quant Q4_K_M,IQ3_XXS,Q2_K --preset seed
      omni-place compare hf:unsloth/DeepSeek-V3.1-GGUF --quant all --preset seed --cluster seed+pro6000.toml \\
          --best --min-tg 15 --plot compare.svg
      omni-place compare hf:Qwen/Qwen3-235B-A22B-GGUF:Q4_K_M --preset seed --ctx 8192,32768 --kv-type f16,q8_0
    """
    clusters = list(presets) + list(cluster_files) or ["auto"]
    ctx_values = [integer(c, "--ctx", lo=1, hi=MAX_CONTEXT) for c in _items(ctxs)] or [4096]
    kvs = [k.lower() for k in _items(kv_types)] or ["f16"]
    bad = [k for k in kvs if k not in KV_TYPES]
    if bad:
        raise InvalidArgumentError(f"--kv-type {bad[0]!r} is not a KV cache type", hint="one of " + ", ".join(KV_TYPES))
    rows = compare(expand_models(list(models), _items(quants)), clusters, ctxs=ctx_values, kv_types=kvs,
                   engines=list(dict.fromkeys(engines)) or ["llama.cpp"], allow_paging=allow_paging)
    picks = best(rows, min_tg) if want_best else None
    if plot_path:
        from ..plot import compare_svg, write_svg

        write_svg(compare_svg(rows, picks, min_tg if want_best else None), plot_path, "--plot", "compare.svg")
    click.echo(to_json(rows, picks, min_tg) if fmt == "json" else render_table(rows, picks, min_tg))
    if picks is not None and not any(picks.values()):
        raise NothingFitsError(f"no quant fits at >= {min_tg:g} tok/s decode in any setting",
                               hint="lower --min-tg, add devices, or compare smaller quants")


__all__ = ["compare_cmd"]
