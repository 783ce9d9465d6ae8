"""Objectives: which of several priced placements a plan takes, and the tg/pp frontier.

A plan chooses among *options* (:class:`~omni_place.recipes.Recipe`: the core's optima for a few
objective weights, the recipes of :mod:`omni_place.recipes`, the user's own flags), each priced
exactly by the cost model. Choosing from priced options rather than from the core's internal
objective is what makes the guarantee hold: the chosen plan is at least as good, on its
objective, as every option priced beside it.

Objectives:

- ``balanced`` (the default): the best decode among the plans whose prompt speed is at least
  :data:`BALANCED_PROMPT_FLOOR` (80 %) of the best prompt speed found. Decode differences between
  sensible placements are usually tens of percent, prompt differences up to several times (a
  layer whose experts sit in RAM streams them over PCIe at prompt time), so the floor gives up at
  most a fifth of the prompt speed for decode and never trades a 3.6x slower prompt for +10 %
  decode, as the pure ``tg`` objective may;
- ``tg`` / ``pp``: the best decode / prompt speed, up to :data:`RANK_BAND` (5 %): among plans
  that close to the best, the other speed decides;
- a weight W in [0, 1]: the least ``W * best_tg/tg + (1 - W) * best_pp/pp``, each speed relative
  to the best found.
"""
from __future__ import annotations

from collections.abc import Sequence

from typing import Any

from .cost import CostModel
from .errors import InvalidArgumentError
from .recipes import Recipe
from .variants import PIN_MARGIN, SplitCandidate

OBJECTIVES = ("balanced", "tg", "pp")
BALANCED_PROMPT_FLOOR = 0.8  # balanced keeps plans with at least this fraction of the best prompt speed
TIE_BREAK = 1e-3  # the core's weight of the other objective, so equal-speed plans prefer the better other
SAME = 1e-9  # relative difference below which two speeds tie
# Speeds within this fraction of the best are one rank, and the other speed decides among them:
# the model does not resolve smaller differences between placements. On the H200 runs the pp
# objective took whole layers into RAM for a predicted 1-4 % prompt gain over keeping them on the
# GPU, and measured 14-23 % slower at prompt (and 30 % at decode) than that alternative
# (benchmarks/results/plans_vs_fit.md); decode medians there were 4-10 % off.
RANK_BAND = 0.05
FRONTIER_WEIGHTS = (1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.0)  # core solves behind --alternatives


def parse_objective(value: str | float) -> str | float:
    """An objective from the command line or the API: a name of :data:`OBJECTIVES` or a weight
    in [0, 1] on decode (a clear error for anything else)."""
    if isinstance(value, str) and value.strip().lower() in OBJECTIVES:
        return value.strip().lower()
    try:
        w = float(value)
    except (TypeError, ValueError):
        w = float("nan")
    if isinstance(value, bool) or not 0.0 <= w <= 1.0:
        raise InvalidArgumentError(f"objective {value!r} is not balanced, tg, pp or a weight in [0, 1]",
                                   hint="e.g. --objective 0.8 weighs decode 80 %, prompt 20 %")
    return w


def speeds(o: Recipe) -> tuple[float, float]:
    """(decode, prompt) tok/s of a priced option."""
    assert o.predicted is not None
    return o.predicted.tg_tps, o.predicted.pp_tps


def feasible(options: Sequence[Recipe]) -> list[Recipe]:
    """The options that fit and carry a price (a recipe the engine refuses has none): what every
    ranking and reference speed is taken over."""
    return [o for o in options if o.fits and o.predicted is not None]


def _best_by(options: Sequence[Recipe], primary: int) -> Recipe:
    """The option with the highest speed ``primary`` (0 tg, 1 pp) up to :data:`RANK_BAND`, the
    other speed deciding within the band."""
    top = max(speeds(o)[primary] for o in options)
    tied = [o for o in options if speeds(o)[primary] >= top * (1 - RANK_BAND)]
    return max(tied, key=lambda o: speeds(o)[1 - primary])


def prompt_floor(options: Sequence[Recipe]) -> float:
    """The prompt speed a balanced plan must reach: :data:`BALANCED_PROMPT_FLOOR` of the best."""
    return BALANCED_PROMPT_FLOOR * max(speeds(o)[1] for o in feasible(options))


def weighted_score(o: Recipe, objective: float, options: Sequence[Recipe]) -> float:
    pool = feasible(options)
    best_tg = max(speeds(x)[0] for x in pool)
    best_pp = max(speeds(x)[1] for x in pool)
    tg, pp = speeds(o)
    return objective * best_tg / tg + (1 - objective) * best_pp / pp


def choose(options: Sequence[Recipe], objective: str | float) -> Recipe:
    """The feasible option that ``objective`` ranks first (see the module doc); ``options`` must
    hold at least one feasible, priced option."""
    fits = feasible(options)
    if not fits:
        raise ValueError("choose() needs a feasible option")
    objective = parse_objective(objective)
    if objective == "tg":
        return _best_by(fits, 0)
    if objective == "pp":
        return _best_by(fits, 1)
    if objective == "balanced":
        floor = prompt_floor(fits)
        return _best_by([o for o in fits if speeds(o)[1] >= floor * (1 - SAME)], 0)
    assert isinstance(objective, float)
    return min(fits, key=lambda o: (weighted_score(o, objective, fits), -speeds(o)[0]))


def beats(a: Recipe, b: Recipe, objective: str | float, options: Sequence[Recipe], margin: float = SAME) -> bool:
    """Whether feasible ``a`` ranks strictly above feasible ``b`` under ``objective`` (balanced and
    the weights judged against ``options``): the order :func:`choose` maximizes; ``margin``: by
    more than this fraction of the objective's speed (or weighted score)."""
    objective = parse_objective(objective)
    (atg, app), (btg, bpp) = speeds(a), speeds(b)
    if objective == "tg":
        return atg > btg * (1 + margin)
    if objective == "pp":
        return app > bpp * (1 + margin)
    if objective == "balanced":
        floor = prompt_floor(options) * (1 - SAME)
        if (app >= floor) != (bpp >= floor):
            return app >= floor
        return app >= floor and atg > btg * (1 + margin)
    assert isinstance(objective, float)
    return weighted_score(a, objective, options) < weighted_score(b, objective, options) * (1 - margin)


# A parallel split mode (-sm tensor / ik's -sm graph) replaces the layer split only when the
# objective predicts it better by more than this fraction. Its all-reduce cost is a prior (the
# cost model's split_s and link figures; no parallel run has been measured, for want of a two-GPU
# machine), mainline calls the mode experimental, and a wrong switch costs more than a missed
# one: 15 % is about the spread between the speed model and measured H200 runs of the layer split
# (benchmarks/results/speed_truth.md), so a smaller predicted gain is within the model's error.
SPLIT_MODE_MARGIN = 0.15


def choose_split_mode(chosen: Recipe, candidates: Sequence[SplitCandidate], objective: str | float,
                      options: Sequence[Recipe]) -> tuple[list[dict[str, Any]], tuple[Recipe, CostModel] | None]:
    """The split-mode comparison of a plan whose layer split chose ``chosen``: a row per mode (the
    best of its priced options under ``objective``, or the engine's refusal) and the parallel
    option the plan adopts, if one beats ``chosen`` by more than :data:`SPLIT_MODE_MARGIN`."""
    tg, pp = speeds(chosen)
    rows: list[dict[str, Any]] = [{"mode": "layer", "chosen": True, "feasible": True, "shares": None,
                                   "tg_tps": tg, "pp_tps": pp, "refused": None}]
    adopted: tuple[Recipe, CostModel] | None = None
    for cand in candidates:
        row: dict[str, Any] = {"mode": cand.mode, "chosen": False, "feasible": False, "shares": None,
                               "tg_tps": None, "pp_tps": None, "refused": cand.refused}
        rows.append(row)
        if not cand.options:
            continue
        fits = [o for o in cand.options if o[0].fits]
        pick = next(o for o in fits if o[0] is choose([r for r, _ in fits], objective)) if fits else cand.options[0]
        row.update(feasible=pick[0].fits, shares=list(pick[1].context.split_shares),
                   tg_tps=speeds(pick[0])[0], pp_tps=speeds(pick[0])[1])
        row["cpu_expert_layers"] = sum(1 for kinds in pick[0].placement.cpu_experts if kinds) \
            if pick[0].placement is not None else 0
        pool = [*feasible(options), pick[0]] + ([adopted[0]] if adopted else [])
        if pick[0].fits and _split_wins(pick[0], chosen, objective, pool) and (
                adopted is None or beats(pick[0], adopted[0], objective, pool)):
            adopted = pick
    if adopted is not None:
        for row in rows:
            row["chosen"] = row["mode"] == adopted[1].context.split_mode
    return rows, adopted


def _split_wins(a: Recipe, layer: Recipe, objective: str | float, options: Sequence[Recipe]) -> bool:
    """Whether a parallel split mode's ``a`` beats the layer split's plan by the margin. Under
    ``balanced`` that is its decode (with its prompt above the floor): a mode whose only gain is
    the prompt would push the layer plan under the floor by its own, unmeasured, prediction."""
    if parse_objective(objective) == "balanced":
        return speeds(a)[1] >= prompt_floor(options) * (1 - SAME) and \
            speeds(a)[0] > speeds(layer)[0] * (1 + SPLIT_MODE_MARGIN)
    return beats(a, layer, objective, options, SPLIT_MODE_MARGIN)


def adopt_pinned(chosen: Recipe, pinned: Sequence[Recipe], options: Sequence[Recipe],
                 objective: str | float) -> Recipe | None:
    """The pinned option a plan takes instead of ``chosen`` (the best of ``options``): the
    objective's best among both, when it is pinned and beats ``chosen`` by :data:`PIN_MARGIN`."""
    priced = feasible(options)
    pool = [*priced, *(o for o in pinned if o.fits)]
    if len(pool) == len(priced):
        return None
    best = choose(pool, objective)
    return best if best.pinned and beats(best, chosen, objective, pool, PIN_MARGIN) else None


def frontier(options: Sequence[Recipe], n: int) -> list[Recipe]:
    """Up to ``n`` feasible options on the tg/pp Pareto frontier (none faster at both), from the
    fastest decode to the fastest prompt; when more are on it, both ends and evenly spaced ones
    between (equal speeds count once)."""
    fits = feasible(options)
    front: list[Recipe] = []
    for o in sorted(fits, key=lambda o: (-speeds(o)[0], -speeds(o)[1])):
        if not front or speeds(o)[1] > speeds(front[-1])[1] * (1 + SAME):
            front.append(o)  # sorted by decode: on the frontier iff its prompt beats all before it
    if len(front) <= n:
        return front
    if n <= 1:
        return front[:n]
    picks = sorted({round(i * (len(front) - 1) / (n - 1)) for i in range(n)})
    return [front[i] for i in picks]


__all__ = ["BALANCED_PROMPT_FLOOR", "FRONTIER_WEIGHTS", "OBJECTIVES", "PIN_MARGIN", "RANK_BAND", "SPLIT_MODE_MARGIN",
           "TIE_BREAK", "adopt_pinned", "beats", "choose", "choose_split_mode", "feasible", "frontier",
           "parse_objective", "prompt_floor", "speeds"]
