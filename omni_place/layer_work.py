"""What each layer's weights cost the kernels, in a decoded token and in a prompt's.

Per layer, its dense part and its routed experts as :class:`~omni_place.kernels.KernelWork` (the
engine's CPU kernels, the CPU build's SIMD), once for decode and once for a prompt. They differ in
the last layer: a prompt keeps, past its attention, only the rows that give logits (one of a
ubatch at most), so its FFN, dense or MoE, is all but free and op offload copies none of it
(llama.cpp src/models/llama.cpp:174-177, qwen3moe.cpp:123-126, deepseek2.cpp:636-639; ik_llama.cpp
src/graphs/build_qwen3.cpp:128-130, build_deepseek2.cpp:1337-1342).
"""
from __future__ import annotations

from dataclasses import dataclass

from .kernels import KernelWork
from .model import ModelProfile, Role

#: a layer's tensors past its attention: its FFN, dense or MoE (what a prompt's last layer skips)
FFN_ROLES = frozenset({Role.FFN, Role.SHARED_EXPERT, Role.ROUTER, Role.ROUTED_EXPERT})


@dataclass(frozen=True)
class LayerWork:
    """Per layer (index as ``model.layers``): (dense, routed-expert) kernel work of a decoded token
    (``decode``) and of a prompt token (``prompt``), their parameters, whether a prompt runs the
    layer's FFN (``ffn_in_prompt``: 1, or 0 for the last layer), the bytes of its dense part a
    prompt uses as the CPU holds them (``prompt_dense_cpu_bytes``: what op offload copies), and how
    many (dense, routed-expert) weight tensors a prompt uses (``prompt_tensors``: op offload makes
    each a graph split of its own)."""

    decode: list[tuple[KernelWork, KernelWork]]
    prompt: list[tuple[KernelWork, KernelWork]]
    params: list[tuple[float, float]]
    ffn_in_prompt: list[float]
    prompt_dense_cpu_bytes: list[int]
    prompt_tensors: list[tuple[int, int]]


def layer_work(model: ModelProfile, *, ik_cpu: bool, simd: str | None) -> LayerWork:
    """The :class:`LayerWork` of ``model`` by the engine's CPU kernels (``ik_cpu``: ik_llama.cpp's)
    of the ``simd`` build."""
    n = len(model.layers)
    last = max((lc.index for lc in model.layers if not lc.is_nextn), default=-1)
    ffn_in_prompt = [0.0 if il == last else 1.0 for il in range(n)]
    dense_cpu = [lc.dense["cpu"] for lc in model.layers]
    decode = [[KernelWork(), KernelWork()] for _ in range(n)]
    prompt = [[KernelWork(), KernelWork()] for _ in range(n)]
    params = [[0.0, 0.0] for _ in range(n)]
    tensors = [[0, 0] for _ in range(n)]
    for t in model.tensors:
        if t.layer is None:
            continue
        routed = t.role is Role.ROUTED_EXPERT
        params[t.layer][routed] += t.info.n_elements
        skipped = t.role in FFN_ROLES and not ffn_in_prompt[t.layer]
        if skipped and not routed:
            dense_cpu[t.layer] -= t.alloc_bytes("cpu")
        tensors[t.layer][routed] += 0 if skipped else 1
        for works in (decode, prompt) if not skipped else (decode,):
            works[t.layer][routed] = works[t.layer][routed].add(t.info.type_name, t.info.n_elements, t.bytes,
                                                                routed=routed, ik_cpu=ik_cpu, simd=simd)
    return LayerWork([(d, r) for d, r in decode], [(d, r) for d, r in prompt], [(d, r) for d, r in params],
                     ffn_in_prompt, dense_cpu, [(d, r) for d, r in tensors])
