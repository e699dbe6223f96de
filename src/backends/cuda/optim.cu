/* The optimizer update on the device: one kernel per run of adjacent
 * parameters of one dtype over the flat parameter, gradient and state
 * buffers (the per-element update is the CPU's, optim/optim_elem.h).
 * Gradient clipping sums the squares in double by block partials added in
 * order, then reads the norm back (one synchronisation per step; a
 * device-side scale is next, for graph capture). */
#include "backends/cuda/cuda_internal.cuh"
#include "optim/optim_elem.h"
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

template <typename T, int KIND> __global__ void optim_k(kl_optim_hp h, int64_t n, T *p, const T *g, T *m, T *v)
{
    kl_optim_hp hh = h;
    KL_CU_FOR(i, n) elem(&hh, KIND, p + i, g[i], m + i, v + i);
}

/* part[block] = sum of g^2 over the block's grid-stride share */
template <typename T> __global__ void sumsq_k(const T *g, int64_t n, double *part)
{
    double acc = 0;
    KL_CU_FOR(i, n)
    {
        double x = (double)g[i];
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

/* A run of adjacent trainable parameters with gradients, one dtype. */
typedef struct { size_t off, bytes; kl_dtype dt; } span;

/* The next run starting at slot *i (advanced past it); 0 when none is left. */
static int next_span(const kl_ctx *c, const kl_graph *g, int *i, span *out)
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
        if (found && (sl->dtype != out->dt || sl->off != end)) break;
        if (!found) {
            out->off = sl->off;
            out->dt = sl->dtype;
            found = 1;
        }
        out->bytes = sl->off + sl->nbytes - out->off;
        end = (sl->off + sl->nbytes + KL_ALIGN - 1) / KL_ALIGN * KL_ALIGN; /* zero padding between slots */
    }
    return found;
}

template <typename T>
static void update(const kl_optim_hp *h, int kind, int64_t n, unsigned char *p, const unsigned char *g, unsigned char *m,
                   unsigned char *v, cudaStream_t s)
{
    unsigned nb = kl_cu_blocks(n, KL_CU_THREADS);
    T *pp = (T *)p, *mm = (T *)m, *vv = (T *)v;
    const T *gg = (const T *)g;
    if (kind == KL_OPTIM_SGD) optim_k<T, KL_OPTIM_SGD><<<nb, KL_CU_THREADS, 0, s>>>(*h, n, pp, gg, mm, vv);
    else if (kind == KL_OPTIM_ADAM) optim_k<T, KL_OPTIM_ADAM><<<nb, KL_CU_THREADS, 0, s>>>(*h, n, pp, gg, mm, vv);
    else optim_k<T, KL_OPTIM_ADAMW><<<nb, KL_CU_THREADS, 0, s>>>(*h, n, pp, gg, mm, vv);
}

/* Global L2 norm of the gradients this graph writes. */
static kl_status grad_norm(const kl_tensor *t, kl_ctx *c, const kl_graph *g, double *norm)
{
    cudaStream_t s = kl_cu_stream();
    double *part = kl_cu_reduce_buf(), *acc = part + KL_CU_RED_BLOCKS;
    KL_CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof *acc, s), "optim", "cudaMemsetAsync");
    span sp;
    for (int i = 0; next_span(c, g, &i, &sp);) {
        int64_t n = (int64_t)(sp.bytes / kl_dtype_size(sp.dt));
        unsigned nb = kl_cu_blocks(n, KL_CU_THREADS);
        if (nb > KL_CU_RED_BLOCKS) nb = KL_CU_RED_BLOCKS;
        if (sp.dt == KL_F32) sumsq_k<float><<<nb, KL_CU_THREADS, 0, s>>>((const float *)(c->grads + sp.off), n, part);
        else sumsq_k<double><<<nb, KL_CU_THREADS, 0, s>>>((const double *)(c->grads + sp.off), n, part);
        KL_CUDA_LAUNCHED(t, "sumsq_k");
        sumsq_add_k<<<1, 1, 0, s>>>(part, (int)nb, acc);
        KL_CUDA_LAUNCHED(t, "sumsq_add_k");
    }
    double ss = 0;
    KL_TRY(c->be->d2h(&ss, acc, sizeof ss));
    *norm = sqrt(ss);
    return KL_OK;
}

extern "C" kl_status kl_cuda_optim(const kl_exec *ex, const kl_tensor *t)
{
    kl_optim *opt = KL_ATTR_C(t, optim_attr)->opt;
    KL_TRY(kl_optim_ensure_state(opt));
    KL_TRY(kl_optim_upload_host_state(opt)); /* a checkpoint may have written the host copies */
    const kl_optim_opts *o = &opt->o;
    kl_optim_hp h = kl_optim_hparams(opt);
    kl_ctx *c = ex->ctx;
    const kl_graph *g = ex->g;
    if (o->max_grad_norm > 0) {
        KL_TRY(grad_norm(t, c, g, &opt->last_norm));
        if (opt->last_norm > o->max_grad_norm) h.gscale = o->max_grad_norm / (opt->last_norm + 1e-6);
    }
    cudaStream_t s = kl_cu_stream();
    span sp;
    for (int i = 0; next_span(c, g, &i, &sp);) {
        int64_t n = (int64_t)(sp.bytes / kl_dtype_size(sp.dt));
        unsigned char *p = c->params + sp.off, *gr = c->grads + sp.off, *m = opt->m + sp.off;
        unsigned char *v = opt->v ? opt->v + sp.off : m; /* SGD never reads v */
        if (sp.dt == KL_F32) update<float>(&h, o->kind, n, p, gr, m, v, s);
        else update<double>(&h, o->kind, n, p, gr, m, v, s);
        KL_CUDA_LAUNCHED(t, "optim_k");
    }
    opt->steps++;
    return KL_OK;
}
