"""Measuring omni_place against the engines: the configuration matrix (:mod:`.matrix`), running
llama-bench (:mod:`.run`, standard library only, so it runs where no compiled core is), reading
placements back from engine logs (:mod:`.logread`), records and their table (:mod:`.records`),
charts (:mod:`.chart`) and fitting the speed model to records (:mod:`.calibrate`).

This package sits above :mod:`omni_place.plan`, which never imports it. Public names are loaded
on first use, so ``omni_place.bench.run`` imports nothing compiled.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "CONFIG_ORDER": "run",
    "Attempt": "run",
    "BenchConfig": "run",
    "classify_failure": "run",
    "parse_output": "run",
    "run_matrix": "run",
    "build_configs": "matrix",
    "build_matrix": "matrix",
    "common_args": "matrix",
    "run_bench": "matrix",
    "placement_from_log": "logread",
    "attach_placements": "records",
    "comparison_table": "records",
    "final_rows": "records",
    "load_records": "records",
    "placement_from_dict": "records",
    "placement_to_dict": "records",
    "price_placement": "records",
    "target_check": "records",
    "svg_chart": "chart",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'omni_place.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
