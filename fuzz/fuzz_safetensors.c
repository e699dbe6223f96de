/* libFuzzer target: kl_st_open_mem on arbitrary bytes must never crash,
 * leak or hit UB; an accepted file must serve every tensor consistently. */
#include "kiln/io.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static volatile unsigned g_sink; /* keeps the data reads */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kl_st_file *f;
    if (kl_st_open_mem(data, size, "fuzz.safetensors", &f) != KL_OK) {
        if (f != NULL || kl_last_error()[0] == 0) abort();
        return 0;
    }
    size_t total = 0;
    unsigned sum = 0;
    for (int i = 0; i < kl_st_count(f); i++) {
        const char *name;
        kl_dtype dt;
        int ndim;
        int64_t dims[KL_MAX_DIMS];
        if (kl_st_info(f, i, &name, &dt, &ndim, dims) != KL_OK) abort();
        if (kl_st_find(f, name) != i) abort(); /* names are unique */
        size_t nb, want = kl_dtype_size(dt);
        for (int d = 0; d < ndim; d++) want *= (size_t)dims[d];
        const unsigned char *p = kl_st_data(f, i, &nb);
        if (!p || nb != want) abort();
        for (size_t k = 0; k < nb; k++) sum += p[k]; /* ASan checks the range */
        total += nb;
    }
    if (total > size) abort();
    (void)kl_st_meta(f, "format");
    if (kl_st_info(f, kl_st_count(f), NULL, NULL, NULL, NULL) == KL_OK) abort();
    kl_st_close(f);
    g_sink = sum;
    return 0;
}
