/* The optimizer update on the device: one kernel per run of adjacent
 * parameters of one dtype over the flat parameter, gradient and state
 * buffers (the per-element update is the CPU's, optim/optim_elem.h).
 * Nothing is decided on the host, so the update replays in a captured
 * graph: the hyperparameters come from the run block (optim_prepare); with
 * clipping the squares are summed in double by block partials added in
 * order; a one-thread kernel then decides (kl_optim_decide: the clipping
 * scale, the non-finite guard from the loss and the norm, the loss scale
 * and Adam's bias corrections) into the
 * optimizer's flags, which the update kernels read. The norm also goes to
 * the node's value and to host-visible memory (kl_optim_last_grad_norm).
 * With gradient accumulation an accumulating kernel runs first in every
 * run; the run's values say what it and the update do (add, form the mean,
 * or nothing), so one captured graph serves every run of a cycle. */
#include "backends/cuda/cuda_internal.cuh"
#include "optim/optim_elem.h"
#include "core/half.h"
extern "C" {
#include "optim/optim_impl.h"
}

#include <math.h>

static __device__ __forceinline__ void elem(const kl_optim_hp *h, int kind, float *p, float g, float *m, float *v)
{
    kl_optim_elem_float(h, kind, p, g, m, v);
}
static __device__ __forceinline__ void elem(const kl_optim_hp *h, int kind, double *p, double g, double *m, double *v)
{
    kl_optim_elem_double(h, kind, p, g, m, v);
}

/* The gradients an updating run uses: its own (g), or at the end of a
 * cycle of several runs their mean, formed in the accumulator by accum_k
 * (acc: g itself without accumulation, never read then). */
template <typename T> static __device__ __forceinline__ const T *grads_used(const kl_optim_hp *hp, const T *g, const T *acc)
{
    return hp->acc_first ? g : acc;
}

template <typename T, int KIND>
__global__ void optim_k(const kl_optim_hp *hp, const kl_optim_flags *f, int64_t n, T *p, const T *g, const T *acc,
                        T *m, T *v, int decay)
{
    if (!f->apply) return;
    kl_optim_hp h = *hp;
    kl_optim_hp_apply(&h, f);
    if (!decay) h.weight_decay = 0; /* kl_optim_opts.no_decay_1d: a span of biases and norm scales */
    const T *ge = grads_used(&h, g, acc);
    KL_CU_FOR(i, n) elem(&h, KIND, p + i, ge[i], m + i, v + i);
}

/* accumulation, before the norm and the update: inside a cycle (unless
 * halted) acc = first ? w g : acc + w g; at the end of a cycle of several runs
 * their weighted mean (optim_elem.h); a data error adds nothing */
template <typename T>
__global__ void accum_k(const kl_optim_hp *hp, const kl_optim_flags *f, int64_t n, const T *g, T *acc,
                        const kl_cuda_err *err)
{
    kl_optim_hp h = *hp;
    if (h.acc_apply ? h.acc_first : f->halted) return;
    if (*(const volatile int *)&err->poison) return; /* a data error: this run's gradient is not added */
    KL_CU_FOR(i, n) acc[i] = KL_OPTIM_ACCUMULATE(T, &h, g[i], acc[i]);
}

/* one thread: the update's flags from the loss and the summed squares. A
 * data error recorded and not yet reported (a bad label or index in this
 * step or an earlier queued one: the CPU would have stopped there) skips
 * the update and leaves the flags (scaler, halt) as they were, so the
 * parameters and the optimizer's state stay those of the last good step. */
__global__ void decide_k(const kl_optim_hp *hp, const void *loss, int loss_dt, const double *ss, kl_optim_flags *f,
                         kl_optim_flags *seen, double *norm_out, const kl_cuda_err *err)
{
    if (*(const volatile int *)&err->poison) kl_optim_failed(hp, f);
    else kl_optim_decide(hp, kl_load_double(loss, loss_dt, 0), ss != NULL, ss ? *ss : 0.0, f);
    *norm_out = f->norm;
    *seen = *f; /* host-visible: the norm, halt and the loss scaler's state */
}

/* loss_scale (optim/loss_scale.c): y = x, or y = S x for its gradient, S
 * read from the flags when the kernel runs; the loss is one element */
template <typename T> __global__ void loss_scale_k(const T *x, T *y, const kl_optim_flags *f, int mul)
{
    *y = mul ? (T)(*x * (T)f->scale) : *x;
}

extern "C" kl_status kl_cuda_loss_scale(const kl_exec *ex, const kl_tensor *t)
{
    const loss_scale_attr *a = KL_ATTR_C(t, loss_scale_attr);
    cudaStream_t s = kl_cu_stream();
    const void *x = kl_data(ex, t->src[0]);
    void *y = kl_data(ex, t);
    if (t->dtype == KL_F64) loss_scale_k<double><<<1, 1, 0, s>>>((const double *)x, (double *)y, a->opt->flags, a->mul);
    else loss_scale_k<float><<<1, 1, 0, s>>>((const float *)x, (float *)y, a->opt->flags, a->mul);
    KL_CUDA_LAUNCHED(t, "loss_scale_k");
    return KL_OK;
}

/* part[block] = sum of the squares of the gradients the update uses over
 * the block's grid-stride share (0 in a run that only accumulates) */
template <typename T> __global__ void sumsq_k(const kl_optim_hp *hp, const T *g, const T *ga, int64_t n, double *part)
{
    kl_optim_hp h = *hp;
    const T *ge = grads_used(&h, g, ga);
    double acc = 0;
    if (h.acc_apply) KL_CU_FOR(i, n)
        {
            double x = (double)ge[i];
            acc += x * x;
        }
    acc = kl_cu_block_reduce<double, 0>(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

__global__ void sumsq_add_k(const double *part, int nparts, double *acc)
{
    double s = 0;
    for (int i = 0; i < nparts; i++) s += part[i];
    *acc += s;
}

/* A run of adjacent trainable parameters with gradients, one dtype, all
 * weight-decayed or none. */
typedef struct { size_t off, bytes; kl_dtype dt; bool decay; } span;

/* The next run starting at slot *i (advanced past it); 0 when none is left. */
static int next_span(const kl_ctx *c, const kl_graph *g, const kl_optim_opts *o, int *i, span *out)
{
    int n = c->n_slots < g->grad_written_n ? c->n_slots : g->grad_written_n, found = 0;
    size_t end = 0;
    for (; *i < n; (*i)++) {
        const kl_param_slot *sl = &c->slots[*i];
        if (!sl->trainable) continue;
        if (!g->grad_written[*i]) {
            if (found) break;
            continue;
        }
        bool decay = kl_optim_decays(o, sl->ndim);
        if (found && (sl->dtype != out->dt || sl->off != end || decay != out->decay)) break;
        if (!found) {
            out->off = sl->off;
            out->dt = sl->dtype;
            out->decay = decay;
            found = 1;
        }
        out->bytes = sl->off + sl->nbytes - out->off;
        end = (sl->off + sl->nbytes + KL_ALIGN - 1) / KL_ALIGN * KL_ALIGN; /* zero padding between slots */
    }
    return found;
}

/* The update of one span (acc: the accumulator, or g without one). */
template <typename T>
static void update(const kl_optim_hp *hp, const kl_optim_flags *f, int kind, int64_t n, unsigned char *p,
                   const unsigned char *g, unsigned char *acc, unsigned char *m, unsigned char *v, int decay,
                   cudaStream_t s)
{
    unsigned nb = kl_cu_blocks(n, KL_CU_THREADS);
    T *pp = (T *)p, *mm = (T *)m, *vv = (T *)v, *aa = (T *)acc;
    const T *gg = (const T *)g;
    if (kind == KL_OPTIM_SGD) optim_k<T, KL_OPTIM_SGD><<<nb, KL_CU_THREADS, 0, s>>>(hp, f, n, pp, gg, aa, mm, vv, decay);
    else if (kind == KL_OPTIM_ADAM)
        optim_k<T, KL_OPTIM_ADAM><<<nb, KL_CU_THREADS, 0, s>>>(hp, f, n, pp, gg, aa, mm, vv, decay);
    else optim_k<T, KL_OPTIM_ADAMW><<<nb, KL_CU_THREADS, 0, s>>>(hp, f, n, pp, gg, aa, mm, vv, decay);
}

/* Sum of squares of the gradients the update uses (those this graph
 * writes, with the accumulator), into *acc (device). */
static kl_status grad_sumsq(const kl_tensor *t, const kl_optim_hp *hp, kl_ctx *c, const kl_graph *g,
                            const kl_optim_opts *o, const unsigned char *accum, double *acc)
{
    cudaStream_t s = kl_cu_stream();
    double *part = kl_cu_reduce_buf();
    KL_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof *acc, s), "optim", "cudaMemsetAsync");
    span sp;
    for (int i = 0; next_span(c, g, o, &i, &sp);) {
        int64_t n = (int64_t)(sp.bytes / kl_dtype_size(sp.dt));
        unsigned nb = kl_cu_blocks(n, KL_CU_THREADS);
        if (nb > KL_CU_RED_BLOCKS) nb = KL_CU_RED_BLOCKS;
        const unsigned char *gr = c->grads + sp.off, *ga = accum ? accum + sp.off : gr;
        if (sp.dt == KL_F32) sumsq_k<float><<<nb, KL_CU_THREADS, 0, s>>>(hp, (const float *)gr, (const float *)ga, n, part);
        else sumsq_k<double><<<nb, KL_CU_THREADS, 0, s>>>(hp, (const double *)gr, (const double *)ga, n, part);
        KL_CUDA_LAUNCHED(t, "sumsq_k");
        sumsq_add_k<<<1, 1, 0, s>>>(part, (int)nb, acc);
        KL_CUDA_LAUNCHED(t, "sumsq_add_k");
    }
    return KL_OK;
}

extern "C" kl_status kl_cuda_optim(const kl_exec *ex, const kl_tensor *t)
{
    kl_optim *opt = KL_ATTR_C(t, optim_attr)->opt;
    const kl_optim_opts *o = &opt->o;
    const kl_optim_hp *hp = (const kl_optim_hp *)kl_run_vals(ex, t);
    kl_ctx *c = ex->ctx;
    const kl_graph *g = ex->g;
    cudaStream_t s = kl_cu_stream();
    span sp;
    /* accumulation first (the run's values say what it does, so one captured
     * graph serves every run of a cycle) */
    for (int i = 0; opt->acc && next_span(c, g, o, &i, &sp);) {
        int64_t n = (int64_t)(sp.bytes / kl_dtype_size(sp.dt));
        unsigned nb = kl_cu_blocks(n, KL_CU_THREADS);
        unsigned char *gr = c->grads + sp.off, *acc = opt->acc + sp.off;
        if (sp.dt == KL_F32)
            accum_k<float><<<nb, KL_CU_THREADS, 0, s>>>(hp, opt->flags, n, (const float *)gr, (float *)acc, kl_cu_err());
        else accum_k<double><<<nb, KL_CU_THREADS, 0, s>>>(hp, opt->flags, n, (const double *)gr, (double *)acc,
                                                            kl_cu_err());
        KL_CUDA_LAUNCHED(t, "accum_k");
    }
    double *ss = NULL;
    if (kl_optim_needs_norm(o)) {
        ss = kl_cu_reduce_buf() + KL_CU_RED_BLOCKS;
        KL_TRY(grad_sumsq(t, hp, c, g, o, opt->acc, ss));
    }
    const kl_tensor *loss = t->src[0];
    decide_k<<<1, 1, 0, s>>>(hp, kl_data(ex, loss), (int)loss->dtype, ss, opt->flags, opt->seen_dev,
                             (double *)kl_data(ex, t), kl_cu_err());
    KL_CUDA_LAUNCHED(t, "decide_k");
    for (int i = 0; next_span(c, g, o, &i, &sp);) {
        int64_t n = (int64_t)(sp.bytes / kl_dtype_size(sp.dt));
        unsigned char *p = c->params + sp.off, *gr = c->grads + sp.off, *m = opt->m + sp.off;
        unsigned char *v = opt->v ? opt->v + sp.off : m;        /* SGD never reads v */
        unsigned char *acc = opt->acc ? opt->acc + sp.off : gr; /* read only with accumulation */
        if (sp.dt == KL_F32) update<float>(hp, opt->flags, o->kind, n, p, gr, acc, m, v, sp.decay, s);
        else update<double>(hp, opt->flags, o->kind, n, p, gr, acc, m, v, sp.decay, s);
        KL_CUDA_LAUNCHED(t, "optim_k");
    }
    return KL_OK;
}
