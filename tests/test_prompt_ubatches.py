"""A llama-bench prompt test runs in ubatches, the last one shorter, and each pays the per-ubatch
costs (op offload's weight copies above all): attention.prompt_ubatches, placement.over_prompt_test,
against the session-35 H200 runs (benchmarks/results/calibrate_35), where `calibrate --run` measured
the same placement at -p 1280 / 1088 (two full ubatches and a short one) that the held-out matrix
measured at -p 512."""
from __future__ import annotations

import statistics
import sys
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omni_place.attention import kq_mask_work, prompt_ubatch_sample, prompt_ubatches
from omni_place.bench.calibrate import predict_point
from omni_place.bench.llamabench import import_text
from omni_place.cost import Context, CostModel, SpeedParams
from omni_place.devices import resolve_cluster
from omni_place.model import load_model
from omni_place.placement import Placement, on_cpu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.speed_models import write_speed_model  # noqa: E402

RES = ROOT / "benchmarks" / "results" / "calibrate_35"


def test_a_prompt_splits_into_batches_then_ubatches() -> None:
    assert prompt_ubatches(1280, 2048, 512) == {512: 2, 256: 1}
    assert prompt_ubatches(3000, 2048, 512) == {512: 5, 440: 1}  # 2048 = 4 x 512, then 952 = 512 + 440
    assert prompt_ubatches(4096, 2048, 512) == {512: 8}
    assert prompt_ubatches(128, 2048, 512) == {128: 1}
    assert prompt_ubatches(0, 2048, 512) == {}


def test_calls_list_their_ubatches_at_their_depths() -> None:
    """(count, tokens, depth, tokens of the one before it in its call)."""
    assert prompt_ubatch_sample(2048, 2048, 512, 0) == [(1, 512, 0, 0), (1, 512, 512, 512), (1, 512, 1024, 512),
                                                        (1, 512, 1536, 512)]
    assert prompt_ubatch_sample(1280, 1024, 512, 100) == [(1, 512, 100, 0), (1, 512, 612, 512), (1, 256, 1124, 0)]
    assert prompt_ubatch_sample(0, 2048, 4096, 7) == [(1, 4096, 7, 0)]  # a server's prompt: one full call
    assert prompt_ubatch_sample(2048, 2048, 512, 0, limit=2) == [(2, 512, 0, 0), (2, 512, 1024, 512)]


@given(st.integers(0, 1 << 16), st.integers(1, 1 << 12), st.integers(1, 1 << 12), st.integers(0, 1 << 16))
def test_the_calls_agree_with_the_ubatch_sizes(n_prompt: int, n_batch: int, n_ubatch: int, depth: int) -> None:
    flat = prompt_ubatch_sample(n_prompt, n_batch, n_ubatch, depth, limit=1 << 20)
    assert all(count == 1 for count, *_ in flat)
    if n_prompt:
        sizes: dict[int, int] = {}
        for _, n, _, _ in flat:
            sizes[n] = sizes.get(n, 0) + 1
        assert sizes == prompt_ubatches(n_prompt, n_batch, n_ubatch)
    at = depth
    for _, n, d, before in flat:
        assert d == at and before in (0, n_ubatch)
        at += n


@given(st.integers(1, 1 << 31), st.integers(1, 1 << 16), st.integers(1, 1 << 16))
def test_a_long_prompt_in_tiny_ubatches_is_sampled(n_prompt: int, n_batch: int, n_ubatch: int) -> None:
    sample = prompt_ubatch_sample(n_prompt, n_batch, n_ubatch, 0)
    assert len(sample) <= 4096
    assert sum(count for count, *_ in sample) == len(prompt_ubatch_sample(min(n_prompt, 1 << 14), n_batch, n_ubatch, 0,
                                                                         limit=1 << 20)) or n_prompt > 1 << 14


def test_the_mask_work_follows_each_engine() -> None:
    """Mainline checks a mask's first row whole and then rechecks ubatch + 32 (+ window) cells a row,
    copying the row before it (src/llama-kv-cache.cpp set_input_kq_mask_impl); ik_llama.cpp checks
    every cell, over its threads where the mask is large (src/llama.cpp llama_set_inputs)."""
    assert kq_mask_work(2048, 2048, 0, True, True) == (2048 + 2047 * 2048, 2048 * 2048 * 2)
    assert kq_mask_work(512, 33024, 0, True, True) == (33024 + 511 * 544, 512 * 33024 * 2)
    assert kq_mask_work(512, 1024, 512, False, True) == (1024 + 511 * 1024, 512 * 1024 * 4)  # window: all
    assert kq_mask_work(1, 33024, 0, True, True) == (33024, 33024 * 2)  # a decoded token: the first row
    assert kq_mask_work(512, 33024, 0, True, False, threads=8) == (512 * 33024 / 8, 512 * 33024 * 2)
    assert kq_mask_work(16, 33024, 0, True, False, threads=8) == (16 * 33024, 16 * 33024 * 2)  # small: one thread
    assert kq_mask_work(0, 256, 0, True, True) == (0.0, 0.0)


@given(st.integers(0, 1 << 20), st.integers(1, 1 << 14), st.integers(1, 1 << 14))
def test_the_ubatches_hold_every_prompt_token_once(n_prompt: int, n_batch: int, n_ubatch: int) -> None:
    n_batch = max(n_batch, n_ubatch)  # the engine's n_ubatch = min(n_batch, -ub)
    sizes = prompt_ubatches(n_prompt, n_batch, n_ubatch)
    assert sum(s * c for s, c in sizes.items()) == n_prompt
    assert all(0 < s <= n_ubatch for s in sizes)
    whole, rest = divmod(n_prompt, n_batch)  # each batch's ubatches, a shorter last one
    assert sum(sizes.values()) == whole * -(-n_batch // n_ubatch) + -(-rest // n_ubatch)


@pytest.fixture(scope="module")
def moe15(tmp_path_factory: pytest.TempPathFactory):
    return load_model(write_speed_model("moe15", tmp_path_factory.mktemp("hdr"), header_only=True))


def test_the_host_waits_only_for_what_the_gpu_does_not_hide(moe15) -> None:
    """Beside a GPU each call's first ubatch's host work is waited for, a later one's only beyond the
    device time before it (none: every ubatch's, as on a CPU). The engines' masks differ."""
    from omni_place.engines import dialect

    model, cluster = moe15, resolve_cluster(str(RES / "rig_b.toml"))
    assert cluster.gpus
    ctx = Context(ctx=4096, n_ubatch=512, n_batch=2048, n_prompt=2048)
    cm = CostModel(model, cluster, ctx)
    first = 512 * cm.params.prompt_token_s + cm.mask_s(512, 0)
    assert cm.mask_s(512, 0) > 0
    assert cm.prompt_host_s(1.0) == pytest.approx(first / 2048)  # a slow GPU hides the rest
    every = sum(512 * cm.params.prompt_token_s + cm.mask_s(512, d) for d in (0, 512, 1024, 1536))
    assert cm.prompt_host_s(0.0) == pytest.approx(every / 2048)
    ik = dialect("ik_llama.cpp").traits.context(ctx=4096, n_ubatch=512, n_batch=2048, n_prompt=2048)
    assert not ik.kq_mask_reuses_rows and dialect("llama.cpp").traits.context().kq_mask_reuses_rows
    threads = cluster.cpu.threads
    cells, size = 512 * 2048 / threads, 512 * 2048 * 2  # n_kv: 1536 + 512 cells, over the CPU's threads
    assert CostModel(model, cluster, ik).mask_s(512, 1536) == pytest.approx(
        cells * cm.params.mask_cell_s + size * cm.params.mask_byte_s)
    mainline = (2048 + 511 * 544) * cm.params.mask_cell_s + size * cm.params.mask_byte_s
    assert cm.mask_s(512, 1536) == pytest.approx(mainline)


def test_a_short_last_ubatch_costs_a_whole_ones_weight_copies(moe15) -> None:
    """Every expert on the CPU, streamed per ubatch: -p 1280 is three ubatches' copies for 2.5
    ubatches' tokens; -p 1024 (two whole ones) is priced as -p 512, and a test shorter than a
    ubatch is one ubatch of its own tokens."""
    cluster = resolve_cluster(str(RES / "rig_b.toml"))
    experts = tuple(on_cpu(("gate", "up", "down") if lc.has_experts else ()) for lc in moe15.layers)
    placement = Placement(("CUDA0",), ("CUDA0",) * moe15.n_layer, experts, "CUDA0")

    def pp(n_prompt: int) -> float:
        context = Context(ctx=n_prompt, n_ubatch=512, n_batch=2048, n_prompt=n_prompt)
        return CostModel(moe15, cluster, context).predict(placement).pp_tps

    full, tail = pp(1024), pp(1280)
    assert pp(512) == pytest.approx(full, rel=0.01)
    stream = CostModel(moe15, cluster, Context(ctx=1024, n_prompt=1024)).predict(placement).pp_breakdown
    assert stream["pcie_stream"] > 0.5 * sum(stream.values())  # the copies dominate ...
    assert 0.75 < tail / full < 0.9  # ... so 2.5 ubatches' tokens take nearly 3 ubatches' time
    assert pp(128) < 0.5 * full  # a whole ubatch's copies for a quarter of its tokens
    server = CostModel(moe15, cluster, Context(ctx=1280)).predict(placement)  # no test: whole ubatches
    assert server.pp_tps == pytest.approx(full, rel=0.01)


@pytest.mark.parametrize("model", ["moe15", "mla16"])
def test_the_same_placement_at_two_prompt_lengths_as_measured(tmp_path: Path, model: str) -> None:
    """`calibrate --run`'s cpu-experts run (-p 1280 / 1088, every routed expert in RAM) and the
    held-out `-ot exps=CPU` (-p 512), one placement, on one H200: the measured ratio (0.73 / 0.76)
    is what the ubatches give, not the 1.0 of pricing per full ubatch."""
    with tarfile.open(RES / "logs.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    prof = load_model(write_speed_model(model, tmp_path, header_only=True))
    cluster = resolve_cluster(str(RES / "rig_b.toml"))
    logs = tmp_path / "res"
    (long,) = [p for p in import_text((logs / "cal" / model / "2.cpu-experts.log").read_text(), prof, cluster).points
               if p.kind == "pp"]
    short = [p for r in (0, 1) for p in import_text(
        (logs / "res_b" / "logs" / f"{model}.h200-b.r{r}" / "llama.cpp.ot-exps.0.log").read_text(), prof,
        cluster).points if p.kind == "pp"]  # both rounds
    assert {p.placement for p in short} == {long.placement} and long.context.n_prompt > 1024
    assert {p.context.n_prompt for p in short} == {512}
    measured = long.measured / statistics.mean(p.measured for p in short)
    short = short[0]
    predicted = predict_point(long, SpeedParams()) / predict_point(short, SpeedParams())
    assert measured < 0.8
    assert predicted == pytest.approx(measured, rel=0.15)



def test_check_says_how_a_bench_prompt_runs(tmp_path: Path) -> None:
    """`check --tool bench` (evaluate) names a prompt's ubatches where one is short, not otherwise."""
    from omni_place.plan import evaluate

    header = str(write_speed_model("moe15", tmp_path, header_only=True))

    def notes(argv: list[str]) -> list[str]:
        plan = evaluate(header, str(RES / "rig_b.toml"), argv, tool="bench")
        return [a for a in plan.assumptions if "ubatches" in a]

    assert notes(["-p", "1280", "-n", "0", "-ngl", "99"]) == [
        "-p 1280 runs as ubatches of 2 x 512 + 1 x 256 tokens, each paying the per-ubatch costs (op offload's "
        "weight copies, where it copies) in full"]
    assert notes(["-p", "1024", "-n", "0", "-ngl", "99"]) == notes(["-p", "100", "-ngl", "99"]) == []


@pytest.mark.parametrize("shape", ["cpu_moe", "cpu_dense"])
def test_a_cpu_only_prompt_of_a_short_last_ubatch_as_measured(tmp_path: Path, shape: str) -> None:
    """Where the CPU computes the prompt no weights are copied per ubatch, and a short last ubatch
    costs its tokens' share: llama-bench -p 512 / 640 / 1024 (-t 2, mainline's AVX-512 build, the
    2-vCPU Xeon of session 35; calibrate_35/cpu_tail.tar.xz) measured the MoE at 1.00 / 1.03 / 1.03
    and the dense model at 1.00 / 0.98 / 0.93 of -p 512; priced within 6 % of each ratio."""
    from benchmarks import cpu_prompt

    with tarfile.open(RES / "cpu_tail.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    t = "q4_k"
    model = load_model(write_speed_model(shape, tmp_path, header_only=True, weight_type=cpu_prompt.weight_type_of(
        shape, t), shape=cpu_prompt.SHAPES[shape]))
    (tmp_path / "cpu.toml").write_text('name = "xeon2"\n[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 20\n'
                                       'bandwidth_gbs = 20\nthreads = 2\nsimd = "avx512"\n')
    cluster = resolve_cluster(str(tmp_path / "cpu.toml"))
    log = tmp_path / f"tail_{shape}.{cpu_prompt.weight_type_of(shape, t)}.log"
    points = import_text(log.read_text(), model, cluster).points
    assert [p.context.n_prompt for p in points] == [512, 640, 1024]
    (first, *rest) = [(p.measured, predict_point(p, SpeedParams())) for p in points]
    for measured, priced in rest:
        assert priced / first[1] == pytest.approx(measured / first[0], abs=0.06)
