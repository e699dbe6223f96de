/* libFuzzer target: kl_checkpoint_load and kl_weights_load on arbitrary
 * model.safetensors / state.safetensors / latest bytes must never crash,
 * leak or hit UB, and a refused load must leave the context unchanged.
 * Input: model bytes, "@@@@", state bytes, "@@@@", latest bytes (parts may
 * be missing). Seeds: any saved checkpoint's two files joined that way. */
#define _GNU_SOURCE
#include "kiln/kiln.h"
#include "io/checkpoint.h"

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static kl_ctx *g_ctx;
static kl_graph *g_g;
static kl_optim *g_opt;
static char g_dir[] = "/tmp/kiln_fuzz_ckpt_XXXXXX";
static char g_ck[600]; /* a valid checkpoints root, for the seed */

static int rm_entry(const char *p, const struct stat *s, int flag, struct FTW *f)
{
    (void)s, (void)flag, (void)f;
    return remove(p);
}

static void cleanup(void) { nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static void setup(void)
{
    kl_tensor *x, *w, *b, *e, *y, *l, *t;
    int64_t xd[2] = {2, 3}, wd[2] = {4, 3}, bd[1] = {4}, ed[1] = {2}, one[1] = {1};
    if (!mkdtemp(g_dir)) abort();
    atexit(cleanup);
    snprintf(g_ck, sizeof g_ck, "%s/checkpoints", g_dir);
    if (kl_ctx_new(NULL, &g_ctx) || kl_graph_new(g_ctx, &g_g) || kl_input(g_g, "x", KL_F32, 2, xd, &x) ||
        kl_param(g_g, "layers.0.weight", KL_F32, 2, wd, NULL, &w) ||
        kl_param(g_g, "layers.0.bias", KL_F32, 1, bd, NULL, &b) ||
        kl_param(g_g, "extra", KL_F64, 1, ed, NULL, &e) ||
        kl_buffer(g_g, "layers.1.running_mean", KL_F32, 1, bd, NULL, &t) ||
        kl_buffer(g_g, "layers.1.count", KL_I32, 1, one, NULL, &t) ||
        kl_linear(g_g, x, w, b, KL_ACT_NONE, &y) || kl_sum(g_g, y, 0, NULL, 0, &l) || kl_backward(g_g, l) ||
        kl_optim_new(g_ctx, &(kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.1}, &g_opt) ||
        kl_optim_step(g_g, g_opt, NULL))
        abort();
    kl_train_state st = {.step = 1, .optim_kind = "adam"};
    if (kl_checkpoint_save(g_ck, "s", g_ctx, g_opt, &st, "a: 1\n", NULL, 0)) abort();
    /* Seed helper: KILN_FUZZ_SEED=path writes a valid input there. */
    const char *seed = getenv("KILN_FUZZ_SEED");
    if (seed) {
        char p[700];
        FILE *out = fopen(seed, "wb");
        for (int i = 0; out && i < 2; i++) {
            snprintf(p, sizeof p, "%s/s/%s.safetensors", g_ck, i ? "state" : "model");
            FILE *in = fopen(p, "rb");
            int c;
            while (in && (c = fgetc(in)) != EOF) fputc(c, out);
            if (in) fclose(in);
            fputs("@@@@", out);
        }
        if (out) fputs("ck\n", out), fclose(out);
    }
}

static void put(const char *name, const uint8_t *p, size_t n)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n) fwrite(p, 1, n, f);
    fclose(f);
}

/* The part of [*p, end) up to the next "@@@@" (or the end). */
static size_t part(const uint8_t **p, const uint8_t *end, const uint8_t **start)
{
    *start = *p;
    const uint8_t *m = memmem(*p, (size_t)(end - *p), "@@@@", 4);
    size_t n = (size_t)((m ? m : end) - *p);
    *p = m ? m + 4 : end;
    return n;
}

/* All parameter and buffer bytes of g_ctx into buf (4096 bytes); returns the count. */
static size_t snap(unsigned char *buf)
{
    size_t n = 0;
    for (int i = 0; i < kl_ctx_param_count(g_ctx); i++) {
        kl_dtype dt;
        int nd;
        int64_t d[KL_MAX_DIMS], el = 1;
        kl_ctx_param_info(g_ctx, i, NULL, &dt, &nd, d, NULL);
        for (int k = 0; k < nd; k++) el *= d[k];
        kl_ctx_param_get(g_ctx, i, buf + n, (size_t)el * kl_dtype_size(dt));
        n += (size_t)el * kl_dtype_size(dt);
    }
    return n;
}

static int same(const unsigned char *a, size_t n)
{
    unsigned char now[4096];
    return snap(now) == n && !memcmp(a, now, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_ctx) setup();
    const uint8_t *p = data, *end = data + size, *m, *s, *l;
    size_t nm = part(&p, end, &m), ns = part(&p, end, &s), nl = part(&p, end, &l);
    char d[700];
    snprintf(d, sizeof d, "%s/ck", g_dir);
    mkdir(d, 0777);
    put("ck/model.safetensors", m, nm);
    put("ck/state.safetensors", s, ns);
    put("latest", l, nl);

    unsigned char before[4096];
    size_t nb = snap(before);
    kl_train_state st;
    char *cfg = NULL;
    if (kl_checkpoint_load(d, g_ctx, g_opt, &st, &cfg) != KL_OK) {
        if (cfg || !kl_last_error()[0] || !same(before, nb)) abort();
    }
    free(cfg);
    nb = snap(before);
    snprintf(d, sizeof d, "%s/ck/model.safetensors", g_dir);
    if (kl_weights_load(d, g_ctx) != KL_OK && (!kl_last_error()[0] || !same(before, nb))) abort();
    char out[800];
    (void)kl_checkpoint_resolve(g_dir, out, sizeof out);
    return 0;
}
