/* Data layer: the prefetching batch loader. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln/data.h"
#include "testutil.h"

enum { N = 103, S = 3 };

static void sleep_ms(int ms)
{
    struct timespec t = {0, ms * 1000000L};
    nanosleep(&t, NULL);
}

/* Sample i has features (i, i + 0.25, -i) and label i % 7. */
static kl_dataset *make(int64_t n, int labels)
{
    float *x = malloc((size_t)(n ? n : 1) * S * sizeof *x);
    int32_t *y = malloc((size_t)(n ? n : 1) * sizeof *y);
    for (int64_t i = 0; i < n; i++) {
        x[i * S] = (float)i, x[i * S + 1] = i + 0.25f, x[i * S + 2] = (float)-i;
        y[i] = (int32_t)(i % 7);
    }
    int64_t dims[1] = {S};
    kl_dataset *ds = NULL;
    CHECK_OK(kl_dataset_from_memory(n, 1, dims, x, labels ? y : NULL, &ds));
    free(x);
    free(y);
    return ds;
}

/* Checks b holds samples order[first..first+b->n) of make()'s dataset. */
static int batch_is(const kl_batch *b, const int64_t *order, int64_t first)
{
    int ok = 1;
    for (int64_t i = 0; i < b->n; i++) {
        int64_t id = order[first + i];
        ok &= b->x[i * S] == (float)id && b->x[i * S + 1] == id + 0.25f && b->x[i * S + 2] == (float)-id;
        if (b->y) ok &= b->y[i] == id % 7;
    }
    return ok;
}

/* Reads one epoch, checking sizes, coverage and the (seed, epoch) order. */
static void check_epoch(kl_loader *ld, int64_t epoch, int64_t batch, int drop_last, int shuffle,
                        uint64_t seed, int slow)
{
    int64_t order[N];
    if (shuffle) kl_shuffle_indices(order, N, seed, (uint64_t)epoch);
    else for (int i = 0; i < N; i++) order[i] = i;
    int64_t nb = kl_loader_batches(ld), rows = 0;
    int seen[N] = {0}, ok = 1;
    kl_batch b;
    for (int64_t k = 0; k < nb; k++) {
        CHECK_OK(kl_loader_next(ld, &b));
        int64_t want = k * batch + batch <= N ? batch : N - k * batch;
        ok &= b.n == want && b.index == k && b.epoch == epoch && batch_is(&b, order, k * batch);
        if (slow) { /* the worker fills the ring; the held batch must stay intact */
            sleep_ms(5);
            ok &= batch_is(&b, order, k * batch);
        }
        for (int64_t i = 0; i < b.n; i++) seen[(int64_t)b.x[i * S]]++;
        rows += b.n;
    }
    CHECK(ok);
    CHECK_OK(kl_loader_next(ld, &b));
    CHECK(b.n == 0 && b.index == nb && b.epoch == epoch);
    int once = 1;
    for (int i = 0; i < N; i++) once &= drop_last ? seen[i] <= 1 : seen[i] == 1;
    CHECK(once && rows == (drop_last ? N / batch * batch : N));
}

static void test_epochs(const kl_dataset *ds)
{
    int prefetch[3] = {0, 1, 6};
    for (int p = 0; p < 3; p++)
        for (int drop = 0; drop < 2; drop++)
            for (int sh = 0; sh < 2; sh++) {
                kl_loader_opts o = {.batch = 10, .shuffle = sh, .seed = 77, .drop_last = drop,
                                    .prefetch = prefetch[p]};
                kl_loader *ld = NULL;
                CHECK_OK(kl_loader_new(ds, &o, &ld));
                if (!ld) continue;
                CHECK(kl_loader_batches(ld) == (drop ? 10 : 11));
                for (int e = 0; e < 3; e++) check_epoch(ld, e, 10, drop, sh, 77, p == 1 && e == 1);
                kl_loader_free(ld);
            }
}

static void test_order(const kl_dataset *ds)
{
    int64_t a[N], b[N], c[N];
    kl_shuffle_indices(a, N, 5, 0);
    kl_shuffle_indices(b, N, 5, 1);
    kl_shuffle_indices(c, N, 6, 0);
    CHECK(memcmp(a, b, sizeof a) && memcmp(a, c, sizeof a));
    /* Two loaders with the same seed agree batch for batch. */
    kl_loader_opts o = {.batch = 16, .shuffle = 1, .seed = 5};
    kl_loader *l1, *l2;
    CHECK_OK(kl_loader_new(ds, &o, &l1));
    o.prefetch = 3;
    CHECK_OK(kl_loader_new(ds, &o, &l2));
    int same = 1, differs = 0;
    kl_batch b1, b2, first;
    float first_x0 = 0;
    for (int i = 0; i < 40; i++) {
        CHECK_OK(kl_loader_next(l1, &b1));
        CHECK_OK(kl_loader_next(l2, &b2));
        same &= b1.n == b2.n && b1.epoch == b2.epoch && b1.index == b2.index;
        same &= !memcmp(b1.x, b2.x, (size_t)b1.n * S * sizeof(float));
        if (i == 0) first = b1, first_x0 = b1.x[0];
        if (b1.epoch == 1 && b1.index == 0) differs = b1.x[0] != first_x0 || b1.x[S] != first.x[S];
    }
    CHECK(same && differs);
    kl_loader_free(l1);
    kl_loader_free(l2);
}

static void test_seek(const kl_dataset *ds)
{
    kl_loader_opts o = {.batch = 9, .shuffle = 1, .seed = 1234, .prefetch = 2};
    kl_loader *ref, *ld;
    CHECK_OK(kl_loader_new(ds, &o, &ref));
    CHECK_OK(kl_loader_new(ds, &o, &ld));
    if (!ref || !ld) return;
    int64_t nb = kl_loader_batches(ref); /* 12 */
    /* Uninterrupted: epochs 0..3 in full, as copies. */
    int64_t total = 4 * (nb + 1);
    float *xs = calloc((size_t)total, 9 * S * sizeof(float));
    int64_t *ns = calloc((size_t)total, sizeof *ns);
    kl_batch b;
    for (int64_t i = 0; i < total; i++) {
        CHECK_OK(kl_loader_next(ref, &b));
        ns[i] = b.n;
        memcpy(xs + i * 9 * S, b.x, (size_t)b.n * S * sizeof(float));
    }
    /* Seek to several places, also backwards and after partial reads. */
    int64_t at[5][2] = {{2, 4}, {0, 0}, {3, 11}, {1, 12}, {2, 4}};
    int ok = 1;
    for (int s = 0; s < 5; s++) {
        CHECK_OK(kl_loader_seek(ld, at[s][0], at[s][1]));
        for (int64_t i = at[s][0] * (nb + 1) + at[s][1]; i < total && i < at[s][0] * (nb + 1) + at[s][1] + 5; i++) {
            CHECK_OK(kl_loader_next(ld, &b));
            ok &= b.n == ns[i] && b.epoch == i / (nb + 1) && b.index == i % (nb + 1);
            ok &= !memcmp(b.x, xs + i * 9 * S, (size_t)b.n * S * sizeof(float));
        }
    }
    CHECK(ok);
    CHECK_ERR(kl_loader_seek(ld, 0, nb + 1), KL_EINVAL, "batch 13 out of range");
    CHECK_ERR(kl_loader_seek(ld, -1, 0), KL_EINVAL, "out of range");
    /* the worker counts epochs on from here: INT64_MAX overflowed (UBSan) */
    CHECK_ERR(kl_loader_seek(ld, INT64_MAX, 0), KL_EINVAL, "epoch 9223372036854775807 batch 0 out of range (epoch in [0,2^62]");
    CHECK_OK(kl_loader_seek(ld, (int64_t)1 << 62, 0));
    CHECK_ERR(kl_loader_seek(NULL, 0, 0), KL_EMISUSE, "loader_seek: loader is NULL");
    free(xs);
    free(ns);
    kl_loader_free(ref);
    kl_loader_free(ld);
}

static void test_edges(const kl_dataset *ds)
{
    kl_loader *ld = NULL;
    kl_batch b;
    /* Batch larger than the dataset: one batch of everything. */
    kl_loader_opts o = {.batch = 500};
    CHECK_OK(kl_loader_new(ds, &o, &ld));
    CHECK(kl_loader_batches(ld) == 1);
    CHECK_OK(kl_loader_next(ld, &b));
    CHECK(b.n == N && b.x[S * (N - 1)] == N - 1);
    kl_loader_free(ld);
    o.drop_last = 1;
    CHECK_OK(kl_loader_new(ds, &o, &ld));
    CHECK(kl_loader_batches(ld) == 0);
    CHECK_OK(kl_loader_next(ld, &b));
    CHECK(b.n == 0 && b.epoch == 0);
    CHECK_OK(kl_loader_next(ld, &b));
    CHECK(b.n == 0 && b.epoch == 1);
    kl_loader_free(ld);
    /* Unlabeled and empty datasets. */
    kl_dataset *nolab = make(20, 0), *empty = make(0, 1);
    o = (kl_loader_opts){.batch = 8, .shuffle = 1, .seed = 3};
    CHECK_OK(kl_loader_new(nolab, &o, &ld));
    CHECK_OK(kl_loader_next(ld, &b));
    CHECK(b.n == 8 && b.y == NULL);
    kl_loader_free(ld);
    CHECK_OK(kl_loader_new(empty, &o, &ld));
    CHECK(kl_loader_batches(ld) == 0);
    CHECK_OK(kl_loader_next(ld, &b));
    CHECK(b.n == 0);
    kl_loader_free(ld);
    kl_dataset_free(nolab);
    kl_dataset_free(empty);
    /* Bad options. */
    ld = (kl_loader *)&ld;
    o = (kl_loader_opts){.batch = 0};
    CHECK_ERR(kl_loader_new(ds, &o, &ld), KL_EINVAL, "batch 0, must be >= 1");
    CHECK(ld == NULL);
    o = (kl_loader_opts){.batch = 4, .prefetch = 65};
    CHECK_ERR(kl_loader_new(ds, &o, &ld), KL_EINVAL, "prefetch 65 out of range [0,64]");
    CHECK_ERR(kl_loader_new(ds, NULL, &ld), KL_EMISUSE, "options is NULL"); /* status.h: a null handle is misuse */
    CHECK_ERR(kl_loader_next(NULL, &b), KL_EMISUSE, "loader_next: NULL argument");
}

/* Freeing at any point joins the worker cleanly (ASan/TSan-friendly). */
static void test_free_anytime(const kl_dataset *ds)
{
    for (int i = 0; i < 60; i++) {
        kl_loader_opts o = {.batch = 1 + i % 9, .shuffle = i % 2, .seed = (uint64_t)i,
                            .prefetch = i % 5};
        kl_loader *ld;
        CHECK_OK(kl_loader_new(ds, &o, &ld));
        kl_batch b;
        for (int k = 0; k < i % 7; k++) kl_loader_next(ld, &b);
        if (i % 3 == 0) kl_loader_seek(ld, 5, 1);
        if (i % 4 == 0) sleep_ms(1);
        kl_loader_free(ld);
    }
    kl_loader_free(NULL);
}

int main(void)
{
    kl_dataset *ds = make(N, 1);
    if (!ds) return 1;
    test_epochs(ds);
    test_order(ds);
    test_seek(ds);
    test_edges(ds);
    test_free_anytime(ds);
    kl_dataset_free(ds);
    return kl_test_done("test_data_loader");
}
