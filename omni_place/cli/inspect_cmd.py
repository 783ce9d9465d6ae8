"""`omni-place inspect`: what every tensor and layer of a GGUF model costs."""
from __future__ import annotations

import json

import click

from ..compute import compute_buffer_estimate
from ..model import KV_TYPES, ModelProfile, load_model, role_totals
from ..termtext import printable
from ..units import MiB
from . import cli


def _mib(n: float) -> str:
    return f"{n / MiB:,.1f}"


def _text_report(model: ModelProfile, report: dict) -> str:
    hp = model.hparams
    lines = [
        f"{model.name}  ({model.architecture}, {report['coverage']})  {model.path}"
        + (f"  [{model.n_shards} shards]" if model.n_shards > 1 else ""),
        f"  layers {hp.n_layer}" + (f" (incl. {hp.n_layer_nextn} NextN)" if hp.n_layer_nextn else "")
        + f", n_embd {hp.n_embd}, vocab {hp.n_vocab}"
        + (f", experts {hp.n_expert} (k={hp.n_expert_used})" if hp.n_expert else "")
        + (", MLA" if hp.is_mla else "")
        + (f", SWA {hp.n_swa}" if hp.n_swa else "")
        + (f", {n_rec} recurrent layers" if (n_rec := sum(ly["recurrent"] for ly in report["layers"])) else "")
        + (", tied output" if model.tied_output else ""),
        f"  weights {_mib(report['total_bytes'])} MiB  (input/CPU {_mib(report['input_bytes'])}, "
        f"output {_mib(report['output_bytes'])})",
        f"  KV cache ({report['kv_type']}, ctx {report['ctx']}): {_mib(report['kv_bytes'])} MiB, "
        f"{report['kv_bytes_per_token'] / 1024:,.1f} KiB/token"
        + (f" (incl. the recurrent layers' state, {_mib(report['recurrent_state_bytes'])} MiB whatever the ctx)"
           if report["recurrent_state_bytes"] else ""),
        f"  compute buffers (ubatch {report['compute']['n_tokens']}): a GPU with layers "
        f"{_mib(report['compute']['layers_only']['cuda'])} MiB, with the output head too "
        f"{_mib(report['compute']['cuda_layers_output'])} MiB; the CPU beside it "
        f"{_mib(report['compute']['cuda_host_base'])} MiB; "
        f"the CPU alone {_mib(report['compute']['cpu_layers_output'])} MiB",
        "",
        f"  {'layer':>5} {'dense MiB':>10} {'experts MiB':>12} {'KV MiB':>9} {'CUDA MiB':>9}"
        + ("  (KV MiB: a recurrent layer's state, beside its cache where it attends too)"
           if report["recurrent_state_bytes"] else ""),
    ]
    for ly in report["layers"]:
        cuda = ly["dense_bytes_cuda"] + ly["expert_bytes_cuda"]
        tag = (" nextn" if ly["nextn"] else " attention + recurrent" if ly["recurrent"] and ly["attends"]
               else " recurrent" if ly["recurrent"] else "")
        lines.append(
            f"  {ly['layer']:>5} {_mib(ly['dense_bytes']):>10} {_mib(ly['expert_bytes']):>12} "
            f"{_mib(ly['kv_bytes']):>9} {_mib(cuda):>9}{tag}"
        )
    by_role = role_totals(model.tensors)
    lines += ["", "  by role: " + ", ".join(f"{r} {_mib(b)} MiB"
                                            for r, b in sorted(by_role.items(), key=lambda x: -x[1]))]
    unknown = model.unknown_tensors
    if unknown:
        shown = ", ".join(unknown[:8]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        lines.append(f"  unknown tensors (priced with their layer): {shown}")
    return "\n".join(printable(line) for line in lines)  # names and paths come from the file


@cli.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--ctx", type=click.IntRange(1, 1 << 24), default=4096, show_default=True,
              help="Context length for the KV cache.")
@click.option("--kv-type", type=click.Choice(list(KV_TYPES), case_sensitive=False), default="f16", show_default=True,
              help="KV cache type (-ctk/-ctv).")
@click.option("--ubatch", type=click.IntRange(1, 1 << 16), default=512, show_default=True,
              help="Physical batch size (-ub) for compute buffers.")
@click.option("--flash-attn/--no-flash-attn", default=True, show_default=True,
              help="Flash attention (changes compute buffers and V layout).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def inspect_cmd(model: str, ctx: int, kv_type: str, ubatch: int, flash_attn: bool, fmt: str) -> None:
    """Show what every tensor and layer of MODEL costs: bytes as stored and as allocated on CUDA,
    roles (attention, norms, dense FFN, shared / routed experts, router, NextN), the KV cache per
    layer at --ctx and --kv-type, and the compute buffers for --ubatch.

    MODEL is a .gguf file; for split models pass any shard (*-00001-of-00009.gguf). Only the
    header is read: a header-only file (tensor data cut off) works. MODEL may also be
    hf:OWNER/REPO[:QUANT], an https URL, ollama:NAME or a shipped name (see `plan --help`).

    \b
    Examples:
      omni-place inspect DeepSeek-V3-Q4_K_M-00001-of-00009.gguf --ctx 32768
      omni-place inspect hf:unsloth/DeepSeek-V3.1-GGUF:Q4_K_M
      omni-place inspect model.gguf --kv-type q8_0 --format json | jq .kv_bytes_per_token
    """
    profile = load_model(model)
    report = profile.to_dict(ctx=ctx, kv_type=kv_type.lower(), n_ubatch=ubatch, flash_attn=flash_attn)
    report["compute"] = compute_buffer_estimate(profile, n_ctx=ctx, n_ubatch=ubatch, flash_attn=flash_attn).to_dict()
    if fmt == "json":
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(_text_report(profile, report))


__all__ = ["inspect_cmd"]
