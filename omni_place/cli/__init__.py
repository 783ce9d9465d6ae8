"""omni-place: the fastest placement of an LLM across asymmetric GPUs, CPU RAM and RPC hosts.

Each command lives in its own module; this one builds the group and turns library errors into
one-line messages with a hint and the documented exit code (0 ok, 2 bad input, 3 nothing fits,
4 engine disagrees with the plan).
"""
from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import OmniPlaceError
from ..termtext import printable


# command name -> the module that defines it (imported only when the command runs, so that
# `omni-place plan` does not pay for NVML, libllama or the RPC machinery)
COMMANDS = {
    "plan": "plan_cmd", "check": "plan_cmd", "inspect": "inspect_cmd", "devices": "devices_cmd",
    "verify": "verify_cmd", "rpc-server": "rpc_cmd", "env": "env_cmd", "bench": "bench_cmd", "calibrate": "bench_cmd",
    "compare": "compare_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"{__name__}.{module}")  # its decorators add it to `cli`
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="omni-place")
def cli() -> None:
    """Plan where every layer and tensor of an LLM goes on your machine, print the exact
    llama.cpp / ik_llama.cpp flags, and predict tokens/s."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI, map OmniPlaceError to a one-line message + exit code."""
    try:
        cli.main(args=argv, prog_name="omni-place", standalone_mode=False)
    except OmniPlaceError as err:
        # a message may quote a name from a file: escaped, it stays one line and drives no terminal
        click.echo(printable(f"error: {err.message}"), err=True)
        if err.hint:
            click.echo(printable(f"hint: {err.hint}"), err=True)
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as err:
        click.echo(printable(f"error: {err.format_message()}"), err=True)
        command = err.ctx.command_path if err.ctx is not None else "omni-place"
        click.echo(f"hint: see `{command} --help`", err=True)
        return 2
    except click.ClickException as err:
        click.echo(printable(f"error: {err.format_message()}"), err=True)
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
