/* libFuzzer target: CSV parsing under every option combination. The first
 * byte picks the options; the rest is the file. */
#include <stddef.h>
#include <stdint.h>

#include "kiln/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const char delims[4] = {',', ';', '\t', ' '};
    kl_csv_opts o = {.label_col = (data[0] & 3) - 2, /* -2, -1, 0, 1 */
                     .header = ((data[0] >> 2) & 3) % 3 - 1,
                     .delim = delims[(data[0] >> 4) & 3]};
    kl_dataset *ds = NULL;
    if (kl_dataset_parse_csv_mem(data + 1, size - 1, "fuzz.csv", &o, &ds) != KL_OK) {
        if (ds || !kl_last_error()[0]) __builtin_trap(); /* NULL *out and a message */
        return 0;
    }
    int64_t n = kl_dataset_count(ds), m = kl_dataset_sample_size(ds);
    const float *x = kl_dataset_features(ds);
    double sum = 0;
    for (int64_t i = 0; i < n * m; i++) sum += x[i];
    (void)sum;
    if (kl_dataset_labels(ds)) kl_dataset_check_labels(ds, 3);
    kl_dataset_free(ds);
    return 0;
}
