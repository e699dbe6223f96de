/* Memory planning for training steps (see plan.h). */
#include "cli/plan.h"
#include "cli/evaluator.h"
#include "core/error.h"
#include "backends/backend.h" /* kl_cuda_device_info_get */

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int optim_state_factor(const kl_optim_opts *oo)
{
    int acc = oo->accumulate > 1; /* the gradient accumulator */
    if (oo->kind == KL_OPTIM_ADAM || oo->kind == KL_OPTIM_ADAMW) return 2 + acc;
    return (oo->momentum > 0 ? 1 : 0) + acc;
}

kl_status planner_init(planner *p, kl_model *m, const kl_optim_opts *oo, int threads, kl_device dev)
{
    memset(p, 0, sizeof *p);
    p->model = m;
    p->oo = *oo;
    p->partial_step = 1;
    kl_ctx_opts co = {.device = dev, .threads = threads, .seed = 1};
    KL_TRY(kl_ctx_new(&co, &p->ctx));
    return kl_optim_new(p->ctx, oo, &p->opt);
}

void planner_free(planner *p)
{
    kl_optim_free(p->opt);
    kl_ctx_free(p->ctx);
    memset(p, 0, sizeof *p);
}

/* The arena of the evaluation graph (forward and loss) at batch. */
static kl_status eval_arena_at(planner *p, int64_t batch, size_t *bytes)
{
    step_graph sg = {0};
    kl_plan_opts po = {.measure = 1};
    kl_status s = step_graph_build_opts(&sg, p->model, p->ctx, NULL, batch, &po);
    kl_graph_stats st;
    if (s == KL_OK) s = kl_graph_stats_get(sg.g, &st);
    step_graph_free(&sg);
    if (s == KL_OK) *bytes = st.arena_bytes;
    return s;
}

kl_status planner_at(planner *p, int64_t batch, mem_plan *out)
{
    step_graph sg = {0};
    kl_plan_opts po = {.measure = 1};
    kl_status s = step_graph_build_opts(&sg, p->model, p->ctx, p->opt, batch, &po);
    kl_graph_stats st;
    if (s == KL_OK) s = kl_graph_stats_get(sg.g, &st);
    step_graph_free(&sg);
    KL_TRY(s);
    size_t eval;
    KL_TRY(eval_arena_at(p, batch, &eval));
    memset(out, 0, sizeof *out);
    out->batch = batch;
    out->nodes = st.nodes;
    out->arena = st.arena_bytes;
    out->arena_no_reuse = st.tensor_bytes;
    out->params = st.param_bytes;
    for (int i = 0; i < kl_ctx_param_count(p->ctx); i++) {
        kl_dtype dt;
        int nd, trainable;
        int64_t d[KL_MAX_DIMS], n = 1;
        const char *name;
        KL_TRY(kl_ctx_param_info(p->ctx, i, &name, &dt, &nd, d, &trainable));
        for (int k = 0; k < nd; k++) n *= d[k];
        if (trainable) out->param_count += n;
        else out->buffers += (size_t)n * kl_dtype_size(dt);
    }
    out->grads = out->params;
    out->optim = (size_t)optim_state_factor(&p->oo) * out->params;
    out->eval_arena = eval;
    /* language models validate whole windows only: one evaluation graph */
    out->evals = kl_model_tokens(p->model) > 0 ? 1 : 2;
    out->other = (p->partial_step ? out->arena : 0) + (size_t)out->evals * eval;
    out->total = out->params + out->buffers + out->grads + out->optim + out->arena + out->other;
    return KL_OK;
}

/* Fits: planned and within the limit (a failed allocation, of a parameter
 * say, counts as not fitting). */
static kl_status fits(planner *p, int64_t b, size_t limit, int *ok, mem_plan *mp)
{
    kl_status s = planner_at(p, b, mp);
    if (s == KL_ENOMEM || s == KL_EDEVMEM) {
        *ok = 0;
        return KL_OK;
    }
    KL_TRY(s);
    *ok = mp->total <= limit;
    return KL_OK;
}

kl_status planner_max_batch(planner *p, size_t limit, int64_t max_batch, int64_t *best, mem_plan *at_best)
{
    mem_plan a = {0}, b;
    int ok;
    *best = 0;
    KL_TRY(fits(p, 1, limit, &ok, &a));
    *at_best = a; /* batch 1's need, also when it does not fit (0 total: it could not be planned) */
    if (!ok) return KL_OK;
    *best = 1, *at_best = a;
    if (max_batch < 2) return KL_OK;
    KL_TRY(fits(p, 2, limit, &ok, &b));
    if (!ok) return KL_OK;
    *best = 2, *at_best = b;
    /* guess from the line through batch 1 and 2, then bracket and bisect */
    double per = (double)b.total - (double)a.total, guess = per > 0 ? 2 + ((double)limit - (double)b.total) / per : (double)max_batch;
    int64_t lo = 2, hi = max_batch + 1; /* lo fits, hi does not (or is past max) */
    int64_t g = guess >= (double)max_batch ? max_batch : (int64_t)guess;
    if (g > lo) {
        mem_plan m;
        KL_TRY(fits(p, g, limit, &ok, &m));
        if (ok) lo = g, *at_best = m;
        else hi = g;
    }
    /* grow until a batch does not fit: 2x without a good guess, 1.25x above one */
    int guessed = lo == g;
    while (hi == max_batch + 1 && lo < max_batch) {
        int64_t t = guessed ? lo + (lo / 4 > 0 ? lo / 4 : 1) : lo * 2;
        if (t > max_batch) t = max_batch;
        mem_plan m;
        KL_TRY(fits(p, t, limit, &ok, &m));
        if (!ok) hi = t;
        else lo = t, *at_best = m;
        if (ok && t == max_batch) break;
    }
    while (hi - lo > 1 && hi <= max_batch) {
        int64_t mid = lo + (hi - lo) / 2;
        mem_plan m;
        KL_TRY(fits(p, mid, limit, &ok, &m));
        if (ok) lo = mid, *at_best = m;
        else hi = mid;
    }
    /* the arena's packing makes the total dip at some sizes (cnn_bn: 37
     * takes less than 36): a few past the first that does not fit may */
    for (int64_t t = lo + 2, end = lo + 1 + (lo / 8 > 8 ? 8 : lo / 8 > 2 ? lo / 8 : 2); t <= end && t <= max_batch; t++) {
        mem_plan m;
        KL_TRY(fits(p, t, limit, &ok, &m));
        if (ok) lo = t, *at_best = m, end = t + 1 + (end - t > 2 ? end - t : 2);
    }
    *best = lo;
    return KL_OK;
}

kl_status parse_size(const char *what, const char *s, size_t *out)
{
    char *end;
    errno = 0;
    double v = s ? strtod(s, &end) : 0;
    if (!s || end == s || errno || !(v >= 0) || !isfinite(v)) goto bad;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1048576.0; end++; break;
    case 'G': mul = 1073741824.0; end++; break;
    case 'T': mul = 1099511627776.0; end++; break;
    case 'B': break;
    case 0: break;
    default: goto bad;
    }
    if (mul > 1 && (*end == 'i' || *end == 'I')) end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end || v * mul >= 1.8e19) goto bad;
    *out = (size_t)(v * mul);
    return KL_OK;
bad:
    return kl_fail(KL_EINVAL, "%s: expected a size in bytes or with a unit (512M, 1.5G, 2GiB); got '%s'", what,
                   s ? s : "(null)");
}

kl_status mem_available(size_t *out)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f)) found = sscanf(line, "MemAvailable: %llu kB", &kb) == 1;
    if (f) fclose(f);
    if (!found) return kl_fail(KL_EIO, "/proc/meminfo: no MemAvailable line; pass --mem-limit");
    *out = (size_t)kb * 1024;
    return KL_OK;
}

const char *fmt_bytes(char *buf, size_t cap, double b)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int k = 0;
    while (b >= 1024 && k < 4) b /= 1024, k++;
    snprintf(buf, cap, k ? "%.2f %s" : "%.0f %s", b, u[k]);
    return buf;
}

void mem_plan_print(FILE *f, const mem_plan *p, const kl_optim_opts *oo)
{
    static const char *const kinds[] = {"sgd", "adam", "adamw"};
    char a[32], b[32];
    int k = optim_state_factor(oo);
    fprintf(f, "  parameters           %12s  %14zu bytes  (%lld trainable values)\n", fmt_bytes(a, sizeof a, (double)p->params),
            p->params, (long long)p->param_count);
    if (p->buffers)
        fprintf(f, "  buffers              %12s  %14zu bytes  (running statistics)\n", fmt_bytes(a, sizeof a, (double)p->buffers),
                p->buffers);
    fprintf(f, "  gradients            %12s  %14zu bytes\n", fmt_bytes(a, sizeof a, (double)p->grads), p->grads);
    fprintf(f, "  optimizer state      %12s  %14zu bytes  (%s%s: %d x parameters)\n", fmt_bytes(a, sizeof a, (double)p->optim),
            p->optim, (unsigned)oo->kind < 3 ? kinds[oo->kind] : "?", oo->accumulate > 1 ? " with gradient accumulation" : "", k);
    fprintf(f, "  activations (arena)  %12s  %14zu bytes  (memory plan of the step: %d ops, batch %lld;",
            fmt_bytes(a, sizeof a, (double)p->arena), p->arena, p->nodes, (long long)p->batch);
    fprintf(f, " %s without reuse)\n", fmt_bytes(a, sizeof a, (double)p->arena_no_reuse));
    if (p->evals == 1)
        fprintf(f, "  other graphs         %12s  %14zu bytes  (validation at batch %lld)\n", fmt_bytes(a, sizeof a, (double)p->other),
                p->other, (long long)p->batch);
    else
        fprintf(f, "  other graphs         %12s  %14zu bytes  (at most: %sevaluation at batch %lld and at its last\n"
                   "                                                     partial batch, %s each)\n",
                fmt_bytes(a, sizeof a, (double)p->other), p->other,
                p->other > 2 * p->eval_arena ? "the last partial batch's step, " : "", (long long)p->batch,
                fmt_bytes(b, sizeof b, (double)p->eval_arena));
    fprintf(f, "  total                %12s  %14zu bytes\n", fmt_bytes(a, sizeof a, (double)p->total), p->total);
}

kl_status device_mem_limit(kl_device dev, size_t *limit, char *desc, size_t n)
{
    if (dev.type != KL_DEVICE_CUDA) {
        snprintf(desc, n, "available RAM, MemAvailable in /proc/meminfo");
        return mem_available(limit);
    }
    kl_cuda_device_info info;
    KL_TRY(kl_cuda_device_info_get(dev.index, &info));
    *limit = info.free_bytes > PLAN_GPU_RESERVE ? info.free_bytes - PLAN_GPU_RESERVE : 0;
    char fr[32];
    snprintf(desc, n, "cuda:%d %s: %s free, less %d MiB for kiln's own buffers", dev.index, info.name,
             fmt_bytes(fr, sizeof fr, (double)info.free_bytes), (int)(PLAN_GPU_RESERVE >> 20));
    return KL_OK;
}
