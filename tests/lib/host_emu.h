/* Helpers of the host emulation tests of CUDA kernels (test_conv_index.c,
 * test_pool_index.c): random slot values (never zero), slot and tensor
 * values as doubles, NaN-filled buffers, conversions to the kernel's type. */
#ifndef KL_TEST_HOST_EMU_H
#define KL_TEST_HOST_EMU_H

#include "kiln/kiln.h"
#include <stdlib.h>

/* Sets slot `name` of ctx to values U(+-[0.05, 1]) (ties 1: one of
 * +-{0.25, 0.5, 0.75, 1}, so windows hold equal values; ties 2: those, with
 * about one value in six NaN). */
kl_status kl_emu_fill(kl_ctx *ctx, const char *name, kl_dtype dt, int ties);
/* Slot `name`'s value (grad 0) or gradient (grad 1) as doubles (malloc'd); *n its size. */
double *kl_emu_slot(kl_ctx *ctx, const char *name, int grad, int64_t *n);
/* A tensor's values as doubles (malloc'd). */
double *kl_emu_tensor(kl_tensor *t);
/* bytes of malloc'd memory (exactly: ASan sees overruns), all NaN. */
void *kl_emu_nan(size_t bytes);

/* to_T: malloc'd copy of n doubles as T; back_T: T values to doubles. */
#define KL_EMU_CONVERT(T)                                                      \
    static T *to_##T(const double *v, int64_t n)                               \
    {                                                                          \
        T *o = (T *)malloc((size_t)(n ? n : 1) * sizeof(T));                   \
        for (int64_t i = 0; i < n; i++) o[i] = (T)v[i];                        \
        return o;                                                              \
    }                                                                          \
    static void back_##T(const T *v, int64_t n, double *o)                     \
    {                                                                          \
        for (int64_t i = 0; i < n; i++) o[i] = v[i];                           \
    }

#endif
