"""What a tool (llama-server / llama-cli, llama-bench) does with the settings a command line leaves
out, and the context, batch and test sizes a command line runs with."""
from __future__ import annotations

from dataclasses import dataclass

from ..attention import prompt_ubatches
from ..errors import InvalidArgumentError
from .common import NO_HOST_NOTE, ParsedArgs


@dataclass(frozen=True)
class ToolDefaults:
    """What a tool uses for a setting the command line leaves out.

    llama-server / llama-cli (``common/common.h`` ``common_params``): ``-c 0`` (the model's
    training context, ``src/llama-context.cpp``: ``n_ctx == 0 ? hparams.n_ctx_train``), ``-b
    2048``, ``-ub 512``, ``-fa auto``, ``-ngl`` all (``-1``; ``--fit``, on by default, may lower
    layers and context when the user sets neither). llama-bench
    (``tools/llama-bench/llama-bench.cpp`` ``cmd_params_defaults``): no ``-c`` -- each test's
    context is ``n_prompt + n_gen + n_depth`` (``-p 512``, ``-n 128``, ``-d 0``), ``-b 2048``,
    ``-ub 512``, ``-fa`` auto (on), ``-ngl 99`` (ik's: 999)."""

    n_gpu_layers: int = -1
    ctx: int | None = 0  # None: from the bench tests
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: bool = True
    n_prompt: int = 512
    n_gen: int = 128
    n_depth: int = 0


SERVER_DEFAULTS = ToolDefaults()
# llama-bench's -fa defaults to auto (tools/llama-bench/llama-bench.cpp:406), which counts as on
BENCH_DEFAULTS = ToolDefaults(n_gpu_layers=99, ctx=None, flash_attn=True)


@dataclass(frozen=True)
class ToolContext:
    """The context a command line runs with, and what was assumed to get it."""

    ctx: int
    n_ubatch: int
    flash_attn: bool
    depth: int
    assumptions: tuple[str, ...] = ()
    # a llama-bench test's prompt tokens and decoded tokens after ``depth`` (0: not a bench run)
    n_prompt: int = 0
    n_gen: int = 0
    prompt_depth: int | None = None  # the prompt test's depth where it is not the decode's
    n_batch: int = 2048  # the logical batch (-b): a prompt test goes to llama_decode in pieces of it


def tool_context(parsed: ParsedArgs, defaults: ToolDefaults, n_ctx_train: int, ctx: int | None = None) -> ToolContext:
    """Context size, physical batch and flash attention of ``parsed`` under ``defaults``
    (``ctx``: the caller's context when the command line gives none). The engine's rules
    (``src/llama-context.cpp``, ``llama_context``): ``n_ctx 0`` is ``n_ctx_train``; ``n_batch =
    min(n_ctx, n_batch)`` (causal attention); ``n_ubatch = min(n_batch, n_ubatch or n_batch)``."""
    notes: list[str] = []
    depth = p = n = 0
    prompt_depth = None
    tests = ""
    if defaults.ctx is None:  # llama-bench: the test sizes
        p = defaults.n_prompt if parsed.n_prompt is None else parsed.n_prompt
        n = defaults.n_gen if parsed.n_gen is None else parsed.n_gen
        depth = defaults.n_depth if parsed.n_depth is None else parsed.n_depth
        tests = f"-p {p}, -n {n}" + (f", -d {depth}" if parsed.n_depth is not None else "")
        sizes = [max(p, n) + depth] + [pp + tg + depth for pp, tg in parsed.pg_tests]
        tests += "".join(f", -pg {pp},{tg}" for pp, tg in parsed.pg_tests)
        if parsed.gp_tests:  # ik: each a context of D + N (examples/llama-bench/llama-bench.cpp:1046)
            sizes += [d + tg for d, tg in parsed.gp_tests]
            tests += "".join(f", -gp {d},{tg}" for d, tg in parsed.gp_tests)
            gp_depth, gp_gen = max(parsed.gp_tests, key=sum)  # the decode priced: the deepest -gp test
            notes.append(f"decode priced as -gp {gp_depth},{gp_gen}: {gp_gen} tokens after a {gp_depth}-token prompt")
            prompt_depth, depth, n = depth, gp_depth, gp_gen
    n_ctx = parsed.ctx if parsed.ctx is not None else ctx
    if n_ctx is None and defaults.ctx is None:  # llama-bench: the largest test's context
        n_ctx = max(sizes)
        notes.append(f"context {n_ctx}: llama-bench's largest test ({tests})")
    elif n_ctx is None or n_ctx == 0:
        if not n_ctx_train:
            raise InvalidArgumentError("the model states no training context, which -c 0 (the default) would use",
                                       hint="give the context with -c N")
        how = "-c 0" if n_ctx == 0 else "no -c"
        notes.append(f"context {n_ctx_train}: the model's training context ({how}, as llama.cpp does); "
                     "llama-server's --fit (on by default) may lower it when it does not fit -- pass -c N to "
                     "price another")
        n_ctx = n_ctx_train
    n_batch = min(n_ctx, defaults.n_batch if parsed.n_batch is None else parsed.n_batch)
    ub = defaults.n_ubatch if parsed.n_ubatch is None else parsed.n_ubatch
    n_ubatch = max(1, min(n_batch, ub or n_batch))
    ubatches = prompt_ubatches(p, n_batch, n_ubatch)
    if set(ubatches) - {n_ubatch} and sum(ubatches.values()) > 1:  # whole ubatches and a short one
        parts = " + ".join(f"{c} x {s}" for s, c in sorted(ubatches.items(), reverse=True))
        notes.append(f"-p {p} runs as ubatches of {parts} tokens, each paying the per-ubatch costs "
                     "(op offload's weight copies, where it copies) in full")
    fa = defaults.flash_attn if parsed.flash_attn is None else parsed.flash_attn
    if parsed.no_host:
        notes.append(NO_HOST_NOTE)
    if parsed.unpriced:
        notes.append("not priced (assumed not to change placement or memory): " + " ".join(parsed.unpriced))
    return ToolContext(n_ctx, n_ubatch, fa, depth, tuple(notes), p, n, prompt_depth, n_batch)

