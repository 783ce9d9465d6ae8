"""Compute buffers: the scratch memory llama.cpp's scheduler reserves per backend.

The engine sizes these buffers by allocating its worst-case graph (``src/llama-context.cpp``
``sched_reserve``: a prompt batch of ``n_tokens = min(n_ctx, n_ubatch)`` tokens, all of them
outputs) with ggml's graph allocator (``ggml/src/ggml-alloc.c``), which reuses a tensor's memory
once its last consumer ran. Each backend's buffer is therefore a *peak*, not a sum: the highest
address the allocator reached over the part of the graph that backend runs.

:mod:`.compute_graph` rebuilds that graph per architecture and :mod:`.compute_replay` schedules
and allocates it: a layer split over any devices (CUDA GPUs, RPC servers) beside the CPU gives
every backend's buffer from one graph (:attr:`ComputeEstimate.split_replay`, for
``SPLIT_CHECKED`` architectures; the planner prices each layer split with it, pipelined or not), and
its one-device cases serve the rest: the first GPU's op-offload buffer and the host's beside one
CUDA device (:attr:`~ComputeEstimate.replay`, :attr:`~ComputeEstimate.host_replay`), the CPU
backend running a CPU-only load and an RPC server running every layer and the head
(:attr:`~ComputeEstimate.cpu_replay`, :attr:`~ComputeEstimate.rpc_replay`), and the ``graph_*``
features, one per CUDA device role. Beside it, every term of a
phase of the graph is ``n_tokens`` times a width from the hyper-parameters (:func:`features`),
so a phase's peak is linear in per-token widths and the buffer a maximum of such pieces. Which
pieces, with what multiplicity, is fitted per device role and backend from the engine's own
``compute buffer size`` lines over random model shapes, contexts and placements
(``benchmarks/compute_sweep.py`` records them with no-alloc dry runs; ``benchmarks/compute_fit.py``
picks and fits the pieces into ``data/compute_model.json`` and reports the error on shapes the
fit did not see).

Roles (``ROLES``): ``layers_output`` a device running layers and the output head (everything on
one device), ``host_base`` the CPU's buffer when accelerators run every layer, ``host_all`` /
``host_partial`` the CPU running every / some layers beside an accelerator, ``offload_none`` /
``gpu_partial`` / ``gpu_exps`` the first GPU receiving op-offloaded work of CPU-held weights
(none, some layers, routed experts on the CPU), whose peak includes copies of those weights
(``ggml-backend.cpp`` copies an offloaded op's weight into the split's inputs).
A device running layers without the output head is ``layers_output`` with the vocabulary width
set to zero and the graph replayed without the head.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .compute_graph import CPU_CHECKED, F32, REPLAYED, SPLIT_CHECKED, TRACE_CHECKED, Layout, Offload
from .compute_replay import cpu_peak_of_layers, layer_signatures, replay_key, split_peaks
from .hparams import ALTUP_STREAMS, PLE_WIDTH, arch_spec

if TYPE_CHECKING:
    from .model import ModelProfile

PIPELINE_COPIES = 4  # GGML_SCHED_MAX_COPIES: input copies kept when the engine pipelines
# (a layout, whether the graph has the output head) -> every backend's buffer: the devices', the CPU's
SplitReplay = Callable[[Layout, bool], tuple[int, ...]]

# Per-token widths, in F32 elements (bytes / 4 / n_tokens); ``inv_tokens`` carries constants.
FEATURES = ("inv_tokens", "embd", "ff", "q", "kv", "mla", "moe", "moe_embd", "n_expert", "shexp", "vocab",
            "mask", "kq", "indexer", "swa_mask", "kv_cast", "cpu_weight", "kv_layer",
            "graph_all", "graph_layers", "graph_none", "graph_partial", "graph_exps")
# ``graph_*``: the CUDA buffer of the replayed graph (compute_graph.py) of a device running every
# layer and the output head (``all``), the layers only, or the op-offloaded work of host-held
# weights: of everything (``none``), of the layers but the last (``partial``), of the experts
ROLES = ("layers_output", "host_base", "host_all", "host_partial", "offload_none", "gpu_partial", "gpu_exps")
_VOCAB = FEATURES.index("vocab")
_ALL, _LAYERS = FEATURES.index("graph_all"), FEATURES.index("graph_layers")
_CPU_WEIGHT = FEATURES.index("cpu_weight")
# the device role each graph feature prices (the fit uses it for the CUDA roles)
GRAPH_OF_ROLE = {"layers_output": "graph_all", "offload_none": "graph_none", "gpu_partial": "graph_partial",
                 "gpu_exps": "graph_exps"}


def batch_tokens(n_ctx: int, n_ubatch: int) -> int:
    """Tokens of the worst-case graph the engine reserves: ``min(n_ctx, n_ubatch)``, the context
    as asked for (llama_context caps n_batch by it before padding the cache to 256 cells: ``-c 544
    -ub 4096`` reserves 544 tokens over 768 cells)."""
    return max(1, min(n_ctx, n_ubatch))


def features(model: ModelProfile, *, n_ctx: int, n_ubatch: int, flash_attn: bool, n_seq: int = 1,
             kv_quantized: bool = False, kv_layer_bytes: int = 0, replayed: bool = True,
             split: SplitReplay | None = None) -> np.ndarray:
    """The per-token widths the compute peaks are linear in (``cpu_weight`` left 0: it depends
    on the placement, see :meth:`ComputeEstimate.offload_bytes`); ``replayed=False`` leaves the
    ``graph_*`` widths 0 without replaying (the widths-only fits weigh them 0). ``split``: this
    context's :func:`replayer`, to share its replays."""
    hp = model.hparams
    n_tokens = batch_tokens(n_ctx, n_ubatch)
    n_kv = model.kv_cells(n_ctx, n_seq)
    layers = range(hp.n_layer_kv or hp.n_layer)
    attending = [il for il in layers if hp.n_head_kv[il]]  # a hybrid's recurrent layers attend to nothing
    n_head = max((hp.n_head[il] for il in attending), default=0)
    q_width = max((hp.n_head[il] * hp.dim_k(il) for il in attending), default=0)  # the widest layer's
    k_width = max((hp.n_head_kv[il] * hp.dim_k(il) for il in attending), default=0)
    kv_width = max((hp.n_head_kv[il] * (hp.dim_k(il) + hp.dim_v(il)) for il in attending), default=0)
    mask_elt = 0.5 if flash_attn else 1.0  # F16 mask with flash attention, F32 without (llama-graph.cpp)

    def width(tensor_name: str) -> int:  # rows of a layer matrix (ggml ne1), the widest over layers
        return max((t.info.shape[1] for t in model.tensors if t.name.endswith(tensor_name) and len(t.info.shape) >= 2),
                   default=0)

    # the dense FFN's width where a layer has one (MoE GGUFs carry feed_forward_length regardless)
    ff, shexp = width(".ffn_up.weight"), width(".ffn_up_shexp.weight")

    swa_cells = 0
    if any(hp.is_swa) and hp.n_swa:
        swa_cells = min(n_kv, hp.n_swa + n_ubatch)
    moe = hp.n_expert > 0
    f = np.zeros(len(FEATURES))
    f[:] = [
        1.0 / n_tokens,
        hp.n_embd,
        ff,
        0 if hp.is_mla else q_width,
        0 if hp.is_mla else k_width,
        n_head * (hp.kv_lora_rank + hp.n_rot) if hp.is_mla else 0,
        hp.n_expert_used * hp.n_ff_exp if moe else 0,
        hp.n_expert_used * hp.n_embd if moe else 0,
        hp.n_expert,
        shexp,
        hp.n_vocab,
        n_kv * mask_elt if attending else 0.0,  # a graph input only where a layer attends
        0 if flash_attn else n_kv * n_head,
        # the DSA indexer's scores and top-k mask over the cache (src/models/deepseek32.cpp); its
        # heads are reduced as they go (V3.2's 64 heads measured ~1x, not 64x, the 4 of the sweep)
        n_kv if hp.indexer_head_size else 0,
        swa_cells * mask_elt,
        # flash attention over a quantized cache: CUDA's F16 copies of the layer's K and V (per
        # token only by the fit; compute_graph.py places them exactly)
        n_kv * kv_width * 0.5 if flash_attn and kv_quantized else 0.0,
        0.0,
        kv_layer_bytes / F32 / n_tokens,
        *(graph_widths(model, n_tokens=n_tokens, n_kv=n_kv, n_ubatch=n_ubatch, n_seq=n_seq, flash_attn=flash_attn,
                       kv_quantized=kv_quantized, kv_layer_bytes=kv_layer_bytes, split=split)
          if replayed else [0.0] * 5),
    ]
    return f


def replayer(model: ModelProfile, *, n_tokens: int, n_kv: int, n_ubatch: int, n_seq: int, flash_attn: bool,
             kv_quantized: bool, kv_layer_bytes: int) -> SplitReplay:
    """compute_replay.split_peaks of this model and context, once per distinct replay
    (compute_replay.replay_key; the planner prices dozens of placements that differ only in how
    many layers' experts stay in host memory): every backend's buffer (the devices', then the
    CPU's) as a function of the layout and whether the graph has the output head."""
    hp = model.hparams
    n_kv_swa = model.swa_kv_cells(n_kv, n_ubatch, n_seq) if any(hp.is_swa) and hp.n_swa else n_kv
    signatures = layer_signatures(model)
    done: dict[tuple[object, ...], tuple[int, ...]] = {}

    def peaks(layout: Layout, with_output: bool) -> tuple[int, ...]:
        key = replay_key(model, signatures, layout, with_output)
        if key not in done:
            done[key] = split_peaks(model, n_tokens=n_tokens, n_kv=n_kv, n_kv_swa=n_kv_swa, flash_attn=flash_attn,
                                    kv_quantized=kv_quantized, kv_layer_bytes=kv_layer_bytes, layout=layout,
                                    with_output=with_output)
        return done[key]
    return peaks


def graph_widths(model: ModelProfile, *, n_tokens: int, n_kv: int, n_ubatch: int, n_seq: int, flash_attn: bool,
                 kv_quantized: bool, kv_layer_bytes: int, split: SplitReplay | None = None) -> list[float]:
    """The ``graph_*`` features: the replayed device buffer per device role, per token in F32 (0
    for an architecture it does not rebuild)."""
    hp = model.hparams
    if model.architecture not in REPLAYED:
        return [0.0] * 5
    n_layer = hp.n_layer_kv or hp.n_layer
    if split is None:
        split = replayer(model, n_tokens=n_tokens, n_kv=n_kv, n_ubatch=n_ubatch, n_seq=n_seq, flash_attn=flash_attn,
                         kv_quantized=kv_quantized, kv_layer_bytes=kv_layer_bytes)

    def peak(offload: Offload, with_output: bool = True) -> int:
        return split(offload.layout(hp.n_layer, "cuda"), with_output)[0]

    every = frozenset(range(n_layer))
    peaks = [peak(Offload()), peak(Offload(), False), peak(Offload(every, cpu_experts=True, cpu_output=True)),
             peak(Offload(every - {n_layer - 1})), peak(Offload(cpu_experts=True)) if hp.n_expert else 0]
    return [p / F32 / n_tokens for p in peaks]


@lru_cache(maxsize=None)
def fitted_pieces(replayed: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """backend class ("cuda", "cpu") -> role -> max-affine pieces (rows of FEATURES coefficients);
    ``replayed=False``: the pieces of widths only, for an architecture compute_graph does not rebuild."""
    raw: dict[str, Any] = json.loads(resources.files("omni_place.data").joinpath("compute_model.json").read_text())

    def pieces(fit: dict[str, Any]) -> np.ndarray:
        fit = fit if replayed else fit.get("widths_only", fit)
        return np.asarray(fit["pieces"], dtype=float) * fit["scale"]

    return {backend: {role: pieces(fit) for role, fit in roles.items()} for backend, roles in raw["backends"].items()}


#: the roles of a backend running layers, whose buffer holds a layer's live tensors
_LAYER_ROLES = ("layers_output", "host_all", "host_partial")


def mamba2_floor(model: ModelProfile, n_tokens: int) -> int:
    """A Mamba-2 layer's live tensors at its peak, 0 without one: the input projection (z, xBC and
    dt, kept until the gate reads z), the convolution's concat and output, the scan's output and its
    reshape, and the residual and normed input (src/models/mamba-base.cpp build_mamba2_layer; the
    engine's dry runs: a 3072-wide layer at 4096 tokens 675 MiB beside the CPU buffer's 692).
    The widths-only fit, which knows no such layer, priced that buffer at 300 MiB. Beside a parallel
    layer's mixer its attention's output waits to be added (src/models/falcon-h1.cpp:152-165)."""
    hp = model.hparams
    spec = arch_spec(model.architecture)
    if hp.ssm_d_state == 0 or spec.recurrent_interval or spec.kda or spec.wkv or not any(
            model.is_recurrent(il) for il in range(hp.n_layer)):
        return 0
    conv = hp.ssm_d_inner + 2 * hp.ssm_n_group * hp.ssm_d_state
    in_proj = hp.ssm_d_inner + conv  # z and xBC (and a dt a head: a few values)
    return F32 * n_tokens * (in_proj + 2 * conv + 2 * hp.ssm_d_inner + (3 if spec.parallel_ssm else 2) * hp.n_embd)


def replayed_layers_floor(model: ModelProfile, *, n_tokens: int, n_kv: int, flash_attn: bool, kv_quantized: bool,
                          kv_layer_bytes: int) -> int:
    """Kimi-Linear's MLA layers (their DeepSeek-style MoE) and output head replayed alone on the CPU,
    as compute_graph rebuilds deepseek2's: a floor of its buffer (0 for other architectures). Of the
    engine's CPU dry runs of 24 random shapes the widths alone read -26.5 .. +11.6 %, with this floor
    -8.2 .. +11.6 %; of 40 drawn after it -13.8 .. +30.9 % either way
    (benchmarks/results/compute_sweep_kimi_cpu*.jsonl; tests/test_hybrid_models.py)."""
    if not arch_spec(model.architecture).kda:
        return 0
    layers = [il for il in range(model.hparams.n_layer_kv) if not model.is_recurrent(il)]
    return cpu_peak_of_layers(model, layers, n_tokens=n_tokens, n_kv=n_kv, flash_attn=flash_attn,
                              kv_quantized=kv_quantized, kv_layer_bytes=kv_layer_bytes)


def altup_floor(model: ModelProfile, n_tokens: int) -> int:
    """A Gemma 3n layer's live tensors at its peak, 0 for other architectures: the larger of its
    AltUp phase (12 rows of the embedding: the four streams, their permuted copy and the
    prediction, src/models/gemma3n.cpp altup_predict / altup_correct) beside three copies of the
    per-layer inputs (build_inp_per_layer, project_per_layer_inputs), and its FFN (up, gate and the
    activation sparsity's temporaries, gaussian_topk, three rows of the FFN's width, beside 12 of
    the embedding, the predictions among them). Fitted to libllama's CPU dry runs of random shapes:
    the widths alone read -64.4 .. +6.6 % (40 runs), with this floor -23.7 .. +6.6 %; of 40 drawn
    after it -59.4 .. +8.4 % and -26.6 .. +9.3 %, the median error 5 %
    (benchmarks/results/compute_sweep_gemma3n_cpu*.jsonl; tests/test_kv_sharing.py)."""
    hp = model.hparams
    if not arch_spec(model.architecture).altup:
        return 0
    n_ff = max(hp.n_ff, default=0)
    per_layer = PLE_WIDTH * hp.n_layer
    return F32 * n_tokens * max(3 * ALTUP_STREAMS * hp.n_embd + 3 * per_layer, 3 * n_ff + 12 * hp.n_embd)


def msa_floor(model: ModelProfile, n_tokens: int, n_kv: int, flash_attn: bool = True) -> int:
    """MiniMax-M3's MSA block mask at cell granularity, 0 for other architectures and without flash
    attention (the engine then runs dense attention, src/models/minimax-m3.cpp:238-244): a ubatch's
    tokens x cells x KV heads in F32, twice (its gather and the transposed copy, live together,
    src/models/minimax-m3.cpp:505-509), beside the KQ mask's F32 copy that every sparse layer adds
    to it (tokens x cells, made once before the layers, :295). Of libllama's CPU dry runs of random
    shapes with flash attention (which MSA needs) the widths alone read -90.3 .. +7.7 % (19 runs),
    with the two copies -30.9 .. +7.7 %, with the mask's copy too -17.2 .. +7.7 %; of 26 drawn after
    the first floor -92.7 .. +16.4 %, -32.1 .. +16.4 % and -20.7 .. +16.4 %
    (benchmarks/results/compute_sweep_minimax_cpu*.jsonl; tests/test_hybrid_models.py). The rest of
    what MSA holds is not modelled: `plan` notes the estimate."""
    if not model.msa_indexer or not flash_attn:
        return 0
    return F32 * n_tokens * n_kv * (2 * max(model.hparams.n_head_kv) + 1)


def wkv_floor(model: ModelProfile, n_tokens: int) -> int:
    """An RWKV-7 layer's live tensors at its peak, 0 for other architectures: its time mix's
    token-shifted inputs and projections, 19 rows of the embedding (src/models/rwkv7-base.cpp
    build_rwkv7_time_mix: six lerped inputs, r, w, k, v, a, g, the wkv7 output and its state), or its
    channel mix's key beside 14 of them. Fitted to libllama's CPU dry runs of random shapes: the widths
    alone read -85.6 .. +8.3 % (24 runs), with this floor -0.4 .. +8.3 %; of 24 drawn after it -89.9 ..
    +7.3 % and -0.7 .. +10.4 % (benchmarks/results/compute_sweep_rwkv7_cpu*.jsonl; tests/test_hybrid_models.py)."""
    if not arch_spec(model.architecture).wkv:
        return 0
    hp = model.hparams
    return F32 * n_tokens * max(19 * hp.n_embd, max(hp.n_ff, default=0) + 14 * hp.n_embd)


def estimate_note(model: ModelProfile, flash_attn: bool) -> str | None:
    """What `plan` says of a compute estimate that is not the engine's graph replayed and that the
    widths' fit did not see: RWKV-7's time mix, a hybrid's widths, MiniMax-M3's MSA mask, Gemma 3n's
    AltUp streams (None for the rest)."""
    arch, spec = model.architecture, arch_spec(model.architecture)
    verify = "check a GPU filled to its last GiB with the engine (omni-place verify)"
    if spec.wkv:
        return (f"{arch}'s compute buffers are estimated from its widths and its time mix's live rows, not its "
                f"graph: on the engine's CPU dry runs within -1 .. +11 % (compute.wkv_floor); {verify}")
    if arch not in REPLAYED and any(model.is_recurrent(il) for il in range(model.n_layer)):
        return (f"{arch}'s compute buffers are estimated from its widths, not its graph: on the engine's CPU dry "
                f"runs of hybrids up to a quarter below the engine's (benchmarks/results/hybrid_speed.md); {verify}")
    if model.msa_indexer:
        return (f"{arch}'s compute buffers are estimated from its widths and its MSA block mask, not its graph: on "
                f"the engine's CPU dry runs up to a fifth below the engine's (compute.msa_floor); {verify}"
                + ("" if flash_attn else "; without flash attention the engine runs its attention dense, its output "
                   "possibly degraded (src/models/minimax-m3.cpp:238-244)"))
    if spec.altup:
        return (f"{arch}'s compute buffers are estimated from its widths and its AltUp streams, not its graph: on "
                "the engine's CPU dry runs up to a quarter below the engine's (compute.altup_floor); its prompt on "
                "a GPU ran at a third of the priced speed on an H100 (AltUp's copies are not priced: "
                f"benchmarks/results/hybrid_speed.md); {verify}")
    return None


def _peak(pieces: np.ndarray, f: np.ndarray, n_tokens: int) -> int:
    return int(F32 * n_tokens * float(np.max(pieces @ f)))


@dataclass(frozen=True)
class ComputeEstimate:
    """Per-role compute-buffer bytes for one model and context (see the module doc).

    ``offload_*`` are (base, per-byte) pairs per piece: the peak with a copy of a CPU-held weight
    of ``w`` bytes is ``max(base + slope * w)``, evaluated by :meth:`offload_bytes`."""

    n_tokens: int
    backend_roles: dict[str, dict[str, int]]  # backend class -> role -> bytes (no offload term)
    layers_only: dict[str, int]  # backend class -> a device running layers without the output head
    offload: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    mask: int  # bytes of one copy of the KQ mask (pipeline parallelism keeps several)
    # the CUDA buffer of one device running every layer not held by the host, replayed for an
    # exact placement (Offload, with_output); None where the replay is not trace-checked
    replay: Callable[[Offload, bool], int] | None = field(default=None, compare=False, repr=False)
    # the host's buffer beside that one device (the CUDA_Host line), from the same replay
    host_replay: Callable[[Offload, bool], int] | None = field(default=None, compare=False, repr=False)
    # replayed where checked against the engine (compute_graph.CPU_CHECKED): the CPU backend's
    # buffer running the whole graph alone, and an RPC server's running every layer and the head
    cpu_replay: Callable[[], int] | None = field(default=None, compare=False, repr=False)
    rpc_replay: Callable[[], int] | None = field(default=None, compare=False, repr=False)
    # every backend's buffer of a layer split with no pipeline parallelism, replayed where checked
    # (compute_graph.SPLIT_CHECKED): (Layout, with_output) -> the devices' buffers, then the CPU's
    split_replay: SplitReplay | None = field(default=None, compare=False, repr=False)

    def device_bytes(self, holds_layers: bool, holds_output: bool, copies: int = 1, backend: str = "cuda",
                     whole: bool = False) -> int:
        """An accelerator's buffer: the peak of the layers (and output head) it runs; ``copies`` > 1
        under pipeline parallelism, where the scheduler keeps that many copies of its inputs.
        ``whole``: it runs every layer and the output head (an RPC device's is then replayed)."""
        if not (holds_layers or holds_output):
            return 0
        if backend == "rpc" and whole and copies == 1 and self.rpc_replay is not None:
            return self.rpc_replay()
        cls = "cuda" if backend == "cuda" else "cpu"
        peak = self.backend_roles[cls]["layers_output"] if holds_output else self.layers_only[cls]
        return peak + self.mask * (copies - 1)

    def host_bytes(self, role: str = "host_base", copies: int = 1) -> int:
        """The CPU's buffer beside accelerators: ``host_base`` (no layers on the CPU),
        ``host_partial`` (some), ``host_all`` (every layer and the output head)."""
        return self.backend_roles["cuda"][role] + self.mask * (copies - 1)

    def cpu_only_bytes(self) -> int:
        """The CPU backend running everything (no accelerator in the placement): the replayed graph
        where it was checked against the engine's allocations, else the fitted pieces."""
        return self.cpu_replay() if self.cpu_replay is not None else self.backend_roles["cpu"]["layers_output"]

    def offload_bytes(self, role: str, cpu_weight_bytes: int) -> int:
        """The first GPU's buffer when it runs op-offloaded work whose largest CPU-held weight has
        ``cpu_weight_bytes`` (role ``offload_none``, ``gpu_partial`` or ``gpu_exps``; the replayed
        graph copies the model's own weights of the role, the widths' pieces price this one); with
        no weight to copy the scheduler offloads nothing and the GPU holds its own graph's peak."""
        if cpu_weight_bytes <= 0:
            return self.backend_roles["cuda"]["layers_output"]
        base, slope = self.offload["cuda"][role]
        return int(float(np.max(base + slope * cpu_weight_bytes)))

    def offload_extra(self, cpu_weight_bytes: int) -> int:
        """What op offload adds on the first GPU at most, over its own layers and output head: the
        bound the solver adds before the exact re-pricing picks the placement's role."""
        own = self.backend_roles["cuda"]["layers_output"]
        return max(0, max(self.offload_bytes(role, cpu_weight_bytes) for role in self.offload["cuda"]) - own)

    def to_dict(self) -> dict[str, Any]:
        return {"n_tokens": self.n_tokens, "mask": self.mask, "layers_only": dict(self.layers_only),
                **{f"{cls}_{role}": b for cls, roles in self.backend_roles.items() for role, b in roles.items()}}


def compute_buffer_estimate(
    model: ModelProfile,
    *,
    n_ctx: int,
    n_ubatch: int = 512,
    flash_attn: bool = True,
    n_seq: int = 1,
    kv_quantized: bool = False,
    kv_layer_bytes: int = 0,
    replayed: bool = True,
) -> ComputeEstimate:
    """The compute buffers llama.cpp reserves for ``n_ubatch`` and ``n_ctx``, per device role;
    ``replayed=False``: from the widths-only fit (as for an architecture the graph does not rebuild)."""
    replayed = replayed and model.architecture in REPLAYED
    n_tokens = batch_tokens(n_ctx, n_ubatch)
    split = replayer(model, n_tokens=n_tokens, n_kv=model.kv_cells(n_ctx, n_seq), n_ubatch=n_ubatch, n_seq=n_seq,
                     flash_attn=flash_attn, kv_quantized=kv_quantized,
                     kv_layer_bytes=kv_layer_bytes) if replayed else None
    f = features(model, n_ctx=n_ctx, n_ubatch=n_ubatch, flash_attn=flash_attn, n_seq=n_seq,
                 kv_quantized=kv_quantized, kv_layer_bytes=kv_layer_bytes, replayed=replayed, split=split)
    no_vocab = f.copy()  # a device running layers without the output head
    no_vocab[_VOCAB] = 0.0
    no_vocab[_ALL] = f[_LAYERS]
    roles: dict[str, dict[str, int]] = {}
    layers_only: dict[str, int] = {}
    offload: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    mask = int(F32 * n_tokens * f[FEATURES.index("mask")])
    layer_floor = mamba2_floor(model, n_tokens)
    n_kv = model.kv_cells(n_ctx, n_seq)
    layer_floor = max(layer_floor, msa_floor(model, n_tokens, n_kv, flash_attn), altup_floor(model, n_tokens),
                      wkv_floor(model, n_tokens))
    floor = max(layer_floor + mask if layer_floor else 0,  # the KQ mask, a graph input, lives throughout
                replayed_layers_floor(model, n_tokens=n_tokens, n_kv=n_kv, flash_attn=flash_attn,
                                      kv_quantized=kv_quantized, kv_layer_bytes=kv_layer_bytes))
    for cls, fits in fitted_pieces(replayed).items():
        roles[cls] = {role: max(_peak(p, f, n_tokens), floor if role in _LAYER_ROLES else 0)
                      for role, p in fits.items()}
        layers_only[cls] = max(_peak(fits["layers_output"], no_vocab, n_tokens), floor)
        # cpu_weight is bytes / (F32 * n_tokens), so its coefficient is already per byte of the buffer
        offload[cls] = {role: (F32 * n_tokens * (p @ f), p[:, _CPU_WEIGHT].copy())
                        for role, p in fits.items() if role.startswith(("offload", "gpu_"))}
    replay = host_replay = cpu_replay = rpc_replay = split_replay = None
    arch, n_layer = model.architecture, model.hparams.n_layer
    if split is not None:  # the architecture is replayed (REPLAYED); each use where it was checked
        if arch in TRACE_CHECKED:  # one CUDA device beside the host

            def replay(offload: Offload, with_output: bool) -> int:
                return split(offload.layout(n_layer, "cuda"), with_output)[0]

            def host_replay(offload: Offload, with_output: bool) -> int:
                return split(offload.layout(n_layer, "cuda"), with_output)[1]
        if arch in CPU_CHECKED:
            def cpu_replay() -> int:
                return split(Layout((), (0,) * n_layer), True)[0]

            def rpc_replay() -> int:
                return split(Layout(("rpc",), (0,) * n_layer), True)[0]
        if arch in SPLIT_CHECKED:
            split_replay = split
    return ComputeEstimate(n_tokens=n_tokens, backend_roles=roles, layers_only=layers_only, offload=offload,
                           mask=mask, replay=replay, host_replay=host_replay, cpu_replay=cpu_replay,
                           rpc_replay=rpc_replay, split_replay=split_replay)
