/* PNG folder datasets: <dir>/<class>/<image>.png, classes in sorted order. */
#include "data/dataset.h"

#include <dirent.h>
#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/error.h"

typedef struct png_hdr {
    uint32_t w, h;
    int color; /* has color (RGB or palette) */
} png_hdr;

typedef struct png_err {
    char msg[256];
} png_err;

static void on_png_error(png_structp png, png_const_charp msg)
{
    png_err *e = png_get_error_ptr(png);
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

/* Converts decoded rows (HWC, 8 or 16 bit big-endian) to CHW floats in [0,1]. */
static void to_chw(const unsigned char *pix, size_t rowbytes, const png_hdr *h, int ch,
                   int depth, float *dst)
{
    size_t plane = (size_t)h->w * h->h;
    for (uint32_t r = 0; r < h->h; r++) {
        const unsigned char *row = pix + r * rowbytes;
        for (uint32_t c = 0; c < h->w; c++)
            for (int k = 0; k < ch; k++) {
                size_t e = (size_t)c * ch + k;
                float v = depth == 16 ? (row[2 * e] << 8 | row[2 * e + 1]) * (1.0f / 65535.0f)
                                      : row[e] * (1.0f / 255.0f);
                dst[k * plane + (size_t)r * h->w + c] = v;
            }
    }
}

/* Reads path's header into *hdr; with dst, also decodes it as ch (1 or 3)
 * channels of hdr->w x hdr->h into dst. */
static kl_status read_png(const char *path, png_hdr *hdr, int ch, float *dst)
{
    FILE *f = fopen(path, "rb");
    if (!f) return kl_fail(KL_EIO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char sig[8];
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8)) {
        fclose(f);
        return kl_fail(KL_EFORMAT, "%s: not a PNG file (bad signature)", path);
    }
    png_err err = {{0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, on_png_error,
                                             on_png_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        fclose(f);
        return kl_fail(KL_ENOMEM, "%s: out of memory creating a PNG reader", path);
    }
    unsigned char *volatile pix = NULL;
    png_bytep *volatile rows = NULL;
    kl_status s = KL_OK;
    if (setjmp(png_jmpbuf(png))) {
        s = kl_fail(KL_EFORMAT, "%s: bad PNG: %s", path, err.msg);
        goto done;
    }
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, ctype;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, NULL, NULL, NULL);
    int color = (ctype & PNG_COLOR_MASK_COLOR) != 0;
    if (!dst) {
        hdr->w = w, hdr->h = h, hdr->color = color;
        goto done;
    }
    if (w != hdr->w || h != hdr->h) { /* the file changed since the first pass */
        s = kl_fail(KL_EFORMAT, "%s: %ux%u pixels, expected %ux%u", path, (unsigned)w,
                    (unsigned)h, hdr->w, hdr->h);
        goto done;
    }
    png_set_expand(png); /* palette -> RGB, gray < 8 bits -> 8, tRNS -> alpha */
    png_set_strip_alpha(png);
    if (ch == 3 && !color) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int got = png_get_channels(png, info), bits = png_get_bit_depth(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (got != ch || (bits != 8 && bits != 16) || rowbytes < (size_t)w * ch * (bits / 8)) {
        s = kl_fail(KL_EFORMAT, "%s: decodes to %d channels of %d bits, expected %d of 8 or 16",
                    path, got, bits, ch);
        goto done;
    }
    if (h && rowbytes > SIZE_MAX / h) {
        s = kl_fail(KL_ENOMEM, "%s: image too large", path);
        goto done;
    }
    if (!(pix = kl_malloc(rowbytes * h)) || !(rows = kl_malloc(h * sizeof *rows))) {
        s = KL_ENOMEM;
        goto done;
    }
    for (png_uint_32 r = 0; r < h; r++) rows[r] = pix + r * rowbytes;
    png_read_image(png, rows);
    to_chw(pix, rowbytes, hdr, ch, bits, dst);
done:
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    kl_free(pix);
    kl_free(rows);
    return s;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *join(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *p = kl_malloc(na + nb + 2);
    if (p) {
        memcpy(p, a, na);
        p[na] = '/';
        memcpy(p + na + 1, b, nb + 1);
    }
    return p;
}

static void free_list(char **v, int64_t n)
{
    for (int64_t i = 0; i < n; i++) kl_free(v[i]);
    kl_free(v);
}

/* Sorted non-hidden entry names of dir; with dirs_only, only folders. */
static kl_status list_dir(const char *dir, int dirs_only, char ***out, int *count)
{
    *out = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) return kl_fail(KL_EIO, "%s: cannot open folder: %s", dir, strerror(errno));
    char **v = NULL;
    int n = 0, cap = 0;
    kl_status s = KL_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (dirs_only) {
            char *p = join(dir, e->d_name);
            struct stat st;
            int is_dir = p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
            kl_free(p);
            if (!p) { s = KL_ENOMEM; break; }
            if (!is_dir) continue;
        }
        if (n == cap) {
            char **w = kl_realloc(v, (size_t)(cap = cap ? cap * 2 : 16) * sizeof *v);
            if (!w) { s = KL_ENOMEM; break; }
            v = w;
        }
        if (!(v[n] = kl_strdup(e->d_name))) { s = KL_ENOMEM; break; }
        n++;
    }
    closedir(d);
    if (s != KL_OK) {
        free_list(v, n);
        return s;
    }
    if (n) qsort(v, (size_t)n, sizeof *v, cmp_str);
    *out = v;
    *count = n;
    return KL_OK;
}

typedef struct image_list {
    char **path;
    int32_t *cls;
    int64_t n, cap;
} image_list;

/* Appends every file of class folder cdir (class c) to the list. */
static kl_status add_class(const char *cdir, int c, image_list *l)
{
    char **names;
    int n;
    KL_TRY(list_dir(cdir, 0, &names, &n));
    kl_status s = KL_OK;
    for (int i = 0; i < n && s == KL_OK; i++) {
        char *p = join(cdir, names[i]);
        struct stat st;
        if (!p) s = KL_ENOMEM;
        else if (stat(p, &st) != 0 || !S_ISREG(st.st_mode))
            s = kl_fail(KL_EFORMAT, "%s: not a regular file; class folders hold PNG files only", p);
        else if (l->n == l->cap) {
            int64_t cap = l->cap ? l->cap * 2 : 64;
            char **np = kl_realloc(l->path, (size_t)cap * sizeof *np);
            if (np) l->path = np;
            int32_t *nc = np ? kl_realloc(l->cls, (size_t)cap * sizeof *nc) : NULL;
            if (nc) l->cls = nc, l->cap = cap;
            else s = KL_ENOMEM;
        }
        if (s == KL_OK) {
            l->path[l->n] = p;
            l->cls[l->n++] = c;
        } else {
            kl_free(p);
        }
    }
    free_list(names, n);
    return s;
}

kl_status kl_dataset_load_pngdir(const char *dir, kl_dataset **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "load_pngdir: out is NULL");
    *out = NULL;
    if (!dir) return kl_fail(KL_EMISUSE, "load_pngdir: dir is NULL");
    char **classes;
    int nc;
    KL_TRY(list_dir(dir, 1, &classes, &nc));
    image_list l = {0};
    kl_dataset *ds = NULL;
    kl_status s = KL_OK;
    if (nc == 0) s = kl_fail(KL_EFORMAT, "%s: no class subfolders", dir);
    for (int c = 0; c < nc && s == KL_OK; c++) {
        char *cdir = join(dir, classes[c]);
        s = cdir ? add_class(cdir, c, &l) : KL_ENOMEM;
        kl_free(cdir);
    }
    if (s == KL_OK && l.n == 0) s = kl_fail(KL_EFORMAT, "%s: no images in %d class folders", dir, nc);
    /* Pass 1: headers only, so every size error shows before decoding and
     * one color image makes all images RGB. */
    png_hdr first = {0}, h;
    int color = 0;
    for (int64_t i = 0; i < l.n && s == KL_OK; i++) {
        if ((s = read_png(l.path[i], &h, 0, NULL)) != KL_OK) break;
        if (i == 0) first = h;
        else if (h.w != first.w || h.h != first.h)
            s = kl_fail(KL_EFORMAT, "%s: %ux%u pixels, expected %ux%u like %s", l.path[i],
                        h.w, h.h, first.w, first.h, l.path[0]);
        color |= h.color;
    }
    int ch = color ? 3 : 1;
    int64_t dims[3] = {ch, first.h, first.w};
    if (s == KL_OK) s = kl_dataset_alloc(l.n, 3, dims, 1, dir, &ds);
    for (int64_t i = 0; i < l.n && s == KL_OK; i++) {
        s = read_png(l.path[i], &first, ch, ds->x + i * ds->sample_size);
        ds->y[i] = l.cls[i];
    }
    if (s == KL_OK) { /* the dataset takes the class names */
        ds->class_names = classes;
        ds->n_names = ds->classes = nc;
        classes = NULL;
        *out = ds;
    } else {
        kl_dataset_free(ds);
    }
    free_list(classes, classes ? nc : 0);
    free_list(l.path, l.n);
    kl_free(l.cls);
    return s;
}

kl_status kl_png_load(const char *path, int channels, float **out, int64_t dims[3])
{
    if (!path || !out || !dims) return kl_fail(KL_EMISUSE, "kl_png_load: null argument");
    *out = NULL;
    png_hdr h;
    KL_TRY(read_png(path, &h, 0, NULL));
    int ch = channels > 0 ? channels : (h.color ? 3 : 1);
    if (ch != 1 && ch != 3) return kl_fail(KL_EINVAL, "%s: channels must be 1 or 3, got %d", path, channels);
    float *x = kl_malloc((size_t)ch * h.h * h.w * sizeof *x);
    if (!x) return KL_ENOMEM;
    kl_status s = read_png(path, &h, ch, x);
    if (s != KL_OK) {
        kl_free(x);
        return s;
    }
    dims[0] = ch, dims[1] = h.h, dims[2] = h.w;
    *out = x;
    return KL_OK;
}
