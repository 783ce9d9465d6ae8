"""The memory model against real CUDA loads: the llama-bench logs of the H200 run
(benchmarks/results/engine_compare: mainline llama.cpp built for sm_90, synthetic 33 GB MoE and
15 GB dense models, one and two GPUs). Every configuration that loaded is re-priced with
``evaluate`` from the same model header, cluster file and flags:

* model bytes per CUDA device (CUDA row padding and alignment included) within max(1 %, 16 MiB);
* compute buffers never under-predicted by more than 1 MiB (the direction that turns a plan that
  "fits" into an out-of-memory).
"""
from __future__ import annotations

import lzma
import re
import shlex
import tarfile
from pathlib import Path

import pytest

from omni_place.plan import evaluate
from omni_place.units import MiB

ROOT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "engine_compare"
_MODEL = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_COMPUTE = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s+([\d.]+) MiB")


def loaded_runs(engine: str, fit_flag: str, failures: tuple[str, ...] = ("failed to",)) -> list[
        tuple[str, str, list[str], str]]:
    """(model, rig, engine flags, log text) of every run of ``engine`` that loaded and created
    its contexts: not one whose log shows ``failures``, nor a --fit run (``fit_flag``: it rewrites
    the flags itself, so they do not tell the placement)."""
    out = []
    with tarfile.open(ROOT / "logs.tar.xz") as tar:
        for name in sorted(tar.getnames()):
            if not name.endswith(".log") or f"/{engine}." not in name or not name.startswith("./res/"):
                continue
            log = tar.extractfile(name).read().decode()  # type: ignore[union-attr]
            cmd = next((line for line in log.splitlines() if line.startswith("$ ")), None)
            if (cmd is None or "compute buffer size" not in log or any(f in log for f in failures)
                    or fit_flag in cmd):
                continue
            argv = shlex.split(cmd[2:])
            model, rig = name.split("/")[2].split(".", 1)
            out.append((model, rig, argv[argv.index("-v") + 1:], log))
    return out


def mainline_loads() -> list[tuple[str, str, list[str], str]]:
    """(model, rig, engine flags, first load's log text) of every mainline run that loaded (not
    OOM at load, context or first decode)."""
    return [(model, rig, flags, log.split("llama_context: n_ctx                 = 256")[0])
            for model, rig, flags, log in loaded_runs("llama.cpp", "-fitt", ("failed to", "CUDA error"))]


LOADS = mainline_loads()


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hdr")
    out = {}
    for model in ("dense15", "moe33"):
        out[model] = d / f"{model}.gguf"
        out[model].write_bytes(lzma.decompress((ROOT / f"{model}.hdr.gguf.xz").read_bytes()))
    return out


def test_the_records_are_here() -> None:
    assert len(LOADS) >= 8


@pytest.mark.parametrize("model,rig,flags,log", LOADS, ids=[f"{m}-{r}-{' '.join(f)[:40]}" for m, r, f, _ in LOADS])
def test_cuda_loads_priced_as_the_engine_allocated(headers: dict[str, Path], model: str, rig: str,
                                                    flags: list[str], log: str) -> None:
    plan = evaluate(headers[model], str(ROOT / f"{rig}.toml"), flags + ["-c", "512", "-ub", "512", "-fa", "1"],
                    tool="bench")
    weights = {m[1]: float(m[2]) * MiB for m in _MODEL.finditer(log)}
    compute = {m[1]: float(m[2]) * MiB for m in _COMPUTE.finditer(log)}
    checked = 0
    for u in plan.usage:
        if not u.name.startswith("CUDA") or u.name not in compute:
            continue
        checked += 1
        eng = weights.get(u.name, 0.0)
        assert abs(u.weights_bytes - eng) <= max(0.01 * eng, 16 * MiB), (u.name, u.weights_bytes / MiB, eng / MiB)
        # compute buffers: never below the engine by more than 32 MiB (the fitted model's target,
        # omni_place/compute.py), and not the multiples over it of the old widest-op bound
        eng_c = compute[u.name]
        assert eng_c - 32 * MiB <= u.compute_bytes <= max(1.35 * eng_c, eng_c + 32 * MiB), (
            u.name, u.compute_bytes / MiB, eng_c / MiB)
    assert checked


_IK_COMPUTE = re.compile(r"llama_init_from_model:\s+(CUDA\d) compute buffer size =\s+([\d.]+) MiB")


def ik_loads() -> list[tuple[str, str, list[str], dict[str, float]]]:
    """(model, rig, flags, the first context's CUDA compute buffers in MiB) of every
    ik_llama.cpp run of the same H200 records that created its contexts."""
    out = []
    for model, rig, flags, log in loaded_runs("ik_llama.cpp", "--fit"):
        compute: dict[str, float] = {}
        for dev, mib in _IK_COMPUTE.findall(log):
            compute.setdefault(dev, float(mib))
        out.append((model, rig, flags, compute))
    return out


IK_LOADS = ik_loads()


@pytest.mark.parametrize("model,rig,flags,compute", IK_LOADS,
                         ids=[f"{m}-{r}-{' '.join(f)[:40]}" for m, r, f, _ in IK_LOADS])
def test_ik_compute_buffers_do_not_hold_expert_copies(headers: dict[str, Path], model: str, rig: str,
                                                      flags: list[str], compute: dict[str, float]) -> None:
    """ik_llama.cpp's first GPU did not grow with routed experts in RAM (48-136 MiB where
    mainline's held 276-436 MiB of expert copies): priced without them, never under the engine,
    and no longer hundreds of MiB over it."""
    plan = evaluate(headers[model], str(ROOT / f"{rig}.toml"), flags, engine="ik_llama.cpp", tool="bench", ctx=576)
    checked = 0
    for u in plan.usage:
        if u.name in compute:
            checked += 1
            eng = compute[u.name] * MiB
            assert eng - 1 * MiB <= u.compute_bytes <= eng + 160 * MiB, (u.name, u.compute_bytes / MiB, eng / MiB)
    assert checked


def test_ik_records_are_here() -> None:
    assert len(IK_LOADS) >= 8 and any("exps=CPU" in " ".join(f) for _, _, f, _ in IK_LOADS)
