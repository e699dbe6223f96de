#include "gradcheck.h"
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static int64_t numel(const gc_input *in)
{
    int64_t n = 1;
    for (int d = 0; d < in->ndim; d++) n *= in->ne[d];
    return n;
}

static int loss_of(kl_graph *g, kl_tensor *loss, double *out)
{
    kl_graph_set_runs(g, 0); /* same dropout mask every evaluation */
    if (kl_graph_run(g) != KL_OK) {
        fprintf(stderr, "gradcheck: run failed: %s\n", kl_last_error());
        return 1;
    }
    return kl_tensor_get(loss, out, sizeof *out) != KL_OK;
}

int gradcheck(const char *name, int n_in, const gc_input *in, gc_build build, void *user)
{
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_tensor *x[GC_MAX_IN], *y, *r, *loss;
    int slot[GC_MAX_IN], bad = 0;
    kl_ctx_opts co = {.seed = 7};
    if (kl_ctx_new(&co, &ctx) || kl_graph_new(ctx, &g)) goto fail;
    for (int i = 0; i < n_in; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "in%d", i);
        int64_t n = numel(&in[i]);
        slot[i] = -1;
        if (in[i].imax > 0) {
            if (kl_input(g, nm, KL_I32, in[i].ndim, in[i].ne, &x[i])) goto fail;
            continue;
        }
        if (kl_param(g, nm, KL_F64, in[i].ndim, in[i].ne, NULL, &x[i])) goto fail;
        slot[i] = kl_ctx_param_find(ctx, nm);
        double lo = in[i].lo, hi = in[i].hi;
        if (lo == 0 && hi == 0) lo = -1, hi = 1;
        double *v = malloc((size_t)n * sizeof *v);
        for (int64_t k = 0; k < n; k++) {
            v[k] = lo + (hi - lo) * urand();
            if (fabs(v[k]) < 1e-3) v[k] = 1e-3 + fabs(v[k]); /* keep off relu/abs kinks */
        }
        kl_ctx_param_set(ctx, slot[i], v, (size_t)n * sizeof *v);
        free(v);
    }
    if (build(g, x, user, &y) != KL_OK) {
        fprintf(stderr, "gradcheck %s: build failed: %s\n", name, kl_last_error());
        goto fail;
    }
    int64_t ny = kl_tensor_numel(y);
    int64_t yd[KL_MAX_DIMS];
    for (int d = 0; d < kl_tensor_ndim(y); d++) yd[d] = kl_tensor_dim(y, d);
    if (kl_input(g, "R", KL_F64, kl_tensor_ndim(y), yd, &r) || kl_mul(g, y, r, &loss) ||
        kl_sum(g, loss, 0, NULL, 0, &loss) || kl_backward(g, loss)) {
        fprintf(stderr, "gradcheck %s: backward failed: %s\n", name, kl_last_error());
        goto fail;
    }
    kl_plan_opts po = {.check = 1};
    if (kl_graph_plan(g, &po)) {
        fprintf(stderr, "gradcheck %s: plan failed: %s\n", name, kl_last_error());
        goto fail;
    }
    double *rv = malloc((size_t)ny * sizeof *rv);
    for (int64_t k = 0; k < ny; k++) rv[k] = 0.5 + urand();
    kl_tensor_set(r, rv, (size_t)ny * sizeof *rv);
    free(rv);
    for (int i = 0; i < n_in; i++) {
        if (in[i].imax <= 0) continue;
        int64_t n = numel(&in[i]);
        int32_t *iv = malloc((size_t)n * sizeof *iv);
        for (int64_t k = 0; k < n; k++) iv[k] = (int32_t)(urand() * in[i].imax);
        kl_tensor_set(x[i], iv, (size_t)n * sizeof *iv);
        free(iv);
    }
    double l0;
    if (loss_of(g, loss, &l0)) goto fail;
    for (int i = 0; i < n_in; i++) {
        if (slot[i] < 0) continue;
        int64_t n = numel(&in[i]);
        size_t bytes = (size_t)n * sizeof(double);
        double *p = malloc(bytes), *ga = malloc(bytes);
        kl_ctx_param_get(ctx, slot[i], p, bytes);
        kl_graph_set_runs(g, 0);
        kl_graph_run(g);
        kl_ctx_grad_get(ctx, slot[i], ga, bytes);
        int64_t checks = n > 4096 ? 64 : n;
        for (int64_t c = 0; c < checks; c++) {
            int64_t k = n > 4096 ? (int64_t)(urand() * n) : c;
            double h = 1e-6 * fmax(1.0, fabs(p[k])), orig = p[k], lp, lm;
            p[k] = orig + h;
            kl_ctx_param_set(ctx, slot[i], p, bytes);
            if (loss_of(g, loss, &lp)) goto fail_free;
            p[k] = orig - h;
            kl_ctx_param_set(ctx, slot[i], p, bytes);
            if (loss_of(g, loss, &lm)) goto fail_free;
            p[k] = orig;
            double num = (lp - lm) / (2 * h);
            if (!(fabs(ga[k] - num) <= 1e-6 + 1e-4 * fabs(num))) {
                if (bad < 5)
                    fprintf(stderr, "gradcheck %s: input %d index %lld: analytic %.10g numeric %.10g\n", name, i,
                            (long long)k, ga[k], num);
                bad++;
            }
        }
        kl_ctx_param_set(ctx, slot[i], p, bytes);
        free(p);
        free(ga);
        continue;
    fail_free:
        free(p);
        free(ga);
        goto fail;
    }
    kl_graph_free(g);
    kl_ctx_free(ctx);
    kl_test_checks++;
    if (bad) kl_test_failures++;
    return bad;
fail:
    kl_graph_free(g);
    kl_ctx_free(ctx);
    kl_test_checks++;
    kl_test_failures++;
    fprintf(stderr, "gradcheck %s: failed: %s\n", name, kl_last_error());
    return 1;
}
