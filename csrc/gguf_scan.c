/*
 * gguf_scan.c - bounds-checked skipping of GGUF metadata arrays.
 *
 * The Python GGUF reader uses these to step over large arrays (e.g. a 129k-token vocabulary)
 * without materializing them. Every read is checked against len; lengths are read byte by byte
 * (little-endian), so buf needs no alignment.
 */
#include "omni_place.h"

static uint64_t read_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

size_t op_gguf_type_size(uint32_t type)
{
    switch (type) {
    case OP_GGUF_UINT8: case OP_GGUF_INT8: case OP_GGUF_BOOL:
        return 1;
    case OP_GGUF_UINT16: case OP_GGUF_INT16:
        return 2;
    case OP_GGUF_UINT32: case OP_GGUF_INT32: case OP_GGUF_FLOAT32:
        return 4;
    case OP_GGUF_UINT64: case OP_GGUF_INT64: case OP_GGUF_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

int op_gguf_skip_strings(const uint8_t *buf, size_t len, size_t offset, uint64_t n,
                         size_t *out_offset)
{
    if (out_offset == NULL || (buf == NULL && len != 0))
        return OP_EINVAL;
    *out_offset = offset;
    if (offset > len)
        return OP_EINVAL;
    /* Each string takes >= 8 bytes, so the loop ends within len / 8 iterations. */
    for (uint64_t i = 0; i < n; i++) {
        if (len - offset < 8) {
            *out_offset = offset;
            return OP_EINVAL;
        }
        uint64_t slen = read_u64le(buf + offset);
        if (slen > (uint64_t)(len - offset - 8)) {
            *out_offset = offset;
            return OP_EINVAL;
        }
        offset += 8 + (size_t)slen;
    }
    *out_offset = offset;
    return OP_OK;
}

int op_gguf_skip_array(const uint8_t *buf, size_t len, size_t offset, uint32_t elem_type,
                       uint64_t n, size_t *out_offset)
{
    if (out_offset == NULL || (buf == NULL && len != 0))
        return OP_EINVAL;
    *out_offset = offset;
    if (offset > len)
        return OP_EINVAL;
    if (elem_type == OP_GGUF_STRING)
        return op_gguf_skip_strings(buf, len, offset, n, out_offset);
    size_t size = op_gguf_type_size(elem_type);
    if (size == 0)
        return OP_EINVAL;  /* nested array or unknown type */
    if (n > (uint64_t)((len - offset) / size))
        return OP_EINVAL;
    *out_offset = offset + (size_t)n * size;
    return OP_OK;
}
