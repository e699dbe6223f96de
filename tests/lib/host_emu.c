/* Helpers of the host emulation tests (see host_emu.h). */
#include "host_emu.h"
#include "cuda_parity.h" /* kl_parity_to_double */
#include "testutil.h"

#include <math.h>
#include <string.h>

static uint32_t g_rng = 2024;

static double rnd(int ties)
{
    g_rng = g_rng * 1664525u + 1013904223u;
    double u = (double)(g_rng >> 8) / 16777216.0, s = (g_rng >> 7 & 1) ? 1 : -1;
    if (ties == 2 && (g_rng >> 4) % 6 == 0) return NAN;
    return ties ? s * (floor(u * 4) + 1) / 4 : s * (0.05 + 0.95 * u);
}

static kl_status slot_size(const kl_ctx *ctx, int i, kl_dtype *dt, int64_t *n)
{
    int nd, tr;
    const char *nm;
    int64_t ne[KL_MAX_DIMS];
    kl_status s = kl_ctx_param_info(ctx, i, &nm, dt, &nd, ne, &tr);
    if (s != KL_OK) return s;
    *n = 1;
    for (int d = 0; d < nd; d++) *n *= ne[d];
    return KL_OK;
}

kl_status kl_emu_fill(kl_ctx *ctx, const char *name, kl_dtype dt, int ties)
{
    int i = kl_ctx_param_find(ctx, name);
    kl_dtype pdt;
    int64_t n;
    kl_status s = slot_size(ctx, i, &pdt, &n);
    if (s != KL_OK) return s;
    size_t es = kl_dtype_size(pdt);
    unsigned char *v = malloc((size_t)n * es);
    for (int64_t k = 0; k < n; k++) {
        double r = rnd(ties);
        if (pdt == KL_F32) ((float *)(void *)v)[k] = (float)r;
        else ((double *)(void *)v)[k] = r;
    }
    s = kl_ctx_param_set(ctx, i, v, (size_t)n * es);
    free(v);
    return s;
}

double *kl_emu_slot(kl_ctx *ctx, const char *name, int grad, int64_t *n)
{
    int i = kl_ctx_param_find(ctx, name);
    kl_dtype dt;
    *n = 0;
    kl_status s = slot_size(ctx, i, &dt, n);
    CHECK_OK(s);
    if (s != KL_OK) return calloc(1, sizeof(double));
    size_t bytes = (size_t)*n * kl_dtype_size(dt);
    void *tmp = malloc(bytes ? bytes : 1);
    double *out = calloc((size_t)(*n ? *n : 1), sizeof *out);
    s = grad ? kl_ctx_grad_get(ctx, i, tmp, bytes) : kl_ctx_param_get(ctx, i, tmp, bytes);
    CHECK_OK(s);
    if (s == KL_OK) kl_parity_to_double(tmp, dt, *n, out);
    free(tmp);
    return out;
}

double *kl_emu_tensor(kl_tensor *t)
{
    int64_t n = kl_tensor_numel(t);
    size_t es = kl_dtype_size(kl_tensor_dtype(t));
    void *tmp = malloc((size_t)n * es);
    double *out = calloc((size_t)n, sizeof *out);
    kl_status s = kl_tensor_get(t, tmp, (size_t)n * es);
    CHECK_OK(s);
    if (s == KL_OK) kl_parity_to_double(tmp, kl_tensor_dtype(t), n, out);
    free(tmp);
    return out;
}

void *kl_emu_nan(size_t bytes)
{
    unsigned char *p = malloc(bytes ? bytes : 1);
    memset(p, 0xff, bytes); /* all-ones: a NaN as float and as double */
    return p;
}
