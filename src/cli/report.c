/* kiln report: reads a run's metrics.jsonl, prints a summary table and
 * writes report.md with gnuplot plots. */
#include "cli/cli.h"
#include "cli/report.h"
#include "core/error.h"
#include "io/config.h"
#include "io/fileio.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Appends (x, y); a step-indexed series going back (a resumed run repeats
 * steps after its checkpoint) first drops the points at or after x. */
static kl_status add(series *s, double x, double y, int by_step)
{
    while (by_step && s->n > 0 && s->x[s->n - 1] >= x) s->n--;
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 256;
        double *nx = kl_realloc(s->x, (size_t)cap * sizeof *nx);
        if (!nx) return KL_ENOMEM;
        s->x = nx;
        double *ny = kl_realloc(s->y, (size_t)cap * sizeof *ny);
        if (!ny) return KL_ENOMEM;
        s->y = ny, s->cap = cap;
    }
    s->x[s->n] = x, s->y[s->n++] = y;
    return KL_OK;
}

static int num(const json_t *o, const char *key, double *v)
{
    json_t *j = json_object_get(o, key);
    if (!j || !json_is_number(j)) return 0;
    *v = json_number_value(j);
    return 1;
}

/* Adds o[key] at x when present. */
static kl_status field(series *s, const json_t *o, const char *key, double x, int by_step)
{
    double v;
    return num(o, key, &v) ? add(s, x, v, by_step) : KL_OK;
}

/* A process's records end: without its run record, its epochs' energy counts. */
static void end_process_energy(run_data *d)
{
    if (!d->seg_run) d->energy_j += d->pending_j, d->energy_samples += d->pending_samples;
    d->pending_j = d->pending_samples = 0;
    d->seg_run = 0;
}

static kl_status record(run_data *d, const json_t *o, double *wall_base, double *seg_wall)
{
    const char *type = json_string_value(json_object_get(o, "type"));
    double step = 0, wall = 0, v;
    if (!type) return KL_OK;
    num(o, "step", &step);
    num(o, "wall_s", &wall);
    if (!strcmp(type, "step") && d->loss.n && step <= d->loss.x[d->loss.n - 1]) {
        /* a resumed run: a new process whose wall_s starts again at 0 */
        *wall_base += *seg_wall;
        *seg_wall = 0;
        d->resumed = 1;
        end_process_energy(d);
    }
    if (!strcmp(type, "start")) { /* a process's first record (older runs lack it: the step test above) */
        if (d->started) {
            *wall_base += *seg_wall;
            *seg_wall = 0;
            d->resumed = 1;
            end_process_energy(d);
        }
        d->started = 1;
        return KL_OK;
    }
    if (strcmp(type, "telemetry") && wall > *seg_wall) { /* telemetry is written after it was sampled */
        *seg_wall = wall;
        d->time_s = *wall_base + wall;
    }
    if (!strcmp(type, "step")) {
        d->steps = (int64_t)step;
        d->test_stale = d->has_test;
        KL_TRY(field(&d->loss, o, "loss", step, 1));
        KL_TRY(field(&d->acc, o, "accuracy", step, 1));
        KL_TRY(field(&d->lr, o, "lr", step, 1));
    } else if (!strcmp(type, "throughput")) {
        KL_TRY(field(&d->sps, o, "samples_per_s", step, 1));
    } else if (!strcmp(type, "epoch")) {
        /* a text run that ended mid-epoch: that epoch's record so far, not a completed one */
        if (num(o, "epoch", &v)) d->epochs = (int64_t)v - json_is_true(json_object_get(o, "partial"));
        KL_TRY(field(&d->ep_loss, o, "loss", step, 1));
        KL_TRY(field(&d->ep_acc, o, "accuracy", step, 1));
        /* an image run without a validation set logs val 0/0; a language
         * model's has no val_ keys and no accuracy at all */
        double vl = 0, va = 0;
        num(o, "val_loss", &vl);
        int has_va = num(o, "val_accuracy", &va);
        if (vl != 0 || va != 0) {
            d->has_val = 1;
            KL_TRY(add(&d->val_loss, step, vl, 1));
            if (has_va) {
                KL_TRY(add(&d->val_acc, step, va, 1));
                KL_TRY(add(&d->val_ep, step, (double)d->epochs, 1));
            }
        }
    } else if (!strcmp(type, "test")) {
        d->has_test = num(o, "loss", &d->test_loss) && num(o, "accuracy", &d->test_acc);
        d->test_stale = 0;
        if (!num(o, "step", &d->test_step)) d->test_step = -1;
    } else if (!strcmp(type, "telemetry")) {
        double t = *wall_base + wall;
        KL_TRY(field(&d->cpu, o, "cpu_util", t, 0));
        KL_TRY(field(&d->rss, o, "rss_mb", t, 0));
        if (num(o, "rss_peak_mb", &v) && v > d->rss_peak_mb) d->rss_peak_mb = v;
        /* each GPU value is there when NVML gave it (utilisation is not under MIG) */
        if (num(o, "gpu_util", &v) || num(o, "gpu_mem_mb", &v) || num(o, "gpu_power_w", &v)) d->has_gpu = 1;
        KL_TRY(field(&d->gpu_util, o, "gpu_util", t, 0));
        KL_TRY(field(&d->gpu_mem, o, "gpu_mem_mb", t, 0));
        KL_TRY(field(&d->gpu_power, o, "gpu_power_w", t, 0));
        if (num(o, "gpu_mem_mb", &v) && v > d->gpu_mem_peak_mb) d->gpu_mem_peak_mb = v;
    } else if (!strcmp(type, "nan")) {
        const char *layer = json_string_value(json_object_get(o, "layer"));
        const char *op = json_string_value(json_object_get(o, "op"));
        const char *phase = json_string_value(json_object_get(o, "phase"));
        const char *where = json_string_value(json_object_get(o, "where"));
        if (!layer) /* a validation or test pass: its loss, no layer re-run */
            snprintf(d->nan, sizeof d->nan, "%s pass after step %.0f: the loss is not finite", phase ? phase : "?", step);
        else
            snprintf(d->nan, sizeof d->nan, "step %.0f: %s pass, %s (op %s)%s%.80s", step, phase ? phase : "?", layer,
                     op ? op : "?", where ? " at " : "", where ? where : "");
    } else if (!strcmp(type, "early_stop")) {
        double ep = 0, ev = 0;
        num(o, "epoch", &ep);
        num(o, "evaluations", &ev);
        snprintf(d->early, sizeof d->early, "epoch %.0f, step %.0f (no improvement for %.0f evaluations)", ep, step, ev);
    } else if (!strcmp(type, "energy")) {
        const char *scope = json_string_value(json_object_get(o, "scope"));
        const char *src = json_string_value(json_object_get(o, "source"));
        double n = 0;
        num(o, "samples", &n);
        /* resumed runs add up; a process that ended without its run record
         * (killed, diverged) counts by its epochs (report_load adds them) */
        if (scope && !strcmp(scope, "run") && num(o, "joules", &v)) {
            d->energy_j += v, d->energy_samples += n;
            d->seg_run = 1;
            snprintf(d->energy_src, sizeof d->energy_src, "%s", src ? src : "?");
        } else if (scope && !strcmp(scope, "epoch") && num(o, "joules", &v)) {
            d->pending_j += v, d->pending_samples += n;
            if (!d->energy_src[0]) snprintf(d->energy_src, sizeof d->energy_src, "%s", src ? src : "?");
        }
    }
    return KL_OK;
}

kl_status report_load(const char *dir, run_data *d)
{
    char path[4200], *line = NULL;
    size_t cap = 0;
    memset(d, 0, sizeof *d);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return kl_fail(KL_EIO, "%s: cannot open: %s (is %s a kiln run directory?)", path, strerror(errno), dir);
    double base = 0, last = 0;
    int lineno = 0, bad = 0, first_bad = 0;
    kl_status s = KL_OK;
    while (s == KL_OK && getline(&line, &cap, f) > 0) {
        lineno++;
        json_error_t err;
        json_t *o = json_loads(line, 0, &err);
        if (!o || !json_is_object(o)) { /* e.g. the last line of a killed run */
            if (!bad++) first_bad = lineno;
        } else {
            s = record(d, o, &base, &last);
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    if (bad) fprintf(stderr, "kiln report: %s: skipped %d malformed line%s (first: line %d)\n", path, bad,
                     bad > 1 ? "s" : "", first_bad);
    end_process_energy(d);
    /* the best after the load: a resume from an earlier checkpoint dropped the epochs it repeated */
    for (int i = 0; i < d->val_acc.n; i++)
        if (d->val_acc.y[i] > d->best_val_acc) d->best_val_acc = d->val_acc.y[i], d->best_val_epoch = (int64_t)d->val_ep.y[i];
    if (s == KL_OK && !d->loss.n) s = kl_fail(KL_EFORMAT, "%s: no step records (has the run trained?)", path);
    if (s != KL_OK) report_free(d);
    return s;
}

void report_free(run_data *d)
{
    series *all[] = {&d->loss, &d->acc, &d->lr, &d->sps, &d->ep_loss, &d->ep_acc, &d->val_loss, &d->val_acc,
                     &d->val_ep, &d->cpu, &d->rss, &d->gpu_util, &d->gpu_mem, &d->gpu_power};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        kl_free(all[i]->x);
        kl_free(all[i]->y);
        all[i]->x = all[i]->y = NULL;
        all[i]->n = all[i]->cap = 0;
    }
}

static double mean(const series *s)
{
    double t = 0;
    for (int i = 0; i < s->n; i++) t += s->y[i];
    return s->n ? t / s->n : 0;
}

/* A series' last value; NAN when empty (language-model runs log no accuracy). */
static double last(const series *s) { return s->n ? s->y[s->n - 1] : NAN; }

/* The summary as rows of (label, value); returns the count. */
static int summary(const run_data *d, char rows[][2][128])
{
    int n = 0;
#define ROW(label, ...) (snprintf(rows[n][0], 128, "%s", label), snprintf(rows[n][1], 128, __VA_ARGS__), n++)
    ROW("steps", "%lld (%lld epoch%s completed)%s", (long long)d->steps, (long long)d->epochs, d->epochs == 1 ? "" : "s",
        d->resumed ? ", resumed" : "");
    if (!d->acc.n && !d->ep_acc.n) { /* a language model: perplexity exp(loss), inf past a loss of 709 */
        if (d->ep_loss.n) ROW("train loss / perplexity", "%.4f / %.4g (last epoch)", last(&d->ep_loss), exp(last(&d->ep_loss)));
        else ROW("train loss", "%.4f (last step)", last(&d->loss));
    } else if (d->ep_loss.n)
        ROW("train loss / accuracy", "%.4f / %.4f (last epoch)", last(&d->ep_loss), last(&d->ep_acc));
    else ROW("train loss / accuracy", "%.4f / %.4f (last step)", last(&d->loss), last(&d->acc));
    if (d->has_val && d->val_acc.n)
        ROW("val loss / accuracy", "%.4f / %.4f (best accuracy %.4f, epoch %lld)", last(&d->val_loss),
            last(&d->val_acc), d->best_val_acc, (long long)d->best_val_epoch);
    else if (d->has_val)
        ROW("val loss / perplexity", "%.4f / %.4g", last(&d->val_loss), exp(last(&d->val_loss)));
    if (d->has_test && !d->test_stale) ROW("test loss / accuracy", "%.4f / %.4f", d->test_loss, d->test_acc);
    else if (d->has_test && d->test_step >= 0) /* not of the final model: a resume trained on from an earlier step */
        ROW("test loss / accuracy", "%.4f / %.4f (at step %.0f, superseded by a resume)", d->test_loss, d->test_acc,
            d->test_step);
    else if (d->has_test) ROW("test loss / accuracy", "%.4f / %.4f (superseded by a resume)", d->test_loss, d->test_acc);
    if (d->nan[0]) ROW("diverged (NaN watch)", "%.110s", d->nan);
    if (d->early[0]) ROW("early stop", "%s", d->early);
    ROW("time", "%.1f s", d->time_s);
    if (d->sps.n) ROW("samples/s", "%.0f mean, %.0f last", mean(&d->sps), d->sps.y[d->sps.n - 1]);
    if (d->cpu.n) ROW("CPU", "%.2f cores busy (mean)", mean(&d->cpu));
    if (d->rss_peak_mb > 0) ROW("peak RSS", "%.1f MB", d->rss_peak_mb);
    else ROW("peak RSS", "-");
    if (d->gpu_util.n) ROW("GPU", "%.0f%% busy (mean)", mean(&d->gpu_util));
    if (d->has_gpu) ROW("peak GPU memory", "%.1f MB", d->gpu_mem_peak_mb);
    else ROW("peak GPU memory", "-");
    if (d->energy_src[0])
        ROW("energy (GPU)", "%.1f J = %.4f Wh (%s)", d->energy_j, d->energy_j / 3600, d->energy_src);
    else ROW("energy (GPU)", "-");
    if (d->energy_j > 0 && d->energy_samples > 0) ROW("samples per joule", "%.4g", d->energy_samples / d->energy_j);
#undef ROW
    return n;
}

static kl_status write_md(const char *dir, const char *name, char rows[][2][128], int nrows, const char **plots,
                          int nplots)
{
    static const char *const titles[][2] = {{"loss", "Loss"}, {"accuracy", "Accuracy"}, {"lr", "Learning rate"},
                                            {"throughput", "Throughput"}, {"telemetry", "CPU and memory"},
                                            {"gpu", "GPU"}};
    char path[4200], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/report.md", dir);
    FILE *f = open_memstream(&text, &len); /* then written atomically: a failure keeps the old report */
    if (!f) return kl_fail(KL_ENOMEM, "%s: cannot compose the report: %s", path, strerror(errno));
    fprintf(f, "# Run report: %s\n\nRun directory `%s`; configuration in [config.yaml](config.yaml), "
               "records in [metrics.jsonl](metrics.jsonl).\n\n| | |\n|---|---|\n", name, dir);
    for (int i = 0; i < nrows; i++) fprintf(f, "| %s | %s |\n", rows[i][0], rows[i][1]);
    for (int i = 0; i < nplots; i++)
        for (size_t k = 0; k < sizeof titles / sizeof titles[0]; k++)
            if (!strcmp(plots[i], titles[k][0]))
                fprintf(f, "\n## %s\n\n![%s](plots/%s.png)\n", titles[k][1], titles[k][1], plots[i]);
    if (!nplots) fprintf(f, "\n(no plots: gnuplot was not available or failed)\n");
    int bad = ferror(f);
    if (fclose(f) != 0 || bad || !text) {
        free(text);
        return kl_fail(KL_ENOMEM, "%s: cannot compose the report", path);
    }
    const void *chunk = text;
    kl_status s = kl_write_file_atomic(path, &chunk, &len, 1);
    free(text);
    return s;
}

int kl_cmd_report(int argc, char **argv)
{
    const char *dir = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: kiln report RUN_DIR\n\nSummarises a training run from its metrics.jsonl: prints a table "
                   "(final metrics, time,\nsamples/s, peak memory, energy) and writes RUN_DIR/report.md with plots "
                   "in\nRUN_DIR/plots/ (loss, accuracy, learning rate, throughput, telemetry; needs gnuplot).\n");
            return 0;
        }
        if (argv[i][0] == '-' || dir) {
            fprintf(stderr, "kiln report: unexpected argument '%s' (usage: kiln report RUN_DIR)\n", argv[i]);
            return 2;
        }
        dir = argv[i];
    }
    if (!dir) {
        fprintf(stderr, "usage: kiln report RUN_DIR\n");
        return 2;
    }
    run_data d;
    if (report_load(dir, &d) != KL_OK) {
        fprintf(stderr, "kiln report: %s\n", kl_last_error());
        return 1;
    }
    char name[256], cfgp[4200], rows[16][2][128];
    const char *base = strrchr(dir, '/') && strrchr(dir, '/')[1] ? strrchr(dir, '/') + 1 : dir, *nm = NULL;
    snprintf(name, sizeof name, "%s", base);
    snprintf(cfgp, sizeof cfgp, "%s/config.yaml", dir);
    kl_cfg *cfg = NULL;
    if (kl_cfg_load(cfgp, &cfg) == KL_OK && kl_cfg_string(kl_cfg_root(cfg), "name", 0, NULL, &nm) == KL_OK && nm)
        snprintf(name, sizeof name, "%s", nm);
    kl_cfg_free(cfg);
    int nrows = summary(&d, rows), nplots = 0, rc = 0;
    const char *plots[8];
    kl_status s = report_plot(dir, &d, plots, &nplots);
    if (s != KL_OK) fprintf(stderr, "kiln report: warning: %s\n", kl_last_error());
    printf("run %s (%s)\n", name, dir);
    for (int i = 0; i < nrows; i++) printf("  %-24s %s\n", rows[i][0], rows[i][1]);
    if (write_md(dir, name, rows, nrows, plots, nplots) != KL_OK) {
        fprintf(stderr, "kiln report: %s\n", kl_last_error());
        rc = 1;
    } else {
        printf("wrote %s/report.md", dir);
        if (nplots) printf(" and %d plot%s in %s/plots/", nplots, nplots > 1 ? "s" : "", dir);
        printf("\n");
    }
    report_free(&d);
    return rc;
}
