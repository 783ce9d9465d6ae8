"""ModelProfile against the real engine: model, KV and compute buffer sizes from libllama's own
log lines, for tiny real models of every verified architecture (tests/arch_models.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from omni_place.compute import compute_buffer_estimate
from omni_place.cost import LAYER_OPS
from omni_place.model import ARCHITECTURES, load_model
from omni_place.units import MiB

from .arch_models import ARCHS, engine_available, engine_load, write_model

pytestmark = [pytest.mark.engine,
              pytest.mark.skipif(not engine_available(), reason="llama-cpp-python (real libllama) not installed")]

N_CTX, N_UBATCH = 1024, 64  # engine_load's context: n_ubatch = min(n_ctx, 64), swa_full off
PRINT_RES = 0.005 * MiB  # the engine prints MiB with 2 decimals


def tolerance(n: float) -> float:
    """The accuracy target for model and KV bytes: max(1 %, 16 MiB) -- here also the print rounding."""
    return max(0.01 * n, 16 * MiB)


@pytest.mark.parametrize("arch", ARCHS)
def test_model_kv_compute_match_engine(tmp_path: Path, arch: str) -> None:
    assert ARCHITECTURES[arch].verified
    path = write_model(tmp_path / f"{arch}.gguf", arch, weight_type="f16")
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    m = load_model(path)

    model_pred = m.input_bytes() + sum(lc.dense["cpu"] + lc.experts["cpu"] for lc in m.layers) + m.output_bytes("cpu")
    model_eng = sum(mib for _, mib in eng.model_buffers) * MiB
    assert abs(model_pred - model_eng) <= tolerance(model_eng)
    assert abs(model_pred - model_eng) <= 0.02 * model_eng + PRINT_RES  # much tighter in fact

    kv_pred = sum(m.kv_layer_bytes(N_CTX, n_ubatch=N_UBATCH))  # a hybrid's recurrent state included
    kv_eng = sum(mib for _, mib in eng.kv_buffers + eng.rs_buffers) * MiB
    assert abs(kv_pred - kv_eng) <= PRINT_RES * len(eng.kv_buffers + eng.rs_buffers) + 1  # exact up to printing

    # Compute buffers: the fitted peak model (compute.py), within max(3 %, 32 MiB) of the engine
    ce = compute_buffer_estimate(m, n_ctx=N_CTX, n_ubatch=N_UBATCH)
    comp_pred = ce.cpu_only_bytes()
    comp_eng = sum(mib for _, mib in eng.compute_buffers) * MiB
    assert abs(comp_pred - comp_eng) <= max(0.03 * comp_eng, 32 * MiB)


@pytest.mark.parametrize("arch", ["deepseek2", "deepseek32", "glm-dsa"])
def test_nextn_block_takes_a_slot_but_no_memory(tmp_path: Path, arch: str) -> None:
    path = write_model(tmp_path / "ds.gguf", arch, n_nextn=1, weight_type="f16")
    m = load_model(path)
    assert m.n_layer == m.hparams.n_layer_kv + 1 and m.layers[-1].is_nextn
    assert m.layers[-1].dense["cpu"] == 0 and m.kv_layer_bytes(N_CTX)[-1] == 0
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok
    model_pred = m.input_bytes() + sum(lc.dense["cpu"] + lc.experts["cpu"] for lc in m.layers) + m.output_bytes("cpu")
    if arch in ("deepseek32", "glm-dsa"):
        # engine quirk: deepseek32.cpp:121 (glm-dsa.cpp:155) creates blk.N.exp_probs_b.bias without the NextN skip
        # flag (deepseek2.cpp:132 has it), so that 1 KB-class tensor is loaded and the CPU_Mapped
        # range reported by the engine runs from the NextN block's first tensor to it
        import gguf

        ts = {t.name: t for t in gguf.GGUFReader(path).tensors}
        nextn = [t for n, t in ts.items() if n.startswith("blk.4.")]
        probs = ts["blk.4.exp_probs_b.bias"]
        model_pred += probs.data_offset + probs.n_bytes - min(t.data_offset for t in nextn)
    assert abs(model_pred - sum(x for _, x in eng.model_buffers) * MiB) <= 0.02 * model_pred + PRINT_RES


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_deepseek32_indexer_key_cache(tmp_path: Path, kv_type: str) -> None:
    """DeepSeek-V3.2 (DSA): the MLA latent cache plus the lightning indexer's one key head per trunk
    layer, both in type_k (llama-kv-cache-dsa.cpp:30-52), NextN block excluded."""
    path = write_model(tmp_path / "ds32.gguf", "deepseek32", n_nextn=1, weight_type="f16")
    m = load_model(path)
    assert m.coverage == "verified" and m.unknown_tensors == []
    assert {t.role.value for t in m.tensors if ".indexer." in t.name} == {"attention", "norm"}
    kv = m.kv_layer_bytes(N_CTX, kv_type)
    row = {"f16": lambda n: 2 * n, "q8_0": lambda n: n // 32 * 34}[kv_type]
    assert kv[:4] == [(row(80) + row(64)) * N_CTX] * 4 and kv[4] == 0
    assert m.kv_bytes_per_token(kv_type) == 4 * (row(80) + row(64))


@pytest.mark.parametrize(("types", "n_ctx_train", "full"), [
    ([1, 0, 0, 1, 0, 1, 1, 0], 4096, [0, 3, 5, 6]),  # the header's attention.indexer.types
    (None, 4096, list(range(8))),  # none: GLM 5 / 5.1, every trunk layer
    (None, 1 << 20, [0, 1, 2, 6]),  # none and a 1 Mi training context: GLM-5.2's 0, 1, every 4th from 2
])
def test_glm_dsa_indexer_cache_on_its_full_layers(tmp_path: Path, types: list[int] | None, n_ctx_train: int,
                                                  full: list[int]) -> None:
    """GLM-5 (glm-dsa): the MLA latent cache on every trunk layer, the indexer's key only on the
    layers that run a full indexer (src/llama-model.cpp:2431, src/models/glm-dsa.cpp load_arch_hparams),
    as the engine's two caches count their layers and bytes."""
    path = write_model(tmp_path / "glm5.gguf", "glm-dsa", n_layer=8, n_nextn=1, weight_type="f16",
                       indexer_types=types, n_ctx_train=n_ctx_train)
    m = load_model(path)
    assert m.coverage == "verified" and m.unknown_tensors == []
    assert [il for il, f in enumerate(m.hparams.indexer_full) if f] == full
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    (latent_mib, _, latent_layers), (indexer_mib, _, indexer_layers) = eng.kv_caches
    assert (latent_layers, indexer_layers) == (8, len(full))
    kv = m.kv_layer_bytes(N_CTX)
    latent, key = 2 * (64 + 16) * N_CTX, 2 * 64 * N_CTX  # F16 rows of kv_lora_rank + rope, indexer key_length
    assert kv == [latent + key * (il in full) for il in range(8)] + [0]  # the NextN block: none
    assert abs(latent * 8 - latent_mib * MiB) <= PRINT_RES and abs(key * len(full) - indexer_mib * MiB) <= PRINT_RES


@pytest.mark.parametrize("arch, interval, n_nextn", [("qwen35", 3, 0), ("qwen35moe", 4, 1), ("qwen3next", 2, 1)])
def test_hybrid_recurrent_layers_and_state(tmp_path: Path, arch: str, interval: int, n_nextn: int) -> None:
    """Gated DeltaNet hybrids: the engine gives every trunk layer but each interval-th a recurrent
    state (its `llama_memory_recurrent, layer N: dev` lines) and the rest, NextN blocks excepted, a
    KV cache; both sized as kv_layer_bytes says, to the printed 0.01 MiB."""
    gdn = {"head_dim": 128, "k_heads": 2, "v_heads": 4, "interval": interval}  # a 0.25 MiB state per layer
    path = write_model(tmp_path / f"{arch}.gguf", arch, n_layer=6, n_embd=256, head_dim=64, gdn=gdn,
                       n_nextn=n_nextn, weight_type="f16")
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    m = load_model(path)
    assert m.coverage == "verified" and m.unknown_tensors == []
    hp = m.hparams
    recurrent = [il for il in range(hp.n_layer_kv) if hp.n_head_kv[il] == 0]
    attention = [il for il in range(hp.n_layer_kv) if hp.n_head_kv[il]]
    assert recurrent == [il for il in range(6) if (il + 1) % interval] == eng.rs_layers
    assert [layers for _, _, layers in eng.kv_caches] == [len(attention)]
    model_pred = m.input_bytes() + sum(lc.dense["cpu"] + lc.experts["cpu"] for lc in m.layers) + m.output_bytes("cpu")
    assert abs(model_pred - sum(mib for _, mib in eng.model_buffers) * MiB) <= PRINT_RES  # NextN blocks not loaded

    per_layer = m.kv_layer_bytes(N_CTX, n_ubatch=N_UBATCH)
    assert per_layer[hp.n_layer_kv:] == [0] * n_nextn
    rs_eng = sum(mib for _, mib in eng.rs_buffers) * MiB
    kv_eng = sum(mib for _, mib in eng.kv_buffers) * MiB
    assert abs(sum(per_layer[il] for il in recurrent) - rs_eng) <= PRINT_RES
    assert abs(sum(per_layer[il] for il in attention) - kv_eng) <= PRINT_RES
    # the recurrent state does not grow with the context; the cache does
    assert m.kv_layer_bytes(4 * N_CTX)[recurrent[0]] == per_layer[recurrent[0]]
    assert m.kv_layer_bytes(4 * N_CTX)[attention[0]] == 4 * per_layer[attention[0]]


def test_minimax_m3_msa_indexer_cache(tmp_path: Path) -> None:
    """MiniMax-M3: a GQA cache on every layer, and on each layer after the leading dense ones the MSA
    indexer's: a GQA cache of one head, its key the indexer's width, its value the model's head
    width (src/llama-kv-cache-msa.cpp:13-50), in the cache types."""
    path = write_model(tmp_path / "m3.gguf", "minimax-m3", n_layer=6, n_embd=256, n_head=8, n_head_kv=2,
                       head_dim=64, n_dense_lead=2, weight_type="f16")
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    m = load_model(path)
    assert m.coverage == "verified" and m.unknown_tensors == []
    assert [layers for _, _, layers in eng.kv_caches] == [6, 4]
    for kv_type, row in (("f16", lambda n: 2 * n), ("q8_0", lambda n: n // 32 * 34)):
        gqa, msa = 2 * row(2 * 64) * N_CTX, 2 * row(64) * N_CTX  # K and V of 2 heads; the indexer's one
        assert m.kv_layer_bytes(N_CTX, kv_type) == [gqa, gqa] + [gqa + msa] * 4
    (main_mib, _, _), (msa_mib, _, _) = eng.kv_caches
    assert abs(6 * 2 * 2 * 128 * N_CTX - main_mib * MiB) <= PRINT_RES
    assert abs(4 * 2 * 2 * 64 * N_CTX - msa_mib * MiB) <= PRINT_RES


def test_kimi_linear_kda_state_and_mla_cache(tmp_path: Path) -> None:
    """Kimi-Linear: a layer without KV heads is Kimi Delta Attention, whose F32 state is Q, K and V's
    d_conv - 1 conv taps of heads x head_dim channels each and a head_dim x head_dim matrix per head
    (src/llama-hparams.cpp n_embd_r / n_embd_s); every interval-th layer is MLA, caching its latent
    and rope key alone. Both as the engine's RS and KV buffers count them."""
    gdn = {"head_dim": 64, "d_conv": 4, "interval": 4}
    path = write_model(tmp_path / "kimi.gguf", "kimi-linear", n_layer=8, n_embd=256, n_head=8, gdn=gdn,
                       weight_type="f16")
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    m = load_model(path)
    assert m.coverage == "verified" and m.unknown_tensors == []
    assert eng.rs_layers == [0, 1, 2, 4, 5, 6] and [layers for _, _, layers in eng.kv_caches] == [2]
    kv = m.kv_layer_bytes(N_CTX, n_ubatch=N_UBATCH)
    state = 4 * (3 * 3 * 8 * 64 + 64 * 64 * 8)  # conv taps of Q, K, V; the per-head matrices
    latent = 2 * (64 + 16) * N_CTX  # F16 rows of kv_lora_rank + rope
    assert kv == [state, state, state, latent] * 2
    assert abs(6 * state - sum(mib for _, mib in eng.rs_buffers) * MiB) <= PRINT_RES
    assert abs(2 * latent - sum(mib for _, mib in eng.kv_buffers) * MiB) <= PRINT_RES


def _graph_nodes(path: Path) -> int:
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    return int(re.search(r"graph: nodes = (\d+)", eng.log)[1])


@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe", "qwen3next", "granitehybrid", "lfm2", "lfm2moe",
                                  "kimi-linear"])
def test_recurrent_layer_ops_are_the_engine_graphs(tmp_path: Path, arch: str) -> None:
    """ArchSpec.recurrent_layer_ops: the graph nodes a recurrent layer runs beyond the model's
    attention layer, as the engine counts them (6 layers, 3 then 4 of them recurrent); LAYER_OPS: a
    llama layer's (4 layers more)."""
    nodes = [_graph_nodes(write_model(tmp_path / f"{arch}{iv}.gguf", arch, n_layer=6, gdn={"interval": iv},
                                      weight_type="f16")) for iv in (2, 3)]
    assert nodes[1] - nodes[0] == ARCHITECTURES[arch].recurrent_layer_ops
    llama = [_graph_nodes(write_model(tmp_path / f"llama{n}.gguf", "llama", n_layer=n)) for n in (4, 8)]
    assert (llama[1] - llama[0]) / 4 == LAYER_OPS


@pytest.mark.parametrize("arch", ["mamba2", "falcon-h1", "rwkv7"])
def test_a_mamba2_layer_runs_its_ops_beyond_a_llama_layer(tmp_path: Path, arch: str) -> None:
    """mamba2 and rwkv7, every layer recurrent, and falcon-h1, every layer attention beside a Mamba-2
    mixer: a layer's graph nodes beyond a llama layer's LAYER_OPS."""
    nodes = [_graph_nodes(write_model(tmp_path / f"m{n}.gguf", arch, n_layer=n)) for n in (4, 8)]
    assert (nodes[1] - nodes[0]) / 4 - LAYER_OPS == ARCHITECTURES[arch].recurrent_layer_ops


@pytest.mark.parametrize("arch", ["gemma3", "gemma4", "gemma3n"])
def test_a_layers_ops_beyond_a_llama_layer(tmp_path: Path, arch: str) -> None:
    """ArchSpec.layer_ops: the graph nodes a layer runs beyond a llama layer's, as the engine counts
    them; Gemma 3n's vary by layer (activation sparsity on the first 10, no K or V on those past
    20), so its mean over E2B's 30 layers, from 5 and 30 layers and its first 5 layers' own count."""
    spec = ARCHITECTURES[arch]
    if arch != "gemma3n":
        kw = {"gemma4": {"shared": 0}} if arch == "gemma4" else {}
        nodes = [_graph_nodes(write_model(tmp_path / f"g{n}.gguf", arch, n_layer=n, **kw)) for n in (6, 12)]
        assert (nodes[1] - nodes[0]) / 6 - LAYER_OPS == spec.layer_ops
        return
    n5, n10, n30 = (_graph_nodes(write_model(tmp_path / f"g{n}.gguf", arch, n_layer=n)) for n in (5, 10, 30))
    first = (n10 - n5) / 5  # a layer with activation sparsity
    mean = (n30 - n5 + 5 * first) / 30
    assert abs(mean - LAYER_OPS - spec.layer_ops) < 1


@pytest.mark.parametrize("arch, recurrent", [("granitehybrid", [0, 1, 2, 4, 5, 6]), ("nemotron_h", [0, 3, 4, 7]),
                                             ("nemotron_h_moe", [0, 3, 4, 7]), ("mamba2", list(range(8))),
                                             ("lfm2", [0, 1, 2, 4, 5, 6]), ("lfm2moe", [0, 1, 2, 4, 5, 6])])
def test_mamba2_hybrid_state_and_cache(tmp_path: Path, arch: str, recurrent: list[int]) -> None:
    """Mamba-2 hybrids: a layer whose head_count_kv is 0 is a Mamba-2 layer with a conv and SSM
    state (src/models/granite-hybrid.cpp), in Nemotron-H unless it is an FFN-only layer (its
    feed_forward_length set: nemotron-h.cpp); the others attend over a cache. LFM2's such layers are
    short convolutions, their state the last taps alone (src/models/lfm2.cpp). Which layers and
    their sizes as the engine has them."""
    path = write_model(tmp_path / f"{arch}.gguf", arch, n_layer=8, n_embd=256, weight_type="f16",
                       gdn={"head_dim": 64, "k_heads": 2, "v_heads": 8})
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    m = load_model(path)
    assert m.coverage == "verified" and m.unknown_tensors == []
    assert [il for il in range(m.n_layer) if m.is_recurrent(il)] == eng.rs_layers == recurrent
    kv = m.kv_layer_bytes(N_CTX, n_ubatch=N_UBATCH)
    assert abs(sum(kv[il] for il in recurrent) - sum(mib for _, mib in eng.rs_buffers) * MiB) <= PRINT_RES
    assert abs(sum(kv) - sum(kv[il] for il in recurrent) - sum(mib for _, mib in eng.kv_buffers) * MiB) <= PRINT_RES


@pytest.mark.parametrize("n_layer,interval,shared,head_dim_swa", [(6, 3, 3, 8), (12, 4, 4, 32), (9, 3, 0, 8)])
def test_gemma4_shared_and_swa_caches(tmp_path: Path, n_layer: int, interval: int, shared: int,
                                      head_dim_swa: int) -> None:
    """Gemma 4: SWA layers' heads are their own width (attention.key_length_swa), and the last
    ``shared_kv_layers`` layers attend to the last SWA or full layer before them, holding no cache
    (src/llama-model.cpp create_memory's reuse): both caches' layers and bytes as the engine
    allocates them."""
    g4 = {"interval": interval, "shared": shared, "head_dim_swa": head_dim_swa}
    path = write_model(tmp_path / "g4.gguf", "gemma4", n_layer=n_layer, head_dim=16, gemma4=g4)
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    m = load_model(path)
    hp = m.hparams
    owners = [il for il in range(n_layer) if hp.owns_kv(il)]
    assert len(owners) == n_layer - shared
    full, swa = ([il for il in owners if hp.is_swa[il] == s] for s in (False, True))
    assert sorted((cells, layers) for _, cells, layers in eng.kv_caches) == sorted(
        [(N_CTX, len(full)), (m.swa_kv_cells(N_CTX, N_UBATCH, 1, False), len(swa))])
    kv = m.kv_layer_bytes(N_CTX, n_ubatch=N_UBATCH)
    assert all(kv[il] == 0 for il in range(n_layer) if il not in owners)
    assert abs(sum(kv) - sum(mib for _, mib in eng.kv_buffers) * MiB) <= PRINT_RES * len(eng.kv_buffers) + 1
    for il in range(n_layer - shared, n_layer):  # a shared layer attends to a cache of its own kind
        src = hp.kv_source(il)
        assert hp.owns_kv(src) and hp.is_swa[src] == hp.is_swa[il]


@pytest.mark.parametrize("n_layer", [12, 25, 35])
def test_gemma3n_caches_on_its_first_20_layers(tmp_path: Path, n_layer: int) -> None:
    """Gemma 3n: SWA four layers of five, a cache only on the first 20 layers (a count the engine
    sets in code, src/models/gemma3n.cpp:7), the rest attending to the last layer of their kind
    before layer 20 (E2B has 30 layers, E4B 35): both caches' layers and bytes as allocated."""
    path = write_model(tmp_path / "g3n.gguf", "gemma3n", n_layer=n_layer)
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    hp = load_model(path).hparams
    owners = [il for il in range(n_layer) if hp.owns_kv(il)]
    assert owners == list(range(min(n_layer, 20)))
    full, swa = ([il for il in owners if hp.is_swa[il] == s] for s in (False, True))
    assert full == [il for il in owners if il % 5 == 4]
    m = load_model(path)
    assert sorted((cells, layers) for _, cells, layers in eng.kv_caches) == sorted(
        [(N_CTX, len(full)), (m.swa_kv_cells(N_CTX, N_UBATCH, 1, False), len(swa))])
    kv = m.kv_layer_bytes(N_CTX, n_ubatch=N_UBATCH)
    assert abs(sum(kv) - sum(mib for _, mib in eng.kv_buffers) * MiB) <= PRINT_RES * len(eng.kv_buffers) + 1
    assert [hp.kv_source(il) for il in range(20, n_layer)] == [19 if il % 5 == 4 else 18 for il in range(20, n_layer)]


def test_gemma4_sharing_the_engine_cannot_load_is_refused(tmp_path: Path) -> None:
    """A shared layer whose reused layer is of the other kind makes the engine abort
    (llama-kv-cache.cpp GGML_ASSERT on map_layer_ids): refused with a line naming the key."""
    from omni_place.errors import GGUFFormatError

    path = write_model(tmp_path / "g4.gguf", "gemma4", n_layer=12, head_dim=16,
                       gemma4={"interval": 4, "shared": 5, "head_dim_swa": 32})
    assert not engine_load(path, n_ctx=N_CTX).ok
    with pytest.raises(GGUFFormatError, match="shared_kv_layers = 5: shared layer 7 would reuse layer 6"):
        load_model(path)


def test_gemma4_moe_experts_beside_the_dense_ffn(tmp_path: Path) -> None:
    """Gemma 4's MoE (26B-A4B): every layer has routed experts (fused gate_up) beside its dense
    FFN; model, experts and KV bytes as the engine loads them, the experts in -ncmoe's reach."""
    from omni_place.engines import dialect

    path = write_model(tmp_path / "g4m.gguf", "gemma4", head_dim=16, gemma4={"moe": 1})
    eng = engine_load(path, n_ctx=N_CTX)
    assert eng.ok, eng.log[-2000:]
    m = load_model(path)
    model_pred = m.input_bytes() + sum(lc.dense["cpu"] + lc.experts["cpu"] for lc in m.layers) + m.output_bytes("cpu")
    assert abs(model_pred - sum(mib for _, mib in eng.model_buffers) * MiB) <= PRINT_RES
    assert all(lc.experts["cpu"] and lc.dense["cpu"] for lc in m.layers)
    kv_pred = sum(m.kv_layer_bytes(N_CTX, n_ubatch=N_UBATCH))
    assert abs(kv_pred - sum(mib for _, mib in eng.kv_buffers) * MiB) <= PRINT_RES * len(eng.kv_buffers) + 1
    parsed = dialect("llama.cpp").parse_args(["-ngl", "99", "-ncmoe", "2"])
    exps = [t.name for t in m.tensors if "_exps" in t.name]
    assert exps and all(any(re.search(pat, n) for pat, _ in parsed.overrides) == n.startswith(("blk.0.", "blk.1."))
                        for n in exps)


@pytest.mark.parametrize("arch,n_swa,chunked", [("llama4", None, True), ("llama4", 512, True), ("olmo2", 64, True),
                                                 ("olmo2", 0, False)])
def test_windows_the_engine_sets_in_code(tmp_path: Path, arch: str, n_swa: int | None, chunked: bool) -> None:
    """Llama 4's chunked attention runs three layers of four at the engine's 8192-token window,
    whatever the header's, unless the header's is 0 (Scout and Maverick carry none); OLMo's sliding
    window only where the header gives one, on three layers of four: every KV buffer as the engine
    allocates it at a context past the window (src/models/llama4.cpp:8-23, olmo2.cpp:4-15)."""
    path = write_model(tmp_path / f"{arch}.gguf", arch, n_layer=8, n_swa=n_swa)
    n_ctx = 16384
    eng = engine_load(path, n_ctx=n_ctx)
    assert eng.ok, eng.log[-2000:]
    m = load_model(path)
    assert m.hparams.is_swa == tuple(chunked and il % 4 < 3 for il in range(8))
    assert [n for _, n, _ in eng.kv_caches] == ([n_ctx, 8448 if arch == "llama4" else 256] if chunked else [n_ctx])
    kv = m.kv_layer_bytes(n_ctx, n_ubatch=64)
    assert abs(sum(kv) - sum(mib for _, mib in eng.kv_buffers) * MiB) <= PRINT_RES * len(eng.kv_buffers) + 1


@pytest.mark.parametrize("arch,n_swa", [("lfm2", 128), ("lfm2", 0), ("lfm2", None), ("lfm2moe", 128)])
def test_lfm2_window_makes_every_attention_layer_sliding(tmp_path: Path, arch: str, n_swa: int | None) -> None:
    """LFM2 with a window in its header runs every attention layer with it, its short convolutions
    none (src/models/lfm2.cpp:26-31); LFM2-MoE reads no window: the caches, the convolutions' state
    and their bytes as the engine allocates them."""
    path = write_model(tmp_path / f"{arch}.gguf", arch, n_layer=8, n_swa=n_swa, gdn={"interval": 2})
    n_ctx = 4096
    eng = engine_load(path, n_ctx=n_ctx)
    assert eng.ok, eng.log[-2000:]
    m = load_model(path)
    attention = [il for il in range(8) if m.attends(il)]
    sliding = arch == "lfm2" and bool(n_swa)
    assert [il for il in range(8) if m.hparams.is_swa[il]] == (attention if sliding else [])
    assert [(n, layers) for _, n, layers in eng.kv_caches if layers] == [(256 if sliding else n_ctx, len(attention))]
    kv = m.kv_layer_bytes(n_ctx, n_ubatch=64)
    buffers = eng.kv_buffers + eng.rs_buffers
    assert abs(sum(kv) - sum(mib for _, mib in buffers) * MiB) <= PRINT_RES * len(buffers) + 1


def test_llama4_with_a_zero_window_attends_in_full(tmp_path: Path) -> None:
    """A Llama 4 header whose window is 0 (an all-full-attention checkpoint, conversion/llama.py)
    turns chunked attention off (src/models/llama4.cpp:9-11). The engine built here then aborts
    in its graph (llama-graph.cpp:161, no temperature scale is read for it), so the rule is read
    from source: every layer a full cache."""
    m = load_model(write_model(tmp_path / "l4.gguf", "llama4", n_layer=8, n_swa=0, header_only=True))
    assert m.hparams.n_swa == 0 and not any(m.hparams.is_swa)
    assert len(set(m.kv_layer_bytes(16384))) == 1


@pytest.mark.parametrize("flash_attn", [True, False])
def test_deci_layers_without_kv_heads(tmp_path: Path, flash_attn: bool) -> None:
    """DeciLM / Nemotron-NAS (Llama-3.3-Nemotron-Super): a layer's attention is full, linear (an
    output projection, no KV heads) or none, and some have no FFN (src/models/deci.cpp). Every
    layer still holds a cache (src/llama-hparams.cpp has_kv): zero-width keys where it has no KV
    heads, and without flash attention a transposed V of the widest layer's width on every layer
    (src/llama-kv-cache.cpp:209-210); model and KV bytes as libllama allocates them."""
    from omni_place.llama import LoadSpec, probe_load

    path = write_model(tmp_path / "deci.gguf", "deci", n_layer=8, weight_type="f16")
    m = load_model(path)
    n_ff = m.hparams.n_ff[0]
    assert n_ff and m.hparams.n_head_kv == (2, 0, 0, 2) * 2 and m.hparams.n_ff == (n_ff, 0, n_ff, n_ff) * 2
    rep = probe_load(LoadSpec(model_path=str(path), n_gpu_layers=0, n_ctx=N_CTX, n_batch=N_UBATCH,
                              n_ubatch=N_UBATCH, flash_attn="on" if flash_attn else "off"), timeout=120)
    assert rep.ok, rep.error
    kv = m.kv_layer_bytes(N_CTX, n_ubatch=N_UBATCH, flash_attn=flash_attn)
    assert (min(kv) == 0) == flash_attn
    assert abs(sum(kv) - sum(rep.kv_buffers.values())) <= PRINT_RES + 1
    model_pred = m.input_bytes() + sum(lc.dense["cpu"] + lc.experts["cpu"] for lc in m.layers) + m.output_bytes("cpu")
    assert abs(model_pred - sum(rep.model_buffers.values())) <= 0.02 * model_pred + PRINT_RES


@pytest.mark.parametrize("flash_attn", [True, False])
def test_falcon_h1_attention_beside_a_mamba2_mixer(tmp_path: Path, flash_attn: bool) -> None:
    """Falcon-H1: every layer runs GQA attention and a Mamba-2 mixer side by side (src/models/falcon-h1.cpp),
    so every layer holds a KV cache and a recurrent state (both memory filters take every layer,
    src/llama-model.cpp:2688-2690): each buffer as libllama allocates it, with flash attention and
    without; the cost model prices both the cache read and the state's passes a decoded token."""
    from omni_place.llama import LoadSpec, probe_load

    path = write_model(tmp_path / "fh1.gguf", "falcon-h1", n_layer=6, weight_type="f16")
    m = load_model(path)
    assert all(ly["recurrent"] and ly["attends"] for ly in m.to_dict(N_CTX)["layers"])  # as inspect shows them
    rep = probe_load(LoadSpec(model_path=str(path), n_gpu_layers=0, n_ctx=N_CTX, n_batch=N_UBATCH,
                              n_ubatch=N_UBATCH, flash_attn="on" if flash_attn else "off"), timeout=120)
    assert rep.ok, rep.error
    state = 6 * m.recurrent_state_bytes()
    assert abs(sum(rep.rs_buffers.values()) - state) <= PRINT_RES + 1
    kv = sum(m.kv_layer_bytes(N_CTX, n_ubatch=N_UBATCH, flash_attn=flash_attn))
    assert abs(kv - state - sum(rep.kv_buffers.values())) <= PRINT_RES + 1

    from omni_place.cost import CostModel
    from omni_place.devices import Cluster, Device
    from omni_place.placement import CPU, Context
    from omni_place.units import GiB

    cpu = Device(name=CPU, kind="cpu", memory_bytes=64 * GiB, bandwidth_gbs=50, tflops=1)
    shallow, deep = (CostModel(m, Cluster("cpu", (cpu,)), Context(ctx=N_CTX, depth=d)) for d in (64, N_CTX // 2))
    assert all(c.state_read[il] > 0 for c in (shallow, deep) for il in range(6))
    assert all(deep.cache_read[il] > shallow.cache_read[il] > 0 for il in range(6))  # its cache grows with depth
