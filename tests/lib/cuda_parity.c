/* GPU-vs-CPU parity harness (see cuda_parity.h). */
#include "cuda_parity.h"
#include "testutil.h"
#include "core/error.h" /* KL_TRY */
#include "core/half.h"  /* kl_load_double */

#include <stdbool.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double *y; /* output */
    int64_t ny;
    double *p[16]; /* per ctx slot: gradient (trainable) or value (buffer) */
    int64_t np[16];
    int nslots;
} result;

const kl_init kl_parity_u1 = {KL_INIT_UNIFORM, 1.0};

/* While a 16-bit run is made (kl_parity_half_run): the 16-bit type that
 * parameters and loss weights are seen through. */
static int g_half_on;
static kl_dtype g_half;

/* x (f32) through a cast to the 16-bit type, then as dt. */
static kl_status through_half(kl_graph *g, kl_dtype dt, kl_tensor **x)
{
    KL_TRY(kl_cast(g, *x, g_half, x));
    return kl_cast(g, *x, dt, x);
}

void kl_parity_fp32_default(void) { setenv("KILN_TF32", "0", 0); }

kl_status kl_parity_param_init(kl_graph *g, const char *name, kl_dtype dt, int nd, const int64_t *ne,
                               const kl_init *init, kl_tensor **out)
{
    if (!g_half_on) return kl_param(g, name, dt, nd, ne, init, out);
    KL_TRY(kl_param(g, name, KL_F32, nd, ne, init, out));
    return through_half(g, dt, out);
}

kl_status kl_parity_param(kl_graph *g, const char *name, kl_dtype dt, int nd, const int64_t *ne, kl_tensor **out)
{
    return kl_parity_param_init(g, name, dt, nd, ne, &kl_parity_u1, out);
}

void kl_parity_to_double(const void *src, kl_dtype dt, int64_t n, double *dst)
{
    for (int64_t i = 0; i < n; i++) dst[i] = dt == KL_I32 ? ((const int32_t *)src)[i] : kl_load_double(src, dt, i);
}

static void result_free(result *r)
{
    free(r->y);
    for (int i = 0; i < r->nslots; i++) free(r->p[i]);
    memset(r, 0, sizeof *r);
}

/* Builds the case on device dev, runs it once, reads everything back. */
static kl_status run_on(kl_device dev, kl_build_fn build, kl_dtype dt, int arg, result *r)
{
    memset(r, 0, sizeof *r);
    kl_ctx_opts co = {.device = dev, .seed = 1234};
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_in_list in = {.n = 0};
    kl_tensor *y, *w, *loss;
    kl_status s = kl_ctx_new(&co, &ctx);
    if (s == KL_OK) s = kl_graph_new(ctx, &g);
    if (s == KL_OK) s = build(g, dt, arg, &in, &y);
    if (s == KL_OK) s = kl_contiguous(g, y, &y);
    if (s == KL_OK) s = kl_output(g, y);
    kl_dtype yt = s == KL_OK ? kl_tensor_dtype(y) : KL_F32;
    int64_t dims[KL_MAX_DIMS];
    for (int d = 0; s == KL_OK && d < kl_tensor_ndim(y); d++) dims[d] = kl_tensor_dim(y, d);
    if (s == KL_OK) s = kl_buffer(g, "dy_weights", g_half_on ? KL_F32 : yt, kl_tensor_ndim(y), dims, &kl_parity_u1, &w);
    if (s == KL_OK && g_half_on) s = through_half(g, yt, &w);
    if (s == KL_OK) s = kl_mul(g, y, w, &loss);
    if (s == KL_OK) s = kl_sum(g, loss, 0, NULL, 0, &loss);
    if (s == KL_OK) s = kl_backward(g, loss);
    if (s == KL_OK) s = kl_graph_plan(g, NULL);
    for (int i = 0; s == KL_OK && i < in.n; i++) s = kl_tensor_set(in.v[i].t, in.v[i].data, in.v[i].bytes);
    if (s == KL_OK) s = kl_graph_run(g);
    if (s == KL_OK) {
        r->ny = kl_tensor_numel(y);
        size_t es = kl_dtype_size(yt);
        void *tmp = malloc((size_t)r->ny * es);
        r->y = malloc((size_t)r->ny * sizeof(double));
        s = kl_tensor_get(y, tmp, (size_t)r->ny * es);
        if (s == KL_OK) kl_parity_to_double(tmp, yt, r->ny, r->y);
        free(tmp);
    }
    for (int i = 0; s == KL_OK && i < kl_ctx_param_count(ctx) && i < 16; i++) {
        const char *name;
        kl_dtype pdt;
        int nd, tr;
        int64_t ne[KL_MAX_DIMS], n = 1;
        s = kl_ctx_param_info(ctx, i, &name, &pdt, &nd, ne, &tr);
        for (int d = 0; d < nd; d++) n *= ne[d];
        size_t bytes = (size_t)n * kl_dtype_size(pdt);
        void *tmp = malloc(bytes ? bytes : 1);
        r->p[i] = malloc((size_t)n * sizeof(double) + 1);
        r->np[i] = n;
        r->nslots = i + 1;
        if (s == KL_OK) s = tr ? kl_ctx_grad_get(ctx, i, tmp, bytes) : kl_ctx_param_get(ctx, i, tmp, bytes);
        if (s == KL_OK) kl_parity_to_double(tmp, pdt, n, r->p[i]);
        free(tmp);
    }
    kl_graph_free(g);
    kl_ctx_free(ctx);
    return s;
}

void kl_parity_compare(const char *cs, const char *what, const double *cpu, const double *gpu, int64_t n, double tol)
{
    double scale = 0, worst = 0;
    for (int64_t i = 0; i < n; i++) scale = fabs(cpu[i]) > scale ? fabs(cpu[i]) : scale;
    if (scale < 1e-30) scale = 1;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(gpu[i] - cpu[i]) / scale;
        if (!(e <= tol)) {
            if (bad < 5) fprintf(stderr, "  %s %s[%lld]: cpu %.9g gpu %.9g (rel err %.2e > %.0e)\n", cs, what, (long long)i,
                                 cpu[i], gpu[i], e, tol);
            bad++;
        }
        if (e > worst || e != e) worst = e;
    }
    kl_test_checks++;
    if (bad) {
        kl_test_failures++;
        fprintf(stderr, "  %s %s: %lld of %lld values off, max rel err %.2e\n", cs, what, (long long)bad, (long long)n, worst);
    }
}

void kl_check_captured(const char *cs, const kl_graph *g)
{
    const char *e = getenv("KILN_CUDA_GRAPH");
    if (e && !strcmp(e, "0")) return; /* capture turned off */
    if (!kl_graph_captured(g)) fprintf(stderr, "  %s: the GPU graph was not captured (see the note above)\n", cs);
    CHECK(kl_graph_captured(g));
}

void kl_parity_params(const char *cs, kl_ctx *a, kl_ctx *b, double tol_rms, double tol_max)
{
    for (int i = 0; i < kl_ctx_param_count(a); i++) {
        const char *name;
        int nd, tr;
        int64_t ne[KL_MAX_DIMS], n = 1;
        kl_dtype dt;
        CHECK_OK(kl_ctx_param_info(a, i, &name, &dt, &nd, ne, &tr));
        for (int d = 0; d < nd; d++) n *= ne[d];
        size_t bytes = (size_t)n * kl_dtype_size(dt);
        void *pa = malloc(bytes ? bytes : 1), *pb = malloc(bytes ? bytes : 1);
        double *da = malloc((size_t)n * sizeof *da + 1), *db = malloc((size_t)n * sizeof *db + 1), ss = 0, sd = 0, mx = 0;
        CHECK_OK(kl_ctx_param_get(a, i, pa, bytes));
        CHECK_OK(kl_ctx_param_get(b, i, pb, bytes));
        kl_parity_to_double(pa, dt, n, da);
        kl_parity_to_double(pb, dt, n, db);
        for (int64_t k = 0; k < n; k++) {
            double d = fabs(da[k] - db[k]);
            ss += da[k] * da[k], sd += d * d;
            mx = d > mx || d != d ? d : mx;
        }
        double rms = sqrt(sd / (ss > 0 ? ss : 1));
        if (!(rms <= tol_rms && mx <= tol_max))
            fprintf(stderr, "  %s %s: rms rel diff %.2e (tol %.0e), max abs diff %.2e (tol %.0e)\n", cs, name, rms,
                    tol_rms, mx, tol_max);
        CHECK(rms <= tol_rms && mx <= tol_max);
        free(pa), free(pb), free(da), free(db);
    }
}

void kl_parity_case_run(const kl_parity_case *c, kl_device gpu)
{
    for (int k = 0; k < (c->f32_only ? 1 : 2); k++) {
        kl_dtype dt = k ? KL_F64 : KL_F32;
        double tol = k ? c->tol64 : c->tol32;
        char cs[96];
        snprintf(cs, sizeof cs, "%s/%s", c->name, kl_dtype_name(dt));
        result rc, rg;
        kl_status s1 = run_on((kl_device){KL_DEVICE_CPU, 0}, c->build, dt, c->arg, &rc);
        if (s1 != KL_OK) fprintf(stderr, "  %s on cpu: %s\n", cs, kl_last_error());
        kl_status s2 = s1 == KL_OK ? run_on(gpu, c->build, dt, c->arg, &rg) : KL_EINTERNAL;
        if (s1 == KL_OK && s2 != KL_OK) fprintf(stderr, "  %s on cuda: %s\n", cs, kl_last_error());
        CHECK(s1 == KL_OK && s2 == KL_OK);
        if (s1 == KL_OK && s2 == KL_OK) {
            kl_parity_compare(cs, "y", rc.y, rg.y, rc.ny, tol);
            for (int i = 0; i < rc.nslots; i++) {
                char what[32];
                snprintf(what, sizeof what, "slot%d", i);
                kl_parity_compare(cs, what, rc.p[i], rg.p[i], rc.np[i], tol);
            }
            printf("  ok %s\n", cs);
        }
        result_free(&rc);
        if (s1 == KL_OK) result_free(&rg);
    }
}

/* 16-bit tolerances relative to the largest value: a few roundings of
 * bf16's 8-bit and f16's 11-bit significands. */
static double half_tol(kl_dtype half) { return half == KL_BF16 ? 3e-2 : 4e-3; }

void kl_parity_half_both(const kl_parity_case *c, kl_device dev)
{
    kl_parity_half_run(c, dev, KL_BF16, half_tol(KL_BF16));
    kl_parity_half_run(c, dev, KL_F16, half_tol(KL_F16));
}

int kl_parity_half_cpu_mode(int argc, char **argv) { return argc > 1 && !strcmp(argv[1], "--half-cpu"); }

/* y of the 16-bit run must be the reference's y rounded to half. */
static void compare_rounded(const char *cs, const result *ref, const result *r, kl_dtype half)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < ref->ny; i++) {
        float f = (float)ref->y[i];
        double want = half == KL_BF16 ? kl_bf16_to_f32(kl_f32_to_bf16(f)) : kl_f16_to_f32(kl_f32_to_f16(f));
        if (r->y[i] != want && !(r->y[i] != r->y[i] && want != want)) {
            if (bad < 5) fprintf(stderr, "  %s y[%lld]: f32 %.9g rounds to %.9g, the 16-bit run gave %.9g\n", cs,
                                 (long long)i, ref->y[i], want, r->y[i]);
            bad++;
        }
    }
    kl_test_checks++;
    if (bad) {
        kl_test_failures++;
        fprintf(stderr, "  %s: %lld of %lld outputs are not the f32 outputs rounded\n", cs, (long long)bad, (long long)ref->ny);
    }
}

void kl_parity_half_run(const kl_parity_case *c, kl_device dev, kl_dtype half, double tol)
{
    if (c->h16 == KL_H16_NONE) return;
    bool gpu = dev.type != KL_DEVICE_CPU;
    char cs[96];
    snprintf(cs, sizeof cs, "%s/%s%s", c->name, kl_dtype_name(half), gpu ? "" : " vs f32");
    result ref, r;
    g_half_on = 1;
    g_half = half;
    kl_device cpu = {KL_DEVICE_CPU, 0};
    kl_status s1 = run_on(cpu, c->build, gpu ? half : KL_F32, c->arg, &ref);
    if (s1 != KL_OK) fprintf(stderr, "  %s reference on cpu: %s\n", cs, kl_last_error());
    kl_status s2 = s1 == KL_OK ? run_on(dev, c->build, half, c->arg, &r) : KL_EINTERNAL;
    if (s1 == KL_OK && s2 != KL_OK) fprintf(stderr, "  %s on %s: %s\n", cs, gpu ? "cuda" : "cpu", kl_last_error());
    g_half_on = 0;
    CHECK(s1 == KL_OK && s2 == KL_OK);
    if (s1 == KL_OK && s2 == KL_OK) {
        kl_parity_compare(cs, "y", ref.y, r.y, ref.ny, tol);
        if (!gpu && c->h16 == KL_H16_EXACT) compare_rounded(cs, &ref, &r, half);
        CHECK(ref.nslots == r.nslots);
        for (int i = 0; i < ref.nslots && i < r.nslots; i++) {
            char what[32];
            snprintf(what, sizeof what, "slot%d", i);
            CHECK(ref.np[i] == r.np[i]);
            if (ref.np[i] == r.np[i]) kl_parity_compare(cs, what, ref.p[i], r.p[i], ref.np[i], tol);
        }
        printf("  ok %s\n", cs);
    }
    if (s1 == KL_OK) result_free(&ref);
    if (s1 == KL_OK) result_free(&r);
}
