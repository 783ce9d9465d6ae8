"""Measured prompt and decode speed of many placements on a real GPU machine (the truth the
speed model is checked against), with plain llama-bench records and ``-v`` logs kept.

Three subcommands, run in this order on the GPU machine:

``models DIR``
    Write the speed models: full-size GGUFs of three real architectures (a dense llama, a
    qwen3moe, a deepseek2 with MLA, shared experts and a leading dense layer), ~6-9 GB each.
    Every large weight is a hole (zeros: a matmul's speed does not depend on its values), while
    the tensors that decide *routing* hold real values: F32 norms of ones, a random F32 router per
    MoE layer and random token embeddings. With zero attention and FFN outputs the router sees
    each token's normalised embedding. The router's values are scaled by 1/sqrt(n_embd) so its
    logits have unit spread (``ROUTERS["unit"]``, a trained router's scale): llama-bench's random
    prompt tokens then spread over all experts as a real model's do. The first H200 runs used
    unscaled routers (``"raw"``): deepseek2's sigmoid saturated on their ~45-sd logits and a ubatch
    used ~59 % of mla16's experts (``replay_routing``). (A tiled
    all-positive Q4_K pattern, as ``synth_gguf`` writes, drives every token to the same few
    experts and makes op offload copy almost nothing: its MoE prompt speeds are not what a real
    model gets.)

``prepare MODEL --cluster TOML --rig NAME -o MATRIX``
    The configurations of one model on one rig: the engine's ``--fit``, the recipes of
    ``omni-place bench`` (``-ot exps=CPU``, the smallest ``--n-cpu-moe``, the largest ``-ngl``),
    omni_place's plans for each objective (balanced, ``tg``, ``pp``; a plan equal to an earlier
    configuration runs once, the matrix's ``objectives`` names it), the balanced plan with its
    CPU weights pinned (``-lm none``, op offload on), and a sweep of placements that spans the
    CPU share (``-ngl`` / ``--n-cpu-moe`` steps), each with omni_place's prediction.

``run MATRIX... --bin llama-bench --out DIR --rounds N``
    Every configuration of every matrix, in rounds that alternate the order (A B C, C B A, ...)
    so slow drifts of the machine do not favour one configuration; one ``-v`` log per run.

Then, anywhere: ``report`` (each run priced as it ran, with the routing replayed from each
speed model's router; it also reads benchmarks/results/engine_compare), ``versus`` (each objective's plan against
every recipe, with the rounds' spread) and ``vram`` (the engine's buffers against the price).

Measure the CPU (``devices --measure``, ``host_link.py``) on an idle machine: the first H200 runs
probed it beside a 16-job compile and read 48.5 GB/s where decode alone reached ~75.

Speed models are deterministic: ``models DIR --header-only`` here writes the same headers
(the same bytes up to the data), which is all that pricing needs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SPEED_MODELS: dict[str, dict[str, Any]] = {
    # 32 layers of a 13B-like shape (GQA 40/8): 10.6 B parameters, ~6.3 GB in Q4_K
    "dense11": dict(arch="llama", n_layer=32, n_embd=5120, n_head=40, n_head_kv=8, head_dim=128, n_ff=17408,
                    n_vocab=65536),
    # 24 layers of a Qwen3-30B-A3B-like shape (128 experts, 8 used): ~8.6 GB in Q4_K
    "moe15": dict(arch="qwen3moe", n_layer=24, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_ff=6144,
                  n_expert=128, n_expert_used=8, n_ff_exp=768, n_vocab=151936),
    # DeepSeek-V2-Lite-like: MLA (kv_lora 512), 64 experts (6 used) + 2 shared, 1 leading dense layer;
    # 28 layers: llama.cpp takes a 26- or 27-layer deepseek2 for a "lite" one without q LoRA
    # (src/models/deepseek2.cpp:8) and would not find attn_q.weight
    "mla16": dict(arch="deepseek2", n_layer=28, n_embd=2048, n_head=16, n_head_kv=1, head_dim=128, n_rot=64,
                  kv_lora_rank=512, q_lora_rank=768, n_ff=10944, n_expert=64, n_expert_used=6, n_ff_exp=1408,
                  n_expert_shared=2, n_dense_lead=1, n_vocab=102400),
}


# the router's values: standard normal times this factor of n_embd (see the module doc)
ROUTERS = {"unit": lambda n_embd: n_embd ** -0.5, "raw": lambda n_embd: 1.0}


def write_speed_model(name: str, folder: Path, *, header_only: bool = False, router: str = "unit") -> Path:
    """Write speed model ``name`` into ``folder`` (see the module doc) with ``router`` values
    (a key of ``ROUTERS``); returns its path."""
    from omni_place.gguf import read_model_files
    from omni_place.gguf_write import sparse_copy
    from tests.arch_models import write_model

    folder.mkdir(parents=True, exist_ok=True)
    header = write_model(folder / f"{name}.hdr.gguf", weight_type="q4_k", tokenizer="spm", header_only=True,
                         **SPEED_MODELS[name])
    if header_only:
        return header
    files = read_model_files(header)
    full = sparse_copy(files, folder / "full")
    target = folder / f"{name}.gguf"
    full.rename(target)
    (folder / "full").rmdir()
    shard = files.shards[0]
    with open(target, "r+b") as fh:
        for t, data in _valued_tensors(files, router):
            assert len(data) == t.n_bytes, (t.name, len(data), t.n_bytes)
            fh.seek(shard.data_offset + t.offset)
            fh.write(data)
    return target


def _valued_tensors(files: Any, router: str) -> Iterator[tuple[Any, bytes]]:
    """The tensors of a speed model that hold values, with their bytes, in file order (one
    seeded generator: the same values every time); ``router`` scales the routers (``ROUTERS``)."""
    rng = np.random.default_rng(0)
    for t in files.tensors:
        n = t.n_elements
        if t.name.endswith("norm.weight") or "_norm" in t.name:
            yield t, np.ones(n, dtype=np.float32).tobytes()
        elif t.name.endswith("ffn_gate_inp.weight"):
            gain = np.float32(ROUTERS[router](t.shape[0]))  # shape [n_embd, n_expert]
            yield t, (rng.standard_normal(n, dtype=np.float32) * gain).tobytes()
        elif t.name == "token_embd.weight" and t.type_name == "Q4_K":
            yield t, _random_q4_k(rng, t.n_bytes)
        elif t.name == "token_embd.weight":
            raise SystemExit(f"{t.name} is {t.type_name}; the speed models write Q4_K embeddings")


def replay_routing(header: Path, router: str = "unit", n_tokens: int = 512, trials: int = 4) -> list[list[int]]:
    """How many of a ubatch's ``n_tokens`` random prompt tokens (llama-bench's ``std::rand() %
    n_vocab``) each expert of each MoE layer gets, replayed from the speed model's own router and
    embeddings (the header names them, ``_valued_tensors`` regenerates their values), ``trials``
    ubatches per layer, for the speed model written with ``router`` values; for
    ``CostModel.with_routing``. Empty for a dense model. With zero attention and FFN outputs each
    layer's router sees the token's RMS-normed embedding. A ``"raw"`` sigmoid router (deepseek2's
    ``expert_gating_func`` 2) meets logits of ~45 sd: F32 sigmoid rounds
    the top ones to 1.0 and the tie goes to the lowest expert index
    (ggml/src/ggml-cuda/topk-moe.cu:210), so a ubatch of mla16 touches ~59 % of its experts, the
    low-numbered ones with several MMQ tiles of tokens, where ~1-sd logits (a trained router's)
    spread tokens over all of them."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    from omni_place.gguf import read_model_files

    files = read_model_files(header)
    meta = files.metadata
    arch = meta["general.architecture"]
    n_exp, k = meta.get(f"{arch}.expert_count", 0), meta.get(f"{arch}.expert_used_count", 0)
    if not n_exp:
        return []
    sigmoid = meta.get(f"{arch}.expert_gating_func") == 2  # LLAMA_EXPERT_GATING_FUNC_TYPE_SIGMOID
    n_embd = meta[f"{arch}.embedding_length"]
    emb, n_vocab, routers = b"", 0, []
    for t, data in _valued_tensors(files, router):
        if t.name == "token_embd.weight":
            emb, n_vocab = data, t.shape[1]
        elif t.name.endswith("ffn_gate_inp.weight"):
            routers.append(np.frombuffer(data, dtype=np.float32).reshape(n_exp, n_embd))
    rows = np.frombuffer(emb, dtype=np.uint8).reshape(n_vocab, -1)
    pick = np.random.default_rng(1)
    counts = []
    for _ in range(trials):
        tokens = rows[pick.integers(0, n_vocab, n_tokens)]
        x = dequantize(tokens, GGMLQuantizationType.Q4_K).astype(np.float32).reshape(n_tokens, n_embd)
        x /= np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-6)
        for w in routers:
            logits = x @ w.T
            # softmax is monotone in the logits; sigmoid in F32 saturates (ties)
            score = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32) if sigmoid else logits
            ties_low = np.broadcast_to(np.arange(n_exp), score.shape)
            top = np.lexsort((ties_low, -score), axis=1)[:, :k]
            counts.append(np.bincount(top.ravel(), minlength=n_exp).tolist())
    return counts


def _random_q4_k(rng: np.random.Generator, nbytes: int) -> bytes:
    """Q4_K blocks whose values are centred: every sub-block scale and min is 32 and
    dmin = 7.5 d, so a weight is 32 d (q - 7.5) for a random nibble q."""
    blocks = rng.integers(0, 256, size=(nbytes // 144, 144), dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.float16(0.004).tobytes(), dtype=np.uint8)
    blocks[:, 2:4] = np.frombuffer(np.float16(0.03).tobytes(), dtype=np.uint8)
    blocks[:, 4:12] = 0xA0  # 6-bit scales / mins 0..3 = 32, high bits of 4..7 = 2
    blocks[:, 12:16] = 0x00  # low nibbles of scales / mins 4..7
    return blocks.tobytes()


def _models(a: argparse.Namespace) -> int:
    unknown = sorted(set(a.names) - set(SPEED_MODELS))
    if unknown:
        raise SystemExit(f"unknown speed models {unknown}; known: {', '.join(SPEED_MODELS)}")
    for name in a.names or list(SPEED_MODELS):
        path = write_speed_model(name, Path(a.folder), header_only=a.header_only, router=a.router)
        print(f"{path} {path.stat().st_size / 1e9:.2f} GB", flush=True)
    return 0


def _prepare(a: argparse.Namespace) -> int:
    from omni_place.bench.matrix import build_configs, common_args
    from omni_place.bench.run import CONFIG_ORDER, SCHEMA, Attempt, BenchConfig
    from omni_place.cost import EXPERT_KINDS
    from omni_place.devices import resolve_cluster
    from omni_place.engines import dialect
    from omni_place.engines.common import KIND_REGEX, layer_regex
    from omni_place.model import load_model
    from omni_place.plan import evaluate

    cluster = resolve_cluster(a.cluster)
    prof = load_model(a.model)
    ctx = a.n_prompt + a.n_gen
    engine = a.engine
    rules = dialect(engine)
    wanted = a.configs.split(",") if a.configs else ["fit", "ot-exps", "ncmoe", "ngl", "omni_place", "omni_place_tg",
                                                      "omni_place_pp", "omni_place_pin", "tail-exps", "sweep"]
    configs = build_configs(prof, cluster, engine, n_prompt=a.n_prompt, n_gen=a.n_gen, ubatch=a.ubatch,
                            configs=[c for c in wanted if c in CONFIG_ORDER])
    # the plan of each objective ("omni_place" is the default, balanced); a plan equal to an
    # earlier one runs once, and ``objectives`` names the configuration that measured it
    objectives = {"balanced": "omni_place"} if "omni_place" in wanted else {}
    for objective in ("tg", "pp"):
        if f"omni_place_{objective}" not in wanted:
            continue
        cfg = build_configs(prof, cluster, engine, n_prompt=a.n_prompt, n_gen=a.n_gen, ubatch=a.ubatch,
                            objective=objective, configs=("omni_place",))[0]
        same = next((c for c in configs if c.attempts[0].argv == cfg.attempts[0].argv), None)
        if same is None:
            cfg.name = f"omni_place_{objective}"
            configs.append(cfg)
        objectives[objective] = cfg.name if same is None else same.name
    seen = {tuple(att.argv) for c in configs for att in c.attempts}

    def feasible(argv: list[str]) -> dict[str, Any] | None:
        pred = evaluate(prof, cluster, [*argv, "-ub", str(a.ubatch)], ctx=ctx, engine=engine, tool="bench")
        return ({"feasible": True, "tg_tps": round(pred.predicted.tg_tps, 3),
                 "pp_tps": round(pred.predicted.pp_tps, 3)} if pred.feasible else None)

    def add(name: str, argv: list[str], note: str) -> None:
        price = feasible(argv)
        if price is not None and tuple(argv) not in seen:
            seen.add(tuple(argv))
            configs.append(BenchConfig(engine, name, [Attempt(argv, price)], note))

    plan = next((c for c in configs if c.name == "omni_place"), None)
    if "omni_place_pin" in wanted and plan is not None:
        # the balanced plan's placement the other way round: pinned (op offload on) when the plan
        # keeps mmap, mmap'd when the plan pins -- what the plan's note prices
        syntax = rules.syntax["bench"]
        argv = list(plan.attempts[0].argv)
        for flag in (syntax.no_op_offload, syntax.pin_weights):
            if flag and flag[0] in argv:
                i = argv.index(flag[0])
                del argv[i:i + len(flag)]
        if rules.parse_args(plan.attempts[0].argv, "bench").pinned_weights:
            add("omni_place_mmap", argv, "the balanced plan's placement, mmap'd (op offload on)")
        elif syntax.pin_weights:
            add("omni_place_pin", [*argv, *syntax.pin_weights], "the balanced plan, CPU weights pinned, op offload on")
    ncmoe = next((c for c in configs if c.name == "ncmoe"), None)
    if "tail-exps" in wanted and prof.hparams.n_expert:
        # as many expert layers in RAM as the smallest --n-cpu-moe, but the last ones: which end's
        # experts go to the CPU (issue 16's layer-position question)
        if ncmoe is None or rules.bench is None:
            raise SystemExit("tail-exps takes its count from the ncmoe configuration: add ncmoe to --configs")
        n = int(ncmoe.attempts[0].argv[ncmoe.attempts[0].argv.index(rules.bench.n_cpu_moe) + 1])
        moe = [il for il, lc in enumerate(prof.layers) if lc.has_experts and not lc.is_nextn]
        tail = moe[len(moe) - sum(il < n for il in moe):]
        add("tail-exps", ["-ngl", rules.bench.ngl_all, "-ot", layer_regex(tail) + KIND_REGEX[frozenset(EXPERT_KINDS)]
                          + "=CPU"], f"the experts of the last {len(tail)} expert layers on the CPU (the smallest "
                                     "--n-cpu-moe's count)")
    if "sweep" in wanted:
        # placements across the CPU's share: whole layers on the CPU (-ngl), and for MoE the
        # experts of the first layers (--n-cpu-moe)
        L = prof.n_layer
        n_max = max((n for n in range(L + 2) if feasible(["-ngl", str(n)])), default=0)
        for n in sorted({0, n_max // 3, (2 * n_max) // 3}):
            add(f"ngl{n}", ["-ngl", str(n)], "whole layers on the CPU")
        if prof.hparams.n_expert:
            n0 = next((n for n in range(L + 1) if feasible(["-ngl", "99", "-ncmoe", str(n)])), L)
            for n in sorted({L, (L + n0) // 2}):
                add(f"ncmoe{n}", ["-ngl", "99", "-ncmoe", str(n)], "experts of the first layers on the CPU")
    matrix = {"schema": SCHEMA, "model": Path(a.model).name.split(".")[0], "model_file": a.model_file or a.model,
              "cluster": cluster.name, "rig": a.rig, "n_prompt": a.n_prompt, "n_gen": a.n_gen, "ubatch": a.ubatch,
              "threads": a.threads, "objectives": objectives, "configs": [c.to_dict() for c in configs],
              "common": {engine: common_args(engine, a.model_file or a.model, n_prompt=a.n_prompt, n_gen=a.n_gen,
                                             ubatch=a.ubatch, reps=a.reps, threads=a.threads)}}
    Path(a.output).write_text(json.dumps(matrix, indent=1))
    for c in configs:
        print(f"{c.name:14s} {' | '.join(' '.join(att.argv) for att in c.attempts)[:150]}")
    return 0


def _rig(a: argparse.Namespace) -> int:
    """A cluster file of the measured machine: one GPU with the free memory llama.cpp reported
    (its ``-v`` line ``using device CUDA0 ... - N MiB free``, after the ballast and its own CUDA
    context), the same margin as ``-fitt``, and the CPU as ``devices --measure`` measured it."""
    text = (f'# {a.description}\nname = "{a.name}"\n\n[[devices]]\nname = "CUDA0"\nkind = "gpu"\ncatalog = "H200"\n'
            f"memory_gib = {a.gpu_free_mib / 1024:.4f}\nmargin_mib = {a.margin_mib}\n\n"
            f'[[devices]]\nname = "CPU"\nkind = "cpu"\nmemory_gib = {a.cpu_gib}\n'
            f"bandwidth_gbs = {a.cpu_gbs}\nthreads = {a.threads}\n")
    Path(a.output).write_text(text)
    print(text)
    return 0


def _run(a: argparse.Namespace) -> int:
    from omni_place.bench.run import BenchConfig, Progress, expected_tests, run_config

    matrices = [json.loads(Path(m).read_text()) for m in a.matrices]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    items = [(m, BenchConfig.from_dict(c)) for m in matrices for c in m["configs"]]
    done_path = out / "done.txt"
    done = set(done_path.read_text().split()) if done_path.exists() else set()
    prog = Progress(len(items) * a.rounds)
    with open(out / "records.jsonl", "a") as fh:
        for rnd in range(a.rounds):
            order = items if rnd % 2 == 0 else items[::-1]
            for m, cfg in order:
                key = f"{m['model']}.{m['rig']}.{cfg.name}.r{rnd}"
                if key in done:
                    prog.done += 1
                    continue
                meta = {k: m[k] for k in ("model", "model_file", "cluster", "rig", "n_prompt", "n_gen", "ubatch",
                                          "threads")}
                meta["round"] = rnd
                recs = run_config(cfg, a.bin, m["common"][cfg.engine], tests=expected_tests(m["n_prompt"], m["n_gen"]),
                                  log_dir=out / "logs" / f"{m['model']}.{m['rig']}.r{rnd}", meta=meta, progress=prog,
                                  timeout=a.timeout)
                fh.writelines(json.dumps(r) + "\n" for r in recs)
                fh.flush()
                with open(done_path, "a") as d:
                    d.write(key + "\n")
    return 0


def _emit(lines: list[str], out: list[dict[str, Any]], json_path: str | None) -> int:
    """Print a table; write its rows as JSON when asked."""
    print("\n".join(lines))
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1))
    return 0


# engine_compare's records files -> the folder of logs.tar.xz that holds their logs (run 1 and the re-run)
_RUN_FOLDERS = {"records": "res", "records_rerun": "res2"}


def _rows(results: list[str], only_model: str | None = None) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per (rig, model, configuration): the measured tok/s of every round and the first round's
    ``-v`` log, from ``run`` folders (records.jsonl + logs/), from benchmarks/results/speed_truth's
    layout (records_<level>.jsonl + logs.tar.xz, logs under res/res_<level>/logs/<model>.<rig>.r<round>/)
    or from engine_compare's (records.jsonl and records_rerun.jsonl + logs.tar.xz, logs under
    res/<model>.<rig>/ and res2/<model>.<rig>/; a re-run counts as more rounds)."""
    from omni_place.bench.records import load_records

    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    tmp = tempfile.TemporaryDirectory(prefix="speed_truth-")
    sources: list[tuple[Path, Path]] = []  # (records file, the folder of its logs)
    for res in results:
        root = Path(res)
        if (root / "records.jsonl").exists() and (root / "logs").is_dir():
            sources.append((root / "records.jsonl", root / "logs"))
            continue
        dest = Path(tmp.name) / str(len(sources))
        with tarfile.open(root / "logs.tar.xz") as tar:
            tar.extractall(dest, filter="data")
        for rec in sorted(root.glob("records*.jsonl")):
            level = rec.stem.removeprefix("records_")
            logs = dest / "res" / f"res_{level}" / "logs"
            sources.append((rec, logs if logs.is_dir() else dest / _RUN_FOLDERS.get(rec.stem, rec.stem)))
    for records, logs in sources:
        for r in load_records([records]):
            if r["status"] != "ok" or not r.get("avg_ts") or (only_model and r["model"] != only_model):
                continue
            key = (r["rig"], r["model"], r["config"])
            if key in rows and rows[key]["engine"] != r["engine"]:  # another engine's configuration of that name
                key = (r["rig"], r["model"], f"{r['config']}@{r['engine']}")
            row = rows.setdefault(key, {"tg": [], "pp": [], "argv": r["argv"], "engine": r["engine"],
                                        "ubatch": int(r.get("ubatch") or 512), "command": r.get("command"),
                                        "ctx": int(r.get("n_prompt") or 512) + int(r.get("n_gen") or 32),
                                        "env": r.get("env") or {}})
            row["pp" if r["test"].startswith("pp") else "tg"].append(float(r["avg_ts"]))
            if "log" not in row:
                run = f"{r['model']}.{r['rig']}" + (f".r{r['round']}" if "round" in r else "")
                row["log"] = (logs / run / r["log"]).read_text(errors="replace")
    tmp.cleanup()
    return rows


def _header(folder: Path, model: str, keep: Path) -> Path:
    """``model``'s header in ``folder``: <model>.hdr.gguf, or <model>.hdr.gguf.xz unpacked into ``keep``."""
    import lzma

    plain, packed = folder / f"{model}.hdr.gguf", folder / f"{model}.hdr.gguf.xz"
    if plain.exists() or not packed.exists():
        return plain
    out = keep / plain.name
    out.write_bytes(lzma.decompress(packed.read_bytes()))
    return out


def _rig_file(folder: Path, rig: str) -> str:
    """The cluster file of ``rig``: <rig>.toml, or rig_<level>.toml for speed_truth's h200-<level>."""
    own = folder / f"{rig}.toml"
    return str(own if own.exists() else folder / f"rig_{rig.removeprefix('h200-')}.toml")


def _placed(a: argparse.Namespace, rows: dict[tuple[str, str, str], dict[str, Any]]) -> Iterator[
        tuple[tuple[str, str, str], dict[str, Any], Any, Any, Any, Any]]:
    """Each row whose placements its ``-v`` log shows: (rig, model, configuration), the row, the
    model's profile (from ``--headers``), the rig's cluster (``--rigs``; ``--cpu-gbs`` replaces its
    CPU bandwidth), the prompt test's placement (the load that served the ubatch's context: a
    fitter loads again per test) and the decode test's (the last load); each header and rig is
    read once. The engine's device i is the cluster's GPU the run's CUDA_VISIBLE_DEVICES names."""
    import dataclasses

    from omni_place.bench.logread import placement_from_log
    from omni_place.devices import resolve_cluster
    from omni_place.model import load_model

    models: dict[str, Any] = {}
    clusters: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="speed_truth-hdr-") as keep:
        for model in sorted({m for _, m, _ in rows}):
            models[model] = load_model(_header(Path(a.headers), model, Path(keep)))
    cpu_gbs = getattr(a, "cpu_gbs", None)
    for (rig, model, config), row in sorted(rows.items()):
        if rig not in clusters:
            cluster = resolve_cluster(_rig_file(Path(a.rigs), rig))
            if cpu_gbs:
                cluster = dataclasses.replace(cluster, devices=tuple(
                    dataclasses.replace(d, bandwidth_gbs=cpu_gbs) if d.kind == "cpu" else d for d in cluster.devices))
            clusters[rig] = cluster
        visible = row["env"].get("CUDA_VISIBLE_DEVICES")
        accel = ([f"CUDA{v.strip()}" for v in visible.split(",")] if visible
                 else [d.name for d in clusters[rig].gpus])
        pp, tg = (placement_from_log(row["log"], models[model], accel, row["engine"], row["argv"], n_ubatch=ub)
                  for ub in (row["ubatch"], None))
        if pp is not None and tg is not None:
            yield (rig, model, config), row, models[model], clusters[rig], pp, tg


def _run_context(row: dict[str, Any]) -> Any:
    """The context a row's runs had, from its llama-bench command line (``-p`` + ``-n``, ``-ub``,
    ``-fa``, the KV types, load mode and op offload) and the engine's traits."""
    import shlex

    from omni_place.engines import dialect

    rules = dialect(row["engine"])
    words = shlex.split(row.get("command") or "")  # [VAR=value ...] llama-bench FLAGS
    argv = words[1 + words.index("llama-bench"):] if "llama-bench" in words else row["argv"]
    p = rules.parse_args(argv, tool="bench")
    fa = rules.tool_defaults("bench").flash_attn if p.flash_attn is None else p.flash_attn
    return rules.traits.context(ctx=row["ctx"], n_ubatch=p.n_ubatch or row["ubatch"], type_k=p.type_k,
                                type_v=p.type_v, flash_attn=fa, pinned_weights=p.pinned_weights,
                                op_offload=p.op_offload)


def _report(a: argparse.Namespace) -> int:
    """Price every measured configuration as it ran (the placement read from its -v log) and
    compare with the measured tok/s: per configuration, the median over rounds; per rig and
    engine, the median and largest |error|."""
    import statistics

    from omni_place.cost import CostModel, SpeedParams

    params = SpeedParams(**json.loads(a.params)) if a.params else None
    calibrated = json.loads(Path(a.calibration).read_text())["engines"] if a.calibration else {}
    rows = _rows(a.results, a.only_model)
    out = []
    routing: dict[str, list[list[int]]] = {}
    moe: set[str] = set()
    for (rig, model, config), row, prof, cluster, placement, tg_placement in _placed(a, rows):
        if prof.hparams.n_expert:
            moe.add(model)
        if model not in routing:  # the share of experts a ubatch touched in these runs: replayable
            # for the speed models only (their router and embeddings are known), else uniform
            header = Path(a.headers) / f"{model}.hdr.gguf"
            replay = a.routing == "replayed" and model in SPEED_MODELS
            routing[model] = replay_routing(header, a.router) if replay else []
        if calibrated:  # `omni-place calibrate --format json` output
            if row["engine"] not in calibrated:
                raise SystemExit(f"{a.calibration} calibrates {', '.join(calibrated)}, not {row['engine']}")
            params = SpeedParams(**calibrated[row["engine"]]["params"])
        cost = CostModel(prof, cluster, _run_context(row), params)
        if routing[model]:
            cost = cost.with_routing(routing[model])
        pred = cost.predict(placement)
        pred_tg = pred if tg_placement == placement else cost.predict(tg_placement)
        tg, pp = statistics.median(row["tg"]), statistics.median(row["pp"])
        n_cpu = sum(h == "CPU" for h in placement.layer_home)
        n_exp = sum(bool(k) for k in placement.cpu_experts)
        out.append({"rig": rig, "model": model, "engine": row["engine"], "config": config.split("@")[0],
                    "argv": row["argv"], "cpu_layers": n_cpu, "cpu_expert_layers": n_exp, "tg": tg, "pp": pp,
                    "tg_runs": row["tg"], "pp_runs": row["pp"], "tg_spread": [min(row["tg"]), max(row["tg"])],
                    "pp_spread": [min(row["pp"]), max(row["pp"])], "pred_tg": round(pred_tg.tg_tps, 2),
                    "pred_pp": round(pred.pp_tps, 2), "tg_err": round(pred_tg.tg_tps / tg - 1, 3),
                    "pp_err": round(pred.pp_tps / pp - 1, 3),
                    "tg_ms": {k: round(v * 1e3, 4) for k, v in pred_tg.tg_breakdown.items()},
                    "pp_ms_per_1k": {k: round(v * 1e6, 4) for k, v in pred.pp_breakdown.items()}})
    lines = ["| rig | model | engine | config | CPU layers / expert layers | tg (min-max) | pred tg | err | "
             "pp (min-max) | pred pp | err |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in out:
        lines.append(f"| {o['rig']} | {o['model']} | {o['engine']} | {o['config']} | {o['cpu_layers']} / "
                     f"{o['cpu_expert_layers']} | {o['tg']:.1f} ({o['tg_spread'][0]:.1f}-{o['tg_spread'][1]:.1f}) | "
                     f"{o['pred_tg']:.1f} | {o['tg_err']:+.0%} | {o['pp']:.0f} ({o['pp_spread'][0]:.0f}-"
                     f"{o['pp_spread'][1]:.0f}) | {o['pred_pp']:.0f} | {o['pp_err']:+.0%} |")
    if any(routing.values()):
        lines.append("\nexperts one ubatch touched (replayed): " + ", ".join(
            f"{m} {np.mean([np.count_nonzero(c) / len(c) for c in v]):.0%}" for m, v in sorted(routing.items()) if v))
    uniform = sorted(m for m, v in routing.items() if not v and m in moe)
    if uniform:
        lines.append("\nrouting priced uniform (each token picks k of N): " + ", ".join(uniform))
    for rig, engine in sorted({(o["rig"], o["engine"]) for o in out}):
        for kind in ("tg", "pp"):
            errs = sorted(abs(o[f"{kind}_err"]) for o in out if (o["rig"], o["engine"]) == (rig, engine))
            lines.append(f"\n{rig} {engine} {kind}: {len(errs)} configurations, median |error| "
                         f"{statistics.median(errs):.1%}, max {errs[-1]:.1%}")
    return _emit(lines, out, a.json)


# mainline: "load_tensors: CUDA0 model buffer size", "llama_kv_cache: CUDA0 KV buffer size",
# "sched_reserve: CUDA0 compute buffer size"; ik: "llm_load_tensors: CUDA0 buffer size",
# "llama_kv_cache_init: CUDA0 KV buffer size", "llama_new_context_with_model: CUDA0 compute buffer size"
_BUFFER = re.compile(r"^(\w+): +CUDA0 (?:(model|KV|compute) )?buffer size = +([0-9.]+) MiB", re.M)
_CONTEXT_START = re.compile(r"^(?:llama_context|llama_new_context_with_model): +n_ctx += ", re.M)


def _vram(a: argparse.Namespace) -> int:
    """CUDA0's buffers as the engine allocated them for the prompt test (the weights of the load
    that served the ubatch's context, that context's KV cache and compute buffer), next to
    omni_place's price of that placement: the issue-14 check of --fit against the plan at equal
    margins and one context."""
    from omni_place.bench.logread import CONTEXT_UBATCH, load_serving
    from omni_place.cost import CostModel

    lines = ["| rig | model | config | engine MiB (model / KV / compute) | total | predicted total | "
             "predicted compute |", "|---|---|---|---|---:|---:|---:|"]
    out = []
    for (rig, model, config), row, prof, cluster, placement, _ in _placed(a, _rows(a.results)):
        load = load_serving(row["log"], row["ubatch"])
        starts = [m.start() for m in _CONTEXT_START.finditer(load)] + [len(load)]
        contexts = [load[x:y] for x, y in zip(starts, starts[1:])] or [""]  # a load that made no context
        # the prompt test's context (the engine may clamp the ubatch to the context: then the first)
        ctx = next((c for c in contexts if row["ubatch"] in (int(u) for u in CONTEXT_UBATCH.findall(c))), contexts[0])
        got = {"model": 0.0, "KV": 0.0, "compute": 0.0}
        for _, kind, mib in _BUFFER.findall(load[:starts[0]]) + _BUFFER.findall(ctx):
            kind = kind or "model"
            got[kind] = max(got[kind], float(mib)) if kind == "compute" else got[kind] + float(mib)
        use = next(u for u in CostModel(prof, cluster, _run_context(row)).usage(placement) if u.name == "CUDA0")
        total = sum(got.values())
        out.append({"rig": rig, "model": model, "config": config, "engine_mib": got, "engine_total_mib": total,
                    "predicted_total_mib": use.used_bytes / 2**20, "predicted_compute_mib": use.compute_bytes / 2**20})
        lines.append(f"| {rig} | {model} | {config} | {got['model']:.0f} / {got['KV']:.0f} / {got['compute']:.0f} | "
                     f"{total:.0f} | {use.used_bytes / 2**20:.0f} | {use.compute_bytes / 2**20:.0f} |")
    return _emit(lines, out, a.json)


RECIPES = ("fit", "ot-exps", "ncmoe", "ngl")


def _objective_configs(results: list[str]) -> dict[tuple[str, str], dict[str, str]]:
    """(rig, model) -> objective -> the configuration that ran that objective's plan, from the
    matrices `prepare` wrote (kept in logs.tar.xz); a rig without one ran the balanced plan only."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for res in results:
        tar_path = Path(res) / "logs.tar.xz"
        if not tar_path.exists():
            continue
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if re.fullmatch(r"res/matrix_[^/]+\.json", member.name):
                    fh = tar.extractfile(member)
                    m = json.load(fh) if fh else {}
                    out[(m["rig"], m["model"])] = m.get("objectives", {})
    return out


def _versus(a: argparse.Namespace) -> int:
    """Each objective's plan against every recipe, measured: medians over the interleaved rounds,
    the spread (max - min) / median of both, and whether the plan is at least as good within it
    (on its objective: a balanced plan's decode against recipes within its prompt floor)."""
    import statistics

    from omni_place.objective import BALANCED_PROMPT_FLOOR

    rows = _rows(a.results)
    objectives = _objective_configs(a.results)
    lines = ["| rig | model | objective (config) | metric | plan | recipe | recipe value | ratio | noise | verdict |",
             "|---|---|---|---|---:|---|---:|---:|---:|---|"]
    out = []
    for rig, model in sorted({(r, m) for r, m, _ in rows}):
        objs = objectives.get((rig, model), {"balanced": "omni_place"})
        for objective, config in sorted(objs.items()):
            plan = rows.get((rig, model, config))
            if plan is None:
                continue
            # balanced ranks by decode among the plans within BALANCED_PROMPT_FLOOR of the best
            # prompt (objective.py): a recipe measured below that floor cannot beat a plan above it
            prompts = [statistics.median(r["pp"]) for (g, m, c), r in rows.items()
                       if (g, m) == (rig, model) and r["pp"] and (c == config or c in RECIPES)]
            floor = BALANCED_PROMPT_FLOOR * max(prompts, default=0.0)
            for metric in (("tg", "pp") if objective == "balanced" else (objective,)):
                for recipe in RECIPES:
                    rec = rows.get((rig, model, recipe))
                    if rec is None:
                        continue
                    pv, rv = statistics.median(plan[metric]), statistics.median(rec[metric])
                    noise = max((max(x) - min(x)) / statistics.median(x) for x in (plan[metric], rec[metric]))
                    ok = pv >= rv * (1 - noise)
                    verdict = "ok" if ok else "BELOW"
                    if objective == "balanced" and plan["pp"] and rec["pp"]:
                        plan_in = statistics.median(plan["pp"]) >= floor * (1 - noise)
                        by_floor = metric == "tg" and not ok and statistics.median(rec["pp"]) < floor
                        ok = plan_in and (ok or by_floor) if metric == "tg" else plan_in
                        verdict = ("ok: recipe's prompt below the floor" if by_floor and ok else
                                   "ok" if ok else "BELOW" if plan_in else "BELOW: plan's prompt below the floor")
                    out.append({"rig": rig, "model": model, "objective": objective, "config": config,
                                "metric": metric, "plan": pv, "recipe": recipe, "recipe_value": rv,
                                "ratio": pv / rv, "noise": noise, "at_least_as_good": ok})
                    lines.append(f"| {rig} | {model} | {objective} ({config}) | {metric} | {pv:.1f} | {recipe} | "
                                 f"{rv:.1f} | {pv / rv:.2f} | {noise:.0%} | {verdict} |")
    return _emit(lines, out, a.json)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models")
    m.add_argument("folder")
    m.add_argument("names", nargs="*", help="some of: " + ", ".join(SPEED_MODELS) + " (default: all)")
    m.add_argument("--header-only", action="store_true")
    m.add_argument("--router", choices=sorted(ROUTERS), default="unit", help="the routers' scale (module doc)")
    p = sub.add_parser("prepare")
    p.add_argument("model")
    p.add_argument("--cluster", required=True)
    p.add_argument("--rig", required=True)
    p.add_argument("--model-file")
    p.add_argument("--engine", default="llama.cpp", help="the dialect of the configurations (llama.cpp, ik_llama.cpp)")
    p.add_argument("--n-prompt", type=int, default=512)
    p.add_argument("--n-gen", type=int, default=32)
    p.add_argument("--ubatch", type=int, default=512)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int)
    p.add_argument("--configs", help="comma-separated subset of: fit, ot-exps, ncmoe, ngl, omni_place, "
                                      "omni_place_tg, omni_place_pp, omni_place_pin (the balanced plan pinned, "
                                      "or mmap'd when it pins), tail-exps (the smallest --n-cpu-moe's count of "
                                      "expert layers, the last ones), sweep (default: all)")
    p.add_argument("-o", "--output", required=True)
    g = sub.add_parser("rig")
    g.add_argument("name")
    g.add_argument("--gpu-free-mib", type=float, required=True)
    g.add_argument("--margin-mib", type=int, default=1024)
    g.add_argument("--cpu-gbs", type=float, required=True)
    g.add_argument("--cpu-gib", type=float, required=True)
    g.add_argument("--threads", type=int, required=True)
    g.add_argument("--description", default="one H200 held down by a ballast, plus CPU RAM")
    g.add_argument("-o", "--output", required=True)
    r = sub.add_parser("run")
    r.add_argument("matrices", nargs="+")
    r.add_argument("--bin", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--timeout", type=float, default=300)
    q = sub.add_parser("report")
    q.add_argument("results", nargs="+", help="folders `run` wrote (records.jsonl + logs/), or result folders "
                                              "of speed_truth's or engine_compare's layout (_rows)")
    q.add_argument("--headers", required=True, help="folder of the models' headers, <model>.hdr.gguf or "
                                                    ".hdr.gguf.xz (speed models: models --header-only)")
    q.add_argument("--rigs", required=True, help="folder of the cluster files, <rig>.toml or rig_<level>.toml")
    q.add_argument("--cpu-gbs", type=float, help="price with this CPU bandwidth instead of the rig files' (e.g. "
                                                 "an idle probe's where theirs was read under load)")
    q.add_argument("--params", help="SpeedParams as JSON (default: the model's defaults)")
    q.add_argument("--calibration", help="price with the parameters of `omni-place calibrate --format json`")
    q.add_argument("--only-model", help="only this model's configurations")
    q.add_argument("--routing", choices=("replayed", "uniform"), default="replayed",
                   help="the share of experts a ubatch touches: replayed from each speed model's router "
                        "(what the runs did, replay_routing) or the cost model's uniform-routing default "
                        "(always for models that are not speed models)")
    q.add_argument("--router", choices=sorted(ROUTERS), default="unit",
                   help="the routers the measured speed models had (raw: the first H200 runs)")
    q.add_argument("--json")
    w = sub.add_parser("versus")
    w.add_argument("results", nargs="+")
    w.add_argument("--json")
    v = sub.add_parser("vram")
    v.add_argument("results", nargs="+")
    v.add_argument("--headers", required=True)
    v.add_argument("--rigs", required=True)
    v.add_argument("--json")
    a = ap.parse_args(argv)
    return {"models": _models, "prepare": _prepare, "rig": _rig, "run": _run, "report": _report,
            "vram": _vram, "versus": _versus}[a.cmd](a)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
