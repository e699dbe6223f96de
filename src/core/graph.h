/* Internal graph representation: nodes, storage, the op table, execution.
 *
 * A node (kl_tensor) is one op application. Nodes are kept in creation order,
 * which is a valid execution order (an op's inputs exist before it). Storage:
 *   ARENA  - an intermediate: planned offset in the graph's arena
 *   VIEW   - aliases base's storage with its own strides and offset
 *   PARAM / BUFFER - the ctx's flat parameter / buffer storage (slot)
 *   GRAD   - the ctx's flat gradient storage for parameter slot
 *   EXTERNAL - memory the caller owns (kl_external), at t->ext
 *   NONE   - no value
 */
#ifndef KL_CORE_GRAPH_H
#define KL_CORE_GRAPH_H

#include "kiln/graph.h"
#include "kiln/ops.h"
#include "kiln/optim.h"
#include "core/error.h"

#include <stdbool.h>
#include <string.h>

#define KL_MAX_SRC 16
#define KL_MAX_EXTRA 3
#define KL_ATTR_BYTES 192
#define KL_ALIGN 256 /* arena and parameter slots: cuBLASLt's default alignment */

typedef enum kl_op_id {
#define KL_OP(name) KL_OP_##name,
#include "ops/ops.def"
#undef KL_OP
    KL_OP_COUNT
} kl_op_id;

typedef enum kl_backend_id { KL_BACKEND_CPU = 0, KL_BACKEND_CUDA, KL_BACKEND_COUNT } kl_backend_id;

typedef enum kl_storage {
    KL_ST_ARENA = 0,
    KL_ST_VIEW,
    KL_ST_PARAM,
    KL_ST_BUFFER,
    KL_ST_GRAD,
    KL_ST_EXTERNAL,
    KL_ST_NONE
} kl_storage;

struct kl_tensor {
    kl_graph *g;
    int id;  /* index in g->nodes: execution order */
    kl_op_id op;
    kl_dtype dtype;
    int ndim;
    int64_t ne[KL_MAX_DIMS]; /* dims */
    int64_t st[KL_MAX_DIMS]; /* strides in elements */
    int64_t offs;            /* element offset into base's storage (views) */
    int n_src;
    kl_tensor *src[KL_MAX_SRC];
    _Alignas(8) unsigned char attr[KL_ATTR_BYTES]; /* the op's own struct */
    char name[64];

    kl_storage sk;
    kl_tensor *base; /* storage owner (self unless VIEW) */
    int slot;        /* ctx parameter index for PARAM/BUFFER/GRAD */
    size_t aux_bytes;     /* saved for backward; lives as long as the node */
    size_t scratch_bytes; /* needed only while the kernel runs */
    size_t off, aux_off, scratch_off; /* arena offsets, set by the plan */
    size_t run_bytes; /* per-run values written by the op's prepare (see kl_op_def) */
    size_t run_off;   /* their offset in the graph's run block, set by the plan */
    void *ext;        /* EXTERNAL: the caller's memory */

    int n_extra;
    kl_tensor *extra[KL_MAX_EXTRA]; /* secondary outputs (op KL_OP_extra) */

    bool requires_grad;
    bool is_output; /* value must survive to the end of the run */
    kl_tensor *grad; /* while kl_backward runs */
    struct kl_grad_piece *pieces; /* while kl_backward runs: slices' gradients not yet summed (autodiff.c) */
};

/* The op's attribute struct inside a node. */
#define KL_ATTR(t, type) ((type *)(void *)(t)->attr)
#define KL_ATTR_C(t, type) ((const type *)(const void *)(t)->attr)

typedef struct kl_param_slot {
    char *name;
    kl_dtype dtype;
    int ndim;
    int64_t ne[KL_MAX_DIMS];
    size_t nbytes;
    size_t off; /* byte offset in the params (and grads) or buffers region */
    bool trainable;
} kl_param_slot;

struct kl_backend;

struct kl_ctx {
    kl_device device;
    kl_backend_id backend;
    const struct kl_backend *be; /* memory and copies for this device */
    int threads;
    uint64_t seed;
    uint64_t init_stream; /* counter for parameter init draws */
    bool no_init;         /* parameters are left zero (a checkpoint fills them) */
    kl_param_slot *slots;
    int n_slots, cap_slots;
    unsigned char *params, *grads, *buffers; /* device memory (host memory on the CPU) */
    size_t params_bytes, buffers_bytes;      /* used */
    size_t params_cap, buffers_cap;          /* allocated */
    size_t grads_cap; /* 0 (grads NULL) until a backward pass or an optimizer needs them */
    /* bumped when memory outside the ctx's own buffers that kernels address
     * moves (the optimizer's state): a captured CUDA graph holding the old
     * addresses is captured again */
    uint64_t storage_gen;
    int n_graphs;
    int closing; /* kl_ctx_free came while graphs were alive: the last kl_graph_free frees it */
};

struct kl_exec;
typedef kl_status (*kl_kernel_fn)(const struct kl_exec *ex, const kl_tensor *t);

typedef struct kl_op_def {
    const char *name;
    /* Checks t->src and t->attr, sets t->dtype, t->ndim, t->ne (and t->st for
     * views, aux/scratch bytes); the message names the op and shapes. */
    kl_status (*shape)(kl_tensor *t);
    /* Appends nodes computing the inputs' gradients from dy (kl_grad_acc). */
    kl_status (*backward)(kl_graph *g, kl_tensor *t, kl_tensor *dy);
    kl_kernel_fn fwd[KL_BACKEND_COUNT];
    /* Host work before every run, outside any captured CUDA graph: writes
     * the node's t->run_bytes of per-run values (a step counter, learning
     * rate, ...) into vals; kernels read them with kl_run_vals, from device
     * memory, so a replayed graph sees each run's values. May also grow
     * state. NULL: none. */
    kl_status (*prepare)(const struct kl_exec *ex, const kl_tensor *t, void *vals);
    /* The run stopped at an error before this node ran, after its prepare
     * (vals): account for what prepare committed. NULL: nothing to do. */
    void (*failed)(const struct kl_exec *ex, const kl_tensor *t, const void *vals);
    /* The node uses an object its attr points to (an optimizer): retain
     * when the node is in its graph, release when the graph is freed, so
     * an object freed before the graph stays until then. NULL: none. */
    void (*retain)(const kl_tensor *t);
    void (*release)(const kl_tensor *t);
    /* Bit (1 << backend): that backend's kernel reads and writes f16/bf16
     * storage itself; for the others the executor widens (core/widen.c). */
    unsigned half_native;
    /* Whether backend b's kernel takes this node's 16-bit storage itself
     * where its half_native bit is clear (a library call that exists for
     * some geometries only). NULL: never. */
    bool (*half_native_if)(kl_backend_id b, const kl_tensor *t);
    /* Bit k: the kernel reads src[k] only through its aux (a forward node's
     * saved statistics or indices, kept in f32 or integers), so widening
     * leaves it uncast. */
    unsigned aux_srcs;
} kl_op_def;

#define KL_HALF_ALL ((1u << KL_BACKEND_COUNT) - 1u)
#define KL_HALF_CUDA (1u << KL_BACKEND_CUDA)

#define KL_OP(name) extern const kl_op_def kl_op_##name;
#include "ops/ops.def"
#undef KL_OP
extern const kl_op_def *const kl_ops[KL_OP_COUNT];
/* The kernel of op on backend b: kl_ops[op]->fwd[b], else (CUDA builds) the
 * entry of the CUDA kernel table (src/backends/cuda/registry.cu); NULL: none. */
kl_kernel_fn kl_backend_kernel(kl_backend_id b, kl_op_id op);

/* ---- 16-bit storage for f32 kernels (core/widen.c) ---- */
/* Whether t runs on b through f32 copies of its f16/bf16 tensors. */
bool kl_widen_needed(kl_backend_id b, const kl_tensor *t);
/* Scratch bytes those copies take (0 when not needed), after t's own. */
size_t kl_widen_bytes(kl_backend_id b, const kl_tensor *t);
/* Runs kernel fn on t through the copies. */
struct kl_exec;
kl_status kl_widen_run(const struct kl_exec *ex, const kl_tensor *t, kl_kernel_fn fn);

typedef struct kl_plan {
    bool valid;
    int n_nodes;  /* graph size when planned */
    bool no_reuse;
    size_t arena_bytes, tensor_bytes;
    size_t input_bytes; /* the inputs' blocks: the arena's first bytes */
    size_t run_bytes; /* the run block: every node's per-run values */
    uint64_t id;      /* changes with every plan (captured graphs compare it) */
} kl_plan;

struct kl_graph {
    kl_ctx *ctx;
    kl_tensor **nodes;
    int n_nodes, cap_nodes;
    bool has_backward;
    kl_plan plan;
    unsigned char *arena;
    size_t arena_cap;
    uint64_t runs;
    uint64_t ran_plan; /* plan.id of the last run that finished: the arena holds its values */
    bool *grad_written; /* per ctx slot: this graph writes the gradient */
    int grad_written_n;
    double *prof; /* seconds per node, accumulated while profiling is on */
    uint64_t prof_runs; /* runs timed into prof */
    kl_tensor *loss;   /* what kl_backward differentiated */
    /* per-run values: host staging and its device copy (kl_op_def.prepare) */
    unsigned char *run_host, *run_dev;
    size_t run_cap;
    /* a captured CUDA graph of the whole run (exec.c, the backend's capture) */
    void *captured;
    uint64_t captured_key; /* storage addresses it was captured with */
    int capture;           /* 1: capture after a first eager run (default), 0: never */
    uint64_t eager_key;    /* storage_key of the last run that issued kernels one by one: capture needs one per plan and storage */
    int env_read;          /* KILN_PROFILE was looked at (first run) */
    int issued;            /* nodes issued by the last run before it stopped (all: it did not) */
    int capture_failed;    /* capturing failed once: run eagerly from now on */
    struct kl_readback *readbacks; /* asynchronous read-back rings (readback.c) */
};

/* What a kernel sees while the graph runs. */
typedef struct kl_exec {
    kl_graph *g;
    kl_ctx *ctx;
    unsigned char *arena;
    int threads;
    uint64_t run; /* the graph's run counter (dropout stream) */
    unsigned char *run_vals; /* the run block in the backend's memory */
} kl_exec;

/* ---- building ---- */
/* Creates a node of op with the given inputs and attributes, runs the op's
 * shape function and appends it; on failure nothing is added. */
kl_status kl_node_new(kl_graph *g, kl_op_id op, int n_src, kl_tensor *const *src,
                      const void *attr, size_t attr_size, kl_tensor **out);
/* Adds a secondary output of t with its own shape (called from shape fns). */
kl_status kl_node_add_extra(kl_tensor *t, kl_dtype dt, int ndim, const int64_t *ne, kl_tensor **out);
/* Checks that the arguments are non-null tensors of g; names op in the message. */
kl_status kl_check_args(kl_graph *g, const char *op, int n, kl_tensor *const *ts);
/* Accumulates dx into x's gradient during kl_backward (no-op if x needs none). */
kl_status kl_grad_acc(kl_graph *g, kl_tensor *x, kl_tensor *dx);
/* Accumulates dy, the gradient of x's slice [start, end) along axis, into
 * x's gradient: kept until x's backward, so that slices tiling x (q, k and
 * v of one projection) become one concat, not zero-padded copies summed. */
kl_status kl_grad_acc_slice(kl_graph *g, kl_tensor *x, kl_tensor *dy, int axis, int64_t start, int64_t end);
/* The gradient of x from dy, the gradient of its slice [start, end) along
 * axis: zeros elsewhere (ops/view.c). */
kl_status kl_slice_grad(kl_graph *g, kl_tensor *x, kl_tensor *dy, int axis, int64_t start, int64_t end, kl_tensor **dx);
/* dy reduced (summed) over broadcast axes to shape of x (for broadcasting ops). */
kl_status kl_reduce_to(kl_graph *g, kl_tensor *dy, const kl_tensor *x, kl_tensor **out);
/* A constant-filled tensor. */
kl_status kl_fill(kl_graph *g, kl_dtype dt, int ndim, const int64_t *ne, double value, kl_tensor **out);

/* ---- shapes ---- */
int64_t kl_numel(const kl_tensor *t);
size_t kl_nbytes(const kl_tensor *t); /* numel * dtype size */
/* The bytes of a tensor of positive dims ne in dtype dt into *bytes; false
 * when the element count or the bytes overflow or exceed KL_MAX_TENSOR_BYTES
 * (a wrapped count would plan a small buffer for a huge tensor). */
#define KL_MAX_TENSOR_BYTES ((uint64_t)1 << 62)
bool kl_shape_bytes(kl_dtype dt, int ndim, const int64_t *ne, size_t *bytes);
void kl_set_contiguous(kl_tensor *t); /* row-major strides from ne */
bool kl_is_contiguous(const kl_tensor *t);
bool kl_same_shape(const kl_tensor *a, const kl_tensor *b);
bool kl_is_float(kl_dtype dt); /* f32, f16, bf16, f64 */
/* Bytes of the type kernels compute and save in for dt: f32 for f16 and
 * bf16 (aux and scratch sizes; core/widen.c), else dt's own size. */
size_t kl_calc_size(kl_dtype dt);
/* "[128,784] f32" for messages; one of 4 rotating thread-local buffers. */
const char *kl_desc(const kl_tensor *t);
/* Normalises a possibly negative axis; fails naming op when out of range. */
kl_status kl_axis(const char *op, const kl_tensor *t, int axis, int *out);

/* ---- running ---- */
/* Pointer to t's first element (views resolved). */
void *kl_data(const kl_exec *ex, const kl_tensor *t);
void *kl_aux(const kl_exec *ex, const kl_tensor *t);
void *kl_scratch(const kl_exec *ex, const kl_tensor *t);
/* t's per-run values (kl_op_def.prepare), in the backend's memory. */
void *kl_run_vals(const kl_exec *ex, const kl_tensor *t);
kl_status kl_plan_build(kl_graph *g, const kl_plan_opts *opts);
/* Fails unless each read-back ring of g has room for one more record. */
kl_status kl_readback_reserve(kl_graph *g);
/* Frees g's read-back rings (kl_graph_free). */
void kl_readback_free_all(kl_graph *g);

/* ---- ctx internals ---- */
/* Room for trainable parameters of bytes in all (and their gradients), so
 * a model's parameters created one by one take one allocation each instead
 * of doubling growth's up to twice their size (and the copy's old + new). */
kl_status kl_ctx_reserve_params(kl_ctx *ctx, size_t bytes);
/* Allocates the gradient buffer (zeroed) the first time training needs it:
 * a context that only runs forward passes never holds one. */
kl_status kl_ctx_ensure_grads(kl_ctx *ctx);
kl_status kl_ctx_slot_new(kl_ctx *ctx, const char *name, kl_dtype dt, int ndim, const int64_t *ne,
                          bool trainable, const kl_init *init, int *slot);
unsigned char *kl_slot_data(const kl_ctx *ctx, int slot);
unsigned char *kl_slot_grad(const kl_ctx *ctx, int slot);
/* Fails, naming fn, unless slot i is trainable and holds `bytes` bytes and
 * dst is not NULL: the checks of a copy out of its gradient. */
kl_status kl_ctx_check_grad_copy(const kl_ctx *ctx, int i, const void *dst, size_t bytes, const char *fn);

/* Element-type dispatch for CPU kernels written once for float and double:
 *   #define K(T) static void relu_##T(const T *x, T *y, int64_t n) { ... }
 *   KL_FOR_REAL(K)   -> relu_float, relu_double */
#define KL_FOR_REAL(X) X(float) X(double)

#endif
