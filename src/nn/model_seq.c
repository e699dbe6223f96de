/* Sequence layers of config-built models: embedding, pos_embedding, lstm,
 * gru and transformer_block. Shapes are per sample: token ids [T] ->
 * embedding [T, D] -> ... [T, D]. Parameter names follow PyTorch modules so
 * their state_dicts load as is: nn.Embedding ("layers.0.weight"), nn.LSTM /
 * nn.GRU ("layers.1.weight_ih_l0", ... "bias_hh_l1"), and for blocks
 * nanoGPT's Block ("layers.2.ln_1.weight", "attn.c_attn.weight" [3D, D],
 * "attn.c_proj.weight", "ln_2.weight", "mlp.c_fc.weight" [4D, D],
 * "mlp.c_proj.weight"). */
#include "nn/model_internal.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *shp(char *buf, int n, const int64_t *d) { return kl_shape_str(buf, 64, n, d); }

/* Layers after the embedding take [T, D]. */
static kl_status need_seq(const kl_cfg_node *n, const layer *li, const char *kname)
{
    char a[64];
    if (li->in_ndim != 2)
        return kl_cfg_fail(n, KL_EINVAL, "%s: expects a sequence [T, D] (after an embedding), got %s", kname,
                           shp(a, li->in_ndim, li->in));
    return KL_OK;
}

static kl_status parse_embedding(const kl_cfg_node *n, layer *li, parse_ctx *pc)
{
    static const char *const keys[] = {"type", "num", "dim", "std", NULL};
    char a[64];
    KL_TRY(kl_cfg_check_keys(n, keys));
    if (!pc->tokens_in)
        return kl_cfg_fail(n, KL_EINVAL, "embedding: expects token ids (the first layer of a model with input: {tokens: T}), got %s",
                           shp(a, li->in_ndim, li->in));
    KL_TRY(kl_cfg_int_range(n, "num", 0, pc->vocab, 1, 1 << 24, &li->num));
    if (li->num < pc->vocab)
        return kl_cfg_fail(kl_cfg_get(n, "num"), KL_EINVAL, "embedding: num %lld is smaller than model.vocab %lld",
                           (long long)li->num, (long long)pc->vocab);
    KL_TRY(kl_cfg_int_range(n, "dim", 1, 0, 1, 1 << 20, &li->features));
    KL_TRY(kl_cfg_float(n, "std", 0, 1.0, &li->std)); /* nn.Embedding's N(0, 1) */
    li->out_ndim = 2;
    li->out[0] = li->in[0];
    li->out[1] = li->features;
    li->params = li->num * li->features;
    if (!pc->embedding) pc->embedding = li;
    return KL_OK;
}

static kl_status parse_pos_embedding(const kl_cfg_node *n, layer *li, parse_ctx *pc)
{
    static const char *const keys[] = {"type", "std", NULL};
    KL_TRY(kl_cfg_check_keys(n, keys));
    KL_TRY(need_seq(n, li, "pos_embedding"));
    KL_TRY(kl_cfg_float(n, "std", 0, 0.02, &li->std)); /* GPT-2's wpe init */
    li->num = li->in[0];
    li->features = li->in[1];
    li->params = li->num * li->features;
    pc->windowed = 1;
    return KL_OK;
}

static kl_status parse_rnn(const kl_cfg_node *n, layer *li, parse_ctx *pc)
{
    static const char *const keys[] = {"type", "hidden", "layers", "bias", "dropout", NULL};
    const char *kname = li->kind == L_LSTM ? "lstm" : "gru";
    int64_t stack, G = li->kind == L_LSTM ? 4 : 3;
    KL_TRY(kl_cfg_check_keys(n, keys));
    KL_TRY(need_seq(n, li, kname));
    KL_TRY(kl_cfg_int_range(n, "hidden", 1, 0, 1, 1 << 16, &li->features));
    KL_TRY(kl_cfg_int_range(n, "layers", 0, 1, 1, 64, &stack));
    KL_TRY(kl_cfg_bool(n, "bias", 0, 1, &li->bias));
    KL_TRY(kl_cfg_float(n, "dropout", 0, 0, &li->p));
    if (li->p < 0 || li->p >= 1)
        return kl_cfg_fail(kl_cfg_get(n, "dropout"), KL_EINVAL, "%s: dropout must be in [0, 1), got %g", kname, li->p);
    li->stack = (int)stack;
    int64_t H = li->features;
    for (int l = 0; l < li->stack; l++) {
        int64_t I = l ? H : li->in[1];
        li->params += G * H * (I + H) + (li->bias ? 2 * G * H : 0);
    }
    li->out[1] = H;
    li->state_at = pc->n_state;
    pc->n_state += li->stack;
    return KL_OK;
}

static kl_status parse_block(const kl_cfg_node *n, layer *li, parse_ctx *pc)
{
    static const char *const keys[] = {"type", "heads", "rope", "dropout", "mlp_ratio", "eps", "bias", "std", NULL};
    int64_t ratio;
    KL_TRY(kl_cfg_check_keys(n, keys));
    KL_TRY(need_seq(n, li, "transformer_block"));
    int64_t D = li->in[1];
    if (D > 1 << 20) return kl_cfg_fail(n, KL_EINVAL, "transformer_block: width %lld is more than %d", (long long)D, 1 << 20);
    KL_TRY(kl_cfg_int_range(n, "heads", 1, 0, 1, 1 << 16, &li->heads));
    if (D % li->heads)
        return kl_cfg_fail(kl_cfg_get(n, "heads"), KL_EINVAL, "transformer_block: heads %lld must divide the width %lld",
                           (long long)li->heads, (long long)D);
    KL_TRY(kl_cfg_bool(n, "rope", 0, 0, &li->rope));
    if (li->rope && (D / li->heads) % 2)
        return kl_cfg_fail(kl_cfg_get(n, "rope"), KL_EINVAL, "transformer_block: rope needs an even head size, got %lld / %lld = %lld",
                           (long long)D, (long long)li->heads, (long long)(D / li->heads));
    KL_TRY(kl_cfg_float(n, "dropout", 0, 0, &li->p));
    if (li->p < 0 || li->p >= 1)
        return kl_cfg_fail(kl_cfg_get(n, "dropout"), KL_EINVAL, "transformer_block: dropout must be in [0, 1), got %g", li->p);
    KL_TRY(kl_cfg_int_range(n, "mlp_ratio", 0, 4, 1, 64, &ratio));
    KL_TRY(kl_layer_eps(n, "transformer_block", &li->eps));
    KL_TRY(kl_cfg_bool(n, "bias", 0, 1, &li->bias));
    KL_TRY(kl_cfg_float(n, "std", 0, 0.02, &li->std)); /* GPT-2's init */
    li->features = D;
    li->mlp = ratio * D;
    int64_t b = li->bias ? 1 : 0, M = li->mlp;
    /* ln_1, ln_2 (biases only with bias, as nanoGPT's LayerNorm), c_attn, c_proj, c_fc, mlp.c_proj */
    li->params = (2 + 2 * b) * D + 3 * D * D + 3 * D * b + D * D + D * b + M * D + M * b + D * M + D * b;
    pc->windowed = 1;
    pc->blocks++;
    return KL_OK;
}

kl_status kl_model_check_size(const kl_cfg_node *n, const layer *li)
{
    char a[64];
    int64_t v = 1;
    for (int i = 0; i < li->out_ndim; i++)
        if (__builtin_mul_overflow(v, li->out[i], &v) || v > KL_MODEL_MAX_VALUES)
            return kl_cfg_fail(n, KL_EINVAL, "%s: output %s has more than %lld values per sample",
                               kl_layer_kind_names[li->kind], shp(a, li->out_ndim, li->out), (long long)KL_MODEL_MAX_VALUES);
    if (li->params > KL_MODEL_MAX_PARAMS)
        return kl_cfg_fail(n, KL_EINVAL, "%s: %lld parameters are more than %lld", kl_layer_kind_names[li->kind],
                           (long long)li->params, (long long)KL_MODEL_MAX_PARAMS);
    return KL_OK;
}

kl_status kl_seq_layer_parse(const kl_cfg_node *n, layer *li, parse_ctx *pc)
{
    switch (li->kind) {
    case L_EMBEDDING: return parse_embedding(n, li, pc);
    case L_POS_EMBEDDING: return parse_pos_embedding(n, li, pc);
    case L_LSTM:
    case L_GRU: return parse_rnn(n, li, pc);
    case L_TRANSFORMER_BLOCK: return parse_block(n, li, pc);
    default: return kl_fail(KL_EMISUSE, "kl_seq_layer_parse: %s is not a sequence layer", kl_layer_kind_names[li->kind]);
    }
}

/* ---- token models: input, output, tied weights ---- */

kl_status kl_layer_out_key(const kl_cfg_node *n, const char *alias, const char **key)
{
    *key = kl_cfg_get(n, alias) ? alias : "out";
    if (kl_cfg_get(n, alias) && kl_cfg_get(n, "out")) /* one would be silently dropped */
        return kl_cfg_fail(kl_cfg_get(n, alias), KL_EINVAL, "%s and out are the same setting: give one", alias);
    return KL_OK;
}

/* linear's out: a number, or `vocab` in a token model. */
kl_status kl_linear_out(const kl_cfg_node *n, const parse_ctx *pc, int64_t *out)
{
    const char *key;
    KL_TRY(kl_layer_out_key(n, "out_features", &key));
    const char *text = kl_cfg_str_value(kl_cfg_get(n, key));
    if (text && !strcmp(text, "vocab")) {
        if (!pc->vocab)
            return kl_cfg_fail(kl_cfg_get(n, key), KL_EINVAL, "linear: out: vocab needs a token model (model.input: {tokens: T})");
        *out = pc->vocab;
        return KL_OK;
    }
    return kl_cfg_int_range(n, key, 1, 0, 1, 1 << 24, out);
}

/* linear with tie: true uses the embedding's weight [V, D] as its own. */
kl_status kl_linear_tie(const kl_cfg_node *n, layer *li, const parse_ctx *pc)
{
    int tie;
    KL_TRY(kl_cfg_bool(n, "tie", 0, 0, &tie));
    if (!tie) return KL_OK;
    const layer *e = pc->embedding;
    if (!e) return kl_cfg_fail(kl_cfg_get(n, "tie"), KL_EINVAL, "linear: tie: true needs an embedding layer to share weights with");
    if (li->features != e->num || li->in[li->in_ndim - 1] != e->features)
        return kl_cfg_fail(kl_cfg_get(n, "tie"), KL_EINVAL,
                           "linear: tie shares %s.weight [%lld, %lld], so it needs out %lld and input features %lld; got out %lld, input %lld",
                           e->name, (long long)e->num, (long long)e->features, (long long)e->num, (long long)e->features,
                           (long long)li->features, (long long)li->in[li->in_ndim - 1]);
    snprintf(li->tie, sizeof li->tie, "%s.weight", e->name);
    return KL_OK;
}

/* model.input: [dims...] of f32 samples, or {tokens: T} with model.vocab. */
kl_status kl_model_parse_input(const kl_cfg_node *model, kl_model *m, parse_ctx *pc)
{
    const kl_cfg_node *inode = kl_cfg_get(model, "input"), *vnode = kl_cfg_get(model, "vocab");
    if (kl_cfg_kind_of(inode) == KL_CFG_MAP) {
        static const char *const keys[] = {"tokens", NULL};
        const char *v;
        KL_TRY(kl_cfg_check_keys(inode, keys));
        KL_TRY(kl_cfg_int_range(inode, "tokens", 1, 0, 1, 1 << 24, &m->tokens));
        KL_TRY(kl_cfg_string(model, "vocab", 0, "auto", &v));
        if (!strcmp(v, "auto")) m->vocab = 256; /* every byte, until kiln train sets it from the corpus */
        else KL_TRY(kl_cfg_int_range(model, "vocab", 0, 0, 1, 1 << 24, &m->vocab));
        m->in_ndim = 1;
        m->in[0] = m->tokens;
        pc->vocab = m->vocab;
        pc->tokens_in = 1;
        return KL_OK;
    }
    if (vnode) return kl_cfg_fail(vnode, KL_EINVAL, "model.vocab is for token models (input: {tokens: T})");
    int nin;
    KL_TRY(kl_cfg_int_list(model, "input", 1, 3, m->in, &nin));
    if (nin == 0) return kl_cfg_fail(inode, KL_EINVAL, "input: expected 1 to 3 dims"); /* layers index the last dim */
    for (int i = 0; i < nin; i++)
        if (m->in[i] <= 0) return kl_cfg_fail(inode, KL_EINVAL, "input dims must be positive");
    m->in_ndim = nin;
    int64_t n = 1;
    for (int i = 0; i < nin; i++)
        if (__builtin_mul_overflow(n, m->in[i], &n) || n > KL_MODEL_MAX_VALUES)
            return kl_cfg_fail(inode, KL_EINVAL, "input: more than %lld values per sample", (long long)KL_MODEL_MAX_VALUES);
    return KL_OK;
}

/* The output per sample: [classes], or [T, vocab] for token models. */
kl_status kl_model_check_output(const kl_model *m, const kl_cfg_node *seq, int nd, const int64_t *d)
{
    char a[64];
    if (!m->tokens) {
        if (nd != 1)
            return kl_cfg_fail(seq, KL_EINVAL, "the last layer must give [classes] per sample, got %s; end with flatten/linear",
                               shp(a, nd, d));
        return KL_OK;
    }
    if (nd != 2 || d[0] != m->tokens || d[1] != m->vocab)
        return kl_cfg_fail(seq, KL_EINVAL,
                           "a token model's last layer must give [%lld, %lld] ([T, vocab]) per sample, got %s; end with "
                           "{type: linear, out: vocab}", (long long)m->tokens, (long long)m->vocab, shp(a, nd, d));
    return KL_OK;
}

/* Output projections of transformer blocks start smaller with depth (GPT-2). */
void kl_set_proj_std(layer *ls, int n, int blocks)
{
    for (int i = 0; i < n; i++) {
        if (ls[i].kind == L_TRANSFORMER_BLOCK) ls[i].proj_std = ls[i].std / sqrt(2.0 * blocks);
        kl_set_proj_std(ls[i].body, ls[i].n_body, blocks);
    }
}

/* ---- forward ---- */

static kl_status forward_rnn(const layer *li, kl_graph *g, kl_tensor *x, int training, kl_model_state *st,
                             kl_tensor **out)
{
    int lstm = li->kind == L_LSTM;
    int64_t H = li->features, G = lstm ? 4 : 3, B = kl_tensor_dim(x, 0), bd = G * H;
    double fan = (double)H; /* PyTorch: every weight and bias U(+-1/sqrt(hidden)) */
    for (int l = 0; l < li->stack; l++) {
        int64_t I = l ? H : li->in[1], dih[2] = {G * H, I}, dhh[2] = {G * H, H}, sd[2] = {B, H};
        kl_tensor *wih, *whh, *bih = NULL, *bhh = NULL, *h0 = NULL, *c0 = NULL, *y, *hn = NULL, *cn = NULL;
        char nm[48];
        snprintf(nm, sizeof nm, "weight_ih_l%d", l);
        KL_TRY(kl_layer_param(g, li, nm, 2, dih, KL_INIT_KAIMING_UNIFORM, fan, &wih));
        snprintf(nm, sizeof nm, "weight_hh_l%d", l);
        KL_TRY(kl_layer_param(g, li, nm, 2, dhh, KL_INIT_KAIMING_UNIFORM, fan, &whh));
        if (li->bias) {
            snprintf(nm, sizeof nm, "bias_ih_l%d", l);
            KL_TRY(kl_layer_param(g, li, nm, 1, &bd, KL_INIT_KAIMING_UNIFORM, fan, &bih));
            snprintf(nm, sizeof nm, "bias_hh_l%d", l);
            KL_TRY(kl_layer_param(g, li, nm, 1, &bd, KL_INIT_KAIMING_UNIFORM, fan, &bhh));
        }
        int k = li->state_at + l;
        if (st) { /* generation: the state comes in and goes out */
            if (k >= KL_MODEL_MAX_STATE) return kl_fail(KL_EINVAL, "%s: too many recurrent states", li->name);
            snprintf(nm, sizeof nm, "state.h.%d", k);
            KL_TRY(kl_input(g, nm, KL_F32, 2, sd, &h0));
            if (lstm) {
                snprintf(nm, sizeof nm, "state.c.%d", k);
                KL_TRY(kl_input(g, nm, KL_F32, 2, sd, &c0));
            }
        }
        if (lstm) KL_TRY(kl_lstm(g, x, h0, c0, wih, whh, bih, bhh, &y, st ? &hn : NULL, st ? &cn : NULL));
        else KL_TRY(kl_gru(g, x, h0, wih, whh, bih, bhh, &y, st ? &hn : NULL));
        if (st) {
            KL_TRY(kl_output(g, hn));
            if (cn) KL_TRY(kl_output(g, cn));
            st->hidden[k] = H;
            st->h_in[k] = h0, st->c_in[k] = c0, st->h_out[k] = hn, st->c_out[k] = cn;
            if (st->n < k + 1) st->n = k + 1;
        }
        /* nn.LSTM's dropout: on every layer's output but the last */
        if (training && li->p > 0 && l + 1 < li->stack) KL_TRY(kl_dropout(g, y, li->p, &y));
        x = y;
    }
    *out = x;
    return KL_OK;
}

/* A sub-module's parameter: "<layer>.<sub>.<weight|bias>". */
static kl_status sub_param(kl_graph *g, const layer *li, const char *sub, const char *what, int nd, const int64_t *d,
                           kl_init_kind k, double a, kl_tensor **out)
{
    char nm[64];
    snprintf(nm, sizeof nm, "%s.%s", sub, what);
    return kl_layer_param(g, li, nm, nd, d, k, a, out);
}

kl_status kl_block_ln(const layer *li, kl_graph *g, const char *sub, kl_tensor *x, kl_tensor **out)
{
    kl_tensor *w, *b = NULL;
    int64_t D = li->features;
    KL_TRY(sub_param(g, li, sub, "weight", 1, &D, KL_INIT_ONES, 0, &w));
    if (li->bias) KL_TRY(sub_param(g, li, sub, "bias", 1, &D, KL_INIT_ZEROS, 0, &b));
    return kl_layernorm(g, x, w, b, li->eps, out);
}

/* act(x W^T + b) with W [out, in] ~ N(0, std^2) and b zeros (GPT-2's init). */
kl_status kl_block_linear(const layer *li, kl_graph *g, const char *sub, kl_tensor *x, int64_t out_f, int64_t in_f,
                          double std, kl_act act, kl_tensor **out)
{
    kl_tensor *w, *b = NULL;
    int64_t wd[2] = {out_f, in_f};
    KL_TRY(sub_param(g, li, sub, "weight", 2, wd, KL_INIT_NORMAL, std, &w));
    if (li->bias) KL_TRY(sub_param(g, li, sub, "bias", 1, &out_f, KL_INIT_ZEROS, 0, &b));
    return kl_linear(g, x, w, b, act, out);
}

/* Pre-norm GPT block: x + proj(attn(ln_1(x))), then x + mlp(ln_2(x)). */
static kl_status forward_block(const layer *li, kl_graph *g, kl_tensor *x, int training, kl_tensor **out)
{
    int64_t B = kl_tensor_dim(x, 0), T = kl_tensor_dim(x, 1), D = li->features, H = li->heads, hd = D / H;
    kl_tensor *h, *qkv, *q, *k, *v, *a, *m;
    KL_TRY(kl_block_ln(li, g, "ln_1", x, &h));
    KL_TRY(kl_block_linear(li, g, "attn.c_attn", h, 3 * D, D, li->std, KL_ACT_NONE, &qkv));
    /* [B, T, 3D] -> [B, T, 3H, hd] -> [B, 3H, T, hd]: q, k, v are views of it */
    int64_t d4[4] = {B, T, 3 * H, hd};
    static const int to_heads[4] = {0, 2, 1, 3};
    KL_TRY(kl_reshape(g, qkv, 4, d4, &qkv));
    KL_TRY(kl_permute(g, qkv, to_heads, &qkv));
    KL_TRY(kl_slice(g, qkv, 1, 0, H, &q));
    KL_TRY(kl_slice(g, qkv, 1, H, 2 * H, &k));
    KL_TRY(kl_slice(g, qkv, 1, 2 * H, 3 * H, &v));
    if (li->rope) {
        KL_TRY(kl_rope(g, q, 0, &q));
        KL_TRY(kl_rope(g, k, 0, &k));
    }
    KL_TRY(kl_attention(g, q, k, v, 1, &a));
    int64_t d3[3] = {B, T, D};
    KL_TRY(kl_permute(g, a, to_heads, &a)); /* [B, H, T, hd] -> [B, T, H, hd] */
    KL_TRY(kl_reshape(g, a, 3, d3, &a));
    KL_TRY(kl_block_linear(li, g, "attn.c_proj", a, D, D, li->proj_std, KL_ACT_NONE, &a));
    if (training && li->p > 0) KL_TRY(kl_dropout(g, a, li->p, &a));
    KL_TRY(kl_add(g, x, a, &x));
    KL_TRY(kl_block_ln(li, g, "ln_2", x, &h));
    KL_TRY(kl_block_linear(li, g, "mlp.c_fc", h, li->mlp, D, li->std, KL_ACT_GELU, &m));
    KL_TRY(kl_block_linear(li, g, "mlp.c_proj", m, D, li->mlp, li->proj_std, KL_ACT_NONE, &m));
    if (training && li->p > 0) KL_TRY(kl_dropout(g, m, li->p, &m));
    return kl_add(g, x, m, out);
}

kl_status kl_seq_layer_forward(const layer *li, kl_graph *g, kl_tensor *x, int training, kl_model_state *st,
                               kl_tensor **out)
{
    kl_tensor *w;
    switch (li->kind) {
    case L_EMBEDDING: {
        int64_t wd[2] = {li->num, li->features};
        KL_TRY(kl_layer_param(g, li, "weight", 2, wd, KL_INIT_NORMAL, li->std, &w));
        return kl_embedding(g, w, x, out);
    }
    case L_POS_EMBEDDING: { /* x [B, T', D] + weight[:T'] */
        int64_t wd[2] = {li->num, li->features}, T = kl_tensor_ndim(x) == 3 ? kl_tensor_dim(x, 1) : 0;
        if (T < 1 || T > li->num)
            return kl_fail(KL_EINVAL, "%s: pos_embedding holds %lld positions; the input has %lld", li->name,
                           (long long)li->num, (long long)T);
        KL_TRY(kl_layer_param(g, li, "weight", 2, wd, KL_INIT_NORMAL, li->std, &w));
        if (T < li->num) KL_TRY(kl_slice(g, w, 0, 0, T, &w));
        return kl_add(g, x, w, out);
    }
    case L_LSTM:
    case L_GRU: return forward_rnn(li, g, x, training, st, out);
    case L_TRANSFORMER_BLOCK: return forward_block(li, g, x, training, out);
    default: return kl_fail(KL_EMISUSE, "kl_seq_layer_forward: %s is not a sequence layer", kl_layer_kind_names[li->kind]);
    }
}
