#include "accum_case.h"
#include "testutil.h"

#include <math.h>
#include <string.h>

enum { IN = 6, HID = 5, OUT = 4, TABLE = 24 };

/* Row i of the table: features and a label that depends on them. */
static void table_row(int i, double *x, int32_t *y)
{
    for (int k = 0; k < IN; k++) x[k] = 1.5 * sin(0.9 * i + 0.4 * k + 0.3) + 0.1 * k;
    *y = (int32_t)((x[0] > 0) + 2 * (x[1] > x[2]));
}

/* Sets the x tensor (of dtype dt) to rows [first, first + n). */
static kl_status set_rows(kl_tensor *tx, kl_tensor *ty, kl_dtype dt, int first, int n, int poison)
{
    double xd[TABLE * IN];
    float xf[TABLE * IN];
    int32_t y[TABLE];
    for (int r = 0; r < n; r++) table_row(first + r, xd + r * IN, y + r);
    if (poison) xd[0] = NAN;
    for (int i = 0; i < n * IN; i++) xf[i] = (float)xd[i];
    TRY(dt == KL_F64 ? kl_tensor_set(tx, xd, (size_t)(n * IN) * sizeof *xd) : kl_tensor_set(tx, xf, (size_t)(n * IN) * sizeof *xf));
    return kl_tensor_set(ty, y, (size_t)n * sizeof *y);
}

/* The parameters w1 b1 w2 b2 (ctx slots 0..3) into out; grads: instead the
 * gradients the last update used. */
static kl_status get_params(kl_tensor **p, const kl_optim *opt, kl_dtype dt, double *out)
{
    int64_t at = 0;
    for (int k = 0; k < 4; k++) {
        int64_t n = kl_tensor_numel(p[k]);
        double d[IN * HID];
        float f[IN * HID];
        void *v = dt == KL_F64 ? (void *)d : (void *)f;
        size_t bytes = (size_t)n * (dt == KL_F64 ? sizeof *d : sizeof *f);
        TRY(opt ? kl_optim_grad_get(opt, k, v, bytes) : kl_tensor_get(p[k], v, bytes));
        for (int64_t i = 0; i < n; i++) out[at++] = dt == KL_F64 ? d[i] : f[i];
    }
    return KL_OK;
}

typedef struct { kl_tensor *x, *y, *p[4], *norm; } net;

/* The net on `rows` rows in g; the first build makes the optimizer, a
 * second shares it and the parameters (as kiln train's partial batch). */
static kl_status build(accum_case *c, kl_ctx *ctx, kl_graph *g, int rows, kl_optim **opt, net *n)
{
    kl_tensor *h, *lg, *loss;
    TRY(kl_input(g, "x", c->dt, 2, (int64_t[]){rows, IN}, &n->x));
    TRY(kl_input(g, "y", KL_I32, 1, (int64_t[]){rows}, &n->y));
    TRY(kl_param(g, "w1", c->dt, 2, (int64_t[]){HID, IN}, NULL, &n->p[0]));
    TRY(kl_param(g, "b1", c->dt, 1, (int64_t[]){HID}, NULL, &n->p[1]));
    TRY(kl_param(g, "w2", c->dt, 2, (int64_t[]){OUT, HID}, NULL, &n->p[2]));
    TRY(kl_param(g, "b2", c->dt, 1, (int64_t[]){OUT}, NULL, &n->p[3]));
    TRY(kl_linear(g, n->x, n->p[0], n->p[1], KL_ACT_TANH, &h));
    TRY(kl_linear(g, h, n->p[2], n->p[3], KL_ACT_NONE, &lg));
    TRY(kl_softmax_cross_entropy(g, lg, n->y, &loss));
    TRY(kl_backward(g, loss));
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAM, .lr = 0.05, .max_grad_norm = 0.3, .accumulate = c->accumulate};
    if (!*opt) TRY(kl_optim_new(ctx, &oo, opt));
    TRY(kl_optim_step(g, *opt, &n->norm));
    return kl_output(g, n->norm);
}

static kl_status run(accum_case *c, kl_ctx *ctx, kl_graph *g, kl_graph *g2, kl_optim **opt)
{
    net a, b;
    TRY(build(c, ctx, g, c->rows, opt, &a));
    if (c->last_rows) TRY(build(c, ctx, g2, c->last_rows, opt, &b));
    TRY(get_params(a.p, NULL, c->dt, c->init));
    int at = 0;
    for (int j = 0; j < c->runs; j++) {
        int last = c->last_rows && j + 1 == c->runs, rows = last ? c->last_rows : c->rows;
        net *n = last ? &b : &a;
        if (j == c->end_cycle_at) TRY(kl_optim_end_cycle(*opt));
        if (c->weighted) TRY(kl_optim_set_run_weight(*opt, (double)rows / c->rows));
        TRY(set_rows(n->x, n->y, c->dt, at, rows, j == c->nan_run));
        TRY(kl_graph_run(last ? g2 : g));
        TRY(kl_tensor_get(n->norm, &c->norm[j], sizeof c->norm[j]));
        at += rows;
    }
    TRY(get_params(a.p, NULL, c->dt, c->params));
    c->steps = kl_optim_steps(*opt);
    c->pending = kl_optim_pending(*opt);
    c->halted = kl_optim_halted(*opt);
    c->grads_status = get_params(a.p, *opt, c->dt, c->grads);
    if (!c->pending) TRY(c->grads_status);
    return KL_OK;
}

kl_status accum_case_run(accum_case *c)
{
    if (c->runs > ACCUM_CASE_MAX_RUNS || c->rows * c->runs > TABLE || c->last_rows > c->rows)
        return KL_EINVAL;
    kl_ctx_opts co = {.device = c->dev, .seed = 11};
    kl_ctx *ctx;
    kl_graph *g = NULL, *g2 = NULL;
    kl_optim *opt = NULL;
    TRY(kl_ctx_new(&co, &ctx));
    kl_status s = kl_graph_new(ctx, &g);
    if (s == KL_OK) s = kl_graph_new(ctx, &g2);
    if (s == KL_OK) s = run(c, ctx, g, g2, &opt);
    kl_graph_free(g2);
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
    return s;
}
