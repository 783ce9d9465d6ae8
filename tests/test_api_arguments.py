"""Public functions and numeric CLI options refuse arguments of the wrong type or value with an
InvalidArgumentError (or ClusterError) naming the argument, never a bare TypeError or a silent
NaN; and the boundary helpers in omni_place.validate do what they promise."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from omni_place import validate
from omni_place.cost import SpeedParams
from omni_place.devices import Device
from omni_place.errors import ClusterError, InvalidArgumentError, OmniPlaceError
from omni_place.model import load_model
from omni_place.plan import evaluate, plan_split
from omni_place.reference_models import write_header_only

from .arch_models import tiny_llama_spec
from .test_cli_errors import assert_one_line_error
from .test_hostile_model import run


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_model(write_header_only(tiny_llama_spec(), tmp_path_factory.mktemp("m") / "tiny.gguf")[0])


PLAN_ARGUMENTS = [
    ("ctx", math.nan), ("ctx", None), ("ctx", 0), ("ctx", -1), ("ctx", 4096.0), ("ctx", "4096"), ("ctx", True),
    ("ctx", 1 << 40), ("ubatch", "512"), ("ubatch", 0), ("ubatch", 1 << 20), ("ubatch", math.inf),
    ("depth", -1), ("depth", 1.5), ("depth", None), ("kv_type", 8), ("kv_type", "q3_k"), ("kv_type", None),
    ("kv_type_v", ["f16"]), ("flash_attn", "yes"), ("flash_attn", 1), ("allow_paging", None),
    ("objective", math.nan), ("objective", 1.5), ("objective", -0.1), ("objective", True), ("objective", "speed"),
    ("objective", None), ("engine", None), ("engine", ["llama.cpp"]), ("engine", "exllama"),
    ("params", {"gpu_bw_scale": 0.5}), ("params", "defaults"),
]


@pytest.mark.parametrize(("name", "value"), PLAN_ARGUMENTS, ids=lambda v: repr(v)[:20])
def test_plan_split_refuses_bad_arguments_by_name(model: Any, name: str, value: Any) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        plan_split(model, "seed", **{name: value})
    assert name.split("_v")[0] in err.value.message or name in ("engine", "objective"), err.value.message
    assert "\n" not in err.value.message


EVALUATE_ARGUMENTS = [("argv", "-ngl 99"), ("argv", None), ("argv", [1, 2]), ("argv", [b"-ngl"]), ("ctx", math.nan),
                      ("ctx", "4096"), ("ctx", 0), ("tool", "cli"), ("tool", None), ("allow_paging", "no"),
                      ("params", 3)]


@pytest.mark.parametrize(("name", "value"), EVALUATE_ARGUMENTS, ids=lambda v: repr(v)[:20])
def test_evaluate_refuses_bad_arguments_by_name(model: Any, name: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"argv": ["-ngl", "99"], name: value}
    argv = kwargs.pop("argv")
    with pytest.raises(InvalidArgumentError) as err:
        evaluate(model, "seed", argv, **kwargs)
    assert name in err.value.message, err.value.message


@pytest.mark.parametrize("value", [None, 3, 2.5, ["m.gguf"], b"m.gguf"])
def test_model_argument(value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="model must be a path"):
        plan_split(value, "seed")


@pytest.mark.parametrize("value", [None, 3, ["seed"]])
def test_cluster_argument(model: Any, value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="cluster must be"):
        plan_split(model, value)


@pytest.mark.parametrize(("field", "value"), [
    ("memory_bytes", "24"), ("memory_bytes", 0), ("memory_bytes", 1 << 60), ("memory_bytes", 2.5),
    ("bandwidth_gbs", math.nan), ("bandwidth_gbs", "900"), ("bandwidth_gbs", -1), ("tflops", math.inf),
    ("margin_bytes", -1), ("threads", 0), ("link_latency_us", math.nan), ("kind", "tpu"), ("name", 5),
    ("peer_access", "yes"), ("source", 5), ("disk_gbs", 0.0),
])
def test_device_fields(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"name": "CUDA0", "kind": "gpu", "memory_bytes": 1 << 30, "bandwidth_gbs": 900.0,
                              field: value}
    with pytest.raises(ClusterError) as err:
        Device(**kwargs)
    assert field.removesuffix("_bytes") in err.value.message


def test_good_arguments_still_plan(model: Any) -> None:
    plan = plan_split(model, "seed", ctx=8192, ubatch=256, kv_type="Q8_0", depth=100, objective=0.5,
                      params=SpeedParams())
    assert plan.context.type_k == "q8_0" and plan.context.ctx == 8192 and plan.feasible
    assert evaluate(model, "seed", ("-ngl", "99"), ctx=2048).context.ctx == 2048  # a tuple is a sequence


# ---------------------------------------------------------------------------------------------
# Numeric CLI options: finite and bounded
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, fragment", [
    (["rpc-server", "--mem-gib", "1e308"], "--mem-gib"), (["rpc-server", "--mem-gib", "nan"], "--mem-gib"),
    (["rpc-server", "--mem-gib", "inf"], "--mem-gib"), (["rpc-server", "--mem-gib", "0"], "--mem-gib"),
    (["rpc-server", "--threads", "100000"], "--threads"),
    (["verify", "m.gguf", "--plan", "p.json", "--timeout", "nan"], "--timeout"),
    (["verify", "m.gguf", "--plan", "p.json", "--timeout", "inf"], "--timeout"),
    (["bench", "m.gguf", "--timeout", "1e400"], "--timeout"),
])
def test_numeric_options_are_finite_and_bounded(args: list[str], fragment: str) -> None:
    code, out, err = run(args)
    assert_one_line_error(code, out, err, fragment)


# ---------------------------------------------------------------------------------------------
# The helpers themselves
# ---------------------------------------------------------------------------------------------


def test_integer_and_number() -> None:
    assert validate.integer(5, "n", lo=0, hi=9) == 5
    for bad in (True, 5.0, "5", None, [5]):
        with pytest.raises(InvalidArgumentError, match="n must be an integer"):
            validate.integer(bad, "n")
    with pytest.raises(InvalidArgumentError, match=r"n = <41-digit integer> is out of range \(0..9\)"):
        validate.integer(10 ** 40, "n", lo=0, hi=9)
    assert validate.number(3, "x", lo=0, lo_open=True) == 3.0
    for bad, msg in ((math.nan, "finite"), (-math.inf, "finite"), (10 ** 400, "beyond any finite number"),
                     (False, "must be a number"), (0, r"out of range \(0, 1\]")):
        with pytest.raises(InvalidArgumentError, match=msg):
            validate.number(bad, "x", lo=0, hi=1, lo_open=True)


def test_errors_carry_the_callers_class() -> None:
    with pytest.raises(ClusterError, match="^f.toml:3: k must be"):
        validate.integer("x", "k", error=lambda m: ClusterError(f"f.toml:3: {m}"))


def test_show_never_converts_a_huge_integer_to_text() -> None:
    assert validate.show(10 ** 5000) == "<5001-digit integer>"  # str() of it raises ValueError
    assert validate.show("x" * 500).endswith("...") and len(validate.show("x" * 500)) <= 48


@pytest.mark.parametrize("doc, fragment", [
    ("NaN", "NaN"), ("[Infinity]", "Infinity"), ("1e400", "beyond any finite"), ("1" * 31, "31 digits"),
    ("[" * 10 ** 5 + "]" * 10 ** 5, "nests too deeply"), ('{"a": 1,}', "not JSON")])
def test_load_json_is_strict(doc: str, fragment: str) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        validate.load_json(doc, "doc")
    assert validate.load_json('{"a": [1, 2.5, "x", null, true]}', "doc") == {"a": [1, 2.5, "x", None, True]}


def test_dump_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        validate.dump_json({"x": math.inf})


def test_read_file_caps_and_refuses_non_files(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 100)
    assert validate.read_file(p, limit=100, what="f") == b"x" * 100
    with pytest.raises(InvalidArgumentError, match="more than the 99"):
        validate.read_file(p, limit=99, what="f")
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        validate.read_file(tmp_path, limit=99, what="f")
    with pytest.raises(InvalidArgumentError, match="not found"):
        validate.read_file(tmp_path / "nope", limit=99, what="f")
    if os.path.exists("/dev/zero"):
        with pytest.raises(InvalidArgumentError, match="not a regular file"):
            validate.read_file("/dev/zero", limit=99, what="f")


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", ".hidden", "a/b", "x" * 101, "", "caf\u00e9", "a\0b", 5])
def test_file_component_refuses_anything_but_a_plain_name(name: Any) -> None:
    with pytest.raises(OmniPlaceError, match="not a plain file name"):
        validate.file_component(name, "name")
    assert validate.file_component("Qwen3-30B_A3B.Q4+K", "name") == "Qwen3-30B_A3B.Q4+K"


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": 5, "devices": ()}, "cluster name must be a string"),
    ({"name": "x", "devices": "CUDA0"}, "devices must be a list of Device objects"),
    ({"name": "x", "devices": [{"name": "CUDA0"}]}, "devices must be a list of Device objects"),
    ({"name": "x", "devices": (), "description": None}, "cluster description must be a string"),
])
def test_cluster_fields(kwargs: dict[str, Any], fragment: str) -> None:
    from omni_place.devices import Cluster

    with pytest.raises(ClusterError, match=fragment):
        Cluster(**kwargs)


@pytest.mark.parametrize("name", [None, 5, ["seed"]])
def test_preset_name(name: Any) -> None:
    from omni_place.devices import load_preset

    with pytest.raises(InvalidArgumentError, match="a preset name is a string"):
        load_preset(name)
