# Declarations of the C core (csrc/omni_place.h). Every function returns a status code and writes
# through out-pointers; none touches Python objects, so all are callable without the GIL.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "omni_place.h" nogil:
    enum:
        OP_OK             # solved: result holds the optimum
        OP_INFEASIBLE     # no placement fits in any order
        OP_EINVAL         # bad dimensions, index, negative memory or non-finite time
        OP_ENOMEM         # allocation failed or the state limit was reached

    enum:
        OP_MAX_LAYERS     # 1024
        OP_MAX_DEVICES    # 64
        OP_MAX_OPTIONS    # 8

    int64_t OP_DEFAULT_MAX_STATES

    ctypedef struct op_problem:
        int32_t n_layers              # L
        int32_t n_devices             # D (accelerators; the CPU is index D in trans)
        int32_t n_options             # K
        int32_t n_orders              # rows of orders
        const int32_t *orders         # [n_orders][D], -1 padded
        const double *time            # [D][L][K]
        const double *time_cpu        # [L]
        const int64_t *mem_dense      # [D][L]
        const int64_t *mem_exp        # [D][L][K]
        const uint8_t *allow          # [D][L][K] or NULL
        const double *trans           # [D+1][D+1]
        const double *out_time        # [D]
        double out_time_cpu           # output head on the CPU
        const int64_t *out_mem        # [D]
        const int64_t *fixed_mem      # [D]
        const int64_t *first_mem      # [D]
        const int64_t *cap            # [D]
        const double *stream          # [L][K] or NULL
        const double *stream_cpu      # [L] or NULL
        const double *stream_rate     # [D] or NULL
        int64_t max_states            # 0 = OP_DEFAULT_MAX_STATES

    ctypedef struct op_result:
        int32_t *home                 # [L] out: device per layer, -1 = CPU
        int32_t *option               # [L] out: option per layer, -1 for CPU layers
        int64_t *mem_used             # [D] out: units per device
        int32_t status                # out: status code
        int32_t order                 # out: chosen row of orders
        int32_t n_cpu                 # out: CPU prefix length c
        int32_t out_device            # out: output device, -1 = CPU
        double time                   # out: optimal total time
        int64_t n_states              # out: DP states generated
        int64_t peak_states           # out: largest frontier
        char detail[128]              # out: reason for EINVAL / ENOMEM

    int op_solve(const op_problem *problem, op_result *result)
    const char *op_status_str(int status)

    enum:
        OP_GGUF_STRING
        OP_GGUF_ARRAY
        OP_GGUF_TYPE_COUNT  # value types are 0 .. OP_GGUF_TYPE_COUNT - 1

    size_t op_gguf_type_size(uint32_t type)  # 0 for strings, arrays and unknown types
    int op_gguf_skip_strings(const uint8_t *buf, size_t len, size_t offset, uint64_t n,
                             size_t *out_offset)
    int op_gguf_skip_array(const uint8_t *buf, size_t len, size_t offset, uint32_t elem_type,
                           uint64_t n, size_t *out_offset)


cdef extern from "membw.h" nogil:
    enum:
        OP_MEMBW_MAX_THREADS   # 4096
        OP_MEMBW_MAX_REPS      # 1000

    size_t OP_MEMBW_MAX_BYTES  # 1 TiB

    int op_membw_read(size_t bytes, int32_t threads, int32_t reps, double *best_seconds,
                      uint64_t *checksum)
