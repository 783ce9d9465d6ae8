"""Issue 17, engine/CLI/security boundaries: every class of hostile or careless input to the
engine flags (`check -- ARGS`, evaluate()), the libllama loader and verify, the terminal and the
reference-model cache becomes one `error:` + `hint:` line with the exit code that says whose
fault it is, or the right result -- never a traceback, a hang or a silent wrong price."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from omni_place.cli import main
from omni_place.errors import InvalidArgumentError
from omni_place.model import load_model
from omni_place.plan import evaluate, plan_split
from omni_place.reference_models import cached_reference_model, write_header_only
from omni_place.termtext import printable

from .arch_models import tiny_llama_spec
from .clusters import cluster_toml

TWO_GPUS = cluster_toml("two", ("CUDA0", "gpu", 24, 900), ("CUDA1", "gpu", 24, 900))


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(args)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue()


def assert_error(code: int, out: str, err: str, fragment: str, exit_code: int = 2) -> None:
    assert "Traceback" not in err, err
    assert (code, out) == (exit_code, ""), (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), err
    assert fragment in lines[0], err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_header_only(tiny_llama_spec(), tmp_path_factory.mktemp("m") / "tiny.gguf")[0])


@pytest.fixture(scope="module")
def two_gpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("c") / "two.toml"
    path.write_text(TWO_GPUS)
    return str(path)


# --- engine flags: values the engine refuses are refused ----------------------------------------

REFUSED = [
    (["-ub", "-1"], "-ub"), (["-c", "-5"], "context length"), (["-b", "0"], "-b"),
    (["-ts", "nan,1"], "finite"), (["-ts", "inf"], "finite"), (["-ts", "1,-1"], "negative"),
    (["-ts", ",".join(["1"] * 17)], "at most 16"), (["-ts", "1e39,1"], "32-bit float"),
    (["-ts", "3.4e38,3.4e38"], "split is undefined"), (["-ngl", "99999999999"], "32-bit"),
    (["-ngl", "١٢"], "not an integer"), (["-c", "1_000"], "not an integer"), (["-fa", "banana"], "-fa"),
    (['-ot "blk\\.0\\.=CPU'], "quotation"), (["-ngl", "99", "stray"], "stray"),
    (["-sm", "none", "-mg", "5"], "main GPU"), (["-sm", "row"], "split buffer"), (["-dev", "CUDA0,CUDA0"], "twice"),
    (["-ot", "(" * 5000 + "a" + ")" * 5000 + "=CPU"], "-ot pattern"),
]


@pytest.mark.parametrize("args,fragment", REFUSED, ids=[" ".join(a)[:30] for a, _ in REFUSED])
def test_flags_the_engine_refuses_are_one_line_errors(tiny: str, two_gpus: str, args: list[str],
                                                      fragment: str) -> None:
    assert_error(*run(["check", tiny, "--cluster", two_gpus, "--", *args]), fragment)


def test_catastrophic_ot_pattern_is_refused_in_bounded_time(tiny: str) -> None:
    """A nested bounded repetition backtracks ~0.5 s per tensor name: the matcher's total budget
    (OT_MATCH_SECONDS) stops it with a one-line error instead of hanging (so would the engine)."""
    from omni_place.engines.common import OT_MATCH_SECONDS
    from omni_place.engines.llama_cpp import placement_with_overrides

    model = load_model(tiny)
    started = time.monotonic()
    with pytest.raises(InvalidArgumentError, match="catastrophic backtracking"):
        placement_with_overrides(model, ["CUDA0"], ["CUDA0"] * model.n_layer, "CUDA0",
                                 [(r"^((\w|\.){1,4}){1,30}[A-Z]", "CPU")], ["CUDA0"])
    assert time.monotonic() - started < OT_MATCH_SECONDS + 2


def test_huge_n_cpu_moe_builds_one_pattern_not_one_per_layer(tiny: str, two_gpus: str) -> None:
    started = time.monotonic()
    plan = evaluate(tiny, two_gpus, ["-ngl", "99", "-ncmoe", "2147483647"])
    assert time.monotonic() - started < 5
    assert len(plan.overrides) == 1 and len(plan.overrides[0][0]) < 2000
    small = evaluate(tiny, two_gpus, ["-ngl", "99", "-ncmoe", "2"])
    assert [u.weights_bytes for u in plan.usage] == [u.weights_bytes for u in small.usage]


def test_split_mode_none_keeps_the_main_gpu_only(tiny: str, two_gpus: str) -> None:
    plan = evaluate(tiny, two_gpus, ["-sm", "none", "-ngl", "99"])
    assert set(plan.placement.layer_home) == {"CUDA0"}
    plan = evaluate(tiny, two_gpus, ["-sm", "none", "-mg", "1", "-ngl", "99"])
    assert set(plan.placement.layer_home) == {"CUDA1"}
    plan = evaluate(tiny, two_gpus, ["-sm", "none", "-mg", "-1", "-ngl", "99"])
    assert set(plan.placement.layer_home) == {"CPU"}


def test_context_defaults_are_the_engine_tools_own(tiny: str, two_gpus: str) -> None:
    n_ctx_train = load_model(tiny).hparams.n_ctx_train
    for args in ([], ["-c", "0"]):  # llama.cpp: 0 / no -c = the model's training context, not 4096
        plan = evaluate(tiny, two_gpus, ["-ngl", "99", *args])
        assert plan.context.ctx == n_ctx_train
        assert any("training context" in a for a in plan.assumptions)
    assert evaluate(tiny, two_gpus, ["-c", "1024"]).assumptions == []
    # -ub 0 is the logical batch, itself capped by the context (src/llama-context.cpp)
    assert evaluate(tiny, two_gpus, ["-c", "1024", "-ub", "0"]).context.n_ubatch == 1024
    assert evaluate(tiny, two_gpus, ["-c", "8192", "-ub", "0", "-b", "4096"]).context.n_ubatch == 4096
    assert evaluate(tiny, two_gpus, ["-c", "8192", "-ub", "4096"]).context.n_ubatch == 2048
    # llama-bench: no -c; its tests' context, flash attention auto (on: tools/llama-bench/llama-bench.cpp:406)
    bench = evaluate(tiny, two_gpus, ["-ngl", "99"], tool="bench")
    assert (bench.context.ctx, bench.context.flash_attn) == (512, True)
    # ik's llama-bench too, since ik #863 (examples/llama-bench/llama-bench.cpp:299)
    assert evaluate(tiny, two_gpus, ["-ngl", "99"], tool="bench", engine="ik_llama.cpp").context.flash_attn
    bench = evaluate(tiny, two_gpus, ["-p", "64", "-n", "1024", "-d", "100"], tool="bench")
    assert (bench.context.ctx, bench.context.depth) == (1124, 100)


def test_unknown_and_misplaced_flags_are_not_silently_ignored(tiny: str, two_gpus: str) -> None:
    code, out, err = run(["check", tiny, "--cluster", two_gpus, "--", "-c", "1024", "--port", "8080", "-np", "4"])
    assert code == 0 and "warning: not priced" in err and "--port 8080" in err and "-np 4" in err
    assert "assumed: not priced" in out
    for misplaced in (["--ctx", "8192"], ["-ngl", "99"], ["--ubatch=64"]):
        assert_error(*run(["check", tiny, "--cluster", two_gpus, *misplaced, "--", "-c", "1024"]),
                     "not an option of check")


# --- exit codes: whose fault it is ----------------------------------------------------------------

def test_plan_verify_for_an_engine_libllama_cannot_load_errors_before_the_plan(tiny: str) -> None:
    assert_error(*run(["plan", tiny, "--preset", "seed", "--engine", "vllm", "--verify", "--no-certify"]),
                 "--verify")


def test_libllama_that_is_a_fifo_or_a_device_is_refused_without_blocking(tmp_path: Path) -> None:
    from omni_place.errors import LibLlamaNotFoundError
    from omni_place.llama._loader import LibraryLoader

    fifo = tmp_path / "libllama.so"
    os.mkfifo(fifo)
    for spec in (str(fifo), "/dev/zero"):
        with pytest.raises(LibLlamaNotFoundError, match="not a regular file"):
            LibraryLoader({"OMNI_PLACE_LIBLLAMA": spec}).load()


def test_verify_without_a_usable_libllama_is_exit_2_not_4(tiny_llama, tmp_path: Path) -> None:
    """The child finds no libllama: input/environment (exit 2), not "the engine disagrees"."""
    plan_json = tmp_path / "plan.json"
    code, out, _ = run(["plan", str(tiny_llama.path), "--cluster", str(_cpu_only(tmp_path)), "--format", "json",
                        "--no-certify"])
    assert code == 0
    plan_json.write_text(out)
    fifo = tmp_path / "fifo.so"
    os.mkfifo(fifo)
    for bad in (str(fifo), "/dev/zero", str(plan_json)):
        # a fresh process: this one may already hold a libllama, which its probes would reuse
        res = subprocess.run([sys.executable, "-m", "omni_place", "verify", str(tiny_llama.path), "--plan",
                              str(plan_json), "--cluster", str(_cpu_only(tmp_path)), "--dry-run"],
                             env={**os.environ, "OMNI_PLACE_LIBLLAMA": bad}, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 2, (bad, res.stderr)
        assert "libllama" in res.stderr and "Traceback" not in res.stderr


def test_real_load_of_a_header_only_file_is_exit_2(tiny: str, tmp_path: Path) -> None:
    code, out, _ = run(["plan", tiny, "--cluster", str(_cpu_only(tmp_path)), "--format", "json", "--no-certify"])
    (tmp_path / "plan.json").write_text(out)
    assert_error(*run(["verify", tiny, "--plan", str(tmp_path / "plan.json"), "--cluster",
                       str(_cpu_only(tmp_path))]), "header-only")


def test_plan_for_a_gpu_this_machine_lacks_is_exit_2(tiny_llama, tmp_path: Path) -> None:
    from omni_place.devices.nvml import discover_gpus

    if discover_gpus()[0]:
        pytest.skip("this machine has a CUDA0: the plan would load")
    cluster = tmp_path / "far.toml"
    cluster.write_text('[[devices]]\nname = "CUDA0"\nkind = "gpu"\nmemory_gib = 8\nbandwidth_gbs = 900\n')
    code, out, _ = run(["plan", str(tiny_llama.path), "--cluster", str(cluster), "--format", "json", "--no-certify"])
    assert code == 0 and "CUDA0" in out
    (tmp_path / "plan.json").write_text(out)
    assert_error(*run(["verify", str(tiny_llama.path), "--plan", str(tmp_path / "plan.json"), "--cluster",
                       str(cluster), "--dry-run"]), "CUDA0 is not on this machine")


def test_core_status_errors_are_bad_input_not_a_broken_install(tiny: str) -> None:
    from omni_place.cost import Context, CostModel
    from omni_place.devices import resolve_cluster
    from omni_place.problem import build_arrays, candidate_orders, core_candidates

    cluster = resolve_cluster("seed")
    cost = CostModel(load_model(tiny), cluster, Context())
    orders = candidate_orders(cluster, cost)
    arr = build_arrays(cost, orders)
    arr.tg["time"][...] = np.nan  # the real C core answers EINVAL ("non-finite time")
    with pytest.raises(InvalidArgumentError, match="placement core refuses") as info:
        core_candidates(arr, orders, cost, 1.0, 1e-3, {})
    assert "pip install" not in (info.value.hint or "")


def _cpu_only(tmp_path: Path) -> Path:
    path = tmp_path / "cpu.toml"
    path.write_text('[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 64\nbandwidth_gbs = 50\n')
    return path


# --- security: names from files cannot drive the terminal ---------------------------------------

HOSTILE = "evil\x1b[2J\x1b]0;pwned\x07\rerror: forged\nline\u202egnp.exe\x9b31m"


def test_printable_escapes_controls_and_keeps_text() -> None:
    assert printable("DeepSeek-V3.2 é 中文") == "DeepSeek-V3.2 é 中文"
    shown = printable(HOSTILE)
    assert not any(ch in shown for ch in "\x1b\x07\r\n\u202e\x9b")
    assert "\\x1b[2J" in shown and "\\u202e" in shown and "\\x0a" in shown


def _assert_inert(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x07\r\u202e\x9b"), repr(text)
    assert not any(line.startswith(("error: forged", "line")) for line in text.splitlines()), text


def test_hostile_names_are_escaped_in_every_text_output(tmp_path: Path) -> None:
    spec = tiny_llama_spec()
    spec.name = HOSTILE
    model = str(write_header_only(spec, tmp_path / "evil.gguf")[0])
    cluster = tmp_path / "evil.toml"
    cluster.write_text(f'name = {json.dumps(HOSTILE)}\ndescription = {json.dumps(HOSTILE)}\n'
                       '[[devices]]\nname = "CUDA0"\nkind = "gpu"\nmemory_gib = 8\nbandwidth_gbs = 900\n'
                       f'model = {json.dumps(HOSTILE)}\n')
    for args in (["plan", model, "--cluster", str(cluster), "--no-certify"], ["inspect", model],
                 ["devices", "--cluster", str(cluster)], ["check", model, "--cluster", str(cluster), "--", "-c", "64"]):
        code, out, err = run(args)
        assert code == 0, (args, err)
        _assert_inert(out + err)
        assert "\\x1b" in out  # shown, escaped


def test_an_error_quoting_a_name_stays_one_line() -> None:
    code, out, err = run(["plan", "--preset", HOSTILE])
    assert_error(code, out, err, "evil")
    _assert_inert(err)


# --- security: the reference-model cache ----------------------------------------------------------

@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OMNI_PLACE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def test_a_planted_header_or_symlink_in_the_cache_is_replaced(cache: Path, tmp_path: Path) -> None:
    path = cached_reference_model("deepseek-v3.2")
    decoy = Path(write_header_only(tiny_llama_spec(), tmp_path / "decoy.gguf")[0])
    for plant in ("symlink", "group-writable file"):
        path.unlink()
        if plant == "symlink":
            path.symlink_to(decoy)
        else:
            path.write_bytes(decoy.read_bytes())
            path.chmod(0o666)
        assert cached_reference_model("deepseek-v3.2") == path and not path.is_symlink()
        code, out, err = run(["plan", "--preset", "seed", "--no-certify"])
        assert code == 0 and out.startswith("DeepSeek-V3.2"), err
    assert decoy.read_bytes()[:4] == b"GGUF" and load_model(decoy).architecture == "llama"  # never written through


def test_a_cache_folder_others_can_write_is_not_used(cache: Path, tmp_path: Path) -> None:
    decoy = Path(write_header_only(tiny_llama_spec(), tmp_path / "decoy.gguf")[0])
    cache.mkdir(parents=True)
    good = cached_reference_model("deepseek-v3.2")
    good.unlink()
    cache.chmod(0o777)  # anyone could have planted this header
    (cache / good.name).write_bytes(decoy.read_bytes())
    path = cached_reference_model("deepseek-v3.2")
    assert path.parent != cache and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert load_model(path).architecture == "deepseek32"
    plan = plan_split("deepseek-v3.2" and str(path), "seed")
    assert plan.model.name.startswith("DeepSeek-V3.2")


@pytest.mark.parametrize("args", [["-ngl", "x" * 5000], ["-ts", "1," * 3000 + "z"], ["-c", "2" + "[" * 10000]])
def test_an_echoed_hostile_value_keeps_the_error_readable(tiny: str, two_gpus: str, args: list[str]) -> None:
    """An error that quotes a huge value stays one line of at most 1,000 characters, with the
    flag at its start and the reason at its end (errors.MAX_MESSAGE)."""
    code, _, err = run(["check", tiny, "--cluster", two_gpus, "--", *args])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: ")
    assert len(lines[0]) <= len("error: ") + 1000 and args[0] in lines[0][:40] and "characters ...]" in lines[0]
