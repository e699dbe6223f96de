/* kiln bench CKPT: inference latency (p50, p99, mean) and throughput of a
 * checkpoint's model at a batch size, on random inputs of the model's shape
 * (image/tabular models: normal f32 [B, input...]; token models: random
 * tokens [B, T]). Each iteration is one forward step graph run (inputs set,
 * graph run, loss read); warm-up iterations are not counted. */
#include "cli/cli.h"
#include "cli/ckpt_open.h"
#include "cli/evaluator.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kiln bench CKPT [--batch N] [--iters N] [--warmup N] [--threads N] [--device D]\n"
               "                  [--set KEY=VALUE]\n\n"
               "Inference latency of a checkpoint's (or run directory's) model: p50, p99 and mean\n"
               "over --iters timed forward runs (default 100) after --warmup runs (default 5, 0: none), and\n"
               "the throughput in samples/s (and tokens/s for language models). Inputs are random\n"
               "values of the model's input shape; --batch defaults to the run's train.batch.\n"
               "--device cpu (default), cuda:N or auto: on a GPU an iteration is the input's copy\n"
               "to the device, the forward graph (captured and replayed after the first runs) and\n"
               "the loss read back, as an application calling kiln would see it.\n");
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[n]. */
static double percentile(const double *v, int n, double p)
{
    int k = (int)ceil(p * n) - 1;
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* Random inputs and labels for one batch. */
static kl_status make_batch(const kl_model *m, int64_t B, void **x, int32_t **y, int64_t *per_sample)
{
    int64_t T = kl_model_tokens(m), C = kl_model_outputs(m), ss = 1, ny = T ? B * T : B;
    uint64_t s = 0x9E3779B97F4A7C15ull;
    if (T) ss = T;
    else
        for (int i = 0; i < kl_model_input_ndim(m); i++) ss *= kl_model_input_shape(m)[i];
    *per_sample = ss;
    *x = kl_malloc((size_t)(B * ss) * (T ? sizeof(int32_t) : sizeof(float)));
    *y = kl_malloc((size_t)ny * sizeof(int32_t));
    if (!*x || !*y) return KL_ENOMEM;
    for (int64_t i = 0; i < B * ss; i++) {
        uint64_t r = rng_next(&s);
        if (T) ((int32_t *)*x)[i] = (int32_t)(r % (uint64_t)C);
        else ((float *)*x)[i] = (float)((double)(r >> 11) / 9007199254740992.0 * 2 - 1); /* uniform [-1, 1) */
    }
    for (int64_t i = 0; i < ny; i++) (*y)[i] = (int32_t)(rng_next(&s) % (uint64_t)C);
    return KL_OK;
}

static kl_status bench(loaded *l, const char *ckpt, int64_t B, int iters, int warmup)
{
    step_graph sg = {0};
    void *x = NULL;
    int32_t *y = NULL;
    int64_t ss = 0, T = kl_model_tokens(l->model), corr = 0;
    double *lat = kl_malloc((size_t)iters * sizeof *lat), loss = 0;
    kl_status s = lat ? make_batch(l->model, B, &x, &y, &ss) : KL_ENOMEM;
    if (s == KL_OK) s = step_graph_build(&sg, l->model, l->ctx, NULL, B);
    for (int i = 0; s == KL_OK && i < warmup + iters; i++) {
        double t0 = now();
        s = step_graph_run(&sg, l->model, x, y, &loss, &corr, NULL, NULL);
        if (s == KL_ENUMERIC) { /* random inputs may overflow a loss: the timing still holds */
            kl_clear_error();
            s = KL_OK;
        }
        if (i >= warmup) lat[i - warmup] = now() - t0;
    }
    if (s == KL_OK) {
        double sum = 0;
        for (int i = 0; i < iters; i++) sum += lat[i];
        qsort(lat, (size_t)iters, sizeof *lat, cmp_double);
        char shp[64];
        int64_t d[KL_MAX_DIMS + 1] = {B};
        int nd = T ? 2 : kl_model_input_ndim(l->model) + 1;
        if (T) d[1] = T;
        else memcpy(d + 1, kl_model_input_shape(l->model), (size_t)(nd - 1) * sizeof *d);
        kl_device dev = kl_ctx_device(l->ctx);
        char where[64];
        if (dev.type == KL_DEVICE_CUDA) snprintf(where, sizeof where, "cuda:%d", dev.index);
        else snprintf(where, sizeof where, "cpu with %d threads", kl_ctx_threads(l->ctx));
        printf("bench %s: model %s, %lld parameters; input %s %s; %s\n", ckpt, l->o.name,
               (long long)kl_model_param_count(l->model), kl_shape_str(shp, sizeof shp, nd, d), T ? "i32" : "f32", where);
        printf("latency over %d iterations (after %d warm-up): p50 %.3f ms  p99 %.3f ms  mean %.3f ms\n", iters,
               warmup, 1e3 * percentile(lat, iters, 0.50), 1e3 * percentile(lat, iters, 0.99), 1e3 * sum / iters);
        printf("throughput: %.1f samples/s (batch %lld)", (double)B * iters / sum, (long long)B);
        if (T) printf("  %.1f tokens/s", (double)(B * T) * iters / sum);
        printf("\n");
    }
    step_graph_free(&sg);
    kl_free(lat);
    kl_free(x);
    kl_free(y);
    return s;
}

/* A positive integer flag value, or -1 after a message. */
static long long count_arg(const char *flag, const char *v, long long min, long long max)
{
    char *end;
    long long n = strtoll(v, &end, 10);
    if (*v == 0 || *end || n < min || n > max) {
        fprintf(stderr, "kiln bench: %s must be an integer from %lld to %lld, got '%s'\n", flag, min, max, v);
        return -1;
    }
    return n;
}

int kl_cmd_bench(int argc, char **argv)
{
    const char *ckpt = NULL, *sets[34], *device = NULL;
    char threads_set[64];
    int nsets = 0;
    long long batch = 0, iters = 100, warmup = 5;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--batch") || !strcmp(a, "--iters") || !strcmp(a, "--warmup") || !strcmp(a, "--threads") ||
            !strcmp(a, "--set") || !strcmp(a, "--device")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kiln bench: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            long long n = 0;
            if (!strcmp(a, "--device")) {
                device = v;
                continue;
            }
            /* --warmup 0: time from the first run (its one-off costs included) */
            if (strcmp(a, "--set") && (n = count_arg(a, v, !strcmp(a, "--warmup") ? 0 : 1,
                                                     !strcmp(a, "--batch") ? 1 << 20 : 1000000)) < 0)
                return 2;
            if (!strcmp(a, "--batch")) batch = n;
            else if (!strcmp(a, "--iters")) iters = n;
            else if (!strcmp(a, "--warmup")) warmup = n;
            else if (nsets >= 32) {
                fprintf(stderr, "kiln bench: at most 32 --set and --threads options\n");
                return 2;
            } else if (!strcmp(a, "--threads")) {
                snprintf(threads_set, sizeof threads_set, "train.threads=%lld", n);
                sets[nsets++] = threads_set;
            } else sets[nsets++] = v;
        } else if (a[0] == '-') {
            fprintf(stderr, "kiln bench: unknown option '%s' (see kiln bench --help)\n", a);
            return 2;
        } else if (!ckpt) ckpt = a;
        else {
            fprintf(stderr, "kiln bench: unexpected argument '%s' (one checkpoint)\n", a);
            return 2;
        }
    }
    if (!ckpt) {
        fprintf(stderr, "kiln bench: which checkpoint? (kiln bench CKPT)\n");
        return 2;
    }
    loaded l = {0};
    kl_status s = open_ckpt(ckpt, sets, nsets, device, &l);
    if (s == KL_OK) s = bench(&l, ckpt, batch ? batch : l.o.batch, (int)iters, (int)warmup);
    if (s != KL_OK) fprintf(stderr, "kiln bench: %s\n", kl_last_error());
    loaded_free(&l);
    return s == KL_OK ? 0 : 1;
}
