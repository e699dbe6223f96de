/* ONNX export of the sequence layers (onnx_graph.h): transformer blocks
 * with rotary positions, LSTM and GRU; embeddings and positions are in
 * model_onnx.c's dispatch. */
#include "nn/onnx_graph.h"
#include "core/error.h"
#include "ops/seq.h" /* kl_rope_angle */

#include <math.h>
#include <stdio.h>
#include <string.h>

/* out = x[..., :T] of a [rows, ...] initializer along axes (1 or 2 of them),
 * T the input's length */
void kl_ox_slice_to_len(onnx_w *w, const char *x, int naxes, char *out)
{
    char st[16], ax[16];
    kl_ox_ints_const(w, (const int64_t[]){0, 0}, naxes, st);
    kl_ox_ints_const(w, (const int64_t[]){0, 1}, naxes, ax);
    kl_ox_fresh(w, out);
    kl_ox_node(w, "Slice", (const char *const[]){x, st, naxes == 1 ? w->seq : w->seq2, ax}, 4, out, NULL);
}

/* "<layer>.<sub>.<what>" as an initializer (into name) */
static void sub_param(onnx_w *w, const layer *li, const char *sub, const char *what, char *name)
{
    char nm[64];
    snprintf(nm, sizeof nm, "%s.%s", sub, what);
    kl_ox_param(w, li, nm, name);
}

static void sub_linear(onnx_w *w, const layer *li, const char *sub, char *x)
{
    char p[2][128];
    sub_param(w, li, sub, "weight", p[0]);
    if (li->bias) sub_param(w, li, sub, "bias", p[1]);
    kl_ox_matmul_t(w, x, p[0], li->bias ? p[1] : NULL);
}

static void sub_ln(onnx_w *w, const layer *li, const char *sub, const char *x, char *out)
{
    char p[2][128];
    kl_pb a = {0};
    sub_param(w, li, sub, "weight", p[0]);
    if (li->bias) sub_param(w, li, sub, "bias", p[1]);
    kl_ox_attr_int(&a, "axis", -1);
    kl_ox_attr_float(&a, "epsilon", (float)li->eps);
    kl_ox_fresh(w, out);
    kl_ox_node(w, "LayerNormalization", (const char *const[]){x, p[0], p[1]}, li->bias ? 3 : 2, out, &a);
    kl_pb_free(&a);
}

/* dst's gate block k = src's block order[k] (blocks of H rows of cols each) */
static void gates(float *dst, const float *src, const int *order, int G, int64_t H, int64_t cols)
{
    for (int k = 0; k < G; k++) memcpy(dst + k * H * cols, src + order[k] * H * cols, (size_t)(H * cols) * sizeof *dst);
}

/* nn.LSTM / nn.GRU (stacked) as one ONNX LSTM / GRU node per layer,
 * time-major between a Transpose in and out (onnxruntime runs layout 0
 * only). The gates are reordered from PyTorch's (i f g o;
 * r z n) to ONNX's (i o f c; z r h) into initializers "<layer>.onnx.W_l<k>",
 * R and B; GRU's linear_before_reset = 1 is PyTorch's form of the candidate. */
void kl_ox_rnn_out(onnx_w *w, const layer *li, char *x)
{
    static const int lstm_order[4] = {0, 3, 1, 2}, gru_order[3] = {1, 0, 2};
    int lstm = li->kind == L_LSTM, G = lstm ? 4 : 3;
    int64_t H = li->features;
    kl_ox_transpose(w, x, (const int64_t[]){1, 0, 2}, 3); /* [T, B, IN] */
    for (int l = 0; l < li->stack && w->s == KL_OK; l++) {
        int64_t IN = l ? H : li->in[1], nd3[3] = {1, G * H, IN}, nr3[3] = {1, G * H, H}, nb2[2] = {1, 2 * G * H};
        char nm[4][160], y[16];
        const char *what[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
        float *v[4] = {NULL}, *t[3];
        int nd;
        int64_t ne[KL_MAX_DIMS], n;
        for (int k = 0; k < (li->bias ? 4 : 2); k++) {
            snprintf(nm[k], sizeof nm[k], "%s.%s_l%d", li->name, what[k], l);
            v[k] = kl_ox_fetch(w, nm[k], &nd, ne, &n);
        }
        t[0] = kl_malloc((size_t)(G * H * IN) * sizeof(float));
        t[1] = kl_malloc((size_t)(G * H * H) * sizeof(float));
        t[2] = kl_calloc((size_t)(2 * G * H), sizeof(float)); /* no bias: zeros */
        if (w->s == KL_OK && (!t[0] || !t[1] || !t[2])) w->s = KL_ENOMEM;
        if (w->s == KL_OK) {
            const int *ord = lstm ? lstm_order : gru_order;
            gates(t[0], v[0], ord, G, H, IN);
            gates(t[1], v[1], ord, G, H, H);
            if (li->bias) {
                gates(t[2], v[2], ord, G, H, 1);
                gates(t[2] + G * H, v[3], ord, G, H, 1);
            }
            const char *kind[3] = {"W", "R", "B"};
            for (int k = 0; k < 3; k++) snprintf(nm[k], sizeof nm[k], "%s.onnx.%s_l%d", li->name, kind[k], l);
            kl_ox_initializer(w, nm[0], 3, nd3, t[0], G * H * IN);
            kl_ox_initializer(w, nm[1], 3, nr3, t[1], G * H * H);
            kl_ox_initializer(w, nm[2], 2, nb2, t[2], 2 * G * H);
            kl_pb a = {0};
            kl_ox_attr_int(&a, "hidden_size", H);
            if (!lstm) kl_ox_attr_int(&a, "linear_before_reset", 1);
            kl_ox_fresh(w, y);
            kl_ox_node(w, lstm ? "LSTM" : "GRU", (const char *const[]){x, nm[0], nm[1], nm[2]}, 4, y, &a);
            kl_pb_free(&a);
            strcpy(x, y);
            kl_ox_reshape(w, x, (const int64_t[]){0, -1, H}, 3); /* Y [T, 1, B, H] -> [T, B, H] */
        }
        for (int k = 0; k < 4; k++) kl_free(v[k]);
        for (int k = 0; k < 3; k++) kl_free(t[k]);
    }
    kl_ox_transpose(w, x, (const int64_t[]){1, 0, 2}, 3); /* [B, T, H] */
}

/* Rotary positions (ops/rope.c, NeoX pairs (x[i], x[i + hd/2])) on x [B, H, T, hd]:
 * [x1 c - x2 s, x2 c + x1 s] with kiln's cosine and sine tables (angles in
 * double, rounded to f32) as initializers. */
static void rope_out(onnx_w *w, char *x, int64_t hd)
{
    int64_t T = w->tokens, half = hd / 2;
    int r = 0;
    while (r < w->n_rope && w->rope_hd[r] != hd) r++; /* one pair of tables per head size */
    if (r == KL_OX_ROPE_MAX) {
        if (w->s == KL_OK)
            w->s = kl_fail(KL_EUNSUPPORTED, "ONNX export: more than %d head sizes with rotary positions", KL_OX_ROPE_MAX);
        return;
    }
    if (r == w->n_rope) {
        float *cs = kl_malloc((size_t)(2 * T * half) * sizeof *cs);
        if (!cs) {
            w->s = KL_ENOMEM;
            return;
        }
        for (int64_t i = 0; i < T * half; i++) {
            double ang = kl_rope_angle((double)(i / half), i % half, hd, 10000.0); /* kl_rope's base */
            cs[i] = (float)cos(ang), cs[T * half + i] = (float)sin(ang);
        }
        char nc[32], ns[32];
        snprintf(nc, sizeof nc, "rope_cos_%lld", (long long)hd);
        snprintf(ns, sizeof ns, "rope_sin_%lld", (long long)hd);
        kl_ox_initializer(w, nc, 2, (const int64_t[]){T, half}, cs, T * half);
        kl_ox_initializer(w, ns, 2, (const int64_t[]){T, half}, cs + T * half, T * half);
        kl_free(cs);
        kl_ox_slice_to_len(w, nc, 1, w->cos[r]);
        kl_ox_slice_to_len(w, ns, 1, w->sin[r]);
        w->rope_hd[r] = hd;
        w->n_rope++;
    }
    const char *cosr = w->cos[r], *sinr = w->sin[r];
    char c[16], x1[16], x2[16], a[16], b[16], y1[16], y2[16], y[16];
    kl_ox_ints_const(w, (const int64_t[]){half, half}, 2, c);
    kl_pb at = {0};
    kl_ox_attr_int(&at, "axis", -1);
    kl_ox_fresh(w, x1), kl_ox_fresh(w, x2);
    kl_ox_node_n(w, "Split", (const char *const[]){x, c}, 2, (const char *const[]){x1, x2}, 2, &at);
    kl_ox_binary(w, "Mul", x1, cosr, a);
    kl_ox_binary(w, "Mul", x2, sinr, b);
    kl_ox_binary(w, "Sub", a, b, y1);
    kl_ox_binary(w, "Mul", x2, cosr, a);
    kl_ox_binary(w, "Mul", x1, sinr, b);
    kl_ox_binary(w, "Add", a, b, y2);
    kl_ox_fresh(w, y);
    kl_ox_node(w, "Concat", (const char *const[]){y1, y2}, 2, y, &at);
    kl_pb_free(&at);
    strcpy(x, y);
}

/* The pre-norm GPT block of nn/model_seq.c: x + proj(attn(ln_1(x))), then
 * x + mlp(ln_2(x)); causal attention written out (MatMul, the mask, Softmax,
 * MatMul) with kiln's scale 1/sqrt(head size). */
void kl_ox_block_out(onnx_w *w, const layer *li, char *x)
{
    int64_t D = li->features, H = li->heads, hd = D / H, T = w->tokens;
    if (!w->mask[0]) {
        float *m = kl_malloc((size_t)(T * T) * sizeof *m);
        if (!m) {
            w->s = KL_ENOMEM;
            return;
        }
        for (int64_t i = 0; i < T; i++)
            for (int64_t j = 0; j < T; j++) m[i * T + j] = j <= i ? 0.0f : -INFINITY;
        kl_ox_initializer(w, "causal_mask", 2, (const int64_t[]){T, T}, m, T * T);
        kl_free(m);
        kl_ox_slice_to_len(w, "causal_mask", 2, w->mask);
    }
    char h[16], qkv[16], q[16], k[16], v[16], sc[16], t[16], c[16];
    sub_ln(w, li, "ln_1", x, h);
    sub_linear(w, li, "attn.c_attn", h);
    kl_ox_reshape(w, h, (const int64_t[]){0, 0, 3 * H, hd}, 4);                    /* [B, T, 3H, hd] */
    kl_ox_transpose_to(w, h, (const int64_t[]){0, 2, 1, 3}, 4, qkv);               /* [B, 3H, T, hd] */
    kl_ox_ints_const(w, (const int64_t[]){H, H, H}, 3, c);
    kl_pb a = {0};
    kl_ox_attr_int(&a, "axis", 1);
    kl_ox_fresh(w, q), kl_ox_fresh(w, k), kl_ox_fresh(w, v);
    kl_ox_node_n(w, "Split", (const char *const[]){qkv, c}, 2, (const char *const[]){q, k, v}, 3, &a);
    kl_pb_free(&a);
    if (li->rope) {
        rope_out(w, q, hd);
        rope_out(w, k, hd);
    }
    kl_ox_transpose(w, k, (const int64_t[]){0, 1, 3, 2}, 4);                       /* k^T */
    kl_ox_binary(w, "MatMul", q, k, sc);
    kl_ox_with_scalar(w, "Mul", sc, (float)(1.0 / sqrt((double)hd)));
    kl_ox_binary(w, "Add", sc, w->mask, t);
    kl_ox_attr_int(&a, "axis", -1);
    kl_ox_fresh(w, sc);
    kl_ox_node(w, "Softmax", (const char *const[]){t}, 1, sc, &a);
    kl_pb_free(&a);
    kl_ox_binary(w, "MatMul", sc, v, t);                                           /* [B, H, T, hd] */
    kl_ox_transpose(w, t, (const int64_t[]){0, 2, 1, 3}, 4);
    kl_ox_reshape(w, t, (const int64_t[]){0, 0, D}, 3);
    sub_linear(w, li, "attn.c_proj", t);
    kl_ox_binary(w, "Add", x, t, h);
    strcpy(x, h);
    sub_ln(w, li, "ln_2", x, h);
    sub_linear(w, li, "mlp.c_fc", h);
    kl_ox_gelu(w, h);
    sub_linear(w, li, "mlp.c_proj", h);
    kl_ox_binary(w, "Add", x, h, t);
    strcpy(x, t);
}
