/* Memory planning behind `kiln plan` and `kiln train --mem-limit`: the
 * figures equal kl_graph_stats of an independently built training step
 * (MLP, CNN, CNN with batchnorm buffers), optimizer state multiples, the
 * largest-batch search against planner_at on both sides of the limit, and
 * size parsing. The CLI sources are compiled in (they are not in libkiln). */
#include "testutil.h"
#include "../src/cli/evaluator.c"
#include "../src/cli/plan_mem.c"
#include "io/config.h"

#include <time.h>

/* The training step built here with the public API only. */
static void reference(kl_model *m, const kl_optim_opts *oo, int64_t B, kl_graph_stats *st)
{
    kl_ctx *ctx = NULL;
    kl_optim *opt = NULL;
    kl_graph *g = NULL;
    kl_tensor *x, *y, *logits, *loss;
    int64_t xd[5] = {B};
    int nd = kl_model_input_ndim(m);
    memcpy(xd + 1, kl_model_input_shape(m), (size_t)nd * sizeof *xd);
    kl_ctx_opts co = {.threads = 2, .seed = 7};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_optim_new(ctx, oo, &opt));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_F32, nd + 1, xd, &x));
    CHECK_OK(kl_input(g, "y", KL_I32, 1, &B, &y));
    CHECK_OK(kl_model_forward(m, g, x, 1, &logits));
    CHECK_OK(kl_output(g, logits));
    CHECK_OK(kl_softmax_cross_entropy(g, logits, y, &loss));
    CHECK_OK(kl_output(g, loss));
    CHECK_OK(kl_backward(g, loss));
    CHECK_OK(kl_optim_step(g, opt, NULL));
    CHECK_OK(kl_graph_plan(g, NULL));
    CHECK_OK(kl_graph_stats_get(g, st));
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
}

static kl_model *load(const char *path)
{
    kl_cfg *cfg = NULL;
    kl_model *m = NULL;
    kl_cfg_node *mn = NULL;
    CHECK_OK(kl_cfg_load(path, &cfg));
    if (cfg) CHECK_OK(kl_cfg_get_map(kl_cfg_root(cfg), "model", 1, &mn));
    if (mn) CHECK_OK(kl_model_from_cfg(mn, &m));
    kl_cfg_free(cfg);
    return m;
}

static void test_model(const char *path, int64_t B, int64_t params, size_t buffers)
{
    kl_model *m = load(path);
    if (!m) return;
    kl_optim_opts adam = {.kind = KL_OPTIM_ADAM, .lr = 1e-3}, sgd = {.kind = KL_OPTIM_SGD, .lr = 0.1},
                  mom = {.kind = KL_OPTIM_SGD, .lr = 0.1, .momentum = 0.9}, adamw = {.kind = KL_OPTIM_ADAMW, .lr = 1e-3};
    const kl_optim_opts *oos[4] = {&adam, &sgd, &mom, &adamw};
    const int factor[4] = {2, 0, 1, 2};
    for (int k = 0; k < 4; k++) {
        planner p;
        mem_plan mp;
        kl_graph_stats st;
        CHECK_OK(planner_init(&p, m, oos[k], 2, (kl_device){KL_DEVICE_CPU, 0}));
        CHECK_OK(planner_at(&p, B, &mp));
        reference(m, oos[k], B, &st);
        CHECK(mp.arena == st.arena_bytes && mp.arena > 0);
        CHECK(mp.arena_no_reuse == st.tensor_bytes && mp.nodes == st.nodes);
        CHECK(mp.params == st.param_bytes && mp.params >= (size_t)params * 4);
        CHECK(mp.param_count == params && mp.buffers == buffers);
        CHECK(mp.grads == mp.params && mp.optim == (size_t)factor[k] * mp.params);
        /* evaluation (forward only) takes less than the step; the partial batch's step at most the step */
        CHECK(mp.eval_arena > 0 && mp.eval_arena < mp.arena && mp.other == mp.arena + 2 * mp.eval_arena);
        CHECK(mp.total == mp.params + mp.buffers + mp.grads + mp.optim + mp.arena + mp.other);
        mem_plan whole;
        p.partial_step = 0; /* data.drop_last: no partial batch's step */
        CHECK_OK(planner_at(&p, B, &whole));
        CHECK(whole.other == 2 * mp.eval_arena && whole.total == mp.total - mp.arena);
        if (mp.arena != st.arena_bytes)
            fprintf(stderr, "%s batch %lld: planner arena %zu, kl_graph_stats %zu\n", path, (long long)B, mp.arena,
                    st.arena_bytes);
        planner_free(&p);
    }
    /* the largest batch: fits at best, not at best + 1 */
    planner p;
    mem_plan a, b, best_plan;
    int64_t best = -1;
    CHECK_OK(planner_init(&p, m, &adam, 2, (kl_device){KL_DEVICE_CPU, 0}));
    CHECK_OK(planner_at(&p, B, &a));
    size_t need = a.total, limit = a.total + (size_t)(rand() % 4000000) + 100000;
    CHECK_OK(planner_max_batch(&p, limit, 1 << 24, &best, &best_plan));
    CHECK(best >= B);
    CHECK_OK(planner_at(&p, best, &a));
    CHECK_OK(planner_at(&p, best + 1, &b));
    CHECK(a.total <= limit && b.total > limit && best_plan.total == a.total);
    printf("%s: batch %lld needs %zu bytes; limit %zu -> largest batch %lld\n", path, (long long)B, need, limit,
           (long long)best);
    CHECK_OK(planner_max_batch(&p, 1000, 1 << 24, &best, &best_plan));
    CHECK(best == 0);
    CHECK_OK(planner_max_batch(&p, (size_t)1 << 40, 100, &best, &best_plan)); /* capped */
    CHECK(best == 100);
    planner_free(&p);
    kl_model_free(m);
}

static void test_sizes(void)
{
    size_t v = 0;
    CHECK_OK(parse_size("--mem-limit", "123", &v));
    CHECK(v == 123);
    CHECK_OK(parse_size("--mem-limit", "512K", &v));
    CHECK(v == 524288);
    CHECK_OK(parse_size("--mem-limit", "1.5G", &v));
    CHECK(v == 1610612736);
    CHECK_OK(parse_size("--mem-limit", "2GB", &v));
    CHECK(v == 2147483648u);
    CHECK_OK(parse_size("--mem-limit", "2gib", &v));
    CHECK(v == 2147483648u);
    CHECK_OK(parse_size("--mem-limit", "3m", &v));
    CHECK(v == 3145728);
    CHECK_OK(parse_size("--mem-limit", "1T", &v));
    CHECK(v == (size_t)1 << 40);
    const char *bad[] = {"abc", "-1", "2X", "", "1e30", "2G!", "nan", "G"};
    for (int i = 0; i < 8; i++)
        CHECK_ERR(parse_size("--mem-limit", bad[i], &v), KL_EINVAL, "--mem-limit: expected a size in bytes or with a unit");
    CHECK_ERR(parse_size("--mem-limit", "2X", &v), KL_EINVAL, "got '2X'");
    CHECK_OK(mem_available(&v));
    CHECK(v > (1u << 20));
    char buf[32];
    CHECK(!strcmp(fmt_bytes(buf, sizeof buf, 512), "512 B") && !strcmp(fmt_bytes(buf, sizeof buf, 1536), "1.50 KiB"));
}

int main(void)
{
    srand(12345u + (unsigned)time(NULL));
    test_sizes();
    test_model("models/mlp.yaml", 64, 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10, 0);
    test_model("models/cnn.yaml", 32 + rand() % 64, 32 * 9 + 32 + 64 * 32 * 9 + 64 + 3136 * 128 + 128 + 1290, 0);
    kl_model *m = load("models/cnn_bn.yaml");
    if (m) {
        planner p;
        mem_plan mp;
        kl_optim_opts adam = {.kind = KL_OPTIM_ADAM, .lr = 1e-3};
        kl_graph_stats st;
        CHECK_OK(planner_init(&p, m, &adam, 2, (kl_device){KL_DEVICE_CPU, 0}));
        CHECK_OK(planner_at(&p, 48, &mp));
        reference(m, &adam, 48, &st);
        CHECK(mp.arena == st.arena_bytes && mp.buffers > 0 && mp.buffers % (2 * sizeof(float)) == 0);
        planner_free(&p);
        kl_model_free(m);
    }
    return kl_test_done("test_plan");
}
