/* Repeated GEMMs with one fixed operand (cpu.h: kl_gemm_rep).
 *
 * OpenBLAS packs both operands on every call; an LSTM step's GEMM
 * ([32, 512] x [512, 2048]) spends about as long packing the 4 MiB of
 * recurrent weights as multiplying, 128 times a layer. oneDNN's matmul
 * takes the weights in a layout of its choosing: one reorder per run of the
 * layer, then each step reads them as they are. One cache entry per
 * geometry and thread count, made on first use and kept for the process
 * (like conv_dnnl.c's). */
#include "backends/cpu/cpu.h"
#include "backends/cpu/dnnl_lib.h"

#include <stdlib.h>
#include <string.h>

static void blas_float(const kl_gemm_rep *r, const float *A, float *C)
{
    kl_gemm_float(false, r->tb, r->M, r->N, r->K, 1, A, r->lda, (const float *)r->B, r->ldb, (float)r->beta, C, r->ldc);
}

void kl_gemm_rep_double(kl_gemm_rep *r, const double *A, double *C)
{
    kl_gemm_double(false, r->tb, r->M, r->N, r->K, 1, A, r->lda, (const double *)r->B, r->ldb, r->beta, C, r->ldc);
}

#ifndef KL_HAVE_DNNL
void kl_gemm_rep_begin(kl_gemm_rep *r, int threads, int is_f32, bool tb, int64_t M, int64_t N, int64_t K,
                       const void *B, int64_t ldb, int64_t lda, int64_t ldc, double beta)
{
    (void)threads, (void)is_f32;
    *r = (kl_gemm_rep){NULL, tb, M, N, K, lda, ldb, ldc, beta, B};
}
void kl_gemm_rep_float(kl_gemm_rep *r, const float *A, float *C) { blas_float(r, A, C); }
void kl_gemm_rep_end(kl_gemm_rep *r) { (void)r; }
#else
#include <pthread.h>

typedef struct kl_rep_entry {
    kl_dnnl_entry h; /* failed: oneDNN refused it, BLAS runs these */
    dnnl_primitive_t mm, reorder;
    dnnl_memory_t src, wuser, w, dst; /* w: the weights in the primitive's layout (wuser itself when equal) */
} kl_rep_entry;

static struct {
    const kl_dnnl_lib *f;
    int off; /* KILN_RNN_GEMM=blas, or no oneDNN */
    kl_dnnl_cache cache;
} g_rep = {.cache = KL_DNNL_CACHE_INIT};
static pthread_once_t g_rep_once = PTHREAD_ONCE_INIT;

static void rep_load(void)
{
    const char *env = getenv("KILN_RNN_GEMM");
    g_rep.f = env && !strcmp(env, "blas") ? NULL : kl_dnnl();
    g_rep.off = g_rep.f == NULL;
}

#define RT(call)                                                                                   \
    do {                                                                                           \
        if ((call) != dnnl_success) return false;                                                  \
    } while (0)

/* The primitive for r's geometry: src [M,K] (row stride lda), weights
 * [K,N] = op(B), dst [M,N] (row stride ldc), a sum post-op for beta 1. */
static bool entry_make(kl_dnnl_entry *h, const void *arg)
{
    kl_rep_entry *e = (kl_rep_entry *)h;
    const kl_gemm_rep *r = arg;
    const kl_dnnl_lib *f = g_rep.f;
    dnnl_memory_desc_t sd, wd, wa, dd;
    RT(f->dnnl_memory_desc_init_by_strides(&sd, 2, (dnnl_dims_t){r->M, r->K}, dnnl_f32, (dnnl_dims_t){r->lda, 1}));
    /* op(B)[k][n] = B[n*ldb + k] stored transposed, else B[k*ldb + n] */
    RT(f->dnnl_memory_desc_init_by_strides(&wd, 2, (dnnl_dims_t){r->K, r->N}, dnnl_f32,
                                           r->tb ? (dnnl_dims_t){1, r->ldb} : (dnnl_dims_t){r->ldb, 1}));
    RT(f->dnnl_memory_desc_init_by_tag(&wa, 2, (dnnl_dims_t){r->K, r->N}, dnnl_f32, dnnl_format_tag_any));
    RT(f->dnnl_memory_desc_init_by_strides(&dd, 2, (dnnl_dims_t){r->M, r->N}, dnnl_f32, (dnnl_dims_t){r->ldc, 1}));
    dnnl_matmul_desc_t md;
    RT(f->dnnl_matmul_desc_init(&md, &sd, &wa, NULL, &dd));
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if (r->beta != 0) {
        RT(f->dnnl_primitive_attr_create(&attr));
        RT(f->dnnl_post_ops_create(&po));
        RT(f->dnnl_post_ops_append_sum(po, 1.0f));
        RT(f->dnnl_primitive_attr_set_post_ops(attr, po));
    }
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = f->dnnl_primitive_desc_create(&pd, &md, attr, f->eng, NULL);
    if (po) f->dnnl_post_ops_destroy(po);
    if (attr) f->dnnl_primitive_attr_destroy(attr);
    if (s != dnnl_success) return false;
    const dnnl_memory_desc_t *want = f->dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    bool ok = f->dnnl_primitive_create(&e->mm, pd) == dnnl_success &&
              f->dnnl_memory_create(&e->src, &sd, f->eng, DNNL_MEMORY_NONE) == dnnl_success &&
              f->dnnl_memory_create(&e->dst, &dd, f->eng, DNNL_MEMORY_NONE) == dnnl_success &&
              f->dnnl_memory_create(&e->wuser, &wd, f->eng, DNNL_MEMORY_NONE) == dnnl_success;
    e->w = e->wuser;
    if (ok && !f->dnnl_memory_desc_equal(&wd, want)) {
        dnnl_primitive_desc_t rpd;
        ok = f->dnnl_memory_create(&e->w, want, f->eng, DNNL_MEMORY_ALLOCATE) == dnnl_success &&
             f->dnnl_reorder_primitive_desc_create(&rpd, &wd, f->eng, want, f->eng, NULL) == dnnl_success;
        if (ok) {
            ok = f->dnnl_primitive_create(&e->reorder, rpd) == dnnl_success;
            f->dnnl_primitive_desc_destroy(rpd);
        }
    }
    f->dnnl_primitive_desc_destroy(pd);
    return ok;
}

static kl_rep_entry *entry_get(const kl_gemm_rep *r, int threads)
{
    int64_t k[9] = {threads, r->tb, r->M, r->N, r->K, r->lda, r->ldb, r->ldc, r->beta != 0};
    return (kl_rep_entry *)kl_dnnl_cached(&g_rep.cache, k, 9, sizeof(kl_rep_entry), threads, entry_make, r);
}

void kl_gemm_rep_begin(kl_gemm_rep *r, int threads, int is_f32, bool tb, int64_t M, int64_t N, int64_t K,
                       const void *B, int64_t ldb, int64_t lda, int64_t ldc, double beta)
{
    *r = (kl_gemm_rep){NULL, tb, M, N, K, lda, ldb, ldc, beta, B};
    pthread_once(&g_rep_once, rep_load);
    if (!is_f32 || g_rep.off || (beta != 0 && beta != 1)) return;
    kl_rep_entry *e = entry_get(r, threads);
    if (!e) return;
    const kl_dnnl_lib *f = g_rep.f;
    pthread_mutex_lock(&e->h.mu);
    bool ok = f->dnnl_memory_set_data_handle(e->wuser, (void *)B) == dnnl_success;
    if (ok && e->reorder) {
        dnnl_exec_arg_t a[2] = {{DNNL_ARG_FROM, e->wuser}, {DNNL_ARG_TO, e->w}};
        ok = f->dnnl_primitive_execute(e->reorder, f->st, 2, a) == dnnl_success;
    }
    if (!ok) {
        pthread_mutex_unlock(&e->h.mu);
        return;
    }
    r->e = e;
}

void kl_gemm_rep_float(kl_gemm_rep *r, const float *A, float *C)
{
    kl_rep_entry *e = r->e;
    if (!e) {
        blas_float(r, A, C);
        return;
    }
    const kl_dnnl_lib *f = g_rep.f;
    dnnl_exec_arg_t a[3] = {{DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->w}, {DNNL_ARG_DST, e->dst}};
    if (f->dnnl_memory_set_data_handle(e->src, (void *)A) != dnnl_success ||
        f->dnnl_memory_set_data_handle(e->dst, C) != dnnl_success ||
        f->dnnl_primitive_execute(e->mm, f->st, 3, a) != dnnl_success ||
        f->dnnl_stream_wait(f->st) != dnnl_success) /* the caller reads C next */
        blas_float(r, A, C); /* not seen to happen; BLAS computes the same product */
}

void kl_gemm_rep_end(kl_gemm_rep *r)
{
    if (!r->e) return;
    pthread_mutex_unlock(&r->e->h.mu);
    r->e = NULL;
}
#endif
