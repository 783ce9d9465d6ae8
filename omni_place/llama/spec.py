"""What to load through libllama and how: a :class:`LoadSpec`, JSON-serialisable so that it
travels to the child process that loads it (:mod:`.probe`)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import InvalidArgumentError
from ..model import KV_TYPES
from . import bindings as b

_SPLIT_MODES = {"none": 0, "layer": 1, "row": 2, "tensor": 3}


def split_mode_number(name: str) -> int:
    """libllama's ``enum llama_split_mode`` value of a ``-sm`` name (include/llama.h:199-204)."""
    if name.lower() not in _SPLIT_MODES:
        raise InvalidArgumentError(f"unknown split_mode {name!r} (one of {', '.join(_SPLIT_MODES)})")
    return _SPLIT_MODES[name.lower()]


@dataclass
class LoadSpec:
    """What to load and how; every field is JSON-serialisable (see :meth:`to_json`)."""

    model_path: str
    n_gpu_layers: int = -1
    """Slots counted from the end (output head first); negative = all."""
    split_mode: int = b.LLAMA_SPLIT_MODE_LAYER
    """0 none, 1 layer, 2 row, 3 tensor (a name such as "layer" is converted)."""
    main_gpu: int = 0
    tensor_split: list[float] | None = None
    """Per model device, in model-device order; padded to llama_max_devices() floats."""
    devices: list[str] | None = None
    """Device names (e.g. ["RPC0", "RPC1"]) -> NULL-terminated device array; None = automatic."""
    overrides: list[tuple[str, str]] = field(default_factory=list)
    """(regex, target): target is "CPU", a device name ("RPC0", "CUDA0") or a buffer-type name."""
    rpc_servers: list[str] = field(default_factory=list)
    """``host:port`` endpoints added and registered before devices are resolved."""
    n_ctx: int = 512
    n_batch: int | None = None
    n_ubatch: int = 512
    n_seq_max: int = 1
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: str = "auto"
    swa_full: bool = False
    offload_kqv: bool = True
    op_offload: bool = True
    kv_unified: bool = False
    dry_run: bool = False
    """no_alloc + load_mode NONE: buffers are sized but nothing is allocated or read."""
    create_context: bool = True
    n_threads: int | None = None
    load_mode: str | None = None
    """auto/none/mmap/mlock/mmap_mlock/direct_io; None = auto (none for dry runs)."""
    no_host: bool = False
    use_extra_bufts: bool = True

    def __post_init__(self) -> None:
        self.model_path = os.fspath(self.model_path)
        if isinstance(self.split_mode, str):
            self.split_mode = split_mode_number(self.split_mode)
        self.overrides = [(str(p), str(t)) for p, t in self.overrides]
        if self.tensor_split is not None:
            self.tensor_split = [float(x) for x in self.tensor_split]

    def validate(self) -> None:
        """Raise InvalidArgumentError for values the engine would reject or crash on."""
        if self.split_mode not in _SPLIT_MODES.values():
            raise InvalidArgumentError(f"split_mode must be 0..3, got {self.split_mode}")
        if self.tensor_split is not None and any(x < 0 or x != x for x in self.tensor_split):
            raise InvalidArgumentError(f"tensor_split values must be >= 0, got {self.tensor_split}")
        for name in ("n_ctx", "n_ubatch", "n_seq_max"):
            if getattr(self, name) < 0 or (name != "n_ctx" and getattr(self, name) == 0):
                raise InvalidArgumentError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_batch is not None and self.n_batch <= 0:
            raise InvalidArgumentError(f"n_batch must be positive, got {self.n_batch}")
        for name in ("type_k", "type_v"):
            if getattr(self, name).lower() not in KV_TYPES:
                raise InvalidArgumentError(
                    f"{name} {getattr(self, name)!r} is not a KV cache type (one of {', '.join(KV_TYPES)})"
                )
        if self.flash_attn.lower() not in b.FLASH_ATTN_BY_NAME:
            raise InvalidArgumentError(f"flash_attn must be auto, on or off, got {self.flash_attn!r}")
        if self.load_mode is not None and self.load_mode.lower() not in b.LOAD_MODE_BY_NAME:
            raise InvalidArgumentError(
                f"unknown load_mode {self.load_mode!r} (one of {', '.join(b.LOAD_MODE_BY_NAME)})"
            )
        if self.dry_run and self.load_mode not in (None, "none", "NONE"):
            raise InvalidArgumentError(
                f"a dry run needs load_mode 'none', got {self.load_mode!r}",
                hint="with mmap the engine asserts GGML_ASSERT(!ml.no_alloc); leave load_mode unset",
            )
        for pattern, target in self.overrides:
            if not pattern or not target:
                raise InvalidArgumentError(f"override needs a pattern and a target, got ({pattern!r}, {target!r})")
        for endpoint in self.rpc_servers:
            host, _, port = endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidArgumentError(f"RPC endpoint must be host:port, got {endpoint!r}")

    @property
    def effective_load_mode(self) -> int:
        if self.load_mode is None:
            return b.LLAMA_LOAD_MODE_NONE if self.dry_run else b.LLAMA_LOAD_MODE_AUTO
        return b.LOAD_MODE_BY_NAME[self.load_mode.lower()]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["overrides"] = [list(o) for o in self.overrides]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoadSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidArgumentError(f"unknown LoadSpec field(s): {', '.join(sorted(unknown))}")
        values = dict(data)
        values["overrides"] = [tuple(o) for o in values.get("overrides") or []]
        return cls(**values)


__all__ = ["LoadSpec", "split_mode_number"]
