"""`omni-place calibrate --run`: a short set of llama-bench runs that identifies this machine's
speed parameters, run, read back and fitted.

:func:`design_runs` is pure: from the model, the cluster and the engine it picks up to five
placements, each feasible by the memory model and each moving a different share of the work:

- ``gpu``: every layer on the GPUs, or as much as fits (the experts of the fewest first layers,
  or the fewest first layers, in CPU RAM) -- GPU bandwidth in decode, GPU compute in the prompt
  (``gpu_bw_scale``, ``gpu_compute_scale``);
- ``cpu-experts`` (MoE) / ``cpu-layers`` (dense): every routed expert, or half the layers, in CPU
  RAM -- CPU bandwidth in decode, op-offload streaming over the host link in the prompt
  (``cpu_bw_eff``, ``stream_eff``);
- ``split`` (MoE): about the CPU bytes of ``gpu`` but a CPU round trip in every expert layer (the
  first layers' experts and only the down experts of the others), which separates the per-split
  cost from CPU bandwidth (``split_s``; bytes and splits grow together in the other runs);
- ``cpu-compute`` (engines with a no-op-offload flag): ``cpu-experts``/``cpu-layers`` with op
  offload off, prompt only -- CPU prompt compute (``cpu_tflops_per_core``);
- ``repeat``, last: the first run's decode again. Fitted with the rest (the two windows averaged),
  and :func:`design_drift` says how far the machine's speed moved between them (a VM's did by
  7-13 % between windows minutes apart: benchmarks/results/calibrate_35.md).

Test sizes (-p/-n) come from each run's predicted speed, so the whole design fits a time budget
(3 minutes by default, model loads included). :func:`run_design` runs it with the engine's
llama-bench (``-o json[l] -v``, one log per run), reporting one line per run; a run that fails
(out of memory, a crash, a timeout) is reported and skipped.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TextIO

from ..cost import CPU, EXPERT_KINDS, CostModel, Placement, SpeedParams
from ..devices import Cluster
from ..engines import dialect
from ..engines.common import KIND_REGEX, ParsedArgs, layer_regex
from ..engines.tools import tool_context
from ..errors import NothingFitsError, OmniPlaceError
from ..model import ModelProfile
from ..recipes import first_true
from .llamabench import UNSTEADY, Imported, import_text
from .run import OK, Progress, classify_failure, parse_output, run_attempt

BUDGET_S = 180.0  # the whole design, model loads included
LOAD_GBS = 3.0  # GB/s a run reads its weights at (page cache or NVMe) ...
LOAD_FIXED_S = 3.0  # ... plus backend start-up and the warm-up pass
REPS = 3  # llama-bench -r
N_GEN = (16, 256)  # -n bounds: enough tokens to average over, few enough for a slow CPU
N_PROMPT = (128, 2048)  # -p bounds: at least op offload's batch of 32, a full ubatch when it is cheap
SIZING_CTX = N_PROMPT[1] + N_GEN[1]  # memory and speeds are priced at the largest test
REPEAT = "repeat"  # the last run: the first run's decode again


@dataclass(frozen=True)
class DesignRun:
    """One llama-bench invocation of the design."""

    name: str
    purpose: str
    flags: tuple[str, ...]  # placement flags (no -m, -p, -n, -r, -o, -v)
    n_prompt: int
    n_gen: int
    tg_tps: float  # predicted, with the parameters the design was made with
    pp_tps: float
    seconds: float  # predicted wall time, load included

    def argv(self, reps: int = REPS) -> list[str]:
        return [*self.flags, "-p", str(self.n_prompt), "-n", str(self.n_gen), "-r", str(reps)]


@dataclass(frozen=True)
class Design:
    """The runs, the parameters they identify together, and the predicted total time."""

    engine: str
    runs: tuple[DesignRun, ...]
    fit_names: tuple[str, ...]
    budget_s: float
    reps: int = REPS

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)


def _placement(model: ModelProfile, cluster: Cluster, engine: str, flags: Sequence[str],
               params: SpeedParams) -> tuple[Placement, bool, bool, float, float]:
    """(placement, fits, the GPUs fit, tg tok/s, pp tok/s) of llama-bench flags, priced as
    `check --tool bench` does."""
    rules = dialect(engine)
    parsed = rules.parse_args([*flags, "-p", "512", "-n", "128"], "bench")
    tc = tool_context(parsed, rules.tool_defaults("bench"), model.hparams.n_ctx_train)
    context = rules.traits.context(ctx=SIZING_CTX, n_ubatch=tc.n_ubatch, flash_attn=tc.flash_attn,
                                   op_offload=parsed.op_offload, fused_moe=parsed.fused_moe)
    placement = rules.decode(model, parsed, cluster, context, "bench")
    cost = CostModel(model, cluster, context, params)
    pred = cost.predict(placement)
    usage = cost.usage(placement)
    return placement, all(u.fits for u in usage), all(u.fits for u in usage if u.name != CPU), pred.tg_tps, pred.pp_tps


def _flags(engine: str, ngl: int, cpu_experts: Sequence[tuple[Sequence[int], frozenset[str]]] = ()) -> tuple[str, ...]:
    """llama-bench flags, spelled by the engine's dialect: ``-ngl ngl`` and, per (layers, kinds),
    those layers' routed experts of those kinds in CPU RAM."""
    overrides = [(layer_regex(layers) + KIND_REGEX[kinds], "CPU") for layers, kinds in cpu_experts if layers]
    return tuple(dialect(engine).flags_of(ParsedArgs(n_gpu_layers=ngl, overrides=overrides)).args("bench"))


def design_runs(model: ModelProfile, cluster: Cluster, engine: str, *, params: SpeedParams | None = None,
                budget_s: float = BUDGET_S, reps: int = REPS) -> Design:
    """The calibration runs for ``model`` on ``cluster`` with ``engine``'s llama-bench (see the
    module doc); NothingFitsError when none of them fits."""
    params = params or SpeedParams()
    spelling = dialect(engine).bench
    if spelling is None:
        raise NothingFitsError(f"{engine} has no llama-bench to calibrate with",
                               hint="use --engine llama.cpp or ik_llama.cpp")
    L = model.n_layer
    ngl_all = int(spelling.ngl_all)
    moe_layers = [il for il, lc in enumerate(model.layers) if lc.has_experts]
    every, down = frozenset(EXPERT_KINDS), frozenset({"down"})

    @cache
    def price(flags: tuple[str, ...]) -> tuple[Placement, bool, bool, float, float] | None:
        """Each candidate's flags priced once: the searches' probes and the chosen runs."""
        try:
            return _placement(model, cluster, engine, flags, params)
        except OmniPlaceError:
            return None

    def least(hi: int, flags_of: Callable[[int], tuple[str, ...]]) -> int | None:
        """The smallest k in [0, hi] whose flags fit: the GPUs fit from some k on (more in RAM),
        RAM up to some k, so search the GPUs' condition and check RAM once there (where it fails
        no larger k fits either)."""
        def gpus_fit(k: int) -> bool:
            priced = price(flags_of(k))
            return priced is not None and priced[2]

        k = first_true(0, hi, gpus_fit, guess=0)
        priced = None if k is None else price(flags_of(k))
        return k if priced is not None and priced[1] else None

    cands: list[tuple[str, tuple[str, ...], bool]] = []  # name, flags, with a tg test
    if not cluster.gpus:
        cands.append(("cpu", _flags(engine, 0), True))
    elif moe_layers:
        # experts of the first k expert layers in CPU RAM, k as small as fits (each search tried
        # from 0 first: mostly everything fits)
        def gpu(k: int) -> tuple[str, ...]:
            return _flags(engine, ngl_all, [(moe_layers[:k], every)])

        k = least(len(moe_layers), gpu)
        if k is not None:
            cands.append(("gpu", gpu(k), True))
        cpu_flags = gpu(len(moe_layers))
        cands.append(("cpu-experts", cpu_flags, True))
        # a split in every expert layer for about the CPU bytes of `gpu`: the first m layers'
        # experts and only the down experts of the others
        def split(m: int) -> tuple[str, ...]:
            return _flags(engine, ngl_all, [(moe_layers[:m], every), (moe_layers[m:], down)])

        m = least(len(moe_layers), split)
        if m is not None and len(moe_layers) - m >= max(2, len(moe_layers) // 8):
            cands.append(("split", split(m), True))
    else:
        # -ngl k offloads the last k of the n_layer + 1 (the output last): n + 1 - k layers stay on
        # the CPU, so L + 1 puts everything on the GPUs (src/llama-model.cpp:1589, i_gpu_start)
        n = least(L + 1, lambda n: _flags(engine, L + 1 - n))
        if n is not None:
            cands.append(("gpu", _flags(engine, L + 1 - n), True))
        cpu_flags = _flags(engine, L // 2 if n is None or n < L // 2 else L // 4)
        cands.append(("cpu-layers", cpu_flags, True))
    if cluster.gpus and spelling.no_op_offload:
        cands.append(("cpu-compute", cpu_flags + spelling.no_op_offload, False))

    chosen = []
    seen: set[Placement] = set()
    for name, flags, with_tg in cands:
        op_offload = name != "cpu-compute"
        priced = price(flags)
        if priced is None:
            continue
        placement, ok, _, tg, pp = priced
        if not ok or (placement in seen and op_offload):
            continue
        seen.add(placement)
        chosen.append((name, flags, with_tg, tg, pp))
    if not chosen:
        raise NothingFitsError(f"no calibration run of {model.name} fits {cluster.name}",
                               hint="calibrate with a smaller model (a few GB is enough)")
    first = next((c for c in chosen if c[2]), None)
    if first is not None:  # the first decode again, last: how far the machine moved during the design
        chosen.append((REPEAT, *first[1:]))
    load_s = LOAD_FIXED_S + model.total_bytes / (LOAD_GBS * 1e9)
    ubatch = dialect(engine).tool_defaults("bench").n_ubatch
    n_tests = sum(2 if with_tg and name != REPEAT else 1 for name, _, with_tg, _, _ in chosen)
    per_pass = max(0.25, (budget_s - load_s * len(chosen)) / n_tests / (reps + 1))
    runs: list[DesignRun] = []
    for name, flags, with_tg, tg, pp in chosen:
        n_prompt = int(min(max(pp * per_pass, N_PROMPT[0]), N_PROMPT[1])) if name != REPEAT else 0
        n_prompt -= n_prompt % (ubatch if n_prompt >= ubatch else 64)  # whole ubatches: a shorter last one
        # costs a whole one's weight copies (attention.prompt_ubatches), a regime a server's prompts rarely see
        n_gen = int(min(max(tg * per_pass, N_GEN[0]), N_GEN[1])) // 8 * 8 if with_tg else 0
        n_gen = next((r.n_gen for r in runs if r.flags == flags), n_gen) if name == REPEAT else n_gen
        seconds = load_s + (reps + 1) * ((n_prompt / pp if n_prompt else 0.0) + (n_gen / tg if n_gen else 0.0))
        runs.append(DesignRun(name, _PURPOSE[name], flags, n_prompt, n_gen, tg, pp, seconds))
    names = {r.name for r in runs}
    fit_names = tuple(n for n, by in _IDENTIFIES.items() if by & names)
    return Design(engine, tuple(runs), fit_names, budget_s, reps)


_PURPOSE = {
    "gpu": "GPU bandwidth (tg) and compute (pp)",
    "cpu-experts": "CPU bandwidth (tg), host-link streaming (pp)",
    "cpu-layers": "CPU bandwidth (tg), host-link streaming (pp)",
    "split": "per-split cost (a split in every layer, about the CPU bytes of `gpu`)",
    "cpu-compute": "CPU prompt compute (op offload off)",
    "cpu": "CPU bandwidth (tg) and compute (pp)",
    REPEAT: "the first decode again: how far this machine's speed moved during the runs",
}
# which runs identify each parameter (a parameter none of the remaining runs moves is not fitted)
_IDENTIFIES = {
    "gpu_bw_scale": {"gpu"}, "gpu_compute_scale": {"gpu"},
    "cpu_bw_eff": {"cpu-experts", "cpu-layers", "cpu"}, "stream_eff": {"cpu-experts", "cpu-layers"},
    "split_s": {"split"}, "cpu_tflops_per_core": {"cpu-compute", "cpu"},
}


def describe(design: Design) -> list[str]:
    """One line per run and the budget line, for the terminal."""
    lines = [f"{i}. {r.name}: {' '.join(r.argv(design.reps))}  -- {r.purpose}; predicted "
             + " / ".join(([f"pp {r.pp_tps:.0f}"] if r.n_prompt else []) + ([f"tg {r.tg_tps:.1f}"] if r.n_gen else []))
             + f" tok/s, ~{r.seconds:.0f} s" for i, r in enumerate(design.runs, 1)]
    lines.append(f"estimated {design.seconds:.0f} s for {len(design.runs)} runs (budget {design.budget_s:.0f} s); "
                 f"fits {', '.join(design.fit_names)}")
    return lines


def run_design(design: Design, exe: str, model_path: str, model: ModelProfile, cluster: Cluster, out_dir: Path, *,
               threads: int | None = None, timeout: float = 300, progress_stream: TextIO | None = None) -> Imported:
    """Run every design run with llama-bench ``exe`` (its -v log with the output in
    ``out_dir/<i>.<name>.log``) and import what each measured; failed runs are counted in
    ``skipped`` by their status. A run whose test came out unsteady (llamabench.UNSTEADY) runs
    once more where the budget has room, for the tests it lacks (``<i>.<name>.again.log``)."""
    spelling = dialect(design.engine).bench
    assert spelling is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    prog = Progress(len(design.runs), progress_stream)
    result = Imported()
    spent = 0.0

    def run(i: int, r: DesignRun, suffix: str = "") -> Imported | None:
        nonlocal spent
        label = f"{r.name}{suffix and ' ' + suffix} ({r.purpose}; ~{r.seconds:.0f} s)"
        prog.start(label)
        argv = ["-m", model_path, *r.argv(design.reps), *(["-t", str(threads)] if threads else []),
                *spelling.output, "-v"]
        log_path = out_dir / f"{i}.{r.name}{suffix and '.' + suffix}.log"
        rc, so, se, dt = run_attempt(exe, argv, log_path, timeout=timeout)
        spent += dt
        status = OK if rc == 0 and parse_output(so) else classify_failure(rc or 1, se + so)
        if status != OK:
            prog.end(r.name, f"failed ({status}, exit {rc}; log {log_path})", dt)
            result.skipped[f"run failed: {status}"] += 1
            return None
        got = import_text(log_path.read_text(errors="replace"), model, cluster, engine=design.engine,
                          source=r.name)
        summary = ", ".join(f"{p.kind} {p.measured:.1f} tok/s" for p in got.points)
        prog.end(r.name, "ok" + (f" ({got.skipped[UNSTEADY]} unsteady)" if got.skipped[UNSTEADY] else ""), dt,
                 summary)
        return got

    for i, r in enumerate(design.runs, 1):
        got = run(i, r)
        if got is None:
            continue
        result.add(got)
        if got.skipped[UNSTEADY] and spent + r.seconds <= design.budget_s:
            prog.total += 1
            again = run(i, r, "again")
            if again is not None:
                measured = {p.kind for p in got.points}
                kept = [p for p in again.points if p.kind not in measured]
                if len(kept) < len(again.points):
                    again.skipped["measured steadily before the run was repeated"] += len(again.points) - len(kept)
                again.points = kept
                result.add(again)
    return result


@dataclass(frozen=True)
class Drift:
    """The design's first decode, measured first and again last (the ``repeat`` run)."""

    run: str
    first_tps: float
    last_tps: float

    @property
    def change(self) -> float:
        return self.last_tps / self.first_tps - 1.0

    def to_dict(self) -> dict[str, float | str]:
        return {"run": self.run, "first_tps": self.first_tps, "last_tps": self.last_tps,
                "change": round(self.change, 4)}

    def line(self) -> str:
        """``drift: ...``, with a warning past DRIFT_WARN."""
        out = (f"drift: {self.run}'s decode ran {self.first_tps:.1f} tok/s first and {self.last_tps:.1f} last "
               f"({self.change:+.1%}); both are fitted")
        if abs(self.change) > DRIFT_WARN:
            out += ("; this machine's speed moved while it was measured, later runs may differ as much "
                    "(calibrate again when it is idle)")
        return out


DRIFT_WARN = 0.05  # a move past the run-to-run noise of one quiet machine (benchmarks/results/calibrate_35.md)


def design_drift(design: Design, imported: Imported) -> Drift | None:
    """How the first decode moved between the first run and the ``repeat`` run; None unless both measured it."""
    if not design.runs or design.runs[-1].name != REPEAT:
        return None
    first = next(r.name for r in design.runs if r.n_gen)

    def decode(name: str) -> float | None:
        return next((p.measured for p in imported.points
                     if p.kind == "tg" and str(p.record.get("config", "")).split("#")[0] == name), None)

    a, b = decode(first), decode(REPEAT)
    return Drift(first, a, b) if a and b else None


__all__ = ["BUDGET_S", "REPEAT", "Design", "DesignRun", "Drift", "describe", "design_drift", "design_runs",
           "run_design"]
