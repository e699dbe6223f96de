/* Profiling and convergence watch of `kiln train` (see train_watch.h). */
#include "cli/train_watch.h"
#include "cli/train_monitor.h"
#include "core/error.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

kl_status watch_init(train_watch *w, const train_opts *o, kl_graph *train_graph, FILE *metrics)
{
    memset(w, 0, sizeof *w);
    w->metrics = metrics;
    w->profile_steps = g_monitor_flags.profile_steps;
    w->patience = o->plateau_patience;
    w->early_stop = o->early_stop;
    w->grad_warn = o->grad_norm_warn;
    w->best = INFINITY;
    if (w->profile_steps) KL_TRY(kl_graph_profile(train_graph, 1));
    return KL_OK;
}

/* The profile: the engine's table, printed, and parsed into the record. */
static void profile_out(train_watch *w, kl_graph *g, int64_t step)
{
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) return;
    kl_graph_profile_print(g, mem);
    fclose(mem);
    double n = (double)(w->prof_n ? w->prof_n : 1), step_ms = 1e3 * w->prof_step_s / n,
           wait_ms = 1e3 * w->prof_wait_s / n, share = w->prof_step_s > 0 ? w->prof_wait_s / w->prof_step_s : 0;
    printf("profile of %lld training steps: %.3f ms per step; waiting for data %.3f ms per step (%.1f%% of step time)\n",
           (long long)w->prof_n, step_ms, wait_ms, 100 * share);
    fputs(text ? text : "", stdout);
    fflush(stdout);
    fprintf(w->metrics,
            "{\"type\":\"profile\",\"step\":%lld,\"steps\":%lld,\"step_ms\":%.4f,\"data_wait_ms\":%.4f,"
            "\"data_wait_share\":%.5f,\"ops\":[",
            (long long)step, (long long)w->prof_n, step_ms, wait_ms, share);
    int first = 1;
    for (char *line = text ? strtok(text, "\n") : NULL; line; line = strtok(NULL, "\n")) {
        char op[64];
        int nodes;
        double ms, pct;
        if (sscanf(line, " %63s %d nodes %lf ms/run %lf%%", op, &nodes, &ms, &pct) != 4) continue;
        fprintf(w->metrics, "%s{\"op\":\"%s\",\"nodes\":%d,\"ms\":%.4f,\"share\":%.4f}", first ? "" : ",", op, nodes,
                ms, pct / 100);
        first = 0;
    }
    fprintf(w->metrics, "]}\n");
    fflush(w->metrics);
    free(text);
    w->prof_done = 1;
    const char *env = getenv("KILN_PROFILE"); /* KILN_PROFILE=N > 0 keeps its end-of-run table (core/exec.c) */
    if (!env || atoi(env) <= 0) kl_graph_profile(g, 0);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void grad_check(train_watch *w, double norm, int64_t step)
{
    double v[WATCH_NORMS];
    if (!isfinite(norm)) return; /* the NaN watch explains those */
    if (w->n_norms >= 8) {
        memcpy(v, w->norms, (size_t)w->n_norms * sizeof *v);
        qsort(v, (size_t)w->n_norms, sizeof *v, cmp_double);
        double med = w->n_norms % 2 ? v[w->n_norms / 2] : 0.5 * (v[w->n_norms / 2 - 1] + v[w->n_norms / 2]);
        if (med > 0 && norm > w->grad_warn * med) {
            w->grad_warnings++;
            if (w->grad_warnings <= 20)
                printf("warning: step %lld: gradient norm %.4g is %.1f times its running median %.4g "
                       "(train.grad_norm_warn %g)%s\n",
                       (long long)step, norm, norm / med, med, w->grad_warn,
                       w->grad_warnings == 20 ? "; further ones only in metrics.jsonl" : "");
            fprintf(w->metrics,
                    "{\"type\":\"warning\",\"kind\":\"grad_norm\",\"step\":%lld,\"grad_norm\":%.6g,\"median\":%.6g,"
                    "\"ratio\":%.4f}\n",
                    (long long)step, norm, med, norm / med);
        }
    }
    w->norms[w->at_norm] = norm;
    w->at_norm = (w->at_norm + 1) % WATCH_NORMS;
    if (w->n_norms < WATCH_NORMS) w->n_norms++;
}

void watch_step(train_watch *w, kl_graph *g, double grad_norm, int64_t step, double step_s, double wait_s)
{
    if (w->profile_steps && !w->prof_done) {
        w->prof_n++;
        w->prof_step_s += step_s;
        w->prof_wait_s += wait_s;
        if (w->prof_n >= w->profile_steps) profile_out(w, g, step);
    }
    if (w->grad_warn > 0 && isfinite(grad_norm)) grad_check(w, grad_norm, step); /* not finite: a loss-scale overflow */
}

void watch_end(train_watch *w, kl_graph *g, int64_t step)
{
    if (w->profile_steps && !w->prof_done && w->prof_n) profile_out(w, g, step);
}

int watch_eval(train_watch *w, int64_t epoch, int64_t step, double loss, int is_val)
{
    if (w->patience <= 0 || !isfinite(loss)) return 0;
    const char *what = is_val ? "validation loss" : "training loss (no validation set)";
    if (loss < w->best - 1e-4 * fabs(w->best) || !isfinite(w->best)) { /* improved by more than 0.01 % */
        w->best = loss;
        w->best_epoch = epoch;
        w->bad = 0;
        return 0;
    }
    w->bad++;
    if (w->bad < w->patience) return 0;
    if (w->early_stop) { /* instead of the warning */
        printf("early stop at epoch %lld, step %lld: the %s has not improved for %lld evaluations "
               "(best %.4f at epoch %lld; train.plateau_patience %lld)\n",
               (long long)epoch, (long long)step, what, (long long)w->bad, w->best, (long long)w->best_epoch,
               (long long)w->patience);
        fprintf(w->metrics, "{\"type\":\"early_stop\",\"epoch\":%lld,\"step\":%lld,\"evaluations\":%lld,\"best\":%.9g,"
                "\"best_epoch\":%lld}\n", (long long)epoch, (long long)step, (long long)w->bad, w->best,
                (long long)w->best_epoch);
        return 1;
    }
    fprintf(w->metrics,
            "{\"type\":\"warning\",\"kind\":\"plateau\",\"epoch\":%lld,\"step\":%lld,\"evaluations\":%lld,"
            "\"best\":%.9g,\"best_epoch\":%lld}\n",
            (long long)epoch, (long long)step, (long long)w->bad, w->best, (long long)w->best_epoch);
    printf("warning: the %s has not improved for %lld evaluations (best %.4f at epoch %lld; train.plateau_patience "
           "%lld; train.early_stop: true would stop here)\n",
           what, (long long)w->bad, w->best, (long long)w->best_epoch, (long long)w->patience);
    return 0;
}

/* "v1 best=<hex> best_epoch=N bad=N warnings=N norms=COUNT@AT:<hex>,<hex>..."
 * (hex floats read back exactly; the norms in ring order). */
void watch_save(const train_watch *w, char *out, size_t n)
{
    int len = snprintf(out, n, "v1 best=%a best_epoch=%lld bad=%lld warnings=%lld norms=%d@%d:", w->best,
                       (long long)w->best_epoch, (long long)w->bad, (long long)w->grad_warnings, w->n_norms,
                       w->at_norm);
    for (int i = 0; i < w->n_norms && len > 0 && (size_t)len < n; i++)
        len += snprintf(out + len, n - (size_t)len, "%s%a", i ? "," : "", w->norms[i]);
}

/* Reads "key=" then an integer at *p; 0 when absent or malformed. */
static int take_int(const char **p, const char *key, long long lo, long long hi, long long *v)
{
    size_t k = strlen(key);
    if (strncmp(*p, key, k)) return 0;
    char *end;
    errno = 0;
    *v = strtoll(*p + k, &end, 10);
    if (end == *p + k || errno || *v < lo || *v > hi) return 0;
    *p = end;
    return 1;
}

kl_status watch_restore(train_watch *w, const char *text, const char *ckpt)
{
    if (!text[0]) return KL_OK;
    train_watch t = *w;
    const char *p = text;
    long long be, bad, gw, nn, at;
    char *end;
    int ok = !strncmp(p, "v1 best=", 8);
    if (ok) {
        t.best = strtod(p + 8, &end);
        ok = end != p + 8 && !isnan(t.best);
        p = end;
    }
    ok = ok && take_int(&p, " best_epoch=", 0, INT64_MAX, &be) && take_int(&p, " bad=", 0, INT64_MAX, &bad) &&
         take_int(&p, " warnings=", 0, INT64_MAX, &gw) && take_int(&p, " norms=", 0, WATCH_NORMS, &nn) &&
         take_int(&p, "@", 0, WATCH_NORMS - 1, &at) && *p++ == ':';
    for (int i = 0; ok && i < nn; i++) {
        if (i && *p++ != ',') ok = 0;
        else {
            t.norms[i] = strtod(p, &end);
            ok = end != p && isfinite(t.norms[i]);
            p = end;
        }
    }
    if (!ok || *p)
        return kl_fail(KL_EFORMAT, "%s: metadata 'train_watch' is malformed near '%.40s'", ckpt, ok ? p : text);
    t.best_epoch = be, t.bad = bad, t.grad_warnings = gw, t.n_norms = (int)nn, t.at_norm = (int)at;
    *w = t;
    return KL_OK;
}

kl_status watch_scaler(const kl_optim *opt, const train_opts *o, char *line, size_t nl, char *json, size_t nj)
{
    line[0] = json[0] = 0;
    if (!(o->optim.loss_scale > 0)) return KL_OK;
    double S;
    int64_t good, skipped;
    KL_TRY(kl_optim_scaler(opt, &S, &good, &skipped)); /* as of the last synchronisation (on a GPU) */
    snprintf(line, nl, "  loss scale %g, %lld update%s skipped", S, (long long)skipped, skipped == 1 ? "" : "s");
    snprintf(json, nj, ",\"loss_scale\":%.17g,\"skipped_updates\":%lld", S, (long long)skipped);
    return KL_OK;
}
