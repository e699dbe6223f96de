/* A 2-layer MLP trained with kiln's C API on a synthetic task: classify
 * points of three interleaved spirals. Build: part of the CMake build
 * (example_mlp), or against an installed kiln (share/doc/kiln/examples):
 *   cc -std=c11 mlp.c $(pkg-config --cflags --libs kiln) -lm
 * Prints the loss every 200 steps and the final accuracy. */
#include <kiln/kiln.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef M_PI /* strict C11 does not define it */
#define M_PI 3.14159265358979323846
#endif

#define N 300      /* points */
#define CLASSES 3
#define HIDDEN 128

#define TRY(call)                                                             \
    do {                                                                      \
        if ((call) != KL_OK) {                                                \
            fprintf(stderr, "kiln: %s\n", kl_last_error());                   \
            return 1;                                                         \
        }                                                                     \
    } while (0)

int main(void)
{
    static float x[N * 2];
    static int32_t y[N];
    for (int i = 0; i < N; i++) { /* three spiral arms */
        int c = i % CLASSES;
        double t = (double)(i / CLASSES) / (N / CLASSES), a = t * 4.0 + c * 2.0 * M_PI / CLASSES;
        x[2 * i] = (float)(t * cos(a));
        x[2 * i + 1] = (float)(t * sin(a));
        y[i] = c;
    }

    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *in, *labels, *w1, *b1, *w2, *b2, *h, *logits, *loss;
    int64_t xd[2] = {N, 2}, yd[1] = {N}, w1d[2] = {HIDDEN, 2}, b1d[1] = {HIDDEN}, w2d[2] = {CLASSES, HIDDEN},
            b2d[1] = {CLASSES};
    kl_ctx_opts co = {.seed = 42};
    TRY(kl_ctx_new(&co, &ctx));
    TRY(kl_graph_new(ctx, &g));
    TRY(kl_input(g, "x", KL_F32, 2, xd, &in));
    TRY(kl_input(g, "y", KL_I32, 1, yd, &labels));
    TRY(kl_param(g, "fc1.weight", KL_F32, 2, w1d, NULL, &w1));
    TRY(kl_param(g, "fc1.bias", KL_F32, 1, b1d, NULL, &b1));
    TRY(kl_param(g, "fc2.weight", KL_F32, 2, w2d, NULL, &w2));
    TRY(kl_param(g, "fc2.bias", KL_F32, 1, b2d, NULL, &b2));
    TRY(kl_linear(g, in, w1, b1, KL_ACT_RELU, &h));
    TRY(kl_linear(g, h, w2, b2, KL_ACT_NONE, &logits));
    TRY(kl_output(g, logits));
    TRY(kl_softmax_cross_entropy(g, logits, labels, &loss));
    TRY(kl_backward(g, loss));                       /* gradient ops join the graph */
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAM, .lr = 0.01};
    TRY(kl_optim_new(ctx, &oo, &opt));
    TRY(kl_optim_step(g, opt, NULL));                      /* and so does the update */

    TRY(kl_tensor_set(in, x, sizeof x));
    TRY(kl_tensor_set(labels, y, sizeof y));
    float l = 0;
    for (int step = 1; step <= 2000; step++) {       /* each run = one training step */
        TRY(kl_graph_run(g));
        if (step % 200 == 0) {
            TRY(kl_tensor_get(loss, &l, sizeof l));
            printf("step %4d  loss %.4f\n", step, l);
        }
    }
    static float lg[N * CLASSES];
    TRY(kl_tensor_get(logits, lg, sizeof lg));
    int ok = 0;
    for (int i = 0; i < N; i++) {
        int best = 0;
        for (int c = 1; c < CLASSES; c++)
            if (lg[i * CLASSES + c] > lg[i * CLASSES + best]) best = c;
        ok += best == y[i];
    }
    kl_graph_stats st;
    TRY(kl_graph_stats_get(g, &st));
    printf("training accuracy %.1f%%  (%d ops, arena %zu bytes for %zu bytes of tensors)\n", 100.0 * ok / N, st.nodes,
           st.arena_bytes, st.tensor_bytes);
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
    return ok * 10 >= N * 9 ? 0 : 1;
}
