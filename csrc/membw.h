/*
 * membw.h - sustained multi-threaded memory read bandwidth of the host (csrc/membw.c).
 *
 * What CPU decode in llama.cpp does: every thread streams its share of the weights once per
 * token. op_membw_read() allocates a buffer, lets each thread first-touch (write) its own slice,
 * so pages land on that thread's NUMA node as the engine's warmed-up weights do, then times
 * reading the whole buffer with all threads at once.
 *
 * Status codes are the core's (omni_place.h): OP_OK, OP_EINVAL (bad argument), OP_ENOMEM (the
 * buffer or a thread could not be created).
 */
#ifndef OMNI_PLACE_MEMBW_H
#define OMNI_PLACE_MEMBW_H

#include <stddef.h>
#include <stdint.h>

#include "omni_place.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    OP_MEMBW_MAX_THREADS = 4096,   /* threads above this are OP_EINVAL */
    OP_MEMBW_MAX_REPS = 1000
};

/* Largest buffer accepted (1 TiB); larger sizes are OP_EINVAL. */
#define OP_MEMBW_MAX_BYTES ((size_t)1 << 40)

/*
 * Read a freshly allocated buffer of bytes / 8 uint64 words with `threads` threads (the calling
 * thread is one of them), `reps` timed times after one untimed warm-up read.
 *
 * bytes: >= 8 * threads and <= OP_MEMBW_MAX_BYTES; the last bytes % 8 are not read.
 * threads: 1..OP_MEMBW_MAX_THREADS; reps: 1..OP_MEMBW_MAX_REPS.
 * best_seconds (out): the fastest timed read of all words, from CLOCK_MONOTONIC.
 * checksum (out): the sum of all words in the last read; word i holds i, so it is
 *     n (n - 1) / 2 modulo 2^64 for n = bytes / 8 when every word was read exactly once.
 * Returns OP_OK, OP_EINVAL or OP_ENOMEM; the outputs are written on OP_OK only.
 */
int op_membw_read(size_t bytes, int32_t threads, int32_t reps, double *best_seconds,
                  uint64_t *checksum);

#ifdef __cplusplus
}
#endif

#endif /* OMNI_PLACE_MEMBW_H */
