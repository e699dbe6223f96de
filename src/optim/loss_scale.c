/* Loss scaling: the loss_scale op, through which the backward pass starts
 * from the optimizer's current scale S instead of 1, and the scaler's
 * state for checkpoints. S lives in the optimizer's flags (backend memory),
 * where the update's decision changes it; kernels read it when they run,
 * so a captured graph replays with the S of each run. */
#include "optim/optim_impl.h"
#include "backends/backend.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static kl_status loss_scale_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    if (!kl_is_float(x->dtype) || kl_numel(x) != 1)
        return kl_fail(KL_EINVAL, "loss_scale: '%s' must be a float scalar, got %s", x->name, kl_desc(x));
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    return KL_OK;
}

static kl_status loss_scale_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const loss_scale_attr *a = KL_ATTR_C(t, loss_scale_attr);
    double S = a->mul ? a->opt->flags->scale : 1; /* the CPU's flags are host memory */
    const void *x = kl_data(ex, t->src[0]);
    void *y = kl_data(ex, t);
    if (t->dtype == KL_F64) *(double *)y = *(const double *)x * S;
    else *(float *)y = *(const float *)x * (float)S; /* f32 (16-bit storage is widened) */
    return KL_OK;
}

/* Both forms are linear in x with factor S as far as the gradient goes. */
static kl_status loss_scale_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    loss_scale_attr a = {KL_ATTR_C(t, loss_scale_attr)->opt, 1};
    kl_tensor *dx;
    KL_TRY(kl_node_new(g, KL_OP_loss_scale, 1, &dy, &a, sizeof a, &dx));
    return kl_grad_acc(g, t->src[0], dx);
}

const kl_op_def kl_op_loss_scale = {.name = "loss_scale",
                                    .shape = loss_scale_shape,
                                    .backward = loss_scale_backward,
                                    .retain = kl_optim_retain_node,
                                    .release = kl_optim_release_node,
                                    .fwd = {[KL_BACKEND_CPU] = loss_scale_cpu}};

kl_optim *kl_optim_of_scaled_loss(const kl_tensor *t)
{
    if (!t || t->op != KL_OP_loss_scale || KL_ATTR_C(t, loss_scale_attr)->mul) return NULL;
    return KL_ATTR_C(t, loss_scale_attr)->opt;
}

kl_status kl_optim_scale_loss(kl_graph *g, kl_optim *opt, kl_tensor *loss, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_optim_scale_loss: out is NULL");
    *out = NULL;
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_scale_loss: optimizer is NULL");
    KL_TRY(kl_check_args(g, "kl_optim_scale_loss", 1, &loss));
    if (opt->ctx != g->ctx)
        return kl_fail(KL_EMISUSE, "kl_optim_scale_loss: optimizer and graph belong to different contexts");
    /* refused also without scaling: the call is wrong whichever optimizer makes it */
    if (g->has_backward)
        return kl_fail(KL_EMISUSE, "kl_optim_scale_loss: the graph already has its backward pass (from '%s'), "
                       "which the scale would not reach: scale the loss before kl_backward", g->loss->name);
    if (loss->op == KL_OP_loss_scale) /* scaled twice, the gradients would carry S^2 */
        return kl_fail(KL_EMISUSE, "kl_optim_scale_loss: '%s' is already scaled; pass the unscaled loss", loss->name);
    if (!(opt->o.loss_scale > 0)) {
        *out = loss;
        return KL_OK;
    }
    KL_TRY(kl_optim_ensure_flags(opt)); /* S lives there, also for a graph without kl_optim_step */
    KL_TRY(kl_output(g, loss)); /* readable after the run, as kl_backward makes the loss it starts from */
    loss_scale_attr a = {opt, 0};
    KL_TRY(kl_node_new(g, KL_OP_loss_scale, 1, &loss, &a, sizeof a, out));
    snprintf((*out)->name, sizeof (*out)->name, "%.*s.scaled", (int)sizeof (*out)->name - 8, loss->name);
    return KL_OK;
}

kl_status kl_optim_minimize(kl_graph *g, kl_optim *opt, kl_tensor *loss, kl_tensor **norm)
{
    if (norm) *norm = NULL;
    kl_tensor *l;
    KL_TRY(kl_optim_scale_loss(g, opt, loss, &l));
    KL_TRY(kl_backward(g, l));
    return kl_optim_step(g, opt, norm);
}

kl_status kl_optim_scaler(const kl_optim *opt, double *scale, int64_t *good, int64_t *skipped)
{
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_scaler: optimizer is NULL");
    const kl_optim_flags *f = opt->seen;
    double s0 = opt->o.loss_scale > 0 ? opt->o.loss_scale : 1; /* before the first run */
    if (scale) *scale = f ? f->scale : s0;
    if (good) *good = f ? f->good : 0;
    if (skipped) *skipped = f ? f->skipped : 0;
    return KL_OK;
}

double kl_optim_grad_scale(const kl_optim *opt)
{
    return opt && opt->seen && opt->seen->grad_scale > 0 ? opt->seen->grad_scale : 1;
}

kl_status kl_optim_set_scaler(kl_optim *opt, double scale, int64_t good, int64_t skipped)
{
    if (!opt) return kl_fail(KL_EMISUSE, "kl_optim_set_scaler: optimizer is NULL");
    if (!(scale > 0 && scale <= KL_OPTIM_MAX_SCALE) || good < 0 || skipped < 0)
        return kl_fail(KL_EINVAL, "kl_optim_set_scaler: scale must be in (0, 2^64] and the counts >= 0, got "
                       "%g, %lld, %lld", scale, (long long)good, (long long)skipped);
    KL_TRY(kl_optim_ensure_state(opt));
    /* on a device, each run's decision copies the device's flags over seen:
     * let runs in flight finish before both are set */
    if (opt->flags != opt->seen) KL_TRY(opt->ctx->be->sync());
    kl_optim_flags *f = opt->seen;
    double s = opt->o.loss_scale > 0 ? scale : 1;
    f->scale = s;
    f->good = good;
    f->skipped = skipped;
    if (opt->flags == opt->seen) return KL_OK;
    KL_TRY(opt->ctx->be->h2d(&opt->flags->scale, &s, sizeof s));
    KL_TRY(opt->ctx->be->h2d(&opt->flags->good, &good, sizeof good));
    return opt->ctx->be->h2d(&opt->flags->skipped, &skipped, sizeof skipped);
}
