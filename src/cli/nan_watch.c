/* NaN watch: the layer-by-layer re-run of a step whose loss or gradients
 * were not finite (see nan_watch.h). */
#define _GNU_SOURCE /* open_memstream */
#include "cli/nan_watch.h"
#include "cli/evaluator.h"
#include "core/error.h"
#include "io/fileio.h" /* kl_json_escape */

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t param_bytes(const kl_ctx *ctx, int i, int *trainable)
{
    const char *name;
    kl_dtype dt;
    int nd;
    int64_t d[KL_MAX_DIMS], n = 1;
    if (kl_ctx_param_info(ctx, i, &name, &dt, &nd, d, trainable) != KL_OK) return 0;
    for (int k = 0; k < nd; k++) n *= d[k];
    return (size_t)n * kl_dtype_size(dt);
}

typedef struct {
    int64_t n, nan, inf;
    double max_abs; /* over the finite values */
} finite_stats;

static finite_stats scan(const float *v, int64_t n)
{
    finite_stats s = {.n = n};
    for (int64_t i = 0; i < n; i++) {
        if (isnan(v[i])) s.nan++;
        else if (isinf(v[i])) s.inf++;
        else if (fabs(v[i]) > s.max_abs) s.max_abs = fabs(v[i]);
    }
    return s;
}

/* Writes a config node as YAML flow text (scalars plain when safe). */
static void emit(FILE *f, const kl_cfg_node *n)
{
    switch (kl_cfg_kind_of(n)) {
    case KL_CFG_MAP:
        fputc('{', f);
        for (int i = 0; i < kl_cfg_map_len(n); i++) {
            fprintf(f, "%s\"%s\": ", i ? ", " : "", kl_cfg_map_key(n, i));
            emit(f, kl_cfg_map_value(n, i));
        }
        fputc('}', f);
        break;
    case KL_CFG_SEQ:
        fputc('[', f);
        for (int i = 0; i < kl_cfg_len(n); i++) {
            if (i) fputs(", ", f);
            emit(f, kl_cfg_item(n, i));
        }
        fputc(']', f);
        break;
    case KL_CFG_SCALAR: {
        const char *s = kl_cfg_str_value(n);
        int plain = *s != 0;
        for (const char *c = s; *c; c++) plain &= isalnum((unsigned char)*c) || strchr("._+-", *c) != NULL;
        if (plain) fputs(s, f);
        else {
            fputc('"', f);
            for (const char *c = s; *c; c++) fprintf(f, *c == '"' || *c == '\\' ? "\\%c" : "%c", *c);
            fputc('"', f);
        }
        break;
    }
    default: fputs("null", f);
    }
}

/* The model made of the first k layers (and a flatten, so any prefix ends
 * in [features]), with the full model's parameter names. */
static kl_status prefix_model(const kl_cfg_node *model, const kl_model *full, int k, kl_model **out)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return kl_fail(KL_ENOMEM, "NaN watch: out of memory");
    fputc('{', f);
    for (int i = 0; i < kl_cfg_map_len(model); i++) {
        if (!strcmp(kl_cfg_map_key(model, i), "layers")) continue;
        fprintf(f, "\"%s\": ", kl_cfg_map_key(model, i));
        emit(f, kl_cfg_map_value(model, i));
        fputs(", ", f);
    }
    fputs("\"layers\": [", f);
    const kl_cfg_node *layers = kl_cfg_get(model, "layers");
    for (int i = 0; i < k; i++) {
        emit(f, kl_cfg_item(layers, i));
        fputs(", ", f);
    }
    fputs("{type: flatten}]}", f);
    fclose(f);
    kl_cfg *c = NULL;
    kl_status s = kl_cfg_parse(text, len, "<nan watch prefix>", &c);
    if (s == KL_OK) s = kl_model_from_cfg(kl_cfg_root(c), out);
    if (s == KL_OK) s = kl_model_set_precision(*out, kl_model_precision(full)); /* the step's precision */
    kl_cfg_free(c);
    free(text);
    return s;
}

/* Runs the forward pass of m (training mode) on the batch; *out (malloc'd)
 * gets the output. With loss non-NULL also the loss (as the training step
 * computes it) and the backward pass (gradients into the ctx). */
static kl_status forward(kl_model *m, const nan_step *st, float **out, int64_t *n, float *loss)
{
    kl_graph *g = NULL;
    kl_tensor *x, *y, *o, *l = NULL;
    int64_t xd[5] = {st->batch}, B = st->batch, T = kl_model_tokens(st->model), yn = T ? B * T : B;
    int nd = kl_model_input_ndim(st->model);
    memcpy(xd + 1, kl_model_input_shape(st->model), (size_t)nd * sizeof *xd);
    kl_status s = kl_graph_new(st->ctx, &g);
    if (s == KL_OK) s = kl_input(g, "x", T ? KL_I32 : KL_F32, nd + 1, xd, &x); /* token models: i32 [B, T] */
    if (s == KL_OK) s = T ? kl_input(g, "y", KL_I32, 2, xd, &y) : kl_input(g, "y", KL_I32, 1, &B, &y);
    if (s == KL_OK) s = kl_model_forward(m, g, x, 1, &o);
    if (s == KL_OK) s = kl_output(g, o);
    if (s == KL_OK && loss && T) { /* as the step graph: [B*T, V] rows */
        int64_t flat[2] = {B * T, kl_model_outputs(st->model)};
        kl_tensor *lo, *yo;
        s = kl_reshape(g, o, 2, flat, &lo);
        if (s == KL_OK) s = kl_reshape(g, y, 1, &yn, &yo);
        if (s == KL_OK) s = kl_softmax_cross_entropy(g, lo, yo, &l);
    } else if (s == KL_OK && loss) s = kl_softmax_cross_entropy(g, o, y, &l);
    if (s == KL_OK && l) s = kl_output(g, l);
    kl_tensor *lb = l; /* backward from the loss as the step scaled it (a fixed scale may be what overflows) */
    if (s == KL_OK && l && kl_optim_grad_scale(st->opt) != 1.0) s = kl_optim_scale_loss(g, st->opt, l, &lb);
    if (s == KL_OK && l) s = kl_backward(g, lb);
    if (s == KL_OK) s = kl_graph_set_runs(g, st->runs); /* the step's dropout masks */
    if (s == KL_OK) s = kl_tensor_set(x, st->x, (size_t)kl_tensor_numel(x) * 4); /* f32 or i32 */
    if (s == KL_OK) s = kl_tensor_set(y, st->y, (size_t)yn * sizeof(int32_t));
    if (s == KL_OK) s = kl_graph_run(g);
    if (s == KL_OK) {
        *n = kl_tensor_numel(o);
        *out = malloc((size_t)*n * sizeof(float));
        s = *out ? kl_tensor_get(o, *out, (size_t)*n * sizeof(float)) : kl_fail(KL_ENOMEM, "NaN watch: out of memory");
    }
    if (s == KL_OK && l) s = kl_tensor_get(l, loss, sizeof *loss);
    kl_graph_free(g);
    return s;
}

/* Largest finite |value| over the parameters named "<layer>.*". */
static double layer_param_max(kl_ctx *ctx, const char *layer)
{
    double mx = 0;
    size_t ln = strlen(layer);
    for (int i = 0; i < kl_ctx_param_count(ctx); i++) {
        const char *name;
        kl_dtype dt;
        int nd, tr;
        int64_t d[KL_MAX_DIMS], n = 1;
        if (kl_ctx_param_info(ctx, i, &name, &dt, &nd, d, &tr) != KL_OK || dt != KL_F32) continue;
        if (strncmp(name, layer, ln) || name[ln] != '.') continue;
        for (int k = 0; k < nd; k++) n *= d[k];
        float *v = malloc((size_t)n * sizeof *v);
        if (v && kl_ctx_param_get(ctx, i, v, (size_t)n * sizeof *v) == KL_OK) {
            finite_stats fs = scan(v, n);
            if (fs.max_abs > mx) mx = fs.max_abs;
        }
        free(v);
    }
    return mx;
}

/* Scans parameters (grads 0) or gradients (grads 1): the last one (in ctx
 * order) with non-finite values, and how many have them. */
static int nonfinite_params(kl_ctx *ctx, int grads, int *last, finite_stats *at_last)
{
    int count = 0;
    for (int i = 0; i < kl_ctx_param_count(ctx); i++) {
        int tr;
        size_t b = param_bytes(ctx, i, &tr);
        /* buffers neither: the guard keeps trainable parameters only, and the
         * bad step's forward itself writes batchnorm's running statistics */
        if (!tr) continue;
        float *v = malloc(b ? b : 1);
        kl_status s = v ? (grads ? kl_ctx_grad_get(ctx, i, v, b) : kl_ctx_param_get(ctx, i, v, b)) : KL_ENOMEM;
        finite_stats fs = s == KL_OK ? scan(v, (int64_t)(b / sizeof(float))) : (finite_stats){0};
        free(v);
        if (fs.nan + fs.inf) count++, *last = i, *at_last = fs;
        if (fs.nan + fs.inf && !grads) break; /* parameters: the first */
    }
    return count;
}

/* ,"key":"s" with s escaped (config paths and types are the user's text) */
static void json_field(FILE *f, const char *key, const char *s)
{
    fprintf(f, ",\"%s\":\"", key);
    for (char esc[8]; *s; s++) fwrite(esc, 1, (size_t)kl_json_escape((unsigned char)*s, esc), f);
    fputc('"', f);
}

/* The finding's record; layer, op and origin NULL: left out. */
static void record(const nan_step *st, const char *trigger, const char *phase, const char *layer, const char *op,
                   const char *origin, int line, const finite_stats *fs)
{
    if (!st->metrics) return;
    fprintf(st->metrics, "{\"type\":\"nan\",\"step\":%lld,\"trigger\":\"%s\",\"phase\":\"%s\"", (long long)st->step,
            trigger, phase);
    if (layer) json_field(st->metrics, "layer", layer);
    if (op) json_field(st->metrics, "op", op);
    if (origin) {
        char where[4200];
        snprintf(where, sizeof where, "%s:%d", origin, line);
        json_field(st->metrics, "where", where);
    }
    if (fs) fprintf(st->metrics, ",\"nan\":%lld,\"inf\":%lld,\"values\":%lld", (long long)fs->nan, (long long)fs->inf, (long long)fs->n);
    fputs("}\n", st->metrics);
    fflush(st->metrics);
}

/* The re-run: parameters (as the guard kept them), forward layer by layer,
 * loss, backward. The finding goes to msg. */
static kl_status diagnose(const nan_step *st, const char *trigger, char *msg, size_t cap)
{
    kl_ctx *ctx = st->ctx;
    int last = -1;
    finite_stats fs;
    const char *name = "?", *type = "?";
    kl_dtype dt;
    int nd, tr;
    int64_t d[KL_MAX_DIMS];
    if (nonfinite_params(ctx, 0, &last, &fs)) {
        kl_ctx_param_info(ctx, last, &name, &dt, &nd, d, &tr);
        char layer[128];
        snprintf(layer, sizeof layer, "%.*s", (int)(strrchr(name, '.') ? strrchr(name, '.') - name : (long)strlen(name)), name);
        snprintf(msg, cap, "parameter '%s' was already non-finite before this step (%lld nan, %lld inf of %lld values): "
                 "loaded that way, or an earlier update overflowed", name, (long long)fs.nan, (long long)fs.inf, (long long)fs.n);
        record(st, trigger, "parameters", layer, "optim", NULL, 0, &fs);
        return KL_OK;
    }
    const kl_cfg_node *model = kl_cfg_get(kl_cfg_root(st->cfg), "model"), *layers = kl_cfg_get(model, "layers");
    int64_t ss = 1, tokens = kl_model_tokens(st->model);
    for (int i = 0; i < kl_model_input_ndim(st->model); i++) ss *= kl_model_input_shape(st->model)[i];
    double in_max = tokens ? 0 : scan(st->x, st->batch * ss).max_abs;
    char note[300] = "";
    for (int k = 1; k <= kl_cfg_len(layers); k++) {
        kl_model *pm = NULL;
        float *out = NULL;
        int64_t n = 0;
        kl_status s = prefix_model(model, st->model, k, &pm);
        if (s != KL_OK) { /* some prefixes are no model of their own (token models): go on with the whole step */
            snprintf(note, sizeof note, " (layers[0..%d] could not be re-run alone: %.200s)", k - 1, kl_last_error());
            break;
        }
        s = forward(pm, st, &out, &n, NULL);
        kl_model_free(pm);
        if (s != KL_OK) {
            free(out);
            return kl_fail_prefix(s, "NaN watch: re-running layers[0..%d]", k - 1);
        }
        fs = scan(out, n);
        free(out);
        if (fs.nan + fs.inf) {
            const kl_cfg_node *ln = kl_cfg_item(layers, k - 1);
            char layer[32];
            snprintf(layer, sizeof layer, "layers.%d", k - 1);
            kl_cfg_string(ln, "type", 0, "?", &type);
            snprintf(msg, cap, "first non-finite values in the output of %s (op %s, %s:%d): %lld of %lld values "
                     "(%lld nan, %lld inf); its input has max |x| = %.3g, its parameters max |w| = %.3g",
                     layer, type, kl_cfg_origin(ln), kl_cfg_line(ln), (long long)(fs.nan + fs.inf), (long long)fs.n,
                     (long long)fs.nan, (long long)fs.inf, in_max, layer_param_max(ctx, layer));
            record(st, trigger, "forward", layer, type, kl_cfg_origin(ln), kl_cfg_line(ln), &fs);
            return KL_OK;
        }
        in_max = fs.max_abs;
    }
    float *out = NULL, loss = 0;
    int64_t n = 0;
    kl_status s = forward(st->model, st, &out, &n, &loss);
    finite_stats lg = s == KL_OK ? scan(out, n) : (finite_stats){0};
    free(out);
    if (s != KL_OK) return kl_fail_prefix(s, "NaN watch: re-running the step");
    if (lg.nan + lg.inf) { /* only when the layers could not be re-run one by one */
        snprintf(msg, cap, "the model's output has %lld nan, %lld inf of %lld values%s", (long long)lg.nan,
                 (long long)lg.inf, (long long)lg.n, note);
        record(st, trigger, "forward", "output", "?", NULL, 0, &lg);
    } else if (!isfinite(loss)) {
        snprintf(msg, cap, "the logits are finite (max |logit| = %.3g) but op softmax_cross_entropy gave a loss of %g%s",
                 in_max, loss, note);
        record(st, trigger, "loss", "loss", "softmax_cross_entropy", NULL, 0, NULL);
    } else if (nonfinite_params(ctx, 1, &last, &fs) > 0) {
        kl_ctx_param_info(ctx, last, &name, &dt, &nd, d, &tr);
        char layer[128];
        snprintf(layer, sizeof layer, "%.*s", (int)(strrchr(name, '.') ? strrchr(name, '.') - name : (long)strlen(name)), name);
        char scaled[64] = "";
        if (kl_optim_grad_scale(st->opt) != 1.0)
            snprintf(scaled, sizeof scaled, " (backward from the loss x %g, train.loss_scale)", kl_optim_grad_scale(st->opt));
        snprintf(msg, cap, "the forward pass is finite (loss %.4g) but the backward pass%s is not: the gradient of '%s' "
                 "(the last layer with one; backward runs from the output) has %lld nan, %lld inf of %lld values%s",
                 loss, scaled, name, (long long)fs.nan, (long long)fs.inf, (long long)fs.n, note);
        record(st, trigger, "backward", layer, "backward", NULL, 0, &fs);
    } else {
        snprintf(msg, cap, "the re-run from the saved parameters is finite (loss %.4g); it did not reproduce "
                 "(GPU rounding, or an earlier batch of the step under gradient accumulation)%s", loss, note);
        record(st, trigger, "none", "", "", NULL, 0, NULL);
    }
    return KL_OK;
}

kl_status nan_watch_eval(kl_status s, const char *pass, int64_t step, FILE *metrics)
{
    if (s != KL_ENUMERIC) return s;
    nan_step st = {.step = step, .metrics = metrics};
    record(&st, "loss", pass, NULL, NULL, NULL, 0, NULL);
    return kl_fail_prefix(s, "%s after step %lld", pass, (long long)step);
}

kl_status nan_watch_after(nan_watch *w, kl_status s, const nan_step *st)
{
    double gn = st->grad_norm;
    const char *trigger = s == KL_ENUMERIC ? "loss" : s == KL_OK && !isfinite(gn) ? "grad_norm" : NULL;
    if (!trigger || w->off) {
        if (s == KL_OK && trigger) /* watch off: still stop on a non-finite gradient */
            return kl_fail(KL_ENUMERIC, "gradient norm is %g at step %lld: training diverged", gn, (long long)st->step);
        return s;
    }
    char first[512], msg[1024];
    if (s == KL_ENUMERIC) snprintf(first, sizeof first, "%s", kl_last_error());
    else snprintf(first, sizeof first, "gradient norm is %g (the loss is finite)", gn);
    kl_status d = diagnose(st, trigger, msg, sizeof msg);
    if (d != KL_OK) snprintf(msg, sizeof msg, "the re-run failed: %s", kl_last_error());
    return kl_fail(KL_ENUMERIC, "step %lld: %s\nNaN watch: %s", (long long)st->step, first, msg);
}
