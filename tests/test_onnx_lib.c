/* kl_model_export_onnx on a model the CLI cannot train (no data kind gives
 * [T, D] samples) but the library builds: positions and a transformer block
 * on [T, D] inputs, whose export needs the length T from the input's shape
 * as a token model's does. Writes OUT.onnx and OUT.txt (the inputs, then
 * kiln's outputs, one line each) for test_onnx.sh to compare with
 * onnxruntime; with no argument it only checks that the export succeeds. */
#include "kiln/kiln.h"
#include "io/config.h"
#include "nn/model.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char cfg_text[] = "model:\n"
                               "  input: [8, 6]\n"
                               "  layers:\n"
                               "    - {type: pos_embedding}\n"
                               "    - {type: transformer_block, heads: 3}\n"
                               "    - {type: flatten}\n"
                               "    - {type: linear, out: 3}\n";

int main(int argc, char **argv)
{
    char base[256] = "/tmp/kiln_onnx_lib_XXXXXX", path[300];
    if (argc > 1) snprintf(base, sizeof base, "%s", argv[1]);
    else {
        int fd = mkstemp(base);
        CHECK(fd >= 0);
        if (fd >= 0) close(fd);
    }
    kl_cfg *cfg;
    kl_cfg_node *mn;
    kl_model *m;
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *out;
    CHECK_OK(kl_cfg_parse(cfg_text, sizeof cfg_text - 1, "seq_tf.yaml", &cfg));
    CHECK_OK(kl_cfg_get_map(kl_cfg_root(cfg), "model", 1, &mn));
    CHECK_OK(kl_model_from_cfg(mn, &m));
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    enum { B = 2, T = 8, D = 6, C = 3 };
    int64_t xd[3] = {B, T, D};
    CHECK_OK(kl_input(g, "x", KL_F32, 3, xd, &x));
    CHECK_OK(kl_model_forward(m, g, x, 0, &out));
    CHECK_OK(kl_output(g, out));
    float xv[B * T * D], ov[B * C];
    uint32_t r = 12345;
    for (int i = 0; i < B * T * D; i++) {
        r = r * 1664525u + 1013904223u;
        xv[i] = (float)(r >> 8) / 16777216.0f - 0.5f;
    }
    CHECK_OK(kl_tensor_set(x, xv, sizeof xv));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(out, ov, sizeof ov));
    snprintf(path, sizeof path, "%s.onnx", base);
    CHECK_OK(kl_model_export_onnx(m, ctx, NULL, path));
    if (argc > 1) {
        snprintf(path, sizeof path, "%s.txt", base);
        FILE *f = fopen(path, "w");
        CHECK(f != NULL);
        for (int i = 0; f && i < B * T * D; i++) fprintf(f, "%.9g ", xv[i]);
        if (f) fprintf(f, "\n");
        for (int i = 0; f && i < B * C; i++) fprintf(f, "%.9g ", ov[i]);
        if (f) fprintf(f, "\n"), fclose(f);
    } else {
        unlink(path);
        unlink(base);
    }
    kl_graph_free(g);
    kl_ctx_free(ctx);
    kl_model_free(m);
    kl_cfg_free(cfg);
    return kl_test_done("test_onnx_lib");
}
