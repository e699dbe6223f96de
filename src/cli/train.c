/* kiln train: a model from a YAML config, trained with per-epoch
 * validation, metrics.jsonl, checkpoints, and exact resume. */
#include "cli/cli.h"
#include "cli/train_run.h"
#include "core/error.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kiln train [CONFIG.yaml] [options]\n\n"
            "Trains the model described by CONFIG (default: the reference CNN on Fashion-MNIST).\n\n"
            "options:\n"
            "  --device D        auto (default), cpu, cuda or cuda:N\n"
            "  --epochs N        train for N epochs (train.epochs)\n"
            "  --steps N         train for N optimizer steps instead (train.steps)\n"
            "  --batch N         batch size (train.batch)\n"
            "  --accumulate K    gradient accumulation: an optimizer step every K batches (train.accumulate)\n"
            "  --precision P     f32 (default), bf16 or f16: mixed precision, f32 parameters; f16 scales\n"
            "                    the loss (train.precision, train.loss_scale)\n"
            "  --lr X            learning rate (optim.lr)\n"
            "  --seed S          seed for initialisation, shuffling and dropout (train.seed)\n"
            "  --threads N       CPU threads (default: all cores, or $KILN_THREADS)\n"
            "  --out DIR         run directory (default runs/<timestamp>-<name>); not one\n"
            "                    holding a run (resume that) or in use by another kiln train\n"
            "  --resume [CKPT]   continue from a checkpoint, a run directory, or the latest\n"
            "                    checkpoint of --out\n"
            "  --init FILE       start from weights in a safetensors file\n"
            "  --set KEY=VALUE   override any config key, e.g. --set optim.kind=sgd\n"
            "  --help            this message\n\n"
            "Ctrl-C or SIGTERM: checkpoint after the step in progress, exit 130 or 143; a second one quits at once.\n"
            "Exit 1 on an error, or when metrics.jsonl could not all be written (the checkpoints are).\n");
}

static volatile sig_atomic_t g_stop;

/* SIGINT and SIGTERM are blocked in every thread of the run (its OpenMP,
 * oneDNN, loader and telemetry threads inherit the mask) and taken by this
 * thread alone with sigwait: a handler run on a compute thread in the
 * middle of a library's kernel corrupted oneDNN's sgemm buffers now and
 * then (2026-12-07: 8 of 60 interrupted runs), and blocked signals
 * interrupt no system call either. */
/* The first signal asks the run to stop at the next step boundary with a
 * checkpoint; a second one ends the process at once, as by default (the
 * signal's default action, re-raised here with it unblocked). */
static void *signal_waiter(void *arg)
{
    const sigset_t *set = arg;
    for (;;) {
        int sig;
        if (sigwait(set, &sig) != 0) continue;
        if (g_stop) {
            sigset_t one;
            sigemptyset(&one);
            sigaddset(&one, sig);
            signal(sig, SIG_DFL);
            pthread_sigmask(SIG_UNBLOCK, &one, NULL);
            raise(sig);
        }
        g_stop = sig;
        fprintf(stderr, "\nkiln train: %s: stopping after this step with a checkpoint (again to quit at once, "
                        "without one)\n", sig == SIGINT ? "interrupt" : "SIGTERM");
    }
    return NULL;
}

static void catch_stop_signals(void)
{
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_t th;
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) == 0 && pthread_create(&th, NULL, signal_waiter, &set) == 0) {
        pthread_detach(th);
        return;
    }
    pthread_sigmask(SIG_UNBLOCK, &set, NULL); /* no thread: signals end the run as by default */
}

/* Applies a flag's value to a config path, naming the flag in messages. */
static int set_flag(kl_cfg *cfg, const char *path, const char *flag, const char *value)
{
    size_t n = strlen(flag) + strlen(value) + 2; /* whole: a cut could split a UTF-8 character */
    char *origin = malloc(n);
    if (!origin) {
        fprintf(stderr, "kiln train: out of memory\n");
        return 1;
    }
    snprintf(origin, n, "%s %s", flag, value);
    int rc = kl_cfg_set_scalar_from(cfg, path, value, origin) != KL_OK;
    if (rc) fprintf(stderr, "kiln train: %s\n", kl_last_error());
    free(origin);
    return rc;
}

int kl_cmd_train(int argc, char **argv)
{
    train_args a = {.device = "auto"};
    enum { MAX_SETS = 64, MAX_FLAGS = 32 };
    const char *sets[MAX_SETS], *flags[MAX_FLAGS][3];
    int nsets = 0, nflags = 0;
    static const struct { const char *flag, *path; } map[] = {
        {"--epochs", "train.epochs"}, {"--steps", "train.steps"}, {"--batch", "train.batch"}, {"--accumulate", "train.accumulate"},
        {"--precision", "train.precision"},
        {"--lr", "optim.lr"}, {"--seed", "train.seed"}, {"--threads", "train.threads"}};
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        int known = 0;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            return 0;
        }
        for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
            if (!strcmp(arg, map[k].flag)) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "kiln train: %s needs a value\n", arg);
                    return 2;
                }
                if (nflags == MAX_FLAGS) {
                    fprintf(stderr, "kiln train: more than %d value options (%s)\n", MAX_FLAGS, arg);
                    return 2;
                }
                flags[nflags][0] = map[k].path;
                flags[nflags][1] = arg;
                flags[nflags++][2] = argv[++i];
                known = 1;
            }
        if (known) continue;
        if (!strcmp(arg, "--device") || !strcmp(arg, "--out") || !strcmp(arg, "--init") || !strcmp(arg, "--set")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kiln train: %s needs a value\n", arg);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(arg, "--device")) a.device = v;
            else if (!strcmp(arg, "--out")) a.out = v;
            else if (!strcmp(arg, "--init")) a.init = v;
            else if (nsets < MAX_SETS) sets[nsets++] = v;
            else {
                fprintf(stderr, "kiln train: more than %d --set options\n", MAX_SETS);
                return 2;
            }
        } else if (!strcmp(arg, "--resume")) {
            a.resume = 1;
            if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) && !strstr(argv[i + 1], ".yaml")) a.resume_path = argv[++i];
        } else if (arg[0] == '-') {
            fprintf(stderr, "kiln train: unknown option '%s' (see kiln train --help)\n", arg);
            return 2;
        } else if (!a.config) {
            a.config = arg;
        } else {
            fprintf(stderr, "kiln train: unexpected argument '%s' (one config file at most)\n", arg);
            return 2;
        }
    }

    /* the config: a file, the resumed checkpoint's, or the built-in default */
    kl_cfg *cfg = NULL;
    kl_status s;
    if (a.resume && !a.resume_path && a.out) a.resume_path = a.out;
    if (a.resume && !a.resume_path) {
        fprintf(stderr, "kiln train: --resume needs a checkpoint or run directory (or --out DIR)\n");
        return 2;
    }
    if (a.resume && a.init) { /* the checkpoint's weights would replace --init's */
        fprintf(stderr, "kiln train: --init and --resume cannot be combined: a resumed run goes on from its "
                        "checkpoint's weights (start a new run with --init)\n");
        return 2;
    }
    if (a.resume) {
        s = kl_checkpoint_resolve(a.resume_path, a.ckpt_dir, sizeof a.ckpt_dir);
        if (s != KL_OK) {
            fprintf(stderr, "kiln train: %s\n", kl_last_error());
            return 1;
        }
    }
    if (a.config) {
        s = kl_cfg_load(a.config, &cfg);
    } else if (a.resume) {
        char path[4200];
        snprintf(path, sizeof path, "%s/config.yaml", a.ckpt_dir);
        s = kl_cfg_load(path, &cfg);
    } else {
        s = kl_cfg_parse(kl_default_config, strlen(kl_default_config), "<default cnn>", &cfg);
    }
    if (s != KL_OK) {
        fprintf(stderr, "kiln train: %s\n", kl_last_error());
        return 1;
    }
    for (int i = 0; i < nflags; i++)
        if (set_flag(cfg, flags[i][0], flags[i][1], flags[i][2])) goto fail;
    for (int i = 0; i < nsets; i++)
        if (kl_cfg_set(cfg, sets[i]) != KL_OK) {
            fprintf(stderr, "kiln train: %s\n", kl_last_error());
            goto fail;
        }
    catch_stop_signals(); /* before the run starts any thread */
    int rc = train_run(cfg, &a, &g_stop);
    kl_cfg_free(cfg);
    return rc;
fail:
    kl_cfg_free(cfg);
    return 1;
}
