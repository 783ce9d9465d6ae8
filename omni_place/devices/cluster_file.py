"""Cluster files: the TOML parser (:func:`load_cluster`) and the presets shipped as such files
(:func:`load_preset`).

Every error names the file and line (tomllib reports no lines for valid TOML, so
``_Locator`` finds them). With ``discover = true`` a file adds NVML GPUs through
:func:`omni_place.devices.nvml.discover_gpus`; the schema is in ``omni-place devices --help``.
"""
from __future__ import annotations

import bisect
import difflib
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Sequence
from functools import partial
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..catalog import PCIE_GBS_PER_LANE, PCIE_WIDTHS, GpuSpec, lookup, pcie_gbs, suggest
from ..errors import ClusterError, InvalidArgumentError
from ..kernels import CPU_SIMD
from ..units import GiB, MiB
from ..validate import decode_text, number, read_file, show, text
from .cluster import (
    _GPU_NAME,
    _RPC_NAME,
    DEFAULT_PCIE,
    DEFAULT_PCIE_LATENCY_US,
    DEFAULT_RPC_LATENCY_US,
    DEFAULT_RPC_LINK_GBS,
    GPU_BACKENDS,
    KINDS,
    MAX_ACCELERATORS,
    MAX_THREADS,
    Cluster,
    Device,
    _cpu_notes,
    _engine_order,
    _gpu_speed_notes,
    _local_cpu,
    _preset_dir,
    list_presets,
)
from .nvml import discover_gpus

__all__ = ["load_cluster", "load_preset"]

_TOP_KEYS = ("name", "description", "discover", "devices")
_NUMBER = (int, float)
#: Device keys: the TOML type and the kinds the key applies to.
_DEVICE_KEYS: dict[str, tuple[type | tuple[type, ...], tuple[str, ...]]] = {
    "name": (str, KINDS),
    "kind": (str, KINDS),
    "model": (str, KINDS),
    "catalog": (str, ("gpu", "rpc")),
    "memory_gib": (_NUMBER, KINDS),
    "bandwidth_gbs": (_NUMBER, KINDS),
    "tflops": (_NUMBER, KINDS),
    "link_gbs": (_NUMBER, ("gpu", "rpc")),
    "link_latency_us": (_NUMBER, ("gpu", "rpc")),
    "stream_gbs": (_NUMBER, ("gpu",)),
    "pcie_gen": (int, ("gpu",)),
    "pcie_width": (int, ("gpu",)),
    "compute_capability": (str, ("gpu",)),
    "endpoint": (str, ("rpc",)),
    "threads": (int, ("cpu",)),
    "simd": (str, ("cpu",)),
    "disk_gbs": (_NUMBER, ("cpu",)),
    "margin_mib": (_NUMBER, KINDS),
    "host": (str, KINDS),
    "peer_access": (bool, ("gpu",)),
}
_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", _NUMBER: "a number"}
_LOOPBACK = {"localhost", "127.0.0.1"}
_ENDPOINT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?))"
                       r":(?P<port>[0-9]{1,5})", re.ASCII)
#: A cluster file is a few KiB; this bound keeps reading and parsing it well under a second.
MAX_CLUSTER_BYTES = 1 << 20
#: Text values: names and hosts are identifiers, descriptions a sentence or two.
_MAX_TEXT = {"name": 128, "description": 4096, "model": 128, "catalog": 128, "host": 253, "endpoint": 300,
             "kind": 16, "compute_capability": 8, "simd": 16}
_COMPUTE_CAPABILITY = re.compile(r"[0-9]{1,2}\.[0-9]", re.ASCII)
_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class _Locator:
    """Line numbers in a TOML text, which tomllib does not report: table headers and keys."""

    _HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]*?)\s*\]\]?\s*(?:#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        # (line number, header name, is array-of-tables) of every table header; lookups below
        # use these lists once built, so locating every device's keys is linear in the file
        self.headers: list[tuple[int, str, bool]] = []
        for no, line in enumerate(self.lines, 1):
            if "[" not in line:
                continue
            m = self._HEADER.match(line)
            if m:
                self.headers.append((no, m[2].replace('"', "").replace("'", ""), m[1] == "[["))
        self.header_lines = [no for no, _, _ in self.headers]
        self.device_lines = [no for no, name, array in self.headers if array and name == "devices"]

    def _key_in(self, key: str, start: int, stop: int) -> int | None:
        pattern = re.compile(rf"\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")
        for no in range(start, min(stop, len(self.lines) + 1)):
            if pattern.match(self.lines[no - 1]):
                return no
        return None

    def top_key(self, key: str) -> int:
        """Line of a top-level ``key = ...`` (1 if it cannot be found)."""
        stop = self.headers[0][0] if self.headers else len(self.lines) + 1
        return self._key_in(key, 1, stop) or 1

    def device(self, index: int) -> int:
        """Line of the ``index``-th ``[[devices]]`` header (or of ``devices =`` when inline)."""
        found = self.device_lines
        return found[index] if index < len(found) else self.top_key("devices")

    def device_key(self, index: int, key: str) -> int:
        """Line of ``key`` inside the ``index``-th device table (its header line if not found)."""
        start = self.device(index)
        after = bisect.bisect_right(self.header_lines, start)
        stop = self.header_lines[after] if after < len(self.header_lines) else len(self.lines) + 1
        return self._key_in(key, start + 1, stop) or start


# Generous upper bounds of device figures (a typo or a hostile file must not reach the core:
# 1e30 GiB overflows its int64 arrays, 1e308 TFLOPS predicts nonsense).
_UPPER_BOUNDS = {"memory_gib": 1 << 20, "bandwidth_gbs": 1e5, "tflops": 1e5, "link_gbs": 1e4, "threads": MAX_THREADS,
                 "stream_gbs": 1e4, "disk_gbs": 1e3,
                 "link_latency_us": 1e7, "margin_mib": 1 << 30}


def _gib_to_bytes(gib: float) -> int:
    return int(round(gib * GiB))


def _close(word: str, choices: Sequence[str]) -> str:
    hits = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {hits[0]!r}?" if hits else f"valid keys: {', '.join(choices)}"


def _parse_endpoint(endpoint: str) -> tuple[str | None, str]:
    """(host, "") of a valid ``host:port`` endpoint, else (None, why not)."""
    m = _ENDPOINT.fullmatch(endpoint)
    if not m or not 1 <= int(m["port"]) <= 65535:
        return None, "is not host:port"
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(m["v6"])
        except ValueError:
            return None, "is not host:port"
        # ggml-rpc is IPv4 only: the client splits the endpoint at its first ':' and connects
        # with gethostbyname + AF_INET, rpc-server binds with inet_addr (ggml-rpc.cpp
        # parse_endpoint, transport.cpp socket_t::connect / create_server)
        return None, "is an IPv6 address, which llama.cpp's RPC cannot use (IPv4 only)"
    return m["host"], ""


class _FileParser:
    """Turns a cluster file's TOML into Devices, with file:line in every error."""

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.loc = _Locator(text)

    def fail(self, line: int, message: str, hint: str | None = None) -> ClusterError:
        return ClusterError(f"{self.path}:{line}: {message}", hint=hint)

    def _fail_at_key(self, key: str, message: str) -> ClusterError:
        return self.fail(self.loc.top_key(key), message)

    def top_level(self, doc: dict[str, Any]) -> None:
        for key in doc:
            if key not in _TOP_KEYS:
                raise self.fail(self.loc.top_key(key), f"unknown top-level key {key!r}",
                                _close(key, _TOP_KEYS))
        for key, kind in (("name", str), ("description", str), ("discover", bool)):
            if key in doc and not isinstance(doc[key], kind):
                raise self.fail(self.loc.top_key(key), f"{key} must be {_TYPE_NAMES[kind]}")
            if kind is str and key in doc:
                text(doc[key], key, max_len=_MAX_TEXT[key], error=partial(self._fail_at_key, key))
        devices = doc.get("devices", [])
        if not isinstance(devices, list) or not all(isinstance(t, dict) for t in devices):
            raise self.fail(self.loc.top_key("devices"),
                            "devices must be an array of tables ([[devices]] sections)")
        if not devices and not doc.get("discover", False):
            raise self.fail(1, "the cluster file describes no devices",
                            "add [[devices]] sections, or `discover = true` to use this machine's")

    def device(self, i: int, table: dict[str, Any]) -> dict[str, Any]:
        """Validate one ``[[devices]]`` table; returns Device keyword arguments (+ ``_catalog``)."""
        here = self.loc.device(i)

        def at(key: str) -> int:
            return self.loc.device_key(i, key)

        for key in table:
            if key not in _DEVICE_KEYS:
                raise self.fail(at(key), f"unknown device key {key!r}", _close(key, list(_DEVICE_KEYS)))
        for key in ("name", "kind"):
            if key not in table:
                raise self.fail(here, f"device #{i + 1} has no {key!r}")
        for key, value in table.items():
            kind_of_value = _DEVICE_KEYS[key][0]
            is_bool = isinstance(value, bool)
            if not isinstance(value, kind_of_value) or (is_bool and kind_of_value is not bool):
                raise self.fail(at(key), f"{key} must be {_TYPE_NAMES[kind_of_value]} (got {show(value)})")

            def bad(message: str, key: str = key) -> ClusterError:
                return self.fail(at(key), message)
            if isinstance(value, str):
                text(value, key, max_len=_MAX_TEXT[key], error=bad)
            elif kind_of_value is _NUMBER:
                number(value, key, error=bad)  # finite and within a float (a 400-digit integer is not)
        name, kind = table["name"], table["kind"]
        if kind not in KINDS:
            raise self.fail(at("kind"), f"device {name!r}: kind {kind!r} is not one of "
                            f"{', '.join(KINDS)}", _close(kind, KINDS))
        for key in table:
            if kind not in _DEVICE_KEYS[key][1]:
                raise self.fail(at(key), f"device {name!r}: {key!r} does not apply to kind {kind!r}")
        self._check_name(i, name, kind)
        positive = ("memory_gib", "bandwidth_gbs", "tflops", "link_gbs", "stream_gbs", "threads", "disk_gbs")
        for key in positive:
            if key in table and not table[key] > 0:
                raise self.fail(at(key), f"device {name!r}: {key} must be positive (got {table[key]})")
            if key in table and table[key] > _UPPER_BOUNDS[key]:
                raise self.fail(at(key), f"device {name!r}: {key} = {show(table[key])} is beyond any real device "
                                f"(at most {_UPPER_BOUNDS[key]:g})")
        for key in ("link_latency_us", "margin_mib"):
            if key in table and table[key] < 0:
                raise self.fail(at(key), f"device {name!r}: {key} must not be negative (got {table[key]})")
            if key in table and table[key] > _UPPER_BOUNDS[key]:
                raise self.fail(at(key), f"device {name!r}: {key} = {show(table[key])} is beyond any real link "
                                f"(at most {_UPPER_BOUNDS[key]:g})")

        spec = None
        if "catalog" in table:
            spec = lookup(table["catalog"])
            if spec is None:
                close = suggest(table["catalog"])
                raise self.fail(at("catalog"), f"device {name!r}: unknown catalog GPU {table['catalog']!r}",
                                f"did you mean {' or '.join(map(repr, close))}?" if close
                                else "see omni_place/data/gpu_catalog.toml for the known GPUs")
        out: dict[str, Any] = {"name": name, "kind": kind, "_spec": spec, "_line": here}
        source: dict[str, str] = {}

        def take(key: str, dest: str, catalog_value: Any, convert: Callable[[Any], Any]) -> None:
            if key in table:
                out[dest] = convert(table[key])
                source[dest.removesuffix("_bytes").removesuffix("_gbs")] = "file"
            elif catalog_value is not None:
                out[dest] = catalog_value
                source[dest.removesuffix("_bytes").removesuffix("_gbs")] = "catalog"

        take("memory_gib", "memory_bytes", spec.memory_bytes if spec else None, _gib_to_bytes)
        take("bandwidth_gbs", "bandwidth_gbs", spec.bandwidth_gbs if spec else None, float)
        take("tflops", "tflops", spec.fp16_tflops if spec else None, float)
        if "model" in table or spec is not None:
            out["model"] = table.get("model", spec.name if spec else None)
        if "compute_capability" in table and not _COMPUTE_CAPABILITY.fullmatch(table["compute_capability"]):
            raise self.fail(at("compute_capability"), f"device {name!r}: compute_capability "
                            f"{show(table['compute_capability'])} is not MAJOR.MINOR",
                            'e.g. compute_capability = "8.9"')
        if "compute_capability" in table or spec is not None:
            out["compute_capability"] = table.get("compute_capability", spec.compute_capability if spec else None)
        if "simd" in table and table["simd"] not in CPU_SIMD:
            raise self.fail(at("simd"), f"device {name!r}: simd {show(table['simd'])} is not one of "
                            f"{', '.join(CPU_SIMD)}", "the widest SIMD the engine's CPU build uses: avx512 on "
                            "a CPU with AVX-512 (a native build), else avx2")
        for key in ("threads", "peer_access", "host", "disk_gbs", "simd"):
            if key in table:
                out[key] = table[key]
        if "margin_mib" in table:
            out["margin_bytes"] = int(round(table["margin_mib"] * MiB))
        if kind != "cpu":
            for key in ("memory_bytes", "bandwidth_gbs"):
                if key not in out:
                    given = key.replace("_bytes", "_gib")
                    raise self.fail(here, f"device {name!r} ({kind}) needs {given} or a catalog GPU",
                                    f'add `{given} = ...` or `catalog = "RTX 4090"`-style')
            out["total_bytes"] = out["memory_bytes"]
        if "peer_access" in table:
            source["peer_access"] = "file"
        if kind == "gpu":
            self._gpu_link(i, table, spec, out, source)
        elif kind == "rpc":
            self._rpc_link(i, table, out, source)
        out["source"] = source
        return out

    def _check_name(self, i: int, name: str, kind: str) -> None:
        line = self.loc.device_key(i, "name")
        if kind == "cpu" and name != "CPU":
            raise self.fail(line, f"the cpu device must be named 'CPU' (got {name!r})",
                            "llama.cpp calls the host device CPU")
        if kind == "rpc" and not _RPC_NAME.fullmatch(name):
            raise self.fail(line, f"rpc device name {name!r} is not RPC<n>",
                            "llama.cpp names RPC devices RPC0, RPC1, ... in --rpc order")
        if kind == "gpu":
            m = _GPU_NAME.fullmatch(name)
            if not m or m["prefix"] not in GPU_BACKENDS:
                fixed = next((p for p in GPU_BACKENDS if m and p.lower() == m["prefix"].lower()), None)
                raise self.fail(line, f"gpu name {name!r} is not a llama.cpp device name",
                                f"did you mean {fixed + m['index']!r}?" if fixed and m else
                                f"use <backend><n>, backend one of {', '.join(GPU_BACKENDS)} (e.g. CUDA0)")

    def _gpu_link(self, i: int, table: dict[str, Any], spec: GpuSpec | None,
                  out: dict[str, Any], source: dict[str, str]) -> None:
        def at(key: str) -> int:
            return self.loc.device_key(i, key)

        gen = table.get("pcie_gen", spec.pcie_gen if spec else None)
        width = table.get("pcie_width", spec.pcie_width if spec else None)
        if "pcie_gen" in table and gen not in PCIE_GBS_PER_LANE:
            raise self.fail(at("pcie_gen"), f"pcie_gen {show(gen)} is not a PCIe generation "
                            f"({', '.join(map(str, PCIE_GBS_PER_LANE))})")
        if "pcie_width" in table and width not in PCIE_WIDTHS:
            raise self.fail(at("pcie_width"), f"pcie_width {show(width)} is not a PCIe lane count "
                            f"({', '.join(map(str, PCIE_WIDTHS))})")
        if (gen is None) != (width is None):
            key = "pcie_width" if gen is not None else "pcie_gen"
            raise self.fail(at("pcie_gen" if gen is not None else "pcie_width"),
                            f"device {table['name']!r}: give {key} too (or a catalog GPU)")
        from_file = "pcie_gen" in table or "pcie_width" in table
        if "link_gbs" in table:
            out["link_gbs"], source["link"] = float(table["link_gbs"]), "file"
        elif gen is not None and width is not None:
            out["link_gbs"], source["link"] = pcie_gbs(gen, width), "file" if from_file else "catalog"
        else:
            gen, width = DEFAULT_PCIE
            out["link_gbs"], source["link"] = pcie_gbs(gen, width), "estimated"
        out["pcie_gen"], out["pcie_width"] = gen, width
        out["link_latency_us"] = float(table.get("link_latency_us", DEFAULT_PCIE_LATENCY_US))
        source["link_latency"] = "file" if "link_latency_us" in table else "estimated"
        if "stream_gbs" in table:
            out["stream_gbs"], source["stream"] = float(table["stream_gbs"]), "file"

    def _rpc_link(self, i: int, table: dict[str, Any], out: dict[str, Any],
                  source: dict[str, str]) -> None:
        name = table["name"]
        if "endpoint" not in table:
            raise self.fail(self.loc.device(i), f"rpc device {name!r} has no endpoint",
                            'add `endpoint = "host:port"` (the address rpc-server listens on)')
        host, problem = _parse_endpoint(table["endpoint"])
        if host is None:
            raise self.fail(self.loc.device_key(i, "endpoint"),
                            f"rpc device {name!r}: endpoint {show(table['endpoint'])} {problem}",
                            'write it as "192.168.1.20:50052" or "gpu-box.lan:50052" (IPv4 or a host name, '
                            'port 1-65535)')
        out["endpoint"] = table["endpoint"]
        out.setdefault("host", "local" if host in _LOOPBACK else host)
        out["link_gbs"] = float(table.get("link_gbs", DEFAULT_RPC_LINK_GBS))
        out["link_latency_us"] = float(table.get("link_latency_us", DEFAULT_RPC_LATENCY_US))
        source["link"] = "file" if "link_gbs" in table else "estimated"
        source["link_latency"] = "file" if "link_latency_us" in table else "estimated"

    def check_set(self, parsed: list[dict[str, Any]]) -> None:
        """Cross-device rules: unique names, one CPU, engine numbering from 0 without gaps."""
        names: dict[str, int] = {}
        cpu_line = None
        for dev in parsed:
            if dev["name"] in names:
                raise self.fail(dev["_line"], f"duplicate device name {dev['name']!r} "
                                f"(first defined at line {names[dev['name']]})")
            names[dev["name"]] = dev["_line"]
            if dev["kind"] == "cpu":
                if cpu_line is not None:
                    raise self.fail(dev["_line"], f"more than one cpu device (first at line {cpu_line})",
                                    "llama.cpp has one CPU device; describe other machines as rpc")
                cpu_line = dev["_line"]
        groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for dev in parsed:
            if dev["kind"] == "cpu":
                continue
            m = (_RPC_NAME if dev["kind"] == "rpc" else _GPU_NAME).fullmatch(dev["name"])
            assert m is not None  # checked in _check_name
            prefix = "RPC" if dev["kind"] == "rpc" else m["prefix"]
            groups.setdefault(prefix, []).append((int(m["index"]), dev))
        for prefix, members in groups.items():
            for index, dev in members:
                if index >= len(members):
                    raise self.fail(
                        dev["_line"], f"device {dev['name']!r}: with {len(members)} {prefix} "
                        f"device(s) the engine names them {prefix}0..{prefix}{len(members) - 1}",
                        f"number {prefix} devices from 0 without gaps, as llama.cpp does")


def _parse_cluster(text: str, path: str, *, nvml: ModuleType | Any | None, measure: bool) -> Cluster:
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise ClusterError(f"{path}: invalid TOML: arrays or tables nest too deeply",
                           hint="a cluster file nests two levels: [[devices]] tables of keys") from None
    except ValueError as err:
        if isinstance(err, tomllib.TOMLDecodeError):
            raise _toml_error(err, path) from None
        raise ClusterError(f"{path}: invalid TOML: {err}") from None  # e.g. a 5000-digit integer
    parser = _FileParser(text, path)
    parser.top_level(doc)
    tables = doc.get("devices", [])
    if len(tables) > MAX_ACCELERATORS + 1:  # before any per-device work: time stays linear
        raise parser.fail(parser.loc.device(MAX_ACCELERATORS + 1),
                          f"{len(tables)} devices: a cluster has at most {MAX_ACCELERATORS} accelerators and a CPU",
                          hint="describe a subset of the machine (llama.cpp itself takes at most 16 GPUs)")
    parsed = [parser.device(i, table) for i, table in enumerate(tables)]
    parser.check_set(parsed)
    accelerators = sum(dev["kind"] != "cpu" for dev in parsed)
    if accelerators > MAX_ACCELERATORS:
        raise parser.fail(1, f"{accelerators} accelerators: a cluster has at most {MAX_ACCELERATORS}",
                          hint="describe a subset of the machine (llama.cpp itself takes at most 16 GPUs)")
    return _build(doc, parser, parsed, nvml=nvml, measure=measure)


def _toml_error(err: Exception, path: str) -> ClusterError:
    m = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
    msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(err)) or "syntax error"
    where = f"{m[1]}:{m[2]}" if m else "1"
    return ClusterError(f"{path}:{where}: invalid TOML: {msg}",
                        hint="check the TOML syntax (key = value, [[devices]] headers, quotes)")


def _build(doc: dict[str, Any], parser: _FileParser, parsed: list[dict[str, Any]], *,
           nvml: ModuleType | Any | None, measure: bool) -> Cluster:
    notes: list[str] = []
    base: list[Device] = []
    if doc.get("discover", False):
        for dev in parsed:
            if dev["kind"] == "gpu":
                raise parser.fail(dev["_line"], f"gpu {dev['name']!r}: with discover = true local "
                                  "GPUs come from NVML", 'describe GPUs of other machines as kind = "rpc"')
        base, notes = discover_gpus(nvml, measure=measure)
    devices: list[Device] = list(base)
    cpu_given: dict[str, Any] | None = None
    for dev in parsed:
        kwargs = {k: v for k, v in dev.items() if not k.startswith("_")}
        if dev["kind"] == "cpu":
            cpu_given = kwargs
            continue
        devices.append(Device(**kwargs))
    given = {k: v for k, v in cpu_given.items() if k not in ("name", "kind", "source")} if cpu_given else None
    cpu = _local_cpu(measure=measure, given=given)
    if cpu_given is None:
        notes.append("no cpu device in the file: using this machine's CPU")
    notes += _gpu_speed_notes(devices) + _cpu_notes(cpu)
    devices.append(cpu)
    name = doc.get("name") or Path(parser.path).stem
    return Cluster(name=name, devices=_engine_order(devices),
                   description=doc.get("description", ""), notes=tuple(notes))


def load_cluster(path: str | os.PathLike[str], *, nvml: ModuleType | Any | None = None,
                 measure: bool = False) -> Cluster:
    """Read a TOML cluster file (schema: ``omni-place devices --help``).

    CPU figures the file leaves out (and the whole CPU, if the file has none) come from this
    machine; ``measure`` measures its memory and disk bandwidth where the file gives none. With
    ``discover = true`` in the file, NVML GPUs (through ``nvml``, as in :func:`discover`) join
    the file's devices, with ``measure`` their host->GPU copy rates too.

    Raises:
        ClusterError: the file is missing, not TOML, or describes an impossible machine; the
            message names the file and line.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"a cluster file is a path (got {show(path)})")
    p = Path(path)
    if not os.path.lexists(p):
        raise ClusterError(f"cluster file not found: {p}",
                           hint=f"check the path, or use a preset: {', '.join(list_presets())}")

    def unreadable(message: str) -> ClusterError:
        return ClusterError(f"cannot read cluster file: {message}", hint="give the path of a .toml cluster file")
    text = decode_text(read_file(p, limit=MAX_CLUSTER_BYTES, what="cluster file", error=unreadable),
                       str(p), error=unreadable)
    return _parse_cluster(text, str(p), nvml=nvml, measure=measure)



def load_preset(name: str, *, measure: bool = False) -> Cluster:
    """A cluster shipped with omni_place (``omni_place/data/presets/<name>.toml``).

    Raises:
        ClusterError: no preset has that name (the message lists the available ones).
    """
    available = list_presets()
    if not isinstance(name, str):
        raise InvalidArgumentError(f"a preset name is a string (got {show(name)})")
    if not _PRESET_NAME.fullmatch(name) or name not in available:
        close = difflib.get_close_matches(name, available, n=1)
        raise ClusterError(f"unknown preset {show(name)} (available: {', '.join(available)})",
                           hint=f"did you mean {close[0]!r}?" if close
                           else "or pass a cluster file with --cluster FILE")
    ref = _preset_dir() / f"{name}.toml"
    with resources.as_file(ref) as path:
        return _parse_cluster(ref.read_text(encoding="utf-8"), str(path), nvml=None, measure=measure)

