"""Stubs for the compiled placement core (omni_place/_core.pyx over csrc/omni_place.h)."""
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

OK: int
INFEASIBLE: int
EINVAL: int
ENOMEM: int
MAX_LAYERS: int
MAX_DEVICES: int
MAX_OPTIONS: int
DEFAULT_MAX_STATES: int
GGUF_TYPE_SIZES: dict[int, int]  # fixed-size GGUF value type -> bytes (csrc: op_gguf_type_size)
GGUF_STRING: int
GGUF_ARRAY: int
MEMBW_MAX_THREADS: int
MEMBW_MAX_REPS: int
MEMBW_MAX_BYTES: int

def status_str(status: int) -> str: ...

class CoreResult:
    """Optimum returned by :func:`solve` (``status == OK``) or an infeasible verdict."""

    @property
    def status(self) -> int: ...
    @property
    def time(self) -> float: ...
    @property
    def order(self) -> int: ...
    @property
    def n_cpu(self) -> int: ...
    @property
    def out_device(self) -> int: ...
    @property
    def home(self) -> NDArray[np.int32]: ...
    @property
    def option(self) -> NDArray[np.int32]: ...
    @property
    def mem_used(self) -> NDArray[np.int64]: ...
    @property
    def n_states(self) -> int: ...
    @property
    def peak_states(self) -> int: ...
    @property
    def ok(self) -> bool: ...
    @property
    def status_name(self) -> str: ...
    def as_dict(self) -> dict[str, Any]: ...

def solve(
    *,
    orders: ArrayLike,       # int32 [n_orders][D], -1 padded; an all -1 row = CPU-only plan
    time: ArrayLike,         # float64 [D][L][K]
    time_cpu: ArrayLike,     # float64 [L]
    mem_dense: ArrayLike,    # int64 [D][L]
    mem_exp: ArrayLike,      # int64 [D][L][K]
    trans: ArrayLike,        # float64 [D+1][D+1], index D = CPU
    out_time: ArrayLike,     # float64 [D]
    out_mem: ArrayLike,      # int64 [D]
    fixed_mem: ArrayLike,    # int64 [D]
    first_mem: ArrayLike,    # int64 [D]
    cap: ArrayLike,          # int64 [D]
    out_time_cpu: float = 0.0,
    allow: ArrayLike | None = None,        # uint8 [D][L][K], 0 = forbidden
    stream: ArrayLike | None = None,       # float64 [L][K]
    stream_cpu: ArrayLike | None = None,   # float64 [L]
    stream_rate: ArrayLike | None = None,  # float64 [D]
    max_states: int = 0,
) -> CoreResult: ...

def skip_array(buf: bytes | bytearray | memoryview | NDArray[np.uint8], offset: int,
               elem_type: int, n: int) -> int: ...
def skip_strings(buf: bytes | bytearray | memoryview | NDArray[np.uint8], offset: int,
                 n: int) -> int: ...

def membw_read(nbytes: int, threads: int, reps: int) -> tuple[float, int]:
    """(best seconds, checksum) of a multi-threaded read of ``nbytes // 8`` uint64 words."""
    ...
