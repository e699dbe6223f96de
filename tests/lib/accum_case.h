/* Gradient accumulation (kl_optim_opts.accumulate), one case for the CPU
 * test (test_optim_accum) and the GPU one (test_cuda_graph): a two-layer
 * net trained with Adam and clipping that bites, run by run, each run on
 * `rows` rows of one fixed table (run j: rows j*rows ...), so K runs of R
 * rows see what one run of K*R rows sees. */
#ifndef KL_TEST_ACCUM_CASE_H
#define KL_TEST_ACCUM_CASE_H

#include "kiln/kiln.h"

enum { ACCUM_CASE_PARAMS = 6 * 5 + 5 + 5 * 4 + 4, ACCUM_CASE_MAX_RUNS = 8 };

typedef struct accum_case {
    kl_device dev;
    kl_dtype dt;       /* KL_F32 or KL_F64 */
    int accumulate;    /* kl_optim_opts.accumulate */
    int rows, runs;    /* rows a run; runs (<= ACCUM_CASE_MAX_RUNS, rows * runs <= 24) */
    int end_cycle_at;  /* >= 0: kl_optim_end_cycle before that run */
    int nan_run;       /* >= 0: that run's first feature is NaN (a NaN loss) */
    int last_rows;     /* > 0: the last run is a partial batch of that many rows, on a second graph */
    int weighted;      /* kl_optim_set_run_weight(rows / full rows) before each run */
    /* out */
    double params[ACCUM_CASE_PARAMS]; /* after the last run, w1 b1 w2 b2 */
    double init[ACCUM_CASE_PARAMS];   /* before the first */
    double grads[ACCUM_CASE_PARAMS];  /* the last update's (kl_optim_grad_get), if no cycle is pending */
    kl_status grads_status;           /* what kl_optim_grad_get returned */
    double norm[ACCUM_CASE_MAX_RUNS]; /* each run's gradient norm output */
    int64_t steps, pending;
    int halted;
} accum_case;

kl_status accum_case_run(accum_case *c);

#endif
