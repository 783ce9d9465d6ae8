"""ggml-backend's scheduler and ggml-alloc's graph allocator, replayed over a node list.

``ggml_gallocr`` (``ggml/src/ggml-alloc.c``) places every tensor a backend computes in one
buffer: graph inputs first, then in graph order each node (or it lets the node overwrite its
only parent when the op can work in place), and it frees a tensor once its last consumer ran
(graph outputs never); the free blocks are kept sorted and the best-fitting one wins, the tail
grows the buffer. The buffer's size is the highest address ever used, which depends on the
order and the sizes of the tensors, not only on which are alive at once.

What a backend's buffer holds is the scheduler's choice (``ggml/src/ggml-backend.cpp``):
:func:`schedule` assigns every op to one of the backends (the devices of a layer split, each a
CUDA GPU or an RPC server, then the CPU) and gives each backend its part of the graph, with the
tensors it reads from another backend copied in per split; the CPU's part holds the graph inputs
(:func:`replay`'s ``leaves``: the first tensors of its buffer). One ``ggml_gallocr`` allocates
every backend's part in its own buffer, one dynamic allocator per buffer type (ggml-alloc.c:503-535,
ggml-backend.cpp:1928), in graph order (723-800); a tensor's readers are all on its backend, so
each part replays alone. :mod:`.compute_graph` builds the node lists.
"""
from __future__ import annotations

from collections.abc import Sequence

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
        align, blocks = self.align, self.blocks
        size = pad(size, align)
        best, best_size = len(blocks) - 1, 0
        for i in range(best):
            free = blocks[i][1]
            if free >= size and (not best_size or free <= best_size):
                best, best_size = i, free
        block = blocks[best]
        addr = block[0]
        block[0] += size
        block[1] -= size
        if not block[1]:
            del blocks[best]
        if addr + size > self.peak:
            self.peak = addr + size
        return addr

    def free(self, addr: int, size: int) -> None:
        align, blocks = self.align, self.blocks
        size = pad(size, align)
        end = addr + size
        for i, block in enumerate(blocks):
            start = block[0]
            if start + block[1] == addr:  # ends where the freed range starts
                block[1] += size
                if i + 1 < len(blocks) and end == blocks[i + 1][0]:
                    block[1] += blocks.pop(i + 1)[1]
                return
            if start == end:  # starts where the freed range ends
                block[0], block[1] = addr, block[1] + size
                return
            if start > addr:  # the blocks are sorted: a block of its own
                blocks.insert(i, [addr, size])
                return
        blocks.append([addr, size])


class Tensor:
    """A tensor of the graph: its bytes, sources and what the scheduler and ggml-alloc read of its op."""

    __slots__ = ("size", "src", "inplace", "view", "output", "home", "weight", "external", "by_weight", "offloadable",
                 "cuda_ok", "cuda_size", "writes", "dep", "input", "backend", "children", "views", "owned", "addr")

    def __init__(self, size: int, src: list[Tensor] | None = None, inplace: bool = False,
                 view: Tensor | None = None, output: bool = False, home: int = -1, *, weight: bool = False,
                 external: bool = False, by_weight: bool = True, offloadable: bool = True, cuda_ok: bool = True,
                 cuda_size: int = 0, writes: bool = False, dep: bool = False, input: bool = False) -> None:
        self.size = size  # bytes (ggml_nbytes; what the CPU and an RPC server allocate)
        self.src = [] if src is None else src
        self.inplace = inplace  # ggml_op_can_inplace: may take over its only parent's memory
        self.view = view  # a view of another tensor (its base): no memory of its own
        self.output = output  # a graph output: never freed
        # the backend whose memory holds it (a weight, a cache view, a graph input: the CPU) or that
        # must run it (a store into a cache): the scheduler's pass 1 (ggml-backend.cpp:921-935)
        self.home = self.backend = home  # backend: the one the scheduler assigns
        self.weight = weight  # a weight (GGML_BACKEND_BUFFER_USAGE_WEIGHTS): an op is run where its weight is
        self.external = external  # memory of no compute buffer: a weight, a view of the KV cache
        # pass 1 may place it by a weight (not ROPE, FLASH_ATTN_EXT: ggml-backend.cpp:955-960)
        self.by_weight = by_weight
        self.offloadable = offloadable  # CUDA's offload_op takes it (not GET_ROWS, ggml-cuda.cu:5636-5655)
        self.cuda_ok = cuda_ok  # CUDA runs it (supports_op)
        self.cuda_size = cuda_size  # bytes a CUDA buffer allocates where more (padded rows, FA's F16 copies)
        self.writes = writes  # a view that is an op of its own (SET_ROWS into its destination), not a view op
        self.dep = dep  # an allocation dependency (GGML_OP_NONE): keeps its sources until here, not scheduled
        self.input = input  # a graph input (ggml_set_input)
        self.children = self.views = self.addr = 0  # ggml-alloc's counts and address while it replays
        self.owned = False


def schedule(nodes: list[Tensor], leaves: Sequence[Tensor], backends: Sequence[str], offload: bool,
             copies: int = 1) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
    """``ggml_backend_sched_split_graph`` (``ggml-backend.cpp:1066-1605``) over ``nodes`` (graph
    order; their sources carry the weights, caches and graph inputs with their ``home``) and the
    graph's ``leaves`` (in the order it meets them) on ``backends`` (their kinds, ``"cuda"``,
    ``"rpc"`` or ``"cpu"``, in the scheduler's order, the CPU last): per backend the node list
    ``sched->graph`` gives ggml-alloc. ``offload``: op offload
    (``--op-offload`` and a batch of at least 32 tokens) moves an op whose weight is in host memory
    to the first CUDA backend (951-980; RPC has no offload_op, ggml-rpc.cpp:2262). An RPC server's
    CPU backend runs any op (ggml-rpc.cpp:2216-2221), CUDA not those of ``cuda_ok`` False.

    Pass 1 (1087-1122, 921-983) places graph inputs on the CPU, a store on its cache's backend, an
    op where its weight is; passes 2-4 (1124-1295) spread the devices' placements down and up over
    the unplaced ops (then the CPU's), give an op no neighbour can run the backend that holds most
    of its sources, a view its base's backend, a fresh leaf its first reader's (no two backends
    here share a buffer type: pass 3's upgrades never apply). Pass 5 cuts splits where the backend
    changes, or where a device op reads a weight of another backend while its split already has
    inputs (1325-1344); a tensor another backend's op reads is copied once per backend, by the
    first split that reads it (1350-1395; later splits read that copy). Each split starts with its
    inputs, in the order it first reads them, as an ``input_dep`` on the source's backend (which
    keeps the source until the copy is made) and the copy on the split's (1514-1531). Tensors of
    no backend's buffers (weights, caches) take no memory; every tensor's readers are on its own
    backend, so each backend's list replays alone.

    ``copies``: the scheduler's ``n_copies`` (GGML_SCHED_MAX_COPIES, 4, under pipeline
    parallelism, else 1). With several, every graph input and every split's input exists that many
    times, each flagged an input and an output (never freed: 1382-1385, 1424-1435); the graph copy
    gives ggml-alloc, which allocates all leaves first (ggml-alloc.c:728-732), the graph inputs'
    copies, then each split's inputs' copies, then the original leaves (1563-1601); the copy a node
    reads is ``cur_copy``'s, 0 at reserve, the original tensor for a graph input.

    Returns per backend its node list and the leaves ggml-alloc allocates first there."""
    cpu = len(backends) - 1
    cuda = [kind == "cuda" for kind in backends]
    target = cuda.index(True) if offload and True in cuda else -1
    ops = [n for n in nodes if not n.dep]
    for n in ops:  # pass 1 (a tensor with a home, a leaf among them, has that backend already)
        if n.backend >= 0:
            continue
        v = n.view
        if v is not None:
            if v.external:
                n.backend = v.home
        elif n.by_weight:
            for w in n.src:
                if w.weight:
                    b = w.home
                    if b == cpu and 0 <= target < cpu and n.offloadable and n.cuda_ok:
                        b = target
                    if n.cuda_ok or not cuda[b]:
                        n.backend = b
                    break
    # passes 2-3 over the ops that are not views, on plain lists
    real = [n for n in ops if n.view is None or n.writes]
    where = [n.backend for n in real]
    able = [n.cuda_ok for n in real]
    forward, backward = range(len(real)), range(len(real) - 1, -1, -1)
    for order, skip_cpu in ((forward, True), (backward, True), (forward, False), (backward, False)):  # pass 2
        cur = -1
        for i in order:
            b = where[i]
            if b >= 0:
                cur = -1 if skip_cpu and b == cpu else b
            elif cur >= 0 and (able[i] or not cuda[cur]):
                where[i] = cur
    for n, b in zip(real, where):
        n.backend = b
        if b < 0:  # pass 3: the backend holding most of its sources (a view's: its base's)
            best = -1
            for b, is_cuda in enumerate(cuda):
                if n.cuda_ok or not is_cuda:
                    held = sum((s.backend if s.backend >= 0 or s.view is None else s.view.backend) == b
                               for s in n.src)
                    if held > best:
                        best, n.backend = held, b
    for n in ops:  # pass 4 (a view's source is a node placed before it, or a leaf)
        if n.backend < 0:
            if n.view is not None:
                n.backend = n.view.backend
            else:
                n.backend = next(b for b, is_cuda in enumerate(cuda) if n.cuda_ok or not is_cuda)
        for s in n.src:
            if s.backend < 0:  # a fresh leaf (not a graph input): the backend of its first reader
                s.backend = n.backend
    first: list[list[Tensor]] = [[] for _ in backends]  # the leaves allocated first, per backend
    if copies > 1:
        for t in leaves:
            if t.input:  # sched->graph_inputs (pass 6, 1411-1444): copy 0 is the input itself
                t.output = True
                first[t.backend] += [t, *(Tensor(t.size, home=t.backend, output=True) for _ in range(copies - 1))]
    out = _split(nodes, first, copies)
    for t in leaves:
        if t.backend >= 0:
            first[t.backend].append(t)
    return out, first


def _split(nodes: list[Tensor], first: list[list[Tensor]], n_copies: int) -> list[list[Tensor]]:
    """Pass 5 and the graph copy (see :func:`schedule`): each backend's node list; with several
    ``n_copies``, each split input's copies go to its backend's ``first`` leaves."""
    out: list[list[Tensor]] = [[] for _ in first]
    copies: dict[tuple[Tensor, int], Tensor] = {}  # (source, reading backend) -> its copy
    cur, inputs = -1, 0  # the split's backend, its inputs
    split: list[Tensor] = []  # the split's nodes

    def flush() -> None:
        for t in split:
            out[t.backend].append(t)
        split.clear()

    for n in nodes:
        if n.dep:
            n.backend = n.home if n.home >= 0 else cur
        elif n.view is None or n.writes:
            if cur < 0:
                cur = n.backend
            new = n.backend != cur
            if inputs and not new:
                for s in n.src:
                    if s.weight and s.backend != cur:
                        new = True
                        break
            if new:
                flush()
                cur, inputs = n.backend, 0
            src = []
            for s in n.src:
                if s.backend == cur:
                    if not s.external:  # a weight or cache view read in place: nothing for ggml-alloc
                        src.append(s)
                    continue
                if (s, cur) not in copies:
                    copies[s, cur] = c = Tensor(s.size, cuda_size=s.cuda_size, home=cur, output=n_copies > 1)
                    if n_copies > 1:
                        first[cur] += [c, *(Tensor(s.size, cuda_size=s.cuda_size, home=cur, output=True)
                                            for _ in range(n_copies - 1))]
                    # the input_dep on the source's backend, then the copy, at the split's start
                    out[s.backend].append(Tensor(0, [s], home=s.backend))
                    out[cur].append(c)
                    inputs += 1
                src.append(copies[s, cur])
            n.src = src
        split.append(n)
    flush()
    return out


def replay(nodes: list[Tensor], align: int, leaves: Sequence[Tensor] = (),
           trace: list[tuple[int, int]] | None = None, cuda: bool = False) -> int:
    """``ggml_gallocr_alloc_graph_impl`` over ``nodes`` (graph order) in a buffer of alignment
    ``align``, the ``leaves`` it allocates first (graph inputs and fresh tensors, in the order the
    graph meets them, ggml-alloc.c:724-728; ggml-backend.cpp:1596-1601 keeps the original graph's
    leaves last): the buffer's size (``trace`` collects each allocation's (size, offset)). A view
    is never the parent an op takes over: ggml-alloc.c:639 skips parents it does not own, and it
    owns no view (627). Leaves are freed after their last consumer like any tensor; one no node
    reads (the embeddings input of a token batch) is never freed. ``cuda``: a CUDA buffer, whose
    tensors take their ``cuda_size``."""
    mem = Allocator(align)

    def size(t: Tensor) -> int:
        return t.cuda_size if cuda and t.cuda_size else t.size

    def allocate(t: Tensor) -> None:  # a tensor of this buffer not yet allocated (not a view, a store, a weight)
        t.owned = True
        if t.inplace:
            for p in t.src:
                if p.owned and not p.output and p.size == t.size and p.children == 1 and not p.views:
                    t.addr, p.owned = p.addr, False
                    return
        t.addr = mem.alloc(size(t))
        if trace is not None:
            trace.append((pad(size(t), align), t.addr))

    for t in leaves:
        if not t.owned and t.view is None and t.size and not t.external:
            allocate(t)
    for n in nodes:
        if n.view is not None:
            n.view.views += 1
        for s in n.src:
            s.children += 1
    for n in nodes:
        src = n.src
        for s in src:
            if not s.owned and s.view is None and s.size and not s.external:
                allocate(s)
        if not n.owned and n.view is None and n.size:  # size 0: a store, a dependency
            allocate(n)
        for s in src:
            s.children -= 1
            if s.children or s.views:
                continue
            v = s.view
            if v is not None:
                v.views -= 1
                if not v.views and not v.children and v.owned and not v.output:
                    mem.free(v.addr, size(v))
                    v.owned = False
            elif s.owned and not s.output:
                mem.free(s.addr, size(s))
                s.owned = False
    return mem.peak
