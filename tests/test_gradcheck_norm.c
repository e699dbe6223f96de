/* Gradient checks (double precision, central differences) for batchnorm
 * (training and eval, 2-D and 4-D, with and without affine terms, with a
 * fused tanh or sigmoid), layernorm,
 * dropout, embedding and concat, including strided-view inputs. Forward
 * values, running statistics and error messages are in test_norm_ops.c. */
#include "gradcheck.h"
#include "testutil.h"
#include "ops/ops.h" /* kl_batchnorm_act */

#define B(name) static kl_status name(kl_graph *g, kl_tensor **x, void *u, kl_tensor **y)

/* ---- batchnorm ---- */

typedef struct {
    int training;
    int gamma, beta; /* which of x[1], x[2] are gamma and beta (0: absent) */
    int running;     /* pass running stats */
    int transpose;   /* x[0] is given transposed */
    kl_act act;      /* a fused activation (kl_batchnorm_act) */
} bn_case;

static kl_status running_stats(kl_graph *g, int64_t C, kl_tensor **rm, kl_tensor **rv)
{
    kl_init ones = {.kind = KL_INIT_ONES};
    KL_TRY_T(kl_buffer(g, "bn.running_mean", KL_F64, 1, &C, NULL, rm));
    KL_TRY_T(kl_buffer(g, "bn.running_var", KL_F64, 1, &C, &ones, rv));
    double m[128], v[128];
    for (int64_t c = 0; c < C; c++) {
        m[c] = 0.3 * (double)c - 0.4;
        v[c] = 0.5 + 0.25 * (double)c;
    }
    KL_TRY_T(kl_tensor_set(*rm, m, (size_t)C * sizeof(double)));
    return kl_tensor_set(*rv, v, (size_t)C * sizeof(double));
}

B(b_bn)
{
    const bn_case *c = u;
    kl_tensor *in = x[0], *rm = NULL, *rv = NULL;
    if (c->transpose) KL_TRY_T(kl_transpose(g, in, 0, 1, &in));
    if (c->running) KL_TRY_T(running_stats(g, kl_tensor_dim(in, 1), &rm, &rv));
    kl_batchnorm_opts o = {.eps = 1e-3, .momentum = 0.3, .training = c->training};
    int k = 1;
    kl_tensor *gm = c->gamma ? x[k++] : NULL, *bt = c->beta ? x[k++] : NULL;
    return kl_batchnorm_act(g, in, gm, bt, rm, rv, &o, c->act, y);
}

/* ---- layernorm ---- */

typedef struct { int gamma, beta, transpose; } ln_case;

B(b_ln)
{
    const ln_case *c = u;
    kl_tensor *in = x[0];
    if (c->transpose) KL_TRY_T(kl_transpose(g, in, 0, 1, &in));
    int k = 1;
    kl_tensor *gm = c->gamma ? x[k++] : NULL, *bt = c->beta ? x[k++] : NULL;
    return kl_layernorm(g, in, gm, bt, 1e-4, y);
}

/* ---- dropout ---- */

B(b_dropout) { return kl_dropout(g, x[0], *(const double *)u, y); }
B(b_dropout_strided) /* transposed input, then a second layer on top */
{
    kl_tensor *t;
    KL_TRY_T(kl_transpose(g, x[0], 0, 1, &t));
    KL_TRY_T(kl_dropout(g, t, 0.3, &t));
    KL_TRY_T(kl_tanh(g, t, &t));
    return kl_dropout(g, t, 0.5, y);
}

/* ---- embedding ---- */

B(b_embedding) { return kl_embedding(g, x[0], x[1], y); }
B(b_embedding_twice) /* one weight looked up by two index tensors */
{
    kl_tensor *a, *b;
    KL_TRY_T(kl_embedding(g, x[0], x[1], &a));
    KL_TRY_T(kl_embedding(g, x[0], x[2], &b));
    return kl_mul(g, a, b, y);
}

/* ---- concat ---- */

B(b_concat_ax0) { return kl_concat(g, 2, x, 0, y); }
B(b_concat_ax1_three) { return kl_concat(g, 3, x, 1, y); }
B(b_concat_last) { return kl_concat(g, 2, x, -1, y); }
B(b_concat_strided)
{
    kl_tensor *p[2] = {NULL, x[1]};
    KL_TRY_T(kl_transpose(g, x[0], 0, 1, &p[0]));
    return kl_concat(g, 2, p, 1, y);
}
B(b_concat_repeat) /* the same tensor twice: gradients add */
{
    kl_tensor *p[3] = {x[0], x[1], x[0]};
    return kl_concat(g, 3, p, 0, y);
}
B(b_concat_many) /* 18 row slices in reverse order: more inputs than a node holds */
{
    kl_tensor *p[18];
    for (int i = 0; i < 18; i++) KL_TRY_T(kl_slice(g, x[0], 0, 17 - i, 18 - i, &p[i]));
    return kl_concat(g, 18, p, 0, y);
}
B(b_concat_sliced) /* a column slice (strided) of one input */
{
    kl_tensor *p[2] = {NULL, x[1]};
    KL_TRY_T(kl_slice(g, x[0], 1, 1, 3, &p[0]));
    return kl_concat(g, 2, p, 0, y);
}

typedef struct { const char *name; gc_build fn; void *user; int n; gc_input in[4]; } gc_case;

int main(void)
{
    static bn_case bn_tr_aff = {1, 1, 1, 1, 0, KL_ACT_NONE}, bn_tr_plain = {1, 0, 0, 1, 0, KL_ACT_NONE}, bn_tr_gamma = {1, 1, 0, 1, 0, KL_ACT_NONE},
                   bn_tr_beta = {1, 0, 1, 1, 0, KL_ACT_NONE}, bn_tr_norun = {1, 1, 1, 0, 0, KL_ACT_NONE}, bn_tr_t = {1, 1, 1, 1, 1, KL_ACT_NONE},
                   bn_ev_aff = {0, 1, 1, 1, 0, KL_ACT_NONE}, bn_ev_plain = {0, 0, 0, 1, 0, KL_ACT_NONE}, bn_ev_t = {0, 1, 0, 1, 1, KL_ACT_NONE},
                   bn_tr_tanh = {1, 1, 1, 1, 0, KL_ACT_TANH}, bn_tr_sig = {1, 1, 1, 1, 1, KL_ACT_SIGMOID},
                   bn_ev_tanh = {0, 1, 1, 1, 0, KL_ACT_TANH};
    static ln_case ln_aff = {1, 1, 0}, ln_plain = {0, 0, 0}, ln_gamma = {1, 0, 0}, ln_beta = {0, 1, 0},
                   ln_t = {1, 1, 1};
    static double p04 = 0.4, p01 = 0.1, p09 = 0.9;
    gc_input i5x3 = {.ndim = 2, .ne = {4, 3}, .imax = 5}, i7 = {.ndim = 1, .ne = {7}, .imax = 3};
    gc_input i3d = {.ndim = 3, .ne = {2, 2, 3}, .imax = 4}, i6 = {.ndim = 1, .ne = {6}, .imax = 4};
    const gc_case cases[] = {
        {"bn_train_2d_affine", b_bn, &bn_tr_aff, 3, {GC_IN(6, 5), GC_IN(5), GC_IN(5)}},
        {"bn_train_2d_plain", b_bn, &bn_tr_plain, 1, {GC_IN(4, 3)}},
        {"bn_train_4d_affine", b_bn, &bn_tr_aff, 3, {GC_IN(3, 4, 2, 5), GC_IN(4), GC_IN(4)}},
        {"bn_train_4d_plain", b_bn, &bn_tr_plain, 1, {GC_IN(2, 3, 3, 3)}},
        {"bn_train_4d_gamma_only", b_bn, &bn_tr_gamma, 2, {GC_IN(2, 3, 1, 4), GC_IN(3)}},
        {"bn_train_4d_beta_only", b_bn, &bn_tr_beta, 2, {GC_IN(3, 2, 2, 1), GC_IN(2)}},
        {"bn_train_size1_dims", b_bn, &bn_tr_aff, 3, {GC_IN(3, 2, 1, 1), GC_IN(2), GC_IN(2)}},
        {"bn_train_3d_no_running", b_bn, &bn_tr_norun, 3, {GC_IN(2, 3, 5), GC_IN(3), GC_IN(3)}},
        {"bn_train_strided", b_bn, &bn_tr_t, 3, {GC_IN(5, 4), GC_IN(5), GC_IN(5)}},
        {"bn_train_many_channels", b_bn, &bn_tr_aff, 3, {GC_IN(3, 70), GC_IN(70), GC_IN(70)}},
        {"bn_eval_4d_affine", b_bn, &bn_ev_aff, 3, {GC_IN(3, 4, 2, 2), GC_IN(4), GC_IN(4)}},
        {"bn_eval_2d_plain", b_bn, &bn_ev_plain, 1, {GC_IN(3, 5)}},
        {"bn_eval_strided_gamma", b_bn, &bn_ev_t, 2, {GC_IN(3, 2), GC_IN(3)}},
        {"bn_train_fused_tanh", b_bn, &bn_tr_tanh, 3, {GC_IN(3, 4, 2, 3), GC_IN(4), GC_IN(4)}},
        {"bn_train_fused_sigmoid_strided", b_bn, &bn_tr_sig, 3, {GC_IN(5, 4), GC_IN(5), GC_IN(5)}},
        {"bn_eval_fused_tanh", b_bn, &bn_ev_tanh, 3, {GC_IN(3, 4, 2, 2), GC_IN(4), GC_IN(4)}},
        {"ln_2d_affine", b_ln, &ln_aff, 3, {GC_IN(4, 7), GC_IN(7), GC_IN(7)}},
        {"ln_3d_affine", b_ln, &ln_aff, 3, {GC_IN(2, 3, 5), GC_IN(5), GC_IN(5)}},
        {"ln_plain", b_ln, &ln_plain, 1, {GC_IN(3, 6)}},
        {"ln_gamma_only", b_ln, &ln_gamma, 2, {GC_IN(2, 1, 4), GC_IN(4)}},
        {"ln_beta_only", b_ln, &ln_beta, 2, {GC_IN(5, 3), GC_IN(3)}},
        {"ln_strided", b_ln, &ln_t, 3, {GC_IN(5, 4), GC_IN(5), GC_IN(5)}},
        {"ln_1d", b_ln, &ln_aff, 3, {GC_IN(9), GC_IN(9), GC_IN(9)}},
        {"ln_wide", b_ln, &ln_aff, 3, {GC_IN(2, 300), GC_IN(300), GC_IN(300)}},
        {"dropout_p0.4", b_dropout, &p04, 1, {GC_IN(5, 7)}},
        {"dropout_p0.1_3d", b_dropout, &p01, 1, {GC_IN(3, 1, 9)}},
        {"dropout_p0.9", b_dropout, &p09, 1, {GC_IN(33)}},
        {"dropout_strided_two_layers", b_dropout_strided, NULL, 1, {GC_IN(6, 5)}},
        {"embedding_repeated", b_embedding, NULL, 2, {GC_IN(5, 3), i5x3}},
        {"embedding_1d", b_embedding, NULL, 2, {GC_IN(3, 4), i7}},
        {"embedding_3d_idx", b_embedding, NULL, 2, {GC_IN(4, 2), i3d}},
        {"embedding_shared_weight", b_embedding_twice, NULL, 3, {GC_IN(4, 3), i6, i6}},
        {"concat_axis0", b_concat_ax0, NULL, 2, {GC_IN(2, 3), GC_IN(4, 3)}},
        {"concat_axis1_three", b_concat_ax1_three, NULL, 3, {GC_IN(2, 3), GC_IN(2, 1), GC_IN(2, 4)}},
        {"concat_last_axis", b_concat_last, NULL, 2, {GC_IN(2, 3, 2), GC_IN(2, 3, 3)}},
        {"concat_transposed_view", b_concat_strided, NULL, 2, {GC_IN(3, 2), GC_IN(2, 4)}},
        {"concat_repeated_input", b_concat_repeat, NULL, 2, {GC_IN(2, 3), GC_IN(1, 3)}},
        {"concat_18_inputs", b_concat_many, NULL, 1, {GC_IN(18, 2)}},
        {"concat_sliced_view", b_concat_sliced, NULL, 2, {GC_IN(3, 4), GC_IN(5, 2)}},
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n; i++) {
        int bad = gradcheck(cases[i].name, cases[i].n, cases[i].in, cases[i].fn, cases[i].user);
        printf("%-28s %s\n", cases[i].name, bad ? "FAIL" : "ok");
    }
    return kl_test_done("test_gradcheck_norm");
}
