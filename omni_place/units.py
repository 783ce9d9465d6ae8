"""Byte and rate units: the one home of these constants (binary units for memory, as the engine
prints them; decimal GB for bandwidths and link rates, as vendors quote them)."""
from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
GB = 1e9  # bytes per second in "GB/s"

__all__ = ["GB", "GiB", "KiB", "MiB"]
