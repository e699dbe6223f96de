/* libFuzzer target: the IDX parser must reject any bad input cleanly. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kiln/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kl_idx *a = NULL;
    if (kl_idx_parse_mem(data, size, "fuzz.idx", &a) != KL_OK) {
        if (a || !kl_last_error()[0]) __builtin_trap(); /* NULL *out and a message */
        return 0;
    }
    /* Touch every element and the metadata a loader would use. */
    double sum = 0;
    int64_t n = kl_idx_count(a), prod = 1;
    int zero = 0;
    for (int i = 0; i < kl_idx_ndim(a); i++) zero |= kl_idx_dims(a)[i] == 0;
    for (int i = 0; i < kl_idx_ndim(a) && !zero; i++) prod *= kl_idx_dims(a)[i]; /* <= size */
    if (zero ? n != 0 : prod != n) __builtin_trap();
    for (int64_t i = 0; i < n; i++) sum += kl_idx_get(a, i);
    (void)sum;
    kl_idx_free(a);
    return 0;
}
