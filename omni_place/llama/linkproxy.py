"""An emulated network link in front of an RPC server: a TCP proxy that adds a round-trip time
and a bandwidth limit, for previewing a multi-host plan on one machine.

Where the kernel has ``sch_netem`` (``tc qdisc ... netem delay``), network namespaces do this
better; many containers and CI kernels lack it (``Specified qdisc kind is unknown``), so this
proxy is the portable way. Each direction is a FIFO pipe: a chunk read at time ``t`` starts
transmitting at ``max(t, previous chunk done)``, takes ``8·len/rate`` and is due half a round
trip later. The proxy runs in its own process (``python -m omni_place.llama.linkproxy``) so its
threads never compete with the client for the GIL; it serves any number of connections.

The link can be changed while connections stay open (so one loaded model can be timed over
several links in turn), and the proxy counts how late it delivered against the emulated link's
due times: a loaded machine wakes sleeping threads late, which a real link would not do.

    with link_proxy("127.0.0.1:50052", rtt_ms=1.0, gbit=1.0) as proxy:
        ...  # use proxy.endpoint instead of 127.0.0.1:50052
        proxy.set_link(rtt_ms=2.0, gbit=1.0)
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import EngineError, InvalidArgumentError

_CHUNK = 1 << 16


@dataclass(frozen=True)
class LinkStats:
    """What a proxy delivered since it started (subtract two readings for an interval)."""

    chunks: int  # chunks relayed, both directions
    bytes: int
    late_s: float  # time each pipe was behind the emulated link's schedule, summed over pipes
    max_late_s: float


class _Link:
    """The emulated link every pipe of the proxy shares, and its delivery counters."""

    def __init__(self, rtt_s: float, bytes_per_s: float) -> None:
        self.set(rtt_s, bytes_per_s)
        self._lock = threading.Lock()
        self._chunks = self._bytes = 0
        self._late_s = self._max_late_s = 0.0

    def set(self, rtt_s: float, bytes_per_s: float) -> None:
        # one tuple, swapped in one assignment: a pipe never sees half of a change
        self.params = (rtt_s / 2, bytes_per_s)

    def delivered(self, n_bytes: int, late_s: float) -> None:
        with self._lock:
            self._chunks += 1
            self._bytes += n_bytes
            self._late_s += late_s
            self._max_late_s = max(self._max_late_s, late_s)

    def stats(self) -> LinkStats:
        with self._lock:
            return LinkStats(self._chunks, self._bytes, self._late_s, self._max_late_s)


class _Pipe:
    """One direction of one connection: reader -> timed queue -> writer."""

    def __init__(self, src: socket.socket, dst: socket.socket, link: _Link) -> None:
        self.src, self.dst, self.link = src, dst, link
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
                owd_s, bytes_per_s = self.link.params
                start = max(time.perf_counter(), self.free_at)
                self.free_at = start + len(data) / bytes_per_s
                with self.cond:
                    self.queue.append((self.free_at + owd_s, data))
                    self.cond.notify()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify()

    def _write(self) -> None:
        last_sent = 0.0
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
                # the pipe is behind the emulated link's schedule from ``due`` (or from the previous
                # chunk's late delivery, not to count that stretch twice) until now; counted before
                # sending, so a reader that has the data also finds it counted
                sent = time.perf_counter()
                self.link.delivered(len(data), max(0.0, sent - max(due, last_sent)))
                last_sent = sent
                self.dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.dst.shutdown(socket.SHUT_WR)


def serve(listen: tuple[str, int], upstream: tuple[str, int], link: _Link,
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
        _Pipe(client, server, link).start()
        _Pipe(server, client, link).start()


def _control(link: _Link) -> None:
    """With ``--control``, answer the parent's commands on stdin, one line each: ``set RTT_MS
    GBIT`` -> ``ok``, ``stats`` -> a JSON :class:`LinkStats`. End of input (the parent is gone)
    ends the proxy."""
    for line in sys.stdin:
        cmd = line.split()
        if cmd[:1] == ["set"] and len(cmd) == 3:
            link.set(float(cmd[1]) / 1e3, float(cmd[2]) * 1e9 / 8)
            print("ok", flush=True)
        elif cmd == ["stats"]:
            print(json.dumps(link.stats().__dict__), flush=True)
        else:
            print(f"unknown command {line.strip()!r}", flush=True)
    os._exit(0)


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgumentError(f"endpoint {endpoint!r} is not host:port")
    return host, int(port)


def _check_link(rtt_ms: float, gbit: float) -> None:
    if not (rtt_ms >= 0 and gbit > 0):
        raise InvalidArgumentError(f"link rtt {rtt_ms} ms / {gbit} Gbit/s is not a link",
                                   hint="give rtt_ms >= 0 and gbit > 0")


class LinkProxy:
    """A running proxy process: its ``endpoint``, and its link changed or read while it runs."""

    def __init__(self, proc: subprocess.Popen[str], endpoint: str) -> None:
        self._proc, self.endpoint = proc, endpoint

    def _ask(self, command: str) -> str:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(command + "\n")
            self._proc.stdin.flush()
            return self._proc.stdout.readline().strip()
        except OSError as err:
            raise EngineError(f"link proxy for {self.endpoint} is gone: {err}") from err

    def set_link(self, *, rtt_ms: float, gbit: float) -> None:
        """Emulate another link from now on; open connections keep going over the new one."""
        _check_link(rtt_ms, gbit)
        if (reply := self._ask(f"set {rtt_ms!r} {gbit!r}")) != "ok":
            raise EngineError(f"link proxy for {self.endpoint} refused the new link: {reply!r}")

    def stats(self) -> LinkStats:
        reply = self._ask("stats")
        try:
            return LinkStats(**json.loads(reply))
        except (ValueError, TypeError) as err:
            raise EngineError(f"link proxy for {self.endpoint} sent no stats: {reply!r}") from err


@contextlib.contextmanager
def link_proxy(upstream: str, *, rtt_ms: float, gbit: float, host: str = "127.0.0.1") -> Iterator[LinkProxy]:
    """Run a proxy process for ``upstream`` with this round-trip time and bandwidth; yields its
    :class:`LinkProxy` (``.endpoint`` is ``host:port``). The process is killed on exit."""
    _check_link(rtt_ms, gbit)
    _split_endpoint(upstream)
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_place.llama.linkproxy", "--listen", f"{host}:0", "--to", upstream,
         "--rtt-ms", str(rtt_ms), "--gbit", str(gbit), "--control"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("listening "):
            err = proc.stderr.read().strip() if proc.stderr else ""
            raise EngineError(f"link proxy did not start: {line.strip() or err}")
        yield LinkProxy(proc, line.split()[1])
    finally:
        proc.kill()
        proc.wait()


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m omni_place.llama.linkproxy", description=__doc__.split("\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--to", required=True, help="upstream host:port (the rpc-server)")
    ap.add_argument("--rtt-ms", type=float, required=True)
    ap.add_argument("--gbit", type=float, required=True)
    ap.add_argument("--control", action="store_true",
                    help="take 'set RTT_MS GBIT' and 'stats' lines on stdin; exit when stdin closes")
    a = ap.parse_args(argv)
    link = _Link(a.rtt_ms / 1e3, a.gbit * 1e9 / 8)
    if a.control:
        threading.Thread(target=_control, args=(link,), daemon=True).start()
    serve(_split_endpoint(a.listen), _split_endpoint(a.to), link)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
