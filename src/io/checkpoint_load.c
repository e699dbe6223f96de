/* Checkpoint and weights loading: every tensor is checked against the
 * context (and optimizer) before the first byte is copied, so a failed load
 * changes nothing. */
#include "core/cnum.h"
#include "io/checkpoint_internal.h"
#include "io/fileio.h"
#include "core/graph.h"
#include "core/half.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* "[32,1,3,3] f32" */
static const char *desc(char *buf, size_t n, kl_dtype dt, int ndim, const int64_t *dims)
{
    char shape[160];
    kl_shape_str(shape, sizeof shape, ndim, dims);
    snprintf(buf, n, "%s %s", shape, kl_dtype_name(dt));
    return buf;
}

/* File tensor ti (called tname) must have slot sl's dtype and shape. */
static kl_status check_match(const char *file, const kl_st_file *f, int ti, const char *tname,
                             const kl_param_slot *sl)
{
    kl_dtype dt;
    int nd;
    int64_t d[KL_MAX_DIMS];
    KL_TRY(kl_st_info(f, ti, NULL, &dt, &nd, d));
    if (dt == sl->dtype && nd == sl->ndim && !memcmp(d, sl->ne, (size_t)nd * sizeof *d)) return KL_OK;
    char want[200], got[200];
    return kl_fail(KL_EFORMAT, "%s: '%s': expected %s, file has %s", file, tname,
                   desc(want, sizeof want, sl->dtype, sl->ndim, sl->ne), desc(got, sizeof got, dt, nd, d));
}

/* PyTorch's BatchNorm counter, which kiln does not keep. */
static bool ignorable(const char *name)
{
    const char *k = "num_batches_tracked";
    size_t n = strlen(name), m = strlen(k);
    return n >= m && !strcmp(name + n - m, k) && (n == m || name[n - m - 1] == '.');
}

/* Every parameter and buffer of c is in f with its shape and dtype, and f
 * holds nothing else (weights: PyTorch-only counters are let through). */
static kl_status check_model(const char *file, const kl_st_file *f, const kl_ctx *c, bool weights)
{
    for (int i = 0; i < c->n_slots; i++) {
        int ti = kl_st_find(f, c->slots[i].name);
        if (ti < 0) return kl_fail(KL_EFORMAT, "%s: missing tensor '%s'", file, c->slots[i].name);
        KL_TRY(check_match(file, f, ti, c->slots[i].name, &c->slots[i]));
    }
    for (int ti = 0; ti < kl_st_count(f); ti++) {
        const char *name;
        KL_TRY(kl_st_info(f, ti, &name, NULL, NULL, NULL));
        if (kl_ctx_param_find(c, name) < 0 && !(weights && ignorable(name)))
            return kl_fail(KL_EFORMAT, "%s: unexpected tensor '%s' (not in the model)", file, name);
    }
    return KL_OK;
}

/* A tensor read from file holds finite values (and, nonneg, none below 0):
 * a flipped bit or a diverged run's save would otherwise train on, or be
 * evaluated and exported, silently. The message names the tensor. */
static kl_status check_values(const char *file, const char *tname, kl_dtype dt, const void *p, size_t bytes, bool nonneg)
{
    size_t n = bytes / kl_dtype_size(dt);
    for (size_t i = 0; i < n; i++) {
        double v;
        switch (dt) {
        case KL_F32: v = ((const float *)p)[i]; break;
        case KL_F64: v = ((const double *)p)[i]; break;
        case KL_F16: v = kl_f16_to_f32(((const uint16_t *)p)[i]); break;
        case KL_BF16: v = kl_bf16_to_f32(((const uint16_t *)p)[i]); break;
        default: return KL_OK; /* integers: any value is one */
        }
        if (!isfinite(v) || (nonneg && v < 0))
            return kl_fail(KL_EFORMAT, "%s: tensor '%s' holds %g at element %zu%s: the file is damaged (or was saved "
                           "from a run that had diverged)", file, tname, v, i,
                           isfinite(v) ? ", below 0 where only values >= 0 can be" : "");
    }
    return KL_OK;
}

/* Tensor by tensor from the file: on the CPU straight into the parameter,
 * elsewhere through one host buffer the size of the largest. */
static kl_status copy_model(const kl_st_file *f, kl_ctx *c)
{
    bool host = c->backend == KL_BACKEND_CPU;
    size_t most = 0;
    for (int i = 0; i < c->n_slots; i++)
        if (c->slots[i].nbytes > most) most = c->slots[i].nbytes;
    unsigned char *stage = host ? NULL : kl_malloc(most ? most : 1);
    if (!host && !stage) return kl_fail(KL_ENOMEM, "loading weights: %zu bytes of host buffer", most);
    kl_status s = KL_OK;
    for (int i = 0; i < c->n_slots && s == KL_OK; i++) {
        size_t n = c->slots[i].nbytes;
        s = kl_st_read(f, kl_st_find(f, c->slots[i].name), host ? kl_slot_data(c, i) : stage, n);
        if (s == KL_OK && !host) s = kl_ctx_param_set(c, i, stage, n);
    }
    kl_free(stage);
    return s == KL_OK ? s : kl_fail_prefix(s, "the model's parameters are partly loaded");
}

static kl_status check_format(const char *file, const kl_st_file *f)
{
    const char *v = kl_st_meta(f, "format");
    if (!v) return kl_fail(KL_EFORMAT, "%s: not a kiln checkpoint (no 'format' metadata)", file);
    if (strcmp(v, KL_CKPT_FORMAT))
        return kl_fail(KL_EFORMAT, "%s: not a kiln checkpoint (format is '%.60s', expected '%s')", file, v,
                       KL_CKPT_FORMAT);
    return KL_OK;
}

/* Metadata key as a non-negative integer (at most max). */
static kl_status meta_num(const char *file, const kl_st_file *f, const char *key, unsigned long long max,
                          unsigned long long *out)
{
    const char *v = kl_st_meta(f, key);
    if (!v) return kl_fail(KL_EFORMAT, "%s: metadata '%s' is missing", file, key);
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (*v < '0' || *v > '9' || *end || errno || x > max)
        return kl_fail(KL_EFORMAT, "%s: metadata '%s' is '%.40s', expected an integer in [0,%llu]", file, key, v,
                       max);
    *out = x;
    return KL_OK;
}

/* The loss scaler's state (kl_optim_scaler); checkpoints from before it
 * was kept have none (have = false). */
typedef struct scaler_view {
    bool have;
    double scale;
    int64_t good, skipped;
} scaler_view;

static kl_status read_scaler(const char *file, const kl_st_file *f, scaler_view *sv)
{
    const char *v = kl_st_meta(f, "loss_scale");
    if (!v) return KL_OK;
    char *end;
    sv->scale = kl_strtod(v, &end);
    if (*end || end == v || !(sv->scale > 0) || !isfinite(sv->scale))
        return kl_fail(KL_EFORMAT, "%s: metadata 'loss_scale' is '%.40s', expected a positive number", file, v);
    unsigned long long x;
    KL_TRY(meta_num(file, f, "loss_scale_good", INT64_MAX, &x));
    sv->good = (int64_t)x;
    KL_TRY(meta_num(file, f, "optim_skipped", INT64_MAX, &x));
    sv->skipped = (int64_t)x;
    sv->have = true;
    return KL_OK;
}

/* The optimizer state as opt holds it. */
typedef struct optim_view {
    int n;
    const char *name[4];
    unsigned char *data[4];
    size_t bytes[4];
} optim_view;

/* "<state>.<param>" of f against every trainable parameter and opt's state
 * kinds; nothing missing, nothing else in the file. */
static kl_status check_optim_tensors(const char *file, const kl_st_file *f, const kl_ctx *c, const optim_view *ov)
{
    char tname[1024];
    for (int k = 0; k < ov->n; k++)
        for (int i = 0; i < c->n_slots; i++) {
            const kl_param_slot *sl = &c->slots[i];
            if (!sl->trainable) continue;
            if (sl->off + sl->nbytes > ov->bytes[k])
                return kl_fail(KL_EINTERNAL, "optimizer state '%s' holds %zu bytes, parameter '%s' needs [%zu,%zu) "
                               "(optimizer of another context?)", ov->name[k], ov->bytes[k], sl->name, sl->off,
                               sl->off + sl->nbytes);
            if (snprintf(tname, sizeof tname, "%s.%s", ov->name[k], sl->name) >= (int)sizeof tname)
                return kl_fail(KL_EINVAL, "parameter name '%.100s...' is too long", sl->name);
            int ti = kl_st_find(f, tname);
            if (ti < 0) return kl_fail(KL_EFORMAT, "%s: missing tensor '%s'", file, tname);
            KL_TRY(check_match(file, f, ti, tname, sl));
        }
    for (int ti = 0; ti < kl_st_count(f); ti++) {
        const char *name;
        KL_TRY(kl_st_info(f, ti, &name, NULL, NULL, NULL));
        bool known = false;
        for (int k = 0; k < ov->n && !known; k++) {
            size_t len = strlen(ov->name[k]);
            if (strncmp(name, ov->name[k], len) || name[len] != '.') continue;
            int i = kl_ctx_param_find(c, name + len + 1);
            known = i >= 0 && c->slots[i].trainable;
        }
        if (!known)
            return kl_fail(KL_EFORMAT, "%s: unexpected tensor '%s' (not part of this run's optimizer state)", file,
                           name);
    }
    return KL_OK;
}

/* Reads the train state metadata into *ns and, with opt, checks the
 * optimizer kind and its tensors (filling *ov). */
static kl_status check_state(const char *file, const kl_st_file *f, const kl_ctx *c, kl_optim *opt,
                             kl_train_state *ns, int64_t *optim_steps, optim_view *ov, scaler_view *sv)
{
    unsigned long long v;
    KL_TRY(meta_num(file, f, "step", INT64_MAX, &v));
    ns->step = (int64_t)v;
    KL_TRY(meta_num(file, f, "epoch", INT64_MAX, &v));
    ns->epoch = (int64_t)v;
    KL_TRY(meta_num(file, f, "batch", INT64_MAX, &v));
    ns->batch = (int64_t)v;
    KL_TRY(meta_num(file, f, "graph_runs", UINT64_MAX, &v));
    ns->graph_runs = v;
    KL_TRY(meta_num(file, f, "seed", UINT64_MAX, &v));
    ns->seed = v;
    const char *kind = kl_st_meta(f, "optimizer");
    if (!kind) return kl_fail(KL_EFORMAT, "%s: metadata 'optimizer' is missing", file);
    if (strlen(kind) >= sizeof ns->optim_kind)
        return kl_fail(KL_EFORMAT, "%s: metadata 'optimizer' is '%.40s', longer than %zu bytes", file, kind,
                       sizeof ns->optim_kind - 1);
    strcpy(ns->optim_kind, kind);
    const char *watch = kl_st_meta(f, "train_watch"); /* optional: older checkpoints have none */
    if (watch && strlen(watch) >= sizeof ns->watch)
        return kl_fail(KL_EFORMAT, "%s: metadata 'train_watch' holds %zu bytes, more than %zu", file, strlen(watch),
                       sizeof ns->watch - 1);
    snprintf(ns->watch, sizeof ns->watch, "%s", watch ? watch : "");
    const char *sum = kl_st_meta(f, "epoch_loss_sum"); /* optional too */
    if (sum) {
        char *end;
        ns->epoch_loss_sum = kl_strtod(sum, &end);
        if (end == sum || *end || !isfinite(ns->epoch_loss_sum))
            return kl_fail(KL_EFORMAT, "%s: metadata 'epoch_loss_sum' is '%.40s', expected a finite number", file, sum);
        KL_TRY(meta_num(file, f, "epoch_count", INT64_MAX, &v));
        ns->epoch_count = (int64_t)v;
        KL_TRY(meta_num(file, f, "epoch_correct", (unsigned long long)ns->epoch_count, &v));
        ns->epoch_correct = (int64_t)v;
    }
    if (kl_st_meta(f, "data_count")) { /* optional too */
        KL_TRY(meta_num(file, f, "data_count", INT64_MAX, &v));
        ns->data_count = (int64_t)v;
        KL_TRY(meta_num(file, f, "data_hash", UINT64_MAX, &v));
        ns->data_hash = v;
    }
    *optim_steps = ns->step;
    if (!opt) return KL_OK;
    if (kl_st_meta(f, "optim_steps")) {
        KL_TRY(meta_num(file, f, "optim_steps", INT64_MAX, &v));
        *optim_steps = (int64_t)v;
    }
    KL_TRY(read_scaler(file, f, sv));

    /* kl_optim tells sgd from adam/adamw only by its state names; adam and
     * adamw keep the same state, so switching between them is allowed. */
    const char *family;
    KL_TRY(kl_ckpt_optim_family(opt, &family));
    if (strcmp(kl_ckpt_kind_family(kind), family))
        return kl_fail(KL_EFORMAT, "%s: optimizer is '%s', this run uses '%s'", file, kind, family);

    ov->n = kl_optim_state_count(opt);
    if (ov->n > 4) return kl_fail(KL_EINTERNAL, "optimizer has %d state buffers, at most 4 supported", ov->n);
    for (int k = 0; k < ov->n; k++) {
        void *data;
        KL_TRY(kl_optim_state(opt, k, &ov->name[k], &data, &ov->bytes[k]));
        ov->data[k] = data;
    }
    return check_optim_tensors(file, f, c, ov);
}

static kl_status copy_optim(const kl_st_file *f, const kl_ctx *c, const optim_view *ov)
{
    char tname[1024];
    for (int k = 0; k < ov->n; k++)
        for (int i = 0; i < c->n_slots; i++) {
            const kl_param_slot *sl = &c->slots[i];
            if (!sl->trainable) continue;
            snprintf(tname, sizeof tname, "%s.%s", ov->name[k], sl->name); /* fits: checked */
            KL_TRY(kl_st_read(f, kl_st_find(f, tname), ov->data[k] + sl->off, sl->nbytes));
        }
    return KL_OK;
}

/* check_values over the model's tensors in f (ov NULL) or the optimizer
 * state's, read into one scratch buffer before anything is copied, so a
 * refused file leaves the parameters and the state as they were. */
static kl_status check_values_of(const char *file, const kl_st_file *f, const kl_ctx *c, const optim_view *ov)
{
    size_t most = 1;
    for (int i = 0; i < c->n_slots; i++)
        if (c->slots[i].nbytes > most) most = c->slots[i].nbytes;
    unsigned char *buf = kl_malloc(most);
    if (!buf) return kl_fail(KL_ENOMEM, "checking %s: %zu bytes of host buffer", file, most);
    kl_status s = KL_OK;
    char tname[1024];
    for (int k = 0; k < (ov ? ov->n : 1) && s == KL_OK; k++)
        for (int i = 0; i < c->n_slots && s == KL_OK; i++) {
            const kl_param_slot *sl = &c->slots[i];
            if (ov && !sl->trainable) continue;
            snprintf(tname, sizeof tname, "%s%s%s", ov ? ov->name[k] : "", ov ? "." : "", sl->name); /* fits: checked */
            s = kl_st_read(f, kl_st_find(f, tname), buf, sl->nbytes);
            if (s == KL_OK) /* Adam's second moment is never below 0 */
                s = check_values(file, tname, sl->dtype, buf, sl->nbytes, ov && !strcmp(ov->name[k], "exp_avg_sq"));
        }
    kl_free(buf);
    return s;
}

kl_status kl_checkpoint_load(const char *dir, kl_ctx *ctx, kl_optim *opt, kl_train_state *st, char **config_yaml)
{
    if (config_yaml) *config_yaml = NULL;
    if (!dir || !*dir || !ctx)
        return kl_fail(KL_EMISUSE, "kl_checkpoint_load: %s is NULL", !dir || !*dir ? "ckpt_dir" : "ctx");
    char mp[PATH_MAX], sp[PATH_MAX], cp[PATH_MAX];
    KL_TRY(kl_ckpt_join(mp, sizeof mp, dir, KL_CKPT_MODEL));
    KL_TRY(kl_ckpt_join(sp, sizeof sp, dir, KL_CKPT_STATE));
    KL_TRY(kl_ckpt_join(cp, sizeof cp, dir, KL_CKPT_CONFIG));
    kl_st_file *mf = NULL, *sf = NULL;
    void *text = NULL;
    size_t len;
    kl_train_state ns = {0};
    int64_t optim_steps = 0;
    optim_view ov = {0};
    scaler_view sv = {0};
    kl_status s = kl_st_open(mp, &mf);
    if (s == KL_OK) s = check_format(mp, mf);
    if (s == KL_OK) s = check_model(mp, mf, ctx, false);
    if (s == KL_OK) s = kl_st_open(sp, &sf);
    if (s == KL_OK) s = check_format(sp, sf);
    if (s == KL_OK) s = check_state(sp, sf, ctx, opt, &ns, &optim_steps, &ov, &sv);
    if (s == KL_OK && config_yaml && kl_ckpt_is_file(cp)) s = kl_read_file_raw(cp, &text, &len);
    /* Everything checked: from here on only a read error (the files changed
     * while open) can fail on the CPU backend. */
    if (s == KL_OK) s = check_values_of(mp, mf, ctx, NULL);
    if (s == KL_OK && opt) s = check_values_of(sp, sf, ctx, &ov);
    if (s == KL_OK) s = copy_model(mf, ctx);
    if (s == KL_OK && opt) {
        s = copy_optim(sf, ctx, &ov);
        if (s == KL_OK) s = kl_optim_set_steps(opt, optim_steps);
        if (s == KL_OK && sv.have) s = kl_optim_set_scaler(opt, sv.scale, sv.good, sv.skipped);
    }
    if (s == KL_OK) {
        if (st) *st = ns;
        if (config_yaml) *config_yaml = text, text = NULL;
    }
    kl_free(text);
    kl_st_close(mf);
    kl_st_close(sf);
    return s;
}

kl_status kl_weights_load(const char *path, kl_ctx *ctx)
{
    if (!path || !ctx) return kl_fail(KL_EMISUSE, "kl_weights_load: %s is NULL", path ? "ctx" : "path");
    kl_st_file *f;
    KL_TRY(kl_st_open(path, &f));
    kl_status s = check_model(path, f, ctx, true);
    if (s == KL_OK) s = check_values_of(path, f, ctx, NULL);
    if (s == KL_OK) s = copy_model(f, ctx);
    kl_st_close(f);
    return s;
}

kl_status kl_weights_save(const char *path, kl_ctx *ctx)
{
    if (!path || !ctx) return kl_fail(KL_EMISUSE, "kl_weights_save: %s is NULL", path ? "ctx" : "path");
    kl_st_writer *w;
    unsigned char *hold;
    KL_TRY(kl_ckpt_model_writer(ctx, &w, &hold));
    kl_status s = kl_st_writer_save(w, path);
    kl_st_writer_free(w);
    kl_free(hold);
    return s;
}
