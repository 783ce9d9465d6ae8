"""`omni-place devices` through the real entry point (omni_place.cli.main)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from omni_place.devices import nvml as nvml_mod
from omni_place.cli import main


@pytest.fixture()
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml_mod, "_import_nvml", lambda: None)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["devices", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, out: str, err: str, fragment: str) -> None:
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("error: ") and fragment in lines[0], err
    assert all(line.startswith("hint: ") for line in lines[1:]) and len(lines) <= 2, err
    assert "Traceback" not in err


def test_discovered_text_table(capsys: pytest.CaptureFixture[str], two_gpus: None) -> None:
    code, out, err = run(capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("cluster: ")
    header = lines[1].split()
    assert header[:3] == ["NAME", "KIND", "MODEL"] and header[-1] == "SOURCE"
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == ["CUDA0", "CUDA1", "CPU"]
    assert "RTX PRO 6000 Blackwell Workstation" in rows["CUDA0"] and "RTX 5090" in rows["CUDA1"]
    assert "95.0/95.6" in rows["CUDA0"] and "1792" in rows["CUDA0"] and "500" in rows["CUDA0"]
    assert "PCIe5 x16 63.0 GB/s" in rows["CUDA0"] and " no " in rows["CUDA0"]
    assert rows["CUDA0"].rstrip().endswith("nvml+catalog+estimated")
    assert "threads" in rows["CPU"]
    # columns are aligned: every row starts its KIND column at the same offset
    assert len({line.index(" gpu ") if " gpu " in line else line.index(" cpu ") for line in lines[2:]}) == 1
    assert "note: CPU memory bandwidth assumed" in err


def test_no_nvml_prints_cpu_only(capsys: pytest.CaptureFixture[str], no_nvml: None) -> None:
    code, out, err = run(capsys)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["CPU"]
    assert "note: NVML is not available" in err and "Traceback" not in err


def test_real_machine_never_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert code == 0 and "CPU" in out and "Traceback" not in err


def test_json(capsys: pytest.CaptureFixture[str], two_gpus: None) -> None:
    code, out, _ = run(capsys, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert [d["name"] for d in doc["devices"]] == ["CUDA0", "CUDA1", "CPU"]
    cuda0 = doc["devices"][0]
    assert cuda0["model"] == "RTX PRO 6000 Blackwell Workstation" and cuda0["kind"] == "gpu"
    assert cuda0["bandwidth_gbs"] == 1792 and cuda0["peer_access"] is False
    assert cuda0["source"]["bandwidth"] == "catalog" and cuda0["pcie_gen"] == 5
    assert {"memory_bytes", "total_bytes", "free_bytes", "tflops", "link_gbs", "link_latency_us",
            "endpoint", "host", "threads", "margin_bytes"} <= set(cuda0)
    assert doc["notes"]


def test_preset_seed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--preset", "seed")
    assert code == 0
    assert out.startswith("cluster: seed -- ")
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "RTX PRO 6000 Blackwell Workstation" in rows["CUDA0"] and "-/96.0" in rows["CUDA0"]
    assert "RTX 5090" in rows["CUDA1"] and "PCIe5 x16 63.0 GB/s" in rows["CUDA1"]
    assert "360" in rows["CPU"] and "(32 threads, AVX512)" in rows["CPU"]
    code, out, _ = run(capsys, "--preset", "seed", "--format", "json")
    assert json.loads(out)["name"] == "seed"


def test_cluster_file_with_rpc(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "box.toml"
    path.write_text('[[devices]]\nname = "RPC0"\nkind = "rpc"\ncatalog = "RTX 3090"\n'
                    'endpoint = "10.0.0.7:50052"\n[[devices]]\nname = "CPU"\nkind = "cpu"\n'
                    'memory_gib = 64\nbandwidth_gbs = 50\nthreads = 8\n', encoding="utf-8")
    code, out, _ = run(capsys, "--cluster", str(path))
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "RTX 3090 @ 10.0.0.7:50052" in rows["RPC0"] and "net 1.25 GB/s" in rows["RPC0"]


def test_list_presets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--list-presets")
    assert code == 0 and out.startswith("3090-ddr4") and "seed " in out


def test_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_one_line_error(*run(capsys, "--preset", "seed", "--cluster", "x.toml"), "mutually exclusive")
    assert_one_line_error(*run(capsys, "--preset", "sead"), "unknown preset 'sead'")
    assert_one_line_error(*run(capsys, "--cluster", str(tmp_path / "none.toml")), "not found")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[devices]]\nname = "CUDA0"\nkind = "gpu"\nmemory_gib = -1\nbandwidth_gbs = 1\n',
                   encoding="utf-8")
    assert_one_line_error(*run(capsys, "--cluster", str(bad)), f"{bad}:4: ")
    code, _, err = run(capsys, "--format", "xml")
    assert code == 2 and "xml" in err and "Traceback" not in err


def test_measure(capsys: pytest.CaptureFixture[str], no_nvml: None) -> None:
    start = time.perf_counter()
    code, out, err = run(capsys, "--measure", "--format", "json")
    assert time.perf_counter() - start < 10
    assert code == 0
    cpu = json.loads(out)["devices"][-1]
    assert cpu["name"] == "CPU" and cpu["source"]["bandwidth"] == "measured"
    assert 0.5 < cpu["bandwidth_gbs"] < 5000


def test_measure_with_preset_says_it_is_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--preset", "seed", "--measure")
    assert code == 0 and "--measure ignored" in err


def test_help_documents_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for key in ("[[devices]]", "memory_gib", "bandwidth_gbs", "endpoint", "margin_mib", "peer_access",
                "catalog", "Example:"):
        assert key in out
