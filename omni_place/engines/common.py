"""What the llama.cpp-family dialects share: the placement part of a command line (with each
tool's separators from the dialect's :class:`FlagSyntax` table), the ``-ot`` expert patterns,
each tool's defaults (:class:`ToolDefaults`) and the time-bounded matching of users' ``-ot``
patterns (:class:`OverrideMatcher`).

Both forks match ``-ot`` patterns with ECMAScript ``std::regex`` ``regex_search`` on full tensor
names, first match wins (``src/llama-model-loader.cpp:1233-1259``; ik
``src/llama-load-tensors.cpp:262-267, 459-469``), so one pattern builder serves both.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import regex

from ..cost import CPU, EXPERT_KINDS, Placement
from ..devices import MAX_THREADS, Cluster, Device
from ..errors import ClusterError, InvalidArgumentError
from ..model import ModelProfile
from ..validate import integer, show, text

# Which routed-expert kinds an -ot pattern moves, for each expert option of the optimizer
# (other sets of kinds: :func:`kind_regex`).
KIND_REGEX = {
    frozenset(EXPERT_KINDS): r"ffn_(up|down|gate|gate_up)_(ch|)exps",
    frozenset({"down"}): r"ffn_down_(ch|)exps",
    frozenset({"gate", "up", "gate_up"}): r"ffn_(up|gate|gate_up)_(ch|)exps",
}
# The seconds all -ot patterns of one command line may spend on a model's tensor names. A
# user's pattern can backtrack catastrophically (``(a|aa)+$``); std::regex would hang the
# engine too, so such a pattern is refused by name instead of hanging omni-place.
OT_MATCH_SECONDS = 2.0
MAX_PATTERN_CHARS = 4096


N32 = (1 << 31) - 1  # the largest int32: llama-bench record fields are C ints
_INT32 = (-N32 - 1, N32)  # std::stoi's range: the engine refuses anything beyond it
INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take "١٢" and "1_0"


def flag_int(flag: str, val: str, lo: int = _INT32[0], hi: int = _INT32[1]) -> int:
    """An integer value as std::stoi reads it whole; a clear error for anything else."""
    if not INTEGER.fullmatch(val.strip()):
        raise InvalidArgumentError(f"{flag} {val!r} is not an integer",
                                   hint="omni-place check evaluates one configuration: give single values")
    n = int(val)
    if not _INT32[0] <= n <= _INT32[1]:
        raise InvalidArgumentError(f"{flag} {val} is beyond a 32-bit integer: the engine refuses it",
                                   hint=f"give {flag} a value in {lo}..{hi}")
    if not lo <= n <= hi:
        what = _RANGE_HINTS.get(flag)
        raise InvalidArgumentError(f"{flag} {n} is out of range ({lo}..{hi})" + (f": {what}" if what else ""),
                                   hint=f"give {flag} a value in {lo}..{hi}")
    return n


_RANGE_HINTS = {
    "-c": "the context length (0 = the model's training context)",
    "-b": "the logical batch, at least 1 token", "-ub": "the physical batch (0 = the logical batch -b)",
}


def pair_test(flag: str, val: str) -> tuple[int, int]:
    """llama-bench's ``-pg`` / ik's ``-gp`` value ``A,B``: exactly two counts (the engine stops with
    "invalid parameter" on any other number of them)."""
    parts = val.split(",")
    if len(parts) != 2:
        raise InvalidArgumentError(f"{flag} {val!r} is not two counts A,B: llama-bench stops (\"invalid parameter\")",
                                   hint=f"e.g. {flag} 4096,128")
    a, b = (flag_int(flag, x, lo=0) for x in parts)
    return a, b


@dataclass
class ParsedArgs:
    """What a user's llama.cpp command line says about placement and context. ``None`` is
    "not given": the tool's default applies (:class:`ToolDefaults`, :func:`tool_context`)."""

    n_gpu_layers: int | None = None
    tensor_split: list[float] | None = None
    devices: list[str] | None = None
    overrides: list[tuple[str, str]] = field(default_factory=list)
    ctx: int | None = None  # -c; 0 = the model's training context
    n_batch: int | None = None  # -b
    n_ubatch: int | None = None  # -ub; 0 = n_batch
    type_k: str = "f16"
    type_v: str = "f16"
    type_indexer: str = "f16"  # ik's -ictk: its DSA indexer key cache (Context.ik_dsa_indexer)
    flash_attn: bool | None = None  # None: the tool's default (auto counts as on)
    split_mode: str = "layer"
    main_gpu: int = 0  # -mg: the one device of -sm none
    rpc: list[str] = field(default_factory=list)
    n_cpu_moe: int = 0  # ik_llama.cpp's library -ncmoe/-cmoe (a count; see ik_llama.decode)
    n_prompt: int | None = None  # llama-bench -p
    n_gen: int | None = None  # llama-bench -n
    n_depth: int | None = None  # llama-bench -d
    # llama-bench's (prompt, gen) pair tests: -pg P,N (both engines: P prompt tokens then N decodes,
    # timed together) and ik's -gp D,N (N decodes after an untimed D-token prompt)
    pg_tests: list[tuple[int, int]] = field(default_factory=list)
    gp_tests: list[tuple[int, int]] = field(default_factory=list)
    # CPU-held weights loaded without mmap land in the first GPU's pinned host buffer (CUDA_Host)
    # and op offload copies them at the pinned rate (src/llama-model-loader.cpp:1269-1277)
    pinned_weights: bool = False
    op_offload: bool = True  # False: --no-op-offload / llama-bench -nopo 1
    fused_moe: bool | None = None  # ik -no-fmoe / llama-bench -fmoe 0|1; None: the engine's default
    threads: int | None = None  # -t; None: the cluster's CPU threads
    no_host: bool = False  # --no-host: the CPU's extra buffer types before the host buffer (not priced)
    unpriced: list[str] = field(default_factory=list)  # flags the engine takes that are not priced


#: What ``--no-host`` changes that the cost model does not price (``check`` says it; ``calibrate``
#: leaves such records out rather than fit them as if the host buffer were there).
NO_HOST_NOTE = ("--no-host: the CPU's extra buffer types (CPU_REPACK for Q4_0, Q4_K, IQ4_NL and MXFP4 on x86; "
                "AMX in native builds on AMX CPUs) take CPU-held weights before the host buffer "
                "(src/llama-model.cpp:1099-1125), and op offload cannot copy them: the CPU computes their prompt; "
                "not priced (the prompt is priced as if they were offloaded)")


class OverrideMatcher:
    """``-ot`` entries compiled once and searched in order (first match wins), each search
    bounded by what is left of :data:`OT_MATCH_SECONDS` (the ``regex`` package's timeout; the
    ``re`` module has none). ``targets`` maps each entry to what the caller wants back."""

    def __init__(self, overrides: Sequence[tuple[str, str]], seconds: float = OT_MATCH_SECONDS) -> None:
        self.entries = [(compile_pattern(p), p, b) for p, b in overrides]
        self._deadline = time.monotonic() + seconds
        self._seconds = seconds
        # one search that tells whether any entry matches (most tensor names match none): the
        # alternation of the patterns, when none has a group syntax or backreference that
        # alternation would change (ik's --n-cpu-moe is one pattern per layer)
        self._any: regex.Pattern[str] | None = None
        plain = [p for _, p, _ in self.entries if "(?" not in p and not _BACKREF.search(p)]
        if len(self.entries) > 4 and len(plain) == len(self.entries):
            try:
                self._any = regex.compile("|".join(f"(?:{p})" for p in plain))
            except (regex.error, RecursionError, OverflowError):
                self._any = None

    def first(self, name: str) -> int | None:
        """Index of the first entry whose pattern matches somewhere in ``name``, or None."""
        if self._any is not None and not self._search(self._any, name, self._any.pattern):
            return None
        for i, (rx, pattern, _) in enumerate(self.entries):
            if self._search(rx, name, pattern):
                return i
        return None

    def _search(self, rx: regex.Pattern[str], name: str, pattern: str) -> bool:
        """Whether ``rx`` matches in ``name``, within what is left of the time bound."""
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            return rx.search(name, timeout=left) is not None
        except TimeoutError:
            raise InvalidArgumentError(
                f"-ot pattern {pattern[:200]!r} takes more than {self._seconds:g} s to match the model's tensor "
                "names (catastrophic backtracking)",
                hint=r"use a plain pattern such as blk\.(3|4)\.ffn_.*_exps (no nested repetition)") from None


_BACKREF = re.compile(r"\\[1-9gk]")


def compile_pattern(pattern: str) -> regex.Pattern[str]:
    """A user's ``-ot`` regex, compiled; a clear error for an invalid or oversized one."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidArgumentError(f"-ot pattern of {len(pattern)} characters (at most {MAX_PATTERN_CHARS})",
                                   hint=r"name the layers by range, e.g. blk\.([3-9]|1[0-6])\.ffn_.*_exps")
    try:
        return regex.compile(pattern)
    except (regex.error, RecursionError, OverflowError) as err:
        raise InvalidArgumentError(f"-ot pattern {pattern!r} is not a valid regex: {err}",
                                   hint=r'escape dots and brackets, e.g. -ot "blk\.(1|2)\.ffn_.*_exps=CPU"') from None


@dataclass(frozen=True)
class FlagSyntax:
    """How one tool of one engine spells list-valued placement flags."""

    dev_sep: str | None  # None: the tool has no -dev
    ts_sep: str
    ot_sep: str
    fa_on: str
    fa_off: str
    takes_ctx: bool  # llama-bench has no -c (it takes -p/-n/-d)
    rpc_flag: str = "--rpc"  # llama-bench spells it -rpc
    no_op_offload: tuple[str, ...] = ()  # turns op offload off (empty: the tool cannot)
    # loads the weights without mmap: CPU-held weights land in the first GPU's pinned host buffer
    # (CUDA_Host), which op offload copies at link speed (empty: the tool cannot)
    pin_weights: tuple[str, ...] = ()


def pin_flags_of(syntax: Mapping[str, FlagSyntax]) -> tuple[str, ...]:
    """The server's flags that pin CPU-held weights, when every tool of ``syntax`` can (else ())."""
    return syntax["server"].pin_weights if all(s.pin_weights for s in syntax.values()) else ()


def flag_groups(args: Sequence[str]) -> list[tuple[str, ...]]:
    """A plan's flags as (flag, value) pairs and lone switches (``--no-op-offload``): a token
    that starts with ``-`` and is no number begins a group; plan values never start with ``-``."""
    groups: list[list[str]] = []
    for tok in args:
        if tok.startswith("-") and not _NUMBER.fullmatch(tok) or not groups:
            groups.append([tok])
        else:
            groups[-1].append(tok)
    return [tuple(g) for g in groups]


_NUMBER = re.compile(r"-?[0-9.]+")


def format_share(x: float) -> str:
    """A -ts share as the shortest exact text: ``47``, ``1234.5``."""
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0")


@dataclass
class EngineArgs:
    """The placement part of a llama.cpp / ik_llama.cpp command line, tool-independent until
    :meth:`args` spells it for one tool with the dialect's ``syntax`` table."""

    n_gpu_layers: int
    tensor_split: list[float]
    devices: list[str]
    overrides: list[tuple[str, str]] = field(default_factory=list)
    syntax: Mapping[str, FlagSyntax] = field(default_factory=dict, repr=False)
    extra: list[str] = field(default_factory=list)  # dialect flags that always go along (e.g. ik's -mla)
    rpc: list[str] = field(default_factory=list)  # rpc-server endpoints to register (--rpc), in device order
    split_mode: str = "layer"  # -sm; emitted when not the default
    main_gpu: int = 0  # -mg: the one device of -sm none

    @classmethod
    def from_parsed(cls, parsed: ParsedArgs, syntax: Mapping[str, FlagSyntax]) -> EngineArgs:
        """The placement flags of a parsed command line, to be spelled with ``syntax``."""
        ngl = -1 if parsed.n_gpu_layers is None else parsed.n_gpu_layers
        return cls(ngl, list(parsed.tensor_split or []), parsed.devices or [], list(parsed.overrides), syntax,
                   rpc=list(parsed.rpc), split_mode=parsed.split_mode, main_gpu=parsed.main_gpu)

    def args(self, tool: str = "server", *, ctx: int | None = None, n_ubatch: int | None = None,
             type_k: str = "f16", type_v: str = "f16", flash_attn: bool = True, op_offload: bool = True,
             pinned_weights: bool = False) -> list[str]:
        syn = self.syntax.get(tool)
        if syn is None:
            raise InvalidArgumentError(f"unknown tool {tool!r}", hint="use one of: " + ", ".join(self.syntax))
        out: list[str] = []
        if self.rpc:
            out += [syn.rpc_flag, ",".join(self.rpc)]
        if self.devices:
            if syn.dev_sep is None:
                raise InvalidArgumentError(
                    f"this plan needs the device order {','.join(self.devices)}, which this engine's "
                    f"{tool} cannot set (it has no -dev)",
                    hint="use the server/cli flags, or order the devices with CUDA_VISIBLE_DEVICES")
            out += ["-dev", syn.dev_sep.join(self.devices)]
        out += ["-ngl", str(self.n_gpu_layers)]
        if self.split_mode != "layer":
            out += ["-sm", self.split_mode]
        if self.split_mode == "none" and self.main_gpu:
            out += ["-mg", str(self.main_gpu)]
        if self.tensor_split:
            out += ["-ts", syn.ts_sep.join(format_share(x) for x in self.tensor_split)]
        if self.overrides:
            out += ["-ot", syn.ot_sep.join(f"{p}={b}" for p, b in self.overrides)]
        if ctx is not None and syn.takes_ctx:
            out += ["-c", str(ctx)]
        if n_ubatch is not None:
            out += ["-ub", str(n_ubatch)]
        if type_k != "f16":
            out += ["-ctk", type_k]
        if type_v != "f16":
            out += ["-ctv", type_v]
        out += ["-fa", syn.fa_on if flash_attn else syn.fa_off]
        if not op_offload:
            if not syn.no_op_offload:
                raise InvalidArgumentError(f"this plan turns op offload off, which this engine's {tool} cannot",
                                           hint="plan with the engine's default (op offload on)")
            out += list(syn.no_op_offload)
        if pinned_weights:
            if not syn.pin_weights:
                raise InvalidArgumentError(f"this plan pins the CPU-held weights, which this engine's {tool} cannot",
                                           hint="plan with the engine's default (mmap)")
            out += list(syn.pin_weights)
        return out + list(self.extra)


def _digit_range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"[{lo}-{hi}]"


def range_regex(a: int, b: int) -> list[str]:
    """Alternatives matching exactly the integers a..b (no leading zeros)."""
    out: list[str] = []
    n = a
    while n <= b:
        # the largest block [n, n + 10**k - 1] aligned on 10**k that fits in [n, b]
        k = 0
        while n % 10 ** (k + 1) == 0 and n + 10 ** (k + 1) - 1 <= b and n > 0:
            k += 1
        if k == 0:
            # run of single digits sharing the prefix n // 10
            end = min(b, n - n % 10 + 9)
            prefix = str(n // 10) if n >= 10 else ""
            out.append(prefix + _digit_range(n % 10, end % 10))
            n = end + 1
        else:
            prefix = str(n // 10 ** k)
            out.append(prefix + r"\d" * k if k < 2 else prefix + r"\d{%d}" % k)
            n += 10 ** k
    return out


def layer_regex(layers: Sequence[int]) -> str:
    """An anchored regex matching exactly these block numbers: ``blk\\.([3-9]|1[0-6]|20)\\.``."""
    nums = sorted(set(layers))
    alts: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        alts += range_regex(start, prev)
        if n is not None:
            start = prev = n
    body = "|".join(alts)
    return rf"blk\.({body})\." if len(alts) > 1 or not body.isdigit() else rf"blk\.{body}\."


def kind_regex(kinds: frozenset[str]) -> str:
    """The ``-ot`` pattern part naming the routed-expert tensors of ``kinds`` (any subset of
    ``EXPERT_KINDS``; ``ffn_gate_(ch|)exps`` does not match ``ffn_gate_up_exps``)."""
    if kinds in KIND_REGEX:
        return KIND_REGEX[kinds]
    if not kinds or not kinds <= set(EXPERT_KINDS):
        raise InvalidArgumentError(f"no override pattern for expert kinds {sorted(kinds)}")
    alts = "|".join(k for k in EXPERT_KINDS if k in kinds)
    return rf"ffn_({alts})_(ch|)exps" if len(kinds) > 1 else rf"ffn_{alts}_(ch|)exps"


def expert_overrides(model: ModelProfile, p: Placement, rpc_names: Mapping[str, str] | None = None
                     ) -> list[tuple[str, str]]:
    """``-ot`` entries sending each layer's expert kinds that do not live with it to their
    device: one compact pattern per (device, kinds), lowest layers first, then the placement's
    own extra overrides. Targets are buffer-type names, which both forks list per device:
    ``CPU`` and ``CUDA<i>`` for CUDA device i (mainline ``common/arg.cpp:252-262``,
    ``ggml/src/ggml-cuda/ggml-cuda.cu:948``; ik ``common/common.cpp:849-878``,
    ``ggml/src/ggml-cuda.cu:594``), so a local GPU's buffer type is its device name. RPC
    devices never hold another layer's experts (:func:`check_expert_target`)."""
    groups: dict[tuple[str, frozenset[str]], list[int]] = {}
    for il, home in enumerate(p.layer_home):
        if not p.expert_homes[il] or home == CPU or not model.layers[il].has_experts:
            continue
        for dev, kinds in p.experts_away(il).items():
            if dev != CPU and {home, dev} & set(rpc_names or {}):
                raise InvalidArgumentError(f"the placement puts layer {il}'s experts on {dev}, away from its layer on "
                                           f"{home}, across an RPC device", hint=RPC_EXPERTS_HINT)
            groups.setdefault((dev, kinds), []).append(il)
    out = [(layer_regex(layers) + kind_regex(kinds), dev)
           for (dev, kinds), layers in sorted(groups.items(), key=lambda kv: (kv[1][0], kv[0][0]))]
    return out + list(p.extra_overrides)


RPC_EXPERTS_HINT = ("experts may live on another *local* GPU or the CPU; across RPC servers every layer would relay "
                    "its activations through this host twice per token")


def check_expert_target(tensor: str, home: str, target: str, item: str, order: Sequence[str], *,
                        local: Collection[str] | None = None, rpc: Mapping[str, str] | None = None) -> None:
    """Refuse a routed-expert tensor on ``target`` when its layer lives on ``home``, another
    accelerator, unless both are local GPUs of the model's devices (``order``): ``local`` names the
    local GPUs, or else every device not in ``rpc`` (RPC device -> buffer name) is local.

    Mainline llama.cpp allows it between local GPUs: an op runs on the backend holding its
    weight and the scheduler copies the activations there and back
    (``ggml/src/ggml-backend.cpp:951-980``, pass 1 at :1097-1102). A device outside ``-dev`` has
    no backend, and a weight there aborts the scheduler ("pre-allocated tensor ... in a buffer
    that cannot run the operation", ``ggml-backend.cpp:938-942``). Across RPC devices the engine
    loads and runs it (measured: libllama 0c1e570, two loopback rpc-servers), but devices of two
    servers cannot copy to each other (``ggml/src/ggml-rpc/ggml-rpc.cpp:752-771`` returns false
    for different servers), so every layer visit relays its activations through this host over
    both networks twice: a performance trap that omni-place refuses rather than prices. ik_llama.cpp
    shares both rules (ik ``ggml/src/ggml-backend.cpp:1340``, ``ggml/src/ggml-rpc.cpp:680-687``)."""
    if target == CPU or target == home:
        return
    where = f"-ot {item} moves {tensor}"
    if home == CPU:
        raise InvalidArgumentError(f"{where} to {target}, away from its layer on the CPU",
                                   hint="omni-place keeps a CPU layer's experts in CPU RAM: anchor the pattern to "
                                        "layers on a GPU")
    if target not in order:
        raise InvalidArgumentError(f"{where} to {target}, which is not one of the engine's devices "
                                   f"({', '.join(order) or 'none'}): the scheduler has no backend for it and aborts",
                                   hint=f"add {target} to -dev, or send the experts to the CPU")
    is_local = (lambda d: d in local) if local is not None else (lambda d: d not in (rpc or {}))
    if not (is_local(home) and is_local(target)):
        raise InvalidArgumentError(
            f"{where} to {target}, another device than its layer's ({home}), across an RPC device",
            hint=RPC_EXPERTS_HINT)


def accelerator_names(cluster: Cluster) -> list[str]:
    """The cluster's accelerators in the engines' default device order."""
    return [d.name for d in cluster.gpus]


def meta_order(cluster: Cluster) -> list[str]:
    """Mainline's default devices of a meta device (``-sm tensor``): every non-CPU device in
    registry order, the local GPUs before the RPC devices that --rpc adds (src/llama.cpp:193-219;
    the layer split instead puts RPC devices first)."""
    return [d.name for d in cluster.gpus if d.kind == "gpu"] + [d.name for d in cluster.gpus if d.kind != "gpu"]


def parallel_layers(p: Placement) -> int:
    """The GPU layers of a placement under a parallel split mode, which the engines can only
    give as the last ``-ngl`` layers with the output head on the GPUs too."""
    n_gpu = sum(1 for h in p.layer_home if h != CPU)
    if any(h != CPU for h in p.layer_home[:len(p.layer_home) - n_gpu]) or (n_gpu and p.output == CPU):
        raise InvalidArgumentError("under a parallel split mode the GPU layers must be the last ones, with the "
                                   "output head", hint="keep the first layers on the CPU and the rest on the GPUs")
    return n_gpu


def local_gpus(cluster: Cluster) -> frozenset[str]:
    """The cluster's local GPUs: the devices that may hold another layer's experts."""
    return frozenset(d.name for d in cluster.gpus if d.kind == "gpu")


def rpc_servers(devices: Sequence[Device]) -> list[str]:
    """The ``--rpc`` list for a cluster's RPC devices: their servers in device-name order, which
    is the order in which ggml-rpc numbers the devices it registers (RPC0, RPC1, ...; several
    devices of one server get consecutive numbers)."""
    rpc = [d for d in devices if d.kind == "rpc"]
    out: list[str] = []
    for i, d in enumerate(sorted(rpc, key=lambda d: _rpc_index(d.name))):
        if _rpc_index(d.name) != i:
            raise ClusterError(f"RPC devices must be named RPC0..RPC{len(rpc) - 1} in --rpc order, found {d.name}",
                               hint="name them as llama.cpp does: the devices of the first server first")
        if d.endpoint and d.endpoint not in out:
            out.append(d.endpoint)
    return out


def rpc_buffer_names(devices: Sequence[Device]) -> dict[str, str]:
    """ggml-rpc's buffer (and ik's device) name of each RPC device: ``RPC<i>[host:port]`` with
    ``i`` its index on its own server (``ggml-rpc.cpp:1092``)."""
    out: dict[str, str] = {}
    per_server: dict[str, int] = {}
    for d in sorted((d for d in devices if d.kind == "rpc" and d.endpoint), key=lambda d: _rpc_index(d.name)):
        i = per_server.get(d.endpoint or "", 0)
        per_server[d.endpoint or ""] = i + 1
        out[d.name] = f"RPC{i}[{d.endpoint}]"
    return out


def override_device(target: str, rpc_names: Mapping[str, str] | None = None) -> str:
    """The cluster device an ``-ot`` buffer type means: the CPU for host buffer types (``CPU``,
    ``CPU_Mapped``, ``CUDA_Host``), the RPC device whose buffer name (``RPC<i>[host:port]``,
    ``rpc_names``: device -> name, :func:`rpc_buffer_names`) it is, else the name itself."""
    if target.upper().startswith("CPU") or target.upper().endswith("_HOST"):
        return CPU
    return next((device for device, buffer in (rpc_names or {}).items() if buffer == target), target)


def _rpc_index(name: str) -> int:
    digits = name.removeprefix("RPC")
    return int(digits) if digits.isdigit() else -1


def model_devices(split_mode: str, devices: Sequence[str] | None, accelerators: Sequence[str],
                  names: Mapping[str, str] | None = None, main_gpu: int = 0) -> list[str]:
    """The engine's model devices for a command line: its ``-dev`` list (device or buffer names,
    mapped through ``names``) or the cluster's default order. ``-sm none`` keeps only device
    ``-mg`` of that list, none when ``-mg`` is negative, and the engine refuses a ``-mg`` past
    its end (``src/llama.cpp`` ``llama_model_load_from_file_impl``: "invalid value for
    main_gpu"); every other mode (the dialect's ``SPLIT_MODES`` says which exist) keeps them all."""
    names = names or {}
    order = [names.get(d, d) for d in devices] if devices is not None else list(accelerators)
    unknown = [d for d in order if d not in accelerators]
    if unknown:
        raise InvalidArgumentError(f"-dev names {', '.join(unknown)}, not in the cluster ({', '.join(accelerators)})",
                                   hint="`omni-place devices` lists the cluster's device names")
    if len(set(order)) != len(order):
        raise InvalidArgumentError(f"-dev names a device twice ({', '.join(order)})", hint="name each device once")
    if split_mode != "none":
        return order
    if main_gpu < 0:
        return []
    if main_gpu >= len(order):
        raise InvalidArgumentError(f"-sm none -mg {main_gpu}: the engine has {len(order)} device"
                                   f"{'' if len(order) == 1 else 's'} ({', '.join(order) or 'none'}), so it refuses "
                                   "this main GPU", hint=f"give -mg 0..{max(0, len(order) - 1)}")
    return [order[main_gpu]]


def layer_counts(p: Placement) -> list[int]:
    """Repeating layers per device of the order."""
    return [len(p.layers_on(name)) for name in p.order]


def dev_flag(order: Sequence[str], default_order: Sequence[str]) -> list[str]:
    """The -dev list, or nothing when the order is the engine's default; ``none`` (no device:
    everything on the CPU, no op offload) for an empty order on a machine with accelerators."""
    if list(order) == list(default_order):
        return []
    return list(order) if order else ["none"]


# --- plain llama-bench output records ----------------------------------------------------------

_REQUIRED = object()
MAX_RECORD_TEXT = 1 << 16  # an -ot list of a few hundred patterns; a record field is never longer


def record_int(record: Mapping[str, Any], key: str, lo: int, hi: int, default: Any = _REQUIRED) -> int:
    """An integer field of a llama-bench record (JSON numbers; ``default`` when absent)."""
    if key not in record and default is not _REQUIRED:
        return int(default)
    if key not in record:
        raise InvalidArgumentError(f"the record has no {key!r} field")
    return integer(record[key], key, lo=lo, hi=hi)


def record_text(record: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> str:
    """A text field of a llama-bench record."""
    if key not in record and default is not _REQUIRED:
        return str(default)
    if key not in record:
        raise InvalidArgumentError(f"the record has no {key!r} field")
    return text(record[key], key, max_len=MAX_RECORD_TEXT)


def record_threads(record: Mapping[str, Any]) -> int | None:
    """A record's ``n_threads`` (None when it has none), no more than a cluster's CPU may run."""
    return record_int(record, "n_threads", 1, MAX_THREADS) if "n_threads" in record else None


def record_switch(record: Mapping[str, Any], key: str, default: bool) -> bool:
    """An on/off field: JSON ``true``/``false`` or ``0``/``1`` (llama-bench prints some
    switches as ints, e.g. mainline's ``no_op_offload``)."""
    v = record.get(key, default)
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise InvalidArgumentError(f"{key} must be true/false or 0/1 (got {show(v)})")


def record_split_flags(record: Mapping[str, Any]) -> list[str]:
    """The flags of a llama-bench record's layer split that both engines print alike:
    ``n_gpu_layers``, ``split_mode``, ``main_gpu`` and a ``tensor_split`` that sets any share."""
    argv = ["-ngl", str(record_int(record, "n_gpu_layers", -1, N32)),
            "-sm", record_text(record, "split_mode", "layer"), "-mg", str(record_int(record, "main_gpu", -1, N32, 0))]
    shares = record_text(record, "tensor_split", "0.00")
    return argv + (["-ts", shares] if nonzero_shares(shares) else [])


def record_test_flags(record: Mapping[str, Any], fa: str) -> list[str]:
    """The batch, KV-type, flash-attention (``fa``, in the engine's spelling) and test-size
    flags of a llama-bench record."""
    return ["-ub", str(record_int(record, "n_ubatch", 1, N32)), "-b", str(record_int(record, "n_batch", 1, N32)),
            "-ctk", record_text(record, "type_k", "f16"), "-ctv", record_text(record, "type_v", "f16"), "-fa", fa,
            "-p", str(record_int(record, "n_prompt", 0, N32)), "-n", str(record_int(record, "n_gen", 0, N32))]


def nonzero_shares(shares: str) -> bool:
    """Whether a record's ``tensor_split`` (``"0.00"``, ``"9.00/40.00"``) sets any share."""
    try:
        return any(float(x) != 0 for x in shares.split("/") if x.strip())
    except ValueError:
        raise InvalidArgumentError(f"tensor_split {show(shares)} is not a list of numbers") from None
