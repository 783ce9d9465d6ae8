"""The engine-neutral description of a placement and what pricing it returns.

A :class:`Placement` says where every layer's home is (its dense part, KV cache and compute),
where those of its routed-expert tensors live that do not live with it (the CPU or another local
GPU), and where the output head goes;
:class:`Context` holds the run settings that change memory and speed; :class:`DeviceUsage` and
:class:`Prediction` are the bytes and seconds :class:`omni_place.cost.CostModel` prices.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any, Iterable, Sequence

from .attention import prompt_ubatches
from .devices import Device
from .errors import InvalidArgumentError
from .model import ModelProfile, TensorRecord

CPU = "CPU"

# Routed-expert tensor kinds as they appear in names (ffn_<kind>_exps / ffn_<kind>_chexps).
EXPERT_KINDS = ("gate", "up", "down", "gate_up")
# The per-layer expert options the optimizer chooses from: which kinds are overridden to the CPU.
EXPERT_OPTIONS: tuple[frozenset[str], ...] = (
    frozenset(),  # all experts with the layer
    frozenset({"down"}),  # ffn_down_exps on the CPU
    frozenset({"gate", "up", "gate_up"}),  # gate/up on the CPU, down with the layer
    frozenset(EXPERT_KINDS),  # all experts on the CPU
)


# A layer's routed-expert kinds that do not live with the layer, as (kind, device) pairs: device
# "CPU" or another local accelerator of the placement's order. The common case, every kind with
# the layer, is the empty set; a kind appears at most once and never with its layer's own device.
ExpertHomes = frozenset[tuple[str, str]]


def on_cpu(kinds: Iterable[str]) -> ExpertHomes:
    """Expert homes with ``kinds`` in CPU RAM and the rest with the layer."""
    return frozenset((k, CPU) for k in kinds)


def expert_kind(t: TensorRecord) -> str:
    """'gate', 'up', 'down' or 'gate_up' for a routed-expert tensor name."""
    inner = t.name.split(".", 2)[2]
    return inner.split("_exps")[0].split("_chexps")[0].removeprefix("ffn_")


@dataclass(frozen=True)
class Placement:
    """Where everything goes, engine-neutral. Layer homes are device names or ``"CPU"``."""

    order: tuple[str, ...]  # accelerators in engine device order (the -dev list)
    layer_home: tuple[str, ...]  # per layer slot
    expert_homes: tuple[ExpertHomes, ...]  # per layer: expert kinds that live elsewhere, and where
    output: str  # device holding the output head, or "CPU"
    extra_overrides: tuple[tuple[str, str], ...] = ()  # (regex, device) the user gave that we model as-is

    @cached_property
    def cpu_experts(self) -> tuple[frozenset[str], ...]:
        """Per layer: the expert kinds in CPU RAM."""
        return tuple(frozenset(k for k, d in homes if d == CPU) for homes in self.expert_homes)

    def experts_away(self, il: int) -> dict[str, frozenset[str]]:
        """Layer ``il``'s expert kinds that do not live with it, by the device they live on (in
        name order)."""
        out: dict[str, set[str]] = {}
        for kind, dev in self.expert_homes[il]:
            out.setdefault(dev, set()).add(kind)
        return {dev: frozenset(out[dev]) for dev in sorted(out)}

    def experts_where(self, il: int, present: frozenset[str]) -> str:
        """Where layer ``il``'s experts of the kinds it has (``present``) live: one device's name,
        or the devices with their kinds, e.g. ``CUDA0+CPU(gate,up)`` (down with the layer)."""
        away = {d: kinds & present for d, kinds in self.experts_away(il).items() if kinds & present}
        home = self.layer_home[il]
        if home == CPU or not away:
            return home
        stays = present - frozenset().union(*away.values())
        if not stays and len(away) == 1:
            return next(iter(away))
        return "+".join([home] * bool(stays) + [f"{d}({','.join(sorted(k))})" for d, k in away.items()])

    def expert_home(self, il: int, kind: str) -> str:
        """The device layer ``il``'s routed experts of ``kind`` live on."""
        return next((d for k, d in self.expert_homes[il] if k == kind), self.layer_home[il])

    @cached_property
    def foreign_experts(self) -> frozenset[str]:
        """Accelerators holding experts of a layer whose home is another device."""
        return frozenset(d for homes in self.expert_homes for _, d in homes if d != CPU)

    def layers_on(self, name: str) -> list[int]:
        return [il for il, h in enumerate(self.layer_home) if h == name]

    @cached_property
    def output_after_layers(self) -> bool:
        """The output head alone on a device of the order after every device holding layers
        (llama.cpp spells that with the head's own -ts slot, no override)."""
        used = [i for i, name in enumerate(self.order) if name in self.layer_home]
        return (bool(used) and self.output in self.order and self.order.index(self.output) > used[-1]
                and self.output not in self.foreign_experts)


@dataclass
class DeviceUsage:
    """Memory of one device under a placement, in bytes."""

    name: str
    kind: str
    weights_bytes: int = 0
    kv_bytes: int = 0
    compute_bytes: int = 0
    capacity_bytes: int = 0  # usable: memory minus margin
    margin_bytes: int = 0
    pageable_bytes: int = 0  # mmap'd weights the OS may page from disk (CPU, --allow-paging only)
    n_layers: int = 0
    holds_output: bool = False

    @classmethod
    def empty(cls, name: str, device: Device) -> DeviceUsage:
        """Nothing yet on ``device`` (called ``name`` in the placement): its capacity and margin."""
        return cls(name, device.kind, capacity_bytes=device.usable_bytes, margin_bytes=device.margin_bytes)

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    @property
    def headroom_bytes(self) -> int:
        """Usable memory left once everything that must stay resident is in (negative when it
        overflows); pageable weights (mmap'd CPU weights when paging is allowed) may stay on disk."""
        return self.capacity_bytes - (self.used_bytes - self.pageable_bytes)

    @property
    def fits(self) -> bool:
        """Everything that must stay resident fits: the KV cache, compute buffers and weights that may not page."""
        return self.headroom_bytes >= 0

    @property
    def shortfall_bytes(self) -> int:
        """Bytes over the usable memory, not counting what may page (0 when it fits)."""
        return max(0, -self.headroom_bytes)

    @property
    def paged_bytes(self) -> int:
        """Pageable weights that do not fit in RAM: read from disk as they are used."""
        return min(self.pageable_bytes, max(0, self.used_bytes - self.capacity_bytes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "n_layers": self.n_layers,
            "holds_output": self.holds_output,
            "weights_bytes": self.weights_bytes,
            "kv_bytes": self.kv_bytes,
            "compute_bytes": self.compute_bytes,
            "capacity_bytes": self.capacity_bytes,
            "margin_bytes": self.margin_bytes,
            "free_bytes": self.free_bytes,
            "paged_bytes": self.paged_bytes,
            "fits": self.fits,
        }


@dataclass
class Prediction:
    """Predicted speed with where the time goes (seconds per token, by device / activity)."""

    tg_tps: float
    pp_tps: float
    tg_breakdown: dict[str, float] = field(default_factory=dict)
    pp_breakdown: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tg_tps": round(self.tg_tps, 3),
            "pp_tps": round(self.pp_tps, 3),
            "tg_ms_per_token": {k: round(v * 1e3, 4) for k, v in self.tg_breakdown.items()},
            "pp_ms_per_token": {k: round(v * 1e3, 5) for k, v in self.pp_breakdown.items()},
        }


def add_seconds(acc: dict[str, float], part: dict[str, float]) -> None:
    """Add a time breakdown (seconds by device or activity, as in :class:`Prediction`) into ``acc``."""
    for k, v in part.items():
        acc[k] = acc.get(k, 0.0) + v


@dataclass(frozen=True)
class Context:
    """The run settings that change memory and speed."""

    ctx: int = 4096
    n_ubatch: int = 512
    n_batch: int = 2048  # a llama-bench test's prompt goes to llama_decode this many tokens at a time
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = True
    depth: int = 0  # tokens already in the KV cache when decoding (llama-bench -d)
    # a llama-bench test's lengths after ``depth``: its later decodes and ubatches attend to the
    # earlier ones (attention.mean_depths); 0: one token, one ubatch (a server at ``depth``)
    n_prompt: int = 0
    n_gen: int = 0
    prompt_depth: int | None = None  # the prompt test's depth where it is not ``depth`` (ik's -gp)
    n_seq: int = 1
    swa_full: bool = False  # SWA layers' KV sized for the whole context (ik_llama.cpp)
    # GLM-DSA's indexer keys cached by ik_llama.cpp's rule (ModelProfile.kv_layer_bytes ik_indexer) in
    # ``type_indexer``, not the header's full layers in type_k (EngineTraits.ik_dsa_indexer)
    ik_dsa_indexer: bool = False
    type_indexer: str = "f16"
    allow_paging: bool = False  # CPU-held weights beyond RAM may page from disk (mmap), priced at disk speed
    embedding_on_first: bool = False  # token embedding on the first device (vLLM), else CPU RAM
    # CPU-held weights loaded without mmap (mainline -lm none, ik --no-mmap) sit in the first
    # GPU's pinned host buffer: op offload copies them at the pinned rate, and they cannot page
    pinned_weights: bool = False
    # experts of GPU layers held by the CPU through overrides are pinned even with mmap (EngineTraits)
    pinned_overrides: bool = False
    # a CPU layer's KV cache is pinned (EngineTraits): op offload moves it at the pinned rate
    pinned_cpu_cache: bool = False
    # a CPU-held recurrent layer's conv-state store copies the whole conv input down (EngineTraits)
    conv_store_reads_input: bool = True
    # op offload (llama.cpp's default): prompt ops of CPU-held weights run on the first GPU, their
    # weights copied in per ubatch; off (mainline --no-op-offload): the CPU computes them
    op_offload: bool = True
    # routed experts' MUL_MAT_ID offloaded only at n_tokens x used >= 32 x experts (EngineTraits)
    moe_offload_by_share: bool = False
    # a routed-expert FFN runs as three ops: up and gate fused with the activation, down, the
    # weighted sum (EngineTraits.fused_moe)
    fused_moe: bool = False
    # the CPU runs ik_llama.cpp's kernels, not mainline's: their prompt time per weight type
    # (data/weight_types.toml), the decode's cache at the memory's rate (EngineTraits)
    ik_cpu_kernels: bool = False
    # the host builds a ubatch's KQ mask reusing each row for the next (mainline), else cell by cell
    # over half its hardware threads (ik_llama.cpp; attention.kq_mask_work)
    kq_mask_reuses_rows: bool = True
    # a decoded token's MLA attention on a GPU is bound by its FLOPs (EngineTraits.mla_decode_flops)
    mla_decode_flops: bool = True
    # bytes an engine's compute buffers run above mainline's replay: accelerator, host (EngineTraits)
    compute_margin: int = 0
    host_compute_margin: int = 0
    replay_gpus: int = 0  # the most GPUs of a cluster the replay prices, 0: any (EngineTraits)
    # a head alone on a later layer-less device takes no -ot, so it may pipeline (EngineTraits)
    output_by_split: bool = True
    # -sm: "layer" (the default) or "none" keep each GPU layer whole on one device; a parallel
    # mode (mainline "tensor", ik "graph"; engines.splitmodes) splits the weights and KV cache of
    # every GPU layer across the placement's order by split_shares (one per device of the order),
    # and a GPU layer's layer_home then names the order's first device (omni_place.splitcost)
    split_mode: str = "layer"
    split_shares: tuple[float, ...] = ()


def over_prompt_test(context: Context, n_tokens: int, pred: Prediction,
                     price_at: Callable[[Context], Prediction]) -> Prediction:
    """``pred`` (priced per token at ubatches of ``n_tokens``) with its prompt as a llama-bench test of
    ``context.n_prompt`` tokens runs it (attention.prompt_ubatches): a ubatch of another size is
    ``price_at`` a context of that ubatch, after the rest of the prompt; the test's tok/s is its
    tokens over the ubatches' seconds. Unchanged where every ubatch has ``n_tokens`` (or no test)."""
    sizes = prompt_ubatches(context.n_prompt, context.n_batch, n_tokens)
    if set(sizes) <= {n_tokens}:
        return pred
    start = context.depth if context.prompt_depth is None else context.prompt_depth
    pp: dict[str, float] = {}
    for size, count in sizes.items():
        part = pred if size == n_tokens else price_at(replace(context, n_ubatch=size, n_prompt=size,
                                                              prompt_depth=start + context.n_prompt - size))
        add_seconds(pp, {k: v * size * count / context.n_prompt for k, v in part.pp_breakdown.items()})
    t_pp = sum(pp.values())
    return Prediction(pred.tg_tps, 1.0 / t_pp if t_pp > 0 else math.inf, pred.tg_breakdown, pp)


def placement_from_counts(model: ModelProfile, order: Sequence[str], n_cpu: int, counts: Sequence[int],
                          options: Sequence[int] | None = None, output: str | None = None) -> Placement:
    """Build a placement from a CPU prefix, per-device layer counts in order, and option indices."""
    if n_cpu + sum(counts) != model.n_layer:
        raise InvalidArgumentError(f"{n_cpu} CPU layers + {sum(counts)} device layers != {model.n_layer}")
    homes: list[str] = [CPU] * n_cpu
    for name, n in zip(order, counts):
        homes += [name] * n
    opts = list(options) if options is not None else [0] * model.n_layer
    experts = tuple(on_cpu(EXPERT_OPTIONS[o]) if h != CPU and o >= 0 else frozenset() for h, o in zip(homes, opts))
    if output is None:
        used = [n for n, c in zip(order, counts) if c > 0]
        output = used[-1] if used else CPU
    return Placement(tuple(order), tuple(homes), experts, output)


@dataclass(frozen=True)
class SpeedParams:
    """Efficiencies and fixed costs of the speed model (fitted by calibration).

    Defaults: where a figure was measured, the record is named; the H200 figures come from
    ``benchmarks/results/speed_truth.md`` (one H200 VM, dense and MoE models, 60 placements)."""

    # multipliers on what the GPU catalog says llama.cpp achieves on a GPU of that compute
    # capability (``[[speed]]`` in data/gpu_catalog.toml): of its bandwidth in decode matvecs and
    # of its FP16 TFLOPS in prompt matmuls; 1 = as the catalog says, calibration fits the machine's
    gpu_bw_scale: float = 1.0
    gpu_compute_scale: float = 1.0
    # achieved / the multi-threaded read bandwidth devices --measure reports (csrc/membw.c):
    # llama-bench decode of a 1.1 GB dense Q4_K model read 26-29 GB/s where the probe read 29-41
    # (2-vCPU VM, interleaved; benchmarks/results/speed_truth.md)
    cpu_bw_eff: float = 0.80
    rpc_bw_eff: float = 0.60  # RPC server backends (CPU backends over a socket)
    # tokens at which a GPU's prompt matmuls run at half their full-batch rate (MMQ tiles narrower
    # than 128 columns; omni_place/gpu_matmul.py): H200 dense prompt at ubatch 64..4096, 48
    gpu_half_rate_tokens: float = 48.0
    # MUL_MAT_ID's rate on full MMQ tiles as a share of a dense product's: H200 0.32-0.39 over
    # ubatch 1024-4096 of a GQA MoE and an MLA MoE (benchmarks/results/plans_vs_fit_25.md)
    gpu_moe_compute_eff: float = 0.33
    # achieved CPU TFLOPS per core in a prompt's dense quantized matmuls: H200 hosts, 16 threads,
    # 16 Q4_K layers of dense11 with op offload off, 0.124 and 0.165 on two VMs
    # (benchmarks/results/calibrate_31.md); other types at their kernels' time (kernels.py cpu_prompt)
    cpu_tflops_per_core: float = 0.13
    # MUL_MAT_ID's rate on the CPU as a share of that: a ubatch gives each routed expert a few
    # tokens (moe15 at ubatch 512: 32), the same two VMs ran moe15's Q4_K experts at 0.43 / 0.37
    cpu_moe_compute_eff: float = 0.4
    split_s: float = 20e-6  # cost of one graph split (sync + launch) per decoded token (H200: 21 us)
    # a ubatch's host work before its graph runs (cost.prompt_host_s: what the GPU waits for):
    # seconds per token, per KQ-mask cell checked and per mask byte written and copied up
    # (attention.kq_mask_work); fitted on 1- and 3-layer models 256 wide, whose prompt is the host's
    # work, at ubatch 128-2048 and depth 0-32768 on an H100 VM (`python -m benchmarks.gpu_shapes fit`)
    prompt_token_s: float = 3.06e-6
    mask_cell_s: float = 1.77e-9
    mask_byte_s: float = 0.0965e-9
    pcie_latency_s: float = 10e-6  # default latency of a host<->GPU copy
    op_offload_min_batch: int = 32  # GGML_OP_OFFLOAD_MIN_BATCH
    # network round trips per visit of a token to an RPC device: 1 by the protocol (one waited
    # get_tensor); 0.93-1.09 measured over four emulated links with paired, interleaved runs
    # (benchmarks/results/rpc_network.md; 1.05-1.3 with the earlier unpaired runs)
    rpc_round_trips: float = 1.08
    # achieved / base rate when op offload streams CPU-held weights to the GPU: the base is the
    # GPU's measured pageable host->device rate (``stream_gbs``, devices --measure), else
    # cost.PAGEABLE_LINK_FRACTION of its link
    stream_eff: float = 1.0
    # multiplier on the catalog's fixed decode seconds per layer and token on a GPU (kernel
    # launches and the small ops between the matvecs; ``layer_us`` of its [[speed]] row)
    gpu_layer_scale: float = 1.0
    # the same on the CPU backend (a thread barrier per op): H200 VM, 16 threads, 310 us
    cpu_layer_s: float = 300e-6
    # what an MLA attention adds on a GPU (attributed, not profiled): H200 41 us; without it
    # whole-GPU decode of dense / GQA MoE / MLA MoE priced +2 / +3 / +51 %
    # (benchmarks/results/plans_vs_fit_23.md)
    gpu_mla_layer_s: float = 41e-6
    # what a MoE FFN adds on the GPU holding its layer (router, top-k, the expert weighting and
    # sum around the MUL_MAT_IDs): H200 12 us, fitted on the whole-GPU qwen3moe run of
    # benchmarks/results/plans_vs_fit_23 (with it the MLA MoE's is within 2 %; quant_speed.md)
    gpu_moe_layer_s: float = 12e-6

    def to_dict(self) -> dict[str, float]:
        return asdict(self)



__all__ = ["CPU", "EXPERT_KINDS", "EXPERT_OPTIONS", "Context", "DeviceUsage", "ExpertHomes", "Placement", "Prediction",
           "SpeedParams", "add_seconds", "expert_kind", "on_cpu", "placement_from_counts"]
