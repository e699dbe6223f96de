/* KV-cache decoding (src/nn/model_kv.c): the logits after feeding tokens one
 * at a time equal the full forward's at every position, for a GPT with
 * learned positions, a RoPE block, biases off in one block, a tied output
 * and a linear + gelu head; a full cache and unsupported models fail with
 * clear messages; reset starts over. */
#include "testutil.h"
#include "core/error.h"
#include "io/config.h"
#include "nn/model_kv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static kl_cfg *g_cfg;

static kl_status parse(const char *yaml, kl_model **m)
{
    kl_cfg_free(g_cfg);
    g_cfg = NULL;
    *m = NULL;
    KL_TRY(kl_cfg_parse(yaml, strlen(yaml), "kv.yaml", &g_cfg));
    kl_cfg_node *mn;
    KL_TRY(kl_cfg_get_map(kl_cfg_root(g_cfg), "model", 1, &mn));
    return kl_model_from_cfg(mn, m);
}

/* Logits [T, V] of the full forward on tok[0..T). */
static float *forward_full(kl_model *m, kl_ctx *ctx, const int32_t *tok, int64_t T)
{
    kl_graph *g = NULL;
    kl_tensor *x = NULL, *y = NULL;
    int64_t xd[2] = {1, T}, V = kl_model_vocab(m);
    float *out = calloc((size_t)(T * V), sizeof *out);
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_I32, 2, xd, &x));
    CHECK_OK(kl_model_forward(m, g, x, 0, &y));
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_tensor_set(x, tok, (size_t)T * sizeof *tok));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, out, (size_t)(T * V) * sizeof *out));
    kl_graph_free(g);
    return out;
}

static void check_model(const char *yaml, int64_t T, int64_t V)
{
    kl_model *m;
    kl_ctx *ctx;
    kl_kv_decoder *d;
    kl_ctx_opts co = {.threads = 2, .seed = 11};
    CHECK_OK(parse(yaml, &m));
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_kv_decoder_new(m, ctx, &d)); /* creates the parameters first */
    CHECK(kl_kv_decoder_capacity(d) == T && kl_kv_decoder_len(d) == 0);
    /* non-trivial weights: biases and layernorm gains too */
    for (int i = 0; i < kl_ctx_param_count(ctx); i++) {
        const char *nm;
        kl_dtype dt;
        int nd, tr;
        int64_t dims[KL_MAX_DIMS], n = 1;
        CHECK_OK(kl_ctx_param_info(ctx, i, &nm, &dt, &nd, dims, &tr));
        for (int k = 0; k < nd; k++) n *= dims[k];
        float *w = malloc((size_t)n * sizeof *w);
        for (int64_t k = 0; k < n; k++) w[k] = (float)(rand() % 2001 - 1000) / 3000.0f + (nd == 1 && strstr(nm, "weight") ? 1 : 0);
        CHECK_OK(kl_ctx_param_set(ctx, i, w, (size_t)n * sizeof *w));
        free(w);
    }
    int32_t tok[64];
    for (int64_t i = 0; i < T; i++) tok[i] = rand() % (int)V;
    float *full = forward_full(m, ctx, tok, T), *lg = malloc((size_t)V * sizeof *lg);
    double worst = 0, scale = 0;
    for (int round = 0; round < 2; round++) {
        for (int64_t i = 0; i < T; i++) {
            CHECK_OK(kl_kv_decoder_feed(d, tok[i], lg));
            for (int64_t v = 0; v < V; v++) {
                worst = fmax(worst, fabs((double)lg[v] - full[i * V + v]));
                scale = fmax(scale, fabs((double)full[i * V + v]));
            }
        }
        CHECK(kl_kv_decoder_len(d) == T);
        CHECK_ERR(kl_kv_decoder_feed(d, tok[0], lg), KL_EINVAL, "KV cache: full at");
        kl_kv_decoder_reset(d);
    }
    printf("     kv decode vs full forward: max |diff| %.3g (logits up to %.3g)\n", worst, scale);
    CHECK(scale > 0.5 && worst < 1e-4 * scale);
    CHECK_ERR(kl_kv_decoder_feed(d, (int32_t)V + 5, lg), KL_EINVAL, "");
    CHECK(kl_kv_decoder_len(d) == 0);
    free(full);
    free(lg);
    kl_kv_decoder_free(d);
    kl_ctx_free(ctx);
    kl_model_free(m);
}

int main(void)
{
    srand(5);
    check_model("model:\n  input: {tokens: 12}\n  vocab: 17\n  layers:\n"
                "    - {type: embedding, dim: 24}\n    - {type: pos_embedding}\n    - {type: dropout, p: 0.1}\n"
                "    - {type: transformer_block, heads: 3}\n"
                "    - {type: transformer_block, heads: 2, rope: true, bias: false, mlp_ratio: 2}\n"
                "    - {type: layernorm}\n    - {type: linear, out: vocab, tie: true, bias: false}\n",
                12, 17);
    check_model("model:\n  input: {tokens: 9}\n  vocab: 11\n  layers:\n"
                "    - {type: embedding, dim: 16}\n"
                "    - {type: transformer_block, heads: 4, rope: true}\n"
                "    - {type: residual, layers: [{type: linear, out: 16}, {type: gelu}]}\n"
                "    - {type: transformer_block, heads: 1, rope: true}\n"
                "    - {type: layernorm}\n    - {type: linear, out: 32}\n    - {type: gelu}\n    - {type: linear, out: vocab}\n",
                9, 11);
    kl_model *m;
    kl_ctx *ctx;
    kl_kv_decoder *d = (kl_kv_decoder *)1;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(parse("model:\n  input: {tokens: 8}\n  vocab: 5\n  layers:\n    - {type: embedding, dim: 8}\n"
                   "    - {type: lstm, hidden: 8}\n    - {type: linear, out: vocab}\n", &m));
    CHECK_ERR(kl_kv_decoder_new(m, ctx, &d), KL_EUNSUPPORTED, "layers.1: lstm has no KV-cache decoding");
    CHECK(d == NULL);
    kl_model_free(m);
    kl_kv_decoder_free(NULL);
    kl_ctx_free(ctx);
    kl_cfg_free(g_cfg);
    return kl_test_done("test_model_kv");
}
