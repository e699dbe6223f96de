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
    /* Set from the flags by kl_optim_hp_apply once the run's update is
     * decided (t counts applied updates, which the host cannot know ahead
     * on a GPU): */
    int first;       /* first SGD step: momentum buffer starts as the gradient */
    double bc1, bc2; /* Adam bias corrections 1 - beta^t */
    double gscale;   /* factor on the gradients: clipping over the loss scale (1: neither) */
    /* Constant over runs: the clipping bound (0: none); loss scaling
     * (kl_optim_opts.loss_scale > 0; scale_window > 0: dynamic) */
    double max_norm;
    int loss_scaled;
    int64_t scale_window;
    int64_t step;    /* this cycle's number, from 1 (skipped updates included) */
    /* gradient accumulation (kl_optim_opts.accumulate): acc_first, this run
     * starts a cycle (the accumulator holds nothing yet); acc_apply, this
     * run ends it and updates with the weighted mean gradient,
     * (acc + g * acc_weight) * acc_scale (formed in the accumulator first;
     * acc_scale = 1 / the cycle's summed weights), else it only adds
     * g * acc_weight to it. The weight is the run's rows over a full
     * batch's (1.0 but for a partial batch), so the mean is over samples.
     * Without accumulation every run is first and applies with scale 1. */
    int acc_first, acc_apply;
    double acc_scale, acc_weight;
} kl_optim_hp;

/* The accumulator after a run with gradient g: inside a cycle the weighted
 * sum so far, at the end of a cycle of several runs their weighted mean
 * (which the update then reads instead of g; a cycle of one run updates
 * from g itself). A weight of 1 multiplies exactly. */
#define KL_OPTIM_ACCUMULATE(T, h, g, acc)                                                          \
    (((h)->acc_first ? (g) * (T)(h)->acc_weight : (acc) + (g) * (T)(h)->acc_weight) *             \
     (T)((h)->acc_apply ? (h)->acc_scale : 1.0))

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
 * kernel that the update kernels then read), and the loss scaler's state,
 * which lives with it so that it changes on the device. */
typedef struct kl_optim_flags {
    double gscale;   /* kl_optim_hp.gscale */
    double norm;     /* global gradient norm, unscaled, before clipping (0: not computed) */
    double scale;    /* loss scale (kl_optim_scale_loss): the next backward starts from it; 1 without scaling */
    double grad_scale; /* the scale this run's gradients carry (its backward's) */
    double bc1, bc2; /* kl_optim_hp.bc1, bc2 of this update */
    int64_t good;    /* dynamic scaling: updates applied in a row since the scale last changed */
    int64_t skipped; /* updating runs that applied nothing (overflow or halted): Adam's t = step - skipped */
    int apply;       /* 0: skip this update */
    int first;       /* kl_optim_hp.first */
    int halted;      /* sticky: a non-finite loss or norm was seen */
    int acc_bad;     /* an accumulating run of this cycle had a non-finite loss */
    int acc_void;    /* a run of this cycle failed (kl_optim_failed): its end skips */
    int overflow;    /* dynamic scaling: this run's scaled gradients were not finite (skipped; scale halved) */
} kl_optim_flags;

/* The smallest loss scale halving goes down to (2^-24), and the largest a
 * scale may be or double up to (2^64: kernels scale in float, and no f16
 * gradient needs more). */
#define KL_OPTIM_MIN_SCALE 5.9604644775390625e-08
#define KL_OPTIM_MAX_SCALE 18446744073709551616.0

/* From the run's hyperparameters, the loss, the sum of squares ss of the
 * gradients the update would use (when have_ss; scaled when loss scaling):
 * the update's flags. A non-finite loss halts the optimizer, and so does a
 * non-finite norm unless the scale is dynamic: then the scaled gradients
 * overflowed, the update is skipped and the scale halved; scale_window
 * applied updates in a row double it. A halted optimizer applies nothing.
 * A run that only accumulates applies nothing either (it adds its gradient
 * to the accumulator unless halted), and a non-finite loss in it halts the
 * optimizer at its cycle's end. */
KL_HD static inline void kl_optim_decide(const kl_optim_hp *h, double loss, int have_ss, double ss, kl_optim_flags *f)
{
    f->overflow = 0;
    f->grad_scale = h->loss_scaled ? f->scale : 1;
    if (!h->acc_apply) {
        if (h->acc_first) f->acc_bad = f->acc_void = 0;
        if (!isfinite(loss)) f->acc_bad = 1;
        f->norm = 0;
        f->apply = 0;
        f->gscale = 1;
        return;
    }
    int cycle_void = !h->acc_first && f->acc_void;
    if (!h->acc_first && f->acc_bad) loss = NAN;
    f->acc_bad = f->acc_void = 0;
    if (cycle_void) { /* a failed run's gradient is missing from the mean: skip it all */
        f->norm = 0;
        f->apply = 0;
        f->gscale = 1;
        f->skipped++;
        return;
    }
    double S = h->loss_scaled ? f->scale : 1;
    double norm = have_ss ? sqrt(ss) / S : 0;
    f->norm = norm;
    if (!isfinite(loss)) f->halted = 1;
    else if (!isfinite(norm)) {
        if (h->scale_window > 0) f->overflow = !f->halted;
        else f->halted = 1;
    }
    f->apply = !f->halted && !f->overflow;
    double clip = h->max_norm > 0 && norm > h->max_norm ? h->max_norm / (norm + 1e-6) : 1;
    f->gscale = clip / S;
    if (f->overflow) {
        f->scale = f->scale * 0.5 > KL_OPTIM_MIN_SCALE ? f->scale * 0.5 : KL_OPTIM_MIN_SCALE;
        f->good = 0;
    } else if (f->apply && h->scale_window > 0 && ++f->good >= h->scale_window) {
        f->scale = f->scale * 2 < KL_OPTIM_MAX_SCALE ? f->scale * 2 : KL_OPTIM_MAX_SCALE;
        f->good = 0;
    }
    if (!f->apply) {
        f->skipped++;
        return;
    }
    double t = (double)(h->step - f->skipped);
    if (t < 1) t = 1; /* kl_optim_set_steps below the skipped count: restart, never pow(beta, t <= 0) / 0 */
    f->first = t == 1;
    f->bc1 = 1 - pow(h->beta1, t);
    f->bc2 = 1 - pow(h->beta2, t);
}

/* In place of kl_optim_decide for a run that failed (a label or index out
 * of range: the CPU stopped before the update, a GPU's kernels ran on):
 * nothing is applied and the scaler and halt stay. Ending a cycle, the
 * update counts as skipped (Adam's t does not advance); inside one, the
 * cycle is marked void, and its end skips. */
KL_HD static inline void kl_optim_failed(const kl_optim_hp *h, kl_optim_flags *f)
{
    f->overflow = 0;
    f->norm = 0;
    f->apply = 0;
    f->gscale = 1;
    if (!h->acc_apply) {
        if (h->acc_first) f->acc_bad = 0;
        f->acc_void = 1;
        return;
    }
    f->acc_bad = f->acc_void = 0;
    f->skipped++;
}

/* The decided values into the hyperparameters the update kernels use. */
KL_HD static inline void kl_optim_hp_apply(kl_optim_hp *h, const kl_optim_flags *f)
{
    h->gscale = f->gscale;
    h->first = f->first;
    h->bc1 = f->bc1;
    h->bc2 = f->bc2;
}

#endif
