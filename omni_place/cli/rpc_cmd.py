"""``omni-place rpc-server``: serve this machine's CPU and RAM as a llama.cpp RPC device."""
from __future__ import annotations

import os

import click

from ..llama.rpc import DEFAULT_PORT, is_loopback, serve, server_host
from ..units import GiB
from . import cli
from .params import FiniteFloat

MAX_MEM_GIB = 1 << 20  # 1 PiB: the cluster files' bound on a device's memory_gib
MAX_THREADS = 4096  # the cluster files' bound on a CPU's threads


@cli.command("rpc-server")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="IPv4 address to listen on. Anything but loopback exposes this machine to the network.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1, MAX_THREADS),
    default=None,
    help="CPU threads for the served device  [default: half the cores]",
)
@click.option(
    "--mem-gib",
    type=FiniteFloat(0, MAX_MEM_GIB, lo_open=True),
    default=None,
    help="Memory (GiB) to advertise to clients instead of the host's RAM. Clients split layers by "
    "it; the server does not enforce it.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Local cache for tensors the client sends by hash (faster reloads of the same model).",
)
@click.option(
    "--library",
    type=click.Path(exists=True),
    default=None,
    help="libllama file or folder (default: $OMNI_PLACE_LIBLLAMA, then the llama_cpp package). "
    "Clients must use the same llama.cpp build.",
)
def rpc_server(
    host: str, port: int, threads: int | None, mem_gib: float | None, cache_dir: str | None, library: str | None
) -> None:
    """Serve this machine's CPU as a llama.cpp RPC device (blocks until killed).

    Clients add it with `--rpc HOST:PORT` (llama.cpp) or `LoadSpec(rpc_servers=[...])`; it
    appears to them as device RPC<n>. The RPC protocol has no authentication or encryption.
    """
    host = server_host(host)
    if not is_loopback(host):
        click.echo(
            f"warning: listening on {host}:{port}: anyone who can reach this port can run code on this "
            "machine's CPU and read or write the memory it serves (no authentication, no encryption); "
            "use it only on a trusted network or behind an authenticated tunnel",
            err=True,
        )
    n_threads = threads if threads is not None else max(1, (os.cpu_count() or 2) // 2)
    mem_bytes = None if mem_gib is None else int(round(mem_gib * GiB))
    advertised = f"{mem_gib:g} GiB advertised" if mem_gib is not None else "host RAM advertised"
    threads_text = f"{n_threads} thread{'' if n_threads == 1 else 's'}"
    click.echo(f"omni-place rpc-server: serving CPU on {host}:{port} ({threads_text}, {advertised})", err=True)
    serve(f"{host}:{port}", threads=n_threads, mem_bytes=mem_bytes, cache_dir=cache_dir, library=library)
