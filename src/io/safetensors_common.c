/* safetensors dtype codes and checks shared by reader and writer. */
#include "io/safetensors_common.h"

#include <string.h>

static const char *const kiln_codes[KL_DTYPE_COUNT] = {
    [KL_F32] = "F32", [KL_F16] = "F16", [KL_BF16] = "BF16", [KL_I32] = "I32",
    [KL_U8] = "U8",   [KL_F64] = "F64", [KL_I64] = "I64",
};

/* Codes of the safetensors spec that kiln has no dtype for. */
static const char *const other_codes[] = {
    "BOOL", "I8", "I16", "U16", "U32", "U64", "C64", "F4", "F6_E2M3", "F6_E3M2",
    "F8_E5M2", "F8_E4M3", "F8_E8M0", "E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
};

const char *kl_st_dtype_code(kl_dtype dt)
{
    return (unsigned)dt < KL_DTYPE_COUNT ? kiln_codes[dt] : NULL;
}

int kl_st_dtype_from_code(const char *code, kl_dtype *dt)
{
    for (int i = 0; i < KL_DTYPE_COUNT; i++)
        if (!strcmp(code, kiln_codes[i])) { *dt = (kl_dtype)i; return 1; }
    for (size_t i = 0; i < sizeof other_codes / sizeof *other_codes; i++)
        if (!strcmp(code, other_codes[i])) return 0;
    return -1;
}

int kl_st_utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p, cp;
        int n;
        if (c < 0x80) { p++; continue; }
        if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; }
        else return 0;
        /* A NUL continuation byte fails the test, so we never read past it. */
        for (int i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        static const unsigned min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        p += n + 1;
    }
    return 1;
}

uint64_t kl_st_nbytes(kl_dtype dt, int ndim, const int64_t *dims, int *ok)
{
    uint64_t n = kl_dtype_size(dt);
    *ok = 1;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 0 || __builtin_mul_overflow(n, (uint64_t)dims[i], &n)) {
            *ok = 0;
            return 0;
        }
    }
    return n;
}
