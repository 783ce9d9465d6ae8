"""The GPU catalog: required GPUs, sane figures with sources, unique names and aliases, matching."""
from __future__ import annotations

import math
from importlib import resources

import pytest
import tomllib

from omni_place.catalog import (
    PCIE_GBS_PER_LANE,
    PCIE_WIDTHS,
    load_catalog,
    lookup,
    match_gpu,
    normalize_name,
    suggest,
)
from omni_place.units import GiB, MiB


REQUIRED = [
    "RTX 3060 12GB", "RTX 3090", "RTX 4060 Ti 16GB", "RTX 4090", "RTX 5090", "RTX A6000",
    "RTX 6000 Ada", "RTX PRO 6000 Blackwell Workstation", "RTX PRO 6000 Blackwell Max-Q",
    "Tesla P40", "A100 PCIe 40GB", "A100 PCIe 80GB", "A100 SXM 40GB", "A100 SXM 80GB",
    "H100 PCIe", "H100 SXM", "H200", "L40S",
]

# NVML name -> (memory NVML reports, catalog entry expected)
NVML_NAMES = [
    ("NVIDIA GeForce RTX 5090", 32607 * MiB, "RTX 5090"),
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 97887 * MiB, "RTX PRO 6000 Blackwell Workstation"),
    ("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", 97887 * MiB, "RTX PRO 6000 Blackwell Max-Q"),
    ("NVIDIA H100 80GB HBM3", 81559 * MiB, "H100 SXM"),
    ("NVIDIA H100 PCIe", 81559 * MiB, "H100 PCIe"),
    ("NVIDIA H200", 143771 * MiB, "H200"),
    ("NVIDIA A100-SXM4-80GB", 81920 * MiB, "A100 SXM 80GB"),
    ("NVIDIA A100-PCIE-40GB", 40960 * MiB, "A100 PCIe 40GB"),
    ("NVIDIA GeForce RTX 3090", 24576 * MiB, "RTX 3090"),
    ("GeForce RTX 3090", 24576 * MiB, "RTX 3090"),  # older drivers omit "NVIDIA"
    ("NVIDIA GeForce RTX 4060 Ti", 16380 * MiB, "RTX 4060 Ti 16GB"),
    ("NVIDIA GeForce RTX 3060", 12288 * MiB, "RTX 3060 12GB"),
    ("Tesla P40", 24576 * MiB, "Tesla P40"),
    ("NVIDIA RTX 6000 Ada Generation", 49140 * MiB, "RTX 6000 Ada"),
    ("NVIDIA RTX A6000", 49140 * MiB, "RTX A6000"),
    ("NVIDIA L40S", 46068 * MiB, "L40S"),
]


def test_required_gpus_present() -> None:
    names = {spec.name for spec in load_catalog()}
    assert set(REQUIRED) <= names, set(REQUIRED) - names


@pytest.mark.parametrize(("nvml_name", "total", "expected"), NVML_NAMES)
def test_nvml_names_match(nvml_name: str, total: int, expected: str) -> None:
    spec = match_gpu(nvml_name, total)
    assert spec is not None and spec.name == expected
    assert match_gpu(nvml_name) is not None  # without a size the alias alone matches


def test_sizes_the_catalog_lacks_do_not_match() -> None:
    assert match_gpu("NVIDIA GeForce RTX 3060", 8 * GiB) is None
    assert match_gpu("NVIDIA GeForce RTX 4060 Ti", 8 * GiB) is None
    assert match_gpu("NVIDIA GeForce RTX 4090", 48 * GiB) is None  # modded 48 GB boards
    assert match_gpu("NVIDIA Unknown GPU", 8 * GiB) is None


def test_every_entry_is_complete_and_sane() -> None:
    for spec in load_catalog():
        where = spec.name
        assert 8 <= spec.memory_gib <= 200, where
        assert 200 <= spec.bandwidth_gbs <= 10_000, where
        assert 5 <= spec.fp16_tflops <= 2_500, where  # dense: no GPU here reaches 2.5 PFLOPS
        assert spec.pcie_gen in PCIE_GBS_PER_LANE and spec.pcie_width in PCIE_WIDTHS, where
        assert spec.source.startswith("https://") and " " not in spec.source, where
        assert spec.aliases and all(a.strip() == a and a for a in spec.aliases), where
        assert all(math.isfinite(v) for v in (spec.memory_gib, spec.bandwidth_gbs, spec.fp16_tflops))
        assert spec.link_gbs == pytest.approx(PCIE_GBS_PER_LANE[spec.pcie_gen] * spec.pcie_width)


def test_file_has_every_field_and_nothing_else() -> None:
    text = (resources.files("omni_place") / "data" / "gpu_catalog.toml").read_text(encoding="utf-8")
    required = {"name", "memory_gib", "bandwidth_gbs", "fp16_tflops", "compute_capability", "pcie_gen",
                "pcie_width", "aliases", "source"}
    for entry in tomllib.loads(text)["gpu"]:
        assert required <= set(entry) <= required | {"note", "fp32_accumulate_share"}, entry.get("name")


def test_geforce_cards_accumulate_fp32_at_half_rate() -> None:
    """The datasheets' FP16 figure is FP16-accumulate; GeForce cards run FP32-accumulate (flash
    attention's) at half of it, workstation and datacenter cards at all of it."""
    for spec in load_catalog():
        geforce = spec.name.startswith("RTX ") and spec.name[4:5].isdigit() and "Ada" not in spec.name
        assert spec.fp32_accumulate_share == (0.5 if geforce else 1.0), spec.name


def test_names_and_aliases_unique() -> None:
    names = [normalize_name(s.name) for s in load_catalog()]
    assert len(names) == len(set(names))
    aliases = [normalize_name(a) for s in load_catalog() for a in s.aliases]
    assert len(aliases) == len(set(aliases)), sorted(a for a in aliases if aliases.count(a) > 1)


def test_known_datasheet_figures() -> None:
    def fig(name: str) -> tuple[float, float, float, int, int]:
        spec = lookup(name)
        assert spec is not None, name
        return spec.memory_gib, spec.bandwidth_gbs, spec.fp16_tflops, spec.pcie_gen, spec.pcie_width

    assert fig("RTX 4090") == (24, 1008, 330.3, 4, 16)
    assert fig("RTX 5090") == (32, 1792, 419.0, 5, 16)
    assert fig("RTX PRO 6000 Blackwell Workstation")[:2] == (96, 1792)
    assert fig("RTX 4060 Ti 16GB")[3:] == (4, 8)  # an x8 card
    assert fig("H100 SXM")[:3] == (80, 3350, 989.5)
    assert fig("A100 SXM 80GB")[:3] == (80, 2039, 312.0)
    assert fig("L40S")[2] == pytest.approx(362.05)
    assert fig("Tesla P40")[3] == 3


def test_lookup_and_suggest() -> None:
    assert lookup("rtx   4090") is lookup("RTX 4090")  # case and spacing do not matter
    assert lookup("NVIDIA GeForce RTX 4090") is lookup("RTX 4090")  # aliases work too
    assert lookup("RTX 9999") is None
    assert suggest("RTX 409")[0] == "RTX 4090"
    assert suggest("qwerty") == []
