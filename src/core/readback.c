/* Asynchronous read-back (kiln/graph.h): a `record` node at the end of the
 * graph writes the values of a few scalars into a ring of records in host
 * memory the device can write (pinned and mapped on CUDA). Its prepare
 * picks the record's slot and sequence number before each run; the kernel
 * writes the values, then the sequence number, so a record whose seq has
 * arrived is complete. The host never waits unless it asks to (pop with
 * wait = 1). */
#include "core/graph.h"
#include "core/half.h"
#include "backends/backend.h"
#include "ops/attrs.h"

struct kl_readback {
    kl_graph *g;
    struct kl_readback *next; /* g's rings */
    int n, cap;
    kl_record *host, *dev; /* the ring, as the host and the kernels see it */
    uint64_t pushed, popped; /* records reserved by runs; records popped */
};

static kl_status record_shape(kl_tensor *t)
{
    for (int i = 0; i < t->n_src; i++)
        if (kl_numel(t->src[i]) != 1 || !kl_dtype_size(t->src[i]->dtype))
            return kl_fail(KL_EINVAL, "kl_readback_new: tensor %d ('%s') is %s; only single values can be read back", i,
                           t->src[i]->name, kl_desc(t->src[i]));
    t->sk = KL_ST_NONE;
    t->dtype = KL_F32;
    t->ndim = 0;
    t->run_bytes = sizeof(record_vals);
    return KL_OK;
}

static kl_status record_prepare(const kl_exec *ex, const kl_tensor *t, void *vals)
{
    kl_readback *rb = KL_ATTR_C(t, record_attr)->rb;
    record_vals v = {.slot = rb->pushed % (uint64_t)rb->cap, .seq = rb->pushed + 1};
    rb->pushed++;
    memcpy(vals, &v, sizeof v);
    return KL_OK;
}

static kl_status record_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const record_vals *v = kl_run_vals(ex, t);
    kl_record *r = KL_ATTR_C(t, record_attr)->ring_dev + v->slot;
    for (int i = 0; i < t->n_src; i++) r->v[i] = kl_load_double(kl_data(ex, t->src[i]), t->src[i]->dtype, 0);
    __atomic_store_n(&r->seq, v->seq, __ATOMIC_RELEASE);
    return KL_OK;
}

const kl_op_def kl_op_record = {
    .name = "record", .shape = record_shape, .prepare = record_prepare, .fwd = {[KL_BACKEND_CPU] = record_cpu}, .half_native = KL_HALF_ALL};

kl_status kl_readback_new(kl_graph *g, int n, kl_tensor *const *ts, int capacity, kl_readback **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_readback_new: out is NULL");
    *out = NULL;
    if (!g || (n && !ts)) return kl_fail(KL_EMISUSE, "kl_readback_new: %s is NULL", g ? "ts" : "graph");
    if (n < 1 || n > KL_RECORD_MAX)
        return kl_fail(KL_EINVAL, "kl_readback_new: %d tensors; between 1 and %d can be read back together", n, KL_RECORD_MAX);
    if (capacity < 1 || capacity > (1 << 20))
        return kl_fail(KL_EINVAL, "kl_readback_new: capacity %d must be in [1, %d]", capacity, 1 << 20);
    KL_TRY(kl_check_args(g, "kl_readback_new", n, ts));
    kl_readback *rb = kl_calloc(1, sizeof *rb);
    if (!rb) return KL_ENOMEM;
    const kl_backend *be = g->ctx->be;
    void *host = NULL, *dev = NULL;
    kl_status s = be->host_alloc(&host, &dev, (size_t)capacity * sizeof(kl_record));
    if (s != KL_OK) {
        kl_free(rb);
        return s;
    }
    *rb = (kl_readback){.g = g, .n = n, .cap = capacity, .host = host, .dev = dev};
    record_attr a = {rb, rb->dev};
    kl_tensor *node;
    s = kl_node_new(g, KL_OP_record, n, ts, &a, sizeof a, &node);
    if (s != KL_OK) {
        be->host_free(host);
        kl_free(rb);
        return s;
    }
    rb->next = g->readbacks;
    g->readbacks = rb;
    *out = rb;
    return KL_OK;
}

kl_status kl_readback_reserve(kl_graph *g)
{
    for (kl_readback *rb = g->readbacks; rb; rb = rb->next)
        if (rb->pushed - rb->popped >= (uint64_t)rb->cap)
            return kl_fail(KL_EMISUSE, "kl_graph_run: a read-back ring of this graph holds %d records nobody popped "
                           "(kl_readback_pop them first)", rb->cap);
    return KL_OK;
}

void kl_readback_free_all(kl_graph *g)
{
    for (kl_readback *rb = g->readbacks, *next; rb; rb = next) {
        next = rb->next;
        g->ctx->be->host_free(rb->host);
        kl_free(rb);
    }
    g->readbacks = NULL;
}

kl_status kl_readback_pop(kl_readback *rb, int wait, double *vals, int *ready)
{
    if (!rb || !vals || !ready) return kl_fail(KL_EMISUSE, "kl_readback_pop: null argument");
    *ready = 0;
    if (rb->popped == rb->pushed) return KL_OK;
    kl_record *r = &rb->host[rb->popped % (uint64_t)rb->cap];
    uint64_t want = rb->popped + 1;
    if (__atomic_load_n(&r->seq, __ATOMIC_ACQUIRE) >= want) {
        /* arrived: still ask the backend, which returns at once but reports an
         * error a kernel recorded (a bad label) that no wait would see while
         * the host lags; the record stays for the next pop */
        KL_TRY(rb->g->ctx->be->wait_seq(&r->seq, want));
    } else {
        if (!wait) return KL_OK;
        kl_status s = rb->g->ctx->be->wait_seq(&r->seq, want);
        if (s != KL_OK) {
            /* that run's record will not come: move on; one that came with a
             * kernel's data error stays, as in the branch above */
            if (__atomic_load_n(&r->seq, __ATOMIC_ACQUIRE) < want) rb->popped++;
            return kl_fail_prefix(s, "read-back of run record %llu", (unsigned long long)want);
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
    }
    memcpy(vals, r->v, (size_t)rb->n * sizeof *vals);
    rb->popped++;
    *ready = 1;
    return KL_OK;
}

int kl_readback_pending(const kl_readback *rb) { return rb ? (int)(rb->pushed - rb->popped) : 0; }
