/* Optimizer internals shared by the CPU update (optim.c) and the CUDA one
 * (src/backends/cuda/optim.cu). The state lives in the ctx backend's memory
 * (device memory on CUDA) in the layout of the flat parameter buffer. */
#ifndef KL_OPTIM_IMPL_H
#define KL_OPTIM_IMPL_H

#include "core/graph.h"
#include "optim/optim_elem.h"

#include <stdbool.h>

struct kl_optim {
    kl_ctx *ctx;
    const struct kl_backend *be; /* ctx->be, kept for kl_optim_free */
    kl_optim_opts o;
    int64_t steps;
    unsigned char *m, *v; /* backend memory, zero-initialised; v only for Adam */
    unsigned char *acc;   /* gradient accumulator (o.accumulate > 1), backend memory */
    size_t bytes;
    int64_t micro;        /* runs accumulated in the current cycle */
    bool end_cycle;       /* kl_optim_end_cycle: the next run applies */
    bool mean_in_acc;     /* the last update read its cycle's mean from acc (not the ctx's gradients) */
    double run_weight;    /* kl_optim_set_run_weight: the next runs' weight in their cycle's mean */
    double acc_wsum;      /* the current cycle's summed weights */
    /* Non-CPU backends: host copies handed out by kl_optim_state (for
     * checkpoints); host_out[k] says copy k may have been written and is
     * uploaded before the next update. */
    unsigned char *host[2];
    size_t host_bytes;
    bool host_out[2];
    /* The last update's flags (optim_elem.h): flags in the backend's memory,
     * written by the update; seen, a copy the host can read (mapped pinned
     * memory on CUDA; the same memory on the CPU), seen_dev as kernels see it. */
    kl_optim_flags *flags, *seen, *seen_dev;
    int users;    /* graph nodes using it (optim, loss_scale: their retain/release) */
    bool closing; /* kl_optim_free came while nodes used it: the last release frees it */
};

/* Whether weight decay applies to a parameter of ndim dims. */
static inline bool kl_optim_decays(const kl_optim_opts *o, int ndim) { return !(o->no_decay_1d && ndim < 2); }

/* The optim and loss_scale ops' retain and release hooks. */
void kl_optim_retain_node(const kl_tensor *t);
void kl_optim_release_node(const kl_tensor *t);

/* The optim op's attribute: the optimizer it runs. Sources: the loss. Value:
 * the gradient norm (f64). Per-run values: the kl_optim_hp of the update. */
typedef struct { kl_optim *opt; } optim_attr; /* first in loss_scale_attr too (the retain hooks) */

/* Grows the state to cover every parameter of the ctx (new ones start at 0);
 * allocates the flags on first use. */
kl_status kl_optim_ensure_state(kl_optim *opt);
/* Only the flags (the loss scale a kl_optim_scale_loss node reads). */
kl_status kl_optim_ensure_flags(kl_optim *opt);
/* Hyperparameters of the next update (number opt->steps + 1); gscale = 1;
 * first, bc1 and bc2 come from the run's decision (kl_optim_hp_apply). */
kl_optim_hp kl_optim_hparams(const kl_optim *opt);
/* The loss_scale op's attribute (optim/loss_scale.c). mul = 0: the node on
 * the loss, y = x, whose gradient is S dy; mul = 1: that gradient, y = S x;
 * S is opt's current loss scale. */
typedef struct { kl_optim *opt; int mul; } loss_scale_attr;
/* The optimizer whose kl_optim_scale_loss node t is; NULL when t is not one. */
kl_optim *kl_optim_of_scaled_loss(const kl_tensor *t);
/* Whether the update computes the global gradient norm: for clipping, and
 * for the non-finite guard with accumulation or loss scaling. */
static inline bool kl_optim_needs_norm(const kl_optim_opts *o)
{
    return o->max_grad_norm > 0 || o->accumulate > 1 || o->loss_scale > 0;
}
/* Uploads host copies handed out by kl_optim_state (non-CPU backends). */
kl_status kl_optim_upload_host_state(kl_optim *opt);

#endif
