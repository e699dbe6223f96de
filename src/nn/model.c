/* Sequential models from configs: parsing, shape inference, forward. The
 * sequence layers live in model_seq.c. */
#include "nn/model_internal.h"
#include "core/error.h"
#include "ops/conv2d.h" /* kl_conv2d_act: conv with a fused activation */
#include "ops/ops.h"    /* kl_batchnorm_act, kl_window_out */

#include <stdio.h>
#include <string.h>

const char *const kl_layer_kind_names[] = {"linear", "conv2d", "maxpool2d", "avgpool2d", "global_avgpool",
                                           "batchnorm", "layernorm", "dropout", "relu", "gelu", "tanh",
                                           "sigmoid", "flatten", "residual", "embedding", "pos_embedding",
                                           "lstm", "gru", "transformer_block", NULL};
#define kind_names kl_layer_kind_names

static int64_t prod(const int64_t *d, int n)
{
    int64_t p = 1;
    for (int i = 0; i < n; i++) p *= d[i];
    return p;
}

static const char *shape(char *buf, int n, const int64_t *d) { return kl_shape_str(buf, 64, n, d); }

#define PAIR_MAX (1 << 20)

/* Reads one or two ints ("kernel: 3" or [3, 2]) in [lo, PAIR_MAX] into
 * v[2]; def (not range-checked: it may mean "derived") when absent. */
static kl_status pair(const kl_cfg_node *n, const char *key, int def, int lo, int v[2])
{
    int64_t t[2];
    int k;
    KL_TRY(kl_cfg_int_list(n, key, 0, 2, t, &k));
    if (k == 0) {
        v[0] = v[1] = def;
        return KL_OK;
    }
    if (k == 1) t[1] = t[0];
    for (int i = 0; i < 2; i++) {
        if (t[i] < lo || t[i] > PAIR_MAX)
            return kl_cfg_fail(kl_cfg_get(n, key), KL_EINVAL, "%s must be in [%d, %d], got %lld", key, lo, PAIR_MAX,
                               (long long)t[i]);
        v[i] = (int)t[i];
    }
    return KL_OK;
}

/* eps of a normalisation: finite (the reader's check) and >= 0. */
kl_status kl_layer_eps(const kl_cfg_node *n, const char *kname, double *eps)
{
    KL_TRY(kl_cfg_float(n, "eps", 0, 1e-5, eps));
    if (*eps < 0) return kl_cfg_fail(kl_cfg_get(n, "eps"), KL_EINVAL, "%s: eps must be >= 0, got %g", kname, *eps);
    return KL_OK;
}

static kl_status parse_layers(const kl_cfg_node *seq, const char *prefix, int in_ndim, const int64_t *in,
                              parse_ctx *pc, layer **out, int *n_out, int *out_ndim, int64_t *out_shape);

/* Checks one layer's keys and infers its output shape from li->in. */
static kl_status parse_layer(const kl_cfg_node *n, layer *li, parse_ctx *pc)
{
    static const char *const common[] = {"type", NULL};
    char a[64], b[64];
    const char *kname = kind_names[li->kind];
    li->out_ndim = li->in_ndim;
    memcpy(li->out, li->in, sizeof li->out);
    if (pc->tokens_in && li->kind != L_EMBEDDING)
        return kl_cfg_fail(n, KL_EINVAL, "%s: the input is token ids %s; a token model starts with {type: embedding, dim: D}",
                           kname, shape(a, li->in_ndim, li->in));
    if (li->kind >= L_EMBEDDING) return kl_seq_layer_parse(n, li, pc);
    switch (li->kind) {
    case L_LINEAR: { /* on the last dim: [in] -> [out] or [T, in] -> [T, out] */
        static const char *const keys[] = {"type", "out", "out_features", "in_features", "bias", "tie", NULL};
        int64_t inf, in = li->in[li->in_ndim - 1];
        KL_TRY(kl_cfg_check_keys(n, keys));
        if (li->in_ndim > 2)
            return kl_cfg_fail(n, KL_EINVAL, "linear: expects a flat input, got %s; add {type: flatten} before it",
                               shape(a, li->in_ndim, li->in));
        KL_TRY(kl_linear_out(n, pc, &li->features));
        KL_TRY(kl_cfg_int(n, "in_features", 0, in, &inf));
        if (inf != in)
            return kl_cfg_fail(kl_cfg_get(n, "in_features"), KL_EINVAL,
                               "linear: in_features %lld does not match inferred input %lld", (long long)inf,
                               (long long)in);
        KL_TRY(kl_cfg_bool(n, "bias", 0, 1, &li->bias));
        li->out[li->in_ndim - 1] = li->features;
        KL_TRY(kl_linear_tie(n, li, pc));
        li->params = (li->tie[0] ? 0 : li->features * in) + (li->bias ? li->features : 0);
        return KL_OK;
    }
    case L_CONV2D: {
        static const char *const keys[] = {"type", "out", "out_channels", "in_channels", "kernel", "stride",
                                           "padding", "dilation", "groups", "bias", NULL};
        int64_t inc, g;
        KL_TRY(kl_cfg_check_keys(n, keys));
        if (li->in_ndim != 3)
            return kl_cfg_fail(n, KL_EINVAL, "conv2d: expects a [C, H, W] input, got %s", shape(a, li->in_ndim, li->in));
        const char *okey;
        KL_TRY(kl_layer_out_key(n, "out_channels", &okey));
        KL_TRY(kl_cfg_int_range(n, okey, 1, 0, 1, 1 << 20, &li->features));
        KL_TRY(kl_cfg_int(n, "in_channels", 0, li->in[0], &inc));
        if (inc != li->in[0])
            return kl_cfg_fail(kl_cfg_get(n, "in_channels"), KL_EINVAL,
                               "conv2d: in_channels %lld does not match inferred input channels %lld", (long long)inc,
                               (long long)li->in[0]);
        if (!kl_cfg_get(n, "kernel")) return kl_cfg_fail(n, KL_EINVAL, "conv2d: missing required key 'kernel'");
        KL_TRY(pair(n, "kernel", 1, 1, li->kernel));
        KL_TRY(pair(n, "stride", 1, 1, li->stride));
        KL_TRY(pair(n, "padding", 0, 0, li->pad));
        KL_TRY(pair(n, "dilation", 1, 1, li->dil));
        KL_TRY(kl_cfg_int_range(n, "groups", 0, 1, 1, 1 << 20, &g));
        li->groups = (int)g;
        if (li->in[0] % g || li->features % g)
            return kl_cfg_fail(n, KL_EINVAL, "conv2d: groups %lld must divide in channels %lld and out channels %lld",
                               (long long)g, (long long)li->in[0], (long long)li->features);
        KL_TRY(kl_cfg_bool(n, "bias", 0, 1, &li->bias));
        li->out[0] = li->features;
        for (int i = 0; i < 2; i++) {
            li->out[1 + i] = kl_window_out(li->in[1 + i], li->pad[i], li->dil[i], li->kernel[i], li->stride[i]);
            if (li->out[1 + i] <= 0)
                return kl_cfg_fail(n, KL_EINVAL, "conv2d: kernel %dx%d does not fit input %s", li->kernel[0],
                                   li->kernel[1], shape(a, li->in_ndim, li->in));
        }
        int64_t w;
        if (__builtin_mul_overflow(li->features * (li->in[0] / g), (int64_t)li->kernel[0] * li->kernel[1], &w) || w > KL_MODEL_MAX_PARAMS)
            return kl_cfg_fail(n, KL_EINVAL, "conv2d: %lld x %lld x %dx%d weights are too many", (long long)li->features,
                               (long long)(li->in[0] / g), li->kernel[0], li->kernel[1]);
        li->params = w + (li->bias ? li->features : 0);
        return KL_OK;
    }
    case L_MAXPOOL2D:
    case L_AVGPOOL2D: {
        static const char *const keys[] = {"type", "kernel", "stride", "padding", NULL};
        KL_TRY(kl_cfg_check_keys(n, keys));
        if (li->in_ndim != 3)
            return kl_cfg_fail(n, KL_EINVAL, "%s: expects a [C, H, W] input, got %s", kname, shape(a, li->in_ndim, li->in));
        if (!kl_cfg_get(n, "kernel")) return kl_cfg_fail(n, KL_EINVAL, "%s: missing required key 'kernel'", kname);
        KL_TRY(pair(n, "kernel", 1, 1, li->kernel));
        KL_TRY(pair(n, "stride", 0, 1, li->stride)); /* 0: absent, the kernel's */
        KL_TRY(pair(n, "padding", 0, 0, li->pad));
        for (int i = 0; i < 2; i++) {
            if (li->pad[i] > li->kernel[i] / 2) /* as PyTorch: a window must not lie wholly in the padding */
                return kl_cfg_fail(kl_cfg_get(n, "padding"), KL_EINVAL, "%s: padding %dx%d must be at most half the kernel %dx%d",
                                   kname, li->pad[0], li->pad[1], li->kernel[0], li->kernel[1]);
            if (!li->stride[i]) li->stride[i] = li->kernel[i];
            li->out[1 + i] = kl_window_out(li->in[1 + i], li->pad[i], 1, li->kernel[i], li->stride[i]);
            if (li->out[1 + i] <= 0)
                return kl_cfg_fail(n, KL_EINVAL, "%s: kernel %dx%d does not fit input %s", kname, li->kernel[0],
                                   li->kernel[1], shape(a, li->in_ndim, li->in));
        }
        return KL_OK;
    }
    case L_GLOBAL_AVGPOOL:
        KL_TRY(kl_cfg_check_keys(n, common));
        if (li->in_ndim != 3)
            return kl_cfg_fail(n, KL_EINVAL, "global_avgpool: expects a [C, H, W] input, got %s", shape(a, li->in_ndim, li->in));
        li->out_ndim = 1;
        return KL_OK;
    case L_BATCHNORM: {
        static const char *const keys[] = {"type", "eps", "momentum", NULL};
        KL_TRY(kl_cfg_check_keys(n, keys));
        KL_TRY(kl_layer_eps(n, kname, &li->eps));
        KL_TRY(kl_cfg_float(n, "momentum", 0, 0.1, &li->momentum));
        if (li->momentum < 0 || li->momentum > 1)
            return kl_cfg_fail(kl_cfg_get(n, "momentum"), KL_EINVAL, "batchnorm: momentum must be in [0, 1], got %g",
                               li->momentum);
        if (pc->vocab) /* on [T, D] its channels are the positions: generation's shorter windows could not run it */
            return kl_cfg_fail(n, KL_EINVAL, "batchnorm: in a token model its channels would be the %lld positions "
                               "of %s; use {type: layernorm}", (long long)li->in[0], shape(a, li->in_ndim, li->in));
        li->params = 2 * li->in[0];
        return KL_OK;
    }
    case L_LAYERNORM: {
        static const char *const keys[] = {"type", "eps", "bias", NULL};
        KL_TRY(kl_cfg_check_keys(n, keys));
        KL_TRY(kl_layer_eps(n, kname, &li->eps));
        KL_TRY(kl_cfg_bool(n, "bias", 0, 1, &li->bias));
        li->params = (1 + li->bias) * li->in[li->in_ndim - 1];
        return KL_OK;
    }
    case L_DROPOUT: {
        static const char *const keys[] = {"type", "p", NULL};
        KL_TRY(kl_cfg_check_keys(n, keys));
        KL_TRY(kl_cfg_float(n, "p", 0, 0.5, &li->p));
        if (li->p < 0 || li->p >= 1) return kl_cfg_fail(kl_cfg_get(n, "p"), KL_EINVAL, "dropout: p must be in [0, 1), got %g", li->p);
        return KL_OK;
    }
    case L_FLATTEN:
        KL_TRY(kl_cfg_check_keys(n, common));
        li->out_ndim = 1;
        li->out[0] = prod(li->in, li->in_ndim);
        return KL_OK;
    case L_RESIDUAL: {
        static const char *const keys[] = {"type", "layers", NULL};
        kl_cfg_node *body;
        KL_TRY(kl_cfg_check_keys(n, keys));
        KL_TRY(kl_cfg_get_seq(n, "layers", 1, &body));
        KL_TRY(parse_layers(body, li->name, li->in_ndim, li->in, pc, &li->body, &li->n_body, &li->out_ndim, li->out));
        if (li->out_ndim != li->in_ndim || memcmp(li->out, li->in, sizeof li->in))
            return kl_cfg_fail(n, KL_EINVAL, "residual: body maps %s to %s; a residual block must keep the shape",
                               shape(a, li->in_ndim, li->in), shape(b, li->out_ndim, li->out));
        for (int i = 0; i < li->n_body; i++) li->params += li->body[i].params;
        return KL_OK;
    }
    default: /* activations */
        return kl_cfg_check_keys(n, common);
    }
}

static void free_layers(layer *ls, int n)
{
    for (int i = 0; i < n; i++) free_layers(ls[i].body, ls[i].n_body);
    kl_free(ls);
}

static kl_status parse_layers(const kl_cfg_node *seq, const char *prefix, int in_ndim, const int64_t *in,
                              parse_ctx *pc, layer **out, int *n_out, int *out_ndim, int64_t *out_shape)
{
    int n = kl_cfg_len(seq);
    if (n <= 0) return kl_cfg_fail(seq, KL_EINVAL, "expected a non-empty list of layers");
    layer *ls = kl_calloc((size_t)n, sizeof *ls);
    if (!ls) return KL_ENOMEM;
    int nd = in_ndim;
    int64_t cur[4];
    memcpy(cur, in, sizeof cur);
    kl_status s = KL_OK;
    int i;
    for (i = 0; i < n && s == KL_OK; i++) {
        const kl_cfg_node *item = kl_cfg_item(seq, i);
        int kind;
        if (kl_cfg_kind_of(item) != KL_CFG_MAP) {
            s = kl_cfg_fail(item, KL_EINVAL, "expected a layer map like {type: relu}");
            break;
        }
        s = kl_cfg_enum(item, "type", 1, kind_names, 0, &kind);
        if (s != KL_OK) break;
        layer *li = &ls[i];
        li->kind = (layer_kind)kind;
        int w = snprintf(li->name, sizeof li->name, "%s.%d", prefix, i);
        if (w < 0 || (size_t)w >= sizeof li->name) { /* cut, two layers would share parameters */
            s = kl_cfg_fail(item, KL_EINVAL, "the layer name %s.%d is longer than %zu characters (residuals nested too deeply)",
                            prefix, i, sizeof li->name - 1);
            break;
        }
        li->in_ndim = nd;
        memcpy(li->in, cur, sizeof cur);
        s = parse_layer(item, li, pc);
        if (s != KL_OK) {
            free_layers(li->body, li->n_body);
            li->body = NULL;
            break;
        }
        if ((s = kl_model_check_size(item, li)) != KL_OK) break;
        nd = li->out_ndim;
        memcpy(cur, li->out, sizeof cur);
        pc->tokens_in = 0;
    }
    if (s != KL_OK) {
        free_layers(ls, i);
        return s;
    }
    *out = ls;
    *n_out = n;
    *out_ndim = nd;
    memcpy(out_shape, cur, sizeof cur);
    return KL_OK;
}

kl_status kl_model_from_cfg(const kl_cfg_node *model, kl_model **out)
{
    static const char *const keys[] = {"input", "vocab", "layers", NULL};
    *out = NULL;
    if (!model || kl_cfg_kind_of(model) != KL_CFG_MAP) return kl_cfg_fail(model, KL_EINVAL, "model: expected a map with input and layers");
    KL_TRY(kl_cfg_check_keys(model, keys));
    kl_model *m = kl_calloc(1, sizeof *m);
    if (!m) return KL_ENOMEM;
    parse_ctx pc = {0};
    kl_cfg_node *seq;
    int out_nd;
    int64_t out_sh[4];
    kl_status s = kl_model_parse_input(model, m, &pc);
    if (s == KL_OK) s = kl_cfg_get_seq(model, "layers", 1, &seq);
    if (s == KL_OK) s = parse_layers(seq, "layers", m->in_ndim, m->in, &pc, &m->layers, &m->n, &out_nd, out_sh);
    if (s == KL_OK) {
        s = kl_model_check_output(m, seq, out_nd, out_sh);
        if (s != KL_OK) free_layers(m->layers, m->n);
    }
    if (s != KL_OK) {
        kl_free(m);
        return s;
    }
    for (int i = 0; i < m->n; i++) m->params += m->layers[i].params;
    m->windowed = pc.windowed;
    m->n_state = pc.n_state;
    kl_set_proj_std(m->layers, m->n, pc.blocks);
    *out = m;
    return KL_OK;
}

void kl_model_free(kl_model *m)
{
    if (!m) return;
    free_layers(m->layers, m->n);
    kl_free(m);
}

int kl_model_input_ndim(const kl_model *m) { return m->in_ndim; }
const int64_t *kl_model_input_shape(const kl_model *m) { return m->in; }
int64_t kl_model_outputs(const kl_model *m)
{
    const layer *l = &m->layers[m->n - 1];
    return l->out[l->out_ndim - 1];
}
int64_t kl_model_param_count(const kl_model *m) { return m->params; }
int64_t kl_model_tokens(const kl_model *m) { return m->tokens; }
int64_t kl_model_vocab(const kl_model *m) { return m->vocab; }
int kl_model_windowed(const kl_model *m) { return m->windowed; }
int kl_model_state_count(const kl_model *m) { return m->n_state; }

kl_status kl_layer_param(kl_graph *g, const layer *li, const char *what, int nd, const int64_t *d, kl_init_kind init,
                         double a, kl_tensor **out)
{
    char name[128];
    snprintf(name, sizeof name, "%s.%s", li->name, what);
    kl_init in = {init, a};
    KL_TRY(kl_param(g, name, KL_F32, nd, d, &in, out));
    return kl_cast(g, *out, li->calc, out); /* mixed precision: the layer's compute copy */
}

static kl_act act_of(layer_kind k)
{
    return k == L_RELU ? KL_ACT_RELU : k == L_GELU ? KL_ACT_GELU : k == L_TANH ? KL_ACT_TANH : k == L_SIGMOID ? KL_ACT_SIGMOID : KL_ACT_NONE;
}

/* The activation of the layer after ls[i], to fuse into ls[i]'s output pass
 * (KL_ACT_NONE: none follows, or GELU where the op cannot fuse it). */
static kl_act next_act(const layer *ls, int n, int i, int gelu_fuses)
{
    kl_act act = i + 1 < n ? act_of(ls[i + 1].kind) : KL_ACT_NONE;
    return act == KL_ACT_GELU && !gelu_fuses ? KL_ACT_NONE : act;
}

kl_status kl_layers_forward(layer *ls, int n, kl_graph *g, kl_tensor *x, int training, kl_model_state *st,
                            kl_tensor **out)
{
    for (int i = 0; i < n; i++) {
        layer *li = &ls[i];
        kl_tensor *w = NULL, *b = NULL;
        switch (li->kind) {
        case L_LINEAR: {
            int64_t in = li->in[li->in_ndim - 1], wd[2] = {li->features, in};
            /* PyTorch's Linear init: U(+-1/sqrt(fan_in)) for weight and bias; a tied
             * weight is the embedding's (created by it, found by name) */
            if (li->tie[0]) {
                KL_TRY(kl_param(g, li->tie, KL_F32, 2, wd, NULL, &w));
                KL_TRY(kl_cast(g, w, li->calc, &w));
            } else KL_TRY(kl_layer_param(g, li, "weight", 2, wd, KL_INIT_KAIMING_UNIFORM, 0, &w));
            if (li->bias) KL_TRY(kl_layer_param(g, li, "bias", 1, &li->features, KL_INIT_KAIMING_UNIFORM, (double)in, &b));
            /* a following activation is fused into the GEMM's output pass */
            kl_act act = next_act(ls, n, i, 1);
            KL_TRY(kl_linear(g, x, w, b, act, &x));
            if (act != KL_ACT_NONE) i++;
            break;
        }
        case L_CONV2D: {
            int64_t wd[4] = {li->features, li->in[0] / li->groups, li->kernel[0], li->kernel[1]};
            double fan_in = (double)(wd[1] * wd[2] * wd[3]);
            KL_TRY(kl_layer_param(g, li, "weight", 4, wd, KL_INIT_KAIMING_UNIFORM, 0, &w));
            if (li->bias) KL_TRY(kl_layer_param(g, li, "bias", 1, &li->features, KL_INIT_KAIMING_UNIFORM, fan_in, &b));
            kl_conv2d_opts o = {{li->stride[0], li->stride[1]}, {li->pad[0], li->pad[1]}, {li->dil[0], li->dil[1]}, li->groups};
            /* like linear: relu/tanh/sigmoid right after run in the conv's output pass */
            kl_act act = next_act(ls, n, i, 0);
            KL_TRY(kl_conv2d_act(g, x, w, b, &o, act, &x));
            if (act != KL_ACT_NONE) i++;
            break;
        }
        case L_MAXPOOL2D:
        case L_AVGPOOL2D: {
            kl_pool2d_opts o = {{li->kernel[0], li->kernel[1]}, {li->stride[0], li->stride[1]}, {li->pad[0], li->pad[1]}};
            KL_TRY(li->kind == L_MAXPOOL2D ? kl_maxpool2d(g, x, &o, &x) : kl_avgpool2d(g, x, &o, &x));
            break;
        }
        case L_GLOBAL_AVGPOOL: KL_TRY(kl_global_avgpool(g, x, &x)); break;
        case L_BATCHNORM: {
            kl_tensor *rm, *rv;
            int64_t c = li->in[0];
            char name[128];
            KL_TRY(kl_layer_param(g, li, "weight", 1, &c, KL_INIT_ONES, 0, &w));
            KL_TRY(kl_layer_param(g, li, "bias", 1, &c, KL_INIT_ZEROS, 0, &b));
            snprintf(name, sizeof name, "%s.running_mean", li->name);
            KL_TRY(kl_buffer(g, name, KL_F32, 1, &c, &(kl_init){KL_INIT_ZEROS, 0}, &rm));
            snprintf(name, sizeof name, "%s.running_var", li->name);
            KL_TRY(kl_buffer(g, name, KL_F32, 1, &c, &(kl_init){KL_INIT_ONES, 0}, &rv));
            kl_batchnorm_opts o = {li->eps, li->momentum, training, .exact = 1}; /* the config's defaults are applied */
            /* like conv: relu/tanh/sigmoid right after run in the normalisation's output pass */
            kl_act act = next_act(ls, n, i, 0);
            KL_TRY(kl_batchnorm_act(g, x, w, b, rm, rv, &o, act, &x));
            if (act != KL_ACT_NONE) i++;
            break;
        }
        case L_LAYERNORM: {
            int64_t d = li->in[li->in_ndim - 1];
            KL_TRY(kl_layer_param(g, li, "weight", 1, &d, KL_INIT_ONES, 0, &w));
            b = NULL;
            if (li->bias) KL_TRY(kl_layer_param(g, li, "bias", 1, &d, KL_INIT_ZEROS, 0, &b));
            KL_TRY(kl_layernorm(g, x, w, b, li->eps, &x));
            break;
        }
        case L_DROPOUT:
            if (training && li->p > 0) KL_TRY(kl_dropout(g, x, li->p, &x));
            break;
        case L_FLATTEN: {
            int64_t d[2] = {-1, li->out[0]};
            KL_TRY(kl_reshape(g, x, 2, d, &x));
            break;
        }
        case L_RESIDUAL: {
            kl_tensor *y;
            KL_TRY(kl_layers_forward(li->body, li->n_body, g, x, training, st, &y));
            KL_TRY(kl_add(g, x, y, &x));
            break;
        }
        case L_EMBEDDING:
        case L_POS_EMBEDDING:
        case L_LSTM:
        case L_GRU:
        case L_TRANSFORMER_BLOCK: KL_TRY(kl_seq_layer_forward(li, g, x, training, st, &x)); break;
        default: KL_TRY(kl_activation(g, x, act_of(li->kind), &x)); break;
        }
    }
    *out = x;
    return KL_OK;
}

static void set_calc(layer *ls, int n, kl_dtype calc)
{
    for (int i = 0; i < n; i++) {
        ls[i].calc = calc;
        if (ls[i].body) set_calc(ls[i].body, ls[i].n_body, calc);
    }
}

kl_status kl_model_set_precision(kl_model *m, kl_dtype calc)
{
    if (!m) return kl_fail(KL_EMISUSE, "kl_model_set_precision: model is NULL");
    if (calc != KL_F32 && calc != KL_BF16 && calc != KL_F16)
        return kl_fail(KL_EINVAL, "model precision must be f32, bf16 or f16, got %s", kl_dtype_name(calc));
    m->calc = calc;
    set_calc(m->layers, m->n, calc);
    return KL_OK;
}

kl_dtype kl_model_precision(const kl_model *m) { return m->calc; }

kl_status kl_model_forward(kl_model *m, kl_graph *g, kl_tensor *x, int training, kl_tensor **out)
{
    if (!m || !g || !x || !out) return kl_fail(KL_EMISUSE, "kl_model_forward: null argument");
    /* a large model's parameters: their room at once (doubling growth would
     * take up to twice it, and the copy old + new), with slack for each
     * one's alignment */
    size_t pb = (size_t)m->params * sizeof(float);
    if (pb >= ((size_t)64 << 20)) KL_TRY(kl_ctx_reserve_params(g->ctx, pb + (size_t)KL_ALIGN * 4096));
    kl_dtype xt = kl_tensor_dtype(x);
    if (m->calc != KL_F32 && (xt == KL_F32 || xt == KL_F64)) KL_TRY(kl_cast(g, x, m->calc, &x));
    KL_TRY(kl_layers_forward(m->layers, m->n, g, x, training, NULL, out));
    return m->calc == KL_F32 ? KL_OK : kl_cast(g, *out, KL_F32, out); /* loss and metrics in f32 */
}

kl_status kl_model_forward_state(kl_model *m, kl_graph *g, kl_tensor *x, kl_model_state *st, kl_tensor **out)
{
    if (!m || !g || !x || !st || !out) return kl_fail(KL_EMISUSE, "kl_model_forward_state: null argument");
    if (m->calc != KL_F32)
        return kl_fail(KL_EUNSUPPORTED, "step-by-step generation runs in f32; this model computes in %s",
                       kl_dtype_name(m->calc));
    if (m->n_state > KL_MODEL_MAX_STATE)
        return kl_fail(KL_EINVAL, "the model has %d recurrent layers; step-by-step generation handles %d", m->n_state,
                       KL_MODEL_MAX_STATE);
    memset(st, 0, sizeof *st);
    return kl_layers_forward(m->layers, m->n, g, x, 0, st, out);
}

static void summary(const layer *ls, int n, FILE *f, int depth)
{
    for (int i = 0; i < n; i++) {
        char a[64];
        fprintf(f, "  %*s%-14s %-18s %-14s %10lld\n", 2 * depth, "", ls[i].name, kind_names[ls[i].kind],
                shape(a, ls[i].out_ndim, ls[i].out), (long long)ls[i].params);
        if (ls[i].body) summary(ls[i].body, ls[i].n_body, f, depth + 1);
    }
}

void kl_model_summary(const kl_model *m, void *file)
{
    FILE *f = file ? file : stdout;
    fprintf(f, "  %-14s %-18s %-14s %10s\n", "layer", "type", "output", "params");
    summary(m->layers, m->n, f, 0);
    fprintf(f, "  total parameters: %lld\n", (long long)m->params);
}
