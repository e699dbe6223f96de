/* Internal: safetensors dtype codes, byte order and UTF-8 checks shared by
 * the reader and the writer. */
#ifndef KL_IO_SAFETENSORS_COMMON_H
#define KL_IO_SAFETENSORS_COMMON_H

#include <stdint.h>
#include "kiln/tensor.h"

/* Largest header kiln accepts; bigger ones are corrupt files. */
#define KL_ST_MAX_HEADER 100000000ull

/* The safetensors code ("F32") for a kiln dtype; NULL if invalid. */
const char *kl_st_dtype_code(kl_dtype dt);

/* Parses a safetensors dtype code: 1 and *dt set for kiln dtypes, 0 for a
 * dtype of the spec kiln cannot hold (BOOL, I8, F8_E4M3...), -1 if unknown. */
int kl_st_dtype_from_code(const char *code, kl_dtype *dt);

/* 1 if s is valid UTF-8 (no overlongs or surrogates), else 0. */
int kl_st_utf8_valid(const char *s);

/* Number of bytes a tensor of this dtype and shape needs; 0 and *ok = 0
 * when that overflows 64 bits. */
uint64_t kl_st_nbytes(kl_dtype dt, int ndim, const int64_t *dims, int *ok);

/* Each tensor kiln writes has its data's CRC-32 (8 hex digits) in the
 * metadata under "crc32:<name>"; readers check it where present (a file
 * of another writer has none). 0 (no key) for names too long for one. */
#include <stdio.h>
#include <string.h>
static inline int kl_st_crc_key(char *key, size_t n, const char *name)
{
    return strlen(name) + 7 <= n && snprintf(key, n, "crc32:%s", name) > 0;
}

static inline uint64_t kl_st_get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline void kl_st_put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

#endif
