/* safetensors reader: the header is validated completely (against the
 * file's size) before any tensor is served, so a caller never sees a
 * half-valid file. From a regular file only the header is read at open;
 * tensor bytes are read when asked for (kl_st_read straight into the
 * caller's memory), so loading a model does not hold the file twice. Pipes
 * and memory buffers are held whole. */
#include "kiln/io.h"
#include "core/error.h"
#include "io/fileio.h"
#include "io/safetensors_common.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct st_entry {
    char *name;
    kl_dtype dt;
    int ndim;
    int64_t dims[KL_MAX_DIMS];
    uint64_t begin, end; /* relative to the data section */
} st_entry;

struct kl_st_file {
    char *path;         /* for messages */
    unsigned char *buf; /* the header (fd >= 0) or the whole file */
    int fd;             /* >= 0: tensor bytes are read from this file on demand */
    unsigned char *data; /* data section (8-byte aligned): in buf, or read whole by kl_st_data */
    bool own_data;       /* data was allocated apart from buf */
    size_t size;        /* of the file */
    size_t data_off;    /* data section start in the file */
    size_t data_size;
    st_entry *t;        /* header order */
    int count;
    st_entry **by_name; /* sorted by name for kl_st_find */
    char **meta;        /* key, value, key, value ... */
    int nmeta;
};

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static kl_status parse_meta(kl_st_file *f, json_t *m)
{
    if (!json_is_object(m))
        return kl_fail(KL_EFORMAT, "%s: __metadata__ is %s, expected an object of "
                       "strings", f->path, json_kind(m));
    f->meta = kl_calloc(2 * json_object_size(m) + 1, sizeof *f->meta);
    if (!f->meta) return KL_ENOMEM;
    const char *key;
    json_t *v;
    json_object_foreach(m, key, v) {
        if (!json_is_string(v))
            return kl_fail(KL_EFORMAT, "%s: __metadata__ key '%s' is %s, expected a "
                           "string", f->path, key, json_kind(v));
        char *k = kl_strdup(key), *s = k ? kl_strdup(json_string_value(v)) : NULL;
        if (!s) { kl_free(k); return KL_ENOMEM; }
        f->meta[2 * f->nmeta] = k;
        f->meta[2 * f->nmeta + 1] = s;
        f->nmeta++;
    }
    return KL_OK;
}

/* Compact JSON text of v for messages, cut to fit buf ("..." marks a cut). */
static const char *json_brief(const json_t *v, char *buf, size_t n)
{
    size_t k = json_dumpb(v, buf, n - 1, JSON_COMPACT | JSON_ENCODE_ANY);
    if (k == 0) snprintf(buf, n, "?");
    else if (k >= n - 1) memcpy(buf + n - 4, "...", 4);
    else buf[k] = 0;
    return buf;
}

/* Reads a JSON list of at most max non-negative integers into out. */
static int int_list(const json_t *a, int64_t *out, size_t max, size_t *n)
{
    if (!json_is_array(a) || json_array_size(a) > max) return 0;
    for (size_t i = 0; i < json_array_size(a); i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0) return 0;
        out[i] = json_integer_value(v);
    }
    *n = json_array_size(a);
    return 1;
}

static kl_status parse_tensor(kl_st_file *f, const char *name, json_t *v, st_entry *e)
{
    const char *p = f->path;
    if (!json_is_object(v))
        return kl_fail(KL_EFORMAT, "%s: tensor '%s' is %s, expected an object with "
                       "dtype, shape and data_offsets", p, name, json_kind(v));
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    const char *missing = !jd ? "dtype" : !js ? "shape" : !jo ? "data_offsets" : NULL;
    if (missing)
        return kl_fail(KL_EFORMAT, "%s: tensor '%s': missing \"%s\"", p, name, missing);
    if (!json_is_string(jd))
        return kl_fail(KL_EFORMAT, "%s: tensor '%s': dtype is %s, expected a string "
                       "like \"F32\"", p, name, json_kind(jd));
    int known = kl_st_dtype_from_code(json_string_value(jd), &e->dt);
    if (known == 0)
        return kl_fail(KL_EUNSUPPORTED, "%s: tensor '%s': unsupported dtype '%s' (kiln "
                       "reads F32, F16, BF16, I32, U8, F64, I64)", p, name,
                       json_string_value(jd));
    if (known < 0)
        return kl_fail(KL_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", p, name,
                       json_string_value(jd));
    size_t nd, no;
    char got[64];
    if (!int_list(js, e->dims, KL_MAX_DIMS, &nd))
        return kl_fail(KL_EFORMAT, "%s: tensor '%s': shape must be a list of at most %d "
                       "non-negative integers, got %s", p, name, KL_MAX_DIMS,
                       json_brief(js, got, sizeof got));
    e->ndim = (int)nd;
    int64_t off[2];
    if (!int_list(jo, off, 2, &no) || no != 2)
        return kl_fail(KL_EFORMAT, "%s: tensor '%s': data_offsets must be [begin, end] "
                       "with non-negative integers, got %s", p, name,
                       json_brief(jo, got, sizeof got));
    e->begin = (uint64_t)off[0];
    e->end = (uint64_t)off[1];
    if (e->begin > e->end)
        return kl_fail(KL_EFORMAT, "%s: tensor '%s': data_offsets [%llu,%llu] end "
                       "before they begin", p, name, (unsigned long long)e->begin,
                       (unsigned long long)e->end);
    char shape[160];
    kl_shape_str(shape, sizeof shape, e->ndim, e->dims);
    int ok;
    uint64_t need = kl_st_nbytes(e->dt, e->ndim, e->dims, &ok);
    if (!ok)
        return kl_fail(KL_EFORMAT, "%s: tensor '%s': shape %s %s is too large (over "
                       "2^64 bytes)", p, name, shape, kl_dtype_name(e->dt));
    if (e->end - e->begin != need)
        return kl_fail(KL_EFORMAT, "%s: tensor '%s': data_offsets [%llu,%llu] hold %llu "
                       "bytes but shape %s %s needs %llu", p, name,
                       (unsigned long long)e->begin, (unsigned long long)e->end,
                       (unsigned long long)(e->end - e->begin), shape,
                       kl_dtype_name(e->dt), (unsigned long long)need);
    e->name = kl_strdup(name);
    return e->name ? KL_OK : KL_ENOMEM;
}

static int by_offset(const void *a, const void *b)
{
    const st_entry *x = *(st_entry *const *)a, *y = *(st_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(st_entry *const *)a)->name, (*(st_entry *const *)b)->name);
}

/* The tensors must tile the data section exactly: no gap, overlap or tail. */
static kl_status check_layout(kl_st_file *f)
{
    uint64_t max_end = 0;
    for (int i = 0; i < f->count; i++)
        if (f->t[i].end > max_end) max_end = f->t[i].end;
    if (max_end > f->data_size)
        return kl_fail(KL_EFORMAT, "%s: truncated: header says %llu data bytes, file "
                       "has %zu", f->path, (unsigned long long)max_end, f->data_size);
    /* by_name doubles as scratch for the offset sort. */
    for (int i = 0; i < f->count; i++) f->by_name[i] = &f->t[i];
    qsort(f->by_name, f->count, sizeof *f->by_name, by_offset);
    uint64_t pos = 0;
    const st_entry *prev = NULL;
    for (int i = 0; i < f->count; i++) {
        const st_entry *e = f->by_name[i];
        if (e->begin < pos)
            return kl_fail(KL_EFORMAT, "%s: tensors '%s' [%llu,%llu] and '%s' [%llu,%llu] "
                           "overlap", f->path, prev->name, (unsigned long long)prev->begin,
                           (unsigned long long)prev->end, e->name,
                           (unsigned long long)e->begin, (unsigned long long)e->end);
        if (e->begin > pos)
            return kl_fail(KL_EFORMAT, "%s: tensors not contiguous: %llu unused bytes "
                           "before tensor '%s' at offset %llu", f->path,
                           (unsigned long long)(e->begin - pos), e->name,
                           (unsigned long long)e->begin);
        pos = e->end;
        prev = e;
    }
    if (pos != f->data_size)
        return kl_fail(KL_EFORMAT, "%s: %llu trailing bytes: tensors end at data offset "
                       "%llu but the file has %zu data bytes", f->path,
                       (unsigned long long)(f->data_size - pos), (unsigned long long)pos,
                       f->data_size);
    qsort(f->by_name, f->count, sizeof *f->by_name, by_name);
    return KL_OK;
}

/* Moves the data section to an 8-byte aligned address when the header
 * length left it unaligned (kiln and Python writers never do). */
static kl_status align_data(kl_st_file *f)
{
    if (((uintptr_t)(f->buf + f->data_off)) % 8 == 0) return KL_OK;
    unsigned char *nb = kl_realloc(f->buf, f->size + 8);
    if (!nb) return KL_ENOMEM;
    f->buf = nb;
    size_t shift = (8 - (uintptr_t)(nb + f->data_off) % 8) % 8;
    memmove(nb + f->data_off + shift, nb + f->data_off, f->data_size);
    f->data_off += shift;
    return KL_OK;
}

static kl_status parse(kl_st_file *f)
{
    if (f->size < 8)
        return kl_fail(KL_EFORMAT, "%s: not a safetensors file: %zu bytes, shorter than "
                       "the 8-byte header length", f->path, f->size);
    uint64_t hlen = kl_st_get_le64(f->buf);
    if (hlen > KL_ST_MAX_HEADER)
        return kl_fail(KL_EFORMAT, "%s: header length %llu is over the %llu byte limit "
                       "(not a safetensors file?)", f->path, (unsigned long long)hlen,
                       KL_ST_MAX_HEADER);
    if (hlen > f->size - 8)
        return kl_fail(KL_EFORMAT, "%s: truncated: header length is %llu bytes but only "
                       "%zu follow", f->path, (unsigned long long)hlen, f->size - 8);
    f->data_off = 8 + (size_t)hlen;
    f->data_size = f->size - f->data_off;

    json_error_t err;
    json_t *root = json_loadb((const char *)f->buf + 8, (size_t)hlen,
                              JSON_REJECT_DUPLICATES, &err);
    /* jansson flags some allocation failures; others leave the error unset
     * (line -1, empty text). Some still surface as syntax errors. */
    if (!root && (json_error_code(&err) == json_error_out_of_memory ||
                  (err.line == -1 && err.text[0] == 0)))
        return kl_fail(KL_ENOMEM, "%s: out of memory parsing the header", f->path);
    if (!root)
        return kl_fail(KL_EFORMAT, "%s: header is not valid JSON: line %d, column %d: %s",
                       f->path, err.line, err.column, err.text);
    kl_status s = KL_OK;
    if (!json_is_object(root)) {
        s = kl_fail(KL_EFORMAT, "%s: header is %s, expected a JSON object", f->path,
                    json_kind(root));
        goto done;
    }
    size_t n = json_object_size(root);
    f->t = kl_calloc(n + 1, sizeof *f->t);
    f->by_name = f->t ? kl_calloc(n + 1, sizeof *f->by_name) : NULL;
    if (!f->by_name) { s = KL_ENOMEM; goto done; }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) s = parse_meta(f, v);
        else s = parse_tensor(f, key, v, &f->t[f->count]);
        if (s != KL_OK) goto done;
        if (strcmp(key, "__metadata__")) f->count++;
    }
    s = check_layout(f);
    if (s == KL_OK && f->fd < 0) {
        s = align_data(f);
        f->data = f->buf + f->data_off;
    }
done:
    json_decref(root);
    return s;
}

/* buf holds the whole file of n bytes (fd < 0) or its header (fd >= 0, the
 * file n bytes long); f takes both, also on failure. */
static kl_status open_buffer(unsigned char *buf, size_t n, int fd, const char *name,
                             kl_st_file **out)
{
    kl_st_file *f = kl_calloc(1, sizeof *f);
    if (!f) {
        kl_free(buf);
        if (fd >= 0) close(fd);
        return KL_ENOMEM;
    }
    f->buf = buf;
    f->fd = fd;
    f->size = n;
    f->path = kl_strdup(name);
    kl_status s = f->path ? parse(f) : KL_ENOMEM;
    if (s != KL_OK) {
        kl_st_close(f);
        return s;
    }
    *out = f;
    return KL_OK;
}

/* n bytes at offset off of fd; a short read means the file shrank since it
 * was opened. */
static kl_status read_at(int fd, const char *path, void *dst, size_t n, uint64_t off)
{
    unsigned char *p = dst;
    while (n) {
        size_t want = n < ((size_t)1 << 30) ? n : (size_t)1 << 30;
        ssize_t k = pread(fd, p, want, (off_t)off);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return kl_fail(KL_EIO, "%s: read failed at byte %llu: %s", path, (unsigned long long)off, strerror(errno));
        if (k == 0)
            return kl_fail(KL_EIO, "%s: file ends at byte %llu, before the data its header lists (changed while open?)",
                           path, (unsigned long long)off);
        p += k;
        n -= (size_t)k;
        off += (uint64_t)k;
    }
    return KL_OK;
}

kl_status kl_st_open(const char *path, kl_st_file **out)
{
    if (out) *out = NULL;
    if (!path || !out) return kl_fail(KL_EMISUSE, "kl_st_open: null argument");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 8)) {
        close(fd); /* pipes, directories, stubs: read whole, with its messages */
        fd = -1;
    }
    if (fd < 0) {
        void *buf;
        size_t n;
        KL_TRY(kl_read_file_raw(path, &buf, &n));
        return open_buffer(buf, n, -1, path, out);
    }
    /* The length word, then the header if parse's size checks will pass. */
    unsigned char head[8];
    kl_status s = read_at(fd, path, head, 8, 0);
    uint64_t hlen = s == KL_OK ? kl_st_get_le64(head) : 0;
    size_t keep = hlen <= KL_ST_MAX_HEADER && hlen <= (uint64_t)st.st_size - 8 ? 8 + (size_t)hlen : 8;
    unsigned char *buf = s == KL_OK ? kl_malloc(keep) : NULL;
    if (s == KL_OK && !buf) s = KL_ENOMEM;
    if (s == KL_OK) s = read_at(fd, path, buf, keep, 0);
    if (s != KL_OK) {
        kl_free(buf);
        close(fd);
        return s;
    }
    return open_buffer(buf, (size_t)st.st_size, fd, path, out);
}

kl_status kl_st_open_mem(const void *buf, size_t n, const char *name, kl_st_file **out)
{
    if (out) *out = NULL;
    if ((!buf && n) || !out) return kl_fail(KL_EMISUSE, "kl_st_open_mem: null argument");
    unsigned char *copy = kl_malloc(n);
    if (!copy) return KL_ENOMEM;
    if (n) memcpy(copy, buf, n);
    return open_buffer(copy, n, -1, name ? name : "<memory>", out);
}

int kl_st_count(const kl_st_file *f) { return f ? f->count : 0; }

kl_status kl_st_info(const kl_st_file *f, int i, const char **name, kl_dtype *dt,
                     int *ndim, int64_t dims[KL_MAX_DIMS])
{
    if (!f) return kl_fail(KL_EMISUSE, "kl_st_info: null file");
    if (i < 0 || i >= f->count)
        return kl_fail(KL_EINVAL, "%s: tensor index %d out of range (file has %d)",
                       f->path, i, f->count);
    const st_entry *e = &f->t[i];
    if (name) *name = e->name;
    if (dt) *dt = e->dt;
    if (ndim) *ndim = e->ndim;
    if (dims) memcpy(dims, e->dims, sizeof(int64_t) * (size_t)e->ndim);
    return KL_OK;
}

int kl_st_find(const kl_st_file *f, const char *name)
{
    if (!f || !name || f->count == 0) return -1;
    st_entry key = {.name = (char *)name}, *kp = &key;
    st_entry **hit = bsearch(&kp, f->by_name, f->count, sizeof *f->by_name, by_name);
    return hit ? (int)(*hit - f->t) : -1;
}

const void *kl_st_data(const kl_st_file *f, int i, size_t *nbytes)
{
    if (nbytes) *nbytes = 0;
    if (!f || i < 0 || i >= f->count) return NULL;
    if (!f->data) { /* the first call reads the data section whole (kept until close) */
        kl_st_file *m = (kl_st_file *)f;
        unsigned char *d = kl_malloc(f->data_size ? f->data_size : 1);
        if (!d) {
            kl_fail(KL_ENOMEM, "%s: %zu bytes for the tensor data", f->path, f->data_size);
            return NULL;
        }
        if (read_at(f->fd, f->path, d, f->data_size, f->data_off) != KL_OK) {
            kl_free(d);
            return NULL;
        }
        m->data = d;
        m->own_data = true;
    }
    const st_entry *e = &f->t[i];
    if (nbytes) *nbytes = (size_t)(e->end - e->begin);
    return f->data + e->begin;
}

kl_status kl_st_read(const kl_st_file *f, int i, void *dst, size_t nbytes)
{
    if (!f || !dst) return kl_fail(KL_EMISUSE, "kl_st_read: %s is NULL", f ? "dst" : "file");
    if (i < 0 || i >= f->count)
        return kl_fail(KL_EINVAL, "%s: tensor index %d out of range (file has %d)", f->path, i, f->count);
    const st_entry *e = &f->t[i];
    if (nbytes != e->end - e->begin)
        return kl_fail(KL_EINVAL, "%s: tensor '%s' holds %llu bytes, asked for %zu", f->path, e->name,
                       (unsigned long long)(e->end - e->begin), nbytes);
    if (f->data) memcpy(dst, f->data + e->begin, nbytes);
    else {
        kl_status s = read_at(f->fd, f->path, dst, nbytes, f->data_off + e->begin);
        if (s != KL_OK) return kl_fail_prefix(s, "tensor '%s'", e->name);
    }
    char key[1100];
    const char *want = kl_st_crc_key(key, sizeof key, e->name) ? kl_st_meta(f, key) : NULL;
    if (want) { /* the writer's CRC-32: a flipped bit in the data is caught here */
        unsigned long got = kl_crc32(0, dst, nbytes);
        char hex[16];
        snprintf(hex, sizeof hex, "%08lx", got);
        if (strcmp(hex, want))
            return kl_fail(KL_EFORMAT, "%s: tensor '%s': its data's CRC-32 is %s, the file's metadata says %.16s: the "
                           "file is damaged", f->path, e->name, hex, want);
    }
    return KL_OK;
}

const char *kl_st_meta(const kl_st_file *f, const char *key)
{
    if (!f || !key) return NULL;
    for (int i = 0; i < f->nmeta; i++)
        if (!strcmp(f->meta[2 * i], key)) return f->meta[2 * i + 1];
    return NULL;
}

void kl_st_close(kl_st_file *f)
{
    if (!f) return;
    for (int i = 0; i < f->count; i++) kl_free(f->t[i].name);
    for (int i = 0; i < 2 * f->nmeta; i++) kl_free(f->meta[i]);
    kl_free(f->meta);
    kl_free(f->t);
    kl_free(f->by_name);
    if (f->own_data) kl_free(f->data);
    kl_free(f->buf);
    if (f->fd >= 0) close(f->fd);
    kl_free(f->path);
    kl_free(f);
}
