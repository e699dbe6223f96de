/* kiln contexts, graphs and tensors.
 *
 * A kl_ctx owns the device, threads, seed and the parameters (one flat
 * buffer for trainable parameters, one for their gradients, one for
 * non-trainable buffers such as running statistics). A kl_graph records ops
 * as the user calls them; kl_backward appends the gradient ops and
 * kl_optim_step (optim.h) the update, so one training step is one graph.
 * kl_graph_run plans memory once (every intermediate gets an offset in one
 * arena) and then executes the recorded ops; later runs replay the plan.
 *
 *   kl_ctx *ctx;   kl_ctx_new(NULL, &ctx);
 *   kl_graph *g;   kl_graph_new(ctx, &g);
 *   int64_t xd[2] = {64, 2}, wd[2] = {16, 2};
 *   kl_tensor *x, *w, *y, *loss;
 *   kl_input(g, "x", KL_F32, 2, xd, &x);
 *   kl_param(g, "fc.weight", KL_F32, 2, wd, NULL, &w);
 *   kl_linear(g, x, w, NULL, KL_ACT_RELU, &y);
 *   kl_sum(g, y, 0, NULL, 0, &loss);
 *   kl_backward(g, loss);
 *   kl_tensor_set(x, data, sizeof data);
 *   kl_graph_run(g);
 *   float l; kl_tensor_get(loss, &l, sizeof l);
 *   kl_graph_free(g); kl_ctx_free(ctx);
 */
#ifndef KILN_GRAPH_H
#define KILN_GRAPH_H

#include "kiln/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kl_ctx kl_ctx;       /* caller-owned */
typedef struct kl_graph kl_graph;   /* caller-owned; belongs to one ctx */
typedef struct kl_tensor kl_tensor; /* a node; owned by its graph */

typedef struct kl_ctx_opts {
    kl_device device; /* default cpu */
    int threads;      /* 0: $KILN_THREADS, else all cores */
    uint64_t seed;    /* parameter init and dropout streams */
    int no_init;      /* 1: parameters start as zeros, not drawn (the caller loads a
                       * checkpoint or weights into them next) */
} kl_ctx_opts;

/* Creates a context; opts NULL means defaults. Fails on an unknown device
 * type or a CPU index other than 0 (KL_EINVAL), CUDA not built in
 * (KL_EUNSUPPORTED) or an unavailable GPU (KL_EDEVICE). */
KL_API kl_status kl_ctx_new(const kl_ctx_opts *opts, kl_ctx **out);
/* Frees the context and its parameters. Graphs go first; one still alive
 * keeps the context until the last of them is freed. */
KL_API void kl_ctx_free(kl_ctx *ctx);
KL_API kl_status kl_ctx_set_threads(kl_ctx *ctx, int threads);
KL_API int kl_ctx_threads(const kl_ctx *ctx);
KL_API kl_device kl_ctx_device(const kl_ctx *ctx);

/* Parameters and buffers of a context, in creation order. */
KL_API int kl_ctx_param_count(const kl_ctx *ctx);
/* Name, dtype, shape and kind (trainable: 1, buffer: 0); pointers borrowed. */
KL_API kl_status kl_ctx_param_info(const kl_ctx *ctx, int i, const char **name, kl_dtype *dt,
                                   int *ndim, int64_t dims[KL_MAX_DIMS], int *trainable);
/* Index of the parameter or buffer named name, or -1. */
KL_API int kl_ctx_param_find(const kl_ctx *ctx, const char *name);
/* Copies a parameter's value (or its gradient: zeros before any backward
 * pass) to or from host memory; the byte count must equal the tensor's size. */
KL_API kl_status kl_ctx_param_get(const kl_ctx *ctx, int i, void *dst, size_t bytes);
KL_API kl_status kl_ctx_param_set(kl_ctx *ctx, int i, const void *src, size_t bytes);
KL_API kl_status kl_ctx_grad_get(const kl_ctx *ctx, int i, void *dst, size_t bytes);

/* Creates an empty graph on ctx's device. */
KL_API kl_status kl_graph_new(kl_ctx *ctx, kl_graph **out);
/* Frees the graph, its tensors and its arena. NULL: no-op. */
KL_API void kl_graph_free(kl_graph *g);

/* A tensor whose value the caller sets before each run (kl_tensor_set). */
KL_API kl_status kl_input(kl_graph *g, const char *name, kl_dtype dt, int ndim,
                          const int64_t *dims, kl_tensor **out);

/* A tensor over memory the caller owns, in the ctx's device memory (host
 * memory on the CPU): read and written in place, never copied. data must
 * stay valid, and keep its size, as long as the graph. A dataset kept on
 * the GPU is one (data.h, kl_device_data). */
KL_API kl_status kl_external(kl_graph *g, const char *name, kl_dtype dt, int ndim,
                             const int64_t *dims, void *data, kl_tensor **out);

typedef enum kl_init_kind {
    KL_INIT_DEFAULT = 0, /* kaiming-uniform for ndim >= 2 (PyTorch's Linear/Conv default), zeros for 1-D */
    KL_INIT_ZEROS,
    KL_INIT_ONES,
    KL_INIT_UNIFORM, /* U(-a, a) */
    KL_INIT_NORMAL,  /* N(0, a^2) */
    KL_INIT_KAIMING_UNIFORM, /* U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in = a if a > 0, else prod(dims[1:]) */
    KL_INIT_KIND_COUNT
} kl_init_kind;

typedef struct kl_init {
    kl_init_kind kind;
    double a;
} kl_init;

/* A trainable parameter in ctx, found by name or created (and initialised
 * from ctx's seed) on first use; graphs of one ctx share it. A name that
 * exists with another shape or dtype is KL_EINVAL. init NULL: default. */
KL_API kl_status kl_param(kl_graph *g, const char *name, kl_dtype dt, int ndim,
                          const int64_t *dims, const kl_init *init, kl_tensor **out);
/* Like kl_param but not trained (running statistics, step counters). */
KL_API kl_status kl_buffer(kl_graph *g, const char *name, kl_dtype dt, int ndim,
                           const int64_t *dims, const kl_init *init, kl_tensor **out);

/* Keeps t's value readable after a run (kl_tensor_get). Inputs, parameters
 * and losses passed to kl_backward are kept already. */
KL_API kl_status kl_output(kl_graph *g, kl_tensor *t);

/* Appends the ops computing d(loss)/d(every trainable parameter reached)
 * into the parameters' gradient buffer. loss must be a scalar (one element)
 * of a float dtype. Call at most once per graph. */
KL_API kl_status kl_backward(kl_graph *g, kl_tensor *loss);
/* The gradient of t after kl_backward (NULL if t does not affect the loss). */
KL_API kl_status kl_grad(kl_graph *g, const kl_tensor *t, kl_tensor **out);

typedef struct kl_plan_opts {
    int no_reuse; /* 1: every tensor gets its own arena space (planning off) */
    int check;    /* 1: verify no two live tensors overlap (debug) */
    int measure;  /* 1: only size the plan (kl_graph_stats_get), allocate nothing; runs plan again */
} kl_plan_opts;

/* Plans memory for the graph as it stands (optional: kl_graph_run plans on
 * first use). Re-planning happens only when the graph changed. */
KL_API kl_status kl_graph_plan(kl_graph *g, const kl_plan_opts *opts);
/* Runs every op in order. Fails with the op and tensor named on a kernel
 * error (e.g. an embedding index out of range). */
KL_API kl_status kl_graph_run(kl_graph *g);

/* CUDA graphs: on a CUDA ctx a graph's second run is captured as one CUDA
 * graph, and later runs replay it with a single launch (per-run values such
 * as the step, the learning rate and dropout's counter are read from device
 * memory, so replays see each run's values). Re-captured when the plan or
 * the storage changes. on = 0 runs every kernel eagerly (debugging);
 * KILN_CUDA_GRAPH=0 in the environment does the same for every graph.
 * Profiling runs eagerly. */
KL_API kl_status kl_graph_set_capture(kl_graph *g, int on);
/* 1 if the graph's last run replayed (or captured) a CUDA graph. */
KL_API int kl_graph_captured(const kl_graph *g);

/* Asynchronous read-back: the values of a few scalar tensors after every
 * run, delivered to the host without making it wait for the device. The
 * ring holds `capacity` records (one per run); it is appended to g as a
 * node, so add it after kl_optim_step to see the whole step's values. Owned
 * by g. A run fails (KL_EMISUSE) while the ring holds `capacity` records
 * nobody popped. On the CPU each record is ready when kl_graph_run returns.
 *
 *   kl_tensor *ts[2] = {loss, correct};
 *   kl_readback *rb;  kl_readback_new(g, 2, ts, 64, &rb);
 *   for (...) { kl_graph_run(g); double v[2]; int ready;
 *               while (kl_readback_pop(rb, 0, v, &ready) == KL_OK && ready) log(v); } */
typedef struct kl_readback kl_readback;
KL_API kl_status kl_readback_new(kl_graph *g, int n, kl_tensor *const *ts, int capacity, kl_readback **out);
/* Pops the oldest record into vals[0..n) (as doubles). *ready = 0 when its
 * run has not finished (wait = 0) or no run is pending; wait = 1 blocks
 * until the oldest pending record is ready. Device errors surface here. */
KL_API kl_status kl_readback_pop(kl_readback *rb, int wait, double *vals, int *ready);
/* Records written or pending but not popped yet. */
KL_API int kl_readback_pending(const kl_readback *rb);

typedef struct kl_graph_stats {
    int nodes;            /* ops recorded */
    size_t arena_bytes;   /* planned arena */
    size_t tensor_bytes;  /* sum of all intermediate tensors (what no reuse needs) */
    size_t param_bytes;   /* parameters of the ctx (gradients the same again) */
    uint64_t runs;        /* kl_graph_run calls so far (the dropout stream counter) */
} kl_graph_stats;
KL_API kl_status kl_graph_stats_get(const kl_graph *g, kl_graph_stats *out);
/* Sets the run counter (restoring a checkpoint reproduces dropout masks). */
KL_API kl_status kl_graph_set_runs(kl_graph *g, uint64_t runs);
/* Profiling: while on, each run adds every op's wall time to a per-op
 * total; kl_graph_profile_print prints the totals by op kind, largest first
 * (also on when the environment has KILN_PROFILE=1). */
KL_API kl_status kl_graph_profile(kl_graph *g, int on);
KL_API void kl_graph_profile_print(const kl_graph *g, void *file /* FILE* */);
/* Prints the graph's ops, shapes and arena offsets (debugging). NULL: no-op. */
KL_API void kl_graph_print(const kl_graph *g, void *file /* FILE* */);

/* Copies host data into an input, parameter or buffer (bytes must match).
 * An input may be set before the graph is complete: its value stays while
 * nodes are added. */
KL_API kl_status kl_tensor_set(kl_tensor *t, const void *src, size_t bytes);
/* Copies a tensor's value after a run (outputs, inputs, parameters, gradients). */
KL_API kl_status kl_tensor_get(const kl_tensor *t, void *dst, size_t bytes);
KL_API int kl_tensor_ndim(const kl_tensor *t);
KL_API int64_t kl_tensor_dim(const kl_tensor *t, int axis); /* negative axis counts from the end */
KL_API int64_t kl_tensor_numel(const kl_tensor *t);
KL_API kl_dtype kl_tensor_dtype(const kl_tensor *t);
KL_API const char *kl_tensor_name(const kl_tensor *t);
/* Names a tensor (for messages and printing); copied. */
KL_API kl_status kl_tensor_set_name(kl_tensor *t, const char *name);

#ifdef __cplusplus
}
#endif
#endif
