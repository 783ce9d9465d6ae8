"""The compiled placement core, imported once with a clear error when it was not built (as
scikit-learn's ``__check_build`` does): a source checkout needs ``pip install -e .`` first."""
from __future__ import annotations

from .errors import NativeCoreError

try:
    from . import _core as core
except ImportError as exc:  # tests/test_native.py hides the core in a child process
    raise NativeCoreError(
        f"omni_place's compiled core (omni_place._core) is not importable: {exc}",
        hint="build it: `pip install .` (or `pip install -e .` in a source checkout); it needs a C compiler",
    ) from exc

__all__ = ["core"]
