"""An emulated network link in front of an RPC server: a TCP proxy that adds a round-trip time
and a bandwidth limit, for previewing a multi-host plan on one machine.

Where the kernel has ``sch_netem`` (``tc qdisc ... netem delay``), network namespaces do this
better; many containers and CI kernels lack it (``Specified qdisc kind is unknown``), so this
proxy is the portable way. Each direction is a FIFO pipe: a chunk read at time ``t`` starts
transmitting at ``max(t, previous chunk done)``, takes ``8·len/rate`` and arrives half a round
trip later. The proxy runs in its own process (``python -m omni_place.llama.linkproxy``) so its
threads never compete with the client for the GIL; it serves any number of connections.

    with link_proxy("127.0.0.1:50052", rtt_ms=1.0, gbit=1.0) as endpoint:
        ...  # use endpoint instead of 127.0.0.1:50052
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from ..errors import EngineError, InvalidArgumentError

_CHUNK = 1 << 16


class _Pipe:
    """One direction of one connection: reader -> timed queue -> writer."""

    def __init__(self, src: socket.socket, dst: socket.socket, owd_s: float, bytes_per_s: float) -> None:
        self.src, self.dst = src, dst
        self.owd_s, self.bytes_per_s = owd_s, bytes_per_s
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.cond = threading.Condition()
        self.closed = False
        self.free_at = 0.0

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                data = self.src.recv(_CHUNK)
                if not data:
                    break
                now = time.perf_counter()
                start = max(now, self.free_at)
                self.free_at = start + len(data) / self.bytes_per_s
                with self.cond:
                    self.queue.append((self.free_at + self.owd_s, data))
                    self.cond.notify()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify()

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closed:
                        self.cond.wait()
                    if not self.queue:
                        break
                    due, data = self.queue.popleft()
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                self.dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)


def serve(listen: tuple[str, int], upstream: tuple[str, int], rtt_s: float, bytes_per_s: float,
          ready: threading.Event | None = None) -> None:
    """Accept connections on ``listen`` and relay each to ``upstream`` through the emulated link."""
    srv = socket.create_server(listen)
    print(f"listening {srv.getsockname()[0]}:{srv.getsockname()[1]}", flush=True)
    if ready is not None:
        ready.set()
    while True:
        client, _ = srv.accept()
        try:
            server = socket.create_connection(upstream, timeout=10)
        except OSError:
            client.close()
            continue
        server.settimeout(None)
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _Pipe(client, server, rtt_s / 2, bytes_per_s).start()
        _Pipe(server, client, rtt_s / 2, bytes_per_s).start()


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgumentError(f"endpoint {endpoint!r} is not host:port")
    return host, int(port)


@contextlib.contextmanager
def link_proxy(upstream: str, *, rtt_ms: float, gbit: float, host: str = "127.0.0.1") -> Iterator[str]:
    """Run a proxy process for ``upstream`` with this round-trip time and bandwidth; yields the
    proxy's ``host:port``. The process is killed on exit."""
    if rtt_ms < 0 or gbit <= 0:
        raise InvalidArgumentError(f"link rtt {rtt_ms} ms / {gbit} Gbit/s is not a link",
                                   hint="give rtt_ms >= 0 and gbit > 0")
    _split_endpoint(upstream)
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_place.llama.linkproxy", "--listen", f"{host}:0", "--to", upstream,
         "--rtt-ms", str(rtt_ms), "--gbit", str(gbit)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("listening "):
            err = proc.stderr.read().strip() if proc.stderr else ""
            raise EngineError(f"link proxy did not start: {line.strip() or err}")
        yield line.split()[1]
    finally:
        proc.kill()
        proc.wait()


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m omni_place.llama.linkproxy", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--to", required=True, help="upstream host:port (the rpc-server)")
    ap.add_argument("--rtt-ms", type=float, required=True)
    ap.add_argument("--gbit", type=float, required=True)
    a = ap.parse_args(argv)
    serve(_split_endpoint(a.listen), _split_endpoint(a.to), a.rtt_ms / 1e3, a.gbit * 1e9 / 8)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
