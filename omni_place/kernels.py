"""How fast llama.cpp's matrix kernels consume each weight type, read from ``data/weight_types.toml``.

Decode's matrix-vector products read every weight once, but a weight costs the kernel work as well
as bytes: unpacking a block, its scales, an i-quant's grid lookups
(``ggml/src/ggml-cuda/vecdotq.cuh``, ``ggml/src/ggml-cpu/arch/x86/quants.c``). Where the memory is
fast for the compute beside it (an HBM GPU) that work, not the bytes, sets the pace: on an H200 an
8B model in Q4_0 decodes at 342 tok/s, in Q6_K at 207, in IQ1_S at 368, nearly independent of their
1.8-6.5 GB. A GPU reads a group of weights in ``max(bytes / bandwidth, work / kernel rate)``: the
work is :attr:`WeightTypeSpeed.gpu_decode_flops` per weight, the rate the GPU's MMQ rate
(``fp16_tflops`` x its row's ``mmq_share``, at least :data:`KERNEL_FLOPS_PER_BYTE` of its
bandwidth), so the same type is memory-bound on a GDDR card with 4-6x the H200's compute per byte.
On the CPU, a type reaches :attr:`WeightTypeSpeed.cpu_decode_share` of the rate Q4_K reads at
(i-quants a third of it: compute-bound on every core count measured).
Prompt matmuls (MMQ tiles, ``ggml/src/ggml-cuda/mmq.cuh``) take :attr:`WeightTypeSpeed.gpu_prompt`
times Q4_K's time per FLOP; F16/BF16 go to cuBLAS. On the CPU a prompt's matmul runs the type's
own kernel: repacked GEMMs for Q4_0 / Q4_K / IQ4_NL (``ggml/src/ggml-cpu/repack.cpp``), llamafile's
tinyBLAS for some dense types, else a ``vec_dot`` per row and column, and routed experts
(MUL_MAT_ID) never tinyBLAS: :attr:`WeightTypeSpeed.cpu_prompt` and ``cpu_expert_prompt`` are
their times per FLOP relative to Q4_K's (``benchmarks/cpu_prompt.py``), per SIMD build where the
cluster says which (:data:`CPU_SIMD`: the same type runs other kernels on AVX2 and AVX-512), else
over both. ik_llama.cpp's CPU runs
its own GEMMs for every type (ggml/src/iqk/iqk_mul_mat.cpp): ``ik_cpu_prompt`` and
``ik_cpu_expert_prompt``, on the same scale (mainline's Q4_K), and its own decode kernels, faster
or slower where mainline's are bound by their compute (the i-quants: ``ik_cpu_decode_share``).

The rows are derived by ``python -m benchmarks.quant_speed report`` from llama-bench runs on one
H200 and its 16-vCPU host (benchmarks/results/quant_speed.md): mainline's types as llama.cpp ran
them, ik_llama.cpp's own (IQ2_K .. IQ6_K, IQ*_KS, IQ*_KT, Q6_0) as ik's llama-bench ran them, each
against Q4_K beside it. Types without a row (ternary types, ik's CPU-only _R4/_R8 repacks) price
as :data:`FALLBACK_TYPE`.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import ClusterError

_FILE = "weight_types.toml"
_WHERE = f"omni_place/data/{_FILE}"
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "type": str, "gpu_decode_flops": (int, float), "gpu_prompt": (int, float), "cpu_decode_share": (int, float),
}
#: the SIMD a CPU build of llama.cpp runs its kernels with (a native build: the CPU's best; a
#: portable one, e.g. GGML_NATIVE=OFF: AVX2): each picks its own kernels per type (ggml/src/ggml-cpu/
#: arch/x86/quants.c, repack.cpp), and their speeds differ by up to 1.8x (benchmarks/results/cpu_prompt.md)
CPU_SIMD = ("avx2", "avx512")
#: the CPU flags (/proc/cpuinfo) each needs, the widest first: ggml's AVX512 build needs F, BW, VL
#: (ggml/src/ggml-cpu/CMakeLists.txt GGML_AVX512), its AVX2 build AVX2, FMA, F16C
_SIMD_FLAGS = {"avx512": {"avx512f", "avx512bw", "avx512vl"}, "avx2": {"avx2", "fma", "f16c"}}


def cpu_simd(flags: Iterable[str]) -> str | None:
    """The SIMD a native build of llama.cpp runs on a CPU with these flags (None: neither, e.g. ARM)."""
    have = set(flags)
    return next((simd for simd, need in _SIMD_FLAGS.items() if need <= have), None)


#: columns a row may leave out: the CPU's prompt kernels, mainline's (over both SIMD builds, then each
#: build's) then ik_llama.cpp's (unmeasured for the type: Q4_K's time by the same kernels), and ik's
#: decode where its kernel is not mainline's
CPU_KERNEL_COLUMNS = ("cpu_prompt", "cpu_expert_prompt", *(f"{simd}_{c}" for simd in CPU_SIMD
                                                           for c in ("cpu_prompt", "cpu_expert_prompt")),
                      "ik_cpu_prompt", "ik_cpu_expert_prompt", "ik_cpu_decode_share")
_OPTIONAL: dict[str, type | tuple[type, ...]] = {c: (int, float) for c in CPU_KERNEL_COLUMNS}
#: ik_llama.cpp's CPU MUL_MAT_ID runs each expert's tokens through its GEMM, faster per FLOP the more
#: of them a ubatch gives it: its expert columns hold at IK_EXPERT_TOKENS tokens per expert (ubatch
#: 512, 128 experts of 8), and time per FLOP goes as tokens^-IK_EXPERT_TOKENS_EXP within the measured
#: 16-128 (an EPYC 0.21, a Xeon 0.34; the EPYC flat from 8 to 16: benchmarks/results/cpu_prompt.md).
#: Mainline's is flat.
IK_EXPERT_TOKENS = 32.0
IK_EXPERT_TOKENS_EXP = 0.27
_IK_EXPERT_TOKENS_RANGE = (16.0, 128.0)


def ik_expert_time_scale(tokens_per_expert: float) -> float:
    """ik_llama.cpp's CPU expert time per FLOP at ``tokens_per_expert`` relative to its columns'."""
    lo, hi = _IK_EXPERT_TOKENS_RANGE
    return float((min(max(tokens_per_expert, lo), hi) / IK_EXPERT_TOKENS) ** -IK_EXPERT_TOKENS_EXP)


#: a routed expert's CPU time per FLOP also grows as the expert narrows, in both engines: MUL_MAT_ID
#: gathers each expert's tokens and runs its products per expert, a cost per token and input row
#: beside the expert's width of work. Time as (1 + W / n_ff_exp), W = CPU_EXPERT_WIDTH_ROWS, relative to
#: CPU_EXPERT_WIDTH's (moe15's, where cpu_moe_compute_eff was fitted): the share of the dense rate
#: they needed was 0.33-0.39 at 256 wide, 0.41-0.46 at 768, 0.46-0.51 at 2048 on a Xeon, both
#: engines (benchmarks/results/cpu_prompt.md, shape sweep)
CPU_EXPERT_WIDTH = 768
CPU_EXPERT_WIDTH_ROWS = 110.0


def cpu_expert_width_scale(n_ff_exp: int) -> float:
    """The CPU's routed-expert time per FLOP at experts ``n_ff_exp`` wide relative to CPU_EXPERT_WIDTH's
    (1 where the width is unknown)."""
    if n_ff_exp <= 0:
        return 1.0
    return (1 + CPU_EXPERT_WIDTH_ROWS / n_ff_exp) / (1 + CPU_EXPERT_WIDTH_ROWS / CPU_EXPERT_WIDTH)


def cpu_expert_time_scale(n_ff_exp: int, tokens_per_expert: float, ik: bool) -> float:
    """The CPU's routed-expert time per FLOP relative to the columns': the experts' width, and with
    ik_llama.cpp's kernels (``ik``) the tokens a ubatch gives each."""
    return cpu_expert_width_scale(n_ff_exp) * (ik_expert_time_scale(tokens_per_expert) if ik else 1.0)


#: the row of types the table lacks, and the type every other row is relative to
FALLBACK_TYPE = "Q4_K"
#: the decode kernels' rate is at least this many FLOPs per byte of a GPU's bandwidth: the H200's
#: (989.5 TFLOPS x its MMQ share 0.174 / 4.8 TB/s = 35.9), the most kernel-bound GPU measured. Where
#: ``fp16_tflops`` is no tensor-core figure (Pascal: FP32, MMQ on dp4a) the MMQ rate understates it.
KERNEL_FLOPS_PER_BYTE = 35.9
#: decode on a GPU without flash attention: extra fixed time per layer, as a share of the row's
#: ``layer_us`` (the softmax and its copies run as separate kernels; benchmarks/results/quant_speed.md)
FA_OFF_LAYER_SHARE = 0.37


@dataclass(frozen=True)
class WeightTypeSpeed:
    """Kernel speed of one ggml weight type (``[[type]]`` in ``data/weight_types.toml``).

    Attributes:
        gpu_decode_flops: the GPU matrix-vector kernel's work per weight, in FLOPs at the GPU's
            MMQ rate (0: memory-bound on every GPU measured).
        gpu_prompt: MMQ time per FLOP relative to Q4_K's.
        cpu_decode_share: the CPU's decode read rate of this type relative to Q4_K's.
        cpu_prompt: the CPU's prompt matmul (MUL_MAT) time per FLOP relative to Q4_K's, over
            both SIMD builds (a CPU whose build is unknown).
        cpu_expert_prompt: the same for routed experts (MUL_MAT_ID).
        avx2_cpu_prompt / avx2_cpu_expert_prompt, avx512_...: the same by one SIMD build's
            kernels (None: unmeasured, the mean's).
        ik_cpu_prompt / ik_cpu_expert_prompt: the same by ik_llama.cpp's kernels, relative to
            mainline's Q4_K (None: unmeasured, ik's Q4_K).
        ik_cpu_decode_share: ``cpu_decode_share`` by ik's kernels, where mainline's is bound by its
            compute (None: mainline's).
    """

    type: str
    gpu_decode_flops: float
    gpu_prompt: float
    cpu_decode_share: float
    cpu_prompt: float = 1.0
    cpu_expert_prompt: float = 1.0
    avx2_cpu_prompt: float | None = None
    avx2_cpu_expert_prompt: float | None = None
    avx512_cpu_prompt: float | None = None
    avx512_cpu_expert_prompt: float | None = None
    ik_cpu_prompt: float | None = None
    ik_cpu_expert_prompt: float | None = None
    ik_cpu_decode_share: float | None = None

    def cpu_decode(self, ik: bool) -> float:
        """The CPU's decode read rate relative to Q4_K's, by mainline's kernels or ik_llama.cpp's."""
        return self.ik_cpu_decode_share if ik and self.ik_cpu_decode_share is not None else self.cpu_decode_share

    def cpu_prompt_time(self, routed: bool, ik: bool, simd: str | None = None) -> float:
        """The CPU's prompt time per FLOP relative to mainline's dense (``routed``: expert) Q4_K, by
        mainline's kernels of the ``simd`` build (:data:`CPU_SIMD`; None: unknown) or
        ik_llama.cpp's (``ik``; measured on AVX-512)."""
        column = "cpu_expert_prompt" if routed else "cpu_prompt"
        if not ik:
            own = getattr(self, f"{simd}_{column}") if simd in CPU_SIMD else None
            return own if own is not None else getattr(self, column)
        own = getattr(self, f"ik_{column}")
        if own is None:  # unmeasured: ik's Q4_K, else mainline's
            q4_k = weight_type_speeds()[FALLBACK_TYPE]
            return 1.0 if q4_k is self else q4_k.cpu_prompt_time(routed, ik, simd)
        return own


@dataclass(frozen=True)
class KernelWork:
    """What a group of weights costs the kernels: :meth:`add` sums tensors."""

    gpu_decode_flops: float = 0.0  # decode work on a GPU, FLOPs at its MMQ rate
    cpu_decode_bytes: float = 0.0  # bytes the CPU reads in the time it reads that many bytes of Q4_K
    prompt_flops: float = 0.0  # per prompt token: 2 FLOPs per weight, in Q4_K's MMQ time
    cpu_prompt_flops: float = 0.0  # the same in the CPU's Q4_K time (routed: as experts; ik: its kernels')

    def add(self, type_name: str, n_elements: int, n_bytes: int, *, routed: bool = False,
            ik_cpu: bool = False, simd: str | None = None) -> KernelWork:
        s = weight_type_speed(type_name)
        return KernelWork(self.gpu_decode_flops + n_elements * s.gpu_decode_flops,
                          self.cpu_decode_bytes + n_bytes / s.cpu_decode(ik_cpu),
                          self.prompt_flops + 2.0 * n_elements * s.gpu_prompt,
                          self.cpu_prompt_flops + 2.0 * n_elements * s.cpu_prompt_time(routed, ik_cpu, simd))

    def plus(self, other: KernelWork) -> KernelWork:
        return KernelWork(self.gpu_decode_flops + other.gpu_decode_flops,
                          self.cpu_decode_bytes + other.cpu_decode_bytes, self.prompt_flops + other.prompt_flops,
                          self.cpu_prompt_flops + other.cpu_prompt_flops)

    def scaled(self, factor: float) -> KernelWork:
        return KernelWork(self.gpu_decode_flops * factor, self.cpu_decode_bytes * factor, self.prompt_flops * factor,
                          self.cpu_prompt_flops * factor)


def kernel_work(tensors: Iterable[tuple[str, int, int]]) -> KernelWork:
    """The summed :class:`KernelWork` of (type name, elements, bytes) triples."""
    work = KernelWork()
    for type_name, n_elements, n_bytes in tensors:
        work = work.add(type_name, n_elements, n_bytes)
    return work


@functools.cache
def weight_type_speeds() -> dict[str, WeightTypeSpeed]:
    """The rows by ggml type name (upper case), read and validated once.

    Raises:
        ClusterError: the shipped table is malformed (a packaging bug).
    """
    ref = resources.files("omni_place") / "data" / _FILE
    try:
        doc = tomllib.loads(ref.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ClusterError(f"{_WHERE}: cannot read the weight-type table: {err}",
                           hint="reinstall omni_place; the package data is damaged") from None
    rows: dict[str, WeightTypeSpeed] = {}
    fields = {**_FIELDS, **_OPTIONAL}
    for i, entry in enumerate(doc.get("type", [])):
        if not set(_FIELDS) <= set(entry) <= set(fields) or any(
                not isinstance(v, fields[k]) or isinstance(v, bool) for k, v in entry.items()):
            raise ClusterError(f"{_WHERE}: [[type]] #{i + 1} needs {sorted(_FIELDS)} (and may have "
                               f"{sorted(_OPTIONAL)}) with their types")
        row = WeightTypeSpeed(type=entry["type"].upper(), **{k: float(v) for k, v in entry.items() if k != "type"})
        if min(row.gpu_prompt, row.cpu_decode_share, *(entry.get(c, 1) for c in CPU_KERNEL_COLUMNS)) <= 0 \
                or row.gpu_decode_flops < 0 or row.type in rows:
            raise ClusterError(f"{_WHERE}: [[type]] #{i + 1}: factors must be positive and each type appear once")
        rows[row.type] = row
    if FALLBACK_TYPE not in rows:
        raise ClusterError(f"{_WHERE}: no row for {FALLBACK_TYPE}")
    return rows


def weight_type_speed(type_name: str) -> WeightTypeSpeed:
    """The row of a ggml type (F32 weights, norms and routers, read as F16), else Q4_K's."""
    rows = weight_type_speeds()
    key = "F16" if type_name.upper() == "F32" else type_name.upper()
    return rows.get(key, rows[FALLBACK_TYPE])
