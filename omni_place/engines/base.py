"""The one interface every engine dialect implements, and what the planner must know of each
engine (:class:`EngineTraits`). ``plan``, ``bench`` and the CLI reach an engine only through
:func:`omni_place.engines.dialect`; no module outside ``engines/`` compares engine names."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence

from ..errors import InvalidArgumentError
from ..placement import Context
from .common import FlagSyntax
from .tools import BENCH_DEFAULTS, SERVER_DEFAULTS, ToolContext, ToolDefaults, tool_context
from .splitmodes import SplitModeRule, check, find_rule, rule_of

if TYPE_CHECKING:
    from ..cost import DeviceUsage, Placement
    from ..devices import Cluster
    from ..model import ModelProfile
    from .common import ParsedArgs


@dataclass(frozen=True)
class EngineTraits:
    """Placement rules that differ between engines."""

    cpu_weights: bool  # layers / routed experts may stay in CPU RAM
    rpc_devices: bool  # llama.cpp RPC servers can be devices
    swa_full: bool  # the SWA KV cache is sized for the whole context
    embedding_on_first: bool  # the token embedding lives on the first device, not in CPU RAM
    output_only_offload: bool = True  # the output head alone may sit on an accelerator
    llama_family: bool = True  # a llama.cpp-style command line (-ngl/-ts/-ot) that `check`/--exec take
    libllama: bool = False  # this project's ctypes libllama (mainline) can load and verify its plans
    # the server's flags that load without mmap, pinning CPU-held weights, when every tool has them
    # (derived from the dialect's FlagSyntax.pin_weights; empty: the engine cannot)
    pin_flags: tuple[str, ...] = ()
    op_offload_switch: bool = False  # every tool can turn op offload off (FlagSyntax.no_op_offload)
    # op offload takes a routed expert's MUL_MAT_ID only when the batch gives each expert the
    # minimum batch on average: n_tokens x experts used >= 32 x experts (ik_llama.cpp,
    # ggml/src/ggml-cuda.cu:5180-5207); mainline offloads it like any op of >= 32 tokens
    moe_offload_by_share: bool = False
    # a routed-expert FFN is three ops, where mainline's is 4 + k (up, gate, the GLU, down, the
    # weighting and k - 1 adds; src/llama-graph.cpp build_moe_ffn): ik_llama.cpp fuses up, gate
    # and the activation (-fmoe) and the weighted sum (fused_mmad), both on by default
    # (src/llama-build-context.cpp:1598-1690, src/llama.cpp:7610-7614)
    fused_moe: bool = False
    # the CPU backend runs ik_llama.cpp's own kernels (ggml/src/iqk): prompt matmuls at each type's
    # time per FLOP by them (weight_types.toml ik_cpu_prompt, ik_cpu_expert_prompt), the decode's
    # cache at the memory's rate (its flash attention unmeasured); else mainline's (cpu_prompt,
    # cpu_expert_prompt; the cache at its threads' rate, attention.CPU_DECODE_KV_BYTES_PER_FLOP)
    ik_cpu_kernels: bool = False
    # the host's KQ mask reuses each row for the next (mainline, src/llama-kv-cache.cpp
    # set_input_kq_mask_impl); else every cell is checked (ik_llama.cpp; attention.kq_mask_work)
    kq_mask_reuses_rows: bool = True
    # bytes above mainline's replayed compute buffer on an accelerator and on the host: an engine
    # whose graphs are not mainline's (ik_llama.cpp: fused ops, its MLA and MoE paths) is priced
    # as mainline's replay of the placement plus these (benchmarks/ik_compute.py measures them)
    compute_margin: int = 0
    host_compute_margin: int = 0
    # the most GPUs of a cluster whose buffers that replay prices (0: any); with more, the widths
    # fit and no margin (ik over an H200 pair: CUDA1 100.5 MiB where mainline's replay gives 223,
    # tests/test_gpu_records.py)
    replay_gpus: int = 0
    # tensors overridden to the CPU (-ot X=CPU, --n-cpu-moe) land in the first GPU's pinned host
    # buffer even under mmap (ik_llama.cpp: src/llama-load-tensors.cpp:260-271 swaps any host
    # buffer type of an override for llama_default_buffer_type_cpu(true))
    pinned_overrides: bool = False
    # a CPU layer's KV cache lands in the first GPU's pinned host buffer (ik_llama.cpp: the layer's
    # buffer type, src/llama.cpp:4328 and 352-360, holds its cache, :1272-1288; the logs' "CUDA_Host
    # KV buffer"); mainline's is plain CPU memory (src/llama-kv-cache.cpp:212-219, "CPU KV buffer")
    pinned_cpu_cache: bool = False
    # a recurrent layer's conv-state store reads a strided view across the whole concatenated conv
    # input (mainline: src/models/delta-net-base.cpp:472-496, src/models/mamba-base.cpp:57-64), so a
    # CPU-held layer copies all of it from the GPU; ik_llama.cpp stores a contiguous copy of the
    # state alone (src/llama-delta-net.cpp:384-401, src/graphs/build_mamba.cpp:69-72)
    conv_store_reads_input: bool = True
    # a head alone on a layer-less device after the last one with layers is spelled by -ts (its
    # own slot), no -ot, so the engine may still pipeline (mainline's encode); ik's encoder leaves
    # such a device out of -dev and overrides the head
    output_by_split: bool = True
    # llama-bench warms a prompt test up with one token, not the whole prompt (ik_llama.cpp,
    # examples/llama-bench/llama-bench.cpp:2226-2232; mainline runs the prompt,
    # tools/llama-bench/llama-bench.cpp:2419): its first timed repetition runs the full batch cold
    bench_cold_first_prompt: bool = False
    # the CUDA backend replays a graph as a CUDA graph only from its second unchanged call
    # (ggml/src/ggml-cuda/ggml-cuda.cu:4456-4466), a call more than llama-bench's one-prompt warmup
    # gives a short prompt: a CUDA build's first timed prompt test without a depth run before it
    # still runs uncaptured: 0.80 of the others on an H100 at -p 1024, as fast as they with
    # GGML_CUDA_DISABLE_GRAPHS=1 or after a -p 8192 warmup (benchmarks/results/cuda_graph_warmup.md)
    bench_cuda_graph_warmup: bool = False
    # a decoded token's MLA attention runs the mma kernel, bound by its FLOPs (mainline: no vector
    # flash-attention kernel for 576-wide heads, ggml/src/ggml-cuda/fattn.cu:635); ik_llama.cpp and
    # vLLM have MLA kernels of their own, unmeasured at depth: priced by the cache's bytes
    mla_decode_flops: bool = True
    # GLM-DSA's indexer keys by ik_llama.cpp's rule: layers 0, 1 and every fourth from 2 that carry an
    # indexer, in -ictk's type (ik src/llama-hparams.cpp:1918, src/llama.cpp:1342-1436)
    ik_dsa_indexer: bool = False
    split_modes: tuple[SplitModeRule, ...] = ()  # the engine's -sm values (its module's SPLIT_MODES)

    def split_mode(self, name: str) -> SplitModeRule | None:
        """The table entry of ``-sm name`` (None: the engine has no such mode)."""
        return find_rule(self.split_modes, name)

    def context(self, *, fused_moe: bool | None = None, **settings: Any) -> Context:
        """A run :class:`~omni_place.cost.Context` with this engine's rules filled in;
        ``fused_moe`` is the command line's (ParsedArgs.fused_moe: None, the engine's default)."""
        return Context(swa_full=self.swa_full, embedding_on_first=self.embedding_on_first,
                       moe_offload_by_share=self.moe_offload_by_share,
                       fused_moe=self.fused_moe and fused_moe is not False,
                       ik_cpu_kernels=self.ik_cpu_kernels, compute_margin=self.compute_margin,
                       host_compute_margin=self.host_compute_margin, replay_gpus=self.replay_gpus,
                       pinned_overrides=self.pinned_overrides, pinned_cpu_cache=self.pinned_cpu_cache,
                       conv_store_reads_input=self.conv_store_reads_input,
                       output_by_split=self.output_by_split, mla_decode_flops=self.mla_decode_flops,
                       ik_dsa_indexer=self.ik_dsa_indexer, kq_mask_reuses_rows=self.kq_mask_reuses_rows,
                       **settings)


@dataclass(frozen=True)
class BenchSpelling:
    """How an engine's llama-bench spells the recipes ``omni-place bench`` runs."""

    fit: tuple[str, ...]  # the engine's own memory fitter
    n_cpu_moe: str  # the --n-cpu-moe flag
    output: tuple[str, ...]  # machine-readable output
    ngl_all: str  # an -ngl that offloads every layer
    no_op_offload: tuple[str, ...] = ()  # keeps prompt ops of CPU-held weights on the CPU (empty: no such flag)


@dataclass(frozen=True)
class BenchRecordFlags:
    """One record of an engine's plain llama-bench output (``-o json``/``jsonl``) as the
    llama-bench command line of its one test, for :meth:`Dialect.parse_args` (``tool="bench"``)."""

    argv: tuple[str, ...]
    threads: int | None = None  # -t; None: the record does not say
    fitted: str | None = None  # the engine's fitter chose the placement, so the flags do not tell it


class PlacementArgs(Protocol):
    """The placement part of an engine's command line, as :meth:`Dialect.encode` returns it."""

    @property
    def n_gpu_layers(self) -> int: ...

    @property
    def tensor_split(self) -> Sequence[float]: ...

    @property
    def devices(self) -> Sequence[str]: ...

    @property
    def overrides(self) -> Sequence[tuple[str, str]]: ...

    def args(self, tool: str = "server", *, ctx: int | None = None, n_ubatch: int | None = None,
             type_k: str = "f16", type_v: str = "f16", flash_attn: bool = True,
             op_offload: bool = True, pinned_weights: bool = False) -> list[str]: ...


class Dialect(ABC):
    """One engine: its traits, how a placement becomes its flags and back, and how it reports
    a placement in its log."""

    name: ClassVar[str]
    traits: ClassVar[EngineTraits]
    tools: ClassVar[tuple[str, ...]]
    syntax: ClassVar[Mapping[str, FlagSyntax]] = {}  # per tool, how it spells the placement flags
    bench: ClassVar[BenchSpelling | None] = None
    env_note: ClassVar[str | None] = None  # a comment line above the environment form
    bench_record_keys: ClassVar[frozenset[str]] = frozenset()  # keys only this engine's llama-bench prints

    @abstractmethod
    def encode(self, model: ModelProfile, placement: Placement, cluster: Cluster, context: Context,
               usage: Sequence[DeviceUsage]) -> PlacementArgs:
        """The engine's flags that reproduce ``placement`` exactly."""

    def check_context(self, context: Context) -> None:  # noqa: B027 - optional hook; the default accepts any context
        """Refuse context settings the engine cannot run (KV types, ...)."""

    def model_notes(self, model: ModelProfile) -> list[str]:
        """Notes on a model the engine refuses or loads otherwise than it is priced."""
        return []

    def env(self, placement_args: PlacementArgs, args: Sequence[str]) -> dict[str, str]:
        """Environment variables that carry the plan (``args``: its server flags)."""
        raise InvalidArgumentError(f"{self.name} reads no environment variable for its placement flags",
                                   hint="use --format args and pass the flags on its command line")

    def tool_defaults(self, tool: str = "server") -> ToolDefaults:
        """What ``tool`` uses for the settings a command line leaves out (context, batches, -fa, -ngl)."""
        return BENCH_DEFAULTS if tool == "bench" else SERVER_DEFAULTS

    def run_context(self, parsed: ParsedArgs, tool: str, n_ctx_train: int, ctx: int | None = None,
                    **settings: Any) -> tuple[ToolContext, Context]:
        """The context a parsed command line of ``tool`` runs with (tools.tool_context: its size,
        batches, flash attention and test sizes; its KV types, load mode, op offload and fused MoE)
        under this engine's traits; ``settings``: the caller's others (e.g. ``allow_paging``)."""
        run = tool_context(parsed, self.tool_defaults(tool), n_ctx_train, ctx)
        return run, self.traits.context(
            ctx=run.ctx, n_ubatch=run.n_ubatch, n_batch=run.n_batch, type_k=parsed.type_k, type_v=parsed.type_v,
            flash_attn=run.flash_attn, depth=run.depth, n_prompt=run.n_prompt, n_gen=run.n_gen,
            prompt_depth=run.prompt_depth, pinned_weights=parsed.pinned_weights, op_offload=parsed.op_offload,
            fused_moe=parsed.fused_moe, type_indexer=parsed.type_indexer, **settings)

    def parse_args(self, argv: Sequence[str], tool: str = "server") -> ParsedArgs:
        """The placement flags of a user's command line for ``tool``."""
        raise InvalidArgumentError(f"omni-place reads no {self.name} command line",
                                   hint="use --engine llama.cpp or ik_llama.cpp")

    def decode(self, model: ModelProfile, parsed: ParsedArgs, cluster: Cluster, context: Context,
               tool: str = "server") -> Placement:
        """The placement the engine makes of a parsed command line on ``cluster``."""
        raise InvalidArgumentError(f"omni-place reads no {self.name} command line",
                                   hint="use --engine llama.cpp or ik_llama.cpp")

    def flags_of(self, parsed: ParsedArgs) -> PlacementArgs:
        """A parsed command line's placement flags, spelled again by this dialect."""
        raise InvalidArgumentError(f"omni-place reads no {self.name} command line",
                                   hint="use --engine llama.cpp or ik_llama.cpp")

    def bench_record_flags(self, record: Mapping[str, Any]) -> BenchRecordFlags:
        """The llama-bench flags of one record of this engine's plain llama-bench output
        (InvalidArgumentError naming a missing or malformed field)."""
        raise InvalidArgumentError(f"omni-place reads no {self.name} llama-bench output",
                                   hint="use --engine llama.cpp or ik_llama.cpp")

    def split_run(self, model: ModelProfile, parsed: ParsedArgs, cluster: Cluster, order: Sequence[str],
                  flash_attn: bool, tool: str = "server") -> tuple[str, tuple[float, ...]]:
        """A parsed command line's split mode and, for a parallel one, each model device's share
        (``order``: the decoded placement's devices), refusing what the engine refuses (one
        line naming its condition) or what omni-place does not price."""
        rule = rule_of(self.traits.split_modes, self.name, parsed.split_mode, tool)
        check(rule, self.name, model, [cluster.by_name(n).kind for n in order], flash_attn)
        if not rule.parallel:
            return rule.name, ()
        shares = list(parsed.tensor_split or [])[:len(order)]
        shares += [0.0] * (len(order) - len(shares))
        if not any(shares):
            shares = self.default_shares(cluster, order)
        return rule.name, tuple(float(x) for x in shares)

    def default_shares(self, cluster: Cluster, order: Sequence[str]) -> list[float]:
        """A parallel mode's shares when ``-ts`` gives none: equal (mainline's meta device,
        ``src/llama-model.cpp:855-856``)."""
        return [1.0] * len(order)

    def layer_homes_from_log(self, log: str, n_layer: int, accelerators: Sequence[str],
                             argv: Sequence[str]) -> tuple[list[str], str] | None:
        """Each layer's device and the output's, from the engine's ``-v`` log of one load
        (``accelerators``: its devices in its order); None when the log does not say."""
        return None


def by_name(dialects: Mapping[str, Any], engine: str) -> Any:
    """A registry entry by engine name; a clear error for any other name."""
    try:
        return dialects[engine]
    except (KeyError, TypeError):
        raise InvalidArgumentError(f"unknown engine {engine!r}", hint="use one of: " + ", ".join(dialects)) from None
