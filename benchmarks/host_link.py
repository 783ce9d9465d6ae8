"""Host-side transfer rates that decide op offload and CPU decode, measured on a GPU machine.

llama.cpp copies a CPU-held weight to the GPU per ubatch with ``cudaMemcpyAsync`` from its
``CPU_Mapped`` buffer (``ggml/src/ggml-cuda/ggml-cuda.cu:779-783``, called from
``ggml_backend_sched_compute_splits``, ``ggml/src/ggml-backend.cpp:1708-1800``): pageable
memory, which the driver stages through pinned buffers. This prints, as one JSON object:

- ``h2d_gbs``: host-to-device GB/s for pinned memory, pageable ``malloc`` memory and pages of
  a memory-mapped file in the page cache (what llama.cpp copies from), per copy size;
- ``cpu``: CPU memory bandwidth as ``omni-place devices --measure`` reports it (since the H200
  run of benchmarks/results/speed_truth the C core's multi-threaded read; in that run's
  host_link.json it was still a numpy copy counting bytes read + written), a threaded numpy
  read and one thread's copy.

Needs PyTorch with CUDA for the H2D part (skipped without). Usage:
``python benchmarks/host_link.py --file MODEL.gguf``
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

MB = 1 << 20


def _best(fn: Any, reps: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def h2d(sizes: list[int], file: str | None) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0)}
    mm = None
    if file:
        fd = os.open(file, os.O_RDONLY)
        mm = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        os.close(fd)
    for size in sizes:
        dst = torch.empty(size, dtype=torch.uint8, device="cuda")
        pageable = torch.ones(size, dtype=torch.uint8)
        pinned = pageable.pin_memory()
        row: dict[str, float] = {}
        for name, src in (("pinned", pinned), ("pageable", pageable)):
            def copy(src: Any = src, dst: Any = dst) -> None:
                dst.copy_(src, non_blocking=True)
                torch.cuda.synchronize()
            row[name] = round(size / _best(copy) / 1e9, 2)
        if mm is not None and len(mm) >= 2 * size:
            view = np.frombuffer(mm, dtype=np.uint8, count=size, offset=len(mm) // 2 - len(mm) // 2 % 4096)
            src_t = torch.from_numpy(view)

            def copy_mapped(src_t: Any = src_t, dst: Any = dst) -> None:
                dst.copy_(src_t, non_blocking=True)
                torch.cuda.synchronize()
            row["file_mapped"] = round(size / _best(copy_mapped) / 1e9, 2)
            del src_t, view
        out[f"{size // MB}MiB"] = row
        del dst, pageable, pinned
    return out


def cpu(threads: int) -> dict[str, Any]:
    from omni_place.cpuprobe import measure_memory_bandwidth

    n = (1 << 30) // 8
    a = np.full(n, 1.0)
    b = np.full(n, 0.0)
    bounds = np.linspace(0, n, threads + 1, dtype=np.int64)
    parts = [a[x:y] for x, y in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(threads) as pool:
        read = _best(lambda: list(pool.map(np.sum, parts)))
    one = _best(lambda: np.copyto(b, a))
    return {"threads": threads, "omni_place_measure_gbs": round(measure_memory_bandwidth(threads), 1),
            "read_gbs": round(n * 8 / read / 1e9, 1), "one_thread_copy_gbs": round(2 * n * 8 / one / 1e9, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", help="a large file in the page cache (the model) for the mapped-memory copy")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    out: dict[str, Any] = {"cpu": cpu(a.threads)}
    try:
        out["h2d_gbs"] = h2d([64 * MB, 256 * MB, 1024 * MB], a.file)
    except Exception as err:  # noqa: BLE001 - no torch / no CUDA: the CPU part still counts
        out["h2d_error"] = repr(err)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
