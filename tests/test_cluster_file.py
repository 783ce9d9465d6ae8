"""Cluster files and presets: valid files, every error path with its line, resolve_cluster."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from .test_devices_nvml import RTX5090, FakeNvml, gpu

import omni_place
from omni_place.devices import (
    DEFAULT_RPC_LATENCY_US,
    DEFAULT_RPC_LINK_GBS,
    Cluster,
    Device,
    list_presets,
    load_cluster,
    load_preset,
    pcie_gbs,
    resolve_cluster,
)
from omni_place.devices import cluster as cluster_mod
from omni_place.devices import nvml as nvml_mod
from omni_place.errors import ClusterError, InvalidArgumentError
from omni_place.units import GiB, MiB


VALID = """\
# a desk with a local 4090, a remote 3090 and a described CPU
name = "desk"
description = "test machine"

[[devices]]
name = "CPU"
kind = "cpu"
model = "Test CPU"
memory_gib = 120
bandwidth_gbs = 65.5
threads = 16
margin_mib = 2048

[[devices]]
name = "CUDA1"
kind = "gpu"
model = "home-made"
memory_gib = 11.5
bandwidth_gbs = 448
tflops = 60
pcie_gen = 3
pcie_width = 8
link_latency_us = 7

[[devices]]
name = "RPC0"
kind = "rpc"
catalog = "rtx 3090"
memory_gib = 23.5
endpoint = "192.168.7.20:50052"

[[devices]]
name = "CUDA0"
kind = "gpu"
catalog = "RTX 4090"
link_gbs = 20
peer_access = false
"""


def write(tmp_path: Path, text: str, name: str = "cluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ClusterError:
    path = write(tmp_path, text)
    with pytest.raises(ClusterError) as info:
        load_cluster(path)
    assert str(info.value).startswith(f"{path}:"), str(info.value)
    assert "\n" not in str(info.value)
    return info.value


def line_of(err: ClusterError) -> int:
    m = re.match(r".*?\.toml:(\d+)(?::\d+)?: ", str(err))
    assert m, str(err)
    return int(m[1])


def test_valid_file(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, VALID))
    assert cluster.name == "desk" and cluster.description == "test machine"
    assert [d.name for d in cluster.devices] == ["RPC0", "CUDA0", "CUDA1", "CPU"]  # engine order
    assert [d.name for d in cluster.gpus] == ["RPC0", "CUDA0", "CUDA1"]

    rpc = cluster.by_name("RPC0")
    assert rpc.kind == "rpc" and rpc.model == "RTX 3090" and rpc.endpoint == "192.168.7.20:50052"
    assert rpc.memory_bytes == int(23.5 * GiB) and rpc.bandwidth_gbs == 936.0 and rpc.tflops == 142.0
    assert rpc.host == "192.168.7.20"
    assert rpc.link_gbs == DEFAULT_RPC_LINK_GBS
    assert rpc.link_latency_us == DEFAULT_RPC_LATENCY_US
    assert rpc.source["memory"] == "file" and rpc.source["bandwidth"] == "catalog"
    assert rpc.source["link"] == "estimated"

    cuda0 = cluster.by_name("CUDA0")
    assert cuda0.memory_bytes == 24 * GiB and cuda0.link_gbs == 20.0
    assert (cuda0.pcie_gen, cuda0.pcie_width) == (4, 16) and cuda0.peer_access is False
    assert cuda0.margin_bytes == 512 * MiB and cuda0.host == "local"
    assert cuda0.source["link"] == "file" and cuda0.source["peer_access"] == "file"

    cuda1 = cluster.by_name("CUDA1")
    assert cuda1.model == "home-made" and cuda1.tflops == 60.0
    assert cuda1.link_gbs == pytest.approx(7.88) and cuda1.link_latency_us == 7.0
    assert cuda1.peer_access is None and cuda1.source["link"] == "file"

    cpu = cluster.cpu
    assert cpu is not None and cpu.name == "CPU" and cpu.model == "Test CPU"
    assert cpu.memory_bytes == 120 * GiB and cpu.bandwidth_gbs == 65.5 and cpu.threads == 16
    assert cpu.margin_bytes == 2048 * MiB and cpu.usable_bytes == 118 * GiB
    assert cpu.source["bandwidth"] == "file"
    # the home-made GPU states no compute capability: its speed is the catalog's default row
    assert len(cluster.notes) == 1 and cluster.notes[0].startswith(
        "speed of CUDA1 (compute capability unknown) is priced with the GPU catalog's default row")
    json.dumps(cluster.to_dict())  # JSON-ready


def test_file_without_cpu_uses_this_machine(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, """\
        [[devices]]
        name = "CUDA0"
        kind = "gpu"
        catalog = "H100 PCIe"
        """, name="gpu-only.toml"))
    assert cluster.name == "gpu-only"
    assert cluster.cpu is not None and cluster.cpu.source["memory"] in ("os", "estimated")
    assert cluster.cpu.source["bandwidth"] == "estimated"
    assert any("this machine's CPU" in n for n in cluster.notes)


def test_partial_cpu_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probed: list[int] = []
    monkeypatch.setattr(cluster_mod, "measure_memory_bandwidth",
                        lambda threads: probed.append(threads) or 123.0)
    # an idle machine: a busy one is test_devices_measure.py's test_busy_probe_is_noted
    monkeypatch.setattr(cluster_mod, "others_cpu_share", lambda probe: (probe(), 0.0))
    cluster = load_cluster(write(tmp_path, """\
        [[devices]]
        name = "CPU"
        kind = "cpu"
        memory_gib = 8
        threads = 3
        """), measure=True)
    cpu = cluster.cpu
    assert cpu is not None and cpu.memory_bytes == 8 * GiB and cpu.source["memory"] == "file"
    assert cpu.source["bandwidth"] == "measured" and cpu.bandwidth_gbs == 123.0
    assert probed == [3] and cluster.notes == ()
    # a bandwidth in the file wins over --measure
    cluster = load_cluster(write(tmp_path, "[[devices]]\nname = 'CPU'\nkind = 'cpu'\nbandwidth_gbs = 99\n"),
                           measure=True)
    assert cluster.cpu is not None and cluster.cpu.bandwidth_gbs == 99 and probed == [3]


def test_discover_true_merges_nvml_gpus_and_rpc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = write(tmp_path, """\
        discover = true
        [[devices]]
        name = "RPC0"
        kind = "rpc"
        memory_gib = 64
        bandwidth_gbs = 200
        endpoint = "127.0.0.1:50052"
        [[devices]]
        name = "CPU"
        kind = "cpu"
        bandwidth_gbs = 300
        """)
    cluster = load_cluster(path, nvml=FakeNvml([gpu("z", 1, **RTX5090)]))
    assert [d.name for d in cluster.devices] == ["RPC0", "CUDA0", "CPU"]
    assert cluster.by_name("CUDA0").source["memory"] == "nvml"
    assert cluster.by_name("RPC0").host == "local"  # loopback
    assert cluster.cpu is not None and cluster.cpu.bandwidth_gbs == 300


def test_inline_devices_array(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, 'devices = [{name = "CPU", kind = "cpu", memory_gib = 4}]\n'))
    assert cluster.cpu is not None and cluster.cpu.memory_bytes == 4 * GiB
    err = error_of(tmp_path, 'name = "x"\ndevices = [{name = "CPU", kind = "cpu", memory_gib = -4}]\n')
    assert line_of(err) == 2 and "memory_gib must be positive" in str(err)


GPU_HEAD = """\
[[devices]]
name = "CUDA0"
kind = "gpu"
"""

# (file text, expected line, a fragment of the message, a fragment of the hint or None)
ERRORS = [
    ("name = 'x'\n[[devices]\nname = 'CPU'\n", 2, "invalid TOML", "TOML syntax"),
    ("nmae = 'x'\n" + GPU_HEAD + "catalog = 'RTX 4090'\n", 1, "unknown top-level key 'nmae'", "'name'"),
    ("discover = 'yes'\n" + GPU_HEAD, 1, "discover must be true or false", None),
    ("name = 'x'\n", 1, "describes no devices", "discover = true"),
    ("devices = 3\n", 1, "array of tables", None),
    (GPU_HEAD + "catalog = 'RTX 4090'\nbandwith_gbs = 900\n", 5, "unknown device key 'bandwith_gbs'",
     "'bandwidth_gbs'"),
    ("# c\n[[devices]]\nkind = 'gpu'\n", 2, "has no 'name'", None),
    ("[[devices]]\nname = 'CPU'\n", 1, "has no 'kind'", None),
    ("[[devices]]\nname = 'CUDA0'\nkind = 'gpus'\n", 3, "kind 'gpus' is not one of", "'gpu'"),
    (GPU_HEAD + "memory_gib = 0\nbandwidth_gbs = 900\n", 4, "memory_gib must be positive", None),
    (GPU_HEAD + "memory_gib = -24\nbandwidth_gbs = 900\n", 4, "memory_gib must be positive", None),
    (GPU_HEAD + "memory_gib = 24\nbandwidth_gbs = 0\n", 5, "bandwidth_gbs must be positive", None),
    (GPU_HEAD + "memory_gib = 24\nbandwidth_gbs = -1.5\n", 5, "bandwidth_gbs must be positive", None),
    (GPU_HEAD + "memory_gib = 24\nbandwidth_gbs = nan\n", 5, "must be finite", None),
    (GPU_HEAD + "memory_gib = '24'\nbandwidth_gbs = 900\n", 4, "memory_gib must be a number", None),
    (GPU_HEAD + "memory_gib = true\nbandwidth_gbs = 900\n", 4, "memory_gib must be a number", None),
    (GPU_HEAD + "catalog = 'RTX 4090'\ntflops = 0\n", 5, "tflops must be positive", None),
    (GPU_HEAD + "catalog = 'RTX 4090'\nlink_latency_us = -1\n", 5, "must not be negative", None),
    (GPU_HEAD + "catalog = 'RTX 4090'\nmargin_mib = -512\n", 5, "must not be negative", None),
    (GPU_HEAD + "catalog = 'RTX 4090'\npeer_access = 1\n", 5, "peer_access must be true or false", None),
    (GPU_HEAD + "memory_gib = 24\n", 1, "needs bandwidth_gbs or a catalog GPU", None),
    (GPU_HEAD + "bandwidth_gbs = 24\n", 1, "needs memory_gib or a catalog GPU", None),
    (GPU_HEAD + "catalog = 'RTX 5909'\n", 4, "unknown catalog GPU 'RTX 5909'", "'RTX 5090'"),
    (GPU_HEAD + "catalog = 'RTX 4090'\nendpoint = 'a:1'\n", 5, "'endpoint' does not apply to kind 'gpu'",
     None),
    (GPU_HEAD + "catalog = 'RTX 4090'\nthreads = 8\n", 5, "'threads' does not apply", None),
    (GPU_HEAD + "catalog = 'RTX 4090'\npcie_gen = 7\n", 5, "pcie_gen 7 is not a PCIe generation", None),
    (GPU_HEAD + "catalog = 'RTX 4090'\npcie_width = 12\n", 5, "pcie_width 12 is not a PCIe lane count", None),
    (GPU_HEAD + "memory_gib = 8\nbandwidth_gbs = 300\npcie_gen = 4\n", 6, "give pcie_width too", None),
    ("[[devices]]\nname = 'GPU0'\nkind = 'gpu'\ncatalog = 'L4'\n", 2, "'GPU0' is not a llama.cpp device name",
     "CUDA0"),
    ("[[devices]]\nname = 'cuda0'\nkind = 'gpu'\ncatalog = 'L4'\n", 2, "not a llama.cpp device name",
     "did you mean 'CUDA0'"),
    (GPU_HEAD + "catalog = 'L4'\n[[devices]]\nname = 'CUDA2'\nkind = 'gpu'\ncatalog = 'L4'\n", 5,
     "engine names them CUDA0..CUDA1", "without gaps"),
    ("[[devices]]\nname = 'RPC1'\nkind = 'rpc'\ncatalog = 'L4'\nendpoint = 'h:1'\n", 1,
     "engine names them RPC0..RPC0", None),
    ("[[devices]]\nname = 'rpc0'\nkind = 'rpc'\ncatalog = 'L4'\nendpoint = 'h:1'\n", 2, "is not RPC<n>",
     None),
    ("[[devices]]\nname = 'host'\nkind = 'cpu'\n", 2, "must be named 'CPU'", None),
    (GPU_HEAD + "catalog = 'L4'\n\n" + GPU_HEAD + "catalog = 'L4'\n", 6, "duplicate device name 'CUDA0'",
     None),
    ("[[devices]]\nname = 'CPU'\nkind = 'cpu'\n[[devices]]\nname = 'CPU'\nkind = 'cpu'\n", 4,
     "duplicate device name 'CPU' (first defined at line 1)", None),
    ("[[devices]]\nname = 'RPC0'\nkind = 'rpc'\ncatalog = 'L4'\n", 1, "rpc device 'RPC0' has no endpoint",
     "host:port"),
    ("[[devices]]\nname = 'RPC0'\nkind = 'rpc'\ncatalog = 'L4'\nendpoint = ''\n", 5, "is not host:port",
     None),
    ("[[devices]]\nname = 'CPU'\nkind = 'cpu'\nlink_gbs = 4\n", 4, "'link_gbs' does not apply to kind 'cpu'",
     None),
    ("[[devices]]\nname = 'CPU'\nkind = 'cpu'\nthreads = 0\n", 4, "threads must be positive", None),
    ("[[devices]]\nname = 'CPU'\nkind = 'cpu'\nthreads = 2.5\n", 4, "threads must be an integer", None),
    ("[[devices]]\nname = 'CPU'\nkind = 'cpu'\ncatalog = 'L4'\n", 4, "'catalog' does not apply", None),
    ("discover = true\n" + GPU_HEAD + "catalog = 'L4'\n", 2, "with discover = true local GPUs", "rpc"),
]


@pytest.mark.parametrize(("text", "line", "message", "hint"), ERRORS)
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str,
                                   hint: str | None) -> None:
    err = error_of(tmp_path, text)
    assert message in str(err)
    assert line_of(err) == line, str(err)
    if hint is not None:
        assert hint in err.hint


def test_syntax_error_reports_column(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[[devices]]\nname = \"CPU\"\nkind = = 'cpu'\n")
    assert re.search(r"\.toml:3:\d+: invalid TOML", str(err))


@pytest.mark.parametrize("endpoint", ["localhost", "host:0", "host:65536", "host:", ":50052",
                                      "[zz::1]:50052", "a b:1", "host:50052/x", "-bad:1"])
def test_bad_endpoints(tmp_path: Path, endpoint: str) -> None:
    err = error_of(tmp_path, f"[[devices]]\nname = 'RPC0'\nkind = 'rpc'\ncatalog = 'L4'\n"
                             f"endpoint = '{endpoint}'\n")
    assert line_of(err) == 5 and "is not host:port" in str(err)


@pytest.mark.parametrize(("endpoint", "host"), [("10.0.0.2:50052", "10.0.0.2"),
                                                ("gpu-box.lan:1", "gpu-box.lan"),
                                                ("localhost:50052", "local"), ("127.0.0.1:9", "local")])
def test_good_endpoints(tmp_path: Path, endpoint: str, host: str) -> None:
    path = write(tmp_path, "[[devices]]\nname = 'RPC0'\nkind = 'rpc'\ncatalog = 'L4'\n"
                           f"endpoint = '{endpoint}'\n")
    assert load_cluster(path).by_name("RPC0").host == host


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="cluster file not found"):
        load_cluster(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"name = '\xe9'\n")
    with pytest.raises(ClusterError, match="cannot read cluster file"):
        load_cluster(bad)


def test_presets_all_load() -> None:
    names = list_presets()
    assert {"seed", "4090x2-ddr5", "3090-ddr4", "h100-x2"} <= set(names)
    for name in names:
        cluster = load_preset(name)
        assert cluster.name == name and cluster.description
        assert cluster.cpu is not None and cluster.cpu.source["bandwidth"] == "file"
        assert cluster.cpu.threads and cluster.cpu.model
        assert cluster.gpus and cluster.notes == ()


def test_seed_preset() -> None:
    seed = load_preset("seed")
    pro, rtx = seed.gpus
    assert (pro.name, pro.model) == ("CUDA0", "RTX PRO 6000 Blackwell Workstation")
    assert pro.memory_bytes == 96 * GiB
    assert (rtx.name, rtx.model, rtx.memory_bytes) == ("CUDA1", "RTX 5090", 32 * GiB)
    for dev in (pro, rtx):
        assert (dev.pcie_gen, dev.pcie_width, dev.peer_access) == (5, 16, False)
        assert dev.link_gbs == pytest.approx(63.0, abs=0.1)
    cpu = seed.cpu
    assert cpu is not None and cpu.threads == 32 and cpu.bandwidth_gbs == 360
    assert 480 * GiB <= cpu.memory_bytes <= 512 * GiB


def test_unknown_preset_lists_available() -> None:
    with pytest.raises(ClusterError) as info:
        load_preset("sead")
    assert "seed" in str(info.value) and "'seed'" in info.value.hint
    with pytest.raises(ClusterError):
        load_preset("../presets/seed")


def test_resolve_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nvml_mod, "_import_nvml", lambda: None)
    assert [d.name for d in resolve_cluster("auto").devices] == ["CPU"]
    seed = resolve_cluster("seed")
    assert resolve_cluster(seed) is seed
    path = write(tmp_path, VALID)
    assert resolve_cluster(path).name == "desk"
    assert resolve_cluster(str(path)).name == "desk"
    with pytest.raises(ClusterError, match="not found"):
        resolve_cluster("missing.toml")
    with pytest.raises(ClusterError, match="no cluster file or preset named 'sed'"):
        resolve_cluster("sed")
    with pytest.raises(InvalidArgumentError):
        resolve_cluster(3)  # type: ignore[arg-type]


def test_public_exports() -> None:
    assert omni_place.Cluster is Cluster and omni_place.Device is Device
    assert omni_place.load_preset("seed").name == "seed"


def test_cluster_and_device_invariants() -> None:
    cpu = Device(name="CPU", kind="cpu", memory_bytes=GiB, bandwidth_gbs=10)
    gpu_dev = Device(name="CUDA0", kind="gpu", memory_bytes=GiB, bandwidth_gbs=10)
    rpc = Device(name="RPC0", kind="rpc", memory_bytes=GiB, bandwidth_gbs=10, endpoint="h:1")
    cluster = Cluster("c", (gpu_dev, cpu, rpc))
    assert cluster.gpus == (rpc, gpu_dev) and cluster.cpu is cpu
    with pytest.raises(ClusterError, match="did you mean 'CUDA0'"):
        try:
            cluster.by_name("CUDA9")
        except ClusterError as err:
            raise ClusterError(f"{err} {err.hint}") from None
    with pytest.raises(ClusterError, match="two devices"):
        Cluster("c", (cpu, cpu))
    with pytest.raises(ClusterError, match="more than one cpu"):
        Cluster("c", (cpu, Device(name="CPU2", kind="cpu", memory_bytes=GiB, bandwidth_gbs=1)))
    # 1e-308 GB/s is positive but prices a token at infinite seconds (found by benchmarks/fuzz_boundaries)
    for bad in (dict(memory_bytes=0), dict(bandwidth_gbs=0.0), dict(bandwidth_gbs=1e-308), dict(link_gbs=1e-9),
                dict(kind="tpu"), dict(margin_bytes=-1), dict(kind="rpc")):
        with pytest.raises(ClusterError):
            Device(**{"name": "X", "kind": "gpu", "memory_bytes": GiB, "bandwidth_gbs": 1.0, **bad})
    with pytest.raises(TypeError):
        cpu.source["memory"] = "file"  # type: ignore[index]


def test_pcie_table() -> None:
    assert pcie_gbs(3, 16) == pytest.approx(15.76)
    assert pcie_gbs(4, 16) == pytest.approx(31.504)
    assert pcie_gbs(5, 16) == pytest.approx(63.008)
    assert pcie_gbs(6, 16) == pytest.approx(121.0, abs=0.01)
    assert pcie_gbs(4, 8) == pytest.approx(pcie_gbs(4, 16) / 2)
    for gen, width in ((7, 16), (4, 3), (0, 16)):
        with pytest.raises(ClusterError):
            pcie_gbs(gen, width)


def _cpu_key(tmp_path: Path, good: str, bad: tuple[tuple[str, str], ...]) -> Any:
    """The CPU of a file with the cpu-only key line ``good``; each of ``bad`` (a line, the error's
    words) refused, and the key refused on a GPU."""
    ok = tmp_path / "ok.toml"
    ok.write_text(f'[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 64\nbandwidth_gbs = 80\n{good}\n')
    for line, msg in bad:
        p = tmp_path / "bad.toml"
        p.write_text(f'[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 64\n{line}\n')
        with pytest.raises(ClusterError, match=msg):
            load_cluster(p, nvml=None)
    gpu = tmp_path / "gpu.toml"
    gpu.write_text(f'[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "RTX 4090"\n{good}\n')
    with pytest.raises(ClusterError, match="does not apply"):
        load_cluster(gpu, nvml=None)
    return load_cluster(ok, nvml=None).cpu


def test_disk_gbs_is_a_cpu_figure(tmp_path: Path) -> None:
    from omni_place.cpuprobe import measure_disk_read_bandwidth

    assert _cpu_key(tmp_path, "disk_gbs = 3.5", (('disk_gbs = 0', "must be positive"),
                                                  ('disk_gbs = "fast"', "number"))).disk_gbs == 3.5
    assert measure_disk_read_bandwidth(tmp_path, size_bytes=8 << 20) > 0
    assert not list(tmp_path.glob("omni_place_disk_*"))  # the probe file is removed


def test_simd_says_which_cpu_kernels_the_engine_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``simd`` names the CPU build's SIMD (kernels.CPU_SIMD); a file's CPU without it is priced
    over both builds, a CPU the file leaves out takes this machine's flags' widest (a native build)."""
    from omni_place import cpuprobe
    from omni_place.kernels import cpu_simd

    assert _cpu_key(tmp_path, 'simd = "avx2"', (('simd = "avx1024"', "not one of avx2, avx512"),
                                                ("simd = 512", "must be a string"))).simd == "avx2"
    assert cpu_simd("fpu avx2 fma f16c avx512f avx512bw avx512vl".split()) == "avx512"
    assert cpu_simd("fpu avx2 fma f16c avx512f".split()) == "avx2"  # F alone is not ggml's AVX512 build
    assert cpu_simd("fp asimd sve".split()) is None
    text = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 fma f16c\n\nprocessor\t: 1\nmodel name\t: X\n"
    assert cpuprobe._parse_cpuinfo(text, None)[3] == {"fpu", "avx2", "fma", "f16c"}
    monkeypatch.setattr(cluster_mod, "cpu_info", lambda: cpuprobe.CpuInfo("X", 4, 8, 64 << 30, 60 << 30,
                                                                           frozenset({"avx2", "fma", "f16c"})))
    half = tmp_path / "half.toml"
    half.write_text('[[devices]]\nname = "CPU"\nkind = "cpu"\nbandwidth_gbs = 80\n')
    assert load_cluster(half, nvml=None).cpu.simd is None
    no_cpu = tmp_path / "no_cpu.toml"  # the whole CPU from this machine
    no_cpu.write_text('[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "RTX 4090"\n')
    assert load_cluster(no_cpu, nvml=None).cpu.simd == "avx2"
