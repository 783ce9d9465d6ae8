"""`omni-place plan` outputs (text, args, json, env, --plot, --exec), `omni-place env`, and the
README's first-run command, through the real entry point."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from omni_place.cli import main
from omni_place.engines import llama_cpp
from omni_place.engines.llama_cpp import LLAMA_ENV
from omni_place.reference_models import REFERENCE_MODELS, write_header_only

ROOT = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI_PLACE_CACHE", str(tmp_path_factory.getbasetemp() / "omni-cache"))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_text_is_the_default_model_on_the_seed_rig(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--preset", "seed")
    assert code == 0
    assert out.startswith("DeepSeek-V3.2 Q4_K_M (header only) (deepseek32, 62 layers")
    bars = [ln for ln in out.splitlines() if re.match(r"  (CUDA\d|CPU) +\[[#kc.]{40}\]", ln)]
    assert len(bars) == 3  # two GPUs + CPU, none overflowing
    strip = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.startswith(("  attn+KV", "  experts"))}
    assert len(strip["attn+KV"]) == len(strip["experts"]) == 62 and strip["attn+KV"][-1] == "n"
    assert re.search(r"predicted: decode \d+\.\d tok/s, prompt \d+ tok/s", out)
    assert re.search(r"decode ms/token: .*\(\d+%\)", out)


def test_args_is_one_line_the_engine_reads_back(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--preset", "seed", "--ctx", "32768", "--format", "args")
    assert code == 0 and out.count("\n") == 1
    parsed = llama_cpp.parse_args(shlex.split(out))
    assert parsed.ctx == 32768 and parsed.n_gpu_layers == 63 and parsed.tensor_split and parsed.overrides


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "gpt-oss-120b", "--preset", "seed", "--format", "json")
    d = json.loads(out)
    assert code == 0 and d["architecture"] == "gpt-oss" and d["feasible"]
    assert len(d["layers"]) == 36 and d["predicted"]["tg_tps"] > 0 and d["args"][0] in ("-dev", "-ngl")


def test_env_lines_rebuild_the_args(capsys: pytest.CaptureFixture[str]) -> None:
    plan = ("plan", "gpt-oss-120b", "--preset", "4090-rpc-3090")  # op offload on: every flag has a variable
    _, args_out, _ = run(capsys, *plan, "--format", "args")
    code, out, _ = run(capsys, *plan, "--format", "env")
    assert code == 0
    flag_of = {v: k for k, v in LLAMA_ENV.items()}
    rebuilt = []
    for line in out.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        assert line.startswith("export LLAMA_ARG_") and name in flag_of
        rebuilt += [flag_of[name], *shlex.split(value)]
    assert rebuilt == shlex.split(args_out)
    # a POSIX shell accepts it
    r = subprocess.run(["sh", "-c", out + '\nprintf %s "$LLAMA_ARG_OVERRIDE_TENSOR"'], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == shlex.split(args_out)[shlex.split(args_out).index("-ot") + 1]
    # the seed plan pins its CPU weights: -lm none is LLAMA_ARG_LOAD_MODE (common/arg.cpp:2707)
    _, args_out, _ = run(capsys, "plan", "--preset", "seed", "--format", "args")
    assert args_out.split()[-2:] == ["-lm", "none"]
    code, out, _ = run(capsys, "plan", "--preset", "seed", "--format", "env")
    assert code == 0 and "export LLAMA_ARG_LOAD_MODE=none" in out.splitlines()
    # --no-op-offload has no LLAMA_ARG_ variable (common/arg.cpp): a plan that needs it says so
    _, args_out, _ = run(capsys, "plan", "--preset", "seed", "--objective", "tg", "--format", "args")
    assert args_out.split()[-1] == "--no-op-offload"
    code, out, err = run(capsys, "plan", "--preset", "seed", "--objective", "tg", "--format", "env")
    assert code == 2 and "--no-op-offload has no LLAMA_ARG_ environment variable" in err and "--format args" in err


def test_plot_is_a_real_svg(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "plan.svg"
    code, out, _ = run(capsys, "plan", "--preset", "seed", "--plot", str(path), "--format", "json")
    assert code == 0 and path.exists()
    d = json.loads(out)
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg" and root.get("data-generator") == "omni-place"
    w, h = float(root.get("width")), float(root.get("height"))
    rects = list(root.iter(f"{SVG}rect"))
    for r in rects:  # everything inside the picture
        assert float(r.get("x")) >= 0 and float(r.get("x")) + float(r.get("width")) <= w + 0.5
        assert float(r.get("y")) + float(r.get("height")) <= h
    by_class: dict[str, list[ET.Element]] = {}
    for r in rects:
        by_class.setdefault(r.get("class", ""), []).append(r)
    for kind in ("weights", "kv", "compute", "free"):
        assert [r.get("data-device") for r in by_class[f"mem-{kind}"]] == [u["name"] for u in d["devices"]]
    for u in d["devices"]:
        w_rect = next(r for r in by_class["mem-weights"] if r.get("data-device") == u["name"])
        assert int(w_rect.get("data-bytes")) == u["weights_bytes"]
    assert [int(r.get("data-layer")) for r in by_class["layer-attn"]] == list(range(62))
    assert [r.get("data-device") for r in by_class["layer-attn"][:61]] == [row["device"] for row in d["layers"][:61]]
    assert len(by_class["layer-experts"]) == 62 and by_class["tg-part"]
    pred = next(t for t in root.iter(f"{SVG}text") if t.get("id") == "predicted")
    assert float(pred.get("data-tg-tps")) == pytest.approx(d["predicted"]["tg_tps"], abs=1e-3)


def test_plot_never_overwrites_other_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    mine = tmp_path / "mine.svg"
    mine.write_text("<svg>my drawing</svg>")
    code, _, err = run(capsys, "plan", "llama-3.3-70b", "--preset", "seed", "--plot", str(mine))
    assert code == 2 and "not an omni-place picture" in err and mine.read_text() == "<svg>my drawing</svg>"
    code, _, err = run(capsys, "plan", "llama-3.3-70b", "--preset", "seed", "--plot", str(tmp_path / "x.png"))
    assert code == 2 and "SVG" in err
    ours = tmp_path / "ours.svg"
    assert run(capsys, "plan", "llama-3.3-70b", "--preset", "seed", "--plot", str(ours))[0] == 0
    assert run(capsys, "plan", "--preset", "seed", "--plot", str(ours))[0] == 0  # replaces its own picture
    assert "DeepSeek-V3.2" in ours.read_text()


# --- --exec: a fake engine on PATH records its argv --------------------------------------------

@pytest.fixture
def fake_engine(tmp_path: Path) -> tuple[dict[str, str], Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv.json"
    script = bindir / "fake-llama-server"
    script.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
                      "sys.exit(7)\n")
    script.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return env, record


def omni(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "omni_place", *args], env=env, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_exec_runs_the_engine_with_the_plan_then_the_users_args(fake_engine, tmp_path: Path) -> None:
    env, record = fake_engine
    model = write_header_only(REFERENCE_MODELS["qwen3-235b-a22b"](), tmp_path / "Qwen3-235B.gguf")[0]
    r = omni(env, "plan", str(model), "--preset", "seed", "--ctx", "8192", "--exec", "--",
             "fake-llama-server", "--port", "8080", "--ctx-size", "16384")
    assert r.returncode == 7, r.stderr  # the engine's own exit code: omni-place exec'd it
    argv = json.loads(record.read_text())
    plan = json.loads(omni(env, "plan", str(model), "--preset", "seed", "--ctx", "8192", "--format", "json").stdout)
    plan_args = [a for a in plan["args"]]
    i = plan_args.index("-c")
    del plan_args[i:i + 2]  # the user's --ctx-size wins: the plan's -c is dropped
    assert argv == ["-m", str(model), *plan_args, "--port", "8080", "--ctx-size", "16384"]
    assert "your -c replaces the plan's -c 8192" in r.stderr and "exec fake-llama-server -m" in r.stderr
    assert r.stdout == ""  # stdout is the engine's


def test_exec_user_model_and_errors(fake_engine) -> None:
    env, record = fake_engine
    # a shipped header-only model cannot be run: the user names the real file
    r = omni(env, "plan", "--preset", "seed", "--exec", "--", "fake-llama-server")
    assert r.returncode == 2 and "header-only" in r.stderr and not record.exists()
    r = omni(env, "plan", "--preset", "seed", "--exec", "--", "fake-llama-server", "-m", "/models/real.gguf")
    assert r.returncode == 7 and json.loads(record.read_text())[:2] != ["-m", "/models/real.gguf"]
    assert json.loads(record.read_text())[-2:] == ["-m", "/models/real.gguf"]
    for args, msg in ((["--exec"], "needs the engine command"), (["--", "llama-server"], "add --exec"),
                      (["--exec", "--", "no-such-engine-xyz"], "not found")):
        r = omni(env, "plan", "--preset", "seed", *args)
        assert r.returncode == 2 and msg in r.stderr and r.stderr.startswith("error: "), r.stderr


def test_env_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from omni_place import devices

    monkeypatch.setattr(devices.nvml, "_import_nvml", lambda: None)
    code, out, _ = run(capsys, "env")
    assert code == 0 and out.startswith("omni-place ") and "libllama:" in out and "CPU" in out
    assert "deepseek-v3.2" in out
    code, out, _ = run(capsys, "env", "--format", "json")
    d = json.loads(out)
    assert code == 0 and {"packages", "libllama", "devices", "c_core"} <= set(d) and d["c_core"].startswith("ok")


# --- the README's first-run command, as written ----------------------------------------------------

def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", setup, re.S)


def test_readme_has_the_two_commands_and_ci_runs_the_second() -> None:
    first, second = readme_commands()  # exactly two
    assert first == "pip install . && omni-place plan --preset seed"
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == second


def test_readme_first_command_runs(tmp_path: Path) -> None:
    first = readme_commands()[0]
    cmd = shlex.split(first.split("&&", 1)[1])  # the `pip install .` half is what CI's install does
    assert cmd[0] == "omni-place"
    env = dict(os.environ, OMNI_PLACE_CACHE=str(tmp_path / "fresh"))  # a fresh machine: empty cache
    # the console script pip installed next to this interpreter, as a user runs it
    exe = Path(sys.executable).with_name("omni-place")
    exe = str(exe) if exe.exists() else shutil.which("omni-place")
    assert exe, "the omni-place console script is not installed (pip install -e .)"
    for _ in range(2):  # first run writes the cache, second run reads it
        r = subprocess.run([exe, *cmd[1:]], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "DeepSeek-V3.2" in r.stdout and "predicted: decode" in r.stdout and "layer map" in r.stdout
