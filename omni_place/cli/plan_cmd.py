"""`omni-place plan` and `omni-place check`."""
from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..errors import InvalidArgumentError, NothingFitsError
from ..model import KV_TYPES, ModelProfile, load_model
from ..plan import Plan, evaluate, plan_split
from ..reference_models import REFERENCE_MODELS, cached_reference_model
from ..report import env_lines
from . import cli

DEFAULT_MODEL = "deepseek-v3"


def resolve_model(model: str | None) -> ModelProfile:
    """A path to a GGUF, or the name of a shipped header-only reference model."""
    if model is None:
        model = DEFAULT_MODEL
    if not Path(model).exists() and model in REFERENCE_MODELS:
        return load_model(cached_reference_model(model))
    return load_model(model)


def cluster_option(f):  # noqa: ANN001, ANN201 - click decorator
    f = click.option("--preset", help="A shipped cluster preset (e.g. seed); see `omni-place devices --help`.")(f)
    f = click.option("--cluster", "cluster_file", type=click.Path(dir_okay=False),
                     help="A cluster TOML file.")(f)
    return f


def _cluster_spec(cluster_file: str | None, preset: str | None) -> str:
    if cluster_file and preset:
        raise InvalidArgumentError("--cluster and --preset are exclusive", hint="give one of them")
    return cluster_file or preset or "auto"


def _emit(plan: Plan, fmt: str, tool: str) -> None:
    if fmt == "json":
        click.echo(plan.to_json())
    elif fmt == "args":
        click.echo(shlex.join(plan.args(tool)))
    elif fmt == "env":
        click.echo("\n".join(env_lines(plan.args("server"))))
    else:
        click.echo(plan.explain())


@cli.command("plan")
@click.argument("model", required=False)
@cluster_option
@click.option("--ctx", type=click.IntRange(1, 1 << 24), default=4096, show_default=True, help="Context length (-c).")
@click.option("--ubatch", type=click.IntRange(1, 65536), default=512, show_default=True, help="Physical batch (-ub).")
@click.option("--kv-type", type=click.Choice(list(KV_TYPES), case_sensitive=False), default="f16", show_default=True)
@click.option("--no-flash-attn", is_flag=True, help="Plan for -fa off (bigger compute buffers).")
@click.option("--objective", default="tg", show_default=True,
              help="tg (decode tok/s), pp (prompt tok/s) or a weight 0..1 on decode.")
@click.option("--depth", type=click.IntRange(0, 1 << 24), default=0, show_default=True,
              help="Tokens already in context when decoding (llama-bench -d).")
@click.option("--engine", type=click.Choice(["llama.cpp"]), default="llama.cpp", show_default=True)
@click.option("--tool", type=click.Choice(["server", "bench"]), default="server", show_default=True,
              help="Flag dialect for --format args: llama-server/cli or llama-bench.")
@click.option("--format", "fmt", type=click.Choice(["text", "args", "json", "env"]), default="text", show_default=True)
def plan_cmd(model: str | None, cluster_file: str | None, preset: str | None, ctx: int, ubatch: int,
             kv_type: str, no_flash_attn: bool, objective: str, depth: int, engine: str, tool: str, fmt: str) -> None:
    """Print the fastest placement of MODEL that fits, with exact flags and predicted tok/s.

    MODEL is a .gguf (any shard of a split model; a header-only file works) or the name of a
    shipped reference model (default: deepseek-v3). Devices come from --cluster, --preset or,
    by default, NVML discovery plus this CPU.

    Exit codes: 0 a plan, 2 bad input, 3 nothing fits (the message says what is missing).

    \b
    Examples:
      omni-place plan --preset seed
      omni-place plan model.gguf --cluster rig.toml --ctx 32768 --format args
      llama-server -m model.gguf $(omni-place plan model.gguf --preset seed --format args)
    """
    obj: str | float = objective
    if objective not in ("tg", "pp"):
        try:
            obj = float(objective)
        except ValueError:
            raise InvalidArgumentError(f"--objective {objective!r} is not tg, pp or a number",
                                       hint="e.g. --objective 0.8") from None
    plan = plan_split(resolve_model(model), _cluster_spec(cluster_file, preset), ctx=ctx, ubatch=ubatch,
                      kv_type=kv_type.lower(), flash_attn=not no_flash_attn, objective=obj, engine=engine,
                      depth=depth)
    _emit(plan, fmt, tool)


@cli.command("check", context_settings={"ignore_unknown_options": True})
@click.argument("model")
@cluster_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.argument("engine_args", nargs=-1, type=click.UNPROCESSED)
def check_cmd(model: str, cluster_file: str | None, preset: str | None, fmt: str, engine_args: tuple[str, ...]) -> None:
    """Will YOUR llama.cpp command fit, and how fast is it? Prices the placement flags after
    `--` (-ngl, -ts, -dev, -ot, -ncmoe, -cmoe, -c, -ub, -ctk, -ctv, -fa, -sm) on the cluster.

    Exit 0 when it fits, 3 when a device overflows (named, with the amount), 2 on bad input.

    \b
    Example:
      omni-place check model.gguf --preset seed -- -ngl 99 -ts 75,25 --n-cpu-moe 20 -c 32768
    """
    plan = evaluate(resolve_model(model), _cluster_spec(cluster_file, preset), list(engine_args))
    _emit(plan, fmt, "server")
    if not plan.feasible:
        raise NothingFitsError("; ".join(plan.notes),
                               hint="run `omni-place plan` with the same cluster for a placement that fits")
