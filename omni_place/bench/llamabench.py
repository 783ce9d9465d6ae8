"""Calibration points from plain llama-bench output: ``-o jsonl`` (mainline) or ``-o json`` (either
fork), as a file of its own or inside the run's ``-v`` log (``2>&1``).

Each record is one test of one configuration. Its fields become that test's llama-bench command
line through the engine's dialect (:meth:`~omni_place.engines.Dialect.bench_record_flags`), which
the dialect's own parser and decoder turn into the :class:`~omni_place.cost.Placement` and the
context the engine ran, exactly as ``omni-place check --tool bench`` prices a command line. Where
the file also holds the ``-v`` log of a single configuration (or one load per configuration),
the placement is read from the log instead, which is the only way to know where a fitter
(mainline ``-fitt``, ik ``--fit``) put the layers. A record that cannot be used is skipped and
counted by reason, never an error; only a file with no usable record is.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cost import Placement
from ..devices import Cluster
from ..engines import dialect, engine_of_bench_record
from ..engines.common import ParsedArgs
from ..errors import InvalidArgumentError, OmniPlaceError
from ..model import ModelProfile
from ..validate import STRICT_JSON, decode_text, number, read_file
from .calibrate import Point
from .logread import LOAD_START, placement_from_log
from .records import MAX_TPS, UNSTEADY_SPREAD, placement_from_dict, placement_to_dict, sample_spread, steady_tps

MAX_OUTPUT_BYTES = 1 << 26  # a mainline -fitt -v log is ~10 MiB; output alone is a few KiB per test
_HINT = ("give llama-bench's own output: `llama-bench ... -o jsonl` (mainline) or `-o json` (ik_llama.cpp), "
         "with -v and 2>&1 to keep the log")


def scan_objects(text: str) -> tuple[list[Any], int]:
    """(values, bad): the JSON values of llama-bench output -- a whole JSON document (ik's array),
    else every object that starts a line (jsonl, or an array's items inside a log or cut short by
    a crash) -- and how many candidate objects were not strict JSON. Linear in the text: a failed
    object resumes the scan where the decoder stopped."""
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            doc = STRICT_JSON.decode(stripped)
            return (doc if isinstance(doc, list) else [doc]), 0
        except (ValueError, RecursionError):
            pass
    out: list[Any] = []
    bad = 0
    pos, n = 0, len(text)
    while pos < n:
        line_end = text.find("\n", pos)
        line_end = n if line_end < 0 else line_end
        start = pos + len(text[pos:line_end]) - len(text[pos:line_end].lstrip())
        if start < line_end and text[start] == "{":
            try:
                obj, end = STRICT_JSON.raw_decode(text, start)
                out.append(obj)
                pos = end
                continue
            except json.JSONDecodeError as err:
                bad += 1
                pos = max(line_end, err.pos)
                continue
            except (ValueError, RecursionError):
                bad += 1
        pos = line_end + 1
    return out, bad


@dataclass
class Imported:
    """What one import produced: calibration points and the skipped records by reason."""

    points: list[Point] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    read: int = 0  # records read (usable or not)

    def add(self, other: Imported) -> None:
        self.points += other.points
        self.skipped.update(other.skipped)
        self.read += other.read

    def summary(self) -> str:
        """``12 records, 9 used; skipped: 2 prompt+generation tests (-pg), 1 ...``."""
        s = f"{self.read} record{'' if self.read == 1 else 's'}, {len(self.points)} used"
        if self.skipped:
            s += "; skipped: " + "; ".join(f"{n} x {why}" for why, n in self.skipped.most_common())
        return s


@dataclass
class _Run:
    """One record made ready: its engine, flags, parsed command line and measurement."""

    index: int
    record: dict[str, Any]
    engine: str
    argv: tuple[str, ...]
    parsed: ParsedArgs
    fitted: str | None
    threads: int | None
    measured: float
    kind: str

    @property
    def config(self) -> tuple[Any, ...]:
        """What decides the model load: llama-bench loads again only when these change."""
        p = self.parsed
        return (self.engine, p.n_gpu_layers, tuple(p.tensor_split or ()), tuple(p.devices or ()),
                tuple(p.overrides), p.split_mode, p.main_gpu, p.n_cpu_moe, self.fitted)


#: the skip reason of a test whose repetitions differ by more than records.UNSTEADY_SPREAD
UNSTEADY = (f"unsteady: its repetitions differ by more than {UNSTEADY_SPREAD:.0%}, the machine's speed moved "
            "(rerun it on an idle machine)")


def _short(message: str) -> str:
    return message if len(message) <= 160 else message[:157] + "..."


def _prepare(i: int, rec: Any, engine: str | None, skipped: Counter[str]) -> _Run | None:
    if not isinstance(rec, dict) or "avg_ts" not in rec:
        skipped["not a llama-bench test record (an object with avg_ts)"] += 1
        return None
    eng = engine or engine_of_bench_record(rec)
    if eng is None:
        skipped["engine not recognised from the record's fields (pass --engine)"] += 1
        return None
    try:
        measured = number(rec["avg_ts"], "avg_ts", lo=0.0, lo_open=True, hi=MAX_TPS)
        rules = dialect(eng)
        flags = rules.bench_record_flags(rec)
        parsed = rules.parse_args(list(flags.argv), "bench")
    except OmniPlaceError as err:
        skipped[_short(err.message)] += 1
        return None
    if parsed.no_host:
        skipped["--no-host 1: its CPU weights in extra buffers (CPU_REPACK, AMX) are not priced"] += 1
        return None
    if parsed.split_mode not in ("layer", "none"):
        skipped[f"-sm {_short(parsed.split_mode)}: calibration fits the layer split's speeds"] += 1
        return None
    if parsed.n_prompt and parsed.n_gen:
        skipped["prompt+generation test (-pg): its rate mixes both"] += 1
        return None
    if not parsed.n_prompt and not parsed.n_gen and not parsed.gp_tests:  # ik's -gp D,N: N decodes
        skipped["a test of no tokens"] += 1
        return None
    if sample_spread(rec, eng, bool(parsed.n_prompt)) > UNSTEADY_SPREAD:
        skipped[UNSTEADY] += 1
        return None
    # ik's first prompt repetition runs cold: priced is the warm speed (records.steady_tps)
    measured = steady_tps(rec, eng, bool(parsed.n_prompt)) or measured
    return _Run(i, rec, eng, flags.argv, parsed, flags.fitted, flags.threads, measured,
                "pp" if parsed.n_prompt else "tg")


def _with_threads(cluster: Cluster, threads: int | None, cache: dict[int, Cluster]) -> Cluster:
    """The cluster with its CPU running ``threads`` threads (llama-bench -t), one object per count."""
    if threads is None:
        return cluster
    if threads not in cache:
        cache[threads] = cluster.with_cpu_threads(threads)
    return cache[threads]


def _log_parts(text: str, runs: Sequence[_Run]) -> dict[tuple[Any, ...], str]:
    """The part of the file's -v log per configuration: the whole log for a file of one
    configuration (a fitter loads several times, once per test), else load i for configuration i
    when there is one load per configuration; nothing when the file has no log or they cannot
    be paired."""
    if LOAD_START not in text or not runs:
        return {}
    configs = list(dict.fromkeys(r.config for r in runs))
    if len(configs) == 1:
        return {configs[0]: text}
    parts = text.split(LOAD_START)[1:]
    return {cfg: LOAD_START + part for cfg, part in zip(configs, parts)} if len(configs) == len(parts) else {}


def _log_placement(log: str, run: _Run, n_ubatch: int | None, model: ModelProfile,
                   cluster: Cluster) -> Placement | None:
    """The placement a run had, from its part of the -v log: the load that served a context of
    ``n_ubatch`` (a prompt test's, :func:`~.logread.load_serving`), else the last (a decode test's)."""
    p = placement_from_log(log, model, [d.name for d in cluster.gpus], run.engine, run.argv, n_ubatch=n_ubatch)
    # a log naming devices the cluster lacks is refused here (InvalidArgumentError)
    return None if p is None else placement_from_dict(placement_to_dict(p), model, cluster,
                                                      "the placement in the -v log")


def import_text(text: str, model: ModelProfile, cluster: Cluster, *, engine: str | None = None,
                source: str = "output") -> Imported:
    """Calibration points from the text of plain llama-bench output (``source`` names it in
    each point's configuration)."""
    result = Imported()
    values, bad = scan_objects(text)
    result.skipped.update({"not strict JSON (NaN, Infinity, a cut-off or malformed object)": bad} if bad else {})
    result.read = len(values) + bad
    runs = [r for i, v in enumerate(values) if (r := _prepare(i, v, engine, result.skipped)) is not None]
    logs = _log_parts(text, runs)
    logs_usable = bool(logs)  # one unusable log stops reading the rest: their runs price their flags
    from_log: dict[tuple[Any, ...], Placement | None] = {}  # (configuration, prompt ubatch) -> placement
    labels = {cfg: f"{source}#{k + 1}" for k, cfg in enumerate(dict.fromkeys(r.config for r in runs))}
    thread_clusters: dict[int, Cluster] = {}
    n_ctx_train = model.hparams.n_ctx_train
    for run in runs:
        rules = dialect(run.engine)
        try:
            _, context = rules.run_context(run.parsed, "bench", n_ctx_train)
            model.check_kv_types(context.type_k, context.type_v, context.flash_attn)
            key = (run.config, context.n_ubatch if run.kind == "pp" else None)
            if logs_usable and run.config in logs and key not in from_log:  # a pp and a tg run share a load
                try:
                    from_log[key] = _log_placement(logs[run.config], run, key[1], model, cluster)
                except OmniPlaceError as err:  # counted once; the runs fall back to their flags
                    result.skipped[_short(f"-v log not used: {err.message}")] = 1
                    logs_usable = False
            placement = from_log.get(key)
            if placement is None and run.fitted:
                result.skipped[f"placed by the engine's fitter ({run.fitted}): needs the run's -v log"] += 1
                continue
            if placement is None:
                placement = rules.decode(model, run.parsed, cluster, context, "bench")
        except OmniPlaceError as err:
            result.skipped[_short(err.message)] += 1
            continue
        test = f"{run.kind}{run.parsed.n_prompt or run.parsed.n_gen}"
        record = {"engine": run.engine, "config": labels[run.config], "test": test, "rig": cluster.name,
                  "model": model.name, "avg_ts": run.measured, "placement": placement_to_dict(placement)}
        result.points.append(Point(record, model, _with_threads(cluster, run.threads, thread_clusters), placement,
                                   run.kind, run.measured, context.ctx, context.n_ubatch, context))
    return result


def import_files(paths: Sequence[str | Path], model: ModelProfile, cluster: Cluster, *,
                 engine: str | None = None) -> Imported:
    """:func:`import_text` over files (regular files of at most MAX_OUTPUT_BYTES, text)."""
    out = Imported()
    for p in paths:
        path = Path(p)
        raw = read_file(path, limit=MAX_OUTPUT_BYTES, what="llama-bench output")
        text = decode_text(raw, f"llama-bench output {path}",
                           error=lambda m: InvalidArgumentError(m, hint=_HINT))
        out.add(import_text(text, model, cluster, engine=engine, source=path.name))
    return out


def require_points(imported: Imported, what: str) -> list[Point]:
    """The points, or one error naming why none could be used."""
    if not imported.points:
        raise InvalidArgumentError(f"no usable llama-bench records in {what} ({imported.summary()})", hint=_HINT)
    return imported.points


__all__ = ["MAX_OUTPUT_BYTES", "Imported", "import_files", "import_text",
           "require_points", "scan_objects"]
