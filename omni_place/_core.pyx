# Thin Cython layer over the C core (csrc/omni_place.h): converts and checks arrays, releases the
# GIL around the C calls, and turns status codes into results or omni_place.errors exceptions.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

import numpy as np

from omni_place.errors import GGUFFormatError, InvalidArgumentError, NativeCoreError

OK = OP_OK
INFEASIBLE = OP_INFEASIBLE
EINVAL = OP_EINVAL
ENOMEM = OP_ENOMEM
MAX_LAYERS = OP_MAX_LAYERS
MAX_DEVICES = OP_MAX_DEVICES
MAX_OPTIONS = OP_MAX_OPTIONS
DEFAULT_MAX_STATES = OP_DEFAULT_MAX_STATES

# GGUF value type -> bytes of one value, for the fixed-size types: the C core's table
# (op_gguf_type_size), the one the reader in omni_place.gguf uses too.
GGUF_TYPE_SIZES = {t: op_gguf_type_size(t) for t in range(OP_GGUF_TYPE_COUNT) if op_gguf_type_size(t)}
GGUF_STRING = OP_GGUF_STRING
GGUF_ARRAY = OP_GGUF_ARRAY
MEMBW_MAX_THREADS = OP_MEMBW_MAX_THREADS
MEMBW_MAX_REPS = OP_MEMBW_MAX_REPS
MEMBW_MAX_BYTES = OP_MEMBW_MAX_BYTES


def status_str(int status) -> str:
    """Name of a core status code ("OK", "INFEASIBLE", "EINVAL", "ENOMEM")."""
    return op_status_str(status).decode("ascii")


cdef class CoreResult:
    """Optimum returned by :func:`solve` (``status == OK``) or an infeasible verdict."""

    cdef readonly int status          # OK or INFEASIBLE
    cdef readonly double time         # optimal total time (inf if infeasible)
    cdef readonly int order           # chosen row of `orders` (-1 if infeasible)
    cdef readonly int n_cpu           # layers 0..n_cpu-1 on the CPU
    cdef readonly int out_device      # output head device, -1 = CPU
    cdef readonly object home         # int32[L], device per layer, -1 = CPU
    cdef readonly object option       # int32[L], option per layer, -1 for CPU layers
    cdef readonly object mem_used     # int64[D], units per device (0 if not in the order)
    cdef readonly long long n_states  # DP states generated
    cdef readonly long long peak_states  # largest frontier

    @property
    def ok(self) -> bool:
        return self.status == OP_OK

    @property
    def status_name(self) -> str:
        return status_str(self.status)

    def as_dict(self) -> dict:
        return {
            "status": self.status_name, "time": self.time, "order": self.order,
            "n_cpu": self.n_cpu, "out_device": self.out_device, "home": self.home.tolist(),
            "option": self.option.tolist(), "mem_used": self.mem_used.tolist(),
            "n_states": self.n_states, "peak_states": self.peak_states,
        }

    def __repr__(self) -> str:
        return (f"CoreResult(status={self.status_name}, time={self.time!r}, order={self.order}, "
                f"n_cpu={self.n_cpu}, out_device={self.out_device}, home={self.home.tolist()}, "
                f"option={self.option.tolist()}, mem_used={self.mem_used.tolist()})")


cdef object _array(object x, object dtype, tuple shape, str name):
    """x as a C-contiguous array of dtype and exactly this shape, else NativeCoreError."""
    a = np.asarray(x)
    kinds = "iub" if dtype is np.int64 or dtype is np.int32 or dtype is np.uint8 else "iubf"
    if a.dtype.kind not in kinds:
        raise NativeCoreError(f"{name} must be a numeric array of kind {kinds!r}, got dtype {a.dtype}",
                              hint="build the problem arrays with numpy")
    if a.shape != shape:
        raise NativeCoreError(f"{name} has shape {a.shape}, expected {shape}",
                              hint="check L, D and K of the problem arrays")
    return np.ascontiguousarray(a, dtype=dtype)


def solve(*, orders, time, time_cpu, mem_dense, mem_exp, trans, out_time, out_mem, fixed_mem,
          first_mem, cap, double out_time_cpu=0.0, allow=None, stream=None, stream_cpu=None,
          stream_rate=None, long long max_states=0) -> CoreResult:
    """Exact optimum of the placement problem (shapes from L = len(time_cpu), D = len(cap),
    K = time.shape[2]); see csrc/omni_place.h for the meaning of each array.

    Raises NativeCoreError on bad input (EINVAL) or when the state limit is hit (ENOMEM);
    an infeasible problem is returned with ``status == INFEASIBLE``.
    """
    tc = np.asarray(time_cpu)
    cp = np.asarray(cap)
    tm = np.asarray(time)
    if tc.ndim != 1 or cp.ndim != 1 or tm.ndim != 3:
        raise NativeCoreError(
            f"time_cpu, cap and time must be 1-, 1- and 3-dimensional, got {tc.ndim}, {cp.ndim}, "
            f"{tm.ndim}", hint="time is [D][L][K], time_cpu [L], cap [D]")
    cdef Py_ssize_t L = tc.shape[0], D = cp.shape[0], K = tm.shape[2]
    if not (1 <= L <= OP_MAX_LAYERS and 0 <= D <= OP_MAX_DEVICES and 1 <= K <= OP_MAX_OPTIONS):
        raise NativeCoreError(f"L={L}, D={D}, K={K} outside 1..{OP_MAX_LAYERS}, "
                              f"0..{OP_MAX_DEVICES}, 1..{OP_MAX_OPTIONS}")
    ordr = np.asarray(orders)
    if ordr.ndim != 2 or ordr.shape[0] < 1:
        raise NativeCoreError(f"orders must be a non-empty [n_orders][D] array, got shape {ordr.shape}")

    cdef const int32_t[:, ::1] v_orders = _array(ordr, np.int32, (ordr.shape[0], D), "orders")
    cdef const double[:, :, ::1] v_time = _array(tm, np.float64, (D, L, K), "time")
    cdef const double[::1] v_time_cpu = _array(tc, np.float64, (L,), "time_cpu")
    cdef const int64_t[:, ::1] v_mem_dense = _array(mem_dense, np.int64, (D, L), "mem_dense")
    cdef const int64_t[:, :, ::1] v_mem_exp = _array(mem_exp, np.int64, (D, L, K), "mem_exp")
    cdef const double[:, ::1] v_trans = _array(trans, np.float64, (D + 1, D + 1), "trans")
    cdef const double[::1] v_out_time = _array(out_time, np.float64, (D,), "out_time")
    cdef const int64_t[::1] v_out_mem = _array(out_mem, np.int64, (D,), "out_mem")
    cdef const int64_t[::1] v_fixed = _array(fixed_mem, np.int64, (D,), "fixed_mem")
    cdef const int64_t[::1] v_first = _array(first_mem, np.int64, (D,), "first_mem")
    cdef const int64_t[::1] v_cap = _array(cp, np.int64, (D,), "cap")
    cdef const uint8_t[:, :, ::1] v_allow
    cdef const double[:, ::1] v_stream
    cdef const double[::1] v_stream_cpu
    cdef const double[::1] v_stream_rate

    cdef op_problem prob
    prob.n_layers = <int32_t>L
    prob.n_devices = <int32_t>D
    prob.n_options = <int32_t>K
    prob.n_orders = <int32_t>v_orders.shape[0]
    prob.orders = &v_orders[0, 0] if D > 0 else NULL
    prob.time = &v_time[0, 0, 0] if D > 0 else NULL
    prob.time_cpu = &v_time_cpu[0]
    prob.mem_dense = &v_mem_dense[0, 0] if D > 0 else NULL
    prob.mem_exp = &v_mem_exp[0, 0, 0] if D > 0 else NULL
    prob.trans = &v_trans[0, 0]
    prob.out_time = &v_out_time[0] if D > 0 else NULL
    prob.out_time_cpu = out_time_cpu
    prob.out_mem = &v_out_mem[0] if D > 0 else NULL
    prob.fixed_mem = &v_fixed[0] if D > 0 else NULL
    prob.first_mem = &v_first[0] if D > 0 else NULL
    prob.cap = &v_cap[0] if D > 0 else NULL
    prob.allow = NULL
    prob.stream = NULL
    prob.stream_cpu = NULL
    prob.stream_rate = NULL
    prob.max_states = max_states
    if allow is not None:
        v_allow = _array(allow, np.uint8, (D, L, K), "allow")
        if D > 0:
            prob.allow = &v_allow[0, 0, 0]
    if stream is not None:
        v_stream = _array(stream, np.float64, (L, K), "stream")
        prob.stream = &v_stream[0, 0]
    if stream_cpu is not None:
        v_stream_cpu = _array(stream_cpu, np.float64, (L,), "stream_cpu")
        prob.stream_cpu = &v_stream_cpu[0]
    if stream_rate is not None:
        v_stream_rate = _array(stream_rate, np.float64, (D,), "stream_rate")
        if D > 0:
            prob.stream_rate = &v_stream_rate[0]

    home = np.full(L, -1, dtype=np.int32)
    option = np.full(L, -1, dtype=np.int32)
    mem_used = np.zeros(D, dtype=np.int64)
    cdef int32_t[::1] v_home = home
    cdef int32_t[::1] v_option = option
    cdef int64_t[::1] v_mem_used = mem_used
    cdef op_result res
    res.home = &v_home[0]
    res.option = &v_option[0]
    res.mem_used = &v_mem_used[0] if D > 0 else NULL

    cdef int rc
    with nogil:
        rc = op_solve(&prob, &res)

    if rc == OP_EINVAL or rc == OP_ENOMEM or (rc != OP_OK and rc != OP_INFEASIBLE):
        detail = res.detail.decode("utf-8", "replace")
        hint = ("use a coarser memory unit or raise max_states" if rc == OP_ENOMEM
                else "check the problem arrays (shapes, finite times, memory >= 0)")
        raise NativeCoreError(f"op_solve failed: {status_str(rc)}: {detail}", hint=hint)

    cdef CoreResult out = CoreResult.__new__(CoreResult)
    out.status = rc
    out.n_states = res.n_states
    out.peak_states = res.peak_states
    if rc == OP_OK:
        out.time = res.time
        out.order = res.order
        out.n_cpu = res.n_cpu
        out.out_device = res.out_device
    else:
        home[:] = -1
        option[:] = -1
        out.time = float("inf")
        out.order = -1
        out.n_cpu = -1
        out.out_device = -1
    out.home = home
    out.option = option
    out.mem_used = mem_used
    return out


cdef const uint8_t[::1] _byte_view(object buf):
    try:
        return buf
    except (ValueError, TypeError):
        return memoryview(buf).cast("B")


def _gguf_error(const uint8_t[::1] v, size_t start, size_t bad, uint64_t n, int elem_type):
    cdef size_t size = v.shape[0]
    if start > size:
        return GGUFFormatError(f"GGUF array at offset {start} starts past the end of the "
                               f"{size}-byte buffer")
    if elem_type == GGUF_ARRAY:
        return GGUFFormatError(f"GGUF array at offset {start}: nested arrays are not supported")
    if elem_type != GGUF_STRING and elem_type not in GGUF_TYPE_SIZES:
        return GGUFFormatError(f"GGUF array at offset {start}: unknown element type {elem_type}")
    if elem_type != GGUF_STRING:
        return GGUFFormatError(f"GGUF array at offset {start}: {n} elements of "
                               f"{GGUF_TYPE_SIZES[elem_type]} bytes run past the end of the "
                               f"{size}-byte buffer")
    if size - bad < 8:
        return GGUFFormatError(f"GGUF string at offset {bad}: length field truncated "
                               f"({size}-byte buffer, array of {n} strings at offset {start})")
    cdef uint64_t slen = 0
    cdef int i
    for i in range(7, -1, -1):
        slen = (slen << 8) | v[bad + i]
    return GGUFFormatError(f"GGUF string at offset {bad}: length {slen} exceeds the "
                           f"{size - bad - 8} bytes left (array of {n} strings at offset {start})")


def skip_array(buf, offset, elem_type, n) -> int:
    """Offset just past an array of `n` GGUF elements of type `elem_type` starting at `offset`.

    Raises GGUFFormatError (with the offending offset) if it runs past the buffer, a string length
    is absurd, or the type is a nested array or unknown.
    """
    cdef const uint8_t[::1] v = _byte_view(buf)
    if not (0 <= offset < 2**63 and 0 <= n < 2**64 and 0 <= elem_type < 2**32):
        raise GGUFFormatError(f"GGUF array: offset {offset}, count {n} or type {elem_type} "
                              f"out of range")
    cdef uint64_t count = n
    cdef uint32_t etype = elem_type
    cdef size_t start = <size_t>offset, end = 0, size = v.shape[0]
    cdef const uint8_t *ptr = &v[0] if size > 0 else NULL
    cdef int rc
    with nogil:
        rc = op_gguf_skip_array(ptr, size, start, etype, count, &end)
    if rc != OP_OK:
        raise _gguf_error(v, start, end, count, elem_type)
    return end


def skip_strings(buf, offset, n) -> int:
    """Offset just past `n` GGUF strings (uint64 LE length + bytes) starting at `offset`."""
    return skip_array(buf, offset, GGUF_STRING, n)


def membw_read(nbytes, threads, reps) -> tuple:
    """(best seconds, checksum) of reading ``nbytes // 8`` uint64 words with ``threads`` threads
    at once, ``reps`` timed reads after a warm-up, from a buffer each thread first-touched
    (csrc/membw.h: op_membw_read). The checksum is ``n (n - 1) / 2 mod 2**64`` for ``n`` words.

    Raises InvalidArgumentError for threads outside 1..MEMBW_MAX_THREADS, reps outside
    1..MEMBW_MAX_REPS or a size below 8 bytes a thread or above MEMBW_MAX_BYTES, and
    NativeCoreError when the buffer or a thread cannot be created.
    """
    for name, value in (("nbytes", nbytes), ("threads", threads), ("reps", reps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(f"bandwidth probe: {name} must be an integer (got {value!r})")
    if not 1 <= threads <= OP_MEMBW_MAX_THREADS or not 1 <= reps <= OP_MEMBW_MAX_REPS:
        raise InvalidArgumentError(
            f"bandwidth probe needs 1..{OP_MEMBW_MAX_THREADS} threads and 1..{OP_MEMBW_MAX_REPS} "
            f"reads (got {threads} threads, {reps} reads)")
    if not 8 * threads <= nbytes <= OP_MEMBW_MAX_BYTES:
        raise InvalidArgumentError(
            f"bandwidth probe buffer of {nbytes} bytes is outside 8 bytes a thread "
            f"({8 * threads}) .. {OP_MEMBW_MAX_BYTES}")
    cdef size_t size = nbytes
    cdef int32_t n_threads = threads, n_reps = reps
    cdef double best = 0.0
    cdef uint64_t checksum = 0
    cdef int rc
    with nogil:
        rc = op_membw_read(size, n_threads, n_reps, &best, &checksum)
    if rc == OP_EINVAL:
        raise InvalidArgumentError(f"bandwidth probe rejected {nbytes} bytes, {threads} threads, {reps} reads")
    if rc != OP_OK:
        raise NativeCoreError(f"bandwidth probe could not allocate {nbytes} bytes or start {threads} threads",
                              hint="use a smaller buffer or fewer threads")
    return best, checksum
