"""A placement's compute buffers, replayed: :mod:`.compute_graph`'s node list of the layers that
decide them, scheduled onto the backends and allocated buffer by buffer (:mod:`.compute_alloc`).

Every backend's buffer comes from one graph: the scheduler (``ggml_backend_sched``) splits it
between the devices and the CPU, and one ``ggml_gallocr`` allocates every backend's part in graph
order in that backend's buffer (one dynamic allocator per buffer type, ggml-alloc.c:503-535).
:func:`split_peaks` replays a layer split of any number of devices, each a CUDA GPU or an RPC
server (their own rules per device: CUDA's alignment, padded copies, fused kernels' keep-alives
and the ops it cannot run; the CPU backend's alignment on an RPC server), with its graph inputs
and CPU-held weights on the host, each input copied ``layout.copies`` times (4 under pipeline
parallelism, ggml-backend.cpp's n_copies);
:func:`device_and_host_peaks` the layouts of one device beside the host, and of the CPU alone.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .compute_alloc import CPU_ALIGNMENT, CUDA_ALIGNMENT, replay, schedule
from .compute_graph import REPLAYED, GraphBuilder, Layout, Offload
from .errors import UnsupportedModelError

if TYPE_CHECKING:
    from .model import ModelProfile

RUN_CAP = 3  # repeats of one pattern of layers replayed; the allocator's state repeats after two
MAX_PERIOD = 4  # the longest pattern of layer kinds looked for
EXPERTS = ("gate", "up", "down")  # the routed-expert kinds the graph reads apart
ALL_ON_DEVICE = Offload()  # nothing left in host memory
Trace = list[tuple[int, int]]


def replayed_layers(model: ModelProfile, layout: Layout) -> list[int]:
    """The layers replayed: a stretch of layers that repeats one pattern of kinds (dense/MoE,
    SWA/full, the backends holding its weights and experts; a pattern of up to MAX_PERIOD layers:
    --fit's partial layers alternate) is cut to RUN_CAP repeats, the last layer always kept (it
    keeps the output rows), where CUDA runs every layer's attention and dense part: the
    allocator's state repeats there (the H200 traces; cut replays equal to whole ones over random
    layouts of one and two GPUs of every architecture, op offload on or off). The CPU and RPC
    servers' states need not repeat, nor a CUDA device's beside experts the CPU computes in an
    iSWA model (its full layer after fewer SWA layers lands elsewhere): every layer is replayed
    there. Beside experts the CPU computes, a DSA model's state drifts a little (its mask leaves,
    one per layer, free a region that grows layer by layer): cut replays were within 4 MiB of
    whole ones in 55 random layouts, equal in 51."""
    hp = model.hparams
    n_layer = hp.n_layer_kv or hp.n_layer
    cpu, experts = layout.cpu, layout.cpu_experts
    cuda = {b for b, kind in enumerate(layout.kinds) if kind == "cuda"}
    experts_off_cuda = any(experts[:n_layer]) and layout.runner(cpu) not in cuda
    if any(layout.runner(h) not in cuda for h in set(layout.layers[:n_layer])) or (experts_off_cuda and any(hp.is_swa)):
        return list(range(n_layer))
    names = model.cuda_weights
    kinds = [(f"blk.{il}.ffn_gate_inp.weight" in names, hp.is_swa[il], layout.layers[il],
              *(cpu if il < len(experts) and k in experts[il] else layout.layers[il] for k in EXPERTS))
             for il in range(n_layer)]
    return _kept_layers(kinds)


def _kept_layers(kinds: Sequence[tuple[object, ...]]) -> list[int]:
    """Greedily from the first layer: where the next layers repeat a pattern of ``p`` kinds more
    than RUN_CAP times (the shortest such ``p``), keep RUN_CAP repeats and skip the rest."""
    n, il = len(kinds), 0
    keep: list[int] = []
    while il < n:
        for p in range(1, MAX_PERIOD + 1):
            reps = 1
            while kinds[il + reps * p:il + (reps + 1) * p] == kinds[il:il + p] and il + (reps + 1) * p <= n:
                reps += 1
            if reps > RUN_CAP:
                keep += range(il, il + RUN_CAP * p)
                il += reps * p
                break
        else:
            keep.append(il)
            il += 1
    if n and keep[-1] != n - 1:
        keep.append(n - 1)
    return keep


# a layer's tensors: (name less "blk.N.", ggml type, shape), sorted
LayerSignature = tuple[tuple[str, int, tuple[int, ...]], ...]


def layer_signatures(model: ModelProfile) -> list[LayerSignature]:
    """Per layer, what its nodes' sizes are made of: its tensors (name less the layer prefix, type,
    shape)."""
    per: list[list[tuple[str, int, tuple[int, ...]]]] = [[] for _ in model.layers]
    for t in model.tensors:
        if t.layer is not None:
            per[t.layer].append((t.name.split(".", 2)[-1], t.info.ggml_type, t.info.shape))
    return [tuple(sorted(p)) for p in per]


def replay_key(model: ModelProfile, signatures: Sequence[LayerSignature], layout: Layout,
               with_output: bool) -> tuple[object, ...]:
    """What a replay of ``layout`` depends on, so that placements which put different layers on
    the host or a device but replay the same nodes share one replay: the replayed layers' tensors
    and homes in order, and for DSA the layers skipped between them (their mask leaves)."""
    hp = model.hparams
    n_layer = hp.n_layer_kv or hp.n_layer
    prev, key = -1, []
    for il in replayed_layers(model, layout):
        key.append((signatures[il], hp.is_swa[il], layout.layers[il], *(layout.experts(il, k) for k in EXPERTS),
                    il - prev if hp.indexer_head_size else 0, il == n_layer - 1))
        prev = il
    return (tuple(key), with_output, layout.output, layout.backends, layout.offload, layout.copies,
            layout.expert_offload)


def split_peaks(model: ModelProfile, *, n_tokens: int, n_kv: int, n_kv_swa: int, flash_attn: bool,
                kv_quantized: bool, kv_layer_bytes: int, layout: Layout, with_output: bool = True,
                traces: Sequence[Trace | None] = ()) -> tuple[int, ...]:
    """Bytes of every backend's compute buffer (``layout.backends``' devices, then the CPU's) for a
    layer split (pipelined where ``layout.copies`` > 1); ``traces[b]`` collects backend ``b``'s allocations
    (size, offset), as ggml-alloc.c's AT_PRINTF prints them."""
    if model.architecture not in REPLAYED:
        raise UnsupportedModelError(f"no compute graph for architecture {model.architecture!r}",
                                    hint="rebuilt: " + ", ".join(sorted(REPLAYED)))
    builder = GraphBuilder(model, n_tokens, n_kv, n_kv_swa, flash_attn, kv_quantized, kv_layer_bytes, layout)
    nodes = builder.build(replayed_layers(model, layout), with_output)
    parts, leaves = schedule(nodes, builder.leaves, layout.kinds, layout.offload, layout.copies)
    peaks = []
    for b, kind in enumerate(layout.kinds):
        cuda = kind == "cuda"  # an RPC server allocates as its CPU backend does (ggml-rpc.cpp:846-926)
        peaks.append(replay(parts[b], CUDA_ALIGNMENT if cuda else CPU_ALIGNMENT, leaves[b],
                            traces[b] if b < len(traces) else None, cuda=cuda))
    return tuple(peaks)


def cpu_peak_of_layers(model: ModelProfile, layers: Sequence[int], *, n_tokens: int, n_kv: int, flash_attn: bool,
                       kv_quantized: bool, kv_layer_bytes: int) -> int:
    """The CPU backend's buffer for the graph of ``layers`` alone and the output head, every weight
    on the CPU (no accelerator), whatever the architecture: the layers must be ones the graph
    rebuilds (a hybrid's attention layers, :func:`compute.replayed_layers_floor`)."""
    layout = Layout((), (0,) * model.hparams.n_layer)
    builder = GraphBuilder(model, n_tokens, n_kv, n_kv, flash_attn, kv_quantized, kv_layer_bytes, layout)
    parts, leaves = schedule(builder.build(layers, True), builder.leaves, layout.kinds, layout.offload, layout.copies)
    return replay(parts[0], CPU_ALIGNMENT, leaves[0], None, cuda=False)


def device_and_host_peaks(model: ModelProfile, *, n_tokens: int, n_kv: int, n_kv_swa: int, flash_attn: bool,
                          kv_quantized: bool, kv_layer_bytes: int, with_output: bool = True,
                          offload: Offload = ALL_ON_DEVICE, backend: str = "cuda", trace: Trace | None = None,
                          host_trace: Trace | None = None) -> tuple[int, int]:
    """The compute buffer of one device running every layer that ``offload`` leaves it (and the
    output head when ``with_output``), and from the same graph the host's beside it (the
    ``CUDA_Host`` line beside a GPU: the graph inputs, the CPU backend's splits and the copies of
    what they read; the CPU's alignment, ggml-cuda.cu:1309). ``backend``: ``"cuda"`` (``offload``'s
    host-held weights copied in, op offload), ``"rpc"`` (an RPC server's CPU backend) or ``"cpu"``:
    the CPU backend running the whole graph alone (no accelerator), its graph inputs in its own
    buffer, the host's then 0. ``trace``/``host_trace`` collect the allocations (size, offset)."""
    if backend not in ("cuda", "cpu", "rpc") or (backend == "cpu" and offload != ALL_ON_DEVICE):
        raise ValueError(f"no replay of a {backend!r} buffer with {offload}")
    peaks = split_peaks(model, n_tokens=n_tokens, n_kv=n_kv, n_kv_swa=n_kv_swa, flash_attn=flash_attn,
                        kv_quantized=kv_quantized, kv_layer_bytes=kv_layer_bytes,
                        layout=offload.layout(model.hparams.n_layer, backend), with_output=with_output,
                        traces=(trace, host_trace))
    return (peaks[0], 0) if backend == "cpu" else (peaks[0], peaks[1])


def device_peak(model: ModelProfile, *, n_tokens: int, n_kv: int, n_kv_swa: int, flash_attn: bool,
                kv_quantized: bool, kv_layer_bytes: int, with_output: bool = True,
                offload: Offload = ALL_ON_DEVICE, backend: str = "cuda", trace: Trace | None = None) -> int:
    """The device's buffer of :func:`device_and_host_peaks`."""
    return device_and_host_peaks(model, n_tokens=n_tokens, n_kv=n_kv, n_kv_swa=n_kv_swa, flash_attn=flash_attn,
                                 kv_quantized=kv_quantized, kv_layer_bytes=kv_layer_bytes, with_output=with_output,
                                 offload=offload, backend=backend, trace=trace)[0]
