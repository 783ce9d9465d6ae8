"""Hostile cluster files, plan JSON, bench records and saved calibrations: every class is
refused at the boundary (exit 2, one ``error:`` line, a ``hint:`` line), in bounded time and
memory, and the planted path attacks stay inside their folders."""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omni_place import _core
from omni_place.bench.records import load_records
from omni_place.calibration import SCHEMA, machine_id, read_calibration, save_calibration, store_path
from omni_place.cost import SpeedParams
from omni_place.devices import load_cluster
from omni_place.devices.cluster import MAX_ACCELERATORS
from omni_place.errors import ClusterError, InvalidArgumentError
from omni_place.plan import plan_split
from omni_place.problem import unit_for_capacities
from omni_place.reference_models import write_header_only

from .arch_models import tiny_llama_spec
from .test_cli_errors import assert_one_line_error
from .test_hostile_model import run


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_header_only(tiny_llama_spec(), tmp_path_factory.mktemp("m") / "tiny.gguf")[0])


def gpu(name: str = "CUDA0", memory: Any = 24, extra: str = "") -> str:
    return f'[[devices]]\nname = "{name}"\nkind = "gpu"\nmemory_gib = {memory}\nbandwidth_gbs = 900\n{extra}\n'


def rpc(endpoint: str) -> str:
    return f'[[devices]]\nname = "RPC0"\nkind = "rpc"\nmemory_gib = 24\nbandwidth_gbs = 900\nendpoint = "{endpoint}"\n'


# ---------------------------------------------------------------------------------------------
# Cluster files
# ---------------------------------------------------------------------------------------------

HOSTILE_CLUSTERS = [
    pytest.param(gpu(memory="1" + "0" * 400), "beyond any finite number", id="400-digit memory"),
    pytest.param(gpu(memory="1" + "0" * 5000), "invalid TOML", id="5000-digit memory"),
    pytest.param(gpu() + '[[devices]]\nname = "CPU"\nkind = "cpu"\nthreads = 1' + "0" * 400, "beyond any real device",
                 id="400-digit threads"),
    pytest.param(gpu(extra="pcie_gen = 1" + "0" * 400 + "\npcie_width = 16"), "not a PCIe generation",
                 id="400-digit pcie_gen"),
    pytest.param('x = ' + "[" * 5000 + "]" * 5000 + "\n" + gpu(), "nest too deeply", id="5000-deep array"),
    pytest.param(gpu(extra="model = " + "{a=" * 5000 + "1" + "}" * 5000), "nest too deeply", id="5000-deep table"),
    pytest.param(gpu(memory="nan"), "must be finite", id="NaN memory"),
    pytest.param(gpu(memory="inf"), "must be finite", id="inf memory"),
    pytest.param(gpu(memory="-1"), "must be positive", id="negative memory"),
    pytest.param(gpu(memory='"24"'), "must be a number", id="string memory"),
    pytest.param(f'name = "{"x" * 300}"\n' + gpu(), "300 characters long", id="name longer than a file name"),
    pytest.param(gpu("CUDA00"), "not a llama.cpp device name", id="CUDA00"),
    pytest.param(gpu("CUDA\uff10"), "not a llama.cpp device name", id="fullwidth digit"),
    pytest.param(gpu("CUDA\u0660"), "not a llama.cpp device name", id="Arabic-Indic digit"),
    pytest.param(rpc("h:\uff15\uff10\uff10\uff15\uff12"), "is not host:port", id="fullwidth port"),
    pytest.param(rpc("h\u0663st:50052"), "is not host:port", id="non-ASCII host"),
    pytest.param(rpc("[::1]:50052"), "IPv6", id="IPv6 loopback"),
    pytest.param(rpc("[fe80::2]:50052"), "IPv6", id="IPv6 link-local"),
    pytest.param("".join(gpu(f"CUDA{i}", 1) for i in range(MAX_ACCELERATORS + 1)), "at most 64",
                 id="65 accelerators"),
]


@pytest.mark.parametrize(("text", "fragment"), HOSTILE_CLUSTERS)
def test_hostile_cluster_files(tmp_path: Path, model: str, text: str, fragment: str) -> None:
    path = tmp_path / "rig.toml"
    path.write_text(text, encoding="utf-8")
    for args in (["devices", "--cluster", str(path)], ["plan", model, "--cluster", str(path)]):
        code, out, err = run(args)
        assert_one_line_error(code, out, err, fragment)
        assert str(path) in err.splitlines()[0]


def test_accelerator_limit_is_the_cores() -> None:
    assert MAX_ACCELERATORS == _core.MAX_DEVICES


def test_device_count_is_refused_before_per_device_work(tmp_path: Path) -> None:
    """Parsing time is linear in the file: 100k devices are refused in about the time tomllib
    takes to read them, not after 100k per-device checks (which were quadratic)."""
    def seconds(n: int) -> float:
        path = tmp_path / f"n{n}.toml"
        path.write_text("".join(gpu(f"CUDA{i % 9000}", 1) for i in range(n)))
        t0 = time.perf_counter()
        with pytest.raises(ClusterError, match=f"{n} devices: a cluster has at most"):
            load_cluster(path)
        return time.perf_counter() - t0
    small, large = seconds(1000), seconds(8000)
    assert large < 16 * small + 0.05, (small, large)  # 8x the devices, at most ~8x the time (2x slack)


def test_cluster_file_size_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_text(gpu() + "# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ClusterError, match="more than the 1048576"):
        load_cluster(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_device_files_do_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "rig.toml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        if not path.exists():
            continue
        result = _in_thread(lambda p=path: load_cluster(p))
        assert isinstance(result, ClusterError) and "not a regular file" in str(result), result


def test_gpus_whose_memory_equals_the_margin(model: str, tmp_path: Path) -> None:
    """Eight full GPUs leave 0 usable bytes each: the planner puts everything on the CPU
    (it raised ValueError: math domain error from log2(0))."""
    assert unit_for_capacities([0] * 8) == 1 << 20
    path = tmp_path / "full.toml"
    path.write_text("".join(gpu(f"CUDA{i}", 1, "margin_mib = 1024") for i in range(8)))
    plan = plan_split(model, str(path))
    assert set(plan.placement.layer_home) == {"CPU"}


def test_host_names_print_a_bindable_rpc_server_command(model: str, tmp_path: Path) -> None:
    """rpc-server -H takes an IPv4 literal (inet_addr): a host name endpoint prints 0.0.0.0."""
    path = tmp_path / "rpc.toml"
    path.write_text(rpc("gpu-box.lan:50052"))
    plan = plan_split(model, str(path), ctx=512)
    servers = [h for h in plan.host_commands() if h.role == "rpc-server"]
    assert servers and servers[0].argv[:3] == ["rpc-server", "-H", "0.0.0.0"], plan.host_commands()
    assert servers[0].host == "gpu-box.lan"


# ---------------------------------------------------------------------------------------------
# Plan JSON (verify --plan)
# ---------------------------------------------------------------------------------------------

GOOD_PLAN = {"engine": "llama.cpp", "model": "m.gguf", "args": ["-ngl", "99"], "ctx": 4096,
             "devices": [{"name": "CPU", "weights_bytes": 1, "kv_bytes": 0, "compute_bytes": 0}]}
HOSTILE_PLANS = [
    pytest.param("[" * 100_000 + "]" * 100_000, "nests too deeply", id="deep nesting"),
    pytest.param('{"engine": "llama.cpp", "model": "m", "args": [], "ctx": 1' + "0" * 400 + "}", "digits",
                 id="400-digit ctx"),
    pytest.param(json.dumps({**GOOD_PLAN, "ctx": 0}), "ctx = 0 is out of range", id="ctx 0"),
    pytest.param(json.dumps({**GOOD_PLAN, "ctx": "4096"}), "ctx must be an integer", id="ctx string"),
    pytest.param(json.dumps({**GOOD_PLAN, "ctx": True}), "ctx must be an integer", id="ctx bool"),
    pytest.param(json.dumps(GOOD_PLAN).replace('"weights_bytes": 1', '"weights_bytes": 1e400'), "beyond any",
                 id="1e400 bytes"),
    pytest.param(json.dumps(GOOD_PLAN).replace('"weights_bytes": 1', '"weights_bytes": NaN'), "NaN",
                 id="NaN bytes"),
    pytest.param(json.dumps(GOOD_PLAN).replace('"weights_bytes": 1', '"weights_bytes": -Infinity'),
                 "-Infinity", id="-Infinity bytes"),
    pytest.param(json.dumps(GOOD_PLAN).replace('"weights_bytes": 1', '"weights_bytes": -5'), "out of range",
                 id="negative bytes"),
    pytest.param(json.dumps({**GOOD_PLAN, "args": "-ngl 99"}), "args must be a list of strings", id="args string"),
    pytest.param(json.dumps({**GOOD_PLAN, "engine": ["llama.cpp"]}), "engine must be a string", id="engine list"),
    pytest.param(json.dumps({**GOOD_PLAN, "devices": {"CPU": 1}}), "devices must be a list", id="devices object"),
    pytest.param(json.dumps({**GOOD_PLAN, "layers": [7]}), "layers[0] must be an object", id="layer not object"),
    pytest.param(json.dumps({**GOOD_PLAN, "device_order": [1]}), "device_order must be a list of strings",
                 id="order of numbers"),
    pytest.param(json.dumps({"engine": "llama.cpp", "args": []}), "no model", id="missing model"),
    pytest.param("[1, 2]", "is not a plan", id="an array"),
    pytest.param(b"\x89PNG\r\n\x1a\n\0\0", "not UTF-8", id="binary file"),
    pytest.param("", "not JSON", id="empty file"),
]


@pytest.mark.parametrize(("content", "fragment"), HOSTILE_PLANS)
def test_hostile_plan_json(tmp_path: Path, model: str, content: str | bytes, fragment: str) -> None:
    path = tmp_path / "plan.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code, out, err = run(["verify", model, "--plan", str(path), "--preset", "seed"])
    assert_one_line_error(code, out, err, fragment)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_plan_from_a_fifo_or_dev_zero_does_not_block(tmp_path: Path, model: str) -> None:
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        result = _in_thread(lambda p=path: run(["verify", model, "--plan", p, "--preset", "seed"]))
        code, out, err = result
        assert_one_line_error(code, out, err, "not a regular file")


def test_plans_never_print_infinity(model: str) -> None:
    plan = plan_split(model, "seed")
    text = plan.to_json()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in plan JSON"))


# ---------------------------------------------------------------------------------------------
# Bench records (calibrate)
# ---------------------------------------------------------------------------------------------

RECORD = {"engine": "llama.cpp", "status": "ok", "config": "default", "test": "tg64", "model": "tiny",
          "rig": "rig", "n_prompt": 512, "n_gen": 64, "ubatch": 512, "avg_ts": 10.0,
          "placement": {"order": [], "layer_home": ["CPU", "CPU"], "cpu_experts": [[], []], "output": "CPU"}}
HOSTILE_RECORDS = [
    pytest.param({"avg_ts": float("nan")}, "NaN", id="NaN speed"),
    pytest.param({"avg_ts": float("inf")}, "Infinity", id="Infinity speed"),
    pytest.param({"avg_ts": -3.0}, "avg_ts = -3 is out of range", id="negative speed"),
    pytest.param({"avg_ts": "fast"}, "avg_ts must be a number", id="string speed"),
    pytest.param({"n_prompt": 10 ** 40}, "digits", id="huge count"),
    pytest.param({"ubatch": 0}, "ubatch = 0 is out of range", id="ubatch 0"),
    pytest.param({"test": None}, "test must be a string", id="null test"),
    pytest.param({"config": None, "status": None}, "must be a string", id="null config"),
    pytest.param({"argv": "-ngl 99"}, "argv must be a list of strings", id="argv string"),
    pytest.param({"predicted": {"tg_tps": "x"}}, "predicted.tg_tps must be a number", id="bad prediction"),
    pytest.param({"placement": {"order": []}}, "placement must be an object with", id="placement missing keys"),
    pytest.param({"placement": {**RECORD["placement"], "layer_home": ["CPU"]}}, "1 layer homes",
                 id="placement of the wrong length"),
    pytest.param({"placement": {**RECORD["placement"], "layer_home": ["CUDA7", "CPU"]}}, "CUDA7",
                 id="placement on an unknown device"),
    pytest.param({"placement": {**RECORD["placement"], "cpu_experts": [["gills"], []]}}, "gills",
                 id="unknown expert kind"),
    pytest.param({"model": "../../../etc/tiny"}, "not a plain file name", id="model ../ escape"),
    pytest.param({"rig": "/etc/rig"}, "not a plain file name", id="rig absolute path"),
    pytest.param({"model": ".hidden"}, "not a plain file name", id="model dot file"),
]


@pytest.fixture
def record_dir(tmp_path: Path, model: str) -> Path:
    d = tmp_path / "recs"
    d.mkdir()
    (d / "tiny.hdr.gguf").write_bytes(Path(model).read_bytes())
    (d / "rig.toml").write_text(gpu())
    return d


def calibrate(d: Path, records: list[Any] | str | bytes) -> tuple[int, str, str]:
    path = d / "records.jsonl"
    if isinstance(records, bytes):
        path.write_bytes(records)
    else:
        path.write_text(records if isinstance(records, str) else "".join(json.dumps(r) + "\n" for r in records))
    return run(["calibrate", str(path), "--no-save"])


@pytest.mark.parametrize(("change", "fragment"), HOSTILE_RECORDS)
def test_hostile_records(record_dir: Path, change: dict[str, Any], fragment: str) -> None:
    code, out, err = calibrate(record_dir, [{**RECORD, **change}])
    assert_one_line_error(code, out, err, fragment)


def test_record_names_cannot_leave_the_records_folder(tmp_path: Path, record_dir: Path, model: str) -> None:
    """A planted header one folder up is never reached through a record's ``model: ../tiny``."""
    (tmp_path / "tiny.hdr.gguf").write_bytes(Path(model).read_bytes())
    code, out, err = calibrate(record_dir, [{**RECORD, "model": "../tiny"}])
    assert_one_line_error(code, out, err, "'../tiny' is not a plain file name")


@pytest.mark.parametrize("content, fragment", [
    (b"\x00\xff\xfe binary", "not UTF-8"), ('{"engine": 1' + "0" * 5000 + "}\n", "digits"),
    ("[" * 50_000 + "\n", "nests too deeply"), ("{}\n", "not an omni_place bench record")])
def test_hostile_record_files(record_dir: Path, content: str | bytes, fragment: str) -> None:
    code, out, err = calibrate(record_dir, content)
    assert_one_line_error(code, out, err, fragment)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_records_from_a_fifo_do_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "records.jsonl"
    os.mkfifo(fifo)
    result = _in_thread(lambda: load_records([fifo]))
    assert isinstance(result, InvalidArgumentError) and "not a regular file" in str(result), result


# ---------------------------------------------------------------------------------------------
# The saved calibration store
# ---------------------------------------------------------------------------------------------


def _seed_store(content: bytes | None = None, params: dict[str, Any] | None = None) -> Path:
    path = store_path("seed")
    path.parent.mkdir(parents=True, exist_ok=True)
    if params is not None:
        content = json.dumps({"schema": SCHEMA, "engines": {"llama.cpp": params}}).encode()
    path.write_bytes(content or b"")
    return path


@pytest.mark.parametrize("content, params, fragment", [
    (b"\xff\xfe binary", None, "not UTF-8"), (b"{", None, "not JSON"), (b"[]", None, "is not an omni_place"),
    (None, {"gpu_bw_scale": float("nan")}, "NaN"), (None, {"gpu_bw_scale": "fast"}, "must be a number"),
    (None, {"gpu_bw_scale": -0.5}, "out of range"), (None, {"op_offload_min_batch": 2.5}, "must be an integer"),
    (None, "params", "not an object"),
])
def test_a_corrupt_calibration_never_breaks_plans(model: str, content: bytes | None, params: Any,
                                                  fragment: str) -> None:
    """The store is ignored with a note naming the file and what to do; the plan is made with
    the default speed parameters."""
    path = _seed_store(content, params)
    try:
        code, out, err = run(["plan", model, "--preset", "seed", "--format", "json"])
        assert code == 0, err
        doc = json.loads(out)
        notes = [n for n in doc["notes"] if n.startswith("ignored: saved calibration")]
        assert len(notes) == 1 and str(path) in notes[0] and fragment in notes[0], doc["notes"]
        assert doc["solve"]["speed_params"] == "defaults"
        check = plan_split(model, "seed")
        assert any("delete it" in n for n in check.notes)
    finally:
        path.unlink()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_the_store_does_not_block(model: str) -> None:
    path = store_path("seed")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    try:
        params, note = _in_thread(lambda: read_calibration("seed"))
        assert params is None and note is not None and "not a regular file" in note
    finally:
        path.unlink()


def test_store_names_stay_in_the_store(tmp_path: Path) -> None:
    """A cluster name longer than a file name, or one with separators, is one safe path
    component (it became a calibration path and raised ENAMETOOLONG, or left the folder)."""
    for name in ("x" * 5000, "../../../../tmp/evil", "a/b\\c\0d", "..", ""):
        mid = machine_id(name)
        assert "/" not in mid and "\\" not in mid and "\0" not in mid and not mid.startswith(".")
        assert 0 < len(mid) <= 100
        path = save_calibration(mid, {"llama.cpp": SpeedParams()})
        try:
            assert path.parent == store_path("x").parent
            assert read_calibration(mid) == (SpeedParams(), None)
        finally:
            path.unlink()
    assert machine_id("x" * 5000) != machine_id("x" * 4999)  # long names stay distinct


def test_saving_is_atomic_and_refuses_nan(tmp_path: Path) -> None:
    path = tmp_path / "store" / "m.json"
    save_calibration("m", {"llama.cpp": SpeedParams()}, path=path)
    with pytest.raises(ValueError):
        save_calibration("m", {"llama.cpp": SpeedParams(gpu_bw_scale=float("nan"))}, path=path)
    assert read_calibration("m", path=path) == (SpeedParams(), None)  # the old file is intact
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]  # no temporary file left


# ---------------------------------------------------------------------------------------------


def _in_thread(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """fn's result or exception; fails the test if it blocks (a FIFO read waits for a writer)."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as err:  # noqa: BLE001 - returned to the test
            box.append(err)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "blocked"
    return box[0]
