/* Whole-file reads, transparently gunzipping gzip files. */
#include "data/dataset.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
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

/* gzip's trailer ends with the uncompressed size mod 2^32 (ISIZE, little
 * endian): allocating that (plus a read's worth) up front saves the
 * doubling's copies of a large file. A hint only: 0 when unreadable. */
static size_t gzip_size_hint(FILE *f)
{
    unsigned char t[4];
    if (fseek(f, -4, SEEK_END) != 0 || fread(t, 1, 4, f) != 4) return 0;
    return (size_t)t[0] | (size_t)t[1] << 8 | (size_t)t[2] << 16 | (size_t)t[3] << 24;
}

static kl_status read_gzip(const char *path, size_t hint, unsigned char **buf, size_t *n)
{
    gzFile gz = gzopen(path, "rb");
    if (!gz) return kl_fail(KL_EIO, "%s: cannot open: %s", path, strerror(errno));
    gzbuffer(gz, 1 << 17);
    size_t len = 0, cap = 0;
    unsigned char *b = NULL;
    kl_status s = hint ? reserve(&b, &cap, hint + (1 << 20)) : KL_OK;
    while (s == KL_OK) {
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
    if (!path) return kl_fail(KL_EMISUSE, "read_file: path is NULL");
    FILE *f = fopen(path, "rb");
    if (!f) return kl_fail(KL_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return kl_fail(KL_EIO, "%s: is a directory, expected a file", path);
    }
    unsigned char magic[2] = {0, 0};
    size_t got = fread(magic, 1, 2, f);
    if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
        size_t hint = gzip_size_hint(f);
        fclose(f);
        return read_gzip(path, hint, buf, n);
    }
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    rewind(f);
    size_t len = 0, cap = 0;
    unsigned char *b = NULL;
    kl_status s = size > 0 ? reserve(&b, &cap, (size_t)size + (1 << 20)) : KL_OK;
    while (s == KL_OK) {
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
