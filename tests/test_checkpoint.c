/* Checkpoints: a save/load round trip restores params, buffers, optimizer
 * state and train state bit for bit (and training continues identically);
 * mismatching, foreign and corrupt files are refused with messages naming
 * the file and tensor and change nothing; leftovers of interrupted saves are
 * ignored and cleaned; allocation failures during save leave the previous
 * checkpoint intact. */
#define _GNU_SOURCE
#include "kiln/kiln.h"
#include "kiln/io.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/fileio.h"
#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[] = "/tmp/kiln_ckpt_XXXXXX";
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float frand(void)
{
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

/* "<g_dir>/name" in a rotating buffer: valid for the next 15 calls. */
static const char *in_dir(const char *name)
{
    static char buf[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static char *slurp(const char *path)
{
    void *d;
    size_t n;
    return kl_read_file_raw(path, &d, &n) == KL_OK ? d : NULL;
}

static int exists(const char *path)
{
    struct stat s;
    return stat(path, &s) == 0;
}

enum { VAR_EXTRA_PARAM = 1, VAR_NO_RUNNING_VAR = 2, VAR_SGD = 4 };

typedef struct {
    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *x;
    int64_t in;
} net;

/* x[4,in] -> linear(5) relu -> linear(2) -> sum; plus BatchNorm-like
 * buffers, an i64 buffer and an unused f64 parameter. */
static void net_build(net *m, uint64_t seed, int64_t in, int variant)
{
    int64_t xd[2] = {4, in}, w0[2] = {5, in}, b0[1] = {5}, w3[2] = {2, 5}, e[1] = {3}, one[1] = {1};
    kl_tensor *W0, *B0, *W3, *t, *h, *y, *loss;
    m->in = in;
    CHECK_OK(kl_ctx_new(&(kl_ctx_opts){.seed = seed}, &m->ctx));
    CHECK_OK(kl_graph_new(m->ctx, &m->g));
    CHECK_OK(kl_input(m->g, "x", KL_F32, 2, xd, &m->x));
    CHECK_OK(kl_param(m->g, "layers.0.weight", KL_F32, 2, w0, NULL, &W0));
    CHECK_OK(kl_param(m->g, "layers.0.bias", KL_F32, 1, b0, &(kl_init){KL_INIT_UNIFORM, 0.5}, &B0));
    CHECK_OK(kl_buffer(m->g, "layers.1.running_mean", KL_F32, 1, b0, NULL, &t));
    if (!(variant & VAR_NO_RUNNING_VAR)) CHECK_OK(kl_buffer(m->g, "layers.1.running_var", KL_F32, 1, b0, NULL, &t));
    CHECK_OK(kl_buffer(m->g, "layers.1.count", KL_I32, 1, one, NULL, &t));
    CHECK_OK(kl_param(m->g, "layers.3.weight", KL_F32, 2, w3, NULL, &W3));
    CHECK_OK(kl_param(m->g, "extra.scale", KL_F64, 1, e, &(kl_init){KL_INIT_NORMAL, 1.0}, &t));
    if (variant & VAR_EXTRA_PARAM) CHECK_OK(kl_param(m->g, "layers.5.bias", KL_F32, 1, b0, NULL, &t));
    CHECK_OK(kl_linear(m->g, m->x, W0, B0, KL_ACT_RELU, &h));
    CHECK_OK(kl_linear(m->g, h, W3, NULL, KL_ACT_NONE, &y));
    CHECK_OK(kl_mul(m->g, y, y, &y));
    CHECK_OK(kl_sum(m->g, y, 0, NULL, 0, &loss));
    CHECK_OK(kl_backward(m->g, loss));
    kl_optim_opts o = {.kind = KL_OPTIM_ADAM, .lr = 0.05};
    if (variant & VAR_SGD) o = (kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.05, .momentum = 0.9};
    CHECK_OK(kl_optim_new(m->ctx, &o, &m->opt));
    CHECK_OK(kl_optim_step(m->g, m->opt, NULL));
    /* Random buffers, so a load that skipped them would show. */
    for (int i = 0; i < kl_ctx_param_count(m->ctx); i++) {
        const char *name;
        int trainable;
        CHECK_OK(kl_ctx_param_info(m->ctx, i, &name, NULL, NULL, NULL, &trainable));
        if (trainable) continue;
        float v[5];
        int32_t c = (int32_t)(frand() * 1e6);
        for (int j = 0; j < 5; j++) v[j] = frand() + 1.5f;
        if (strstr(name, "count")) CHECK_OK(kl_ctx_param_set(m->ctx, i, &c, sizeof c));
        else CHECK_OK(kl_ctx_param_set(m->ctx, i, v, sizeof v));
    }
}

static void net_train(net *m, int steps, uint64_t xseed)
{
    uint64_t save = g_rng;
    g_rng = xseed;
    for (int s = 0; s < steps; s++) {
        float x[4 * 16];
        for (int i = 0; i < 4 * m->in; i++) x[i] = frand();
        CHECK_OK(kl_tensor_set(m->x, x, (size_t)(4 * m->in) * sizeof(float)));
        CHECK_OK(kl_graph_run(m->g));
    }
    g_rng = save;
}

static void net_free(net *m)
{
    kl_graph_free(m->g);
    kl_optim_free(m->opt);
    kl_ctx_free(m->ctx);
}

/* Every parameter and buffer value, then (with_opt) every optimizer state
 * buffer, as one blob (caller frees). */
static unsigned char *snap(net *m, int with_opt, size_t *n)
{
    size_t cap = 1 << 16, len = 0;
    unsigned char *b = calloc(1, cap);
    for (int i = 0; i < kl_ctx_param_count(m->ctx); i++) {
        kl_dtype dt;
        int nd;
        int64_t d[KL_MAX_DIMS], el = 1;
        CHECK_OK(kl_ctx_param_info(m->ctx, i, NULL, &dt, &nd, d, NULL));
        for (int k = 0; k < nd; k++) el *= d[k];
        size_t bytes = (size_t)el * kl_dtype_size(dt);
        CHECK_OK(kl_ctx_param_get(m->ctx, i, b + len, bytes));
        len += bytes;
    }
    for (int k = 0; with_opt && k < kl_optim_state_count(m->opt); k++) {
        void *data;
        size_t bytes;
        CHECK_OK(kl_optim_state(m->opt, k, NULL, &data, &bytes));
        if (len + bytes <= cap) memcpy(b + len, data, bytes);
        len += bytes;
    }
    CHECK(len <= cap);
    *n = len;
    return b;
}

static unsigned char *snapshot(net *m, size_t *n) { return snap(m, 1, n); }

/* 1 if m's values equal the snapshot s (n bytes). */
static int same_as(net *m, const unsigned char *s, size_t n)
{
    size_t k;
    unsigned char *now = snapshot(m, &k);
    int eq = k == n && !memcmp(now, s, n);
    free(now);
    return eq;
}

static int same_as_params(net *m, const unsigned char *s, size_t n)
{
    size_t k;
    unsigned char *now = snap(m, 0, &k);
    int eq = k == n && !memcmp(now, s, n);
    free(now);
    return eq;
}

static kl_train_state g_st = {.step = 3, .epoch = 1, .batch = 7, .graph_runs = 3,
                              .seed = 18446744073709551557ull, .optim_kind = "adam"};

static void test_round_trip(void)
{
    net a, b;
    net_build(&a, 1, 6, 0);
    net_train(&a, 3, 11);
    char out[512], dir[512];
    const char *cfg = "model:\n  input: [6]\ntrain:\n  lr: 0.05\n";
    CHECK_OK(kl_checkpoint_save(in_dir("run/checkpoints"), "step-3", a.ctx, a.opt, &g_st, cfg, out, sizeof out));
    CHECK(!strcmp(out, in_dir("run/checkpoints/step-3")));
    char *latest = slurp(in_dir("run/checkpoints/latest"));
    CHECK(latest && !strcmp(latest, "step-3\n"));
    kl_free(latest);
    CHECK(exists(in_dir("run/checkpoints/step-3/config.yaml")));
    CHECK(!exists(in_dir("run/checkpoints/.step-3.tmp")));

    /* The Adam state is per parameter, under PyTorch-style names. */
    kl_st_file *f;
    CHECK_OK(kl_st_open(in_dir("run/checkpoints/step-3/state.safetensors"), &f));
    CHECK(kl_st_find(f, "exp_avg.layers.0.weight") >= 0 && kl_st_find(f, "exp_avg_sq.extra.scale") >= 0);
    CHECK(kl_st_find(f, "exp_avg.layers.1.running_mean") < 0);
    CHECK(kl_st_meta(f, "optimizer") && !strcmp(kl_st_meta(f, "optimizer"), "adam"));
    kl_st_close(f);

    /* All three forms of --resume find it. */
    CHECK_OK(kl_checkpoint_resolve(in_dir("run"), dir, sizeof dir));
    CHECK(!strcmp(dir, out));
    CHECK_OK(kl_checkpoint_resolve(in_dir("run/checkpoints/"), dir, sizeof dir));
    CHECK(!strcmp(dir, out));
    CHECK_OK(kl_checkpoint_resolve(out, dir, sizeof dir));
    CHECK(!strcmp(dir, out));
    char small[8];
    CHECK_ERR(kl_checkpoint_resolve(in_dir("run"), small, sizeof small), KL_EINVAL, "does not fit");

    net_build(&b, 2, 6, 0);
    size_t na;
    unsigned char *sa = snapshot(&a, &na);
    CHECK(!same_as(&b, sa, na));
    kl_train_state st = {0};
    char *text = NULL;
    CHECK_OK(kl_checkpoint_load(dir, b.ctx, b.opt, &st, &text));
    CHECK(same_as(&b, sa, na));
    CHECK(!memcmp(&st, &g_st, sizeof st));
    CHECK(kl_optim_steps(b.opt) == 3);
    CHECK(text && !strcmp(text, cfg));
    free(text);
    CHECK_OK(kl_graph_set_runs(b.g, st.graph_runs));

    /* Training goes on bit for bit as if never interrupted. */
    net_train(&a, 2, 99);
    net_train(&b, 2, 99);
    free(sa);
    sa = snapshot(&a, &na);
    CHECK(same_as(&b, sa, na));
    free(sa);

    /* Weights only: kiln's own export loads back. */
    net c;
    net_build(&c, 3, 6, 0);
    CHECK_OK(kl_weights_save(in_dir("w.safetensors"), a.ctx));
    CHECK_OK(kl_weights_load(in_dir("w.safetensors"), c.ctx));
    size_t nc;
    unsigned char *pa = snap(&a, 0, &na), *pc = snap(&c, 0, &nc);
    CHECK(nc == na && !memcmp(pa, pc, na));
    free(pa);
    free(pc);
    net_free(&a);
    net_free(&b);
    net_free(&c);
}

/* Rewrites <src>/state.safetensors into <dst>/ (with model.safetensors and
 * config.yaml copied), leaving out tensor skip and metadata key drop, adding
 * an f32 [1] tensor called extra (any may be NULL). */
static void tamper_state(const char *src, const char *dst, const char *skip, const char *drop, const char *extra)
{
    static const char *keys[] = {"format", "kiln_version", "step", "epoch", "batch", "graph_runs",
                                 "seed", "optimizer", "optim_steps", "lr"};
    char p[600], q[600];
    CHECK_OK(kl_mkdir_p(dst));
    const char *files[2] = {"model.safetensors", "config.yaml"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/%s", src, files[i]);
        snprintf(q, sizeof q, "%s/%s", dst, files[i]);
        void *d;
        size_t n;
        CHECK_OK(kl_read_file_raw(p, &d, &n));
        const void *c[1] = {d};
        CHECK_OK(kl_write_file_atomic(q, c, &n, 1));
        kl_free(d);
    }
    snprintf(p, sizeof p, "%s/state.safetensors", src);
    snprintf(q, sizeof q, "%s/state.safetensors", dst);
    kl_st_file *f;
    kl_st_writer *w;
    CHECK_OK(kl_st_open(p, &f));
    CHECK_OK(kl_st_writer_new(&w));
    for (int i = 0; i < kl_st_count(f); i++) {
        const char *name;
        kl_dtype dt;
        int nd;
        int64_t d[KL_MAX_DIMS];
        CHECK_OK(kl_st_info(f, i, &name, &dt, &nd, d));
        if (skip && !strcmp(name, skip)) continue;
        CHECK_OK(kl_st_writer_add(w, name, dt, nd, d, kl_st_data(f, i, NULL)));
    }
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
        if ((!drop || strcmp(keys[k], drop)) && kl_st_meta(f, keys[k]))
            CHECK_OK(kl_st_writer_meta(w, keys[k], kl_st_meta(f, keys[k])));
    float one = 1;
    int64_t d1 = 1;
    if (extra) CHECK_OK(kl_st_writer_add(w, extra, KL_F32, 1, &d1, &one));
    CHECK_OK(kl_st_writer_save(w, q));
    kl_st_writer_free(w);
    kl_st_close(f);
}

/* Loading into ctx m must fail with status st and message msg and leave
 * every value (optimizer state included) as it was. */
static void load_refused(net *m, const char *dir, kl_train_state *st, kl_status code, const char *msg)
{
    size_t n;
    unsigned char *before = snapshot(m, &n);
    int64_t steps = kl_optim_steps(m->opt);
    char *text = (char *)1;
    CHECK_ERR(kl_checkpoint_load(dir, m->ctx, m->opt, st, &text), code, msg);
    CHECK(text == NULL);
    CHECK(same_as(m, before, n));
    CHECK(kl_optim_steps(m->opt) == steps);
    free(before);
}

static void test_mismatch(void)
{
    net a, m;
    net_build(&a, 1, 6, 0);
    net_train(&a, 2, 5);
    char dir[512], msg[800];
    CHECK_OK(kl_checkpoint_save(in_dir("mm"), "step-2", a.ctx, a.opt, &g_st, NULL, dir, sizeof dir));

    net_build(&m, 4, 7, 0);
    snprintf(msg, sizeof msg, "%s/model.safetensors: 'layers.0.weight': expected [5,7] f32, file has [5,6] f32",
             dir);
    load_refused(&m, dir, NULL, KL_EFORMAT, msg);
    net_free(&m);

    net_build(&m, 4, 6, VAR_EXTRA_PARAM);
    snprintf(msg, sizeof msg, "%s/model.safetensors: missing tensor 'layers.5.bias'", dir);
    load_refused(&m, dir, NULL, KL_EFORMAT, msg);
    net_free(&m);

    net_build(&m, 4, 6, VAR_NO_RUNNING_VAR);
    snprintf(msg, sizeof msg, "%s/model.safetensors: unexpected tensor 'layers.1.running_var' (not in the model)",
             dir);
    load_refused(&m, dir, NULL, KL_EFORMAT, msg);
    net_free(&m);

    net_build(&m, 4, 6, VAR_SGD);
    net_train(&m, 1, 3);
    snprintf(msg, sizeof msg, "%s/state.safetensors: optimizer is 'adam', this run uses 'sgd'", dir);
    load_refused(&m, dir, NULL, KL_EFORMAT, msg);
    net_free(&m);

    net_build(&m, 4, 6, 0);
    net_train(&m, 1, 3);
    kl_train_state st;

    /* Optimizer state missing a tensor, holding a stray one, metadata gone. */
    tamper_state(dir, in_dir("mm/t1"), "exp_avg_sq.layers.3.weight", NULL, NULL);
    load_refused(&m, in_dir("mm/t1"), NULL, KL_EFORMAT, "mm/t1/state.safetensors: missing tensor 'exp_avg_sq.layers.3.weight'");
    tamper_state(dir, in_dir("mm/t2"), NULL, NULL, "exp_avg.fc.weight");
    load_refused(&m, in_dir("mm/t2"), NULL, KL_EFORMAT,
                 "mm/t2/state.safetensors: unexpected tensor 'exp_avg.fc.weight' (not part of this run's optimizer state)");
    tamper_state(dir, in_dir("mm/t3"), NULL, "step", NULL);
    load_refused(&m, in_dir("mm/t3"), NULL, KL_EFORMAT, "mm/t3/state.safetensors: metadata 'step' is missing");
    tamper_state(dir, in_dir("mm/t4"), NULL, "format", NULL);
    load_refused(&m, in_dir("mm/t4"), NULL, KL_EFORMAT, "mm/t4/state.safetensors: not a kiln checkpoint (no 'format' metadata)");

    /* A NaN weight or a negative Adam second moment (a flipped bit, a save
     * of a diverged run) is refused naming the tensor, nothing loaded. */
    {
        net bad;
        net_build(&bad, 1, 6, 0);
        net_train(&bad, 2, 5);
        float w[5 * 6];
        CHECK_OK(kl_ctx_param_get(bad.ctx, 0, w, sizeof w));
        float keep = w[7];
        w[7] = NAN;
        CHECK_OK(kl_ctx_param_set(bad.ctx, 0, w, sizeof w));
        char bd[512];
        CHECK_OK(kl_checkpoint_save(in_dir("nan"), "step-2", bad.ctx, bad.opt, &g_st, NULL, bd, sizeof bd));
        snprintf(msg, sizeof msg, "%s/model.safetensors: tensor 'layers.0.weight' holds nan at element 7: the file is damaged", bd);
        load_refused(&m, bd, NULL, KL_EFORMAT, msg);
        w[7] = keep;
        CHECK_OK(kl_ctx_param_set(bad.ctx, 0, w, sizeof w));
        const char *sname;
        void *sdata;
        size_t sbytes;
        CHECK_OK(kl_optim_state(bad.opt, 1, &sname, &sdata, &sbytes));
        CHECK(!strcmp(sname, "exp_avg_sq"));
        ((float *)sdata)[3] = -1.0f;
        CHECK_OK(kl_checkpoint_save(in_dir("neg"), "step-2", bad.ctx, bad.opt, &g_st, NULL, bd, sizeof bd));
        snprintf(msg, sizeof msg, "%s/state.safetensors: tensor 'exp_avg_sq.layers.0.weight' holds -1 at element 3, below 0", bd);
        load_refused(&m, bd, NULL, KL_EFORMAT, msg);
        CHECK_ERR(kl_weights_load(in_dir("nan/step-2/model.safetensors"), m.ctx), KL_EFORMAT, "holds nan at element 7");
        net_free(&bad);
    }

    /* Without an optimizer only the weights and train state are read. */
    CHECK_OK(kl_checkpoint_load(in_dir("mm/t2"), m.ctx, NULL, &st, NULL));
    CHECK(st.step == g_st.step && st.seed == g_st.seed && !strcmp(st.optim_kind, "adam"));
    size_t na;
    unsigned char *pa = snap(&a, 0, &na);
    CHECK(same_as_params(&m, pa, na));
    free(pa);
    net_free(&m);
    net_free(&a);
}

/* Writes net a's weights the way PyTorch's save_file(state_dict) would: no
 * metadata, plus num_batches_tracked; skip leaves one out, extra adds one. */
static void torch_file(net *a, const char *path, const char *skip, const char *extra)
{
    kl_st_writer *w;
    CHECK_OK(kl_st_writer_new(&w));
    size_t n;
    unsigned char *vals = snap(a, 0, &n), *p = vals;
    for (int i = 0; i < kl_ctx_param_count(a->ctx); i++) {
        const char *name;
        kl_dtype dt;
        int nd;
        int64_t d[KL_MAX_DIMS], el = 1;
        CHECK_OK(kl_ctx_param_info(a->ctx, i, &name, &dt, &nd, d, NULL));
        for (int k = 0; k < nd; k++) el *= d[k];
        if (!skip || strcmp(name, skip)) CHECK_OK(kl_st_writer_add(w, name, dt, nd, d, p));
        p += (size_t)el * kl_dtype_size(dt);
    }
    int64_t nbt = 17, d1 = 1;
    CHECK_OK(kl_st_writer_add(w, "layers.1.num_batches_tracked", KL_I64, 0, NULL, &nbt));
    if (extra) CHECK_OK(kl_st_writer_add(w, extra, KL_I64, 1, &d1, &nbt));
    CHECK_OK(kl_st_writer_save(w, path));
    kl_st_writer_free(w);
    free(vals);
}

static void test_foreign_and_corrupt(void)
{
    net a, m;
    net_build(&a, 1, 6, 0);
    net_build(&m, 2, 6, 0);
    size_t na, nm;
    unsigned char *pa = snap(&a, 0, &na), *pm = snap(&m, 0, &nm);

    torch_file(&a, in_dir("t_missing.safetensors"), "layers.0.bias", NULL);
    CHECK_ERR(kl_weights_load(in_dir("t_missing.safetensors"), m.ctx), KL_EFORMAT,
              "t_missing.safetensors: missing tensor 'layers.0.bias'");
    torch_file(&a, in_dir("t_extra.safetensors"), NULL, "fc.weight");
    CHECK_ERR(kl_weights_load(in_dir("t_extra.safetensors"), m.ctx), KL_EFORMAT,
              "t_extra.safetensors: unexpected tensor 'fc.weight' (not in the model)");
    CHECK(same_as_params(&m, pm, nm));
    torch_file(&a, in_dir("torch.safetensors"), NULL, NULL);
    CHECK_OK(kl_weights_load(in_dir("torch.safetensors"), m.ctx));
    CHECK(same_as_params(&m, pa, na));

    /* A foreign file in a checkpoint directory. */
    char dir[512];
    CHECK_OK(kl_checkpoint_save(in_dir("fc"), "ok", a.ctx, a.opt, &g_st, "x: 1\n", dir, sizeof dir));
    torch_file(&a, in_dir("fc/ok/model.safetensors"), NULL, NULL);
    load_refused(&m, dir, NULL, KL_EFORMAT, "fc/ok/model.safetensors: not a kiln checkpoint (no 'format' metadata)");

    /* Truncated files are refused before anything is copied. */
    net_train(&a, 1, 8);
    CHECK_OK(kl_checkpoint_save(in_dir("fc"), "cut", a.ctx, a.opt, &g_st, NULL, dir, sizeof dir));
    struct stat s;
    CHECK(stat(in_dir("fc/cut/model.safetensors"), &s) == 0);
    CHECK(truncate(in_dir("fc/cut/model.safetensors"), s.st_size - 9) == 0);
    load_refused(&m, dir, NULL, KL_EFORMAT, "fc/cut/model.safetensors");
    CHECK(truncate(in_dir("fc/cut/model.safetensors"), 5) == 0);
    load_refused(&m, dir, NULL, KL_EFORMAT, "fc/cut/model.safetensors");
    CHECK_OK(kl_checkpoint_save(in_dir("fc"), "cut2", a.ctx, a.opt, &g_st, NULL, dir, sizeof dir));
    CHECK(stat(in_dir("fc/cut2/state.safetensors"), &s) == 0);
    CHECK(truncate(in_dir("fc/cut2/state.safetensors"), s.st_size / 2) == 0);
    load_refused(&m, dir, NULL, KL_EFORMAT, "fc/cut2/state.safetensors");
    unlink(in_dir("fc/cut2/model.safetensors"));
    load_refused(&m, dir, NULL, KL_EIO, "fc/cut2/model.safetensors");

    free(pa);
    free(pm);
    net_free(&a);
    net_free(&m);
}

static void write_text(const char *path, const char *text)
{
    const void *c[1] = {text};
    size_t n = strlen(text);
    CHECK_OK(kl_write_file_atomic(path, c, &n, 1));
}

static int latest_is(const char *root, const char *tag)
{
    char p[600], want[64];
    snprintf(p, sizeof p, "%s/latest", root);
    snprintf(want, sizeof want, "%s\n", tag);
    char *t = slurp(p);
    int ok = t && !strcmp(t, want);
    kl_free(t);
    return ok;
}

static void test_crash_and_resolve(void)
{
    net a, m;
    net_build(&a, 1, 6, 0);
    net_build(&m, 2, 6, 0);
    char dir[512], msg[800];
    CHECK_OK(kl_checkpoint_save(in_dir("cs"), "step-1", a.ctx, a.opt, &g_st, NULL, NULL, 0));

    /* A save of step-2 died half way; another left a latest.tmp file. */
    CHECK_OK(kl_mkdir_p(in_dir("cs/.step-2.tmp")));
    CHECK_OK(kl_mkdir_p(in_dir("cs/.step-7.tmp/sub")));
    write_text(in_dir("cs/.step-2.tmp/model.safetensors"), "garbage");
    write_text(in_dir("cs/.step-2.tmp/state.safetensors"), "garbage");
    write_text(in_dir("cs/latest.tmp.12345"), "step-2\n");
    CHECK_OK(kl_checkpoint_resolve(in_dir("cs"), dir, sizeof dir));
    CHECK(!strcmp(dir, in_dir("cs/step-1")));
    CHECK_ERR(kl_checkpoint_resolve(in_dir("cs/.step-2.tmp"), dir, sizeof dir), KL_EIO,
              "cs/.step-2.tmp: unfinished checkpoint");

    net_train(&a, 2, 4);
    kl_train_state st2 = g_st;
    st2.step = 5;
    memset(st2.watch, 'w', sizeof st2.watch); /* not terminated: refused */
    CHECK_ERR(kl_checkpoint_save(in_dir("cs"), "step-2", a.ctx, a.opt, &st2, NULL, NULL, 0), KL_EINVAL,
              "watch text is not terminated");
    snprintf(st2.watch, sizeof st2.watch, "v1 the caller's text");
    st2.epoch_loss_sum = 0.1 + 1e-17 * 3, st2.epoch_count = 448, st2.epoch_correct = 301; /* the epoch so far */
    st2.data_count = 1553, st2.data_hash = 0xfedcba9876543210ull; /* the data's fingerprint: all 64 bits */
    CHECK_OK(kl_checkpoint_save(in_dir("cs"), "step-2", a.ctx, a.opt, &st2, NULL, NULL, 0));
    CHECK(!exists(in_dir("cs/.step-2.tmp")) && !exists(in_dir("cs/.step-7.tmp")));
    CHECK(!exists(in_dir("cs/latest.tmp.12345")));
    CHECK(exists(in_dir("cs/step-1/model.safetensors")));
    CHECK_OK(kl_checkpoint_resolve(in_dir("cs"), dir, sizeof dir));
    CHECK(!strcmp(dir, in_dir("cs/step-2")));
    kl_train_state st;
    CHECK_OK(kl_checkpoint_load(dir, m.ctx, m.opt, &st, NULL));
    CHECK(st.step == 5 && !strcmp(st.watch, "v1 the caller's text"));
    CHECK(st.epoch_loss_sum == st2.epoch_loss_sum && st.epoch_count == 448 && st.epoch_correct == 301); /* bit for bit */
    CHECK(st.data_count == 1553 && st.data_hash == 0xfedcba9876543210ull);
    CHECK_OK(kl_checkpoint_load(in_dir("cs/step-1"), m.ctx, m.opt, &st, NULL)); /* saved without one: 0 */
    CHECK(st.data_count == 0 && st.data_hash == 0);
    CHECK_OK(kl_checkpoint_load(dir, m.ctx, m.opt, &st, NULL));
    size_t na;
    unsigned char *pa = snapshot(&a, &na);
    CHECK(same_as(&m, pa, na));
    free(pa);

    /* Saving a tag again replaces it whole. */
    net_train(&a, 1, 6);
    CHECK_OK(kl_checkpoint_save(in_dir("cs"), "step-2", a.ctx, a.opt, &st2, NULL, NULL, 0));
    CHECK(!exists(in_dir("cs/.step-2.tmp")) && !exists(in_dir("cs/.step-2.old")));
    CHECK_OK(kl_checkpoint_load(in_dir("cs/step-2"), m.ctx, m.opt, NULL, NULL));
    pa = snapshot(&a, &na);
    CHECK(same_as(&m, pa, na));
    free(pa);

    /* A crash between moving the old tag aside and renaming the new one in
     * (filesystems without an atomic swap) falls back to the old copy. */
    CHECK(rename(in_dir("cs/step-2"), in_dir("cs/.step-2.old")) == 0);
    CHECK_OK(kl_checkpoint_resolve(in_dir("cs"), dir, sizeof dir));
    CHECK(!strcmp(dir, in_dir("cs/.step-2.old")));
    CHECK_OK(kl_checkpoint_save(in_dir("cs"), "step-2", a.ctx, a.opt, &st2, NULL, NULL, 0));
    CHECK(!exists(in_dir("cs/.step-2.old")) && exists(in_dir("cs/step-2/state.safetensors")));

    /* Clear messages when there is nothing to resume from. */
    CHECK_OK(kl_mkdir_p(in_dir("run2/checkpoints")));
    write_text(in_dir("run2/checkpoints/latest"), "step-9\n");
    snprintf(msg, sizeof msg, "%s/checkpoints/latest names 'step-9' which does not exist", in_dir("run2"));
    CHECK_ERR(kl_checkpoint_resolve(in_dir("run2"), dir, sizeof dir), KL_EIO, msg);
    CHECK_OK(kl_mkdir_p(in_dir("run2/checkpoints/step-9")));
    write_text(in_dir("run2/checkpoints/step-9/model.safetensors"), "");
    CHECK_ERR(kl_checkpoint_resolve(in_dir("run2"), dir, sizeof dir), KL_EIO, "which is not a complete checkpoint");
    CHECK_ERR(kl_checkpoint_resolve(in_dir("run2/checkpoints/step-9"), dir, sizeof dir), KL_EIO,
              "incomplete checkpoint (has model.safetensors but no state.safetensors)");
    write_text(in_dir("run2/checkpoints/latest"), "../../etc\n");
    CHECK_ERR(kl_checkpoint_resolve(in_dir("run2"), dir, sizeof dir), KL_EFORMAT, "is not a checkpoint tag");
    CHECK_OK(kl_mkdir_p(in_dir("run3")));
    snprintf(msg, sizeof msg, "%s: no checkpoint found (no checkpoints/latest)", in_dir("run3"));
    CHECK_ERR(kl_checkpoint_resolve(in_dir("run3"), dir, sizeof dir), KL_EIO, msg);
    CHECK_ERR(kl_checkpoint_resolve(in_dir("nope"), dir, sizeof dir), KL_EIO, "nope: no checkpoint found");

    /* Tags are plain names. */
    CHECK_ERR(kl_checkpoint_save(in_dir("cs"), "../x", a.ctx, a.opt, &g_st, NULL, NULL, 0), KL_EINVAL,
              "checkpoint tag '../x': must be a plain file name");
    CHECK_ERR(kl_checkpoint_save(in_dir("cs"), "latest", a.ctx, a.opt, &g_st, NULL, NULL, 0), KL_EINVAL, "'latest'");
    CHECK_ERR(kl_checkpoint_save(in_dir("cs"), ".h", a.ctx, a.opt, &g_st, NULL, NULL, 0), KL_EINVAL, "'.h'");
    kl_train_state bad = g_st;
    strcpy(bad.optim_kind, "sgd");
    CHECK_ERR(kl_checkpoint_save(in_dir("cs"), "x", a.ctx, a.opt, &bad, NULL, NULL, 0), KL_EINVAL,
              "train state says optimizer 'sgd' but the optimizer keeps adam state");
    CHECK(!exists(in_dir("cs/x")) && !exists(in_dir("cs/.x.tmp")) && latest_is(in_dir("cs"), "step-2"));
    net_free(&a);
    net_free(&m);
}

/* Fail the k-th allocation of a save (and of a load), k = 1, 2, ...: every
 * failure is reported, the previous checkpoint stays complete and loadable,
 * a failed load changes nothing; ASan finds no leak. */
static void test_fault_loop(void)
{
    net a, m;
    net_build(&a, 1, 6, 0);
    net_build(&m, 2, 6, 0);
    net_train(&a, 1, 2);
    CHECK_OK(kl_checkpoint_save(in_dir("fl"), "step-1", a.ctx, a.opt, &g_st, "a: 1\n", NULL, 0));
    size_t n1, n2;
    unsigned char *s1 = snapshot(&a, &n1);
    net_train(&a, 1, 3);
    unsigned char *s2 = snapshot(&a, &n2);
    int k, failures = 0;
    for (k = 1; k < 1000; k++) {
        kl_test_fail_alloc(k);
        kl_status s = kl_checkpoint_save(in_dir("fl"), "step-2", a.ctx, a.opt, &g_st, "a: 2\n", NULL, 0);
        kl_test_fail_alloc(0);
        if (s == KL_OK) break;
        failures++;
        CHECK(s == KL_ENOMEM && kl_last_error()[0]);
        CHECK(latest_is(in_dir("fl"), "step-1"));
        CHECK(!exists(in_dir("fl/step-2")) && !exists(in_dir("fl/.step-2.tmp")));
        CHECK_OK(kl_checkpoint_load(in_dir("fl/step-1"), m.ctx, m.opt, NULL, NULL));
        CHECK(same_as(&m, s1, n1));
    }
    CHECK(failures >= 5);
    CHECK(latest_is(in_dir("fl"), "step-2"));

    failures = 0;
    for (k = 1; k < 1000; k++) {
        char *text = NULL;
        kl_test_fail_alloc(k);
        kl_status s = kl_checkpoint_load(in_dir("fl/step-2"), m.ctx, m.opt, NULL, &text);
        kl_test_fail_alloc(0);
        if (s == KL_OK) {
            CHECK(text && !strcmp(text, "a: 2\n"));
            free(text);
            break;
        }
        failures++;
        CHECK(s == KL_ENOMEM && !text);
        CHECK(same_as(&m, s1, n1));
    }
    CHECK(failures >= 3);
    CHECK(same_as(&m, s2, n2));
    free(s1);
    free(s2);
    net_free(&a);
    net_free(&m);
}

static int rm_entry(const char *p, const struct stat *s, int flag, struct FTW *f)
{
    (void)s, (void)flag, (void)f;
    return remove(p);
}

int main(void)
{
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_mismatch();
    test_foreign_and_corrupt();
    test_crash_and_resolve();
    test_fault_loop();
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return kl_test_done("test_checkpoint");
}
