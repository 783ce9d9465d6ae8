"""Gemma 4's attention as the speed model prices it: SWA layers with heads of their own width and
the last ``shared_kv_layers`` layers attending to an earlier layer's cache (the engine's bytes are
checked in tests/test_model_engine.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from omni_place.cost import CPU, Context, CostModel, placement_from_counts
from omni_place.devices import resolve_cluster
from omni_place.model import load_model

from .arch_models import write_model

CLUSTER = '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 64\nbandwidth_gbs = 50\nthreads = 8\n'


@pytest.fixture
def gemma4(tmp_path: Path):
    path = write_model(tmp_path / "g4.gguf", "gemma4", n_layer=12, head_dim=64, n_embd=256, n_head=4, n_head_kv=2,
                       header_only=True, gemma4={"interval": 4, "shared": 4, "head_dim_swa": 32})
    return load_model(path)


def test_head_widths_by_layer_kind(gemma4) -> None:
    hp = gemma4.hparams
    assert [hp.dim_k(il) for il in range(4)] == [32, 32, 32, 64]  # layers 3, 7, 11 full attention
    assert (hp.head_dim_k, hp.head_dim_k_swa, hp.n_layer_kv_shared) == (64, 32, 4)
    kv = gemma4.kv_layer_bytes(4096, n_ubatch=512)
    assert kv[3] == 2 * 4096 * 2 * 64 * 2  # K and V, 2 heads of 64, F16, every cell
    assert kv[0] == 2 * 768 * 2 * 32 * 2  # the window's cells: 64 + 512, padded to 256
    assert kv[8:] == [0] * 4


def test_shared_layers_attend_to_their_sources_cache(gemma4, tmp_path: Path) -> None:
    """A shared layer reads the cache it reuses at decode and pays its attention FLOPs, as an
    owner of the same kind does; it holds no bytes of its own."""
    hp = gemma4.hparams
    cluster_file = tmp_path / "cpu.toml"
    cluster_file.write_text(CLUSTER)
    cost = CostModel(gemma4, resolve_cluster(cluster_file), Context(ctx=4096, depth=2048, n_gen=32))
    for il in range(8, 12):
        src = hp.kv_source(il)
        assert src in (6, 7) and hp.is_swa[src] == hp.is_swa[il]
        assert cost.kv[il] == 0 and cost.cache_read[il] == cost.cache_read[src] > 0
        assert cost._attn_tg[il] == pytest.approx(cost._attn_tg[src]) and cost._attn_tg[il] > 0
    placement = placement_from_counts(gemma4, [CPU], 0, [gemma4.n_layer])
    with_sharing = cost.predict(placement).tg_tps
    usage = next(u for u in cost.usage(placement) if u.name == CPU)
    assert usage.kv_bytes == sum(cost.kv)  # memory: the owners' caches only
    assert with_sharing > 0


def test_compute_buffers_beside_the_engines_dry_runs(tmp_path: Path) -> None:
    """Gemma 4 is not replayed (compute_graph.REPLAYED): its widths-only compute estimate beside
    the CPU backend's dry runs of 12 random shapes, dense and MoE, shared caches or not
    (benchmarks/results/compute_sweep_gemma4_cpu.jsonl: `python -m benchmarks.compute_sweep
    --cases 12 --seed 3 --archs gemma4`): within 20 %."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import hybrid_speed

    records = hybrid_speed.load_records(hybrid_speed.RESULTS / "compute_sweep_gemma4_cpu.jsonl")
    errors = hybrid_speed.price_compute(records, tmp_path)["gemma4"]
    assert len(errors) == 12 and all(abs(e) < 20 for e in errors), errors


def test_gemma3n_compute_buffers_beside_the_engines_dry_runs(tmp_path: Path) -> None:
    """Gemma 3n's four AltUp streams and per-layer inputs outlive what the widths price
    (compute.altup_floor): of the CPU backend's dry runs of random shapes the estimate stays within
    -24 .. +7 % of the 40 it was fitted to and -27 .. +10 % of 40 drawn after it, where the widths
    alone read as low as -64 % (benchmarks/results/compute_sweep_gemma3n_cpu*.jsonl:
    `python -m benchmarks.compute_sweep --cases 40 --archs gemma3n`, then `--seed 7`)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import hybrid_speed

    for name, low, high in (("compute_sweep_gemma3n_cpu.jsonl", -24, 7), ("compute_sweep_gemma3n_cpu_heldout.jsonl",
                                                                          -27, 10)):
        errors = hybrid_speed.price_compute(hybrid_speed.load_records(hybrid_speed.RESULTS / name), tmp_path)["gemma3n"]
        assert len(errors) == 40 and low < min(errors) and max(errors) < high, (name, sorted(errors))


def test_plan_notes_what_gemma3n_leaves_estimated(tmp_path: Path) -> None:
    """A Gemma 3n plan says its compute buffers are a fitted estimate and that its GPU prompt ran
    slower than priced; a Gemma 4 plan says neither."""
    from omni_place.plan import plan_split

    cluster_file = tmp_path / "cpu.toml"
    cluster_file.write_text(CLUSTER)
    for arch, noted in (("gemma3n", True), ("gemma4", False)):
        notes = plan_split(str(write_model(tmp_path / f"{arch}.gguf", arch, header_only=True)), str(cluster_file)).notes
        assert any("AltUp streams" in n and "omni-place verify" in n for n in notes) == noted, notes


@pytest.mark.parametrize("moe", [0, 1])
def test_ik_llama_cpp_allocates_the_same_caches_at_full_window(tmp_path: Path, moe: int) -> None:
    """ik_llama.cpp (8337e4cd3) loads Gemma 4 with the same shared layers and widths, its SWA
    caches full-size (its EngineTraits.swa_full): its llama-bench -v log of this writer's 6-layer
    model at a 2048-token context (benchmarks/results/ik_gemma4/)."""
    import re

    from omni_place.engines import dialect
    from omni_place.units import MiB

    log = (Path(__file__).resolve().parents[1] / "benchmarks/results/ik_gemma4" / f"g4{'m' * moe}.log").read_text()
    assert "n_ctx         = 2048" in log
    (mib,) = [float(m) for m in re.findall(r"CPU KV buffer size =\s+([0-9.]+) MiB", log)]
    model = load_model(write_model(tmp_path / "g4.gguf", "gemma4", head_dim=16, header_only=True,
                                   gemma4={"moe": moe}))
    assert dialect("ik_llama.cpp").traits.swa_full
    kv = model.kv_layer_bytes(2048, swa_full=True)
    assert abs(sum(kv) - mib * MiB) <= 0.005 * MiB and sum(kv) > sum(model.kv_layer_bytes(2048))


def test_an_empty_swa_head_is_refused(tmp_path: Path) -> None:
    """attention.key_length_swa = 0 where layers are SWA: one line naming the key (the engine would
    make empty K/V projections); absent, the full layers' width."""
    from omni_place.errors import GGUFFormatError
    from omni_place.gguf import read_model_files
    from omni_place.hparams import read_hparams

    path = write_model(tmp_path / "g4.gguf", "gemma4", head_dim=16, header_only=True)
    md = dict(read_model_files(path).metadata)
    with pytest.raises(GGUFFormatError, match=r"key_length_swa = 0 is out of range \(1\.\."):
        read_hparams("gemma4", {**md, "gemma4.attention.key_length_swa": 0}, 320)
    del md["gemma4.attention.key_length_swa"], md["gemma4.attention.value_length_swa"]
    hp = read_hparams("gemma4", md, 320)
    assert hp.dim_k(0) == hp.dim_k(2) == 16
