/* Reading `kiln train`'s config sections. Each value read is written back
 * with its default (train.loss_scale as given, auto when absent), so the
 * run's config.yaml records what the run used (docs/CONFIG.md). */
#include "cli/train_opts.h"
#include "backends/backend.h" /* kl_cuda_available */
#include "core/error.h"
#include "optim/optim_elem.h" /* KL_OPTIM_MAX_SCALE */

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static kl_status section(kl_cfg *cfg, const char *name, const char *const *keys, kl_cfg_node **out)
{
    KL_TRY(kl_cfg_get_map(kl_cfg_root(cfg), name, 0, out));
    return kl_cfg_check_keys(*out, keys);
}

/* Writes a resolved value back into the tree. */
static kl_status put(kl_cfg *cfg, const char *sec, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static kl_status put(kl_cfg *cfg, const char *sec, const char *key, const char *fmt, ...)
{
    char path[96], val[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(val, sizeof val, fmt, ap);
    va_end(ap);
    snprintf(path, sizeof path, "%s.%s", sec, key);
    return kl_cfg_set_scalar(cfg, path, val);
}

#define GET_INT(sec, key, def, lo, hi, dst)                                                        \
    do {                                                                                           \
        int64_t v_;                                                                                \
        KL_TRY(kl_cfg_int_range(m, key, 0, def, lo, hi, &v_));                                     \
        dst = v_;                                                                                  \
        KL_TRY(put(cfg, sec, key, "%lld", (long long)v_));                                         \
    } while (0)
/* GET_FLOAT refusing, located in the file, a value v_ for which ok is false
 * (written so that NaN fails it); what says what it must be. */
#define GET_FLOAT_IF(sec, key, def, dst, ok, what)                                                 \
    do {                                                                                           \
        double v_;                                                                                 \
        KL_TRY(kl_cfg_float(m, key, 0, def, &v_));                                                 \
        if (!(ok))                                                                                 \
            return kl_cfg_fail(kl_cfg_get(m, key), KL_EINVAL, "%s: %s must be %s, got %g", sec, key, what, v_); \
        dst = v_;                                                                                  \
        KL_TRY(put(cfg, sec, key, "%.17g", dst));                                                  \
    } while (0)
/* A key of another kind of the section (sgd's momentum under adam) set to
 * other than its default, which a resolved config.yaml holds for every kind. */
static kl_status only_for(kl_cfg_node *m, const char *sec, const char *key, double def, const char *kind,
                          const char *which)
{
    double v;
    KL_TRY(kl_cfg_float(m, key, 0, def, &v));
    if (v == def) return KL_OK;
    return kl_cfg_fail(kl_cfg_get(m, key), KL_EINVAL, "%s: %s is for kind %s; kind %s does not use it", sec, key,
                       which, kind);
}
/* GET_BOOL refusing, before the write-back (so located in the file, not
 * as a --set), a value for which ok is false; why says what it needs. */
#define GET_BOOL_IF(sec, key, def, dst, ok, why)                                                   \
    do {                                                                                           \
        KL_TRY(kl_cfg_bool(m, key, 0, def, &dst));                                                 \
        if (!(ok)) return kl_cfg_fail(kl_cfg_get(m, key), KL_EINVAL, "%s: %s", sec, why);          \
        KL_TRY(put(cfg, sec, key, "%s", dst ? "true" : "false"));                                  \
    } while (0)
#define GET_BOOL(sec, key, def, dst) GET_BOOL_IF(sec, key, def, dst, 1, "")

/* data.kind's names; data_keys' kinds are bits in this order. */
static const char *const data_kinds[] = {"fashion_mnist", "idx", "csv", "pngdir", "text", NULL};

/* data's keys and the kinds that use each; def (NAN: none) is a value
 * another kind may hold, as a resolved config.yaml of an earlier version
 * does. */
#define K_IMAGES 0xF /* every kind but text */
static const struct data_key {
    const char *key;
    unsigned kinds;
    double def;
} data_keys[] = {
    {"train_images", 0x2, NAN}, {"train_labels", 0x2, NAN}, {"test_images", 0x2, NAN}, {"test_labels", 0x2, NAN},
    {"path", 0x1C, NAN},        {"test_path", 0xC, NAN},    {"label_col", 0x4, -1},    {"header", 0x4, NAN},
    {"val_fraction", 0x10, NAN}, {"normalize", K_IMAGES, NAN}, {"mean", K_IMAGES, NAN}, {"std", K_IMAGES, NAN},
    {"val_split", K_IMAGES, NAN}, {"shuffle", K_IMAGES, NAN}, {"limit", K_IMAGES, NAN}, {"drop_last", K_IMAGES, NAN},
    {"on_device", K_IMAGES, NAN},
};
#define N_DATA_KEYS ((int)(sizeof data_keys / sizeof *data_keys))

/* The kinds of bits as a message names them: "csv, pngdir or text". */
static const char *kinds_text(unsigned bits, char *buf, size_t n)
{
    int total = 0, k = 0;
    size_t at = 0;
    for (int i = 0; data_kinds[i]; i++) total += bits >> i & 1;
    buf[0] = 0;
    for (int i = 0; data_kinds[i] && at < n; i++)
        if (bits >> i & 1) {
            k++;
            at += (size_t)snprintf(buf + at, n - at, "%s%s", k == 1 ? "" : k == total ? " or " : ", ", data_kinds[i]);
        }
    return buf;
}

/* Unknown data keys, and a key of another kind set (path keys would be
 * silently ignored and recorded as if used). */
static kl_status check_data_keys(kl_cfg_node *m, int kind)
{
    const char *keys[N_DATA_KEYS + 2] = {"kind"};
    for (int i = 0; i < N_DATA_KEYS; i++) keys[1 + i] = data_keys[i].key;
    KL_TRY(kl_cfg_check_keys(m, keys));
    for (int i = 0; i < N_DATA_KEYS; i++) {
        const struct data_key *e = &data_keys[i];
        kl_cfg_node *v = kl_cfg_get(m, e->key);
        if (e->kinds >> kind & 1 || !v || kl_cfg_kind_of(v) == KL_CFG_NULL) continue;
        char which[64];
        kinds_text(e->kinds, which, sizeof which);
        if (!isnan(e->def)) KL_TRY(only_for(m, "data", e->key, e->def, data_kinds[kind], which));
        else return kl_cfg_fail(v, KL_EINVAL, "data: %s is for kind %s; kind %s does not use it", e->key, which,
                                data_kinds[kind]);
    }
    return KL_OK;
}

/* data.kind text: a corpus (file or folder) and its held-out tail. */
static kl_status read_text_data(kl_cfg *cfg, kl_cfg_node *m, train_opts *o)
{
    if (!kl_cfg_get(m, "path")) KL_TRY(put(cfg, "data", "path", "%s", DATA_TEXT_DEFAULT_PATH));
    KL_TRY(kl_cfg_get_map(kl_cfg_root(cfg), "data", 0, &m)); /* put may have made the map */
    KL_TRY(kl_cfg_string(m, "path", 1, NULL, &o->path));     /* borrowed from the tree: read after any put */
    KL_TRY(kl_cfg_float(m, "val_fraction", 0, 0.1, &o->val_fraction));
    if (o->val_fraction < 0 || o->val_fraction >= 1) /* checked before the write-back, so located in the file */
        return kl_cfg_fail(kl_cfg_get(m, "val_fraction"), KL_EINVAL, "data: val_fraction must be in [0, 1), got %g",
                           o->val_fraction);
    return put(cfg, "data", "val_fraction", "%.17g", o->val_fraction);
}

static kl_status read_data(kl_cfg *cfg, train_opts *o)
{
    static const char *const paths_keys[] = {"train_images", "train_labels", "test_images", "test_labels", "path",
                                             "test_path"};
    kl_cfg_node *m;
    KL_TRY(kl_cfg_get_map(kl_cfg_root(cfg), "data", 0, &m));
    KL_TRY(kl_cfg_enum(m, "kind", 0, data_kinds, 0, &o->data_kind));
    KL_TRY(put(cfg, "data", "kind", "%s", data_kinds[o->data_kind]));
    KL_TRY(kl_cfg_get_map(kl_cfg_root(cfg), "data", 0, &m));
    KL_TRY(check_data_keys(m, o->data_kind));
    if (o->data_kind == DATA_TEXT) return read_text_data(cfg, m, o);
    const char **paths[] = {&o->train_images, &o->train_labels, &o->test_images, &o->test_labels, &o->path, &o->test_path};
    for (int i = 0; i < 6; i++) KL_TRY(kl_cfg_string(m, paths_keys[i], 0, NULL, paths[i]));
    if (o->data_kind == 1 && (!o->train_images || !o->train_labels))
        return kl_cfg_fail(m, KL_EINVAL, "data: kind idx needs train_images and train_labels");
    if (o->data_kind >= 2 && !o->path) return kl_cfg_fail(m, KL_EINVAL, "data: kind %s needs path", data_kinds[o->data_kind]);
    if (o->data_kind == 1 && !o->test_images != !o->test_labels)
        return kl_cfg_fail(kl_cfg_get(m, o->test_images ? "test_images" : "test_labels"), KL_EINVAL,
                           "data: a test set needs both test_images and test_labels");
    KL_TRY(kl_cfg_int_range(m, "label_col", 0, -1, -2, 1 << 20, &o->label_col));
    if (o->label_col == -2) /* kl_csv_opts' "no labels": kiln train has a loss to compute */
        return kl_cfg_fail(kl_cfg_get(m, "label_col"), KL_EINVAL,
                           "data: label_col -2 (no labels) cannot train a classifier; the label's 0-based column, or -1 the last");
    static const char *const headers[] = {"auto", "true", "false", NULL};
    int hdr;
    KL_TRY(kl_cfg_enum(m, "header", 0, headers, 0, &hdr));
    if (o->data_kind == 2) { /* csv's keys: recorded only where used */
        KL_TRY(put(cfg, "data", "label_col", "%lld", (long long)o->label_col));
        KL_TRY(put(cfg, "data", "header", "%s", headers[hdr]));
    }
    o->header = hdr == 0 ? -1 : hdr == 1;
    KL_TRY(kl_cfg_get_map(kl_cfg_root(cfg), "data", 0, &m)); /* put may have made the map anew */
    GET_BOOL("data", "normalize", 1, o->normalize);
    KL_TRY(kl_cfg_float(m, "mean", 0, 0, &o->mean));
    KL_TRY(kl_cfg_float(m, "std", 0, 0, &o->std));
    if (o->std < 0) return kl_cfg_fail(kl_cfg_get(m, "std"), KL_EINVAL, "data: std must be > 0");
    if (o->mean != 0 && o->std == 0) /* std 0 computes both: the mean given would be dropped */
        return kl_cfg_fail(kl_cfg_get(m, "mean"), KL_EINVAL,
                           "data: mean %g needs std too (with std 0 both are computed from the training set)", o->mean);
    GET_INT("data", "val_split", 0, 0, INT64_MAX / 2, o->val_split);
    GET_BOOL("data", "shuffle", 1, o->shuffle);
    GET_INT("data", "limit", 0, 0, INT64_MAX / 2, o->limit);
    GET_BOOL("data", "drop_last", 1, o->drop_last);
    GET_BOOL("data", "on_device", 1, o->on_device);
    return KL_OK;
}

static kl_status read_optim(kl_cfg *cfg, train_opts *o)
{
    static const char *const keys[] = {"kind", "lr", "momentum", "nesterov", "weight_decay", "decay_1d", "betas", "eps",
                                       NULL};
    static const char *const kinds[] = {"sgd", "adam", "adamw", NULL};
    kl_cfg_node *m;
    int kind, nest;
    double betas[2] = {0.9, 0.999};
    int nb;
    KL_TRY(section(cfg, "optim", keys, &m));
    KL_TRY(kl_cfg_enum(m, "kind", 0, kinds, 1, &kind));
    KL_TRY(put(cfg, "optim", "kind", "%s", kinds[kind]));
    o->optim.kind = (kl_optim_kind)kind;
    o->optim.exact = 1; /* betas [0, x] and eps 0 mean 0 */
    if (kind != KL_OPTIM_SGD) {
        KL_TRY(only_for(m, "optim", "momentum", 0, kinds[kind], "sgd"));
        KL_TRY(kl_cfg_bool(m, "nesterov", 0, 0, &nest));
        if (nest) return kl_cfg_fail(kl_cfg_get(m, "nesterov"), KL_EINVAL, "optim: nesterov is for kind sgd; kind %s does not use it", kinds[kind]);
    }
    GET_FLOAT_IF("optim", "lr", 1e-3, o->optim.lr, v_ > 0 && isfinite(v_), "a positive number");
    GET_FLOAT_IF("optim", "momentum", 0, o->optim.momentum, v_ >= 0 && v_ < 1, "in [0, 1)");
    GET_BOOL_IF("optim", "nesterov", 0, nest, !nest || o->optim.momentum > 0, "nesterov needs momentum > 0");
    o->optim.nesterov = nest;
    GET_FLOAT_IF("optim", "weight_decay", 0, o->optim.weight_decay, v_ >= 0 && isfinite(v_), "a number >= 0");
    int decay_1d;
    GET_BOOL("optim", "decay_1d", 1, decay_1d);
    o->optim.no_decay_1d = !decay_1d;
    if (kind == KL_OPTIM_SGD) KL_TRY(only_for(m, "optim", "eps", 1e-8, kinds[kind], "adam or adamw"));
    GET_FLOAT_IF("optim", "eps", 1e-8, o->optim.eps, v_ >= 0 && isfinite(v_), "a number >= 0");
    KL_TRY(kl_cfg_float_list(m, "betas", 0, 2, betas, &nb));
    if (nb == 1) return kl_cfg_fail(kl_cfg_get(m, "betas"), KL_EINVAL, "optim: betas needs two values, e.g. [0.9, 0.999]");
    if (nb == 0) betas[0] = 0.9, betas[1] = 0.999;
    for (int i = 0; i < 2; i++)
        if (!(betas[i] >= 0 && betas[i] < 1))
            return kl_cfg_fail(kl_cfg_get(m, "betas"), KL_EINVAL, "optim: betas must be in [0, 1), got [%g, %g]",
                               betas[0], betas[1]);
    if (kind == KL_OPTIM_SGD && (betas[0] != 0.9 || betas[1] != 0.999))
        return kl_cfg_fail(kl_cfg_get(m, "betas"), KL_EINVAL, "optim: betas is for kind adam or adamw; kind sgd does not use it");
    o->optim.beta1 = betas[0];
    o->optim.beta2 = betas[1];
    char b[96];
    snprintf(b, sizeof b, "optim.betas=[%.17g, %.17g]", betas[0], betas[1]);
    return kl_cfg_set(cfg, b);
}

static kl_status read_schedule(kl_cfg *cfg, train_opts *o)
{
    static const char *const keys[] = {"kind", "warmup_steps", "step_size", "gamma", "min_lr", NULL};
    static const char *const kinds[] = {"constant", "step", "cosine", NULL};
    kl_cfg_node *m;
    int kind;
    KL_TRY(section(cfg, "schedule", keys, &m));
    KL_TRY(kl_cfg_enum(m, "kind", 0, kinds, 0, &kind));
    KL_TRY(put(cfg, "schedule", "kind", "%s", kinds[kind]));
    o->sched = (sched_kind)kind;
    if (kind != SCHED_STEP) {
        KL_TRY(only_for(m, "schedule", "step_size", 1000, kinds[kind], "step"));
        KL_TRY(only_for(m, "schedule", "gamma", 0.1, kinds[kind], "step"));
    }
    if (kind != SCHED_COSINE) KL_TRY(only_for(m, "schedule", "min_lr", 0, kinds[kind], "cosine"));
    GET_INT("schedule", "warmup_steps", 0, 0, INT64_MAX / 2, o->warmup);
    GET_INT("schedule", "step_size", 1000, 1, INT64_MAX / 2, o->step_size);
    GET_FLOAT_IF("schedule", "gamma", 0.1, o->gamma, v_ >= 0 && isfinite(v_), "a number >= 0");
    char most[48];
    snprintf(most, sizeof most, "in [0, optim.lr %g]", o->optim.lr); /* cosine decays from lr to it */
    GET_FLOAT_IF("schedule", "min_lr", 0, o->min_lr, v_ >= 0 && v_ <= o->optim.lr, most);
    return KL_OK;
}

/* train.loss_scale: dynamic (f16's default: gradients scaled by S from
 * loss_scale_init, halved on overflow, doubled after loss_scale_window good
 * steps), none (the others' default), a number (a fixed S), or auto (as
 * absent: the precision's default). */
static kl_status read_loss_scale(kl_cfg *cfg, kl_cfg_node *m, train_opts *o, int f16)
{
    kl_cfg_node *n = kl_cfg_get(m, "loss_scale");
    if (kl_cfg_kind_of(n) == KL_CFG_NULL) n = NULL; /* --set train.loss_scale= */
    const char *v = kl_cfg_str_value(n);
    int dynamic = f16, fixed = 0, derived = !n || (v && !strcmp(v, "auto"));
    if (v && !strcmp(v, "dynamic")) dynamic = 1;
    else if (v && !strcmp(v, "none")) dynamic = 0;
    else if (!derived) {
        double S;
        KL_TRY(kl_cfg_float(m, "loss_scale", 0, 0, &S));
        if (!(S > 0 && S <= KL_OPTIM_MAX_SCALE))
            return kl_cfg_fail(n, KL_EINVAL, "train: loss_scale must be auto, dynamic, none or a number in (0, 2^64], got %s", v);
        o->optim.loss_scale = S;
        dynamic = 0, fixed = 1;
    }
    double init;
    int64_t window;
    KL_TRY(kl_cfg_float(m, "loss_scale_init", 0, 65536, &init));
    KL_TRY(kl_cfg_int_range(m, "loss_scale_window", 0, 2000, 1, INT32_MAX, &window));
    if (!(init > 0 && init <= KL_OPTIM_MAX_SCALE))
        return kl_cfg_fail(kl_cfg_get(m, "loss_scale_init"), KL_EINVAL,
                           "train: loss_scale_init must be a number in (0, 2^64], got %g", init);
    if (!dynamic) { /* set to its default, as in an f16 run's config.yaml resumed in f32, it is no error */
        static const char *const dyn_only[] = {"loss_scale_init", "loss_scale_window"};
        const int non_default[] = {init != 65536, window != 2000};
        for (int i = 0; i < 2; i++)
            if (non_default[i])
                return kl_cfg_fail(kl_cfg_get(m, dyn_only[i]), KL_EINVAL, "train: %s is for loss_scale: dynamic%s",
                                   dyn_only[i], f16 ? "" : " (the default with precision f16 only)");
    }
    /* the user's choice is recorded, not its resolution: auto is derived
     * again for the precision of a resume (--resume ... --precision f16) */
    if (derived) KL_TRY(put(cfg, "train", "loss_scale", "auto"));
    else if (fixed) KL_TRY(put(cfg, "train", "loss_scale", "%.17g", o->optim.loss_scale));
    else KL_TRY(put(cfg, "train", "loss_scale", "%s", dynamic ? "dynamic" : "none"));
    if (!dynamic) return KL_OK;
    o->optim.loss_scale = init;
    o->optim.scale_window = (int)window;
    KL_TRY(put(cfg, "train", "loss_scale_init", "%.17g", init));
    return put(cfg, "train", "loss_scale_window", "%lld", (long long)window);
}

static kl_status read_train(kl_cfg *cfg, train_opts *o)
{
    static const char *const keys[] = {"epochs", "steps", "batch", "seed", "log_every", "checkpoint_every", "keep_checkpoints",
                                       "threads", "steps_per_epoch",
                                       "val_batches", "plateau_patience", "early_stop", "grad_norm_warn", "accumulate",
                                       "precision", "loss_scale", "loss_scale_init", "loss_scale_window",
                                       /* read by the monitoring (cli/train_monitor.c) */
                                       "histogram_every", "telemetry_interval", "nan_watch", NULL};
    kl_cfg_node *m;
    int64_t seed;
    KL_TRY(section(cfg, "train", keys, &m));
    GET_INT("train", "epochs", 5, 0, 1 << 20, o->epochs);
    GET_INT("train", "steps", 0, 0, INT64_MAX / 2, o->steps);
    if (!o->epochs && !o->steps) return kl_cfg_fail(m, KL_EINVAL, "train: set epochs or steps");
    GET_INT("train", "batch", 128, 1, 1 << 24, o->batch);
    int64_t acc;
    GET_INT("train", "accumulate", 1, 1, 1 << 20, acc); /* batches per optimizer step */
    o->optim.accumulate = (int)acc;
    static const char *const precisions[] = {"f32", "bf16", "f16", NULL};
    int prec;
    KL_TRY(kl_cfg_enum(m, "precision", 0, precisions, 0, &prec));
    KL_TRY(put(cfg, "train", "precision", "%s", precisions[prec]));
    o->precision = prec == 2 ? KL_F16 : prec ? KL_BF16 : KL_F32;
    KL_TRY(read_loss_scale(cfg, m, o, prec == 2));
    GET_INT("train", "seed", 1, 0, INT64_MAX, seed);
    o->seed = (uint64_t)seed;
    GET_INT("train", "log_every", 50, 1, INT64_MAX / 2, o->log_every);
    GET_INT("train", "checkpoint_every", 0, 0, INT64_MAX / 2, o->checkpoint_every);
    int64_t keep; /* checked and recorded here; train_ckpt_save reads it from the resolved config */
    GET_INT("train", "keep_checkpoints", 0, 0, INT32_MAX, keep);
    (void)keep;
    GET_INT("train", "threads", 0, 0, 4096, o->threads);
    GET_INT("train", "plateau_patience", 0, 0, 1 << 30, o->plateau_patience);
    GET_BOOL_IF("train", "early_stop", 0, o->early_stop, !o->early_stop || o->plateau_patience,
                "early_stop needs plateau_patience > 0 (the evaluations without improvement it stops after)");
    KL_TRY(kl_cfg_float(m, "grad_norm_warn", 0, 0, &o->grad_norm_warn));
    if (o->grad_norm_warn < 0)
        return kl_cfg_fail(kl_cfg_get(m, "grad_norm_warn"), KL_EINVAL,
                           "train: grad_norm_warn must be >= 0 (0: off), got %g", o->grad_norm_warn);
    if (o->grad_norm_warn > 0 && o->optim.max_grad_norm <= 0) /* the norm is computed only while clipping */
        return kl_cfg_fail(kl_cfg_get(m, "grad_norm_warn"), KL_EINVAL,
                           "train: grad_norm_warn %g needs clip.max_norm > 0: the optimizer computes the global "
                           "gradient norm while clipping (a large max_norm, e.g. 1e9, measures it without clipping)",
                           o->grad_norm_warn);
    KL_TRY(put(cfg, "train", "grad_norm_warn", "%.17g", o->grad_norm_warn));
    if (o->data_kind == DATA_TEXT) { /* text has no natural epoch: a fixed number of steps */
        GET_INT("train", "steps_per_epoch", 200, 1, INT64_MAX / 2, o->steps_per_epoch);
        if (!o->steps && o->epochs > INT64_MAX / 2 / o->steps_per_epoch) /* the run's steps: steps' own limit */
            return kl_cfg_fail(kl_cfg_get(m, "steps_per_epoch"), KL_EINVAL,
                               "train: epochs %lld x steps_per_epoch %lld is more than 2^62 steps; lower either, or "
                               "set steps", (long long)o->epochs, (long long)o->steps_per_epoch);
        GET_INT("train", "val_batches", 8, 1, 1 << 20, o->val_batches);
    } else {
        static const char *const text_only[] = {"steps_per_epoch", "val_batches"};
        for (int i = 0; i < 2; i++)
            if (kl_cfg_get(m, text_only[i]))
                return kl_cfg_fail(kl_cfg_get(m, text_only[i]), KL_EINVAL, "train: %s is for data.kind text", text_only[i]);
    }
    return KL_OK;
}

kl_status train_opts_read(kl_cfg *cfg, train_opts *o)
{
    static const char *const top[] = {"name", "model", "data", "optim", "schedule", "clip", "train", NULL};
    static const char *const clip_keys[] = {"max_norm", NULL};
    memset(o, 0, sizeof *o);
    KL_TRY(kl_cfg_check_keys(kl_cfg_root(cfg), top));
    KL_TRY(kl_cfg_string(kl_cfg_root(cfg), "name", 0, "run", &o->name));
    if (strchr(o->name, '/') || strstr(o->name, "..")) /* it names a folder in runs/: it must stay there */
        return kl_cfg_fail(kl_cfg_get(kl_cfg_root(cfg), "name"), KL_EINVAL,
                           "a run name may not hold '/' or '..' (it is the run folder's name in runs/)");
    KL_TRY(read_data(cfg, o));
    KL_TRY(read_optim(cfg, o));
    KL_TRY(read_schedule(cfg, o));
    kl_cfg_node *m;
    KL_TRY(section(cfg, "clip", clip_keys, &m));
    GET_FLOAT_IF("clip", "max_norm", 0, o->optim.max_grad_norm, v_ >= 0 && isfinite(v_), "a number >= 0 (0: off)");
    return read_train(cfg, o);
}

double train_lr(const train_opts *o, int64_t step, int64_t total)
{
    double lr = o->optim.lr;
    if (o->warmup > 0 && step < o->warmup) return lr * (double)(step + 1) / (double)o->warmup;
    int64_t s = step - o->warmup, n = total - o->warmup;
    switch (o->sched) {
    case SCHED_STEP: return lr * pow(o->gamma, (double)(s / o->step_size)); /* counted after warmup, as cosine */
    case SCHED_COSINE:
        if (n <= 0) return lr;
        return o->min_lr + 0.5 * (lr - o->min_lr) * (1 + cos(M_PI * (double)s / (double)n));
    default: return lr;
    }
}

kl_status train_pick_device(const char *arg, kl_device *dev, char *note, size_t n)
{
    *dev = (kl_device){KL_DEVICE_CPU, 0};
    note[0] = 0;
    if (strcmp(arg, "auto")) return kl_device_parse(arg, dev);
    if (kl_cuda_available(0) == KL_OK) {
        *dev = (kl_device){KL_DEVICE_CUDA, 0};
        snprintf(note, n, " (auto)");
    } else {
        snprintf(note, n, " (auto: no usable GPU: %.200s)", kl_last_error());
    }
    return KL_OK;
}
