"""What attention over the KV cache costs beside the weights, with and without flash attention.

A prompt token attends to every cached token: ``2 x n_head x (head_dim_k + head_dim_v)`` FLOPs per
cached token and layer (KQ, then KQV). With flash attention one tiled kernel runs them and skips
the masked half of the ubatch (ggml/src/ggml-cuda/fattn-common.cuh, ``KV_max``); without it the
scores are materialized, KQ and KQV run as cuBLAS matmuls over every cell and the softmax as a
pass of its own (src/llama-graph.cpp ``build_attn_mha``), at a lower rate and with a fixed cost per
layer and ubatch. Decode reads the cache once a token, slower than its bytes at the decode
bandwidth: the split-KV reduction and, without flash attention, the softmax pass.

The constants are fitted by ``python -m benchmarks.attention_depth report`` on llama-bench ``-d``
sweeps of two dense shapes on an H200 (benchmarks/results/attention_depth.md; tests/
test_attention_depth.py checks they equal the fit). GPU rates are shares of the GPU's FP16 tensor
peak (``fp16_tflops``): attention runs on the FP16 tensor cores (ggml/src/ggml-cuda/fattn-mma-f16.cuh,
cuBLAS without flash attention), not the int8 ones of the matmuls' MMQ, whose ratio to FP16 differs
by GPU class (an H200's MMQ reaches 0.15 of it, a GeForce's 0.45-0.60: gpu_catalog.toml); Qwen3.5
at depth on an RTX 4090 ran its 256-wide heads at 0.21 of that card's peak, the H200's 128-wide
ones 0.17 (benchmarks/results/hybrid_speed.md). On the CPU a prompt's attention runs at its FLOP
rate, and a decode's reads the cache far below the memory's rate: one query row a head, per cell an
F16 dot, an online-softmax step and an F16 axpy (ggml/src/ggml-cpu/ops.cpp:8843, split over the
threads by cells from 512 on, 9490-9520), or without flash attention two F16 matmuls around a
softmax; heads of half the width over as many cache bytes took as long, so it is priced per byte,
at a rate that grows with the threads, except where many heads share a row (MLA): their FLOPs bind
(``benchmarks/cpu_attention.py``). Where op offload runs a CPU layer's attention on a GPU, its cache
moves over the host link each ubatch (:func:`cpu_cache_prompt_bytes`).

A recurrent layer (a Gated DeltaNet hybrid's linear attention, an SSM) attends to no cells: it reads
and writes its fixed-size state each decoded token (:data:`RECURRENT_STATE_PASSES`), and each token,
decoded or in a prompt, runs the delta rule over it (:data:`DELTA_RULE_FLOPS`; Mamba-2's selective scan,
:data:`SSM_SCAN_FLOPS`) and a mixer of elementwise passes (:func:`mixer_work`), whatever the depth.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

#: prompt attention with flash attention, FLOP/s as a share of the GPU's FP16 tensor peak
#: (CostModel.attention_rate)
FA_PROMPT_SHARE = 0.174
#: without flash attention: its FLOP/s as a share of that peak, and a fixed cost per layer and
#: ubatch as a multiple of the GPU row's ``layer_us``
NO_FA_PROMPT_SHARE = 0.065
NO_FA_PROMPT_LAYER_SHARE = 3.0
#: decode's read of the cache on a GPU: its bytes' time at the decode bandwidth, times this
FA_DECODE_KV_COST = 1.83
NO_FA_DECODE_KV_COST = 3.35


#: decode attention on the CPU reads its cache at this many bytes per FLOP of the CPU's prompt matmul
#: rate (threads x cpu_tflops_per_core), flash attention on / off: one cell at a time a head. libllama
#: on a 2-vCPU EPYC (0.106 TFLOPS a core in Q4_K matmuls), two head shapes with the same bytes a cell,
#: 1 and 2 threads, 1024-8192 cells: 0.016-0.028 / 0.039-0.078 (benchmarks/results/cpu_attention.md)
CPU_DECODE_KV_BYTES_PER_FLOP = {True: 0.021, False: 0.053}
#: ... and its FLOPs (``2 x n_head x (dk + dv)`` a cell) at this share of that rate at best, which binds
#: MLA: all heads share one latent row a cell (a 16-head MLA on the same CPU: 0.26 / 0.13; the GQA and
#: MHA shapes stay bound by their bytes)
CPU_DECODE_FLOP_SHARE = {True: 0.26, False: 0.2}
#: the same for ik_llama.cpp's CPU flash attention (ggml/src/iqk/iqk_flash_attn.cpp), on the scale of
#: mainline's Q4_K matmul rate: its native llama-bench (AVX-512) on the EPYC, 2 threads, 0-8192 cells,
#: GQA and MHA 9.8 / 10.0 GB/s and MLA 171 GFLOP/s beside mainline's 0.149 TFLOPS a core
#: (benchmarks/results/cpu_attention.md). Without flash attention unmeasured: mainline's.
IK_CPU_DECODE_KV_BYTES_PER_FLOP = {True: 0.033, False: CPU_DECODE_KV_BYTES_PER_FLOP[False]}
IK_CPU_DECODE_FLOP_SHARE = {True: 0.57, False: CPU_DECODE_FLOP_SHARE[False]}


#: a recurrent layer's state crosses memory three times a decoded token, a read and a write each:
#: build_rs gathers the sequence's state (get_rows, src/llama-graph.cpp:3535), the fused delta-rule op
#: reads it and writes the new one (ggml_gated_delta_net), a copy stores that in the cache
#: (src/models/delta-net-base.cpp build_recurrent_attn)
RECURRENT_STATE_PASSES = 6
#: Mamba's selective scan reads the sequence's state where the cache holds it (its ids, no gather:
#: src/models/mamba-base.cpp get_ssm_rows) and writes the new one beside its output, which a copy stores
SSM_STATE_PASSES = 4
#: the delta rule's FLOPs per token and state element: the decay, S^T k, the rank-1 update, S^T q
#: (ggml/src/ggml-cpu/ops.cpp gated_delta_net_one_chunk: four vector passes over each head's state)
DELTA_RULE_FLOPS = 7
#: the delta rule's rate, a share of the device's prompt matmul FLOP/s (a GPU's MMQ rate, the CPU's
#: cpu_tflops_per_core a thread), one token after another over each head's state: a state column per
#: warp and two warp reductions a token on a GPU (ggml/src/ggml-cuda/gated_delta_net.cu; a prior: there
#: the step, GPU_SCAN_STEP_S, binds for every shipped shape), a head per thread on the CPU (0.08: libllama
#: on this project's 2-vCPU Xeon, two Qwen3.5 shapes whose layers swap attention for linear attention,
#: benchmarks/results/hybrid_speed.md)
SCAN_RATE_SHARE = {True: 0.1, False: 0.08}
#: a GPU runs a ubatch's tokens through the delta rule one after another: each block of the grid
#: (a value head x four state columns, a warp a column) loops over the tokens, loading each one's q, k,
#: v, gate and beta and reducing twice across the warp before the next
#: (ggml/src/ggml-cuda/gated_delta_net.cu:62-160), so a token costs at least one such step, whatever
#: its FLOPs. Qwen3.5's and Qwen3-Next's grids (1024-1536 blocks of four warps) fit at once on a GPU
#: of about 100 SMs or more; on a smaller one each wave pays the steps again (not priced). Seconds a
#: step: H100, the 35B-A3B's whole-GPU prompt beside its all-attention control of the same shape on two
#: VMs and the 9B's beside its own on two more, within -6 .. +4 points of their controls'
#: (benchmarks/results/hybrid_speed.md)
GPU_SCAN_STEP_S = 0.7e-6
#: F32 activations a token's linear-attention mixer reads and writes beside its matmuls, per key and
#: per value channel: the convolution's concat, conv and SiLU over the 2 x key + value channels, the
#: L2 norms and scales of q and k, the delta rule's reads and output, the gated RMS norm (the
#: engine's graph: src/models/qwen35.cpp build_layer_attn_linear)
MIXER_PASSES_KEY, MIXER_PASSES_VALUE = 22, 17


#: Mamba-2's selective scan, FLOPs per token and state element: the decayed state, the input's product,
#: their sum and the output's FMA (ggml/src/ggml-cpu/ops.cpp:10060-10101, a scalar decay a head)
SSM_SCAN_FLOPS = 5
#: its rate on the CPU, a share of a thread's matmul FLOP/s (as SCAN_RATE_SHARE): the vector loop, which
#: takes a row's state GGML_F32_STEP elements an iteration, and the scalar loop the rest of the row
#: (ops.cpp:10110-10150). libllama on this project's 2-vCPU Xeon (AVX-512), 1 and 2 threads, 64-256 and 16
#: states at two head widths: 0.23-0.25 and 0.03 (``python -m benchmarks.ssm_scan``, benchmarks/results/ssm_scan)
SSM_SCAN_CPU_SHARE = {"vector": 0.24, "scalar": 0.03}
#: GGML_F32_STEP of the CPU build's SIMD (ggml/src/ggml-cpu/simd-mappings.h); AVX2's when not known
F32_STEP = {"avx512": 64, "avx2": 32}


class MixerWork(NamedTuple):
    """A prompt token's work in a recurrent layer's mixer beside its matmuls (:func:`mixer_work`)."""

    flops: float
    act_bytes: float
    heads: int  # the units the CPU's threads share
    static_split: bool  # ceil(heads / threads) a thread (the SSM scan); else chunks taken as threads free up
    cpu_share: float  # of a CPU thread's matmul FLOP/s


def mixer_work(d_state: int, d_inner: int, n_group: int, ssm_heads: int = 0, simd: str | None = None) -> MixerWork:
    """A linear-attention mixer's: ``n_group`` key heads and ``d_inner / d_state`` value heads of ``d_state``
    channels (a state of ``d_state x d_inner``), the delta rule over them in chunks the CPU's threads take
    in turn (ops.cpp:11278-11316). ``ssm_heads``: Mamba-2's selective scan instead, its state in
    ``ssm_heads`` heads dealt out to the threads in equal runs (ops.cpp:10039-10044), each row's state
    vectorised but for its last ``d_state`` mod GGML_F32_STEP elements (``simd``: the CPU build's)."""
    act_bytes = 4.0 * (MIXER_PASSES_KEY * n_group * d_state + MIXER_PASSES_VALUE * d_inner)
    if not ssm_heads:
        return MixerWork(DELTA_RULE_FLOPS * d_state * d_inner, act_bytes, d_inner // max(1, d_state), False,
                         SCAN_RATE_SHARE[False])
    scalar = d_state % F32_STEP.get(simd or "avx2", 32)
    share = (d_state / ((d_state - scalar) / SSM_SCAN_CPU_SHARE["vector"] + scalar / SSM_SCAN_CPU_SHARE["scalar"])
             if d_state else SSM_SCAN_CPU_SHARE["vector"])  # no state: no work to price
    return MixerWork(SSM_SCAN_FLOPS * d_state * d_inner, act_bytes, ssm_heads, True, share)


def recurrent_prompt_s(work: MixerWork, rate: float, bandwidth: float, gpu: bool, threads: int = 0) -> float:
    """Seconds per prompt token of a recurrent layer's mixer beside its matmuls (:func:`mixer_work`):
    the scan at its share of ``rate`` (the device's matmul FLOP/s; on the CPU over ``threads``, as the
    work's heads share them; on a GPU at least :data:`GPU_SCAN_STEP_S`) and the activations at
    ``bandwidth``."""
    if not gpu and work.heads > 0 and threads > 0:
        runs = math.ceil(work.heads / threads) if work.static_split else 1
        rate *= min(1.0, work.heads / (threads * runs))
    scan = work.flops / (rate * (SCAN_RATE_SHARE[True] if gpu else work.cpu_share))
    return (max(scan, GPU_SCAN_STEP_S) if gpu else scan) + work.act_bytes / bandwidth


def decode_cache_bytes(cache: Sequence[int], state: Sequence[int], read_share: float,
                       ssm_scan: bool = False) -> tuple[list[float], list[float]]:
    """Bytes a decoded token moves per layer: ``read_share`` of its KV cache (the cells up to the
    depth), and its recurrent state whole, :data:`RECURRENT_STATE_PASSES` times (``ssm_scan``:
    :data:`SSM_STATE_PASSES`)."""
    passes = SSM_STATE_PASSES if ssm_scan else RECURRENT_STATE_PASSES
    return [size * read_share for size in cache], [size * passes for size in state]


def cpu_decode_kv_s(kv_bytes: float, flops: float, bandwidth: float, rate: float, flash_attn: bool,
                    ik: bool = False) -> float:
    """Decode seconds of one CPU layer's attention over ``kv_bytes`` of cache (``flops`` of work): the
    bytes read at the memory's ``bandwidth`` or as fast as the threads' kernel takes them, and the
    FLOPs at its best share of ``rate`` (the CPU's matmul FLOP/s; ``math.inf``: the bytes alone),
    whichever is slowest; ``ik``: ik_llama.cpp's kernel."""
    per_flop, share = ((IK_CPU_DECODE_KV_BYTES_PER_FLOP, IK_CPU_DECODE_FLOP_SHARE) if ik else
                       (CPU_DECODE_KV_BYTES_PER_FLOP, CPU_DECODE_FLOP_SHARE))
    return max(kv_bytes / min(bandwidth, rate * per_flop[flash_attn]), flops / (rate * share[flash_attn]))


def mean_depths(depth: int, n_prompt: int, n_gen: int, n_tokens: int,
                prompt_depth: int | None = None) -> tuple[float, float]:
    """(decode, prompt) mean cached tokens before a decoded token and before a prompt's ubatch of
    ``n_tokens``, in a llama-bench test of ``n_gen`` decodes or ``n_prompt`` prompt tokens after
    ``depth`` (tools/llama-bench/llama-bench.cpp ``test_gen``, ``test_prompt``; the prompt's after
    ``prompt_depth`` where given): decode ``i`` follows ``depth + i`` cells, ubatch ``j`` ``depth +
    j x n_tokens``. 0 tokens: one decode, one ubatch."""
    pp_depth = depth if prompt_depth is None else prompt_depth
    return depth + max(0, n_gen - 1) / 2, pp_depth + max(0, n_prompt - n_tokens) / 2


#: cells of a KQ mask's later rows mainline rechecks beyond the ubatch's positions (and a window)
MASK_RECHECK_MARGIN = 32


def kq_mask_work(n_tokens: int, n_kv: int, window: int, flash_attn: bool, reuse_rows: bool,
                 threads: int = 1) -> tuple[float, float]:
    """(cells checked, bytes written) building one ubatch's KQ mask on the host: ``n_tokens`` rows
    of ``n_kv`` cells (F16 for flash attention, else F32; llama-graph.cpp ``build_attn_inp_kq_mask``),
    ``window`` a SWA mask's. Mainline (``reuse_rows``) checks the first row's every cell, then copies
    each row to the next and rechecks only the cells at the ubatch's positions, the window and
    :data:`MASK_RECHECK_MARGIN` (src/llama-kv-cache.cpp ``set_input_kq_mask_impl``); ik_llama.cpp checks
    every cell of every row, over ``threads`` threads where the mask is large (src/llama.cpp, the
    ``n_kv >= 1024 && n_tokens >= 32`` branch of ``llama_set_inputs``), the cells counted per thread."""
    if n_tokens <= 0 or n_kv <= 0:
        return 0.0, 0.0
    size = n_tokens * n_kv * (2 if flash_attn else 4)
    if not reuse_rows:
        spread = threads if n_kv >= 1024 and n_tokens >= 32 else 1
        return n_tokens * n_kv / max(1, spread), float(size)
    recheck = min(n_kv, n_tokens + MASK_RECHECK_MARGIN + window)
    return float(n_kv + (n_tokens - 1) * recheck), float(size)


#: the most ubatches of a prompt :func:`prompt_ubatch_sample` lists (a long prompt in tiny ubatches
#: is priced from an even sample of them)
MAX_PRICED_UBATCHES = 4096


def prompt_ubatch_sample(n_prompt: int, n_batch: int, n_ubatch: int, depth: int,
                         limit: int = MAX_PRICED_UBATCHES) -> list[tuple[int, int, int, int]]:
    """(count, tokens, depth, tokens of the ubatch before it in its call, 0 for a call's first) of a
    prompt's ubatches: a llama-bench test of ``n_prompt`` tokens after ``depth``, one llama_decode call
    per ``n_batch`` tokens (tools/llama-bench/llama-bench.cpp ``test_prompt``) split into ``n_ubatch``-
    token ubatches, a call's last maybe shorter; 0 tokens, one full call (a server's long prompt).
    Beyond ``limit`` ubatches, evenly spaced ones, each counted for those up to the next."""
    n_batch, n_ubatch = max(n_batch, n_ubatch, 1), max(n_ubatch, 1)
    n_prompt = n_prompt if n_prompt > 0 else n_batch
    per_call, (full, rest) = -(-n_batch // n_ubatch), divmod(n_prompt, n_batch)
    total = full * per_call + -(-rest // n_ubatch)
    picked = range(0, total, max(1, -(-total // max(1, limit))))
    out = []
    for at, index in enumerate(picked):
        call, k = divmod(index, per_call)
        tokens = min(n_batch, n_prompt - call * n_batch)  # this call's
        count = (picked[at + 1] if at + 1 < len(picked) else total) - index
        out.append((count, min(n_ubatch, tokens - k * n_ubatch), depth + call * n_batch + k * n_ubatch,
                    n_ubatch if k else 0))
    return out


def prompt_ubatches(n_prompt: int, n_batch: int, n_ubatch: int) -> dict[int, int]:
    """Ubatch size -> count of a llama-bench prompt test of ``n_prompt`` tokens: llama_decode of
    ``n_batch`` tokens at a time (tools/llama-bench/llama-bench.cpp ``test_prompt``), each split into
    ``n_ubatch``-token ubatches, the last one shorter (src/llama-batch.cpp ``split_simple``). Per-ubatch
    costs (op offload's weight copies, a split's round trip) are paid by each, the shorter too."""
    out: dict[int, int] = {}
    n_batch = max(n_batch, n_ubatch, 1)
    full, rest = divmod(max(n_prompt, 0), n_batch)
    for tokens, times in ((n_batch, full), (rest, 1)):
        whole, tail = divmod(tokens, n_ubatch)
        for size, count in ((n_ubatch, whole * times), (tail, times)):
            if size and count:
                out[size] = out.get(size, 0) + count
    return out


def attended_cells(depth: float, n_tokens: int, flash_attn: bool, window: int = 0) -> float:
    """Mean cached tokens a prompt token of a ``n_tokens`` ubatch attends to after ``depth`` cells:
    with flash attention half the ubatch beside the depth (masked tiles skipped), without it every
    score of the ubatch's cells; a sliding-window layer (``window`` > 0) sees at most its window."""
    cells = depth + (n_tokens / 2 if flash_attn else n_tokens)
    return min(cells, window + n_tokens) if window else cells


def prompt_attention_s(flops: float, n_tokens: int, flash_attn: bool, rate: float, gpu_layer_s: float) -> float:
    """Seconds per prompt token of one layer's attention of ``flops`` per token: on a GPU
    (``gpu_layer_s`` > 0, its row's per-layer decode cost; ``rate`` its FP16 tensor FLOP/s) at the
    fitted shares, on the CPU (``gpu_layer_s`` 0; ``rate`` its FLOP/s) at its rate."""
    if not gpu_layer_s:
        return flops / rate
    if flash_attn:
        return flops / (rate * FA_PROMPT_SHARE)
    return flops / (rate * NO_FA_PROMPT_SHARE) + NO_FA_PROMPT_LAYER_SHARE * gpu_layer_s / n_tokens


def decode_kv_cost(flash_attn: bool) -> float:
    """Factor on a GPU's time to read the decode's KV cache at its decode bandwidth."""
    return FA_DECODE_KV_COST if flash_attn else NO_FA_DECODE_KV_COST


def cpu_cache_prompt_bytes(kv: Sequence[int], cells: Sequence[int], write_bytes: Sequence[int], depth: float,
                           n_tokens: int) -> list[float]:
    """Bytes a prompt ubatch of ``n_tokens`` after ``depth`` cells moves, per layer, between a GPU
    that op offload runs the layer's attention on and its KV cache in CPU memory (``kv`` bytes over
    ``cells``; ``write_bytes`` a token's new K/V as the graph computes them, 0 for a recurrent
    state, which goes up whole). The cache stays where the layer's device keeps it (mainline: pageable
    whatever buffer holds the weights, src/llama-kv-cache.cpp:212-219; ik_llama.cpp: pinned,
    EngineTraits.pinned_cpu_cache): the new K/V go down as F32 to the CPU's ``set_rows``
    (src/llama-graph.cpp:2915-2916), and the cells the ubatch attends come back up."""
    return [size * min(1.0, (depth + n_tokens) / n) + w * n_tokens if w else float(size)
            for size, n, w in zip(kv, cells, write_bytes)]
