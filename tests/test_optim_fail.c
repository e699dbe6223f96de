/* The optimizer around runs that go wrong (CPU; the GPU's kernels share the
 * decision functions of optim_elem.h):
 *  - a run that fails (a label out of range) updates nothing and counts as
 *    a skipped update, so Adam's t and the parameters after it are those of
 *    the good runs alone; with accumulation the failed run's cycle is
 *    skipped whole;
 *  - kl_optim_clear_halt inside a cycle drops the cycle: the finite runs
 *    after it update again (they did not inherit the halted cycle's NaN);
 *  - kl_optim_scale_loss in a graph without kl_optim_step runs (its scale
 *    lives in flags that were not made before) and scales the gradient. */
#include "kiln/kiln.h"
#include "testutil.h"

#include <math.h>
#include <string.h>

#define C 3 /* classes */

typedef struct {
    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *x, *y, *p, *loss;
} net;

/* loss = cross-entropy(x * p, y), x [1, C] input, p [1, C] parameter */
static void net_new(net *n, kl_optim_opts o, int with_step)
{
    int64_t d[2] = {1, C}, dy[1] = {1};
    CHECK_OK(kl_ctx_new(NULL, &n->ctx));
    CHECK_OK(kl_graph_new(n->ctx, &n->g));
    CHECK_OK(kl_input(n->g, "x", KL_F64, 2, d, &n->x));
    CHECK_OK(kl_input(n->g, "y", KL_I32, 1, dy, &n->y));
    CHECK_OK(kl_param(n->g, "p", KL_F64, 2, d, NULL, &n->p));
    kl_tensor *z, *l;
    CHECK_OK(kl_mul(n->g, n->x, n->p, &z));
    CHECK_OK(kl_softmax_cross_entropy(n->g, z, n->y, &n->loss));
    CHECK_OK(kl_optim_new(n->ctx, &o, &n->opt));
    if (with_step) CHECK_OK(kl_optim_minimize(n->g, n->opt, n->loss, NULL));
    else {
        CHECK_OK(kl_optim_scale_loss(n->g, n->opt, n->loss, &l));
        CHECK_OK(kl_backward(n->g, l));
    }
    double p0[C] = {0.3, -0.2, 0.1};
    CHECK_OK(kl_tensor_set(n->p, p0, sizeof p0));
}

static void net_free(net *n)
{
    kl_graph_free(n->g);
    kl_optim_free(n->opt);
    kl_ctx_free(n->ctx);
}

/* One run on sample k (its x and label); label C is out of range. */
static kl_status net_run(net *n, int k, int32_t label, double nan_x)
{
    double x[C];
    for (int i = 0; i < C; i++) x[i] = 0.5 + 0.37 * (double)((k * 7 + i * 3) % 5) - 0.4 * i;
    if (nan_x) x[1] = NAN;
    CHECK_OK(kl_tensor_set(n->x, x, sizeof x));
    CHECK_OK(kl_tensor_set(n->y, &label, sizeof label));
    return kl_graph_run(n->g);
}

static void params(net *n, double *p) { CHECK_OK(kl_tensor_get(n->p, p, C * sizeof *p)); }

static int same(const double *a, const double *b)
{
    for (int i = 0; i < C; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* Runs the samples in order; a negative entry is a run of that sample
 * with a label out of range, which must fail. */
static void run_seq(kl_optim_opts o, const int *ks, int nk, double *p, int64_t *steps, int64_t *skipped)
{
    net n;
    net_new(&n, o, 1);
    for (int i = 0; i < nk; i++) {
        if (ks[i] >= 0) CHECK_OK(net_run(&n, ks[i], ks[i] % C, 0));
        else CHECK_ERR(net_run(&n, -ks[i], C, 0), KL_EINVAL, "label 3");
    }
    params(&n, p);
    double S;
    int64_t good;
    *steps = kl_optim_steps(n.opt);
    CHECK_OK(kl_optim_scaler(n.opt, &S, &good, skipped));
    CHECK(!kl_optim_halted(n.opt));
    net_free(&n);
}

static void test_failed_runs(void)
{
    kl_optim_opts adam = {.kind = KL_OPTIM_ADAM, .lr = 0.05};
    double a[C], b[C];
    int64_t sa, sb, ka, kb;
    /* good, failed, good, good == good, good, good; the failure is one skipped update */
    run_seq(adam, (const int[]){1, -2, 3, 4}, 4, a, &sa, &ka);
    run_seq(adam, (const int[]){1, 3, 4}, 3, b, &sb, &kb);
    CHECK(same(a, b));
    CHECK(sa == 4 && ka == 1 && sb == 3 && kb == 0);
    /* accumulation 2: cycles (1 2) (fail 5) (3 4) == (1 2) (3 4); also a failure
     * ending a cycle: (1 2) (5 fail) (3 4) */
    kl_optim_opts acc = adam;
    acc.accumulate = 2;
    run_seq(acc, (const int[]){1, 2, 3, 4}, 4, b, &sb, &kb);
    run_seq(acc, (const int[]){1, 2, -2, 5, 3, 4}, 6, a, &sa, &ka);
    CHECK(same(a, b));
    CHECK(sa == 3 && ka == 1);
    run_seq(acc, (const int[]){1, 2, 5, -2, 3, 4}, 6, a, &sa, &ka);
    CHECK(same(a, b));
    CHECK(sa == 3 && ka == 1);
    printf("failed runs: skipped, Adam's t and the parameters as without them\n");
}

static void test_clear_halt_mid_cycle(void)
{
    kl_optim_opts o = {.kind = KL_OPTIM_SGD, .lr = 0.1, .accumulate = 3};
    net n;
    net_new(&n, o, 1);
    double before[C], after[C];
    CHECK_OK(net_run(&n, 1, 1, 0));
    CHECK_OK(net_run(&n, 2, 2, 1)); /* NaN loss: the cycle's end halts */
    CHECK_OK(net_run(&n, 3, 0, 0));
    CHECK(kl_optim_halted(n.opt));
    CHECK_OK(net_run(&n, 4, 1, 0)); /* halted: added nothing */
    params(&n, before);
    CHECK_OK(kl_optim_clear_halt(n.opt));
    CHECK(kl_optim_pending(n.opt) == 0);
    for (int k = 5; k < 8; k++) CHECK_OK(net_run(&n, k, k % C, 0));
    CHECK(!kl_optim_halted(n.opt));
    params(&n, after);
    CHECK(!same(before, after));
    for (int i = 0; i < C; i++) CHECK(isfinite(after[i]));
    net_free(&n);
    printf("clear_halt inside a cycle: the next full cycle updates\n");
}

static void test_scale_loss_alone(void)
{
    kl_optim_opts o = {.kind = KL_OPTIM_ADAM, .lr = 0.05, .loss_scale = 1024};
    net a, b;
    net_new(&a, o, 0); /* scaled backward, no update */
    o.loss_scale = 0;
    net_new(&b, o, 0);
    CHECK_OK(net_run(&a, 1, 2, 0));
    CHECK_OK(net_run(&b, 1, 2, 0));
    double ga[C], gb[C];
    CHECK_OK(kl_ctx_grad_get(a.ctx, 0, ga, sizeof ga));
    CHECK_OK(kl_ctx_grad_get(b.ctx, 0, gb, sizeof gb));
    CHECK(kl_optim_grad_scale(a.opt) == 1024);
    for (int i = 0; i < C; i++) CHECK(fabs(ga[i] - 1024 * gb[i]) <= 1e-12 * fabs(ga[i]) && gb[i] != 0);
    net_free(&a);
    net_free(&b);
    printf("scale_loss without an update: the gradient carries the scale\n");
}

int main(void)
{
    test_failed_runs();
    test_clear_halt_mid_cycle();
    test_scale_loss_alone();
    return kl_test_done("test_optim_fail");
}
