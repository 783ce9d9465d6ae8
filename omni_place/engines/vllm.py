"""vLLM's pipeline-parallel dialect: a plan as pipeline stages.

vLLM places whole layers per pipeline stage, one stage per GPU (tensor parallel size 1 here), in
``CUDA_VISIBLE_DEVICES`` order; ``VLLM_PP_LAYER_PARTITION="a,b,..."`` gives each stage's count of
hidden layers (``vllm/distributed/utils.py`` ``get_pp_indices``; without it the split is even,
remainder to the middle stages). The first stage also holds the embedding, the last the final
norm and ``lm_head``; MTP/NextN blocks are not hidden layers. Experts cannot be sent to the CPU
per layer, so vLLM plans keep every weight on the GPUs, and RPC devices are not stages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from ..cost import CPU, Context, DeviceUsage, Placement
from ..devices import Cluster
from ..errors import InvalidArgumentError
from ..model import ModelProfile
from .base import Dialect, EngineTraits, PlacementArgs
from .common import layer_counts

NAME = "vllm"
TOOLS = ("server",)
PARTITION_ENV = "VLLM_PP_LAYER_PARTITION"
# KV cache dtypes vLLM takes for --kv-cache-dtype, by omni_place KV type.
KV_CACHE_DTYPE = {"f16": "auto", "bf16": "auto"}


@dataclass
class VllmArgs:
    """``vllm serve`` flags and environment for a pipeline of heterogeneous stages."""

    partition: list[int]  # hidden layers per stage
    visible_devices: list[str]  # CUDA_VISIBLE_DEVICES entries, stage order
    gpu_memory_utilization: float
    notes: list[str] = field(default_factory=list)

    @property
    def n_gpu_layers(self) -> int:
        return sum(self.partition)

    @property
    def tensor_split(self) -> list[int]:
        return list(self.partition)

    @property
    def devices(self) -> list[str]:
        return list(self.visible_devices)

    @property
    def overrides(self) -> list[tuple[str, str]]:
        return []

    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.visible_devices),
                PARTITION_ENV: ",".join(str(n) for n in self.partition)}

    def args(self, tool: str = "server", *, ctx: int | None = None, n_ubatch: int | None = None,
             type_k: str = "f16", type_v: str = "f16", flash_attn: bool = True,
             op_offload: bool = True, pinned_weights: bool = False) -> list[str]:
        if tool not in ("server", "cli"):
            raise InvalidArgumentError(f"vLLM has no {tool!r} flag dialect", hint="use --tool server")
        check_kv_types(type_k, type_v)
        out = ["--pipeline-parallel-size", str(len(self.partition)), "--tensor-parallel-size", "1"]
        if ctx is not None:
            out += ["--max-model-len", str(ctx)]
        return out + ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:.2f}"]


def visible_device(cluster: Cluster, name: str) -> str:
    """The CUDA_VISIBLE_DEVICES entry of a GPU: its UUID when known, else its CUDA index."""
    dev = cluster.by_name(name)
    if dev.uuid:
        return dev.uuid
    digits = "".join(ch for ch in name if ch.isdigit())
    if not name.startswith("CUDA") or not digits:
        raise InvalidArgumentError(f"{name} is not a CUDA device: vLLM stages are local GPUs",
                                   hint="vLLM plans use the cluster's CUDA devices only")
    return digits


def encode(model: ModelProfile, p: Placement, cluster: Cluster, usage: Sequence[DeviceUsage]) -> VllmArgs:
    """vLLM stages for a placement whose weights are all on local GPUs."""
    if any(h == CPU for h in p.layer_home) or any(p.expert_homes[il] for il in range(model.n_layer)
                                                 if model.layers[il].has_experts):
        raise InvalidArgumentError("vLLM cannot keep layers on the CPU or experts away from their layer",
                                   hint="this placement needs llama.cpp or ik_llama.cpp")
    counts = layer_counts(p)
    used = [n for n, c in zip(p.order, counts) if c > 0]
    partition = [c for c in counts if c > 0]
    nextn = model.hparams.n_layer_nextn
    if nextn:
        partition[-1] -= nextn  # MTP blocks are not hidden layers; vLLM puts them on the last stage
    by_name = {u.name: u for u in usage}
    fractions = []
    for name in used:
        dev = cluster.by_name(name)
        total = dev.total_bytes or dev.memory_bytes
        fractions.append((by_name[name].used_bytes + dev.margin_bytes) / total)
    util = min(0.99, math.ceil(max(fractions) * 100) / 100)
    return VllmArgs(partition, [visible_device(cluster, n) for n in used], util)


def first_stage_bytes(model: ModelProfile) -> int:
    """The embedding the first stage holds on its GPU (llama.cpp keeps it on the CPU)."""
    return model.input_bytes()


def check_kv_types(type_k: str, type_v: str) -> None:
    """vLLM takes one KV cache dtype for K and V, and none of llama.cpp's quantized types."""
    if type_k != type_v or type_k not in KV_CACHE_DTYPE:
        raise InvalidArgumentError(f"KV cache type {type_k}/{type_v} has no vLLM equivalent",
                                   hint="plan vLLM with --kv-type f16")


class Vllm(Dialect):
    """vLLM: pipeline stages of whole layers on local GPUs."""

    name = NAME
    traits = EngineTraits(cpu_weights=False, rpc_devices=False, swa_full=False, embedding_on_first=True,
                          llama_family=False, mla_decode_flops=False)
    tools = TOOLS

    def encode(self, model: ModelProfile, placement: Placement, cluster: Cluster, context: Context,
               usage: Sequence[DeviceUsage]) -> VllmArgs:
        return encode(model, placement, cluster, usage)

    def check_context(self, context: Context) -> None:
        check_kv_types(context.type_k, context.type_v)

    def env(self, placement_args: PlacementArgs, args: Sequence[str]) -> dict[str, str]:
        if not isinstance(placement_args, VllmArgs):
            raise InvalidArgumentError("these flags are not a vLLM plan's", hint="plan with --engine vllm")
        return placement_args.env()


DIALECT = Vllm()
