#include "testutil.h"
#include "kiln/kiln.h"

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
