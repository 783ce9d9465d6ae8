"""Engine rules the cost model follows where a placement's flags decide what the engine does: a
head alone on a later device is spelled by -ts and still pipelines (llama-context.cpp:430-435);
op offload goes to the first device that offloads ops, whatever the order
(ggml-backend.cpp:966-975); ik_llama.cpp offloads a routed expert's MUL_MAT_ID only when each
expert gets 32 tokens on average (ik ggml-cuda.cu:5180-5207) and its compute buffers are
mainline's replay plus the margins measured by benchmarks/ik_compute.py."""
from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omni_place.cost import CPU, Context, CostModel, Placement, on_cpu
from omni_place.devices import Cluster, Device
from omni_place.engines import ik_llama, llama_cpp
from omni_place.errors import InvalidArgumentError
from omni_place.model import ModelProfile, load_model
from omni_place.units import GiB, MiB
from tests.arch_models import write_model

ROOT = Path(__file__).resolve().parent.parent


def _cluster(*names: str) -> Cluster:
    devices = [Device(name=n, kind="rpc" if n.startswith("RPC") else "gpu", memory_bytes=64 * GiB,
                      bandwidth_gbs=900, endpoint=f"127.0.0.1:{5000 + i}" if n.startswith("RPC") else None)
               for i, n in enumerate(names)]
    return Cluster("rules", (*devices, Device(name=CPU, kind="cpu", memory_bytes=256 * GiB, bandwidth_gbs=80)))


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> ModelProfile:
    """A header-only MoE of 128 experts, 8 used: ik offloads its experts from 512 tokens on."""
    path = write_model(tmp_path_factory.mktemp("moe") / "moe.gguf", "qwen3moe", n_layer=4, n_embd=512, n_head=8,
                       n_head_kv=2, n_expert=128, n_expert_used=8, n_ff_exp=256, header_only=True)
    return load_model(path)


def test_a_head_alone_on_a_later_device_takes_a_ts_slot_and_pipelines(moe: ModelProfile) -> None:
    cluster = _cluster("CUDA0", "CUDA1")
    n = moe.n_layer
    p = Placement(("CUDA0", "CUDA1"), ("CUDA0",) * n, (frozenset(),) * n, "CUDA1")
    args = llama_cpp.encode(moe, p, ("CUDA0", "CUDA1"))
    assert args.overrides == [] and args.tensor_split == [n, 1] and args.n_gpu_layers == n + 1
    decoded = llama_cpp.decode(moe, llama_cpp.parse_args(args.args()), ["CUDA0", "CUDA1"])
    assert decoded == p
    assert CostModel(moe, cluster, Context()).pipeline_parallel(p)
    # the same head before the layers' device needs -ot, which stops pipelining
    q = replace(p, order=("CUDA1", "CUDA0"))
    assert llama_cpp.encode(moe, q, ("CUDA0", "CUDA1")).overrides == [(r"^output\.", "CUDA1")]
    assert not CostModel(moe, cluster, Context()).pipeline_parallel(q)
    # ik's encoder overrides the head and leaves its device out of -dev: never pipelined
    ik = CostModel(moe, cluster, ik_llama.IkLlama.traits.context())
    assert not ik.pipeline_parallel(p)


def test_op_offload_goes_to_the_first_gpu_whatever_the_order(moe: ModelProfile) -> None:
    cluster = _cluster("RPC0", "CUDA0")
    n = moe.n_layer
    experts = tuple(on_cpu({"gate", "up", "down"}) for _ in range(n))
    p = Placement(("RPC0", "CUDA0"), ("RPC0",) * 2 + ("CUDA0",) * (n - 2), experts, "CUDA0")
    cost = CostModel(moe, cluster, Context(n_ubatch=512))
    assert cost.offload_device(p) == "CUDA0"
    pred = cost.predict(p)
    assert pred.pp_breakdown.get("pcie_stream", 0) > 0 and CPU not in pred.pp_breakdown
    # with no GPU at all the CPU computes them
    rpc_only = CostModel(moe, _cluster("RPC0", "RPC1"), Context(n_ubatch=512))
    q = replace(p, order=("RPC0", "RPC1"), layer_home=("RPC0",) * 2 + ("RPC1",) * (n - 2), output="RPC1")
    assert rpc_only.offload_device(q) is None and rpc_only.predict(q).pp_breakdown.get(CPU, 0) > 0


@pytest.mark.parametrize("n_ubatch, offloaded", [(256, False), (512, True), (2048, True)])
def test_ik_offloads_cpu_experts_only_when_each_expert_gets_32_tokens(
        moe: ModelProfile, n_ubatch: int, offloaded: bool) -> None:
    cluster = _cluster("CUDA0")
    n = moe.n_layer
    p = Placement(("CUDA0",), ("CUDA0",) * n, tuple(on_cpu({"gate", "up", "down"}) for _ in range(n)), "CUDA0")
    ik = CostModel(moe, cluster, ik_llama.IkLlama.traits.context(n_ubatch=n_ubatch))
    mainline = CostModel(moe, cluster, Context(n_ubatch=n_ubatch))
    assert mainline.experts_offloaded and ik.experts_offloaded is offloaded
    # the prompt's expert work: on the GPU through the link, or on the CPU
    assert (CPU in ik.predict(p).pp_breakdown) is not offloaded
    assert CPU not in mainline.predict(p).pp_breakdown
    # the GPU's buffer holds the copied experts only when they are offloaded
    gpu = {u.name: u.compute_bytes for u in ik.usage(p)}["CUDA0"] - ik_llama.IK_COMPUTE_MARGIN
    copies = {u.name: u.compute_bytes for u in mainline.usage(p)}["CUDA0"]
    assert (gpu == copies) is offloaded


def test_ik_margins_are_what_the_committed_sweeps_give() -> None:
    """The shipped margins are benchmarks/ik_compute.py's from the committed H200 records, and
    with them about as few of the held-out buffers are under the engine by more than 32 MiB."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import ik_compute

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[str, Any] = {}
        for rec in ik_compute.read_records(list(ik_compute.DEFAULT_FILES)):
            priced = ik_compute.replayed(rec, Path(tmp), cache)
            for buffer, name in ik_compute.BUFFERS:
                if rec["compute"].get(buffer):
                    rows.append((buffer, rec["case"] % 4 == 0, priced[name], rec["compute"][buffer]))
    assert len(rows) > 300
    for buffer, shipped in (("CUDA0", ik_llama.IK_COMPUTE_MARGIN), ("CUDA_Host", ik_llama.IK_HOST_COMPUTE_MARGIN)):
        train = np.array([(r[2], r[3]) for r in rows if r[0] == buffer and not r[1]], dtype=float)
        assert ik_compute.smallest_margin(train[:, 0], train[:, 1]) == shipped
        test = np.array([(r[2], r[3]) for r in rows if r[0] == buffer and r[1]], dtype=float)
        # held out, measured: 2 of 49 device buffers and 3 of 49 host buffers under by > 32 MiB
        assert np.mean(test[:, 0] + shipped < test[:, 1] - 32 * MiB) <= 0.07



def test_ik_notes_a_file_it_cannot_name_or_mla_heads_it_cannot_convert(tmp_path: Path) -> None:
    """ik_llama.cpp names no deepseek32 architecture (it runs V3.2 from a deepseek2 GGUF) and
    aborts on mainline's MLA conversion of heads other than 576/512 (src/llama-hparams.cpp:
    1083-1097): the plan says so; DeepSeek's own shapes get no note."""
    from omni_place.plan import plan_split

    mla = dict(kv_lora_rank=512, q_lora_rank=1536, n_rot=64, head_dim=128, n_head=16, n_head_kv=16)
    cluster = _cluster("CUDA0")
    v32 = write_model(tmp_path / "v32.gguf", "deepseek32", header_only=True, **mla)
    notes = plan_split(str(v32), cluster, engine="ik_llama.cpp").notes
    assert any("names no deepseek32 architecture" in n for n in notes)
    assert not any("architecture" in n for n in plan_split(str(v32), cluster).notes)
    ds = write_model(tmp_path / "ds.gguf", "deepseek2", header_only=True, **mla)
    assert not any("ik_llama.cpp" in n for n in plan_split(str(ds), cluster, engine="ik_llama.cpp").notes)
    for arch in ("kimi-linear", "olmo2", "gemma3n", "rwkv7", "lfm2"):
        other = write_model(tmp_path / f"{arch}.gguf", arch, header_only=True)
        notes = plan_split(str(other), cluster, engine="ik_llama.cpp").notes
        assert any(f"names no {arch} architecture" in n and "run it with llama.cpp" in n for n in notes)
        assert any("a later ik (0a9ff1255) names it" in n for n in notes) == (arch == "lfm2")
    for arch in ("llama4", "deci"):  # ik names these
        named = write_model(tmp_path / f"{arch}.gguf", arch, header_only=True)
        assert not any("architecture" in n for n in plan_split(str(named), cluster, engine="ik_llama.cpp").notes)
    odd = write_model(tmp_path / "odd.gguf", "deepseek2", header_only=True, **{**mla, "kv_lora_rank": 256})
    assert any("ik_llama.cpp aborts on this file" in n
               for n in plan_split(str(odd), cluster, engine="ik_llama.cpp").notes)


def test_ik_plans_note_the_ubatch_at_which_the_gpu_takes_the_cpu_experts(moe: ModelProfile) -> None:
    """128 experts, 8 used: ik computes CPU-held experts on the CPU below 512 tokens a ubatch; the
    note prices the same placement at -ub 512 (faster prompt); mainline, or a ubatch past the
    bound, gets none."""
    from omni_place.variants import expert_offload_note, expert_offload_ubatch

    n = moe.n_layer
    p = Placement(("CUDA0",), ("CUDA0",) * n, tuple(on_cpu({"gate", "up", "down"}) for _ in range(n)), "CUDA0")
    ik = CostModel(moe, _cluster("CUDA0"), ik_llama.IkLlama.traits.context(n_ubatch=256))
    assert expert_offload_ubatch(ik) == 512
    (note,) = expert_offload_note(ik, p, ik.predict(p))
    at_512 = CostModel(moe, _cluster("CUDA0"), ik_llama.IkLlama.traits.context(n_ubatch=512)).predict(p).pp_tps
    assert "-ub 512 lets the GPU take them" in note and f"-> {at_512:.0f} tok/s" in note
    assert at_512 > ik.predict(p).pp_tps
    assert expert_offload_ubatch(CostModel(moe, _cluster("CUDA0"), Context(n_ubatch=256))) is None
    assert expert_offload_ubatch(CostModel(moe, _cluster("CUDA0"), ik_llama.IkLlama.traits.context())) is None
    nothing_in_ram = replace(p, expert_homes=(frozenset(),) * n)
    assert expert_offload_note(ik, nothing_in_ram, ik.predict(nothing_in_ram)) == []
    # whole MoE layers on the CPU hold their experts there too
    cpu_layers = replace(nothing_in_ram, layer_home=(CPU,) * 2 + ("CUDA0",) * (n - 2))
    (note,) = expert_offload_note(ik, cpu_layers, ik.predict(cpu_layers))
    assert "-ub 512 lets the GPU take them" in note
    # `check` of the user's own flags says the same
    from omni_place.plan import evaluate
    argv = ["-ngl", "99", "-ot", "exps=CPU", "-ub", "256", "-c", "4096"]
    checked = evaluate(moe, _cluster("CUDA0"), argv, engine="ik_llama.cpp")
    assert checked.placement == p and any("-ub 512 lets the GPU take them" in n for n in checked.notes)
    assert not any("lets the GPU" in n for n in evaluate(moe, _cluster("CUDA0"), argv).notes)


def _ik_glm_dsa_runs() -> list[tuple[list[int] | None, str, float, float]]:
    """(indexer_types, -ctk, KV buffer MiB, indexer MiB) of ik_llama.cpp's llama-bench -v on a tiny
    GLM-DSA model (tests/data/ik_glm_dsa_kv.txt: its cache lines)."""
    import ast
    import re

    runs: list[tuple[list[int] | None, str, float, float]] = []
    for block in (ROOT / "tests" / "data" / "ik_glm_dsa_kv.txt").read_text().split("## ")[1:]:
        head = re.match(r"indexer_types=(\S+) -ctk (\S+)", block)
        assert head is not None
        kv, idx = (float(re.search(rf"{key} size =\s+([\d.]+) MiB", block)[1])  # type: ignore[index]
                   for key in ("KV buffer", "indexer"))
        runs.append((ast.literal_eval(head[1]), head[2], kv, idx))
    return runs


def test_ik_caches_glm_dsa_indexer_keys_by_its_own_rule(tmp_path: Path) -> None:
    """ik_llama.cpp caches a GLM-DSA indexer key on layers 0, 1 and every fourth from 2 whatever the
    header's indexer types, in -ictk's type (F16 by default) whatever -ctk: its KV buffer and
    indexer lines of four runs (header types or none, -ctk f16 or q8_0), to the printed 0.01 MiB;
    mainline's rule (the header's layers, in -ctk's type) would miss the typed and quantized runs."""
    runs = _ik_glm_dsa_runs()
    assert len(runs) == 4
    ik, missed = ik_llama.DIALECT, 0
    for types, ctk, kv_mib, idx_mib in runs:
        model = load_model(write_model(tmp_path / "g.gguf", "glm-dsa", n_layer=8, n_embd=256, n_head=4, head_dim=128,
                                       n_rot=64, kv_lora_rank=512, q_lora_rank=64, weight_type="f16",
                                       tokenizer="gpt2", indexer_types=types))
        assert model.ik_indexer_layers == (True, True, True, False, False, False, True, False)
        _, context = ik.run_context(ik.parse_args(["-ctk", ctk], "server"), "server", 4096, ctx=256)
        assert context.ik_dsa_indexer and context.type_indexer == "f16"
        kv = CostModel(model, _cluster("CUDA0"), context).kv
        assert abs(sum(kv) - kv_mib * MiB) <= 0.005 * MiB, (types, ctk, sum(kv) / MiB, kv_mib)
        latent = sum(model.kv_layer_bytes(256, ctk, ik_indexer="f16")) - 4 * 64 * 2 * 256  # 4 F16 64-wide keys
        assert abs(sum(kv) - latent - idx_mib * MiB) <= 0.005 * MiB + 1  # printed to 0.01 MiB
        missed += abs(sum(model.kv_layer_bytes(256, ctk)) - kv_mib * MiB) > 0.005 * MiB  # mainline's rule
    assert missed == 3  # all but the header's four layers in F16, which happen to be as many bytes
    assert ik.parse_args(["--indexer-cache-type-k", "Q8_0"], "server").type_indexer == "q8_0"
    with pytest.raises(InvalidArgumentError, match="-ictk needs a cache type"):
        ik.parse_args(["-ictk", "q9"], "server")


def test_ik_runs_minimax_m3_without_its_msa_cache(tmp_path: Path) -> None:
    """ik_llama.cpp's MiniMax-M3 is dense attention (src/graphs/build_minimaxm3.cpp): no MSA indexer
    cache, and its loader refuses mainline's file with the indexer tensors (its llama-bench on
    write_model's minimax-m3: "done_getting_tensors: wrong number of tensors; expected 105, got 89")."""
    from omni_place.plan import plan_split

    path = write_model(tmp_path / "m3.gguf", "minimax-m3", n_layer=6, n_embd=256, n_head=8, n_head_kv=2, head_dim=64,
                       n_dense_lead=2, header_only=True)
    model = load_model(path)
    gqa = 2 * 2 * 2 * 64 * 1024  # K and V of 2 heads of 64, F16, 1024 cells
    assert model.kv_layer_bytes(1024, ik_indexer="f16") == [gqa] * 6
    assert model.kv_layer_bytes(1024)[2:] == [gqa + 2 * 2 * 64 * 1024] * 4  # mainline's MSA cache
    notes = plan_split(str(path), _cluster("CUDA0"), engine="ik_llama.cpp").notes
    assert any("takes no MSA indexer tensors" in n for n in notes)
