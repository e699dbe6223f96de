/* f32 convolutions through oneDNN (Debian's libdnnl2, loaded at run time).
 *
 * oneDNN's JIT convolutions, in its blocked layouts with reorders from and
 * to kiln's NCHW, run the reference CNN's second convolution 2.3-3x faster
 * than im2col + GEMM on the same two cores (bench/RESULTS.md), but 10x
 * slower on the first one (one input channel, padded to 16 in the blocked
 * layout): so they are used where both channel counts per group are >= 16.
 * KILN_CONV=im2col turns them off, KILN_CONV=dnnl forces them for every f32
 * convolution (tests); without libdnnl.so.2, in builds without its header
 * and in AddressSanitizer builds (LeakSanitizer cannot see the library's
 * JIT buffers) kiln keeps its own kernels.
 *
 * Each geometry gets one cache entry, made when a node of it is made
 * (kl_dnnl_conv_bytes, from the shape fns) and kept for the process: the
 * primitive and its reorders, whose buffers (the operands in the
 * primitive's layouts, dz, the scratchpads in user mode) are the node's
 * scratch in kiln's arena, sized from oneDNN's descriptors, so the memory
 * plan counts them and the cache holds no per-geometry data. Runs lock the
 * entry (graphs share it). Results are the same from run to run; the
 * filter gradient's last bits depend on the thread count (oneDNN splits the
 * batch over threads), unlike kiln's own kernel. */
#include "backends/cpu/cpu.h"
#include "backends/cpu/dnnl_lib.h"
#include "core/error.h"
#include "ops/conv2d.h"
#include "ops/elem.h"

#include <stdlib.h>
#include <string.h>

#ifndef KL_HAVE_DNNL
bool kl_dnnl_conv_ok(const kl_conv_attr *a, const kl_tensor *t) { return false; }
size_t kl_dnnl_conv_bytes(const kl_tensor *t, int threads) { return 0; }
kl_status kl_dnnl_conv_run(const kl_exec *ex, const kl_tensor *t) { return KL_EUNSUPPORTED; }
int kl_dnnl_conv_mode(void) { return -1; }
#else
#include <pthread.h>

static struct {
    const kl_dnnl_lib *f; /* the library's functions, engine and stream (dnnl_lib.h) */
    int mode;      /* -1 none (not loaded or off), 0 auto, 1 every f32 conv */
    kl_dnnl_cache cache;
} g_dn = {.mode = -1, .cache = KL_DNNL_CACHE_INIT};
static pthread_once_t g_dn_once = PTHREAD_ONCE_INIT;

static void dn_load(void)
{
    const char *env = getenv("KILN_CONV");
    if (env && !strcmp(env, "im2col")) return;
    if (!(g_dn.f = kl_dnnl())) return;
    g_dn.mode = env && !strcmp(env, "dnnl") ? 1 : 0;
}

int kl_dnnl_conv_mode(void)
{
    pthread_once(&g_dn_once, dn_load);
    return g_dn.mode;
}

bool kl_dnnl_conv_ok(const kl_conv_attr *a, const kl_tensor *t)
{
    if (t->dtype != KL_F32) return false;
    pthread_once(&g_dn_once, dn_load);
    if (g_dn.mode < 0) return false;
    return g_dn.mode == 1 || (a->C / a->groups >= 16 && a->O / a->groups >= 16);
}

/* An operand in the primitive's layout: user memory (kiln's buffer, set per
 * run), the primitive's copy when the layouts differ (in the node's scratch
 * at off), and the reorder between them (to_user: primitive's layout ->
 * kiln's, for the output) with its scratchpad (NULL: it needs none). */
typedef struct {
    dnnl_memory_t user, mem, pad;
    dnnl_primitive_t reorder;
    bool to_user;
    size_t off;
} dn_mem;

/* 1 when the node reads (conv2d) or writes (bwd_filter) a bias */
static int bias_of(const kl_tensor *t, const kl_conv_attr *a)
{
    return t->op == KL_OP_conv2d ? t->n_src > 2 : t->op == KL_OP_conv2d_bwd_filter && a->has_bias;
}

/* What makes two nodes' primitives the same: op, threads and the geometry. */
typedef struct dn_key {
    int64_t v[KL_DNNL_KEY];
} dn_key;

static dn_key key_of(int threads, const kl_tensor *t, const kl_conv_attr *a)
{
    dn_key k = {{t->op, threads, a->sh, a->sw, a->ph, a->pw, a->dh, a->dw, a->groups, a->act, bias_of(t, a),
                 a->N, a->C, a->H, a->W, a->O, a->KH, a->KW, a->OH, a->OW}};
    return k;
}

/* The memory objects hold no buffers: each run points them at its tensors
 * and at the node's scratch, laid out as the operand copies, dz, then one
 * scratchpad for the primitive and the reorders (they run one after
 * another): bytes in all, which kl_dnnl_conv_bytes gives the node's
 * scratch, so the memory plan counts them. */
typedef struct dn_entry {
    kl_dnnl_entry h; /* key: key_of's; failed: oneDNN refused the geometry, kiln's kernels run it */
    int op, has_bias;
    dnnl_primitive_t prim;
    dnnl_memory_t pad; /* the primitive's scratchpad (NULL: none) */
    dn_mem in0, in1, out;
    dnnl_memory_t bias; /* bias or diff_bias, user memory */
    size_t dz_off;      /* act'(y) dy for the gradient ops of a fused activation */
    size_t pad_off, bytes;
} dn_entry;

/* The scratch layout while an entry is made: bytes placed, largest scratchpad. */
typedef struct {
    size_t at, pad;
} dn_layout;

#define DN_TRY(call)                                                                               \
    do {                                                                                           \
        if ((call) != dnnl_success) return false;                                                  \
    } while (0)

/* pd's scratchpad (user mode) as a memory object, left NULL when it needs none. */
static bool pad_prep(const_dnnl_primitive_desc_t pd, dnnl_memory_t *m, dn_layout *l)
{
    const dnnl_memory_desc_t *md = g_dn.f->dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t n = md ? g_dn.f->dnnl_memory_desc_get_size(md) : 0;
    if (!n) return true;
    if (n > l->pad) l->pad = n;
    return g_dn.f->dnnl_memory_create(m, md, g_dn.f->eng, DNNL_MEMORY_NONE) == dnnl_success;
}

static bool mem_prep(dn_mem *m, const dnnl_memory_desc_t *user, const dnnl_memory_desc_t *want, bool to_user,
                     const_dnnl_primitive_attr_t attr, dn_layout *l)
{
    m->to_user = to_user;
    DN_TRY(g_dn.f->dnnl_memory_create(&m->user, user, g_dn.f->eng, DNNL_MEMORY_NONE));
    m->mem = m->user;
    if (g_dn.f->dnnl_memory_desc_equal(user, want)) return true;
    DN_TRY(g_dn.f->dnnl_memory_create(&m->mem, want, g_dn.f->eng, DNNL_MEMORY_NONE));
    m->off = l->at;
    l->at += kl_conv_round64(g_dn.f->dnnl_memory_desc_get_size(want));
    dnnl_primitive_desc_t rpd;
    DN_TRY(to_user ? g_dn.f->dnnl_reorder_primitive_desc_create(&rpd, want, g_dn.f->eng, user, g_dn.f->eng, attr)
                   : g_dn.f->dnnl_reorder_primitive_desc_create(&rpd, user, g_dn.f->eng, want, g_dn.f->eng, attr));
    bool ok = g_dn.f->dnnl_primitive_create(&m->reorder, rpd) == dnnl_success && pad_prep(rpd, &m->pad, l);
    g_dn.f->dnnl_primitive_desc_destroy(rpd);
    return ok;
}

static bool set_handle(dnnl_memory_t m, const void *p)
{
    return g_dn.f->dnnl_memory_set_data_handle(m, (void *)p) == dnnl_success;
}

/* Points m at kiln's buffer and, for a copy, at its place in scratch. */
static bool mem_point(const dn_entry *e, dn_mem *m, const void *user, unsigned char *scratch)
{
    return set_handle(m->user, user) && (m->mem == m->user || set_handle(m->mem, scratch + m->off)) &&
           (!m->pad || set_handle(m->pad, scratch + e->pad_off));
}

static bool mem_reorder(dn_mem *m)
{
    if (!m->reorder) return true;
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, m->to_user ? m->mem : m->user},
                               {DNNL_ARG_TO, m->to_user ? m->user : m->mem},
                               {DNNL_ARG_SCRATCHPAD, m->pad}};
    return g_dn.f->dnnl_primitive_execute(m->reorder, g_dn.f->st, m->pad ? 3 : 2, args) == dnnl_success;
}

static dnnl_alg_kind_t eltwise_of(int act)
{
    return act == KL_ACT_RELU ? dnnl_eltwise_relu : act == KL_ACT_TANH ? dnnl_eltwise_tanh : dnnl_eltwise_logistic;
}

/* Attributes with the scratchpad in kiln's memory (user mode) and act as a
 * post-op (KL_ACT_NONE: none); NULL when oneDNN fails to make them. */
static dnnl_primitive_attr_t attr_make(int act)
{
    dnnl_primitive_attr_t at = NULL;
    dnnl_post_ops_t po = NULL;
    bool ok = g_dn.f->dnnl_primitive_attr_create(&at) == dnnl_success &&
              g_dn.f->dnnl_primitive_attr_set_scratchpad_mode(at, dnnl_scratchpad_mode_user) == dnnl_success;
    if (ok && act != KL_ACT_NONE)
        ok = g_dn.f->dnnl_post_ops_create(&po) == dnnl_success &&
             g_dn.f->dnnl_post_ops_append_eltwise(po, 1.0f, eltwise_of(act), 0.0f, 0.0f) == dnnl_success &&
             g_dn.f->dnnl_primitive_attr_set_post_ops(at, po) == dnnl_success;
    if (po) g_dn.f->dnnl_post_ops_destroy(po);
    if (!ok && at) g_dn.f->dnnl_primitive_attr_destroy(at), at = NULL;
    return at;
}

/* kiln's layouts of x, y, w and the bias: NCHW, GOIHW, X. */
typedef struct {
    dnnl_memory_desc_t x, y, w, b;
} dn_user;

/* The primitive descriptor of op with attributes attr for geometry a; u
 * gets the user descriptors. */
static bool pd_make(const kl_conv_attr *a, int op, bool bias, const_dnnl_primitive_attr_t attr, dn_user *u,
                    dnnl_primitive_desc_t *out)
{
    int G = a->groups;
    dnnl_dims_t xd = {a->N, a->C, a->H, a->W}, yd = {a->N, a->O, a->OH, a->OW}, bd = {a->O};
    dnnl_dims_t wd = {G, a->O / G, a->C / G, a->KH, a->KW}, st = {a->sh, a->sw}, dl = {a->dh - 1, a->dw - 1},
                pd = {a->ph, a->pw};
    /* the padding past the end: oneDNN wants the output size to come out exactly */
    dnnl_dims_t pr = {(a->OH - 1) * a->sh + (a->KH - 1) * a->dh + 1 - a->H - a->ph,
                      (a->OW - 1) * a->sw + (a->KW - 1) * a->dw + 1 - a->W - a->pw};
    dnnl_memory_desc_t xa, ya, wa;
    DN_TRY(g_dn.f->dnnl_memory_desc_init_by_tag(&u->x, 4, xd, dnnl_f32, dnnl_nchw));
    DN_TRY(g_dn.f->dnnl_memory_desc_init_by_tag(&u->y, 4, yd, dnnl_f32, dnnl_nchw));
    DN_TRY(g_dn.f->dnnl_memory_desc_init_by_tag(&u->w, 5, wd, dnnl_f32, dnnl_goihw));
    DN_TRY(g_dn.f->dnnl_memory_desc_init_by_tag(&u->b, 1, bd, dnnl_f32, dnnl_x));
    DN_TRY(g_dn.f->dnnl_memory_desc_init_by_tag(&xa, 4, xd, dnnl_f32, dnnl_format_tag_any));
    DN_TRY(g_dn.f->dnnl_memory_desc_init_by_tag(&ya, 4, yd, dnnl_f32, dnnl_format_tag_any));
    DN_TRY(g_dn.f->dnnl_memory_desc_init_by_tag(&wa, 5, wd, dnnl_f32, dnnl_format_tag_any));
    dnnl_convolution_desc_t fd, cd;
    DN_TRY(g_dn.f->dnnl_dilated_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &xa,
                                                            &wa, bias ? &u->b : NULL, &ya, st, dl, pd, pr));
    dnnl_primitive_desc_t fpd = NULL;
    /* the gradient ops take the forward's descriptor (without attributes) as a hint */
    DN_TRY(g_dn.f->dnnl_primitive_desc_create(&fpd, &fd, op == KL_OP_conv2d ? attr : NULL, g_dn.f->eng, NULL));
    if (op == KL_OP_conv2d) {
        *out = fpd;
        return true;
    }
    dnnl_status_t s;
    if (op == KL_OP_conv2d_bwd_data)
        s = g_dn.f->dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &xa, &wa, &ya, st,
                                                                    dl, pd, pr);
    else
        s = g_dn.f->dnnl_dilated_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &xa, &wa,
                                                                     bias ? &u->b : NULL, &ya, st, dl, pd, pr);
    if (s == dnnl_success) s = g_dn.f->dnnl_primitive_desc_create(out, &cd, attr, g_dn.f->eng, fpd);
    g_dn.f->dnnl_primitive_desc_destroy(fpd);
    return s == dnnl_success;
}

typedef struct dn_arg {
    const kl_tensor *t;
    const kl_conv_attr *a;
} dn_arg;

/* The primitive for node t's key, its operands and their scratch layout. */
static bool entry_make(kl_dnnl_entry *h, const void *arg)
{
    dn_entry *e = (dn_entry *)h;
    const kl_conv_attr *a = ((const dn_arg *)arg)->a;
    e->op = ((const dn_arg *)arg)->t->op, e->has_bias = bias_of(((const dn_arg *)arg)->t, a);
    int op = e->op;
    /* the reorders and gradient ops: the scratchpad's mode; the forward: its fused activation too */
    dnnl_primitive_attr_t plain = attr_make(KL_ACT_NONE), fused = op == KL_OP_conv2d ? attr_make(a->act) : NULL;
    dnnl_primitive_desc_t ppd = NULL;
    dn_user u;
    dn_layout l = {0};
    bool ok = plain && (op != KL_OP_conv2d || fused) && pd_make(a, op, e->has_bias, fused ? fused : plain, &u, &ppd);
#define MD(q) g_dn.f->dnnl_primitive_desc_query_md(ppd, q, 0)
    ok = ok && g_dn.f->dnnl_primitive_create(&e->prim, ppd) == dnnl_success && pad_prep(ppd, &e->pad, &l);
    if (op == KL_OP_conv2d)
        ok = ok && mem_prep(&e->in0, &u.x, MD(dnnl_query_src_md), false, plain, &l) &&
             mem_prep(&e->in1, &u.w, MD(dnnl_query_weights_md), false, plain, &l) &&
             mem_prep(&e->out, &u.y, MD(dnnl_query_dst_md), true, plain, &l);
    else if (op == KL_OP_conv2d_bwd_data)
        ok = ok && mem_prep(&e->in0, &u.y, MD(dnnl_query_diff_dst_md), false, plain, &l) &&
             mem_prep(&e->in1, &u.w, MD(dnnl_query_weights_md), false, plain, &l) &&
             mem_prep(&e->out, &u.x, MD(dnnl_query_diff_src_md), true, plain, &l);
    else
        ok = ok && mem_prep(&e->in0, &u.x, MD(dnnl_query_src_md), false, plain, &l) &&
             mem_prep(&e->in1, &u.y, MD(dnnl_query_diff_dst_md), false, plain, &l) &&
             mem_prep(&e->out, &u.w, MD(dnnl_query_diff_weights_md), true, plain, &l);
#undef MD
    if (ppd) g_dn.f->dnnl_primitive_desc_destroy(ppd);
    if (plain) g_dn.f->dnnl_primitive_attr_destroy(plain);
    if (fused) g_dn.f->dnnl_primitive_attr_destroy(fused);
    if (ok && e->has_bias) ok = g_dn.f->dnnl_memory_create(&e->bias, &u.b, g_dn.f->eng, DNNL_MEMORY_NONE) == dnnl_success;
    if (op != KL_OP_conv2d && a->act != KL_ACT_NONE)
        e->dz_off = l.at, l.at += kl_conv_round64((size_t)(a->N * a->O * a->OH * a->OW) * sizeof(float));
    e->pad_off = l.at;
    e->bytes = l.at + kl_conv_round64(l.pad);
    return ok;
}

/* The cache entry of t's geometry at threads, made on first use (NULL: refused, or out of memory). */
static dn_entry *entry_get(int threads, const kl_tensor *t, const kl_conv_attr *a)
{
    dn_key k = key_of(threads, t, a);
    return (dn_entry *)kl_dnnl_cached(&g_dn.cache, k.v, KL_DNNL_KEY, sizeof(dn_entry), threads, entry_make,
                                      &(dn_arg){t, a});
}

size_t kl_dnnl_conv_bytes(const kl_tensor *t, int threads)
{
    const kl_conv_attr *a = KL_ATTR_C(t, kl_conv_attr);
    if (!kl_dnnl_conv_ok(a, t)) return 0;
    const dn_entry *e = entry_get(threads, t, a);
    return e ? e->bytes : 0;
}

/* dz = act'(y) * dy over the whole batch (the CPU kernels' per-element rule). */
static void form_dz(const kl_conv_attr *a, const float *dy, const float *y, float *dz)
{
    int64_t n = a->N * a->O * a->OH * a->OW;
    int kind = kl_act_unary(a->act);
    _Pragma("omp parallel for schedule(static) if (n > KL_PAR_MIN)")
    for (int64_t i = 0; i < n; i++)
        dz[i] = a->act == KL_ACT_RELU ? kl_relu_grad_float(y[i], dy[i]) : kl_unary_grad_float(kind, y[i], dy[i], 0);
}

kl_status kl_dnnl_conv_run(const kl_exec *ex, const kl_tensor *t)
{
    const kl_conv_attr *a = KL_ATTR_C(t, kl_conv_attr);
    dn_entry *e = entry_get(ex->threads, t, a);
    /* refused, or (threads changed since the node was made) more than its
     * scratch holds: kiln's kernel, whose scratch it always holds */
    if (!e || e->bytes > t->scratch_bytes) return KL_EUNSUPPORTED;
    int op = t->op;
    unsigned char *scratch = kl_scratch(ex, t);
    const float *s0 = kl_data(ex, t->src[0]), *s1 = kl_data(ex, t->src[1]);
    const float *y = op != KL_OP_conv2d && a->act != KL_ACT_NONE ? kl_data(ex, t->src[2]) : NULL;
    void *bias = !e->has_bias ? NULL : op == KL_OP_conv2d ? kl_data(ex, t->src[2]) : kl_data(ex, t->extra[0]);
    if (y) { /* in the node's own scratch: no lock needed */
        float *dz = (float *)(void *)(scratch + e->dz_off);
        form_dz(a, s0, y, dz), s0 = dz;
    }
    pthread_mutex_lock(&e->h.mu);
    /* srcs: conv2d x, w; bwd_data dy, w; bwd_filter dy, x (its primitive takes x first) */
    const void *in0 = op == KL_OP_conv2d_bwd_filter ? s1 : s0, *in1 = op == KL_OP_conv2d_bwd_filter ? s0 : s1;
    bool ok = mem_point(e, &e->in0, in0, scratch) && mem_point(e, &e->in1, in1, scratch) &&
              mem_point(e, &e->out, kl_data(ex, t), scratch) && (!e->bias || set_handle(e->bias, bias)) &&
              (!e->pad || set_handle(e->pad, scratch + e->pad_off));
    ok = ok && mem_reorder(&e->in0) && mem_reorder(&e->in1);
    int A0 = op == KL_OP_conv2d_bwd_data ? DNNL_ARG_DIFF_DST : DNNL_ARG_SRC;
    int A1 = op == KL_OP_conv2d_bwd_filter ? DNNL_ARG_DIFF_DST : DNNL_ARG_WEIGHTS;
    int AO = op == KL_OP_conv2d ? DNNL_ARG_DST : op == KL_OP_conv2d_bwd_data ? DNNL_ARG_DIFF_SRC : DNNL_ARG_DIFF_WEIGHTS;
    int AB = op == KL_OP_conv2d ? DNNL_ARG_BIAS : DNNL_ARG_DIFF_BIAS;
    dnnl_exec_arg_t args[5] = {{A0, e->in0.mem}, {A1, e->in1.mem}, {AO, e->out.mem}};
    int nargs = 3;
    if (e->bias) args[nargs++] = (dnnl_exec_arg_t){AB, e->bias};
    if (e->pad) args[nargs++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, e->pad};
    ok = ok && g_dn.f->dnnl_primitive_execute(e->prim, g_dn.f->st, nargs, args) == dnnl_success;
    ok = ok && mem_reorder(&e->out) && g_dn.f->dnnl_stream_wait(g_dn.f->st) == dnnl_success;
    pthread_mutex_unlock(&e->h.mu);
    return ok ? KL_OK : kl_fail(KL_EINTERNAL, "%s: oneDNN failed to run %s", kl_ops[op]->name, kl_desc(t));
}
#endif
