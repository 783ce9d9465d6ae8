"""The compute graph llama.cpp reserves, rebuilt for :mod:`.compute_alloc`'s scheduler and allocator.

``sched_reserve`` (``src/llama-context.cpp``) builds the worst-case graph (a prompt ubatch of
``n_tokens`` tokens, all of them outputs) and ``ggml_gallocr`` sizes every backend's buffer by
allocating it. The buffer's size is the highest address ever used, which depends on the order
and the sizes of the tensors, not only on which are alive at once: this module rebuilds the node
list of the architectures omni_place covers (``src/models/*.cpp``, ``llama-graph.cpp`` build_attn /
build_ffn / build_moe_ffn, the MLA and DSA variants, a quantized cache's Hadamard rotations) with
their sizes, for a :class:`Layout`: the devices of a layer split (each a CUDA GPU or an RPC
server), the layers, experts and output head each holds, and the CPU.

The builder does not place the ops: every weight, cache view and graph input is a source tagged
with the backend holding it, and :func:`.compute_alloc.schedule` assigns the ops as
``ggml_backend_sched`` does (an op where its weight is, op offload of host-held weights to the
first CUDA device, the rest spread from its neighbours) and copies what crosses backends. What
differs by backend lives on the tensors, so one graph serves every device of a split: CUDA's
allocations of its own (flash attention over a quantized cache carries F16 copies of K and V in
the FA node, ``fattn.cu`` get_alloc_size; a quantized cache's copies are padded to 512 elements),
its fusions' keep-alives (``graph_optimize`` alloc deps, where CUDA runs the layer: the MoE
weighted sum keeps the experts' outputs and the router weights until the sum, the fused top-k its
whole chain), and what CUDA cannot run (some FA head sizes, DSA's lightning indexer: the CPU runs
it). An RPC server is its CPU backend: none of these, the CPU's alignment (ggml-rpc.cpp:846-926).
Checked allocation by allocation against the engine's traces (tests/data/compute_traces.json):
one CUDA GPU beside the host (``runs``, H200: the ``CUDA0`` and ``CUDA_Host`` buffers), the CPU
backend alone (``cpu_runs``) and splits over RPC servers (``split_runs``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .compute_alloc import CUDA_ALIGNMENT, Tensor, pad

if TYPE_CHECKING:
    from .model import ModelProfile

F32 = 4
# the architectures whose graphs the builder rebuilds (checked against the engine's dry runs,
# benchmarks/results/compute_fit.md); others are priced by the widths' phases alone
REPLAYED = frozenset({"llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "gpt-oss", "glm4moe", "deepseek2", "deepseek32"})
# CUDA replays checked against the engine on an H200, for every rebuilt architecture: ggml-alloc
# traces allocation by allocation (size and offset) up to the `CUDA0 compute buffer size` line, 61
# runs (the speed models under f16 and q8_0 caches, ubatch 128-4096, FA on and off, every kind of
# op offload; random gemma3, gpt-oss, glm4moe and deepseek32 shapes in all four placements;
# tests/data/compute_traces.json holds 17 of them), and the CUDA sweeps' buffer lines: 931 of 932
# records of benchmarks/results/compute_sweep_cuda.jsonl within 1 MiB (one gemma3 record 42 MiB
# over) and all 216 of the held-out compute_sweep_cuda_25.jsonl exact. The host's buffer beside
# the GPU (`CUDA_Host`, compute_replay.device_and_host_peaks): the same 61 traces allocation by
# allocation and all 1148 records to the printed 0.01 MiB. The planner prices op offload and the
# host's buffer of these by replaying the placement itself (compute_fit.md's planner tables)
TRACE_CHECKED = REPLAYED
# the CPU backend's buffer (device_peak backend="cpu", and "rpc") checked against ggml-alloc traces
# of the engine's CPU dry runs, allocation by allocation, for every rebuilt architecture
# (tests/data/compute_traces.json "cpu_runs"; loopback RPC dry runs in tests/test_compute_model.py)
CPU_CHECKED = REPLAYED
# every backend's buffer of a layer split over several devices (compute_replay.split_peaks)
# checked against ggml-alloc traces of loopback RPC dry runs, for every rebuilt architecture: 349
# runs of the CPU beside two or three RPC servers (uneven -ts, some layers on the CPU, routed
# experts or some of their kinds or some layers' experts on the CPU, the head on the CPU or the
# last device, FA on and off, f16 and q8_0 caches, ubatch 128-4096), all 920 buffers equal
# allocation by allocation (tests/data/compute_traces.json "split_runs" holds 24); a CUDA device
# in a split follows TRACE_CHECKED's rules, per device
SPLIT_CHECKED = REPLAYED


def _pad(n: int) -> int:
    return pad(n, CUDA_ALIGNMENT)


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

    def layout(self, n_layer: int, backend: str) -> Layout:
        """This offload as the layout of one ``backend`` device beside the host (``"cpu"``: the
        CPU backend alone, which must then hold everything)."""
        if backend == "cpu":
            return Layout((), (0,) * n_layer)
        return Layout((backend,), tuple(int(il in self.cpu_layers) for il in range(n_layer)),
                      tuple(ALL_EXPERTS if self.experts_on_host(il) else frozenset() for il in range(n_layer)),
                      int(self.cpu_output))


ALL_EXPERTS = frozenset({"gate", "up", "down", "gate_up"})  # routed-expert kinds (placement.EXPERT_KINDS)


@dataclass(frozen=True)
class Layout:
    """A layer split as the scheduler sees it: the devices' ``backends`` in its order (``"cuda"``,
    ``"rpc"``; the CPU is backend ``len(backends)``, the last), per layer the backend holding its
    weights and KV cache (``layers``) and the routed-expert kinds the CPU holds (``cpu_experts``,
    of ALL_EXPERTS), the output head's backend, and op offload (the engine's default, for batches
    of at least 32 tokens): an op of a CPU-held weight runs on the first CUDA device, a routed
    expert's MUL_MAT_ID only where ``expert_offload`` (ik_llama.cpp asks for more tokens,
    cost.CostModel.experts_offloaded); ``copies``: the scheduler's copies of every input (4 under
    pipeline parallelism, compute_alloc.schedule)."""

    backends: tuple[str, ...]
    layers: tuple[int, ...]
    cpu_experts: tuple[frozenset[str], ...] = ()
    output: int = 0
    offload: bool = True
    copies: int = 1
    expert_offload: bool = True

    @property
    def cpu(self) -> int:
        return len(self.backends)

    @property
    def kinds(self) -> tuple[str, ...]:
        return (*self.backends, "cpu")

    def experts(self, il: int, kind: str) -> int:
        """The backend holding layer ``il``'s routed experts of ``kind`` ("gate", "up", "down")."""
        return self.cpu if il < len(self.cpu_experts) and kind in self.cpu_experts[il] else self.layers[il]

    def runner(self, home: int) -> int:
        """The backend running the ops of weights held by ``home`` (op offload: the first CUDA device)."""
        if home == self.cpu and self.offload and "cuda" in self.backends:
            return self.backends.index("cuda")
        return home

    def expert_runner(self, home: int) -> int:
        """The backend running the MUL_MAT_ID of routed experts held by ``home``."""
        return home if home == self.cpu and not self.expert_offload else self.runner(home)


def _fattn_on_device(dk: int, dv: int, gqa_ratio: int, n_kv: int) -> bool:
    """Whether CUDA runs a FLASH_ATTN_EXT of K and V head sizes ``dk``, ``dv`` (fattn.cu:541-631
    ggml_cuda_get_best_fattn_kernel; a causal mask, no ALiBi, a cache type it reads); else the
    scheduler runs it on the CPU and copies its output back in."""
    gqa_opt = gqa_ratio >= 2 and n_kv % 256 == 0  # FATTN_KQ_STRIDE
    if dk in (40, 64, 72, 80, 96, 112, 128, 256):
        return dv == dk
    rules = {192: (128, 8), 320: (256, 32), 512: (512, 1), 576: (512, 1)}  # dk: (dv, gqa_ratio multiple)
    return dk in rules and dv == rules[dk][0] and gqa_opt and gqa_ratio % rules[dk][1] == 0


def _topk_fusable(n_expert: int) -> bool:
    """CUDA fuses the router's top-k (ggml-cuda.cu:4555-4606) for these expert counts (topk-moe.cu:410)."""
    return (n_expert & (n_expert - 1) == 0 and n_expert <= 512) or n_expert in (288, 576)


class GraphBuilder:
    """The graph of one model and batch in the engine's node order, every weight, cache view and
    graph input a source tagged with the backend holding it (the scheduler places the ops)."""

    def __init__(self, model: ModelProfile, n_tokens: int, n_kv: int, n_kv_swa: int, flash_attn: bool,
                 kv_quantized: bool, kv_layer_bytes: int, layout: Layout) -> None:
        self.model, self.hp = model, model.hparams
        self.t, self.n_kv, self.n_kv_swa = n_tokens, n_kv, n_kv_swa
        self.fa, self.kv_quantized, self.layout = flash_attn, kv_quantized, layout
        self.kv_layer_bytes = kv_layer_bytes  # one layer's K and V cache (the copies of a cache held elsewhere)
        self.nodes: list[Tensor] = []
        self.weights = model.cuda_weights  # name -> (bytes on CUDA, shape)
        self.cpu_backend = layout.cpu
        self.device_weights = [Tensor(0, home=b, weight=True, external=True) for b in range(layout.cpu)]
        self.home = layout.cpu  # the backend holding the weights (and cache) of the layer being built
        self.cuda = False  # its ops run on CUDA: CUDA's own allocations (fused kernels' keep-alives, FA's F16 copies)
        self.offloaded = False  # op offload runs its ops on a device: its weights and cache are copied there
        # gpt-oss keeps the output rows after its last layer, the others in it (openai-moe.cpp:157)
        self.rows_at_end = model.architecture == "gpt-oss"
        # the leaves the graph allocates, in the order it meets them: graph inputs (host memory
        # beside an accelerator) and fresh tensors an op fills (the device's own)
        self.leaves: list[Tensor] = []
        self._inputs: dict[object, Tensor] = {}
        self.dsa_zeros = self.dsa_zeros_size = 0  # the DSA mask leaves made (layers 0..dsa_zeros-1), their size

    def input(self, key: object, size: int) -> Tensor:
        """Graph input ``key`` (``ggml_set_input``), made where the graph first reads it: on the
        CPU, the last backend (ggml-backend.cpp:944-949)."""
        if key not in self._inputs:
            self._inputs[key] = t = Tensor(size, home=self.layout.cpu, input=True)
            self.leaves.append(t)
        return self._inputs[key]

    @property
    def pos(self) -> Tensor:
        return self.input("pos", self.t * 4)

    def idxs(self, kind: str, swa: bool, per_row: int = 1) -> Tensor:
        """The row indices (I64) of a store into the K or V cache (iSWA: the SWA cache's own);
        ``per_row``: a transposed V cache (no flash attention) takes one per element of a row
        (llama-kv-cache.cpp:1430-1439)."""
        return self.input((kind, swa and any(self.hp.is_swa)), self.t * 8 * per_row)

    def rotation(self, kind: str, swa: bool, head_dim: int) -> Tensor | None:
        """The Hadamard matrix a quantized cache's K or V is rotated by (``attn_inp_k_rot`` /
        ``_v_rot``), None without one: llama-kv-cache.cpp:321-338 rotates a quantized K or V whose
        head size is a multiple of 64, K by the largest power of two (from 64) dividing it, V by
        64 (1447-1484)."""
        if not self.kv_quantized or head_dim % 64:
            return None
        n = 64
        while kind == "k" and head_dim % (2 * n) == 0:
            n *= 2
        return self.input((kind + "_rot", swa and any(self.hp.is_swa)), n * n * F32)

    def hadamard(self, x: Tensor, rot: Tensor | None) -> Tensor:
        """llama_mul_mat_hadamard (llama-impl.h:57-75): a matmul of a reshape by the rotation."""
        return x if rot is None else self.sized(x.size, rot, self.view(x))

    def mask(self, swa: bool) -> Tensor:
        """The KQ mask over the full or the SWA cache: F16 with flash attention (llama-graph.cpp)."""
        swa = swa and any(self.hp.is_swa)
        return self.input(("mask", swa), (self.n_kv_swa if swa else self.n_kv) * self.t * (2 if self.fa else F32))

    def new(self, width: int, *src: Tensor, elt: int = F32, **kw: Any) -> Tensor:
        """A new tensor of ``width`` elements of ``elt`` bytes per token (:meth:`sized`'s keywords)."""
        return self.sized(width * self.t * elt, *src, **kw)

    def sized(self, size: int, *src: Tensor, inplace: bool = False, output: bool = False, **kw: Any) -> Tensor:
        t = Tensor(size, list(src), inplace=inplace, output=output, **kw)
        self.nodes.append(t)
        return t

    def keep(self, *src: Tensor, home: int = -1) -> None:
        """An allocation dependency: ``src`` stay allocated until here (ggml-backend.cpp:1535-1554)."""
        self.sized(0, *src, dep=True, home=home)

    def view(self, t: Tensor, size: int = 0) -> Tensor:
        """A view (reshape, permute) of ``t``, in ``t``'s memory: an op of another backend reading
        it copies the view (``size``: its ggml_nbytes where it spans less than ``t``)."""
        v = Tensor(size or t.size, [t], False, t.view or t)
        self.nodes.append(v)
        return v

    def cache_copy(self, size: int, ne0: int, cache: tuple[int, int]) -> Tensor:
        """A view of the layer's cache (``size`` bytes, rows of ``ne0`` elements; ``cache``: the
        bytes and elements of the layer's cache), read in place on its backend, copied elsewhere:
        a CUDA copy pads a quantized row to MATRIX_ROW_PADDING (512) elements (ggml-cuda.cu:912-917
        get_alloc_size; every cache type's block holds 32 elements)."""
        pad_to = (512 - ne0 % 512) * cache[0] // cache[1] if self.kv_quantized and ne0 % 512 else 0
        return Tensor(size, home=self.home, external=True, cuda_size=size + pad_to if pad_to else 0)

    def w(self, name: str, home: int | None = None, copied: bool = False) -> list[Tensor]:
        """Weight ``name`` (held by ``home``, by default the layer's backend) as an op's source. A
        device's weight of an op the device runs is never copied (pass 1 runs the op there): one
        stand-in per device serves them all, unless ``copied`` (a weight of an op run elsewhere)."""
        if name not in self.weights:
            return []
        home = self.home if home is None else home
        if home != self.cpu_backend and not copied:
            return [self.device_weights[home]]
        return [Tensor(self.weights[name][0], home=home, weight=True, external=True)]

    def weighted(self, name: str, width: int, x: Tensor, *more: Tensor, home: int | None = None,
                 offloadable: bool = True) -> Tensor:
        """A matmul of weight ``name`` (its src[0]), then its bias ADD in place when there is one;
        an expert's (MUL_MAT_ID: ``more`` holds the ids) is an ADD_ID that reads the ids too
        (llama-graph.cpp:2212, 2228, 2330). ``offloadable``: op offload may take the matmul."""
        out = self.new(width, *self.w(name, home), x, *more, offloadable=offloadable)
        bias = name.replace(".weight", ".bias")
        return self.sized(out.size, out, *self.w(bias, home), *more, inplace=True) if self.has(bias) else out

    def norm(self, x: Tensor, name: str, width: int | None = None) -> Tensor:
        """rms_norm then the weight's MUL, both in place when ``x`` (not a view) has no other consumer."""
        n = self.new(width if width is not None else self.hp.n_embd, x, inplace=True)
        return self.sized(n.size, n, *self.w(name), inplace=True)

    def rope(self, x: Tensor) -> Tensor:
        return self.sized(x.size, x, self.pos, inplace=True)

    def store(self, x: Tensor, idxs: Tensor) -> None:
        """SET_ROWS of ``x`` into the cache: no memory of its own, run by the cache's backend (the
        scheduler runs an op on its destination's, ggml-backend.cpp:921-935)."""
        self.sized(0, self.view(x), idxs, home=self.home)

    def has(self, name: str) -> bool:
        return name in self.weights

    def weights_shape(self, name: str, dim: int = 1) -> int:
        """ne[dim] of a weight (ne1: a matmul's output width), 0 if the model has none."""
        shape = self.weights[name][1] if name in self.weights else ()
        return shape[dim] if len(shape) > dim else 0

    # -- the graph ----------------------------------------------------------------------------------

    def enter(self, home: int) -> None:
        """Build the weights (and cache) of backend ``home`` next, run where the layout runs them."""
        runner = self.layout.runner(home)
        self.home, self.cuda, self.offloaded = home, self.layout.kinds[runner] == "cuda", runner != home

    def build(self, layers: Sequence[int], with_output: bool) -> list[Tensor]:
        """The node list of ``layers`` (the replayed ones, in order) and the output head."""
        hp, t, lay = self.hp, self.t, self.layout
        tokens = self.input("tokens", t * 4)
        # build_inp_embd (llama-graph.cpp:2384-2435): the embeddings input, which a token batch
        # leaves unused (ggml_build_forward_select), is a graph input all the same
        self.input("embd", hp.n_embd * t * F32)
        # GET_ROWS of the token table: on the CPU, its home (llama-model.cpp:1604; CUDA offloads no
        # GET_ROWS, ggml-cuda.cu:5636-5639)
        x = self.sized(hp.n_embd * t * F32, *self.w("token_embd.weight", lay.cpu), tokens, offloadable=False)
        n_layer = hp.n_layer_kv or hp.n_layer
        for il in layers:
            self.enter(lay.layers[il])
            x = self.layer(il, x, last=il == n_layer - 1 and not self.rows_at_end)
        x.output = x.output or self.rows_at_end  # gpt-oss: the last layer's output is t_h_nextn, an output
        if with_output:
            self.enter(lay.output)
            if self.rows_at_end:
                x = self.new(hp.n_embd, x, self.input("out_ids", t * 4))
            x = self.norm(x, "output_norm.weight")
            x.output = True  # the embeddings result
            head = "output.weight" if self.has("output.weight") else "token_embd.weight"  # tied
            self.weighted(head, hp.n_vocab, x).output = True
        return self.nodes

    def layer(self, il: int, x: Tensor, last: bool) -> Tensor:
        b = f"blk.{il}."
        if self.hp.indexer_head_size and self.dsa_zeros < il:
            # the DSA leaves of the layers left out (:meth:`dsa_mask`): allocated up front all the
            # same, each freed in its own layer, i.e. before this one
            runner = self.layout.runner(self.layout.layers[il - 1])
            skipped = [Tensor(self.dsa_zeros_size, home=runner) for _ in range(self.dsa_zeros, il)]
            self.leaves += skipped
            self.keep(*skipped, home=runner)
            self.dsa_zeros = il
        cur = self.norm(x, b + "attn_norm.weight")
        attn = self.mla(il, cur) if self.hp.is_mla else self.attention(il, cur)
        res = x
        if last:  # inp_out_ids: the last layer keeps the output rows (all of them here)
            out_ids = self.input("out_ids", self.t * 4)
            attn = self.new(self.hp.n_embd, attn, out_ids)
        if self.has(b + "post_ffw_norm.weight"):  # gemma3: norms after attention and FFN
            attn = self.norm(attn, b + "post_attention_norm.weight")
        if last:  # the residual's rows: the ADD's src[1], after src[0]'s chain (gemma3.cpp:158-167)
            res = self.new(self.hp.n_embd, x, out_ids)
        ffn_inp = self.new(self.hp.n_embd, attn, res, inplace=True)
        pre = b + ("ffn_norm.weight" if self.has(b + "ffn_norm.weight") else "post_attention_norm.weight")
        cur = self.norm(ffn_inp, pre)
        out = self.moe(il, cur) if self.has(b + "ffn_gate_inp.weight") else self.ffn(b, cur)
        if self.has(b + "post_ffw_norm.weight"):
            out = self.norm(out, b + "post_ffw_norm.weight")
        return self.new(self.hp.n_embd, out, ffn_inp, inplace=True)

    def attention(self, il: int, cur: Tensor) -> Tensor:
        """Q, V then K (llama-graph.cpp:2895-2897 expands them in that order), each with its bias,
        norm (of a reshape: a new tensor) and rope; the stores; the attention; the output matmul."""
        hp, b = self.hp, f"blk.{il}."
        n_head, n_head_kv, dk, dv = hp.n_head[il], hp.n_head_kv[il], hp.dim_k(il), hp.dim_v(il)

        def proj(name: str, width: int, normed: bool) -> Tensor:
            x = self.view(self.weighted(f"{b}attn_{name}.weight", width, cur))
            return self.rope(self.norm(x, f"{b}attn_{name}_norm.weight", width)
                             if normed and self.has(f"{b}attn_{name}_norm.weight") else x)

        swa = hp.is_swa[il]
        # a quantized cache rotates Q and K, V and the output (llama-graph.cpp:2883-2889, 2928-2930);
        # the graph meets K's matrix first: src[0] of Q's rotation, before Q's own chain
        k_rot = self.rotation("k", swa, dk)
        q = self.hadamard(proj("q", n_head * dk, True), k_rot)
        v_rot = self.rotation("v", swa, dv)

        def value() -> Tensor:
            return self.hadamard(self.weighted(b + "attn_v.weight", n_head_kv * dv, cur), v_rot)

        def key() -> Tensor:
            return self.hadamard(proj("k", n_head_kv * dk, True), k_rot)

        if any(hp.is_swa):  # the iSWA build_attn expands K before V (llama-graph.cpp:3147-3156)
            k = key()
            v = value()
        else:  # Q, V, K (2895-2897)
            v = value()
            k = key()
        self.store(k, self.idxs("k", swa))
        self.store(v, self.idxs("v", swa, 1 if self.fa else n_head_kv * dv))
        n_kv = self.n_kv_swa if swa else self.n_kv
        layer_bytes = self.kv_layer_bytes * n_kv // self.n_kv  # the copied view: n_kv cells of the layer's cache
        k_bytes = layer_bytes // 2
        kv = [self.cache_copy(k_bytes, dk, (k_bytes, n_kv * n_head_kv * dk)),
              self.cache_copy(layer_bytes - k_bytes, dv, (layer_bytes - k_bytes, n_kv * n_head_kv * dv))]
        sinks = self.w(b + "attn_sinks.weight", copied=True)  # FA: run where CUDA cannot
        mask = self.mask(swa)
        if self.fa:
            # CUDA's F16 copies of a quantized K and V (fattn.cu get_alloc_size); some head sizes it
            # cannot run: the scheduler runs them where most of their sources are, the CPU
            size = n_head * dv * self.t * F32
            extra = _pad(n_kv * n_head_kv * (dk + dv) * 2) if self.kv_quantized else 0
            o = self.sized(size, self.view(q), *kv, mask, *sinks, by_weight=False, cuda_size=size + extra,
                           cuda_ok=_fattn_on_device(dk, dv, n_head // n_head_kv, n_kv))
        else:
            kq = self.new(n_kv * n_head, *kv[:1], self.view(q))
            kq = self.new(n_kv * n_head, kq, mask, *sinks, inplace=True)  # soft_max
            o = self.new(n_head * dv, self.view(self.new(n_head * dv, *kv[1:], kq)))  # KQV, permute + cont
        o = self.hadamard(o, v_rot)
        return self.weighted(b + "attn_output.weight", hp.n_embd, self.view(o))

    def mla(self, il: int, cur: Tensor) -> Tensor:
        """deepseek2.cpp / deepseek32.cpp with the absorbed MLA: Q (absorbed, its rope part apart,
        concatenated), then the compressed K, its store, the attention over the latent cache, V's
        up-projection and the output matmul. deepseek32 stores the DSA indexer's key first (the
        first store the layer expands, deepseek32.cpp:226-260) and masks the attention by the
        indexer's top-k (:meth:`dsa_mask`)."""
        hp, b = self.hp, f"blk.{il}."
        n_head, latent, rope = hp.n_head[il], hp.kv_lora_rank, hp.n_rot
        if hp.indexer_head_size:
            self.indexer_key(il, cur)
        qa = cur
        if self.has(b + "attn_q_a.weight"):
            width = self.weights_shape(b + "attn_q_a.weight")
            qa = self.norm(self.weighted(b + "attn_q_a.weight", width, cur), b + "attn_q_a_norm.weight", width)
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
        self.store(k_cat, self.idxs("k", False))  # the V cache is a view of it
        dsa = hp.indexer_head_size > 0
        # a host-held cache: K's view and V's (the latent part of each row of K, its last row
        # ending after the latent) are copied apart; the DSA indexer's keys are a cache of their own
        k_bytes = self.kv_layer_bytes * (latent + rope) // (latent + rope + hp.indexer_head_size)
        k_cache = (k_bytes, self.n_kv * (latent + rope))
        kv = [self.cache_copy(k_bytes, latent + rope, k_cache),
              self.cache_copy(k_bytes - k_bytes // max(1, self.n_kv) * rope // (latent + rope), latent, k_cache)]
        dv = self.weights_shape(b + "attn_v_b.weight", 1) or hp.head_dim_v
        if self.fa:
            # CUDA's F16 copy of K, and of V apart where V is no view of K: the copies of a cache
            # held elsewhere (fattn-common.cuh:63 V_is_K_view)
            f16 = self.n_kv * (latent + rope) * 2 + (self.n_kv * latent * 2 if self.offloaded else 0)
            mask = self.dsa_mask(il, qa, cur) if dsa else self.mask(False)
            size = n_head * latent * self.t * F32
            o = self.sized(size, self.view(q_cat), *kv, mask, by_weight=False,
                           cuda_size=size + _pad(f16) if self.kv_quantized else 0,
                           cuda_ok=_fattn_on_device(latent + rope, latent, n_head, self.n_kv))
        else:
            # build_attn_mha (llama-graph.cpp:2616-2750) makes V's cont (of the transposed latent)
            # first, then KQ, then reads the mask in the softmax
            # (a layer's cache bytes hold the DSA indexer's keys too)
            v = self.sized(self.kv_layer_bytes * latent // (latent + rope + hp.indexer_head_size), *kv[1:])
            kq = self.new(self.n_kv * n_head, *kv[:1], self.view(q_cat))
            mask = self.dsa_mask(il, qa, cur) if dsa else self.mask(False)
            kq = self.new(self.n_kv * n_head, kq, mask, inplace=True)
            o = self.new(n_head * latent, v, kq)
        o = self.weighted(b + "attn_v_b.weight", n_head * dv, self.view(o))
        return self.weighted(b + "attn_output.weight", hp.n_embd, self.new(n_head * dv, self.view(o)))

    def indexer_rotation(self) -> Tensor:
        """The indexer cache's Hadamard matrix, made whatever the cache type (llama-kv-cache.cpp:327-331)."""
        n, head = 64, self.hp.indexer_head_size
        while head % (2 * n) == 0:
            n *= 2
        return self.input("k_rot_lid", n * n * F32)

    def indexer_key(self, il: int, cur: Tensor) -> None:
        """The DSA indexer's key (deepseek32.cpp:234-257): its matmul, layer norm (NORM, not in
        place, then the weight and bias in place), rope of a reshape, Hadamard rotation, store."""
        b, width = f"blk.{il}.", self.hp.indexer_head_size
        rot = self.indexer_rotation()  # src[0] of the rotation: the graph meets it first
        k = self.new(width, self.new(width, *self.w(b + "indexer.attn_k.weight"), cur))
        k = self.sized(k.size, self.sized(k.size, k, *self.w(b + "indexer.k_norm.weight"), inplace=True),
                       *self.w(b + "indexer.k_norm.bias"), inplace=True)
        k = self.sized(k.size, rot, self.rope(self.view(k)))
        self.store(k, self.input("k_idxs_lid", self.t * 8))

    def dsa_mask(self, il: int, qa: Tensor, cur: Tensor) -> Tensor:
        """The DSA mask (llama-graph.cpp:3039-3095 build_attn of the DSA input): -inf everywhere,
        the indexer's top-k rows set to the zeros of a fresh tensor (a leaf the buffer allocates),
        plus the causal mask. The graph reaches the zeros first, then the indexer's query
        (rotated), weights (a scale of a view: a new tensor), fused scores and top-k."""
        b, t = f"blk.{il}.", self.t
        n_top_k = min(self.n_kv, int(self.model.metadata.get(f"{self.model.architecture}.attention.indexer.top_k", 0)
                                     or self.n_kv))
        zeros = Tensor(n_top_k * t * F32)
        self.leaves.append(zeros)
        self.dsa_zeros, self.dsa_zeros_size = il + 1, zeros.size
        zeros = self.sized(zeros.size, zeros, inplace=True)  # FILL 0
        rot = self.indexer_rotation()
        q = self.weighted(b + "indexer.attn_q_b.weight", self.weights_shape(b + "indexer.attn_q_b.weight"), qa)
        q = self.sized(q.size, rot, self.rope(self.view(q)))
        w = self.weighted(b + "indexer.proj.weight", self.weights_shape(b + "indexer.proj.weight"), cur)
        w = self.sized(w.size, self.view(w), inplace=True)
        lid_mask = self.input("lid_mask", self.n_kv * t * 2)  # fused_lid: F16
        # LIGHTNING_INDEXER: CUDA runs it for 128-wide keys in 32 or 64 heads only
        # (lightning-indexer.cu:536-586); else the CPU does, and the scores are copied back in
        heads = self.weights_shape(b + "indexer.attn_q_b.weight") // max(1, self.hp.indexer_head_size)
        # the indexer's key cache (n_kv rows), copied where it is read elsewhere
        total = self.hp.kv_lora_rank + self.hp.n_rot + self.hp.indexer_head_size
        keys = Tensor(self.kv_layer_bytes * self.hp.indexer_head_size // total, home=self.home, external=True)
        scores = self.sized(self.n_kv * t * F32, self.view(q), keys, w, lid_mask,
                            cuda_ok=self.hp.indexer_head_size == 128 and heads in (32, 64))
        top_k = self.new(n_top_k, self.new(n_top_k, scores, elt=4), elt=4)  # TOP_K and its cont (I32)
        mask = self.mask(False)
        filled = self.sized(mask.size, mask, inplace=True)  # FILL -inf (the mask has a later use: not in place)
        rows = Tensor(filled.size, [zeros, self.view(top_k), self.view(filled)], view=filled, writes=True)  # SET_ROWS
        self.nodes.append(rows)
        # the ADD takes the mask over where it is the mask's last use (the last layer, ggml-alloc.c:632-675)
        return self.sized(mask.size, self.view(rows), mask, inplace=True)

    def ffn(self, b: str, cur: Tensor, suffix: str = "") -> Tensor:
        """build_ffn (gated, PAR): gate, up (graph order: the GLU's sources), their product, down."""
        width = self.weights_shape(f"{b}ffn_up{suffix}.weight")
        gate = self.weighted(f"{b}ffn_gate{suffix}.weight", width, cur)
        up = self.weighted(f"{b}ffn_up{suffix}.weight", width, cur)
        return self.weighted(f"{b}ffn_down{suffix}.weight", self.hp.n_embd, self.new(width, gate, up))

    def router(self, il: int, cur: Tensor) -> tuple[Tensor, Tensor]:
        """build_moe_ffn's gating: (the selected experts' ids, their weights). Where CUDA fuses the
        top-k (its chain in one split), every tensor of the chain is kept until its end."""
        hp, b, md = self.hp, f"blk.{il}.", self.model.metadata
        arch = self.model.architecture
        bias = self.w(b + "exp_probs_b.bias")
        # a copied bias (an op-offloaded layer's) starts a split inside the chain: no fusion
        fused = self.cuda and _topk_fusable(hp.n_expert) and arch != "gpt-oss" and not (bias and self.offloaded)
        logits = self.weighted(b + "ffn_gate_inp.weight", hp.n_expert, cur)
        if arch == "gpt-oss":  # softmax over the selected logits only
            ids = self.new(hp.n_expert, logits, elt=4)
            picked = self.new(hp.n_expert_used, logits, self.view(ids))
            return ids, self.new(hp.n_expert_used, self.view(picked))  # softmax of a reshape: a new tensor
        chain = [logits, self.new(hp.n_expert, logits, inplace=not fused)]  # softmax / sigmoid
        if self.has(b + "exp_probs_b.bias"):
            chain.append(self.new(hp.n_expert, chain[1], *bias))
        ids = self.new(hp.n_expert, chain[-1], elt=4)  # argsort (its top-k is a view)
        chain.append(self.new(hp.n_expert_used, self.view(chain[1]), self.view(ids)))  # get_rows
        weights = chain[-1]
        if arch in ("qwen3moe", "glm4moe") or md.get(f"{arch}.expert_weights_norm"):  # / clamp(sum)
            chain.append(self.new(1, self.view(weights)))
            chain.append(self.new(1, chain[-1], inplace=not fused))
            weights = self.new(hp.n_expert_used, self.view(weights), chain[-1], inplace=True)  # the sum: k = 1
        if md.get(f"{arch}.expert_weights_scale", 1.0) not in (0.0, 1.0):
            weights = self.new(hp.n_expert_used, self.view(weights), inplace=True)
        if fused:
            self.keep(*chain)
        return ids, weights

    def moe(self, il: int, cur: Tensor) -> Tensor:
        """build_moe_ffn: the router, the selected experts' gate, up and down (weights copied in
        when in host memory), the weighted sum (fused on CUDA: ``graph_optimize`` keeps the
        experts' outputs and their weights until it, so the weighting is a new tensor), then the
        shared experts."""
        hp, b = self.hp, f"blk.{il}."
        e, used = hp.n_embd, hp.n_expert_used
        ff_exp = self.weights_shape(b + "ffn_up_exps.weight") or hp.n_ff_exp
        ids, weights = self.router(il, cur)
        lay = self.layout
        x = self.view(cur)
        # the top-k view of the argsort: k of each row of n_expert (ggml_nbytes of a strided view)
        ids_v = self.view(ids, 4 * (used + (self.t - 1) * hp.n_expert))
        off = lay.expert_offload
        gate = self.weighted(b + "ffn_gate_exps.weight", used * ff_exp, x, ids_v, home=lay.experts(il, "gate"),
                             offloadable=off)
        up = self.weighted(b + "ffn_up_exps.weight", used * ff_exp, x, ids_v, home=lay.experts(il, "up"),
                           offloadable=off)
        down = self.weighted(b + "ffn_down_exps.weight", used * e, self.new(used * ff_exp, gate, up), ids_v,
                             home=lay.experts(il, "down"), offloadable=off)
        weighted = self.new(used * e, down, weights, inplace=True)
        out = self.new(e, self.view(weighted)) if used == 1 else self.new(e, self.view(weighted), self.view(weighted))
        for _ in range(2, used):
            out = self.new(e, out, self.view(weighted), inplace=True)
        fused = self.cuda and lay.expert_runner(lay.experts(il, "down")) == lay.runner(self.home)
        if fused and 2 <= used <= 15:  # CUDA's alloc dep, kept until the sum (ggml-cuda.cu:3034, 3108)
            self.keep(down, weights)
        if self.has(b + "ffn_up_shexp.weight"):
            out = self.new(e, out, self.ffn(b, cur, "_shexp"), inplace=True)
        return out
