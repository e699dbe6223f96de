/* oneDNN's convolutions inside the memory plan (backends/cpu/conv_dnnl.c):
 * a conv node that oneDNN runs gets the bytes its run uses (the operands in
 * the primitive's layouts, dz, the scratchpads: kl_dnnl_conv_bytes at the
 * context's threads) as its scratch, so the plan counts them, and running
 * the step allocates no heap memory beside the arena (these buffers used to
 * live in a process-wide cache, outside the plan: kiln plan, --mem-limit
 * and --batch auto undercounted CPU CNNs by up to 40%). A graph run at
 * another thread count than it was built for still runs. Skips without
 * oneDNN (KILN_CONV=im2col, no libdnnl.so.2, AddressSanitizer builds). */
#include "testutil.h"
#include "core/graph.h"
#include "ops/conv2d.h"

#include <malloc.h>
#include <math.h>
#include <stdlib.h>

enum { N = 32, C = 32, H = 28, W = 28, O = 32 };

/* Heap bytes in use, all arenas and mmapped chunks (glibc). */
static size_t heap_used(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

/* x (a parameter, so its gradient is formed too) -> conv with bias and a
 * fused relu -> sum, and the backward pass: the three conv ops, the
 * gradient ops forming dz from y. */
static void build(int threads, kl_ctx **ctx, kl_graph **g, kl_tensor **loss)
{
    kl_ctx_opts co = {.seed = 5, .threads = threads};
    kl_conv2d_opts o = {.padding = {1, 1}};
    int64_t xd[4] = {N, C, H, W}, wd[4] = {O, C, 3, 3}, bd = O;
    kl_tensor *x, *w, *b, *y;
    CHECK_OK(kl_ctx_new(&co, ctx));
    CHECK_OK(kl_graph_new(*ctx, g));
    CHECK_OK(kl_param(*g, "x", KL_F32, 4, xd, NULL, &x));
    CHECK_OK(kl_param(*g, "w", KL_F32, 4, wd, NULL, &w));
    CHECK_OK(kl_param(*g, "b", KL_F32, 1, &bd, NULL, &b));
    CHECK_OK(kl_conv2d_act(*g, x, w, b, &o, KL_ACT_RELU, &y));
    CHECK_OK(kl_sum(*g, y, 0, NULL, 0, loss));
    CHECK_OK(kl_output(*g, *loss));
    CHECK_OK(kl_backward(*g, *loss));
}

static bool is_conv(const kl_tensor *t)
{
    return t->op == KL_OP_conv2d || t->op == KL_OP_conv2d_bwd_data || t->op == KL_OP_conv2d_bwd_filter;
}

/* Each conv node's scratch holds oneDNN's run (which is more than the
 * copies of its dense output, in a blocked layout or not); returns the
 * largest such. */
static size_t check_scratch(const kl_graph *g, int threads)
{
    size_t most = 0;
    int convs = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        const kl_tensor *t = g->nodes[i];
        if (!is_conv(t)) continue;
        size_t dn = kl_dnnl_conv_bytes(t, threads);
        convs++;
        CHECK(dn > 0 && t->scratch_bytes >= dn);
        if (t->op == KL_OP_conv2d_bwd_data) CHECK(dn >= kl_nbytes(t)); /* dz alone is as large as dy */
        if (dn > most) most = dn;
    }
    CHECK(convs == 3);
    return most;
}

int main(void)
{
    if (kl_dnnl_conv_mode() < 0) {
        printf("oneDNN convolutions not loaded: skipped\n");
        return 77;
    }
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *loss;
    build(2, &ctx, &g, &loss);
    CHECK_OK(kl_graph_plan(g, NULL)); /* the arena, allocated */
    size_t most = check_scratch(g, 2);
    kl_graph_stats st;
    CHECK_OK(kl_graph_stats_get(g, &st));
    CHECK(st.arena_bytes >= most);
    printf("largest oneDNN conv scratch %zu bytes, arena %zu bytes\n", most, st.arena_bytes);

    /* the first run (which made oneDNN's buffers before) and the next allocate nothing like them */
    size_t y_bytes = (size_t)N * O * H * W * sizeof(float), before = heap_used();
    CHECK_OK(kl_graph_run(g));
    size_t first = heap_used();
    CHECK_OK(kl_graph_run(g));
    size_t second = heap_used();
    printf("heap growth: first run %zd bytes, second %zd bytes (y is %zu bytes)\n", (ssize_t)(first - before),
           (ssize_t)(second - first), y_bytes);
    CHECK(first < before + y_bytes / 4);
    CHECK(second < first + y_bytes / 4);
    float l2 = 0, l1 = 0;
    CHECK_OK(kl_tensor_get(loss, &l2, sizeof l2));

    /* at 1 thread: that primitive's run either fits the scratch sized for 2 or kiln's kernel runs */
    CHECK_OK(kl_ctx_set_threads(ctx, 1));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(loss, &l1, sizeof l1));
    CHECK(fabsf(l1 - l2) <= 1e-5f * fabsf(l2));
    kl_graph_free(g);
    kl_ctx_free(ctx);

    /* a graph built for 1 thread is sized for 1 thread's primitives */
    build(1, &ctx, &g, &loss);
    check_scratch(g, 1);
    kl_graph_free(g);
    kl_ctx_free(ctx);
    return kl_test_done("test_conv_dnnl_plan");
}
