/* Datasets kept in device memory (kiln/data.h): features and labels copied
 * once, the epoch's order uploaded once per epoch, and each step's batch
 * gathered on the device by two gather_rows nodes reading the order at an
 * offset that is a one-value input. On the CPU the dataset's own arrays are
 * used in place. */
#include "data/dataset.h"
#include "core/graph.h"
#include "backends/backend.h"

#include <stdio.h>

struct kl_device_data {
    kl_ctx *ctx;
    const kl_dataset *ds;
    float *x;       /* [n, sample] in device memory */
    int32_t *y;     /* [n] */
    int32_t *order; /* [n] device copy of order_host */
    int32_t *order_host;
    int64_t *perm; /* kl_shuffle_indices' output */
    int owns;      /* x and y were copied (not the CPU) */
};

void kl_device_data_free(kl_device_data *dd)
{
    if (!dd) return;
    const kl_backend *be = dd->ctx->be;
    if (dd->owns) {
        be->free(dd->x);
        be->free(dd->y);
    }
    be->free(dd->order);
    kl_free(dd->order_host);
    kl_free(dd->perm);
    kl_free(dd);
}

static kl_status dev_copy(const kl_backend *be, void **dst, const void *src, size_t bytes, const char *what)
{
    kl_status s = be->alloc(dst, bytes);
    if (s != KL_OK) return kl_fail_prefix(s, "keeping the dataset's %s (%zu bytes) in device memory", what, bytes);
    return be->h2d(*dst, src, bytes);
}

kl_status kl_device_data_new(kl_ctx *ctx, const kl_dataset *ds, kl_device_data **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_device_data_new: out is NULL");
    *out = NULL;
    if (!ctx || !ds) return kl_fail(KL_EMISUSE, "kl_device_data_new: %s is NULL", ctx ? "dataset" : "ctx");
    if (!ds->y) return kl_fail(KL_EINVAL, "kl_device_data_new: the dataset has no labels");
    if (ds->n < 1 || ds->n > INT32_MAX)
        return kl_fail(KL_EINVAL, "kl_device_data_new: %lld samples; between 1 and 2^31 - 1 can be indexed",
                       (long long)ds->n);
    kl_device_data *dd = kl_calloc(1, sizeof *dd);
    if (!dd) return KL_ENOMEM;
    dd->ctx = ctx;
    dd->ds = ds;
    const kl_backend *be = ctx->be;
    size_t n = (size_t)ds->n;
    dd->order_host = kl_malloc(n * sizeof *dd->order_host);
    dd->perm = kl_malloc(n * sizeof *dd->perm);
    kl_status s = dd->order_host && dd->perm ? KL_OK : KL_ENOMEM;
    if (s == KL_OK) s = be->alloc((void **)&dd->order, n * sizeof *dd->order);
    if (s == KL_OK && ctx->backend == KL_BACKEND_CPU) {
        dd->x = ds->x;
        dd->y = ds->y;
    } else if (s == KL_OK) {
        dd->owns = 1;
        s = dev_copy(be, (void **)&dd->x, ds->x, n * (size_t)ds->sample_size * sizeof(float), "features");
        if (s == KL_OK) s = dev_copy(be, (void **)&dd->y, ds->y, n * sizeof(int32_t), "labels");
    }
    if (s == KL_OK) s = kl_device_data_order(dd, 0, 0, 0);
    if (s != KL_OK) {
        kl_device_data_free(dd);
        return s;
    }
    *out = dd;
    return KL_OK;
}

kl_status kl_device_data_order(kl_device_data *dd, int shuffle, uint64_t seed, int64_t epoch)
{
    if (!dd) return kl_fail(KL_EMISUSE, "kl_device_data_order: device data is NULL");
    int64_t n = dd->ds->n;
    if (shuffle) kl_shuffle_indices(dd->perm, n, seed, (uint64_t)epoch);
    for (int64_t i = 0; i < n; i++) dd->order_host[i] = (int32_t)(shuffle ? dd->perm[i] : i);
    return dd->ctx->be->h2d(dd->order, dd->order_host, (size_t)n * sizeof *dd->order);
}

const int32_t *kl_device_data_order_host(const kl_device_data *dd) { return dd ? dd->order_host : NULL; }

kl_status kl_device_data_batch(kl_graph *g, kl_device_data *dd, int64_t rows, kl_tensor **start, kl_tensor **x,
                               kl_tensor **y)
{
    if (!start || !x || !y) return kl_fail(KL_EMISUSE, "kl_device_data_batch: an output is NULL");
    *start = *x = *y = NULL;
    if (!g || !dd) return kl_fail(KL_EMISUSE, "kl_device_data_batch: %s is NULL", g ? "device data" : "graph");
    if (g->ctx != dd->ctx) return kl_fail(KL_EMISUSE, "kl_device_data_batch: graph and device data belong to different contexts");
    const kl_dataset *ds = dd->ds;
    if (rows < 1 || rows > ds->n)
        return kl_fail(KL_EINVAL, "kl_device_data_batch: %lld rows from a dataset of %lld samples", (long long)rows,
                       (long long)ds->n);
    int64_t xd[KL_MAX_DIMS + 1] = {ds->n}, n = ds->n;
    memcpy(xd + 1, ds->dims, (size_t)ds->ndim * sizeof *xd);
    kl_tensor *tx, *ty, *to, *st;
    KL_TRY(kl_external(g, "data.x", KL_F32, ds->ndim + 1, xd, dd->x, &tx));
    KL_TRY(kl_external(g, "data.y", KL_I32, 1, &n, dd->y, &ty));
    KL_TRY(kl_external(g, "data.order", KL_I32, 1, &n, dd->order, &to));
    KL_TRY(kl_input(g, "data.start", KL_I32, 1, (int64_t[]){1}, &st));
    KL_TRY(kl_gather_rows(g, tx, to, st, rows, x));
    KL_TRY(kl_gather_rows(g, ty, to, st, rows, y));
    KL_TRY(kl_tensor_set_name(*x, "x"));
    KL_TRY(kl_tensor_set_name(*y, "y"));
    *start = st;
    return KL_OK;
}
