"""ik_llama.cpp's placement flags: from a Placement to flags that reproduce it there, and back.

ik differs from mainline (ik ``src/llama.cpp:4177-4672``, ``llm_load_tensors``):

- ``-ngl`` counts repeating layers only: the first ``n_layer - ngl`` run on the CPU, and the
  output head goes to a GPU only when ``ngl > n_layer``.
- ``-ts`` is byte-weighted: :func:`layer_sizes` (ik's ``get_layer_sizes``: every weight of a
  layer, overridden or not, plus its KV cache at ``-c``; the output slot adds the logits) is
  walked with a budget ``split_d * (Σ sizes + n_dev * max_compute)``, each device first charged
  ``max_compute``, a straddling layer going to whichever side it overshoots less. Setting
  ``ts_d = max_compute + Σ sizes(layers wanted on d)`` puts every boundary exactly between two
  layers, so an error in our size estimate up to half a boundary layer still gives the plan.
- ``-dev`` takes buffer names (``CUDA0``, ``RPC0[host:port]``); RPC devices come first by default.
- ``-ot`` lists are split on ``,`` in llama-server *and* llama-bench; llama-bench has no ``-dev``.
- ``-ncmoe N`` / ``-cmoe`` are not regex lists: the library overrides the experts of the *last*
  N layers that have them (one GPU), or shares N out over the GPUs in proportion to their layer
  counts, highest layers of each first (``src/llama-load-tensors.cpp:270-352``); llama-bench's
  ``--n-cpu-moe N`` instead overrides the *first* N layers (``examples/llama-bench``).
- The SWA KV cache is full size unless ``--swa-compress`` (not emitted).
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from ..cost import CPU, Context, DeviceUsage, Placement
from ..devices import Cluster
from ..errors import InvalidArgumentError
from ..model import KV_TYPES, ModelProfile, TensorRecord
from . import llama_cpp
from .base import BenchRecordFlags, BenchSpelling, Dialect, EngineTraits
from .splitmodes import SplitModeRule, is_parallel
from .common import (N32, EngineArgs, FlagSyntax, accelerator_names, expert_overrides, layer_counts, local_gpus,
                     model_devices, parallel_layers, pin_flags_of, record_int, record_split_flags, record_switch,
                     pair_test, record_test_flags, record_text, record_threads, rpc_buffer_names, rpc_servers)
from .tools import BENCH_DEFAULTS, SERVER_DEFAULTS, ToolDefaults

NAME = "ik_llama.cpp"
SYNTAX = {
    # --no-mmap: ik common/common.cpp; -mmp 0: ik examples/llama-bench/llama-bench.cpp
    "server": FlagSyntax(dev_sep=",", ts_sep=",", ot_sep=",", fa_on="1", fa_off="0", takes_ctx=True,
                         pin_weights=("--no-mmap",)),
    "cli": FlagSyntax(dev_sep=",", ts_sep=",", ot_sep=",", fa_on="1", fa_off="0", takes_ctx=True,
                      pin_weights=("--no-mmap",)),
    "bench": FlagSyntax(dev_sep=None, ts_sep="/", ot_sep=",", fa_on="1", fa_off="0", takes_ctx=False, rpc_flag="-rpc",
                        pin_weights=("-mmp", "0")),
}
TOOLS = tuple(SYNTAX)
# -sm values (ik common/common.cpp:2054-2077; its llama-bench takes none/layer/graph only,
# examples/llama-bench/llama-bench.cpp:652-672)
SPLIT_MODES = (
    SplitModeRule("none", "ik:src/llama.cpp:8341-8350"),
    SplitModeRule("layer", "ik:src/llama.cpp:4627-4636"),
    # attention split across the GPUs, the rest of a layer on one (ik:src/llama.cpp:4645-4652)
    SplitModeRule("attn", "ik:src/llama.cpp:4638-4652", bench=False, min_devices=2, priced=False),
    # every layer's matrices in CUDA's split buffer by -ts (ik:src/llama.cpp:4638-4672,
    # src/llama-load-tensors.cpp:4647-4806); an unlisted architecture falls back to layer with a
    # warning (:4225-4241); fewer than two devices throw (:4370-4372); the split buffer is CUDA's
    # (or SYCL's) over the local GPUs (:485-505), so RPC devices cannot take part
    SplitModeRule("graph", "ik:src/llama.cpp:4638-4672", parallel=True, min_devices=2,
                  device_kinds=frozenset({"gpu"}),
                  device_refusal="its graph split buffer is CUDA's, over local GPUs only (ik:src/llama.cpp:485-505)",
                  # is_model_split_supported (ik:src/llama.cpp:3895-3929), less gemma4*: their support
                  # depends on per-layer embeddings (:4226-4233), which omni-place does not read
                  archs=frozenset({"llama", "qwen3moe", "glm4moe", "mistral3", "command-r", "cohere2", "cohere2_moe",
                                   "mimo2", "qwen3", "qwen3vl", "hunyuan-moe", "gpt-oss", "ernie4_5-moe", "minimax-m2",
                                   "minimax-m3", "seed_oss", "step35", "laguna", "qwen35", "qwen35moe", "deepseek2",
                                   "glm-dsa", "mistral4", "mellum", "muse-glimmer"}),
                  archs_allowed=True, archs_source="ik:src/llama.cpp:3895-3929, 4236-4241", arch_fallback="layer",
                  mla_kv_mirrored=True),
)
SWA_FULL = True  # ik sizes SWA layers' KV cache for the whole context
FIT_MARGIN = 1 << 30  # ik keeps 1 GiB free per GPU in its default split (k_default_mem_margin)
# ik's compute buffers above mainline's replay of the same placement (its own graphs): the
# smallest margins that leave at most 5 % of 155 H200 llama-bench loads of random models under by
# more than 32 MiB (benchmarks/ik_compute.py, benchmarks/results/ik_compute.md)
IK_COMPUTE_MARGIN = 64 * 1024 * 1024
IK_HOST_COMPUTE_MARGIN = 24 * 1024 * 1024
# architectures omni_place prices that ik_llama.cpp (8337e4cd3) does not name (src/llama-arch.cpp): it
# refuses such a file ("unknown model architecture"); cohere2moe is ik's cohere2_moe. The SWA
# architectures from olmo2 on, falcon-h1, gemma3n and rwkv7 are named by no later ik either (0a9ff1255's
# list); lfm2 is named from some later ik on (LATER_NAMED: 0a9ff1255 names it)
UNNAMED_ARCHITECTURES = frozenset({"deepseek32", "afmoe", "cohere2moe", "granitehybrid", "jamba", "kimi-linear",
                                   "lfm2", "lfm2moe", "mamba2", "nemotron_h", "nemotron_h_moe",
                                   "olmo2", "plamo3", "smallthinker", "exaone4", "exaone-moe", "falcon-h1",
                                   "gemma3n", "rwkv7"})
LATER_NAMED = frozenset({"lfm2"})
_TS_UNIT = 1024.0 * 1024.0  # -ts shares are written in MiB (2 decimals: 10 KiB resolution)

_EXPERT = re.compile(r"\.ffn_(gate_up|gate|up|down)_(ch|)exps\.")
_SHEXP = re.compile(r"\.ffn_(gate|up|down)_shexp\.")
_DENSE_FFN = re.compile(r"\.ffn_(gate|up|down)\.")
_LAYER_NORM = re.compile(r"\.(attn_norm|attn_norm_2|attn_output_norm|post_attention_norm|ffn_norm|"
                         r"post_ffw_norm|layer_output_norm)\.weight$")


def buffer_name(device: str, rpc_names: dict[str, str] | None = None) -> str:
    """ik's name of a device for -dev/-ot: ``CUDA0``; an RPC device is ``RPC<i>[host:port]`` with
    ``i`` its index on that server (ik ``src/llama.cpp:7738``; :func:`~.common.rpc_buffer_names`)."""
    return (rpc_names or {}).get(device, device)


def layer_sizes(model: ModelProfile, context: Context) -> tuple[list[float], float]:
    """ik's ``get_layer_sizes`` (ik ``src/llama.cpp:3938-4175``): bytes per layer slot (weights as
    stored + KV cache at ``-c``; last entry the output head + logits beyond ``max_compute``) and
    ``max_compute``, its per-device compute allowance."""
    hp = model.hparams
    ub = context.n_ubatch
    n_layer = model.n_layer
    sizes = [0.0] * (n_layer + 1)
    ffn_exps = [0] * n_layer
    ffn_shexp = [0] * n_layer
    ffn_dense = [0] * n_layer
    has_norm = [False] * n_layer
    mla: list[dict[str, TensorRecord]] = [{} for _ in range(n_layer)]
    first_nextn = n_layer - hp.n_layer_nextn
    output_w = embd = 0
    for t in model.tensors:
        if t.layer is None:
            if t.name == "token_embd.weight":
                embd = t.bytes
            elif t.name == "output.weight":
                output_w += t.bytes
            continue
        il = t.layer
        if il >= first_nextn:
            continue  # NextN blocks are not loaded without MTP
        sizes[il] += t.bytes
        name = t.name
        if name.endswith(".bias") or name.endswith(".scale"):
            continue
        shape = t.info.shape
        ne1 = shape[1] if len(shape) > 1 else 1
        for key in ("attn_k_b", "attn_v_b", "attn_kv_b"):
            if hp.is_mla and f".{key}.weight" in name:
                mla[il][key] = t
                break
        else:
            if _EXPERT.search(name):
                ffn_exps[il] += ne1 * ub * hp.n_expert_used * 4
            elif _SHEXP.search(name):
                ffn_shexp[il] += ne1 * ub * 4
            elif _DENSE_FFN.search(name):
                ffn_dense[il] += ne1 * ub * 4
            elif _LAYER_NORM.search(name):
                has_norm[il] = True
    compute = [0.0] * n_layer
    for il in range(n_layer):
        inp = hp.n_embd * ub * 4 * (2 if has_norm[il] else 1)
        compute[il] = float(max(ffn_exps[il], ffn_shexp[il], ffn_dense[il]) + inp)
    if hp.is_mla:
        for il in range(n_layer):
            m = mla[il]
            wk, wv, wkv = m.get("attn_k_b"), m.get("attn_v_b"), m.get("attn_kv_b")
            if wk is not None and wv is not None and wkv is None:
                # ik rebuilds wkv_b from k_b and v_b (Q8_0 when they are quantized)
                ws, wks = wv.info.shape, wk.info.shape
                quantized = wv.info.type_name not in ("F32", "F16", "BF16")
                q8_row = ws[0] // 32 * 34 if quantized else wv.bytes // max(1, ws[1] * ws[2])
                sizes[il] += q8_row * (ws[1] + wks[1]) * ws[2] * 2
            elif wkv is not None:
                sizes[il] += (wkv.bytes // 2) * ((wk is None) + (wv is None))
    kv = model.kv_layer_bytes(context.ctx, context.type_k, context.type_v, n_seq=context.n_seq,
                              n_ubatch=ub, flash_attn=context.flash_attn, swa_full=True,
                              ik_indexer=context.type_indexer)
    # ik's cache_size() prices NextN blocks like the trunk layer before them (mainline gives them none)
    for il in range(n_layer):
        sizes[il] += kv[il] if il < first_nextn or first_nextn == 0 else kv[first_nextn - 1]
    max_compute = max(compute, default=0.0)
    out_logits = hp.n_vocab * ub * 4
    sizes[n_layer] = float((output_w or embd) + max(0.0, out_logits - max_compute))
    return sizes, max_compute


def assign_layers(sizes: Sequence[float], max_compute: float, n_gpu_layers: int,
                  tensor_split: Sequence[float] | None, n_devices: int,
                  free_mem: Sequence[float] | None = None) -> list[int]:
    """Device index of every slot (-1 = CPU; last entry the output) as ik's byte-weighted walk
    does it, with its float32 running sum (ik ``src/llama.cpp:4343-4470``)."""
    n_layer = len(sizes) - 1
    if n_gpu_layers < 0:
        n_gpu_layers = 999
    dev = [n_devices - 1] * (n_layer + 1)
    i_gpu_start = max(n_layer - n_gpu_layers, 0)
    if n_devices > 1:
        ts = list(tensor_split or [])[:n_devices] + [0.0] * max(0, n_devices - len(tensor_split or []))
        src = (free_mem or [1.0] * n_devices) if all(x == 0 for x in ts) else ts
        cum = np.cumsum(np.asarray(src, dtype=np.float32), dtype=np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):  # all-zero shares: NaN splits, as in ik's float math
            splits = (cum / cum[-1]).astype(np.float32)
        n_last = n_layer + 1 if n_gpu_layers > n_layer else n_layer
        total = max_compute * n_devices + float(sum(sizes[i_gpu_start:n_last]))
        last = i_gpu_start
        loaded = np.float32(0.0)
        for d in range(n_devices):
            loaded = np.float32(loaded + np.float32(max_compute))
            split_size = np.float32(float(splits[d]) * total)
            il = last
            while il < n_last:
                if float(loaded) + sizes[il] <= float(split_size):
                    dev[il] = d
                    loaded = np.float32(float(loaded) + sizes[il])
                    il += 1
                    continue
                if float(loaded) + sizes[il] - float(split_size) < float(split_size) - float(loaded):
                    dev[il] = d
                    loaded = np.float32(float(loaded) + sizes[il])
                    il += 1
                break
            last = il
    elif n_devices == 0:
        return [-1] * (n_layer + 1)
    for il in range(i_gpu_start):
        dev[il] = -1
    if n_gpu_layers <= n_layer:
        dev[n_layer] = -1
    return dev


def encode(model: ModelProfile, p: Placement, default_order: Sequence[str], context: Context,
           rpc_names: dict[str, str] | None = None, rpc: Sequence[str] = ()) -> EngineArgs:
    """ik_llama.cpp flags that reproduce a placement (contiguous layer ranges in device order);
    ``rpc_names`` are the RPC devices' buffer names, ``rpc`` the rpc-server endpoints."""
    counts = layer_counts(p)
    # the devices with layers, and those holding other layers' experts: every one a model device
    used = [n for n, c in zip(p.order, counts) if c > 0 or n in p.foreign_experts]
    n_dev_layers = sum(counts)
    overrides = expert_overrides(model, p, rpc_names)
    if n_dev_layers == 0:
        if p.output != CPU:
            raise InvalidArgumentError(
                "ik_llama.cpp cannot offload only the output head (-ngl 0 drops every override)",
                hint="plan with --engine llama.cpp, or keep the output on the CPU")
        return EngineArgs(0, [], [], overrides, SYNTAX, rpc=list(rpc))
    all_on_gpu = n_dev_layers == model.n_layer
    output_on_gpu = p.output != CPU
    ngl = n_dev_layers + 1 if all_on_gpu and output_on_gpu else n_dev_layers
    with_layers = [n for n, c in zip(p.order, counts) if c > 0]
    natural_output = with_layers[-1] if ngl > model.n_layer else CPU
    if p.output != natural_output:
        overrides.append((r"^output\.", buffer_name(p.output, rpc_names)))
    devices = [buffer_name(n, rpc_names) for n in used]
    default = [buffer_name(n, rpc_names) for n in default_order]
    dev = [] if devices == default else devices
    return IkEngineArgs(ngl, _shares(model, p, used, ngl, context), dev, overrides, SYNTAX, rpc=list(rpc),
                        bench_tensor_split=_shares(model, p, used, ngl, bench_context(model, context)))


def encode_parallel(model: ModelProfile, p: Placement, context: Context, default_order: Sequence[str]) -> EngineArgs:
    """ik flags of a placement under ``-sm graph``: the GPU layers are the last ``-ngl`` (the
    output head with them takes ``-ngl`` past the layer count), split by ``-ts``."""
    n_gpu = parallel_layers(p)
    ngl = n_gpu + 1 if n_gpu == model.n_layer and p.output != CPU else n_gpu
    devices = [] if list(p.order) == list(default_order) else list(p.order)
    shares = list(context.split_shares)
    return IkEngineArgs(ngl, shares, devices, expert_overrides(model, p), SYNTAX, split_mode=context.split_mode,
                        bench_tensor_split=shares)


def _shares(model: ModelProfile, p: Placement, used: Sequence[str], ngl: int, context: Context) -> list[float]:
    """-ts shares (MiB) that put ik's byte-weighted boundaries exactly between the planned layers
    (a device without layers gets just the ``max_compute`` the walk charges it first, so it
    takes none)."""
    if len(used) < 2:
        return []  # one device: the split is moot
    sizes, max_compute = layer_sizes(model, context)
    last = [n for n in used if p.layers_on(n)][-1]
    ts = []
    for name in used:
        share = max_compute + sum(sizes[il] for il in p.layers_on(name))
        if name == last and ngl > model.n_layer:
            share += sizes[model.n_layer]
        ts.append(round(share / _TS_UNIT, 2))
    return ts


def bench_context(model: ModelProfile, context: Context) -> Context:
    """What ik sizes layers with under llama-bench: it passes no context size, so the library
    takes the model's training context (``max_ctx_size == 0``, ik ``src/llama.cpp:4277``)."""
    return replace(context, ctx=model.hparams.n_ctx_train or context.ctx)


@dataclass
class IkEngineArgs(EngineArgs):
    """ik's flags: llama-bench gets its own -ts, computed with the sizes ik uses there."""

    bench_tensor_split: list[float] = field(default_factory=list)

    def args(self, tool: str = "server", **kwargs: Any) -> list[str]:
        if tool == "bench":
            return EngineArgs.args(replace(self, tensor_split=self.bench_tensor_split), tool, **kwargs)
        return super().args(tool, **kwargs)


# fused MoE off: the server's switch (common/common.cpp:1973), llama-bench's 0|1 (llama-bench.cpp:857)
_NO_FUSED_MOE = ("-no-fmoe", "--no-fused-moe")
_FUSED_MOE = ("-fmoe", "--fused-moe")
# the DSA indexer key cache's type (common/common.cpp:1846; default f16, common/common.h:470)
_INDEXER_CACHE_TYPE = ("-ictk", "--indexer-cache-type-k")


def parse_args(argv: Sequence[str], tool: str = "server") -> llama_cpp.ParsedArgs:
    """The placement flags of an ik llama-server / llama-bench command line (same spellings as
    mainline, plus ik's fused-MoE switch). The library's ``-ncmoe``/``-cmoe`` stay a count (see
    :func:`decode`); llama-bench's ``--n-cpu-moe N`` is first-N patterns in argument order."""
    out = llama_cpp.parse_args(argv, ncmoe="patterns" if tool == "bench" else "count", tool=tool)
    if tool == "bench" and out.n_depth is not None:  # examples/llama-bench/llama-bench.cpp:906-915
        raise InvalidArgumentError("ik_llama.cpp's llama-bench has no -d / --n-depth: it stops (\"invalid "
                                   "parameter for argument\")", hint="its -gp D,N decodes N tokens after a "
                                   "D-token prompt (-gp 4096,128 for mainline's -d 4096 -n 128)")
    if out.no_host:  # common/common.cpp and examples/llama-bench/llama-bench.cpp know no such flag
        raise InvalidArgumentError("ik_llama.cpp has no --no-host: it stops (\"invalid argument\")",
                                   hint="drop --no-host (mainline llama.cpp's flag)")
    unpriced = []
    for item in out.unpriced:
        words = shlex.split(item)
        flag, eq, inline = words[0].partition("=")
        if tool == "bench" and flag == "-gp":  # examples/llama-bench/llama-bench.cpp:559-569
            out.gp_tests.append(pair_test(flag, words[1] if len(words) > 1 else ""))
        elif tool != "bench" and words == [flag] and flag in _NO_FUSED_MOE:
            out.fused_moe = False
        elif tool != "bench" and flag in _INDEXER_CACHE_TYPE:
            value = inline if eq else (words[1] if len(words) > 1 else "")
            if value.lower() not in KV_TYPES:
                raise InvalidArgumentError(f"{flag} needs a cache type, not {value!r}",
                                           hint="one of " + ", ".join(sorted(KV_TYPES)))
            out.type_indexer = value.lower()
        elif tool == "bench" and flag in _FUSED_MOE:
            value = inline if eq else (words[1] if len(words) > 1 else "")
            if not re.fullmatch(r"[+-]?\d{1,9}", value):
                raise InvalidArgumentError(f"{flag} needs 0 or 1, not {value!r}", hint=f"{flag} 0 turns fused MoE off")
            out.fused_moe = int(value) != 0  # std::stoi, then a bool
        else:
            unpriced.append(item)
    out.unpriced = unpriced
    return out


def decode(model: ModelProfile, parsed: llama_cpp.ParsedArgs, accelerators: Sequence[str], context: Context,
           free_mem: Sequence[float] | None = None, rpc_names: dict[str, str] | None = None,
           tool: str = "server", n_gpu_layers: int = -1, local: Collection[str] | None = None) -> Placement:
    """The placement ik_llama.cpp makes of these flags (for `omni-place check --engine ik_llama.cpp`;
    ``tool="bench"``: llama-bench, whose layer sizes use the training context)."""
    by_buffer = {buffer_name(a, rpc_names): a for a in accelerators}
    order = model_devices(parsed.split_mode, parsed.devices, accelerators, by_buffer, parsed.main_gpu)
    free = None if free_mem is None else [free_mem[list(accelerators).index(d)] for d in order]
    sizes, max_compute = layer_sizes(model, bench_context(model, context) if tool == "bench" else context)
    ngl = (n_gpu_layers if parsed.n_gpu_layers is None else parsed.n_gpu_layers) if order else 0
    slots = assign_layers(sizes, max_compute, ngl, parsed.tensor_split, len(order), free)
    homes = tuple(CPU if s < 0 else order[s] for s in slots[:-1])
    output = CPU if slots[-1] < 0 else order[slots[-1]]
    parallel = is_parallel(SPLIT_MODES, parsed.split_mode)
    if parallel and order:
        # graph: every GPU layer (the last -ngl) split across the devices, and the output head
        # with them (split when -ngl > n_layer, else whole on a GPU: priced as split;
        # ik:src/llama.cpp:4653-4672)
        homes = tuple(CPU if h == CPU else order[0] for h in homes)
        output = order[0] if ngl != 0 else CPU
    overrides = list(parsed.overrides) if ngl != 0 else []
    if parsed.n_cpu_moe and ngl != 0:
        # under graph the library takes the last N layers with experts, as on one GPU
        # (ik:src/llama-load-tensors.cpp:272)
        overrides += _ncmoe_overrides(model, homes, order[:1] if parallel else order, parsed.n_cpu_moe)
    return llama_cpp.placement_with_overrides(model, order, homes, output, overrides, accelerators, rpc_names, local)


def _ncmoe_overrides(model: ModelProfile, homes: Sequence[str], order: Sequence[str], n: int) -> list[tuple[str, str]]:
    """The patterns ik's library generates for ``-ncmoe n``: the last n layers with experts (one
    GPU), else n shared out over the GPUs by layer count, highest layers of each first."""
    expert_layers = [il for il, lc in enumerate(model.layers) if lc.has_experts and not lc.is_nextn]
    pat = r"blk\.{}\.ffn_(up|down|gate|gate_up)_exps\."
    if len(order) < 2 or n >= model.n_layer:
        return [(pat.format(il), CPU) for il in list(reversed(expert_layers))[:n]]
    if any(h == CPU for h in homes):
        raise InvalidArgumentError("ik_llama.cpp refuses --n-cpu-moe with CPU layers and several GPUs "
                                   "(\"Unexpected device configuration\")", hint="use -ngl 999 or -ot")
    counts = [sum(1 for h in homes if h == d) for d in order]
    n_layer = model.n_layer
    want = [c * n / n_layer for c in counts]
    take = [int(np.floor(w + 0.5)) for w in want]  # std::roundf
    while sum(take) > n:
        i = max((i for i in range(len(take)) if take[i] > 0), key=lambda i: take[i] - 1 - want[i])
        take[i] -= 1
    while sum(take) < n:
        cands = [i for i in range(len(take)) if take[i] < counts[i]]
        if not cands:
            break
        i = min(cands, key=lambda i: take[i] + 1 - want[i])
        take[i] += 1
    out = []
    for il in range(n_layer - 1, -1, -1):
        d = order.index(homes[il])
        if take[d] > 0:
            out.append((pat.format(il), CPU))
            take[d] -= 1
    return out


def bench_record_flags(rec: Mapping[str, Any]) -> BenchRecordFlags:
    """The llama-bench flags of one ``-o json`` record of ik's llama-bench (ik
    ``examples/llama-bench/llama-bench.cpp``, ``test::get_values``): ``tensor_split`` shares joined
    by "/" ("0.00": none), ``override_tensor`` "pat=BUFT,..." or "" (``--n-cpu-moe N`` is already
    there as its first-N patterns), ``flash_attn`` true/false. ik's output names no devices (it has
    no -dev; the order is CUDA_VISIBLE_DEVICES') and leaves no trace of ``--fit``: such a run's
    record reads as the default split, so its placement needs the run's -v log."""
    argv = record_split_flags(rec)
    overrides = record_text(rec, "override_tensor", "")
    if overrides not in ("", "none"):
        argv += ["-ot", overrides]
    fa = "1" if record_switch(rec, "flash_attn", True) else "0"
    if _GP_TEST.fullmatch(record_text(rec, "test", "")):  # -gp D,N: N decodes after an untimed D-token
        # prompt (examples/llama-bench/llama-bench.cpp:1415, 2245), the record's only test
        gp = f"{record_int(rec, 'n_prompt', 0, N32)},{record_int(rec, 'n_gen', 0, N32)}"
        argv += record_test_flags({**rec, "n_prompt": 0, "n_gen": 0}, fa) + ["-gp", gp]
    else:
        argv += record_test_flags(rec, fa)
    if not record_switch(rec, "use_mmap", True):  # -mmp 0: CPU-held weights pinned
        argv += list(SYNTAX["bench"].pin_weights)
    if not record_switch(rec, "fused_moe", True):
        argv += ["-fmoe", "0"]
    return BenchRecordFlags(tuple(argv), record_threads(rec))


# src/llama.cpp:4827 "offloaded %d/%d layers to GPU": min(-ngl, L + 1) of L + 1, the head counted last
_GP_TEST = re.compile(r"tg\d+@pp\d+")  # a -gp test's name in ik's record
_LOG_OFFLOADED = re.compile(r"offloaded (\d+)/\d+ layers to GPU")
_LOG_KV = re.compile(r"llama_kv_cache_init: +(\S+) KV buffer size = +([\d.]+) MiB")  # ik src/llama.cpp


class IkLlama(Dialect):
    """ik_llama.cpp: ``-ngl`` without the output head, byte-weighted ``-ts`` (:func:`encode`)."""

    name = NAME
    # -ngl 0 drops every override, so a head on a GPU needs a layer there too
    traits = EngineTraits(cpu_weights=True, rpc_devices=True, swa_full=SWA_FULL, embedding_on_first=False,
                          output_only_offload=False, pin_flags=pin_flags_of(SYNTAX),
                          moe_offload_by_share=True, fused_moe=True, ik_cpu_kernels=True,
                          compute_margin=IK_COMPUTE_MARGIN,
                          host_compute_margin=IK_HOST_COMPUTE_MARGIN, replay_gpus=1, pinned_overrides=True,
                          pinned_cpu_cache=True, conv_store_reads_input=False,
                          output_by_split=False, bench_cold_first_prompt=True, mla_decode_flops=False,
                          ik_dsa_indexer=True, kq_mask_reuses_rows=False, split_modes=SPLIT_MODES)
    tools = TOOLS
    syntax = SYNTAX
    bench = BenchSpelling(fit=("--fit", "1"), n_cpu_moe="--n-cpu-moe", output=("-o", "json"), ngl_all="999")
    bench_record_keys = frozenset({"override_tensor", "cuda", "mla_attn", "fused_moe", "ser"})

    def encode(self, model: ModelProfile, placement: Placement, cluster: Cluster, context: Context,
               usage: Sequence[DeviceUsage]) -> EngineArgs:
        if context.split_mode != "layer":
            return encode_parallel(model, placement, context, accelerator_names(cluster))
        return encode(model, placement, accelerator_names(cluster), context, rpc_buffer_names(cluster.devices),
                      rpc_servers(cluster.devices))

    def parse_args(self, argv: Sequence[str], tool: str = "server") -> llama_cpp.ParsedArgs:
        return parse_args(argv, tool)

    def model_notes(self, model: ModelProfile) -> list[str]:
        hp = model.hparams
        if model.architecture in UNNAMED_ARCHITECTURES:
            refused = (f"ik_llama.cpp names no {model.architecture} architecture (src/llama-arch.cpp): it refuses "
                       "this file (\"unknown model architecture\")")
            if model.architecture in LATER_NAMED:
                return [f"ik_llama.cpp 8337e4cd3 names no {model.architecture} architecture (src/llama-arch.cpp) and "
                        "refuses this file; a later ik (0a9ff1255) names it, its layout not checked here: these flags "
                        "are priced by llama.cpp's rules; run it with llama.cpp (--engine llama.cpp) to be sure"]
            if model.architecture != "deepseek32":
                return [refused + "; run it with llama.cpp (--engine llama.cpp)"]
            return [refused + " and loads the model from a deepseek2-architecture GGUF (its deepseek2 graph runs "
                    "the DSA indexer, src/graphs/build_deepseek2.cpp:353); these flags are priced on this file: "
                    "plan that one for exact flags"]
        if model.architecture == "minimax-m3" and any(".indexer." in t.name for t in model.tensors):
            return ["ik_llama.cpp runs MiniMax-M3's attention dense and its loader takes no MSA indexer tensors: it "
                    "refuses a file that carries them (\"wrong number of tensors\", src/llama-load-tensors.cpp:5293); "
                    "run it with llama.cpp, or load ik a file without them"]
        if model.architecture in ("deepseek2", "glm-dsa") and hp.is_mla and max(hp.n_head_kv, default=0) == 1:
            # mainline's MLA conversion (one KV head): ik re-derives its heads only for DeepSeek's sizes
            n_head = max(hp.n_head, default=0)
            if (hp.head_dim_k, hp.head_dim_v, hp.n_rot) != (576, 512, 64) or n_head % 4:
                return [f"ik_llama.cpp aborts on this file: it converts mainline's MLA (one KV head) only for "
                        f"key/value heads 576/512, rope 64 and heads in fours, this one has {hp.head_dim_k}/"
                        f"{hp.head_dim_v}, rope {hp.n_rot}, {n_head} heads (src/llama-hparams.cpp:"
                        f"{'1944-1954' if model.architecture == 'glm-dsa' else '1083-1097'}); "
                        "run it with llama.cpp or convert it for ik"]
        return []

    def decode(self, model: ModelProfile, parsed: llama_cpp.ParsedArgs, cluster: Cluster, context: Context,
               tool: str = "server") -> Placement:
        # no -ts: ik splits by free memory less its fit margin
        accel = accelerator_names(cluster)
        free = [max(0.0, float(cluster.by_name(n).memory_bytes) - FIT_MARGIN) for n in accel]
        return decode(model, parsed, accel, context, free_mem=free, rpc_names=rpc_buffer_names(cluster.devices),
                      tool=tool, n_gpu_layers=self.tool_defaults(tool).n_gpu_layers, local=local_gpus(cluster))

    def default_shares(self, cluster: Cluster, order: Sequence[str]) -> list[float]:
        """ik's split without -ts: each device's free memory less its fit margin
        (ik:src/llama.cpp:4323-4351)."""
        return [max(0.0, float(cluster.by_name(n).memory_bytes) - FIT_MARGIN) for n in order]

    def tool_defaults(self, tool: str = "server") -> ToolDefaults:
        # ik's llama-bench offloads -ngl 999 by default (mainline's: 99); flash attention is on by
        # default in both tools since ik #863 (examples/llama-bench/llama-bench.cpp:299, common/common.h:422)
        return replace(BENCH_DEFAULTS, n_gpu_layers=999) if tool == "bench" else SERVER_DEFAULTS

    def flags_of(self, parsed: llama_cpp.ParsedArgs) -> EngineArgs:
        return EngineArgs.from_parsed(parsed, SYNTAX)

    def bench_record_flags(self, record: Mapping[str, Any]) -> BenchRecordFlags:
        return bench_record_flags(record)

    def layer_homes_from_log(self, log: str, n_layer: int, accelerators: Sequence[str],
                             argv: Sequence[str]) -> tuple[list[str], str] | None:
        """ik prints no per-layer lines: each device's KV cache buffer is one equal slice per
        layer, layers contiguous in device order after the CPU's; the output follows the last
        layer's device when ``-ngl`` exceeds the layer count."""
        kv: dict[str, float] = {}
        for dev, mib in _LOG_KV.findall(log):
            if dev in kv:
                break  # the next context's buffers
            kv[dev] = float(mib)
        total = sum(kv.values())
        if not total:
            return None
        homes, output = [CPU] * n_layer, CPU
        gpu = [(d, kv[d]) for d in kv if re.fullmatch(r"CUDA\d+", d)]
        counts = [round(n_layer * v / total) for _, v in gpu]
        il = n_layer - sum(counts)
        for (d, _), n in zip(gpu, counts):
            idx = int(d[4:])
            name = accelerators[idx] if idx < len(accelerators) else d
            for k in range(il, il + n):
                homes[k] = name
            il += n
        # the head is offloaded when -ngl (or --fit, which raises it) exceeds the layer count: the
        # log's "offloaded N/L+1 layers" says which; --fit names the head's device as layer L
        offloaded = _LOG_OFFLOADED.search(log)
        if offloaded:
            head_on_gpu = int(offloaded.group(1)) > n_layer
        else:
            ngl = int(argv[list(argv).index("-ngl") + 1]) if "-ngl" in argv else None
            head_on_gpu = homes[0] != CPU and (ngl is None or ngl > n_layer)
        if head_on_gpu:
            fitted = re.search(rf"Setting layer {n_layer} to device (\d+)", log)
            head = int(fitted.group(1)) if fitted else None
            output = (accelerators[head] if head is not None and head < len(accelerators)
                      else next((h for h in reversed(homes) if h != CPU), CPU))
        return homes, output


DIALECT = IkLlama()
