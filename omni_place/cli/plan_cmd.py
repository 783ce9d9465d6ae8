"""`omni-place plan` and `omni-place check`."""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

import click

from ..engines import ENGINES, LLAMA_FAMILY, traits
from ..engines.common import flag_groups
from ..engines.llama_cpp import FLAG_ALIASES
from ..errors import InvalidArgumentError, NothingFitsError
from ..model import KV_TYPES, ModelProfile, load_model
from ..objective import parse_objective
from ..plan import Plan, evaluate, plan_split
from ..sources import is_header_copy
from ..report import env_lines, render_plan
from ..termtext import printable
from . import cli

DEFAULT_MODEL = "deepseek-v3.2"


def resolve_model(model: str | None) -> ModelProfile:
    """MODEL in any form :func:`load_model` takes (a path, a shipped name, hf:, a URL, ollama:)."""
    return load_model(DEFAULT_MODEL if model is None else model)


def cluster_option(f):  # noqa: ANN001, ANN201 - click decorator
    f = click.option("--preset", help="A shipped cluster preset (e.g. seed); see `omni-place devices --help`.")(f)
    f = click.option("--cluster", "cluster_file", type=click.Path(dir_okay=False),
                     help="A cluster TOML file.")(f)
    return f


def _cluster_spec(cluster_file: str | None, preset: str | None) -> str:
    if cluster_file and preset:
        raise InvalidArgumentError("--cluster and --preset are exclusive", hint="give one of them")
    return cluster_file or preset or "auto"


def _split_flags(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as err:
        raise InvalidArgumentError(f"--vs {text!r} is not a shell-quoted flag list: {err}",
                                   hint='quote the whole list, e.g. --vs "-ngl 99 -ot exps=CPU"') from None


def _emit(plan: Plan, fmt: str, tool: str) -> None:
    if fmt == "json":
        click.echo(plan.to_json())
    elif fmt == "args":  # shell words: for eval, or to paste; $(...) alone would keep the quotes
        click.echo(shlex.join(plan.args(tool)))
    elif fmt == "argv":  # one argument per line: mapfile -t / xargs -d '\n' take them as they are
        args = plan.args(tool)
        if any("\n" in a for a in args):
            raise InvalidArgumentError("a flag of this plan holds a newline, which --format argv cannot carry",
                                       hint="use --format args with eval, or --format json")
        click.echo("\n".join(args))
    elif fmt == "env":
        click.echo("\n".join(env_lines(plan)))
    else:
        click.echo(render_plan(plan))


class _ExecCommand(click.Command):
    """A command whose argv after ``--`` is the engine command line of ``--exec`` (kept out of
    click's parsing, so MODEL stays optional and engine flags are never taken for ours)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta["omni_place.engine_argv"] = args[i + 1:]
            args = args[:i]
        return super().parse_args(ctx, args)


def _flag_key(tok: str) -> str | None:
    """The placement/context key of a llama.cpp flag (any alias, ``--flag=value`` too)."""
    flag = tok.partition("=")[0] if tok.startswith("--") else tok
    return FLAG_ALIASES.get(flag) or {"-m": "model", "--model": "model"}.get(flag)


def exec_argv(plan: Plan, engine_argv: list[str], model_path: Path | None) -> tuple[list[str], list[str]]:
    """The engine command: ``ENGINE [-m MODEL] <plan flags> <user args>``, and notes for stderr.

    The user's explicit flags win: a plan flag the user also gives (by any alias) is dropped, so
    llama.cpp sees one value. ``-cmoe``/``-ncmoe`` from the user add CPU overrides on top of the
    plan's (the plan's memory check did not include them)."""
    engine, user = engine_argv[0], engine_argv[1:]
    user_keys = {k for k in map(_flag_key, user) if k}
    notes = []
    plan_args = plan.args("server")
    kept: list[str] = []
    for flag, *value in flag_groups(plan_args):
        if _flag_key(flag) in user_keys:
            notes.append(f"your {flag} replaces the plan's {' '.join([flag, *value])} "
                         "(the plan's memory check assumed it)")
        else:
            kept += [flag, *value]
    if user_keys & {"cmoe", "ncmoe"}:
        notes.append("--cpu-moe/--n-cpu-moe add CPU overrides on top of the plan's placement")
    head = [engine]
    if "model" not in user_keys:
        if model_path is None:
            raise InvalidArgumentError("the plan is for a header-only model (shipped or remote): the engine "
                                       "needs the real file",
                                       hint="give the .gguf as MODEL, or pass -m /path/to/model.gguf after --")
        head += ["-m", str(model_path)]
    return head + kept + user, notes


@cli.command("plan", cls=_ExecCommand)
@click.argument("model", required=False)
@cluster_option
@click.option("--ctx", type=click.IntRange(1, 1 << 24), default=4096, show_default=True, help="Context length (-c).")
@click.option("--ubatch", type=click.IntRange(1, 65536), default=512, show_default=True, help="Physical batch (-ub).")
@click.option("--kv-type", type=click.Choice(list(KV_TYPES), case_sensitive=False), default="f16", show_default=True)
@click.option("--no-flash-attn", is_flag=True, help="Plan for -fa off (bigger compute buffers).")
@click.option("--objective", default="balanced", show_default=True,
              help="balanced (the best decode within 80 % of the best prompt speed), tg (decode tok/s), pp (prompt "
                   "tok/s) or a weight 0..1 on decode.")
@click.option("--alternatives", type=click.IntRange(0, 10), default=0, show_default=True, metavar="N",
              help="Also list up to N plans of the decode/prompt Pareto frontier (3-5 is a good number), with flags.")
@click.option("--vs", "vs_flags", metavar="FLAGS",
              help='Price your own placement flags beside the plan, e.g. --vs "-ngl 99 -ncmoe 30" (the engine\'s '
                   "dialect; the plan's context); the plan takes them if they are better.")
@click.option("--depth", type=click.IntRange(0, 1 << 24), default=0, show_default=True,
              help="Tokens already in context when decoding (llama-bench -d).")
@click.option("--engine", type=click.Choice(list(ENGINES)), default="llama.cpp", show_default=True,
              help="Whose flags to print: mainline llama.cpp, ik_llama.cpp, or vLLM pipeline stages.")
@click.option("--allow-paging", is_flag=True,
              help="Let CPU-held weights beyond RAM page from disk (mmap; priced at the CPU's disk_gbs) instead of "
                   "refusing the plan.")
@click.option("--pin/--no-pin", "pin_weights", default=True, show_default=True,
              help="May load without mmap (-lm none; ik: --no-mmap) so that CPU-held weights sit in pinned memory "
                   "and prompt batches copy them to the GPU at link speed; taken only when the objective gains "
                   "over 10 % and RAM holds them (they cannot page). --no-pin keeps mmap.")
@click.option("--split-modes/--no-split-modes", "split_modes", default=True, show_default=True,
              help="Price the engine's parallel split modes (-sm tensor; ik -sm graph) beside the layer split and "
                   "take one that predicts over 15 % better (unmeasured on GPUs); --no-split-modes: layer split.")
@click.option("--tool", type=click.Choice(["server", "bench"]), default="server", show_default=True,
              help="Flag dialect for --format args: llama-server/cli or llama-bench.")
@click.option("--format", "fmt", type=click.Choice(["text", "args", "argv", "json", "env"]), default="text",
              show_default=True, help="args: the flags as shell words (eval-safe); argv: one flag per line "
                                      "(mapfile -t); json: everything; env: LLAMA_ARG_* variables.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also write the plan as an SVG picture (memory bars, layer map, speed).")
@click.option("--verify", "do_verify", is_flag=True,
              help="Then load the plan through your libllama and compare engine and plan (exit 4 if they disagree).")
@click.option("--certify/--no-certify", "certify_plan", default=True, show_default=True,
              help="Where libllama and the plan's devices are here, size the plan with the engine's own no-alloc dry "
                   "run and tighten it to the measured compute buffers (a few runs of about a second).")
@click.option("--exec", "do_exec", is_flag=True,
              help="Run the engine command given after `--` with the plan's flags (the plan is printed to stderr).")
def plan_cmd(model: str | None, cluster_file: str | None, preset: str | None, ctx: int, ubatch: int,
             kv_type: str, no_flash_attn: bool, objective: str, depth: int, engine: str, tool: str, fmt: str,
             plot_path: str | None, do_verify: bool, do_exec: bool, allow_paging: bool, certify_plan: bool,
             alternatives: int, vs_flags: str | None, pin_weights: bool, split_modes: bool) -> None:
    """Print the fastest placement of MODEL that fits, with exact flags and predicted tok/s.

    MODEL is a .gguf (any shard of a split model; a header-only file works),
    hf:OWNER/REPO[:QUANT|/PATH.gguf][@REVISION] or an https URL (only the shards' headers are
    read, a few MB each, and cached), ollama:NAME[:TAG], or the name of a shipped header-only
    reference model: deepseek-v3.2 (the default), deepseek-v3, qwen3-235b-a22b, glm-4.6,
    gpt-oss-120b, llama-3.3-70b. Devices come from --cluster, --preset
    or, by default, NVML discovery plus this CPU.

    --exec runs `ENGINE -m MODEL <plan flags> <your args>` in place of omni-place (nothing is
    written). Your own flags win: a plan flag you also give is dropped (a note says which).

    To splice the flags into your own command, take them one per line (--format argv) or let
    the shell parse the quoted words (--format args with eval); a bare $(... --format args)
    would pass the quotes around -ot to the engine.

    After the plan comes "plan vs recipes": --fit (emulated), -ot exps=CPU and the smallest
    --n-cpu-moe that fits (MoE), the largest -ngl that fits (dense) and --vs FLAGS, each priced
    on the same context. The plan is at least as good as each on the objective; where a recipe
    is better it takes that placement and says so.

    Exit codes: 0 a plan, 2 bad input, 3 nothing fits (the message says what is missing).

    \b
    Examples:
      omni-place plan --preset seed
      omni-place plan hf:unsloth/DeepSeek-V3.1-GGUF:Q4_K_M --preset seed
      omni-place plan model.gguf --cluster rig.toml --ctx 32768 --format args
      omni-place plan --preset seed --plot plan.svg
      omni-place plan --preset seed --alternatives 4 --vs "-ngl 99 -ncmoe 40"
      omni-place plan model.gguf --cluster rig.toml --verify
      omni-place plan model.gguf --preset seed --exec -- llama-server --port 8080
      mapfile -t flags < <(omni-place plan model.gguf --preset seed --format argv)
      llama-server -m model.gguf "${flags[@]}"
      eval "llama-server -m model.gguf $(omni-place plan model.gguf --preset seed --format args)"
    """
    engine_argv: list[str] | None = click.get_current_context().meta.get("omni_place.engine_argv")
    if engine_argv is not None and not do_exec:
        raise InvalidArgumentError("arguments after -- are the engine command of --exec",
                                   hint="add --exec, e.g. omni-place plan MODEL --exec -- llama-server --port 8080")
    if do_exec and not engine_argv:
        raise InvalidArgumentError("--exec needs the engine command after --",
                                   hint="e.g. omni-place plan MODEL --exec -- llama-server --port 8080")
    if do_verify and not traits(engine).libllama:
        raise InvalidArgumentError(f"--verify loads plans through libllama, which cannot load {engine} plans",
                                   hint="plan with --engine llama.cpp to verify, or drop --verify")
    if do_exec and not traits(engine).llama_family:
        raise InvalidArgumentError("--exec runs llama.cpp-family engines",
                                   hint="for vLLM use --format env and --format args with `vllm serve`")
    if do_exec and engine_argv and shutil.which(engine_argv[0]) is None:
        raise InvalidArgumentError(f"engine {engine_argv[0]!r} not found (not a file, not on PATH)",
                                   hint="give the path of llama-server / llama-cli after --")
    plan = plan_split(resolve_model(model), _cluster_spec(cluster_file, preset), ctx=ctx, ubatch=ubatch,
                      kv_type=kv_type.lower(), flash_attn=not no_flash_attn, objective=parse_objective(objective),
                      engine=engine, depth=depth, allow_paging=allow_paging, alternatives=alternatives,
                      vs=None if vs_flags is None else _split_flags(vs_flags), pin_weights=pin_weights,
                      split_modes=split_modes)
    if certify_plan:
        from ..llama.certify import certify

        plan = certify(plan)
    if plot_path:
        from ..plot import write_plot

        write_plot(plan, plot_path)
    if do_verify:
        from .verify_cmd import verify_and_emit

        if fmt == "json":  # one JSON document: {"plan": ..., "verify": ...}
            verify_and_emit(plan, "json", include_plan=True)
        else:
            _emit(plan, fmt, tool)
            verify_and_emit(plan, "text")
        if not do_exec:
            return
    if not do_exec:
        _emit(plan, fmt, tool)
        return
    model_path = None if is_header_copy(plan.model.path) else plan.model.path
    argv, notes = exec_argv(plan, engine_argv or [], model_path)
    click.echo(render_plan(plan), err=True)
    for n in notes:
        click.echo(printable(f"omni-place: {n}"), err=True)
    click.echo(printable("omni-place: exec " + shlex.join(argv)), err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)  # replaces this process: the engine's exit code is the command's
    except OSError as err:
        raise InvalidArgumentError(f"cannot run {argv[0]!r}: {err.strerror}",
                                   hint="check that the engine is an executable llama-server / llama-cli") from None


class _CheckCommand(click.Command):
    """``check``'s own options before ``--``, the engine's command line after it. An engine flag
    or an unknown option before ``--`` is an error, never silently ignored or priced as the
    engine's (``check MODEL --ctx 8192`` would otherwise price the default context)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        i = args.index("--") if "--" in args else len(args)
        ctx.meta["omni_place.engine_argv"] = args[i + 1:]
        for tok in args[:i]:
            if _flag_key(tok) or tok.partition("=")[0] in ("--ctx", "--ubatch", "--kv-type", "--no-flash-attn"):
                raise click.UsageError(f"{tok} before `--` is not an option of check: engine flags go after `--` "
                                       "(e.g. omni-place check MODEL --preset seed -- -c 8192 -ngl 99)", ctx)
        return super().parse_args(ctx, args[:i])


@cli.command("check", cls=_CheckCommand)
@click.argument("model")
@cluster_option
@click.option("--engine", type=click.Choice(list(LLAMA_FAMILY)), default="llama.cpp", show_default=True,
              help="Whose rules the command line follows (ik: byte-weighted -ts, -ngl without the output).")
@click.option("--tool", type=click.Choice(["server", "bench"]), default="server", show_default=True,
              help="The arguments are llama-server/llama-cli's or llama-bench's (separators, --n-cpu-moe).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--allow-paging", is_flag=True,
              help="Let CPU-held weights beyond RAM page from disk (mmap; priced at the CPU's disk_gbs) instead of "
                   "refusing the plan.")
def check_cmd(model: str, cluster_file: str | None, preset: str | None, engine: str, tool: str, fmt: str,
              allow_paging: bool) -> None:
    """Will YOUR llama.cpp / ik_llama.cpp command fit, and how fast is it? Prices the placement
    flags after `--` (-ngl, -ts, -dev, -ot, -ncmoe, -cmoe, -c, -ub, -ctk, -ctv, -fa, -sm, --rpc)
    on the cluster.

    Settings the flags leave out are the tool's defaults: no -c (or -c 0) is the model's training
    context, as llama.cpp does (llama-server's --fit may lower it; give -c N to price another);
    llama-bench runs -p 512 -n 128 with -fa auto (on), each test in a context of its own size: its
    decode priced after -d D tokens (ik's llama-bench has no -d: its -gp D,N), -pg P,N sized.
    Flags that do not change placement or memory are listed as not priced (a warning on stderr);
    values the engine refuses are errors.

    Exit 0 when it fits, 3 when a device overflows (named, with the amount), 2 on bad input.

    \b
    Examples:
      omni-place check model.gguf --preset seed -- -ngl 99 -ts 75,25 --n-cpu-moe 20 -c 32768
      omni-place check model.gguf --preset seed --engine ik_llama.cpp -- -ngl 999 -ncmoe 30 -c 32768
    """
    engine_args: list[str] = click.get_current_context().meta.get("omni_place.engine_argv") or []
    plan = evaluate(resolve_model(model), _cluster_spec(cluster_file, preset), engine_args,
                    engine=engine, tool=tool, allow_paging=allow_paging)
    for a in plan.assumptions:
        if a.startswith("not priced"):
            click.echo(printable(f"warning: {a}"), err=True)
    _emit(plan, fmt, tool)
    if not plan.feasible:
        raise NothingFitsError("; ".join(plan.notes),
                               hint="run `omni-place plan` with the same cluster for a placement that fits")
