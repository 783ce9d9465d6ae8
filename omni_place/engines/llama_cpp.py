"""Mainline llama.cpp's placement flags: from a Placement to exact flags, and back.

Layer split (``src/llama-model.cpp:1502-1618``, load_tensors): ``n_layer + 1`` slots
(the repeating layers, NextN blocks included, then the output head); GPU slots are the last
``-ngl``; slot ``j`` of ``act`` goes to the first device whose cumulative ``-ts`` fraction is
strictly greater than ``j/act`` (float32). Exact counts ``L_d``: ``-ngl ΣL_d+1``,
``-ts L_0,...,L_last+1``. Overrides (``-ot``) are ECMAScript ``regex_search`` on full tensor
names, first match wins, and move weights only.

Tools differ in separators: llama-server/llama-cli take ``-ts a,b`` and ``-ot a=X,b=Y``;
llama-bench takes ``-ts a/b`` and ``-ot a=X;b=Y`` (a comma there starts another test).
"""
from __future__ import annotations

import math
import re
import shlex
from collections import Counter
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from ..cost import CPU, Context, DeviceUsage, ExpertHomes, Placement, expert_kind
from ..devices import MAX_THREADS, Cluster
from ..errors import InvalidArgumentError
from ..ggml_types import is_ik_only
from ..model import ModelProfile, Role
from .base import BenchRecordFlags, BenchSpelling, Dialect, EngineTraits, PlacementArgs
from .splitmodes import SplitModeRule, is_parallel
from .common import (INTEGER, N32, EngineArgs, FlagSyntax, OverrideMatcher, ParsedArgs, accelerator_names,
                     check_expert_target, compile_pattern, dev_flag, expert_overrides, flag_groups, flag_int,
                     layer_counts, layer_regex, local_gpus, meta_order, model_devices, override_device, pair_test,
                     parallel_layers, pin_flags_of, range_regex, record_int, record_split_flags, record_switch,
                     record_test_flags, record_text, record_threads, rpc_buffer_names, rpc_servers)

__all__ = ["DIALECT", "FLAG_ALIASES", "LLAMA_ENV", "NAME", "SYNTAX", "TOOLS", "EngineArgs", "LlamaCpp", "ParsedArgs",
           "assign_layers", "decode", "encode", "engine_args", "layer_regex", "llama_env", "parse_args"]

NAME = "llama.cpp"
# Tools and their separators: llama-bench takes lists of test values after commas, so devices
# and shares inside one test go with "/" and override entries with ";" (tools/llama-bench/llama-bench.cpp).
SYNTAX = {
    # --no-op-offload: common/arg.cpp:2947-2948; -nopo: tools/llama-bench/llama-bench.cpp:898;
    # -lm none (no mmap): common/arg.cpp:2691-2707, tools/llama-bench/llama-bench.cpp:778
    "server": FlagSyntax(dev_sep=",", ts_sep=",", ot_sep=",", fa_on="on", fa_off="off", takes_ctx=True,
                         no_op_offload=("--no-op-offload",), pin_weights=("-lm", "none")),
    "cli": FlagSyntax(dev_sep=",", ts_sep=",", ot_sep=",", fa_on="on", fa_off="off", takes_ctx=True,
                      no_op_offload=("--no-op-offload",), pin_weights=("-lm", "none")),
    "bench": FlagSyntax(dev_sep="/", ts_sep="/", ot_sep=";", fa_on="1", fa_off="0", takes_ctx=False, rpc_flag="-rpc",
                        no_op_offload=("-nopo", "1"), pin_weights=("-lm", "none")),
}
TOOLS = tuple(SYNTAX)
# -sm values (common/arg.cpp:2806-2829; llama-bench: tools/llama-bench/llama-bench.cpp:750-772).
SPLIT_MODES = (
    SplitModeRule("none", "src/llama.cpp:289-301"),
    SplitModeRule("layer", "src/llama-model.cpp:1502-1618"),
    # each GPU layer's buffer list starts with the backend's split buffer type; a backend without
    # one throws "device X does not support split buffers" (src/llama-model.cpp:1144-1166). Of
    # the backends omni-place models none has one: CUDA's registry exports no
    # ggml_backend_split_buffer_type (ggml/src/ggml-cuda/ggml-cuda.cu:5785-5806; only SYCL declares
    # one, ggml/include/ggml-sycl.h:28) and RPC's neither (a loopback load refuses it, tests)
    SplitModeRule("row", "src/llama-model.cpp:1139-1166", device_kinds=frozenset(),
                  device_refusal="their backends have no split buffer type, so the engine refuses to load "
                                 "(\"does not support split buffers\", src/llama-model.cpp:1144-1166)"),
    # one meta device over every non-CPU device (src/llama.cpp:160-219; RPC devices included);
    # each weight and KV tensor is split by -ts (default: equal) with per-tensor granularity and
    # a per-layer rotation of the rounding (src/llama-model.cpp:377-880); CPU layers (-ngl) and
    # -ot CPU overrides stay in CPU buffers; flash attention is required
    # (src/llama-context.cpp:3821-3832); --fit does not run (common/fit.cpp:183-185, a warning at
    # :894-896), so the flags are used as given
    SplitModeRule("tensor", "src/llama-model.cpp:377-880", parallel=True,
                  flash_attn="src/llama-context.cpp:3821-3832",
                  archs=frozenset({"grok", "mpt", "plamo2", "minicpm3", "gemma3n", "mamba", "mamba2", "jamba",
                                   "falcon-h1", "olmo2", "olmoe", "deepseek2", "deepseek32", "hy_v4", "dots3note",
                                   "glm-dsa", "bitnet", "t5", "nemotron_h", "nemotron_h_moe", "granitehybrid",
                                   "minimax-01", "minimax-m2", "minimax-m3", "mistral4", "kimi-linear",
                                   "bailingmoe3", "kimi-k3", "glm5-next", "qwen3tts", "qwen4exp"}),
                  archs_source="src/llama-arch.cpp:1142-1179 llm_arch_supports_sm_tensor, checked at "
                               "src/llama-model.cpp:360-362"),
)
# Environment variables llama-server / llama-cli read for each flag (common/arg.cpp, set_env(...)
# at the line given). They are applied before the command line, so a flag given on the command
# line wins over its variable (common/arg.cpp:784-806).
LLAMA_ENV = {
    "-dev": "LLAMA_ARG_DEVICE",  # arg.cpp:2744
    "-ngl": "LLAMA_ARG_N_GPU_LAYERS",  # :2805
    "-ts": "LLAMA_ARG_TENSOR_SPLIT",  # :2856
    "-ot": "LLAMA_ARG_OVERRIDE_TENSOR",  # :2758
    "-c": "LLAMA_ARG_CTX_SIZE",  # :1648
    "-ub": "LLAMA_ARG_UBATCH",  # :1681
    "-b": "LLAMA_ARG_BATCH",  # :1674
    "-ctk": "LLAMA_ARG_CACHE_TYPE_K",  # :2448
    "-ctv": "LLAMA_ARG_CACHE_TYPE_V",  # :2461
    "-fa": "LLAMA_ARG_FLASH_ATTN",  # :1768
    "-sm": "LLAMA_ARG_SPLIT_MODE",  # :2829
    "-mg": "LLAMA_ARG_MAIN_GPU",  # :2866
    "-ncmoe": "LLAMA_ARG_N_CPU_MOE",  # :2775
    "--rpc": "LLAMA_ARG_RPC",  # :2689
    "-lm": "LLAMA_ARG_LOAD_MODE",  # :2707
}
_LOG_LAYER = re.compile(r"load_tensors: layer +(\d+) assigned to device (\S+?),")  # src/llama-model.cpp


def llama_env(args: Sequence[str]) -> dict[str, str]:
    """The ``LLAMA_ARG_*`` variables equivalent to llama-server flags (``-flag value`` pairs)."""
    out = {}
    for group in flag_groups(args):
        flag = group[0]
        if flag not in LLAMA_ENV or len(group) != 2:
            raise InvalidArgumentError(f"flag {flag} has no LLAMA_ARG_ environment variable",
                                       hint="use --format args")
        out[LLAMA_ENV[flag]] = group[1]
    return out


def engine_args(n_gpu_layers: int, tensor_split: Sequence[float], devices: Sequence[str],
                overrides: Sequence[tuple[str, str]], rpc: Sequence[str] = ()) -> EngineArgs:
    return EngineArgs(n_gpu_layers, list(tensor_split), list(devices), list(overrides), SYNTAX, rpc=list(rpc))


def encode(model: ModelProfile, p: Placement, default_order: Sequence[str], rpc: Sequence[str] = (),
           rpc_names: dict[str, str] | None = None) -> EngineArgs:
    """Exact llama.cpp flags for a placement (contiguous layer ranges in device order); ``rpc``
    lists the cluster's rpc-server endpoints (see :func:`~.common.rpc_servers`) and ``rpc_names``
    their devices' buffer-type names, which ``-ot`` takes for RPC targets."""
    counts = layer_counts(p)
    n_dev_layers = sum(counts)
    overrides = expert_overrides(model, p, rpc_names)
    used = [n for n, c in zip(p.order, counts) if c > 0]
    output_natural = used[-1] if used else None
    if n_dev_layers == 0:
        if p.output == CPU:
            return engine_args(0, [], dev_flag(p.order, default_order), overrides, rpc)
        # -ngl 1: only the output slot is offloaded, to the last device with a share
        ts = [0] * len(p.order)
        ts[p.order.index(p.output)] = 1
        return engine_args(1, ts, dev_flag(p.order, default_order), overrides, rpc)
    ts = list(counts)
    last = max(i for i, c in enumerate(counts) if c > 0)
    if p.output_after_layers:
        ts[p.order.index(p.output)] = 1  # the output slot alone: no override, so it may still pipeline
    else:
        ts[last] += 1
        if p.output != output_natural:
            overrides.append((r"^output\.", (rpc_names or {}).get(p.output, p.output)))
    return engine_args(n_dev_layers + 1, ts, dev_flag(p.order, default_order), overrides, rpc)


def encode_parallel(model: ModelProfile, p: Placement, context: Context, default_order: Sequence[str],
                    rpc: Sequence[str] = ()) -> EngineArgs:
    """Flags of a placement under a parallel split mode (``context.split_mode``): the GPU layers
    are the last ``-ngl`` slots (the output slot first), split by ``-ts`` (``context.split_shares``)."""
    n_gpu = parallel_layers(p)
    ea = engine_args(n_gpu + (p.output != CPU), context.split_shares, dev_flag(p.order, default_order),
                     expert_overrides(model, p), rpc)
    ea.split_mode = context.split_mode
    return ea


# --- the engine's own rules, for `check` ------------------------------------------------------

def assign_layers(n_slots: int, n_gpu_layers: int, tensor_split: Sequence[float] | None,
                  n_devices: int, free_mem: Sequence[float] | None = None) -> list[int]:
    """Device index of every slot (-1 = CPU), last entry = output, exactly as load_tensors does
    it in float32 (``src/llama-model.cpp:1502-1618``)."""
    n_layer = n_slots - 1
    if n_gpu_layers < 0:
        n_gpu_layers = n_layer + 1
    ts = list(tensor_split or [])[:n_devices] + [0.0] * max(0, n_devices - len(tensor_split or []))
    all_zero = all(x == 0 for x in ts)
    src = free_mem if all_zero else ts
    if all_zero and free_mem is None:
        src = [1.0] * n_devices
    splits = np.cumsum(np.asarray(src, dtype=np.float32), dtype=np.float32)
    if n_devices:
        splits = (splits / splits[-1]).astype(np.float32)
    i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0)
    act = 0 if n_devices == 0 else min(n_gpu_layers, n_layer + 1)
    out = []
    for il in range(n_layer + 1):
        if il < i_gpu_start or il - i_gpu_start >= act:
            out.append(-1)
            continue
        frac = np.float32(np.float32(il - i_gpu_start) / np.float32(act))
        out.append(int(np.searchsorted(splits, frac, side="right")))
    return out


FLAG_ALIASES = {
    "-ngl": "ngl", "--gpu-layers": "ngl", "--n-gpu-layers": "ngl",
    "-ts": "ts", "--tensor-split": "ts",
    "-dev": "dev", "--device": "dev",
    "-ot": "ot", "--override-tensor": "ot",
    "-cmoe": "cmoe", "--cpu-moe": "cmoe",
    "-ncmoe": "ncmoe", "--n-cpu-moe": "ncmoe",
    "-c": "ctx", "--ctx-size": "ctx",
    "-b": "batch", "--batch-size": "batch",
    "-ub": "ub", "--ubatch-size": "ub",
    "-ctk": "ctk", "--cache-type-k": "ctk",
    "-ctv": "ctv", "--cache-type-v": "ctv",
    "-fa": "fa", "--flash-attn": "fa",
    "-sm": "sm", "--split-mode": "sm",
    "-mg": "mg", "--main-gpu": "mg",
    "--rpc": "rpc", "-rpc": "rpc",
    # loading without mmap pins CPU-held weights: mainline's -lm (common/arg.cpp:2691,
    # tools/llama-bench/llama-bench.cpp:778), ik's --no-mmap and llama-bench -mmp 0
    "-lm": "lm", "--load-mode": "lm", "--no-mmap": "nommap", "-mmp": "mmp", "--mmap": "mmp",
    "--no-op-offload": "nopo_flag", "--op-offload": "opo_flag",
    "-t": "threads", "--threads": "threads",
    "--no-host": "nohost",  # a switch in the server (common/arg.cpp:2430), 0|1 in llama-bench
}
# llama-bench's own spellings (tools/llama-bench/llama-bench.cpp); it has no -c: a test's
# context is -p + -n + -d. In llama-server/llama-cli -p and -n mean the prompt and n_predict.
BENCH_ALIASES = {
    "-p": "n_prompt", "--n-prompt": "n_prompt", "-n": "n_gen", "--n-gen": "n_gen",
    "-d": "n_depth", "--n-depth": "n_depth", "-pg": "pg",
    "-nopo": "nopo", "--no-op-offload": "nopo",  # a 0|1 value in llama-bench, a switch in the server
    "--no-host": "nohost_bench",
}
BENCH_ONLY = frozenset({"n_prompt", "n_gen", "n_depth"})  # the test sizes
_NO_VALUE = {"cmoe", "nommap", "nopo_flag", "opo_flag", "nohost"}
# load modes (include/llama.h LLAMA_LOAD_MODE_*) and whether they map the file
# (src/llama-model-loader.cpp:559: mmap for auto, mmap and mmap+mlock)
LOAD_MODES = {"auto": True, "none": False, "mmap": True, "mlock": False, "mmap+mlock": True, "dio": False}
_TRUTHY, _FALSEY, _AUTO = {"on", "enabled", "true", "1"}, {"off", "disabled", "false", "0"}, {"auto", "-1"}
_FLT_MAX = float(np.finfo(np.float32).max)
MAX_SPLIT = 16  # llama_max_devices() of CUDA builds: -ts takes no more shares
# the one CPU pattern of -ncmoe N (common/arg.cpp, "--n-cpu-moe": one llm_ffn_exps_block_regex(i)
# per i < N, each "blk\.<i>\.ffn_(up|down|gate|gate_up)_(ch|)exps"): the same tensors as one
# pattern over the range 0..N-1, O(log N) long, so a huge N builds no pattern per layer
_NCMOE = r"blk\.({})\.ffn_(up|down|gate|gate_up)_(ch|)exps"


def parse_args(argv: Sequence[str], *, ncmoe: str = "patterns", tool: str = "server") -> ParsedArgs:
    """Parse the placement flags of a llama-server / llama-cli / llama-bench (``tool="bench"``)
    command line. Values the engine would refuse are refused (InvalidArgumentError); flags that
    omni-place does not price are listed in ``unpriced`` (a flag and the value after it) and a
    stray word, which the engine refuses, is refused; a bench list of values is refused.

    ``ncmoe="patterns"`` turns ``-ncmoe N`` into the CPU pattern of the first N layers in
    argument order (mainline, and ik's llama-bench); ``"count"`` keeps it as a count (ik's library)."""
    out = ParsedArgs()
    toks = list(argv)
    if len(toks) == 1 and " " in toks[0]:
        try:
            toks = shlex.split(toks[0])
        except ValueError as err:  # an unbalanced quote
            raise InvalidArgumentError(f"cannot split the command line {toks[0]!r}: {err}",
                                       hint="balance the quotes, or pass each argument separately") from None
    aliases = {**FLAG_ALIASES, **BENCH_ALIASES} if tool == "bench" else FLAG_ALIASES
    i = 0
    while i < len(toks):
        tok = toks[i]
        flag, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        key = aliases.get(flag)
        if key is None:
            i = _skip_unpriced(toks, i, out)
            continue
        if key in ("nommap", "nopo_flag", "opo_flag", "nohost"):
            if key == "nommap":
                out.pinned_weights = True
            elif key == "nohost":
                out.no_host = True
            else:
                out.op_offload = key == "opo_flag"
            i += 1
            continue
        if key in _NO_VALUE:
            if ncmoe == "count":
                out.n_cpu_moe = 999
            else:
                out.overrides.append((r"\.ffn_(up|down|gate|gate_up)_(ch|)exps", "CPU"))
            i += 1
            continue
        if eq:
            val = inline
        else:
            if i + 1 >= len(toks):
                raise InvalidArgumentError(f"{flag} needs a value")
            val = toks[i + 1]
            i += 1
        i += 1
        _apply(out, key, flag, val, ncmoe)
    return out


def _skip_unpriced(toks: Sequence[str], i: int, out: ParsedArgs) -> int:
    """Record a flag omni-place does not price (with the value that follows it, if any) and
    return the index after it; a word that is no flag is refused, as the engine refuses it."""
    tok = toks[i]
    if not tok.startswith("-") or tok == "-":
        raise InvalidArgumentError(f"{tok!r} is neither a flag nor a flag's value: the engine refuses it "
                                   "(\"invalid argument\")", hint="check the command line for a stray word or a "
                                                                  "missing flag")
    taken = 1
    nxt = toks[i + 1] if i + 1 < len(toks) else None
    if "=" not in tok and nxt is not None and (not nxt.startswith("-") or INTEGER.fullmatch(nxt)):
        taken = 2
    out.unpriced.append(shlex.join(toks[i:i + taken]))
    return i + taken


def _split_shares(flag: str, val: str) -> list[float]:
    """``-ts`` shares: finite, non-negative, at most MAX_SPLIT (std::stof would take nan/inf)."""
    shares = []
    for x in re.split(r"[,/;]", val):
        if x == "":
            continue
        try:
            v = float(x) if re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", x.strip()) else None
        except OverflowError:
            v = None
        if v is None or not math.isfinite(v):
            raise InvalidArgumentError(f"{flag} {val!r} is not a list of finite numbers", hint="e.g. -ts 3,1")
        if v < 0:
            raise InvalidArgumentError(f"{flag} {val!r} has a negative share", hint="e.g. -ts 3,1")
        if v > _FLT_MAX:  # std::stof throws out_of_range: the engine refuses it
            raise InvalidArgumentError(f"{flag} share {x.strip()[:40]!r} is beyond a 32-bit float: the engine "
                                       "refuses it", hint="e.g. -ts 3,1")
        shares.append(v)
    if len(shares) > MAX_SPLIT:
        raise InvalidArgumentError(f"{flag} has {len(shares)} shares; the engine takes at most {MAX_SPLIT}",
                                   hint="one share per device")
    with np.errstate(over="ignore"):
        running = np.cumsum(np.asarray(shares, dtype=np.float32), dtype=np.float32)
    if not np.isfinite(running).all():
        # the engine's float32 running sum overflows and every split becomes NaN: no placement to price
        raise InvalidArgumentError(f"{flag} shares sum beyond a 32-bit float: the engine's split is undefined",
                                   hint="e.g. -ts 3,1")
    return shares


def _choice(flag: str, val: str) -> bool | None:
    """``-fa``: on / off / auto (None) in any of the engine's spellings (common/arg.cpp is_truthy...)."""
    v = val.lower()
    if v in _TRUTHY:
        return True
    if v in _FALSEY:
        return False
    if v in _AUTO:
        return None
    raise InvalidArgumentError(f"{flag} {val!r} is not on, off or auto", hint=f"e.g. {flag} on")


def _apply(out: ParsedArgs, key: str, flag: str, val: str, ncmoe: str) -> None:
    if key == "ngl":
        out.n_gpu_layers = -1 if val in ("all", "auto") else flag_int(flag, val)
    elif key == "ts":
        out.tensor_split = _split_shares(flag, val)
    elif key == "dev":
        out.devices = [] if val == "none" else [d for d in re.split(r"[,/]", val) if d]
    elif key == "ot":
        for item in re.split(r"[,;]", val):
            if not item:
                continue
            pat, eq, buft = item.rpartition("=")
            if not eq or not pat:
                raise InvalidArgumentError(f"{flag} item {item!r} is not <regex>=<buffer type>",
                                           hint=r'e.g. -ot "blk\.(1|2)\.ffn_.*_exps=CPU"')
            compile_pattern(pat)
            out.overrides.append((pat, buft))
    elif key == "ncmoe":
        n = flag_int(flag, val, lo=0)
        if ncmoe == "count":
            out.n_cpu_moe = n
        elif n:
            out.overrides.append((_NCMOE.format("|".join(range_regex(0, n - 1))), "CPU"))
    elif key == "ctx":
        out.ctx = flag_int("-c", val, lo=0)
    elif key == "batch":
        out.n_batch = flag_int("-b", val, lo=1)
    elif key == "ub":
        out.n_ubatch = flag_int("-ub", val, lo=0)
    elif key in BENCH_ONLY:
        setattr(out, key, flag_int(flag, val, lo=0))
    elif key == "pg":
        out.pg_tests.append(pair_test(flag, val))
    elif key == "ctk":
        out.type_k = val.lower()
    elif key == "ctv":
        out.type_v = val.lower()
    elif key == "fa":
        out.flash_attn = _choice(flag, val)
    elif key == "sm":
        out.split_mode = val.lower()
    elif key == "mg":
        out.main_gpu = flag_int(flag, val)
    elif key == "rpc":
        out.rpc = [e for e in val.split(",") if e]
    elif key == "lm":
        if val not in LOAD_MODES:
            raise InvalidArgumentError(f"{flag} {val!r} is not a load mode", hint="one of " + ", ".join(LOAD_MODES))
        out.pinned_weights = not LOAD_MODES[val]
    elif key == "mmp":
        out.pinned_weights = not flag_int(flag, val, lo=0, hi=1)
    elif key == "nopo":
        out.op_offload = not flag_int(flag, val, lo=0, hi=1)
    elif key == "nohost_bench":
        out.no_host = bool(flag_int(flag, val, lo=0, hi=1))
    elif key == "threads":  # 0 or less: the engine's default, the physical cores (common/common.cpp)
        n = flag_int(flag, val, hi=MAX_THREADS)
        out.threads = n if n > 0 else None


def decode(model: ModelProfile, parsed: ParsedArgs, accelerators: Sequence[str],
           free_mem: Sequence[float] | None = None, rpc_names: dict[str, str] | None = None,
           n_gpu_layers: int = -1, local: Collection[str] | None = None) -> Placement:
    """The placement llama.cpp makes of these flags (for `omni-place check`); ``free_mem`` is
    per accelerator, ``n_gpu_layers`` the tool's default ``-ngl``, ``local`` the local GPUs
    (:func:`~.common.check_expert_target`)."""
    order = model_devices(parsed.split_mode, parsed.devices, accelerators, main_gpu=parsed.main_gpu)
    free = None if free_mem is None else [free_mem[list(accelerators).index(d)] for d in order]
    ngl = n_gpu_layers if parsed.n_gpu_layers is None else parsed.n_gpu_layers
    if is_parallel(SPLIT_MODES, parsed.split_mode):
        # one meta device wraps the order (src/llama.cpp:160-219), so the layer split runs over it
        # alone: the last -ngl slots are split across every device, the rest stay on the CPU
        meta = assign_layers(model.n_layer + 1, ngl, None, 1 if order else 0)
        homes = tuple(CPU if s < 0 else order[0] for s in meta[:-1])
        return placement_with_overrides(model, order, homes, CPU if meta[-1] < 0 else order[0], parsed.overrides,
                                        accelerators, rpc_names, local)
    slots = assign_layers(model.n_layer + 1, ngl, parsed.tensor_split, len(order), free)
    homes = tuple(CPU if s < 0 else order[s] for s in slots[:-1])
    output = CPU if slots[-1] < 0 else order[slots[-1]]
    return placement_with_overrides(model, order, homes, output, parsed.overrides, accelerators, rpc_names, local)


def placement_with_overrides(model: ModelProfile, order: Sequence[str], homes: Sequence[str], output: str,
                             overrides: Sequence[tuple[str, str]], accelerators: Sequence[str],
                             rpc_names: dict[str, str] | None = None,
                             local: Collection[str] | None = None) -> Placement:
    """Apply ``-ot`` entries (regex_search, first match wins) to a layer assignment: each
    layer's expert kinds sent to the CPU or to another local GPU, and an output head moved
    elsewhere. Both forks match the same way; targets are buffer types
    (:func:`~.common.override_device`); experts across RPC devices are refused
    (:func:`~.common.check_expert_target`)."""
    matcher = OverrideMatcher(overrides)
    targets = [(override_device(b, rpc_names), p, b) for p, b in overrides]

    def first_match(name: str) -> tuple[str, str, str] | None:
        """(device, pattern, buffer type) of the first override matching a tensor, as the loader
        applies them (regex_search, first match wins)."""
        i = matcher.first(name)
        return None if i is None else targets[i]

    for dev, _, b in targets:
        if dev != CPU and dev not in accelerators:
            raise InvalidArgumentError(f"-ot buffer type {b!r} names no device of the cluster")
    expert_homes: list[ExpertHomes] = []
    extra: list[tuple[str, str]] = []
    for il, home in enumerate(homes):
        away: dict[str, str] = {}
        for t in model.layers[il].expert_tensors:
            hit = first_match(t.name)
            if hit is None or hit[0] == home:
                continue
            dev, p, b = hit
            check_expert_target(t.name, home, dev, f"{p}={b}", order, local=local, rpc=rpc_names)
            kind = expert_kind(t)
            if away.setdefault(kind, dev) != dev:
                raise InvalidArgumentError(f"-ot sends layer {il}'s {kind} experts to both {away[kind]} and {dev}",
                                           hint=r"anchor each pattern to whole tensor kinds, e.g. blk\.3\.ffn_up_exps")
        expert_homes.append(frozenset(away.items()))
    # Non-expert tensors matched by an override are not modelled: say so instead of mispricing.
    for t in model.tensors:
        if t.role is Role.ROUTED_EXPERT:
            continue
        hit = first_match(t.name)
        if hit is not None:
            dev, p, b = hit
            if t.name.startswith("output") and (p, b) not in extra:
                output = dev
                extra.append((p, b))
                continue
            home = homes[t.layer] if t.layer is not None else (CPU if t.role is Role.EMBEDDING else output)
            if dev != home:
                raise InvalidArgumentError(
                    f"-ot {p}={b} moves non-expert tensor {t.name}; omni-place prices only routed-expert "
                    "and output overrides", hint="anchor the pattern to expert tensors (…_exps)")
    return Placement(tuple(order), tuple(homes), tuple(expert_homes), output, tuple(extra))


def bench_record_flags(rec: Mapping[str, Any]) -> BenchRecordFlags:
    """The llama-bench flags of one ``-o json``/``jsonl`` record (tools/llama-bench/llama-bench.cpp,
    ``test::get_values``): ``devices`` "auto" or ``CUDA0/CUDA1``, ``tensor_split`` "%.2f" shares
    joined by "/" ("0.00": none), ``tensor_buft_overrides`` "pat=BUFT;..." or "none", ``n_cpu_moe``
    (its patterns go after the -ot ones, as llama-bench appends them), ``flash_attn`` -1/0/1.
    A record with ``fit_target`` or ``fit_min_ctx`` was placed by the fitter (-fitt/-fitc)."""
    argv = record_split_flags(rec)
    devices = record_text(rec, "devices", "auto")
    if devices != "auto":
        argv += ["-dev", devices]
    overrides = record_text(rec, "tensor_buft_overrides", "none")
    if overrides not in ("none", ""):
        argv += ["-ot", overrides]
    n_cpu_moe = record_int(rec, "n_cpu_moe", 0, N32, 0)
    if n_cpu_moe:
        argv += ["-ncmoe", str(n_cpu_moe)]
    fa = rec.get("flash_attn", -1)  # -1/0/1; older builds print true/false
    fa_text = ("1" if fa else "0") if isinstance(fa, bool) else str(record_int(rec, "flash_attn", -1, 1))
    argv += record_test_flags(rec, fa_text) + ["-d", str(record_int(rec, "n_depth", 0, N32, 0))]
    if record_switch(rec, "no_op_offload", False):
        argv += list(SYNTAX["bench"].no_op_offload)
    load_mode = record_text(rec, "load_mode", "auto")  # -lm: none/mlock load without mmap (pinned)
    if load_mode != "auto":
        argv += ["-lm", load_mode]
    if record_switch(rec, "no_host", False):
        argv += ["--no-host", "1"]
    fit = [f"{flag} {n}" for flag, key in (("-fitt", "fit_target"), ("-fitc", "fit_min_ctx"))
           if (n := record_int(rec, key, 0, 1 << 62, 0))]
    return BenchRecordFlags(tuple(argv), record_threads(rec), fitted=" ".join(fit) or None)


class LlamaCpp(Dialect):
    """Mainline llama.cpp: exact per-device layer counts through ``-ngl``/``-ts``."""

    name = NAME
    traits = EngineTraits(cpu_weights=True, rpc_devices=True, swa_full=False, embedding_on_first=False,
                          libllama=True, pin_flags=pin_flags_of(SYNTAX), bench_cuda_graph_warmup=True,
                          op_offload_switch=all(s.no_op_offload for s in SYNTAX.values()), split_modes=SPLIT_MODES)
    tools = TOOLS
    syntax = SYNTAX
    bench = BenchSpelling(fit=("-fitt", "1024"), n_cpu_moe="-ncmoe", output=("-o", "jsonl"), ngl_all="99",
                          no_op_offload=SYNTAX["bench"].no_op_offload)
    env_note = "llama-server / llama-cli read these; a flag on the command line wins over its variable"
    bench_record_keys = frozenset({"tensor_buft_overrides", "n_cpu_moe", "devices", "backends", "no_op_offload"})

    def encode(self, model: ModelProfile, placement: Placement, cluster: Cluster, context: Context,
               usage: Sequence[DeviceUsage]) -> EngineArgs:
        if context.split_mode != "layer":
            return encode_parallel(model, placement, context, meta_order(cluster), rpc_servers(cluster.devices))
        return encode(model, placement, accelerator_names(cluster), rpc_servers(cluster.devices),
                      rpc_buffer_names(cluster.devices))

    def env(self, placement_args: PlacementArgs, args: Sequence[str]) -> dict[str, str]:
        return llama_env(args)

    def model_notes(self, model: ModelProfile) -> list[str]:
        ik_types = Counter(t.info.type_name for t in model.tensors if is_ik_only(t.info.ggml_type))
        if not ik_types:
            return []
        kinds = ", ".join(f"{name} x {n}" for name, n in ik_types.most_common())
        return [f"llama.cpp cannot load this file: {sum(ik_types.values())} tensors are of ik_llama.cpp's own types "
                f"({kinds}), which its ggml has not (ggml/src/gguf.cpp:730: 'invalid ggml type'); plan with --engine "
                "ik_llama.cpp, or use a mainline quant of the model"]

    def parse_args(self, argv: Sequence[str], tool: str = "server") -> ParsedArgs:
        return parse_args(argv, tool=tool)

    def decode(self, model: ModelProfile, parsed: ParsedArgs, cluster: Cluster, context: Context,
               tool: str = "server") -> Placement:
        # no -ts: the engine splits by free memory
        accel = accelerator_names(cluster)
        if parsed.devices is None and is_parallel(SPLIT_MODES, parsed.split_mode):
            accel = meta_order(cluster)
        free = [float(cluster.by_name(n).memory_bytes) for n in accel]
        return decode(model, parsed, accel, free_mem=free, rpc_names=rpc_buffer_names(cluster.devices),
                      n_gpu_layers=self.tool_defaults(tool).n_gpu_layers, local=local_gpus(cluster))

    def flags_of(self, parsed: ParsedArgs) -> EngineArgs:
        return EngineArgs.from_parsed(parsed, SYNTAX)

    def bench_record_flags(self, record: Mapping[str, Any]) -> BenchRecordFlags:
        return bench_record_flags(record)

    def layer_homes_from_log(self, log: str, n_layer: int, accelerators: Sequence[str],
                             argv: Sequence[str]) -> tuple[list[str], str] | None:
        """``load_tensors: layer N assigned to device D`` lines; slot ``n_layer`` is the output."""
        hits = _LOG_LAYER.findall(log)
        if not hits:
            return None
        homes, output = [CPU] * n_layer, CPU
        for il_s, dev in hits:
            il = int(il_s)
            name = CPU if dev.upper().startswith("CPU") else dev
            if il < n_layer:
                homes[il] = name
            else:
                output = name
        return homes, output


DIALECT = LlamaCpp()
