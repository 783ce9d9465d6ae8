/*
 * omni_place.h - public C API of the omni_place core (plain C11, no Python).
 *
 * Two parts:
 *  - op_solve(): the exact layer/expert placement optimizer (csrc/solver.c);
 *  - op_gguf_skip_*(): bounds-checked skipping of GGUF metadata arrays (csrc/gguf_scan.c).
 *
 * Conventions: every function returns a status code (OP_OK on success) and writes its results
 * through out-pointers or caller-provided buffers. No global or static mutable state: every call
 * is thread-safe as long as its buffers are not shared with another call that writes them.
 */
#ifndef OMNI_PLACE_H
#define OMNI_PLACE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
enum {
    OP_OK = 0,          /* solved: result holds the optimum */
    OP_INFEASIBLE = 1,  /* no placement fits in any of the given orders */
    OP_EINVAL = 2,      /* bad dimensions, index, negative memory or non-finite time (see detail) */
    OP_ENOMEM = 3       /* allocation failed or the state limit (max_states) was reached */
};

/* Dimension limits. */
enum {
    OP_MAX_LAYERS = 1024,
    OP_MAX_DEVICES = 64,
    OP_MAX_OPTIONS = 8
};

/* Largest accepted memory value (units); larger ones are OP_EINVAL. */
#define OP_MAX_UNITS ((int64_t)1 << 60)

/* Default cap on DP states held at once: parent pointers of the current order (5 bytes each) and
 * two frontiers (16 bytes a slot), so < 270 MB and usually far less. A solve also stops after
 * generating OP_WORK_FACTOR times that many states in all, which bounds its running time
 * (seconds). Both limits give OP_ENOMEM: use a coarser memory unit or raise max_states. */
#define OP_DEFAULT_MAX_STATES ((int64_t)1 << 24)
#define OP_MAX_STATES ((int64_t)1 << 30)   /* larger max_states values are clipped to this */
#define OP_WORK_FACTOR 8

/*
 * The abstract placement problem. Arrays are C-contiguous; shapes use L = n_layers,
 * D = n_devices (accelerators; the CPU is index D in `trans`), K = n_options.
 * Memory is in integer units chosen by the caller (0 <= value <= OP_MAX_UNITS). Times are finite
 * seconds (any sign).
 *
 * A placement: one row of `orders` (distinct devices, -1 padded; an all -1 row is the CPU-only
 * plan), a CPU prefix c (layers 0..c-1 on CPU), consecutive possibly-empty ranges covering
 * c..L-1 for the devices of the row in row order, and an option per device-homed layer.
 * The output head goes to the last device with >= 1 layer; if no device has layers it goes to
 * the CPU or, alternatively, alone to the row's last device.
 */
typedef struct op_problem {
    int32_t n_layers;           /* L, 1..OP_MAX_LAYERS */
    int32_t n_devices;          /* D, 0..OP_MAX_DEVICES */
    int32_t n_options;          /* K, 1..OP_MAX_OPTIONS */
    int32_t n_orders;           /* >= 1 */
    const int32_t *orders;      /* [n_orders][D] device sequences, padded with -1 */
    const double *time;         /* [D][L][K] seconds of layer l on device d with option o */
    const double *time_cpu;     /* [L] seconds of layer l on the CPU */
    const int64_t *mem_dense;   /* [D][L] units of layer l's non-expert part on d */
    const int64_t *mem_exp;     /* [D][L][K] units of layer l's experts kept on d under option o */
    const uint8_t *allow;       /* [D][L][K] 0 = option forbidden; NULL = all allowed */
    const double *trans;        /* [D+1][D+1] crossing cost from -> to (index D = CPU) */
    const double *out_time;     /* [D] output head on device d */
    double out_time_cpu;        /* output head on the CPU */
    const int64_t *out_mem;     /* [D] extra units on the output device */
    const int64_t *fixed_mem;   /* [D] units paid by every device in the order */
    const int64_t *first_mem;   /* [D] extra units paid by the order's first device */
    const int64_t *cap;         /* [D] capacity in units */
    const double *stream;       /* [L][K] streamed amount of layer l under option o; NULL = 0 */
    const double *stream_cpu;   /* [L] streamed amount of a CPU layer; NULL = 0 */
    const double *stream_rate;  /* [D] seconds per streamed amount when d = order[0]; NULL = 0 */
    int64_t max_states;         /* state limit (0 = OP_DEFAULT_MAX_STATES), see above */
} op_problem;

/* Results. The caller provides the three buffers; scalars are written by op_solve. */
typedef struct op_result {
    int32_t *home;              /* [L] out: device of each layer, -1 = CPU */
    int32_t *option;            /* [L] out: option of each device layer, -1 for CPU layers */
    int64_t *mem_used;          /* [D] out: units used per device (0 if not in the order);
                                   may be NULL when D == 0 */
    int32_t status;             /* out: same value as returned */
    int32_t order;              /* out: chosen row of `orders` */
    int32_t n_cpu;              /* out: c, layers 0..c-1 on the CPU */
    int32_t out_device;         /* out: output device, -1 = CPU */
    double time;                /* out: optimal total time */
    int64_t n_states;           /* out: DP states generated (work measure) */
    int64_t peak_states;        /* out: largest frontier seen */
    char detail[128];           /* out: NUL-terminated reason for OP_EINVAL / OP_ENOMEM */
} op_result;

/* Solve the problem exactly. Returns OP_OK, OP_INFEASIBLE, OP_EINVAL or OP_ENOMEM.
 * On anything but OP_OK the placement buffers hold no meaningful values. */
int op_solve(const op_problem *problem, op_result *result);

/* Static name of a status code ("OK", "INFEASIBLE", "EINVAL", "ENOMEM", "UNKNOWN"). */
const char *op_status_str(int status);

/* GGUF metadata value types (gguf_type, ggml/include/gguf.h). */
enum {
    OP_GGUF_UINT8 = 0, OP_GGUF_INT8 = 1, OP_GGUF_UINT16 = 2, OP_GGUF_INT16 = 3,
    OP_GGUF_UINT32 = 4, OP_GGUF_INT32 = 5, OP_GGUF_FLOAT32 = 6, OP_GGUF_BOOL = 7,
    OP_GGUF_STRING = 8, OP_GGUF_ARRAY = 9, OP_GGUF_UINT64 = 10, OP_GGUF_INT64 = 11,
    OP_GGUF_FLOAT64 = 12,
    OP_GGUF_TYPE_COUNT = 13
};

/* Size in bytes of one value of a fixed-size GGUF type, 0 for strings, arrays and unknown types
 * (as gguf_type_size in ggml/src/gguf.cpp). The only table of these sizes in omni_place: Python
 * reads it as omni_place._core.GGUF_TYPE_SIZES. */
size_t op_gguf_type_size(uint32_t type);

/* Skip n GGUF strings (uint64 little-endian length + bytes) in buf[0..len) starting at offset.
 * OP_OK: *out_offset = offset just past the last string. OP_EINVAL: a string would run past len;
 * *out_offset = offset of the string (or length field) that does not fit. */
int op_gguf_skip_strings(const uint8_t *buf, size_t len, size_t offset, uint64_t n,
                         size_t *out_offset);

/* Skip an array of n elements of GGUF type elem_type starting at offset (the array's data, after
 * its type and count fields). Fixed-size scalars and strings are supported; nested arrays and
 * unknown types give OP_EINVAL. Same out_offset contract as op_gguf_skip_strings. */
int op_gguf_skip_array(const uint8_t *buf, size_t len, size_t offset, uint32_t elem_type,
                       uint64_t n, size_t *out_offset);

#ifdef __cplusplus
}
#endif

#endif /* OMNI_PLACE_H */
