"""Mainline llama.cpp's ``--fit`` (``common/fit.cpp`` ``common_params_fit_impl``), emulated on
the cost model's memory figures: the placement the engine's fitter makes, step by step.

The fitter describes a placement per device as ``ngl_t`` (:class:`Share`): ``n_layer`` slots of
the L + 1 (the output head last), of which the last ``n_part`` are partial; the first partial
layer of a device keeps the part its ``overflow_type`` (:class:`Fraction`) names and sends the
rest to its overflow target (the CPU, or in step 4 the next device), every further partial
layer keeps everything but its routed experts (``LAYER_FRACTION_MOE``). It measures each
candidate with a no-alloc load (``get_memory_for_layers``, :589-614); here the measurement is
:meth:`~omni_place.cost.CostModel.usage`, plus the non-expert tensors an overflow pattern also
moves (the router, shared experts: the placement names only routed experts' homes).

Not emulated: step 2, the context reduction (:373-458), which runs only when ``-c`` is left out
(a plan always sets it); the extra model (``-md``); a partial-layer step that would index past
the last device or take the last device's output slot (undefined in fit.cpp: it reads past a
vector or wraps an unsigned count), which the emulation skips.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

from .cost import CPU, CostModel, ExpertHomes, Placement, expert_kind
from .engines.llama_cpp import assign_layers
from .model import Role, TensorRecord

FIT_TARGET = 1 << 30  # --fit's default margin per device, 1024 MiB (common/common.h:483 fit_params_target)
_U32 = (1 << 32) - 1


class Fraction(enum.IntEnum):
    """``common_layer_fraction_t`` (fit.cpp:17-24): what of a partial layer stays on its device."""

    ATTN = 1  # attention
    UP = 2  # attention + up
    GATE = 3  # attention + up + gate
    MOE = 4  # everything but the routed experts


# get_overflow_pattern (fit.cpp:493-530): the tensors of layer {il} a fraction sends away (regex_search)
OVERFLOW_PATTERN = {
    Fraction.ATTN: r"blk\.{il}\.ffn_(gate|up|gate_up|down).*",
    Fraction.UP: r"blk\.{il}\.ffn_(gate|gate_up|down).*",
    Fraction.GATE: r"blk\.{il}\.ffn_down.*",
    Fraction.MOE: r"blk\.{il}\.ffn_(up|down|gate_up|gate)_(ch|)exps",
}


@dataclass(frozen=True)
class Share:
    """One device's ``ngl_t`` (fit.cpp:532-543)."""

    n_layer: int = 0  # slots, contiguous, in device order
    n_part: int = 0  # the last n_part of them partial
    overflow: Fraction = Fraction.MOE  # the first partial layer's fraction

    @property
    def n_full(self) -> int:
        return self.n_layer - self.n_part


Shares = tuple[Share, ...]


def _set(shares: Shares, i: int, **change: int | Fraction) -> Shares:
    return shares[:i] + (replace(shares[i], **change),) + shares[i + 1:]  # type: ignore[arg-type]


def false_position_step(delta: int, target: int, mem_lo: int, mem_hi: int) -> int:
    """fit.cpp's interpolation (:694-696, :766-768): ``uint32_t step = int64_t(delta) *
    (target - mem_lo) / (mem_hi - mem_lo)`` (C division, truncated; a negative quotient wraps to
    a huge step), clamped to [1, delta - 1]."""
    num, den = delta * (target - mem_lo), (mem_hi - mem_lo) or 1
    q = abs(num) // abs(den) * (1 if (num >= 0) == (den > 0) else -1)
    return min(max(q & _U32, 1), delta - 1)


class FitEmulator:
    """``common_params_fit_impl`` on one cost model: :meth:`placement` of a fitter state,
    :meth:`memory` of it per device, and :meth:`fit`, the whole algorithm."""

    def __init__(self, cost: CostModel) -> None:
        self.cost = cost
        self.names = [d.name for d in cost.cluster.gpus]
        self.free = [d.memory_bytes if d.free_bytes is None else d.free_bytes for d in cost.cluster.gpus]
        self.targets = [f - FIT_TARGET for f in self.free]  # the most each may use (:647-652)
        self.L = cost.model.n_layer
        self._memory: dict[tuple[Shares, tuple[str, ...]], list[int]] = {}

    @cached_property
    def _moved(self) -> dict[tuple[int, Fraction], tuple[frozenset[str], tuple[TensorRecord, ...]]]:
        """Per (layer, fraction): the routed-expert kinds its pattern sends away, and the other
        tensors it sends."""
        per: dict[int, list[TensorRecord]] = {}
        for t in self.cost.model.tensors:
            if t.layer is not None:
                per.setdefault(t.layer, []).append(t)
        # a layer's pattern hits only that layer's tensors (blk\.5\. is not in blk.15.): one
        # pattern per fraction, any layer number, tried on each layer's own tensors
        any_layer = {frac: re.compile(pat.format(il=r"\d+")) for frac, pat in OVERFLOW_PATTERN.items()}
        out = {}
        for il in range(self.L):
            for frac, rx in any_layer.items():
                hit = [t for t in per.get(il, ()) if rx.search(t.name)]
                out[(il, frac)] = (frozenset(expert_kind(t) for t in hit if t.role is Role.ROUTED_EXPERT),
                                   tuple(t for t in hit if t.role is not Role.ROUTED_EXPERT))
        return out

    def _other_bytes(self, il: int, frac: Fraction, device: str) -> int:
        backend = self.cost.backend(device)
        return sum(t.alloc_bytes(backend) for t in self._moved[(il, frac)][1])

    def _layout(self, shares: Shares, over: Sequence[str]) -> tuple[Placement, list[tuple[int, str, str, Fraction]]]:
        """``set_ngl_tensor_split_tbo`` (:548-586): ``-ngl`` = the shares' slots, ``-ts`` = each
        device's slots, and per partial layer an override; the engine then assigns the layers
        (:func:`~omni_place.engines.llama_cpp.assign_layers`). Also (layer, home, target,
        fraction) of each partial layer whose fraction moves more than routed experts."""
        nd, L = len(self.names), self.L
        ngl = sum(s.n_layer for s in shares)
        homes, output = self._homes(assign_layers(L + 1, ngl, [float(s.n_layer) for s in shares] if nd > 1 else None,
                                                  nd, self.free))
        experts: list[ExpertHomes] = [frozenset()] * L
        others = []
        il0 = L + 1 - ngl
        for dev, s in enumerate(shares):
            il0 += s.n_full
            for il in range(il0, min(il0 + s.n_part, L)):
                frac, target = (s.overflow, over[dev]) if il == il0 else (Fraction.MOE, CPU)
                kinds, rest = self._moved[(il, frac)]
                if target != homes[il]:
                    experts[il] = frozenset((k, target) for k in kinds)
                    if rest and homes[il] != CPU:
                        others.append((il, homes[il], target, frac))
            il0 += s.n_part
        return Placement(tuple(self.names), homes, tuple(experts), output), others

    def _homes(self, slots: Sequence[int]) -> tuple[tuple[str, ...], str]:
        """Each layer's device and the output's from the engine's slots (-1: the CPU)."""
        names = [CPU if s < 0 else self.names[s] for s in slots]
        return tuple(names[:-1]), names[-1]

    def placement(self, shares: Shares, over: Sequence[str]) -> Placement:
        return self._layout(shares, over)[0]

    def memory(self, shares: Shares, over: Sequence[str]) -> list[int]:
        """Bytes each device uses with these shares: the no-alloc probe of :589-614."""
        key = (shares, tuple(over))
        if key not in self._memory:
            self._memory[key] = self._used(*self._layout(shares, over))
        return self._memory[key]

    def default_placement(self, experts_on_cpu: bool = False) -> Placement:
        """No ``-ngl``/``-ts``: every slot on the devices, split by free memory; with
        ``experts_on_cpu`` every routed expert in RAM (fit.cpp:617-622's probe)."""
        homes, output = self._homes(assign_layers(self.L + 1, -1, None, len(self.names), self.free))
        experts = tuple(frozenset((k, CPU) for k in self._moved[(il, Fraction.MOE)][0])
                        if experts_on_cpu and homes[il] != CPU else frozenset() for il in range(self.L))
        return Placement(tuple(self.names), homes, experts, output)

    def _used(self, p: Placement, others: Sequence[tuple[int, str, str, Fraction]] = ()) -> list[int]:
        """Bytes each device uses under ``p``, less the non-expert tensors that partial layers'
        patterns move (``others``, from :meth:`_layout`), which go to their target instead."""
        used = {u.name: u.used_bytes for u in self.cost.usage(p)}
        for il, home, target, frac in others:
            used[home] -= self._other_bytes(il, frac, home)
            if target != CPU:
                used[target] += self._other_bytes(il, frac, target)
        return [used[n] for n in self.names]

    def fit(self) -> Placement:
        """The placement ``--fit`` leaves the engine with."""
        if not self.names:
            return Placement((), (CPU,) * self.L, (frozenset(),) * self.L, CPU)
        state = self.solve()
        return self.default_placement() if state is None else self.placement(*state)

    def solve(self) -> tuple[Shares, tuple[str, ...]] | None:
        """The fitter's final shares and overflow targets per device; None when it changes
        nothing (the engine's default split leaves every margin)."""
        # step 1 (:261-371): nothing to do when the default placement leaves every margin
        if all(u <= t for u, t in zip(self._used(self.default_placement()), self.targets)):
            return None
        moe = bool(self.cost.model.hparams.n_expert)
        shares, over = self._fill_back_to_front(moe)
        # :616-645: step 4 only when the dense parts of every layer fit the devices together
        if moe and sum(t - u for t, u in zip(self.targets, self._used(self.default_placement(True)))) > 0:
            shares, over = self._fill_front_to_back(shares, over)
        return shares, tuple(over)

    def _fill_back_to_front(self, moe: bool) -> tuple[Shares, list[str]]:
        """Step 3 (:664-733): from the last device to the first, each takes as many of the slots
        left as fit, found by false position; for a MoE model as dense-only layers (experts in
        RAM), the last device's first slot whole."""
        nd, slots = len(self.names), self.L + 1
        over = [CPU] * nd
        shares: Shares = (Share(),) * nd
        mem = self.memory(shares, over)
        for dev in range(nd - 1, -1, -1):
            n = slots - sum(s.n_layer for s in shares[dev + 1:])
            if n == 0:
                continue
            high = _set(shares, dev, n_layer=n, n_part=(n if dev < nd - 1 else n - 1) if moe else 0)
            mem_high = self.memory(high, over)
            if mem_high[dev] <= self.targets[dev]:
                shares, mem = high, mem_high
                continue
            delta = high[dev].n_layer - shares[dev].n_layer
            while delta > 1:
                step = false_position_step(delta, self.targets[dev], mem[dev], mem_high[dev])
                s = shares[dev]
                # the last device's first slot stays whole (:700-702)
                part = s.n_part + (step - 1 if dev == nd - 1 and s.n_part == 0 else step) if moe else 0
                test = _set(shares, dev, n_layer=s.n_layer + step, n_part=part)
                mem_test = self.memory(test, over)
                if mem_test[dev] <= self.targets[dev]:
                    shares, mem = test, mem_test
                else:
                    high, mem_high = test, mem_test
                delta = high[dev].n_layer - shares[dev].n_layer
        return shares, over

    def _fill_front_to_back(self, shares: Shares, over: list[str]) -> tuple[Shares, list[str]]:
        """Step 4 (:735-876): from the first device on, each turns as many dense-only layers
        (from the first device that has them on) into whole layers of its own as fit, by false
        position; then tries one more layer partially, its FFN overflowing to the next device (the
        CPU for the last): attention + up kept (``UP``), then + gate (``GATE``), or else attention
        alone (``ATTN``), each taken only while both devices stay under their targets."""
        nd, targets = len(self.names), self.targets
        mem = self.memory(shares, over)
        start = nd
        for dev in range(nd - 1, -1, -1):
            if shares[dev].n_layer == 0:
                break
            start = dev
        dev = 0
        while dev <= start < nd:
            high = shares
            for jd in range(start, nd):
                move = high[jd].n_layer - (jd == nd - 1)
                high = _set(high, dev, n_layer=high[dev].n_layer + move)
                high = _set(high, jd, n_layer=high[jd].n_layer - move, n_part=0)
            start_high = nd - 1
            mem_high = self.memory(high, over)
            if mem_high[dev] > targets[dev]:
                delta = high[dev].n_full - shares[dev].n_full
                while delta > 1:
                    step = false_position_step(delta, targets[dev], mem[dev], mem_high[dev])
                    test, start_test, done = shares, start, 0
                    while start_test < nd:
                        c = min(step - done, test[start_test].n_part)
                        test = _set(test, start_test, n_layer=test[start_test].n_layer - c,
                                    n_part=test[start_test].n_part - c)
                        test = _set(test, dev, n_layer=test[dev].n_layer + c)
                        done += c
                        if test[start_test].n_part > 0:
                            break
                        start_test += 1
                    mem_test = self.memory(test, over)
                    if mem_test[dev] <= targets[dev]:
                        shares, mem, start = test, mem_test, start_test
                    else:
                        high, mem_high, start_high = test, mem_test, start_test
                    delta = high[dev].n_full - shares[dev].n_full
            else:
                shares, mem, start = high, mem_high, start_high
            if start < nd and shares[start].n_layer > (dev == nd - 1) and shares[start].n_part > 0:
                shares, over, mem, start = self._partial_layer(shares, over, mem, dev, start)
            dev += 1
        return shares, over

    def _partial_layer(self, shares: Shares, over: list[str], mem: list[int], dev: int, start: int
                       ) -> tuple[Shares, list[str], list[int], int]:
        """Step 4's "try to fit at least part of one more layer" (:810-862); the first partial
        layer overflows to the next device's buffer type (:576-577, :822-825)."""
        nd, targets = len(self.names), self.targets
        test = _set(shares, start, n_layer=shares[start].n_layer - 1, n_part=shares[start].n_part - 1)
        test = _set(test, dev, n_layer=test[dev].n_layer + 1, n_part=test[dev].n_part + 1)
        start_test = start + 1 if test[start].n_part == 0 else start
        over_test = list(over)
        if dev < nd - 1:
            over_test[dev] = self.names[dev + 1]

        def fitting(frac: Fraction) -> tuple[Shares, list[int]] | None:
            """``test`` with this fraction kept, when it is strictly under the targets of this
            device and the one it overflows to."""
            cand = _set(test, dev, overflow=frac)
            m = self.memory(cand, over_test)
            return (cand, m) if m[dev] < targets[dev] and (dev + 1 == nd or m[dev + 1] < targets[dev + 1]) else None

        up = fitting(Fraction.UP)
        kept = (fitting(Fraction.GATE) or up) if up is not None else fitting(Fraction.ATTN)
        if kept is None:
            return shares, over, mem, start
        return kept[0], over_test, kept[1], start_test


def fit_style(cost: CostModel) -> Placement:
    """What mainline's ``--fit`` does with this model on these devices at the cost model's
    context, the fitter's probes answered by the cost model's memory (:class:`FitEmulator`).
    ``--fit`` ignores speeds and links, and so does this. Like fit.cpp it checks a device only
    while filling it (and the next one while overflowing onto it), so a later step can still
    push an earlier one over (e.g. the pipeline copies of a placement with no weight left on the
    CPU); the comparison then shows it as not fitting."""
    return FitEmulator(cost).fit()


__all__ = ["FIT_TARGET", "OVERFLOW_PATTERN", "FitEmulator", "Fraction", "Share", "false_position_step", "fit_style"]
