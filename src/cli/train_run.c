/* The training loop: graphs for training and evaluation sharing one ctx,
 * the training set kept in device memory (or, when it does not fit, streamed
 * from a prefetching loader through pinned slots), per-step metrics,
 * per-epoch validation (from device memory too), checkpoints
 * and exact resume (same parameters, optimizer state, data position and
 * dropout counter give the same losses, bit for bit, on the CPU).
 *
 * Steps are issued without waiting for the device: each step's loss,
 * correct count and gradient norm come back through a read-back ring and
 * are handled (metrics, monitoring, the NaN watch) when they arrive, up to
 * PIPE_DEPTH steps later on a GPU and at once on the CPU. Epoch ends,
 * checkpoints and interrupts drain the pipeline first. */
#include "cli/train_run.h"
#include "optim/optim_impl.h" /* kl_optim_needs_norm */
#include "cli/train_opts.h"
#include "cli/evaluator.h"
#include "cli/train_monitor.h"
#include "cli/train_watch.h"
#include "cli/plan.h"
#include "cli/train_text.h" /* sequence models: data.kind text */
#include "core/error.h"
#include "io/fileio.h"
#include "nn/model.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Steps in flight at most on a GPU (each read-back ring holds PIPE_RING). */
#define PIPE_DEPTH 32
#define PIPE_RING 64

typedef struct {
    train_opts o;
    kl_model *model;
    kl_ctx *ctx;
    kl_optim *opt;
    step_graph train, train_rest; /* full batches, and a last partial one */
    evaluator eval;
    kl_dataset *tr, *va, *te;
    train_data d;       /* where the datasets live on the device (cli/train_opts.h) */
    plan_budget budget; /* the step's memory and the limit, where checked */
    char run_dir[4096], ckpt_root[4200];
    FILE *metrics;
    double t0;
    train_monitor mon; /* monitoring: TensorBoard, telemetry (cli/train_monitor.h) */
    train_watch watch; /* --profile, plateau and gradient-norm warnings (cli/train_watch.h) */
    int early_stopped;
    int finished;      /* resumed at its last step: nothing left to train */
    int metrics_bad;   /* a write to metrics.jsonl failed (train_metrics_flush) */
    kl_train_state st; /* where training starts (a checkpoint's with --resume) */
} runner;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The epoch so far; n0 of its n samples came from a checkpoint (not timed). */
typedef struct { double loss, t0; int64_t correct, n, n0; } epoch_acc;

/* A checkpoint of st with the epoch so far (its metrics line after a resume). */
static kl_status save_ckpt(runner *r, kl_cfg *cfg, const kl_train_state *st, const epoch_acc *ep, char *path, size_t n)
{
    kl_train_state s = *st;
    s.epoch_loss_sum = ep->loss, s.epoch_count = ep->n, s.epoch_correct = ep->correct;
    return train_ckpt_save(r->ckpt_root, cfg, r->ctx, r->opt, &r->watch, &s, path, n);
}

kl_status train_ckpt_save(const char *ckpt_root, kl_cfg *cfg, kl_ctx *ctx, kl_optim *opt, const train_watch *w,
                          const kl_train_state *st, char *path, size_t n)
{
    char tag[64], *text = NULL;
    kl_train_state ws = *st;
    watch_save(w, ws.watch, sizeof ws.watch);
    snprintf(tag, sizeof tag, "step-%09lld", (long long)st->step);
    KL_TRY(kl_cfg_to_string(cfg, &text));
    kl_status s = kl_checkpoint_save(ckpt_root, tag, ctx, opt, &ws, text, path, n);
    free(text);
    int64_t keep = 0; /* train.keep_checkpoints, checked by train_opts_read */
    if (s == KL_OK) s = kl_cfg_int(kl_cfg_at(kl_cfg_root(cfg), "train"), "keep_checkpoints", 0, 0, &keep);
    return s == KL_OK ? kl_checkpoint_prune(ckpt_root, keep) : s;
}

/* A resumed run must cut its data as the checkpointed one did: batch
 * positions and step counts are in units of train.batch and
 * train.accumulate, and they index a training set that data.kind, limit,
 * val_split, drop_last and shuffle (and, for text, val_fraction) shape and
 * train.seed orders (the held-out split, each epoch's shuffle, text batches).
 * A text run's epochs are train.steps_per_epoch steps: the checkpoint's
 * epoch loss so far belongs to its epoch, which other boundaries would cut
 * elsewhere (image runs have no such key), and its batches are windows of
 * model.input.tokens + 1 (the corpus itself: train_text.c's same_corpus).
 * Compared as the checkpoint's own
 * config.yaml resolved them; keys older checkpoints lack are not compared
 * (except accumulate: 1). */
static kl_status same_cuts(const train_args *a, const kl_cfg *cfg, const kl_train_state *st, const kl_cfg *c)
{
    static const char *const keys[] = {"train.batch", "train.accumulate", "train.seed", "train.steps_per_epoch",
                                       "data.kind", "data.limit", "data.val_split", "data.drop_last", "data.shuffle",
                                       "data.val_fraction", "model.input.tokens"};
    kl_status s = KL_OK;
    for (size_t i = 0; i < sizeof keys / sizeof *keys && s == KL_OK; i++) {
        const char *was = kl_cfg_str_value(kl_cfg_at(kl_cfg_root(c), keys[i]));
        const char *now = kl_cfg_str_value(kl_cfg_at(kl_cfg_root(cfg), keys[i]));
        if (!was && !strcmp(keys[i], "train.accumulate")) was = "1";
        if (!was || !now || !strcmp(was, now)) continue;
        char wb[40], nb[40]; /* floats as written, not as the %.17g write-back */
        const char *why = strcmp(keys[i], "model.input.tokens") ? "its batch positions and step counts would not line up"
                                                                 : "its batches would be other windows";
        s = kl_fail(KL_EINVAL,
                    "--resume %s: this run has %s %s, the checkpoint (step %lld, epoch %lld, batch %lld) was trained "
                    "with %s: %s; resume with the checkpoint's value (or start a new run from its weights with --init)",
                    a->ckpt_dir, keys[i], kl_cfg_shown(now, nb, sizeof nb), (long long)st->step,
                    (long long)st->epoch + 1, (long long)st->batch, kl_cfg_shown(was, wb, sizeof wb), why);
    }
    return s;
}

kl_status train_same_data(const train_args *a, kl_train_state *st, const char *what, const char *unit, int64_t n,
                          uint32_t hash, const char *batches)
{
    if (a->resume && st->data_count && (st->data_count != n || st->data_hash != hash))
        return kl_fail(KL_EINVAL,
                       "--resume %s: %s holds %lld %s (CRC-32 %08x), the checkpoint (step %lld) was trained on %lld "
                       "(CRC-32 %08llx): its batches would be other %s; resume on the checkpoint's data (or start a "
                       "new run from its weights with --init)",
                       a->ckpt_dir, what, (long long)n, unit, (unsigned)hash, (long long)st->step,
                       (long long)st->data_count, (unsigned long long)st->data_hash, batches);
    st->data_count = n, st->data_hash = hash;
    return KL_OK;
}

/* Whether the checkpoint's run scaled its loss dynamically (loss_scale
 * dynamic, or auto / absent with precision f16). */
static int was_dynamic(const kl_cfg *c)
{
    const char *ls = kl_cfg_str_value(kl_cfg_at(kl_cfg_root(c), "train.loss_scale"));
    const char *p = kl_cfg_str_value(kl_cfg_at(kl_cfg_root(c), "train.precision"));
    if (ls && !strcmp(ls, "dynamic")) return 1;
    return (!ls || !strcmp(ls, "auto")) && p && !strcmp(p, "f16");
}

/* The checkpoint's loss scale goes on only from dynamic scaling to dynamic
 * scaling. A run resumed with dynamic scaling from one without it
 * (--precision f16 on an f32 run) starts from loss_scale_init, not the
 * checkpoint's 1; one resumed with a fixed scale takes that scale. */
static kl_status fresh_scaler(const train_opts *o, const kl_cfg *c, kl_optim *opt)
{
    int64_t skipped;
    if (!opt || o->optim.loss_scale <= 0) return KL_OK;
    if (o->optim.scale_window > 0 && was_dynamic(c)) return KL_OK;
    KL_TRY(kl_optim_scaler(opt, NULL, NULL, &skipped));
    return kl_optim_set_scaler(opt, o->optim.loss_scale, 0, skipped);
}

kl_status train_state_start(const train_args *a, const kl_cfg *cfg, const train_opts *o, kl_ctx *ctx, kl_optim *opt,
                            kl_train_state *st)
{
    static const char *const kinds[] = {"sgd", "adam", "adamw"};
    *st = (kl_train_state){.seed = o->seed};
    snprintf(st->optim_kind, sizeof st->optim_kind, "%s", kinds[o->optim.kind]);
    if (!a->resume) return KL_OK;
    char *text = NULL;
    kl_cfg *c = NULL;
    KL_TRY(kl_checkpoint_load(a->ckpt_dir, ctx, opt, st, &text));
    kl_status s = text ? kl_cfg_parse(text, strlen(text), "checkpoint config.yaml", &c) : KL_OK;
    free(text);
    if (s == KL_OK && c) s = same_cuts(a, cfg, st, c);
    if (s == KL_OK && c) s = fresh_scaler(o, c, opt);
    kl_cfg_free(c);
    return s;
}

/* The run directory of checkpoint <run>/checkpoints/<tag>, as messages
 * print it ("resume with: kiln train --resume runs/ic"): <run> cut out of
 * the path's text when that names the directory ckpt/../.. does (not when
 * a symlink leads elsewhere), else ckpt/../.. itself. */
static void run_dir_of(const char *ckpt, char *out, size_t n)
{
    snprintf(out, n, "%.4000s/../..", ckpt);
    size_t e = strlen(ckpt), b, e2, b2;
    while (e > 1 && ckpt[e - 1] == '/') e--;
    for (b = e; b > 0 && ckpt[b - 1] != '/';) b--; /* the tag: [b, e) */
    for (e2 = b; e2 > 0 && ckpt[e2 - 1] == '/';) e2--;
    for (b2 = e2; b2 > 0 && ckpt[b2 - 1] != '/';) b2--; /* its parent: [b2, e2) */
    int dots = (e - b == 1 && ckpt[b] == '.') || (e - b == 2 && !strncmp(ckpt + b, "..", 2));
    if (dots || e2 == b || e2 - b2 != 11 || strncmp(ckpt + b2, "checkpoints", 11)) return;
    while (b2 > 1 && ckpt[b2 - 1] == '/') b2--; /* the run: [0, b2); "/" or "." when that is all */
    char run[4096];
    if (!b2) snprintf(run, sizeof run, ".");
    else snprintf(run, sizeof run, "%.*s", (int)(b2 > 4000 ? 4000 : b2), ckpt);
    struct stat s1, s2;
    if (stat(run, &s1) == 0 && stat(out, &s2) == 0 && s1.st_dev == s2.st_dev && s1.st_ino == s2.st_ino)
        snprintf(out, n, "%s", run);
}

/* One kiln train per run directory: an flock on RUN/.lock, held until the
 * process exits (two runs would write each other's records and
 * checkpoints). */
static kl_status run_dir_lock(const char *run_dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/.lock", run_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return kl_fail(KL_EIO, "%s: cannot open: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        if (e == EWOULDBLOCK)
            return kl_fail(KL_EINVAL, "%s is in use by another kiln train (%s is locked); wait for it or choose another --out",
                           run_dir, path);
        return kl_fail(KL_EIO, "%s: cannot lock: %s", path, strerror(e));
    }
    return KL_OK; /* fd stays open: the lock lasts as long as the process */
}

kl_status train_run_dir_open(const train_args *a, const char *name, kl_cfg *cfg, char *run_dir, char *ckpt_root,
                             FILE **metrics)
{
    struct stat rs;
    char rck[4200];
    snprintf(rck, sizeof rck, "%s/checkpoints", a->resume_path ? a->resume_path : "");
    if (a->out) snprintf(run_dir, 4096, "%s", a->out);
    else if (a->resume && a->resume_path && stat(rck, &rs) == 0 && S_ISDIR(rs.st_mode))
        snprintf(run_dir, 4096, "%s", a->resume_path); /* --resume RUN: that path as written, even if checkpoints/ is a link */
    else if (a->resume) run_dir_of(a->ckpt_dir, run_dir, 4096); /* <run>/checkpoints/<tag> */
    else {
        char ts[32];
        time_t t = time(NULL);
        strftime(ts, sizeof ts, "%Y%m%d-%H%M%S", localtime(&t));
        snprintf(run_dir, 4096, "runs/%s-%.200s", ts, name);
    }
    snprintf(ckpt_root, 4200, "%s/checkpoints", run_dir);
    /* the longest path a checkpoint writes (kl_checkpoint_save's temporary directory, a file's temporary):
     * refused now, not at the first checkpoint an epoch later */
    static const char longest[] = "/.step-000000000.tmp/state.safetensors.tmp.4294967295";
    const char *want = a->out ? a->out : run_dir;
    if (strlen(want) + strlen("/checkpoints") + strlen(longest) > PATH_MAX - 1)
        return kl_fail(KL_EINVAL, "run directory %.200s...%.200s: %zu bytes, too long for its checkpoints' paths "
                       "(%s%s: at most %d bytes); choose a shorter --out", want, want + (strlen(want) > 200 ? strlen(want) - 200 : 0),
                       strlen(want), "checkpoints", longest, PATH_MAX - 1);
    KL_TRY(kl_mkdir_p(ckpt_root));
    KL_TRY(run_dir_lock(run_dir));
    char path[4300];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    struct stat ms;
    if (!a->resume && stat(path, &ms) == 0 && ms.st_size > 0) /* a new run would truncate the old one's records */
        return kl_fail(KL_EINVAL, "--out %s holds a run already (%s): continue it with --resume %s, or choose another --out",
                       run_dir, path, run_dir);
    snprintf(path, sizeof path, "%s/config.yaml", run_dir);
    KL_TRY(kl_cfg_write(cfg, path));
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    int cut = 0; /* a process killed mid-write left a partial last line: end it, so the next record starts a line */
    FILE *old = a->resume ? fopen(path, "rb") : NULL;
    if (old && fseek(old, -1, SEEK_END) == 0) cut = fgetc(old) != '\n';
    if (old) fclose(old);
    *metrics = fopen(path, a->resume ? "a" : "w");
    if (!*metrics) return kl_fail(KL_EIO, "%s: cannot open for writing: %s", path, strerror(errno));
    if (cut) fputc('\n', *metrics);
    return KL_OK;
}

/* The first failed write to metrics.jsonl (flushed at epoch ends,
 * checkpoints and the close): a warning naming the file and the reason;
 * later ones are the same loss, said at the end by train_exit_code. */
static void metrics_failed(const char *run_dir, int e, int *bad)
{
    if (!*bad)
        fprintf(stderr, "kiln train: warning: %s/metrics.jsonl: write failed: %s; training goes on (the checkpoints "
                        "are written), but records are lost\n", run_dir, strerror(e ? e : EIO));
    *bad = 1;
}

void train_metrics_flush(FILE *f, const char *run_dir, int *bad)
{
    errno = 0;
    if (f && (fflush(f) != 0 || ferror(f))) metrics_failed(run_dir, errno, bad);
}

void train_metrics_close(FILE **f, const char *run_dir, int *bad)
{
    if (!*f) return;
    train_metrics_flush(*f, run_dir, bad);
    errno = 0;
    if (fclose(*f) != 0) metrics_failed(run_dir, errno, bad);
    *f = NULL;
}

int train_exit_code(kl_status s, int stopped, int bad, const char *run_dir)
{
    if (s != KL_OK) fprintf(stderr, "kiln train: %s\n", kl_last_error());
    if (bad)
        fprintf(stderr, "kiln train: %s/metrics.jsonl: not all metrics were written (see the warning above); "
                        "the checkpoints are complete\n", run_dir);
    return s != KL_OK || bad ? 1 : stopped ? 128 + stopped : 0;
}

void train_say_finished(int64_t step, int64_t total)
{
    printf("the run had finished: step %lld of %lld; raise --steps or --epochs to train on\n", (long long)step,
           (long long)total);
}

void train_say_interrupted(int tty, int64_t step, const char *ckpt, const char *run_dir)
{
    if (tty) fprintf(stderr, "\n");
    printf("interrupted at step %lld; checkpoint %s\nresume with: kiln train --resume %s\n", (long long)step, ckpt,
           run_dir);
}

/* Mean loss and accuracy over ds: from its device copy dd when there is one. */
static kl_status evaluate(runner *r, const kl_dataset *ds, kl_device_data *dd, double *loss, double *acc)
{
    if (dd) return evaluator_run_device(&r->eval, dd, loss, acc);
    return evaluator_run(&r->eval, ds, loss, acc, NULL);
}

/* The datasets, loaded off the main thread (its error message kept, since
 * messages are per thread). */
typedef struct {
    const train_opts *o;
    int classes; /* the model's outputs: the labels' range */
    kl_dataset *tr, *va, *te;
    float mean, std;
    uint32_t crc; /* of the training set's features and labels, as training sees them */
    kl_status s;
    char msg[2048];
} load_job;

static void *load_run(void *arg)
{
    load_job *j = arg;
    j->mean = 0, j->std = 1;
    j->s = train_load_data(j->o, j->classes, &j->tr, &j->va, &j->te, &j->mean, &j->std);
    if (j->s != KL_OK) {
        snprintf(j->msg, sizeof j->msg, "%s", kl_last_error());
        return NULL;
    }
    int64_t n = kl_dataset_count(j->tr), d = 1;
    for (int i = 0; i < kl_dataset_sample_ndim(j->tr); i++) d *= kl_dataset_sample_dims(j->tr)[i];
    j->crc = kl_crc32(kl_crc32(0, kl_dataset_features(j->tr), (size_t)(n * d) * sizeof(float)), kl_dataset_labels(j->tr),
                      (size_t)n * sizeof(int32_t));
    return NULL;
}

/* The device, after the step's memory check: --batch auto; with
 * --mem-limit or on a GPU, refuses a step that will not fit (monitoring
 * hooks), before the run directory is made. */
static kl_status setup_device(runner *r, kl_cfg *cfg, const train_args *a)
{
    return plan_open_ctx(a->device, r->model, &r->o.optim, (int)r->o.threads, !r->o.drop_last, r->o.seed, cfg,
                         &r->o.batch, &r->budget, &r->ctx);
}

static kl_status setup(runner *r, kl_cfg *cfg, const train_args *a)
{
    kl_cfg_node *model;
    KL_TRY(monitor_cfg_read(cfg, &r->mon.o)); /* monitoring hook: train.histogram_every etc. */
    KL_TRY(train_opts_read(cfg, &r->o));
    KL_TRY(kl_cfg_get_map(kl_cfg_root(cfg), "model", 1, &model));
    KL_TRY(kl_model_from_cfg(model, &r->model));
    KL_TRY(kl_model_set_precision(r->model, r->o.precision));
    /* the data loads on a thread while the device starts (a GPU's context, the plan check) */
    load_job job = {.o = &r->o, .classes = (int)kl_model_outputs(r->model)};
    pthread_t th;
    int threaded = pthread_create(&th, NULL, load_run, &job) == 0;
    if (!threaded) load_run(&job);
    kl_status s = setup_device(r, cfg, a);
    if (threaded) pthread_join(th, NULL);
    r->tr = job.tr, r->va = job.va, r->te = job.te;
    KL_TRY(s);
    if (job.s != KL_OK) return kl_fail(job.s, "%s", job.msg);
    float mean = job.mean, std = job.std;
    if (r->o.normalize) { /* recorded so evaluation and prediction normalise the same way */
        char v[32];
        snprintf(v, sizeof v, "%.9g", mean);
        KL_TRY(kl_cfg_set_scalar(cfg, "data.mean", v));
        snprintf(v, sizeof v, "%.9g", std);
        KL_TRY(kl_cfg_set_scalar(cfg, "data.std", v));
    }
    const int64_t *in = kl_model_input_shape(r->model);
    int nd = kl_model_input_ndim(r->model);
    if (kl_dataset_sample_ndim(r->tr) != nd || memcmp(kl_dataset_sample_dims(r->tr), in, (size_t)nd * sizeof *in)) {
        char a1[64], a2[64];
        return kl_fail(KL_EINVAL, "model.input %s does not match the data's samples %s",
                       kl_shape_str(a1, sizeof a1, nd, in),
                       kl_shape_str(a2, sizeof a2, kl_dataset_sample_ndim(r->tr), kl_dataset_sample_dims(r->tr)));
    }
    if (g_monitor_flags.batch_auto && kl_dataset_count(r->tr) < r->o.batch) { /* --batch auto: not above the data */
        while (r->o.batch > 1 && kl_dataset_count(r->tr) < r->o.batch) r->o.batch /= 2;
        char v[32];
        snprintf(v, sizeof v, "%lld", (long long)r->o.batch);
        KL_TRY(kl_cfg_set_scalar(cfg, "train.batch", v));
        printf("batch auto: %lld, the largest power of two not above the %lld training samples\n", (long long)r->o.batch,
               (long long)kl_dataset_count(r->tr));
    }
    if (kl_dataset_count(r->tr) < r->o.batch)
        return kl_fail(KL_EINVAL, "train.batch %lld is larger than the training set (%lld samples)",
                       (long long)r->o.batch, (long long)kl_dataset_count(r->tr));
    KL_TRY(kl_optim_new(r->ctx, &r->o.optim, &r->opt));
    KL_TRY(train_data_place(r->ctx, &r->o, &r->budget, r->tr, r->va, r->te, PIPE_DEPTH, &r->d));
    KL_TRY(step_graph_build_train(&r->train, r->model, r->ctx, r->opt, r->o.batch, r->d.train, PIPE_RING));
    if (g_monitor_flags.no_graph) KL_TRY(kl_graph_set_capture(r->train.g, 0));
    r->eval = (evaluator){.model = r->model, .ctx = r->ctx, .batch = r->o.batch};
    if (a->init) KL_TRY(kl_weights_load(a->init, r->ctx));
    KL_TRY(train_state_start(a, cfg, &r->o, r->ctx, r->opt, &r->st)); /* before the run directory is touched */
    KL_TRY(train_same_data(a, &r->st, "the training set", "samples", kl_dataset_count(r->tr), job.crc, "samples"));
    KL_TRY(train_run_dir_open(a, r->o.name, cfg, r->run_dir, r->ckpt_root, &r->metrics));
    KL_TRY(watch_init(&r->watch, &r->o, r->train.g, r->metrics)); /* monitoring hook */
    if (a->resume) KL_TRY(watch_restore(&r->watch, r->st.watch, a->ckpt_dir));
    return train_monitor_open(&r->mon, r->run_dir, r->ctx, r->opt, r->metrics, r->t0,
                              a->resume ? r->st.step : -1); /* monitoring hook */
}

static void teardown(runner *r)
{
    if (r->train.g) kl_graph_profile_print(r->train.g, stderr);
    train_monitor_close(&r->mon); /* monitoring hook */
    train_metrics_close(&r->metrics, r->run_dir, &r->metrics_bad);
    step_graph_free(&r->train);
    step_graph_free(&r->train_rest);
    evaluator_free(&r->eval);
    train_data_free(&r->d); /* after the graphs that read it */
    kl_optim_free(r->opt);
    kl_ctx_free(r->ctx);
    kl_dataset_free(r->tr);
    kl_dataset_free(r->va);
    kl_dataset_free(r->te);
    kl_model_free(r->model);
}

static void progress(const runner *r, int tty, int64_t step, int64_t total, int64_t epoch, double loss, double sps)
{
    double eta = sps > 0 ? (double)(total - step) * (double)r->o.batch * r->o.optim.accumulate / sps : 0; /* a step takes accumulate batches */
    char tel[160];
    train_monitor_progress(&r->mon, tel, sizeof tel); /* monitoring hook: telemetry suffix */
    if (tty)
        fprintf(stderr, "\r  epoch %lld  step %lld/%lld  loss %.4f  %.0f samples/s  ETA %dm%02ds%s   ", (long long)epoch + 1,
                (long long)step, (long long)total, loss, sps, (int)eta / 60, (int)eta % 60, tel);
    else
        printf("epoch %lld step %lld/%lld loss %.4f samples/s %.0f eta %.0fs%s\n", (long long)epoch + 1,
               (long long)step, (long long)total, loss, sps, eta, tel);
    fflush(tty ? stderr : stdout);
}


/* Positions the data at (epoch, batch): the epoch's order on the device. */
static kl_status data_seek(runner *r, int64_t epoch, int64_t batch)
{
    if (r->d.loader) return kl_loader_seek(r->d.loader, epoch, batch);
    return kl_device_data_order(r->d.train, r->o.shuffle, r->o.seed, epoch);
}


/* End of an epoch: validation, the epoch's metrics line, a checkpoint at
 * the start of the next epoch. */
static kl_status end_epoch(runner *r, kl_cfg *cfg, kl_train_state *st, int tty, epoch_acc *ep)
{
    double vl = 0, vacc = 0, l = ep->n ? ep->loss / (double)ep->n : 0, acc = ep->n ? (double)ep->correct / (double)ep->n : 0;
    int64_t seen = ep->n; /* 0: resumed at the epoch's end from a checkpoint without its figures */
    char ck[4400];
    /* the epoch's training rate, before validation's time */
    double sps = ep->n > ep->n0 ? (double)(ep->n - ep->n0) / (now() - ep->t0) : 0.0;
    if (r->va) KL_TRY(nan_watch_eval(evaluate(r, r->va, r->d.val, &vl, &vacc), "validation", st->step, r->metrics));
    if (tty) fprintf(stderr, "\n");
    printf("epoch %lld: train loss %.4f acc %.4f", (long long)st->epoch + 1, l, acc);
    if (r->va) printf("  val loss %.4f acc %.4f", vl, vacc);
    char sc_line[96], scaler[96];
    KL_TRY(watch_scaler(r->opt, &r->o, sc_line, sizeof sc_line, scaler, sizeof scaler));
    printf("%s  (%.1f s)\n", sc_line, now() - r->t0);
    fflush(stdout);
    fprintf(r->metrics,
            "{\"type\":\"epoch\",\"epoch\":%lld,\"step\":%lld,\"loss\":" MON_LOSS ",\"accuracy\":" MON_ACC
            ",\"val_loss\":" MON_LOSS ",\"val_accuracy\":" MON_ACC ",\"lr\":" MON_LOSS ",\"samples_per_s\":" MON_RATE
            ",\"wall_s\":%.3f%s}\n",
            (long long)st->epoch + 1, (long long)st->step, l, acc, vl, vacc, kl_optim_lr(r->opt), sps, now() - r->t0, scaler);
    /* monitoring hook */
    train_monitor_epoch(&r->mon, st->epoch + 1, st->step, ep->n - ep->n0, l, acc, r->va != NULL, vl, vacc,
                        kl_optim_lr(r->opt));
    train_metrics_flush(r->metrics, r->run_dir, &r->metrics_bad);
    *ep = (epoch_acc){0};
    st->epoch++;
    st->batch = 0;
    KL_TRY(data_seek(r, st->epoch, 0));
    /* monitoring hook: plateau warning / early stop; the checkpoint keeps
     * the watch's state with this evaluation in it */
    r->early_stopped = r->va || seen ? watch_eval(&r->watch, st->epoch, st->step, r->va ? vl : l, r->va != NULL) : 0;
    KL_TRY(save_ckpt(r, cfg, st, ep, ck, sizeof ck));
    if (r->early_stopped) printf("stopped early; checkpoint %s\n", ck);
    return KL_OK;
}

/* Runs issued whose records have not been handled, oldest first: one a
 * batch; with train.accumulate K, the K batches of a step share its number
 * and the last one (which updates) ends it. */
typedef struct {
    int64_t step, epoch, batch, n; /* step number (1-based), position, rows */
    int32_t start;                 /* the batch's offset in the data's order or slots */
    int last;                      /* the step's last batch */
    double lr;
    step_graph *sg;
    uint64_t runs; /* the graph's run number (dropout's masks) */
} issued;

typedef struct {
    issued q[PIPE_RING];
    int head, len;
    double t_last;          /* when the last record was handled */
    double win_loss, t_win; /* the log_every window */
    double data_wait;       /* waiting for host batches since the last handled step */
    double cyc_loss;        /* the step's batches handled so far: loss sum, correct, rows */
    int64_t cyc_corr, cyc_n;
    int64_t win_n;
    epoch_acc ep;
    int tty;
    int64_t total;
} pipe_state;

/* Validation and checkpoints since t are no training: the step, window and
 * epoch clocks move past them, so samples/s, the epoch's rate and the ETA
 * count training time only. */
static void skip_time(pipe_state *p, double t)
{
    double d = now() - t;
    p->t_last += d, p->t_win += d, p->ep.t0 += d;
}

/* The rows of step it's batch on the host (for the NaN watch): copied from
 * its slot's host copy when streamed (rewritten only after the step was
 * handled), else gathered from the dataset in the epoch's order. */
static kl_status host_batch(const runner *r, const issued *it, float **x, int32_t **y)
{
    int64_t ss = kl_dataset_sample_size(r->tr);
    const float *fx = kl_dataset_features(r->tr);
    const int32_t *fy = kl_dataset_labels(r->tr), *order = kl_device_data_order_host(r->d.train);
    int64_t at = (int64_t)it->start;
    if (kl_device_data_streamed(r->d.train)) {
        KL_TRY(kl_device_data_slot_host(r->d.train, it->start, &fx, &fy));
        order = NULL, at = 0;
    }
    *x = malloc((size_t)(it->n * ss) * sizeof **x);
    *y = malloc((size_t)it->n * sizeof **y);
    if (!*x || !*y) return kl_fail(KL_ENOMEM, "NaN watch: out of memory for the batch");
    for (int64_t i = 0; i < it->n; i++) {
        int64_t src = order ? order[at + i] : i;
        memcpy(*x + i * ss, fx + src * ss, (size_t)ss * sizeof **x);
        (*y)[i] = fy[src];
    }
    return KL_OK;
}

/* A non-finite loss or gradient norm at step it: the optimizer's guard kept
 * the parameters of before it (later steps updated nothing), so the NaN
 * watch can re-run it. Returns the error that ends training. */
static kl_status diverged(runner *r, kl_cfg *cfg, const issued *it, double loss, double norm)
{
    kl_status s = isfinite(loss) ? KL_OK
                                 : kl_fail(KL_ENUMERIC, "loss is %g: training diverged (try a lower learning rate or "
                                           "clip.max_norm)", loss);
    float *x = NULL;
    int32_t *y = NULL;
    kl_status hs = host_batch(r, it, &x, &y);
    if (hs != KL_OK) return hs;
    nan_step ns = {.model = r->model, .ctx = r->ctx, .opt = r->opt, .cfg = cfg, .x = x, .y = y,
                   .batch = it->n, .step = it->step, .runs = it->runs, .grad_norm = norm, .metrics = r->metrics};
    s = nan_watch_after(&r->mon.nan, s, &ns);
    free(x);
    free(y);
    return s;
}

/* Handles the oldest issued step's record: waits for it when wait, else
 * returns *done = 0 if it has not arrived. */
static kl_status handle_one(runner *r, kl_cfg *cfg, pipe_state *p, int wait, int *done)
{
    *done = 0;
    if (!p->len) return KL_OK;
    issued *it = &p->q[p->head];
    double v[3];
    int ready;
    KL_TRY(kl_readback_pop(it->sg->rb, wait, v, &ready));
    if (!ready) return KL_OK;
    *done = 1;
    p->head = (p->head + 1) % PIPE_RING;
    p->len--;
    double mean = v[0], l = mean * (double)it->n, now_s = now();
    int64_t corr = (int64_t)v[1];
    /* a non-finite norm halts the optimizer, except under dynamic loss
     * scaling, where it is an overflow: the update was skipped, the scale
     * halved (the step's last batch carries the norm) */
    const kl_optim_opts *oo = &r->o.optim;
    int overflow = oo->scale_window > 0 && it->last && !isfinite(v[2]);
    int norm_halts = kl_optim_needs_norm(oo) && !oo->scale_window;
    if (!isfinite(mean) || (norm_halts && it->last && !isfinite(v[2]))) {
        /* the device finishes the steps after it (their updates were skipped), then the watch explains */
        while (p->len) {
            double w[3];
            int rd;
            kl_status s = kl_readback_pop(p->q[p->head].sg->rb, 1, w, &rd);
            p->head = (p->head + 1) % PIPE_RING;
            p->len--;
            if (s != KL_OK) return s;
        }
        return diverged(r, cfg, it, mean, v[2]);
    }
    double t_step = now_s - p->t_last; /* since the step before's last batch */
    if (p->ep.n == p->ep.n0) p->ep.t0 = p->t_last;
    p->ep.loss += l, p->ep.correct += corr, p->ep.n += it->n, p->win_loss += l, p->win_n += it->n;
    p->cyc_loss += l, p->cyc_corr += corr, p->cyc_n += it->n;
    if (!it->last) return KL_OK;
    /* the step's record: its batches together */
    mean = p->cyc_loss / (double)p->cyc_n;
    corr = p->cyc_corr;
    int64_t rows = p->cyc_n;
    p->cyc_loss = 0, p->cyc_corr = 0, p->cyc_n = 0;
    p->t_last = now_s;
    double lr = it->lr;
    fprintf(r->metrics,
            "{\"type\":\"step\",\"step\":%lld,\"epoch\":%lld,\"loss\":" MON_LOSS ",\"accuracy\":" MON_ACC
            ",\"lr\":" MON_LOSS ",\"samples_per_s\":" MON_RATE ",\"wall_s\":%.3f%s}\n",
            (long long)it->step, (long long)it->epoch + 1, mean, (double)corr / (double)rows, lr,
            t_step > 0 ? (double)rows / t_step : 0.0, now_s - r->t0, overflow ? ",\"overflow\":true" : "");
    train_monitor_step(&r->mon, it->step, rows, mean, (double)corr / (double)rows, lr); /* monitoring hook */
    watch_step(&r->watch, r->train.g, v[2], it->step, t_step, p->data_wait); /* monitoring hook */
    p->data_wait = 0;
    if (it->step % r->o.log_every == 0 || it->step == p->total) {
        double sps = (double)p->win_n / (now_s - p->t_win);
        fprintf(r->metrics, "{\"type\":\"throughput\",\"step\":%lld,\"samples_per_s\":" MON_RATE "}\n",
                (long long)it->step, sps);
        train_monitor_throughput(&r->mon, it->step, sps); /* monitoring hook */
        progress(r, p->tty, it->step, p->total, it->epoch, p->win_loss / (double)p->win_n, sps);
        p->win_loss = 0, p->win_n = 0, p->t_win = now_s;
    }
    return KL_OK;
}

/* Handles every issued step (waiting for each). */
static kl_status drain(runner *r, kl_cfg *cfg, pipe_state *p)
{
    for (int done = 1; p->len && done;) KL_TRY(handle_one(r, cfg, p, 1, &done));
    return KL_OK;
}

static kl_status loop(runner *r, kl_cfg *cfg, const train_args *a, volatile sig_atomic_t *stop, int *interrupted)
{
    kl_train_state st = r->st;
    if (a->resume)
        printf("resumed from %s at step %lld (epoch %lld, batch %lld)\n", a->ckpt_dir, (long long)st.step,
               (long long)st.epoch + 1, (long long)st.batch);
    int64_t count = kl_dataset_count(r->tr), B = r->o.batch, K = r->o.optim.accumulate;
    int64_t per_epoch = r->o.drop_last ? count / B : (count + B - 1) / B; /* batches */
    int64_t steps_per_epoch = (per_epoch + K - 1) / K; /* an epoch's last step takes what is left */
    pipe_state p = {.tty = isatty(2), .total = r->o.steps ? r->o.steps : r->o.epochs * steps_per_epoch};
    /* a resumed epoch's metrics line covers the whole epoch, as an uninterrupted one */
    p.ep = (epoch_acc){.loss = st.epoch_loss_sum, .correct = st.epoch_correct, .n = st.epoch_count, .n0 = st.epoch_count};
    p.t_last = p.t_win = now();
    if (a->resume && st.step >= p.total) { /* no step to train */
        /* stopped in its last step (a signal, a kill after its checkpoint) before the epoch's end: that end's
         * validation, record and checkpoint, as a mid-run epoch's at the next loop */
        if (st.batch == per_epoch && p.ep.n) KL_TRY(end_epoch(r, cfg, &st, p.tty, &p.ep));
        train_say_finished(st.step, p.total);
        r->finished = 1;
        return KL_OK;
    }
    KL_TRY(data_seek(r, st.epoch, st.batch));
    char ck[4400];
    while (st.step < p.total) {
        if (st.batch == per_epoch) { /* end of epoch: validate, log, checkpoint */
            KL_TRY(drain(r, cfg, &p));
            double t = now();
            KL_TRY(end_epoch(r, cfg, &st, p.tty, &p.ep));
            skip_time(&p, t);
            if (r->early_stopped) break;
            continue;
        }
        int64_t n = count - st.batch * B < B ? count - st.batch * B : B;
        /* a last partial batch (data.drop_last: false) runs its own graph, sharing
         * parameters and optimizer; both follow the step counter for dropout */
        step_graph *sg = &r->train;
        if (n != B) {
            sg = &r->train_rest;
            if (!sg->g) KL_TRY(step_graph_build_train(sg, r->model, r->ctx, r->opt, n, r->d.train, PIPE_RING));
        }
        int32_t at = (int32_t)(st.batch * B);
        if (r->d.loader) { /* streamed: the loader's batch into the next slot */
            kl_batch b;
            double t0 = now();
            KL_TRY(kl_loader_next(r->d.loader, &b));
            p.data_wait += now() - t0;
            KL_TRY(kl_device_data_put(r->d.train, b.x, b.y, b.n, &at));
        }
        KL_TRY(kl_tensor_set(sg->start, &at, sizeof at));
        KL_TRY(kl_optim_set_lr(r->opt, train_lr(&r->o, st.step, p.total)));
        /* with accumulation the step ends after K batches or with the epoch */
        int last = kl_optim_pending(r->opt) + 1 >= K || st.batch + 1 == per_epoch;
        if (last && K > 1) KL_TRY(kl_optim_end_cycle(r->opt));
        KL_TRY(kl_optim_set_run_weight(r->opt, (double)n / (double)B)); /* a partial batch: its share of samples */
        KL_TRY(kl_graph_set_runs(sg->g, st.graph_runs)); /* dropout: one stream a batch */
        KL_TRY(kl_graph_run(sg->g));
        p.q[(p.head + p.len) % PIPE_RING] = (issued){st.step + 1, st.epoch, st.batch, n, at, last, kl_optim_lr(r->opt), sg,
                                                   st.graph_runs};
        p.len++;
        st.step += last;
        st.batch++;
        st.graph_runs++;
        /* handle what has arrived; wait for the oldest when r->d.depth are out */
        for (int done = 1; done && p.len;) KL_TRY(handle_one(r, cfg, &p, p.len >= r->d.depth, &done));
        if (!last) continue; /* checkpoints and interrupts between steps: the accumulator is not saved */
        /* a histogram step: its record is handled before the next step is issued, so the
         * histograms show this step's parameters (on a GPU later steps would be in flight) */
        if (r->mon.o.histogram_every && st.step % r->mon.o.histogram_every == 0) KL_TRY(drain(r, cfg, &p));
        if ((r->o.checkpoint_every && st.step % r->o.checkpoint_every == 0) || *stop) {
            KL_TRY(drain(r, cfg, &p));
            train_metrics_flush(r->metrics, r->run_dir, &r->metrics_bad);
            double t = now();
            KL_TRY(save_ckpt(r, cfg, &st, &p.ep, ck, sizeof ck));
            skip_time(&p, t);
        }
        if (*stop) {
            train_say_interrupted(p.tty, st.step, ck, r->run_dir);
            *interrupted = 1;
            break;
        }
    }
    KL_TRY(drain(r, cfg, &p));
    watch_end(&r->watch, r->train.g, st.step); /* monitoring hook: --profile N beyond the last step */
    if (r->early_stopped || *interrupted) return KL_OK;
    /* the last epoch ends with the last step: validate it too */
    if (p.ep.n && st.batch == per_epoch) return end_epoch(r, cfg, &st, p.tty, &p.ep);
    if (p.tty) fprintf(stderr, "\n");
    return save_ckpt(r, cfg, &st, &p.ep, ck, sizeof ck);
}

/* Whether metrics.jsonl in run_dir holds a test record of step: a run
 * resumed after it finished is tested again only if its test was cut off. */
static int test_recorded(const char *run_dir, int64_t step)
{
    char path[4200], want[64], line[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    snprintf(want, sizeof want, "{\"type\":\"test\",\"step\":%lld,", (long long)step);
    FILE *f = fopen(path, "r");
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f)) found = !strncmp(line, want, strlen(want));
    if (f) fclose(f);
    return found;
}

int train_run(kl_cfg *cfg, const train_args *a, volatile sig_atomic_t *stop)
{
    if (train_text_wanted(cfg)) return train_text_run(cfg, a, stop); /* sequence models: language models on text */
    runner r = {0};
    r.t0 = now();
    int interrupted = 0;
    kl_status s = setup(&r, cfg, a);
    if (s == KL_OK) {
        printf("model %s: %lld parameters; %lld training samples, %lld validation, batch %lld\n", r.o.name,
               (long long)kl_model_param_count(r.model), (long long)kl_dataset_count(r.tr),
               r.va ? (long long)kl_dataset_count(r.va) : 0LL, (long long)r.o.batch);
        printf("run directory: %s (first step after %.2f s)\n", r.run_dir, now() - r.t0);
        fflush(stdout);
        s = loop(&r, cfg, a, stop, &interrupted);
        if (s == KL_OK) train_monitor_end(&r.mon); /* monitoring hook: last histograms */
    }
    int test = r.te && !(r.finished && test_recorded(r.run_dir, r.mon.step)); /* (its record stands) */
    if (s == KL_OK && !interrupted && test && *stop) { /* a signal during the last validation */
        printf("interrupted: the test evaluation was skipped; resume with: kiln train --resume %s (to evaluate)\n",
               r.run_dir);
        interrupted = 1;
    }
    if (s == KL_OK && !interrupted && test) {
        double tl, tacc;
        s = nan_watch_eval(evaluate(&r, r.te, r.d.test, &tl, &tacc), "test", r.mon.step, r.metrics);
        if (s == KL_OK) {
            printf("test: loss %.4f accuracy %.4f (%lld samples); total %.1f s\n", tl, tacc,
                   (long long)kl_dataset_count(r.te), now() - r.t0);
            /* step: which training the result is of (kiln report drops one a later resume superseded) */
            fprintf(r.metrics, "{\"type\":\"test\",\"step\":%lld,\"loss\":" MON_LOSS ",\"accuracy\":" MON_ACC
                    ",\"wall_s\":%.3f}\n", (long long)r.mon.step, tl, tacc, now() - r.t0);
            train_monitor_test(&r.mon, tl, tacc); /* monitoring hook */
        }
    }
    teardown(&r);
    return train_exit_code(s, interrupted ? (int)*stop : 0, r.metrics_bad, r.run_dir);
}
