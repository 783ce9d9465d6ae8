"""Benchmark omni_place's plan against what users try by hand, with llama-bench, per engine.

For each engine build (mainline llama.cpp, ik_llama.cpp) the configurations are, in that engine's
own llama-bench dialect:

- ``default``  -- no placement flags: the engine's default split (all layers offloaded, split by
  free memory);
- ``fit``      -- the engine's memory fitter (mainline ``-fitt 1024``, ik ``--fit 1``, both with
  their default 1 GiB margin);
- ``ot-exps``  -- the community recipe ``-ngl 99 -ot exps=CPU`` (MoE only);
- ``ncmoe``    -- ``--n-cpu-moe N`` with the smallest N the memory model says loads, then larger N
  on an out-of-memory failure, as a user would (MoE only);
- ``ngl``      -- ``-ngl N`` with the largest N that loads (dense only);
- ``omni_place`` -- :func:`omni_place.plan.plan_split` for that engine.

Every attempt becomes records (one per llama-bench test, ``pp<N>`` / ``tg<N>``); a failed run
(out of memory at load or at context creation, or any other non-zero exit) is recorded with its
status and the tail of its log, never dropped. Beside each record sits omni_place's prediction:
``predicted`` prices the flags before the run (memory per device, feasible, tg/pp), and
``as_run`` prices the placement the engine actually made, read back from its ``-v`` log (layer
homes and overridden expert tensors) -- the latter is what :mod:`omni_place.calibrate` fits.

The running half (:func:`run_matrix`) needs only the standard library, so it runs on a GPU
machine that has no compiled omni_place core; preparing (:func:`build_matrix`) and pricing
(:func:`attach_predictions`) need the core.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .errors import EngineError, InvalidArgumentError

ENGINES = ("llama.cpp", "ik_llama.cpp")
CONFIG_ORDER = ("default", "fit", "ot-exps", "ncmoe", "ngl", "omni_place")
SCHEMA = "omni_place.bench/1"
OK = "ok"
OOM_LOAD = "oom_load"
OOM_CONTEXT = "oom_context"
FAILED = "error"

# Mainline and ik llama-bench differ in flag names and output (docs/MEASURING.md); the placement
# flags' separators come from each dialect's own table (omni_place.engines).
_DIALECT: dict[str, dict[str, Any]] = {
    "llama.cpp": {"fit": ["-fitt", "1024"], "ncmoe": "-ncmoe", "output": ["-o", "jsonl"], "ngl_all": "99"},
    "ik_llama.cpp": {"fit": ["--fit", "1"], "ncmoe": "--n-cpu-moe", "output": ["-o", "json"], "ngl_all": "999"},
}
_EXPERTS_RE = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"


def _engine(engine: str) -> str:
    if engine not in ENGINES:
        raise InvalidArgumentError(f"unknown engine {engine!r}", hint="use one of: " + ", ".join(ENGINES))
    return engine


def engine_of_binary(path: str) -> str:
    """Guess the dialect of a llama-bench binary from its path (``ik`` in it means ik_llama.cpp)."""
    return "ik_llama.cpp" if re.search(r"(^|[^a-z])ik([^a-z]|$)|ik_llama", str(path).lower()) else "llama.cpp"


# --------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------

@dataclass
class Attempt:
    """One llama-bench invocation: placement flags and omni_place's prediction for them."""

    argv: list[str]
    predicted: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES for a device order


@dataclass
class BenchConfig:
    """A configuration of one engine; ``attempts`` are tried in order until one runs (only the
    hand-tuned recipes have more than one)."""

    engine: str
    name: str
    attempts: list[Attempt]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchConfig:
        return cls(d["engine"], d["name"], [Attempt(**a) for a in d["attempts"]], d.get("note", ""))


def _price(usage: Sequence[Any], pred: Any) -> dict[str, Any]:
    """Feasibility, tok/s and per-device memory of a priced placement, as records keep them."""
    return {
        "feasible": all(u.fits for u in usage),
        "tg_tps": round(pred.tg_tps, 3),
        "pp_tps": round(pred.pp_tps, 3),
        "devices": [{"name": u.name, "used_gib": round(u.used_bytes / 2**30, 3),
                     "usable_gib": round(u.capacity_bytes / 2**30, 3), "fits": u.fits} for u in usage],
    }


def _prediction(plan: Any) -> dict[str, Any]:
    return {**_price(plan.usage, plan.predicted), "notes": list(plan.notes)}


def _evaluate(model: Any, cluster: Any, engine: str, argv: Sequence[str], ctx: int, ubatch: int,
              params: Any) -> dict[str, Any]:
    """omni_place's price of a llama-bench flag set in ``engine``'s dialect (an error entry
    when omni_place cannot price it)."""
    from .plan import evaluate

    full = list(argv) + ["-c", str(ctx), "-ub", str(ubatch)]
    try:
        return _prediction(evaluate(model, cluster, full, ctx=ctx, params=params, engine=engine, tool="bench"))
    except Exception as err:  # noqa: BLE001 - an unpriceable recipe is still benchmarked
        return {"error": str(err)}


def _moe(model: Any) -> bool:
    return bool(model.hparams.n_expert)


def build_configs(model: Any, cluster: Any, engine: str, *, n_prompt: int = 512, n_gen: int = 64,
                  ubatch: int = 512, objective: str | float = "tg", params: Any = None,
                  configs: Sequence[str] = CONFIG_ORDER, retries: int = 3) -> list[BenchConfig]:
    """The configurations of one engine for ``model`` on ``cluster`` (see the module doc)."""
    from .model import load_model
    from .plan import plan_split

    _engine(engine)
    prof = load_model(model)
    ctx = n_prompt + n_gen
    d = _DIALECT[engine]
    out: list[BenchConfig] = []

    def ev(argv: Sequence[str]) -> dict[str, Any]:
        return _evaluate(prof, cluster, engine, argv, ctx, ubatch, params)

    for name in configs:
        if name == "default":
            out.append(BenchConfig(engine, name, [Attempt([], ev([]))], "engine default split"))
        elif name == "fit":
            out.append(BenchConfig(engine, name, [Attempt(list(d["fit"]), None)],
                                   "engine's own fitter; priced from the placement it made (-v log)"))
        elif name == "ot-exps" and _moe(prof):
            argv = ["-ngl", d["ngl_all"], "-ot", "exps=CPU"]
            out.append(BenchConfig(engine, name, [Attempt(argv, ev(argv))], "-ngl 99 -ot exps=CPU"))
        elif name == "ncmoe" and _moe(prof):
            L = prof.n_layer
            n0 = next((n for n in range(L + 1) if ev([d["ncmoe"], str(n)]).get("feasible")), L)
            ns = sorted({min(L, n0 + k * 2) for k in range(retries)})
            out.append(BenchConfig(engine, name, [Attempt([d["ncmoe"], str(n)], ev([d["ncmoe"], str(n)])) for n in ns],
                                   "smallest --n-cpu-moe that loads (memory model first, +2 on OOM)"))
        elif name == "ngl" and not _moe(prof):
            L = prof.n_layer
            n0 = next((n for n in range(L + 1, -1, -1) if ev(["-ngl", str(n)]).get("feasible")), 0)
            ns = [max(0, n0 - k * 2) for k in range(retries)]
            out.append(BenchConfig(engine, name, [Attempt(["-ngl", str(n)], ev(["-ngl", str(n)])) for n in dict.fromkeys(ns)],
                                   "largest -ngl that loads (memory model first, -2 on OOM)"))
        elif name == "omni_place":
            plan = plan_split(prof, cluster, ctx=ctx, ubatch=ubatch, objective=objective, params=params, engine=engine)
            argv, env = _plan_bench_args(plan, prof, cluster)
            pred = _prediction(plan)
            out.append(BenchConfig(engine, name, [Attempt(argv, pred, env)], f"objective {objective}"))
    return out


def _plan_bench_args(plan: Any, model: Any, cluster: Any) -> tuple[list[str], dict[str, str]]:
    """A plan's llama-bench placement flags. A bench without ``-dev`` (ik's) cannot reorder the
    GPUs: then the GPUs are renamed into the plan's order and CUDA_VISIBLE_DEVICES reorders them."""
    try:
        return _placement_only(plan.args("bench")), {}
    except InvalidArgumentError:
        order = list(plan.placement.order)
        gpus = [d.name for d in cluster.gpus]
        if not all(re.fullmatch(r"CUDA\d+", n) for n in gpus) or sorted(order) != sorted(gpus):
            raise
    from .cost import Placement
    from .devices import Cluster
    from .plan import encode_placement

    rename = {old: f"CUDA{i}" for i, old in enumerate(order)}
    devs = [dataclasses.replace(d, name=rename.get(d.name, d.name)) for d in cluster.devices]
    devs.sort(key=lambda d: (d.kind != "gpu", d.name))
    renamed = Cluster(cluster.name, tuple(devs), cluster.description, cluster.notes)
    p = plan.placement
    q = Placement(tuple(rename[n] for n in p.order), tuple(rename.get(h, h) for h in p.layer_home), p.cpu_experts,
                  rename.get(p.output, p.output), p.extra_overrides)
    usage = [dataclasses.replace(u, name=rename.get(u.name, u.name)) for u in plan.usage]
    ea = encode_placement(plan.engine, model, q, renamed, plan.context, usage)
    new = dataclasses.replace(plan, engine_args=ea, placement=q, cluster=renamed)
    env = {"CUDA_VISIBLE_DEVICES": ",".join(n.removeprefix("CUDA") for n in order)}
    return _placement_only(new.args("bench")), env


_CTX_FLAGS = {"-ub", "-c", "-fa", "-ctk", "-ctv", "--ubatch-size", "--flash-attn", "-b"}


def _placement_only(argv: Sequence[str]) -> list[str]:
    """Drop the context flags of a plan's bench args (the matrix sets them for every config)."""
    out: list[str] = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok in _CTX_FLAGS:
            skip = True
            continue
        out.append(tok)
    return out


def common_args(engine: str, model_path: str, *, n_prompt: int, n_gen: int, ubatch: int, reps: int,
                threads: int | None) -> list[str]:
    """The flags every configuration of an engine shares (tests, batch, repetitions, output)."""
    d = _DIALECT[_engine(engine)]
    out = ["-m", str(model_path), "-p", str(n_prompt), "-n", str(n_gen), "-ub", str(ubatch),
           "-b", str(max(ubatch, 2048)), "-fa", "1", "-r", str(reps)]
    if threads:
        out += ["-t", str(threads)]
    return out + list(d["output"]) + ["-v"]


# --------------------------------------------------------------------------------------------
# running (standard library only)
# --------------------------------------------------------------------------------------------

def parse_output(text: str) -> list[dict[str, Any]]:
    """llama-bench records from ``-o jsonl`` (mainline) or ``-o json`` (ik, a pretty-printed
    array that a crash may leave unterminated): every complete top-level JSON object."""
    out: list[dict[str, Any]] = []
    dec = json.JSONDecoder()
    i, n = 0, len(text)
    while i < n:
        j = text.find("{", i)
        if j < 0:
            break
        try:
            obj, end = dec.raw_decode(text, j)
        except json.JSONDecodeError:
            i = j + 1
            continue
        if isinstance(obj, dict) and ("avg_ts" in obj or "avg_ns" in obj):
            out.append(obj)
        i = end
    return out


_OOM_LOAD = re.compile(r"failed to load model|unable to allocate .*buffer|failed to allocate .*buffer for|"
                       r"error loading model|cudaMalloc failed: out of memory", re.IGNORECASE)
_OOM_CTX = re.compile(r"failed to create context|failed to allocate compute|failed to initialize the context|"
                      r"llama_init_from_model: failed|failed to reserve", re.IGNORECASE)


def classify_failure(rc: int, log: str) -> str:
    """``oom_load`` / ``oom_context`` / ``error`` for a failed run, from its exit code and log."""
    if rc == 0:
        return OK
    ctx_hit = _OOM_CTX.search(log)
    load_hit = _OOM_LOAD.search(log)
    if load_hit and (not ctx_hit or load_hit.start() < ctx_hit.start()):
        return OOM_LOAD
    if ctx_hit:
        return OOM_CONTEXT
    if re.search(r"out of memory", log, re.IGNORECASE):
        return OOM_LOAD
    return FAILED


def test_name(rec: dict[str, Any]) -> str:
    if rec.get("test"):
        return str(rec["test"])
    n_p, n_g = int(rec.get("n_prompt", 0)), int(rec.get("n_gen", 0))
    if n_p and n_g:
        return f"pp{n_p}+tg{n_g}"
    return f"pp{n_p}" if n_p else f"tg{n_g}"


def _log_tail(log: str, n: int = 12) -> list[str]:
    lines = [ln for ln in log.splitlines() if ln.strip()]
    keep = [ln for ln in lines if re.search(r"error|fail|out of memory|alloc", ln, re.IGNORECASE)]
    return (keep[-n:] if keep else lines[-n:])


def run_attempt(exe: str, argv: Sequence[str], log_path: Path | None, *, timeout: float = 900,
                env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """Run llama-bench; returns (exit code, stdout, stderr, seconds)."""
    t0 = time.time()
    try:
        proc = subprocess.run([exe, *argv], check=False, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, errors="replace")
        rc, so, se = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        rc = 124
        so = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        se = (err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")) + "\n[timeout]"
    except OSError as err:
        raise EngineError(f"cannot run {exe}: {err}", hint="pass the path of a built llama-bench") from None
    dt = time.time() - t0
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(f"$ {shlex.join([exe, *argv])}\n# rc={rc} seconds={dt:.1f}\n{se}\n# stdout\n{so}")
    return rc, so, se, dt


def expected_tests(n_prompt: int, n_gen: int) -> list[str]:
    return ([f"pp{n_prompt}"] if n_prompt else []) + ([f"tg{n_gen}"] if n_gen else [])


@dataclass
class Progress:
    """Progress lines on a stream: ``[3/10] llama.cpp fit ... 12.3 s, ok``."""

    total: int
    stream: TextIO | None = sys.stderr
    done: int = 0
    t0: float = field(default_factory=time.time)

    def start(self, label: str) -> None:
        if self.stream is not None:
            el = time.time() - self.t0
            print(f"[{self.done + 1}/{self.total}] {label} (elapsed {el:.0f} s)", file=self.stream, flush=True)

    def end(self, label: str, status: str, seconds: float, summary: str = "") -> None:
        self.done += 1
        if self.stream is not None:
            print(f"      {label}: {status} in {seconds:.1f} s {summary}", file=self.stream, flush=True)


def run_config(cfg: BenchConfig, exe: str, common: Sequence[str], *, tests: Sequence[str],
               log_dir: Path | None = None, meta: dict[str, Any] | None = None,
               progress: Progress | None = None, timeout: float = 900,
               env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run a configuration's attempts until one succeeds; every attempt's records are returned."""
    records: list[dict[str, Any]] = []
    for k, att in enumerate(cfg.attempts):
        label = f"{cfg.engine} {cfg.name}" + (f" #{k + 1} {shlex.join(att.argv)}" if len(cfg.attempts) > 1 else "")
        if progress:
            progress.start(label)
        argv = list(common) + list(att.argv)
        log_path = (log_dir / f"{cfg.engine}.{cfg.name}.{k}.log") if log_dir else None
        run_env = {**(env or {}), **att.env}
        rc, so, se, dt = run_attempt(exe, argv, log_path, timeout=timeout, env=run_env)
        found = parse_output(so)
        status = OK if rc == 0 and found else classify_failure(rc if rc else 1, se + so)
        base = {"schema": SCHEMA, **(meta or {}), "engine": cfg.engine, "config": cfg.name, "attempt": k,
                "argv": list(att.argv), "env": run_env,
                "command": " ".join([*(f"{k}={v}" for k, v in run_env.items()), shlex.join([os.path.basename(exe), *argv])]),
                "predicted": att.predicted, "seconds": round(dt, 1), "log": log_path.name if log_path else None}
        got = {test_name(r): r for r in found}
        for t in tests:
            rec = dict(base, test=t)
            if t in got:
                r = got[t]
                rec.update(status=OK, avg_ts=r.get("avg_ts"), stddev_ts=r.get("stddev_ts"),
                           samples_ts=r.get("samples_ts"), engine_record=r)
            else:
                rec.update(status=status if status != OK else FAILED, avg_ts=None, stddev_ts=None,
                           error=_log_tail(se + so))
            records.append(rec)
        if progress:
            summ = ", ".join(f"{t} {got[t].get('avg_ts', 0):.1f}" for t in tests if t in got)
            progress.end(label, status, dt, summ)
        if status == OK:
            break
    return records


def run_matrix(matrix: dict[str, Any], binaries: dict[str, str], out_dir: Path, *,
               progress_stream: TextIO | None = sys.stderr, timeout: float = 900,
               env: dict[str, str] | None = None, only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Run every configuration of a matrix (``build_matrix``'s JSON) for the engines given in
    ``binaries``; appends each record to ``out_dir/records.jsonl`` as soon as it exists."""
    out_dir.mkdir(parents=True, exist_ok=True)
    only_set = set(only) if only else None
    todo = [(BenchConfig.from_dict(c)) for c in matrix["configs"]
            if c["engine"] in binaries and (only_set is None or c["name"] in only_set)]
    prog = Progress(sum(len(c.attempts) for c in todo), progress_stream)
    out: list[dict[str, Any]] = []
    meta: dict[str, Any] = {k: matrix[k] for k in ("model", "model_file", "cluster", "rig", "n_prompt", "n_gen", "ubatch", "threads")
            if k in matrix}
    with open(out_dir / "records.jsonl", "a") as fh:
        for cfg in todo:
            common = common_args(cfg.engine, matrix["model_file"], n_prompt=matrix["n_prompt"], n_gen=matrix["n_gen"],
                                 ubatch=matrix["ubatch"], reps=matrix.get("reps", 3), threads=matrix.get("threads"))
            recs = run_config(cfg, binaries[cfg.engine], common,
                              tests=expected_tests(matrix["n_prompt"], matrix["n_gen"]),
                              log_dir=out_dir / "logs", meta=meta, progress=prog, timeout=timeout, env=env)
            fh.writelines(json.dumps(r) + "\n" for r in recs)
            fh.flush()
            out += recs
    return out


def build_matrix(model_path: str, cluster: Any, engines: Sequence[str], *, model_file: str | None = None,
                 n_prompt: int = 512, n_gen: int = 64, ubatch: int = 512, reps: int = 3,
                 threads: int | None = None, objective: str | float = "tg", params: Any = None,
                 configs: Sequence[str] = CONFIG_ORDER, rig: str | None = None) -> dict[str, Any]:
    """Every engine's configurations with their predictions, as one JSON-ready matrix."""
    from .model import load_model

    prof = load_model(model_path)
    cfgs: list[dict[str, Any]] = []
    for eng in engines:
        cfgs += [c.to_dict() for c in build_configs(prof, cluster, eng, n_prompt=n_prompt, n_gen=n_gen,
                                                    ubatch=ubatch, objective=objective, params=params,
                                                    configs=configs)]
    return {"schema": SCHEMA, "model": Path(model_path).name.split(".")[0], "model_file": model_file or str(model_path),
            "cluster": cluster.name, "rig": rig or cluster.name, "n_prompt": n_prompt, "n_gen": n_gen,
            "ubatch": ubatch, "reps": reps, "threads": threads, "objective": objective, "configs": cfgs}


# --------------------------------------------------------------------------------------------
# the placement an engine made, read back from its -v log
# --------------------------------------------------------------------------------------------

_MAIN_LAYER = re.compile(r"load_tensors: layer +(\d+) assigned to device (\S+?),")
_OVERRIDE = re.compile(r"[Tt]ensor (blk\.(\d+)\.ffn_(gate_up|gate|up|down)_(?:ch|)exps\.weight) \(.*?\) "
                       r"buffer type overrid+en to (\S+)")
_LOAD_START = re.compile(r"llama_model_loader: loaded meta data")
_IK_KV = re.compile(r"llama_kv_cache_init: +(\S+) KV buffer size = +([\d.]+) MiB")


def _last_load(log: str) -> str:
    """The part of a log from its last model load (a fit run probes several times)."""
    starts = [m.start() for m in _LOAD_START.finditer(log)]
    return log[starts[-1]:] if starts else log


def placement_from_log(log: str, model: Any, accelerators: Sequence[str], engine: str,
                       argv: Sequence[str] = ()) -> Any | None:
    """The :class:`~omni_place.cost.Placement` an engine made, from its ``-v`` log's last load:
    layer homes (mainline: ``layer N assigned to device``; ik: the KV cache buffer of each
    device, one equal-size slice per layer, layers contiguous in device order) and the expert
    tensors overridden to the CPU. ``accelerators`` names the engine's devices in its order.
    None when the log does not say."""
    from .cost import CPU, Placement

    L = model.n_layer
    seg = _last_load(log)
    homes: list[str] = [CPU] * L
    output = CPU
    if engine == "llama.cpp":
        hits = _MAIN_LAYER.findall(seg)
        if not hits:
            return None
        for il_s, dev in hits:
            il = int(il_s)
            name = CPU if dev.upper().startswith("CPU") else dev
            if il < L:
                homes[il] = name
            else:
                output = name
    else:
        kv: dict[str, float] = {}
        for dev, mib in _IK_KV.findall(seg):
            if dev in kv:
                break  # the next context's buffers
            kv[dev] = float(mib)
        total = sum(kv.values())
        if not total:
            return None
        gpu = [(d, kv[d]) for d in kv if re.fullmatch(r"CUDA\d+", d)]
        counts = [round(L * v / total) for _, v in gpu]
        il = L - sum(counts)
        for (d, _), n in zip(gpu, counts):
            idx = int(d[4:])
            name = accelerators[idx] if idx < len(accelerators) else d
            for k in range(il, il + n):
                homes[k] = name
            il += n
        ngl = None
        if "-ngl" in argv:
            ngl = int(argv[list(argv).index("-ngl") + 1])
        all_gpu = homes[0] != CPU
        if all_gpu and (ngl is None or ngl > L):
            output = homes[L - 1]
    cpu_kinds: list[set[str]] = [set() for _ in range(L)]
    for _name, il_s, kind, buft in _OVERRIDE.findall(seg):
        il = int(il_s)
        if il < L and (buft.upper().startswith("CPU") or buft.upper().startswith("CUDA_HOST")):
            cpu_kinds[il].add(kind)
    # engine order as run: devices in the order their layers come (the output's device last)
    used = list(dict.fromkeys([h for h in homes if h != CPU] + ([output] if output != CPU else [])))
    order = tuple(used) + tuple(a for a in accelerators if a not in used)
    cpu_experts = tuple(frozenset(k) if homes[il] != CPU else frozenset() for il, k in enumerate(cpu_kinds))
    return Placement(order, tuple(homes), cpu_experts, output)


def placement_to_dict(p: Any) -> dict[str, Any]:
    return {"order": list(p.order), "layer_home": list(p.layer_home),
            "cpu_experts": [sorted(k) for k in p.cpu_experts], "output": p.output}


def placement_from_dict(d: dict[str, Any]) -> Any:
    from .cost import Placement

    return Placement(tuple(d["order"]), tuple(d["layer_home"]), tuple(frozenset(k) for k in d["cpu_experts"]),
                     d["output"])


def price_placement(model: Any, cluster: Any, placement: Any, *, ctx: int, ubatch: int, params: Any = None,
                    flash_attn: bool = True) -> dict[str, Any]:
    """Memory and speed of a placement at a bench context (what ``as_run`` holds)."""
    from .cost import Context, CostModel

    cost = CostModel(model, cluster, Context(ctx=ctx, n_ubatch=ubatch, flash_attn=flash_attn), params)
    return _price(cost.usage(placement), cost.predict(placement))


def attach_placements(records: list[dict[str, Any]], model: Any, cluster: Any, log_dir: Path | None,
                      params: Any = None) -> list[dict[str, Any]]:
    """Add ``placement`` (read from each run's -v log) and ``as_run`` (its price) to records."""
    from .model import load_model

    prof = load_model(model)
    accel = [d.name for d in cluster.gpus]
    cache: dict[str, Any] = {}
    for r in records:
        name = r.get("log")
        if not name or log_dir is None or not (log_dir / name).exists():
            continue
        if name not in cache:
            text = (log_dir / name).read_text(errors="replace")
            vis = (r.get("env") or {}).get("CUDA_VISIBLE_DEVICES")
            # engine device i is the i-th visible GPU: name it as the cluster does
            names = [f"CUDA{v.strip()}" for v in vis.split(",")] if vis else accel
            cache[name] = placement_from_log(text, prof, names, r["engine"], r.get("argv") or ())
        p = cache[name]
        if p is None:
            continue
        r["placement"] = placement_to_dict(p)
        ctx = int(r.get("n_prompt", 512)) + int(r.get("n_gen", 64))
        r["as_run"] = price_placement(prof, cluster, p, ctx=ctx, ubatch=int(r.get("ubatch", 512)), params=params)
    return records


# --------------------------------------------------------------------------------------------
# reading records, the comparison table and the chart
# --------------------------------------------------------------------------------------------

def load_records(paths: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Records from JSONL files (one record per line; blank lines skipped)."""
    out: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise InvalidArgumentError(f"no records file {path}", hint="pass the records.jsonl that `omni-place bench` wrote")
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise InvalidArgumentError(f"{path}:{i}: not a JSON record: {err.msg}") from None
            if not isinstance(rec, dict) or "engine" not in rec or "status" not in rec:
                raise InvalidArgumentError(f"{path}:{i}: not an omni_place bench record",
                                           hint="records come from `omni-place bench` / benchmarks/engine_compare.py")
            out.append(rec)
    return out


def _kind(test: str) -> str:
    return "pp" if test.startswith("pp") and "+" not in test else "tg"


def final_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (rig, model, engine, config): the successful attempt, else the last one."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r.get("rig", ""), r.get("model", ""), r["engine"], r["config"]), []).append(r)
    rows = []
    for key, recs in groups.items():
        by_att: dict[int, list[dict[str, Any]]] = {}
        for r in recs:
            by_att.setdefault(int(r.get("attempt", 0)), []).append(r)
        ok = [a for a, rs in by_att.items() if all(x["status"] == OK for x in rs)]
        att = min(ok) if ok else max(by_att)
        rs = by_att[att]
        row: dict[str, Any] = {"rig": key[0], "model": key[1], "engine": key[2], "config": key[3],
                               "argv": rs[0].get("argv", []), "attempts": len(by_att), "status": rs[0]["status"]}
        for r in rs:
            k = _kind(r["test"])
            row[k] = r.get("avg_ts")
            row[k + "_sd"] = r.get("stddev_ts")
            row[k + "_test"] = r["test"]
            pred = r.get("as_run") or r.get("predicted") or {}
            row[k + "_pred"] = pred.get(k + "_tps") if isinstance(pred, dict) else None
            if r["status"] != OK:
                row["status"] = r["status"]
        pred = rs[0].get("predicted") or {}
        row["pred_feasible"] = pred.get("feasible") if isinstance(pred, dict) else None
        row["failed_attempts"] = [{"argv": v[0].get("argv"), "status": v[0]["status"],
                                   "pred_feasible": (v[0].get("predicted") or {}).get("feasible")}
                                  for a, v in sorted(by_att.items()) if a != att]
        rows.append(row)
    order = {c: i for i, c in enumerate(CONFIG_ORDER)}
    rows.sort(key=lambda r: (r["rig"], r["model"], ENGINES.index(r["engine"]) if r["engine"] in ENGINES else 9,
                             order.get(r["config"], 99)))
    return rows


def _fmt(v: Any, sd: Any = None) -> str:
    if v is None:
        return "-"
    s = f"{v:.1f}"
    if sd is not None:
        s += f" ±{sd:.1f}"
    return s


def comparison_table(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table: per rig/model/engine, each configuration's measured pp/tg (mean ± sd of
    the repetitions), omni_place's prediction, and failures."""
    rows = final_rows(records)
    head = ("| rig | model | engine | config | flags | pp t/s | tg t/s | pred pp | pred tg | status |\n"
            "|---|---|---|---|---|---:|---:|---:|---:|---|")
    lines = [head]
    for r in rows:
        flags = shlex.join(r["argv"]) if r["argv"] else "(none)"
        if len(flags) > 60:
            flags = flags[:57] + "..."
        status = r["status"]
        if r["failed_attempts"]:
            status += f" (after {len(r['failed_attempts'])} failed: " + ", ".join(
                f"{shlex.join(f['argv'] or [])} {f['status']}" for f in r["failed_attempts"]) + ")"
        lines.append(f"| {r['rig']} | {r['model']} | {r['engine']} | {r['config']} | `{flags}` | "
                     f"{_fmt(r.get('pp'), r.get('pp_sd'))} | {_fmt(r.get('tg'), r.get('tg_sd'))} | "
                     f"{_fmt(r.get('pp_pred'))} | {_fmt(r.get('tg_pred'))} | {status} |")
    return "\n".join(lines)


def svg_chart(records: Sequence[dict[str, Any]], metric: str = "tg") -> str:
    """A grouped bar chart (one group per rig/model/engine, one bar per configuration) of the
    measured ``metric`` tok/s; failed configurations are drawn as an 'OOM'/'fail' mark."""
    rows = final_rows(records)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(f"{r['rig']} {r['model']} {r['engine']}", []).append(r)
    colors = {"default": "#9e9e9e", "fit": "#1f77b4", "ot-exps": "#ff7f0e", "ncmoe": "#2ca02c",
              "ngl": "#8c564b", "omni_place": "#d62728"}
    vmax = max([r.get(metric) or 0 for r in rows] + [1.0])
    bw, gap, h, top, left = 22, 30, 260, 40, 60
    width = left + sum(len(g) * bw + gap for g in groups.values()) + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + top + 150}" font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="20" font-size="14">measured {metric} tok/s (llama-bench, mean of repetitions; error bar = 1 sd)</text>',
           f'<line x1="{left}" y1="{top + h}" x2="{width - 10}" y2="{top + h}" stroke="#000"/>']
    for k in range(5):
        v = vmax * k / 4
        y = top + h - h * k / 4
        out.append(f'<text x="{left - 5}" y="{y + 4:.0f}" text-anchor="end">{v:.0f}</text>'
                   f'<line x1="{left}" y1="{y:.0f}" x2="{width - 10}" y2="{y:.0f}" stroke="#ddd"/>')
    x = left + 10
    for gname, grs in groups.items():
        x0 = x
        for r in grs:
            v = r.get(metric)
            c = colors.get(r["config"], "#555")
            if v:
                bh = h * v / vmax
                out.append(f'<rect x="{x}" y="{top + h - bh:.1f}" width="{bw - 4}" height="{bh:.1f}" fill="{c}">'
                           f'<title>{r["config"]}: {v:.1f}</title></rect>')
                sd = r.get(metric + "_sd") or 0
                if sd:
                    y1, y2 = top + h - h * (v + sd) / vmax, top + h - h * max(0, v - sd) / vmax
                    out.append(f'<line x1="{x + (bw - 4) / 2}" y1="{y1:.1f}" x2="{x + (bw - 4) / 2}" y2="{y2:.1f}" stroke="#000"/>')
                out.append(f'<text x="{x + (bw - 4) / 2}" y="{top + h - bh - 3:.1f}" text-anchor="middle" font-size="9">{v:.0f}</text>')
            else:
                mark = "OOM" if str(r["status"]).startswith("oom") else "fail"
                out.append(f'<text x="{x + (bw - 4) / 2}" y="{top + h - 4}" text-anchor="middle" font-size="8" '
                           f'fill="{c}" transform="rotate(-90 {x + (bw - 4) / 2} {top + h - 4})">{mark}</text>')
            out.append(f'<text x="{x + 6}" y="{top + h + 8}" font-size="9" transform="rotate(60 {x + 6} {top + h + 8})">{r["config"]}</text>')
            x += bw
        out.append(f'<text x="{(x0 + x) / 2:.0f}" y="{top + h + 95}" text-anchor="middle" font-size="10">{gname}</text>')
        x += gap
    out.append("</svg>")
    return "\n".join(out)


def target_check(records: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's targets per rig/model/engine: omni_place's tg >= fit's and every recipe's;
    its pp not below fit's. One line each, with the margins."""
    rows = final_rows(records)
    out = []
    groups: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["rig"], r["model"], r["engine"]), {})[r["config"]] = r
    for key, cfgs in groups.items():
        om = cfgs.get("omni_place")
        if om is None or not om.get("tg"):
            out.append(f"{' / '.join(key)}: omni_place has no measurement ({om['status'] if om else 'not run'})")
            continue
        parts = []
        for name, r in cfgs.items():
            if name == "omni_place":
                continue
            if not r.get("tg"):
                parts.append(f"{name} {r['status']}")
                continue
            d = (om["tg"] / r["tg"] - 1) * 100
            s = f"tg vs {name} {d:+.1f}%"
            if name == "fit" and r.get("pp") and om.get("pp"):
                s += f", pp vs fit {(om['pp'] / r['pp'] - 1) * 100:+.1f}%"
            parts.append(s)
        out.append(f"{' / '.join(key)}: " + "; ".join(parts))
    return out


def run_bench(model_path: str, cluster: Any, binaries: dict[str, str], out_dir: Path, *, n_prompt: int = 512,
              n_gen: int = 64, ubatch: int = 512, reps: int = 3, threads: int | None = None,
              objective: str | float = "tg", params: Any = None, configs: Sequence[str] = CONFIG_ORDER,
              rig: str | None = None, progress_stream: TextIO | None = sys.stderr,
              timeout: float = 900) -> list[dict[str, Any]]:
    """Build, run and price the whole comparison in one process (the ``bench`` command)."""
    matrix = build_matrix(model_path, cluster, list(binaries), n_prompt=n_prompt, n_gen=n_gen, ubatch=ubatch,
                          reps=reps, threads=threads, objective=objective, params=params, configs=configs, rig=rig)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "matrix.json").write_text(json.dumps(matrix, indent=1))
    records = run_matrix(matrix, binaries, out_dir, progress_stream=progress_stream, timeout=timeout)
    attach_placements(records, model_path, cluster, out_dir / "logs", params)
    (out_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


__all__ = [
    "CONFIG_ORDER",
    "ENGINES",
    "Attempt",
    "BenchConfig",
    "attach_placements",
    "build_configs",
    "build_matrix",
    "classify_failure",
    "comparison_table",
    "engine_of_binary",
    "final_rows",
    "load_records",
    "parse_output",
    "placement_from_log",
    "price_placement",
    "run_bench",
    "run_matrix",
    "svg_chart",
    "target_check",
]
