"""Hold GPU memory so that a given amount stays free (an emulated smaller GPU), until killed.

``python benchmarks/ballast.py FREE_GIB [--device N]`` allocates plain device memory (PyTorch,
i.e. cudaMalloc) until ``cudaMemGetInfo`` reports FREE_GIB free, prints what it holds, then
sleeps. Start it detached (``setsid nohup ... &``) and kill it to give the memory back.
"""
from __future__ import annotations

import argparse
import time


def main() -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("free_gib", type=float)
    ap.add_argument("--device", type=int, default=0)
    a = ap.parse_args()
    dev = torch.device("cuda", a.device)
    held = []
    target = int(a.free_gib * (1 << 30))
    for _ in range(64):
        free, _total = torch.cuda.mem_get_info(dev)
        if free - target < (16 << 20):
            break
        held.append(torch.empty(free - target, dtype=torch.uint8, device=dev))
    free, total = torch.cuda.mem_get_info(dev)
    print(f"ballast: holding {sum(t.numel() for t in held) / (1 << 30):.2f} GiB, free {free / (1 << 30):.3f} "
          f"of {total / (1 << 30):.1f} GiB", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    raise SystemExit(main())
