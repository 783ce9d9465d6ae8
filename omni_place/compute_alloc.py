"""ggml-backend's scheduler and ggml-alloc's graph allocator, replayed over a node list.

``ggml_gallocr`` (``ggml/src/ggml-alloc.c``) places every tensor a backend computes in one
buffer: graph inputs first, then in graph order each node (or it lets the node overwrite its
only parent when the op can work in place), and it frees a tensor once its last consumer ran
(graph outputs never); the free blocks are kept sorted and the best-fitting one wins, the tail
grows the buffer. The buffer's size is the highest address ever used, which depends on the
order and the sizes of the tensors, not only on which are alive at once.

What a backend's buffer holds is the scheduler's choice (``ggml/src/ggml-backend.cpp``):
:func:`schedule` gives a device beside the local CPU (a CUDA GPU, an RPC server) its part, the
host tensors it reads copied in per split, and the host its own (the CPU backend's ops, the
graph inputs, the device tensors it reads copied out); a backend running the whole graph alone
(the CPU with no accelerator) keeps everything, its graph inputs the first leaves of its own
buffer (:func:`replay`'s ``leaves``). :mod:`.compute_graph` builds the node lists.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

CUDA_ALIGNMENT = 128  # ggml_backend_cuda_buffer_type_get_alignment
# ggml_backend_cpu_buffer_type_get_alignment: TENSOR_ALIGNMENT (ggml-backend.cpp:2474,
# ggml-impl.h:44); an RPC buffer takes its server's, a CPU backend's (ggml-rpc.cpp)
CPU_ALIGNMENT = 32


def pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


class Allocator:
    """``ggml_dyn_tallocr`` with one chunk: best fit among the free blocks but the last, else the
    tail (ggml-alloc.c:202-271); sizes rounded up to the buffer type's alignment (203)."""

    def __init__(self, align: int) -> None:
        self.align = align
        self.blocks: list[list[int]] = [[0, 1 << 62]]  # [offset, size], sorted; the last is the tail
        self.peak = 0

    def alloc(self, size: int) -> int:
        size = pad(size, self.align)
        best, best_size = len(self.blocks) - 1, None
        for i, (_, free) in enumerate(self.blocks[:-1]):
            if free >= size and (best_size is None or free <= best_size):
                best, best_size = i, free
        addr = self.blocks[best][0]
        self.blocks[best][0] += size
        self.blocks[best][1] -= size
        if self.blocks[best][1] == 0:
            del self.blocks[best]
        self.peak = max(self.peak, addr + size)
        return addr

    def free(self, addr: int, size: int) -> None:
        size = pad(size, self.align)
        blocks = self.blocks
        for i, block in enumerate(blocks):
            if block[0] + block[1] == addr:  # ends where the freed range starts
                block[1] += size
                if i + 1 < len(blocks) and block[0] + block[1] == blocks[i + 1][0]:
                    block[1] += blocks.pop(i + 1)[1]
                return
            if addr + size == block[0]:  # starts where the freed range ends
                block[0], block[1] = addr, block[1] + size
                if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == block[0]:
                    blocks[i - 1][1] += blocks.pop(i)[1]
                return
        at = next((i for i, b in enumerate(blocks) if b[0] > addr), len(blocks))
        blocks.insert(at, [addr, size])


@dataclass(eq=False)
class Tensor:
    size: int
    src: list[Tensor] = field(default_factory=list)
    inplace: bool = False  # ggml_op_can_inplace: may take over its only parent's memory
    view: Tensor | None = None  # a view of another tensor: no memory of its own
    output: bool = False  # a graph output: never freed
    host: bool = False  # in host memory: a graph input, a CPU-held weight or cache, a node the CPU runs
    weight: bool = False  # a CPU-held weight: the device op using it starts a new split
    external: bool = False  # memory of no compute buffer: a weight, a view of the KV cache
    children: int = 0
    views: int = 0
    owned: bool = False
    addr: int = 0


def schedule(nodes: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The scheduler's split of the graph (``ggml-backend.cpp``) into the accelerator's part and
    the host's (the CPU backend's, in the ``CUDA_Host`` buffer beside a GPU), in the order
    ``sched->graph`` gives ggml-alloc. Splits start where the backend changes or a device op uses
    a CPU-held weight while its split already has inputs (1325-1344). A tensor another backend's
    split reads is copied once per backend, by the first split that reads it (1377-1395; later
    splits read that copy); each split starts with its inputs, in the order it first reads them,
    as an ``input_dep`` in the source's part (a dependency that keeps the source until the copy
    is made) and the copy in the split's (1514-1531). Graph inputs live on the last backend, the
    CPU (944-949), the host's :func:`replay` ``leaves`` (ggml-alloc.c:728-732 allocates the
    graph's leaves first); weights and cache views (``external``) take no memory."""
    device: list[Tensor] = []
    host: list[Tensor] = []
    copies: dict[tuple[int, bool], Tensor] = {}  # (source, the reading side is the host) -> its copy
    on_host: bool | None = None
    start = host_start = n_inputs = 0
    for n in nodes:
        if n.view is None and (n.host != on_host or (not n.host and n_inputs and any(s.weight for s in n.src))):
            on_host, start, host_start, n_inputs = n.host, len(device), len(host), 0
        src = []
        for s in n.src:
            if s.host == n.host:
                src.append(s)
                continue
            if (id(s), n.host) not in copies:
                copies[id(s), n.host] = c = Tensor(s.size)
                dep = Tensor(0, [s])
                here, there = (host, device) if n.host else (device, host)
                here.insert((host_start if n.host else start) + n_inputs, c)
                there.insert((start if n.host else host_start) + n_inputs, dep)
                n_inputs += 1
            src.append(copies[id(s), n.host])
        n.src = src
        (host if n.host else device).append(n)
    return device, host


def replay(nodes: list[Tensor], align: int, leaves: Sequence[Tensor] = (),
           trace: list[tuple[int, int]] | None = None) -> int:
    """``ggml_gallocr_alloc_graph_impl`` over ``nodes`` (graph order) in a buffer of alignment
    ``align``, the ``leaves`` it allocates first (graph inputs and fresh tensors, in the order the
    graph meets them, ggml-alloc.c:724-728; ggml-backend.cpp:1596-1601 keeps the original graph's
    leaves last): the buffer's size (``trace`` collects each allocation's (size, offset)). A view
    is never the parent an op takes over: ggml-alloc.c:639 skips parents it does not own, and it
    owns no view (627). Leaves are freed after their last consumer like any tensor; one no node
    reads (the embeddings input of a token batch) is never freed."""
    mem = Allocator(align)

    def allocate(t: Tensor) -> None:
        if t.owned or t.view is not None or not t.size or t.external:  # size 0: a store, a dependency
            return
        t.owned = True
        if t.inplace:
            for p in t.src:
                if p.owned and not p.output and p.size == t.size and p.children == 1 and not p.views:
                    t.addr, p.owned = p.addr, False
                    return
        t.addr = mem.alloc(t.size)
        if trace is not None:
            trace.append((pad(t.size, align), t.addr))

    for t in leaves:
        allocate(t)
    for n in nodes:
        if n.view is not None:
            n.view.views += 1
        for s in n.src:
            s.children += 1
    for n in nodes:
        for s in n.src:
            allocate(s)
        allocate(n)
        for s in n.src:
            s.children -= 1
            if s.children or s.views:
                continue
            if s.view is not None:
                v = s.view
                v.views -= 1
                if not v.views and not v.children and v.owned and not v.output:
                    mem.free(v.addr, v.size)
                    v.owned = False
            elif s.owned and not s.output:
                mem.free(s.addr, s.size)
                s.owned = False
    return mem.peak
