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
- ``tg`` / ``pp``: the best decode / prompt speed, the other breaking ties;
- a weight W in [0, 1]: the least ``W * best_tg/tg + (1 - W) * best_pp/pp``, each speed relative
  to the best found.
"""
from __future__ import annotations

from collections.abc import Sequence

from .errors import InvalidArgumentError
from .recipes import Recipe

OBJECTIVES = ("balanced", "tg", "pp")
BALANCED_PROMPT_FLOOR = 0.8  # balanced keeps plans with at least this fraction of the best prompt speed
TIE_BREAK = 1e-3  # the core's weight of the other objective, so equal-speed plans prefer the better other
SAME = 1e-9  # relative difference below which two speeds tie
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


def core_weights(objective: str | float) -> tuple[float, float]:
    """(decode, prompt) weights the core solves with first: the objective's own for tg, pp and a
    weight (raw, before :func:`~omni_place.plan.plan_split` scales it by the optima); decode's
    for balanced, which starts from the fastest decode plan."""
    objective = parse_objective(objective)
    if objective in ("tg", "balanced"):
        return 1.0, TIE_BREAK
    if objective == "pp":
        return TIE_BREAK, 1.0
    assert isinstance(objective, float)
    return objective, 1.0 - objective


def _speeds(o: Recipe) -> tuple[float, float]:
    assert o.predicted is not None
    return o.predicted.tg_tps, o.predicted.pp_tps


def _best_by(options: Sequence[Recipe], primary: int) -> Recipe:
    """The option with the highest speed ``primary`` (0 tg, 1 pp), the other speed breaking ties."""
    top = max(_speeds(o)[primary] for o in options)
    tied = [o for o in options if _speeds(o)[primary] >= top * (1 - SAME)]
    return max(tied, key=lambda o: _speeds(o)[1 - primary])


def prompt_floor(options: Sequence[Recipe]) -> float:
    """The prompt speed a balanced plan must reach: :data:`BALANCED_PROMPT_FLOOR` of the best."""
    return BALANCED_PROMPT_FLOOR * max(_speeds(o)[1] for o in options)


def weighted_score(o: Recipe, objective: float, options: Sequence[Recipe]) -> float:
    best_tg = max(_speeds(x)[0] for x in options)
    best_pp = max(_speeds(x)[1] for x in options)
    tg, pp = _speeds(o)
    return objective * best_tg / tg + (1 - objective) * best_pp / pp


def choose(options: Sequence[Recipe], objective: str | float) -> Recipe:
    """The feasible option that ``objective`` ranks first (see the module doc); ``options`` must
    hold at least one feasible, priced option."""
    fits = [o for o in options if o.fits and o.predicted is not None]
    if not fits:
        raise ValueError("choose() needs a feasible option")
    objective = parse_objective(objective)
    if objective == "tg":
        return _best_by(fits, 0)
    if objective == "pp":
        return _best_by(fits, 1)
    if objective == "balanced":
        floor = prompt_floor(fits)
        return _best_by([o for o in fits if _speeds(o)[1] >= floor * (1 - SAME)], 0)
    assert isinstance(objective, float)
    return min(fits, key=lambda o: (weighted_score(o, objective, fits), -_speeds(o)[0]))


def beats(a: Recipe, b: Recipe, objective: str | float, options: Sequence[Recipe]) -> bool:
    """Whether feasible ``a`` ranks strictly above feasible ``b`` under ``objective`` (balanced and
    the weights judged against ``options``): the order :func:`choose` maximizes."""
    objective = parse_objective(objective)
    (atg, app), (btg, bpp) = _speeds(a), _speeds(b)
    if objective == "tg":
        return atg > btg * (1 + SAME)
    if objective == "pp":
        return app > bpp * (1 + SAME)
    if objective == "balanced":
        floor = prompt_floor(options) * (1 - SAME)
        if (app >= floor) != (bpp >= floor):
            return app >= floor
        return app >= floor and atg > btg * (1 + SAME)
    assert isinstance(objective, float)
    return weighted_score(a, objective, options) < weighted_score(b, objective, options) * (1 - SAME)


def frontier(options: Sequence[Recipe], n: int) -> list[Recipe]:
    """Up to ``n`` feasible options on the tg/pp Pareto frontier (none faster at both), from the
    fastest decode to the fastest prompt; when more are on it, both ends and evenly spaced ones
    between (equal speeds count once)."""
    fits = [o for o in options if o.fits and o.predicted is not None]
    front: list[Recipe] = []
    for o in sorted(fits, key=lambda o: (-_speeds(o)[0], -_speeds(o)[1])):
        if not front or _speeds(o)[1] > _speeds(front[-1])[1] * (1 + SAME):
            front.append(o)  # sorted by decode: on the frontier iff its prompt beats all before it
    if len(front) <= n:
        return front
    if n <= 1:
        return front[:n]
    picks = sorted({round(i * (len(front) - 1) / (n - 1)) for i in range(n)})
    return [front[i] for i in picks]


__all__ = ["BALANCED_PROMPT_FLOOR", "FRONTIER_WEIGHTS", "OBJECTIVES", "TIE_BREAK", "beats", "choose",
           "core_weights", "frontier", "parse_objective", "prompt_floor"]
