"""The speed and memory model of a placement, and its translation into the core's arrays.

A :class:`Placement` says, engine-neutrally, where every layer's home is (its dense part, KV cache and
compute), which of its routed-expert tensors live elsewhere (the CPU or another local GPU), and where the
output head goes. :class:`CostModel` prices a placement exactly in bytes and seconds; the same methods fill
the arrays the C core optimizes over (:mod:`omni_place.problem`), so what the core minimizes and what a plan
reports are one model.

Decode (tg, batch 1) reads each layer's dense weights, its KV cache up to ``depth`` (attention.py) and
``k/N`` of its routed-expert bytes where they sit, at that memory's bandwidth times an efficiency or as fast
as the kernels take their weight types (kernels.py), plus a fixed cost per layer on each backend it visits;
every hop of the activations between devices costs a graph split plus the link's latency and the ``n_embd``
F32 transfer. Experts away from their layer (CPU or another GPU) cost a hop out and one back per layer: the
scheduler runs an op on the backend holding its weight (``ggml/src/ggml-backend.cpp:951-980``); GPUs
without P2P copy through the host. Prompt processing (pp, ubatches of ``n_ubatch``; a test's shorter last
one too) is compute-bound on the GPUs (a routed expert costs at least one MMQ tile of tokens; attention
as attention.py prices it); weights held by the CPU are copied to the first device per ubatch (llama.cpp's
op offload for batches of 32 or more; only the experts a ubatch touches; a graph split per weight; a CPU
layer's KV cache both ways, mainline's pageable) and computed there; RPC devices take no offload.

The efficiencies and fixed costs are :class:`SpeedParams`, fitted to llama-bench runs on an H200
(``benchmarks/results/``); the figures they multiply come from the cluster (``omni-place devices
--measure``); ``omni-place calibrate`` refits them per machine from llama-bench records.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property

from .attention import (attended_cells, cpu_cache_prompt_bytes, cpu_decode_kv_s, decode_cache_bytes, decode_kv_cost,
                        kq_mask_work, mixer_work, mean_depths, prompt_attention_s, prompt_ubatch_sample,
                        recurrent_prompt_s)
from .compute import PIPELINE_COPIES, ComputeEstimate, compute_buffer_estimate
from .compute_price import (REPACK_TYPES, add_compute_margins, finish_usage, offloadable_weights, op_offload_reserve,
                            pageable_bytes, replayed_buffers)
from .devices import Cluster
from .errors import ClusterError, InvalidArgumentError
from .gpu_matmul import batch_rate, expert_time_factor, routed_tile_factor, uniform_tile_factor
from .hparams import arch_spec
from .kernels import FA_OFF_LAYER_SHARE, KERNEL_FLOPS_PER_BYTE, KernelWork, cpu_expert_time_scale, kernel_work
from .layer_work import layer_work
from .model import KV_CELL_PADDING, LayerCost, ModelProfile, Role, align_up
from .placement import (CPU, EXPERT_KINDS, EXPERT_OPTIONS, Context, DeviceUsage, ExpertHomes, Placement, Prediction,
                        SpeedParams, add_seconds, expert_kind, on_cpu, over_prompt_test, placement_from_counts)
from .transfers import PAGEABLE_LINK_FRACTION, PINNED_LINK_FRACTION, Transfers, backend_of
from .units import GB

# Share of a MoE layer's decode ops that run where its routed experts are (the three
# MUL_MAT_IDs, the GLU, the weighting and the sum of the experts' outputs): mainline's 4 + k ops.
EXPERT_OPS_SHARE = 0.25
FUSED_EXPERT_OPS = 3  # an engine that fuses them (Context.fused_moe): up+gate+GLU, down, weighted sum
# Graph nodes of a llama layer (the engine's `graph: nodes` count), whose decode the fixed per-layer
# costs price: an architecture's ArchSpec.layer_ops, a recurrent layer's recurrent_layer_ops more
# cost in proportion.
LAYER_OPS = 31


class CostModel(Transfers):
    """Exact bytes and predicted seconds for a (model, cluster, context); see the module doc."""

    def __init__(self, model: ModelProfile, cluster: Cluster, context: Context,
                 params: SpeedParams | None = None) -> None:
        if cluster.cpu is None:
            raise ClusterError(f"cluster {cluster.name!r} has no cpu device",
                               hint="add a [[devices]] entry with kind = \"cpu\"")
        self.model, self.cluster, self.context = model, cluster, context
        self.params = params or SpeedParams()
        self.cpu = cluster.cpu
        self._devices = {d.name: d for d in cluster.devices}
        c = context
        self.kv = model.kv_layer_bytes(c.ctx, c.type_k, c.type_v, n_seq=c.n_seq, n_ubatch=c.n_ubatch,
                                       flash_attn=c.flash_attn, swa_full=c.swa_full,
                                       ik_indexer=c.type_indexer if c.ik_dsa_indexer else None)
        replayed = not c.replay_gpus or sum(d.kind == "gpu" for d in cluster.gpus) <= c.replay_gpus
        self.compute: ComputeEstimate = compute_buffer_estimate(
            model, n_ctx=c.ctx, n_ubatch=c.n_ubatch, flash_attn=c.flash_attn, n_seq=c.n_seq, replayed=replayed,
            kv_quantized=c.type_k != "f16" or c.type_v != "f16", kv_layer_bytes=max(self.kv, default=0))
        hp = model.hparams
        self.k_over_n = hp.n_expert_used / hp.n_expert if hp.n_expert else 0.0
        b = self.n_tokens = self.compute.n_tokens
        # Fraction of a layer's experts a ubatch touches (each token picks k of N).
        self.expert_hit = 1.0 - (1.0 - self.k_over_n) ** b if hp.n_expert else 1.0
        self.tile_factor = uniform_tile_factor(b, self.k_over_n, self.expert_hit)  # whole MMQ tiles per expert
        self.cpu_expert_scale = cpu_expert_time_scale(hp.n_ff_exp, b * self.k_over_n, c.ik_cpu_kernels)
        tg_depth, pp_depth = mean_depths(c.depth, c.n_prompt, c.n_gen, b, c.prompt_depth)  # a bench test's mean
        depth_cells, full_cells = min(tg_depth, c.ctx), model.kv_cells(c.ctx, c.n_seq)
        self.tg_depth = depth_cells
        n = len(self.kv)
        self.recurrent = [model.is_recurrent(il) for il in range(n)]
        self.attends = [model.attends(il) for il in range(n)]  # a parallel layer (falcon-h1) does both
        state = [model.recurrent_state_bytes(c.n_seq) if r else 0 for r in self.recurrent]
        # the KV cache a layer's attention reads: a shared layer's source's; none where a layer without
        # KV heads holds no state (deci's linear and no-op attention), whatever cache the engine gives it
        attended = [self.kv[hp.kv_source(il)] - state[hp.kv_source(il)]
                    if self.attends[il] and (hp.n_head_kv[il] or hp.kv_source(il) != il) else 0 for il in range(n)]
        spec = arch_spec(model.architecture)
        self.cache_read, self.state_read = decode_cache_bytes(attended, state, depth_cells / full_cells, spec.ssm_scan)
        self.layer_ops = 1.0 + spec.layer_ops / LAYER_OPS  # a layer's graph nodes, in llama layers'
        self.recurrent_ops = spec.recurrent_layer_ops / LAYER_OPS
        swa_cells = model.swa_kv_cells(full_cells, c.n_ubatch, c.n_seq, c.swa_full)
        self.kv_pp_bytes = [cache + s for cache, s in zip(cpu_cache_prompt_bytes(
            attended, [swa_cells if s else full_cells for s in hp.is_swa],
            [model.kv_write_bytes(il) for il in range(n)], pp_depth, b), state)]  # a state goes up whole
        self.rs_store_bytes = [model.recurrent_store_bytes(b, c.n_seq, c.conv_store_reads_input) if r else 0
                               for r in self.recurrent]
        cell = [2.0 * hp.n_head[il] * (hp.dim_k(il) + hp.dim_v(il)) if kv else 0.0 for il, kv in enumerate(attended)]
        ssm_heads = hp.ssm_n_head if spec.ssm_scan and hp.ssm_n_group else 0  # Mamba-1 (no groups): the delta rule's
        self._mixer = mixer_work(hp.ssm_d_state, hp.ssm_d_inner, hp.ssm_n_group, ssm_heads, self.cpu.simd)
        # the selective scan's output is one row, never op-offloaded (ggml/src/ggml.c ggml_ssm_scan,
        # ggml-cuda.cu:5636-5654): a CPU-held layer's scan stays where its ssm_a is (ggml-backend.cpp:967-979)
        self.cpu_scan = [r and spec.ssm_scan for r in self.recurrent]
        window = [hp.n_swa if hp.is_swa[il] else 0 for il in range(len(self.kv))]  # attention FLOPs: per prompt token,
        self._attn = [f * attended_cells(pp_depth, b, c.flash_attn, w) for f, w in zip(cell, window)]
        self._attn_tg = [f * min(depth_cells, w or depth_cells) for f, w in zip(cell, window)]  # per decoded token
        self.act_bytes = hp.n_embd * 4  # one token's activations (F32)
        self._expert_split: list[dict[str, dict[str, int]]] = [self._split_experts(lc) for lc in model.layers]
        work = layer_work(model, ik_cpu=c.ik_cpu_kernels, simd=self.cpu.simd)  # its kernels' work (kernels.py)
        self._params, self._work, self._pp_work = work.params, work.decode, work.prompt
        self.ffn_in_prompt, self.pp_dense_cpu_bytes = work.ffn_in_prompt, work.prompt_dense_cpu_bytes
        self._pp_tensors = work.prompt_tensors
        head = [t for t in model.tensors
                if t.role is Role.OUTPUT or (model.tied_output and t.name == "token_embd.weight")]
        self._output_work = kernel_work((t.info.type_name, t.info.n_elements, t.bytes) for t in head)

    def with_switches(self, *, op_offload: bool | None = None, pinned_weights: bool | None = None) -> CostModel:
        """This model with engine switches changed that change no tensor's size, only where prompt
        work runs and what it copies: the byte tables are shared, the rest is recomputed."""
        c = self.context
        new = copy.copy(self)
        new.context = replace(c, op_offload=c.op_offload if op_offload is None else op_offload,
                              pinned_weights=c.pinned_weights if pinned_weights is None else pinned_weights)
        new.__dict__.pop("op_offload_bound", None)  # a cached_property of the switches
        return new

    def with_routing(self, tokens_per_expert: Sequence[Sequence[int]]) -> CostModel:
        """This model with a replayed or measured routing instead of the default (tokens pick k of N
        independently): per MoE layer, how many of one ubatch's tokens each expert got. Op offload
        copies only the rows of experts that got any (ggml/src/ggml-backend.cpp:1708-1779); a GPU
        runs each of them in whole MMQ tiles of tokens (gpu_matmul). Averaged over layers."""
        hp, routed = self.model.hparams, [list(c) for c in tokens_per_expert]
        want = hp.n_expert_used * self.n_tokens
        if not routed or any(len(c) != hp.n_expert or min(c) < 0 or sum(c) != want for c in routed):
            raise InvalidArgumentError(f"a routing needs, per layer, {hp.n_expert} non-negative token counts "
                                       f"summing to {want} (k x n_ubatch)", hint="replay one ubatch's router")
        new = copy.copy(self)  # token slots per routed token, and the share of experts touched
        new.expert_hit = sum(sum(n > 0 for n in c) for c in routed) / (hp.n_expert * len(routed))
        new.tile_factor = routed_tile_factor(routed, self.n_tokens, hp.n_expert_used)
        return new

    # -- bytes ------------------------------------------------------------------------------
    def _split_experts(self, lc: LayerCost) -> dict[str, dict[str, int]]:
        """backend -> expert kind -> allocated bytes, plus 'stored' -> kind -> bytes."""
        out: dict[str, dict[str, int]] = {}
        for backend in ("cuda", "cpu", "rpc", "stored"):
            per: dict[str, int] = {}
            for t in lc.expert_tensors:
                k = expert_kind(t)
                per[k] = per.get(k, 0) + (t.bytes if backend == "stored" else t.alloc_bytes(backend))
            out[backend] = per
        return out

    def expert_bytes(self, il: int, backend: str, kinds: frozenset[str] | None, inside: bool) -> int:
        """Bytes of layer ``il``'s expert tensors whose kind is (``inside``) / is not in ``kinds``
        (None: all of them), as ``backend`` allocates them."""
        return sum(v for k, v in self._expert_split[il][backend].items() if kinds is None or (k in kinds) == inside)

    @cached_property
    def offloadable_weights(self) -> tuple[list[int], list[dict[str, int]], int]:
        """What op offload may copy, as a GPU holds it (compute_price.offloadable_weights)."""
        return offloadable_weights(self.model)

    @cached_property
    def op_offload_bound(self) -> int:
        """What op offload adds on the first GPU over its own layers' and output's peak
        (compute_price.op_offload_reserve)."""
        return op_offload_reserve(self)

    def usage(self, p: Placement) -> list[DeviceUsage]:
        """Per-device memory of a placement: every accelerator of the order, then the CPU."""
        m = self.model
        out = {name: DeviceUsage.empty(name, self.device(name)) for name in p.order}
        out[CPU] = DeviceUsage.empty(CPU, self.cpu)
        embedding_home = CPU
        if self.context.embedding_on_first:
            embedding_home = next((n for n in p.order if n in p.layer_home), CPU)
        out[embedding_home].weights_bytes += m.input_bytes()
        for il, home in enumerate(p.layer_home):
            use = out[home]
            backend = self.backend(home)
            lc = m.layers[il]
            use.n_layers += 1
            use.weights_bytes += lc.dense[backend]
            use.kv_bytes += self.kv[il]
            away = p.experts_away(il)
            use.weights_bytes += self.expert_bytes(il, backend, frozenset().union(*away.values()), False)
            for where, kinds in away.items():
                if where not in out:
                    raise InvalidArgumentError(f"layer {il}'s experts are placed on {where}, which is not one of the "
                                               f"placement's devices ({', '.join(p.order) or 'none'})",
                                               hint="a device holding experts must be in the device order")
                out[where].weights_bytes += self.expert_bytes(il, self.backend(where), kinds, True)
        out_use = out[p.output]
        out_use.holds_output = True
        out_backend = self.backend(p.output)
        out_use.weights_bytes += m.output_bytes(out_backend)
        copies = PIPELINE_COPIES if self.pipeline_parallel(p) else 1
        # a layer split, pipelined or not: every buffer replayed where checked
        replayed = replayed_buffers(self, p, copies)
        for name in p.order:
            use = out[name]
            # a GPU running other layers' experts (their MoE intermediates) is priced a layer's peak at least
            whole = use.n_layers == len(p.layer_home) and use.holds_output and not any(p.expert_homes)
            use.compute_bytes += replayed[name] if replayed is not None else self.compute.device_bytes(
                use.n_layers > 0 or name in p.foreign_experts, use.holds_output, copies, self.backend(name), whole)
        if replayed is not None:
            out[CPU].compute_bytes += replayed[CPU]
            out[CPU].pageable_bytes = pageable_bytes(self, p, out[CPU].weights_bytes)
        else:
            gpus = sum(1 for n in p.order if out[n].n_layers and self.device(n).kind == "gpu")
            finish_usage(self, p, out, copies, gpus)
        add_compute_margins(self, out)
        return list(out.values())

    def pipeline_parallel(self, p: Placement) -> bool:
        """Whether llama.cpp pipelines this placement (src/llama-context.cpp:430-435): several model devices,
        every layer and the output on them, no tensor override. The head goes on the last device with layers,
        or (``Context.output_by_split``) alone on a later one by its ``-ts`` slot; elsewhere it takes an -ot."""
        used = [n for n in p.order if n in p.layer_home]
        return (len(p.order) > 1 and all(h != CPU for h in p.layer_home) and bool(used)
                and (p.output == used[-1] or self.context.output_by_split and p.output_after_layers)
                and not p.extra_overrides and not any(
                    p.expert_homes[il] and self.model.layers[il].has_experts for il in range(len(p.layer_home))))

    def has_cpu_weights(self, p: Placement) -> bool:
        """Whether ``p`` holds weights in CPU RAM: a CPU layer, or a MoE layer's routed experts."""
        return any(h == CPU for h in p.layer_home) or any(
            p.cpu_experts[il] and self.model.layers[il].has_experts for il in range(len(p.layer_home)))

    # -- seconds ----------------------------------------------------------------------------
    def bandwidth(self, name: str) -> float:
        """Achieved memory bandwidth in bytes/s."""
        sp = self.params
        if name == CPU:
            return self.cpu.bandwidth_gbs * GB * sp.cpu_bw_eff
        dev = self.device(name)
        eff = dev.speed.decode_bw_share * sp.gpu_bw_scale if dev.kind == "gpu" else sp.rpc_bw_eff
        return dev.bandwidth_gbs * GB * eff

    def flops(self, name: str) -> float:
        """Achieved FLOP/s for prompt matmuls (a GPU's at this ubatch: gpu_matmul.batch_rate)."""
        sp = self.params
        if name == CPU:
            return self.threads(name) * sp.cpu_tflops_per_core * 1e12
        dev = self.device(name)
        if dev.kind == "rpc":  # RPC servers here are CPU backends
            return (dev.tflops or self.threads(name) * sp.cpu_tflops_per_core) * 1e12
        return self.kernel_rate(name) * batch_rate(self.n_tokens, sp.gpu_half_rate_tokens)

    def threads(self, name: str) -> int:
        """The CPU threads of the CPU (or an RPC server) running ``name``'s CPU ops."""
        return max(1, (self.cpu if name == CPU else self.device(name)).threads or (1 if name == CPU else 8))

    def _tensor_peak(self, name: str) -> float:
        """A GPU's ``fp16_tflops`` in FLOP/s (unknown: 10 TFLOPS), times the calibrated compute scale."""
        return (self.device(name).tflops or 10.0) * 1e12 * self.params.gpu_compute_scale

    def attention_rate(self, name: str) -> float:
        """A GPU's FP16 tensor FLOP/s accumulating in FP32 (half ``fp16_tflops`` on GeForce cards),
        which attention runs at."""
        return self._tensor_peak(name) * self.device(name).fp32_accumulate_share

    def kernel_rate(self, name: str) -> float:
        """A GPU's MMQ FLOP/s at full batch: its row's share of ``fp16_tflops``."""
        return self._tensor_peak(name) * self.device(name).speed.mmq_share

    def read_tg(self, name: str, weight_bytes: float, work: KernelWork) -> float:
        """Decode seconds for ``name`` to run the matrix-vector products of ``weight_bytes`` of weights:
        a GPU at the slower of its memory and its kernels (its MMQ rate, at least KERNEL_FLOPS_PER_BYTE
        of its bandwidth), the CPU (an RPC server's) at the types' share of its Q4_K rate (kernels.py)."""
        if not self.on_gpu(name):
            return work.cpu_decode_bytes / self.bandwidth(name)
        dev = self.device(name)
        floor = KERNEL_FLOPS_PER_BYTE * dev.bandwidth_gbs * GB * self.params.gpu_compute_scale
        return max(weight_bytes / self.bandwidth(name), work.gpu_decode_flops / max(self.kernel_rate(name), floor))

    def layer_params(self, il: int) -> tuple[float, float]:
        """(dense parameters, routed-expert parameters) of a layer."""
        return self._params[il]

    def dense_flops(self, il: int, gpu: bool) -> float:
        """Prompt FLOPs per token of layer ``il``'s dense weights, in Q4_K's time on a GPU (MMQ) or
        on the CPU (each type's kernel, the engine's: Context.ik_cpu_kernels)."""
        return self._pp_work[il][0].prompt_flops if gpu else self._pp_work[il][0].cpu_prompt_flops

    def expert_work(self, il: int, stored_bytes: float) -> KernelWork:
        """Kernel work of one token's reads of ``stored_bytes`` of layer ``il``'s routed experts
        (``k/N`` of them; its expert tensors' types in proportion)."""
        total = sum(self._expert_split[il]["stored"].values())
        return self._work[il][1].scaled(self.k_over_n * stored_bytes / total) if total > 0 else KernelWork()

    def _away(self, il: int, experts: ExpertHomes) -> tuple[float, dict[str, float]]:
        """Stored bytes of layer ``il``'s experts with the layer, and by device away from it."""
        stored = self._expert_split[il]["stored"]
        away: dict[str, float] = {}
        for kind, dev in experts:
            if stored.get(kind):
                away[dev] = away.get(dev, 0.0) + stored[kind]
        return sum(stored.values()) - sum(away.values()), away

    def layer_tg(self, il: int, home: str, experts: ExpertHomes) -> dict[str, float]:
        """Decode seconds of layer ``il`` by where they are spent: weights as :meth:`read_tg` prices
        them, the KV cache at the memory's rate, a fixed cost per layer on each backend it visits
        (kernel launches on a GPU, a thread barrier per op on the CPU; routed experts alone are about
        a quarter of a MoE layer's ops), and the hops out to and back from each device holding
        some of its experts (kinds on two devices: home -> a -> b -> home, priced as two round
        trips, within a split of the three hops)."""
        dense = self.model.layers[il].dense["cpu"]
        every: tuple[float, dict[str, float]] = (sum(self._expert_split[il]["stored"].values()), {})  # a CPU layer's
        with_layer, away = self._away(il, experts) if home != CPU else every
        out = {home: self.read_tg(home, dense + with_layer * self.k_over_n,
                                  self._work[il][0].plus(self.expert_work(il, with_layer)))
               + self.kv_tg(il, home) + self._layer_overhead(home, self.attends[il],
                                                             self.model.layers[il].has_experts, self.recurrent[il])}
        add_seconds(out, self.away_tg(il, home, away))
        return out

    def away_tg(self, il: int, home: str, away: dict[str, float]) -> dict[str, float]:
        """Decode seconds of layer ``il``'s experts away from its ``home`` (``away``: stored bytes by
        device, :meth:`_away`): each device reads ``k/N`` of them, runs their ops, a hop out and back."""
        out: dict[str, float] = {}
        for dev, stored in away.items():
            add_seconds(out, {dev: self.read_tg(dev, stored * self.k_over_n, self.expert_work(il, stored))
                              + self._layer_overhead(dev) * self._expert_ops_share(dev),
                              "transfers": 2 * self.hop_tg(home, dev)})
        return out

    def _expert_ops_share(self, name: str) -> float:
        """EXPERT_OPS_SHARE, of which a CPU backend's (an RPC server's) fused experts keep
        FUSED_EXPERT_OPS of mainline's 4 + k ops (the ik_llama.cpp CPU-expert decodes of
        benchmarks/results/calibrate_31.md)."""
        if not self.context.fused_moe or self.on_gpu(name):
            return EXPERT_OPS_SHARE
        return EXPERT_OPS_SHARE * FUSED_EXPERT_OPS / (4 + self.model.hparams.n_expert_used)

    def on_gpu(self, name: str) -> bool:
        """Whether ``name`` is a GPU (not the CPU or an RPC server, a CPU backend here)."""
        return name != CPU and self.device(name).kind == "gpu"

    def kv_tg(self, il: int, name: str) -> float:
        """Decode seconds to attend over layer ``il``'s cache at the run's depth on ``name`` (attention.py):
        on a GPU slower than its bytes, on the CPU as fast as its threads compute (the engine's kernel)."""
        fa = self.context.flash_attn
        # a recurrent layer's state, whole, at the memory's rate, and the delta rule's step
        state_s = self.state_read[il] / self.bandwidth(name) + self.mixer_s(name) if self.recurrent[il] else 0.0
        if not self.attends[il]:
            return state_s
        if self.on_gpu(name):
            read_s = self.cache_read[il] / self.bandwidth(name) * decode_kv_cost(fa)
            if self.model.hparams.is_mla and fa and self.context.mla_decode_flops:  # mainline's mma kernel:
                # no vector kernel takes 576-wide heads (ggml/src/ggml-cuda/fattn.cu:635), bound by its FLOPs
                share = self.device(name).speed.mla_decode_share
                return state_s + max(read_s, self._attn_tg[il] / (self.attention_rate(name) * share))
            return state_s + read_s
        return state_s + cpu_decode_kv_s(self.cache_read[il], self._attn_tg[il], self.bandwidth(name),
                                         self.flops(name), fa, self.context.ik_cpu_kernels)

    def attention_pp(self, il: int, name: str, with_mixer: bool = True) -> float:
        """Prompt seconds per token of layer ``il``'s attention over its cache on ``name`` (attention.py),
        a recurrent layer's mixer instead (a parallel layer's beside it; ``with_mixer`` False: not it)."""
        gpu = self.on_gpu(name)
        mixer = self.mixer_s(name) if self.recurrent[il] and with_mixer else 0.0
        if not self.attends[il]:  # no cells attended
            return mixer
        rate, layer_s = (self.attention_rate(name), self._layer_overhead(name)) if gpu else (self.flops(name), 0.0)
        return mixer + prompt_attention_s(self._attn[il], self.n_tokens, self.context.flash_attn, rate, layer_s)

    def mixer_s(self, name: str) -> float:
        """Seconds a token of a recurrent layer's mixer takes on ``name`` beside its matmuls: the delta
        rule or the selective scan over the state and its elementwise passes (attention.recurrent_prompt_s)."""
        gpu = self.on_gpu(name)
        return recurrent_prompt_s(self._mixer, self.kernel_rate(name) if gpu else self.flops(name),
                                  self.bandwidth(name), gpu, 0 if gpu else self.threads(name))

    def _layer_overhead(self, name: str, attention: bool = False, moe: bool = False, recurrent: bool = False) -> float:
        """Fixed decode seconds per layer on a backend (RPC: a CPU backend); ``attention``: MLA's on a
        GPU, ``moe``: a MoE FFN's ops around its experts there, ``recurrent``: a recurrent layer's
        extra ops (LAYER_OPS)."""
        ops = self.layer_ops + self.recurrent_ops * recurrent
        if not self.on_gpu(name):
            return self.params.cpu_layer_s * ops
        mla = self.params.gpu_mla_layer_s if attention and self.model.hparams.is_mla else 0
        mla += self.params.gpu_moe_layer_s if moe else 0
        fa_off = FA_OFF_LAYER_SHARE if attention and not self.context.flash_attn else 0.0
        return self.device(name).speed.layer_us * 1e-6 * self.params.gpu_layer_scale * (ops + fa_off) + mla

    def prompt_overhead(self, name: str) -> float:
        """Fixed prompt seconds per token of a layer on ``name``: on a GPU its row's
        ``prompt_layer_us`` a ubatch, in proportion to its architecture's graph nodes (LAYER_OPS) as
        the decode's (a CPU layer's too where op offload runs its products there). A recurrent layer's
        own nodes are not added: its mixer's steps are priced beside it (attention.GPU_SCAN_STEP_S), and
        with them Qwen3.5's and Falcon-H1's whole-GPU prompts read 3-8 / 17-22 % slow. The CPU's
        barriers are lost in its compute."""
        if not self.on_gpu(name):
            return 0.0
        return self.device(name).speed.prompt_layer_us * 1e-6 * self.layer_ops / self.n_tokens

    def layer_pp(self, il: int, home: str, experts: ExpertHomes, first: str | None) -> dict[str, float]:
        """Prompt seconds per token of layer ``il`` by where they are spent. A CPU-home layer's
        attention runs on the offload device with its weights (:meth:`cpu_cache_pp`); experts on
        another GPU are computed there, a hop out and back per ubatch."""
        if home == CPU:
            out = self._cpu_weights_pp(il, True, self.ffn_in_prompt[il], self.cpu_layer_pp_bytes(il, True), first)
            if first is not None and self.offloads_to(first):
                add_seconds(out, self.cpu_cache_pp(il, first))
            return out
        exp_total = sum(self._expert_split[il]["stored"].values())
        _, away = self._away(il, experts)
        frac = {dev: b / exp_total for dev, b in away.items()}
        kept = 1 - frac.pop(CPU, 0.0) - sum(frac.values())  # the experts' share computed with the layer
        gpu = self.device(home).kind == "gpu"
        out = {home: (self.dense_flops(il, gpu) + self.expert_flops(il, gpu) * kept) / self.flops(home)
               + self.attention_pp(il, home) + self.prompt_overhead(home)}
        add_seconds(out, self.away_pp(il, home, away, first))
        return out

    def cpu_cache_pp(self, il: int, first: str) -> dict[str, float]:
        """Per prompt token, CPU-home layer ``il``'s KV cache moved for its attention on ``first`` (:attr:`kv_pp_bytes`,
        pageable unless Context.pinned_cpu_cache), through a CPU split (``set_rows``) between two GPU ones. A
        recurrent layer's state goes up whole and its stores run on the CPU: three CPU splits (build_rs's
        gather, the conv and the state stores, src/llama-graph.cpp:3512-3546) and what they read comes
        down (:attr:`rs_store_bytes`) into the CPU's compute buffer, the first GPU's pinned host buffer
        (src/llama-context.cpp:412-418), priced at the pinned rate."""
        kv_s = self.kv_pp_bytes[il] / self.stream_bandwidth(first, self.context.pinned_cpu_cache)
        store_s = self.rs_store_bytes[il] / self.stream_bandwidth(first, True)
        splits_s = (3 if self.recurrent[il] else 2) * self.params.split_s
        return {"pcie_stream": (kv_s + store_s) / self.n_tokens, "transfers": splits_s / self.n_tokens}

    def cpu_layer_pp_bytes(self, il: int, experts: bool) -> float:
        """What op offload copies of CPU-home layer ``il``'s weights per prompt ubatch: its dense part
        and (``experts``) the experts it touches; no FFN in the last layer (:attr:`ffn_in_prompt`)."""
        touched = self.expert_bytes(il, "stored", None, False) * self.expert_hit * self.ffn_in_prompt[il]
        return self.pp_dense_cpu_bytes[il] + (touched if experts else 0.0)

    def away_pp(self, il: int, home: str, away: dict[str, float], first: str | None) -> dict[str, float]:
        """Prompt seconds per token of layer ``il``'s experts away from its ``home`` (``away`` as for
        :meth:`away_tg`): computed by another GPU, or held by the CPU (:meth:`_cpu_weights_pp`), a
        hop out and back per ubatch each; the CPU's share last."""
        exp_total = sum(self._expert_split[il]["stored"].values())
        out: dict[str, float] = {}
        for dev, stored in sorted(away.items(), key=lambda item: item[0] == CPU) if self.ffn_in_prompt[il] else ():
            f = stored / exp_total
            part = (self._cpu_weights_pp(il, False, f, exp_total * f * self.expert_hit, first, self.experts_pinned)
                    if dev == CPU else
                    {dev: self.expert_flops(il, self.device(dev).kind == "gpu") * f / self.flops(dev)})
            add_seconds(out, {**part, "transfers": 2 * self.hop_pp(home, dev)})
        return out

    def expert_flops(self, il: int, gpu: bool) -> float:
        """Routed-expert FLOPs per prompt token of layer ``il``: each token runs k of N experts,
        counted as the dense FLOPs that take as long -- on a GPU whole MMQ tiles at MUL_MAT_ID's
        rate (gpu_matmul; Q4_K's time), on the CPU at ``cpu_moe_compute_eff`` of its dense rate
        (Q4_K's; each type's as :meth:`dense_flops`)."""
        if not gpu:
            return (self._pp_work[il][1].cpu_prompt_flops * self.k_over_n * self.cpu_expert_scale
                    / self.params.cpu_moe_compute_eff)
        flops = self._pp_work[il][1].prompt_flops * self.k_over_n
        return flops * expert_time_factor(self.tile_factor, self.params.gpu_moe_compute_eff)

    def _cpu_weights_pp(self, il: int, dense: bool, expert_share: float, streamed_bytes: float,
                        first: str | None, pinned: bool | None = None) -> dict[str, float]:
        """CPU-held weights of layer ``il`` in a prompt batch (its dense weights if ``dense``, and
        ``expert_share`` of its routed experts): op-offloaded to ``first`` (a GPU, MMQ tiles) when
        the batch is large enough, else computed by the CPU."""
        if first is None or not self.offloads_to(first):
            return {CPU: (dense * self.dense_flops(il, False) + self.expert_flops(il, False) * expert_share)
                    / self.flops(CPU) + dense * self.attention_pp(il, CPU)}
        if not self.experts_offloaded and expert_share:  # the experts' share stays on the CPU
            out = {CPU: self.expert_flops(il, False) * expert_share / self.flops(CPU)}
            rest = streamed_bytes - self.expert_bytes(il, "stored", None, False) * expert_share * self.expert_hit
            if dense or rest > 0:  # the dense weights (and a CPU layer's KV) still go to the GPU
                add_seconds(out, self._cpu_weights_pp(il, dense, 0.0, rest, first, pinned))
            return out
        flops = dense * self.dense_flops(il, True) + self.expert_flops(il, True) * expert_share
        scan_here = dense and self.cpu_scan[il]
        on_first = flops / self.flops(first) + dense * (self.attention_pp(il, first, not scan_here)
                                                        + self.prompt_overhead(first))
        return {first: on_first, **({CPU: self.mixer_s(CPU)} if scan_here else {}),
                "pcie_stream": streamed_bytes / self.n_tokens / self.stream_bandwidth(first, pinned),
                "transfers": self.offload_splits(il, dense, expert_share) * self.params.split_s / self.n_tokens}

    def offload_splits(self, il: int, dense: bool, expert_share: float) -> float:
        """Graph splits a prompt ubatch pays for op-offloading layer ``il``'s CPU-held weights (its dense
        part if ``dense``, ``expert_share`` of its routed experts): one per weight tensor, so that each
        copy's memory is reused (ggml/src/ggml-backend.cpp:1324-1344; ik's :1747-1770)."""
        dense_tensors, routed_tensors = self._pp_tensors[il]
        return dense * dense_tensors + routed_tensors * expert_share

    def _paged_fraction(self, p: Placement) -> float:
        """Share of the CPU-held weights that pages from disk (0 unless paging is allowed)."""
        if not self.context.allow_paging:
            return 0.0  # nothing is pageable: predict() stays one pass over the layers
        cpu = next(u for u in self.usage(p) if u.name == CPU)
        return cpu.paged_bytes / cpu.weights_bytes if cpu.weights_bytes else 0.0

    def output_tg(self, name: str) -> float:
        """Decode seconds of the output head on ``name``: reading its weights, then the token's
        F32 logits copied back to the host (a round trip over the network for an RPC device)."""
        t = self.read_tg(name, self.model.output_bytes(self.backend(name)), self._output_work)
        if name != CPU:
            bw, lat = self.link(name)
            t += lat + self.model.hparams.n_vocab * 4 / bw
        return t

    def predict(self, p: Placement) -> Prediction:
        """Decode and prompt tokens/s of a placement, with the time breakdown; a llama-bench test's
        prompt ubatch by ubatch, a shorter last one too (placement.over_prompt_test)."""
        pred = over_prompt_test(self.context, self.n_tokens, self.predict_ubatch(p),
                                lambda c: self._at(c).predict_ubatch(p))
        host = self.prompt_host_s(1.0 / pred.pp_tps)
        t_pp = 1.0 / pred.pp_tps + host
        tg_host = self.mask_s(1, self.tg_depth)  # a decoded token's mask row: every cell checked
        return Prediction(1.0 / (1.0 / pred.tg_tps + tg_host), 1.0 / t_pp, {**pred.tg_breakdown, "host": tg_host},
                          {**pred.pp_breakdown, "host": host})

    @cached_property
    def _kq_masks(self) -> list[tuple[int, int]]:
        """(window, cells) of each KQ mask a ubatch builds: the full cache's, a SWA model's window's."""
        c, hp = self.context, self.model.hparams
        full = self.model.kv_cells(c.ctx, c.n_seq) // max(1, c.n_seq)
        return sorted({(hp.n_swa, self.model.swa_kv_cells(full, c.n_ubatch, 1, c.swa_full)) if hp.is_swa[il]
                       else (0, full) for il in range(hp.n_layer) if self.attends[il]})

    def mask_s(self, n_tokens: int, depth: float) -> float:
        """Host seconds building a ubatch's KQ masks (attention.kq_mask_work), each ``n_kv`` = the used
        cells padded to 256 wide (src/llama-kv-cache.cpp ``get_n_kv``)."""
        c, sp, out = self.context, self.params, 0.0
        for window, cells in self._kq_masks:
            n_kv = min(cells, max(KV_CELL_PADDING, align_up(math.ceil(depth) + n_tokens, KV_CELL_PADDING)))
            checked, written = kq_mask_work(n_tokens, n_kv, window, c.flash_attn, c.kq_mask_reuses_rows,
                                            self.threads(CPU))  # ik's half the hardware threads: the cores
            out += checked * sp.mask_cell_s + written * sp.mask_byte_s
        return out

    def prompt_host_s(self, device_s: float) -> float:
        """Host seconds per prompt token the devices wait for, at ``device_s`` of device time a token:
        each ubatch's host work (its tokens' bookkeeping, SpeedParams.prompt_token_s, and its KQ masks,
        :meth:`mask_s`) before its graph runs, each llama_decode call's first ubatch's whole, a later
        one's beyond its predecessor's device time (done while a GPU runs that; a CPU backend computes
        on the host, so without a GPU all of it waits)."""
        c = self.context
        hide = device_s if self.cluster.gpus else 0.0
        start = c.depth if c.prompt_depth is None else c.prompt_depth
        sample = prompt_ubatch_sample(c.n_prompt, c.n_batch, c.n_ubatch, start)
        waited = sum(count * max(0.0, n * self.params.prompt_token_s + self.mask_s(n, d) - hide * before)
                     for count, n, d, before in sample)
        return waited / sum(count * n for count, n, _, _ in sample)

    def _at(self, context: Context) -> CostModel:
        """This model at another context (a test's shorter ubatch), built once, with these parameters."""
        others = self.__dict__.setdefault("_others", {})
        other = others.get(context) or others.setdefault(context, type(self)(self.model, self.cluster, context))
        other.params = self.params
        return other

    def predict_ubatch(self, p: Placement) -> Prediction:
        """:meth:`predict` with the prompt priced per token of full ubatches."""
        tg: dict[str, float] = {}
        pp: dict[str, float] = {}
        target = self.offload_device(p)
        prev = CPU  # the embedding lookup runs on the CPU
        for il, home in enumerate(p.layer_home):
            if self.model.layers[il].is_nextn:
                continue  # MTP blocks are not run when decoding without a draft
            if home != prev:
                add_seconds(tg, {"transfers": self.hop_tg(prev, home)})
                add_seconds(pp, {"transfers": self.hop_pp(prev, home)})
            add_seconds(tg, self.layer_tg(il, home, p.expert_homes[il]))
            add_seconds(pp, self.layer_pp(il, home, p.expert_homes[il], target))
            prev = home
        if p.output != prev:
            add_seconds(tg, {"transfers": self.hop_tg(prev, p.output)})
        add_seconds(tg, {p.output: self.output_tg(p.output)})
        paged = self._paged_fraction(p)
        if paged:
            # the paged share of what the CPU reads per token comes from disk instead of RAM
            disk = self.disk_bandwidth()
            add_seconds(tg, {"disk": paged * tg.get(CPU, 0.0) * self.bandwidth(CPU) / disk})
            if "pcie_stream" in pp and target is not None:
                add_seconds(pp, {"disk": paged * pp["pcie_stream"] * self.stream_bandwidth(target) / disk})
        t_tg, t_pp = sum(tg.values()), sum(pp.values())
        return Prediction(1.0 / t_tg if t_tg > 0 else math.inf, 1.0 / t_pp if t_pp > 0 else math.inf, tg, pp)


# Placement, Context and the priced results live in .placement; re-exported beside the CostModel.
__all__ = ["CPU", "EXPERT_KINDS", "EXPERT_OPS_SHARE", "EXPERT_OPTIONS", "PAGEABLE_LINK_FRACTION",
           "PINNED_LINK_FRACTION", "REPACK_TYPES", "Context", "CostModel", "DeviceUsage", "ExpertHomes", "Placement",
           "Prediction", "SpeedParams", "backend_of", "expert_kind", "on_cpu", "placement_from_counts"]
