/* Optimizer updates against values computed by hand for 3 steps.
 * Loss = 0.5 * sum(p^2), so the gradient at each step is p itself. */
#include "kiln/kiln.h"
#include "testutil.h"

#include <math.h>

#define N 3

/* Reference update of one element (written out from the PyTorch docs). */
static void ref_step(const kl_optim_opts *o, int t, double *p, double *m, double *v)
{
    double g = *p;
    if (o->kind == KL_OPTIM_SGD) {
        g += o->weight_decay * *p;
        if (o->momentum) {
            *m = t == 1 ? g : o->momentum * *m + g;
            g = o->nesterov ? g + o->momentum * *m : *m;
        }
        *p -= o->lr * g;
        return;
    }
    double b1 = o->beta1 || o->exact ? o->beta1 : 0.9, b2 = o->beta2 || o->exact ? o->beta2 : 0.999,
           eps = o->eps || o->exact ? o->eps : 1e-8;
    if (o->kind == KL_OPTIM_ADAM) g += o->weight_decay * *p;
    else *p *= 1 - o->lr * o->weight_decay;
    *m = b1 * *m + (1 - b1) * g;
    *v = b2 * *v + (1 - b2) * g * g;
    double mh = *m / (1 - pow(b1, t)), vh = *v / (1 - pow(b2, t));
    *p -= o->lr * mh / (sqrt(vh) + eps);
}

/* p is [3], or [1, 3] with ndim 2 (no_decay_1d decays that one only) */
static void run_case_nd(const char *name, kl_optim_opts o, kl_dtype dt, int ndim)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *p, *l;
    int64_t d[2] = {1, N};
    double p0[N] = {1.5, -0.75, 0.3}, ref[N], m[N] = {0}, v[N] = {0};
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "p", dt, ndim, ndim == 1 ? d + 1 : d, NULL, &p));
    CHECK_OK(kl_square(g, p, &l));
    CHECK_OK(kl_sum(g, l, 0, NULL, 0, &l));
    CHECK_OK(kl_scale(g, l, 0.5, &l));
    CHECK_OK(kl_backward(g, l));
    CHECK_OK(kl_optim_new(ctx, &o, &opt));
    CHECK_OK(kl_optim_step(g, opt, NULL));
    if (dt == KL_F64) {
        CHECK_OK(kl_tensor_set(p, p0, sizeof p0));
    } else {
        float f[N] = {1.5f, -0.75f, 0.3f};
        CHECK_OK(kl_tensor_set(p, f, sizeof f));
        for (int i = 0; i < N; i++) p0[i] = f[i];
    }
    for (int i = 0; i < N; i++) ref[i] = p0[i];
    int bad = 0;
    kl_optim_opts ro = o; /* the reference's hyperparameters for this parameter */
    if (o.no_decay_1d && ndim < 2) ro.weight_decay = 0;
    for (int t = 1; t <= 3; t++) {
        CHECK_OK(kl_graph_run(g));
        for (int i = 0; i < N; i++) ref_step(&ro, t, &ref[i], &m[i], &v[i]);
        double got[N];
        if (dt == KL_F64) {
            CHECK_OK(kl_tensor_get(p, got, sizeof got));
        } else {
            float f[N];
            CHECK_OK(kl_tensor_get(p, f, sizeof f));
            for (int i = 0; i < N; i++) got[i] = f[i];
        }
        double tol = dt == KL_F64 ? 1e-12 : 1e-6;
        for (int i = 0; i < N; i++)
            if (fabs(got[i] - ref[i]) > tol * (1 + fabs(ref[i]))) {
                fprintf(stderr, "%s step %d elem %d: got %.12g expected %.12g\n", name, t, i, got[i], ref[i]);
                bad++;
            }
    }
    CHECK(bad == 0);
    CHECK(kl_optim_steps(opt) == 3);
    printf("%-20s %s\n", name, bad ? "FAIL" : "ok");
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
}

static void run_case(const char *name, kl_optim_opts o, kl_dtype dt) { run_case_nd(name, o, dt, 1); }

int main(void)
{
    run_case("sgd", (kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.1}, KL_F64);
    run_case("sgd_momentum_wd", (kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.1, .momentum = 0.9, .weight_decay = 0.01}, KL_F64);
    run_case("sgd_nesterov", (kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.05, .momentum = 0.8, .nesterov = 1}, KL_F64);
    run_case("adam", (kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.1}, KL_F64);
    run_case("adam_wd", (kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.01, .weight_decay = 0.1, .beta1 = 0.8, .beta2 = 0.99}, KL_F64);
    run_case("adamw", (kl_optim_opts){.kind = KL_OPTIM_ADAMW, .lr = 0.01, .weight_decay = 0.1}, KL_F64);
    run_case("adam_f32", (kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.1}, KL_F32);
    /* no_decay_1d: a vector (a bias, a norm scale) is not decayed, a matrix is */
    kl_optim_opts nd = {.kind = KL_OPTIM_ADAMW, .lr = 0.01, .weight_decay = 0.5, .no_decay_1d = 1};
    run_case_nd("adamw_no_decay_1d", nd, KL_F64, 1);
    run_case_nd("adamw_no_decay_2d", nd, KL_F64, 2);
    nd.kind = KL_OPTIM_SGD, nd.momentum = 0.9;
    run_case_nd("sgd_no_decay_1d", nd, KL_F64, 1);
    run_case_nd("sgd_no_decay_2d", nd, KL_F32, 2);
    /* exact: beta1 0 is Adam without momentum (GAN recipes), not the default 0.9 */
    kl_optim_opts b0 = kl_optim_defaults(KL_OPTIM_ADAM, 0.1);
    CHECK(b0.beta1 == 0.9 && b0.beta2 == 0.999 && b0.eps == 1e-8 && b0.exact);
    b0.beta1 = 0;
    run_case("adam_beta1_0", b0, KL_F64);
    b0 = kl_optim_defaults(KL_OPTIM_ADAMW, 0.01);
    b0.eps = 0, b0.weight_decay = 0.1;
    run_case("adamw_eps_0", b0, KL_F64);

    /* Literal values worked by hand: Adam, p = 1.5, g = p, lr 0.1. Step 1:
     * m = 0.15, v = 0.00225, mhat = 1.5, vhat = 2.25 -> p = 1.5 - 0.1 = 1.4
     * (to 1e-8: eps adds 0.1 * 1.5 * 1e-8 / 1.5^2). SGD lr 0.1, momentum 0.9:
     * p1 = 1.5 - 0.15 = 1.35; buf2 = 0.9*1.5 + 1.35 = 2.7; p2 = 1.35 - 0.27 = 1.08. */
    {
        double p = 1.5, m = 0, v = 0;
        kl_optim_opts o = {.kind = KL_OPTIM_ADAM, .lr = 0.1};
        ref_step(&o, 1, &p, &m, &v);
        CHECK(fabs(p - 1.4) < 1e-8);
        kl_optim_opts s = {.kind = KL_OPTIM_SGD, .lr = 0.1, .momentum = 0.9};
        p = 1.5, m = 0;
        ref_step(&s, 1, &p, &m, &v);
        ref_step(&s, 2, &p, &m, &v);
        CHECK(fabs(p - 1.08) < 1e-12);
    }

    /* bad hyperparameters */
    kl_ctx *ctx;
    kl_optim *opt;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_ERR(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = -1}, &opt), KL_EINVAL,
              "adam: lr must be a positive number, got -1");
    CHECK(opt == NULL);
    CHECK_ERR(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.1, .nesterov = 1}, &opt), KL_EINVAL,
              "sgd: nesterov needs momentum > 0");
    CHECK_ERR(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_ADAMW, .lr = 0.1, .beta1 = 1.5}, &opt), KL_EINVAL,
              "adamw: betas must be in [0,1), got (1.5, 0.999)");
    /* NaN and inf fail the range tests (they would write NaN into the parameters) */
    CHECK_ERR(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.1, .beta1 = NAN}, &opt), KL_EINVAL,
              "adam: betas must be in [0,1), got (nan, 0.999)");
    CHECK_ERR(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.1, .eps = NAN}, &opt), KL_EINVAL,
              "adam: eps must be a number >= 0, got nan");
    CHECK_ERR(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.1, .eps = INFINITY}, &opt), KL_EINVAL,
              "adam: eps must be a number >= 0, got inf");
    CHECK_ERR(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.1, .momentum = NAN}, &opt), KL_EINVAL,
              "sgd: momentum must be in [0,1), got nan");
    CHECK_ERR(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.1, .max_grad_norm = NAN}, &opt),
              KL_EINVAL, "sgd: max_grad_norm must be >= 0, got nan");
    /* the gradient before any backward pass: zeros (there is no gradient
     * buffer yet), as kl_ctx_grad_get gives; a NULL buffer is refused */
    kl_graph *g;
    kl_tensor *w;
    float gw[15];
    memset(gw, 0x7f, sizeof gw);
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "w", KL_F32, 2, (int64_t[]){5, 3}, NULL, &w));
    CHECK_OK(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.1}, &opt));
    CHECK_OK(kl_optim_grad_get(opt, 0, gw, sizeof gw));
    int zeros = 1;
    for (int i = 0; i < 15; i++) zeros &= gw[i] == 0;
    CHECK(zeros);
    CHECK_ERR(kl_optim_grad_get(opt, 0, NULL, sizeof gw), KL_EMISUSE, "kl_optim_grad_get: the host buffer is NULL");
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
    return kl_test_done("test_optim");
}
