"""Shared fixtures: the real libllama (skip when absent), loopback RPC servers, tiny models."""
from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from omni_place.errors import LibLlamaNotFoundError, LibLlamaVersionError

from .arch_models import TinyModel, write_llama
from .test_devices_nvml import PRO6000, RTX5090, FakeNvml, gpu


@pytest.fixture()
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML sees a 5090 at bus 41 and a PRO 6000 at 81; CUDA (fastest first) calls them CUDA1, CUDA0."""
    from omni_place.devices import nvml

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    fake = FakeNvml([gpu("b", 0x41, **RTX5090), gpu("a", 0x81, **PRO6000)], p2p={(0, 1): 5})
    monkeypatch.setattr(nvml, "_import_nvml", lambda: fake)


@functools.lru_cache(maxsize=1)
def libllama_status() -> tuple[object | None, str]:
    """(BuildInfo, description) when a supported libllama loads here, else (None, why not)."""
    from omni_place.llama import build_info

    try:
        build = build_info()
    except (LibLlamaNotFoundError, LibLlamaVersionError) as err:
        return None, err.message
    return build, build.describe()


def pytest_configure(config: pytest.Config) -> None:
    # plans must not depend on calibrations saved on this machine (omni-place calibrate)
    os.environ["OMNI_PLACE_CONFIG"] = tempfile.mkdtemp(prefix="omni-place-config-")


def pytest_report_header(config: pytest.Config) -> str:
    build, text = libllama_status()
    return f"libllama: {text}" if build is not None else f"libllama: unavailable ({text})"


@pytest.fixture(scope="session")
def libllama():  # -> omni_place.llama.BuildInfo
    """The loaded build's BuildInfo; skips the test when no supported libllama loads."""
    build, why = libllama_status()
    if build is None:
        pytest.skip(f"no usable libllama: {why}")
    return build


@pytest.fixture(scope="session")
def rpc_pair(libllama) -> Iterator[list[str]]:
    """Two llama.cpp RPC servers on loopback for the whole session (devices RPC0, RPC1 once a
    load adds them in this order). One thread each: a 2-core CI box runs both plus the client."""
    from omni_place.llama import rpc_servers

    if not (libllama.features.get("rpc") and libllama.features.get("rpc_server")):
        pytest.skip("this libllama was built without RPC (CMAKE_ARGS=-DGGML_RPC=on)")
    with rpc_servers(2, threads=1) as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A 6-layer llama (n_embd 64, 4 heads, 2 KV heads, n_ff 128, 300-token SPM vocab)."""
    path: Path = tmp_path_factory.mktemp("models") / "tiny-llama.gguf"
    return write_llama(path, n_layer=6)
