/* Contexts: device, threads, seed, and the flat parameter store.
 *
 * Trainable parameters live back to back (each slot 256-byte aligned) in one
 * buffer, their gradients in a second buffer of the same layout, and
 * non-trainable buffers (running statistics) in a third, so one optimizer
 * kernel and one all-reduce cover every parameter. The gradient buffer is
 * made by the first backward pass or optimizer (kl_ctx_ensure_grads), so
 * inference holds the weights once. */
#include "core/graph.h"
#include "core/half.h"
#include "core/philox.h"
#include "backends/backend.h"

#include <math.h>
#include <stdlib.h>

static int default_threads(void)
{
    const char *e = getenv("KILN_THREADS");
    if (e && atoi(e) > 0) return atoi(e);
    return kl_cpu_cores();
}

kl_status kl_ctx_new(const kl_ctx_opts *opts, kl_ctx **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_ctx_new: out is NULL");
    *out = NULL;
    kl_ctx_opts o = opts ? *opts : (kl_ctx_opts){0};
    kl_backend_id backend = KL_BACKEND_CPU;
    if (o.device.type == KL_DEVICE_CUDA) {
        KL_TRY(kl_cuda_available(o.device.index));
        KL_TRY(kl_cuda_use(o.device.index)); /* stream, cuBLASLt handle, workspace */
        backend = KL_BACKEND_CUDA;
    } else if (o.device.type != KL_DEVICE_CPU) {
        return kl_fail(KL_EINVAL, "kl_ctx_new: unknown device type %d", (int)o.device.type);
    } else if (o.device.index != 0) { /* one CPU device: kl_ctx_device would report one that is not there */
        return kl_fail(KL_EINVAL, "kl_ctx_new: the CPU device has index 0, got %d", o.device.index);
    }
    if (o.threads < 0) return kl_fail(KL_EINVAL, "kl_ctx_new: threads must be >= 0, got %d", o.threads);
    if (!kl_backends[backend]) return kl_fail(KL_EINTERNAL, "kl_ctx_new: backend %d is not built in", (int)backend);
    kl_ctx *c = kl_calloc(1, sizeof *c);
    if (!c) return KL_ENOMEM;
    c->device = o.device;
    c->backend = backend;
    c->be = kl_backends[backend];
    c->threads = o.threads ? o.threads : default_threads();
    c->seed = o.seed;
    c->no_init = o.no_init != 0;
    *out = c;
    return KL_OK;
}

void kl_ctx_free(kl_ctx *c)
{
    if (!c) return;
    if (c->n_graphs > 0) { /* freed out of order: the graphs still use its parameters and backend */
        c->closing = 1;
        return;
    }
    for (int i = 0; i < c->n_slots; i++) kl_free(c->slots[i].name);
    kl_free(c->slots);
    c->be->free(c->params);
    c->be->free(c->grads);
    c->be->free(c->buffers);
    kl_free(c);
}

kl_status kl_ctx_set_threads(kl_ctx *c, int threads)
{
    if (!c) return kl_fail(KL_EMISUSE, "kl_ctx_set_threads: ctx is NULL");
    if (threads < 0) return kl_fail(KL_EINVAL, "kl_ctx_set_threads: threads must be >= 0, got %d", threads);
    c->threads = threads ? threads : default_threads();
    return KL_OK;
}

int kl_ctx_threads(const kl_ctx *c) { return c ? c->threads : 0; }
kl_device kl_ctx_device(const kl_ctx *c) { return c ? c->device : (kl_device){KL_DEVICE_CPU, 0}; }
int kl_ctx_param_count(const kl_ctx *c) { return c ? c->n_slots : 0; }

static size_t align_up(size_t n) { return (n + KL_ALIGN - 1) / KL_ALIGN * KL_ALIGN; }

/* Grows a device buffer, keeping its contents and zeroing the rest. */
/* *buf of *cap bytes (used of them kept) moved to a zeroed one of ncap */
static kl_status grow_to(const kl_backend *be, unsigned char **buf, size_t *cap, size_t used, size_t ncap)
{
    void *p = NULL;
    KL_TRY(be->alloc(&p, ncap));
    kl_status s = *buf ? be->d2d(p, *buf, used) : KL_OK;
    if (s == KL_OK) s = be->memset0((unsigned char *)p + used, ncap - used);
    if (s != KL_OK) {
        be->free(p);
        return s;
    }
    be->free(*buf);
    *buf = p;
    *cap = ncap;
    return KL_OK;
}

static kl_status grow(const kl_backend *be, unsigned char **buf, size_t *cap, size_t used, size_t need)
{
    if (need <= *cap) return KL_OK;
    /* at least doubling (amortised growth), but no further than need: one
     * large parameter takes its size, not the next power of two */
    size_t ncap = *cap ? 2 * *cap : 4096;
    return grow_to(be, buf, cap, used, ncap < need ? need : ncap);
}

/* Keeps an existing gradient buffer as large as the parameter buffer. */
static kl_status follow_params(kl_ctx *c)
{
    if (!c->grads || c->grads_cap >= c->params_cap) return KL_OK;
    return grow_to(c->be, &c->grads, &c->grads_cap, c->params_bytes, c->params_cap);
}

kl_status kl_ctx_ensure_grads(kl_ctx *c)
{
    if (c->grads) return follow_params(c);
    if (!c->params_cap) return KL_OK; /* no trainable parameter yet */
    return grow_to(c->be, &c->grads, &c->grads_cap, 0, c->params_cap);
}

kl_status kl_ctx_reserve_params(kl_ctx *c, size_t bytes)
{
    if (bytes <= c->params_cap) return KL_OK;
    KL_TRY(grow_to(c->be, &c->params, &c->params_cap, c->params_bytes, bytes));
    return follow_params(c);
}

unsigned char *kl_slot_data(const kl_ctx *c, int slot)
{
    const kl_param_slot *s = &c->slots[slot];
    return (s->trainable ? c->params : c->buffers) + s->off;
}

unsigned char *kl_slot_grad(const kl_ctx *c, int slot) { return c->grads + c->slots[slot].off; }

/* Initial values of elements [i0, i0 + n) of slot s into data, drawn on
 * the host (so every device starts alike) from the slot's Philox stream. */
static void init_values(const kl_param_slot *s, uint64_t seed, uint64_t stream, const kl_init *init, int64_t i0,
                        int64_t n, int threads, void *data)
{
    kl_init_kind kind = init ? init->kind : KL_INIT_DEFAULT;
    double a = init ? init->a : 0;
    if (kind == KL_INIT_DEFAULT) kind = s->ndim >= 2 ? KL_INIT_KAIMING_UNIFORM : KL_INIT_ZEROS;
    if (kind == KL_INIT_KAIMING_UNIFORM) {
        double fan_in = a;
        if (fan_in <= 0) {
            fan_in = 1;
            for (int i = 1; i < s->ndim; i++) fan_in *= (double)s->ne[i];
        }
        a = 1.0 / sqrt(fan_in);
        kind = KL_INIT_UNIFORM;
    }
    /* every element is its own Philox draw: any split over threads gives the same values */
#pragma omp parallel for num_threads(threads) if (n >= 65536) schedule(static)
    for (int64_t j = 0; j < n; j++) {
        uint64_t i = (uint64_t)(i0 + j);
        double v = 0;
        if (kind == KL_INIT_ONES) v = 1;
        else if (kind == KL_INIT_UNIFORM)
            v = (2 * kl_u32_to_unit(kl_philox_word(seed, 0x1417, stream, i)) - 1) * a;
        else if (kind == KL_INIT_NORMAL) {
            double u1 = kl_u32_to_unit(kl_philox_word(seed, 0x1417, stream, 2 * i));
            double u2 = kl_u32_to_unit(kl_philox_word(seed, 0x1417, stream, 2 * i + 1));
            v = a * sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
        }
        if (s->dtype == KL_F64) ((double *)data)[j] = v;
        else if (s->dtype == KL_F32) ((float *)data)[j] = (float)v;
        else if (s->dtype == KL_I32) ((int32_t *)data)[j] = (int32_t)v;
        else if (s->dtype == KL_U8) ((uint8_t *)data)[j] = (uint8_t)(v <= 0 ? 0 : v >= 255 ? 255 : v); /* a negative draw is 0, not UB */
        else if (s->dtype == KL_F16) ((uint16_t *)data)[j] = kl_f32_to_f16((float)v);
        else if (s->dtype == KL_BF16) ((uint16_t *)data)[j] = kl_f32_to_bf16((float)v);
    }
}

/* Fills slot s's memory dst: on the CPU in place, elsewhere through a host
 * buffer of at most 4 MiB (a large parameter is not held twice). */
static kl_status init_slot(kl_ctx *c, const kl_param_slot *s, const kl_init *init, unsigned char *dst)
{
    uint64_t stream = c->init_stream++; /* counted also when skipped: later streams stay put */
    size_t es = kl_dtype_size(s->dtype);
    int64_t n = (int64_t)(s->nbytes / es);
    if (c->no_init) return KL_OK; /* the slot's memory is zeroed already */
    if (c->backend == KL_BACKEND_CPU) {
        init_values(s, c->seed, stream, init, 0, n, c->threads, dst);
        return KL_OK;
    }
    int64_t chunk = (int64_t)(((size_t)4 << 20) / es);
    void *host = kl_calloc(1, (size_t)(n < chunk ? n : chunk) * es + 1); /* zeros for dtypes init_values skips */
    if (!host) return KL_ENOMEM;
    kl_status st = KL_OK;
    for (int64_t i = 0; i < n && st == KL_OK; i += chunk) {
        int64_t k = n - i < chunk ? n - i : chunk;
        init_values(s, c->seed, stream, init, i, k, c->threads, host);
        st = c->be->h2d(dst + (size_t)i * es, host, (size_t)k * es);
    }
    kl_free(host);
    return st;
}

kl_status kl_ctx_slot_new(kl_ctx *c, const char *name, kl_dtype dt, int ndim, const int64_t *ne,
                          bool trainable, const kl_init *init, int *slot)
{
    if (init && (unsigned)init->kind >= KL_INIT_KIND_COUNT)
        return kl_fail(KL_EINVAL, "parameter '%s': unknown init kind %d", name, (int)init->kind);
    /* init->a is a range (UNIFORM), a std (NORMAL) or a fan_in (KAIMING_UNIFORM,
     * and DEFAULT, which is kaiming for ndim >= 2; <= 0 there: computed); ZEROS
     * and ONES ignore it. A NaN or infinite one would fill NaN or zeros. */
    if (init && init->kind != KL_INIT_ZEROS && init->kind != KL_INIT_ONES && !isfinite(init->a))
        return kl_fail(KL_EINVAL, "parameter '%s': init parameter a is %g; it must be finite", name, init->a);
    if (init && (init->kind == KL_INIT_UNIFORM || init->kind == KL_INIT_NORMAL) && init->a < 0)
        return kl_fail(KL_EINVAL, "parameter '%s': init %s with a = %g; a (the %s) must be >= 0", name,
                       init->kind == KL_INIT_UNIFORM ? "UNIFORM" : "NORMAL", init->a,
                       init->kind == KL_INIT_UNIFORM ? "range" : "std");
    if (trainable && dt != KL_F32 && dt != KL_F64)
        return kl_fail(KL_EUNSUPPORTED, "parameter '%s': trainable parameters must be f32 or f64, got %s%s", name,
                       kl_dtype_name(dt),
                       dt == KL_F16 || dt == KL_BF16 ? " (keep it f32 and cast it to 16 bits in the graph: kl_cast)" : "");
    if (c->n_slots == c->cap_slots) {
        int ncap = c->cap_slots ? 2 * c->cap_slots : 16;
        kl_param_slot *ns = kl_realloc(c->slots, (size_t)ncap * sizeof *ns);
        if (!ns) return KL_ENOMEM;
        c->slots = ns;
        c->cap_slots = ncap;
    }
    kl_param_slot s = {.dtype = dt, .ndim = ndim, .trainable = trainable};
    if (ndim) memcpy(s.ne, ne, (size_t)ndim * sizeof *ne);
    if (!kl_shape_bytes(dt, ndim, ne, &s.nbytes)) { /* kl_param checks first; this guards other callers */
        char sh[128];
        return kl_fail(KL_EINVAL, "parameter '%s': %s %s is too large (over 2^62 bytes)", name,
                       kl_shape_str(sh, sizeof sh, ndim, ne), kl_dtype_name(dt));
    }
    size_t *used = trainable ? &c->params_bytes : &c->buffers_bytes;
    s.off = *used;
    size_t need = s.off + align_up(s.nbytes);
    if (trainable) {
        KL_TRY(grow(c->be, &c->params, &c->params_cap, *used, need));
        KL_TRY(follow_params(c));
    } else {
        KL_TRY(grow(c->be, &c->buffers, &c->buffers_cap, *used, need));
    }
    s.name = kl_strdup(name);
    if (!s.name) return KL_ENOMEM;
    c->slots[c->n_slots] = s;
    kl_status st = init_slot(c, &s, init, (trainable ? c->params : c->buffers) + s.off);
    if (st != KL_OK) {
        kl_free(s.name);
        return st;
    }
    *used = need;
    *slot = c->n_slots++;
    return KL_OK;
}

int kl_ctx_param_find(const kl_ctx *c, const char *name)
{
    if (!c || !name) return -1;
    for (int i = 0; i < c->n_slots; i++)
        if (!strcmp(c->slots[i].name, name)) return i;
    return -1;
}

kl_status kl_ctx_param_info(const kl_ctx *c, int i, const char **name, kl_dtype *dt, int *ndim,
                            int64_t dims[KL_MAX_DIMS], int *trainable)
{
    if (!c) return kl_fail(KL_EMISUSE, "kl_ctx_param_info: ctx is NULL");
    if (i < 0 || i >= c->n_slots)
        return kl_fail(KL_EINVAL, "kl_ctx_param_info: index %d out of range [0,%d)", i, c->n_slots);
    const kl_param_slot *s = &c->slots[i];
    if (name) *name = s->name;
    if (dt) *dt = s->dtype;
    if (ndim) *ndim = s->ndim;
    if (dims) memcpy(dims, s->ne, (size_t)s->ndim * sizeof *dims);
    if (trainable) *trainable = s->trainable;
    return KL_OK;
}

static kl_status check_copy(const kl_ctx *c, int i, const void *buf, size_t bytes, const char *fn)
{
    if (!c) return kl_fail(KL_EMISUSE, "%s: ctx is NULL", fn);
    if (!buf) return kl_fail(KL_EMISUSE, "%s: the host buffer is NULL", fn);
    if (i < 0 || i >= c->n_slots) return kl_fail(KL_EINVAL, "%s: index %d out of range [0,%d)", fn, i, c->n_slots);
    if (bytes != c->slots[i].nbytes)
        return kl_fail(KL_EINVAL, "%s: '%s' holds %zu bytes, got %zu", fn, c->slots[i].name, c->slots[i].nbytes,
                       bytes);
    return KL_OK;
}

kl_status kl_ctx_param_get(const kl_ctx *c, int i, void *dst, size_t bytes)
{
    KL_TRY(check_copy(c, i, dst, bytes, "kl_ctx_param_get"));
    return c->be->d2h(dst, kl_slot_data(c, i), bytes);
}

kl_status kl_ctx_param_set(kl_ctx *c, int i, const void *src, size_t bytes)
{
    KL_TRY(check_copy(c, i, src, bytes, "kl_ctx_param_set"));
    return c->be->h2d(kl_slot_data(c, i), src, bytes);
}

kl_status kl_ctx_check_grad_copy(const kl_ctx *c, int i, const void *dst, size_t bytes, const char *fn)
{
    KL_TRY(check_copy(c, i, dst, bytes, fn));
    if (!c->slots[i].trainable) return kl_fail(KL_EINVAL, "%s: '%s' is a buffer, not trainable", fn, c->slots[i].name);
    return KL_OK;
}

kl_status kl_ctx_grad_get(const kl_ctx *c, int i, void *dst, size_t bytes)
{
    KL_TRY(kl_ctx_check_grad_copy(c, i, dst, bytes, "kl_ctx_grad_get"));
    if (!c->grads) { /* no backward pass has run: the gradient is zero */
        memset(dst, 0, bytes);
        return KL_OK;
    }
    return c->be->d2h(dst, kl_slot_grad(c, i), bytes);
}
