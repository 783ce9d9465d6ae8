"""What a ``cluster=`` argument means: :func:`resolve_cluster` (``"auto"``, a file, a preset).

The top of the package's import order: it uses :mod:`.nvml` for ``"auto"`` and
:mod:`.cluster_file` for files and presets, and nothing imports it but the package itself.
"""
from __future__ import annotations

import difflib
import os

from ..errors import ClusterError, InvalidArgumentError
from ..validate import show
from .cluster import Cluster, list_presets
from .cluster_file import load_cluster, load_preset
from .nvml import discover

__all__ = ["resolve_cluster"]


def resolve_cluster(spec: Cluster | str | os.PathLike[str] = "auto", *, measure: bool = False) -> Cluster:
    """The cluster a ``cluster=`` argument means.

    ``"auto"`` discovers this machine; a :class:`Cluster` is returned as is; an existing path
    (or anything ending in ``.toml`` or containing a path separator) is a cluster file;
    any other string is a preset name.

    Raises:
        ClusterError: the file or preset does not exist or is invalid.
        InvalidArgumentError: ``spec`` is not a Cluster, string or path.
    """
    if isinstance(spec, Cluster):
        return spec
    if isinstance(spec, os.PathLike):
        return load_cluster(spec, measure=measure)
    if not isinstance(spec, str):
        raise InvalidArgumentError(
            "cluster must be 'auto', a Cluster, a cluster file path or a preset name "
            f"(got {type(spec).__name__})")
    if spec == "auto":
        return discover(measure=measure)
    if os.path.lexists(spec) or spec.endswith(".toml") or os.sep in spec or "/" in spec:
        return load_cluster(spec, measure=measure)
    if spec in list_presets():
        return load_preset(spec, measure=measure)
    close = difflib.get_close_matches(spec, list_presets(), n=1)
    raise ClusterError(f"no cluster file or preset named {show(spec)} (presets: {', '.join(list_presets())})",
                       hint=f"did you mean {close[0]!r}?" if close else
                       "pass 'auto', a path to a cluster file, or a preset name")
