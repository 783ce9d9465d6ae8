"""Every usage example that hands omni_place's flags to an engine -- README code blocks and the
`Examples:` of each command's --help -- run through a real bash with fake llama-server /
llama-cli / llama-bench executables that record their argv: the engine receives exactly the
plan's flags, one argument each, no literal quotes (`$(... --format args)` alone would pass
`'blk\\.(...)'` with its quotes)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from omni_place.cli import COMMANDS, cli
from omni_place.reference_models import cached_reference_model, write_header_only

from .arch_models import tiny_llama_spec
from .clusters import cluster_toml

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("llama-server", "llama-cli", "llama-bench")
# Lines that are not run, and why: each needs what a test box does not have.
SKIPPED = {
    "pip install": "installs the package (network, compiler)",
    "--verify": "loads the plan through libllama on the rig's own GPUs",
    "hf:": "reads the header from the Hugging Face Hub (network)",
    "https://": "reads the header over HTTP (network)",
    "ollama:": "reads a model blob from a local Ollama store",
}
RIG = cluster_toml("rig", ("CUDA0", "gpu", 24, 900), ("CPU", "cpu", 64, 80))


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [m[1] for m in re.finditer(r"^```sh\n(.*?)^```", text, re.M | re.S)]


def help_blocks() -> list[str]:
    out = []
    for name in sorted(COMMANDS):
        text = CliRunner().invoke(cli, [name, "--help"], terminal_width=200).output
        m = re.search(r"Examples?:\n((?:    .*\n)+)", text)
        if m:
            out.append("\n".join(line.strip() for line in m[1].splitlines()))
    return out


def calls_engine(block: str) -> bool:
    return any(re.search(rf"(^|[\s(\"]){e}\s", block) for e in ENGINES)


BLOCKS = [("README", b) for b in readme_blocks() if calls_engine(b)] + \
         [("--help", b) for b in help_blocks() if calls_engine(b)]


def test_the_examples_are_found() -> None:
    assert len([b for src, b in BLOCKS if src == "README"]) >= 2
    assert any("--format argv" in b for src, b in BLOCKS if src == "--help")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the examples run: the files they name, and fake engines first on PATH."""
    d = tmp_path_factory.mktemp("usage")
    write_header_only(tiny_llama_spec(), d / "model.gguf")
    shutil.copy(cached_reference_model("qwen3-235b-a22b"), d / "Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf")
    (d / "rig.toml").write_text(RIG)
    bin_dir = d / "bin"
    bin_dir.mkdir()
    for engine in ENGINES:
        exe = bin_dir / engine
        exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                       "with open(os.environ['ARGV_LOG'], 'a') as f:\n"
                       "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
        exe.chmod(0o755)
    return d


def _env(workdir: Path) -> dict[str, str]:
    scripts = str(Path(sys.executable).parent)  # the omni-place console script
    return {**os.environ, "PATH": os.pathsep.join([str(workdir / "bin"), scripts, os.environ.get("PATH", "")]),
            "ARGV_LOG": str(workdir / "argv.jsonl")}


def _plan_flags(command: str, workdir: Path) -> list[str]:
    """The plan's own server flags for ``omni-place plan ARGS`` (from its JSON form)."""
    out = subprocess.run(["bash", "-c", f"{command} --format json"], cwd=workdir, env=_env(workdir),
                         capture_output=True, text=True, timeout=300, check=True).stdout
    return json.loads(out)["args"]


@pytest.mark.parametrize("source,block", BLOCKS, ids=[f"{s}-{i}" for i, (s, _) in enumerate(BLOCKS)])
def test_engine_receives_exactly_the_plan_flags(source: str, block: str, workdir: Path) -> None:
    lines = [line for line in block.splitlines() if line.strip()]
    run = [line for line in lines if not any(key in line for key in SKIPPED)]
    # each engine call gets the flags of the plan command on its line or the line before
    plans: list[str] = []
    for i, line in enumerate(run):
        if not calls_engine(line + " "):
            continue
        found = re.findall(r"(omni-place plan .*?) (?:--format argv|--format args|--exec --)", line)
        if not found and i:
            found = re.findall(r"(omni-place plan .*?) (?:--format argv|--format args)", run[i - 1])
        assert found, f"no plan command for the engine call {line!r}"
        plans.append(found[0])
    log = workdir / "argv.jsonl"
    log.unlink(missing_ok=True)
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(run)], cwd=workdir, env=_env(workdir),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    calls = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    assert len(calls) == len(plans), (calls, plans)
    for argv, command in zip(calls, plans):
        flags = _plan_flags(command, workdir)
        assert not [a for a in argv if "'" in a or '"' in a], argv
        assert any(argv[i:i + len(flags)] == flags for i in range(len(argv))), (argv, flags)
        assert argv[:2] == ["-m", argv[1]] and Path(workdir / argv[1]).is_file(), argv
