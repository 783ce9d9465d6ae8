"""The objective, the recipes priced beside a plan (``compared``) and the tg/pp frontier
(``--alternatives``): for every objective the chosen plan is at least as good as every recipe."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from omni_place.cli import main
from omni_place.cost import CPU, Context, CostModel
from omni_place.devices import resolve_cluster
from omni_place.engines import dialect
from omni_place.errors import InvalidArgumentError, NothingFitsError
from omni_place.model import load_model
from omni_place.objective import (BALANCED_PROMPT_FLOOR, PIN_MARGIN, RANK_BAND, SPLIT_MODE_MARGIN, choose, frontier,
                                  parse_objective)
from omni_place.plan import Plan, plan_split
from omni_place.problem import cpu_only
from omni_place.recipes import fit_style, first_true, largest_ngl, priced, smallest_ncmoe, standard_recipes
from omni_place.reference_models import cached_reference_model
from omni_place.units import GiB

from .arch_models import write_model

SAME = 1e-9
# the issue's rig: a 4090, a 3060 behind a PCIe 3.0 x4 link, dual-channel DDR5
ISSUE_RIG = ('name = "4090-3060x4"\ndiscover = false\n'
             '[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "RTX 4090"\npcie_gen = 4\npcie_width = 16\n'
             '[[devices]]\nname = "CUDA1"\nkind = "gpu"\nmemory_gib = 12\nbandwidth_gbs = 360\ntflops = 51\n'
             'pcie_gen = 3\npcie_width = 4\n'
             '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 120\nbandwidth_gbs = 70\nthreads = 16\n')


# two small GPUs, so that the small models below spill to the CPU (a 64 MiB margin each; over
# ik_llama.cpp's 1 GiB split margin)
TINY_RIG = "".join(f'[[devices]]\nname = "{name}"\nkind = "{kind}"\nmemory_gib = {gib}\nbandwidth_gbs = {bw}\n'
                   + ('margin_mib = 64\n' if kind == "gpu" else "")
                   for name, kind, gib, bw in (("CUDA0", "gpu", 1.5, 900), ("CUDA1", "gpu", 1.2, 300),
                                               ("CPU", "cpu", 16, 60)))
TINY_RIG = 'name = "tiny"\ndiscover = false\n' + TINY_RIG


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("clusters")
    (d / "issue.toml").write_text(ISSUE_RIG)
    (d / "tiny.toml").write_text(TINY_RIG)
    return {"issue": str(d / "issue.toml"), "tiny": str(d / "tiny.toml"), "seed": "seed", "4090x2": "4090x2-ddr5",
            "3090": "3090-ddr4"}


def _speeds(entry: dict) -> tuple[float, float]:
    return entry["tg_tps"], entry["pp_tps"]


def assert_not_beaten(plans: dict[str, Plan]) -> None:
    """Each objective's plan is at least as good on it as every feasible recipe priced beside it.
    The objectives' orderings are checked on the layer split each plan chose (its first
    split-mode row); a plan that takes a parallel split mode instead must beat that by the margin."""
    layer = {o: _speeds(p.split_modes[0]) if p.split_modes else (p.predicted.tg_tps, p.predicted.pp_tps)
             for o, p in plans.items()}
    # a plan that pins its CPU weights (-lm none) must beat its own mmap'd choice by the margin;
    # the orderings below hold for that mmap'd choice, priced like the recipes
    for objective, plan in plans.items():
        if "unpinned" not in plan.solve_stats:
            assert not plan.context.pinned_weights
            continue
        assert plan.context.pinned_weights and objective != "tg", objective
        (ptg, ppp), (tg, pp) = layer[objective], _speeds(plan.solve_stats["unpinned"])
        if objective == "pp":
            assert ppp > pp * (1 + PIN_MARGIN)
        elif objective == "balanced":
            assert pp < BALANCED_PROMPT_FLOOR * ppp or ptg > tg * (1 + PIN_MARGIN)
        layer[objective] = tg, pp
    for objective, plan in plans.items():
        tg, pp = layer[objective]
        rivals = [c for c in plan.compared if c["feasible"]]
        assert plan.feasible, objective
        if plan.context.split_mode != "layer":
            ttg, tpp = plan.predicted.tg_tps, plan.predicted.pp_tps
            assert ttg > tg * (1 + SPLIT_MODE_MARGIN) or tpp > pp * (1 + SPLIT_MODE_MARGIN), objective
            assert (ttg >= tg if objective in ("tg", "balanced") else tpp >= pp if objective == "pp" else True)
        # speeds within RANK_BAND of the best are one rank, decided by the other speed
        if objective == "tg":
            assert all(tg >= c["tg_tps"] * (1 - RANK_BAND) for c in rivals), (objective, plan.compared)
        elif objective == "pp":
            assert all(pp >= c["pp_tps"] * (1 - RANK_BAND) for c in rivals), (objective, plan.compared)
            assert pp >= layer["tg"][1] * (1 - RANK_BAND)  # never slower at prompt than the tg plan
        elif objective == "balanced":
            floor = plan.solve_stats["prompt_floor_tps"]
            best_pp = max([pp, layer["pp"][1]] + [c["pp_tps"] for c in rivals])
            # the pp plan is within RANK_BAND of the best prompt speed the floor is taken from
            low = BALANCED_PROMPT_FLOOR * best_pp
            assert low * (1 - SAME) <= floor <= low / (1 - RANK_BAND)
            assert pp >= floor * (1 - SAME)
            for c in rivals:
                if c["pp_tps"] >= floor:
                    assert tg >= c["tg_tps"] * (1 - RANK_BAND), (objective, plan.compared)
            assert tg <= layer["tg"][0] / (1 - RANK_BAND)
        else:  # a weight: its score, each speed relative to the tg and pp plans' (the best found)
            w, best_tg, best_pp = float(objective), layer["tg"][0], layer["pp"][1]
            score = [w * best_tg / t + (1 - w) * best_pp / p for t, p in [(tg, pp)] + [_speeds(c) for c in rivals]]
            assert all(score[0] <= s * (1 + SAME) for s in score[1:]), (objective, plan.compared)


def plans_for(model: object, cluster: str, **kw: object) -> dict[str, Plan]:
    out: dict[str, Plan] = {}
    for objective in ("tg", "pp", "balanced", "0.7"):
        out[objective] = plan_split(model, cluster, objective=parse_objective(objective), **kw)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("name", ["deepseek-v3", "qwen3-235b-a22b", "gpt-oss-120b", "llama-3.3-70b"])
@pytest.mark.parametrize("cluster", ["issue", "seed", "4090x2", "3090"])
def test_every_objective_beats_every_recipe_on_reference_models(name: str, cluster: str,
                                                                clusters: dict[str, str]) -> None:
    model = load_model(cached_reference_model(name))
    try:
        plans = plans_for(model, clusters[cluster], ctx=16384)
    except NothingFitsError:  # too big for this rig's RAM: nothing to compare
        assert model.total_bytes > 100 * GiB
        return
    names = {c["name"] for c in plans["tg"].compared}
    assert names == ({"fit", "ot-exps", "ncmoe"} if model.hparams.n_expert else {"fit", "ngl"})
    assert_not_beaten(plans)


@pytest.mark.parametrize("arch", ["llama", "qwen3moe", "deepseek2", "gpt-oss", "glm4moe"])
def test_every_objective_beats_every_recipe_on_tiny_gguf_models(arch: str, tmp_path: Path,
                                                                clusters: dict[str, str]) -> None:
    """GGUF files written by tests/arch_models.py (1.5-4.6 GiB, header only) on 1.5 + 1.2 GiB
    GPUs: the recipes spill to the CPU and the objectives part ways."""
    path = write_model(tmp_path / f"{arch}.gguf", arch, n_layer=12, n_embd=1024, n_ff=16384, n_ff_exp=2048,
                       n_expert=32, header_only=True)
    model = load_model(path)
    for engine in ("llama.cpp", "ik_llama.cpp"):
        for ctx in (512, 4096):
            plans = plans_for(model, clusters["tiny"], ctx=ctx, engine=engine)
            assert_not_beaten(plans)
            assert all(c["error"] is None for c in plans["tg"].compared)
            vs = plan_split(model, clusters["tiny"], ctx=ctx, engine=engine, vs=["-ngl", "99"])
            assert vs.compared[-1]["name"] == "vs" and vs.compared[-1]["args"] == ["-ngl", "99"]
            assert_not_beaten({**plans, "balanced": vs})


def test_a_better_recipe_is_adopted_and_said(clusters: dict[str, str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The solver's arrays approximate what exact re-pricing sees (weights paged from disk are
    priced exactly only when a placement is re-priced; op offload is averaged over the layers),
    so a recipe can tie or beat its optima. Here its optima are made poor (the core proposes
    only its first candidate with every layer moved to the CPU) for a 70B dense model on two
    3090s with 64 GiB of RAM: the plan takes a recipe's placement, says so, and its own flags
    reproduce it."""
    import omni_place.plan as plan_module

    real = plan_module.core_candidates

    def poor(arr, orders, cost, *args, **kw):  # problem.core_candidates, every layer moved to the CPU
        return [(c[0], cpu_only(cost.model, c[1].order), c[2]) for c in real(arr, orders, cost, *args, **kw)[:1]]

    monkeypatch.setattr(plan_module, "core_candidates", poor)
    cluster = tmp_path / "small-ram.toml"
    gpus = "".join(f'[[devices]]\nname = "CUDA{i}"\nkind = "gpu"\ncatalog = "RTX 3090"\n' for i in range(2))
    cpu = '[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = 64\nbandwidth_gbs = 80\ndisk_gbs = 3.5\n'
    cluster.write_text('name = "small-ram"\ndiscover = false\n' + gpus + cpu)
    model = load_model(cached_reference_model("llama-3.3-70b"))
    plans = plans_for(model, str(cluster), allow_paging=True, split_modes=False)  # -sm tensor would win here
    assert_not_beaten(plans)
    adopted = [p for p in plans.values() if p.solve_stats["chosen_from"] != "solver"]
    assert len(adopted) == len(plans)
    for plan in adopted:
        assert any("the plan takes it" in n for n in plan.notes)
        rules = dialect(plan.engine)
        back = rules.decode(model, rules.parse_args(plan.args("server")), plan.cluster, plan.context)
        assert back.layer_home == plan.placement.layer_home and back.output == plan.placement.output


def test_fit_emulation_packs_back_to_front_and_fits(clusters: dict[str, str]) -> None:
    """--fit's layout (common/fit.cpp): a contiguous layer range per device, the last device
    holding the output head, CPU layers first; for MoE, whole layers first, then dense-only."""
    for name, cluster in (("llama-3.3-70b", "4090x2-ddr5"), ("llama-3.3-70b", "seed"), ("deepseek-v3", "seed"),
                          ("qwen3-235b-a22b", "h100-x2"), ("gpt-oss-120b", "4090x2-ddr5")):
        model = load_model(cached_reference_model(name))
        clus = resolve_cluster(cluster)
        for ctx in (4096, 65536):
            cost = CostModel(model, clus, Context(ctx=ctx))
            p = fit_style(cost)
            gpus = [d.name for d in clus.gpus]
            assert all(u.fits for u in cost.usage(p) if u.kind != "cpu"), (name, cluster, ctx)
            assert any(h != CPU for h in p.layer_home)
            homes = list(p.layer_home)
            runs = [h for i, h in enumerate(homes) if i == 0 or homes[i - 1] != h]
            assert runs == sorted(runs, key=lambda h: -1 if h == CPU else gpus.index(h))  # CPU, CUDA0, CUDA1
            if p.output != CPU:
                assert p.output == next(h for h in reversed(homes) if h != CPU)
            if model.hparams.n_expert:
                for dev in gpus:  # per device: whole layers, then dense-only ones (fit.cpp:564-580)
                    moved = [bool(p.cpu_experts[i]) for i, h in enumerate(homes)
                             if h == dev and model.layers[i].has_experts]
                    assert moved == sorted(moved)


def test_searches_find_the_boundary() -> None:
    for lo, hi in ((0, 0), (0, 1), (0, 61), (3, 97)):
        for answer in range(lo, hi + 2):
            for guess in (None, lo, hi, (lo + hi) // 2, answer):
                calls: list[int] = []

                def pred(n: int, answer: int = answer, calls: list[int] = calls) -> bool:
                    calls.append(n)
                    return n >= answer

                assert first_true(lo, hi, pred, guess) == (answer if answer <= hi else None)
                assert len(calls) <= 2 * (hi - lo).bit_length() + 3
    assert smallest_ncmoe(61, lambda n: n >= 57, guess=40) == 57
    assert smallest_ncmoe(61, lambda n: False) == 61
    assert largest_ngl(80, lambda n: n <= 43, guess=50) == 43
    assert largest_ngl(80, lambda n: n == 0) == 0


def test_frontier_is_non_dominated_and_bounded(clusters: dict[str, str]) -> None:
    model = load_model(cached_reference_model("gpt-oss-120b"))
    plan = plan_split(model, clusters["issue"], ctx=16384, alternatives=4)
    alts = plan.alternatives
    assert 1 <= len(alts) <= 4 and sum(a["chosen"] for a in alts) <= 1
    for a in alts:
        assert not any(b["tg_tps"] >= a["tg_tps"] and b["pp_tps"] >= a["pp_tps"] and b is not a
                       and (b["tg_tps"], b["pp_tps"]) != (a["tg_tps"], a["pp_tps"]) for b in alts)
        assert "-ngl" in a["args"] and "-c" in a["args"]
    assert [a["tg_tps"] for a in alts] == sorted((a["tg_tps"] for a in alts), reverse=True)
    # frontier() keeps both ends when it thins
    cost = CostModel(model, plan.cluster, plan.context, plan.params)
    options = [priced(cost, "solver", "x", (), p) for p in (plan.placement, fit_style(cost))]
    options += standard_recipes(cost, dialect("llama.cpp"))
    front = frontier(options, 10)
    assert frontier(options, 1) == front[:1]
    assert choose(options, "tg") is front[0] and choose(options, "pp") is front[-1]


def test_cli_json_text_and_errors(clusters: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "gpt-oss-120b", "--cluster", clusters["issue"], "--no-certify", "--ctx", "16384"]
    assert main(args + ["--format", "json", "--alternatives", "3", "--vs", "-ngl 99 -ncmoe 30"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["objective"] == "balanced"
    assert [c["name"] for c in d["compared"]] == ["fit", "ot-exps", "ncmoe", "vs"]
    assert d["compared"][-1]["args"] == ["-ngl", "99", "-ncmoe", "30"]
    for c in d["compared"]:
        assert c["tg_vs_plan"] == pytest.approx(c["tg_tps"] / d["predicted"]["tg_tps"] - 1, abs=1e-3)  # JSON rounds
    assert 1 <= len(d["alternatives"]) <= 3
    assert main(args + ["--objective", "tg"]) == 0
    out = capsys.readouterr().out
    assert "plan vs recipes" in out and "--fit (emulated)" in out and "-ot exps=CPU" in out
    for bad in (["--objective", "fast"], ["--objective", "1.5"], ["--vs", "-ngl 'unterminated"],
                ["--vs", "-ngl lots"], ["--alternatives", "99"]):
        assert main(args + bad) == 2, bad
        err = capsys.readouterr().err
        assert err.startswith("error:") and "Traceback" not in err, bad


def test_api_argument_errors() -> None:
    for bad in ({"objective": "fast"}, {"objective": 2.0}, {"objective": True}, {"alternatives": -1},
                {"alternatives": "3"}, {"vs": "-ngl 99"}, {"vs": [1, 2]}):
        with pytest.raises(InvalidArgumentError):
            plan_split("deepseek-v3", "seed", **bad)  # type: ignore[arg-type]
