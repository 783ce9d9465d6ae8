"""A placement's compute buffers as the cost model prices them (:meth:`.cost.CostModel.usage`).

A layer split, pipelined or not, is replayed whole where the replay was checked
(:mod:`.compute_replay`, compute_graph.SPLIT_CHECKED): one graph scheduled onto every device and
the CPU gives each device's buffer, the first CUDA device's op-offloaded work included, and the
host's (an engine whose graphs are not mainline's adds its measured margins,
:func:`add_compute_margins`). What the replay does not cover (experts on
another device than their layer's, a parallel split mode) is priced per device from the fitted
roles (:mod:`.compute`), with the first GPU's op-offload buffer and the host's beside one CUDA
device still replayed where they were checked. Beside them, what of the host's weights the
engine copies (CPU_REPACK) and what may page from disk (:func:`pageable_bytes`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .compute_graph import Layout, Offload
from .model import Role
from .placement import CPU, expert_kind

# Weight types the CPU backend repacks into interleaved CPU_REPACK buffers on x86 (AVX2; Q2_K needs
# AVX-512), for matmul weights of a multiple of 8 rows (ggml/src/ggml-cpu/repack.cpp:4925-5120
# ggml_repack_get_optimal_repack_type): allocated memory, which cannot page from the file as mmap can.
REPACK_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "MXFP4"})

if TYPE_CHECKING:
    from .compute import ComputeEstimate
    from .devices import Cluster, Device
    from .model import ModelProfile
    from .placement import Context, DeviceUsage, Placement, SpeedParams


class PricedModel(Protocol):
    """What these functions read of a :class:`.cost.CostModel`."""

    model: ModelProfile
    cluster: Cluster
    context: Context
    params: SpeedParams
    compute: ComputeEstimate
    n_tokens: int

    def backend(self, name: str) -> str: ...

    def offloads_to(self, name: str) -> bool: ...

    def offload_device(self, p: Placement) -> str | None: ...

    @property
    def ops_offloaded(self) -> bool: ...

    @property
    def experts_offloaded(self) -> bool: ...

    def has_cpu_weights(self, p: Placement) -> bool: ...

    def device(self, name: str) -> Device: ...

    def expert_bytes(self, il: int, backend: str, kinds: frozenset[str] | None, inside: bool) -> int: ...

    @property
    def offloadable_weights(self) -> tuple[list[int], list[dict[str, int]], int]: ...


def offloadable_weights(model: ModelProfile) -> tuple[list[int], list[dict[str, int]], int]:
    """What op offload may copy, as a GPU holds it: per layer its largest weight and its largest
    routed-expert tensor per kind, and the largest output weight (NextN-only tensors are never loaded)."""
    layer_max = [0] * len(model.layers)
    output_max = 0
    for t in model.tensors:
        if t.role is Role.NEXTN:
            continue
        if t.layer is not None:
            layer_max[t.layer] = max(layer_max[t.layer], t.alloc_bytes("cuda"))
        elif t.role is Role.OUTPUT:
            output_max = max(output_max, t.alloc_bytes("cuda"))
    expert_max: list[dict[str, int]] = []
    for lc in model.layers:
        per: dict[str, int] = {}
        for t in lc.expert_tensors:
            if t.role is not Role.NEXTN:
                per[expert_kind(t)] = max(per.get(expert_kind(t), 0), t.alloc_bytes("cuda"))
        expert_max.append(per)
    return layer_max, expert_max, output_max


def op_offload_reserve(cost: PricedModel) -> int:
    """What op offload adds on the first GPU over its own layers' and output's peak when some
    layers or experts stay on the CPU: what the solver reserves there before the exact
    re-pricing (:func:`offload_compute`). The largest *layer* weight sets it: a plan with
    layers on a GPU keeps the output head there (an all-CPU plan, and a head left on the CPU,
    are priced exactly, not through this reserve); H200 loads: a reserve from the largest
    weight overall (the output head) cost a whole layer of VRAM that the engine never used
    (benchmarks/results/speed_truth.md)."""
    if not cost.context.op_offload:
        return 0
    layer_max, expert_max, _ = cost.offloadable_weights
    w_layer = max(layer_max, default=0)
    w_exp = max((max(per.values(), default=0) for per in expert_max), default=0) if cost.experts_offloaded else 0
    own = cost.compute.backend_roles["cuda"]["layers_output"]
    extra = max(cost.compute.offload_bytes("gpu_partial", w_layer),
                cost.compute.offload_bytes("gpu_exps", w_exp) if w_exp else 0)
    two_gpus = sum(1 for d in cost.cluster.gpus if d.kind == "gpu") > 1
    return max(0, extra - own, 2 * w_exp if two_gpus else 0)


def split_layout(cost: PricedModel, p: Placement, copies: int = 1) -> Layout | None:
    """``p`` as the scheduler sees it (compute_graph.Layout: the devices' backends in ``p.order``,
    the CPU last; op offload from the context and the batch), or None where the replay does not
    cover it: a token table on a device, routed experts on another device than their layer's or
    the CPU."""
    c = cost.context
    if c.embedding_on_first:
        return None
    index = {name: i for i, name in enumerate(p.order)}
    index[CPU] = len(p.order)
    if any(where != CPU for homes in p.expert_homes for _, where in homes):
        return None
    return Layout(tuple(cost.backend(n) for n in p.order), tuple(index[h] for h in p.layer_home),
                  tuple(frozenset(k for k, _ in homes) for homes in p.expert_homes), index[p.output],
                  cost.ops_offloaded, copies, cost.experts_offloaded)


def replayed_buffers(cost: PricedModel, p: Placement, copies: int = 1) -> dict[str, int] | None:
    """Every device's compute buffer and the CPU's (by name) of ``p`` run with ``copies`` of each
    input (the scheduler's n_copies: 4 when pipelined), replayed; None where :func:`split_layout`
    gives no layout or the architecture's split replay is unchecked."""
    layout = split_layout(cost, p, copies)
    if layout is None or cost.compute.split_replay is None:
        return None
    return dict(zip((*p.order, CPU), cost.compute.split_replay(layout, True)))


def host_held(cost: PricedModel, p: Placement) -> Offload:
    """What the placement leaves in host memory, as the one-device replay takes it (a layer with
    any expert kind in RAM counts as all of its experts: every copy is then priced)."""
    hp = cost.model.hparams
    kv_layers = range(hp.n_layer_kv or hp.n_layer)
    experts = cost.experts_offloaded
    return Offload(frozenset(il for il in kv_layers if p.layer_home[il] == CPU), cpu_output=p.output == CPU,
                   cpu_expert_layers=frozenset(il for il in kv_layers if experts and p.cpu_experts[il]))


def offload_compute(cost: PricedModel, p: Placement, own: int, gpus_with_layers: int) -> int:
    """The op-offload device's compute buffer (:meth:`.cost.CostModel.offload_device`) when it
    runs op-offloaded work of CPU-held weights (``ggml_backend_sched`` offloads ops with a batch
    >= 32 to the first device that ``offload_op``s them and copies their weight in), where
    :func:`replayed_buffers` does not price it: the one-device replay of the placement
    (compute_graph.TRACE_CHECKED), else the fitted role of the placement with the largest weight
    it copies (compute.py). With experts on the CPU and layers on a second GPU the first one held
    two copies of that weight beside its own layers' peak (H200 pair, moe33 records in
    tests/test_gpu_records.py: 436.5 MiB = 2 x 216 MiB + 4.5)."""
    layer_max, expert_max, output_max = cost.offloadable_weights
    cpu_layers = [il for il, h in enumerate(p.layer_home) if h == CPU]
    if not cpu_layers and not cost.experts_offloaded:
        return own
    expert_w = 0 if cpu_layers else max(
        (b for per, kinds in zip(expert_max, p.cpu_experts) for k, b in per.items() if k in kinds), default=0)
    two_copies = own + 2 * expert_w if expert_w and gpus_with_layers > 1 else 0
    c = cost.compute
    if c.replay is not None:
        # one GPU running every other layer is exactly the replayed graph, a GPU beside others at most it
        exact = c.replay(host_held(cost, p), p.output in (CPU, cost.offload_device(p)))
        return max(exact, two_copies) if gpus_with_layers <= 1 else max(own, exact, two_copies)
    if len(cpu_layers) == len(p.layer_home) and p.output == CPU:
        role, w = "offload_none", max(max(layer_max, default=0), output_max)  # the largest weight it copies
    elif cpu_layers:
        role, w = "gpu_partial", max(layer_max[il] for il in cpu_layers)
        if p.output == CPU:  # the head's matmul is offloaded too, its copy beside the logits: as
            # with no GPU layer (ik_llama.cpp -ngl 10 of dense11: 328 MiB, mainline -ngl 0: 318)
            own = max(own, c.offload_bytes("offload_none", output_max))
    else:
        role, w = "gpu_exps", expert_w
    return max(own, c.offload_bytes(role, w), two_copies)


def host_compute(cost: PricedModel, p: Placement, cpu_use: DeviceUsage, offload: bool, copies: int) -> int:
    """The CPU backend's compute buffer where :func:`replayed_buffers` does not price it: the host's
    share beside accelerators (the ``CUDA_Host`` line beside one CUDA device replayed for
    compute_graph.TRACE_CHECKED, else the fitted role), or the whole graph when nothing can take
    op offload (no GPU in the order)."""
    c = cost.compute
    if (c.host_replay is not None and copies == 1 and len(p.order) == 1 and cost.backend(p.order[0]) == "cuda"
            and (cost.offloads_to(p.order[0]) or not cost.has_cpu_weights(p))):
        # one CUDA device beside the host, CPU-held weights' ops offloaded to it: the replayed graph
        return c.host_replay(host_held(cost, p), True)
    if cpu_use.n_layers == 0:
        return c.host_bytes("host_base", copies)
    if not offload:
        return c.cpu_only_bytes() if p.output == CPU else c.device_bytes(True, False, backend="cpu")
    every = cpu_use.n_layers == len(p.layer_home) and p.output == CPU
    return c.host_bytes("host_all" if every else "host_partial", copies)


def finish_usage(cost: PricedModel, p: Placement, out: dict[str, DeviceUsage], copies: int,
                 gpus_with_layers: int) -> None:
    """What both layouts (layer split, splitcost's parallel splits) add last to ``out``: the first
    GPU's buffer with op-offloaded work, the CPU's compute buffer, and what may page."""
    cpu_use = out[CPU]
    target = cost.offload_device(p) if cost.context.op_offload else None
    if target is not None and cost.has_cpu_weights(p):
        first = out[target]
        first.compute_bytes = offload_compute(cost, p, first.compute_bytes, gpus_with_layers)
    cpu_use.compute_bytes += host_compute(cost, p, cpu_use, target is not None, copies)
    cpu_use.pageable_bytes = pageable_bytes(cost, p, cpu_use.weights_bytes)


def add_compute_margins(cost: PricedModel, out: dict[str, DeviceUsage]) -> None:
    """What an engine whose graphs are not mainline's adds to each compute buffer of mainline's replay
    (``Context.compute_margin``, ``host_compute_margin`` on the host); none on the widths fit."""
    c = cost.context
    if cost.compute.split_replay is None:
        return
    for name, use in out.items():
        if use.compute_bytes:
            use.compute_bytes += c.host_compute_margin if name == CPU else c.compute_margin


def pageable_bytes(cost: PricedModel, p: Placement, cpu_weights: int) -> int:
    """Of the CPU's ``cpu_weights``, what the OS may page from disk under --allow-paging: the
    mmap'd ones, less CPU_REPACK copies and the experts an engine pins through its overrides
    when a GPU takes op offload (ik_llama.cpp, EngineTraits.pinned_overrides)."""
    if not cost.context.allow_paging or cost.context.pinned_weights:
        return 0
    pinned = 0
    if cost.context.pinned_overrides and any(cost.device(n).kind == "gpu" for n in p.order):
        pinned = sum(cost.expert_bytes(il, "cpu", p.cpu_experts[il], True)
                     for il, home in enumerate(p.layer_home) if home != CPU)
    return max(0, cpu_weights - repacked_bytes(cost, p) - pinned)


def repacked_bytes(cost: PricedModel, p: Placement) -> int:
    """CPU-held weights the engine copies into CPU_REPACK buffers: those of REPACK_TYPES when
    no local GPU's pinned host buffer comes first in the CPU's buffer list
    (src/llama-model.cpp:1078-1135: accelerators, the first device's host buffer, the extra
    buffers such as CPU_REPACK, the CPU; with mmap the host buffer becomes CPU_Mapped,
    src/llama-model-loader.cpp:1269-1277); the token embedding (GET_ROWS) stays mapped."""
    if any(cost.device(n).kind == "gpu" for n in p.order):
        return 0
    total = 0
    for t in cost.model.tensors:
        if t.info.type_name not in REPACK_TYPES or t.role in (Role.NEXTN, Role.EMBEDDING):
            continue
        if len(t.info.shape) < 2 or t.info.shape[1] % 8:
            continue
        home = p.output if t.layer is None else p.layer_home[t.layer]
        if t.role is Role.ROUTED_EXPERT and t.layer is not None:
            home = p.expert_home(t.layer, expert_kind(t))
        if home == CPU:
            total += t.bytes
    return total
