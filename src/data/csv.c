/* Numeric CSV datasets: one sample per row, an optional label column. */
#include "core/cnum.h"
#include "data/dataset.h"

#include <math.h>
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"

typedef struct field {
    const char *p;
    size_t len;
} field;

typedef struct csv_state {
    const char *name;
    char delim;
    field *f;          /* fields of the current row */
    size_t nf, capf;
    float *x;          /* features so far */
    size_t nx, capx;
    int32_t *y;        /* labels so far */
    size_t ny, capy;
    int64_t *lines;    /* each kept row's file line */
    size_t capl;
    size_t ncols;      /* columns per row, from the first row */
    int64_t rows;      /* data rows kept */
    int has_label;
} csv_state;

static int is_blank(char c) { return c == ' ' || c == '\t'; }

/* Writes up to 40 bytes of s, non-printables as '?', for messages. */
static const char *show(const field *f, char *buf, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < f->len && k + 4 < n && i < 40; i++)
        buf[k++] = (f->p[i] >= 32 && f->p[i] < 127) ? f->p[i] : '?';
    if (f->len > 40 && k + 4 < n) buf[k++] = '.', buf[k++] = '.', buf[k++] = '.';
    buf[k] = 0;
    return buf;
}

static kl_status grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return KL_OK;
    size_t c = *cap ? *cap * 2 : 64;
    if (c < need) c = need;
    if (c > SIZE_MAX / elem) return kl_fail(KL_ENOMEM, "csv: too many values");
    void *q = kl_realloc(*p, c * elem);
    if (!q) return KL_ENOMEM;
    *p = q;
    *cap = c;
    return KL_OK;
}

/* Splits one line (no newline) into trimmed fields; quotes are stripped. */
static kl_status split(csv_state *st, const char *s, size_t len, long line)
{
    st->nf = 0;
    size_t i = 0;
    for (;;) {
        KL_TRY(grow((void **)&st->f, &st->capf, st->nf + 1, sizeof(field)));
        field *f = &st->f[st->nf++];
        while (i < len && is_blank(s[i])) i++;
        if (i < len && s[i] == '"') {
            size_t start = ++i;
            while (i < len && !(s[i] == '"' && (i + 1 >= len || s[i + 1] != '"')))
                i += s[i] == '"' ? 2 : 1; /* "" is an escaped quote */
            if (i >= len)
                return kl_fail(KL_EFORMAT, "%s:%ld: column %zu: unterminated quote",
                               st->name, line, st->nf);
            f->p = s + start;
            f->len = i - start;
            i++;
            while (i < len && is_blank(s[i])) i++;
            if (i < len && s[i] != st->delim)
                return kl_fail(KL_EFORMAT, "%s:%ld: column %zu: text after the closing quote",
                               st->name, line, st->nf);
        } else {
            size_t start = i;
            while (i < len && s[i] != st->delim) i++;
            size_t end = i;
            while (end > start && is_blank(s[end - 1])) end--;
            f->p = s + start;
            f->len = end - start;
        }
        if (i >= len) return KL_OK;
        i++; /* the delimiter */
    }
}

/* Parses a whole field as a double; 0 if it is not a number. */
static int to_number(const field *f, double *v)
{
    char tmp[128];
    if (f->len == 0 || f->len >= sizeof tmp) return 0;
    memcpy(tmp, f->p, f->len);
    tmp[f->len] = 0;
    char *end;
    *v = kl_strtod(tmp, &end);
    return end == tmp + f->len;
}

/* A header's fields are all text, none a number (empty fields do not
 * count): a first row with some numbers and some text is a data row whose
 * bad field gets its error, not silently a header. */
static int row_is_header(const csv_state *st)
{
    double v;
    int text = 0;
    for (size_t i = 0; i < st->nf; i++) {
        if (!st->f[i].len) continue;
        if (to_number(&st->f[i], &v)) return 0;
        text = 1;
    }
    return text;
}

/* Appends the current row's features and label. */
static kl_status add_row(csv_state *st, long line, long label_col)
{
    char buf[64];
    KL_TRY(grow((void **)&st->x, &st->capx, st->nx + st->nf, sizeof(float)));
    for (size_t i = 0; i < st->nf; i++) {
        const field *f = &st->f[i];
        double v;
        if (f->len == 0)
            return kl_fail(KL_EFORMAT, "%s:%ld: column %zu: empty field", st->name, line, i + 1);
        if (!to_number(f, &v))
            return kl_fail(KL_EFORMAT, "%s:%ld: column %zu: '%s' is not a number",
                           st->name, line, i + 1, show(f, buf, sizeof buf));
        if ((long)i == label_col) {
            if (!(v >= 0 && v <= INT32_MAX && v == floor(v)))
                return kl_fail(KL_EFORMAT, "%s:%ld: column %zu: label '%s' is not a non-negative integer",
                               st->name, line, i + 1, show(f, buf, sizeof buf));
            KL_TRY(grow((void **)&st->y, &st->capy, st->ny + 1, sizeof(int32_t)));
            st->y[st->ny++] = (int32_t)v;
            continue;
        }
        if (!isfinite(v) || fabs(v) > FLT_MAX)
            return kl_fail(KL_EFORMAT, "%s:%ld: column %zu: '%s' is not a finite f32 number",
                           st->name, line, i + 1, show(f, buf, sizeof buf));
        st->x[st->nx++] = (float)v;
    }
    return KL_OK;
}

static kl_status parse(csv_state *st, const char *s, size_t n, const kl_csv_opts *o)
{
    size_t pos = 0, ncols = 0;
    long line = 0, label_col = -2;
    if (n >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) pos = 3; /* UTF-8 BOM */
    while (pos < n) {
        const char *nl = memchr(s + pos, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - (s + pos)) : n - pos;
        const char *ln = s + pos;
        pos += len + 1;
        line++;
        if (len && ln[len - 1] == '\r') len--;
        size_t k = 0;
        while (k < len && (is_blank(ln[k]) || ln[k] == '\r')) k++;
        if (k == len) continue; /* blank line */
        KL_TRY(split(st, ln, len, line));
        if (ncols == 0) { /* first row: column count, header, label column */
            ncols = st->nf;
            label_col = o->label_col == -1 ? (long)ncols - 1 : o->label_col;
            if (label_col >= (long)ncols)
                return kl_fail(KL_EINVAL, "%s: label_col %ld out of range for %zu columns (0-based)",
                               st->name, label_col, ncols);
            st->ncols = ncols;
            st->has_label = label_col >= 0;
            if (ncols - (label_col >= 0) == 0)
                return kl_fail(KL_EFORMAT, "%s:%ld: only a label column, no features", st->name, line);
            if (o->header == 1 || (o->header == -1 && row_is_header(st))) continue;
        }
        if (st->nf != ncols)
            return kl_fail(KL_EFORMAT, "%s:%ld: %zu columns, expected %zu", st->name, line,
                           st->nf, ncols);
        KL_TRY(add_row(st, line, label_col));
        KL_TRY(grow((void **)&st->lines, &st->capl, (size_t)st->rows + 1, sizeof *st->lines));
        st->lines[st->rows++] = line;
    }
    if (st->rows == 0) return kl_fail(KL_EFORMAT, "%s: no data rows", st->name);
    return KL_OK;
}

kl_status kl_dataset_parse_csv_mem(const void *buf, size_t n, const char *name,
                                   const kl_csv_opts *o, kl_dataset **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "parse_csv: out is NULL");
    *out = NULL;
    kl_csv_opts def = KL_CSV_OPTS_DEFAULT;
    if (!o) o = &def;
    if (!name) name = "csv";
    char delim = o->delim ? o->delim : ',';
    if (delim == '"' || delim == '\n' || delim == '\r')
        return kl_fail(KL_EINVAL, "%s: delimiter 0x%02x is not allowed", name, (unsigned char)delim);
    if (o->label_col < -2)
        return kl_fail(KL_EINVAL, "%s: label_col %d (use >= 0, -1 = last, -2 = none)", name, o->label_col);
    if (o->header < -1 || o->header > 1)
        return kl_fail(KL_EINVAL, "%s: header %d (use 1, 0 or -1 = auto)", name, o->header);
    if (!buf && n) return kl_fail(KL_EMISUSE, "%s: buffer is NULL", name);
    csv_state st = {.name = name, .delim = delim};
    kl_status s = parse(&st, buf, buf ? n : 0, o);
    kl_dataset *ds = NULL;
    if (s == KL_OK) {
        int64_t nfeat = (int64_t)st.ncols - st.has_label;
        s = kl_dataset_alloc(st.rows, 1, &nfeat, st.has_label, name, &ds);
        if (s == KL_OK) {
            memcpy(ds->x, st.x, st.nx * sizeof(float));
            if (st.has_label) memcpy(ds->y, st.y, st.ny * sizeof(int32_t));
            ds->lines = st.lines, st.lines = NULL;
            kl_dataset_count_classes(ds);
            *out = ds;
        }
    }
    kl_free(st.f);
    kl_free(st.x);
    kl_free(st.y);
    kl_free(st.lines);
    return s;
}

kl_status kl_dataset_load_csv(const char *path, const kl_csv_opts *o, kl_dataset **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "load_csv: out is NULL");
    *out = NULL;
    unsigned char *buf;
    size_t n;
    KL_TRY(kl_read_file(path, &buf, &n));
    kl_status s = kl_dataset_parse_csv_mem(buf, n, path, o, out);
    kl_free(buf);
    return s;
}
