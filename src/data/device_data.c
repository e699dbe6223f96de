/* Datasets kept in device memory (kiln/data.h): features and labels copied
 * once, the epoch's order uploaded once per epoch, and each step's batch
 * gathered on the device by two gather_rows nodes reading the order at an
 * offset that is a one-value input. On the CPU the dataset's own arrays are
 * used in place.
 *
 * Streamed data (for sets too big for the device) has the same nodes over a
 * ring of slots: each batch is put into the next slot's pinned host copy and
 * copied to the device on the backend's copy stream, while the kernels of
 * earlier steps run; the step graph reads the slot at its offset, so a
 * captured graph replays unchanged. A slot is rewritten only after the runs
 * that read it, and its host copy stays until then (the NaN watch re-runs a
 * step from it). */
#include "data/dataset.h"
#include "core/graph.h"
#include "backends/backend.h"

#include <stdio.h>

struct kl_device_data {
    kl_ctx *ctx;
    const kl_dataset *ds;
    int64_t n;      /* rows: the dataset's, or (streamed) slots * slot_rows */
    float *x;       /* [n, sample] in device memory */
    int32_t *y;     /* [n] */
    int32_t *order; /* [n] device copy of order_host */
    int32_t *order_host;
    int64_t *perm; /* kl_shuffle_indices' output */
    int owns;      /* x and y were allocated here (not the CPU's dataset arrays) */
    /* streamed (kl_device_data_stream_new): batches put one by one into slots */
    int slots, next, last; /* last: the slot of the previous put, -1 before the first */
    int64_t slot_rows;
    float *hx;   /* pinned host copies of the slots, [n, sample] */
    int32_t *hy; /* [n] */
    void *stage; /* the backend's copy events (NULL: h2d copies in order) */
};

void kl_device_data_free(kl_device_data *dd)
{
    if (!dd) return;
    const kl_backend *be = dd->ctx->be;
    if (dd->stage) be->stage_free(dd->stage); /* waits for the copies from the pinned slots */
    if (dd->owns) {
        be->free(dd->x);
        be->free(dd->y);
    }
    be->free(dd->order);
    be->host_free(dd->hx);
    be->host_free(dd->hy);
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

/* The order from now on (streamed data: always 0..n-1 over its slots). */
static kl_status order_set(kl_device_data *dd, int shuffle, uint64_t seed, int64_t epoch)
{
    int64_t n = dd->n;
    if (shuffle) kl_shuffle_indices(dd->perm, n, seed, (uint64_t)epoch);
    for (int64_t i = 0; i < n; i++) dd->order_host[i] = (int32_t)(shuffle ? dd->perm[i] : i);
    return dd->ctx->be->h2d(dd->order, dd->order_host, (size_t)n * sizeof *dd->order);
}

/* The parts both kinds share: dd with n rows, the order arrays. */
static kl_status dd_alloc(kl_ctx *ctx, const kl_dataset *ds, int64_t n, kl_device_data **out)
{
    kl_device_data *dd = kl_calloc(1, sizeof *dd);
    if (!dd) return KL_ENOMEM;
    dd->ctx = ctx;
    dd->ds = ds;
    dd->n = n;
    dd->last = -1;
    *out = dd;
    dd->order_host = kl_malloc((size_t)n * sizeof *dd->order_host);
    dd->perm = kl_malloc((size_t)n * sizeof *dd->perm);
    if (!dd->order_host || !dd->perm) return KL_ENOMEM;
    return ctx->be->alloc((void **)&dd->order, (size_t)n * sizeof *dd->order);
}

static kl_status dd_check(kl_ctx *ctx, const kl_dataset *ds, kl_device_data **out, const char *fn)
{
    if (!out) return kl_fail(KL_EMISUSE, "%s: out is NULL", fn);
    *out = NULL;
    if (!ctx || !ds) return kl_fail(KL_EMISUSE, "%s: %s is NULL", fn, ctx ? "dataset" : "ctx");
    if (!ds->y) return kl_fail(KL_EINVAL, "%s: the dataset has no labels", fn);
    return KL_OK;
}

static kl_status dd_done(kl_device_data *dd, kl_status s, kl_device_data **out)
{
    if (s == KL_OK) s = order_set(dd, 0, 0, 0);
    if (s != KL_OK) {
        kl_device_data_free(dd);
        return s;
    }
    *out = dd;
    return KL_OK;
}

kl_status kl_device_data_new(kl_ctx *ctx, const kl_dataset *ds, kl_device_data **out)
{
    KL_TRY(dd_check(ctx, ds, out, "kl_device_data_new"));
    if (ds->n < 1 || ds->n > INT32_MAX)
        return kl_fail(KL_EINVAL, "kl_device_data_new: %lld samples; between 1 and 2^31 - 1 can be indexed",
                       (long long)ds->n);
    kl_device_data *dd = NULL;
    const kl_backend *be = ctx->be;
    size_t n = (size_t)ds->n;
    kl_status s = dd_alloc(ctx, ds, ds->n, &dd);
    if (s == KL_OK && ctx->backend == KL_BACKEND_CPU) {
        dd->x = ds->x;
        dd->y = ds->y;
    } else if (s == KL_OK) {
        dd->owns = 1;
        s = dev_copy(be, (void **)&dd->x, ds->x, n * (size_t)ds->sample_size * sizeof(float), "features");
        if (s == KL_OK) s = dev_copy(be, (void **)&dd->y, ds->y, n * sizeof(int32_t), "labels");
    }
    return dd ? dd_done(dd, s, out) : s;
}

kl_status kl_device_data_stream_new(kl_ctx *ctx, const kl_dataset *ds, int64_t rows, int slots, kl_device_data **out)
{
    KL_TRY(dd_check(ctx, ds, out, "kl_device_data_stream_new"));
    /* divided, not multiplied: rows * slots overflows for huge rows (2^62 * 4
     * wrapped to 0 and passed), and put then wrote past the slots */
    if (rows < 1 || slots < 2 || slots > KL_STREAM_SLOTS_MAX || rows > INT32_MAX / slots)
        return kl_fail(KL_EINVAL, "kl_device_data_stream_new: %d slots of %lld rows; 2 to %d slots of at most "
                       "(2^31 - 1) / slots rows", slots, (long long)rows, KL_STREAM_SLOTS_MAX);
    /* the dataset only gives the sample shape (it may hold no samples), so
     * its sample size has not been checked against this many rows */
    if ((uint64_t)ds->sample_size > SIZE_MAX / sizeof(float) / (uint64_t)(rows * slots))
        return kl_fail(KL_ENOMEM, "kl_device_data_stream_new: %lld rows of %lld floats do not fit in memory",
                       (long long)(rows * slots), (long long)ds->sample_size);
    kl_device_data *dd = NULL;
    const kl_backend *be = ctx->be;
    size_t n = (size_t)(rows * slots), xb = n * (size_t)ds->sample_size * sizeof(float), yb = n * sizeof(int32_t);
    void *dev;
    kl_status s = dd_alloc(ctx, ds, rows * slots, &dd);
    if (s != KL_OK) return dd ? dd_done(dd, s, out) : s;
    dd->owns = 1;
    dd->slots = slots;
    dd->slot_rows = rows;
    s = be->alloc((void **)&dd->x, xb);
    if (s == KL_OK) s = be->alloc((void **)&dd->y, yb);
    if (s == KL_OK) s = be->host_alloc((void **)&dd->hx, &dev, xb);
    if (s == KL_OK) s = be->host_alloc((void **)&dd->hy, &dev, yb);
    if (s == KL_OK && be->stage_new) s = be->stage_new(&dd->stage, slots);
    if (s != KL_OK) s = kl_fail_prefix(s, "streaming batches through %d slots of %lld rows", slots, (long long)rows);
    return dd_done(dd, s, out);
}

kl_status kl_device_data_put(kl_device_data *dd, const float *x, const int32_t *y, int64_t n, int32_t *start)
{
    if (!dd || !x || !y || !start) return kl_fail(KL_EMISUSE, "kl_device_data_put: an argument is NULL");
    if (!dd->slots) return kl_fail(KL_EMISUSE, "kl_device_data_put: the data is not streamed (kl_device_data_stream_new)");
    if (n < 1 || n > dd->slot_rows)
        return kl_fail(KL_EINVAL, "kl_device_data_put: %lld rows into slots of %lld", (long long)n,
                       (long long)dd->slot_rows);
    const kl_backend *be = dd->ctx->be;
    int k = dd->next;
    int64_t ss = dd->ds->sample_size, at = (int64_t)k * dd->slot_rows;
    size_t xb = (size_t)(n * ss) * sizeof(float), yb = (size_t)n * sizeof(int32_t);
    if (dd->stage && dd->last >= 0) KL_TRY(be->stage_release(dd->stage, dd->last)); /* read by the runs since */
    if (dd->stage) KL_TRY(be->stage_wait(dd->stage, k));
    memcpy(dd->hx + at * ss, x, xb);
    memcpy(dd->hy + at, y, yb);
    if (dd->stage) {
        KL_TRY(be->stage_h2d(dd->stage, k, dd->x + at * ss, dd->hx + at * ss, xb));
        KL_TRY(be->stage_h2d(dd->stage, k, dd->y + at, dd->hy + at, yb));
    } else {
        KL_TRY(be->h2d(dd->x + at * ss, dd->hx + at * ss, xb));
        KL_TRY(be->h2d(dd->y + at, dd->hy + at, yb));
    }
    dd->last = k;
    dd->next = (k + 1) % dd->slots;
    *start = (int32_t)at;
    return KL_OK;
}

kl_status kl_device_data_slot_host(const kl_device_data *dd, int32_t start, const float **x, const int32_t **y)
{
    if (!dd || !x || !y) return kl_fail(KL_EMISUSE, "kl_device_data_slot_host: an argument is NULL");
    if (!dd->slots || start < 0 || start >= dd->n || start % dd->slot_rows)
        return kl_fail(KL_EINVAL, "kl_device_data_slot_host: %d is not a slot's start", (int)start);
    *x = dd->hx + (int64_t)start * dd->ds->sample_size;
    *y = dd->hy + start;
    return KL_OK;
}

int kl_device_data_streamed(const kl_device_data *dd) { return dd && dd->slots; }
int64_t kl_device_data_count(const kl_device_data *dd) { return dd ? dd->n : 0; }

kl_status kl_device_data_order(kl_device_data *dd, int shuffle, uint64_t seed, int64_t epoch)
{
    if (!dd) return kl_fail(KL_EMISUSE, "kl_device_data_order: device data is NULL");
    if (dd->slots) return kl_fail(KL_EMISUSE, "kl_device_data_order: streamed data is read in the order put");
    return order_set(dd, shuffle, seed, epoch);
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
    int64_t most = dd->slots ? dd->slot_rows : dd->n;
    if (rows < 1 || rows > most)
        return kl_fail(KL_EINVAL, "kl_device_data_batch: %lld rows from %s of %lld", (long long)rows,
                       dd->slots ? "streamed slots" : "a dataset", (long long)most);
    int64_t xd[KL_MAX_DIMS + 1] = {dd->n}, n = dd->n;
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
