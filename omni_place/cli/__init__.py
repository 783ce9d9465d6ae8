"""omni-place: the fastest placement of an LLM across asymmetric GPUs, CPU RAM and RPC hosts.

Each command lives in its own module; this one builds the group and turns library errors into
one-line messages with a hint and the documented exit code (0 ok, 2 bad input, 3 nothing fits,
4 engine disagrees with the plan).
"""
from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import OmniPlaceError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="omni-place")
def cli() -> None:
    """Plan where every layer and tensor of an LLM goes on your machine, print the exact
    llama.cpp / ik_llama.cpp flags, and predict tokens/s."""


def _register() -> None:
    from . import devices_cmd, inspect_cmd, plan_cmd, rpc_cmd  # noqa: F401  (each module adds its command to `cli`)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI, map OmniPlaceError to a one-line message + exit code."""
    _register()
    try:
        cli.main(args=argv, prog_name="omni-place", standalone_mode=False)
    except OmniPlaceError as err:
        click.echo(f"error: {err.message}", err=True)
        if err.hint:
            click.echo(f"hint: {err.hint}", err=True)
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
