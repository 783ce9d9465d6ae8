"""Slow reference solvers for the placement core (test oracles, not for production use).

:class:`CoreProblem` holds the arrays of the abstract problem solved by ``omni_place._core.solve``
(see ``csrc/omni_place.h``). Three independent views of the same definition live here:

- :func:`placement_cost` evaluates one given placement straight from the definition;
- :func:`brute_force` enumerates every CPU prefix, every range split and every option tuple
  (memoized per device range), for small instances (L <= ~7);
- :func:`milp_fixed_order` solves one order as a mixed-integer program with ``scipy.optimize.milp``
  (HiGHS), for medium instances (L ~ 12-20, 3 devices, 3 options).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

import numpy as np
from numpy.typing import NDArray

CPU = -1


@dataclass
class CoreProblem:
    """Arrays of the abstract placement problem; shapes with L layers, D devices, K options."""

    orders: NDArray[np.int32]        # [n_orders][D], -1 padded
    time: NDArray[np.float64]        # [D][L][K]
    time_cpu: NDArray[np.float64]    # [L]
    mem_dense: NDArray[np.int64]     # [D][L]
    mem_exp: NDArray[np.int64]       # [D][L][K]
    trans: NDArray[np.float64]       # [D+1][D+1], index D = CPU
    out_time: NDArray[np.float64]    # [D]
    out_mem: NDArray[np.int64]       # [D]
    fixed_mem: NDArray[np.int64]     # [D]
    first_mem: NDArray[np.int64]     # [D]
    cap: NDArray[np.int64]           # [D]
    out_time_cpu: float = 0.0
    allow: NDArray[np.uint8] | None = None        # [D][L][K]
    stream: NDArray[np.float64] | None = None     # [L][K]
    stream_cpu: NDArray[np.float64] | None = None  # [L]
    stream_rate: NDArray[np.float64] | None = None  # [D]
    max_states: int = field(default=0)

    @property
    def L(self) -> int:
        return int(len(self.time_cpu))

    @property
    def D(self) -> int:
        return int(len(self.cap))

    @property
    def K(self) -> int:
        return int(np.shape(self.time)[2])

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``omni_place._core.solve``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def seq(self, order: int) -> list[int]:
        """Device sequence of one order row (without the -1 padding)."""
        return [int(d) for d in self.orders[order] if d >= 0]

    def allowed(self, d: int, l: int, o: int) -> bool:
        return self.allow is None or bool(self.allow[d, l, o])

    def layer_cost(self, rate: float, d: int, l: int, o: int) -> float:
        s = 0.0 if self.stream is None else float(self.stream[l, o])
        return float(self.time[d, l, o]) + rate * s

    def cpu_cost(self, rate: float, l: int) -> float:
        s = 0.0 if self.stream_cpu is None else float(self.stream_cpu[l])
        return float(self.time_cpu[l]) + rate * s

    def rate(self, seq: list[int]) -> float:
        if not seq or self.stream_rate is None:
            return 0.0
        return float(self.stream_rate[seq[0]])


@dataclass
class RefResult:
    """A placement and its total time, as found by a reference solver."""

    time: float
    order: int
    n_cpu: int
    home: list[int]
    option: list[int]
    out_device: int


def placement_cost(
    pb: CoreProblem, order: int, n_cpu: int, home: list[int] | NDArray[np.int32],
    option: list[int] | NDArray[np.int32], out_device: int,
) -> tuple[float, NDArray[np.int64], str | None]:
    """Time, per-device memory and the first violated rule (None if the placement is valid)."""
    L, D = pb.L, pb.D
    seq = pb.seq(order)
    home = [int(h) for h in home]
    option = [int(o) for o in option]
    mem = np.zeros(D, dtype=np.int64)
    for j, d in enumerate(seq):
        mem[d] = pb.fixed_mem[d] + (pb.first_mem[d] if j == 0 else 0)
    if not 0 <= n_cpu <= L or len(home) != L or len(option) != L:
        return math.inf, mem, "bad n_cpu or lengths"
    if any(h != CPU for h in home[:n_cpu]) or any(o != -1 for o in option[:n_cpu]):
        return math.inf, mem, "CPU prefix holds device layers"
    rank = {d: j for j, d in enumerate(seq)}
    if any(h not in rank for h in home[n_cpu:]):
        return math.inf, mem, "a layer after the CPU prefix is not on a device of the order"
    ranks = [rank[h] for h in home[n_cpu:]]
    if ranks != sorted(ranks):
        return math.inf, mem, "device ranges are not in order"
    rate = pb.rate(seq)
    total = 0.0
    for l in range(L):
        if home[l] == CPU:
            total += pb.cpu_cost(rate, l)
        else:
            d, o = home[l], option[l]
            if not 0 <= o < pb.K or not pb.allowed(d, l, o):
                return math.inf, mem, f"option {o} of layer {l} not allowed on device {d}"
            total += pb.layer_cost(rate, d, l, o)
            mem[d] += pb.mem_dense[d, l] + pb.mem_exp[d, l, o]
        if l > 0 and home[l] != home[l - 1]:
            total += float(pb.trans[_ix(pb, home[l - 1]), _ix(pb, home[l])])
    used = [d for d in seq if d in home]
    if used:
        if out_device != used[-1]:
            return math.inf, mem, "output is not on the last device with layers"
    elif out_device != CPU and (not seq or out_device != seq[-1]):
        return math.inf, mem, "output of a CPU-only plan must be on the CPU or the last device"
    if out_device == CPU:
        total += pb.out_time_cpu
    else:
        total += float(pb.out_time[out_device])
        mem[out_device] += pb.out_mem[out_device]
        if home[L - 1] != out_device:
            total += float(pb.trans[_ix(pb, home[L - 1]), out_device])
    for d in seq:
        if mem[d] > pb.cap[d]:
            return total, mem, f"device {d} uses {mem[d]} > cap {pb.cap[d]}"
    return total, mem, None


def _ix(pb: CoreProblem, h: int) -> int:
    return pb.D if h == CPU else h


def _compositions(n: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All tuples of `parts` non-negative integers summing to n."""
    if parts == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in _compositions(n - first, parts - 1):
            yield (first, *rest)


def brute_force(pb: CoreProblem) -> RefResult | None:
    """Exhaustive optimum over all orders (None if nothing fits). Exponential: keep L small."""
    L = pb.L
    best: RefResult | None = None

    def consider(r: RefResult) -> None:
        nonlocal best
        if best is None or r.time < best.time:
            best = r

    for oi in range(len(pb.orders)):
        seq = pb.seq(oi)
        m = len(seq)
        if m == 0:
            consider(RefResult(float(np.sum(pb.time_cpu)) + pb.out_time_cpu, oi, L,
                               [CPU] * L, [-1] * L, CPU))
            continue
        budget = [int(pb.cap[d] - pb.fixed_mem[d] - (pb.first_mem[d] if j == 0 else 0))
                  for j, d in enumerate(seq)]
        if min(budget) < 0:
            continue
        rate = pb.rate(seq)
        cpu_prefix = [0.0]
        for l in range(L):
            cpu_prefix.append(cpu_prefix[-1] + pb.cpu_cost(rate, l))
        memo: dict[tuple[int, int, int, int], tuple[float, tuple[int, ...]] | None] = {}

        def best_range(j: int, a: int, b: int, extra: int, memo=memo, seq=seq, budget=budget,
                       rate=rate) -> tuple[float, tuple[int, ...]] | None:
            """Cheapest option tuple for layers a..b-1 on position j within its budget."""
            key = (j, a, b, extra)
            if key not in memo:
                d = seq[j]
                found: tuple[float, tuple[int, ...]] | None = None
                choices = [[o for o in range(pb.K) if pb.allowed(d, l, o)] for l in range(a, b)]
                for opts in itertools.product(*choices):
                    mem = extra + sum(int(pb.mem_dense[d, l] + pb.mem_exp[d, l, o])
                                      for l, o in zip(range(a, b), opts))
                    if mem > budget[j]:
                        continue
                    t = sum(pb.layer_cost(rate, d, l, o) for l, o in zip(range(a, b), opts))
                    if found is None or t < found[0]:
                        found = (t, opts)
                memo[key] = found
            return memo[key]

        for c in range(L + 1):
            if c == L:
                consider(RefResult(cpu_prefix[L] + pb.out_time_cpu, oi, L, [CPU] * L, [-1] * L,
                                   CPU))
                dl = seq[-1]
                if budget[-1] - pb.out_mem[dl] >= 0:
                    t = cpu_prefix[L] + float(pb.trans[pb.D, dl] + pb.out_time[dl])
                    consider(RefResult(t, oi, L, [CPU] * L, [-1] * L, dl))
                continue
            for counts in _compositions(L - c, m):
                used = [j for j in range(m) if counts[j] > 0]
                last = used[-1]
                total = cpu_prefix[c]
                home = [CPU] * c
                option = [-1] * c
                a = c
                ok = True
                for j in range(m):
                    if counts[j] == 0:
                        continue
                    b = a + counts[j]
                    extra = int(pb.out_mem[seq[j]]) if j == last else 0
                    r = best_range(j, a, b, extra)
                    if r is None:
                        ok = False
                        break
                    total += r[0]
                    home += [seq[j]] * counts[j]
                    option += list(r[1])
                    a = b
                if not ok:
                    continue
                homes_seq = ([pb.D] if c > 0 else []) + [seq[j] for j in used]
                total += sum(float(pb.trans[x, y]) for x, y in zip(homes_seq, homes_seq[1:]))
                total += float(pb.out_time[seq[last]])
                consider(RefResult(total, oi, c, home, option, seq[last]))
    return best


def milp_fixed_order(pb: CoreProblem, order: int, mip_rel_gap: float = 0.0,
                     time_limit: float = 60.0) -> RefResult | None:
    """Optimum of one order as a MILP (scipy.optimize.milp / HiGHS); None if infeasible.

    Variables: x[l,p,o] (layer l on position p with option o), y[l] (layer l on CPU), v (no device
    layers, output on the order's last device), t[l,a,b] in [0,1] = h[l-1,a] * h[l,b] for homes
    a before b (the product is linearized exactly: t <= h, t <= h', t >= h + h' - 1).
    Contiguity: the cumulative "home rank <= p" indicators are non-increasing in l.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    L, K, D = pb.L, pb.K, pb.D
    seq = pb.seq(order)
    m = len(seq)
    if m == 0:
        return RefResult(float(np.sum(pb.time_cpu)) + pb.out_time_cpu, order, L, [CPU] * L,
                         [-1] * L, CPU)
    rate = pb.rate(seq)
    cols: dict[tuple[Any, ...], int] = {}

    def var(key: tuple[Any, ...]) -> int:
        if key not in cols:
            cols[key] = len(cols)
        return cols[key]

    xs = {(l, p, o): var(("x", l, p, o)) for l in range(L) for p in range(m) for o in range(K)
          if pb.allowed(seq[p], l, o)}
    ys = [var(("y", l)) for l in range(L)]
    v = var(("v",))
    homes = [CPU, *range(m)]  # CPU first, then positions (ranks)
    ts = {(l, a, b): var(("t", l, a, b)) for l in range(1, L) for ia, a in enumerate(homes)
          for b in homes[ia + 1:]}
    n = len(cols)
    integrality = np.ones(n)
    for key in ts.values():
        integrality[key] = 0

    def h(l: int, a: int) -> dict[int, float]:
        """Indicator 'layer l on home a' as a linear form {column: coefficient}."""
        if a == CPU:
            return {ys[l]: 1.0}
        return {xs[l, a, o]: 1.0 for o in range(K) if (l, a, o) in xs}

    rows: list[tuple[dict[int, float], float, float]] = []
    for l in range(L):  # every layer somewhere
        rows.append(({**h(l, CPU), **{c: 1.0 for p in range(m) for c in h(l, p)}}, 1.0, 1.0))
    for l in range(L - 1):  # contiguity: P(rank <= p) non-increasing in l
        for p in range(-1, m - 1):
            form: dict[int, float] = {}
            for a in homes[: p + 2]:
                for c, w in h(l, a).items():
                    form[c] = form.get(c, 0.0) + w
                for c, w in h(l + 1, a).items():
                    form[c] = form.get(c, 0.0) - w
            rows.append((form, 0.0, math.inf))
    for (l, a, b), c in ts.items():
        ha, hb = h(l - 1, a), h(l, b)
        rows.append(({c: 1.0, **{k: -w for k, w in ha.items()}}, -math.inf, 0.0))
        rows.append(({c: 1.0, **{k: -w for k, w in hb.items()}}, -math.inf, 0.0))
        form = {c: 1.0}
        for k, w in [*ha.items(), *hb.items()]:
            form[k] = form.get(k, 0.0) - w
        rows.append((form, -1.0, math.inf))
    rows.append(({v: 1.0, ys[L - 1]: -1.0}, -math.inf, 0.0))  # v only if everything is on CPU
    for p, d in enumerate(seq):  # memory
        budget = float(pb.cap[d] - pb.fixed_mem[d] - (pb.first_mem[d] if p == 0 else 0))
        form = {c: float(pb.mem_dense[d, l] + pb.mem_exp[d, l, o])
                for (l, pp, o), c in xs.items() if pp == p}
        for c in h(L - 1, p):
            form[c] = form.get(c, 0.0) + float(pb.out_mem[d])
        if p == m - 1:
            form[v] = form.get(v, 0.0) + float(pb.out_mem[d])
        rows.append((form, -math.inf, budget))

    cost = np.zeros(n)
    for l in range(L):
        cost[ys[l]] += pb.cpu_cost(rate, l)
    for (l, p, o), c in xs.items():
        cost[c] += pb.layer_cost(rate, seq[p], l, o)
    for (_, a, b), c in ts.items():
        cost[c] += float(pb.trans[pb.D if a == CPU else seq[a], seq[b]])
    for p, d in enumerate(seq):
        for c in h(L - 1, p):
            cost[c] += float(pb.out_time[d])
    cost[ys[L - 1]] += pb.out_time_cpu
    dl = seq[-1]
    cost[v] += float(pb.out_time[dl] + pb.trans[D, dl]) - pb.out_time_cpu

    A = lil_matrix((len(rows), n))
    lb = np.empty(len(rows))
    ub = np.empty(len(rows))
    for i, (form, lo, hi) in enumerate(rows):
        for c, w in form.items():
            A[i, c] = w
        lb[i], ub[i] = lo, hi
    res = milp(cost, integrality=integrality, bounds=Bounds(0.0, 1.0),
               constraints=LinearConstraint(A.tocsr(), lb, ub),
               options={"mip_rel_gap": mip_rel_gap, "time_limit": time_limit})
    if res.status == 2:
        return None
    if res.status != 0 or res.x is None:
        raise RuntimeError(f"milp did not finish: {res.message}")
    x = res.x
    home = [CPU] * L
    option = [-1] * L
    for (l, p, o), c in xs.items():
        if x[c] > 0.5:
            home[l], option[l] = seq[p], o
    n_cpu = sum(1 for hh in home if hh == CPU)
    if any(hh != CPU for hh in home):
        out = home[L - 1]
    else:
        out = dl if x[v] > 0.5 else CPU
    return RefResult(float(res.fun), order, n_cpu, home, option, out)
