/* safetensors writer: collects borrowed tensors, then writes the header and
 * each tensor's bytes as separate chunks of one atomic file write (no copy
 * of the tensor data). Layout follows the Python library: tensors sorted by
 * element size (largest first) then name, header padded with spaces so the
 * data section starts at a multiple of 8 and every tensor is aligned. */
#include "kiln/io.h"
#include "core/error.h"
#include "io/fileio.h"
#include "io/safetensors_common.h"

#include <stdio.h>
#include <string.h>

typedef struct st_wentry {
    char *name;
    kl_dtype dt;
    int ndim;
    int64_t dims[KL_MAX_DIMS];
    const void *data; /* borrowed */
    size_t nbytes;
} st_wentry;

struct kl_st_writer {
    st_wentry *t;
    int n, cap;
    struct st_meta { char *key, *value; } *meta;
    int nmeta, metacap;
};

kl_status kl_st_writer_new(kl_st_writer **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_st_writer_new: null argument");
    *out = kl_calloc(1, sizeof **out);
    return *out ? KL_OK : KL_ENOMEM;
}

void kl_st_writer_free(kl_st_writer *w)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) kl_free(w->t[i].name);
    for (int i = 0; i < w->nmeta; i++) {
        kl_free(w->meta[i].key);
        kl_free(w->meta[i].value);
    }
    kl_free(w->t);
    kl_free(w->meta);
    kl_free(w);
}

/* Grows an array of cap elements of size sz to hold one more. */
static kl_status grow(void **arr, int *cap, int used, size_t sz)
{
    if (used < *cap) return KL_OK;
    int nc = *cap ? 2 * *cap : 16;
    void *p = kl_realloc(*arr, (size_t)nc * sz);
    if (!p) return KL_ENOMEM;
    *arr = p;
    *cap = nc;
    return KL_OK;
}

kl_status kl_st_writer_add(kl_st_writer *w, const char *name, kl_dtype dt, int ndim,
                           const int64_t *dims, const void *data)
{
    if (!w || !name || (ndim > 0 && !dims))
        return kl_fail(KL_EMISUSE, "kl_st_writer_add: null argument");
    if (!*name) return kl_fail(KL_EINVAL, "kl_st_writer_add: empty tensor name");
    if (!strcmp(name, "__metadata__"))
        return kl_fail(KL_EINVAL, "kl_st_writer_add: '__metadata__' is reserved, not a "
                       "tensor name");
    if (!kl_st_utf8_valid(name))
        return kl_fail(KL_EINVAL, "kl_st_writer_add: tensor name is not valid UTF-8");
    if (!kl_st_dtype_code(dt))
        return kl_fail(KL_EINVAL, "kl_st_writer_add: tensor '%s': invalid dtype %d", name,
                       (int)dt);
    if (ndim < 0 || ndim > KL_MAX_DIMS)
        return kl_fail(KL_EINVAL, "kl_st_writer_add: tensor '%s': %d dims (0 to %d "
                       "allowed)", name, ndim, KL_MAX_DIMS);
    char shape[160];
    kl_shape_str(shape, sizeof shape, ndim, dims);
    int ok;
    uint64_t nbytes = kl_st_nbytes(dt, ndim, dims, &ok);
    if (!ok || nbytes > SIZE_MAX / 2)
        return kl_fail(KL_EINVAL, "kl_st_writer_add: tensor '%s': shape %s %s is negative "
                       "or too large", name, shape, kl_dtype_name(dt));
    if (nbytes && !data)
        return kl_fail(KL_EMISUSE, "kl_st_writer_add: tensor '%s': data is NULL", name);
    for (int i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name))
            return kl_fail(KL_EINVAL, "kl_st_writer_add: tensor '%s' added twice", name);
    KL_TRY(grow((void **)&w->t, &w->cap, w->n, sizeof *w->t));
    st_wentry *e = &w->t[w->n];
    memset(e, 0, sizeof *e);
    e->name = kl_strdup(name);
    if (!e->name) return KL_ENOMEM;
    e->dt = dt;
    e->ndim = ndim;
    if (ndim) memcpy(e->dims, dims, sizeof(int64_t) * (size_t)ndim);
    e->data = data;
    e->nbytes = (size_t)nbytes;
    w->n++;
    return KL_OK;
}

kl_status kl_st_writer_meta(kl_st_writer *w, const char *key, const char *value)
{
    if (!w || !key || !value) return kl_fail(KL_EMISUSE, "kl_st_writer_meta: null argument");
    if (!kl_st_utf8_valid(key) || !kl_st_utf8_valid(value))
        return kl_fail(KL_EINVAL, "kl_st_writer_meta: key or value of '%.100s' is not "
                       "valid UTF-8", key);
    char *v = kl_strdup(value);
    if (!v) return KL_ENOMEM;
    for (int i = 0; i < w->nmeta; i++) {
        if (!strcmp(w->meta[i].key, key)) {
            kl_free(w->meta[i].value);
            w->meta[i].value = v;
            return KL_OK;
        }
    }
    char *k = kl_strdup(key);
    kl_status s = k ? grow((void **)&w->meta, &w->metacap, w->nmeta, sizeof *w->meta)
                    : KL_ENOMEM;
    if (s != KL_OK) { kl_free(k); kl_free(v); return s; }
    w->meta[w->nmeta].key = k;
    w->meta[w->nmeta].value = v;
    w->nmeta++;
    return KL_OK;
}

/* Python's order: larger elements first (keeps every tensor aligned), then name. */
static int write_order(const void *a, const void *b)
{
    const st_wentry *x = *(st_wentry *const *)a, *y = *(st_wentry *const *)b;
    size_t sx = kl_dtype_size(x->dt), sy = kl_dtype_size(y->dt);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* A growing byte buffer; after a failed allocation every append is a no-op
 * and oom stays set, so callers check once at the end. */
typedef struct { char *p; size_t n, cap; int oom; } st_buf;

static void buf_put(st_buf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap * 2 > b->n + n + 256 ? b->cap * 2 : b->n + n + 256;
        char *p = kl_realloc(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void buf_puts(st_buf *b, const char *s) { buf_put(b, s, strlen(s)); }

/* A JSON string literal; s is valid UTF-8 (checked when added). */
static void buf_json_string(st_buf *b, const char *s)
{
    buf_put(b, "\"", 1);
    for (char esc[8]; *s; s++) buf_put(b, esc, (size_t)kl_json_escape((unsigned char)*s, esc));
    buf_put(b, "\"", 1);
}

/* The header chunk for the tensors in order: 8-byte length, compact JSON
 * (metadata first), spaces up to a multiple of 8. Written by hand because
 * jansson's dump can drop keys silently when an allocation fails. */
static kl_status build_header(const kl_st_writer *w, st_wentry *const *order, st_buf *b)
{
    char num[48];
    buf_put(b, "\0\0\0\0\0\0\0\0{", 9);
    if (w->nmeta) {
        buf_puts(b, "\"__metadata__\":{");
        for (int i = 0; i < w->nmeta; i++) {
            if (i) buf_puts(b, ",");
            buf_json_string(b, w->meta[i].key);
            buf_puts(b, ":");
            buf_json_string(b, w->meta[i].value);
        }
        buf_puts(b, w->n ? "}," : "}");
    }
    uint64_t pos = 0;
    for (int i = 0; i < w->n; i++) {
        const st_wentry *e = order[i];
        if (i) buf_puts(b, ",");
        buf_json_string(b, e->name);
        buf_puts(b, ":{\"dtype\":\"");
        buf_puts(b, kl_st_dtype_code(e->dt));
        buf_puts(b, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(num, sizeof num, d ? ",%lld" : "%lld", (long long)e->dims[d]);
            buf_puts(b, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}",
                 (unsigned long long)pos, (unsigned long long)(pos + e->nbytes));
        buf_puts(b, num);
        pos += e->nbytes;
    }
    buf_puts(b, "}");
    while (!b->oom && b->n % 8) buf_puts(b, " ");
    if (b->oom) return KL_ENOMEM;
    if (b->n - 8 > KL_ST_MAX_HEADER)
        return kl_fail(KL_EINVAL, "safetensors header of %zu bytes is over the %llu byte "
                       "limit readers accept (too many tensors)", b->n - 8, KL_ST_MAX_HEADER);
    kl_st_put_le64((unsigned char *)b->p, b->n - 8);
    return KL_OK;
}

kl_status kl_st_writer_save(kl_st_writer *w, const char *path)
{
    if (!w || !path) return kl_fail(KL_EMISUSE, "kl_st_writer_save: null argument");
    kl_status s = KL_ENOMEM;
    st_buf head = {0};
    st_wentry **order = kl_malloc(sizeof *order * (size_t)(w->n + 1));
    const void **chunks = kl_malloc(sizeof *chunks * (size_t)(w->n + 1));
    size_t *sizes = kl_malloc(sizeof *sizes * (size_t)(w->n + 1));
    if (!order || !chunks || !sizes) goto done;
    for (int i = 0; i < w->n; i++) order[i] = &w->t[i];
    qsort(order, w->n, sizeof *order, write_order);
    s = KL_OK;
    for (int i = 0; i < w->n && s == KL_OK; i++) { /* "crc32:<name>": kl_st_read checks the bytes it reads */
        char key[1100], hex[16];
        if (!kl_st_crc_key(key, sizeof key, order[i]->name)) continue; /* in write order: same bytes whatever the add order */
        snprintf(hex, sizeof hex, "%08lx", (unsigned long)kl_crc32(0, order[i]->data, order[i]->nbytes));
        s = kl_st_writer_meta(w, key, hex);
    }
    if (s == KL_OK) s = build_header(w, order, &head);
    if (s != KL_OK) {
        if (s == KL_ENOMEM) kl_fail_prefix(s, "%s: building the safetensors header", path);
        goto done;
    }
    chunks[0] = head.p;
    sizes[0] = head.n;
    for (int i = 0; i < w->n; i++) {
        chunks[i + 1] = order[i]->data;
        sizes[i + 1] = order[i]->nbytes;
    }
    s = kl_write_file_atomic(path, (const void *const *)chunks, sizes, w->n + 1);
done:
    kl_free(head.p);
    kl_free(order);
    kl_free(chunks);
    kl_free(sizes);
    return s;
}
