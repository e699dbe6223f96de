/* The training loop for language models on text (see train_text.h). One
 * optimizer step = one batch (train.accumulate K: K batches) of B random
 * windows of T+1 tokens from the training part of the corpus, each drawn
 * by kl_tokens_batch(seed, run): the run number alone fixes the batch, so
 * a resumed run (same parameters, optimizer state and dropout counter)
 * logs the same losses bit for bit. */
#include "cli/train_text.h"
#include "cli/evaluator.h"
#include "cli/plan.h"
#include "cli/train_monitor.h"
#include "cli/train_opts.h"
#include "cli/train_watch.h"
#include "core/error.h"
#include "io/fileio.h"
#include "kiln/text.h"
#include "nn/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define VAL_SEED_SALT 0x76616c69646174ull /* validation windows: their own fixed stream */

typedef struct {
    train_opts o;
    train_monitor mon;
    kl_model *model;
    kl_ctx *ctx;
    kl_optim *opt;
    step_graph train;
    text_corpus c; /* the corpus, its split, a batch and the validation graph */
    char run_dir[4096], ckpt_root[4200];
    FILE *metrics;
    double t0;
    train_watch watch; /* --profile, plateau and gradient-norm warnings (cli/train_watch.h) */
    kl_train_state st; /* where training starts (a checkpoint's with --resume) */
    int early_stopped;
    int metrics_bad; /* a write to metrics.jsonl failed (train_metrics_flush) */
} lm_runner;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int train_text_wanted(const kl_cfg *cfg)
{
    const char *k = kl_cfg_str_value(kl_cfg_at(kl_cfg_root(cfg), "data.kind"));
    return k && !strcmp(k, "text");
}

kl_status text_corpus_load(text_corpus *c, kl_cfg *cfg, const train_opts *o, const char *vocab_path)
{
    kl_text *text = NULL;
    KL_TRY(kl_text_load_dir(o->path, &text));
    kl_status s = vocab_path ? kl_vocab_load(vocab_path, &c->vocab)
                             : kl_vocab_build(kl_text_data(text), kl_text_size(text), &c->vocab);
    c->crc = kl_crc32(0, kl_text_data(text), kl_text_size(text));
    if (s == KL_OK) {
        s = kl_tokens_encode(c->vocab, kl_text_data(text), kl_text_size(text), &c->tok);
        if (s != KL_OK && vocab_path) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", kl_last_error());
            s = kl_fail(s, "data.path %s: %s (the vocabulary is the checkpoint's %s)", o->path, msg, vocab_path);
        }
    }
    kl_text_free(text);
    KL_TRY(s);
    int V = kl_vocab_size(c->vocab);
    kl_cfg_node *vn = kl_cfg_at(kl_cfg_root(cfg), "model.vocab");
    const char *vt = kl_cfg_str_value(vn);
    if (!vn || kl_cfg_kind_of(vn) == KL_CFG_NULL || (vt && !strcmp(vt, "auto"))) { /* null: absent, as kiln plan reads it */
        char v[16];
        snprintf(v, sizeof v, "%d", V);
        return kl_cfg_set_scalar(cfg, "model.vocab", v);
    }
    int64_t given;
    KL_TRY(kl_cfg_int(kl_cfg_at(kl_cfg_root(cfg), "model"), "vocab", 1, 0, &given));
    if (given < V)
        return kl_cfg_fail(vn, KL_EINVAL, "model.vocab %lld is smaller than the corpus's %d distinct characters (%s); use auto",
                           (long long)given, V, o->path);
    return KL_OK;
}

kl_status text_corpus_split(text_corpus *c, const train_opts *o, int64_t T)
{
    int64_t n = kl_tokens_count(c->tok);
    c->T = T;
    c->n_val = (int64_t)((double)n * o->val_fraction);
    c->n_train = n - c->n_val;
    if (c->n_train < T + 1)
        return kl_fail(KL_EINVAL, "data.path %s: the training part has %lld characters, fewer than one window of "
                       "model.input.tokens + 1 = %lld", o->path, (long long)c->n_train, (long long)(T + 1));
    if ((c->n_val || o->val_fraction > 0) && c->n_val < T + 1) /* a fraction rounding to 0 characters too */
        return kl_fail(KL_EINVAL, "data.path %s: the held-out tail (val_fraction %g) has %lld characters, fewer than one "
                       "window of %lld; raise data.val_fraction or shorten the context", o->path, o->val_fraction,
                       (long long)c->n_val, (long long)(T + 1));
    return KL_OK;
}

kl_status text_corpus_graphs(text_corpus *c, kl_model *model, kl_ctx *ctx, int64_t batch)
{
    size_t n = (size_t)(batch * c->T);
    if (c->n_val) KL_TRY(step_graph_build(&c->val, model, ctx, NULL, batch));
    c->x = malloc(n * sizeof *c->x);
    c->y = malloc(n * sizeof *c->y);
    if (!c->x || !c->y) return kl_fail(KL_ENOMEM, "out of memory for a batch of %zu tokens", n);
    return KL_OK;
}

kl_status text_validate(text_corpus *c, const train_opts *o, kl_model *model, double *loss)
{
    double sum = 0;
    int64_t dummy = 0;
    for (int64_t k = 0; k < o->val_batches; k++) {
        KL_TRY(kl_tokens_batch(c->tok, c->n_train, c->n_val, o->seed ^ VAL_SEED_SALT, k, o->batch, c->T, c->x, c->y));
        KL_TRY(step_graph_run(&c->val, model, c->x, c->y, &sum, &dummy, NULL, NULL));
    }
    *loss = sum / (double)(o->val_batches * c->val.rows);
    return KL_OK;
}

void text_corpus_free(text_corpus *c)
{
    step_graph_free(&c->val);
    kl_tokens_free(c->tok);
    kl_vocab_free(c->vocab);
    free(c->x);
    free(c->y);
    *c = (text_corpus){0};
}

kl_status text_vocab_path(const char *ckpt_dir, char *out, size_t n)
{
    snprintf(out, n, "%s/vocab.txt", ckpt_dir);
    if (access(out, F_OK) != 0) snprintf(out, n, "%s/../../vocab.txt", ckpt_dir);
    if (access(out, F_OK) != 0)
        return kl_fail(KL_EIO, "%s: no vocab.txt in the checkpoint or its run directory", ckpt_dir);
    return KL_OK;
}

/* A resumed run trains on the checkpoint's corpus (older checkpoints do
 * not record it): another text of the same characters would go on with
 * other windows. */
static kl_status same_corpus(lm_runner *r, const train_args *a)
{
    char what[4200];
    snprintf(what, sizeof what, "data.path %s", r->o.path);
    return train_same_data(a, &r->st, what, "characters", kl_tokens_count(r->c.tok), r->c.crc, "windows");
}

static kl_status run_dir_open(lm_runner *r, kl_cfg *cfg, const train_args *a)
{
    char path[4300];
    KL_TRY(train_run_dir_open(a, r->o.name, cfg, r->run_dir, r->ckpt_root, &r->metrics));
    snprintf(path, sizeof path, "%s/vocab.txt", r->run_dir);
    KL_TRY(kl_vocab_save(r->c.vocab, path));
    KL_TRY(train_monitor_open(&r->mon, r->run_dir, r->ctx, r->opt, r->metrics, r->t0, a->resume ? r->st.step : -1));
    KL_TRY(watch_init(&r->watch, &r->o, r->train.g, r->metrics));
    return a->resume ? watch_restore(&r->watch, r->st.watch, a->ckpt_dir) : KL_OK;
}

static kl_status setup(lm_runner *r, kl_cfg *cfg, const train_args *a)
{
    kl_cfg_node *model;
    KL_TRY(monitor_cfg_read(cfg, &r->mon.o));
    KL_TRY(train_opts_read(cfg, &r->o));
    kl_cfg_node *in = kl_cfg_at(kl_cfg_root(cfg), "model.input");
    if (in && kl_cfg_kind_of(in) != KL_CFG_MAP)
        return kl_cfg_fail(in, KL_EINVAL,
                           "data.kind text trains token models: set model.input to {tokens: T} and start with an embedding");
    char vp[4200]; /* resuming: the checkpoint's vocabulary (ids must not move), else the corpus's */
    snprintf(vp, sizeof vp, "%s/vocab.txt", a->ckpt_dir);
    KL_TRY(text_corpus_load(&r->c, cfg, &r->o, a->resume && access(vp, F_OK) == 0 ? vp : NULL));
    KL_TRY(kl_cfg_get_map(kl_cfg_root(cfg), "model", 1, &model));
    KL_TRY(kl_model_from_cfg(model, &r->model));
    KL_TRY(kl_model_set_precision(r->model, r->o.precision));
    KL_TRY(text_corpus_split(&r->c, &r->o, kl_model_tokens(r->model)));
    KL_TRY(plan_open_ctx(a->device, r->model, &r->o.optim, (int)r->o.threads, 0, r->o.seed, cfg, &r->o.batch, NULL,
                         &r->ctx)); /* every batch whole: no partial step */
    KL_TRY(kl_optim_new(r->ctx, &r->o.optim, &r->opt));
    KL_TRY(step_graph_build(&r->train, r->model, r->ctx, r->opt, r->o.batch));
    KL_TRY(text_corpus_graphs(&r->c, r->model, r->ctx, r->o.batch));
    if (a->init) KL_TRY(kl_weights_load(a->init, r->ctx));
    KL_TRY(train_state_start(a, cfg, &r->o, r->ctx, r->opt, &r->st)); /* before the run directory is touched */
    KL_TRY(same_corpus(r, a));
    return run_dir_open(r, cfg, a);
}

static void teardown(lm_runner *r)
{
    if (r->train.g) kl_graph_profile_print(r->train.g, stderr);
    train_monitor_close(&r->mon);
    train_metrics_close(&r->metrics, r->run_dir, &r->metrics_bad);
    step_graph_free(&r->train);
    text_corpus_free(&r->c);
    kl_optim_free(r->opt);
    kl_ctx_free(r->ctx);
    kl_model_free(r->model);
}

/* The epoch's step losses so far; n0 of the n came from a checkpoint. */
typedef struct { double sum; int64_t n, n0; } mean_acc;

/* <dir>/vocab.txt, into a checkpoint's directory before it is published. */
static kl_status save_vocab(const char *dir, void *vocab)
{
    char vp[4500];
    snprintf(vp, sizeof vp, "%s/vocab.txt", dir);
    return kl_vocab_save(vocab, vp);
}

/* A checkpoint with the epoch so far, the vocabulary beside model.safetensors. */
static kl_status save_ckpt(lm_runner *r, kl_cfg *cfg, const kl_train_state *st, const mean_acc *ep, char *path, size_t n)
{
    kl_train_state s = *st;
    s.epoch_loss_sum = ep->sum, s.epoch_count = ep->n;
    s.extra_files = save_vocab, s.extra_arg = r->c.vocab;
    return train_ckpt_save(r->ckpt_root, cfg, r->ctx, r->opt, &r->watch, &s, path, n);
}

/* "loss":L,"perplexity":P,"bpc":B with a key prefix ("" or "val_"). */
static void lm_fields(FILE *f, const char *pre, double l)
{
    double ppl = exp(l); /* overflows past a loss of 709: JSON has no inf, so null */
    fprintf(f, "\"%sloss\":" MON_LOSS ",\"%sperplexity\":", pre, l, pre);
    if (isfinite(ppl)) fprintf(f, MON_LOSS, ppl);
    else fputs("null", f);
    fprintf(f, ",\"%sbpc\":%.9g", pre, l / M_LN2);
}


/* End of an epoch (steps_per_epoch steps, or the last step): validation,
 * the epoch's metrics line, the plateau watch (which may stop the run
 * early), then a checkpoint. A run whose last step falls mid-epoch ends
 * with a partial record (marked "partial":true) of the epoch's steps so
 * far; the epoch goes on in its checkpoint (the sum so far, not a new
 * epoch) and is no plateau evaluation, so a run extended with --resume
 * --steps logs the uninterrupted run's records at the epoch's end. */
static kl_status end_epoch(lm_runner *r, kl_cfg *cfg, const kl_train_state *st, int tty, mean_acc *ep, char *ck, size_t n)
{
    double vl = 0, l = ep->n ? ep->sum / (double)ep->n : 0;
    int64_t epoch = (st->step - 1) / r->o.steps_per_epoch + 1;
    int whole = st->step % r->o.steps_per_epoch == 0;
    if (r->c.n_val) KL_TRY(nan_watch_eval(text_validate(&r->c, &r->o, r->model, &vl), "validation", st->step, r->metrics));
    if (tty) fprintf(stderr, "\n");
    char part[64] = "";
    if (!whole) snprintf(part, sizeof part, ", partial: %lld of %lld steps", (long long)ep->n, (long long)r->o.steps_per_epoch);
    printf("epoch %lld (step %lld%s): train loss %.4f bpc %.3f", (long long)epoch, (long long)st->step, part, l,
           l / M_LN2);
    if (r->c.n_val) printf("  val loss %.4f perplexity %.3f bpc %.3f", vl, exp(vl), vl / M_LN2);
    char sc_line[96], scaler[96];
    KL_TRY(watch_scaler(r->opt, &r->o, sc_line, sizeof sc_line, scaler, sizeof scaler));
    printf("%s  (%.1f s)\n", sc_line, now() - r->t0);
    fflush(stdout);
    fprintf(r->metrics, "{\"type\":\"epoch\",\"epoch\":%lld,\"step\":%lld,%s", (long long)epoch, (long long)st->step,
            whole ? "" : "\"partial\":true,");
    lm_fields(r->metrics, "", l);
    if (r->c.n_val) {
        fputc(',', r->metrics);
        lm_fields(r->metrics, "val_", vl);
    }
    fprintf(r->metrics, ",\"lr\":" MON_LOSS ",\"wall_s\":%.3f%s}\n", kl_optim_lr(r->opt), now() - r->t0, scaler);
    int64_t samples = (ep->n - ep->n0) * r->o.batch * r->o.optim.accumulate; /* this process's: its energy */
    train_monitor_epoch(&r->mon, epoch, st->step, samples, l, NAN, r->c.n_val > 0, vl, NAN, kl_optim_lr(r->opt));
    train_metrics_flush(r->metrics, r->run_dir, &r->metrics_bad);
    if (whole) {
        *ep = (mean_acc){0};
        r->early_stopped = watch_eval(&r->watch, epoch, st->step, r->c.n_val ? vl : l, r->c.n_val > 0);
    }
    KL_TRY(save_ckpt(r, cfg, st, ep, ck, n)); /* with the watch's state after this evaluation */
    if (r->early_stopped) printf("stopped early; checkpoint %s\n", ck);
    return KL_OK;
}

static kl_status loop(lm_runner *r, kl_cfg *cfg, const train_args *a, volatile sig_atomic_t *stop, int *interrupted)
{
    kl_train_state st = r->st;
    KL_TRY(kl_graph_set_runs(r->train.g, st.graph_runs));
    if (a->resume) printf("resumed from %s at step %lld\n", a->ckpt_dir, (long long)st.step);
    int64_t spe = r->o.steps_per_epoch, total = r->o.steps ? r->o.steps : r->o.epochs * spe;
    int64_t K = r->o.optim.accumulate, B = r->o.batch * K; /* sequences a step */
    int tty = isatty(2);
    mean_acc ep = {st.epoch_loss_sum, st.epoch_count, st.epoch_count}, win = {0}; /* a resumed epoch's steps so far */
    double t_win = now();
    char ck[4400];
    if (a->resume && st.step >= total) train_say_finished(st.step, total);
    while (st.step < total && !r->early_stopped) {
        double l = 0, t_start = now(), t_data = 0;
        KL_TRY(kl_optim_set_lr(r->opt, train_lr(&r->o, st.step, total)));
        /* K batches a step (train.accumulate), each chosen by its run number */
        for (int64_t k = 0; k < K; k++) {
            double t0 = now(), lk = 0;
            int64_t dummy = 0;
            KL_TRY(kl_tokens_batch(r->c.tok, 0, r->c.n_train, r->o.seed, (int64_t)st.graph_runs, r->o.batch, r->c.T, r->c.x,
                                   r->c.y));
            t_data += now() - t0;
            kl_status rs = step_graph_run(&r->train, r->model, r->c.x, r->c.y, &lk, &dummy, NULL, NULL);
            /* a non-finite loss, or (the step's last batch) a gradient norm that halted the optimizer: it
             * skipped the update, and the NaN watch re-runs this batch from the parameters it kept */
            if (rs == KL_ENUMERIC || (rs == KL_OK && k == K - 1 && kl_optim_halted(r->opt))) {
                nan_step ns = {.model = r->model, .ctx = r->ctx, .opt = r->opt, .cfg = cfg, .x = r->c.x, .y = r->c.y,
                               .batch = r->o.batch, .step = st.step + 1, .runs = st.graph_runs,
                               .grad_norm = rs == KL_OK ? kl_optim_last_grad_norm(r->opt) : 0, .metrics = r->metrics};
                train_metrics_flush(r->metrics, r->run_dir, &r->metrics_bad);
                kl_status ws = nan_watch_after(&r->mon.nan, rs, &ns);
                return ws != KL_OK ? ws : kl_fail(KL_ENUMERIC, "step %lld: training diverged (the optimizer halted)",
                                                  (long long)st.step + 1);
            }
            KL_TRY(rs);
            st.graph_runs++;
            l += lk / (double)r->train.rows / (double)K;
        }
        st.step++;
        st.epoch = st.step / spe;
        st.batch = st.step % spe;
        ep.sum += l, ep.n++, win.sum += l, win.n++;
        int64_t epoch = (st.step - 1) / spe + 1;
        fprintf(r->metrics, "{\"type\":\"step\",\"step\":%lld,\"epoch\":%lld,", (long long)st.step, (long long)epoch);
        lm_fields(r->metrics, "", l);
        /* under dynamic loss scaling a non-finite norm is an overflow: the update was skipped */
        int overflow = r->o.optim.scale_window > 0 && !isfinite(kl_optim_last_grad_norm(r->opt));
        fprintf(r->metrics, ",\"lr\":" MON_LOSS ",\"wall_s\":%.3f%s}\n", kl_optim_lr(r->opt), now() - r->t0,
                overflow ? ",\"overflow\":true" : "");
        train_monitor_step(&r->mon, st.step, B, l, NAN, kl_optim_lr(r->opt)); /* NAN: no accuracy */
        train_monitor_scalar(&r->mon, "train/perplexity", st.step, MON_LOSS, exp(l));
        /* the batch is cut on the host before the step: that is its data wait */
        watch_step(&r->watch, r->train.g, kl_optim_last_grad_norm(r->opt), st.step, now() - t_start, t_data);
        if (st.step % r->o.log_every == 0 || st.step == total) {
            double t = now(), wps = (double)(win.n * B) / (t - t_win), ml = win.sum / (double)win.n;
            double eta = wps > 0 ? (double)((total - st.step) * B) / wps : 0;
            char tel[160];
            fprintf(r->metrics, "{\"type\":\"throughput\",\"step\":%lld,\"samples_per_s\":" MON_RATE
                    ",\"tokens_per_s\":" MON_RATE "}\n", (long long)st.step, wps, wps * (double)r->c.T);
            train_monitor_scalar(&r->mon, "train/tokens_per_s", st.step, MON_RATE, wps * (double)r->c.T);
            train_monitor_throughput(&r->mon, st.step, wps);
            train_monitor_progress(&r->mon, tel, sizeof tel);
            if (tty)
                fprintf(stderr, "\r  epoch %lld  step %lld/%lld  loss %.4f  bpc %.3f  %.0f tokens/s  ETA %dm%02ds%s   ",
                        (long long)epoch, (long long)st.step, (long long)total, ml, ml / M_LN2, wps * (double)r->c.T,
                        (int)eta / 60, (int)eta % 60, tel);
            else
                printf("epoch %lld step %lld/%lld loss %.4f bpc %.3f tokens/s %.0f eta %.0fs%s\n", (long long)epoch,
                       (long long)st.step, (long long)total, ml, ml / M_LN2, wps * (double)r->c.T, eta, tel);
            fflush(tty ? stderr : stdout);
            win = (mean_acc){0}, t_win = t;
        }
        double t_off = now(); /* validation and checkpoints: not in the throughput window */
        if (st.step % spe == 0 || st.step == total) KL_TRY(end_epoch(r, cfg, &st, tty, &ep, ck, sizeof ck));
        else if (r->o.checkpoint_every && st.step % r->o.checkpoint_every == 0) {
            train_metrics_flush(r->metrics, r->run_dir, &r->metrics_bad);
            KL_TRY(save_ckpt(r, cfg, &st, &ep, ck, sizeof ck));
        }
        t_win += now() - t_off;
        if (*stop) {
            train_metrics_flush(r->metrics, r->run_dir, &r->metrics_bad);
            KL_TRY(save_ckpt(r, cfg, &st, &ep, ck, sizeof ck));
            train_say_interrupted(tty, st.step, ck, r->run_dir);
            *interrupted = 1;
            break;
        }
    }
    watch_end(&r->watch, r->train.g, st.step); /* --profile N beyond the last step */
    printf("sample from it with: kiln generate %s --prompt \"...\"\n", r->run_dir);
    return KL_OK;
}

int train_text_run(kl_cfg *cfg, const train_args *a, volatile sig_atomic_t *stop)
{
    lm_runner r = {0};
    r.t0 = now();
    int interrupted = 0;
    kl_status s = setup(&r, cfg, a);
    if (s == KL_OK) {
        printf("model %s: %lld parameters; corpus %s: %lld characters, vocabulary %d; %lld training, %lld held out; "
               "batch %lld x %lld tokens\n", r.o.name, (long long)kl_model_param_count(r.model), r.o.path,
               (long long)kl_tokens_count(r.c.tok), kl_vocab_size(r.c.vocab), (long long)r.c.n_train, (long long)r.c.n_val,
               (long long)r.o.batch, (long long)r.c.T);
        printf("run directory: %s (first step after %.2f s)\n", r.run_dir, now() - r.t0);
        fflush(stdout);
        s = loop(&r, cfg, a, stop, &interrupted);
        if (s == KL_OK) train_monitor_end(&r.mon);
    }
    teardown(&r);
    return train_exit_code(s, interrupted ? (int)*stop : 0, r.metrics_bad, r.run_dir);
}
