"""The machine the planner places a model on: :class:`Device` and :class:`Cluster`.

A cluster comes from one of three places, all giving the same :class:`Cluster`:

* :func:`discover` -- NVIDIA GPUs through NVML (``nvidia-ml-py``) plus this machine's CPU. A
  missing driver, library or field is never an error: the cluster is then the CPU alone.
* :func:`load_cluster` -- a TOML cluster file (schema in ``omni-place devices --help``).
* :func:`load_preset` -- a cluster file shipped in ``omni_place/data/presets``.

:func:`resolve_cluster` accepts any of these specs and is what ``plan_split(cluster=...)`` calls.

Devices are named and ordered the way llama.cpp names and orders them by default: ``RPC0``,
``RPC1``, ... first (in ``--rpc`` order), then ``CUDA0``, ``CUDA1``, ... in CUDA's enumeration
order, then ``CPU``. Figures: memory in bytes, bandwidth and links in GB/s (10**9 B/s), compute
in dense FP16 tensor TFLOPS (see ``data/gpu_catalog.toml``).

This package only re-exports. Its modules, each importing only those listed before it:

* :mod:`.cluster` -- the model: Device, Cluster, engine order, the local CPU, defaults, preset names;
* :mod:`.cudacopy` -- host->GPU copy rates measured through the CUDA driver (``stream_gbs``);
* :mod:`.nvml` -- NVML discovery (:func:`discover`);
* :mod:`.cluster_file` -- the TOML cluster-file parser and presets (:func:`load_cluster`,
  :func:`load_preset`);
* :mod:`.resolve` -- :func:`resolve_cluster`.
"""
from __future__ import annotations

from ..catalog import PCIE_GBS_PER_LANE, pcie_gbs
from ..cpuprobe import DEFAULT_CPU_BANDWIDTH_GBS
from .cluster import (
    CPU_THREAD_GBS,
    DEFAULT_GPU_BANDWIDTH_GBS,
    DEFAULT_MARGIN_BYTES,
    DEFAULT_PCIE,
    DEFAULT_PCIE_LATENCY_US,
    DEFAULT_RPC_LATENCY_US,
    DEFAULT_RPC_LINK_GBS,
    MAX_THREADS,
    Cluster,
    Device,
    DeviceKind,
    list_presets,
)
from .cluster_file import load_cluster, load_preset
from .nvml import discover
from .resolve import resolve_cluster

__all__ = [
    "Cluster", "Device", "DeviceKind", "discover", "list_presets", "load_cluster", "load_preset",
    "pcie_gbs", "resolve_cluster", "DEFAULT_CPU_BANDWIDTH_GBS", "PCIE_GBS_PER_LANE",
    "DEFAULT_GPU_BANDWIDTH_GBS", "DEFAULT_MARGIN_BYTES", "DEFAULT_PCIE", "DEFAULT_PCIE_LATENCY_US",
    "DEFAULT_RPC_LATENCY_US", "DEFAULT_RPC_LINK_GBS", "MAX_THREADS", "CPU_THREAD_GBS",
]
