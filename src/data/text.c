/* Text corpora, character vocabularies, token files, random windows. */
#include "kiln/text.h"
#include "core/error.h"
#include "core/philox.h"
#include "io/fileio.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct kl_text { uint8_t *data; size_t n; };
struct kl_vocab { int n; uint8_t bytes[256]; int16_t id[256]; };
struct kl_tokens { int32_t *tok; int64_t n; int vocab; };

static kl_status append_file(kl_text *t, const char *path)
{
    void *buf;
    size_t n;
    KL_TRY(kl_read_file_raw(path, &buf, &n));
    uint8_t *d = kl_realloc(t->data, t->n + n + 1);
    if (!d) {
        kl_free(buf);
        return KL_ENOMEM;
    }
    memcpy(d + t->n, buf, n);
    t->data = d;
    t->n += n;
    kl_free(buf);
    return KL_OK;
}

/* A NULL pointer where a handle, path or buffer was needed: the caller's
 * bug, reported by function and argument instead of crashing. */
static kl_status null_arg(const char *fn, const char *arg)
{
    return kl_fail(KL_EMISUSE, "%s: %s is NULL", fn, arg);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

kl_status kl_text_load_file(const char *path, kl_text **out)
{
    if (!out) return null_arg("kl_text_load_file", "out");
    *out = NULL;
    if (!path) return null_arg("kl_text_load_file", "path");
    kl_text *t = kl_calloc(1, sizeof *t);
    if (!t) return KL_ENOMEM;
    kl_status s = append_file(t, path);
    if (s == KL_OK && t->n == 0) s = kl_fail(KL_EFORMAT, "%s: empty text file", path);
    if (s != KL_OK) {
        kl_text_free(t);
        return s;
    }
    *out = t;
    return KL_OK;
}

kl_status kl_text_load_dir(const char *dir, kl_text **out)
{
    if (!out) return null_arg("kl_text_load_dir", "out");
    *out = NULL;
    if (!dir) return null_arg("kl_text_load_dir", "dir");
    struct stat st;
    if (stat(dir, &st) != 0) return kl_fail(KL_EIO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return kl_text_load_file(dir, out);
    DIR *d = opendir(dir);
    if (!d) return kl_fail(KL_EIO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **names = NULL;
    int n = 0, cap = 0;
    kl_status s = KL_OK;
    /* files reached twice (fortune's "art.u8 -> art" symlinks, hard links)
     * are read once, by the first name in sort order: a duplicate would put
     * held-out text into the training part */
    struct { dev_t dev; ino_t ino; } *seen = NULL;
    for (struct dirent *e; s == KL_OK && (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || (len > 4 && !strcmp(e->d_name + len - 4, ".dat"))) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nn = kl_realloc(names, (size_t)cap * sizeof *nn);
            if (!nn) { s = KL_ENOMEM; break; }
            names = nn;
            void *ns = kl_realloc(seen, (size_t)cap * sizeof *seen);
            if (!ns) { s = KL_ENOMEM; break; }
            seen = ns;
        }
        if (!(names[n] = kl_strdup(path))) s = KL_ENOMEM;
        else n++;
    }
    closedir(d);
    if (n) qsort(names, (size_t)n, sizeof *names, cmp_str);
    int kept = 0;
    for (int i = 0; i < n && s == KL_OK; i++) { /* drop later names of a file already listed */
        int dup = stat(names[i], &st) != 0;
        for (int j = 0; !dup && j < kept; j++) dup = seen[j].dev == st.st_dev && seen[j].ino == st.st_ino;
        if (dup) {
            kl_free(names[i]);
            continue;
        }
        seen[kept].dev = st.st_dev, seen[kept].ino = st.st_ino;
        names[kept++] = names[i];
    }
    if (s == KL_OK) n = kept;
    kl_free(seen);
    kl_text *t = s == KL_OK ? kl_calloc(1, sizeof *t) : NULL;
    if (s == KL_OK && !t) s = KL_ENOMEM;
    for (int i = 0; i < n && s == KL_OK; i++) s = append_file(t, names[i]);
    if (s == KL_OK && (!t || t->n == 0)) s = kl_fail(KL_EFORMAT, "%s: no text files", dir);
    for (int i = 0; i < n; i++) kl_free(names[i]);
    kl_free(names);
    if (s != KL_OK) {
        kl_text_free(t);
        return s;
    }
    *out = t;
    return KL_OK;
}

const uint8_t *kl_text_data(const kl_text *t) { return t ? t->data : NULL; }
size_t kl_text_size(const kl_text *t) { return t ? t->n : 0; }
void kl_text_free(kl_text *t)
{
    if (!t) return;
    kl_free(t->data);
    kl_free(t);
}

static kl_vocab *vocab_from_mask(const uint8_t *present)
{
    kl_vocab *v = kl_calloc(1, sizeof *v);
    if (!v) return NULL;
    for (int b = 0; b < 256; b++) {
        v->id[b] = -1;
        if (present[b]) {
            v->id[b] = (int16_t)v->n;
            v->bytes[v->n++] = (uint8_t)b;
        }
    }
    return v;
}

kl_status kl_vocab_build(const uint8_t *data, size_t n, kl_vocab **out)
{
    uint8_t present[256] = {0};
    if (!out) return null_arg("kl_vocab_build", "out");
    *out = NULL;
    if (!data && n) return null_arg("kl_vocab_build", "data");
    if (!n) return kl_fail(KL_EINVAL, "vocabulary: empty text");
    for (size_t i = 0; i < n; i++) present[data[i]] = 1;
    return (*out = vocab_from_mask(present)) ? KL_OK : KL_ENOMEM;
}

kl_status kl_vocab_save(const kl_vocab *v, const char *path)
{
    if (!v || !path) return null_arg("kl_vocab_save", v ? "path" : "vocab");
    char buf[256 * 4 + 2];
    size_t k = 0;
    for (int i = 0; i < v->n; i++) k += (size_t)snprintf(buf + k, sizeof buf - k, i ? " %d" : "%d", v->bytes[i]);
    buf[k++] = '\n';
    const void *chunks[1] = {buf};
    return kl_write_file_atomic(path, chunks, &k, 1);
}

kl_status kl_vocab_load(const char *path, kl_vocab **out)
{
    void *buf;
    size_t n;
    if (!out) return null_arg("kl_vocab_load", "out");
    *out = NULL;
    if (!path) return null_arg("kl_vocab_load", "path");
    KL_TRY(kl_read_file_raw(path, &buf, &n));
    uint8_t present[256] = {0};
    char *p = buf, *end;
    kl_status s = KL_OK;
    int count = 0, last = -1;
    while (s == KL_OK) {
        while (*p == ' ' || *p == '\n') p++;
        if (!*p) break;
        long b = strtol(p, &end, 10);
        if (end == p || b < 0 || b > 255 || b <= last)
            s = kl_fail(KL_EFORMAT, "%s: expected increasing byte values 0..255, got '%.10s'", path, p);
        else present[b] = 1, last = (int)b, count++, p = end;
    }
    kl_free(buf);
    if (s == KL_OK && !count) s = kl_fail(KL_EFORMAT, "%s: empty vocabulary", path);
    if (s != KL_OK) return s;
    return (*out = vocab_from_mask(present)) ? KL_OK : KL_ENOMEM;
}

/* A NULL vocabulary is empty: no byte has an id, no id a byte. */
int kl_vocab_size(const kl_vocab *v) { return v ? v->n : 0; }
int kl_vocab_id(const kl_vocab *v, uint8_t b) { return v ? v->id[b] : -1; }
uint8_t kl_vocab_byte(const kl_vocab *v, int id) { return v && id >= 0 && id < v->n ? v->bytes[id] : '?'; }
void kl_vocab_free(kl_vocab *v) { kl_free(v); }

kl_status kl_tokens_encode(const kl_vocab *v, const uint8_t *data, size_t n, kl_tokens **out)
{
    if (!out) return null_arg("kl_tokens_encode", "out");
    *out = NULL;
    if (!v) return null_arg("kl_tokens_encode", "vocab");
    if (!data && n) return null_arg("kl_tokens_encode", "data");
    kl_tokens *t = kl_calloc(1, sizeof *t);
    if (!t || !(t->tok = kl_malloc((n ? n : 1) * sizeof *t->tok))) {
        kl_free(t);
        return KL_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        int id = v->id[data[i]];
        if (id < 0) {
            kl_tokens_free(t);
            return kl_fail(KL_EINVAL, "text byte %u at offset %zu is not in the vocabulary", data[i], i);
        }
        t->tok[i] = id;
    }
    t->n = (int64_t)n;
    t->vocab = v->n;
    *out = t;
    return KL_OK;
}

kl_status kl_tokens_save(const kl_tokens *t, const char *path)
{
    if (!t || !path) return null_arg("kl_tokens_save", t ? "path" : "tokens");
    uint32_t width = t->vocab <= 65536 ? 2 : 4, vocab = (uint32_t)t->vocab;
    uint64_t count = (uint64_t)t->n;
    unsigned char hdr[24];
    memcpy(hdr, "KILNTOK1", 8);
    memcpy(hdr + 8, &width, 4); /* little-endian hosts (x86-64, aarch64) */
    memcpy(hdr + 12, &vocab, 4);
    memcpy(hdr + 16, &count, 8);
    size_t bytes = (size_t)t->n * width;
    unsigned char *body = kl_malloc(bytes ? bytes : 1);
    if (!body) return KL_ENOMEM;
    for (int64_t i = 0; i < t->n; i++) {
        if (width == 2) ((uint16_t *)body)[i] = (uint16_t)t->tok[i];
        else ((uint32_t *)body)[i] = (uint32_t)t->tok[i];
    }
    const void *chunks[2] = {hdr, body};
    size_t sizes[2] = {sizeof hdr, bytes};
    kl_status s = kl_write_file_atomic(path, chunks, sizes, 2);
    kl_free(body);
    return s;
}

kl_status kl_tokens_load(const char *path, kl_tokens **out)
{
    void *buf;
    size_t n;
    if (!out) return null_arg("kl_tokens_load", "out");
    *out = NULL;
    if (!path) return null_arg("kl_tokens_load", "path");
    KL_TRY(kl_read_file_raw(path, &buf, &n));
    const unsigned char *p = buf;
    uint32_t width = 0, vocab = 0;
    uint64_t count = 0;
    kl_status s = KL_OK;
    if (n < 24 || memcmp(p, "KILNTOK1", 8)) s = kl_fail(KL_EFORMAT, "%s: not a kiln token file (bad magic)", path);
    if (s == KL_OK) {
        memcpy(&width, p + 8, 4), memcpy(&vocab, p + 12, 4), memcpy(&count, p + 16, 8);
        if (width != 2 && width != 4) s = kl_fail(KL_EFORMAT, "%s: token width %u, expected 2 or 4", path, width);
        else if (vocab == 0) s = kl_fail(KL_EFORMAT, "%s: vocabulary size 0", path);
        else if (count > (n - 24) / width || count * width != n - 24)
            s = kl_fail(KL_EFORMAT, "%s: header says %llu tokens of %u bytes, file holds %zu bytes of tokens", path,
                        (unsigned long long)count, width, n - 24);
    }
    kl_tokens *t = NULL;
    if (s == KL_OK && (!(t = kl_calloc(1, sizeof *t)) || !(t->tok = kl_malloc((count ? count : 1) * sizeof *t->tok))))
        s = KL_ENOMEM;
    for (uint64_t i = 0; s == KL_OK && i < count; i++) {
        uint32_t v = width == 2 ? ((const uint16_t *)(p + 24))[i] : ((const uint32_t *)(p + 24))[i];
        if (v >= vocab) s = kl_fail(KL_EFORMAT, "%s: token %llu is %u, outside the vocabulary of %u", path, (unsigned long long)i, v, vocab);
        else t->tok[i] = (int32_t)v;
    }
    kl_free(buf);
    if (s != KL_OK) {
        kl_tokens_free(t);
        return s;
    }
    t->n = (int64_t)count;
    t->vocab = (int)vocab;
    *out = t;
    return KL_OK;
}

int64_t kl_tokens_count(const kl_tokens *t) { return t ? t->n : 0; }
int kl_tokens_vocab(const kl_tokens *t) { return t ? t->vocab : 0; }
const int32_t *kl_tokens_data(const kl_tokens *t) { return t ? t->tok : NULL; }
void kl_tokens_free(kl_tokens *t)
{
    if (!t) return;
    kl_free(t->tok);
    kl_free(t);
}

kl_status kl_tokens_batch(const kl_tokens *t, int64_t first, int64_t n, uint64_t seed, int64_t step, int64_t B,
                          int64_t T, int32_t *x, int32_t *y)
{
    if (!t || !x || !y) return null_arg("kl_tokens_batch", !t ? "tokens" : !x ? "x" : "y");
    if (B < 1 || T < 1)
        return kl_fail(KL_EINVAL, "kl_tokens_batch: %lld windows of %lld tokens; B and T must be >= 1", (long long)B,
                       (long long)T);
    if (first < 0 || n < 0)
        return kl_fail(KL_EINVAL, "kl_tokens_batch: range start %lld and length %lld must be >= 0", (long long)first,
                       (long long)n);
    /* compared without forming first + n or T + 1, which overflow for huge
     * arguments and would let a window read past the tokens (printed
     * unsigned: both terms are below 2^63) */
    if (n > t->n - first || n - 1 < T)
        return kl_fail(KL_EINVAL, "token windows: range [%lld, %llu) of %lld tokens cannot hold a window of %llu",
                       (long long)first, (unsigned long long)first + (unsigned long long)n, (long long)t->n,
                       (unsigned long long)T + 1);
    if (B > INT64_MAX / T) /* x + b * T would overflow; no buffer holds that many */
        return kl_fail(KL_EINVAL, "kl_tokens_batch: %lld windows of %lld tokens overflow", (long long)B, (long long)T);
    uint64_t span = (uint64_t)(n - T); /* window starts in [first, first + n - T) */
    for (int64_t b = 0; b < B; b++) {
        uint64_t r = ((uint64_t)kl_philox_word(seed, 0x7e47, (uint64_t)step, 2 * (uint64_t)b) << 32) |
                     kl_philox_word(seed, 0x7e47, (uint64_t)step, 2 * (uint64_t)b + 1);
        int64_t s0 = first + (int64_t)(r % span);
        memcpy(x + b * T, t->tok + s0, (size_t)T * sizeof *x);
        memcpy(y + b * T, t->tok + s0 + 1, (size_t)T * sizeof *y);
    }
    return KL_OK;
}
