/* The CUDA sequence kernels' logic, checked on the host (no GPU needed).
 *
 * The per-unit LSTM/GRU steps, the RoPE table and pairs and the RMSNorm row
 * pieces are the CPU kernels' own code (ops/seq.h), so test_seq_ops and
 * test_gradcheck_seq cover them. Here, what only the CUDA kernels do:
 *  - attention's tiling (ops/attention.h): the forward over query tiles with
 *    key tiles streamed through the online softmax, the dQ pass over key
 *    tiles, the dK/dV pass over query tiles from kl_att_query_begin, with
 *    the CUDA tile sides (32 and 64), run on the host with the shared
 *    functions, against the CPU op's output and gradients (f64);
 *  - the tile geometry: every thread's rows, columns and output columns
 *    cover their tiles exactly once; strided operands' offsets (kl_att_base)
 *    on a fused-qkv view;
 *  - RoPE's flat thread index (kl_rope_idx) over every pair, bit for bit
 *    against the CPU op, forward and inverse (the backward);
 *  - rmsnorm_bwd's chunked dw sums (kl_rms_chunks, the partial and final
 *    kernels' loops) against the CPU op, at chunk boundaries and the cap;
 *  - [h0; y[:, :-1]], the right factor of dW_hh (kl_rnn_prev_h), and the
 *    RNN backward's CUDA scratch layout (kl_rnn_bwd_scratch_cuda). */
#include "kiln/kiln.h"
#include "testutil.h"
#include "core/graph.h"
#include "ops/seq.h"
#include "ops/attention.h"

#include <math.h>
#include <stdlib.h>

static const kl_init U1 = {KL_INIT_UNIFORM, 1.0};

/* max |a - b| relative to max(1, max |b|) */
static double rel_err(const double *a, const double *b, int64_t n)
{
    double mx = 1, e = 0;
    for (int64_t i = 0; i < n; i++) mx = fabs(b[i]) > mx ? fabs(b[i]) : mx;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        e = d > e || d != d ? d : e;
    }
    return e / mx;
}

static void expect_close(const char *cs, const char *what, const double *a, const double *b, int64_t n, double tol)
{
    double e = rel_err(a, b, n);
    if (!(e <= tol)) fprintf(stderr, "  %s %s: rel err %.3g > %.0e\n", cs, what, e, tol);
    CHECK(e <= tol);
}

static double *get_slot(kl_ctx *ctx, int slot, int grad, int64_t n)
{
    double *v = malloc((size_t)n * sizeof *v);
    CHECK_OK(grad ? kl_ctx_grad_get(ctx, slot, v, (size_t)n * 8) : kl_ctx_param_get(ctx, slot, v, (size_t)n * 8));
    return v;
}

static double dot(const double *a, const double *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* ---- attention: the CUDA kernels' tiling with tile side N ---- */

typedef struct {
    int64_t BH, Tq, Tk, D, Dv;
    int causal, N;
    double scale;
    const double *q, *k, *v; /* contiguous [BH, T, .] */
} att_case;

/* att_fwd_k: per query row of each query tile, key tiles j0 < kl_att_key_end */
static void emul_fwd(const att_case *c, double *o, double *lse)
{
    double *acc = malloc((size_t)c->Dv * sizeof *acc), *p = malloc((size_t)c->N * sizeof *p);
    for (int64_t bh = 0; bh < c->BH; bh++)
        for (int64_t i0 = 0; i0 < c->Tq; i0 += c->N) {
            int64_t nq = c->Tq - i0 < c->N ? c->Tq - i0 : c->N, kend = kl_att_key_end(i0, nq, c->Tk, c->causal);
            for (int64_t row = i0; row < i0 + nq; row++) {
                const double *qr = c->q + (bh * c->Tq + row) * c->D;
                double m = -INFINITY, l = 0;
                for (int64_t d = 0; d < c->Dv; d++) acc[d] = 0;
                for (int64_t j0 = 0; j0 < kend; j0 += c->N) {
                    double mt = -INFINITY;
                    for (int64_t jj = 0; jj < c->N; jj++) {
                        int64_t key = j0 + jj;
                        p[jj] = key < c->Tk && kl_att_visible(row, key, c->causal)
                                    ? dot(qr, c->k + (bh * c->Tk + key) * c->D, c->D) * c->scale : -INFINITY;
                        mt = p[jj] > mt ? p[jj] : mt;
                    }
                    double mn = mt > m ? mt : m, f = kl_att_rescale_double(m, mn), ps = 0;
                    for (int64_t d = 0; d < c->Dv; d++) acc[d] *= f;
                    for (int64_t jj = 0; jj < c->N; jj++) {
                        ps += p[jj] = kl_att_prob_double(p[jj], mn);
                        for (int64_t d = 0; d < c->Dv && j0 + jj < c->Tk; d++)
                            acc[d] += p[jj] * c->v[(bh * c->Tk + j0 + jj) * c->Dv + d];
                    }
                    l = l * f + ps;
                    m = mn;
                }
                for (int64_t d = 0; d < c->Dv; d++) o[(bh * c->Tq + row) * c->Dv + d] = acc[d] * (1.0 / l);
                lse[bh * c->Tq + row] = kl_att_lse_double(m, l);
            }
        }
    free(acc), free(p);
}

/* att_di_k, att_dq_k (key tiles of each query tile), att_dkv_k (query tiles
 * from kl_att_query_begin of each key tile) */
static void emul_bwd(const att_case *c, const double *dO, const double *o, const double *lse, double *dq, double *dk,
                     double *dv)
{
    double *di = malloc((size_t)(c->BH * c->Tq) * sizeof *di);
    for (int64_t r = 0; r < c->BH * c->Tq; r++) di[r] = dot(dO + r * c->Dv, o + r * c->Dv, c->Dv);
    memset(dq, 0, (size_t)(c->BH * c->Tq * c->D) * 8);
    memset(dk, 0, (size_t)(c->BH * c->Tk * c->D) * 8);
    memset(dv, 0, (size_t)(c->BH * c->Tk * c->Dv) * 8);
    for (int64_t bh = 0; bh < c->BH; bh++) {
        const double *q = c->q + bh * c->Tq * c->D, *k = c->k + bh * c->Tk * c->D, *v = c->v + bh * c->Tk * c->Dv;
        const double *g = dO + bh * c->Tq * c->Dv, *L = lse + bh * c->Tq, *Di = di + bh * c->Tq;
        for (int64_t i0 = 0; i0 < c->Tq; i0 += c->N) {
            int64_t nq = c->Tq - i0 < c->N ? c->Tq - i0 : c->N, kend = kl_att_key_end(i0, nq, c->Tk, c->causal);
            for (int64_t i = i0; i < i0 + nq; i++)
                for (int64_t j0 = 0; j0 < kend; j0 += c->N)
                    for (int64_t j = j0; j < j0 + c->N && j < c->Tk; j++) {
                    double p = kl_att_visible(i, j, c->causal) ? kl_att_prob_double(dot(q + i * c->D, k + j * c->D, c->D) * c->scale, L[i]) : 0;
                    double ds = kl_att_dscore_double(p, dot(g + i * c->Dv, v + j * c->Dv, c->Dv), Di[i], c->scale);
                    for (int64_t d = 0; d < c->D; d++) dq[(bh * c->Tq + i) * c->D + d] += ds * k[j * c->D + d];
                }
        }
        for (int64_t j0 = 0; j0 < c->Tk; j0 += c->N)
            for (int64_t i0 = kl_att_query_begin(j0, c->causal); i0 < c->Tq; i0 += c->N)
                for (int64_t j = j0; j < j0 + c->N && j < c->Tk; j++)
                    for (int64_t i = i0; i < i0 + c->N && i < c->Tq; i++) {
                        double p = kl_att_visible(i, j, c->causal) ? kl_att_prob_double(dot(k + j * c->D, q + i * c->D, c->D) * c->scale, L[i]) : 0;
                        double ds = kl_att_dscore_double(p, dot(v + j * c->Dv, g + i * c->Dv, c->Dv), Di[i], c->scale);
                        for (int64_t d = 0; d < c->Dv; d++) dv[(bh * c->Tk + j) * c->Dv + d] += p * g[i * c->Dv + d];
                        for (int64_t d = 0; d < c->D; d++) dk[(bh * c->Tk + j) * c->D + d] += ds * q[i * c->D + d];
                    }
    }
    free(di);
}

static void test_att_tiling(int N, int causal, int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, int64_t Dv)
{
    char cs[96];
    snprintf(cs, sizeof cs, "attention N%d causal%d [%lld,%lld,%lld/%lld,%lld/%lld]", N, causal, (long long)B,
             (long long)H, (long long)Tq, (long long)Tk, (long long)D, (long long)Dv);
    kl_ctx_opts co = {.seed = 3};
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *q, *k, *v, *o, *r, *loss;
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "q", KL_F64, 4, (int64_t[]){B, H, Tq, D}, &U1, &q));
    CHECK_OK(kl_param(g, "k", KL_F64, 4, (int64_t[]){B, H, Tk, D}, &U1, &k));
    CHECK_OK(kl_param(g, "v", KL_F64, 4, (int64_t[]){B, H, Tk, Dv}, &U1, &v));
    CHECK_OK(kl_attention(g, q, k, v, causal, &o));
    CHECK_OK(kl_output(g, o));
    CHECK_OK(kl_buffer(g, "r", KL_F64, 4, (int64_t[]){B, H, Tq, Dv}, &U1, &r));
    CHECK_OK(kl_mul(g, o, r, &loss));
    CHECK_OK(kl_sum(g, loss, 0, NULL, 0, &loss));
    CHECK_OK(kl_backward(g, loss));
    CHECK_OK(kl_graph_run(g));
    int64_t BH = B * H, nq = BH * Tq * D, nk = BH * Tk * D, nv = BH * Tk * Dv, no = BH * Tq * Dv;
    att_case c = {BH, Tq, Tk, D, Dv, causal, N, 1.0 / sqrt((double)D), get_slot(ctx, 0, 0, nq),
                  get_slot(ctx, 1, 0, nk), get_slot(ctx, 2, 0, nv)};
    double *dO = get_slot(ctx, 3, 0, no), *o_cpu = malloc((size_t)no * 8), *o_e = malloc((size_t)no * 8);
    double *lse = malloc((size_t)(BH * Tq) * 8), *e[3] = {malloc((size_t)nq * 8), malloc((size_t)nk * 8), malloc((size_t)nv * 8)};
    CHECK_OK(kl_tensor_get(o, o_cpu, (size_t)no * 8));
    emul_fwd(&c, o_e, lse);
    expect_close(cs, "out", o_e, o_cpu, no, 1e-12);
    emul_bwd(&c, dO, o_e, lse, e[0], e[1], e[2]);
    const char *names[3] = {"dq", "dk", "dv"};
    int64_t ns[3] = {nq, nk, nv};
    for (int i = 0; i < 3; i++) {
        double *gc = get_slot(ctx, i, 1, ns[i]);
        expect_close(cs, names[i], e[i], gc, ns[i], 1e-12);
        free(gc);
    }
    free((void *)c.q), free((void *)c.k), free((void *)c.v), free(dO), free(o_cpu), free(o_e), free(lse);
    for (int i = 0; i < 3; i++) free(e[i]);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- tile geometry and strided operands ---- */

static void test_att_geometry(void)
{
    for (int es = 4; es <= 8; es += 4) { /* a thread's rows/columns ty + 16 i cover the tile side once */
        int R = KL_ATT_R(es), n = KL_ATT_TX * R, seen[64] = {0};
        CHECK(n == (es == 4 ? 64 : 32) && KL_ATT_THREADS == 256);
        for (int t = 0; t < KL_ATT_TX; t++)
            for (int i = 0; i < R; i++) seen[kl_att_tile_row(t, i)]++;
        for (int i = 0; i < n; i++) CHECK(seen[i] == 1);
    }
    for (int w = 64; w <= 128; w += 64) /* output registers cover chunk z's columns once */
        for (int64_t z = 0; z < 3; z++) {
            int seen[128] = {0}, bad = 0;
            for (int tx = 0; tx < KL_ATT_TX; tx++)
                for (int c = 0; c < w / KL_ATT_TX; c++) {
                    int64_t col = kl_att_out_col(z, w, c, tx) - z * w;
                    if (col < 0 || col >= w) bad++;
                    else seen[col]++;
                }
            CHECK(bad == 0);
            for (int i = 0; i < w; i++) CHECK(seen[i] == 1);
        }
    for (int64_t w = 1; w <= 300; w++) { /* chunks of wmax cover the width; the grid's count */
        int wm = kl_att_wmax(w);
        int64_t chunks = (w + wm - 1) / wm;
        CHECK((wm == 64 || wm == 128) && wm % KL_ATT_DC == 0 && chunks * wm >= w && (chunks - 1) * wm < w);
    }
    /* a fused qkv projection [B, T, 3, H, hd] viewed as k [B, H, T, hd]: element
     * (bh, t, d) at base + kl_att_base(st, H, bh) + t st[2] + d st[3] */
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *p, *kv, *kc;
    int64_t B = 2, T = 5, H = 3, hd = 4;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "qkv", KL_F64, 4, (int64_t[]){B, T, 3 * H, hd}, &U1, &x));
    CHECK_OK(kl_permute(g, x, (int[]){0, 2, 1, 3}, &p));
    CHECK_OK(kl_slice(g, p, 1, H, 2 * H, &kv));
    CHECK_OK(kl_contiguous(g, kv, &kc));
    CHECK_OK(kl_output(g, kc));
    CHECK_OK(kl_graph_run(g));
    CHECK(kv->st[3] == 1 && kv->offs == H * hd);
    double *raw = get_slot(ctx, 0, 0, B * T * 3 * H * hd), ref[2 * 3 * 5 * 4];
    CHECK_OK(kl_tensor_get(kc, ref, sizeof ref));
    int bad = 0;
    for (int64_t bh = 0; bh < B * H; bh++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t d = 0; d < hd; d++)
                bad += raw[kv->offs + kl_att_base(kv->st, H, bh) + t * kv->st[2] + d * kv->st[3]] != ref[(bh * T + t) * hd + d];
    CHECK(bad == 0);
    free(raw);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- RoPE: the CUDA kernels' loops (table, then one thread per pair) ---- */

#define ROPE_EMUL(T_)                                                                              \
    static void rope_emul_##T_(const T_ *x, T_ *y, int64_t rows, int64_t T, int64_t D, double base, int inv) \
    {                                                                                              \
        int64_t half = D / 2;                                                                      \
        T_ *cs = malloc((size_t)(T * D) * sizeof(T_)), *sn = cs + T * half;                        \
        for (int64_t i = 0; i < T * half; i++) kl_rope_table_##T_(cs, sn, half, D, base, inv, i);  \
        for (int64_t i = 0; i < rows * half; i++) kl_rope_idx_##T_(x, y, cs, sn, T, half, i);      \
        free(cs);                                                                                  \
    }
ROPE_EMUL(float)
ROPE_EMUL(double)

static void test_rope_idx(kl_dtype dt, int64_t B, int64_t T, int64_t D, double base)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *y, *r, *loss;
    int64_t n = B * T * D;
    size_t es = kl_dtype_size(dt), bytes = (size_t)n * es;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "x", dt, 3, (int64_t[]){B, T, D}, &U1, &x));
    CHECK_OK(kl_rope(g, x, base, &y));
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_buffer(g, "r", dt, 3, (int64_t[]){B, T, D}, &U1, &r));
    CHECK_OK(kl_mul(g, y, r, &loss));
    CHECK_OK(kl_sum(g, loss, 0, NULL, 0, &loss));
    CHECK_OK(kl_backward(g, loss));
    CHECK_OK(kl_graph_run(g));
    char *xv = malloc(bytes), *rv = malloc(bytes), *yv = malloc(bytes), *gv = malloc(bytes), *e = malloc(bytes);
    CHECK_OK(kl_ctx_param_get(ctx, 0, xv, bytes));
    CHECK_OK(kl_ctx_param_get(ctx, 1, rv, bytes));
    CHECK_OK(kl_tensor_get(y, yv, bytes));
    CHECK_OK(kl_ctx_grad_get(ctx, 0, gv, bytes)); /* dx = the inverse rotation of r */
    double b = base > 0 ? base : 10000;
    for (int inv = 0; inv <= 1; inv++) {
        if (dt == KL_F32) rope_emul_float((const float *)(inv ? rv : xv), (float *)e, B * T, T, D, b, inv);
        else rope_emul_double((const double *)(inv ? rv : xv), (double *)e, B * T, T, D, b, inv);
        CHECK(memcmp(e, inv ? gv : yv, bytes) == 0);
    }
    free(xv), free(rv), free(yv), free(gv), free(e);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- rmsnorm_bwd's dw on CUDA: rms_dw_part_k then rms_dw_sum_k ---- */

static void test_rms_chunks(int64_t R, int64_t D)
{
    int64_t chunks = kl_rms_chunks(R), per = kl_rms_chunk_rows(R);
    /* every row in a chunk (at the cap the last chunks may be empty: their partials are 0) */
    CHECK(chunks >= 1 && chunks <= KL_RMS_MAX_CHUNKS && per >= 1 && chunks * per >= R);
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *w, *y, *r, *loss;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "x", KL_F64, 2, (int64_t[]){R, D}, &U1, &x));
    CHECK_OK(kl_param(g, "w", KL_F64, 1, &D, &U1, &w));
    CHECK_OK(kl_rmsnorm(g, x, w, 1e-5, &y));
    CHECK_OK(kl_buffer(g, "r", KL_F64, 2, (int64_t[]){R, D}, &U1, &r));
    CHECK_OK(kl_mul(g, y, r, &loss));
    CHECK_OK(kl_sum(g, loss, 0, NULL, 0, &loss));
    CHECK_OK(kl_backward(g, loss));
    CHECK_OK(kl_graph_run(g));
    double *xv = get_slot(ctx, 0, 0, R * D), *dy = get_slot(ctx, 2, 0, R * D), *dw = get_slot(ctx, 1, 1, D);
    double *rstd = malloc((size_t)R * 8), *part = calloc((size_t)(chunks * D), 8), *e = malloc((size_t)D * 8);
    for (int64_t i = 0; i < R; i++) rstd[i] = kl_rmsnorm_rstd_double(dot(xv + i * D, xv + i * D, D), D, 1e-5);
    for (int64_t ch = 0; ch < chunks; ch++) /* block (column, chunk): 8 row lanes, then in lane order */
        for (int64_t c = 0; c < D; c++) {
            int64_t r0 = ch * per, r1 = r0 + per < R ? r0 + per : R;
            double lane[8] = {0}, s = 0;
            for (int ty = 0; ty < 8; ty++)
                for (int64_t i = r0 + ty; i < r1; i += 8) lane[ty] += dy[i * D + c] * xv[i * D + c] * rstd[i];
            for (int ty = 0; ty < 8; ty++) s += lane[ty];
            part[ch * D + c] = s;
        }
    for (int64_t c = 0; c < D; c++) {
        e[c] = 0;
        for (int64_t ch = 0; ch < chunks; ch++) e[c] += part[ch * D + c];
    }
    char cs[64];
    snprintf(cs, sizeof cs, "rmsnorm dw R%lld D%lld", (long long)R, (long long)D);
    expect_close(cs, "dw", e, dw, D, 1e-12);
    free(xv), free(dy), free(dw), free(rstd), free(part), free(e);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- [h0; y[:, :-1]] ---- */

static void test_prev_h(void)
{
    int64_t B = 3, T = 4, H = 5;
    double y[60], h0[15];
    for (int i = 0; i < 60; i++) y[i] = i + 1;
    for (int i = 0; i < 15; i++) h0[i] = -i - 1;
    int bad = 0;
    for (int z = 0; z <= 1; z++)
        for (int64_t b = 0; b < B; b++)
            for (int64_t s = 0; s < T; s++)
                for (int64_t j = 0; j < H; j++) {
                    double want = s ? y[(b * T + s - 1) * H + j] : z ? h0[b * H + j] : 0;
                    bad += kl_rnn_prev_h_double(z ? h0 : NULL, y, T, H, (b * T + s) * H + j) != want;
                }
    CHECK(bad == 0);
}

/* ---- lstm_bwd / gru_bwd scratch on CUDA: aligned, disjoint, inside ---- */

static void test_rnn_scratch(void)
{
    int bad = 0;
    for (int lstm = 0; lstm <= 1; lstm++)
        for (int flags = 0; flags < 4; flags++)
            for (size_t es = 4; es <= 8; es += 4)
                for (int64_t B = 1; B <= 9; B += 4)
                    for (int64_t H = 1; H <= 70; H += 23) {
                        int64_t T = 3;
                        int dwhh = flags & 1, dgh = lstm ? 0 : (flags >> 1 | dwhh);
                        size_t off, tot = kl_rnn_bwd_scratch_cuda(lstm, B, T, H, es, dwhh, dgh, &off);
                        size_t bh = (size_t)(B * H) * es, dc = kl_seq_al256(bh), need = 0;
                        if (dwhh) need = (size_t)(B * T * H) * es; /* rows */
                        else if (!lstm && !dgh) need = (size_t)(3 * B * H) * es; /* the step's dGh */
                        bad += off % 256 || dc % 256 || off < (lstm ? dc + bh : bh) || tot < off + need;
                    }
    CHECK(bad == 0);
}

int main(void)
{
    test_rnn_scratch();
    test_att_geometry();
    for (int N = 32; N <= 64; N *= 2)
        for (int causal = 0; causal <= 1; causal++) {
            test_att_tiling(N, causal, 1, 2, 70, 70, 5, 3);   /* partial last tiles */
            test_att_tiling(N, causal, 2, 1, 50, 140, 4, 6);  /* Tq < Tk: causal keys past Tq get nothing */
            test_att_tiling(N, causal, 1, 1, 130, 20, 3, 3);  /* Tq > Tk */
            test_att_tiling(N, causal, 1, 1, 1, 1, 2, 1);
        }
    for (int f32 = 0; f32 <= 1; f32++) {
        test_rope_idx(f32 ? KL_F32 : KL_F64, 3, 7, 10, 0);
        test_rope_idx(f32 ? KL_F32 : KL_F64, 1, 1, 2, 500);
    }
    int64_t rs[] = {1, 255, 256, 257, 2049, (int64_t)KL_RMS_MAX_CHUNKS * KL_RMS_CHUNK_ROWS + 77};
    for (size_t i = 0; i < sizeof rs / sizeof *rs; i++) test_rms_chunks(rs[i], i + 1 < sizeof rs / sizeof *rs ? 37 : 2);
    test_prev_h();
    return kl_test_done("test_seq_kernels");
}
