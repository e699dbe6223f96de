/* KV-cache decoding (nn/model_kv.h). The decode graph mirrors
 * kl_model_forward for one token at position p:
 *   embedding(tok) [1, 1, D]; pos_embedding adds weight[p] (an embedding
 *   lookup with the position as index); a block computes q, k, v of the
 *   token [1, H, 1, hd], rotates q and k by position p with cosines and
 *   sines the host computes as kl_rope does, appends k, v to the cached
 *   keys and values (inputs [1, H, T, hd], rows >= len unused), and attends
 *   with softmax(q K^T / sqrt(hd) + mask) V, the mask 0 for rows < len and
 *   the new row, -1e30 for the unused ones (their weights are exactly 0);
 *   the other layers are kl_layers_forward's.
 * After a run the host copies each block's new k, v rows into its cache at
 * row len. */
#include "nn/model_kv.h"
#include "nn/model_internal.h"
#include "core/error.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    const layer *li;
    int64_t H, hd;
    kl_tensor *kc, *vc;       /* inputs: cached keys, values [1, H, T, hd] */
    kl_tensor *knew, *vnew;   /* outputs: the token's rows [1, H, 1, hd] */
    kl_tensor *cos, *sin;     /* rope: inputs [1, 1, 1, hd / 2] (NULL without rope) */
    float *k, *v;             /* host caches [H, T, hd] */
} kv_block;

struct kl_kv_decoder {
    kl_model *m;
    kl_graph *g;
    kl_tensor *tok, *pos, *mask, *logits;
    kv_block *b;
    int nb;
    int64_t T, V, len;
    float *maskv, *row; /* [T + 1]; one block's new rows [H * hd] */
};

/* A layer the decoder handles as in the full forward (no position, no state). */
static int plain(const layer *li)
{
    if (li->kind == L_POS_EMBEDDING || li->kind == L_TRANSFORMER_BLOCK || li->kind == L_LSTM || li->kind == L_GRU)
        return 0;
    for (int i = 0; i < li->n_body; i++)
        if (!plain(&li->body[i])) return 0;
    return 1;
}

static kl_status input4(kl_graph *g, const char *fmt, int i, int64_t a, int64_t b, int64_t c, kl_tensor **out)
{
    char nm[48];
    int64_t d[4] = {1, a, b, c};
    snprintf(nm, sizeof nm, fmt, i);
    return kl_input(g, nm, KL_F32, 4, d, out);
}

/* x [1, H, 1, hd] rotated as kl_rope's pairs: (a c - b s, b c + a s). */
static kl_status rope_at(kl_graph *g, kl_tensor *x, kl_tensor *c, kl_tensor *s, int64_t hd, kl_tensor **out)
{
    kl_tensor *a, *b, *ac, *bs, *bc, *as, *r[2];
    KL_TRY(kl_slice(g, x, 3, 0, hd / 2, &a));
    KL_TRY(kl_slice(g, x, 3, hd / 2, hd, &b));
    KL_TRY(kl_mul(g, a, c, &ac));
    KL_TRY(kl_mul(g, b, s, &bs));
    KL_TRY(kl_mul(g, b, c, &bc));
    KL_TRY(kl_mul(g, a, s, &as));
    KL_TRY(kl_sub(g, ac, bs, &r[0]));
    KL_TRY(kl_add(g, bc, as, &r[1]));
    return kl_concat(g, 2, r, 3, out);
}

static kl_status decode_block(kl_kv_decoder *d, kv_block *kb, int bi, kl_tensor *x, kl_tensor **out)
{
    kl_graph *g = d->g;
    const layer *li = kb->li;
    int64_t D = li->features, H = kb->H, hd = kb->hd, T = d->T;
    kl_tensor *h, *qkv, *q, *k, *v, *kk[2], *vv[2], *K, *Vt, *s, *a, *m;
    KL_TRY(kl_block_ln(li, g, "ln_1", x, &h));
    KL_TRY(kl_block_linear(li, g, "attn.c_attn", h, 3 * D, D, li->std, KL_ACT_NONE, &qkv));
    int64_t d4[4] = {1, 1, 3 * H, hd}, d3[3] = {1, 1, D};
    static const int to_heads[4] = {0, 2, 1, 3};
    KL_TRY(kl_reshape(g, qkv, 4, d4, &qkv));
    KL_TRY(kl_permute(g, qkv, to_heads, &qkv));
    KL_TRY(kl_slice(g, qkv, 1, 0, H, &q));
    KL_TRY(kl_slice(g, qkv, 1, H, 2 * H, &k));
    KL_TRY(kl_slice(g, qkv, 1, 2 * H, 3 * H, &v));
    if (li->rope) {
        KL_TRY(input4(g, "kv.rope_cos.%d", bi, 1, 1, hd / 2, &kb->cos));
        KL_TRY(input4(g, "kv.rope_sin.%d", bi, 1, 1, hd / 2, &kb->sin));
        KL_TRY(rope_at(g, q, kb->cos, kb->sin, hd, &q));
        KL_TRY(rope_at(g, k, kb->cos, kb->sin, hd, &k));
    }
    KL_TRY(kl_contiguous(g, k, &kb->knew));
    KL_TRY(kl_contiguous(g, v, &kb->vnew));
    KL_TRY(kl_output(g, kb->knew));
    KL_TRY(kl_output(g, kb->vnew));
    KL_TRY(input4(g, "kv.k.%d", bi, H, T, hd, &kb->kc));
    KL_TRY(input4(g, "kv.v.%d", bi, H, T, hd, &kb->vc));
    kk[0] = kb->kc, kk[1] = kb->knew, vv[0] = kb->vc, vv[1] = kb->vnew;
    KL_TRY(kl_concat(g, 2, kk, 2, &K)); /* [1, H, T + 1, hd] */
    KL_TRY(kl_concat(g, 2, vv, 2, &Vt));
    KL_TRY(kl_transpose(g, K, 2, 3, &K));
    KL_TRY(kl_matmul(g, q, K, &s)); /* [1, H, 1, T + 1] */
    KL_TRY(kl_scale(g, s, 1.0 / sqrt((double)hd), &s));
    KL_TRY(kl_add(g, s, d->mask, &s));
    KL_TRY(kl_softmax(g, s, &s));
    KL_TRY(kl_matmul(g, s, Vt, &a)); /* [1, H, 1, hd] */
    KL_TRY(kl_permute(g, a, to_heads, &a));
    KL_TRY(kl_reshape(g, a, 3, d3, &a));
    KL_TRY(kl_block_linear(li, g, "attn.c_proj", a, D, D, li->proj_std, KL_ACT_NONE, &a));
    KL_TRY(kl_add(g, x, a, &x));
    KL_TRY(kl_block_ln(li, g, "ln_2", x, &h));
    KL_TRY(kl_block_linear(li, g, "mlp.c_fc", h, li->mlp, D, li->std, KL_ACT_GELU, &m));
    KL_TRY(kl_block_linear(li, g, "mlp.c_proj", m, D, li->mlp, li->proj_std, KL_ACT_NONE, &m));
    return kl_add(g, x, m, out);
}

static kl_status build(kl_kv_decoder *d, kl_ctx *ctx)
{
    kl_model *m = d->m;
    int64_t one[2] = {1, 1}, md[4] = {1, 1, 1, d->T + 1};
    KL_TRY(kl_graph_new(ctx, &d->g));
    KL_TRY(kl_input(d->g, "kv.token", KL_I32, 2, one, &d->tok));
    KL_TRY(kl_input(d->g, "kv.position", KL_I32, 2, one, &d->pos));
    KL_TRY(kl_input(d->g, "kv.mask", KL_F32, 4, md, &d->mask));
    kl_tensor *x = d->tok;
    int bi = 0;
    for (int i = 0; i < m->n;) {
        layer *li = &m->layers[i];
        if (plain(li)) { /* a run of plain layers at once, so linear + activation fuse as in the forward */
            int j = i;
            while (j < m->n && plain(&m->layers[j])) j++;
            KL_TRY(kl_layers_forward(li, j - i, d->g, x, 0, NULL, &x));
            i = j;
            continue;
        }
        if (li->kind == L_POS_EMBEDDING) {
            kl_tensor *w, *p;
            int64_t wd[2] = {li->num, li->features};
            KL_TRY(kl_layer_param(d->g, li, "weight", 2, wd, KL_INIT_NORMAL, li->std, &w));
            KL_TRY(kl_embedding(d->g, w, d->pos, &p));
            KL_TRY(kl_add(d->g, x, p, &x));
        } else if (li->kind == L_TRANSFORMER_BLOCK) {
            kv_block *kb = &d->b[bi];
            kb->li = li, kb->H = li->heads, kb->hd = li->features / li->heads;
            size_t n = (size_t)(kb->H * d->T * kb->hd);
            kb->k = kl_calloc(n, sizeof(float));
            kb->v = kl_calloc(n, sizeof(float));
            if (!kb->k || !kb->v) return KL_ENOMEM;
            KL_TRY(decode_block(d, kb, bi++, x, &x));
        } else {
            return kl_fail(KL_EUNSUPPORTED, "%s: %s layers have no KV-cache decoding", li->name, kl_layer_kind_names[li->kind]);
        }
        i++;
    }
    d->logits = x;
    KL_TRY(kl_output(d->g, x));
    return kl_graph_plan(d->g, NULL);
}

kl_status kl_kv_decoder_new(kl_model *m, kl_ctx *ctx, kl_kv_decoder **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_kv_decoder_new: out is NULL");
    *out = NULL;
    if (!m || !ctx) return kl_fail(KL_EMISUSE, "kl_kv_decoder_new: null argument");
    if (!m->tokens) return kl_fail(KL_EINVAL, "KV-cache decoding needs a token model (model.input: {tokens: T})");
    int nb = 0;
    for (int i = 0; i < m->n; i++) {
        const layer *li = &m->layers[i];
        if (li->kind == L_TRANSFORMER_BLOCK) nb++;
        else if (li->kind != L_POS_EMBEDDING && !plain(li))
            return kl_fail(KL_EUNSUPPORTED, "%s: %s has no KV-cache decoding (recurrent layers, or blocks or "
                           "positions inside a residual)", li->name, kl_layer_kind_names[li->kind]);
    }
    kl_kv_decoder *d = kl_calloc(1, sizeof *d);
    if (!d) return KL_ENOMEM;
    d->m = m, d->T = m->tokens, d->V = m->vocab, d->nb = nb;
    int64_t row = 1;
    for (int i = 0; i < m->n; i++)
        if (m->layers[i].kind == L_TRANSFORMER_BLOCK && m->layers[i].features > row) row = m->layers[i].features;
    d->b = kl_calloc((size_t)nb + 1, sizeof *d->b);
    d->maskv = kl_calloc((size_t)d->T + 1, sizeof(float));
    d->row = kl_calloc((size_t)row, sizeof(float));
    kl_status s = d->b && d->maskv && d->row ? build(d, ctx) : KL_ENOMEM;
    if (s != KL_OK) {
        kl_kv_decoder_free(d);
        return s;
    }
    *out = d;
    return KL_OK;
}

void kl_kv_decoder_free(kl_kv_decoder *d)
{
    if (!d) return;
    kl_graph_free(d->g);
    for (int i = 0; d->b && i < d->nb; i++) kl_free(d->b[i].k), kl_free(d->b[i].v);
    kl_free(d->b);
    kl_free(d->maskv);
    kl_free(d->row);
    kl_free(d);
}

int64_t kl_kv_decoder_len(const kl_kv_decoder *d) { return d->len; }
int64_t kl_kv_decoder_capacity(const kl_kv_decoder *d) { return d->T; }
void kl_kv_decoder_reset(kl_kv_decoder *d) { d->len = 0; }

/* Copies the new rows [H, hd] of t into cache c [H, T, hd] at row p. */
static kl_status append_rows(kl_kv_decoder *d, const kv_block *kb, const kl_tensor *t, float *c, int64_t p)
{
    KL_TRY(kl_tensor_get(t, d->row, (size_t)(kb->H * kb->hd) * sizeof(float)));
    for (int64_t h = 0; h < kb->H; h++)
        memcpy(c + (h * d->T + p) * kb->hd, d->row + h * kb->hd, (size_t)kb->hd * sizeof(float));
    return KL_OK;
}

kl_status kl_kv_decoder_feed(kl_kv_decoder *d, int32_t tok, float *logits)
{
    int64_t p = d->len, T = d->T;
    if (p >= T)
        return kl_fail(KL_EINVAL, "KV cache: full at %lld tokens (the model's context); re-run the window instead",
                       (long long)T);
    int32_t pos = (int32_t)p;
    KL_TRY(kl_tensor_set(d->tok, &tok, sizeof tok));
    KL_TRY(kl_tensor_set(d->pos, &pos, sizeof pos));
    for (int64_t j = 0; j <= T; j++) d->maskv[j] = j < p || j == T ? 0.0f : -1e30f;
    KL_TRY(kl_tensor_set(d->mask, d->maskv, (size_t)(T + 1) * sizeof(float)));
    for (int i = 0; i < d->nb; i++) {
        kv_block *kb = &d->b[i];
        size_t bytes = (size_t)(kb->H * T * kb->hd) * sizeof(float);
        KL_TRY(kl_tensor_set(kb->kc, kb->k, bytes));
        KL_TRY(kl_tensor_set(kb->vc, kb->v, bytes));
        if (kb->cos) { /* kl_rope's angles: p * 10000^(-2i / hd), rounded to f32 */
            int64_t half = kb->hd / 2;
            float *c = d->row, *s = d->row + half;
            for (int64_t k = 0; k < half; k++) {
                double ang = (double)p * pow(10000.0, -2.0 * (double)k / (double)kb->hd);
                c[k] = (float)cos(ang), s[k] = (float)sin(ang);
            }
            KL_TRY(kl_tensor_set(kb->cos, c, (size_t)half * sizeof(float)));
            KL_TRY(kl_tensor_set(kb->sin, s, (size_t)half * sizeof(float)));
        }
    }
    KL_TRY(kl_graph_run(d->g));
    for (int i = 0; i < d->nb; i++) {
        KL_TRY(append_rows(d, &d->b[i], d->b[i].knew, d->b[i].k, p));
        KL_TRY(append_rows(d, &d->b[i], d->b[i].vnew, d->b[i].v, p));
    }
    d->len = p + 1;
    return kl_tensor_get(d->logits, logits, (size_t)d->V * sizeof(float));
}
