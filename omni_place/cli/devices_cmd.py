"""`omni-place devices`: show the devices the planner will use."""
from __future__ import annotations

import json
from collections.abc import Sequence

import click

from ..devices import Cluster, Device, discover, list_presets, load_cluster, load_preset
from ..errors import InvalidArgumentError
from ..termtext import printable
from . import cli

GIB = 1 << 30


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _link(dev: Device) -> str:
    if dev.link_gbs is None:
        return "-"
    speed = f"{dev.link_gbs:.1f} GB/s" if dev.link_gbs >= 10 else f"{dev.link_gbs:.2f} GB/s"
    if dev.kind == "rpc":
        return f"net {speed}, {dev.link_latency_us:g} us"
    if dev.pcie_gen is not None:
        return f"PCIe{dev.pcie_gen} x{dev.pcie_width} {speed}"
    return speed


def _model(dev: Device) -> str:
    model = dev.model or "-"
    if dev.kind == "cpu" and dev.threads:
        simd = f", {dev.simd.upper()}" if dev.simd else ""
        disk = f", disk {dev.disk_gbs:.1f} GB/s" if dev.disk_gbs else ""
        return f"{model} ({dev.threads} threads{simd}{disk})"
    if dev.kind == "rpc":
        return f"{model} @ {dev.endpoint}"
    return model


def _source(dev: Device) -> str:
    return "+".join(dict.fromkeys(dev.source.values())) or "-"


def _peer(dev: Device) -> str:
    if dev.kind != "gpu":
        return "-"
    return {True: "yes", False: "no", None: "?"}[dev.peer_access]


def format_table(cluster: Cluster) -> str:
    """The aligned text table `omni-place devices` prints."""
    header = ("NAME", "KIND", "MODEL", "FREE/TOTAL GiB", "BW GB/s", "TFLOPS", "LINK", "STREAM GB/s", "PEER",
              "SOURCE")
    rows: list[Sequence[str]] = [header]
    for dev in cluster.devices:
        fields = (dev.name, dev.kind, _model(dev), f"{_gib(dev.free_bytes)}/{_gib(dev.total_bytes)}",
                  _number(dev.bandwidth_gbs), _number(dev.tflops), _link(dev), _number(dev.stream_gbs),
                  _peer(dev), _source(dev))
        rows.append([printable(c) for c in fields])  # names and models come from cluster files
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {3, 4, 5, 7}  # numeric columns
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    title = f"cluster: {cluster.name}" + (f" -- {cluster.description}" if cluster.description else "")
    return "\n".join([printable(title), *lines])


@cli.command("devices")
@click.option("--cluster", "cluster_file", metavar="FILE",
              help="Describe the machine with a TOML cluster file.")
@click.option("--preset", metavar="NAME", help="Use a shipped cluster preset (see --list-presets).")
@click.option("--measure", is_flag=True,
              help="Measure the CPU's multi-threaded memory read bandwidth, the disk's read speed and each "
                   "NVIDIA GPU's host->GPU copy rate from pageable memory (a few seconds).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format.")
@click.option("--list-presets", "list_presets_", is_flag=True, help="List the shipped presets and exit.")
def devices_command(cluster_file: str | None, preset: str | None, measure: bool, fmt: str,
                    list_presets_: bool) -> None:
    """Show the devices the planner will use: GPUs, the CPU and llama.cpp RPC hosts.

    With no option, NVIDIA GPUs are discovered through NVML (honouring CUDA_VISIBLE_DEVICES
    and CUDA_DEVICE_ORDER, named CUDA0, CUDA1, ... as llama.cpp names them) next to this
    machine's CPU; without a driver the CPU alone is shown. --cluster FILE or --preset NAME
    describe a machine you may not have.

    SOURCE says where figures came from: nvml, catalog (omni_place/data/gpu_catalog.toml),
    file, os, measured or estimated. BW is memory bandwidth (the CPU's as --measure measures
    it: all engine threads reading at once, what decode does), TFLOPS dense FP16 tensor
    throughput, LINK the path to the host (PCIe, or the network for RPC), STREAM the rate at
    which the engine copies CPU-held weights from pageable memory to the GPU (op offload),
    PEER whether GPU peer-to-peer access works with every other GPU.

    \b
    Cluster file (TOML):
      name = "my-box"            optional, defaults to the file name
      description = "..."        optional
      discover = false           true: add this machine's NVML GPUs to the file's devices
    \b
      [[devices]]                one table per device; keys:
      name             llama.cpp device name: CUDA0.. (or ROCm0, Vulkan0, ...), RPC0.., CPU
      kind             gpu | cpu | rpc
      catalog          GPU catalog entry that fills the figures below (gpu, rpc)
      memory_gib       memory the engine may use, GiB (required unless catalog)
      bandwidth_gbs    memory bandwidth, GB/s (required for gpu/rpc unless catalog)
      tflops           dense FP16 tensor TFLOPS
      model            free-text model name
      link_gbs         link to the host, GB/s (rpc: the network; default 1.25)
      link_latency_us  link latency, microseconds (default 10, rpc 100)
      pcie_gen         PCIe generation 1-6 (gpu; sets link_gbs)
      pcie_width       PCIe lanes 1-32 (gpu)
      compute_capability  CUDA compute capability "8.9" (gpu; from catalog or NVML): picks
                       the catalog's speed row, what llama.cpp achieves of the figures above
      stream_gbs       GB/s at which the engine copies CPU-held weights from pageable host
                       memory to this GPU for op offload (gpu; --measure measures it)
      peer_access      true | false: GPU peer-to-peer works (gpu)
      endpoint         rpc-server address "host:port" (rpc, required)
      threads          CPU threads for the engine (cpu)
      simd             avx512 | avx2: the SIMD the engine's CPU build runs (cpu; prices the CPU's
                       prompt kernels per type; left out: priced over both, unless no file
                       describes the CPU: then this CPU's flags give it, as a native build)
      disk_gbs         read GB/s of the disk the model is on (cpu; weights beyond RAM page in
                       from it with plan --allow-paging; default 2, --measure measures it)
      margin_mib       memory kept free on the device, MiB (default 512)
      host             machine the device is in (default "local"; rpc: endpoint host)
    \b
      One cpu at most; CPU figures left out are read from this machine.
      Names are numbered from 0 without gaps per backend, as llama.cpp numbers them.
    \b
    Example:
      name = "desk"
      [[devices]]
      name = "CUDA0"
      kind = "gpu"
      catalog = "RTX 4090"
      [[devices]]
      name = "RPC0"
      kind = "rpc"
      catalog = "RTX 3090"
      endpoint = "192.168.1.20:50052"
      [[devices]]
      name = "CPU"
      kind = "cpu"
      memory_gib = 120
      bandwidth_gbs = 65
      threads = 16
    """
    if list_presets_:
        for name in list_presets():
            click.echo(printable(f"{name:<16} {load_preset(name).description}"))
        return
    if cluster_file is not None and preset is not None:
        raise InvalidArgumentError("--cluster and --preset are mutually exclusive",
                                   hint="describe the machine with one of them")
    if cluster_file is not None:
        cluster = load_cluster(cluster_file, measure=measure)
    elif preset is not None:
        cluster = load_preset(preset, measure=measure)
    else:
        cluster = discover(measure=measure)
    notes = list(cluster.notes)
    if measure and cluster.cpu is not None and cluster.cpu.source.get("bandwidth") != "measured":
        notes.append("--measure ignored: the CPU bandwidth comes from the cluster description")
    if fmt == "json":
        click.echo(json.dumps({**cluster.to_dict(), "notes": notes}, indent=2))
        return
    click.echo(format_table(cluster))
    for note in notes:
        click.echo(printable(f"note: {note}"), err=True)
