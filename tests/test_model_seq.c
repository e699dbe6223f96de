/* Sequence models from configs (src/nn/model_seq.c): token inputs, shape
 * inference, parameter names and counts (nn.LSTM's, nanoGPT's, tied
 * weights), the step-by-step state forward of recurrent models against the
 * whole-window forward, a short window against the full one (causality),
 * a token-model training step whose loss starts at log(V) and falls, and
 * located config errors. The step graphs come from src/cli/evaluator.c
 * (compiled in; the CLI is not in libkiln). */
#include "testutil.h"
#include "../src/cli/evaluator.c"
#include "io/config.h"

#include <math.h>
#include <stdlib.h>

static kl_cfg *g_cfg;

/* Parses YAML text (the model map) into a model; NULL on failure. */
static kl_status parse(const char *yaml, kl_model **m)
{
    kl_cfg_free(g_cfg);
    g_cfg = NULL;
    *m = NULL;
    KL_TRY(kl_cfg_parse(yaml, strlen(yaml), "seq.yaml", &g_cfg));
    kl_cfg_node *mn;
    KL_TRY(kl_cfg_get_map(kl_cfg_root(g_cfg), "model", 1, &mn));
    return kl_model_from_cfg(mn, m);
}

static kl_ctx *new_ctx(uint64_t seed)
{
    kl_ctx *ctx = NULL;
    kl_ctx_opts co = {.threads = 2, .seed = seed};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    return ctx;
}

/* Logits [1, T, V] of the model on tokens[0..T) (not training). */
static float *forward_full(kl_model *m, kl_ctx *ctx, const int32_t *tok, int64_t T)
{
    kl_graph *g = NULL;
    kl_tensor *x = NULL, *y = NULL;
    int64_t xd[2] = {1, T}, V = kl_model_outputs(m);
    float *out = calloc((size_t)(T * V), sizeof *out);
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_I32, 2, xd, &x));
    CHECK_OK(kl_model_forward(m, g, x, 0, &y));
    CHECK(y && kl_tensor_ndim(y) == 3 && kl_tensor_dim(y, 1) == T && kl_tensor_dim(y, 2) == V);
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_graph_plan(g, NULL));
    CHECK_OK(kl_tensor_set(x, tok, (size_t)T * sizeof *tok));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, out, (size_t)(T * V) * sizeof *out));
    kl_graph_free(g);
    return out;
}

static double max_diff(const float *a, const float *b, int64_t n)
{
    double d = 0;
    for (int64_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - (double)b[i]));
    return d;
}

/* The T = 1 graph with carried states gives the whole-window logits. */
static void check_state_stepping(kl_model *m, kl_ctx *ctx, const int32_t *tok, int64_t T, const float *full)
{
    kl_graph *g = NULL;
    kl_tensor *x = NULL, *y = NULL;
    kl_model_state st;
    int64_t xd[2] = {1, 1}, V = kl_model_outputs(m);
    float h[4][64] = {{0}}, c[4][64] = {{0}}, *lg = malloc((size_t)V * sizeof *lg);
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_I32, 2, xd, &x));
    CHECK_OK(kl_model_forward_state(m, g, x, &st, &y));
    CHECK(st.n == kl_model_state_count(m) && st.n <= 4);
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_graph_plan(g, NULL));
    double worst = 0;
    for (int64_t t = 0; t < T; t++) {
        CHECK_OK(kl_tensor_set(x, &tok[t], sizeof *tok));
        for (int i = 0; i < st.n; i++) {
            size_t b = (size_t)st.hidden[i] * sizeof(float);
            CHECK_OK(kl_tensor_set(st.h_in[i], h[i], b));
            if (st.c_in[i]) CHECK_OK(kl_tensor_set(st.c_in[i], c[i], b));
        }
        CHECK_OK(kl_graph_run(g));
        for (int i = 0; i < st.n; i++) {
            size_t b = (size_t)st.hidden[i] * sizeof(float);
            CHECK_OK(kl_tensor_get(st.h_out[i], h[i], b));
            if (st.c_out[i]) CHECK_OK(kl_tensor_get(st.c_out[i], c[i], b));
        }
        CHECK_OK(kl_tensor_get(y, lg, (size_t)V * sizeof *lg));
        worst = fmax(worst, max_diff(lg, full + t * V, V));
    }
    CHECK(worst < 1e-4);
    if (worst >= 1e-4) fprintf(stderr, "state stepping differs from the window by %g\n", worst);
    free(lg);
    kl_graph_free(g);
}

static const char *lstm_yaml = "model:\n"
                               "  input: {tokens: 12}\n"
                               "  vocab: 7\n"
                               "  layers:\n"
                               "    - {type: embedding, dim: 5}\n"
                               "    - {type: lstm, hidden: 6, layers: 2}\n"
                               "    - {type: gru, hidden: 4}\n"
                               "    - {type: linear, out: vocab}\n";

static void test_rnn(void)
{
    kl_model *m = NULL;
    CHECK_OK(parse(lstm_yaml, &m));
    if (!m) return;
    CHECK(kl_model_tokens(m) == 12 && kl_model_vocab(m) == 7 && kl_model_outputs(m) == 7);
    CHECK(kl_model_state_count(m) == 3 && !kl_model_windowed(m));
    /* embedding 7*5; lstm l0 4*6*(5+6)+2*24, l1 4*6*(6+6)+2*24; gru 3*4*(6+4)+2*12; linear 7*4+7 */
    int64_t want = 35 + (264 + 48) + (288 + 48) + (120 + 24) + 35;
    CHECK(kl_model_param_count(m) == want);
    kl_ctx *ctx = new_ctx(11);
    int32_t tok[12] = {3, 1, 4, 1, 5, 2, 6, 0, 2, 6, 5, 3};
    float *full = forward_full(m, ctx, tok, 12);
    static const char *names[] = {"layers.0.weight", "layers.1.weight_ih_l0", "layers.1.weight_hh_l1",
                                  "layers.1.bias_ih_l1", "layers.2.bias_hh_l0", "layers.3.weight", "layers.3.bias"};
    for (int i = 0; i < 7; i++) CHECK(kl_ctx_param_find(ctx, names[i]) >= 0);
    int64_t total = 0;
    for (int i = 0; i < kl_ctx_param_count(ctx); i++) {
        const char *nm;
        kl_dtype dt;
        int nd, tr;
        int64_t d[KL_MAX_DIMS], n = 1;
        CHECK_OK(kl_ctx_param_info(ctx, i, &nm, &dt, &nd, d, &tr));
        for (int k = 0; k < nd; k++) n *= d[k];
        total += n;
    }
    CHECK(total == want);
    check_state_stepping(m, ctx, tok, 12, full);
    free(full);
    kl_ctx_free(ctx);
    kl_model_free(m);
}

static const char *gpt_yaml = "model:\n"
                              "  input: {tokens: 16}\n"
                              "  vocab: 9\n"
                              "  layers:\n"
                              "    - {type: embedding, dim: 8, std: 0.5}\n"
                              "    - {type: pos_embedding, std: 0.3}\n"
                              "    - {type: transformer_block, heads: 2, std: 0.3}\n"
                              "    - {type: transformer_block, heads: 2, rope: true, mlp_ratio: 2, std: 0.3}\n"
                              "    - {type: layernorm}\n"
                              "    - {type: linear, out: vocab, tie: true, bias: false}\n";

static void test_gpt(void)
{
    kl_model *m = NULL;
    CHECK_OK(parse(gpt_yaml, &m));
    if (!m) return;
    CHECK(kl_model_windowed(m) && kl_model_state_count(m) == 0);
    /* emb 72, pos 128, block(M=32) 4*8 + 3*64+24 + 64+8 + 32*8+32 + 8*32+8 = 872, block(M=16) 4*8 + 216 + 72 + 144 + 136 = 600, ln 16 */
    int64_t want = 72 + 128 + 872 + 600 + 16;
    CHECK(kl_model_param_count(m) == want);
    kl_ctx *ctx = new_ctx(5);
    int32_t tok[16] = {1, 8, 2, 7, 3, 6, 4, 5, 0, 8, 1, 7, 2, 6, 3, 5};
    float *full = forward_full(m, ctx, tok, 16);
    CHECK(kl_ctx_param_find(ctx, "layers.2.attn.c_attn.weight") >= 0 && kl_ctx_param_find(ctx, "layers.3.mlp.c_proj.bias") >= 0);
    CHECK(kl_ctx_param_find(ctx, "layers.5.weight") < 0); /* tied: the embedding's */
    /* causal: 5 tokens give the first 5 positions of the 16-token window */
    float *part = forward_full(m, ctx, tok, 5);
    double d = max_diff(part, full, 5 * 9);
    CHECK(d < 1e-5);
    if (d >= 1e-5) fprintf(stderr, "short window differs by %g\n", d);
    free(part);
    free(full);
    kl_ctx_free(ctx);
    kl_model_free(m);
}

/* bias: false as nanoGPT's bias=False: no bias in the block's linears or
 * layer norms, nor in a {type: layernorm, bias: false}. */
static void test_gpt_no_bias(void)
{
    kl_model *m = NULL;
    CHECK_OK(parse("model:\n  input: {tokens: 8}\n  vocab: 9\n  layers:\n"
                   "    - {type: embedding, dim: 8}\n    - {type: pos_embedding}\n"
                   "    - {type: transformer_block, heads: 2, bias: false}\n"
                   "    - {type: layernorm, bias: false}\n"
                   "    - {type: linear, out: vocab, tie: true, bias: false}\n", &m));
    if (!m) return;
    /* emb 72, pos 64, block 2*8 + 3*64 + 64 + 32*8 + 8*32 = 784, ln_f 8 */
    CHECK(kl_model_param_count(m) == 72 + 64 + 784 + 8);
    kl_ctx *ctx = new_ctx(2);
    int32_t tok[8] = {1, 8, 2, 7, 3, 6, 4, 5};
    float *out = forward_full(m, ctx, tok, 8);
    CHECK(kl_ctx_param_find(ctx, "layers.2.ln_1.weight") >= 0 && kl_ctx_param_find(ctx, "layers.2.ln_1.bias") < 0);
    CHECK(kl_ctx_param_find(ctx, "layers.2.ln_2.bias") < 0 && kl_ctx_param_find(ctx, "layers.2.attn.c_attn.bias") < 0);
    CHECK(kl_ctx_param_find(ctx, "layers.3.weight") >= 0 && kl_ctx_param_find(ctx, "layers.3.bias") < 0);
    int64_t total = 0;
    for (int i = 0; i < kl_ctx_param_count(ctx); i++) {
        int64_t d[KL_MAX_DIMS], n = 1;
        int nd;
        CHECK_OK(kl_ctx_param_info(ctx, i, NULL, NULL, &nd, d, NULL));
        for (int k = 0; k < nd; k++) n *= d[k];
        total += n;
    }
    CHECK(total == kl_model_param_count(m));
    free(out);
    kl_ctx_free(ctx);
    kl_model_free(m);
}

/* A token model learns a repeating pattern: the loss starts near log(V). */
static void test_training(const char *yaml, double lr)
{
    kl_model *m = NULL;
    CHECK_OK(parse(yaml, &m));
    if (!m) return;
    kl_ctx *ctx = new_ctx(3);
    kl_optim *opt = NULL;
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAM, .lr = lr, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
    step_graph sg = {0};
    CHECK_OK(kl_optim_new(ctx, &oo, &opt));
    CHECK_OK(step_graph_build(&sg, m, ctx, opt, 4));
    int64_t T = kl_model_tokens(m), V = kl_model_vocab(m);
    CHECK(sg.rows == 4 * T && sg.logits == NULL);
    int32_t x[4 * 16], y[4 * 16];
    double first = 0, last = 0;
    for (int step = 0; step < 60 && sg.g; step++) {
        for (int b = 0; b < 4; b++)
            for (int t = 0; t < T; t++) {
                x[b * T + t] = (int32_t)((b + t + step) % (V - 1));
                y[b * T + t] = (int32_t)((b + t + step + 1) % (V - 1));
            }
        double l = 0;
        int64_t corr = 0;
        CHECK_OK(step_graph_run(&sg, m, x, y, &l, &corr, NULL, NULL));
        l /= (double)sg.rows;
        if (step == 0) first = l;
        last = l;
    }
    CHECK(fabs(first - log((double)V)) < 0.3);
    if (fabs(first - log((double)V)) >= 0.3) fprintf(stderr, "first loss %g, log(V) %g\n", first, log((double)V));
    CHECK(last < 0.5 * first);
    if (!(last < 0.5 * first)) fprintf(stderr, "loss %g -> %g\n", first, last);
    step_graph_free(&sg);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
    kl_model_free(m);
}

static void test_errors(void)
{
    kl_model *m;
    CHECK_ERR(parse("model:\n  input: {tokens: 8}\n  layers:\n    - {type: linear, out: 4}\n", &m), KL_EINVAL,
              "seq.yaml:4:7: model.layers[0]: linear: the input is token ids [8]; a token model starts with {type: embedding");
    CHECK_ERR(parse("model:\n  input: [8]\n  layers:\n    - {type: embedding, dim: 4}\n", &m), KL_EINVAL,
              "seq.yaml:4:7: model.layers[0]: embedding: expects token ids");
    CHECK_ERR(parse("model:\n  input: {tokens: 8}\n  vocab: 5\n  layers:\n    - {type: embedding, dim: 6}\n"
                    "    - {type: transformer_block, heads: 4}\n    - {type: linear, out: vocab}\n", &m),
              KL_EINVAL, "seq.yaml:6:40: model.layers[1].heads: transformer_block: heads 4 must divide the width 6");
    CHECK_ERR(parse("model:\n  input: {tokens: 8}\n  vocab: 5\n  layers:\n    - {type: embedding, dim: 6}\n"
                    "    - {type: transformer_block, heads: 2, rope: true}\n    - {type: linear, out: vocab}\n", &m),
              KL_EINVAL, "model.layers[1].rope: transformer_block: rope needs an even head size, got 6 / 2 = 3");
    CHECK_ERR(parse("model:\n  input: [8]\n  layers:\n    - {type: lstm, hidden: 4}\n", &m), KL_EINVAL,
              "seq.yaml:4:7: model.layers[0]: lstm: expects a sequence [T, D] (after an embedding), got [8]");
    CHECK_ERR(parse("model:\n  input: {tokens: 8}\n  vocab: 5\n  layers:\n    - {type: embedding, dim: 6}\n"
                    "    - {type: gru, hidden: 4, dropout: 1.5}\n    - {type: linear, out: vocab}\n", &m),
              KL_EINVAL, "model.layers[1].dropout: gru: dropout must be in [0, 1), got 1.5");
    CHECK_ERR(parse("model:\n  input: {tokens: 8}\n  vocab: 5\n  layers:\n    - {type: embedding, dim: 6}\n"
                    "    - {type: lstm, hiden: 4}\n", &m),
              KL_EINVAL, "unknown key 'hiden'");
    CHECK_ERR(parse("model:\n  input: {tokens: 8}\n  vocab: 5\n  layers:\n    - {type: embedding, dim: 6}\n"
                    "    - {type: linear, out: 4}\n", &m),
              KL_EINVAL, "a token model's last layer must give [8, 5] ([T, vocab]) per sample, got [8,4]");
    CHECK_ERR(parse("model:\n  input: {tokens: 8}\n  vocab: 5\n  layers:\n    - {type: embedding, dim: 6}\n"
                    "    - {type: linear, out: vocab, tie: true, in_features: 6}\n    - {type: linear, out: vocab, tie: true}\n",
                    &m),
              KL_EINVAL, "model.layers[2].tie: linear: tie shares layers.0.weight [5, 6], so it needs out 5 and input features 6; got out 5, input 5");
    CHECK_ERR(parse("model:\n  input: [4]\n  layers:\n    - {type: linear, out: 3, tie: true}\n", &m), KL_EINVAL,
              "linear: tie: true needs an embedding layer");
    CHECK_ERR(parse("model:\n  input: [4]\n  layers:\n    - {type: linear, out: vocab}\n", &m), KL_EINVAL,
              "linear: out: vocab needs a token model");
    CHECK_ERR(parse("model:\n  input: [4]\n  vocab: 9\n  layers:\n    - {type: linear, out: 3}\n", &m), KL_EINVAL,
              "seq.yaml:3:10: model.vocab: model.vocab is for token models");
    CHECK_ERR(parse("model:\n  input: {tokens: 8}\n  vocab: 5\n  layers:\n    - {type: embedding, dim: 6, num: 3}\n", &m),
              KL_EINVAL, "embedding: num 3 is smaller than model.vocab 5");
    CHECK_ERR(parse("model:\n  input: {tokens: 0}\n  layers:\n    - {type: embedding, dim: 6}\n", &m), KL_EINVAL,
              "model.input.tokens");
    CHECK_ERR(parse("model:\n  input: {tokns: 8}\n  layers:\n    - {type: embedding, dim: 6}\n", &m), KL_EINVAL,
              "unknown key 'tokns'");
    /* sizes stay far from int64 overflow */
    CHECK_ERR(parse("model:\n  input: [100000, 100000]\n  layers:\n    - {type: flatten}\n", &m), KL_EINVAL,
              "seq.yaml:2:10: model.input: input: more than 2147483648 values per sample");
    CHECK_ERR(parse("model:\n  input: [65536, 2]\n  layers:\n    - {type: linear, out: 65536}\n", &m), KL_EINVAL,
              "seq.yaml:4:7: model.layers[0]: linear: output [65536,65536] has more than 2147483648 values per sample");
    CHECK_ERR(parse("model:\n  input: [2000000000]\n  layers:\n    - {type: linear, out: 16000000}\n", &m), KL_EINVAL,
              "linear: 32000000016000000 parameters are more than 1099511627776");
    /* vocab auto reads as 256 until kiln train sets it */
    CHECK_OK(parse("model:\n  input: {tokens: 4}\n  vocab: auto\n  layers:\n    - {type: embedding, dim: 3}\n"
                   "    - {type: linear, out: vocab}\n", &m));
    CHECK(m && kl_model_vocab(m) == 256 && kl_model_outputs(m) == 256);
    kl_model_free(m);
}

int main(void)
{
    test_rnn();
    test_gpt();
    test_gpt_no_bias();
    test_errors();
    test_training(lstm_yaml, 0.05);
    test_training("model:\n  input: {tokens: 16}\n  vocab: 9\n  layers:\n    - {type: embedding, dim: 16, std: 0.02}\n"
                  "    - {type: pos_embedding}\n    - {type: transformer_block, heads: 2, dropout: 0.1}\n"
                  "    - {type: layernorm}\n    - {type: linear, out: vocab, tie: true}\n", 0.02);
    kl_cfg_free(g_cfg);
    return kl_test_done("test_model_seq");
}
