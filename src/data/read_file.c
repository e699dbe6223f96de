/* Whole-file reads, transparently gunzipping gzip files. */
#include "data/dataset.h"

#include <errno.h>
#include <string.h>
#include <zlib.h>

#include "core/error.h"

/* Grows *buf so that it holds at least need bytes; doubles to amortise. */
static kl_status reserve(unsigned char **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return KL_OK;
    size_t c = *cap ? *cap : 1 << 16;
    while (c < need) {
        if (c > SIZE_MAX / 2) return kl_fail(KL_ENOMEM, "file too large for memory");
        c *= 2;
    }
    unsigned char *p = kl_realloc(*buf, c);
    if (!p) return KL_ENOMEM;
    *buf = p;
    *cap = c;
    return KL_OK;
}

static kl_status read_gzip(const char *path, unsigned char **buf, size_t *n)
{
    gzFile gz = gzopen(path, "rb");
    if (!gz) return kl_fail(KL_EIO, "%s: cannot open: %s", path, strerror(errno));
    gzbuffer(gz, 1 << 17);
    size_t len = 0, cap = 0;
    unsigned char *b = NULL;
    kl_status s = KL_OK;
    for (;;) {
        if ((s = reserve(&b, &cap, len + (1 << 20))) != KL_OK) break;
        int r = gzread(gz, b + len, 1 << 20);
        int err;
        const char *msg = gzerror(gz, &err);
        if (r < 0 || (err != Z_OK && err != Z_STREAM_END)) {
            s = kl_fail(err == Z_ERRNO ? KL_EIO : KL_EFORMAT, "%s: bad gzip data: %s",
                        path, err == Z_ERRNO ? strerror(errno) : msg);
            break;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    gzclose(gz);
    if (s != KL_OK) {
        kl_free(b);
        return s;
    }
    *buf = b;
    *n = len;
    return KL_OK;
}

kl_status kl_read_file(const char *path, unsigned char **buf, size_t *n)
{
    *buf = NULL;
    *n = 0;
    if (!path) return kl_fail(KL_EINVAL, "read_file: path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f) return kl_fail(KL_EIO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char magic[2] = {0, 0};
    size_t got = fread(magic, 1, 2, f);
    if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
        fclose(f);
        return read_gzip(path, buf, n);
    }
    rewind(f);
    size_t len = 0, cap = 0;
    unsigned char *b = NULL;
    kl_status s = KL_OK;
    for (;;) {
        if ((s = reserve(&b, &cap, len + (1 << 20))) != KL_OK) break;
        size_t r = fread(b + len, 1, 1 << 20, f);
        len += r;
        if (r < (1 << 20)) {
            if (ferror(f)) s = kl_fail(KL_EIO, "%s: read failed: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (s != KL_OK) {
        kl_free(b);
        return s;
    }
    *buf = b;
    *n = len;
    return KL_OK;
}
