/* kiln plan: the memory a training step of a config needs, against a limit,
 * and the largest batch that fits. */
#include "cli/cli.h"
#include "cli/plan.h"
#include "cli/train_monitor.h"
#include "cli/train_opts.h"
#include "cli/train_text.h" /* train_text_wanted */
#include "core/error.h"
#include "backends/backend.h" /* kl_cuda_available */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The memory a training step may take: --mem-limit, else the device's
 * (device_mem_limit); what names it for messages */
static kl_status train_budget(kl_device dev, size_t *limit, char *what, size_t n)
{
    if (g_monitor_flags.mem_limit) {
        snprintf(what, n, "--mem-limit");
        return parse_size("--mem-limit", g_monitor_flags.mem_limit, limit);
    }
    char desc[200];
    KL_TRY(device_mem_limit(dev, limit, desc, sizeof desc));
    snprintf(what, n, "the budget (%s)", desc);
    return KL_OK;
}

kl_status plan_check_train(kl_model *m, const kl_optim_opts *oo, int threads, int64_t batch, int partial_step,
                           kl_device dev, plan_budget *out)
{
    if (out) *out = (plan_budget){0};
    if (!g_monitor_flags.mem_limit && dev.type != KL_DEVICE_CUDA) return KL_OK;
    size_t limit;
    char what[256];
    KL_TRY(train_budget(dev, &limit, what, sizeof what));
    planner p;
    mem_plan mp, best_plan;
    int64_t best = 0;
    kl_status s = planner_init(&p, m, oo, threads, dev);
    p.partial_step = partial_step;
    if (s == KL_OK) s = planner_at(&p, batch, &mp);
    if (s == KL_OK && mp.total > limit) s = planner_max_batch(&p, limit, batch, &best, &best_plan);
    planner_free(&p);
    KL_TRY(s);
    if (out) *out = (plan_budget){.known = 1, .step = mp.total, .limit = limit};
    if (mp.total <= limit) return KL_OK;
    char a[32], b[32];
    fprintf(stderr, "kiln train: memory plan for batch %lld:\n", (long long)batch);
    mem_plan_print(stderr, &mp, oo);
    if (best)
        return kl_fail(KL_EINVAL, "the training step and its other graphs need %s (%zu bytes), over %s %s (%zu bytes); "
                       "the largest batch that fits is %lld (--batch %lld)", fmt_bytes(a, sizeof a, (double)mp.total),
                       mp.total, what, fmt_bytes(b, sizeof b, (double)limit), limit, (long long)best, (long long)best);
    return kl_fail(KL_EINVAL, "the training step and its other graphs need %s (%zu bytes), over %s %s (%zu bytes); "
                   "not even batch 1 fits", fmt_bytes(a, sizeof a, (double)mp.total), mp.total, what,
                   fmt_bytes(b, sizeof b, (double)limit), limit);
}

kl_status plan_auto_batch(kl_model *m, const kl_optim_opts *oo, int threads, int partial_step, kl_cfg *cfg,
                          int64_t *batch, kl_device dev)
{
    if (!g_monitor_flags.batch_auto) return KL_OK;
    size_t limit;
    char what[256];
    KL_TRY(train_budget(dev, &limit, what, sizeof what));
    planner p;
    mem_plan bp;
    int64_t best = 0, pow2 = 1;
    kl_status s = planner_init(&p, m, oo, threads, dev);
    p.partial_step = partial_step;
    if (s == KL_OK) s = planner_max_batch(&p, limit, AUTO_BATCH_MAX, &best, &bp);
    while (pow2 * 2 <= best) pow2 *= 2;
    if (s == KL_OK && pow2 != best) s = planner_at(&p, pow2, &bp); /* (best 0: batch 1's figures) */
    planner_free(&p);
    KL_TRY(s);
    char a[32], b[32], v[32];
    if (!best)
        return kl_fail(KL_EINVAL, "--batch auto: not even batch 1 fits %s (%s, %zu bytes): its step needs %s", what,
                       fmt_bytes(a, sizeof a, (double)limit), limit, fmt_bytes(b, sizeof b, (double)bp.total));
    printf("batch auto: %lld, the largest power of two whose training step fits %s %s (needs %s)%s\n", (long long)pow2,
           what, fmt_bytes(a, sizeof a, (double)limit), fmt_bytes(b, sizeof b, (double)bp.total),
           pow2 == AUTO_BATCH_MAX ? " (the search's upper end)" : "");
    *batch = pow2;
    snprintf(v, sizeof v, "%lld", (long long)pow2);
    return kl_cfg_set_scalar(cfg, "train.batch", v);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: kiln plan [CONFIG.yaml] [options]\n\n"
               "Builds the training step graph of CONFIG (default: the reference CNN) and prints\n"
               "the memory it needs: parameters, gradients, optimizer state and the activation\n"
               "arena of the step's memory plan; the total against a limit; and the largest\n"
               "batch that fits. The dataset is not counted (kiln train streams a training\n"
               "set that does not fit beside the step).\n\n"
               "options:\n"
               "  --batch N         batch size (default: train.batch)\n"
               "  --mem-limit SIZE  the limit (bytes, or 512M, 2G; default: MemAvailable, or the\n"
               "                    GPU's free memory with --device cuda:N)\n"
               "  --device D        cpu (default) or cuda:N: plan for that device\n"
               "  --threads N       CPU threads (conv scratch space depends on them)\n"
               "  --max-batch N     search the largest fitting batch up to N (default 16777216)\n"
               "  --set KEY=VALUE   override a config key\n");
}

static int run(kl_cfg *cfg, const char *config, const char *limit_text, int threads, int64_t max_batch, kl_device dev)
{
    train_opts o;
    monitor_opts mo;
    kl_cfg_node *mnode;
    kl_model *m = NULL;
    planner p = {0};
    mem_plan mp, bp;
    size_t limit;
    int64_t best = 0;
    char a[32], b[32];
    static const char *const kinds[] = {"sgd", "adam", "adamw"};
    kl_status s = monitor_cfg_read(cfg, &mo);
    if (s == KL_OK) s = train_opts_read(cfg, &o);
    if (s == KL_OK) s = kl_cfg_get_map(kl_cfg_root(cfg), "model", 1, &mnode);
    if (s == KL_OK) s = kl_model_from_cfg(mnode, &m);
    if (s == KL_OK) s = kl_model_set_precision(m, o.precision);
    char what[256] = "--mem-limit";
    if (s == KL_OK && limit_text) s = parse_size("--mem-limit", limit_text, &limit);
    else if (s == KL_OK) s = device_mem_limit(dev, &limit, what, sizeof what);
    if (s == KL_OK) s = planner_init(&p, m, &o.optim, threads >= 0 ? threads : (int)o.threads, dev);
    p.partial_step = !o.drop_last && !train_text_wanted(cfg); /* a language model's batches are all whole */
    if (s == KL_OK) s = planner_at(&p, o.batch, &mp);
    if (s == KL_OK) {
        if (dev.type == KL_DEVICE_CUDA)
            printf("memory plan for %s (%s): batch %lld, %s, cuda:%d\n", o.name, config, (long long)o.batch,
                   kinds[o.optim.kind], dev.index);
        else
            printf("memory plan for %s (%s): batch %lld, %s, cpu with %d threads\n", o.name, config,
                   (long long)o.batch, kinds[o.optim.kind], kl_ctx_threads(p.ctx));
        mem_plan_print(stdout, &mp, &o.optim);
        printf("  limit                %12s  %14zu bytes  (%s)\n", fmt_bytes(a, sizeof a, (double)limit), limit, what);
        printf("  %s: %.1f%% of the limit\n", mp.total <= limit ? "fits" : "DOES NOT FIT",
               100.0 * (double)mp.total / (double)(limit ? limit : 1));
        fflush(stdout);
        s = planner_max_batch(&p, limit, max_batch, &best, &bp);
    }
    if (s == KL_OK) {
        if (best)
            printf("largest batch that fits: %lld (total %s, %zu bytes)%s\n", (long long)best,
                   fmt_bytes(b, sizeof b, (double)bp.total), bp.total, best == max_batch ? " (the search's upper end, --max-batch)" : "");
        else if (bp.total) printf("largest batch that fits: none (batch 1 needs %s)\n", fmt_bytes(b, sizeof b, (double)bp.total));
        else printf("largest batch that fits: none (batch 1 could not be planned: %s)\n", kl_last_error());
    }
    planner_free(&p);
    kl_model_free(m);
    if (s != KL_OK) {
        fprintf(stderr, "kiln plan: %s\n", kl_last_error());
        return 1;
    }
    return 0;
}

int kl_cmd_plan(int argc, char **argv)
{
    const char *config = NULL, *limit = NULL, *sets[64], *device = "cpu";
    int nsets = 0, threads = -1;
    int64_t max_batch = 1 << 24;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(arg, "--batch") || !strcmp(arg, "--mem-limit") || !strcmp(arg, "--threads") || !strcmp(arg, "--set") ||
            !strcmp(arg, "--max-batch") || !strcmp(arg, "--device")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kiln plan: %s needs a value\n", arg);
                return 2;
            }
            const char *v = argv[++i];
            char buf[128];
            if (!strcmp(arg, "--mem-limit")) limit = v;
            else if (!strcmp(arg, "--device")) device = v;
            else if (!strcmp(arg, "--threads")) threads = atoi(v) > 0 ? atoi(v) : 0;
            else if (!strcmp(arg, "--max-batch")) {
                char *end;
                long long mb = strtoll(v, &end, 10);
                if (*end || mb < 1 || mb > 1 << 24) {
                    fprintf(stderr, "kiln plan: --max-batch must be 1 to 16777216, got '%s'\n", v);
                    return 2;
                }
                max_batch = mb;
            }
            else if (nsets == 64) {
                fprintf(stderr, "kiln plan: more than 64 --set and --batch options\n");
                return 2;
            } else if (!strcmp(arg, "--batch")) {
                if (snprintf(buf, sizeof buf, "train.batch=%s", v) >= (int)sizeof buf) {
                    fprintf(stderr, "kiln plan: --batch '%.40s...' is not a batch size\n", v);
                    return 2;
                }
                sets[nsets++] = strdup(buf);
            } else sets[nsets++] = strdup(v);
        } else if (arg[0] == '-') {
            fprintf(stderr, "kiln plan: unknown option '%s' (see kiln plan --help)\n", arg);
            return 2;
        } else if (!config) config = arg;
        else {
            fprintf(stderr, "kiln plan: unexpected argument '%s' (one config file at most)\n", arg);
            return 2;
        }
    }
    kl_device dev;
    if (kl_device_parse(device, &dev) != KL_OK || (dev.type == KL_DEVICE_CUDA && kl_cuda_available(dev.index) != KL_OK)) {
        fprintf(stderr, "kiln plan: %s\n", kl_last_error());
        for (int i = 0; i < nsets; i++) free((void *)sets[i]);
        return 1;
    }
    kl_cfg *cfg = NULL;
    kl_status s = config ? kl_cfg_load(config, &cfg)
                         : kl_cfg_parse(kl_default_config, strlen(kl_default_config), "<default cnn>", &cfg);
    for (int i = 0; s == KL_OK && i < nsets; i++) s = kl_cfg_set(cfg, sets[i]);
    for (int i = 0; i < nsets; i++) free((void *)sets[i]);
    int rc = 1;
    if (s != KL_OK) fprintf(stderr, "kiln plan: %s\n", kl_last_error());
    else rc = run(cfg, config ? config : "built-in default", limit, threads, max_batch, dev);
    kl_cfg_free(cfg);
    return rc;
}

kl_status plan_open_ctx(const char *device_arg, kl_model *m, const kl_optim_opts *oo, int threads, int partial_step,
                        uint64_t seed, kl_cfg *cfg, int64_t *batch, plan_budget *budget, kl_ctx **out)
{
    kl_device dev;
    char note[256];
    KL_TRY(train_pick_device(device_arg, &dev, note, sizeof note));
    KL_TRY(plan_auto_batch(m, oo, threads, partial_step, cfg, batch, dev));
    KL_TRY(plan_check_train(m, oo, threads, *batch, partial_step, dev, budget));
    kl_ctx_opts co = {.device = dev, .threads = threads, .seed = seed};
    KL_TRY(kl_ctx_new(&co, out));
    if (dev.type == KL_DEVICE_CPU)
        printf("device: cpu%s, %d threads, GEMM by %s\n", note, kl_ctx_threads(*out), kl_cpu_blas_name());
    else
        printf("device: cuda:%d%s, convolutions by %s\n", dev.index, note, kl_cuda_conv_engine());
    return KL_OK;
}
