/* CUDA backend tests.
 *
 * Always: the messages for cuda:N without a usable device (or without CUDA
 * in the build), the CUDA kernel table. Without a usable device the test
 * then prints "skipped: <reason>" and exits 77 (ctest: skipped).
 *
 * With a device: every op with a CUDA kernel runs forward and backward
 * (kl_backward of sum(y * r), r random) on random inputs on cuda:0 and on
 * the CPU; outputs, gradients and buffers must agree (error relative to
 * the largest reference value; TF32-sized tolerances where a GEMM is
 * involved). Then MLP training (3 Adam steps, f32 and f64; SGD with
 * momentum and clipping), optimizer state through kl_optim_state, bad
 * labels and indices reported at the next sync, and an op without a CUDA
 * kernel failing with a message naming it. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "cuda_parity.h"
#include "core/graph.h"       /* kl_backend_kernel */
#include "ops/ops.h"          /* kl_batchnorm_act */
#include "backends/backend.h" /* kl_cuda_available */

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the cases ---- */

static kl_status b_unary(kl_graph *g, kl_dtype dt, int kind, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x;
    KL_TRY(kl_parity_param(g, "x", dt, 2, (int64_t[]){7, 13}, &x));
    KL_TRY(kl_transpose(g, x, 0, 1, &x)); /* a strided view */
    switch (kind) {
    case 0: return kl_relu(g, x, y);
    case 1: return kl_gelu(g, x, y);
    case 2: return kl_tanh(g, x, y);
    case 3: return kl_sigmoid(g, x, y);
    case 4: return kl_scale(g, x, -1.75, y);
    case 6: /* GELU and tanh far into saturation (|x| up to 300): their gradients are exactly 0 / 1 there */
    case 7:
        KL_TRY(kl_scale(g, x, 300.0, &x));
        return kind == 6 ? kl_gelu(g, x, y) : kl_tanh(g, x, y);
    default: return kl_square(g, x, y);
    }
}

static const kl_init ONES = {KL_INIT_ONES, 0};

static kl_status b_binary(kl_graph *g, kl_dtype dt, int kind, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *a, *b, *one;
    if (kind == 4) { /* a transposed operand: [7, 5]^T + [5, 1] */
        KL_TRY(kl_parity_param(g, "a", dt, 2, (int64_t[]){7, 5}, &a));
        KL_TRY(kl_transpose(g, a, 0, 1, &a));
        KL_TRY(kl_parity_param(g, "b", dt, 2, (int64_t[]){5, 1}, &b));
        return kl_add(g, a, b, y);
    }
    if (kind == 5) { /* 4-D, broadcast over the outer and a middle axis */
        KL_TRY(kl_parity_param(g, "a", dt, 4, (int64_t[]){2, 3, 4, 5}, &a));
        KL_TRY(kl_parity_param(g, "b", dt, 3, (int64_t[]){3, 1, 5}, &b));
        return kl_mul(g, a, b, y);
    }
    KL_TRY(kl_parity_param(g, "a", dt, 3, (int64_t[]){5, 1, 7}, &a));
    KL_TRY(kl_parity_param(g, "b", dt, 2, (int64_t[]){3, 1}, &b));
    switch (kind) {
    case 0: return kl_add(g, a, b, y);
    case 1: return kl_sub(g, a, b, y);
    case 2: return kl_mul(g, a, b, y);
    default: /* b in [1, 2]: no division by ~0 */
        KL_TRY(kl_buffer(g, "one", dt, 2, (int64_t[]){3, 1}, &ONES, &one));
        KL_TRY(kl_square(g, b, &b));
        KL_TRY(kl_add(g, b, one, &b));
        return kl_div(g, a, b, y);
    }
}

static kl_status b_reduce(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x;
    if (arg == 0) { /* sum over axes 0 and 2 of a permuted view */
        KL_TRY(kl_parity_param(g, "x", dt, 3, (int64_t[]){4, 5, 6}, &x));
        KL_TRY(kl_permute(g, x, (int[]){2, 0, 1}, &x));
        return kl_sum(g, x, 2, (int[]){0, 2}, 1, y);
    }
    if (arg == 2) { /* column sums of [300, 70] (a bias gradient): the column kernel, a partial last block */
        KL_TRY(kl_parity_param(g, "x", dt, 2, (int64_t[]){300, 70}, &x));
        return kl_sum(g, x, 1, (int[]){0}, 0, y);
    }
    if (arg == 3) { /* many columns: [300, 4200] over axis 0 */
        KL_TRY(kl_parity_param(g, "x", dt, 2, (int64_t[]){300, 4200}, &x));
        return kl_sum(g, x, 1, (int[]){0}, 0, y);
    }
    if (arg == 4) { /* long columns: [16384, 512] over axis 0 */
        KL_TRY(kl_parity_param(g, "x", dt, 2, (int64_t[]){16384, 512}, &x));
        return kl_sum(g, x, 1, (int[]){0}, 0, y);
    }
    if (arg == 5) { /* a permuted [40, 50, 60] over its axes 0 and 2 */
        KL_TRY(kl_parity_param(g, "x", dt, 3, (int64_t[]){40, 50, 60}, &x));
        KL_TRY(kl_permute(g, x, (int[]){1, 2, 0}, &x));
        return kl_sum(g, x, 2, (int[]){0, 2}, 0, y);
    }
    if (arg == 7 || arg == 8) { /* [3, 20000, 5] over axis 1: 15 strided outputs in chunks; 8: permuted first */
        KL_TRY(kl_parity_param(g, "x", dt, 3, (int64_t[]){3, 20000, 5}, &x));
        if (arg == 8) KL_TRY(kl_permute(g, x, (int[]){2, 1, 0}, &x));
        return kl_sum(g, x, 1, (int[]){1}, 1, y);
    }
    if (arg == 6) { /* mean of 2^20 + 3 values */
        KL_TRY(kl_parity_param(g, "x", dt, 1, (int64_t[]){(1 << 20) + 3}, &x));
        return kl_mean(g, x, 0, NULL, 0, y);
    }
    KL_TRY(kl_parity_param(g, "x", dt, 2, (int64_t[]){300, 7}, &x)); /* mean of everything: one long reduction */
    return kl_mean(g, x, 0, NULL, 0, y);
}

static kl_status b_matmul(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *a, *b, *bias;
    switch (arg) {
    case 0: /* linear + bias + relu (epilogue) */
    case 1: /* linear + bias + tanh (extra kernel) */
        KL_TRY(kl_parity_param(g, "x", dt, 2, (int64_t[]){33, 17}, &a));
        KL_TRY(kl_parity_param(g, "w", dt, 2, (int64_t[]){29, 17}, &b));
        KL_TRY(kl_parity_param(g, "bias", dt, 1, (int64_t[]){29}, &bias));
        return kl_linear(g, a, b, bias, arg == 0 ? KL_ACT_RELU : KL_ACT_TANH, y);
    case 2: /* strided batch */
        KL_TRY(kl_parity_param(g, "a", dt, 3, (int64_t[]){3, 5, 7}, &a));
        KL_TRY(kl_parity_param(g, "b", dt, 3, (int64_t[]){3, 7, 4}, &b));
        return kl_matmul(g, a, b, y);
    case 3: /* broadcast batch dims: one GEMM per matrix */
        KL_TRY(kl_parity_param(g, "a", dt, 4, (int64_t[]){2, 1, 5, 7}, &a));
        KL_TRY(kl_parity_param(g, "b", dt, 3, (int64_t[]){3, 7, 4}, &b));
        return kl_matmul(g, a, b, y);
    case 5: /* a broadcast over one batch dim: one call, a's batch stride 0 */
    case 6: /* b broadcast over one batch dim: one call, b's batch stride 0 */
        KL_TRY(kl_parity_param(g, "a", dt, 3, (int64_t[]){arg == 5 ? 1 : 3, 5, 7}, &a));
        KL_TRY(kl_parity_param(g, "b", dt, 3, (int64_t[]){arg == 6 ? 1 : 3, 7, 4}, &b));
        return kl_matmul(g, a, b, y);
    default: /* transposed a */
        KL_TRY(kl_parity_param(g, "a", dt, 2, (int64_t[]){7, 5}, &a));
        KL_TRY(kl_parity_param(g, "b", dt, 2, (int64_t[]){7, 4}, &b));
        KL_TRY(kl_transpose(g, a, 0, 1, &a));
        return kl_matmul(g, a, b, y);
    }
}

static kl_status b_softmax(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x;
    int64_t C = arg & 2 ? 1000 : 37; /* arg bit 0: log-softmax; bit 1: rows of 1000 */
    KL_TRY(kl_parity_param(g, "x", dt, 2, (int64_t[]){arg & 2 ? 50 : 9, C}, &x));
    return arg & 1 ? kl_log_softmax(g, x, y) : kl_softmax(g, x, y);
}

static int32_t g_labels[20000];

/* arg 0: [16, 10]; 1: [20000, 10] (many blocks of partial sums); 2: [300,
 * 77] and 3: [64, 50257] (rows wider than a warp: several columns a lane);
 * 4: [64, 1000] logits scaled to +-100 (exp overflows f32 unless the row's
 * maximum is taken out first) */
static kl_status b_ce(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    static const int64_t shapes[5][2] = {{16, 10}, {20000, 10}, {300, 77}, {64, 50257}, {64, 1000}};
    kl_tensor *x, *lab;
    int64_t N = shapes[arg][0], C = shapes[arg][1];
    for (int64_t i = 0; i < N; i++) g_labels[i] = (int32_t)((i * 7 + i / 3 + (arg == 3 ? i * 997 : 0)) % C);
    KL_TRY(kl_parity_param(g, "logits", dt, 2, (int64_t[]){N, C}, &x));
    if (arg == 4) KL_TRY(kl_scale(g, x, 100.0, &x));
    KL_TRY(kl_input(g, "labels", KL_I32, 1, (int64_t[]){N}, &lab));
    in->v[in->n++] = (kl_in_set){lab, g_labels, (size_t)N * sizeof *g_labels};
    return kl_softmax_cross_entropy(g, x, lab, y);
}

/* arg 1: 2^20 + 5 values, many blocks */
static kl_status b_dropout(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x;
    KL_TRY(kl_parity_param(g, "x", dt, 1, (int64_t[]){arg ? (1 << 20) + 5 : 1001}, &x));
    return kl_dropout(g, x, 0.3, y);
}

static kl_status b_batchnorm(kl_graph *g, kl_dtype dt, int training, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x, *gm, *bt, *rm, *rv;
    const kl_init half = {KL_INIT_UNIFORM, 0.5};
    /* training 2: [4096, 70], one pixel per sample; 3: [4097, 3], two unequal
     * chunks per channel (kl_sum_chunks); 4: [16, 8, 32, 32], four chunks */
    /* 5, 6, 7: a fused relu (training), tanh ([4097, 3], training), sigmoid (eval);
     * + 8: f32 running statistics under a 16-bit x (mixed precision: the
     * CUDA kernel takes that natively, 16-bit statistics widen) */
    int f32_stats = training >= 8 && (dt == KL_BF16 || dt == KL_F16);
    training &= 7;
    static const int64_t shapes[8][4] = {{8, 6, 5, 5}, {8, 6, 5, 5},   {4096, 70},   {4097, 3},
                                         {16, 8, 32, 32}, {8, 6, 5, 5}, {4097, 3}, {8, 6, 5, 5}};
    static const kl_act acts[8] = {KL_ACT_NONE, KL_ACT_NONE, KL_ACT_NONE, KL_ACT_NONE,
                                   KL_ACT_NONE, KL_ACT_RELU, KL_ACT_TANH, KL_ACT_SIGMOID};
    int nd = training == 2 || training == 3 || training == 6 ? 2 : 4;
    int64_t C = shapes[training][1];
    kl_act act = acts[training];
    KL_TRY(kl_parity_param(g, "x", dt, nd, shapes[training], &x));
    KL_TRY(kl_parity_param(g, "gamma", dt, 1, (int64_t[]){C}, &gm));
    KL_TRY(kl_parity_param(g, "beta", dt, 1, (int64_t[]){C}, &bt));
    kl_dtype st = f32_stats ? KL_F32 : dt;
    KL_TRY(kl_buffer(g, "running_mean", st, 1, (int64_t[]){C}, &half, &rm));
    KL_TRY(kl_buffer(g, "running_var", st, 1, (int64_t[]){C}, &ONES, &rv));
    kl_batchnorm_opts o = {.training = training != 0 && training != 7, .momentum = 0.2};
    return kl_batchnorm_act(g, x, gm, bt, rm, rv, &o, act, y);
}

/* Batchnorm with parts left out. arg 0: no gamma, beta or running
 * statistics (training); 1: x a buffer (no dx), gamma only (dgamma without
 * dbeta), running statistics updated */
static kl_status b_batchnorm_bare(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x, *gm = NULL, *rm = NULL, *rv = NULL;
    const int64_t ne[4] = {8, 6, 5, 5};
    if (arg) {
        KL_TRY(kl_buffer(g, "x", dt, 4, ne, &kl_parity_u1, &x));
        KL_TRY(kl_parity_param(g, "gamma", dt, 1, (int64_t[]){6}, &gm));
        KL_TRY(kl_buffer(g, "running_mean", dt, 1, (int64_t[]){6}, &kl_parity_u1, &rm));
        KL_TRY(kl_buffer(g, "running_var", dt, 1, (int64_t[]){6}, &ONES, &rv));
    } else KL_TRY(kl_parity_param(g, "x", dt, 4, ne, &x));
    kl_batchnorm_opts o = {.training = 1, .momentum = 0.2};
    return kl_batchnorm_act(g, x, gm, NULL, rm, rv, &o, KL_ACT_NONE, y);
}

/* arg 0: [12, 33]; 1: [5000, 1000] (rows wider than a block, many of
 * them); 2: [2, 7, 33] without gamma and beta; 3: [2, 7, 33], gamma only */
static kl_status b_layernorm(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    if (arg >= 2) {
        kl_tensor *x, *gm = NULL;
        KL_TRY(kl_parity_param(g, "x", dt, 3, (int64_t[]){2, 7, 33}, &x));
        if (arg == 3) KL_TRY(kl_parity_param(g, "gamma", dt, 1, (int64_t[]){33}, &gm));
        return kl_layernorm(g, x, gm, NULL, 1e-5, y);
    }
    kl_tensor *x, *gm, *bt;
    int64_t R = arg ? 5000 : 12, D = arg ? 1000 : 33;
    KL_TRY(kl_parity_param(g, "x", dt, 2, (int64_t[]){R, D}, &x));
    KL_TRY(kl_parity_param(g, "gamma", dt, 1, (int64_t[]){D}, &gm));
    KL_TRY(kl_parity_param(g, "beta", dt, 1, (int64_t[]){D}, &bt));
    return kl_layernorm(g, x, gm, bt, 1e-5, y);
}

static int32_t g_idx[64 * 50];

/* arg 0: 24 positions over 20 rows; arg 1: 3200 positions over 300 rows,
 * some rows named hundreds of times, some never (dW sorted by row, summed
 * in position order: as the CPU) */
static kl_status b_embedding(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *w, *idx;
    int64_t V = arg ? 300 : 20, D = arg ? 40 : 7, B = arg ? 64 : 4, T = arg ? 50 : 6;
    uint32_t r = 7;
    for (int64_t i = 0; i < B * T; i++) {
        r = r * 1664525u + 1013904223u;
        g_idx[i] = arg ? (int32_t)((r >> 8) % 4 == 0 ? (r >> 12) % 3 : (r >> 12) % (uint32_t)(V - 40))
                       : (int32_t)((i * 7 + 3) % 20);
    }
    KL_TRY(kl_parity_param(g, "w", dt, 2, (int64_t[]){V, D}, &w));
    KL_TRY(kl_input(g, "idx", KL_I32, 2, (int64_t[]){B, T}, &idx));
    in->v[in->n++] = (kl_in_set){idx, g_idx, (size_t)(B * T) * sizeof *g_idx};
    return kl_embedding(g, w, idx, y);
}

static kl_status b_concat_slice(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x[3], *c;
    KL_TRY(kl_parity_param(g, "a", dt, 2, (int64_t[]){4, 3}, &x[0]));
    KL_TRY(kl_parity_param(g, "b", dt, 2, (int64_t[]){5, 4}, &x[1]));
    KL_TRY(kl_parity_param(g, "c", dt, 2, (int64_t[]){4, 2}, &x[2]));
    KL_TRY(kl_transpose(g, x[1], 0, 1, &x[1])); /* strided input */
    KL_TRY(kl_concat(g, 3, x, 1, &c));
    return kl_slice(g, c, 1, 2, 8, y); /* backward: slice_bwd */
}

static kl_status b_cast(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x;
    KL_TRY(kl_parity_param(g, "x", dt, 2, (int64_t[]){6, 9}, &x));
    KL_TRY(kl_transpose(g, x, 0, 1, &x));
    kl_dtype mid = dt == KL_F64 ? KL_F32 : arg ? KL_BF16 : KL_F16;
    KL_TRY(kl_cast(g, x, mid, &x));
    return kl_cast(g, x, dt, y);
}

static kl_status b_copy(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x;
    KL_TRY(kl_parity_param(g, "x", dt, 3, (int64_t[]){3, 6, 9}, &x));
    KL_TRY(kl_permute(g, x, (int[]){2, 0, 1}, &x));
    return kl_contiguous(g, x, y);
}

#define TF32_TOL 1e-2 /* TF32 rounds GEMM inputs to 10-bit mantissas */
static const kl_parity_case cases[] = {
    {"relu", b_unary, 0, 1e-6, 1e-13, 0, KL_H16_EXACT},        {"gelu", b_unary, 1, 1e-5, 1e-13, 0, KL_H16_EXACT},
    {"tanh", b_unary, 2, 1e-5, 1e-13, 0, KL_H16_EXACT},        {"sigmoid", b_unary, 3, 1e-5, 1e-13, 0, KL_H16_EXACT},
    {"scale", b_unary, 4, 1e-6, 1e-13, 0, KL_H16_EXACT},       {"square", b_unary, 5, 1e-6, 1e-13, 0, KL_H16_EXACT},
    {"gelu_saturated", b_unary, 6, 1e-5, 1e-13, 0, KL_H16_ROUNDED}, {"tanh_saturated", b_unary, 7, 1e-5, 1e-13, 0, KL_H16_NONE}, /* 16-bit tanh rounds to 1 sooner: gradients 0 */
    {"add", b_binary, 0, 1e-6, 1e-13, 0, KL_H16_EXACT},        {"sub", b_binary, 1, 1e-6, 1e-13, 0, KL_H16_EXACT},
    {"mul", b_binary, 2, 1e-6, 1e-13, 0, KL_H16_EXACT},        {"div", b_binary, 3, 1e-5, 1e-13, 0, KL_H16_ROUNDED},
    {"add_transposed", b_binary, 4, 1e-6, 1e-13, 0, KL_H16_EXACT}, {"mul_4d_bcast", b_binary, 5, 1e-6, 1e-13, 0, KL_H16_EXACT},
    {"sum", b_reduce, 0, 1e-5, 1e-13, 0, KL_H16_EXACT},        {"mean", b_reduce, 1, 1e-5, 1e-13, 0, KL_H16_EXACT},
    {"sum_cols", b_reduce, 2, 1e-5, 1e-13, 0, KL_H16_EXACT},   {"sum_cols_wide", b_reduce, 3, 1e-5, 1e-13, 0, KL_H16_EXACT},
    {"sum_cols_long", b_reduce, 4, 1e-5, 1e-13, 0, KL_H16_EXACT}, {"sum_permuted", b_reduce, 5, 1e-5, 1e-13, 0, KL_H16_EXACT},
    {"mean_long", b_reduce, 6, 1e-5, 1e-13, 0, KL_H16_EXACT},  {"sum_strided_long", b_reduce, 7, 1e-5, 1e-13, 0, KL_H16_EXACT},
    {"sum_permuted_long", b_reduce, 8, 1e-5, 1e-13, 0, KL_H16_EXACT},
    /* 16-bit GEMMs on the CPU are oneDNN's (own summation order), not the f32 GEMM's: rounded, not exact */
    {"linear_relu", b_matmul, 0, TF32_TOL, 1e-12, 0, KL_H16_ROUNDED}, {"linear_tanh", b_matmul, 1, TF32_TOL, 1e-12, 0, KL_H16_ROUNDED},
    {"matmul_batched", b_matmul, 2, TF32_TOL, 1e-12, 0, KL_H16_ROUNDED}, {"matmul_bcast", b_matmul, 3, TF32_TOL, 1e-12, 0, KL_H16_ROUNDED},
    {"matmul_trans", b_matmul, 4, TF32_TOL, 1e-12, 0, KL_H16_ROUNDED}, {"matmul_bcast_a", b_matmul, 5, TF32_TOL, 1e-12, 0, KL_H16_ROUNDED},
    {"matmul_bcast_b", b_matmul, 6, TF32_TOL, 1e-12, 0, KL_H16_ROUNDED},
    {"softmax", b_softmax, 0, 1e-5, 1e-12, 0, KL_H16_EXACT},   {"log_softmax", b_softmax, 1, 1e-5, 1e-12, 0, KL_H16_EXACT},
    {"softmax_1000", b_softmax, 2, 1e-5, 1e-12, 0, KL_H16_EXACT}, {"log_softmax_1000", b_softmax, 3, 1e-5, 1e-12, 0, KL_H16_EXACT},
    {"softmax_ce", b_ce, 0, 1e-5, 1e-12, 0, KL_H16_EXACT},     {"softmax_ce_20000", b_ce, 1, 1e-5, 1e-12, 0, KL_H16_EXACT},
    {"softmax_ce_77", b_ce, 2, 1e-5, 1e-12, 0, KL_H16_EXACT},  {"softmax_ce_vocab", b_ce, 3, 1e-5, 1e-12, 0, KL_H16_EXACT},
    {"softmax_ce_large_logits", b_ce, 4, 1e-5, 1e-12, 0, KL_H16_NONE}, /* 16-bit x100 logits are off by ~0.4: no reference */
    {"dropout", b_dropout, 0, 1e-6, 1e-13, 0, KL_H16_EXACT},   {"dropout_1m", b_dropout, 1, 1e-6, 1e-13, 0, KL_H16_EXACT},
    {"batchnorm_train", b_batchnorm, 1, 1e-4, 1e-11, 0, KL_H16_EXACT}, {"batchnorm_eval", b_batchnorm, 0, 1e-5, 1e-12, 0, KL_H16_ROUNDED},
    {"batchnorm_wide", b_batchnorm, 2, 1e-4, 1e-11, 0, KL_H16_EXACT}, {"batchnorm_2chunks", b_batchnorm, 3, 1e-4, 1e-11, 0, KL_H16_EXACT},
    {"batchnorm_4chunks", b_batchnorm, 4, 1e-4, 1e-11, 0, KL_H16_EXACT}, {"batchnorm_relu", b_batchnorm, 5, 1e-4, 1e-11, 0, KL_H16_EXACT},
    {"batchnorm_tanh_2chunks", b_batchnorm, 6, 1e-4, 1e-11, 0, KL_H16_EXACT}, {"batchnorm_eval_sigmoid", b_batchnorm, 7, 1e-5, 1e-12, 0, KL_H16_ROUNDED},
    {"batchnorm_train_f32stats", b_batchnorm, 9, 1e-4, 1e-11, 0, KL_H16_EXACT}, {"batchnorm_eval_f32stats", b_batchnorm, 8, 1e-5, 1e-12, 0, KL_H16_ROUNDED},
    {"batchnorm_wide_f32stats", b_batchnorm, 10, 1e-4, 1e-11, 0, KL_H16_EXACT}, {"batchnorm_relu_f32stats", b_batchnorm, 13, 1e-4, 1e-11, 0, KL_H16_EXACT},
    {"batchnorm_bare", b_batchnorm_bare, 0, 1e-4, 1e-11, 0, KL_H16_EXACT},
    {"batchnorm_x_buffer_gamma_only", b_batchnorm_bare, 1, 1e-4, 1e-11, 0, KL_H16_ROUNDED},
    {"layernorm", b_layernorm, 0, 1e-4, 1e-11, 0, KL_H16_EXACT}, {"layernorm_big", b_layernorm, 1, 1e-4, 1e-11, 0, KL_H16_EXACT},
    {"layernorm_3d_bare", b_layernorm, 2, 1e-4, 1e-11, 0, KL_H16_EXACT}, {"layernorm_3d_gamma_only", b_layernorm, 3, 1e-4, 1e-11, 0, KL_H16_EXACT},
    {"embedding", b_embedding, 0, 1e-5, 1e-12, 0, KL_H16_EXACT},
    {"embedding_big", b_embedding, 1, 1e-5, 1e-12, 0, KL_H16_EXACT},
    {"concat_slice", b_concat_slice, 0, 1e-6, 1e-13, 0, KL_H16_EXACT},
    {"cast_f16", b_cast, 0, 1e-6, 1e-13, 0, KL_H16_NONE},     {"cast_bf16", b_cast, 1, 1e-6, 1e-13, 1, KL_H16_NONE},
    {"copy", b_copy, 0, 1e-6, 1e-13, 0, KL_H16_EXACT},
};

/* ---- training: MLP steps on both devices ---- */

typedef struct {
    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *x, *y, *loss;
} mlp;

#define MB 64
#define MIN 20
#define MH 32
#define MC 5

static kl_status mlp_build(mlp *m, kl_device dev, kl_dtype dt, const kl_optim_opts *oo)
{
    memset(m, 0, sizeof *m);
    kl_ctx_opts co = {.device = dev, .seed = 99};
    kl_tensor *w1, *b1, *w2, *b2, *h;
    KL_TRY(kl_ctx_new(&co, &m->ctx));
    KL_TRY(kl_graph_new(m->ctx, &m->g));
    kl_graph *g = m->g;
    KL_TRY(kl_input(g, "x", dt, 2, (int64_t[]){MB, MIN}, &m->x));
    KL_TRY(kl_input(g, "y", KL_I32, 1, (int64_t[]){MB}, &m->y));
    KL_TRY(kl_param(g, "fc1.weight", dt, 2, (int64_t[]){MH, MIN}, NULL, &w1));
    KL_TRY(kl_param(g, "fc1.bias", dt, 1, (int64_t[]){MH}, &kl_parity_u1, &b1));
    KL_TRY(kl_param(g, "fc2.weight", dt, 2, (int64_t[]){MC, MH}, NULL, &w2));
    KL_TRY(kl_param(g, "fc2.bias", dt, 1, (int64_t[]){MC}, &kl_parity_u1, &b2));
    KL_TRY(kl_linear(g, m->x, w1, b1, KL_ACT_RELU, &h));
    KL_TRY(kl_linear(g, h, w2, b2, KL_ACT_NONE, &h));
    KL_TRY(kl_softmax_cross_entropy(g, h, m->y, &m->loss));
    KL_TRY(kl_backward(g, m->loss));
    KL_TRY(kl_optim_new(m->ctx, oo, &m->opt));
    return kl_optim_step(g, m->opt, NULL);
}

static void mlp_free(mlp *m)
{
    kl_graph_free(m->g);
    kl_optim_free(m->opt);
    kl_ctx_free(m->ctx);
}

static kl_status mlp_step(mlp *m, kl_dtype dt, double *loss)
{
    static double xd[MB * MIN];
    static float xf[MB * MIN];
    static int32_t yd[MB];
    uint32_t s = 12345;
    for (int i = 0; i < MB * MIN; i++) {
        s = s * 1664525u + 1013904223u;
        xd[i] = ((double)(s >> 8) / 16777216.0) * 2 - 1;
        xf[i] = (float)xd[i];
    }
    for (int i = 0; i < MB; i++) yd[i] = (i * 3 + 1) % MC;
    KL_TRY(kl_tensor_set(m->x, dt == KL_F64 ? (void *)xd : (void *)xf, dt == KL_F64 ? sizeof xd : sizeof xf));
    KL_TRY(kl_tensor_set(m->y, yd, sizeof yd));
    KL_TRY(kl_graph_run(m->g));
    if (dt == KL_F64) return kl_tensor_get(m->loss, loss, sizeof *loss);
    float l;
    KL_TRY(kl_tensor_get(m->loss, &l, sizeof l));
    *loss = l;
    return KL_OK;
}

static void test_training(kl_device gpu, kl_dtype dt, const kl_optim_opts *oo, const char *cs)
{
    mlp c, g;
    int steps = 3;
    kl_status s = mlp_build(&c, (kl_device){KL_DEVICE_CPU, 0}, dt, oo);
    if (s == KL_OK) s = mlp_build(&g, gpu, dt, oo);
    CHECK_OK(s);
    if (s != KL_OK) return;
    bool f64 = dt == KL_F64;
    for (int i = 0; i < steps; i++) {
        double lc = 0, lg = 0;
        CHECK_OK(mlp_step(&c, dt, &lc));
        CHECK_OK(mlp_step(&g, dt, &lg));
        double e = fabs(lc - lg) / fabs(lc);
        if (!(e <= (f64 ? 1e-12 : 1e-3))) fprintf(stderr, "  %s step %d loss cpu %.9g gpu %.9g\n", cs, i, lc, lg);
        CHECK(e <= (f64 ? 1e-12 : 1e-3));
    }
    kl_check_captured(cs, g.g); /* steps 2 and 3 replayed a captured graph */
    /* f32: TF32 GEMMs, and Adam turns tiny gradient differences into +-lr */
    kl_parity_params(cs, c.ctx, g.ctx, f64 ? 1e-11 : 5e-3, f64 ? 1e-11 : 10 * oo->lr);
    if (oo->max_grad_norm > 0) {
        double nc = kl_optim_last_grad_norm(c.opt), ng = kl_optim_last_grad_norm(g.opt);
        CHECK(nc > 0 && fabs(nc - ng) <= (f64 ? 1e-12 : 1e-3) * nc);
    }
    /* optimizer state through kl_optim_state (host copies on the GPU): every
     * state asked for first, then all written, as a checkpoint load does */
    void *dcs[2] = {0}, *dgs[2] = {0};
    size_t bcs[2] = {0}, bgs[2] = {0};
    for (int k = 0; k < kl_optim_state_count(c.opt); k++) {
        CHECK_OK(kl_optim_state(c.opt, k, NULL, &dcs[k], &bcs[k]));
        CHECK_OK(kl_optim_state(g.opt, k, NULL, &dgs[k], &bgs[k]));
    }
    for (int k = 0; k < kl_optim_state_count(c.opt); k++) {
        void *dc = dcs[k], *dg = dgs[k];
        size_t bc = bcs[k], bg = bgs[k];
        CHECK(bc == bg && dc && dg);
        if (f64 && bc == bg) {
            double *a = malloc(bc), *b = malloc(bc);
            kl_parity_to_double(dc, KL_F64, (int64_t)(bc / 8), a);
            kl_parity_to_double(dg, KL_F64, (int64_t)(bg / 8), b);
            kl_parity_compare(cs, "optim state", a, b, (int64_t)(bc / 8), 1e-11);
            free(a), free(b);
        }
        /* written host copies reach the device before the next update (all
         * of them: asking for the second once uploaded and forgot the first) */
        if (bc == bg && dc && dg) {
            memset(dc, 0, bc);
            memset(dg, 0, bg);
        }
    }
    double lc, lg;
    CHECK_OK(mlp_step(&c, dt, &lc));
    CHECK_OK(mlp_step(&g, dt, &lg));
    kl_parity_params(cs, c.ctx, g.ctx, f64 ? 1e-11 : 5e-3, f64 ? 1e-11 : 12 * oo->lr);
    mlp_free(&c);
    mlp_free(&g);
}

/* Many parameters (two runs of 420,000 and 33 values), clipped Adam: the
 * squared-norm partial sums span many blocks, the update many grids. */
static kl_status big_build(kl_device dev, kl_ctx **ctx, kl_graph **g, kl_optim **opt)
{
    kl_ctx_opts co = {.device = dev, .seed = 3};
    kl_tensor *w, *b, *r, *y, *loss;
    const kl_init ru = {KL_INIT_UNIFORM, 1.0};
    KL_TRY(kl_ctx_new(&co, ctx));
    KL_TRY(kl_graph_new(*ctx, g));
    KL_TRY(kl_parity_param(*g, "w", KL_F32, 2, (int64_t[]){600, 700}, &w));
    KL_TRY(kl_parity_param(*g, "b", KL_F32, 1, (int64_t[]){33}, &b));
    KL_TRY(kl_buffer(*g, "r", KL_F32, 2, (int64_t[]){600, 700}, &ru, &r));
    KL_TRY(kl_square(*g, w, &y));
    KL_TRY(kl_mul(*g, y, r, &y));
    KL_TRY(kl_sum(*g, y, 0, NULL, 0, &loss));
    KL_TRY(kl_square(*g, b, &y));
    KL_TRY(kl_sum(*g, y, 0, NULL, 0, &y));
    KL_TRY(kl_add(*g, loss, y, &loss));
    KL_TRY(kl_output(*g, loss));
    KL_TRY(kl_backward(*g, loss));
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAM, .lr = 1e-2, .max_grad_norm = 1.0};
    KL_TRY(kl_optim_new(*ctx, &oo, opt));
    return kl_optim_step(*g, *opt, NULL);
}

static void test_big_optim(kl_device gpu)
{
    kl_ctx *cc = NULL, *gc = NULL;
    kl_graph *cg = NULL, *gg = NULL;
    kl_optim *co = NULL, *go = NULL;
    CHECK_OK(big_build((kl_device){KL_DEVICE_CPU, 0}, &cc, &cg, &co));
    CHECK_OK(big_build(gpu, &gc, &gg, &go));
    for (int i = 0; i < 3 && cg && gg; i++) {
        CHECK_OK(kl_graph_run(cg));
        CHECK_OK(kl_graph_run(gg));
        double nc = kl_optim_last_grad_norm(co), ng = kl_optim_last_grad_norm(go);
        CHECK(nc > 1 && fabs(nc - ng) <= 1e-5 * nc); /* clipped: the norm is far above 1 */
    }
    if (cc && gc) kl_parity_params("big adam f32", cc, gc, 1e-4, 1e-4);
    kl_graph_free(cg), kl_graph_free(gg);
    kl_optim_free(co), kl_optim_free(go);
    kl_ctx_free(cc), kl_ctx_free(gc);
}

/* ---- errors on the device ---- */

/* A run that fails with msg: at once on the CPU, at the next sync (here
 * reading loss) on the GPU, which runs asynchronously. */
static void run_fails(kl_graph *g, kl_tensor *loss, const char *msg)
{
    float l;
    kl_status s = kl_graph_run(g);
    if (s == KL_OK) s = kl_tensor_get(loss, &l, sizeof l);
    CHECK(s == KL_EINVAL && strstr(kl_last_error(), msg) != NULL);
    if (s != KL_EINVAL || !strstr(kl_last_error(), msg)) fprintf(stderr, "  got %d: %s\n", (int)s, kl_last_error());
}

/* Bad labels and indices: the error names them (on the GPU at the next
 * sync), and the step they are in changes no parameter and no running
 * statistic (on the GPU the update and batchnorm's running update are
 * skipped on the device). Run on the CPU too. */
static void test_failed_steps(kl_device dev)
{
    kl_ctx_opts co = {.device = dev, .seed = 5};
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *lab, *loss, *w, *idx, *e, *rm, *rv, *bn;
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_parity_param(g, "logits", KL_F32, 2, (int64_t[]){8, 10}, &x));
    CHECK_OK(kl_input(g, "labels", KL_I32, 1, (int64_t[]){8}, &lab));
    CHECK_OK(kl_softmax_cross_entropy(g, x, lab, &loss));
    CHECK_OK(kl_parity_param(g, "emb", KL_F32, 2, (int64_t[]){20, 3}, &w));
    CHECK_OK(kl_input(g, "idx", KL_I32, 1, (int64_t[]){4}, &idx));
    CHECK_OK(kl_embedding(g, w, idx, &e));
    CHECK_OK(kl_output(g, e));
    CHECK_OK(kl_buffer(g, "rm", KL_F32, 1, (int64_t[]){3}, NULL, &rm)); /* params 2, 3 */
    CHECK_OK(kl_buffer(g, "rv", KL_F32, 1, (int64_t[]){3}, NULL, &rv));
    kl_batchnorm_opts bo = {.training = 1};
    CHECK_OK(kl_batchnorm(g, e, NULL, NULL, rm, rv, &bo, &bn)); /* [4, 3]: channels 3 */
    CHECK_OK(kl_output(g, bn));
    CHECK_OK(kl_backward(g, loss));
    kl_optim_opts oo = {.kind = KL_OPTIM_SGD, .lr = 0.1};
    kl_optim *opt;
    CHECK_OK(kl_optim_new(ctx, &oo, &opt));
    CHECK_OK(kl_optim_step(g, opt, NULL));
    int32_t good[8] = {1, 2, 3, 4, 5, 6, 7, 8}, bad[8] = {1, 2, 3, 12, 5, 6, 7, 8};
    int32_t igood[4] = {0, 5, 19, 5}, ibad[4] = {0, 5, 25, 5};
    float l;
    CHECK_OK(kl_tensor_set(idx, igood, sizeof igood));
    CHECK_OK(kl_tensor_set(lab, bad, sizeof bad));
    float p[4][80], r[4][3]; /* logits (param 0), rm (2) before and after each run: a failed step changes nothing */
    CHECK_OK(kl_ctx_param_get(ctx, 0, p[0], sizeof p[0]));
    CHECK_OK(kl_ctx_param_get(ctx, 2, r[0], sizeof r[0]));
    run_fails(g, loss, "label 12 of row 3 out of range [0,10)");
    CHECK_OK(kl_ctx_param_get(ctx, 0, p[1], sizeof p[1]));
    CHECK_OK(kl_ctx_param_get(ctx, 2, r[1], sizeof r[1]));
    CHECK_OK(kl_tensor_set(lab, good, sizeof good));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(loss, &l, sizeof l));
    CHECK(l > 0 && isfinite(l));
    CHECK_OK(kl_ctx_param_get(ctx, 0, p[2], sizeof p[2]));
    CHECK_OK(kl_ctx_param_get(ctx, 2, r[2], sizeof r[2]));
    CHECK_OK(kl_tensor_set(idx, ibad, sizeof ibad));
    run_fails(g, loss, "index 25 at position 2 out of range [0,20)");
    CHECK_OK(kl_ctx_param_get(ctx, 0, p[3], sizeof p[3]));
    CHECK_OK(kl_ctx_param_get(ctx, 2, r[3], sizeof r[3]));
    CHECK(!memcmp(r[0], r[1], sizeof r[0]) && memcmp(r[1], r[2], sizeof r[0]) && !memcmp(r[2], r[3], sizeof r[0]));
    CHECK(memcmp(p[0], p[1], sizeof p[0]) == 0);
    CHECK(memcmp(p[1], p[2], sizeof p[0]) != 0); /* the good step did update */
    CHECK(memcmp(p[2], p[3], sizeof p[0]) == 0);
    int64_t skipped = -1; /* the failed runs' updates count as skipped (Adam's t stays), alike on both */
    CHECK_OK(kl_optim_scaler(opt, NULL, NULL, &skipped));
    CHECK(kl_optim_steps(opt) == 3 && skipped == 2);
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
}

static void test_device_errors(kl_device gpu)
{
    kl_ctx_opts co = {.device = gpu, .seed = 5};
    kl_ctx *ctx;
    kl_graph *g;
    test_failed_steps(gpu);
    CHECK_OK(kl_ctx_new(&co, &ctx));

    /* every op has a CUDA kernel (test_cpu_side); an f16 fill writes f16 bits */
    kl_tensor *y;
    uint16_t h[6] = {0};
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_fill(g, KL_F16, 2, (int64_t[]){2, 3}, 1.0, &y));
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, h, sizeof h));
    for (int i = 0; i < 6; i++) CHECK(h[i] == 0x3C00); /* 1.0 */
    kl_graph_free(g);
    kl_ctx_free(ctx);

    int n = 0;
    CHECK_OK(kl_cuda_device_count(&n));
    co.device.index = n;
    char want[64];
    snprintf(want, sizeof want, "cuda:%d: index out of range", n);
    CHECK_ERR(kl_ctx_new(&co, &ctx), KL_EINVAL, want);
}

/* ---- always: messages and the kernel table ---- */

static void test_cpu_side(void)
{
    kl_ctx *ctx = (kl_ctx *)1;
    kl_ctx_opts co = {.device = {KL_DEVICE_CUDA, -1}};
    CHECK(kl_ctx_new(&co, &ctx) != KL_OK && ctx == NULL);
    CHECK(strstr(kl_last_error(), "cuda:-1") != NULL);
    CHECK(kl_backend_kernel(KL_BACKEND_CPU, KL_OP_matmul) == kl_ops[KL_OP_matmul]->fwd[KL_BACKEND_CPU]);
    CHECK(kl_backend_kernel(KL_BACKEND_CPU, KL_OP_input) == NULL);
    CHECK(kl_backend_kernel(KL_BACKEND_COUNT, KL_OP_matmul) == NULL);
#ifdef KILN_HAVE_CUDA
    static const kl_op_id have[] = {KL_OP_fill, KL_OP_copy, KL_OP_cast, KL_OP_unary, KL_OP_unary_bwd, KL_OP_binary,
                                    KL_OP_reduce, KL_OP_matmul, KL_OP_softmax, KL_OP_softmax_bwd, KL_OP_softmax_ce,
                                    KL_OP_softmax_ce_bwd, KL_OP_batchnorm, KL_OP_batchnorm_bwd, KL_OP_layernorm,
                                    KL_OP_layernorm_bwd, KL_OP_dropout, KL_OP_embedding, KL_OP_embedding_bwd,
                                    KL_OP_concat, KL_OP_slice_bwd, KL_OP_optim, KL_OP_conv2d,
                                    KL_OP_conv2d_bwd_data, KL_OP_conv2d_bwd_filter, KL_OP_pool2d, KL_OP_pool2d_bwd,
                                    KL_OP_lstm, KL_OP_lstm_bwd, KL_OP_gru, KL_OP_gru_bwd, KL_OP_attention,
                                    KL_OP_attention_bwd, KL_OP_rmsnorm, KL_OP_rmsnorm_bwd, KL_OP_rope,
                                    KL_OP_gather_rows, KL_OP_argmax_match, KL_OP_record};
    for (size_t i = 0; i < sizeof have / sizeof *have; i++) CHECK(kl_backend_kernel(KL_BACKEND_CUDA, have[i]) != NULL);
    for (int op = 0; op < KL_OP_COUNT; op++) { /* every op that computes has a CUDA kernel */
        bool storage = op == KL_OP_input || op == KL_OP_param || op == KL_OP_extra || op == KL_OP_view;
        if (storage == (kl_backend_kernel(KL_BACKEND_CUDA, (kl_op_id)op) != NULL))
            fprintf(stderr, "  op %s: %s CUDA kernel\n", kl_ops[op]->name, storage ? "unexpected" : "no");
        CHECK(storage != (kl_backend_kernel(KL_BACKEND_CUDA, (kl_op_id)op) != NULL));
    }
    CHECK(kl_backend_kernel(KL_BACKEND_CUDA, KL_OP_input) == NULL);
    CHECK(kl_backends[KL_BACKEND_CUDA] != NULL);
    if (kl_cuda_available(0) != KL_OK) { /* e.g. no driver: the message says so and names the device */
        co.device.index = 0;
        CHECK(kl_ctx_new(&co, &ctx) != KL_OK && ctx == NULL);
        CHECK(strncmp(kl_last_error(), "cuda:0: ", 8) == 0);
        int n = -1;
        if (kl_cuda_device_count(&n) != KL_OK) CHECK(n == 0 && strlen(kl_last_error()) > 0);
    }
#else
    co.device.index = 0;
    CHECK_ERR(kl_ctx_new(&co, &ctx), KL_EUNSUPPORTED, "cuda:0 requested but this kiln was built without CUDA");
    CHECK(kl_backends[KL_BACKEND_CUDA] == NULL);
    int n = -1;
    CHECK_ERR(kl_cuda_device_count(&n), KL_EUNSUPPORTED, "built without CUDA");
    CHECK(n == 0);
#endif
}

int main(int argc, char **argv)
{
    kl_parity_fp32_default();
    size_t ncases = sizeof cases / sizeof *cases;
    if (kl_parity_half_cpu_mode(argc, argv)) { /* 16-bit storage on the CPU against f32 */
        for (size_t i = 0; i < ncases; i++) kl_parity_half_both(&cases[i], (kl_device){KL_DEVICE_CPU, 0});
        return kl_test_done("test_cuda --half-cpu");
    }
    test_cpu_side();
    test_failed_steps((kl_device){KL_DEVICE_CPU, 0});
    if (kl_cuda_available(0) != KL_OK) {
        if (kl_test_failures) return kl_test_done("test_cuda");
        printf("skipped: %s\n", kl_last_error());
        return 77;
    }
    kl_device gpu = {KL_DEVICE_CUDA, 0};
    for (size_t i = 0; i < ncases; i++) kl_parity_case_run(&cases[i], gpu);
    for (size_t i = 0; i < ncases; i++) kl_parity_half_both(&cases[i], gpu);
    kl_optim_opts adam = {.kind = KL_OPTIM_ADAM, .lr = 1e-3};
    test_training(gpu, KL_F32, &adam, "mlp adam f32");
    test_training(gpu, KL_F64, &adam, "mlp adam f64");
    kl_optim_opts sgd = {.kind = KL_OPTIM_SGD, .lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3, .max_grad_norm = 0.5};
    test_training(gpu, KL_F64, &sgd, "mlp sgd f64");
    kl_optim_opts adamw = {.kind = KL_OPTIM_ADAMW, .lr = 1e-3, .weight_decay = 0.01, .max_grad_norm = 0.5};
    test_training(gpu, KL_F32, &adamw, "mlp adamw f32");
    adamw.no_decay_1d = 1, adamw.weight_decay = 0.5; /* biases apart: the update splits its spans there */
    test_training(gpu, KL_F32, &adamw, "mlp adamw f32, no decay of 1-d parameters");
    test_big_optim(gpu);
    test_device_errors(gpu);
    return kl_test_done("test_cuda");
}
