/* Gradient accumulation on the CPU (tests/lib/accum_case.h; test_cuda_graph
 * runs the same cases on a GPU):
 *  - K runs of R rows with accumulate K give the parameters of one run of
 *    K*R rows (the mean of equal-sized batches' mean gradients is the big
 *    batch's), with Adam and global-norm clipping that bites, in f64 to
 *    1e-12 and in f32 to 1e-5; the norms of the updating runs match;
 *  - without accumulation, results are bit-identical to accumulate 1;
 *  - kl_optim_end_cycle ends a short cycle with the mean of what it holds;
 *  - kl_optim_set_run_weight: a cycle ending in a partial batch weighted
 *    by its rows is the big batch (no effect without accumulation);
 *  - kl_optim_grad_get gives the gradient an update used (the cycle's
 *    mean: the big run's) and is refused inside a cycle;
 *  - kl_optim_pending and kl_optim_steps count runs and updates;
 *  - a NaN loss in a cycle's first run: nothing is updated and the
 *    optimizer halts at the cycle's end;
 *  - bad values of accumulate are refused. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "accum_case.h"

#include <math.h>
#include <string.h>

static double max_rel(const double *a, const double *b, int n)
{
    double w = 0;
    for (int i = 0; i < n; i++) w = fmax(w, fabs(a[i] - b[i]) / (1e-3 + fabs(b[i])));
    return w;
}

static accum_case run(kl_dtype dt, int accumulate, int rows, int runs, int end_cycle_at, int nan_run)
{
    accum_case c = {.dev = {KL_DEVICE_CPU, 0}, .dt = dt, .accumulate = accumulate, .rows = rows, .runs = runs,
                    .end_cycle_at = end_cycle_at, .nan_run = nan_run};
    CHECK_OK(accum_case_run(&c));
    return c;
}

int main(void)
{
    for (int f32 = 0; f32 < 2; f32++) {
        kl_dtype dt = f32 ? KL_F32 : KL_F64;
        double tol = f32 ? 1e-5 : 1e-12;
        const char *dn = f32 ? "f32" : "f64";
        /* two cycles of three runs of 4 rows == two runs of 12 rows */
        accum_case big = run(dt, 0, 12, 2, -1, -1), acc = run(dt, 3, 4, 6, -1, -1);
        double e = max_rel(acc.params, big.params, ACCUM_CASE_PARAMS);
        printf("%s: accumulate 3 x 4 rows vs 12 rows: max rel diff %.3g\n", dn, e);
        CHECK(e < tol);
        CHECK(max_rel(big.params, big.init, ACCUM_CASE_PARAMS) > 1e-3); /* it trained */
        CHECK(acc.steps == 2 && acc.pending == 0 && !acc.halted && big.steps == 2);
        CHECK(big.norm[0] > 0.3 && big.norm[1] > 0.3); /* clipping bites */
        CHECK(fabs(acc.norm[2] - big.norm[0]) < tol * big.norm[0] && fabs(acc.norm[5] - big.norm[1]) < tol * big.norm[1]);
        CHECK(acc.norm[0] == 0 && acc.norm[1] == 0); /* runs that only accumulate compute no norm */
        /* the gradient the last update used is the cycle's mean, the big batch's */
        e = max_rel(acc.grads, big.grads, ACCUM_CASE_PARAMS);
        printf("%s: kl_optim_grad_get, accumulated vs big batch: max rel diff %.3g\n", dn, e);
        CHECK(e < tol && max_rel(big.grads, (double[ACCUM_CASE_PARAMS]){0}, ACCUM_CASE_PARAMS) > 1e-2);

        /* accumulate 1 is no accumulation, to the bit */
        accum_case one = run(dt, 1, 4, 6, -1, -1), none = run(dt, 0, 4, 6, -1, -1);
        CHECK(!memcmp(one.params, none.params, sizeof one.params) && one.steps == 6);

        /* a short cycle: accumulate 4, ended after three runs == one run of 12 rows */
        accum_case shortc = run(dt, 4, 4, 3, 2, -1), big1 = run(dt, 0, 12, 1, -1, -1);
        CHECK(max_rel(shortc.params, big1.params, ACCUM_CASE_PARAMS) < tol);
        CHECK(shortc.steps == 1 && shortc.pending == 0);
        CHECK(max_rel(shortc.grads, big1.grads, ACCUM_CASE_PARAMS) < tol);

        /* a partial last batch weighted by its rows: 5 + 5 + 2 rows == 12 rows;
         * unweighted, its 2 rows would count as much as 5 */
        accum_case part = {.dev = {KL_DEVICE_CPU, 0}, .dt = dt, .accumulate = 3, .rows = 5, .runs = 3, .end_cycle_at = -1,
                           .nan_run = -1, .last_rows = 2, .weighted = 1};
        accum_case part_u = part;
        part_u.weighted = 0;
        CHECK_OK(accum_case_run(&part));
        CHECK_OK(accum_case_run(&part_u));
        e = max_rel(part.grads, big1.grads, ACCUM_CASE_PARAMS);
        printf("%s: 5 + 5 + 2 rows weighted vs 12 rows: max rel diff %.3g (unweighted %.3g)\n", dn, e,
               max_rel(part_u.grads, big1.grads, ACCUM_CASE_PARAMS));
        CHECK(e < tol && max_rel(part.params, big1.params, ACCUM_CASE_PARAMS) < tol);
        CHECK(max_rel(part_u.grads, big1.grads, ACCUM_CASE_PARAMS) > 1e-2);
        /* without accumulation the weight changes nothing */
        accum_case nw = {.dev = {KL_DEVICE_CPU, 0}, .dt = dt, .rows = 4, .runs = 3, .end_cycle_at = -1, .nan_run = -1,
                         .last_rows = 2, .weighted = 1};
        accum_case nw_u = nw;
        nw_u.weighted = 0;
        CHECK_OK(accum_case_run(&nw));
        CHECK_OK(accum_case_run(&nw_u));
        CHECK(!memcmp(nw.params, nw_u.params, sizeof nw.params) && nw.steps == 3);

        /* mid-cycle: two runs of three accumulated, nothing updated yet */
        accum_case mid = run(dt, 3, 4, 2, -1, -1);
        CHECK(mid.steps == 0 && mid.pending == 2 && !memcmp(mid.params, mid.init, sizeof mid.params));
        CHECK(mid.grads_status == KL_EINVAL &&
              strstr(kl_last_error(), "kl_optim_grad_get: a cycle of accumulation is in progress (2 of 3 runs)"));

        /* a NaN loss in the cycle's first run: its end updates nothing and halts */
        accum_case bad = run(dt, 3, 4, 3, -1, 0);
        CHECK(bad.halted == 1 && !memcmp(bad.params, bad.init, sizeof bad.params));
        /* ... and in a later cycle's first run, after a good cycle: the good update stays */
        accum_case bad2 = run(dt, 3, 4, 6, -1, 3), good = run(dt, 3, 4, 3, -1, -1);
        CHECK(bad2.halted == 1 && !memcmp(bad2.params, good.params, sizeof bad2.params));
    }

    kl_ctx *ctx;
    kl_optim *opt;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_ERR(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.1, .accumulate = -2}, &opt), KL_EINVAL,
              "sgd: accumulate must be in [0, 1048576] runs per update, got -2");
    CHECK_ERR(kl_optim_end_cycle(NULL), KL_EMISUSE, "kl_optim_end_cycle: optimizer is NULL");
    CHECK_OK(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.1, .accumulate = 2}, &opt));
    CHECK_ERR(kl_optim_set_run_weight(opt, 0), KL_EINVAL, "kl_optim_set_run_weight: the weight must be a positive number, got 0");
    CHECK_ERR(kl_optim_set_run_weight(opt, NAN), KL_EINVAL, "the weight must be a positive number, got nan");
    CHECK_OK(kl_optim_set_run_weight(opt, 0.25));
    kl_optim_free(opt);
    CHECK(kl_optim_pending(NULL) == 0);
    kl_ctx_free(ctx);
    return kl_test_done("test_optim_accum");
}
