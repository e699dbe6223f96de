/* CUDA sequence ops against the CPU (needs a GPU; else "skipped: <reason>",
 * exit 77).
 *
 * Every case runs forward and backward (loss = sum(y * r), r random) on
 * cuda:0 and on the CPU through the parity harness (tests/lib/cuda_parity.h),
 * f32 and f64: rmsnorm with and without weight (several dw row chunks),
 * rope and its inverse (the backward), attention causal and not, Tq != Tk
 * both ways, Dv != D, a fused-qkv view read in place with its strides, head
 * sizes 16, 64 and 150 (two output column chunks), T = 1; LSTM and GRU with
 * and without h0/c0/biases, T = 1 and T > 1, outputs y, h_n (c_n) joined, a
 * constant w_hh (no dW_hh: the GRU's per-step dGh scratch), a transposed x,
 * more units than one block. Then a tiny transformer block and a char
 * LSTM+GRU trained 3 Adam steps on both devices, losses and parameters
 * compared. Every comparison runs; failures are counted and printed.
 * Without a GPU every case still runs, CPU against CPU (so a case that does
 * not build or run shows in CI), before the test reports itself skipped. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "cuda_parity.h"
#include "core/error.h"         /* KL_TRY */
#include "backends/backend.h" /* kl_cuda_available */

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define TF32_TOL 1e-2 /* the recurrent layers' GEMMs: TF32 in f32 */

/* [B, a...], [B, b...], ... flattened per sample and joined: [B, a + b + ...] */
static kl_status join(kl_graph *g, int n, kl_tensor **ts, kl_tensor **out)
{
    kl_tensor *f[3];
    for (int i = 0; i < n; i++) KL_TRY(kl_reshape(g, ts[i], 2, (int64_t[]){kl_tensor_dim(ts[i], 0), -1}, &f[i]));
    return n == 1 ? (*out = f[0], KL_OK) : kl_concat(g, n, f, 1, out);
}

/* ---- rmsnorm, rope ---- */

static kl_status b_rms(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x, *w = NULL;
    static const int64_t shapes[4][3] = {{12, 33, 0}, {7, 40, 0}, {2, 5, 300}, {600, 7, 0}};
    const int64_t *d = shapes[arg];
    int nd = d[2] ? 3 : 2;
    KL_TRY(kl_parity_param(g, "x", dt, nd, d, &x));
    if (arg != 1) KL_TRY(kl_parity_param(g, "w", dt, 1, &d[nd - 1], &w));
    return kl_rmsnorm(g, x, w, arg == 2 ? 1e-3 : 1e-5, y); /* arg 3: 600 rows, 3 dw chunks */
}

static kl_status b_rope(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x;
    if (arg == 0) {
        KL_TRY(kl_parity_param(g, "x", dt, 4, (int64_t[]){2, 3, 9, 10}, &x));
        return kl_rope(g, x, 0, y);
    }
    KL_TRY(kl_parity_param(g, "x", dt, 3, (int64_t[]){5, 2, 64}, &x)); /* permuted: [2, 5, 64] */
    KL_TRY(kl_transpose(g, x, 0, 1, &x));
    return kl_rope(g, x, 500, y);
}

/* ---- attention ---- */

typedef struct { int causal; int64_t B, H, Tq, Tk, D, Dv; int fused; } att_case;
static const att_case att_cases[] = {
    {1, 2, 3, 100, 100, 16, 16, 0}, /* two query tiles (f32), four (f64) */
    {0, 2, 3, 100, 100, 16, 16, 0},
    {0, 1, 2, 70, 90, 64, 48, 0},   /* Tq != Tk, Dv != D */
    {1, 2, 1, 50, 140, 16, 16, 0},  /* causal, Tq < Tk: keys past Tq get no gradient */
    {1, 1, 2, 130, 20, 64, 64, 0},  /* causal, Tq > Tk */
    {1, 2, 2, 80, 80, 64, 64, 1},   /* q, k, v views of one [B, T, 3H, 64] projection */
    {0, 1, 2, 33, 40, 150, 130, 0}, /* two output column chunks */
    {1, 2, 3, 1, 1, 16, 16, 0},     /* T = 1 */
    {1, 1, 2, 128, 128, 8, 8, 0},   /* T a multiple of the tiles, heads narrower than 16 */
    {0, 1, 1, 40, 64, 96, 96, 0},   /* one 128-wide column chunk */
    {1, 1, 1, 30, 30, 160, 64, 0},  /* D > 128 >= Dv: a chunk of D with no column of the output */
    {1, 1, 2, 45, 45, 24, 40, 0},   /* causal, Dv != D */
    {0, 1, 1, 200, 200, 16, 16, 0}, /* longer sequences */
};

static kl_status b_att(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    const att_case *c = &att_cases[arg];
    kl_tensor *q, *k, *v, *p;
    if (c->fused) { /* [B, T, 3H, D] -> [B, 3H, T, D] -> slices: strided, read in place */
        KL_TRY(kl_parity_param(g, "qkv", dt, 4, (int64_t[]){c->B, c->Tq, 3 * c->H, c->D}, &p));
        KL_TRY(kl_permute(g, p, (int[]){0, 2, 1, 3}, &p));
        KL_TRY(kl_slice(g, p, 1, 0, c->H, &q));
        KL_TRY(kl_slice(g, p, 1, c->H, 2 * c->H, &k));
        KL_TRY(kl_slice(g, p, 1, 2 * c->H, 3 * c->H, &v));
    } else {
        KL_TRY(kl_parity_param(g, "q", dt, 4, (int64_t[]){c->B, c->H, c->Tq, c->D}, &q));
        KL_TRY(kl_parity_param(g, "k", dt, 4, (int64_t[]){c->B, c->H, c->Tk, c->D}, &k));
        KL_TRY(kl_parity_param(g, "v", dt, 4, (int64_t[]){c->B, c->H, c->Tk, c->Dv}, &v));
    }
    return kl_attention(g, q, k, v, c->causal, y);
}

/* ---- LSTM, GRU ---- */

typedef struct {
    int lstm;
    int64_t B, T, I, H;
    int bias, h0, c0; /* bias 2: b_hh only */
    int whh_const, transpose;
} rnn_case;
static const rnn_case rnn_cases[] = {
    {1, 3, 5, 4, 8, 1, 1, 1, 0, 0}, {1, 2, 4, 3, 8, 0, 0, 0, 0, 0}, {1, 3, 1, 4, 8, 1, 1, 1, 0, 0},
    {1, 2, 3, 5, 6, 0, 1, 0, 0, 0}, {1, 2, 4, 3, 8, 1, 1, 1, 1, 0}, {1, 8, 6, 16, 96, 1, 0, 0, 0, 1},
    {0, 3, 5, 4, 8, 1, 1, 0, 0, 0}, {0, 2, 4, 3, 8, 0, 0, 0, 0, 0}, {0, 3, 1, 4, 8, 1, 1, 0, 0, 0},
    {0, 2, 3, 5, 6, 2, 1, 0, 0, 0}, {0, 2, 4, 3, 8, 1, 1, 0, 1, 0}, {0, 8, 6, 16, 96, 1, 0, 0, 0, 1},
    /* 64 steps: rounding of the recurrent GEMMs carried over T */
    {1, 4, 64, 16, 64, 1, 0, 0, 0, 0}, {0, 4, 64, 16, 64, 1, 0, 0, 0, 0},
};

static kl_status b_rnn(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    const rnn_case *c = &rnn_cases[arg];
    int G = c->lstm ? 4 : 3;
    kl_tensor *x, *wih, *whh, *bih = NULL, *bhh = NULL, *h0 = NULL, *c0 = NULL, *ys, *hn, *cn = NULL;
    KL_TRY(kl_parity_param(g, "x", dt, 3, c->transpose ? (int64_t[]){c->T, c->B, c->I} : (int64_t[]){c->B, c->T, c->I}, &x));
    if (c->transpose) KL_TRY(kl_transpose(g, x, 0, 1, &x));
    /* weights U(+-1/sqrt(H)) as in real models: the recurrence contracts, so
     * rounding (TF32, 16-bit) stays at its own size over 64 steps; with
     * U(+-1) a 64-step GRU is chaotic (TF32-rounded weights moved y by 1.8) */
    kl_init wi = {KL_INIT_UNIFORM, 1 / sqrt((double)c->H)};
    KL_TRY(kl_parity_param_init(g, "w_ih", dt, 2, (int64_t[]){G * c->H, c->I}, &wi, &wih));
    int64_t wd[2] = {G * c->H, c->H}, gh = G * c->H, bh[2] = {c->B, c->H};
    if (c->whh_const) KL_TRY(kl_buffer(g, "w_hh", dt, 2, wd, &wi, &whh));
    else KL_TRY(kl_parity_param_init(g, "w_hh", dt, 2, wd, &wi, &whh));
    if (c->bias == 1) KL_TRY(kl_parity_param(g, "b_ih", dt, 1, &gh, &bih));
    if (c->bias) KL_TRY(kl_parity_param(g, "b_hh", dt, 1, &gh, &bhh));
    if (c->h0) KL_TRY(kl_parity_param(g, "h0", dt, 2, bh, &h0));
    if (c->c0) KL_TRY(kl_parity_param(g, "c0", dt, 2, bh, &c0));
    if (c->lstm) KL_TRY(kl_lstm(g, x, h0, c0, wih, whh, bih, bhh, &ys, &hn, &cn));
    else KL_TRY(kl_gru(g, x, h0, wih, whh, bih, bhh, &ys, &hn));
    kl_tensor *parts[3] = {ys, hn, cn};
    return join(g, c->lstm ? 3 : 2, parts, y);
}

/* ---- training: 3 Adam steps on both devices ---- */

#define NB 2
#define NT 12
#define NV 11

static const kl_init W03 = {KL_INIT_UNIFORM, 0.3};

static kl_status p(kl_graph *g, const char *name, kl_dtype dt, int nd, int64_t d0, int64_t d1, kl_tensor **out)
{
    int64_t d[2] = {d0, d1};
    return kl_param(g, name, dt, nd, d, &W03, out);
}

/* kind 0: embedding, rmsnorm, qkv, rope, causal attention, projection,
 * residual, layernorm, logits; kind 1: embedding, LSTM, GRU from its h_n, logits */
static kl_status model(kl_graph *g, int kind, kl_dtype dt, kl_tensor *tok, kl_tensor *lab, kl_tensor **loss)
{
    kl_tensor *emb, *x, *h, *w, *b, *q, *k, *v, *a;
    int64_t D = 32, H = 2, hd = D / H;
    KL_TRY(p(g, "emb", dt, 2, NV, D, &emb));
    KL_TRY(kl_embedding(g, emb, tok, &x));
    if (kind == 0) {
        KL_TRY(p(g, "rms.w", dt, 1, D, 0, &w));
        KL_TRY(kl_rmsnorm(g, x, w, 1e-5, &h));
        KL_TRY(p(g, "qkv.w", dt, 2, 3 * D, D, &w));
        KL_TRY(p(g, "qkv.b", dt, 1, 3 * D, 0, &b));
        KL_TRY(kl_linear(g, h, w, b, KL_ACT_NONE, &h));
        KL_TRY(kl_reshape(g, h, 4, (int64_t[]){NB, NT, 3 * H, hd}, &h));
        KL_TRY(kl_permute(g, h, (int[]){0, 2, 1, 3}, &h));
        KL_TRY(kl_slice(g, h, 1, 0, H, &q));
        KL_TRY(kl_slice(g, h, 1, H, 2 * H, &k));
        KL_TRY(kl_slice(g, h, 1, 2 * H, 3 * H, &v));
        KL_TRY(kl_rope(g, q, 0, &q));
        KL_TRY(kl_rope(g, k, 0, &k));
        KL_TRY(kl_attention(g, q, k, v, 1, &a));
        KL_TRY(kl_permute(g, a, (int[]){0, 2, 1, 3}, &a));
        KL_TRY(kl_reshape(g, a, 3, (int64_t[]){NB, NT, D}, &a));
        KL_TRY(p(g, "proj.w", dt, 2, D, D, &w));
        KL_TRY(kl_linear(g, a, w, NULL, KL_ACT_NONE, &a));
        KL_TRY(kl_add(g, x, a, &x));
        KL_TRY(kl_layernorm(g, x, NULL, NULL, 1e-5, &x));
    } else {
        kl_tensor *wih, *whh, *bih, *bhh, *hn, *cn;
        int64_t Hh = 16;
        KL_TRY(p(g, "lstm.w_ih", dt, 2, 4 * Hh, D, &wih));
        KL_TRY(p(g, "lstm.w_hh", dt, 2, 4 * Hh, Hh, &whh));
        KL_TRY(p(g, "lstm.b_ih", dt, 1, 4 * Hh, 0, &bih));
        KL_TRY(p(g, "lstm.b_hh", dt, 1, 4 * Hh, 0, &bhh));
        KL_TRY(kl_lstm(g, x, NULL, NULL, wih, whh, bih, bhh, &x, &hn, &cn));
        KL_TRY(p(g, "gru.w_ih", dt, 2, 3 * Hh, Hh, &wih));
        KL_TRY(p(g, "gru.w_hh", dt, 2, 3 * Hh, Hh, &whh));
        KL_TRY(p(g, "gru.b_hh", dt, 1, 3 * Hh, 0, &bhh));
        KL_TRY(kl_gru(g, x, hn, wih, whh, NULL, bhh, &x, &hn));
        D = Hh;
    }
    KL_TRY(p(g, "out.w", dt, 2, NV, D, &w));
    KL_TRY(p(g, "out.b", dt, 1, NV, 0, &b));
    KL_TRY(kl_linear(g, x, w, b, KL_ACT_NONE, &x));
    KL_TRY(kl_reshape(g, x, 2, (int64_t[]){NB * NT, NV}, &x));
    return kl_softmax_cross_entropy(g, x, lab, loss);
}

typedef struct { kl_ctx *ctx; kl_graph *g; kl_optim *opt; kl_tensor *tok, *lab, *loss; } trainer;

static kl_status trainer_new(trainer *t, kl_device dev, int kind, kl_dtype dt)
{
    memset(t, 0, sizeof *t);
    kl_ctx_opts co = {.device = dev, .seed = 21};
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAM, .lr = 1e-3};
    KL_TRY(kl_ctx_new(&co, &t->ctx));
    KL_TRY(kl_graph_new(t->ctx, &t->g));
    KL_TRY(kl_input(t->g, "tokens", KL_I32, 2, (int64_t[]){NB, NT}, &t->tok));
    KL_TRY(kl_input(t->g, "labels", KL_I32, 1, (int64_t[]){NB * NT}, &t->lab));
    KL_TRY(model(t->g, kind, dt, t->tok, t->lab, &t->loss));
    KL_TRY(kl_backward(t->g, t->loss));
    KL_TRY(kl_optim_new(t->ctx, &oo, &t->opt));
    return kl_optim_step(t->g, t->opt, NULL);
}

static void trainer_free(trainer *t)
{
    kl_graph_free(t->g);
    kl_optim_free(t->opt);
    kl_ctx_free(t->ctx);
}

static kl_status trainer_step(trainer *t, int step, kl_dtype dt, double *loss)
{
    int32_t tok[NB * NT], lab[NB * NT];
    for (int i = 0; i < NB * NT; i++) tok[i] = (i * 7 + step * 3 + 1) % NV, lab[i] = (i * 5 + step + 2) % NV;
    KL_TRY(kl_tensor_set(t->tok, tok, sizeof tok));
    KL_TRY(kl_tensor_set(t->lab, lab, sizeof lab));
    KL_TRY(kl_graph_run(t->g));
    if (dt == KL_F64) return kl_tensor_get(t->loss, loss, sizeof *loss);
    float l;
    KL_TRY(kl_tensor_get(t->loss, &l, sizeof l));
    *loss = l;
    return KL_OK;
}

static void test_training(kl_device gpu, int kind, kl_dtype dt)
{
    char cs[64];
    snprintf(cs, sizeof cs, "%s %s", kind ? "char lstm+gru" : "transformer block", kl_dtype_name(dt));
    bool f64 = dt == KL_F64;
    trainer c, g;
    kl_status s1 = trainer_new(&c, (kl_device){KL_DEVICE_CPU, 0}, kind, dt), s2 = trainer_new(&g, gpu, kind, dt);
    if (s1 != KL_OK || s2 != KL_OK) fprintf(stderr, "  %s: %s\n", cs, kl_last_error());
    CHECK(s1 == KL_OK && s2 == KL_OK);
    for (int i = 0; i < 3 && s1 == KL_OK && s2 == KL_OK; i++) {
        double lc = 0, lg = 0;
        CHECK_OK(trainer_step(&c, i, dt, &lc));
        CHECK_OK(trainer_step(&g, i, dt, &lg));
        double e = fabs(lc - lg) / fabs(lc);
        if (!(e <= (f64 ? 1e-10 : 1e-3))) fprintf(stderr, "  %s step %d loss cpu %.9g gpu %.9g\n", cs, i, lc, lg);
        CHECK(e <= (f64 ? 1e-10 : 1e-3));
    }
    /* steps 2 and 3 replayed a captured graph (a failed capture reruns eagerly with a note) */
    if (s2 == KL_OK && gpu.type == KL_DEVICE_CUDA) kl_check_captured(cs, g.g);
    /* f32: TF32 GEMMs, and Adam turns tiny gradient differences into +-lr */
    if (s1 == KL_OK && s2 == KL_OK) kl_parity_params(cs, c.ctx, g.ctx, f64 ? 1e-10 : 5e-3, f64 ? 1e-10 : 1e-2);
    printf("  trained %s\n", cs);
    if (s1 == KL_OK) trainer_free(&c);
    if (s2 == KL_OK) trainer_free(&g);
}

/* each case: against the CPU in f32 and f64 (half 0), or in 16-bit storage (half 1) */
static void run_case(const kl_parity_case *c, kl_device dev, int half)
{
    if (half) kl_parity_half_both(c, dev);
    else kl_parity_case_run(c, dev);
}

static void run_cases(kl_device gpu, int half)
{
    static const char *rms_names[4] = {"rmsnorm", "rmsnorm_no_weight", "rmsnorm_3d_wide", "rmsnorm_600_rows"};
    for (int i = 0; i < 4; i++) run_case(&(kl_parity_case){rms_names[i], b_rms, i, 1e-5, 1e-12, 0, KL_H16_EXACT}, gpu, half);
    run_case(&(kl_parity_case){"rope", b_rope, 0, 1e-5, 1e-12, 0, KL_H16_EXACT}, gpu, half);
    run_case(&(kl_parity_case){"rope_transposed_base500", b_rope, 1, 1e-5, 1e-12, 0, KL_H16_EXACT}, gpu, half);
    for (int i = 0; i < (int)(sizeof att_cases / sizeof *att_cases); i++) {
        const att_case *c = &att_cases[i];
        char name[96];
        snprintf(name, sizeof name, "attention%s%s_B%lld_H%lld_Tq%lld_Tk%lld_D%lld_Dv%lld", c->causal ? "_causal" : "",
                 c->fused ? "_fused_qkv" : "", (long long)c->B, (long long)c->H, (long long)c->Tq, (long long)c->Tk,
                 (long long)c->D, (long long)c->Dv);
        run_case(&(kl_parity_case){name, b_att, i, 1e-4, 1e-11, 0, KL_H16_EXACT}, gpu, half);
    }
    for (int i = 0; i < (int)(sizeof rnn_cases / sizeof *rnn_cases); i++) {
        const rnn_case *c = &rnn_cases[i];
        char name[96];
        snprintf(name, sizeof name, "%s_B%lld_T%lld_I%lld_H%lld%s%s%s%s%s", c->lstm ? "lstm" : "gru", (long long)c->B,
                 (long long)c->T, (long long)c->I, (long long)c->H, c->bias == 1 ? "_bias" : c->bias ? "_b_hh" : "",
                 c->h0 ? "_h0" : "", c->c0 ? "_c0" : "", c->whh_const ? "_const_w_hh" : "", c->transpose ? "_transposed_x" : "");
        run_case(&(kl_parity_case){name, b_rnn, i, TF32_TOL, 1e-11, 0, c->whh_const ? KL_H16_ROUNDED : KL_H16_EXACT}, gpu,
                 half);
    }
}

int main(int argc, char **argv)
{
    kl_parity_fp32_default();
    if (kl_parity_half_cpu_mode(argc, argv)) { /* 16-bit storage on the CPU against f32 */
        run_cases((kl_device){KL_DEVICE_CPU, 0}, 1);
        return kl_test_done("test_cuda_seq --half-cpu");
    }
    char why[512] = "";
    kl_device gpu = {KL_DEVICE_CUDA, 0};
    if (kl_cuda_available(0) != KL_OK) {
        snprintf(why, sizeof why, "%s", kl_last_error());
        gpu.type = KL_DEVICE_CPU; /* the cases against themselves */
    }
    run_cases(gpu, 0);
    if (!why[0]) run_cases(gpu, 1);
    for (int kind = 0; kind < 2; kind++) {
        test_training(gpu, kind, KL_F32);
        test_training(gpu, kind, KL_F64);
    }
    if (why[0] && !kl_test_failures) {
        printf("skipped: %s (the cases ran CPU against CPU)\n", why);
        return 77;
    }
    return kl_test_done("test_cuda_seq");
}
