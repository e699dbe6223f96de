#include "testutil.h"
#include "kiln/kiln.h"
#include "io/config.h"
#include "nn/model.h"

#include <math.h>
#include <stdlib.h>

int kl_test_failures;
int kl_test_checks;

int kl_test_done(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, kl_test_checks,
           kl_test_failures);
    return kl_test_failures ? 1 : 0;
}

float *kl_test_params(kl_ctx *ctx, int64_t *n_out, const char *name_part, double *abs_sum)
{
    float *v = NULL;
    int64_t n_all = 0;
    for (int i = 0; i < kl_ctx_param_count(ctx); i++) {
        const char *name;
        kl_dtype dt;
        int nd, tr;
        int64_t ne[KL_MAX_DIMS], n = 1;
        CHECK_OK(kl_ctx_param_info(ctx, i, &name, &dt, &nd, ne, &tr));
        CHECK(dt == KL_F32);
        for (int d = 0; d < nd; d++) n *= ne[d];
        v = realloc(v, (size_t)(n_all + n) * sizeof *v);
        CHECK_OK(kl_ctx_param_get(ctx, i, v + n_all, (size_t)n * sizeof(float)));
        if (name_part && strstr(name, name_part))
            for (int64_t k = 0; k < n; k++) *abs_sum += fabs(v[n_all + k]);
        n_all += n;
    }
    *n_out = n_all;
    return v;
}

kl_model *kl_test_model(const char *yaml, const char *name)
{
    kl_cfg *cfg = NULL;
    kl_model *m = NULL;
    kl_cfg_node *mn;
    CHECK_OK(kl_cfg_parse(yaml, strlen(yaml), name, &cfg));
    CHECK_OK(kl_cfg_get_map(kl_cfg_root(cfg), "model", 1, &mn));
    CHECK_OK(kl_model_from_cfg(mn, &m));
    kl_cfg_free(cfg);
    return m;
}
