/* Attribute structs of ops (stored in the node, KL_ATTR), shared by the op
 * files and the CUDA kernels (src/backends/cuda), so both read the same
 * layout. Each struct is <= KL_ATTR_BYTES. Ops whose kernels exist only on
 * the CPU keep theirs file-local. Plain C, also compiled as CUDA C++. */
#ifndef KL_OPS_ATTRS_H
#define KL_OPS_ATTRS_H

#include "kiln/tensor.h" /* kl_dtype, KL_MAX_DIMS */
#include <stdint.h>

/* fill: a constant tensor (core/graph.c kl_fill builds the same layout) */
typedef struct { kl_dtype dt; int ndim; int64_t ne[KL_MAX_DIMS]; double v; } fill_attr;

/* cast: convert to dtype `to` */
typedef struct { kl_dtype to; } cast_attr;

/* unary / unary_bwd: kind is kl_unary_kind (ops/elem.h); alpha for scale */
typedef struct { int kind; double alpha; } unary_attr;

/* binary: kind is kl_binary_kind (ops/elem.h) */
typedef struct { int kind; } binary_attr;

/* reduce: sum over axes in mask (kept as size 1), times scale */
typedef struct { unsigned mask; double scale; } reduce_attr;

/* matmul: fused activation (kl_act) after the optional bias */
typedef struct { int act; } matmul_attr;

/* softmax / softmax_bwd: log = 1 for log-softmax */
typedef struct { int log; } softmax_attr;

/* dropout: keep iff Philox word >= threshold (ops/norm.h) */
typedef struct {
    double p;
    uint32_t threshold; /* floor(p * 2^32) */
    uint32_t salt;
} dropout_attr;

/* embedding_bwd: rows of dW */
typedef struct { int64_t V; } emb_attr;

/* concat: along axis */
typedef struct { int axis; } concat_attr;

/* view and slice_bwd */
typedef enum { VIEW_RESHAPE, VIEW_PERMUTE, VIEW_SLICE, VIEW_EXPAND } view_kind;
typedef struct {
    view_kind kind;
    int ndim;                /* reshape / expand target rank (slice_bwd: source rank) */
    int64_t ne[KL_MAX_DIMS]; /* reshape / expand target dims (slice_bwd: source dims) */
    int perm[KL_MAX_DIMS];
    int axis;
    int64_t start, end;
} view_attr;

/* batchnorm / batchnorm_bwd */
typedef struct {
    double eps, momentum;
    int training;
    int ig, ib, irm, irv;          /* source index of gamma, beta, running mean/var; -1: none */
    int need_dx, need_dg, need_db; /* bwd: which gradients the kernel writes */
    int act;                       /* fused activation: y = act(norm(x)), a KL_UN_* kind (from y: relu, tanh, sigmoid); -1: none */
} bn_attr;

/* pool2d / pool2d_bwd (ops/pool2d.c; window math in ops/pool2d.h) */
enum { POOL_MAX = 0, POOL_AVG = 1 };
typedef struct {
    int kind; /* POOL_MAX or POOL_AVG */
    int kh, kw, sh, sw, ph, pw;
    int idx32; /* max: argmax saved as int32 (window > 255 elements), else u8 */
    int64_t N, C, H, W, OH, OW;
} pool_attr;

/* layernorm / layernorm_bwd */
typedef struct {
    double eps;
    int ig, ib;                    /* source index of gamma, beta; -1: none */
    int need_dx, need_dg, need_db; /* bwd: which gradients the kernel writes */
} ln_attr;

/* rmsnorm / rmsnorm_bwd */
typedef struct {
    double eps;
    int has_w;
    int need_dx, need_dw; /* bwd: which gradients the kernel writes */
} rms_attr;

/* rope: rotate by +angle, or by -angle when inverse (the backward) */
typedef struct {
    double base;
    int inverse;
} rope_attr;

/* attention / attention_bwd; slots: parallel CPU workers with own scratch */
typedef struct {
    int causal, slots;
    double scale;
} att_attr;

/* lstm / gru forward node: source indices of the optional inputs (ops/rnn.h) */
typedef struct {
    int gates;                     /* G: 4 (LSTM) or 3 (GRU) */
    int ib_ih, ib_hh, ih0, ic0;    /* source indices; -1: absent */
} kl_rnn_attr;

/* lstm_bwd / gru_bwd (ops/rnn.h): source indices and the extras asked */
typedef struct {
    int ih0, ic0, idhn, idcn;
    int need_dgh, need_dh0, need_dc0, need_dwhh;
} kl_rnn_bwd_attr;

/* record (core/readback.c): each run writes its sources' values, as
 * doubles, then its sequence number into one record of a ring in host
 * memory the device can write; the host pops records whose seq arrived. */
#define KL_RECORD_MAX 8
typedef struct { uint64_t seq; double v[KL_RECORD_MAX]; } kl_record;
typedef struct { struct kl_readback *rb; kl_record *ring_dev; } record_attr;
typedef struct { uint64_t slot, seq; } record_vals; /* the run's values (prepare) */

/* argmax_match: count of rows whose first largest logit is at the label */
/* gather_rows: y[r] = src[idx[start + r]] for r < rows (start: an i32 [1]
 * input, set before each run); a bad index is reported and its row zeroed */
typedef struct { int64_t rows; } gather_attr;

#endif
