"""Bytes and seconds of a placement under a parallel split mode (mainline ``-sm tensor``, ik's
``-sm graph``): every weight and the KV cache of each GPU layer split across the placement's
devices by ``Context.split_shares``, as the engine splits them.

Memory. Mainline's meta device (``src/llama-model.cpp:377-880``,
``llama_meta_device_get_split_state``) splits a tensor along one axis: attention Q/K/V and FFN
up/gate by rows (axis 1), the attention output and FFN down by columns (axis 0), the output head
by vocabulary rows, the KV cache by heads; each device's slice is ``ne * scan_j / scan_n``
(float32) rounded down to a granularity (whole GQA groups of heads, 128-column FFN blocks), the
last device taking the rest, and the order of the shares rotates by one per layer of a kind.
Everything else (norms, routers, shared experts, MLA projections) is mirrored whole on every
device. ik (``ik:src/llama-load-tensors.cpp:395-460, 4647-4806``, ``create_split``) splits
attention, every FFN (shared experts too) and the output head by heads/rows, steering each
tensor towards the target share by the memory already used; it is priced here as the exact
proportional split (each device within one granularity chunk per tensor), an MLA model's latent
cache whole on every GPU (``ik:src/llama.cpp:1248-1262``).

Speed. Decode: the devices read their slices in parallel, so a layer costs the slowest device's
read plus its fixed per-layer cost, and then the partial sums are all-reduced twice per layer
(after the attention output and after the FFN down projection, :data:`REDUCES_PER_LAYER`). An
all-reduce of ``n`` devices takes ``ceil(log2 n)`` butterfly steps
(``ggml/src/ggml-backend-meta.cpp:2323-2420``; NCCL on CUDA), each priced as the slowest pairwise
hop of the cost model (a graph split ``split_s`` plus both devices' link latency and the
``n_embd`` F32 activations over their links: through the host, no P2P assumed). Prompt: each
device computes its share of the FLOPs, the slowest sets the pace, plus the same all-reduces per
ubatch. These are priors: no parallel-mode run has been measured yet (no two-GPU machine), which
is why the planner adopts a parallel mode only by a margin (:mod:`omni_place.variants`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .cost import CPU, CostModel, DeviceUsage, Placement, Prediction, SpeedParams, expert_kind
from .compute_price import add_compute_margins, finish_usage
from .devices import Cluster
from .errors import InvalidArgumentError
from .ggml_types import ggml_type, ggml_type_named
from .model import BACKEND_ALIGNMENT, ModelProfile, Role, TensorRecord, align_up, row_bytes
from .placement import Context, add_seconds

REDUCES_PER_LAYER = 2  # all-reduces per layer: attention output and FFN output (prior, not measured)


@dataclass(frozen=True)
class ParallelMode:
    """How one engine's parallel mode splits tensors."""

    floor_rounding: bool  # mainline: float32 share, rounded down to the granularity, last takes the rest
    shared_experts_split: bool  # ik splits the shared experts; mainline mirrors them
    mla_kv_mirrored: bool  # ik keeps an MLA model's latent cache whole on every device


# the engines' parallel modes by their -sm name (engines.splitmodes says which engine has which)
PARALLEL_MODES = {
    "tensor": ParallelMode(floor_rounding=True, shared_experts_split=False, mla_kv_mirrored=False),
    "graph": ParallelMode(floor_rounding=False, shared_experts_split=True, mla_kv_mirrored=True),
}

# (pattern, axis, granularity kind) in mainline's order of tests (src/llama-model.cpp:385-423,
# 521-627, 706-810); std::regex_match, so "." matches any one character as there
_RULES: tuple[tuple[re.Pattern[str], int, str], ...] = tuple((re.compile(p), a, g) for p, a, g in (
    (r"blk\.\d*\.attn_q.weight", 1, "q"), (r"blk\.\d*\.attn_(k|v).weight", 1, "kv"),
    (r"blk\.\d*\.attn_q\.bias", 0, "q"), (r"blk\.\d*\.attn_(k|v)\.bias", 0, "kv"),
    (r"blk\.\d*\.attn_qkv.weight", 1, "qkv"), (r"blk\.\d*\.attn_qkv.bias", 0, "qkv"),
    (r"blk\.\d*\.attn_sinks.weight", 0, "head"), (r"blk\.\d*\.attn_output.weight", 0, "out"),
    (r"blk\.\d*\.attn_gate.weight", 1, "gate"),
    (r"blk\.\d*\.ffn_(up|gate|gate_up)(_exps)?.weight", 1, "ffn"), (r"blk\.\d*\.ffn_(up|gate)(_exps)?.bias", 0, "ffn"),
    (r"blk\.\d*\.ffn_down(_exps)?.weight", 0, "ffn"),
    (r"output\.weight", 1, "one"), (r"output\.bias", 0, "one"),
))
# ik splits these too (ik:src/llama-load-tensors.cpp:4714-4806): MLA's per-head projections and
# the shared experts
_IK_EXTRA: tuple[tuple[re.Pattern[str], int, str], ...] = tuple((re.compile(p), a, g) for p, a, g in (
    (r"blk\.\d*\.attn_(q_b|k_b|v_b|kv_b).weight", 1, "one"),
    (r"blk\.\d*\.ffn_(up|gate)_shexp.weight", 1, "one"), (r"blk\.\d*\.ffn_down_shexp.weight", 0, "one"),
))


def _blck(t: TensorRecord | None) -> int:
    return 1 if t is None else ggml_type(t.info.ggml_type).block


def split_ne(ne: int, granularity: int, shares: list[float], rotation: int, floor: bool) -> list[float]:
    """Elements of an axis of ``ne`` per device. Mainline (``floor``): the shares' float32 prefix
    sums in rotated order, each boundary ``ne * scan_j / scan_n`` truncated and rounded down to
    ``granularity``, the last device in that order taking the rest (src/llama-model.cpp:832-862);
    otherwise the exact proportional split."""
    n = len(shares)
    granularity = max(1, granularity)  # a header whose head size reads 0 splits by element, never divides by 0
    if not floor:
        total = sum(shares)
        return [ne * s / total for s in shares]
    scan = np.cumsum(np.asarray([shares[(j + rotation) % n] for j in range(n)], dtype=np.float32), dtype=np.float32)
    out: list[float] = [0] * n
    low = 0
    for j in range(n - 1):
        if scan[-1] == 0:
            high = ne * (j + 1) // n
        else:
            high = int(np.float32(np.float32(ne) * scan[j]) / scan[-1])
        high -= high % granularity
        out[(j + rotation) % n] = high - low
        low = high
    out[(n - 1 + rotation) % n] = ne - low
    return out


class SplitCostModel(CostModel):
    """:class:`CostModel` of a run whose ``context.split_mode`` is a parallel mode: a GPU layer
    (``layer_home`` the order's first device) is split across every device of the order."""

    def __init__(self, model: ModelProfile, cluster: Cluster, context: Context,
                 params: SpeedParams | None = None) -> None:
        super().__init__(model, cluster, context, params)
        mode = PARALLEL_MODES.get(context.split_mode)
        if mode is None:
            raise InvalidArgumentError(f"split mode {context.split_mode!r} is not a parallel mode",
                                       hint="parallel modes: " + ", ".join(PARALLEL_MODES))
        shares = [float(x) for x in context.split_shares]
        if not shares or any(not math.isfinite(x) or x < 0 for x in shares) or not any(shares):
            raise InvalidArgumentError(f"-sm {context.split_mode} needs one non-negative share per device, some "
                                       f"positive (got {list(context.split_shares)})", hint="e.g. -ts 3,1")
        self.mode, self.shares = mode, shares
        self.by_name = {t.name: t for t in model.tensors}

    # -- how the engine splits -----------------------------------------------------------------
    def _rotation(self, il: int | None) -> int:
        """The per-layer rotation of the shares: layers of the same kind (SWA or not) counted so
        far, modulo the devices; non-layer tensors take ``n_layer() % n``."""
        hp, n = self.model.hparams, len(self.shares)
        if il is None:
            return hp.n_layer_kv % n
        return sum(1 for j in range(il) if hp.is_swa[j] == hp.is_swa[il]) % n

    def _granularity(self, il: int, axis0: TensorRecord | None) -> tuple[int, int, int, int]:
        """(q, kv, v, head) granularities of layer ``il`` (src/llama-model.cpp:706-789)."""
        hp, n = self.model.hparams, len(self.shares)
        n_head, n_kv = hp.n_head[il], max(1, hp.n_head_kv[il])
        n_gqa = max(1, n_head // n_kv)
        dk, dv = hp.dim_k(il), hp.dim_v(il)
        n_embd_q = n_gqa * dk
        perf = _blck(axis0)
        while perf < 128 and perf * n < n_embd_q:
            perf *= 2
        gq = math.lcm(n_embd_q, perf) if n_embd_q else perf
        gkv = max(1, gq // n_gqa)
        gv = max(1, gkv // max(1, dk) * dv)
        return gq, gkv, gv, max(1, gq // max(1, dk))

    def _rule(self, t: TensorRecord) -> tuple[int, str] | None:
        rules = _RULES + (_IK_EXTRA if self.mode.shared_experts_split else ())
        return next(((axis, g) for rx, axis, g in rules if rx.fullmatch(t.name)), None)

    def _segments(self, t: TensorRecord, kind: str, axis: int, il: int | None) -> list[tuple[int, int, int]]:
        """(elements, repeats, granularity) per segment of ``t``'s split axis."""
        hp = self.model.hparams
        ne = t.info.shape[axis] if axis < len(t.info.shape) else 1
        if kind == "one" or il is None:
            return [(ne, 1, 1)]
        prefix = f"blk.{il}."
        attn_out = self.by_name.get(prefix + "attn_output.weight")
        gq, gkv, gv, ghead = self._granularity(il, attn_out)
        if kind == "ffn":
            down = self.by_name.get(prefix + "ffn_down.weight") or self.by_name.get(prefix + "ffn_down_exps.weight")
            g = math.lcm(_blck(down), 128)
            n_ff = hp.n_ff[il] if il < len(hp.n_ff) else 0
            if "gate_up" in t.name and ne == 2 * hp.n_ff_exp:
                return [(hp.n_ff_exp, 2, g)]
            if "ffn_up" in t.name and n_ff and ne == 2 * n_ff:
                return [(n_ff, 2, g)]
            return [(ne, 1, g)]
        if kind == "qkv":
            n_q, n_k = hp.n_head[il] * hp.dim_k(il), hp.dim_k(il) * hp.n_head_kv[il]
            n_v = hp.dim_v(il) * hp.n_head_kv[il]
            return [(n_q, 1, gq), (n_k, 2, gkv)] if n_k == n_v else [(n_q, 1, gq), (n_k, 1, gkv), (n_v, 1, gv)]
        g = {"q": gq, "head": ghead, "out": ghead * hp.dim_v(il),
             "gate": ghead if len(t.info.shape) > 1 and t.info.shape[1] == hp.n_head[il] else gq,
             "kv": gv if ".attn_v" in t.name else gkv}[kind]
        return [(ne, 1, g)]

    def fractions(self, t: TensorRecord) -> list[float] | None:
        """Each device's fraction of tensor ``t`` (None: mirrored whole on every device)."""
        rule = self._rule(t)
        if rule is None:
            return None
        axis, kind = rule
        il = t.layer
        rot = self._rotation(il)
        segs = self._segments(t, kind, axis, il)
        per = [0.0] * len(self.shares)
        total = 0
        for ne, nr, g in segs:
            for j, x in enumerate(split_ne(ne, g, self.shares, rot, self.mode.floor_rounding)):
                per[j] += x * nr
            total += ne * nr
        return [x / total for x in per] if total else None

    def kv_fractions(self, il: int) -> list[float]:
        """Each device's fraction of layer ``il``'s KV cache: split by heads along with the
        attention (mainline ``cache_(k|v)_l``: axis 0, the K/V granularity), or whole on every
        device (ik's MLA latent); a quantized slice must be whole blocks (the meta backend
        asserts it, ggml/src/ggml-backend-meta.cpp:836-843)."""
        hp, n = self.model.hparams, len(self.shares)
        if hp.is_mla and self.mode.mla_kv_mirrored:
            return [1.0] * n
        if not self.mode.floor_rounding:
            total = sum(self.shares)
            return [s / total for s in self.shares]
        _, gkv, gv, _ = self._granularity(il, self.by_name.get(f"blk.{il}.attn_output.weight"))
        rot = self._rotation(il)
        c = self.context
        parts = []
        for width, g, kv_type in ((hp.dim_k(il) * hp.n_head_kv[il], gkv, c.type_k),
                                  (hp.dim_v(il) * hp.n_head_kv[il], gv, c.type_v)):
            if not width:  # a header whose KV head size reads 0: no bytes to share
                continue
            block = ggml_type_named(kv_type).block
            ne = split_ne(width, g, self.shares, rot, True)
            if any(x % block for x in ne):
                raise InvalidArgumentError(
                    f"-sm {c.split_mode}: layer {il}'s {kv_type} KV slices ({'/'.join(map(str, ne))} values) are not "
                    f"whole {block}-value blocks; the engine aborts (GGML_ASSERT)", hint="use an f16 KV cache")
            parts.append((row_bytes(ggml_type_named(kv_type).id, width), [x / width for x in ne]))
        total = sum(b for b, _ in parts)
        if not total:
            return [s / sum(self.shares) for s in self.shares]
        return [sum(b * f[j] for b, f in parts) / total for j in range(n)]

    @cached_property
    def _slices(self) -> tuple[list[list[int]], list[list[dict[str, int]]], list[int], list[list[float]]]:
        """Per layer and device: dense bytes, routed-expert bytes by kind; per device the output
        head's bytes; per layer the KV fractions. Bytes as the device allocates its slices."""
        n, model = len(self.shares), self.model
        backends = [self.backend(d) for d in self._order]
        dense = [[0] * n for _ in model.layers]
        experts: list[list[dict[str, int]]] = [[{} for _ in range(n)] for _ in model.layers]
        output = [0] * n
        tied = [t for t in model.tensors if t.name == "token_embd.weight"] if model.tied_output else []
        placed = [t for t in model.tensors if t.layer is not None or t.role in (Role.OUTPUT, Role.OUTPUT_NORM)]
        for t in placed + tied:  # a tied head is a token_embd copy: mirrored (no rule matches it)
            frac = self.fractions(t)
            for j in range(n):
                b = align_up(round(t.bytes * (1.0 if frac is None else frac[j])), BACKEND_ALIGNMENT[backends[j]])
                if t.layer is None:
                    output[j] += b
                elif t.role is Role.ROUTED_EXPERT:
                    k = expert_kind(t)
                    experts[t.layer][j][k] = experts[t.layer][j].get(k, 0) + b
                else:
                    dense[t.layer][j] += b
        kv = [self.kv_fractions(il) if self.kv[il] else [0.0] * n for il in range(len(model.layers))]
        return dense, experts, output, kv

    _order: tuple[str, ...] = ()

    def _bind(self, p: Placement) -> None:
        """Check that ``p`` is a parallel placement of this run and bind its device order."""
        if len(p.order) != len(self.shares):
            raise InvalidArgumentError(f"-sm {self.context.split_mode} over {len(p.order)} devices with "
                                       f"{len(self.shares)} shares", hint="give one -ts share per device")
        bad = [h for h in set(p.layer_home) | {p.output} if h not in (CPU, p.order[0])]
        away = sorted(p.foreign_experts)
        if bad or away:
            raise InvalidArgumentError(f"under -sm {self.context.split_mode} every GPU layer is split across all "
                                       f"devices; this placement puts layers or experts on {', '.join(bad + away)}",
                                       hint="send overrides to the CPU only")
        if p.order != self._order:
            self._order = p.order
            self.__dict__.pop("_slices", None)

    # -- bytes ----------------------------------------------------------------------------------
    def usage(self, p: Placement) -> list[DeviceUsage]:
        self._bind(p)
        dense, experts, output, kv = self._slices
        out = {d: DeviceUsage.empty(d, self.device(d)) for d in p.order}
        cpu = out[CPU] = DeviceUsage.empty(CPU, self.cpu)
        cpu.weights_bytes += self.model.input_bytes()
        for il, home in enumerate(p.layer_home):
            kinds = p.cpu_experts[il]
            if home == CPU:
                cpu.n_layers += 1
                cpu.weights_bytes += self.model.layers[il].dense["cpu"] + self.expert_bytes(il, "cpu", None, False)
                cpu.kv_bytes += self.kv[il]
                continue
            cpu.weights_bytes += self.expert_bytes(il, "cpu", kinds, True)
            for j, d in enumerate(p.order):
                use = out[d]
                use.n_layers += 1
                use.weights_bytes += dense[il][j] + sum(b for k, b in experts[il][j].items() if k not in kinds)
                use.kv_bytes += round(self.kv[il] * kv[il][j])
        if p.output == CPU:
            cpu.holds_output, cpu.weights_bytes = True, cpu.weights_bytes + self.model.output_bytes("cpu")
        for j, d in enumerate(p.order):
            use = out[d]
            if p.output != CPU:
                use.holds_output, use.weights_bytes = True, use.weights_bytes + output[j]
            use.compute_bytes += self.compute.device_bytes(use.n_layers > 0, use.holds_output, 1, self.backend(d))
        finish_usage(self, p, out, 1, len(p.order))
        add_compute_margins(self, out)
        return list(out.values())

    # -- seconds --------------------------------------------------------------------------------
    def allreduce(self, p: Placement, n_tokens: int) -> float:
        """Seconds per token of one all-reduce of the activations over the order's devices."""
        n = len(p.order)
        if n < 2:
            return 0.0
        steps = math.ceil(math.log2(n))
        hop = self.hop_tg if n_tokens == 1 else self.hop_pp
        return steps * max(hop(a, b) for a in p.order for b in p.order if a < b)

    def predict_ubatch(self, p: Placement) -> Prediction:
        self._bind(p)
        dense, experts, output, kv = self._slices
        tg: dict[str, float] = {}
        pp: dict[str, float] = {}

        reduce_tg, reduce_pp = self.allreduce(p, 1), self.allreduce(p, self.n_tokens)
        entry_tg = max(self.hop_tg(CPU, d) for d in p.order)
        entry_pp = max(self.hop_pp(CPU, d) for d in p.order)
        prev = CPU
        for il, home in enumerate(p.layer_home):
            if self.model.layers[il].is_nextn:
                continue
            if home != prev:  # activations broadcast to every device, or gathered back to the CPU
                add_seconds(tg, {"transfers": entry_tg})
                add_seconds(pp, {"transfers": entry_pp})
                prev = home
            if home == CPU:
                add_seconds(tg, self.layer_tg(il, CPU, p.expert_homes[il]))
                add_seconds(pp, self.layer_pp(il, CPU, p.expert_homes[il], self.offload_device(p)))
                continue
            self._parallel_layer(p, il, dense[il], experts[il], kv[il], tg, pp)
            add_seconds(tg, {"allreduce": REDUCES_PER_LAYER * reduce_tg})
            add_seconds(pp, {"allreduce": REDUCES_PER_LAYER * reduce_pp})
        if p.output == CPU:
            if prev != CPU:
                add_seconds(tg, {"transfers": entry_tg})
            add_seconds(tg, {CPU: self.output_tg(CPU)})
        else:
            if prev == CPU:
                add_seconds(tg, {"transfers": entry_tg})
            logits = self.model.hparams.n_vocab * 4
            total = sum(self.shares)
            add_seconds(tg, _slowest(p.order, [output[j] / self.bandwidth(d) + self.link(d)[1]
                                               + logits * s / total / self.link(d)[0]
                                               for j, (d, s) in enumerate(zip(p.order, self.shares))]))
        t_tg, t_pp = sum(tg.values()), sum(pp.values())
        return Prediction(1.0 / t_tg if t_tg > 0 else math.inf, 1.0 / t_pp if t_pp > 0 else math.inf, tg, pp)

    def _parallel_layer(self, p: Placement, il: int, dense: list[int], experts: list[dict[str, int]],
                        kv: list[float], tg: dict[str, float], pp: dict[str, float]) -> None:
        """Decode and prompt seconds of GPU layer ``il``, split across the order's devices, and of
        its experts in CPU RAM (priced as the layer split prices experts away from their layer)."""
        kinds = p.cpu_experts[il]
        dense_flops, exp_flops = self.dense_flops(il, True), self.expert_flops(il, True)
        dense_whole = max(1, self.model.layers[il].dense["cuda"])  # the layer's dense part on one device
        exp_all = max(1, sum(sum(e.values()) for e in experts))  # every expert slice, as if all on GPUs
        exp_stored = sum(self._expert_split[il]["stored"].values())
        t_tg, t_pp = [], []
        for j, d in enumerate(p.order):
            mine = sum(b for k, b in experts[j].items() if k not in kinds)
            share = min(1.0, dense[j] / dense_whole)  # its slice of the dense weights, its experts' in stored bytes
            work = self._work[il][0].scaled(share).plus(self.expert_work(il, exp_stored * mine / exp_all))
            t_tg.append(self.read_tg(d, dense[j] + mine * self.k_over_n, work) + self.kv_tg(il, d) * kv[j]
                        + self._layer_overhead(d, self.attends[il], self.model.layers[il].has_experts,
                                               self.recurrent[il]))
            t_pp.append((dense_flops * share + exp_flops * mine / exp_all) / self.flops(d)
                        + self.attention_pp(il, d) * kv[j])
        add_seconds(tg, _slowest(p.order, t_tg))
        add_seconds(pp, _slowest(p.order, t_pp))
        _, away = self._away(il, p.expert_homes[il])  # the CPU only (_bind)
        add_seconds(tg, self.away_tg(il, p.order[0], away))
        add_seconds(pp, self.away_pp(il, p.order[0], away, p.order[0]))


def _slowest(order: Sequence[str], seconds: Sequence[float]) -> dict[str, float]:
    """The slowest device's seconds, by its name: devices working in parallel wait for it."""
    j = max(range(len(seconds)), key=seconds.__getitem__)
    return {order[j]: seconds[j]}


def cost_model(model: ModelProfile, cluster: Cluster, context: Context, params: SpeedParams | None = None
               ) -> CostModel:
    """The cost model of a run: :class:`SplitCostModel` for a parallel split mode, else
    :class:`~omni_place.cost.CostModel`."""
    if context.split_mode in PARALLEL_MODES:
        return SplitCostModel(model, cluster, context, params)
    return CostModel(model, cluster, context, params)


__all__ = ["PARALLEL_MODES", "REDUCES_PER_LAYER", "ParallelMode", "SplitCostModel", "cost_model", "split_ne"]
