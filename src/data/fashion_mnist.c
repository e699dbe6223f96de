/* Locating the Fashion-MNIST files of Debian's dataset-fashion-mnist. */
#include "kiln/data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"

#define KL_FASHION_DIR "/usr/share/datasets/fashion-mnist"

/* Finds dir/base.gz or dir/base and writes it to out. */
static kl_status find(const char *dir, const char *base, char *out, size_t n)
{
    const char *ext[2] = {".gz", ""};
    for (int i = 0; i < 2; i++) {
        int len = snprintf(out, n, "%s/%s%s", dir, base, ext[i]);
        if (len < 0 || (size_t)len >= n)
            return kl_fail(KL_EINVAL, "fashion_mnist_paths: %zu-byte buffer too small for %s/%s%s",
                           n, dir, base, ext[i]);
        if (access(out, R_OK) == 0) return KL_OK;
    }
    return kl_fail(KL_EIO, "Fashion-MNIST not found: no readable %s/%s.gz (or %s); install it with "
                   "'apt-get install dataset-fashion-mnist' or set KILN_DATA_DIR to a folder "
                   "holding the IDX files", dir, base, base);
}

kl_status kl_fashion_mnist_paths(const char *split, char *images, char *labels, size_t n)
{
    if (!split || !images || !labels) return kl_fail(KL_EMISUSE, "fashion_mnist_paths: NULL argument");
    if (n == 0) return kl_fail(KL_EINVAL, "fashion_mnist_paths: empty buffer");
    const char *prefix;
    if (!strcmp(split, "train")) prefix = "train";
    else if (!strcmp(split, "test")) prefix = "t10k";
    else return kl_fail(KL_EINVAL, "fashion_mnist_paths: split '%s', expected 'train' or 'test'", split);
    const char *dir = getenv("KILN_DATA_DIR");
    if (!dir || !*dir) dir = KL_FASHION_DIR;
    char base[64];
    snprintf(base, sizeof base, "%s-images-idx3-ubyte", prefix);
    KL_TRY(find(dir, base, images, n));
    snprintf(base, sizeof base, "%s-labels-idx1-ubyte", prefix);
    return find(dir, base, labels, n);
}
