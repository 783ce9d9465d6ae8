"""llama.cpp RPC servers from the same libggml-rpc as the client, each in its own process.

An RPC server turns a process into a ggml device (``RPC0``, ``RPC1``, ...), so tests and demos get
several real devices on a CPU-only machine. ``ggml_backend_rpc_start_server`` blocks forever,
serves one client at a time, has no stop API and can abort on network errors: every server runs in
its own process (``python -m omni_place.llama.rpc``) and is stopped by killing it.

Client and server must come from the same llama.cpp build (the RPC protocol version must match),
so the child loads the same libllama folder as the parent.

Advertised memory. In the supported builds ``ggml_backend_rpc_start_server(endpoint, cache_dir,
n_threads, n_devices, devices)`` has no free/total parameters: a server reports
``ggml_backend_dev_memory()`` of its device (for the CPU device: all of the host's RAM, as both
free and total). ``mem_gib`` makes the server advertise a given amount instead by replacing the
``get_memory`` entry of the CPU device's interface table in the *server process* (the table is a
writable static in libggml-cpu; the entry is checked against ``ggml_backend_dev_name`` /
``ggml_backend_dev_memory`` before and after the swap, and the server refuses to start when the
check fails). It changes what clients see -- the default split (all-zero tensor_split) and
``using device ... MiB free`` -- and does not cap what the server allocates.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EngineError, InvalidArgumentError, LibLlamaVersionError, OmniPlaceError
from ..units import GiB
from . import bindings as b
from ._child import child_env
from ._loader import load_libllama, loaded_libllama

DEFAULT_PORT = 50052

_GET_NAME = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p)
_GET_MEMORY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t))
# struct ggml_backend_device { struct ggml_backend_device_i iface; reg; context; } with
# iface = { get_name, get_description, get_memory, get_type, get_props, ... } (ggml-backend-impl.h)
_IFACE_GET_NAME = 0
_IFACE_GET_MEMORY = 2

_keepalive: list[object] = []


def server_host(host: str) -> str:
    """The IPv4 address a server can bind: ggml's RPC server takes numeric IPv4 only
    (``inet_addr``); ``localhost`` means 127.0.0.1."""
    if host.lower() == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise InvalidArgumentError(
            f"RPC server host must be an IPv4 address, got {host!r}",
            hint="use 127.0.0.1 (default, this machine only) or the address of one of this machine's interfaces",
        ) from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts local connections."""
    return ipaddress.IPv4Address(server_host(host)).is_loopback


def _advertise_memory(dev: b.ggml_backend_dev_t, free: int, total: int) -> None:
    """Make ``ggml_backend_dev_memory(dev)`` report (free, total) in this process."""
    table = (ctypes.c_void_p * (_IFACE_GET_MEMORY + 1)).from_address(dev)
    get_name, get_memory_entry = table[_IFACE_GET_NAME], table[_IFACE_GET_MEMORY]
    if not get_name or not get_memory_entry:
        raise LibLlamaVersionError("cannot limit RPC memory: unexpected ggml_backend_device layout (NULL entries)")
    name = _GET_NAME(get_name)(dev)
    f0, t0, f1, t1 = (ctypes.c_size_t() for _ in range(4))
    _GET_MEMORY(get_memory_entry)(dev, ctypes.byref(f0), ctypes.byref(t0))
    b.ggml_backend_dev_memory(dev, ctypes.byref(f1), ctypes.byref(t1))
    if name != b.ggml_backend_dev_name(dev) or (f0.value, t0.value) != (f1.value, t1.value):
        raise LibLlamaVersionError(
            "cannot limit RPC memory: this ggml's device interface table does not have the expected "
            "layout (get_name at 0, get_memory at 2)",
            hint="start the server without --mem-gib",
        )

    def get_memory(_dev: int, p_free: ctypes.Array[ctypes.c_size_t], p_total: ctypes.Array[ctypes.c_size_t]) -> None:
        p_free[0] = free
        p_total[0] = total

    callback = _GET_MEMORY(get_memory)
    _keepalive.append(callback)
    table[_IFACE_GET_MEMORY] = ctypes.cast(callback, ctypes.c_void_p).value
    b.ggml_backend_dev_memory(dev, ctypes.byref(f1), ctypes.byref(t1))
    if (f1.value, t1.value) != (free, total):
        raise LibLlamaVersionError("cannot limit RPC memory: the patched get_memory entry is not used")


def _exit_with_parent(parent_pid: int) -> None:
    """Linux: get SIGTERM when the parent dies, so servers never outlive a killed test run."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def serve(
    endpoint: str,
    *,
    threads: int = 1,
    mem_bytes: int | None = None,
    cache_dir: str | None = None,
    library: str | None = None,
) -> None:
    """Serve this machine's CPU device on ``endpoint`` (``host:port``) in *this* process.

    Blocks until the server fails (for example when the port is taken), then raises EngineError.
    """
    if threads < 1:
        raise InvalidArgumentError(f"threads must be >= 1, got {threads}")
    load_libllama(library)
    if not b.available(b.ggml_backend_rpc_start_server):
        raise LibLlamaVersionError(
            f"{load_libllama().path} was built without RPC (no ggml_backend_rpc_start_server)",
            hint='rebuild with CMAKE_ARGS="-DGGML_RPC=on"',
        )
    b.ensure_backends()
    cpu = b.ggml_backend_dev_by_type(b.GGML_BACKEND_DEVICE_TYPE_CPU)
    if not cpu:
        raise EngineError("no CPU device in the ggml registry")
    if mem_bytes is not None:
        if mem_bytes <= 0:
            raise InvalidArgumentError(f"advertised memory must be positive, got {mem_bytes} bytes")
        _advertise_memory(cpu, mem_bytes, mem_bytes)
    devices = (ctypes.c_void_p * 1)(cpu)
    sys.stdout.flush()
    b.ggml_backend_rpc_start_server(
        endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, 1, devices
    )
    raise EngineError(
        f"RPC server on {endpoint} stopped (it could not listen there or the connection failed)",
        hint="pick another --port, or check that the host address belongs to this machine",
    )


# ---------------------------------------------------------------------------------------------
# Managing server processes
# ---------------------------------------------------------------------------------------------


@dataclass
class RpcServer:
    """One RPC server process started by :func:`start_rpc_server`."""

    host: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    mem_bytes: int | None = None
    _stopped: bool = field(default=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Kill the server (there is no graceful stop) and remove its log file."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self) -> RpcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _spawn(
    host: str, port: int, threads: int, mem_bytes: int | None, cache_dir: str | None, library: str | None
) -> RpcServer:
    fd, log_name = tempfile.mkstemp(prefix=f"omni-place-rpc-{port}-", suffix=".log")
    cmd = [sys.executable, "-m", "omni_place.llama.rpc", "--host", host, "--port", str(port),
           "--threads", str(threads)]
    if threading.current_thread() is threading.main_thread():
        # PR_SET_PDEATHSIG fires when the *thread* that started the child exits: only tie the
        # server's life to ours from the main thread (a worker thread may end before we do)
        cmd += ["--exit-with-parent", str(os.getpid())]
    if mem_bytes is not None:
        cmd += ["--mem-bytes", str(mem_bytes)]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    if library:
        cmd += ["--library", library]
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    return RpcServer(host=host, port=port, process=proc, log_path=Path(log_name), mem_bytes=mem_bytes)


def _wait_ready(server: RpcServer, deadline: float) -> bool:
    """True once the server accepts TCP connections; False if its process died."""
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        try:
            with socket.create_connection((server.host, server.port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _mem_bytes(mem_gib: float | None) -> int | None:
    return None if mem_gib is None else int(round(mem_gib * GiB))


def start_rpc_server(
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    threads: int = 1,
    mem_gib: float | None = None,
    cache_dir: str | None = None,
    library: str | None = None,
    timeout: float = 30.0,
) -> RpcServer:
    """Start one server process and wait until it accepts connections.

    ``port=None`` picks a free port (retrying if another process takes it first). The server
    uses the libllama folder this process loaded (or ``library``). Raises EngineError with the
    server's output when it does not come up within ``timeout`` seconds.
    """
    servers = _start_many(host, [port], threads, [_mem_bytes(mem_gib)], cache_dir, library, timeout)
    return servers[0]


def _start_many(
    host: str,
    ports: Sequence[int | None],
    threads: int,
    mem: Sequence[int | None],
    cache_dir: str | None,
    library: str | None,
    timeout: float,
    attempts: int = 3,
) -> list[RpcServer]:
    host = server_host(host)
    if library is None:
        current = loaded_libllama()
        library = current.path if current is not None else None
    deadline = time.monotonic() + timeout
    started: list[RpcServer] = []
    pending = list(zip(ports, mem, strict=True))
    try:
        for attempt in range(attempts):
            batch = [
                _spawn(host, port if port is not None else _free_port(host), threads, mem_bytes, cache_dir, library)
                for port, mem_bytes in pending
            ]
            retry: list[tuple[int | None, int | None]] = []
            for (port, mem_bytes), server in zip(pending, batch, strict=True):
                if _wait_ready(server, deadline):
                    started.append(server)
                    continue
                output = server.output().strip()
                server.stop()
                port_taken = "Failed to create server socket" in output
                if port is None and port_taken and attempt + 1 < attempts and time.monotonic() < deadline:
                    retry.append((None, mem_bytes))  # lost a race for the free port: pick another
                    continue
                last = " | ".join(output.splitlines()[-4:]) or "no output"
                why = "did not accept connections in time" if server.process.returncode is None else (
                    f"exited with status {server.process.returncode}")
                raise EngineError(f"RPC server on {server.endpoint} {why}: {last}")
            if not retry:
                return started
            pending = retry
        raise EngineError(
            f"could not start {len(pending)} RPC server(s) on {host}: no free port after {attempts} tries"
        )
    except BaseException:
        for server in started:
            server.stop()
        raise


# --- protocol handshake ---------------------------------------------------------------------
# RPC request: | cmd (1 byte) | size (u64) | data |; response: | size (u64) | data |.
# HELLO (cmd 14, fixed across versions) carries the client's transport caps (24 bytes); the reply
# is major, minor, patch, padding, caps (ggml-rpc.cpp:89-98, 347-364, 1820-1858).
RPC_CMD_HELLO = 14
RPC_CONN_CAPS_SIZE = 24


def rpc_hello(endpoint: str, timeout: float = 5.0) -> tuple[int, int, int]:
    """The RPC protocol version (major, minor, patch) a server speaks, from its HELLO reply.
    EngineError when nothing listens there or it is not a compatible llama.cpp RPC server."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(bytes([RPC_CMD_HELLO]) + RPC_CONN_CAPS_SIZE.to_bytes(8, "little") + bytes(RPC_CONN_CAPS_SIZE))
            head = _recv_exact(sock, 8)
            size = int.from_bytes(head, "little") if head is not None else 0
            body = _recv_exact(sock, 4) if 4 <= size <= 4096 else None
    except (OSError, ValueError) as err:
        raise EngineError(f"RPC server {endpoint} is not accepting connections "
                          f"({getattr(err, 'strerror', None) or err})",
                          hint="start it with `omni-place rpc-server --port PORT` (same llama.cpp build) "
                               "or check host:port") from None
    if body is None:
        raise EngineError(f"{endpoint} did not answer the RPC HELLO: not a llama.cpp rpc-server of a compatible build",
                          hint="run rpc-server from the same llama.cpp build as the engine "
                               "(an older protocol closes the connection)")
    return body[0], body[1], body[2]


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


_client_protocol: dict[str, tuple[int, int, int]] = {}


def client_protocol(library: str | None = None) -> tuple[int, int, int]:
    """The RPC protocol of this libllama's client: asked of a loopback server started from the
    same library (client and server of one build speak one version). Cached per library."""
    key = library or ""
    if key not in _client_protocol:
        with start_rpc_server("127.0.0.1", library=library) as server:
            _client_protocol[key] = rpc_hello(server.endpoint)
    return _client_protocol[key]


def check_rpc_server(endpoint: str, library: str | None = None) -> tuple[int, int, int]:
    """Refuse, before ggml would abort the process, a server that does not answer or whose
    protocol the client rejects (major must match, the server's minor must not be newer)."""
    server = rpc_hello(endpoint)
    client = client_protocol(library)
    if server[0] != client[0] or server[1] > client[1]:
        raise EngineError(
            f"RPC server {endpoint} speaks RPC protocol {'.'.join(map(str, server))}, this libllama's client "
            f"{'.'.join(map(str, client))}: client and server must come from the same llama.cpp build",
            hint="restart rpc-server from the engine's build (or `omni-place rpc-server` on that host)")
    return server


@contextlib.contextmanager
def rpc_servers(
    n: int,
    threads: int = 1,
    mem_gib: float | Sequence[float] | None = None,
    host: str = "127.0.0.1",
    *,
    library: str | None = None,
    timeout: float = 30.0,
) -> Iterator[list[str]]:
    """Start ``n`` RPC servers on free ports of ``host`` and yield their ``host:port`` endpoints;
    kill them on exit.

    ``mem_gib`` is the memory each server advertises (one value for all, or one per server);
    None advertises the host's RAM. Loaded in order, the endpoints become devices RPC0, RPC1, ...
    """
    if n < 1:
        raise InvalidArgumentError(f"n must be >= 1, got {n}")
    if mem_gib is None or isinstance(mem_gib, (int, float)):
        mem = [_mem_bytes(mem_gib)] * n
    else:
        if len(mem_gib) != n:
            raise InvalidArgumentError(f"mem_gib has {len(mem_gib)} values for {n} servers")
        mem = [_mem_bytes(m) for m in mem_gib]
    servers = _start_many(host, [None] * n, threads, mem, None, library, timeout)
    try:
        yield [s.endpoint for s in servers]
    finally:
        for server in servers:
            server.stop()


# ---------------------------------------------------------------------------------------------
# python -m omni_place.llama.rpc
# ---------------------------------------------------------------------------------------------


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m omni_place.llama.rpc",
        description="Serve this machine's CPU as a llama.cpp RPC device (blocks until killed).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mem-bytes", type=int, default=None, help="memory to advertise (bytes)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--library", default=None, help="libllama file or folder")
    parser.add_argument("--exit-with-parent", type=int, default=None, metavar="PID")
    args = parser.parse_args(argv)
    if args.exit_with_parent is not None:
        _exit_with_parent(args.exit_with_parent)
    try:
        serve(
            f"{server_host(args.host)}:{args.port}",
            threads=args.threads,
            mem_bytes=args.mem_bytes,
            cache_dir=args.cache_dir,
            library=args.library,
        )
    except OmniPlaceError as err:
        print(f"error: {err.message}", file=sys.stderr, flush=True)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(_main())
