/* IDX arrays (the MNIST file format): parser and dataset loader. */
#include "data/dataset.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "core/error.h"

struct kl_idx {
    kl_idx_type type;
    int ndim;
    int64_t dims[KL_MAX_DIMS];
    int64_t count;
    size_t esize;
    unsigned char *buf;        /* owned allocation */
    const unsigned char *data; /* big-endian elements inside buf */
};

static size_t elem_size(int type)
{
    switch (type) {
    case KL_IDX_U8: case KL_IDX_I8: return 1;
    case KL_IDX_I16: return 2;
    case KL_IDX_I32: case KL_IDX_F32: return 4;
    case KL_IDX_F64: return 8;
    default: return 0;
    }
}

static const char *type_name(kl_idx_type t)
{
    switch (t) {
    case KL_IDX_U8: return "u8";
    case KL_IDX_I8: return "i8";
    case KL_IDX_I16: return "i16";
    case KL_IDX_I32: return "i32";
    case KL_IDX_F32: return "f32";
    case KL_IDX_F64: return "f64";
    }
    return "?";
}

static uint64_t be(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* Decodes one big-endian element. */
static double decode(const unsigned char *p, kl_idx_type t)
{
    switch (t) {
    case KL_IDX_U8: return p[0];
    case KL_IDX_I8: return (int8_t)p[0];
    case KL_IDX_I16: return (int16_t)(uint16_t)be(p, 2);
    case KL_IDX_I32: return (int32_t)(uint32_t)be(p, 4);
    case KL_IDX_F32: {
        uint32_t u = (uint32_t)be(p, 4);
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case KL_IDX_F64: {
        uint64_t u = be(p, 8);
        double d;
        memcpy(&d, &u, 8);
        return d;
    }
    }
    return 0;
}

/* Parses buf; takes ownership of it (even on failure) when owned. */
static kl_status parse(unsigned char *buf, size_t n, int owned, const char *name, kl_idx **out)
{
    const unsigned char *p = buf;
    kl_status s = KL_EFORMAT;
    *out = NULL;
    if (!name) name = "idx";
    if (n < 4) {
        kl_fail(s, "%s: truncated: %zu bytes, an IDX header needs at least 4", name, n);
        goto fail;
    }
    if (p[0] != 0 || p[1] != 0) {
        kl_fail(s, "%s: bad magic %02x %02x %02x %02x: not an IDX file (expected 00 00 <type> <ndim>)",
                name, p[0], p[1], p[2], p[3]);
        goto fail;
    }
    size_t esize = elem_size(p[2]);
    if (!esize) {
        kl_fail(s, "%s: unsupported element type 0x%02x (expected 0x08 u8, 0x09 i8, "
                "0x0b i16, 0x0c i32, 0x0d f32 or 0x0e f64)", name, p[2]);
        goto fail;
    }
    int ndim = p[3];
    if (ndim < 1 || ndim > KL_MAX_DIMS) {
        s = ndim < 1 ? KL_EFORMAT : KL_EUNSUPPORTED; /* 0 dims is no array; 9 or more, one kiln cannot hold */
        kl_fail(s, "%s: %d dims, supported 1 to %d", name, ndim, KL_MAX_DIMS);
        goto fail;
    }
    size_t header = 4 + 4 * (size_t)ndim;
    if (n < header) {
        kl_fail(s, "%s: truncated header: %zu bytes, %d dims need %zu", name, n, ndim, header);
        goto fail;
    }
    int64_t dims[KL_MAX_DIMS] = {0};
    int zero = 0;
    for (int i = 0; i < ndim; i++) {
        dims[i] = (int64_t)be(p + 4 + 4 * i, 4);
        zero |= dims[i] == 0;
    }
    char shape[128];
    kl_shape_str(shape, sizeof shape, ndim, dims);
    size_t avail = n - header, need = zero ? 0 : esize;
    int over = 0; /* need exceeds SIZE_MAX */
    for (int i = 0; i < ndim && !zero && !over; i++) {
        if (need > SIZE_MAX / (size_t)dims[i]) over = 1;
        else need *= (size_t)dims[i];
    }
    if (over || need > avail) {
        if (over) kl_fail(s, "%s: truncated: dims %s %s need more than the %zu data bytes present",
                          name, shape, type_name(p[2]), avail);
        else kl_fail(s, "%s: truncated: dims %s %s need %zu data bytes, got %zu",
                     name, shape, type_name(p[2]), need, avail);
        goto fail;
    }
    if (need < avail) {
        kl_fail(s, "%s: trailing data: %zu bytes after the %zu data bytes of dims %s %s",
                name, avail - need, need, shape, type_name(p[2]));
        goto fail;
    }
    kl_idx *a = kl_calloc(1, sizeof *a);
    if (!a) {
        s = KL_ENOMEM;
        goto fail;
    }
    a->type = p[2];
    a->ndim = ndim;
    memcpy(a->dims, dims, sizeof dims);
    a->esize = esize;
    a->count = (int64_t)(need / esize);
    if (owned) {
        a->buf = buf;
        a->data = buf + header;
    } else {
        if (!(a->buf = kl_malloc(need))) {
            kl_free(a);
            return KL_ENOMEM;
        }
        if (need) memcpy(a->buf, buf + header, need);
        a->data = a->buf;
    }
    *out = a;
    return KL_OK;
fail:
    if (owned) kl_free(buf);
    return s;
}

kl_status kl_idx_parse_mem(const void *buf, size_t n, const char *name, kl_idx **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "idx_parse_mem: out is NULL");
    *out = NULL;
    if (!buf && n) return kl_fail(KL_EMISUSE, "idx_parse_mem: buf is NULL");
    return parse((unsigned char *)buf, buf ? n : 0, 0, name, out);
}

kl_status kl_idx_load(const char *path, kl_idx **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "idx_load: out is NULL");
    *out = NULL;
    unsigned char *buf;
    size_t n;
    KL_TRY(kl_read_file(path, &buf, &n));
    return parse(buf, n, 1, path, out);
}

kl_idx_type kl_idx_elem_type(const kl_idx *a) { return a ? a->type : KL_IDX_U8; }
int kl_idx_ndim(const kl_idx *a) { return a ? a->ndim : 0; }
const int64_t *kl_idx_dims(const kl_idx *a) { return a ? a->dims : NULL; }
int64_t kl_idx_count(const kl_idx *a) { return a ? a->count : 0; }

double kl_idx_get(const kl_idx *a, int64_t i)
{
    if (!a || i < 0 || i >= a->count) return 0;
    return decode(a->data + (size_t)i * a->esize, a->type);
}

void kl_idx_free(kl_idx *a)
{
    if (!a) return;
    kl_free(a->buf);
    kl_free(a);
}

/* Converts the image array to f32 features; u8 scales to [0,1]. */
static kl_status fill_features(const kl_idx *im, const char *path, int64_t per_sample, float *x)
{
    if (im->type == KL_IDX_U8) {
        for (int64_t i = 0; i < im->count; i++) x[i] = im->data[i] * (1.0f / 255.0f);
        return KL_OK;
    }
    for (int64_t i = 0; i < im->count; i++) {
        double v = decode(im->data + (size_t)i * im->esize, im->type);
        /* refused as CSV refuses them: NaN or inf would only show as a diverged loss */
        if (!isfinite(v) || v > FLT_MAX || v < -FLT_MAX)
            return kl_fail(KL_EFORMAT, "%s: sample %lld element %lld: %g is %s", path,
                           (long long)(i / per_sample), (long long)(i % per_sample), v,
                           isfinite(v) ? "outside the f32 range" : "not a finite number");
        x[i] = (float)v;
    }
    return KL_OK;
}

static kl_status check_label_array(const kl_idx *lb, const char *path, int64_t n_images,
                                   const char *images)
{
    if (lb->type == KL_IDX_F32 || lb->type == KL_IDX_F64)
        return kl_fail(KL_EFORMAT, "%s: labels must be integers, got %s", path, type_name(lb->type));
    if (lb->ndim != 1) {
        char shape[128];
        kl_shape_str(shape, sizeof shape, lb->ndim, lb->dims);
        return kl_fail(KL_EFORMAT, "%s: labels must be 1-D, got dims %s", path, shape);
    }
    if (lb->dims[0] != n_images)
        return kl_fail(KL_EFORMAT, "%s has %lld labels but %s has %lld images", path,
                       (long long)lb->dims[0], images, (long long)n_images);
    return KL_OK;
}

kl_status kl_dataset_load_idx(const char *images, const char *labels, kl_dataset **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "dataset_load_idx: out is NULL");
    *out = NULL;
    if (!images) return kl_fail(KL_EMISUSE, "dataset_load_idx: images path is NULL");
    kl_idx *im = NULL, *lb = NULL;
    kl_dataset *ds = NULL;
    kl_status s = kl_idx_load(images, &im);
    if (s == KL_OK && labels) s = kl_idx_load(labels, &lb);
    if (s != KL_OK) goto done;
    int64_t n = im->dims[0];
    if (n == 0) {
        s = kl_fail(KL_EFORMAT, "%s: no samples (first dim is 0)", images);
        goto done;
    }
    int64_t dims[KL_MAX_DIMS];
    int nd = 0;
    if (im->ndim == 1) dims[nd++] = 1;
    if (im->ndim == 3) dims[nd++] = 1; /* [n,H,W] images get a channel */
    for (int i = 1; i < im->ndim; i++) {
        if (im->dims[i] == 0) {
            s = kl_fail(KL_EFORMAT, "%s: dim %d is 0", images, i);
            goto done;
        }
        dims[nd++] = im->dims[i];
    }
    if (lb && (s = check_label_array(lb, labels, n, images)) != KL_OK) goto done;
    if ((s = kl_dataset_alloc(n, nd, dims, lb != NULL, labels, &ds)) != KL_OK) goto done;
    if ((s = fill_features(im, images, ds->sample_size, ds->x)) != KL_OK) goto done;
    for (int64_t i = 0; lb && i < n; i++) {
        double v = decode(lb->data + (size_t)i * lb->esize, lb->type);
        if (v < 0) {
            s = kl_fail(KL_EFORMAT, "%s: sample %lld: label %d is negative", labels,
                        (long long)i, (int)v);
            goto done;
        }
        ds->y[i] = (int32_t)v;
    }
    kl_dataset_count_classes(ds);
done:
    kl_idx_free(im);
    kl_idx_free(lb);
    if (s != KL_OK) kl_dataset_free(ds);
    else *out = ds;
    return s;
}
