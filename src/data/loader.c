/* Batch loader: one worker thread gathers batches into a ring of buffers.
 *
 * The worker produces the sequence (epoch e, batch 0), ..., (e, B-1), then an
 * end-of-epoch marker (e, B) with n = 0, then (e+1, 0)... Batch contents are
 * a pure function of (seed, epoch, index), so timing never changes them.
 * Ring invariant: slots head .. head+nready-1 are ready in order; the slot
 * the caller holds (if any) is head-1; the worker writes at head+nready,
 * which is free while nready < nslots - (held >= 0). */
#include "data/dataset.h"

#include <pthread.h>
#include <string.h>

#include "core/error.h"

#define KL_PREFETCH_DEFAULT 2
#define KL_PREFETCH_MAX 64
/* The worker counts epochs on from a seek without bound (one per batches + 1
 * items); capping the start leaves 2^62 epochs before int64 overflows. */
#define KL_EPOCH_MAX ((int64_t)1 << 62)

typedef struct slot {
    float *x;
    int32_t *y;
    int64_t n, index, epoch;
} slot;

struct kl_loader {
    const kl_dataset *ds;
    kl_loader_opts o;
    int64_t batches, rows_cap;
    int nslots;
    slot *slots;
    int64_t *perm;       /* worker-only: order of perm_epoch */
    int64_t perm_epoch;
    pthread_mutex_t mu;
    pthread_cond_t ready; /* a slot was published */
    pthread_cond_t space; /* a slot was freed, a seek happened, or quit */
    int head, nready, held;
    int64_t pos_epoch, pos_index; /* the next item the worker makes */
    uint64_t gen;                 /* bumped by seek: stale work is dropped */
    int quit;
    pthread_t thread;
};

/* Gathers item (e, k) into sl. Runs without the lock: sl is the worker's. */
static void fill(kl_loader *L, slot *sl, int64_t e, int64_t k)
{
    const kl_dataset *ds = L->ds;
    sl->epoch = e;
    sl->index = k;
    sl->n = 0;
    if (k >= L->batches) return; /* end-of-epoch marker */
    if (L->o.shuffle && L->perm_epoch != e) {
        kl_shuffle_indices(L->perm, ds->n, L->o.seed, (uint64_t)e);
        L->perm_epoch = e;
    }
    int64_t start = k * L->o.batch, rows = ds->n - start;
    if (rows > L->o.batch) rows = L->o.batch;
    size_t row = (size_t)ds->sample_size * sizeof(float);
    for (int64_t i = 0; i < rows; i++) {
        int64_t src = L->o.shuffle ? L->perm[start + i] : start + i;
        memcpy(sl->x + i * ds->sample_size, ds->x + src * ds->sample_size, row);
        if (ds->y) sl->y[i] = ds->y[src];
    }
    sl->n = rows;
}

static void *worker(void *arg)
{
    kl_loader *L = arg;
    pthread_mutex_lock(&L->mu);
    for (;;) {
        while (!L->quit && L->nready >= L->nslots - (L->held >= 0))
            pthread_cond_wait(&L->space, &L->mu);
        if (L->quit) break;
        int s = (L->head + L->nready) % L->nslots;
        int64_t e = L->pos_epoch, k = L->pos_index;
        uint64_t gen = L->gen;
        pthread_mutex_unlock(&L->mu);
        fill(L, &L->slots[s], e, k);
        pthread_mutex_lock(&L->mu);
        if (gen != L->gen) continue; /* a seek made this stale */
        L->nready++;
        if (k >= L->batches) L->pos_epoch++, L->pos_index = 0;
        else L->pos_index++;
        pthread_cond_signal(&L->ready);
    }
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

static void free_buffers(kl_loader *L)
{
    for (int i = 0; L->slots && i < L->nslots; i++) {
        kl_free(L->slots[i].x);
        kl_free(L->slots[i].y);
    }
    kl_free(L->slots);
    kl_free(L->perm);
    kl_free(L);
}

kl_status kl_loader_new(const kl_dataset *ds, const kl_loader_opts *o, kl_loader **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "loader_new: out is NULL");
    *out = NULL;
    if (!ds || !o) return kl_fail(KL_EMISUSE, "loader_new: dataset or options is NULL");
    if (o->batch < 1)
        return kl_fail(KL_EINVAL, "loader_new: batch %lld, must be >= 1", (long long)o->batch);
    if (o->prefetch < 0 || o->prefetch > KL_PREFETCH_MAX)
        return kl_fail(KL_EINVAL, "loader_new: prefetch %d out of range [0,%d]", o->prefetch,
                       KL_PREFETCH_MAX);
    kl_loader *L = kl_calloc(1, sizeof *L);
    if (!L) return KL_ENOMEM;
    L->ds = ds;
    L->o = *o;
    if (!L->o.prefetch) L->o.prefetch = KL_PREFETCH_DEFAULT;
    L->batches = ds->n / o->batch + (!o->drop_last && ds->n % o->batch);
    L->rows_cap = ds->n < o->batch ? (ds->n ? ds->n : 1) : o->batch;
    L->nslots = L->o.prefetch + 1;
    L->held = -1;
    L->perm_epoch = -1;
    if (!(L->slots = kl_calloc((size_t)L->nslots, sizeof *L->slots))) goto oom;
    for (int i = 0; i < L->nslots; i++) {
        slot *s = &L->slots[i];
        if (!(s->x = kl_malloc((size_t)L->rows_cap * (size_t)ds->sample_size * sizeof(float))))
            goto oom;
        if (ds->y && !(s->y = kl_malloc((size_t)L->rows_cap * sizeof(int32_t)))) goto oom;
    }
    if (o->shuffle && !(L->perm = kl_malloc((size_t)(ds->n ? ds->n : 1) * sizeof(int64_t))))
        goto oom;
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->ready, NULL);
    pthread_cond_init(&L->space, NULL);
    int rc = pthread_create(&L->thread, NULL, worker, L);
    if (rc != 0) {
        pthread_cond_destroy(&L->space);
        pthread_cond_destroy(&L->ready);
        pthread_mutex_destroy(&L->mu);
        free_buffers(L);
        return kl_fail(KL_EIO, "loader_new: cannot start the worker thread: %s", strerror(rc));
    }
    *out = L;
    return KL_OK;
oom:
    free_buffers(L);
    return KL_ENOMEM;
}

int64_t kl_loader_batches(const kl_loader *L) { return L ? L->batches : 0; }

kl_status kl_loader_seek(kl_loader *L, int64_t epoch, int64_t batch_index)
{
    if (!L) return kl_fail(KL_EMISUSE, "loader_seek: loader is NULL");
    if (epoch < 0 || epoch > KL_EPOCH_MAX || batch_index < 0 || batch_index > L->batches)
        return kl_fail(KL_EINVAL, "loader_seek: epoch %lld batch %lld out of range (epoch in [0,2^62], batch in [0,%lld])",
                       (long long)epoch, (long long)batch_index, (long long)L->batches);
    pthread_mutex_lock(&L->mu);
    L->gen++;
    L->head = L->nready = 0;
    L->held = -1;
    L->pos_epoch = epoch;
    L->pos_index = batch_index;
    pthread_cond_signal(&L->space);
    pthread_mutex_unlock(&L->mu);
    return KL_OK;
}

kl_status kl_loader_next(kl_loader *L, kl_batch *b)
{
    if (!L || !b) return kl_fail(KL_EMISUSE, "loader_next: NULL argument");
    pthread_mutex_lock(&L->mu);
    if (L->held >= 0) { /* the caller is done with the previous batch */
        L->held = -1;
        pthread_cond_signal(&L->space);
    }
    while (L->nready == 0) pthread_cond_wait(&L->ready, &L->mu);
    const slot *s = &L->slots[L->head];
    L->held = L->head;
    L->head = (L->head + 1) % L->nslots;
    L->nready--;
    pthread_mutex_unlock(&L->mu);
    b->x = s->x;
    b->y = s->y;
    b->n = s->n;
    b->index = s->index;
    b->epoch = s->epoch;
    return KL_OK;
}

void kl_loader_free(kl_loader *L)
{
    if (!L) return;
    pthread_mutex_lock(&L->mu);
    L->quit = 1;
    pthread_cond_signal(&L->space);
    pthread_mutex_unlock(&L->mu);
    pthread_join(L->thread, NULL);
    pthread_cond_destroy(&L->space);
    pthread_cond_destroy(&L->ready);
    pthread_mutex_destroy(&L->mu);
    free_buffers(L);
}
