"""ModelProfile: roles, exact bytes, KV cache and compute estimates from header-only files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from omni_place.cli import main
from omni_place.errors import InvalidArgumentError
from omni_place.model import Role, alloc_bytes, classify, load_model
from omni_place.reference_models import ModelSpec, deepseek_v3, write_header_only

ROLE_CASES = {
    ("blk.3.attn_q_a.weight"): Role.ATTENTION,
    ("blk.3.attn_kv_a_mqa.weight"): Role.ATTENTION,
    ("blk.3.attn_kv_b.weight"): Role.ATTENTION,
    ("blk.3.attn_k_b.weight"): Role.ATTENTION,
    ("blk.3.attn_v_b.weight"): Role.ATTENTION,
    ("blk.3.attn_q_b.weight"): Role.ATTENTION,
    ("blk.3.attn_qkv.weight"): Role.ATTENTION,
    ("blk.3.attn_sinks.weight"): Role.ATTENTION,
    ("blk.3.attn_output.bias"): Role.ATTENTION,
    ("blk.3.attn_norm.weight"): Role.NORM,
    ("blk.3.attn_q_a_norm.weight"): Role.NORM,
    ("blk.3.attn_kv_a_norm.weight"): Role.NORM,
    ("blk.3.attn_q_norm.weight"): Role.NORM,
    ("blk.3.post_attention_norm.weight"): Role.NORM,
    ("blk.3.post_ffw_norm.weight"): Role.NORM,
    ("blk.3.ffn_norm.weight"): Role.NORM,
    ("blk.3.ffn_gate.weight"): Role.FFN,
    ("blk.3.ffn_up.weight"): Role.FFN,
    ("blk.3.ffn_down.weight"): Role.FFN,
    ("blk.3.ffn_gate_shexp.weight"): Role.SHARED_EXPERT,
    ("blk.3.ffn_down_shexp.weight"): Role.SHARED_EXPERT,
    ("blk.3.ffn_gate_inp_shexp.weight"): Role.SHARED_EXPERT,
    ("blk.3.ffn_gate_exps.weight"): Role.ROUTED_EXPERT,
    ("blk.3.ffn_up_exps.weight"): Role.ROUTED_EXPERT,
    ("blk.3.ffn_down_exps.weight"): Role.ROUTED_EXPERT,
    ("blk.3.ffn_gate_up_exps.weight"): Role.ROUTED_EXPERT,
    ("blk.3.ffn_down_exps.bias"): Role.ROUTED_EXPERT,
    ("blk.3.ffn_gate_inp.weight"): Role.ROUTER,
    ("blk.3.exp_probs_b.bias"): Role.ROUTER,
    ("blk.61.nextn.eh_proj.weight"): Role.NEXTN,
    ("blk.61.nextn.enorm.weight"): Role.NEXTN,
    ("blk.61.nextn.shared_head_norm.weight"): Role.NEXTN,
    ("blk.3.ssm_in.weight"): Role.RECURRENT,
    ("blk.3.mystery_tensor.weight"): Role.UNKNOWN,
    ("token_embd.weight"): Role.EMBEDDING,
    ("output.weight"): Role.OUTPUT,
    ("output_norm.weight"): Role.OUTPUT_NORM,
    ("rope_freqs.weight"): Role.OTHER,
    ("something_global.weight"): Role.UNKNOWN,
}


@pytest.mark.parametrize("name", sorted(ROLE_CASES))
def test_roles(name: str) -> None:
    if name.startswith("blk."):
        _, layer, inner = name.split(".", 2)
        assert classify(int(layer), inner) is ROLE_CASES[name]
    else:
        assert classify(None, name) is ROLE_CASES[name]


@pytest.mark.parametrize(("arch", "layer", "role"), [("rwkv7", 0, Role.NORM), ("lfm2", None, Role.OUTPUT_NORM)])
def test_embedding_norm_goes_where_the_engine_puts_it(tmp_path: Path, arch: str, layer: int | None,
                                                      role: Role) -> None:
    """token_embd_norm is a repeating tensor made with layer number 0 (RWKV's, BLOOM's, BERT's: on
    layer 0's device), except in LFM2, whose final norm carries that name (an output tensor)."""
    from .arch_models import write_model

    model = load_model(write_model(tmp_path / f"{arch}.gguf", arch, header_only=True))
    norms = [t for t in model.tensors if t.name.startswith("token_embd_norm.")]
    assert norms and all((t.layer, t.role) == (layer, role) for t in norms)
    assert not model.unknown_tensors


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("ds")
    paths = write_header_only(deepseek_v3(), d / "DeepSeek-V3.gguf", shards=3, with_vocab=True)
    return load_model(paths[0])


def test_deepseek_shape_profile(deepseek) -> None:
    m = deepseek
    hp = m.hparams
    assert (m.architecture, hp.n_layer, hp.n_layer_nextn, hp.n_vocab) == ("deepseek2", 62, 1, 129280)
    assert hp.is_mla and hp.n_expert == 256 and hp.n_expert_used == 8
    assert m.unknown_tensors == []
    # bytes: sum of tensors == what the spec says, per layer split into dense / experts
    spec = deepseek_v3()
    assert m.total_bytes == sum(n // 256 * {Q.Q4_K: 144, Q.Q6_K: 210}.get(q, 0) if q in (Q.Q4_K, Q.Q6_K)
                                else (n * 4 if q == Q.F32 else n // 32 * 34)
                                for n, q in ((_numel(s), q) for _, s, q in spec.tensors))
    moe = m.layers[10]
    e = 7168 * 2048 * 256
    assert moe.experts["cpu"] == e // 256 * 144 * 2 + e // 256 * 210
    assert [t.role for t in moe.expert_tensors] == [Role.ROUTED_EXPERT] * 3
    assert all(t.n_expert == 256 for t in moe.expert_tensors)
    assert moe.expert_tensors[2].bytes_per_expert == 2048 * 7168 // 256 * 210
    assert m.layers[0].experts["cpu"] == 0 and m.layers[0].dense["cpu"] > 0
    assert m.layers[61].is_nextn and not m.layers[60].is_nextn


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_deepseek_mla_kv_cache(deepseek) -> None:
    # MLA stores only the 576-wide latent (kv_lora_rank 512 + rope 64) per layer per token, f16
    # (llama.cpp src/llama-kv-cache.cpp:230-234: no V for MLA); the NextN block gets no KV cache
    assert deepseek.kv_bytes_per_token("f16") == 61 * 576 * 2
    kv = deepseek.kv_layer_bytes(32768, "f16")
    assert kv[61] == 0
    assert kv[0] == 576 * 2 * 32768
    assert deepseek.kv_layer_bytes(32768, "q8_0")[0] == 576 // 32 * 34 * 32768
    assert deepseek.kv_layer_bytes(1000)[0] == 576 * 2 * 1024  # padded to 256 cells


def test_cuda_row_padding_and_alignment(deepseek) -> None:
    by = {t.name: t for t in deepseek.tensors}
    kb = by["blk.5.attn_k_b.weight"]  # Q8_0, ne0 = 128: padded to 512 elements on CUDA
    assert alloc_bytes(kb.info, "cpu") == kb.bytes
    assert alloc_bytes(kb.info, "cuda") == -(-(kb.bytes + (512 - 128) // 32 * 34) // 128) * 128
    norm = by["blk.5.attn_kv_a_norm.weight"]  # F32 [512]: not quantized, only aligned
    assert alloc_bytes(norm.info, "cuda") == 2048
    gate = by["blk.5.ffn_gate_exps.weight"]  # ne0 = 7168 = 14 * 512: no padding
    assert alloc_bytes(gate.info, "cuda") == gate.bytes


def gqa_spec(arch: str, n_layer: int = 4, **extra) -> ModelSpec:
    md = {f"{arch}.block_count": n_layer, f"{arch}.embedding_length": 512,
          f"{arch}.attention.head_count": 8, f"{arch}.attention.head_count_kv": 2,
          f"{arch}.attention.key_length": 64, f"{arch}.attention.value_length": 64,
          f"{arch}.feed_forward_length": 1024, f"{arch}.vocab_size": 1000}
    md.update({f"{arch}.{k}": v for k, v in extra.items()})
    spec = ModelSpec(arch, arch, md)
    spec.add("token_embd.weight", (512, 1000), Q.F16)
    for il in range(n_layer):
        spec.add(f"blk.{il}.attn_q.weight", (512, 512), Q.F16)
    return spec


def test_gqa_and_swa_kv(tmp_path: Path) -> None:
    llama = load_model(write_header_only(gqa_spec("llama"), tmp_path / "l.gguf")[0])
    per_layer = 2 * 64 * 2 * 2  # K and V, 2 KV heads x 64, f16
    assert llama.kv_layer_bytes(4096) == [per_layer * 4096] * 4
    assert llama.kv_bytes_per_token() == per_layer * 4
    # q8_0 K + f16 V
    assert llama.kv_layer_bytes(4096, "q8_0", "f16")[0] == (128 // 32 * 34 + 256) * 4096

    # gemma3: SWA pattern 6 -> layers 0-4 SWA, 5 full; SWA cells = pad256(n_swa + ubatch) unless swa_full
    gemma = load_model(write_header_only(gqa_spec("gemma3", 6, **{"attention.sliding_window": 1024}),
                                         tmp_path / "g.gguf")[0])
    assert gemma.hparams.is_swa == (True,) * 5 + (False,)
    kv = gemma.kv_layer_bytes(32768, n_ubatch=512)
    assert kv[0] == per_layer * 1536 and kv[5] == per_layer * 32768
    assert gemma.kv_layer_bytes(32768, swa_full=True) == [per_layer * 32768] * 6

    # gpt-oss: pattern 2 -> even layers SWA
    oss = load_model(write_header_only(gqa_spec("gpt-oss", 4, **{"attention.sliding_window": 128}),
                                       tmp_path / "o.gguf")[0])
    assert oss.hparams.is_swa == (True, False, True, False)
    assert oss.kv_layer_bytes(8192)[0] == per_layer * 768


def test_recurrent_state_is_ctx_independent(tmp_path: Path) -> None:
    spec = gqa_spec("mamba2", 2, **{"ssm.conv_kernel": 4, "ssm.inner_size": 1024,
                                    "ssm.state_size": 128, "ssm.group_count": 1})
    m = load_model(write_header_only(spec, tmp_path / "m.gguf")[0])
    a, b = m.kv_layer_bytes(4096), m.kv_layer_bytes(65536)
    assert a == b == [4 * (3 * (1024 + 2 * 128) + 128 * 1024)] * 2


def test_bad_kv_type_and_ctx(deepseek) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown KV cache type"):
        deepseek.kv_layer_bytes(4096, "q3_k")
    with pytest.raises(InvalidArgumentError, match="positive"):
        deepseek.kv_layer_bytes(0)


def test_compute_estimate_grows_with_ubatch_and_logits(deepseek) -> None:
    from omni_place.compute import compute_buffer_estimate

    small = compute_buffer_estimate(deepseek, n_ctx=32768, n_ubatch=512)
    big = compute_buffer_estimate(deepseek, n_ctx=32768, n_ubatch=2048)
    assert big.device_bytes(True, False) > small.device_bytes(True, False)
    # the output device's peak covers the logits (n_vocab x n_tokens F32) and its layers' peak
    assert small.device_bytes(True, True) >= max(4 * 129280 * 512, small.device_bytes(True, False))
    no_fa = compute_buffer_estimate(deepseek, n_ctx=32768, flash_attn=False)
    assert no_fa.device_bytes(True, False) > small.device_bytes(True, False)
    # op offload: a copy of the largest CPU-held weight on top of the first GPU's activations
    largest = max(t.alloc_bytes("cuda") for t in deepseek.tensors)
    assert small.offload_bytes("offload_none", largest) >= largest + small.device_bytes(True, False) // 2


def test_inspect_cli_json_and_errors(deepseek, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(deepseek.path), "--ctx", "8192", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["architecture"] == "deepseek2" and out["n_layer"] == 62
    assert out["kv_bytes_per_token"] == 61 * 1152
    assert out["total_bytes"] == deepseek.total_bytes
    t = next(t for t in out["tensors"] if t["name"] == "blk.3.ffn_up_exps.weight")
    assert t["layer"] == 3 and t["role"] == "routed_expert" and t["bytes"] > 0
    assert next(t for t in out["tensors"] if t["name"] == "output.weight")["layer"] is None

    assert main(["inspect", str(deepseek.path)]) == 0
    text = capsys.readouterr().out
    assert "deepseek2" in text and "KiB/token" in text

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" * 16)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: ") and "not a GGUF file" in err[0]
    assert err[1].startswith("hint: ") and len(err) == 2


def test_glm_dsa_indexer_types_from_the_header(tmp_path: Path) -> None:
    """glm-dsa's attention.indexer.types as the engine reads it (get_key_or_arr over the trunk
    layers): one value for every layer, one nonzero uint32 per layer, or a wrong length refused;
    ik_llama.cpp refuses mainline's MLA heads of other than DeepSeek's sizes here as in deepseek2."""
    from omni_place.engines import dialect
    from omni_place.errors import GGUFFormatError

    from .arch_models import write_model

    def with_types(value: int | list[int]) -> Path:
        return write_model(tmp_path / "g.gguf", "glm-dsa", n_layer=6, header_only=True, indexer_types=value)

    assert load_model(with_types(0)).hparams.indexer_full == (False,) * 6
    assert load_model(with_types([2, 0, 0, 7, 0, 1])).hparams.indexer_full == (True, False, False, True, False, True)
    with pytest.raises(GGUFFormatError, match="indexer.types has 5 entries"):
        load_model(with_types([1] * 5))
    m = load_model(with_types([1, 0, 0, 0, 0, 0]))
    kv = m.kv_layer_bytes(256, "q8_0")
    assert kv[0] - kv[1] == 64 // 32 * 34 * 256  # the 64-wide key in Q8_0 blocks of 32 (34 B), 256 cells
    note, = dialect("ik_llama.cpp").model_notes(m)  # ik's own GLM-DSA check, as its llama-bench aborts on it
    assert "aborts on this file" in note and "1944-1954" in note and dialect("llama.cpp").model_notes(m) == []


def _mla_header(arch: str, n_layer: int, **extra: object) -> dict[str, object]:
    """The MLA keys read_hparams needs of ``arch`` (a deepseek2-style header), plus ``extra``."""
    a = arch
    return {f"{a}.block_count": n_layer, f"{a}.embedding_length": 256, f"{a}.attention.head_count": 4,
            f"{a}.attention.head_count_kv": 1, f"{a}.attention.key_length": 80, f"{a}.attention.value_length": 64,
            f"{a}.attention.key_length_mla": 48, f"{a}.attention.value_length_mla": 32,
            f"{a}.attention.kv_lora_rank": 64, f"{a}.rope.dimension_count": 16, f"{a}.vocab_size": 320,
            f"{a}.attention.indexer.key_length": 64, **{f"{a}.{k}": v for k, v in extra.items()}}


@pytest.mark.parametrize(("arch", "extra", "full"), [
    # Hunyuan V4: the header's types where its indexer runs (top_k > 0), none on a full-attention checkpoint
    ("hy_v4", {"attention.indexer.top_k": 16, "attention.indexer.types": [1, 0, 1, 0]}, (True, False, True, False)),
    ("hy_v4", {"attention.indexer.top_k": 0, "attention.indexer.types": [1, 1, 1, 1]}, (False,) * 4),
    ("dots3note", {"attention.indexer.types": [1, 1, 0, 0]}, (True, True, False, False)),
    ("deepseek32", {}, (True,) * 4),
])
def test_dsa_indexer_layers_by_architecture(arch: str, extra: dict[str, object], full: tuple[bool, ...]) -> None:
    """Which layers cache a DSA indexer key (src/llama-model.cpp create_memory's filter_lid per
    architecture: hy_v4 :2494-2534, dots3note :2536-2585, deepseek32 every trunk layer)."""
    from omni_place.hparams import read_hparams

    hp = read_hparams(arch, _mla_header(arch, 4, **extra), 320)
    assert hp.is_mla and hp.indexer_full == full
    assert [hp.indexer_width(il) for il in range(4)] == [64 * f for f in full]
    assert hp.indexer_head_size == 64 * any(full)  # no indexer anywhere: none in the compute graph either


def test_engine_swa_patterns_and_uncovered_layouts() -> None:
    """An SWA pattern the engine sets without a header key (cohere2: every 4th layer full;
    cohere2moe dense-first: layer 0 full, src/llama-hparams.cpp set_swa_pattern), and layouts the
    rules here do not model refused by name, not by a misleading header complaint."""
    from omni_place.hparams import NOT_COVERED, read_hparams

    def header(a: str) -> dict[str, object]:
        return {f"{a}.block_count": 8, f"{a}.embedding_length": 256, f"{a}.attention.head_count": 4,
                f"{a}.attention.head_count_kv": 2, f"{a}.attention.sliding_window": 512, f"{a}.vocab_size": 320}

    assert read_hparams("cohere2", header("cohere2"), 320).is_swa == (True, True, True, False) * 2
    assert read_hparams("cohere2moe", header("cohere2moe"), 320).is_swa == (False, True, True, True) * 2
    assert {"deepseek4", "kimi-k3", "glm5-next", "minimax-01", "qwen4exp", "nanbeige"} <= NOT_COVERED


@pytest.mark.parametrize("arch,window,n_layer,n_swa,is_swa", [
    ("mellum", 512, 8, 512, (True, True, True, False) * 2),
    ("plamo3", 512, 8, 512, (True,) * 7 + (False,)),
    ("plamo3", None, 8, 0, (False,) * 8),  # no window in the header: SWA off (plamo3.cpp:3-10)
    ("smallthinker", 512, 8, 4096, (False, True, True, True) * 2),  # 4096 whatever the header says
    ("smallthinker", None, 8, 0, (False,) * 8),
    ("exaone4", None, 64, 4096, (True, True, True, False) * 16),  # the 32B: 4096 by default
    ("exaone4", 2048, 64, 2048, (True, True, True, False) * 16),
    ("exaone4", 2048, 30, 0, (False,) * 30),  # the 1.2B: none, whatever the header says
    ("exaone-moe", 128, 8, 128, (True, True, True, False) * 2),
    ("muse-glimmer", 1024, 8, 1024, (True, True, True, False) * 2),
    ("gemma2", None, 8, 4096, (True, False) * 4),
    ("llama4", None, 8, 8192, (True, True, True, False) * 2),
    ("llama4", 0, 8, 0, (False,) * 8),
])
def test_windows_set_in_the_engines_code(arch: str, window: int | None, n_layer: int, n_swa: int,
                                         is_swa: tuple[bool, ...]) -> None:
    """The SWA window and pattern each architecture's load_arch_hparams sets in code, from the
    header's window or without one (src/models/<arch>.cpp; hparams.ARCHITECTURES)."""
    from omni_place.hparams import read_hparams

    md: dict[str, object] = {f"{arch}.block_count": n_layer, f"{arch}.embedding_length": 256,
                             f"{arch}.attention.head_count": 4, f"{arch}.attention.head_count_kv": 2,
                             f"{arch}.vocab_size": 320}
    if window is not None:
        md[f"{arch}.attention.sliding_window"] = window
    hp = read_hparams(arch, md, 320)
    assert (hp.n_swa, hp.is_swa) == (n_swa, is_swa)
