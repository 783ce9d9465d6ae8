"""Click parameter types for numeric options: the ranges of :mod:`omni_place.validate`.

``click.FloatRange`` lets ``nan`` through (every comparison with NaN is false) and ``inf``
through an open upper end; options here are finite and bounded on both sides.
"""
from __future__ import annotations

from typing import Any

import click

from ..errors import InvalidArgumentError
from ..validate import number


class FiniteFloat(click.ParamType):
    """A finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""

    name = "float"

    def __init__(self, lo: float, hi: float, *, lo_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open = lo, hi, lo_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            raw: Any = value
        else:
            try:
                raw = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        try:
            return number(raw, param.name if param is not None and param.name else "value",
                          lo=self.lo, hi=self.hi, lo_open=self.lo_open)
        except InvalidArgumentError as err:
            self.fail(err.message, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        def fmt(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"
        return f"FLOAT {'(' if self.lo_open else '['}{fmt(self.lo)}..{fmt(self.hi)}]"


__all__ = ["FiniteFloat"]
