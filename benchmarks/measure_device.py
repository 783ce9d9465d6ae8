"""What ``omni-place devices --measure`` measures on this machine, and how long each probe takes.

Prints one JSON object:

- ``devices``: the ``devices --measure --format json`` document, through the real CLI;
- ``devices_wall_s``: its wall time (CPU read probe, disk probe and host->GPU copies together);
- ``cpu_read``: the CPU read probe (csrc/membw.c) at 1 thread, half the engine threads and all
  of them -- GB/s and seconds each -- to show that it scales with threads as decode does;
- ``host_copies``: per CUDA device, host->GPU GB/s from pageable and pinned memory
  (omni_place.devices.cudacopy) and the probe's seconds, with its notes.

Usage: ``python benchmarks/measure_device.py [--threads N]`` (default: the engine threads,
i.e. the physical cores omni_place sees).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from typing import Any


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, round(time.perf_counter() - start, 3)


def main() -> int:
    from omni_place.cli import main as cli
    from omni_place.cpuprobe import cpu_info, measure_memory_bandwidth
    from omni_place.devices.cudacopy import measure_host_copies

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=cpu_info().physical_cores)
    args = ap.parse_args()

    out: dict[str, Any] = {}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code, out["devices_wall_s"] = _timed(cli, ["devices", "--measure", "--format", "json"])
    out["devices"] = json.loads(buf.getvalue()) if code == 0 else {"exit_code": code, "output": buf.getvalue()}

    out["cpu_read"] = []
    for threads in sorted({1, max(1, args.threads // 2), args.threads}):
        gbs, seconds = _timed(measure_memory_bandwidth, threads=threads)
        out["cpu_read"].append({"threads": threads, "gbs": round(gbs, 1), "probe_s": seconds})

    (rates, notes), seconds = _timed(measure_host_copies)
    out["host_copies"] = {"probe_s": seconds, "notes": notes,
                          "devices": {f"CUDA{i}": {"pageable_gbs": r.pageable_gbs, "pinned_gbs": r.pinned_gbs,
                                                   "pci_bus_id": r.pci_bus_id} for i, r in rates.items()}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
