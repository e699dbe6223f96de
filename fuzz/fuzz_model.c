/* libFuzzer target for config-built models (src/nn/model.c, model_seq.c):
 * arbitrary YAML as a `model` map -> shape inference and checks; models
 * small enough are also built and run (forward with dropout, backward, and
 * for recurrent token models the step-by-step state graph) with valid
 * inputs, so the layers' graph code meets odd but accepted shapes. Seeds:
 * the models/ configs; dictionary: fuzz/model.dict. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/config.h"
#include "kiln/kiln.h"
#include "nn/model.h"

/* Builds x [B, input...] (token ids < vocab, or small floats), runs the
 * forward (training), a backward of sum(out), and the state graph. */
static void run_small(kl_model *m)
{
    int64_t xd[KL_MAX_DIMS] = {2}, n = 2, T = kl_model_tokens(m), V = kl_model_vocab(m);
    int nd = kl_model_input_ndim(m);
    for (int i = 0; i < nd; i++) n *= (xd[i + 1] = kl_model_input_shape(m)[i]);
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_tensor *x, *y, *loss;
    kl_ctx_opts co = {.threads = 1, .seed = 1};
    if (kl_ctx_new(&co, &ctx) != KL_OK) return;
    void *buf = malloc((size_t)n * 4);
    for (int64_t i = 0; buf && i < n; i++) {
        if (T) ((int32_t *)buf)[i] = (int32_t)((i * 7 + 3) % V);
        else ((float *)buf)[i] = (float)((i % 13) - 6) * 0.125f;
    }
    if (buf && kl_graph_new(ctx, &g) == KL_OK && kl_input(g, "x", T ? KL_I32 : KL_F32, nd + 1, xd, &x) == KL_OK &&
        kl_model_forward(m, g, x, 1, &y) == KL_OK && kl_sum(g, y, 0, NULL, 0, &loss) == KL_OK &&
        kl_backward(g, loss) == KL_OK && kl_graph_plan(g, NULL) == KL_OK && kl_tensor_set(x, buf, (size_t)n * 4) == KL_OK)
        (void)kl_graph_run(g);
    kl_graph_free(g);
    g = NULL;
    kl_model_state st;
    int64_t sd[2] = {1, 1};
    if (T && !kl_model_windowed(m) && kl_graph_new(ctx, &g) == KL_OK && kl_input(g, "x", KL_I32, 2, sd, &x) == KL_OK &&
        kl_model_forward_state(m, g, x, &st, &y) == KL_OK && kl_graph_plan(g, NULL) == KL_OK &&
        kl_tensor_set(x, buf, 4) == KL_OK)
        (void)kl_graph_run(g);
    kl_graph_free(g);
    free(buf);
    kl_ctx_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kl_cfg *cfg = NULL;
    if (kl_cfg_parse((const char *)data, size, "fuzz.yaml", &cfg) != KL_OK) return 0;
    kl_cfg_node *mn = kl_cfg_get(kl_cfg_root(cfg), "model");
    kl_model *m = NULL;
    if (kl_model_from_cfg(mn ? mn : kl_cfg_root(cfg), &m) == KL_OK) {
        int64_t in = 1;
        for (int i = 0; i < kl_model_input_ndim(m); i++) in *= kl_model_input_shape(m)[i];
        FILE *f = fopen("/dev/null", "w");
        if (f) kl_model_summary(m, f), fclose(f);
        if (kl_model_param_count(m) <= 20000 && in <= 512 && kl_model_outputs(m) <= 4096) run_small(m);
        kl_model_free(m);
    }
    kl_cfg_free(cfg);
    return 0;
}
