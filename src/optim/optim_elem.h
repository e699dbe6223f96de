/* Optimizer updates for one element, shared by the CPU loop and the CUDA
 * kernel. kind (kl_optim_kind) is passed as a constant by callers so each
 * kind's loop is specialised and vectorised. Semantics follow torch.optim (SGD dampening 0; Adam's L2 decay is
 * added to the gradient; AdamW decays the weight directly). */
#ifndef KL_OPTIM_ELEM_H
#define KL_OPTIM_ELEM_H

#include "core/philox.h" /* KL_HD */
#ifdef __CUDACC__
#include <cmath>
#else
#include <tgmath.h>
#endif

typedef struct kl_optim_hp {
    double lr, momentum, weight_decay, beta1, beta2, eps;
    int nesterov;
    int first;       /* first SGD step: momentum buffer starts as the gradient */
    double bc1, bc2; /* Adam bias corrections 1 - beta^t */
    double gscale;   /* gradient clipping factor (1: none) */
    /* gradient accumulation (kl_optim_opts.accumulate): acc_first, this run
     * starts a cycle (the accumulator holds nothing yet); acc_apply, this
     * run ends it and updates with the mean gradient, (acc + g) * acc_scale
     * (formed in the accumulator first), else it only adds g to it. Without accumulation every
     * run is first and applies with scale 1. */
    int acc_first, acc_apply;
    double acc_scale;
} kl_optim_hp;

/* The accumulator after a run with gradient g: inside a cycle the sum so
 * far, at the end of a cycle of several runs their mean (which the update
 * then reads instead of g; a cycle of one run updates from g itself). */
#define KL_OPTIM_ACCUMULATE(T, h, g, acc)                                                          \
    (((h)->acc_first ? (g) : (acc) + (g)) * (T)((h)->acc_apply ? (h)->acc_scale : 1.0))

#define KL_DEF_OPTIM_ELEM(T)                                                                       \
    KL_HD static inline void kl_optim_elem_##T(const kl_optim_hp *h, int kind, T *p, T g, T *m, T *v) \
    {                                                                                              \
        g *= (T)h->gscale;                                                                         \
        if (kind == 0) { /* SGD */                                                                  \
            g += (T)h->weight_decay * *p;                                                          \
            if (h->momentum != 0) {                                                                \
                *m = h->first ? g : (T)h->momentum * *m + g;                                       \
                g = h->nesterov ? g + (T)h->momentum * *m : *m;                                    \
            }                                                                                      \
            *p -= (T)h->lr * g;                                                                    \
            return;                                                                                \
        }                                                                                          \
        if (kind == 1) g += (T)h->weight_decay * *p;                                               \
        else *p *= (T)(1 - h->lr * h->weight_decay);                                               \
        *m = (T)h->beta1 * *m + (T)(1 - h->beta1) * g;                                             \
        *v = (T)h->beta2 * *v + (T)(1 - h->beta2) * g * g;                                         \
        T denom = sqrt(*v) / (T)sqrt(h->bc2) + (T)h->eps;                                          \
        *p -= (T)(h->lr / h->bc1) * *m / denom;                                                    \
    }
KL_DEF_OPTIM_ELEM(float)
KL_DEF_OPTIM_ELEM(double)

/* What a run's update does, decided once per run (on a GPU by a one-thread
 * kernel that the update kernels then read). */
typedef struct kl_optim_flags {
    double gscale; /* clipping factor */
    double norm;   /* global gradient norm before clipping (0: not computed) */
    int apply;     /* 0: skip this update */
    int halted;    /* sticky: a non-finite loss or norm was seen */
    int acc_bad;   /* an accumulating run of this cycle had a non-finite loss */
} kl_optim_flags;

/* From the run's hyperparameters, the loss, the sum of squares ss of the
 * gradients the update would use (when have_ss) and the clipping bound (0:
 * none): the update's flags. A non-finite loss or norm halts the optimizer;
 * a halted one applies nothing. A run that only accumulates applies nothing
 * either (it adds its gradient to the accumulator unless halted), and a
 * non-finite loss in it halts the optimizer at its cycle's end. */
KL_HD static inline void kl_optim_decide(const kl_optim_hp *h, double loss, int have_ss, double ss, double max_norm,
                                         kl_optim_flags *f)
{
    if (!h->acc_apply) {
        if (h->acc_first) f->acc_bad = 0;
        if (!isfinite(loss)) f->acc_bad = 1;
        f->norm = 0;
        f->apply = 0;
        f->gscale = 1;
        return;
    }
    if (!h->acc_first && f->acc_bad) loss = NAN;
    f->acc_bad = 0;
    double norm = have_ss ? sqrt(ss) : 0;
    f->norm = norm;
    if (!isfinite(loss) || !isfinite(norm)) f->halted = 1;
    f->apply = !f->halted;
    f->gscale = max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1;
}

#endif
