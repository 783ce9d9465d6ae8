"""MODEL from where it lives: hf:OWNER/REPO[:QUANT], https URLs and ollama:NAME, against a local
fake Hub (tests/fake_hub.py) and a fake ollama store -- no internet. Header reads are counted:
planning a 9-shard DeepSeek-shaped model reads a few MB per shard, never weights."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omni_place.cli import main
from omni_place.errors import InvalidArgumentError
from omni_place.gguf import read_model_files
from omni_place.gguf_write import has_tensor_data
from omni_place.model import load_model
from omni_place.plan import evaluate, plan_split
from omni_place.reference_models import deepseek_v3, llama_3_3_70b
from omni_place.sources import resolve_model_source
from omni_place.sources.quants import group_files, pick_group, quant_tag, quality_key

from .arch_models import write_llama
from .fake_hub import FakeHub, Q, quantized

REPO = "deepseek-ai/DeepSeek-V3-GGUF"
MB = 1_000_000


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    """A fake Hub with a 9-shard DeepSeek-V3-shaped Q4_K_M (full 129k vocabulary, so the first
    shard's header is ~5 MiB as released), quants of a Llama-70B-shaped model in sub-folders, a
    gated repository, and a plain file for the URL source."""
    tmp = tmp_path_factory.mktemp("hub")
    with FakeHub() as h:
        h.add_model(REPO, "Q4_K_M/DeepSeek-V3-Q4_K_M.gguf", deepseek_v3(), tmp, shards=9, with_vocab=True)
        base = llama_3_3_70b()
        for tag, q in (("Q2_K", Q.Q2_K), ("Q8_0", Q.Q8_0), ("UD-Q4_K_XL", Q.Q4_K)):
            h.add_model("o/Llama-GGUF", f"{tag}/Llama-{tag}.gguf", quantized(base, q, tag), tmp, shards=2)
        h.add_model("o/Llama-GGUF", "Llama-Q4_K_M.gguf", quantized(base, Q.Q4_K, "Q4_K_M"), tmp)
        h.add_model("o/Gated-GGUF", "Gated-Q4_K_M.gguf", quantized(base, Q.Q4_K, "g"), tmp, gated=True)
        yield h


@pytest.fixture
def env(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh header cache and Hub cache per test, the fake Hub as HF_ENDPOINT, online."""
    monkeypatch.setenv("OMNI_PLACE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    return tmp_path


def _shard_bytes(hub: FakeHub, before: dict[str, int], pattern: str) -> dict[str, int]:
    return {p.rsplit("/", 1)[-1]: n - before.get(p, 0) for p, n in hub.sent(pattern).items() if n > before.get(p, 0)}


def test_hf_plan_reads_headers_only_and_caches(hub: FakeHub, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = hub.sent()
    t = time.perf_counter()
    assert main(["plan", f"hf:{REPO}:Q4_K_M", "--preset", "seed", "--no-certify", "--format", "json"]) == 0
    cold = time.perf_counter() - t
    doc = json.loads(capsys.readouterr().out)
    read = _shard_bytes(hub, before, "/resolve/")
    assert len(read) == 9 and all(n < 10 * MB for n in read.values()), read
    # the first shard carries the vocabulary (~5 MiB), the others only tensor infos
    assert read["DeepSeek-V3-Q4_K_M-00001-of-00009.gguf"] > 4 * MB
    # the command names the file to download, not the cache
    assert doc["hosts"][-1]["argv"][2] == "DeepSeek-V3-Q4_K_M-00001-of-00009.gguf"
    assert doc["feasible"] and doc["n_gpu_layers"] > 0
    # same plan as from the files themselves: the headers are the model
    path = resolve_model_source(f"hf:{REPO}:Q4_K_M")
    files = read_model_files(path)
    assert len(files.shards) == 9 and not has_tensor_data(files)
    assert files.shards[0].file_size < 10 * MB

    before = hub.sent()
    t = time.perf_counter()
    assert main(["plan", f"hf:{REPO}:Q4_K_M", "--preset", "seed", "--no-certify", "--format", "json"]) == 0
    warm = time.perf_counter() - t
    assert json.loads(capsys.readouterr().out)["args"] == doc["args"]
    assert _shard_bytes(hub, before, "/resolve/") == {}  # warm: one listing request, no header read
    assert cold < 5 and warm < 2, (cold, warm)


def test_hf_commit_and_offline_need_no_network(hub: FakeHub, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = resolve_model_source("hf:o/Llama-GGUF:Q8_0")
    commit = hub.repos["o/Llama-GGUF"].sha
    n = len(hub.requests)
    assert resolve_model_source(f"hf:o/Llama-GGUF:Q8_0@{commit}") == first
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_source("hf:o/Llama-GGUF:Q8_0") == first  # the branch's last known commit
    assert len(hub.requests) == n  # neither a commit revision nor offline mode touched the network
    with pytest.raises(InvalidArgumentError, match="HF_HUB_OFFLINE"):
        resolve_model_source("hf:o/Llama-GGUF:Q2_K")  # not cached


def test_hf_quant_selection(hub: FakeHub, env: Path) -> None:
    # sub-folders, split shards and UD- tags; the default is Q4_K_M as llama.cpp's -hf picks
    assert resolve_model_source("hf:o/Llama-GGUF").name == "Llama-Q4_K_M.gguf"
    p = resolve_model_source("hf:o/Llama-GGUF:ud-q4_k_xl")
    assert p.name == "Llama-UD-Q4_K_XL-00001-of-00002.gguf" and len(read_model_files(p).shards) == 2
    assert resolve_model_source("hf:o/Llama-GGUF/Q2_K/Llama-Q2_K-00002-of-00002.gguf").name == \
        "Llama-Q2_K-00001-of-00002.gguf"
    with pytest.raises(InvalidArgumentError, match=r"no quant 'IQ1_S'.*Q2_K, Q4_K_M, UD-Q4_K_XL, Q8_0"):
        resolve_model_source("hf:o/Llama-GGUF:IQ1_S")


@pytest.mark.parametrize("spec, message, hint", [
    ("hf:o/Gated-GGUF", "gated", "HF_TOKEN"),
    ("hf:o/Missing-GGUF:Q4_K_M", "no such repository", "HF_TOKEN"),
    ("hf:o/Llama-GGUF:Q8_0@v9", "no revision 'v9'", "branch, tag or commit"),
    ("hf:not a repo", "not a Hub model reference", "hf:OWNER/REPO"),
])
def test_hf_errors_are_one_line_with_a_hint(hub: FakeHub, env: Path, capsys: pytest.CaptureFixture[str],
                                            spec: str, message: str, hint: str) -> None:
    assert main(["inspect", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and message in err[0] and err[1].startswith("hint:") and hint in err[1], err


def test_hub_cache_files_are_read_in_place(hub: FakeHub, env: Path) -> None:
    """A file huggingface_hub already downloaded is used as is (weights and all)."""
    repo = hub.repos["o/Gated-GGUF"]
    blob = env / "hf" / "hub" / "models--o--Gated-GGUF" / "snapshots" / repo.sha / "Gated-Q4_K_M.gguf"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(repo.files["Gated-Q4_K_M.gguf"].header)
    (env / "hf" / "hub" / "models--o--Gated-GGUF" / "refs").mkdir()
    (env / "hf" / "hub" / "models--o--Gated-GGUF" / "refs" / "main").write_text(repo.sha)
    assert resolve_model_source("hf:o/Gated-GGUF") == blob


def test_url_source_split_and_revalidated(hub: FakeHub, env: Path, tmp_path: Path) -> None:
    paths = [p for p in hub.repos[REPO].files]
    urls = [hub.add_file(f"m/{Path(p).name}", hub.repos[REPO].files[p].header, hub.repos[REPO].files[p].size)
            for p in paths]
    before = hub.sent()
    t = time.perf_counter()
    plan = plan_split(urls[4], "seed")  # any shard names the model
    cold = time.perf_counter() - t
    read = _shard_bytes(hub, before, "/files/m/")
    assert len(read) == 9 and all(n < 10 * MB for n in read.values()), read
    assert plan.host_commands()[-1].argv[2] == "DeepSeek-V3-Q4_K_M-00001-of-00009.gguf"
    before = hub.sent()
    t = time.perf_counter()
    assert evaluate(urls[0], "seed", ["-ngl", "99", "-ot", "exps=CPU"]).feasible
    warm = time.perf_counter() - t
    assert sum(_shard_bytes(hub, before, "/files/m/").values()) == 1  # a one-byte revalidation
    assert cold < 5 and warm < 2, (cold, warm)
    # a changed file (new ETag) is read again
    f = hub.files["m/" + Path(paths[0]).name]
    f.size += 4096
    before = hub.sent()
    load_model(urls[0])
    assert _shard_bytes(hub, before, "/files/m/")["DeepSeek-V3-Q4_K_M-00001-of-00009.gguf"] > 4 * MB


def test_url_without_range_support_is_refused(hub: FakeHub, env: Path) -> None:
    f = hub.repos["o/Llama-GGUF"].files["Llama-Q4_K_M.gguf"]
    url = hub.add_file("norange/Llama-Q4_K_M.gguf", f.header, f.size)
    hub.ranges = False
    try:
        with pytest.raises(InvalidArgumentError, match="ignores HTTP Range") as err:
            load_model(url)
    finally:
        hub.ranges = True
    assert "download" in err.value.hint
    path = "/files/norange/Llama-Q4_K_M.gguf"
    deadline = time.monotonic() + 20  # the server thread counts the bytes once it notices the hang-up
    while path not in hub.sent("/files/norange/") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.sent("/files/norange/")[path] < 10 * MB < f.size  # not the file
    with pytest.raises(InvalidArgumentError, match="not found"):
        load_model(f"{hub.url}/files/none.gguf")
    with pytest.raises(InvalidArgumentError, match="does not name a .gguf"):
        load_model(f"{hub.url}/files/model.bin")


def _ollama_store(root: Path, name: str, tag: str, model: Path) -> Path:
    data = model.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    parts = name.split("/")
    parts = ["registry.ollama.ai", "library", *parts] if len(parts) == 1 else ["registry.ollama.ai", *parts]
    manifest = root / "manifests" / Path(*parts) / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 1},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)}]}))
    return root / "blobs" / f"sha256-{digest}"


def test_ollama_model_is_read_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    model = write_llama(tmp_path / "tiny.gguf").path  # a real model with its weights
    blob = _ollama_store(tmp_path / "store", "tiny", "latest", model)
    _ollama_store(tmp_path / "store", "me/tiny", "q8", model)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "store"))
    assert resolve_model_source("ollama:tiny") == blob
    assert resolve_model_source("ollama:me/tiny:q8") == blob
    assert main(["plan", "ollama:tiny", "--preset", "seed", "--no-certify", "--format", "args"]) == 0
    assert main(["plan", "ollama:tiny", "--preset", "seed", "--no-certify", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert str(blob) in out  # the blob is a complete GGUF: the engine can load it as -m
    assert main(["inspect", "ollama:tiny:nope"]) == 2
    assert "ollama pull tiny:nope" in capsys.readouterr().err
    with pytest.raises(InvalidArgumentError, match="not an ollama model name"):
        resolve_model_source("ollama:../../etc")


def test_shipped_names_resolve_in_the_api_and_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert plan_split("llama-3.3-70b", "seed").feasible
    assert main(["inspect", "gpt-oss-120b", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "gpt-oss"


def test_quant_tags_and_quality_order() -> None:
    names = ["UD-Q2_K_XL/DeepSeek-V3.1-UD-Q2_K_XL-00001-of-00002.gguf",
             "UD-Q2_K_XL/DeepSeek-V3.1-UD-Q2_K_XL-00002-of-00002.gguf",
             "DeepSeek-V3.1-Q2_K.gguf", "x.IQ3_XXS.gguf", "BF16/x-BF16-00001-of-00001.gguf", "q4_k_m/m-q4_k_m.gguf",
             "gpt-oss-mxfp4.gguf", "mmproj-F16.gguf", "README.md", "x-IQ2_M.gguf", "x-Q3_K_S.gguf", "x-Q3_K_L.gguf"]
    groups = group_files(names)
    assert [g.tag for g in groups] == ["IQ2_M", "Q2_K", "UD-Q2_K_XL", "IQ3_XXS", "Q3_K_S", "Q3_K_L", "MXFP4",
                                       "Q4_K_M", "BF16"]
    assert quant_tag("Qwen3-8B.gguf") is None and quant_tag("a/BF16/x.gguf") == "BF16"
    assert quality_key("Q8_0") > quality_key("Q6_K") > quality_key("Q4_K_M") > quality_key("Q4_K_S")
    with pytest.raises(InvalidArgumentError, match="several quants"):
        pick_group([g for g in groups if g.tag != "Q4_K_M"], None, "hf:o/r")
    with pytest.raises(InvalidArgumentError, match="shards"):
        group_files(["m-Q4_K_M-00001-of-00003.gguf", "m-Q4_K_M-00003-of-00003.gguf"])


def test_local_fake_hub_from_a_fresh_process(hub: FakeHub, env: Path) -> None:
    """The CLI in its own process (huggingface_hub reads HF_ENDPOINT at import), cold then warm."""
    import os

    cmd = [sys.executable, "-m", "omni_place", "plan", "hf:o/Llama-GGUF:Q8_0", "--preset", "seed", "--no-certify"]
    for _ in range(2):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ))
        assert r.returncode == 0, r.stderr
        assert "Llama-Q8_0-00001-of-00002.gguf" in r.stdout + r.stderr


def test_cache_is_private_and_header_reads_are_capped(hub: FakeHub, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stat

    from omni_place.errors import GGUFFormatError

    path = resolve_model_source("hf:o/Llama-GGUF:Q2_K")
    root = env / "cache" / "sources"
    assert path.is_relative_to(root)
    for d in [root, *path.relative_to(root).parents]:
        assert stat.S_IMODE((root / d).stat().st_mode) & 0o077 == 0, d
    # a header past the cap is refused after reading at most the cap, not followed further
    monkeypatch.setattr("omni_place.sources.remote.MAX_HEADER_BYTES", 2 << 20)
    before = hub.sent()
    with pytest.raises(GGUFFormatError, match="longer than 2 MiB"):
        resolve_model_source(f"hf:{REPO}:Q4_K_M")
    assert max(_shard_bytes(hub, before, "/resolve/").values()) <= 2 << 20
