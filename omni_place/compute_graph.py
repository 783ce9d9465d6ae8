"""The compute graph llama.cpp reserves on a CUDA device, replayed through ggml-alloc's allocator.

``sched_reserve`` (``src/llama-context.cpp``) builds the worst-case graph (a prompt ubatch of
``n_tokens`` tokens, all of them outputs) and ``ggml_gallocr`` (``ggml/src/ggml-alloc.c``) places
every tensor a backend computes in one buffer: in graph order it allocates a node (or lets it
overwrite its only parent when the op can work in place), and frees a tensor once its last
consumer ran (graph outputs never); the free blocks are kept sorted and the best-fitting one
wins, the tail grows the buffer. The buffer's size is the highest address ever used, which
depends on the order and the sizes of the tensors, not only on which are alive at once: this
module rebuilds the node list of the architectures omni_place covers (``src/models/*.cpp``,
``llama-graph.cpp`` build_attn / build_ffn / build_moe_ffn, the MLA and DSA variants) with
their sizes and replays the allocator over it (:func:`device_peak`).

The scheduler (``ggml-backend.cpp``) decides what lands in the device's buffer (:func:`_schedule`):
the builder tags what stays in host memory (graph inputs, the weights and KV cache of CPU-held
layers or experts, the stores into a host-held cache, which run on the CPU) and the scheduler's
splits place every copy: a host tensor the device reads is copied once, at the start of the
first split that reads it, and lives until its last reader; an op of a CPU-held weight starts a
split of its own, so that copy lives for that op only. CUDA adds allocations of its own: flash
attention over a quantized cache carries F16 copies of K and V in the FA node (``fattn.cu``
get_alloc_size: the tile/MMA kernels every batch > 2 tokens uses), and its fusions keep tensors
alive (``graph_optimize`` alloc deps): the MoE weighted sum keeps the experts' outputs and the
router weights until the sum, the fused top-k keeps its whole chain until its end. Replayed
over every layer, the six H200 traces of tests/data/compute_traces.json match the engine's
allocations one by one (size and offset).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import UnsupportedModelError

if TYPE_CHECKING:
    from .model import ModelProfile

F32 = 4
# the architectures whose graphs the builder rebuilds (checked against the engine's dry runs,
# benchmarks/results/compute_fit.md); others are priced by the widths' phases alone
REPLAYED = frozenset({"llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "gpt-oss", "glm4moe", "deepseek2", "deepseek32"})
# replays checked against ggml-alloc traces of the engine, allocation by allocation (llama,
# qwen3moe, deepseek2 on an H200, tests/data/compute_traces.json; qwen2 and qwen3 build the same
# blocks): the planner prices op offload of these by replaying the placement itself
TRACE_CHECKED = frozenset({"llama", "qwen2", "qwen3", "qwen3moe", "deepseek2"})
CUDA_ALIGNMENT = 128  # ggml_backend_cuda_buffer_type_get_alignment
RUN_CAP = 3  # consecutive layers of one kind replayed; the allocator's state repeats after two


def _pad(n: int, align: int = CUDA_ALIGNMENT) -> int:
    return (n + align - 1) // align * align


class _Allocator:
    """``ggml_dyn_tallocr`` with one chunk: best fit among the free blocks but the last, else the tail."""

    def __init__(self) -> None:
        self.blocks: list[list[int]] = [[0, 1 << 62]]  # [offset, size], sorted; the last is the tail
        self.peak = 0

    def alloc(self, size: int) -> int:
        size = _pad(size)
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
        size = _pad(size)
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
class _Tensor:
    size: int
    src: list[_Tensor] = field(default_factory=list)
    inplace: bool = False  # ggml_op_can_inplace: may take over its only parent's memory
    view: _Tensor | None = None  # a view of another tensor: no memory of its own
    output: bool = False  # a graph output: never freed
    host: bool = False  # in host memory: a graph input, a CPU-held weight or cache, a node the CPU runs
    weight: bool = False  # a CPU-held weight: the device op using it starts a new split
    children: int = 0
    views: int = 0
    owned: bool = False
    addr: int = 0


def _schedule(nodes: list[_Tensor]) -> list[_Tensor]:
    """The device's part of the graph the scheduler allocates (``ggml-backend.cpp``): splits start
    where the backend changes or a device op uses a CPU-held weight while its split already has
    inputs (1325-1344); a host tensor a device op reads is copied once, by the first split that
    reads it (1377-1395), and the copies are nodes at the start of their split, in the order the
    split first reads them (1514-1531); a device tensor a host split reads is kept until that
    split starts (its ``input_dep``, 1523)."""
    out: list[_Tensor] = []
    copies: dict[int, _Tensor] = {}
    on_host: bool | None = None
    start = n_inputs = 0
    for n in nodes:
        if n.view is None and (n.host != on_host or (not n.host and n_inputs and any(s.weight for s in n.src))):
            on_host, start, n_inputs = n.host, len(out), 0
        src = []
        for s in n.src:
            if s.host == n.host:
                src.append(s)
            elif id(s) not in copies:  # the input copy (or, for a host split, the dependency)
                copies[id(s)] = c = _Tensor(0, [s]) if n.host else _Tensor(s.size)
                out.insert(start + n_inputs, c)
                n_inputs += 1
                src.append(c)
            elif not n.host:
                src.append(copies[id(s)])
        n.src = src
        if not n.host:
            out.append(n)
    return out


def _replay(nodes: list[_Tensor], trace: list[tuple[int, int]] | None = None) -> int:
    """``ggml_gallocr_alloc_graph_impl`` over the device's ``nodes`` (graph order): the buffer's size
    (``trace`` collects each allocation's (size, offset)). A view is never the parent an op takes
    over: ggml-alloc.c:639 skips parents it does not own, and it owns no view (627)."""
    mem = _Allocator()

    def allocate(t: _Tensor) -> None:
        if t.owned or t.view is not None or not t.size:  # size 0: a store into the cache, a dependency
            return
        t.owned = True
        if t.inplace:
            for p in t.src:
                if p.owned and not p.output and p.size == t.size and p.children == 1 and not p.views:
                    t.addr, p.owned = p.addr, False
                    return
        t.addr = mem.alloc(t.size)
        if trace is not None:
            trace.append((_pad(t.size), t.addr))

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


@dataclass(frozen=True)
class Offload:
    """What stays in host memory, its ops run on the device (op offload): ``cpu_layers`` (0-based,
    their KV cache too), the routed experts of every layer (``cpu_experts``) or of
    ``cpu_expert_layers``, the output head (``cpu_output``)."""

    cpu_layers: frozenset[int] = frozenset()
    cpu_experts: bool = False
    cpu_output: bool = False
    cpu_expert_layers: frozenset[int] = frozenset()

    def experts_on_host(self, il: int) -> bool:
        return self.cpu_experts or il in self.cpu_expert_layers or il in self.cpu_layers


def _topk_fusable(n_expert: int) -> bool:
    """CUDA fuses the router's top-k (ggml-cuda.cu:4555-4606) for these expert counts (topk-moe.cu:410)."""
    return (n_expert & (n_expert - 1) == 0 and n_expert <= 512) or n_expert in (288, 576)


class _Builder:
    """The graph of one model and batch in the engine's node order, host and device nodes apart
    (weights in device memory are external and left out)."""

    def __init__(self, model: ModelProfile, n_tokens: int, n_kv: int, n_kv_swa: int, flash_attn: bool,
                 kv_quantized: bool, kv_layer_bytes: int, offload: Offload) -> None:
        self.model, self.hp = model, model.hparams
        self.t, self.n_kv, self.n_kv_swa = n_tokens, n_kv, n_kv_swa
        self.fa, self.kv_quantized, self.offload = flash_attn, kv_quantized, offload
        self.kv_layer_bytes = kv_layer_bytes  # one layer's K and V cache (the host-held layers' copies)
        self.nodes: list[_Tensor] = []
        self.weights = {t.name: t.alloc_bytes("cuda") for t in model.tensors}
        self.shapes = {t.name: tuple(t.info.shape) for t in model.tensors}
        self.cpu = False  # building a layer whose weights (and cache) stay in host memory

    def new(self, width: int, *src: _Tensor, inplace: bool = False, output: bool = False, elt: int = F32) -> _Tensor:
        return self.sized(width * self.t * elt, *src, inplace=inplace, output=output)

    def sized(self, size: int, *src: _Tensor, inplace: bool = False, output: bool = False,
              host: bool = False) -> _Tensor:
        t = _Tensor(size, list(src), inplace=inplace, output=output, host=host)
        self.nodes.append(t)
        return t

    def view(self, t: _Tensor) -> _Tensor:
        v = _Tensor(t.size, [t], view=t.view or t)
        self.nodes.append(v)
        return v

    @staticmethod
    def leaf(size: int, weight: bool = False) -> _Tensor:
        """A tensor in host memory: a graph input, a CPU-held weight, a view of a host-held cache."""
        return _Tensor(size, host=True, weight=weight)

    def w(self, name: str, host: bool | None = None) -> list[_Tensor]:
        """Weight ``name`` as an op's source: nothing when it is in device memory (external)."""
        if not (self.cpu if host is None else host) or name not in self.weights:
            return []
        return [self.leaf(self.weights[name], weight=True)]

    def weighted(self, name: str, width: int, x: _Tensor, *more: _Tensor, host: bool | None = None) -> _Tensor:
        """A matmul of weight ``name`` (its src[0]), then its bias ADD in place when there is one."""
        out = self.new(width, *self.w(name, host), x, *more)
        bias = name.replace(".weight", ".bias")
        return self.sized(out.size, out, *self.w(bias, host), inplace=True) if self.has(bias) else out

    def norm(self, x: _Tensor, name: str, width: int | None = None) -> _Tensor:
        """rms_norm then the weight's MUL, both in place when ``x`` (not a view) has no other consumer."""
        n = self.new(width if width is not None else self.hp.n_embd, x, inplace=True)
        return self.sized(n.size, n, *self.w(name), inplace=True)

    def rope(self, x: _Tensor) -> _Tensor:
        return self.sized(x.size, x, self.pos, inplace=True)

    def store(self, x: _Tensor, idxs: _Tensor) -> None:
        """SET_ROWS of ``x`` into the cache: on the host for a host-held cache (the scheduler runs
        an op on its destination's backend), else a device node of no memory of its own."""
        self.sized(0, self.view(x), idxs, host=self.cpu)

    def has(self, name: str) -> bool:
        return name in self.weights

    def weights_shape(self, name: str, dim: int = 1) -> int:
        """ne[dim] of a weight (ne1: a matmul's output width), 0 if the model has none."""
        shape = self.shapes.get(name, ())
        return shape[dim] if len(shape) > dim else 0

    # -- the graph ----------------------------------------------------------------------------------

    def build(self, with_output: bool) -> list[_Tensor]:
        hp, t = self.hp, self.t
        mask = 2 if self.fa else F32  # the KQ mask: F16 with flash attention
        self.pos = self.leaf(t * 4)
        self.idxs = (self.leaf(t * 8), self.leaf(t * 8))  # the K and V stores' row indices (I64)
        full_mask = self.leaf(self.n_kv * t * mask)
        swa = any(hp.is_swa)
        self.masks = (full_mask, self.leaf(self.n_kv_swa * t * mask) if swa else full_mask)
        self.swa_idxs = (self.leaf(t * 8), self.leaf(t * 8)) if swa else self.idxs
        self.lid_mask = self.leaf(self.n_kv * t * 2) if hp.indexer_head_size else None  # fused_lid: F16
        self.out_ids = self.leaf(t * 4)
        x = self.leaf(hp.n_embd * t * F32)  # the token embeddings: GET_ROWS on the host
        n_layer = hp.n_layer_kv or hp.n_layer
        for il in _representative_layers(self, n_layer):
            self.cpu = il in self.offload.cpu_layers
            x = self.layer(il, x, last=il == n_layer - 1)
        if with_output:
            self.cpu = self.offload.cpu_output
            x = self.norm(x, "output_norm.weight")
            x.output = True  # the embeddings result
            head = "output.weight" if self.has("output.weight") else "token_embd.weight"  # tied
            self.weighted(head, hp.n_vocab, x).output = True
        return self.nodes

    def layer(self, il: int, x: _Tensor, last: bool) -> _Tensor:
        b = f"blk.{il}."
        cur = self.norm(x, b + "attn_norm.weight")
        attn = self.mla(il, cur) if self.hp.is_mla else self.attention(il, cur)
        res = x
        if last:  # inp_out_ids: the last layer keeps the output rows (all of them here)
            attn = self.new(self.hp.n_embd, attn, self.out_ids)
            res = self.new(self.hp.n_embd, x, self.out_ids)
        if self.has(b + "post_ffw_norm.weight"):  # gemma3: norms after attention and FFN
            attn = self.norm(attn, b + "post_attention_norm.weight")
        ffn_inp = self.new(self.hp.n_embd, attn, res, inplace=True)
        pre = b + ("ffn_norm.weight" if self.has(b + "ffn_norm.weight") else "post_attention_norm.weight")
        cur = self.norm(ffn_inp, pre)
        out = self.moe(il, cur) if self.has(b + "ffn_gate_inp.weight") else self.ffn(b, cur)
        if self.has(b + "post_ffw_norm.weight"):
            out = self.norm(out, b + "post_ffw_norm.weight")
        return self.new(self.hp.n_embd, out, ffn_inp, inplace=True)

    def attention(self, il: int, cur: _Tensor) -> _Tensor:
        """Q, V then K (llama-graph.cpp:2895-2897 expands them in that order), each with its bias,
        norm (of a reshape: a new tensor) and rope; the stores; the attention; the output matmul."""
        hp, b = self.hp, f"blk.{il}."
        n_head, n_head_kv, dk, dv = hp.n_head[il], hp.n_head_kv[il], hp.head_dim_k, hp.head_dim_v

        def proj(name: str, width: int, normed: bool) -> _Tensor:
            x = self.view(self.weighted(f"{b}attn_{name}.weight", width, cur))
            return self.rope(self.norm(x, f"{b}attn_{name}_norm.weight", width)
                             if normed and self.has(f"{b}attn_{name}_norm.weight") else x)

        q = proj("q", n_head * dk, True)
        v = self.weighted(b + "attn_v.weight", n_head_kv * dv, cur)
        k = proj("k", n_head_kv * dk, True)
        swa = hp.is_swa[il]
        idxs = self.swa_idxs if swa else self.idxs
        self.store(k, idxs[0])
        self.store(v, idxs[1])
        n_kv = self.n_kv_swa if swa else self.n_kv
        half = self.kv_layer_bytes // 2
        kv = [self.leaf(half), self.leaf(self.kv_layer_bytes - half)] if self.cpu else []
        sinks = self.w(b + "attn_sinks.weight")
        mask = self.masks[1 if swa else 0]
        if self.fa:
            extra = _pad(n_kv * n_head_kv * (dk + dv) * 2) if self.kv_quantized else 0  # CUDA's F16 K/V copies
            o = self.sized(n_head * dv * self.t * F32 + extra, self.view(q), *kv, mask, *sinks)
        else:
            kq = self.new(n_kv * n_head, *kv[:1], self.view(q))
            kq = self.new(n_kv * n_head, kq, mask, *sinks, inplace=True)  # soft_max
            o = self.new(n_head * dv, self.view(self.new(n_head * dv, *kv[1:], kq)))  # KQV, permute + cont
        return self.weighted(b + "attn_output.weight", hp.n_embd, self.view(o))

    def mla(self, il: int, cur: _Tensor) -> _Tensor:
        """deepseek2.cpp / deepseek32.cpp with the absorbed MLA (and the DSA lightning indexer): Q
        (absorbed, its rope part apart, concatenated), then the compressed K, its store, the
        attention over the latent cache, V's up-projection and the output matmul."""
        hp, b = self.hp, f"blk.{il}."
        n_head, latent, rope = hp.n_head[il], hp.kv_lora_rank, hp.n_rot
        top_k = None
        if self.has(b + "attn_q_a.weight"):
            width = self.weights_shape(b + "attn_q_a.weight")
            qa = self.norm(self.weighted(b + "attn_q_a.weight", width, cur), b + "attn_q_a_norm.weight", width)
            top_k = self.indexer(il, qa, cur) if hp.indexer_head_size else None
            q = self.weighted(b + "attn_q_b.weight", self.weights_shape(b + "attn_q_b.weight"), qa)
        else:
            q = self.weighted(b + "attn_q.weight", self.weights_shape(b + "attn_q.weight"), cur)
        q_abs = self.weighted(b + "attn_k_b.weight", n_head * latent, self.view(q))
        q_pe = self.new(n_head * rope, self.view(q), self.pos)  # rope of a view: a new tensor
        q_cat = self.new(n_head * (latent + rope), self.view(q_abs), q_pe)
        kv_pe = self.weighted(b + "attn_kv_a_mqa.weight", latent + rope, cur)
        kv_c = self.norm(self.view(kv_pe), b + "attn_kv_a_norm.weight", latent)
        k_pe = self.new(rope, self.view(kv_pe), self.pos)
        k_cat = self.new(latent + rope, kv_c, k_pe)
        self.store(k_cat, self.idxs[0])  # the V cache is a view of it
        mask = self.masks[0]
        mask_elt = 2 if self.fa else F32
        if top_k is not None:  # the DSA mask: -inf everywhere, the top-k unmasked, plus the causal mask
            filled = self.new(self.n_kv, mask, elt=mask_elt)  # (its three views keep the ADD from taking it)
            self.sized(0, filled, top_k)
            mask = self.new(self.n_kv, self.view(filled), mask, elt=mask_elt)
        # a host-held cache: K's view and V's (the latent part of each row of K) are copied apart
        row = self.kv_layer_bytes // max(1, self.n_kv)
        kv = [self.leaf(self.kv_layer_bytes), self.leaf(self.kv_layer_bytes - row * rope // (latent + rope))] \
            if self.cpu else []
        dv = self.weights_shape(b + "attn_v_b.weight", 1) or hp.head_dim_v
        if self.fa:
            extra = _pad(self.n_kv * (latent + rope) * 2) if self.kv_quantized else 0
            o = self.sized(n_head * latent * self.t * F32 + extra, self.view(q_cat), *kv, mask)
        else:
            kq = self.new(self.n_kv * n_head, *kv[:1], self.view(q_cat))
            kq = self.new(self.n_kv * n_head, kq, mask, inplace=True)
            v = self.sized(self.kv_layer_bytes * latent // (latent + rope), *kv[1:])  # cont of the transposed latent
            o = self.new(n_head * latent, v, kq)
        o = self.weighted(b + "attn_v_b.weight", n_head * dv, self.view(o))
        return self.weighted(b + "attn_output.weight", hp.n_embd, self.new(n_head * dv, self.view(o)))

    def indexer(self, il: int, qa: _Tensor, cur: _Tensor) -> _Tensor:
        """The DSA lightning indexer (fused on CUDA): its scores over the cache, then the top-k."""
        b = f"blk.{il}."
        width = self.weights_shape(b + "indexer.attn_q_b.weight")
        q = self.rope(self.view(self.weighted(b + "indexer.attn_q_b.weight", width, qa)))
        k = self.weighted(b + "indexer.attn_k.weight", self.hp.indexer_head_size, cur)
        k = self.new(self.hp.indexer_head_size, k, inplace=True)
        self.store(k, self.idxs[0])  # the indexer's key cache
        w = self.weighted(b + "indexer.proj.weight", self.weights_shape(b + "indexer.proj.weight"), cur)
        w = self.sized(w.size, self.view(w), inplace=True)
        scores = self.new(self.n_kv, q, w, *([self.lid_mask] if self.lid_mask else []))
        return self.new(1, self.new(1, scores))  # top_k and its cont (small: n_top_k x n_tokens)

    def ffn(self, b: str, cur: _Tensor, suffix: str = "") -> _Tensor:
        """build_ffn (gated, PAR): gate, up (graph order: the GLU's sources), their product, down."""
        width = self.weights_shape(f"{b}ffn_up{suffix}.weight")
        gate = self.weighted(f"{b}ffn_gate{suffix}.weight", width, cur)
        up = self.weighted(f"{b}ffn_up{suffix}.weight", width, cur)
        return self.weighted(f"{b}ffn_down{suffix}.weight", self.hp.n_embd, self.new(width, gate, up))

    def router(self, il: int, cur: _Tensor) -> tuple[_Tensor, _Tensor]:
        """build_moe_ffn's gating: (the selected experts' ids, their weights). Where CUDA fuses the
        top-k (its chain in one split), every tensor of the chain is kept until its end."""
        hp, b, md = self.hp, f"blk.{il}.", self.model.metadata
        arch = self.model.architecture
        bias = self.w(b + "exp_probs_b.bias")
        fused = _topk_fusable(hp.n_expert) and arch != "gpt-oss" and not bias
        logits = self.weighted(b + "ffn_gate_inp.weight", hp.n_expert, cur)
        if arch == "gpt-oss":  # softmax over the selected logits only
            ids = self.new(hp.n_expert, logits, elt=4)
            return ids, self.new(hp.n_expert_used, self.new(hp.n_expert_used, logits, self.view(ids)), inplace=True)
        chain = [logits, self.new(hp.n_expert, logits, inplace=not fused)]  # softmax / sigmoid
        if self.has(b + "exp_probs_b.bias"):
            chain.append(self.new(hp.n_expert, chain[1], *bias))
        ids = self.new(hp.n_expert, chain[-1], elt=4)  # argsort (its top-k is a view)
        chain.append(self.new(hp.n_expert_used, self.view(chain[1]), self.view(ids)))  # get_rows
        weights = chain[-1]
        if arch in ("qwen3moe", "glm4moe") or md.get(f"{arch}.expert_weights_norm"):  # / clamp(sum)
            chain.append(self.new(1, self.view(weights)))
            chain.append(self.new(1, chain[-1], inplace=not fused))
            weights = self.new(hp.n_expert_used, self.view(weights), chain[-1])
        if md.get(f"{arch}.expert_weights_scale", 1.0) not in (0.0, 1.0):
            weights = self.new(hp.n_expert_used, self.view(weights), inplace=True)
        if fused:
            self.sized(0, *chain)
        return ids, weights

    def moe(self, il: int, cur: _Tensor) -> _Tensor:
        """build_moe_ffn: the router, the selected experts' gate, up and down (weights copied in
        when in host memory), the weighted sum (fused on CUDA: ``graph_optimize`` keeps the
        experts' outputs and their weights until it, so the weighting is a new tensor), then the
        shared experts."""
        hp, b = self.hp, f"blk.{il}."
        e, used = hp.n_embd, hp.n_expert_used
        ff_exp = self.weights_shape(b + "ffn_up_exps.weight") or hp.n_ff_exp
        ids, weights = self.router(il, cur)
        host = self.offload.experts_on_host(il)
        x = self.view(cur)
        ids_v = self.view(ids)
        gate = self.weighted(b + "ffn_gate_exps.weight", used * ff_exp, x, ids_v, host=host)
        up = self.weighted(b + "ffn_up_exps.weight", used * ff_exp, x, ids_v, host=host)
        down = self.weighted(b + "ffn_down_exps.weight", used * e, self.new(used * ff_exp, gate, up), ids_v,
                             host=host)
        weighted = self.new(used * e, down, weights)
        out = self.new(e, self.view(weighted)) if used == 1 else self.new(e, self.view(weighted), self.view(weighted))
        for _ in range(2, used):
            out = self.new(e, out, self.view(weighted), inplace=True)
        self.sized(0, down, weights)  # CUDA's alloc dep: kept until the sum
        if self.has(b + "ffn_up_shexp.weight"):
            out = self.new(e, out, self.ffn(b, cur, "_shexp"), inplace=True)
        return out


def _representative_layers(builder: _Builder, n_layer: int) -> list[int]:
    """The layers replayed: runs of one kind (dense/MoE, SWA/full, host/device) capped at
    RUN_CAP, the last layer always (it keeps the output rows)."""
    hp, off = builder.hp, builder.offload
    keep: list[int] = []
    run_kind, run = None, 0
    for il in range(n_layer):
        kind = (builder.has(f"blk.{il}.ffn_gate_inp.weight"), hp.is_swa[il], il in off.cpu_layers,
                off.experts_on_host(il))
        run = run + 1 if kind == run_kind else 1
        run_kind = kind
        if run <= RUN_CAP or il == n_layer - 1:
            keep.append(il)
    return keep


def device_peak(model: ModelProfile, *, n_tokens: int, n_kv: int, n_kv_swa: int, flash_attn: bool,
                kv_quantized: bool, kv_layer_bytes: int, with_output: bool = True,
                offload: Offload = Offload(), trace: list[tuple[int, int]] | None = None) -> int:
    """Bytes of the CUDA compute buffer of a device running every layer (and the output head
    when ``with_output``), with ``offload``'s host-held weights copied in (module doc);
    ``trace`` collects the (size, offset) of each allocation, as ggml-alloc.c's AT_PRINTF does."""
    if model.architecture not in REPLAYED:
        raise UnsupportedModelError(f"no compute graph for architecture {model.architecture!r}",
                                    hint="rebuilt: " + ", ".join(sorted(REPLAYED)))
    builder = _Builder(model, n_tokens, n_kv, n_kv_swa, flash_attn, kv_quantized, kv_layer_bytes, offload)
    return _replay(_schedule(builder.build(with_output)), trace)
