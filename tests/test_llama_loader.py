"""libllama loading and ABI detection: search order and error messages (no engine needed), and
the real build's identity and struct layouts (engine)."""
from __future__ import annotations

import ast
import ctypes
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from omni_place.errors import InvalidArgumentError, LibLlamaNotFoundError, LibLlamaVersionError
from omni_place.llama import _abi
from omni_place.llama._loader import ENV_VAR, LLAMA_NAMES, LibraryLoader, LoadedLibrary, load_libllama

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# No engine needed
# ---------------------------------------------------------------------------------------------


def test_import_never_loads_libllama() -> None:
    code = textwrap.dedent(
        """
        import sys
        import omni_place, omni_place.llama, omni_place.llama.bindings, omni_place.llama.probe
        import omni_place.llama.rpc, omni_place.llama.logcapture
        maps = open("/proc/self/maps").read() if sys.platform.startswith("linux") else ""
        assert "libllama" not in maps and "libggml" not in maps, "a native library was loaded"
        assert "llama_cpp" not in sys.modules, "llama_cpp was imported"
        """
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def _llama_imports() -> dict[str, set[str]]:
    """omni_place.llama module -> the sibling modules it imports, at any depth of its code
    (top level, functions, TYPE_CHECKING blocks)."""
    folder = REPO / "omni_place" / "llama"
    names = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("omni_place.llama"):
                parts = node.module.split(".")  # type: ignore[union-attr]
                found |= {parts[2]} if len(parts) > 2 else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("omni_place.llama.")}
        graph[path.stem] = (found & names) - {path.stem}
    return graph


def test_llama_modules_import_one_way() -> None:
    """No import cycle inside omni_place.llama, hidden in a function or not; and the package
    imports neither the modules run as ``python -m`` (probe, rpc) nor what imports them."""
    graph = _llama_imports()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            assert state.get(dep) != "open", "import cycle: " + " -> ".join([*path, dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    tree = ast.parse((REPO / "omni_place" / "llama" / "__init__.py").read_text())
    eager = {a.name if n.module is None else n.module.split(".")[0]
             for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 1 for a in n.names}

    def closure(module: str) -> set[str]:
        out = {module}
        for dep in graph[module]:
            out |= closure(dep)
        return out

    assert not {m for e in eager for m in closure(e)} & {"probe", "rpc"}


def test_bogus_env_lists_every_path_tried(tmp_path: Path) -> None:
    bogus = tmp_path / "nowhere" / "libllama.so"
    with pytest.raises(LibLlamaNotFoundError) as info:
        LibraryLoader(environ={ENV_VAR: str(bogus)}).load()
    message = str(info.value)
    assert f"{ENV_VAR}={bogus}: no such file or folder" in message
    assert "\n" not in message
    assert ENV_VAR in info.value.hint  # the hint says how to fix it


def test_env_is_exclusive_and_reports_why_each_file_failed(tmp_path: Path) -> None:
    """A named library that does not load is an error, not a reason to load another build."""
    for name in LLAMA_NAMES:
        (tmp_path / name).write_bytes(b"not an ELF file")
    with pytest.raises(LibLlamaNotFoundError) as info:
        LibraryLoader(environ={ENV_VAR: str(tmp_path)}).load()
    tried = str(info.value).split("(tried ", 1)[1].split("; ")
    assert [t.split(": ", 1)[0] for t in tried] == [str(tmp_path / n) for n in LLAMA_NAMES]
    assert all(t.split(": ", 1)[1] for t in tried)  # each path carries the loader's reason


def test_explicit_folder_without_libllama(tmp_path: Path) -> None:
    with pytest.raises(LibLlamaNotFoundError, match="folder holds none of"):
        LibraryLoader(environ={}).load(tmp_path)


class _FakeFunction:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.argtypes: list[Any] = []
        self.restype: Any = None

    def __call__(self) -> Any:
        if self.restype is _abi._Oversized:
            out = _abi._Oversized()
            ctypes.memmove(out.raw, self.result, len(self.result))
            return out
        return self.result


class _FakeLib:
    """Looks like a LoadedLibrary to detect_build; symbols map to return values."""

    path = "/fake/libllama.so"
    lib_dir = "/fake"
    source = "argument"

    def __init__(self, symbols: dict[str, Any]) -> None:
        self.symbols = symbols

    def function(self, name: str) -> _FakeFunction | None:
        return _FakeFunction(self.symbols[name]) if name in self.symbols else None

    def has(self, name: str) -> bool:
        return name in self.symbols


def _defaults_bytes(struct_type: type[ctypes.Structure], values: dict[str, Any]) -> bytes:
    s = struct_type()
    for k, v in values.items():
        setattr(s, k, v)
    return bytes(s)


def test_ik_llama_is_refused_plainly() -> None:
    fake = _FakeLib({"llama_model_is_split_mode_graph": True, "llama_model_default_params": b""})
    with pytest.raises(LibLlamaVersionError, match="ik_llama.cpp is not supported for verification"):
        _abi.detect_build(fake)  # type: ignore[arg-type]
    no_device_api = _FakeLib({"llama_model_default_params": b""})
    with pytest.raises(LibLlamaVersionError, match="no ggml device API"):
        _abi.detect_build(no_device_api)  # type: ignore[arg-type]


def test_layouts_are_told_apart_by_default_values() -> None:
    model = _defaults_bytes(_abi.llama_model_params_mainline, dict(_abi._MODEL_DEFAULTS))
    ctx160 = _defaults_bytes(_abi.llama_context_params_mainline, dict(_abi._CONTEXT_DEFAULTS))
    ctx168 = _defaults_bytes(_abi.llama_context_params_moe_cache, dict(_abi._CONTEXT_DEFAULTS))
    base = {"ggml_backend_dev_count": 1, "llama_model_default_params": model, "llama_version": b"x"}

    abi = _abi.detect_build(_FakeLib({**base, "llama_context_default_params": ctx160}))  # type: ignore[arg-type]
    assert (abi.build.layout, abi.build.context_params_size) == ("mainline-80/160", 160)
    abi = _abi.detect_build(_FakeLib({**base, "llama_context_default_params": ctx168}))  # type: ignore[arg-type]
    assert (abi.build.layout, abi.build.context_params_size) == ("moe-cache-80/168", 168)

    # an older layout (main_gpu where load_mode is now): refused, with the offending offsets
    shifted = bytearray(model)
    shifted[24:28] = (0).to_bytes(4, "little", signed=True)
    with pytest.raises(LibLlamaVersionError, match=r"refusing to pass structs by value.*load_mode@24=0"):
        _abi.detect_build(_FakeLib({**base, "llama_model_default_params": bytes(shifted),  # type: ignore[arg-type]
                                    "llama_context_default_params": ctx160}))


def _offsets(struct_type: type[ctypes.Structure], *names: str) -> tuple[int, ...]:
    return tuple(getattr(struct_type, n).offset for n in names)


def test_struct_offsets_match_the_header() -> None:
    m, c = _abi.llama_model_params_mainline, _abi.llama_context_params_mainline
    assert ctypes.sizeof(m) == 80 and ctypes.sizeof(c) == 160
    assert _offsets(m, "n_gpu_layers", "load_mode", "main_gpu", "tensor_split", "vocab_only") == (16, 24, 32, 40, 72)
    assert _offsets(c, "flash_attn_type", "type_k", "abort_callback", "offload_kqv") == (52, 104, 112, 129)
    assert _offsets(c, "samplers", "n_samplers", "ctx_other") == (136, 144, 152)
    moe = _abi.llama_context_params_moe_cache
    assert _offsets(moe, "moe_cache_size", "offload_kqv") == (112, 137) and ctypes.sizeof(moe) == 168


# ---------------------------------------------------------------------------------------------
# The real library
# ---------------------------------------------------------------------------------------------


@pytest.mark.engine
def test_real_build_is_identified(libllama: _abi.BuildInfo) -> None:
    assert libllama.flavor == "llama.cpp"
    assert libllama.layout in {layout.name for layout in _abi.LAYOUTS}
    assert (libllama.model_params_size, libllama.context_params_size) in {(80, 160), (80, 168)}
    assert libllama.ggml_version and libllama.max_devices >= 16
    assert libllama.features["n_layer_nextn"]
    assert Path(libllama.library).name in LLAMA_NAMES or libllama.source == "system"


@pytest.mark.engine
def test_bindings_use_the_verified_layout(libllama: _abi.BuildInfo) -> None:
    from omni_place.llama import bindings as b

    mp = b.llama_model_default_params()
    cp = b.llama_context_default_params()
    assert ctypes.sizeof(mp) == libllama.model_params_size
    assert ctypes.sizeof(cp) == libllama.context_params_size
    assert (mp.n_gpu_layers, mp.split_mode, mp.use_extra_bufts) == (-1, b.LLAMA_SPLIT_MODE_LAYER, True)
    assert (cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.offload_kqv, cp.swa_full) == (512, 2048, 512, True, True)
    assert b.llama_max_devices() == libllama.max_devices
    cpu = [d for d in b.list_devices() if d.type == "CPU"]
    assert cpu and cpu[0].buffer_type == "CPU" and cpu[0].memory_total > 0


@pytest.mark.engine
def test_one_libllama_per_process(libllama: _abi.BuildInfo, tmp_path: Path) -> None:
    lib: LoadedLibrary = load_libllama()
    assert load_libllama() is lib
    assert load_libllama(lib.path) is lib  # naming the loaded file again is fine
    with pytest.raises(InvalidArgumentError, match="already loaded"):
        load_libllama(tmp_path)


@pytest.mark.engine
def test_log_capture_in_process(libllama: _abi.BuildInfo, tmp_path: Path) -> None:
    from omni_place.llama import bindings as b
    from omni_place.llama.logcapture import LogCapture, parse_log

    missing = tmp_path / "missing.gguf"
    with LogCapture() as capture:
        assert not b.llama_model_load_from_file(str(missing).encode(), b.llama_model_default_params())
    log = parse_log(capture.records)
    assert any(str(missing) in e for e in log.errors), capture.lines
    assert all(r.level in (b.GGML_LOG_LEVEL_ERROR, b.GGML_LOG_LEVEL_INFO, b.GGML_LOG_LEVEL_DEBUG,
                           b.GGML_LOG_LEVEL_WARN) for r in capture.records)


@pytest.mark.engine
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_copy_of_each_ggml_library(libllama: _abi.BuildInfo) -> None:
    """llama-cpp-python ships *copies* named libggml.so and libggml.so.0: mapping both would give
    two backend registries (RPC devices registered in one are invisible to libllama)."""
    load_libllama()
    mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
              if "libggml" in line and "/" in line}
    stems: dict[str, list[str]] = {}
    for path in mapped:
        stems.setdefault(Path(path).name.split(".so")[0], []).append(path)
    assert stems and all(len(paths) == 1 for paths in stems.values()), stems
