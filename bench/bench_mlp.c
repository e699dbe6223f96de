/* Benchmark: one training step of an MLP 784-1024-1024-10 (ReLU, softmax
 * cross-entropy, Adam lr 1e-3) at batch 256, as one kiln graph.
 * bench/mlp_torch.py does the same work in PyTorch; bench/run_cpu.sh and
 * bench/run_gpu.sh run both in one run and print the ratio.
 *
 *   bench_mlp [--steps N] [--warmup N] [--threads N] [--batch N] [--accumulate K] [--bf16 | --f16] [--profile]
 *             [--device cuda:N]
 *
 * --bf16: mixed precision as kiln train's train.precision bf16 (and
 * PyTorch's autocast): f32 parameters cast to bf16 where used, the input
 * cast in, the logits cast back to f32 for the loss. --f16: the same in f16
 * with dynamic loss scaling from 65536 (PyTorch: autocast float16 and
 * GradScaler).
 * --accumulate K: a step is K runs of the batch with gradient accumulation
 * (kl_optim_opts.accumulate), the optimizer updating at the K-th.
 *
 * CPU: a step is copy the batch into the inputs, run the graph (forward,
 * backward, Adam update), timed one by one; ms/step is the median. GPU: the
 * batch stays in device memory (as the PyTorch script keeps its tensors on
 * the GPU) and steps are issued back to back (a captured CUDA graph after
 * the warmup); ms/step is the wall time of all timed steps, up to the
 * device finishing the last, divided by their number. The batch is random
 * (fixed seed) and the same every step, as in the PyTorch script. Prints
 * the memory plan and one machine-readable line starting with
 * "kiln_ms_per_step=". --profile also prints the time per op kind over the
 * timed steps (kl_graph_profile; on a GPU this runs every kernel eagerly
 * between CUDA events). */
#include "kiln/kiln.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IN 784
#define HID 1024
#define OUT 10

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* xorshift64*: a fixed, platform-independent stream for the batch. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static int parse_int(const char *flag, const char *v, int min, int *out)
{
    char *end;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || n < min || n > 1000000) {
        fprintf(stderr, "bench_mlp: %s needs an integer >= %d, got '%s'\n", flag, min, v ? v : "(nothing)");
        return -1;
    }
    *out = (int)n;
    return 0;
}

#define TRY(call)                                                                            \
    do {                                                                                     \
        kl_status s_ = (call);                                                               \
        if (s_ != KL_OK) {                                                                   \
            fprintf(stderr, "bench_mlp: %s failed: %s (%s)\n", #call, kl_last_error(),         \
                    kl_status_str(s_));                                                      \
            return 1;                                                                        \
        }                                                                                    \
    } while (0)

int main(int argc, char **argv)
{
    int steps = 50, warmup = 5, threads = 2, batch = 256, profile = 0, acc = 1;
    const char *device = "cpu";
    kl_dtype calc = KL_F32; /* --bf16: KL_BF16; --f16: KL_F16 */
    for (int i = 1; i < argc; i++) {
        int rc = 0;
        if (!strcmp(argv[i], "--steps")) rc = parse_int("--steps", i + 1 < argc ? argv[++i] : NULL, 1, &steps);
        else if (!strcmp(argv[i], "--warmup")) rc = parse_int("--warmup", i + 1 < argc ? argv[++i] : NULL, 0, &warmup);
        else if (!strcmp(argv[i], "--threads")) rc = parse_int("--threads", i + 1 < argc ? argv[++i] : NULL, 1, &threads);
        else if (!strcmp(argv[i], "--batch")) rc = parse_int("--batch", i + 1 < argc ? argv[++i] : NULL, 1, &batch);
        else if (!strcmp(argv[i], "--accumulate")) rc = parse_int("--accumulate", i + 1 < argc ? argv[++i] : NULL, 1, &acc);
        else if (!strcmp(argv[i], "--profile")) profile = 1;
        else if (!strcmp(argv[i], "--bf16")) calc = KL_BF16;
        else if (!strcmp(argv[i], "--f16")) calc = KL_F16;
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) device = argv[++i];
        else {
            fprintf(stderr, "usage: bench_mlp [--steps N] [--warmup N] [--threads N] [--batch N] [--accumulate K] "
                            "[--bf16 | --f16] [--profile] [--device cuda:N]\n");
            return 2;
        }
        if (rc) return 2;
    }

    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *x, *y, *w1, *b1, *w2, *b2, *w3, *b3, *h, *logits, *loss;
    kl_ctx_opts co = {.threads = threads, .seed = 42};
    TRY(kl_device_parse(device, &co.device));
    int gpu = co.device.type == KL_DEVICE_CUDA;
    int64_t xd[2] = {batch, IN}, yd[1] = {batch};
    int64_t w1d[2] = {HID, IN}, w2d[2] = {HID, HID}, w3d[2] = {OUT, HID}, hb[1] = {HID}, ob[1] = {OUT};
    TRY(kl_ctx_new(&co, &ctx));
    TRY(kl_graph_new(ctx, &g));
    TRY(kl_input(g, "x", KL_F32, 2, xd, &x));
    TRY(kl_input(g, "y", KL_I32, 1, yd, &y));
    TRY(kl_param(g, "fc1.weight", KL_F32, 2, w1d, NULL, &w1));
    TRY(kl_param(g, "fc1.bias", KL_F32, 1, hb, NULL, &b1));
    TRY(kl_param(g, "fc2.weight", KL_F32, 2, w2d, NULL, &w2));
    TRY(kl_param(g, "fc2.bias", KL_F32, 1, hb, NULL, &b2));
    TRY(kl_param(g, "fc3.weight", KL_F32, 2, w3d, NULL, &w3));
    TRY(kl_param(g, "fc3.bias", KL_F32, 1, ob, NULL, &b3));
    kl_tensor *const ps[] = {x, w1, b1, w2, b2, w3, b3}, **cs[] = {&h, &w1, &b1, &w2, &b2, &w3, &b3};
    for (int i = 0; i < 7; i++) TRY(kl_cast(g, ps[i], calc, cs[i])); /* --bf16: compute copies (else no-ops) */
    TRY(kl_linear(g, h, w1, b1, KL_ACT_RELU, &h));
    TRY(kl_linear(g, h, w2, b2, KL_ACT_RELU, &h));
    TRY(kl_linear(g, h, w3, b3, KL_ACT_NONE, &logits));
    TRY(kl_cast(g, logits, KL_F32, &logits));
    TRY(kl_softmax_cross_entropy(g, logits, y, &loss));
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAM, .lr = 1e-3, .accumulate = acc};
    if (calc == KL_F16) oo.loss_scale = 65536, oo.scale_window = 2000; /* GradScaler's defaults */
    TRY(kl_optim_new(ctx, &oo, &opt));
    TRY(kl_optim_minimize(g, opt, loss, NULL));
    TRY(kl_graph_plan(g, NULL));

    size_t nx = (size_t)batch * IN;
    float *xs = malloc(nx * sizeof *xs);
    int32_t *ys = malloc((size_t)batch * sizeof *ys);
    double *ms = malloc((size_t)steps * sizeof *ms);
    if (!xs || !ys || !ms) {
        fprintf(stderr, "bench_mlp: out of memory for a batch of %d\n", batch);
        return 1;
    }
    uint64_t seed = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < nx; i++) xs[i] = (float)((rng_next(&seed) >> 40) / (double)(1 << 24)); /* U[0,1) like pixels */
    for (int i = 0; i < batch; i++) ys[i] = (int32_t)(rng_next(&seed) % OUT);

    float loss0 = NAN, loss1 = NAN;
    if (gpu) { /* the batch lives on the device; steps go back to back */
        TRY(kl_tensor_set(x, xs, nx * sizeof *xs));
        TRY(kl_tensor_set(y, ys, (size_t)batch * sizeof *ys));
        for (int s = 0; s < warmup * acc; s++) {
            TRY(kl_graph_run(g));
            if (s == 0) TRY(kl_tensor_get(loss, &loss0, sizeof loss0));
        }
        TRY(kl_tensor_get(loss, &loss1, sizeof loss1)); /* waits for the warmup */
        if (profile) TRY(kl_graph_profile(g, 1));
        double t0 = now_ms();
        for (int s = 0; s < steps * acc; s++) TRY(kl_graph_run(g));
        TRY(kl_tensor_get(loss, &loss1, sizeof loss1)); /* waits for the last step */
        double per = (now_ms() - t0) / steps;
        for (int s = 0; s < steps; s++) ms[s] = per;
    }
    for (int s = 0; !gpu && s < warmup + steps; s++) {
        if (profile && s == warmup) { /* time the measured steps only; the printout divides by the run count */
            TRY(kl_graph_profile(g, 1));
            TRY(kl_graph_set_runs(g, 0)); /* no dropout here, so the counter is free to reset */
        }
        double t0 = now_ms();
        for (int k = 0; k < acc; k++) {
            TRY(kl_tensor_set(x, xs, nx * sizeof *xs));
            TRY(kl_tensor_set(y, ys, (size_t)batch * sizeof *ys));
            TRY(kl_graph_run(g));
        }
        double t1 = now_ms();
        if (s >= warmup) ms[s - warmup] = t1 - t0;
        if (s == 0) TRY(kl_tensor_get(loss, &loss0, sizeof loss0));
    }
    if (!gpu) TRY(kl_tensor_get(loss, &loss1, sizeof loss1));

    double mean = 0;
    for (int i = 0; i < steps; i++) mean += ms[i];
    mean /= steps;
    qsort(ms, (size_t)steps, sizeof *ms, cmp_double);
    double median = steps % 2 ? ms[steps / 2] : 0.5 * (ms[steps / 2 - 1] + ms[steps / 2]);

    kl_graph_stats st;
    TRY(kl_graph_stats_get(g, &st));
    double mib = 1024.0 * 1024.0;
    if (gpu)
        printf("kiln MLP %d-%d-%d-%d %s, batch %d x %d accumulated, Adam lr 1e-3, %s (%s), %d steps after %d warmup\n", IN,
               HID, HID, OUT, kl_dtype_name(calc), batch, acc, device,
               kl_graph_captured(g) ? "CUDA graph replay" : "eager launches", steps, warmup);
    else
        printf("kiln MLP %d-%d-%d-%d %s, batch %d x %d accumulated, Adam lr 1e-3, %d threads, %d steps after %d warmup\n",
               IN, HID, HID, OUT, kl_dtype_name(calc), batch, acc, kl_ctx_threads(ctx), steps, warmup);
    printf("  ms/step: median %.2f, mean %.2f, min %.2f, max %.2f\n", median, mean, ms[0], ms[steps - 1]);
    printf("  loss: %.4f at step 1, %.4f after step %d\n", loss0, loss1, warmup + steps);
    printf("  graph: %d ops\n", st.nodes);
    printf("  memory: arena %.2f MiB (planned), sum of intermediate tensors %.2f MiB (%.2fx the arena), "
           "parameters %.2f MiB (+ the same again for gradients)\n",
           st.arena_bytes / mib, st.tensor_bytes / mib, st.arena_bytes ? (double)st.tensor_bytes / st.arena_bytes : 0.0,
           st.param_bytes / mib);
    if (profile) kl_graph_profile_print(g, stdout);
    printf("kiln_ms_per_step=%.4f kiln_ms_mean=%.4f kiln_ms_min=%.4f arena_bytes=%zu tensor_bytes=%zu param_bytes=%zu threads=%d "
           "steps=%d\n",
           median, mean, ms[0], st.arena_bytes, st.tensor_bytes, st.param_bytes, kl_ctx_threads(ctx), steps);

    free(xs);
    free(ys);
    free(ms);
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
    return 0;
}
