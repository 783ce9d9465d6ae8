"""The placements people use instead of a planner, in one place for ``plan``'s comparison and
``bench``'s matrix.

- ``fit``     -- mainline llama.cpp's ``--fit`` (on by default in llama-server), emulated on the
  cost model's memory figures (:func:`omni_place.fitemu.fit_style`; for ik_llama.cpp, whose own
  ``--fit`` moves experts differently, the same packing spelled in its flags);
- ``ot-exps`` -- ``-ngl 99 -ot exps=CPU``: every layer on the GPUs, every expert in RAM (MoE);
- ``ncmoe``   -- ``--n-cpu-moe N`` with the smallest N whose GPUs fit (MoE);
- ``ngl``     -- ``-ngl N`` with the largest N whose GPUs fit (dense).

Flags are spelled in the engine's llama-bench dialect (:class:`~omni_place.engines.BenchSpelling`),
which llama-server parses too. The searches take a "the GPUs fit" predicate, so :mod:`.plan` can
answer it from a :class:`~omni_place.cost.CostModel` and the bench matrix from its priced records.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .cost import CPU, EXPERT_OPTIONS, CostModel, ExpertHomes, Placement, Prediction, expert_kind, on_cpu
from .engines import BenchSpelling, Dialect
from .errors import InvalidArgumentError
from .fitemu import fit_style

ALL_EXPERTS = EXPERT_OPTIONS[-1]


def ot_exps_argv(spelling: BenchSpelling) -> list[str]:
    return ["-ngl", spelling.ngl_all, "-ot", "exps=CPU"]


def ncmoe_argv(spelling: BenchSpelling, n: int) -> list[str]:
    return [spelling.n_cpu_moe, str(n)]


def ngl_argv(n: int) -> list[str]:
    return ["-ngl", str(n)]


def first_true(lo: int, hi: int, pred: Callable[[int], bool], guess: int | None = None) -> int | None:
    """The smallest n in [lo, hi] with ``pred(n)``, for a predicate that is false and then true
    over the range; None when it is never true. From ``guess`` (default ``hi``) it gallops
    towards the answer and bisects the last bracket, so a good guess costs a few calls."""
    if lo > hi:
        return None
    g = hi if guess is None else min(max(guess, lo), hi)
    step = 1
    if pred(g):  # the answer is in [lo, g]: step down 1, 2, 4, ... while still true
        top = g
        while top - step >= lo and pred(top - step):
            top -= step
            step *= 2
        low = max(lo, top - step + 1)
    else:  # the answer is in (g, hi]: step up until true
        low, found = g + 1, None
        while low <= hi and found is None:
            probe = min(hi, low + step - 1)
            if pred(probe):
                found = probe
            else:
                low, step = probe + 1, step * 2
        if found is None:
            return None
        top = found
    while low < top:  # pred(top) holds and pred(low - 1) does not
        mid = (low + top) // 2
        if pred(mid):
            top = mid
        else:
            low = mid + 1
    return top


def smallest_ncmoe(n_layer: int, gpus_fit: Callable[[int], bool], guess: int | None = None) -> int:
    """The smallest ``--n-cpu-moe N`` whose GPUs fit (every further N moves one more layer's
    experts off them, so "fits" is monotone in N); ``n_layer`` when none does."""
    n = first_true(0, n_layer, gpus_fit, guess)
    return n_layer if n is None else n


def largest_ngl(n_layer: int, gpus_fit: Callable[[int], bool], guess: int | None = None) -> int:
    """The largest ``-ngl N`` (0..n_layer + 1, the output head being the last slot) whose GPUs
    fit; 0 when none does."""
    n = first_true(0, n_layer + 1, lambda k: gpus_fit(n_layer + 1 - k),
                   None if guess is None else n_layer + 1 - guess)
    return 0 if n is None else n_layer + 1 - n


@dataclass(frozen=True)
class Recipe:
    """A priced placement: a recipe's flags (none for the solver's optima), its placement in
    :func:`as_options` form, whether it fits and its speeds; or why the engine refuses it."""

    name: str  # "fit", "ot-exps", "ncmoe", "ngl"; "vs": the user's flags; "solver": the core's optimum
    label: str  # how a table names it
    argv: tuple[str, ...]  # placement flags in the engine's dialect
    placement: Placement | None = None
    fits: bool = False
    predicted: Prediction | None = None
    error: str | None = None  # why it could not be placed (e.g. flags the engine refuses)
    op_offload: bool = True  # False: priced (and run) with op offload off
    pinned: bool = False  # True: priced (and run) with the CPU-held weights pinned (no mmap)


def priced(cost: CostModel, name: str, label: str, argv: Sequence[str], placement: Placement) -> Recipe:
    """A recipe with its placement (in :func:`as_options` form) priced on ``cost``."""
    placement = as_options(cost, placement)
    return Recipe(name, label, tuple(argv), placement, all(u.fits for u in cost.usage(placement)),
                  cost.predict(placement))


def as_options(cost: CostModel, p: Placement) -> Placement:
    """``p`` with each layer's CPU expert kinds as the :data:`EXPERT_OPTIONS` entry that moves the
    same tensors (a decoded ``exps=CPU`` names only the kinds the layer has), so that a dialect
    can encode it when a plan takes it. Same tensors, same price."""
    if all(kinds in EXPERT_OPTIONS for kinds in p.cpu_experts):
        return p
    out: list[ExpertHomes] = []
    for il, kinds in enumerate(p.cpu_experts):
        present = {expert_kind(t) for t in cost.model.layers[il].expert_tensors}
        same = [o for o in EXPERT_OPTIONS if o & present == kinds & present]
        elsewhere = p.expert_homes[il] - on_cpu(kinds)  # kinds on other GPUs: left as they are
        out.append(on_cpu(same[0]) if kinds and same and not elsewhere else p.expert_homes[il])
    return replace(p, expert_homes=tuple(out))


def gpus_fit(cost: CostModel, p: Placement) -> bool:
    return all(u.fits for u in cost.usage(p) if u.kind != "cpu")


def decoded(cost: CostModel, rules: Dialect, argv: Sequence[str], tool: str = "server") -> Placement:
    """The placement ``rules`` make of placement flags at the cost model's context."""
    return rules.decode(cost.model, rules.parse_args(list(argv), tool), cost.cluster, cost.context, tool)


def standard_recipes(cost: CostModel, rules: Dialect, tool: str = "server") -> list[Recipe]:
    """The recipes of the module doc that apply to the model (fit, then ot-exps and ncmoe for a
    MoE, ngl for a dense one), priced on ``cost``; one the engine refuses carries its error.
    Empty for an engine that cannot keep weights in RAM (vLLM) or has no llama-bench spelling."""
    spelling = rules.bench
    if spelling is None or not rules.traits.cpu_weights or not cost.cluster.gpus:
        return []
    model = cost.model
    L = model.n_layer

    placed: dict[tuple[str, ...], Placement] = {}

    def place(argv: Sequence[str]) -> Placement:  # the engine's reading of flags, once per flag set
        key = tuple(argv)
        if key not in placed:
            placed[key] = decoded(cost, rules, argv, tool)
        return placed[key]

    fit_placement = fit_style(cost)
    # --fit keeps about as much off the GPUs as the -ngl search must: its first guess
    gpu_slots = sum(1 for h in fit_placement.layer_home if h != CPU) + (fit_placement.output != CPU)

    def fit() -> Recipe:
        p = fit_placement
        flags = rules.encode(model, p, cost.cluster, cost.context, cost.usage(p)).args(tool)
        return priced(cost, "fit", "--fit (emulated)", placement_flags(flags), p)

    def ot_exps() -> Recipe:
        return priced(cost, "ot-exps", "-ot exps=CPU", ot_exps_argv(spelling), place(ot_exps_argv(spelling)))

    def ncmoe() -> Recipe:
        guess = _ncmoe_guess(cost, place(ncmoe_argv(spelling, 0)), fit_placement)
        n = smallest_ncmoe(L, lambda k: gpus_fit(cost, place(ncmoe_argv(spelling, k))), guess)
        return priced(cost, "ncmoe", f"--n-cpu-moe {n}", ncmoe_argv(spelling, n), place(ncmoe_argv(spelling, n)))

    def ngl() -> Recipe:
        n = largest_ngl(L, lambda k: gpus_fit(cost, place(ngl_argv(k))), gpu_slots)
        return priced(cost, "ngl", f"-ngl {n}", ngl_argv(n), place(ngl_argv(n)))

    makers = [("fit", fit)] + ([("ot-exps", ot_exps), ("ncmoe", ncmoe)] if model.hparams.n_expert else [("ngl", ngl)])
    out = []
    for name, make in makers:
        try:
            out.append(make())
        except InvalidArgumentError as err:  # the engine refuses the recipe here (e.g. ik's -ncmoe rules)
            out.append(Recipe(name, name, (), error=err.message))
    return out


def _ncmoe_guess(cost: CostModel, base: Placement, fit: Placement) -> int:
    """A first guess for the ``--n-cpu-moe`` search: N such that moving the experts of layers
    0..N-1 of ``base`` (the flags without it) to the CPU is the least that lets the GPUs fit. It
    only saves the search steps (reading flags through a dialect matches every tensor name
    against the patterns); the search checks each step through the dialect, whichever layers
    the engine moves. It starts from as many layers as ``fit`` keeps experts of in RAM."""
    moe = [il for il, lc in enumerate(cost.model.layers) if lc.has_experts and base.layer_home[il] != CPU]
    in_ram = sum(1 for il in moe if fit.layer_home[il] == CPU or fit.cpu_experts[il])

    def moved(k: int) -> Placement:
        first = set(moe[:k])
        return replace(base, expert_homes=tuple(on_cpu(ALL_EXPERTS) if il in first else e
                                                for il, e in enumerate(base.expert_homes)))

    k = first_true(0, len(moe), lambda k: gpus_fit(cost, moved(k)), in_ram)
    return cost.model.n_layer if k is None else 0 if k == 0 else moe[k - 1] + 1


CONTEXT_FLAGS = frozenset({"-c", "-ub", "--ubatch-size", "-b", "-fa", "--flash-attn", "-ctk", "-ctv"})


def placement_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` without its context flags (each value flag with its value): what places weights,
    for recipes priced at a plan's context and bench configurations that share one."""
    out: list[str] = []
    it = iter(argv)
    for tok in it:
        if tok in CONTEXT_FLAGS:
            next(it, None)
        else:
            out.append(tok)
    return out


__all__ = ["Recipe", "as_options", "decoded", "first_true", "fit_style", "gpus_fit", "largest_ngl", "ncmoe_argv",
           "ngl_argv", "ot_exps_argv", "placement_flags", "priced", "smallest_ncmoe", "standard_recipes"]
