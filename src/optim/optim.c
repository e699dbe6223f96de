/* Optimizer objects and the update op. The state (momentum or Adam's two
 * moments) is flat, in the layout of the ctx's parameter buffer, so the
 * update is one pass over contiguous memory. */
#include "optim/optim_impl.h"
#include "backends/backend.h"
#include "backends/cpu/cpu.h"
#include "core/half.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const char *kind_names[KL_OPTIM_KIND_COUNT] = {"sgd", "adam", "adamw"};

kl_optim_opts kl_optim_defaults(kl_optim_kind kind, double lr)
{
    return (kl_optim_opts){.kind = kind, .lr = lr, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .exact = 1};
}

kl_status kl_optim_new(kl_ctx *ctx, const kl_optim_opts *opts, kl_optim **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_optim_new: out is NULL");
    *out = NULL;
    if (!ctx || !opts) return kl_fail(KL_EMISUSE, "kl_optim_new: %s is NULL", ctx ? "opts" : "ctx");
    kl_optim_opts o = *opts;
    if ((unsigned)o.kind >= KL_OPTIM_KIND_COUNT) return kl_fail(KL_EINVAL, "optimizer: unknown kind %d", (int)o.kind);
    const char *k = kind_names[o.kind];
    if (!(o.lr > 0) || !isfinite(o.lr)) return kl_fail(KL_EINVAL, "%s: lr must be a positive number, got %g", k, o.lr);
    if (o.weight_decay < 0 || !isfinite(o.weight_decay))
        return kl_fail(KL_EINVAL, "%s: weight_decay must be >= 0, got %g", k, o.weight_decay);
    /* the range tests are written so that NaN fails them */
    if (!(o.momentum >= 0 && o.momentum < 1)) return kl_fail(KL_EINVAL, "%s: momentum must be in [0,1), got %g", k, o.momentum);
    if (o.nesterov && o.momentum == 0) return kl_fail(KL_EINVAL, "%s: nesterov needs momentum > 0", k);
    if (!o.exact) {
        if (o.beta1 == 0) o.beta1 = 0.9;
        if (o.beta2 == 0) o.beta2 = 0.999;
        if (o.eps == 0) o.eps = 1e-8;
    }
    if (!(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1))
        return kl_fail(KL_EINVAL, "%s: betas must be in [0,1), got (%g, %g)", k, o.beta1, o.beta2);
    if (!(o.max_grad_norm >= 0) || !isfinite(o.max_grad_norm))
        return kl_fail(KL_EINVAL, "%s: max_grad_norm must be >= 0, got %g", k, o.max_grad_norm);
    if (!(o.eps >= 0) || !isfinite(o.eps)) return kl_fail(KL_EINVAL, "%s: eps must be a number >= 0, got %g", k, o.eps);
    if (o.accumulate < 0 || o.accumulate > (1 << 20))
        return kl_fail(KL_EINVAL, "%s: accumulate must be in [0, %d] runs per update, got %d", k, 1 << 20, o.accumulate);
    if (o.accumulate == 0) o.accumulate = 1;
    if (!(o.loss_scale >= 0 && o.loss_scale <= KL_OPTIM_MAX_SCALE))
        return kl_fail(KL_EINVAL, "%s: loss_scale must be in [0, 2^64] (0: none), got %g", k, o.loss_scale);
    if (o.scale_window < 0) return kl_fail(KL_EINVAL, "%s: scale_window must be >= 0, got %d", k, o.scale_window);
    if (o.scale_window > 0 && o.loss_scale == 0)
        return kl_fail(KL_EINVAL, "%s: scale_window %d needs loss_scale > 0 (the initial scale)", k, o.scale_window);
    kl_optim *opt = kl_calloc(1, sizeof *opt);
    if (!opt) return KL_ENOMEM;
    opt->ctx = ctx;
    opt->be = ctx->be;
    opt->o = o;
    opt->run_weight = 1;
    *out = opt;
    return KL_OK;
}

static void optim_destroy(kl_optim *opt)
{
    opt->be->free(opt->m); /* the backend, not the ctx: it may be freed already */
    opt->be->free(opt->v);
    opt->be->free(opt->acc);
    if (opt->flags != opt->seen) opt->be->free(opt->flags);
    opt->be->host_free(opt->seen);
    kl_free(opt->host[0]);
    kl_free(opt->host[1]);
    kl_free(opt);
}

void kl_optim_free(kl_optim *opt)
{
    if (!opt) return;
    if (opt->users > 0) { /* freed before a graph using it: it goes with that graph */
        opt->closing = true;
        return;
    }
    optim_destroy(opt);
}

void kl_optim_retain_node(const kl_tensor *t) { KL_ATTR_C(t, optim_attr)->opt->users++; }

void kl_optim_release_node(const kl_tensor *t)
{
    kl_optim *opt = KL_ATTR_C(t, optim_attr)->opt;
    if (--opt->users == 0 && opt->closing) optim_destroy(opt);
}

/* One state buffer of need bytes in the ctx backend's memory: the old
 * contents (old bytes) then zeros. */
static kl_status grow_buffer(const kl_backend *be, unsigned char **buf, size_t old, size_t need)
{
    void *p = NULL;
    kl_status s = be->alloc(&p, need);
    if (s == KL_OK && old) s = be->d2d(p, *buf, old);
    if (s == KL_OK) s = be->memset0((unsigned char *)p + old, need - old);
    if (s != KL_OK) {
        be->free(p);
        return kl_fail_prefix(s, "optimizer: %zu bytes of state", need);
    }
    be->free(*buf);
    *buf = p;
    return KL_OK;
}

/* The flags: on the CPU one block of host memory serves both sides. */
kl_status kl_optim_ensure_flags(kl_optim *opt)
{
    if (opt->seen) return KL_OK;
    const kl_backend *be = opt->ctx->be;
    void *host = NULL, *dev = NULL, *flags = NULL;
    KL_TRY(be->host_alloc(&host, &dev, sizeof(kl_optim_flags)));
    kl_status s = opt->ctx->backend == KL_BACKEND_CPU ? (flags = host, KL_OK) : be->alloc(&flags, sizeof(kl_optim_flags));
    double S = opt->o.loss_scale > 0 ? opt->o.loss_scale : 1;
    kl_optim_flags f0 = {.gscale = 1, .scale = S, .grad_scale = S}; /* a graph without the update leaves grad_scale */
    memcpy(host, &f0, sizeof f0);
    if (s == KL_OK && flags != host) s = be->h2d(flags, &f0, sizeof f0);
    if (s != KL_OK) {
        be->host_free(host);
        return s;
    }
    opt->seen = host;
    opt->seen_dev = dev;
    opt->flags = flags;
    return KL_OK;
}

kl_status kl_optim_ensure_state(kl_optim *opt)
{
    KL_TRY(kl_optim_ensure_flags(opt));
    KL_TRY(kl_ctx_ensure_grads(opt->ctx)); /* a step before any backward pass reads zeros */
    size_t need = opt->ctx->params_bytes;
    if (need <= opt->bytes) return KL_OK;
    const kl_backend *be = opt->ctx->be;
    opt->ctx->storage_gen++; /* the state moves (also if a later grow fails) */
    KL_TRY(grow_buffer(be, &opt->m, opt->bytes, need));
    if (opt->o.kind != KL_OPTIM_SGD) KL_TRY(grow_buffer(be, &opt->v, opt->bytes, need));
    if (opt->o.accumulate > 1) KL_TRY(grow_buffer(be, &opt->acc, opt->bytes, need));
    opt->bytes = need;
    return KL_OK;
}

kl_optim_hp kl_optim_hparams(const kl_optim *opt)
{
    const kl_optim_opts *o = &opt->o;
    int64_t step = opt->steps + 1;
    kl_optim_hp h = {.lr = o->lr, .momentum = o->momentum, .weight_decay = o->weight_decay,
                     .beta1 = o->beta1, .beta2 = o->beta2, .eps = o->eps, .nesterov = o->nesterov,
                     .gscale = 1, .max_norm = o->max_grad_norm, .loss_scaled = o->loss_scale > 0,
                     .scale_window = o->scale_window, .step = step, .acc_first = 1, .acc_apply = 1, .acc_scale = 1,
                     .acc_weight = 1};
    return h;
}

kl_status kl_optim_upload_host_state(kl_optim *opt)
{
    for (int k = 0; k < 2; k++) {
        if (!opt->host_out[k]) continue;
        KL_TRY(opt->ctx->be->h2d(k == 0 ? opt->m : opt->v, opt->host[k], opt->host_bytes));
        opt->host_out[k] = false;
    }
    return KL_OK;
}

static kl_status optim_shape(kl_tensor *t)
{
    t->dtype = KL_F64; /* the gradient norm */
    t->ndim = 0;
    t->is_output = true;
    t->run_bytes = sizeof(kl_optim_hp);
    return KL_OK;
}

/* Before each run (outside a captured graph): state sized, host copies
 * uploaded, this update's hyperparameters into the run block. */
static kl_status optim_prepare(const kl_exec *ex, const kl_tensor *t, void *vals)
{
    kl_optim *opt = KL_ATTR_C(t, optim_attr)->opt;
    KL_TRY(kl_optim_ensure_state(opt));
    KL_TRY(kl_optim_upload_host_state(opt)); /* a checkpoint may have written the host copies */
    kl_optim_hp h = kl_optim_hparams(opt);
    h.acc_first = opt->micro == 0;
    h.acc_apply = opt->micro + 1 >= opt->o.accumulate || opt->end_cycle;
    h.acc_weight = opt->run_weight;
    opt->acc_wsum = h.acc_first ? h.acc_weight : opt->acc_wsum + h.acc_weight;
    h.acc_scale = 1.0 / opt->acc_wsum;
    memcpy(vals, &h, sizeof h);
    if (h.acc_apply) {
        opt->mean_in_acc = !h.acc_first;
        opt->steps++;
        opt->micro = 0;
        opt->end_cycle = false;
    } else opt->micro++;
    return KL_OK;
}

/* One parameter's update from the gradient g it uses; the kind is a
 * constant in each loop. */
#define UPDATE(T)                                                                                  \
    static void update_##T(const kl_optim_hp *h, int kind, int64_t n, T *p, const T *g, T *m, T *v) \
    {                                                                                              \
        switch (kind) {                                                                            \
        case KL_OPTIM_SGD:                                                                         \
            _Pragma("omp parallel for schedule(static) if (n > KL_PAR_MIN)")                        \
            for (int64_t i = 0; i < n; i++) kl_optim_elem_##T(h, KL_OPTIM_SGD, p + i, g[i], m + i, v + i); \
            break;                                                                                 \
        case KL_OPTIM_ADAM:                                                                        \
            _Pragma("omp parallel for schedule(static) if (n > KL_PAR_MIN)")                        \
            for (int64_t i = 0; i < n; i++) kl_optim_elem_##T(h, KL_OPTIM_ADAM, p + i, g[i], m + i, v + i); \
            break;                                                                                 \
        default:                                                                                   \
            _Pragma("omp parallel for schedule(static) if (n > KL_PAR_MIN)")                        \
            for (int64_t i = 0; i < n; i++) kl_optim_elem_##T(h, KL_OPTIM_ADAMW, p + i, g[i], m + i, v + i); \
            break;                                                                                 \
        }                                                                                          \
    }                                                                                              \
    static void accumulate_##T(const kl_optim_hp *h, int64_t n, const T *g, T *acc)                \
    {                                                                                              \
        _Pragma("omp parallel for schedule(static) if (n > KL_PAR_MIN)")                            \
        for (int64_t i = 0; i < n; i++) acc[i] = KL_OPTIM_ACCUMULATE(T, h, g[i], acc[i]);          \
    }                                                                                              \
    /* sum of squares of a block, in SS_LANES running sums (vectorised) */                       \
    static double sumsq_block_##T(const T *g, int64_t n)                                           \
    {                                                                                              \
        double l[SS_LANES] = {0}, s = 0;                                                           \
        int64_t i = 0;                                                                             \
        for (; i + SS_LANES <= n; i += SS_LANES)                                                   \
            for (int k = 0; k < SS_LANES; k++) l[k] += (double)g[i + k] * (double)g[i + k];       \
        for (; i < n; i++) s += (double)g[i] * (double)g[i];                                       \
        for (int k = 0; k < SS_LANES; k++) s += l[k];                                              \
        return s;                                                                                  \
    }                                                                                              \
    /* *ss += sum of squares of n values: SS_BLOCK-value blocks in parallel, */                   \
    /* added in block order, so the sum is the same for any thread count */                       \
    static void sumsq_##T(int64_t n, const T *g, double *ss)                                       \
    {                                                                                              \
        double part[SS_GROUP];                                                                     \
        for (int64_t b0 = 0; b0 * SS_BLOCK < n; b0 += SS_GROUP) {                                   \
            int64_t nb = (n - b0 * SS_BLOCK + SS_BLOCK - 1) / SS_BLOCK;                            \
            if (nb > SS_GROUP) nb = SS_GROUP;                                                      \
            _Pragma("omp parallel for schedule(static) if (nb > 1 && n > KL_PAR_MIN)")              \
            for (int64_t b = 0; b < nb; b++) {                                                     \
                int64_t at = (b0 + b) * SS_BLOCK, len = n - at < SS_BLOCK ? n - at : SS_BLOCK;     \
                part[b] = sumsq_block_##T(g + at, len);                                            \
            }                                                                                      \
            for (int64_t b = 0; b < nb; b++) *ss += part[b];                                       \
        }                                                                                          \
    }
/* the gradient norm's sum of squares: blocks, their lanes, groups of blocks per parallel loop */
#define SS_BLOCK 4096
#define SS_LANES 8
#define SS_GROUP 256
KL_FOR_REAL(UPDATE)

/* The next trainable parameter slot at or after *s whose gradient graph g
 * writes (advancing *s past it); NULL when none is left. */
static const kl_param_slot *next_slot(const kl_ctx *c, const kl_graph *g, int *s)
{
    for (; *s < c->n_slots && *s < g->grad_written_n; (*s)++)
        if (c->slots[*s].trainable && g->grad_written[*s]) return &c->slots[(*s)++];
    return NULL;
}

static kl_status optim_cpu(const kl_exec *ex, const kl_tensor *t)
{
    kl_optim *opt = KL_ATTR_C(t, optim_attr)->opt;
    const kl_optim_opts *o = &opt->o;
    kl_optim_hp h;
    memcpy(&h, kl_run_vals(ex, t), sizeof h);
    kl_ctx *c = ex->ctx;
    const kl_graph *g = ex->g;
    /* accumulation first: a run inside a cycle adds its gradient; the run
     * ending a cycle of several forms their mean in the accumulator, and the
     * update reads it from there */
    int mean_in_acc = h.acc_apply && !h.acc_first;
    const kl_param_slot *sl;
    if ((!h.acc_apply && !opt->flags->halted) || mean_in_acc)
        for (int s = 0; (sl = next_slot(c, g, &s));) {
            int64_t n = (int64_t)(sl->nbytes / kl_dtype_size(sl->dtype));
            const unsigned char *gr = c->grads + sl->off;
            if (sl->dtype == KL_F32) accumulate_float(&h, n, (const float *)gr, (float *)(opt->acc + sl->off));
            else accumulate_double(&h, n, (const double *)gr, (double *)(opt->acc + sl->off));
        }
    const unsigned char *geff = mean_in_acc ? opt->acc : c->grads; /* the gradients the update uses */
    double ss = 0;
    int have_ss = kl_optim_needs_norm(o);
    /* their global norm, over every gradient of this graph */
    for (int s = 0; have_ss && h.acc_apply && (sl = next_slot(c, g, &s));) {
        int64_t n = (int64_t)(sl->nbytes / kl_dtype_size(sl->dtype));
        if (sl->dtype == KL_F32) sumsq_float(n, (const float *)(geff + sl->off), &ss);
        else sumsq_double(n, (const double *)(geff + sl->off), &ss);
    }
    const kl_tensor *loss = t->src[0];
    kl_optim_decide(&h, kl_load_double(kl_data(ex, loss), loss->dtype, 0), have_ss, ss, opt->flags);
    *(double *)kl_data(ex, t) = opt->flags->norm;
    if (!opt->flags->apply) return KL_OK;
    kl_optim_hp_apply(&h, opt->flags);
    kl_optim_hp nodecay = h;
    nodecay.weight_decay = 0;
    for (int s = 0; (sl = next_slot(c, g, &s));) {
        int64_t n = (int64_t)(sl->nbytes / kl_dtype_size(sl->dtype));
        unsigned char *p = c->params + sl->off, *m = opt->m + sl->off;
        const unsigned char *gr = geff + sl->off;
        unsigned char *v = opt->v ? opt->v + sl->off : m; /* SGD never reads v */
        const kl_optim_hp *hs = kl_optim_decays(o, sl->ndim) ? &h : &nodecay;
        if (sl->dtype == KL_F32) update_float(hs, o->kind, n, (float *)p, (const float *)gr, (float *)m, (float *)v);
        else update_double(hs, o->kind, n, (double *)p, (const double *)gr, (double *)m, (double *)v);
    }
    return KL_OK;
}

/* The run stopped before the update (on the CPU a data error stops it
 * there; a GPU's update kernels see the error themselves): as on a GPU,
 * the update counts as skipped, or its cycle is void. */
static void optim_failed(const kl_exec *ex, const kl_tensor *t, const void *vals)
{
    kl_optim *opt = KL_ATTR_C(t, optim_attr)->opt;
    if (opt->flags != opt->seen) return; /* device flags: a launch failed, the context is broken */
    kl_optim_hp h;
    memcpy(&h, vals, sizeof h);
    kl_optim_failed(&h, opt->flags);
}

const kl_op_def kl_op_optim = {.name = "optim",
                               .shape = optim_shape,
                               .prepare = optim_prepare,
                               .failed = optim_failed,
                               .retain = kl_optim_retain_node,
                               .release = kl_optim_release_node,
                               .fwd = {[KL_BACKEND_CPU] = optim_cpu}};

kl_status kl_optim_step(kl_graph *g, kl_optim *opt, kl_tensor **norm)
{
    if (norm) *norm = NULL;
    if (!g || !opt) return kl_fail(KL_EMISUSE, "kl_optim_step: %s is NULL", g ? "optimizer" : "graph");
    if (opt->ctx != g->ctx) return kl_fail(KL_EMISUSE, "kl_optim_step: optimizer and graph belong to different contexts");
    if (!g->has_backward) return kl_fail(KL_EMISUSE, "kl_optim_step: call kl_backward on the graph first");
    /* a second update would apply the one gradient twice in every run */
    for (int i = 0; i < g->n_nodes; i++)
        if (g->nodes[i]->op == KL_OP_optim)
            return kl_fail(KL_EMISUSE, "kl_optim_step: the graph already has an update ('%s'); a graph has one: "
                           "call kl_optim_step (or kl_optim_minimize) once per graph", g->nodes[i]->name);
    kl_optim *scaler = kl_optim_of_scaled_loss(g->loss);
    /* another optimizer would apply gradients S times too large (it never divides by S) */
    if (scaler && scaler != opt)
        return kl_fail(KL_EMISUSE, "kl_optim_step: the graph's backward starts from '%s', scaled by another "
                       "optimizer: step with the optimizer that kl_optim_scale_loss was given", g->loss->name);
    if (opt->o.loss_scale > 0 && scaler != opt)
        return kl_fail(KL_EMISUSE, "kl_optim_step: the optimizer scales the loss (loss_scale %g) but the graph's "
                       "backward starts from '%s': pass the loss through kl_optim_scale_loss before kl_backward",
                       opt->o.loss_scale, g->loss->name);
    KL_TRY(kl_optim_ensure_state(opt));
    optim_attr a = {opt};
    kl_tensor *t;
    KL_TRY(kl_node_new(g, KL_OP_optim, 1, &g->loss, &a, sizeof a, &t));
    snprintf(t->name, sizeof t->name, "grad_norm");
    if (norm) *norm = t;
    return KL_OK;
}

kl_status kl_optim_set_lr(kl_optim *opt, double lr)
{
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_set_lr: optimizer is NULL");
    if (!(lr >= 0) || !isfinite(lr)) return kl_fail(KL_EINVAL, "kl_optim_set_lr: lr must be >= 0, got %g", lr);
    opt->o.lr = lr;
    return KL_OK;
}

double kl_optim_lr(const kl_optim *opt) { return opt ? opt->o.lr : 0; }
int64_t kl_optim_steps(const kl_optim *opt) { return opt ? opt->steps : 0; }
double kl_optim_last_grad_norm(const kl_optim *opt) { return opt && opt->seen ? opt->seen->norm : 0; }

int kl_optim_halted(const kl_optim *opt) { return opt && opt->seen ? opt->seen->halted : 0; }

kl_status kl_optim_clear_halt(kl_optim *opt)
{
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_clear_halt: optimizer is NULL");
    KL_TRY(kl_optim_ensure_flags(opt));
    /* on a device, each run's decision copies the device's flags over seen:
     * runs still in flight would set halted again, so let them finish */
    if (opt->flags != opt->seen) KL_TRY(opt->ctx->be->sync());
    opt->seen->halted = 0;
    opt->micro = 0; /* the cycle in progress added nothing while halted */
    opt->end_cycle = false;
    int zero = 0;
    return opt->flags == opt->seen ? KL_OK : opt->ctx->be->h2d(&opt->flags->halted, &zero, sizeof zero);
}

kl_status kl_optim_set_steps(kl_optim *opt, int64_t steps)
{
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_set_steps: optimizer is NULL");
    if (steps < 0) return kl_fail(KL_EINVAL, "kl_optim_set_steps: steps must be >= 0, got %lld", (long long)steps);
    opt->steps = steps;
    opt->micro = 0;
    opt->end_cycle = false;
    return KL_OK;
}

kl_status kl_optim_set_run_weight(kl_optim *opt, double w)
{
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_set_run_weight: optimizer is NULL");
    if (!(w > 0) || !isfinite(w)) return kl_fail(KL_EINVAL, "kl_optim_set_run_weight: the weight must be a positive number, got %g", w);
    opt->run_weight = w;
    return KL_OK;
}

kl_status kl_optim_end_cycle(kl_optim *opt)
{
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_end_cycle: optimizer is NULL");
    opt->end_cycle = true;
    return KL_OK;
}

int64_t kl_optim_pending(const kl_optim *opt) { return opt ? opt->micro : 0; }

kl_status kl_optim_grad_get(const kl_optim *opt, int i, void *dst, size_t bytes)
{
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_grad_get: optimizer is NULL");
    if (opt->micro)
        return kl_fail(KL_EINVAL, "kl_optim_grad_get: a cycle of accumulation is in progress (%lld of %d runs); "
                       "the last update's gradient is gone", (long long)opt->micro, opt->o.accumulate);
    const kl_ctx *c = opt->ctx;
    KL_TRY(kl_ctx_check_grad_copy(c, i, dst, bytes, "kl_optim_grad_get"));
    const kl_param_slot *sl = &c->slots[i];
    /* a parameter the last update did not cover (added since) has no mean in acc */
    bool from_acc = opt->mean_in_acc && sl->off + sl->nbytes <= opt->bytes;
    if (from_acc) KL_TRY(c->be->d2h(dst, opt->acc + sl->off, bytes));
    else KL_TRY(kl_ctx_grad_get(c, i, dst, bytes)); /* zeros before any backward pass (no gradient buffer) */
    double gs = kl_optim_grad_scale(opt); /* the scale is constant within a cycle */
    int64_t n = (int64_t)(bytes / kl_dtype_size(sl->dtype));
    for (int64_t k = 0; gs != 1 && k < n; k++) {
        if (sl->dtype == KL_F32) ((float *)dst)[k] = (float)(((float *)dst)[k] / gs);
        else ((double *)dst)[k] /= gs;
    }
    return KL_OK;
}

int kl_optim_state_count(const kl_optim *opt)
{
    if (!opt) return 0;
    return opt->o.kind == KL_OPTIM_SGD ? (opt->o.momentum != 0) : 2;
}

kl_status kl_optim_state(kl_optim *opt, int i, const char **name, void **data, size_t *bytes)
{
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_state: optimizer is NULL");
    if (i < 0 || i >= kl_optim_state_count(opt))
        return kl_fail(KL_EINVAL, "kl_optim_state: index %d out of range [0,%d)", i, kl_optim_state_count(opt));
    KL_TRY(kl_optim_ensure_state(opt));
    bool sgd = opt->o.kind == KL_OPTIM_SGD;
    if (name) *name = sgd ? "momentum_buffer" : (i == 0 ? "exp_avg" : "exp_avg_sq");
    if (bytes) *bytes = opt->bytes;
    if (!data) return KL_OK;
    if (opt->ctx->backend == KL_BACKEND_CPU) {
        *data = i == 0 ? opt->m : opt->v;
        return KL_OK;
    }
    /* device state: a host copy, uploaded again before the next update in
     * case the caller writes it (checkpoint loading). The other copy handed
     * out before stays marked: a caller may ask for both, then write both */
    int other = 1 - i;
    bool keep = opt->host_out[other];
    KL_TRY(kl_optim_upload_host_state(opt)); /* pending writes first: the d2h below must not undo them */
    if (opt->host_bytes != opt->bytes) {
        keep = false; /* the state grew: a pointer handed out before is stale */
        for (int k = 0; k < 2; k++) {
            unsigned char *p = kl_realloc(opt->host[k], opt->bytes ? opt->bytes : 1);
            if (!p) return KL_ENOMEM;
            opt->host[k] = p;
        }
        opt->host_bytes = opt->bytes;
    }
    KL_TRY(opt->ctx->be->d2h(opt->host[i], i == 0 ? opt->m : opt->v, opt->bytes));
    opt->host_out[other] = keep;
    opt->host_out[i] = true;
    *data = opt->host[i];
    return KL_OK;
}
