/* Gradient checks (double precision, central differences) for the core ops,
 * including broadcasting and strided views. Conv, pooling, normalisation,
 * dropout, embedding and concat have their own files (test_gradcheck_*.c). */
#include "gradcheck.h"
#include "testutil.h"

#define B(name) static kl_status name(kl_graph *g, kl_tensor **x, void *u, kl_tensor **y)

B(b_relu) { return kl_relu(g, x[0], y); }
B(b_gelu) { return kl_gelu(g, x[0], y); }
B(b_tanh) { return kl_tanh(g, x[0], y); }
B(b_sigmoid) { return kl_sigmoid(g, x[0], y); }
B(b_scale) { return kl_scale(g, x[0], -2.5, y); }
B(b_square) { return kl_square(g, x[0], y); }
B(b_add) { return kl_add(g, x[0], x[1], y); }
B(b_sub) { return kl_sub(g, x[0], x[1], y); }
B(b_mul) { return kl_mul(g, x[0], x[1], y); }
B(b_div) { return kl_div(g, x[0], x[1], y); }
B(b_add_self) { return kl_add(g, x[0], x[0], y); } /* one tensor used twice */
B(b_sum_all) { return kl_sum(g, x[0], 0, NULL, 0, y); }
B(b_sum_axes)
{
    int ax[2] = {0, 2};
    return kl_sum(g, x[0], 2, ax, 0, y);
}
B(b_mean_keep)
{
    int ax[1] = {-1};
    return kl_mean(g, x[0], 1, ax, 1, y);
}
B(b_matmul) { return kl_matmul(g, x[0], x[1], y); }
B(b_matmul_tt) /* both operands transposed views */
{
    kl_tensor *a, *b;
    kl_status s = kl_transpose(g, x[0], 0, 1, &a);
    if (!s) s = kl_transpose(g, x[1], 0, 1, &b);
    return s ? s : kl_matmul(g, a, b, y);
}
B(b_matmul_batched) { return kl_matmul(g, x[0], x[1], y); }
B(b_linear) { return kl_linear(g, x[0], x[1], x[2], KL_ACT_NONE, y); }
B(b_linear_relu) { return kl_linear(g, x[0], x[1], x[2], KL_ACT_RELU, y); }
B(b_linear_tanh) { return kl_linear(g, x[0], x[1], NULL, KL_ACT_TANH, y); }
B(b_linear_gelu3d) { return kl_linear(g, x[0], x[1], x[2], KL_ACT_GELU, y); }
B(b_linear_sigmoid) { return kl_linear(g, x[0], x[1], x[2], KL_ACT_SIGMOID, y); }
B(b_softmax) { return kl_softmax(g, x[0], y); }
B(b_log_softmax) { return kl_log_softmax(g, x[0], y); }
B(b_softmax_t) /* softmax of a transposed (strided) view */
{
    kl_tensor *t;
    kl_status s = kl_transpose(g, x[0], 0, 1, &t);
    return s ? s : kl_softmax(g, t, y);
}
B(b_ce) { return kl_softmax_cross_entropy(g, x[0], x[1], y); }
B(b_mse) { return kl_mse(g, x[0], x[1], y); }
B(b_reshape)
{
    int64_t d[2] = {-1, 6};
    kl_tensor *t;
    kl_status s = kl_reshape(g, x[0], 2, d, &t);
    return s ? s : kl_tanh(g, t, y);
}
B(b_permute)
{
    int p[3] = {2, 0, 1};
    kl_tensor *t;
    kl_status s = kl_permute(g, x[0], p, &t);
    return s ? s : kl_sigmoid(g, t, y);
}
B(b_permute_reshape) /* reshape of a non-contiguous view copies first */
{
    int64_t d[1] = {-1};
    kl_tensor *t;
    kl_status s = kl_transpose(g, x[0], 0, 1, &t);
    if (!s) s = kl_reshape(g, t, 1, d, &t);
    return s ? s : kl_square(g, t, y);
}
B(b_slice)
{
    kl_tensor *t;
    kl_status s = kl_slice(g, x[0], 1, 1, 3, &t);
    return s ? s : kl_mul(g, t, t, y);
}
B(b_split)
{
    kl_tensor *p[2];
    int64_t sz[2] = {1, 3};
    kl_status s = kl_split(g, x[0], -1, 2, sz, p);
    return s ? s : kl_mul(g, p[0], p[1], y);
}
/* slices of a permuted view, out of order, with a gap (the autodiff's
 * concat of the pieces, a zero fill for the gap), and x used whole too */
B(b_slices_tile)
{
    static const int perm[3] = {0, 2, 1};
    kl_tensor *t, *a, *b, *c, *s;
    KL_TRY_T(kl_permute(g, x[0], perm, &t)); /* [2, 7, 3] */
    KL_TRY_T(kl_slice(g, t, 1, 5, 7, &a));
    KL_TRY_T(kl_slice(g, t, 1, 0, 2, &b));
    KL_TRY_T(kl_slice(g, t, 1, 3, 5, &c));
    KL_TRY_T(kl_mul(g, a, b, &a));
    KL_TRY_T(kl_mul(g, a, c, &a));
    KL_TRY_T(kl_sum(g, t, 0, NULL, 0, &s));
    KL_TRY_T(kl_square(g, s, &s));
    return kl_add(g, a, s, y);
}
B(b_slices_overlap) /* overlapping slices and one along another axis: summed one by one */
{
    kl_tensor *a, *b, *c;
    KL_TRY_T(kl_slice(g, x[0], 1, 0, 3, &a));
    KL_TRY_T(kl_slice(g, x[0], 1, 2, 5, &b));
    KL_TRY_T(kl_slice(g, x[0], 0, 1, 3, &c)); /* [2, 5] */
    KL_TRY_T(kl_mul(g, a, b, &a));
    KL_TRY_T(kl_square(g, c, &c));
    KL_TRY_T(kl_sum(g, c, 0, NULL, 0, &c));
    return kl_add(g, a, c, y);
}
B(b_strided_bcast) /* broadcasting against a transposed view */
{
    kl_tensor *t;
    kl_status s = kl_transpose(g, x[0], 0, 1, &t);
    return s ? s : kl_add(g, t, x[1], y);
}
B(b_contiguous)
{
    kl_tensor *t;
    kl_status s = kl_transpose(g, x[0], 0, 1, &t);
    if (!s) s = kl_contiguous(g, t, &t);
    return s ? s : kl_relu(g, t, y);
}
B(b_cast)
{
    kl_tensor *t;
    kl_status s = kl_cast(g, x[0], KL_F32, &t);
    if (!s) s = kl_tanh(g, t, &t);
    return s ? s : kl_cast(g, t, KL_F64, y);
}

typedef struct { const char *name; gc_build fn; int n; gc_input in[4]; } gc_case;

int main(void)
{
    gc_input labels = {.ndim = 1, .ne = {5}, .imax = 7};
    gc_input pos = GC_IN(3, 4);
    pos.lo = 0.5, pos.hi = 2;
    const gc_case cases[] = {
        {"relu", b_relu, 1, {GC_IN(3, 5)}},
        {"gelu", b_gelu, 1, {GC_IN(2, 3, 4)}},
        {"tanh", b_tanh, 1, {GC_IN(7)}},
        {"sigmoid", b_sigmoid, 1, {GC_IN(1, 9)}},
        {"scale", b_scale, 1, {GC_IN(3, 1, 2)}},
        {"square", b_square, 1, {GC_IN(4, 3)}},
        {"add", b_add, 2, {GC_IN(3, 4), GC_IN(3, 4)}},
        {"add_bcast_row", b_add, 2, {GC_IN(3, 4), GC_IN(4)}},
        {"add_bcast_both", b_add, 2, {GC_IN(3, 1, 5), GC_IN(1, 4, 1)}},
        {"sub_bcast", b_sub, 2, {GC_IN(2, 3, 4), GC_IN(3, 1)}},
        {"mul_bcast", b_mul, 2, {GC_IN(1), GC_IN(2, 5)}},
        {"div_bcast", b_div, 2, {GC_IN(3, 4), pos}},
        {"add_self", b_add_self, 1, {GC_IN(2, 3)}},
        {"sum_all", b_sum_all, 1, {GC_IN(3, 4, 2)}},
        {"sum_axes", b_sum_axes, 1, {GC_IN(3, 4, 2)}},
        {"mean_keepdim", b_mean_keep, 1, {GC_IN(3, 5)}},
        {"matmul", b_matmul, 2, {GC_IN(3, 4), GC_IN(4, 5)}},
        {"matmul_odd", b_matmul, 2, {GC_IN(1, 7), GC_IN(7, 1)}},
        {"matmul_transposed_views", b_matmul_tt, 2, {GC_IN(4, 3), GC_IN(5, 4)}},
        {"matmul_batched", b_matmul_batched, 2, {GC_IN(2, 3, 4), GC_IN(2, 4, 5)}},
        {"matmul_batch_bcast", b_matmul_batched, 2, {GC_IN(2, 3, 4), GC_IN(1, 4, 5)}},
        {"matmul_3d_by_2d", b_matmul_batched, 2, {GC_IN(2, 3, 4), GC_IN(4, 5)}},
        {"linear", b_linear, 3, {GC_IN(5, 4), GC_IN(3, 4), GC_IN(3)}},
        {"linear_relu", b_linear_relu, 3, {GC_IN(5, 4), GC_IN(3, 4), GC_IN(3)}},
        {"linear_tanh_nobias", b_linear_tanh, 2, {GC_IN(2, 6), GC_IN(3, 6)}},
        {"linear_gelu_3d", b_linear_gelu3d, 3, {GC_IN(2, 3, 4), GC_IN(5, 4), GC_IN(5)}},
        {"linear_sigmoid", b_linear_sigmoid, 3, {GC_IN(4, 3), GC_IN(2, 3), GC_IN(2)}},
        {"softmax", b_softmax, 1, {GC_IN(3, 6)}},
        {"log_softmax", b_log_softmax, 1, {GC_IN(2, 2, 5)}},
        {"softmax_strided", b_softmax_t, 1, {GC_IN(4, 3)}},
        {"softmax_cross_entropy", b_ce, 2, {GC_IN(5, 7), labels}},
        {"mse", b_mse, 2, {GC_IN(3, 4), GC_IN(3, 4)}},
        {"reshape", b_reshape, 1, {GC_IN(2, 3, 2)}},
        {"permute", b_permute, 1, {GC_IN(2, 3, 4)}},
        {"permute_reshape", b_permute_reshape, 1, {GC_IN(3, 4)}},
        {"slice", b_slice, 1, {GC_IN(2, 4, 3)}},
        {"split", b_split, 1, {GC_IN(3, 4)}},
        {"slices_tile", b_slices_tile, 1, {GC_IN(2, 3, 7)}},
        {"slices_overlap", b_slices_overlap, 1, {GC_IN(3, 5)}},
        {"strided_broadcast", b_strided_bcast, 2, {GC_IN(4, 3), GC_IN(4)}},
        {"contiguous", b_contiguous, 1, {GC_IN(3, 5)}},
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n; i++) {
        int bad = gradcheck(cases[i].name, cases[i].n, cases[i].in, cases[i].fn, NULL);
        printf("%-28s %s\n", cases[i].name, bad ? "FAIL" : "ok");
    }
    (void)b_cast;
    return kl_test_done("test_gradcheck");
}
