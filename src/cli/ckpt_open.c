/* Opening a checkpoint for kiln eval, predict and bench. */
#include "cli/ckpt_open.h"
#include "cli/evaluator.h"
#include "core/error.h"
#include "io/checkpoint.h"

#include <stdio.h>

void loaded_free(loaded *l)
{
    kl_ctx_free(l->ctx);
    kl_model_free(l->model);
    kl_cfg_free(l->cfg);
    l->ctx = NULL, l->model = NULL, l->cfg = NULL;
}

kl_status open_ckpt(const char *path, const char **sets, int nsets, const char *device, loaded *l)
{
    kl_device dev = {KL_DEVICE_CPU, 0};
    char note[256];
    if (device) KL_TRY(train_pick_device(device, &dev, note, sizeof note));
    char *dir = l->dir, cfgp[4200];
    kl_train_state st;
    kl_cfg_node *model;
    KL_TRY(kl_checkpoint_resolve(path, dir, sizeof l->dir));
    snprintf(cfgp, sizeof cfgp, "%s/config.yaml", dir);
    KL_TRY(kl_cfg_load(cfgp, &l->cfg));
    for (int i = 0; i < nsets; i++) KL_TRY(kl_cfg_set(l->cfg, sets[i]));
    KL_TRY(train_opts_read(l->cfg, &l->o));
    KL_TRY(kl_cfg_get_map(kl_cfg_root(l->cfg), "model", 1, &model));
    KL_TRY(kl_model_from_cfg(model, &l->model));
    KL_TRY(kl_model_set_precision(l->model, l->o.precision)); /* evaluated as it trained (bf16, f16) */
    kl_ctx_opts co = {.device = dev, .seed = l->o.seed, .threads = (int)l->o.threads, .no_init = 1};
    KL_TRY(kl_ctx_new(&co, &l->ctx));
    step_graph sg = {0}; /* creates the parameters, then the checkpoint fills them */
    kl_status s = step_graph_build(&sg, l->model, l->ctx, NULL, 1);
    step_graph_free(&sg);
    KL_TRY(s);
    return kl_checkpoint_load(dir, l->ctx, NULL, &st, NULL);
}
