"""omni_place's ``--fit`` emulation against every ``--fit`` placement the repository recorded.

The llama-bench ``-fitt`` runs of ``benchmarks/results/engine_compare`` (2x H200 held to 12 + 4
GiB and 12 GiB), ``speed_truth`` and ``plans_vs_fit`` (one H200 at three memory levels) kept
their ``-v`` logs. llama-bench fits each test anew
(``tools/llama-bench/llama-bench.cpp:2327-2358``) at that test's context (``n_ctx`` = prompt +
generated tokens, padded to 256; ``n_ubatch`` capped by it), so a log holds one fitted load per
test (its weights allocated; the fitter's probes allocate none), in the order of the tests' JSON
records. Each is emulated (:func:`omni_place.fitemu.fit_style`) on the free memory the fit's
first probe reports per device (a test leaves less free for the next one's fit), at that load's
``n_ctx`` / ``n_ubatch``, and compared with the placement the engine made
(:func:`omni_place.bench.logread.placement_from_log`): layer homes, where each layer's routed
experts live, the output head.

    python -m benchmarks.fit_emulation --headers HDR [--json OUT]

HDR holds ``moe33``/``dense15`` (``engine_compare/*.hdr.gguf.xz``, decompressed) and
``dense11``/``moe15``/``mla16`` (``python -m benchmarks.speed_truth models HDR --header-only``).
"""
from __future__ import annotations

import argparse
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from omni_place.bench.logread import placement_from_log
from omni_place.cost import CPU, CostModel, Placement, expert_kind
from omni_place.devices import Cluster, Device
from omni_place.engines import dialect
from omni_place.model import ModelProfile, load_model
from omni_place.units import GiB, MiB

RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = ("engine_compare", "speed_truth", "plans_vs_fit")
FIT_MARGIN = 1024 * MiB  # every recorded run used -fitt 1024

_FREE = re.compile(r"llama_prepare_model_devices: using device (\S+) \(.*? - (\d+) MiB free")
_RECORD = re.compile(r'^\{"build_commit".*$', re.M)
_LOAD = re.compile(r"llama_model_loader: loaded meta data")
_MODEL_BUFFER = re.compile(r"load_tensors: +\S+ model buffer size = +([0-9.]+) MiB")
_N_CTX = re.compile(r"llama_context: n_ctx += (\d+)")
_N_UBATCH = re.compile(r"llama_context: n_ubatch += (\d+)")


@dataclass(frozen=True)
class FittedLoad:
    """One fitted load of a recorded log: what the engine placed, and what the fitter saw."""

    source: str  # the log's path in its archive
    model: str  # speed/engine_compare model name (the header's stem)
    test: str  # "pp512", "tg32", ...
    free_mib: tuple[tuple[str, int], ...]  # per device, as this fit's first probe saw it
    n_ctx: int
    n_ubatch: int
    text: str  # the log up to the end of this test's load


def recorded_fits(results: Path = RESULTS) -> Iterator[FittedLoad]:
    """Every mainline ``-fitt`` load recorded under ``results`` (a load whose test has no
    record, e.g. a failed run, is left out)."""
    for src in SOURCES:
        with tarfile.open(results / src / "logs.tar.xz") as tar:
            for m in sorted(tar.getmembers(), key=lambda m: m.name):
                if not re.search(r"/llama\.cpp\.fit\.\d+\.log$", m.name):
                    continue
                fh = tar.extractfile(m)
                log = fh.read().decode(errors="replace") if fh else ""
                model = m.name.split("/")[-2].split(".")[0]
                starts = [x.start() for x in _LOAD.finditer(log)] + [len(log)]
                loads = [end for start, end in zip(starts, starts[1:])  # allocated: no probe
                         if any(float(x) > 0 for x in _MODEL_BUFFER.findall(log[start:end]))]
                for rec, begin, end in zip(_RECORD.finditer(log), [0] + loads, loads):
                    r = json.loads(rec.group(0))
                    free: dict[str, int] = {}
                    for d, mib in _FREE.findall(log[begin:end]):  # the fit's first probe (a test
                        free.setdefault(d, int(mib))  # before it may have left less free)
                    text = log[:end]
                    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
                    yield FittedLoad(f"{src}:{m.name}", model, test, tuple(free.items()),
                                     int(_N_CTX.findall(text)[-1]), int(_N_UBATCH.findall(text)[-1]), text)


def cluster_of(load: FittedLoad) -> Cluster:
    """The devices as the fitter saw them: each GPU's free memory, ``-fitt``'s margin."""
    gpus = [Device(name, "gpu", mib * MiB, 4800.0, free_bytes=mib * MiB, margin_bytes=FIT_MARGIN, tflops=700.0,
                   link_gbs=55.0) for name, mib in load.free_mib]
    return Cluster("recorded", (*gpus, Device(CPU, "cpu", 200 * GiB, 50.0, threads=16, margin_bytes=0)))


def same_placement(model: ModelProfile, a: Placement, b: Placement) -> bool:
    """Layer homes, output and the homes of the expert kinds each layer has (a log names only
    those; the emulation may name absent kinds too)."""
    kinds = [{expert_kind(t) for t in lc.expert_tensors} for lc in model.layers]

    def homes(p: Placement) -> list[frozenset[tuple[str, str]]]:
        return [frozenset((k, d) for k, d in h if k in kinds[il]) for il, h in enumerate(p.expert_homes)]
    return a.layer_home == b.layer_home and a.output == b.output and homes(a) == homes(b)


def describe(model: ModelProfile, p: Placement) -> str:
    """Per device: layers (whole / experts in RAM / experts on another GPU), and the output."""
    out = []
    for dev in dict.fromkeys(h for h in p.layer_home if h != CPU):
        ils = p.layers_on(dev)
        ram = sum(1 for il in ils if p.cpu_experts[il] and model.layers[il].has_experts)
        away = [f"{il}->{','.join(d for d in p.experts_away(il) if d != CPU)}" for il in ils
                if any(d != CPU for _, d in p.expert_homes[il])]
        out.append(f"{dev}:{len(ils)}" + (f"/{ram}ram" if ram else "") + (f"/{' '.join(away)}" if away else ""))
    return " ".join(out) + f" out={p.output}"


def compare(headers: Path, emulate: Callable[[CostModel], Placement]) -> list[dict[str, object]]:
    """One row per recorded load that placed anything: the engine's placement, the emulated one
    (when they differ), and whether they are the same."""
    rules = dialect("llama.cpp")
    models: dict[str, ModelProfile] = {}
    rows = []
    for load in recorded_fits():
        model = models.setdefault(load.model, load_model(headers / f"{load.model}.hdr.gguf"))
        names = [d for d, _ in load.free_mib]
        got = placement_from_log(load.text, model, names, "llama.cpp")
        if got is None:
            continue
        cost = CostModel(model, cluster_of(load), rules.traits.context(ctx=load.n_ctx, n_ubatch=load.n_ubatch))
        want = emulate(cost)
        rows.append({"log": load.source, "test": load.test, "n_ctx": load.n_ctx, "n_ubatch": load.n_ubatch,
                     "free_mib": dict(load.free_mib), "engine": describe(model, got),
                     "emulated": describe(model, want), "exact": same_placement(model, got, want)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--headers", required=True, type=Path)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    from omni_place.fitemu import fit_style

    rows = compare(a.headers, fit_style)
    for r in rows:
        mark = "ok " if r["exact"] else "DIFF"
        print(f"{mark} {r['log']} {r['test']} ctx={r['n_ctx']} ub={r['n_ubatch']} engine=[{r['engine']}]"
              + ("" if r["exact"] else f" emulated=[{r['emulated']}]"))
    print(f"exact: {sum(bool(r['exact']) for r in rows)} / {len(rows)}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
