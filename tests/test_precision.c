/* Mixed precision (kl_model_set_precision): a CNN with batchnorm, an MLP and
 * a small transformer trained a few SGD steps (with clipping) on one batch
 * in bf16 (and f16) against the same models in f32 from the same initial
 * parameters. The 16-bit runs' losses stay within a few 16-bit roundings of
 * f32's and fall, their parameters stay f32 and their updates match f32's
 * to 16-bit precision, batchnorm's running statistics stay f32 and are
 * updated, the logits come back f32; the graph holds 16-bit tensors; bad
 * precisions and step-by-step generation are refused with messages. The
 * step graphs come from src/cli/evaluator.c (compiled in). */
#include "testutil.h"
#include "../src/cli/evaluator.c"
#include "io/config.h"
#include "core/graph.h" /* the nodes' dtypes */

#include <math.h>
#include <stdlib.h>

static const char *const CNN = "model:\n"
                               "  input: [1, 8, 8]\n"
                               "  layers:\n"
                               "    - {type: conv2d, out: 4, kernel: 3, padding: 1}\n"
                               "    - {type: batchnorm}\n"
                               "    - {type: relu}\n"
                               "    - {type: maxpool2d, kernel: 2}\n"
                               "    - {type: flatten}\n"
                               "    - {type: dropout, p: 0.2}\n"
                               "    - {type: linear, out: 16}\n"
                               "    - {type: gelu}\n"
                               "    - {type: linear, out: 5}\n";

static const char *const GPT = "model:\n"
                               "  input: {tokens: 8}\n"
                               "  vocab: 11\n"
                               "  layers:\n"
                               "    - {type: embedding, dim: 16}\n"
                               "    - {type: pos_embedding}\n"
                               "    - {type: transformer_block, heads: 2}\n"
                               "    - {type: layernorm}\n"
                               "    - {type: linear, out: vocab, tie: true}\n";

static kl_model *parse(const char *yaml) { return kl_test_model(yaml, "precision.yaml"); }

#define B 16
#define STEPS 4

typedef struct {
    double loss[STEPS];
    float *init, *params; /* every slot's values, concatenated: before and after */
    int64_t n;
    double bn_mean; /* sum of |running_mean| (CNN) */
} run_result;

/* Trains m (precision calc) STEPS Adam steps on fixed batches. */
static void train(const char *yaml, kl_dtype calc, run_result *r)
{
    kl_model *m = parse(yaml);
    CHECK_OK(kl_model_set_precision(m, calc));
    CHECK(kl_model_precision(m) == calc);
    kl_ctx *ctx = NULL;
    kl_ctx_opts co = {.threads = 2, .seed = 7};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    kl_optim_opts oo = {.kind = KL_OPTIM_SGD, .lr = 0.05, .max_grad_norm = 1.0};
    kl_optim *opt = NULL;
    CHECK_OK(kl_optim_new(ctx, &oo, &opt));
    step_graph sg;
    CHECK_OK(step_graph_build(&sg, m, ctx, opt, B));
    int64_t T = kl_model_tokens(m), nx = T ? B * T : B * 64;
    float *xf = malloc((size_t)nx * sizeof *xf);
    int32_t *xi = malloc((size_t)nx * sizeof *xi), y[B * 8];
    uint32_t s = 99;
    for (int64_t i = 0; i < nx; i++) {
        s = s * 1664525u + 1013904223u;
        xf[i] = (float)((s >> 8) % 2001) / 1000.0f - 1.0f;
        xi[i] = (int32_t)((s >> 8) % 11);
    }
    for (int i = 0; i < (T ? B * T : B); i++) y[i] = T ? xi[(i + 1) % nx] : (int32_t)((i * 3) % 5);
    r->bn_mean = 0;
    r->init = kl_test_params(ctx, &r->n, NULL, NULL);
    for (int step = 0; step < STEPS; step++) {
        double sum = 0;
        int64_t correct = 0;
        CHECK_OK(step_graph_run(&sg, m, T ? (const void *)xi : (const void *)xf, y, &sum, &correct, NULL, NULL));
        r->loss[step] = sum / (double)sg.rows;
    }
    if (!T) CHECK(kl_tensor_dtype(sg.logits) == KL_F32); /* the loss and metrics read f32 */
    int sixteen = 0; /* tensors the graph computes in 16 bits */
    for (int i = 0; i < sg.g->n_nodes; i++) sixteen += sg.g->nodes[i]->dtype == KL_BF16 || sg.g->nodes[i]->dtype == KL_F16;
    CHECK(calc == KL_F32 ? sixteen == 0 : sixteen > 10);
    /* the max-pool gradient reads the forward node only through its saved
     * indices: widening casts dy and writes dx, and leaves y alone */
    int pools = 0;
    for (int i = 0; i < sg.g->n_nodes; i++) {
        const kl_tensor *n = sg.g->nodes[i];
        if (n->op != KL_OP_pool2d_bwd || calc == KL_F32) continue;
        size_t a = KL_ALIGN, want = ((size_t)kl_numel(n) * 4 + a - 1) / a * a + ((size_t)kl_numel(n->src[0]) * 4 + a - 1) / a * a;
        CHECK(kl_widen_bytes(KL_BACKEND_CPU, n) == want);
        pools++;
    }
    CHECK(pools == (calc != KL_F32 && !T));
    int64_t n2;
    r->params = kl_test_params(ctx, &n2, "running_mean", &r->bn_mean); /* parameters and buffers stay f32 */
    CHECK(n2 == r->n);
    free(xf);
    free(xi);
    step_graph_free(&sg);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
    kl_model_free(m);
}

static void compare(const char *what, const char *yaml, kl_dtype calc, double loss_tol, double param_tol)
{
    run_result a, b;
    train(yaml, KL_F32, &a);
    train(yaml, calc, &b);
    for (int s = 0; s < STEPS; s++) {
        double e = fabs(a.loss[s] - b.loss[s]) / fabs(a.loss[s]);
        if (!(e <= loss_tol))
            fprintf(stderr, "  %s %s step %d: loss f32 %.6f, %s %.6f\n", what, kl_dtype_name(calc), s, a.loss[s],
                    kl_dtype_name(calc), b.loss[s]);
        CHECK(e <= loss_tol);
    }
    CHECK(a.loss[STEPS - 1] < a.loss[0] && b.loss[STEPS - 1] < b.loss[0]); /* both learn */
    CHECK(a.n == b.n);
    /* the same start, and updates alike: |u16 - u32| / |u32| over all values */
    double dd = 0, uu = 0, start = 0;
    for (int64_t i = 0; i < a.n && a.n == b.n; i++) {
        double ua = (double)a.params[i] - a.init[i], ub = (double)b.params[i] - b.init[i];
        dd += (ua - ub) * (ua - ub), uu += ua * ua, start = fmax(start, fabs((double)a.init[i] - b.init[i]));
    }
    double worst = sqrt(dd / (uu > 0 ? uu : 1));
    if (!(worst <= param_tol)) fprintf(stderr, "  %s %s: updates differ by %.3g (relative)\n", what, kl_dtype_name(calc), worst);
    CHECK(uu > 0 && start == 0 && worst <= param_tol);
    if (a.bn_mean > 0) CHECK(b.bn_mean > 0.5 * a.bn_mean && b.bn_mean < 2 * a.bn_mean); /* statistics updated */
    printf("  ok %s %s (last loss %.5f vs %.5f, updates within %.2g)\n", what, kl_dtype_name(calc), b.loss[STEPS - 1],
           a.loss[STEPS - 1], worst);
    free(a.init), free(a.params);
    free(b.init), free(b.params);
}

static void test_errors(void)
{
    kl_model *m = parse(GPT);
    CHECK_ERR(kl_model_set_precision(m, KL_I32), KL_EINVAL, "model precision must be f32, bf16 or f16, got i32");
    CHECK_OK(kl_model_set_precision(m, KL_BF16));
    kl_ctx *ctx = NULL;
    kl_ctx_opts co = {.threads = 1};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    kl_graph *g = NULL;
    kl_tensor *x, *y;
    kl_model_state st;
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_I32, 2, (int64_t[]){1, 1}, &x));
    CHECK_ERR(kl_model_forward_state(m, g, x, &st, &y), KL_EUNSUPPORTED, "generation runs in f32; this model computes in bf16");
    /* a 16-bit trainable parameter is refused, saying what to do instead */
    CHECK_ERR(kl_param(g, "w", KL_BF16, 1, (int64_t[]){3}, NULL, &y), KL_EUNSUPPORTED, "keep it f32 and cast it");
    kl_graph_free(g);
    kl_ctx_free(ctx);
    kl_model_free(m);
}

int main(void)
{
    /* a handful of roundings of bf16's 8-bit and f16's 11-bit significands */
    compare("cnn", CNN, KL_BF16, 1e-2, 0.02);
    compare("cnn", CNN, KL_F16, 2e-3, 2e-3);
    compare("gpt", GPT, KL_BF16, 1e-2, 0.02);
    test_errors();
    return kl_test_done("test_precision");
}
