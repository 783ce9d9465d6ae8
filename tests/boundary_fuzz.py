"""Structured fuzzing of the data boundaries past the GGUF reader: cluster TOML, plan JSON
(``verify --plan``), bench records (``calibrate``), the Python API and engine command lines
(``evaluate()`` / ``check -- ARGS``: hostile llama.cpp / ik_llama.cpp / llama-bench flags). Shared by
tests/test_fuzz_boundaries.py (hypothesis, a bounded number of cases in CI) and
benchmarks/fuzz_boundaries.py (the 100k / 20k / 5k-case runs).

Seeds are real inputs: the shipped presets and a hand-written cluster with every key, plans
from ``plan_split``, records shaped like ``omni-place bench``'s. Each case applies 1-3
mutations that know the format (a value replaced by a hostile one of another type or range, a
key renamed or dropped, a table repeated hundreds of times, deep nesting, 400-digit numbers,
NaN/Infinity, non-ASCII digits, path escapes, truncation, bit flips, binary bytes). Case ``i``
of run ``s`` is deterministic. :func:`run_case` classifies what happened: ``ok``,
``error:<Class>`` (an OmniPlaceError with a one-line message and the documented exit code), ``long_message``
(such an error over 2,000 characters), or ``crash`` / ``bad_error`` with a detail line.
"""
from __future__ import annotations

import copy
import io
import json
import math
import random
import shlex
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni_place.bench.calibrate import feasibility_check, points_from_records, predict_point
from omni_place.bench.records import comparison_table, load_records, target_check
from omni_place.cli import main as cli_main
from omni_place.cli.verify_cmd import plan_from_json, read_plan_json
from omni_place.cost import SpeedParams
from omni_place.devices import Cluster, Device, list_presets, load_cluster, load_preset
from omni_place.devices.cluster import _preset_dir
from omni_place.errors import EXIT_BAD_INPUT, EXIT_NOTHING_FITS, NothingFitsError, OmniPlaceError
from omni_place.model import load_model
from omni_place.plan import evaluate, plan_split
from omni_place.reference_models import write_header_only

from .arch_models import tiny_llama_spec

TARGETS = ("cluster", "plan", "records", "api", "flags")

# ---------------------------------------------------------------------------------------------
# Hostile values
# ---------------------------------------------------------------------------------------------

TOML_VALUES = [
    "1" + "0" * 400, "1" + "0" * 5000, "-1", "0", "nan", "inf", "-inf", "1e308", "1e-308", "0.0000001",
    "9223372036854775807", "-9223372036854775808", '"24"', "true", "[]", "{}", "[1, 2]", '"' + "x" * 5000 + '"',
    '"CUDA00"', '"CUDA\uff10"', '"CUDA\u0660"', '"RPC01"', '"CPU"', '"RPC0"', '"CUDA1"', '"gpu"', '"rpc"', '"cpu"',
    '"[::1]:50052"', '"[fe80::1]:1"', '"10.0.0.1:50052"', '"host:0"', '"a:b:c"', '"h:\uff15\uff10"',
    '"\\u001b[31merror: fake"', '"../../../etc"', '"RTX 4090"', '"rtx 3090"', '"nonsense gpu"', "4", "16", "7",
    "[" * 3000 + "]" * 3000, "{a=" * 2000 + "1" + "}" * 2000, '"\\u0000"', "1979-05-27T07:32:00Z",
]
EXTREME_KEYS = ("memory_gib", "bandwidth_gbs", "tflops", "link_gbs", "link_latency_us", "disk_gbs", "margin_mib")
EXTREME_NUMBERS = ["1e-9", "0.001", "0.5", "1", "3", "1024", "1048576", "99999", "1e5", "1e4", "1e7", "0"]
TOML_KEYS = ["name", "kind", "model", "catalog", "memory_gib", "bandwidth_gbs", "tflops", "link_gbs",
             "link_latency_us", "pcie_gen", "pcie_width", "endpoint", "threads", "disk_gbs", "margin_mib", "host",
             "peer_access", "compute_capability", "memory_gb", "discover", "description", "devices", "bogus"]
JSON_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2 ** 63, -(2 ** 63), 10 ** 40, 1.5, -0.0, 1e308, "", "x", "CUDA0", "CPU", "RPC9",
    "llama.cpp", "ik_llama.cpp", "vllm", "-ngl", "../../x", "\x1b[31m", "x" * 5000, [], {}, [1, 2], ["-ngl", "99"],
    ["-ts", "nan,1"], ["-ot", "(a+)+$=CPU"], {"name": "CUDA0"}, {"device": "CUDA0"}, [[[[[]]]]],
]
JSON_RAW = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 400, "[" * 5000 + "]" * 5000, '"\\ud800"']


def _hostile_json(rnd: random.Random) -> Any:
    v = rnd.choice(JSON_VALUES)
    return copy.deepcopy(v)


def _raw_mutations(rnd: random.Random, data: bytes) -> tuple[bytes, str]:
    op = rnd.choice(("truncate", "bitflip", "insert", "bytes"))
    if not data:
        return bytes(rnd.randrange(256) for _ in range(8)), op
    i = rnd.randrange(len(data))
    if op == "truncate":
        return data[:i], op
    if op == "bitflip":
        b = bytearray(data)
        b[i] ^= 1 << rnd.randrange(8)
        return bytes(b), op
    blob = bytes(rnd.randrange(256) for _ in range(rnd.choice((1, 4, 16))))
    return (data[:i] + blob + data[i:]) if op == "insert" else (data[:i] + blob + data[i + len(blob):]), op


# ---------------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------------

FULL_CLUSTER = """name = "desk"
description = "every key"

[[devices]]
name = "CPU"
kind = "cpu"
memory_gib = 64
bandwidth_gbs = 65.5
threads = 16
disk_gbs = 3.5
margin_mib = 2048

[[devices]]
name = "CUDA1"
kind = "gpu"
model = "home-made"
memory_gib = 11.5
bandwidth_gbs = 448
tflops = 60
pcie_gen = 3
pcie_width = 8
compute_capability = "8.6"
link_latency_us = 7

[[devices]]
name = "RPC0"
kind = "rpc"
catalog = "rtx 3090"
memory_gib = 23.5
endpoint = "192.168.1.20:50052"
link_gbs = 1.25

[[devices]]
name = "CUDA0"
kind = "gpu"
catalog = "RTX 4090"
link_gbs = 20
peer_access = false
"""


@dataclass
class Seeds:
    """What every target mutates, and the files its cases refer to."""

    workdir: Path
    model: Path
    clusters: list[str] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)


def make_seeds(workdir: Path) -> Seeds:
    workdir.mkdir(parents=True, exist_ok=True)
    model = write_header_only(tiny_llama_spec(), workdir / "tiny.gguf")[0]
    seeds = Seeds(workdir, model)
    seeds.clusters = [(_preset_dir() / f"{n}.toml").read_text() for n in list_presets()] + [FULL_CLUSTER]
    (workdir / "rig.toml").write_text(FULL_CLUSTER)
    prof = load_model(model)
    for cluster in ("seed", str(workdir / "rig.toml")):
        for engine in ("llama.cpp", "ik_llama.cpp"):
            seeds.plans.append(json.loads(plan_split(prof, cluster, engine=engine, ctx=2048).to_json()))
    for status, test, homes in (("ok", "tg64", ["CUDA0", "CUDA1"]), ("ok", "pp512", ["CUDA0", "CPU"]),
                                ("oom_load", "pp512", ["RPC0", "RPC0"])):
        seeds.records.append({
            "schema": "omni_place.bench/1", "model": "tiny", "rig": "rig", "n_prompt": 512, "n_gen": 64,
            "ubatch": 512, "threads": 8, "engine": "llama.cpp", "config": "omni_place", "attempt": 0,
            "argv": ["-ngl", "99"], "env": {}, "log": None, "test": test, "status": status,
            "avg_ts": 12.5 if status == "ok" else None, "stddev_ts": 0.1 if status == "ok" else None,
            "predicted": {"feasible": True, "tg_tps": 10.0, "pp_tps": 100.0},
            "placement": {"order": ["CUDA0", "CUDA1", "RPC0"], "layer_home": homes, "cpu_experts": [[], []],
                          "output": homes[-1]}})
    return seeds


# ---------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------


def _mutate_toml(rnd: random.Random, text: str) -> tuple[str, str]:
    lines = text.splitlines()
    values = [i for i, ln in enumerate(lines) if "=" in ln and not ln.lstrip().startswith("#")]
    heads = [i for i, ln in enumerate(lines) if ln.strip() == "[[devices]]"]
    op = rnd.choice(("value", "value", "value", "extreme", "extreme", "key", "drop", "dup_line", "dup_device", "top",
                     "nest", "swap", "raw"))
    numeric = [i for i in values if lines[i].split("=", 1)[0].strip() in EXTREME_KEYS]
    if op == "extreme" and numeric:
        i = rnd.choice(numeric)  # in range but extreme: the file is valid, the planner must cope
        lines[i] = lines[i].split("=", 1)[0] + "= " + rnd.choice(EXTREME_NUMBERS)
    elif op == "value" and values:
        i = rnd.choice(values)
        lines[i] = lines[i].split("=", 1)[0] + "= " + rnd.choice(TOML_VALUES)
    elif op == "key" and values:
        i = rnd.choice(values)
        lines[i] = rnd.choice(TOML_KEYS) + " =" + lines[i].split("=", 1)[1]
    elif op == "drop" and lines:
        del lines[rnd.randrange(len(lines))]
    elif op == "dup_line" and lines:
        i = rnd.randrange(len(lines))
        lines.insert(i, lines[i])
    elif op == "dup_device" and heads:
        i = rnd.choice(heads)
        end = next((h for h in heads if h > i), len(lines))
        block = lines[i:end]
        lines += block * rnd.choice((1, 2, 8, 70, 400))
    elif op == "top":
        lines.insert(0, f"{rnd.choice(('name', 'description', 'discover', 'extra'))} = {rnd.choice(TOML_VALUES)}")
    elif op == "nest":
        depth = rnd.choice((10, 100, 1000, 5000))
        lines.insert(0, "deep = " + "[" * depth + "]" * depth)
    elif op == "swap" and len(lines) > 1:
        i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    else:
        data, op = _raw_mutations(rnd, "\n".join(lines).encode("utf-8", errors="surrogateescape"))
        return data.decode("utf-8", errors="surrogateescape"), op
    return "\n".join(lines) + "\n", op


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):
            out += _paths(v, prefix + (i,))
    return out


def _mutate_json(rnd: random.Random, doc: Any) -> tuple[Any, str]:
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return _hostile_json(rnd), "replace_root"
    path = rnd.choice(paths)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    op = rnd.choice(("value", "value", "value", "drop", "wrap", "grow"))
    if op == "drop":
        del parent[path[-1]]
    elif op == "wrap":
        parent[path[-1]] = [parent[path[-1]]] if rnd.random() < 0.5 else {"x": parent[path[-1]]}
    elif op == "grow" and isinstance(parent[path[-1]], list) and len(json.dumps(parent[path[-1]])) < 10_000:
        parent[path[-1]] = parent[path[-1]] * rnd.choice((2, 100, 1000))
    else:
        parent[path[-1]] = _hostile_json(rnd)
        op = "value"
    return doc, op


def _dump(rnd: random.Random, doc: Any) -> tuple[bytes, list[str]]:
    """The JSON text of ``doc``, sometimes with a raw token (NaN, 1e400, ...) or byte mutation."""
    text = json.dumps(doc)
    ops = []
    if rnd.random() < 0.2:
        tokens = [i for i, c in enumerate(text) if c in "0123456789"]
        if tokens:
            i = rnd.choice(tokens)
            j = i
            while j < len(text) and text[j] in "0123456789.eE+-":
                j += 1
            text = text[:i] + rnd.choice(JSON_RAW) + text[j:]
            ops.append("raw_token")
    data = text.encode("utf-8", errors="surrogatepass")
    if rnd.random() < 0.1:
        data, op = _raw_mutations(rnd, data)
        ops.append(op)
    return data, ops


@dataclass
class Case:
    target: str
    ops: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # name -> content, written into the case folder
    call: tuple[str, dict[str, Any]] | None = None  # api: (function, kwargs)


def make_case(seeds: Seeds, target: str, seed: int, case: int, rnd: random.Random | None = None) -> Case:
    rnd = rnd or random.Random(f"{target}:{seed}:{case}")
    n = rnd.choice((1, 1, 2, 3))
    if target == "cluster":
        text, ops = rnd.choice(seeds.clusters), []
        for _ in range(n):
            text, op = _mutate_toml(rnd, text)
            ops.append(op)
        return Case(target, ops, {"rig.toml": text.encode("utf-8", errors="surrogateescape")})
    if target == "plan":
        doc, ops = copy.deepcopy(rnd.choice(seeds.plans)), []
        for _ in range(n):
            doc, op = _mutate_json(rnd, doc)
            ops.append(op)
        data, raw = _dump(rnd, doc)
        return Case(target, ops + raw, {"plan.json": data})
    if target == "records":
        recs, ops = copy.deepcopy(seeds.records), []
        for _ in range(n):
            i = rnd.randrange(len(recs))
            recs[i], op = _mutate_json(rnd, recs[i])
            ops.append(op)
        lines = []
        for r in recs:
            data, raw = _dump(rnd, r)
            ops += raw
            lines.append(data)
        if rnd.random() < 0.1:
            lines.insert(rnd.randrange(len(lines) + 1), rnd.choice((b"", b"   ", b"\xff\xfe\x00", b"[]", b"null")))
            ops.append("line")
        return Case(target, ops, {"records.jsonl": b"\n".join(lines) + b"\n"})
    if target == "flags":
        return _flags_case(rnd)
    return _api_case(seeds, rnd)


API_ARGS: dict[str, list[Any]] = {
    "ctx": [4096, 1, 0, -1, 1 << 24, (1 << 24) + 1, 1 << 62, 4096.0, math.nan, math.inf, None, "4096", True],
    "ubatch": [512, 1, 0, 65536, 65537, "512", 512.5, None, False],
    "depth": [0, 100, -1, 1 << 30, 1.5, None],
    "kv_type": ["f16", "Q8_0", "q4_0", "q3_k", "", None, 8, ["f16"]],
    "kv_type_v": [None, "f16", "q8_0", "bf16", 5],
    "flash_attn": [True, False, 1, "yes", None],
    "objective": ["tg", "pp", 0.0, 0.5, 1.0, 1.5, -0.1, math.nan, True, None, "speed", 1],
    "engine": ["llama.cpp", "ik_llama.cpp", "vllm", "exllama", None, ["llama.cpp"]],
    "allow_paging": [False, True, 0, "no"],
    "params": [None, SpeedParams(), {"gpu_bw_scale": 1}, "defaults", SpeedParams(gpu_bw_scale=math.nan)],
    "argv": [["-ngl", "99"], ["-ngl", "0"], ["-ngl", "99", "-ts", "3,1"], [], "-ngl 99", None, [1, 2],
             ["-c", "nan"], ["--n-cpu-moe", "1"], ["-ngl", "-5"], ("-ngl", "99")],
    "tool": ["server", "bench", "cli", None],
    "model": ["MODEL", None, 3, "/nonexistent.gguf", b"MODEL", ["MODEL"], "x" * 5000, "a\0b", "/dev/zero"],
    "cluster": ["seed", "h100-x2", "auto", None, 5, "no-such-preset", "/nonexistent.toml", "RIG", "x" * 5000,
                "a\0b.toml", "/dev/zero"],
    "memory_bytes": [1 << 30, 0, -1, 1 << 60, 2.5, "24", None],
    "bandwidth_gbs": [900.0, 0, -1, math.nan, math.inf, "900", None],
    "kind": ["gpu", "cpu", "rpc", "tpu", None],
    "preset": ["seed", None, 5, "../seed", "SEED", "x" * 5000, "seed\n"],
    "name": ["rig", "", None, 5, "x" * 5000, "../../etc"],
    "devices": [(), [], "CUDA0", None, [None], ({"name": "CUDA0"},)],
}
API_FUNCTIONS = {
    "plan_split": ("model", "cluster", "ctx", "ubatch", "depth", "kv_type", "kv_type_v", "flash_attn",
                   "objective", "engine", "allow_paging", "params"),
    "evaluate": ("model", "cluster", "argv", "ctx", "engine", "tool", "allow_paging", "params"),
    "Device": ("memory_bytes", "bandwidth_gbs", "kind"),
    "load_model": ("model",),
    "load_cluster": ("cluster",),
    "load_preset": ("preset",),
    "Cluster": ("name", "devices"),
}


def _api_case(seeds: Seeds, rnd: random.Random) -> Case:
    fn = rnd.choice(tuple(API_FUNCTIONS))
    names = API_FUNCTIONS[fn]
    kwargs: dict[str, Any] = {}
    ops = []
    for name in names:
        if name in ("model", "cluster") or rnd.random() < 0.4:
            kwargs[name] = rnd.choice(API_ARGS[name])
            if rnd.random() < 0.7 and name in ("model", "cluster"):
                kwargs[name] = API_ARGS[name][0]  # mostly real ones, so later arguments are reached
            ops.append(name)
    return Case("api", ops or ["defaults"], call=(fn, kwargs))


# ---------------------------------------------------------------------------------------------
# Engine flags: llama.cpp / ik_llama.cpp / llama-bench command lines
# ---------------------------------------------------------------------------------------------

FLAG_SEEDS: list[tuple[str, list[str]]] = [
    ("server", ["-ngl", "99", "-ts", "3,1", "-c", "8192"]),
    ("server", ["-ngl", "99", "-dev", "CUDA0,CUDA1", "-ot", r"blk\.[0-9]\.ffn_.*=CPU", "-c", "4096", "-ub", "512",
                "-fa", "on"]),
    ("server", ["--n-gpu-layers", "40", "--tensor-split", "1,1", "--ctx-size=16384", "-ctk", "q8_0", "-ctv", "q8_0"]),
    ("server", ["-ngl", "99", "-ncmoe", "10", "-sm", "layer", "-mg", "0", "-b", "2048"]),
    ("server", ["-ngl", "999", "-cmoe", "-ot", "exps=CPU", "--port", "8080", "-np", "4"]),
    ("server", ["-sm", "none", "-mg", "1", "-ngl", "99", "--rpc", "192.168.1.20:50052"]),
    ("bench", ["-ngl", "99", "-ts", "3/1", "-p", "512", "-n", "128", "-fa", "1",
               "-ot", r"blk\.0\.=CPU;blk\.1\.=CUDA0"]),
    ("bench", ["-ngl", "99", "--n-cpu-moe", "4", "-d", "1024", "-dev", "CUDA0/CUDA1", "-ub", "256"]),
]
VALUED_FLAGS = ["-ngl", "--n-gpu-layers", "-ts", "--tensor-split", "-dev", "--device", "-ot", "--override-tensor",
                "-ncmoe", "--n-cpu-moe", "-c", "--ctx-size", "-b", "-ub", "-ctk", "-ctv", "-fa", "-sm", "-mg",
                "--rpc", "-rpc", "-p", "-n", "-d"]
FLAG_VALUES = [
    "1" + "0" * 400, "-1", "0", "99", "nan", "inf", "-inf", "1e400", "\u0661\u0662", "\uff11\uff12", "\u0969", "",
    " ", "99 ", " 99", "0x10", "1e3", "1_000", "+5", "2147483647", "2147483648", "-2147483649", "x" * 5000, "\x00",
    "\x1b[31m", "auto", "all", "on", "off", "-", "--", "=", "1,2", "1/2", "q8_0", "Q4_K", "bf16", "f32", "iq4_nl",
    "\udcff", "CUDA0", "none", "-ngl", "٣,١", "é", "\u202e99",
]
UNKNOWN_FLAGS = [["--bogus"], ["-zz", "1"], ["--port", "8080"], ["---"], ["-"], ["--"], ["\u2014ngl", "99"],
                 ["-ngl99"], ["--n-gpu-layers"], ["-fmoe"], ["-rtr"], ["--no-mmap"], ["-t", "-5"], ["stray"],
                 ["-ngl=99"], ["--tensor-split="], ["-x" * 500]]
OT_PATTERNS = [r"blk\.(3|4)\.ffn_.*_exps", "exps", ".*", "", "(", ")", "[", "a{99999}", "(?<=x)", r"\p{L}+",
               "(a+)+$", "(a|aa)*b", "(.*)*x", "((a*)*)*$", "(" * 5000 + "a" + ")" * 5000, "x" * 5000,
               r"^output\.", "blk\\.\uff10\\.", "(?i)BLK", "\\", r"\1", "(?P<a>x)(?P=a)", "=", "a=b=c"]
CATASTROPHIC = [r"^((\w|\.){1,4}){1,30}[A-Z]", r"^(\w+\.?)*[A-Z]$", r"^((.)*)*X"]
OT_TARGETS = ["CPU", "CUDA0", "CUDA1", "CUDA9", "RPC0", "RPC[192.168.1.20:50052]", "", "cpu", "\udcff", "=CPU"]
TS_VALUES = ["3,1", "3/1", "3;1", "3,,1", ",", "", "1," * 17, "1 1", "3:1", "1e400,1", "0,0", "-0,1", "٣,١",
             ",".join(["1"] * 16), "1/" * 40, "0.5", "1e-45,1", "3.4e38,3.4e38", "nan", "1,-1", "  3 , 1 "]
DEV_VALUES = ["CUDA0", "CUDA9", "Vulkan0", "none", "CUDA0,CUDA0", "", ",", "CUDA0,RPC[10.0.0.1:1]", "CPU",
              "CUDA1/CUDA0", "cuda0", "CUDA0," * 200, "RPC0", "\u0000", "Metal"]
SM_VALUES = ["none", "row", "tensor", "layer", "graph", "NONE", "", "bogus"]
MG_VALUES = ["0", "1", "-1", "5", "99", "2147483647", "-2147483648", "x", ""]
NCMOE_VALUES = ["2147483647", "99999999999", "1" + "0" * 400, "-1", "0", "1e9", "4294967296", "1000000"]
FLAG_OPS = ("value", "value", "unknown", "missing", "repeat", "ot", "ot", "ts", "dev", "sm", "ncmoe", "string",
            "long", "equals", "drop", "swap", "engine")


def _mutate_argv(rnd: random.Random, argv: list[str]) -> tuple[list[str], str]:
    op = rnd.choice(FLAG_OPS)
    flags = [i for i, a in enumerate(argv[:-1]) if a in VALUED_FLAGS]
    pos = rnd.randrange(len(argv) + 1)
    if op == "value" and flags:
        i = rnd.choice(flags)
        argv[i + 1] = rnd.choice(FLAG_VALUES)
    elif op == "value":
        argv += [rnd.choice(VALUED_FLAGS), rnd.choice(FLAG_VALUES)]
    elif op == "unknown":
        argv[pos:pos] = rnd.choice(UNKNOWN_FLAGS)
    elif op == "missing":
        if flags and rnd.random() < 0.5:
            del argv[rnd.choice(flags) + 1]
        else:
            argv.append(rnd.choice(VALUED_FLAGS))
    elif op == "repeat" and flags:
        i = rnd.choice(flags)
        argv[i:i] = argv[i:i + 2] * rnd.choice((1, 2, 50, 1000))
    elif op == "ot":
        n = rnd.choice((1, 1, 2, 5, 40))
        pats = [rnd.choice(CATASTROPHIC) if rnd.random() < 0.03 else rnd.choice(OT_PATTERNS) for _ in range(n)]
        sep = rnd.choice((",", ";", ",", "/"))
        argv += [rnd.choice(("-ot", "--override-tensor")),
                 sep.join(f"{p}={rnd.choice(OT_TARGETS)}" if rnd.random() < 0.9 else p for p in pats)]
    elif op == "ts":
        argv += ["-ts", rnd.choice(TS_VALUES)]
    elif op == "dev":
        argv += [rnd.choice(("-dev", "--device")), rnd.choice(DEV_VALUES)]
    elif op == "sm":
        argv += ["-sm", rnd.choice(SM_VALUES)] + (["-mg", rnd.choice(MG_VALUES)] if rnd.random() < 0.7 else [])
    elif op == "ncmoe":
        argv += [rnd.choice(("-ncmoe", "--n-cpu-moe")), rnd.choice(NCMOE_VALUES)]
    elif op == "string":  # one string, as a shell would get it; sometimes with a quote left open
        text = shlex.join(argv)
        if rnd.random() < 0.6:
            i = rnd.randrange(len(text) + 1)
            text = text[:i] + rnd.choice(("'", '"', "\\", "'\"")) + text[i:]
        argv = [text + " "]
    elif op == "long":
        argv += rnd.choice((["-ngl", "99"], ["--no-mmap"], ["-ot", "exps=CPU"], ["-x"])) * rnd.choice((1000, 20000))
    elif op == "equals" and flags:
        i = rnd.choice(flags)
        argv[i:i + 2] = [f"{argv[i]}={argv[i + 1]}"]
    elif op == "drop" and argv:
        del argv[rnd.randrange(len(argv))]
    elif op == "swap" and len(argv) > 1:
        i, j = rnd.randrange(len(argv)), rnd.randrange(len(argv))
        argv[i], argv[j] = argv[j], argv[i]
    else:
        op = "engine"  # only the engine / tool / cluster change (made in _flags_case)
    return argv, op


def _flags_case(rnd: random.Random) -> Case:
    tool, argv = rnd.choice(FLAG_SEEDS)
    argv, ops = list(argv), []
    for _ in range(rnd.choice((1, 1, 2, 3))):
        argv, op = _mutate_argv(rnd, argv)
        ops.append(op)
    if "engine" in ops or rnd.random() < 0.1:
        tool = rnd.choice(("server", "bench"))
    engine = rnd.choice(("llama.cpp", "ik_llama.cpp"))
    cluster = rnd.choice(("RIG", "RIG", "seed", "h100-x2"))
    how = "check" if rnd.randrange(97) == 0 else "evaluate"  # every ~97th case through the CLI
    return Case("flags", ops, call=(how, {"argv": argv, "engine": engine, "tool": tool, "cluster": cluster}))


def _run_check(seeds: Seeds, kw: dict[str, Any]) -> tuple[str, str]:
    """``omni-place check MODEL --cluster/--preset X --engine E --tool T -- ARGV`` in-process:
    exit 0, or 2 / 3 with one ``error:`` line (and at most one ``hint:`` line)."""
    cluster = _resolve(kw["cluster"], seeds)
    where = ["--cluster", cluster] if cluster.endswith(".toml") else ["--preset", cluster]
    args = ["check", str(seeds.model), *where, "--engine", kw["engine"], "--tool", kw["tool"], "--", *kw["argv"]]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli_main(args)
    lines = [ln for ln in err.getvalue().splitlines() if not ln.startswith("warning: ")]
    if "Traceback" in err.getvalue():
        return "crash", f"check: traceback on stderr: {err.getvalue()[-300:]!r}"
    if code == 0:
        return "ok", ""
    if code not in (EXIT_BAD_INPUT, EXIT_NOTHING_FITS):
        return "bad_error", f"check: exit code {code}: {err.getvalue()[:200]!r}"
    if not lines or len(lines) > 2 or not lines[0].startswith("error: ") or \
            (len(lines) == 2 and not lines[1].startswith("hint: ")):
        return "bad_error", f"check: exit {code}, not one error line: {err.getvalue()[:300]!r}"
    if len(lines[0]) > 2000:
        return "long_message", f"check: {len(lines[0])} characters: {lines[0][:160]!r}"
    return f"error:check-exit-{code}", lines[0][:200]


# ---------------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------------


def _resolve(value: Any, seeds: Seeds) -> Any:
    if value == "MODEL":
        return str(seeds.model)
    if value == "RIG":
        return str(seeds.workdir / "rig.toml")
    return value


def _run_api(seeds: Seeds, call: tuple[str, dict[str, Any]]) -> None:
    fn, raw = call
    kw = {k: _resolve(v, seeds) for k, v in raw.items()}
    if fn == "plan_split":
        json.loads(plan_split(kw.pop("model"), kw.pop("cluster"), **kw).to_json())
    elif fn == "evaluate":
        evaluate(kw.pop("model"), kw.pop("cluster"), kw.pop("argv", ["-ngl", "99"]), **kw).to_json()
    elif fn == "Device":
        Device(**{"name": "CUDA0", "kind": "gpu", "memory_bytes": 1 << 30, "bandwidth_gbs": 900.0, **kw})
    elif fn == "load_model":
        load_model(kw["model"])
    elif fn == "load_preset":
        load_preset(kw.get("preset", "seed"))
    elif fn == "Cluster":
        Cluster(**{"name": "rig", "devices": (), **kw})
    else:
        load_cluster(kw["cluster"])


def execute(seeds: Seeds, case: Case, casedir: Path) -> tuple[str, str] | None:
    """Run one case's target; an OmniPlaceError or nothing is the contract (a ``check`` run
    through the CLI returns its own outcome, classified from the exit code and stderr)."""
    for name, data in case.files.items():
        (casedir / name).write_bytes(data)
    if case.target == "cluster":
        cluster = load_cluster(casedir / "rig.toml")
        json.loads(plan_split(seeds.model, cluster, ctx=2048).to_json())
    elif case.target == "plan":
        data = read_plan_json(casedir / "plan.json")
        plan, _ = plan_from_json(data, str(seeds.model), str(seeds.workdir / "rig.toml"))
        json.loads(plan.to_json())
    elif case.target == "records":
        recs = load_records([casedir / "records.jsonl"])
        comparison_table(recs)
        target_check(recs)
        feasibility_check(recs)
        for pt in points_from_records(recs, search=[seeds.workdir]):
            predict_point(pt, SpeedParams())
    elif case.target == "flags":
        assert case.call is not None
        how, kw = case.call
        if how == "check":
            return _run_check(seeds, kw)
        evaluate(str(seeds.model), _resolve(kw["cluster"], seeds), kw["argv"], engine=kw["engine"],
                 tool=kw["tool"]).to_json()
    else:
        assert case.call is not None
        _run_api(seeds, case.call)
    return None


def run_case(seeds: Seeds, case: Case, casedir: Path) -> tuple[str, str]:
    """(outcome, detail): ok, error:<Class>, bad_error (more than one line or an exit code other
    than 2, or 3 where a plan is made) or crash (any other exception, with where it was raised)."""
    try:
        return execute(seeds, case, casedir) or ("ok", "")
    except OmniPlaceError as err:
        msg = err.message
        if not msg or "\n" in msg or "\n" in (err.hint or ""):
            return "bad_error", f"{type(err).__name__}: not one line: {msg[:300]!r}"
        allowed = {EXIT_BAD_INPUT} | ({EXIT_NOTHING_FITS} if isinstance(err, NothingFitsError) else set())
        if err.exit_code not in allowed:
            return "bad_error", f"{type(err).__name__}: exit code {err.exit_code}: {msg[:200]}"
        if len(msg) > 2000:  # one line, but one a terminal wraps over a screen: counted apart
            return "long_message", f"{type(err).__name__}: {len(msg)} characters: {msg[:160]!r}"
        return f"error:{type(err).__name__}", msg[:200]
    except Exception as err:  # noqa: BLE001 - that is what we are looking for (a timeout is a BaseException)
        tb = traceback.extract_tb(err.__traceback__)[-1]
        return "crash", f"{type(err).__name__}: {str(err)[:200]} at {Path(tb.filename).name}:{tb.lineno}"


__all__ = ["TARGETS", "Case", "Seeds", "make_case", "make_seeds", "run_case"]
