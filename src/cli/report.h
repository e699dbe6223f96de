/* `kiln report RUN_DIR`: a run's metrics.jsonl as series, a summary, and
 * gnuplot plots (shared by report.c and report_plot.c). */
#ifndef KL_CLI_REPORT_H
#define KL_CLI_REPORT_H

#include <stdint.h>
#include "kiln/status.h"

typedef struct series {
    double *x, *y;
    int n, cap;
    const char *title;
} series;

typedef struct run_data {
    /* per step (x = step) */
    series loss, acc, lr, sps;
    /* epoch ends (x = step) */
    series ep_loss, ep_acc, val_loss, val_acc;
    series val_ep;                  /* the epochs of val_acc's points */
    /* telemetry (x = seconds since the run started) */
    series cpu, rss, gpu_util, gpu_mem, gpu_power;
    int has_val, has_test, has_gpu, resumed;
    double test_loss, test_acc, time_s;
    double test_step; /* the step the test followed (-1: an older record without one) */
    int test_stale;   /* step records came after the test: a resume trained on from an earlier point */
    double rss_peak_mb, gpu_mem_peak_mb, energy_j, best_val_acc;
    double energy_samples;            /* training samples the energy covers */
    double pending_j, pending_samples; /* this process's epoch records while it has no run record */
    int seg_run;                      /* this process wrote its run record */
    int started;                      /* a "start" record was seen */
    int64_t steps, epochs, best_val_epoch;
    char energy_src[32];
    char nan[200]; /* the NaN watch's finding, if the run diverged */
    char early[96]; /* where the plateau watch stopped the run, if it did */
} run_data;

/* Reads <dir>/metrics.jsonl (a resumed run's repeated steps keep the last
 * values). KL_EIO / KL_EFORMAT name the file and line. */
kl_status report_load(const char *dir, run_data *d);
void report_free(run_data *d);

/* Writes <dir>/plots/{loss,accuracy,lr,throughput,telemetry,gpu}.png with
 * gnuplot ($KILN_GNUPLOT or gnuplot on PATH); the names written go to
 * names[] (up to 8, "loss" etc.), their count to *n. KL_EUNSUPPORTED when
 * gnuplot cannot be run, KL_EIO when it fails. */
kl_status report_plot(const char *dir, const run_data *d, const char *names[8], int *n);

#endif
