"""How bytes move between a placement's backends, and when the engine moves them: the device links,
the activations' hops between devices, op offload's copies of CPU-held weights (which device takes
them, at which batch, at what rate from pinned or pageable memory) and paging from disk.

:class:`Transfers` is the part of :class:`omni_place.cost.CostModel` that knows these rules; the
cost model prices the seconds with them.
"""
from __future__ import annotations

import math

from .cpuprobe import DEFAULT_DISK_GBS
from .devices import Cluster, Device
from .model import ModelProfile
from .placement import CPU, Context, Placement, SpeedParams
from .units import GB

# Op offload copies CPU-held weights with cudaMemcpyAsync from pageable (mmap'd) memory (ggml-cuda.cu:779-783
# from ggml-backend.cpp:1708-1800), staged by the driver through pinned buffers: on an H200 VM 5.2-7.8 GB/s of
# a 63 GB/s PCIe 5 x16 link (benchmarks/host_link.py). The link's fraction where ``stream_gbs`` is unmeasured.
PAGEABLE_LINK_FRACTION = 0.12
# ... and from pinned memory (CUDA_Host): 54-55 GB/s of the 63 on that H200 (DMA at link speed).
PINNED_LINK_FRACTION = 0.87


def backend_of(dev: Device) -> str:
    return {"gpu": "cuda", "rpc": "rpc", "cpu": "cpu"}[dev.kind]


class Transfers:
    """Links, hops and op offload's rules for a (model, cluster, context); the base of the cost model."""

    model: ModelProfile
    cluster: Cluster
    context: Context
    params: SpeedParams
    cpu: Device
    n_tokens: int  # the prompt ubatch's tokens
    act_bytes: int  # one token's activations
    _devices: dict[str, Device]

    def device(self, name: str) -> Device:
        dev = self._devices.get(name)
        return dev if dev is not None else self.cluster.by_name(name)  # by_name raises the error

    def backend(self, name: str) -> str:
        """The backend class of a device name (``"cpu"`` for the CPU)."""
        return "cpu" if name == CPU else backend_of(self.device(name))

    def link(self, name: str) -> tuple[float, float]:
        """(bytes/s, seconds per crossing) of a device's path to the host.

        A GPU's latency is per host<->device copy. An RPC device's ``link_latency_us`` is the
        network round trip, and each crossing costs half of it: ggml-rpc sends set_tensor and
        graph_compute without waiting (``send_async``) and waits once per visit, for the
        get_tensor reply, so a token entering and leaving an RPC device costs one round trip
        (times ``SpeedParams.rpc_round_trips``, what was measured)."""
        if name == CPU:
            return (math.inf, 0.0)
        dev = self.device(name)
        gbs = dev.link_gbs or 16.0
        if dev.link_latency_us is None:
            return (gbs * GB, self.params.pcie_latency_s)
        lat = dev.link_latency_us * 1e-6
        return (gbs * GB, lat / 2 * self.params.rpc_round_trips if dev.kind == "rpc" else lat)

    def same_server(self, a: str, b: str) -> bool:
        """Two devices of one rpc-server: ggml-rpc copies between them on the server
        (RPC_CMD_COPY_TENSOR, one round trip, no payload over the network)."""
        if CPU in (a, b):
            return False
        da, db = self.device(a), self.device(b)
        return da.kind == db.kind == "rpc" and da.endpoint is not None and da.endpoint == db.endpoint

    def _hop(self, a: str, b: str, n_tokens: int) -> float:
        """Seconds per token to move a batch of ``n_tokens`` activations from a to b: one graph
        split, and over each end's link (the host relays between two devices) its round trip once
        per batch plus the F32 activations."""
        if a == b:
            return 0.0
        t = self.params.split_s
        if self.same_server(a, b):
            return (t + 2 * self.link(a)[1]) / n_tokens  # a copy request and its reply
        for name in (a, b):
            if name != CPU:
                bw, lat = self.link(name)
                t += lat + n_tokens * self.act_bytes / bw
        return t / n_tokens

    def hop_tg(self, a: str, b: str) -> float:
        """Seconds to move one token's activations from device a to device b (decode)."""
        return self._hop(a, b, 1)

    def hop_pp(self, a: str, b: str) -> float:
        """Per prompt token: the ubatch's activations cross once per ubatch."""
        return self._hop(a, b, self.n_tokens)

    @property
    def experts_pinned(self) -> bool:
        """Whether the CPU-held experts of GPU layers sit in pinned memory (the engine's overrides
        pin them, or every CPU-held weight is)."""
        return self.context.pinned_weights or self.context.pinned_overrides

    def stream_bandwidth(self, name: str, pinned: bool | None = None) -> float:
        """Bytes/s at which op offload streams CPU-held weights to device ``name``, times
        ``stream_eff``: from pinned memory (``pinned``, by default ``Context.pinned_weights``)
        PINNED_LINK_FRACTION of its link; from pageable mmap'd memory its measured rate
        (``stream_gbs``), else PAGEABLE_LINK_FRACTION of its link."""
        dev = self.device(name)
        measured = getattr(dev, "stream_gbs", None)
        if self.context.pinned_weights if pinned is None else pinned:
            base = self.link(name)[0] * PINNED_LINK_FRACTION
        else:
            base = measured * GB if measured else self.link(name)[0] * PAGEABLE_LINK_FRACTION
        return base * self.params.stream_eff

    def offload_device(self, p: Placement) -> str | None:
        """The device that takes op-offloaded work of CPU-held weights: the first of the order
        whose backend offloads ops, a GPU (ggml-backend.cpp:966-975; RPC offloads none), or None."""
        return next((n for n in p.order if self.device(n).kind == "gpu"), None)

    @property
    def ops_offloaded(self) -> bool:
        """Whether op offload takes ops of CPU-held weights at this batch: on, and at least
        op_offload_min_batch tokens (ggml-cuda.cu:5651-5655)."""
        return self.context.op_offload and self.n_tokens >= self.params.op_offload_min_batch

    @property
    def expert_offload_batch(self) -> int:
        """The fewest tokens of a batch whose routed-expert MUL_MAT_ID op offload takes: as any
        op's, or under ``Context.moe_offload_by_share`` enough to give each expert that many on
        average (ik ggml-cuda.cu:5180-5207)."""
        hp, least = self.model.hparams, self.params.op_offload_min_batch
        if not (self.context.moe_offload_by_share and hp.n_expert):
            return least
        return max(least, -(-least * hp.n_expert // hp.n_expert_used))

    @property
    def experts_offloaded(self) -> bool:
        """Whether op offload takes the MUL_MAT_ID of CPU-held routed experts at this batch."""
        return self.ops_offloaded and self.n_tokens >= self.expert_offload_batch

    def offloads_to(self, name: str) -> bool:
        """Whether CPU-held weights are op-offloaded to ``name`` when it is the offload device
        (:meth:`offload_device`: a GPU; RPC devices take no offload) at this batch."""
        return self.device(name).kind == "gpu" and self.ops_offloaded

    def disk_bandwidth(self) -> float:
        """Bytes/s at which weights that do not fit in RAM page in from disk."""
        return (self.cpu.disk_gbs or DEFAULT_DISK_GBS) * GB


__all__ = ["PAGEABLE_LINK_FRACTION", "PINNED_LINK_FRACTION", "Transfers", "backend_of"]
