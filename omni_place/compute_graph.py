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

The scheduler (``ggml-backend.cpp``) decides what lands in the device's buffer: graph inputs
(token embeddings, positions, KQ masks, cache indices) are copied in at the start; with op
offload an op whose weight stays in host memory runs on the GPU with a copy of that weight made
just before it (a weight from another backend starts a new split, so each copy lives until its
op only), and attention over a layer whose KV cache stays in host memory copies that layer's K
and V views. CUDA adds two allocations of its own: flash attention over a quantized cache
carries F16 copies of K and V in the FA node (``fattn.cu`` get_alloc_size: the tile/MMA
kernels every batch > 2 tokens uses), and the fused MoE weighted sum keeps the experts' outputs
and the router weights alive until the sum (``graph_optimize`` alloc deps), so the weighting
cannot be done in place.
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
    children: int = 0
    views: int = 0
    owned: bool = False
    addr: int = 0


def _replay(nodes: list[_Tensor]) -> int:
    """``ggml_gallocr_alloc_graph_impl`` over ``nodes`` (graph order): the buffer's size."""
    mem = _Allocator()

    def allocate(t: _Tensor) -> None:
        if t.owned or t.view is not None or not t.size:  # size 0: a store into the cache, a dependency
            return
        t.owned = True
        if t.inplace:
            for p in t.src:
                if not p.owned or p.output or p.size != t.size or p.children != 1 or p.views:
                    continue
                t.addr, p.owned = p.addr, False
                return
            for p in t.src:  # a view parent: reuse its source if nothing else looks at it
                v = p.view
                if (v is not None and v.owned and not v.output and p.children == 1 and not p.views
                        and v.views == 1 and not v.children and v.size >= t.size):
                    t.addr, v.owned = v.addr, False
                    if v.size > t.size:
                        mem.free(v.addr + _pad(t.size), _pad(v.size) - _pad(t.size))
                    return
        t.addr = mem.alloc(t.size)

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
    """What the device runs for weights kept in host memory (op offload): the ops of
    ``cpu_layers`` (0-based, their KV cache in host memory too), the MoE experts' ops of every
    layer (``cpu_experts``), the output head (``cpu_output``)."""

    cpu_layers: frozenset[int] = frozenset()
    cpu_experts: bool = False
    cpu_output: bool = False


class _Builder:
    """The graph of one model and batch, as the allocator sees it (weights are external)."""

    def __init__(self, model: ModelProfile, n_tokens: int, n_kv: int, n_kv_swa: int, flash_attn: bool,
                 kv_quantized: bool, kv_layer_bytes: int, offload: Offload) -> None:
        self.model, self.hp = model, model.hparams
        self.t, self.n_kv, self.n_kv_swa = n_tokens, n_kv, n_kv_swa
        self.fa, self.kv_quantized, self.offload = flash_attn, kv_quantized, offload
        self.kv_layer_bytes = kv_layer_bytes  # one layer's K and V cache (the host-held layers' copies)
        self.nodes: list[_Tensor] = []
        self.weights = {t.name: t.alloc_bytes("cuda") for t in model.tensors}
        self.shapes = {t.name: tuple(t.info.shape) for t in model.tensors}
        self.cpu = False  # building a layer whose weights stay in host memory

    def new(self, width: int, *src: _Tensor, inplace: bool = False, output: bool = False, elt: int = F32) -> _Tensor:
        t = _Tensor(width * self.t * elt, list(src), inplace=inplace, output=output)
        self.nodes.append(t)
        return t

    def view(self, t: _Tensor) -> _Tensor:
        v = _Tensor(t.size, [t], view=t.view or t)
        self.nodes.append(v)
        return v

    def input(self, size: int) -> _Tensor:
        t = _Tensor(size)
        self.nodes.append(t)
        return t

    def weighted(self, name: str, width: int, x: _Tensor, *more: _Tensor, copy: bool | None = None) -> _Tensor:
        """A matmul (or a norm's/bias' MUL/ADD) of weight ``name``: with the weight in host memory,
        its copy is made just before the op and freed after it."""
        src = [x, *more]
        if self.cpu if copy is None else copy:
            src.append(self.input(self.weights.get(name, 0)))
        return self.new(width, *src)

    def norm(self, x: _Tensor, name: str, width: int | None = None) -> _Tensor:
        """rms_norm then the weight's MUL, both in place when ``x`` has no other consumer."""
        w = width if width is not None else self.hp.n_embd
        n = self.new(w, x, inplace=True)
        src = [n]
        if self.cpu:
            src.append(self.input(self.weights.get(name, 0)))
        return self.new(w, *src, inplace=True)

    def has(self, name: str) -> bool:
        return name in self.weights

    # -- the graph ----------------------------------------------------------------------------------

    def build(self, with_output: bool) -> list[_Tensor]:
        hp = self.hp
        e = hp.n_embd
        self.embd = self.new(e)  # the token embeddings (GET_ROWS on the host), copied in
        self.pos = self.input(self.t * 4)
        swa = any(hp.is_swa)
        full_mask = self.input(self.n_kv * self.t * (2 if self.fa else F32))
        swa_mask = self.input(self.n_kv_swa * self.t * (2 if self.fa else F32)) if swa else full_mask
        self.masks = (full_mask, swa_mask)
        self.lid_mask = self.input(self.n_kv * self.t * 2) if hp.indexer_head_size else None  # fused_lid: F16
        self.out_ids = self.input(self.t * 4)
        x = self.embd
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
        if self.has(b + "attn_output.bias"):
            attn = self.bias(b + "attn_output.bias", attn)
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

    def bias(self, name: str, x: _Tensor) -> _Tensor:
        """A bias ADD, in place."""
        return self._same(x, [x] + ([self.input(self.weights[name])] if self.cpu else []))

    def _same(self, x: _Tensor, src: list[_Tensor]) -> _Tensor:
        t = _Tensor(x.size, src, inplace=True)
        self.nodes.append(t)
        return t

    def attention(self, il: int, cur: _Tensor) -> _Tensor:
        hp, b = self.hp, f"blk.{il}."
        n_head, n_head_kv, dk, dv = hp.n_head[il], hp.n_head_kv[il], hp.head_dim_k, hp.head_dim_v
        q = self.weighted(b + "attn_q.weight", n_head * dk, cur)
        if self.has(b + "attn_q.bias"):
            q = self.bias(b + "attn_q.bias", q)
        k = self.weighted(b + "attn_k.weight", n_head_kv * dk, cur)
        if self.has(b + "attn_k.bias"):
            k = self.bias(b + "attn_k.bias", k)
        v = self.weighted(b + "attn_v.weight", n_head_kv * dv, cur)
        if self.has(b + "attn_v.bias"):
            v = self.bias(b + "attn_v.bias", v)
        q, k = self.view(q), self.view(k)
        if self.has(b + "attn_q_norm.weight"):
            q = self.norm(q, b + "attn_q_norm.weight", n_head * dk)
            k = self.norm(k, b + "attn_k_norm.weight", n_head_kv * dk)
        q = self.new(n_head * dk, q, self.pos, inplace=True)  # rope
        k = self.new(n_head_kv * dk, k, self.pos, inplace=True)
        self.new(0, k)  # the K and V stores into the cache (views of it)
        self.new(0, self.view(v))
        swa = hp.is_swa[il]
        n_kv = self.n_kv_swa if swa else self.n_kv
        mask = self.masks[1 if swa else 0]
        kv = self.cache_copy(il)
        return self.wo(il, self.mha(self.view(q), mask, kv, n_head, n_kv, n_head_kv * (dk + dv), dv))

    def cache_copy(self, il: int) -> list[_Tensor]:
        """The layer's K and V views copied in when its cache stays in host memory (MLA: K only,
        V is a view of it): two blocks, which the weights' copies between two layers fragment."""
        if il not in self.offload.cpu_layers:
            return []
        if self.hp.is_mla:
            return [self.input(self.kv_layer_bytes)]
        return [self.input(self.kv_layer_bytes // 2), self.input(self.kv_layer_bytes - self.kv_layer_bytes // 2)]

    def mha(self, q: _Tensor, mask: _Tensor, kv: list[_Tensor], n_head: int, n_kv: int, kv_row: int,
            dv: int) -> _Tensor:
        """build_attn_mha: flash attention, or the KQ scores, their soft_max in place and KQV."""
        if self.fa:
            extra = _pad(n_kv * kv_row * 2) if self.kv_quantized else 0  # CUDA's F16 K/V copies
            o = _Tensor(n_head * dv * self.t * F32 + extra, [q, mask, *kv])
            self.nodes.append(o)
            return self.view(o)
        kq = self.new(n_kv * n_head, q, *kv)
        kq = self.new(n_kv * n_head, kq, mask, inplace=True)  # soft_max
        kqv = self.new(n_head * dv, kq, *kv)
        return self.new(n_head * dv, self.view(kqv))  # permute + cont

    def wo(self, il: int, o: _Tensor) -> _Tensor:
        return self.weighted(f"blk.{il}.attn_output.weight", self.hp.n_embd, o)

    def mla(self, il: int, cur: _Tensor) -> _Tensor:
        """deepseek2.cpp / deepseek32.cpp with the absorbed MLA (and the DSA lightning indexer)."""
        hp, b = self.hp, f"blk.{il}."
        n_head, latent, rope = hp.n_head[il], hp.kv_lora_rank, hp.n_rot
        q_rows = (self.weights_shape(b + "attn_q_b.weight") or self.weights_shape(b + "attn_q.weight"))
        if self.has(b + "attn_q_a.weight"):
            qa = self.weighted(b + "attn_q_a.weight", self.weights_shape(b + "attn_q_a.weight"), cur)
            qa = self.norm(qa, b + "attn_q_a_norm.weight", self.weights_shape(b + "attn_q_a.weight"))
            top_k = self.indexer(il, qa, cur) if hp.indexer_head_size else None
            q = self.weighted(b + "attn_q_b.weight", q_rows, qa)
        else:
            top_k = None
            q = self.weighted(b + "attn_q.weight", q_rows, cur)
        kv_pe = self.weighted(b + "attn_kv_a_mqa.weight", latent + rope, cur)
        q_pe = self.new(n_head * rope, self.view(q), self.pos)  # rope of a view of a shared q
        k_pe = self.new(rope, self.view(kv_pe), self.pos)
        # rms_norm of a view of a tensor with two views: a new tensor, then the weight's MUL in place
        kv_c = self.norm(self.new(latent, self.view(kv_pe)), b + "attn_kv_a_norm.weight", latent)
        q_abs = self.weighted(b + "attn_k_b.weight", n_head * latent, self.view(q))
        q_cat = self.new(n_head * (latent + rope), self.view(q_abs), q_pe)
        k_cat = self.new(latent + rope, kv_c, k_pe)
        self.new(0, k_cat)  # the K store (the V cache is a view of it)
        mask = self.masks[0]
        if top_k is not None:  # the DSA mask: -inf everywhere, the top-k unmasked, plus the causal mask
            # (the fill has three views, so the ADD cannot take it over)
            filled = self.new(self.n_kv, mask, elt=2 if self.fa else F32)
            self.new(0, filled, top_k)
            mask = self.new(self.n_kv, self.view(filled), mask, elt=2 if self.fa else F32)
        kv = self.cache_copy(il)
        dv = self.weights_shape(b + "attn_v_b.weight", 1) or hp.head_dim_v
        if self.fa:
            extra = _pad(self.n_kv * (latent + rope) * 2) if self.kv_quantized else 0
            o = _Tensor(n_head * latent * self.t * F32 + extra, [self.view(q_cat), mask, *kv])
            self.nodes.append(o)
        else:
            kq = self.new(self.n_kv * n_head, self.view(q_cat), *kv)
            kq = self.new(self.n_kv * n_head, kq, mask, inplace=True)
            v = _Tensor(self.kv_layer_bytes * latent // (latent + rope), kv)  # cont of the transposed latent
            self.nodes.append(v)
            o = self.new(n_head * latent, kq, v)
        o = self.weighted(b + "attn_v_b.weight", n_head * dv, self.view(o))
        return self.wo(il, self.new(n_head * dv, self.view(o)))

    def indexer(self, il: int, qa: _Tensor, cur: _Tensor) -> _Tensor:
        """The DSA lightning indexer (fused on CUDA): its scores over the cache, then the top-k."""
        b = f"blk.{il}."
        q = self.weighted(b + "indexer.attn_q_b.weight", self.weights_shape(b + "indexer.attn_q_b.weight"), qa)
        q = self.new(self.weights_shape(b + "indexer.attn_q_b.weight"), self.view(q), self.pos, inplace=True)
        k = self.weighted(b + "indexer.attn_k.weight", self.hp.indexer_head_size, cur)
        k = self.new(self.hp.indexer_head_size, k, inplace=True)
        self.new(0, k)  # the indexer's key store
        w = self.weighted(b + "indexer.proj.weight", self.weights_shape(b + "indexer.proj.weight"), cur)
        w = self.new(w.size // (self.t * F32), self.view(w), inplace=True)
        scores = self.new(self.n_kv, q, w, *([self.lid_mask] if self.lid_mask else []))
        return self.new(1, self.new(1, scores))  # top_k and its cont (small: n_top_k x n_tokens)

    def weights_shape(self, name: str, dim: int = 1) -> int:
        """ne[dim] of a weight (ne1: a matmul's output width), 0 if the model has none."""
        shape = self.shapes.get(name, ())
        return shape[dim] if len(shape) > dim else 0

    def ffn(self, b: str, cur: _Tensor, prefix: str = "ffn_", suffix: str = "") -> _Tensor:
        """build_ffn (gated, PAR): up, gate, their GLU product (a new tensor), down."""
        width = self.weights_shape(f"{b}{prefix}up{suffix}.weight")
        up = self.weighted(f"{b}{prefix}up{suffix}.weight", width, cur)
        gate = self.weighted(f"{b}{prefix}gate{suffix}.weight", width, cur)
        par = self.new(width, gate, up)
        return self.weighted(f"{b}{prefix}down{suffix}.weight", self.hp.n_embd, par)

    def moe(self, il: int, cur: _Tensor) -> _Tensor:
        """build_moe_ffn: the router, the selected experts' FFN, the weighted sum (fused on CUDA),
        then the shared experts."""
        hp, b = self.hp, f"blk.{il}."
        e, used, n_exp = hp.n_embd, hp.n_expert_used, hp.n_expert
        ff_exp = self.weights_shape(b + "ffn_up_exps.weight") or hp.n_ff_exp
        logits = self.weighted(b + "ffn_gate_inp.weight", n_exp, cur)
        if self.has(b + "ffn_gate_inp.bias"):
            logits = self.bias(b + "ffn_gate_inp.bias", logits)
        probs = self.new(n_exp, logits, inplace=True)
        select = self.new(n_exp, probs, self.input(self.weights[b + "exp_probs_b.bias"])) if self.has(
            b + "exp_probs_b.bias") else probs
        ids = self.new(n_exp, select, elt=4)  # argsort (its top-k is a view)
        ids_v = self.view(ids)
        weights = self.new(used, probs, ids_v)
        weights = self.new(used, weights, self.new(1, weights), inplace=True)  # normalized by their sum
        experts = self.cpu or self.offload.cpu_experts

        def expert_op(name: str, width: int, x: _Tensor) -> _Tensor:
            out = self.weighted(name, width, x, ids_v, copy=experts)
            bias = name.replace(".weight", ".bias")
            if self.has(bias):
                src = [out, self.input(self.weights[bias])] if experts else [out]
                out = self._same(out, src)
            return out

        x = self.view(cur)
        up = expert_op(b + "ffn_up_exps.weight", used * ff_exp, x)
        gate = expert_op(b + "ffn_gate_exps.weight", used * ff_exp, x)
        par = self.new(used * ff_exp, gate, up)
        down = expert_op(b + "ffn_down_exps.weight", used * e, par)
        weighted = self.new(used * e, down, weights)
        if used == 1:  # a cont instead of the sum
            out = self.new(e, self.view(weighted))
        else:
            out = self.new(e, self.view(weighted), self.view(weighted))
            for _ in range(2, used):
                out = self.new(e, out, self.view(weighted), inplace=True)
        self.nodes.append(_Tensor(0, [down, weights]))  # CUDA's alloc dep: kept until the sum
        if self.has(b + "ffn_up_shexp.weight"):
            out = self.new(e, out, self.ffn(b, cur, "ffn_", "_shexp"), inplace=True)
        return out


def _representative_layers(builder: _Builder, n_layer: int) -> list[int]:
    """The layers replayed: runs of one kind (dense/MoE, SWA/full, host/device) capped at
    RUN_CAP, the last layer always (it keeps the output rows)."""
    hp, off = builder.hp, builder.offload
    keep: list[int] = []
    run_kind, run = None, 0
    for il in range(n_layer):
        kind = (builder.has(f"blk.{il}.ffn_gate_inp.weight"), hp.is_swa[il], il in off.cpu_layers)
        run = run + 1 if kind == run_kind else 1
        run_kind = kind
        if run <= RUN_CAP or il == n_layer - 1:
            keep.append(il)
    return keep


def device_peak(model: ModelProfile, *, n_tokens: int, n_kv: int, n_kv_swa: int, flash_attn: bool,
                kv_quantized: bool, kv_layer_bytes: int, with_output: bool = True,
                offload: Offload = Offload()) -> int:
    """Bytes of the CUDA compute buffer of a device running every layer (and the output head
    when ``with_output``), with ``offload``'s host-held weights copied in (module doc)."""
    if model.architecture not in REPLAYED:
        raise UnsupportedModelError(f"no compute graph for architecture {model.architecture!r}",
                                    hint="rebuilt: " + ", ".join(sorted(REPLAYED)))
    builder = _Builder(model, n_tokens, n_kv, n_kv_swa, flash_attn, kv_quantized, kv_layer_bytes, offload)
    return _replay(builder.build(with_output))
