/* TensorBoard event files written by hand: protobuf wire format (varints,
 * fixed64/fixed32, length-delimited fields) for Event, Summary,
 * Summary.Value and HistogramProto, each event framed as a TFRecord. */
#include "monitor/tb_writer.h"
#include "core/error.h"
#include "io/fileio.h"
#include "io/pb.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define HIST_BUCKETS 30

struct tb_writer {
    FILE *f;
    char *path;
};

/* ---- CRC-32C and TFRecord framing ---------------------------------------- */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1; /* reflected Castagnoli */
        crc_table[i] = c;
    }
}

uint32_t tb_crc32c(const void *data, size_t n)
{
    if (!crc_table[1]) crc_init(); /* idempotent: concurrent first calls write equal values */
    const unsigned char *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

uint32_t tb_masked_crc32c(const void *data, size_t n)
{
    uint32_t c = tb_crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

void tb_frame(const void *data, size_t n, unsigned char *out)
{
    kl_pb_le64(out, (uint64_t)n);
    kl_pb_le32(out + 8, tb_masked_crc32c(out, 8));
    if (n) memcpy(out + 12, data, n);
    kl_pb_le32(out + 12 + n, tb_masked_crc32c(data, n));
}

/* ---- protobuf encoding (io/pb.h) ------------------------------------------- */

static void put_packed_doubles(kl_pb *b, int field, const double *v, int n)
{
    kl_pb_tag(b, field, 2);
    kl_pb_varint(b, (uint64_t)n * 8);
    for (int i = 0; i < n; i++) {
        uint64_t u;
        unsigned char t[8];
        memcpy(&u, &v[i], 8);
        kl_pb_le64(t, u);
        kl_pb_raw(b, t, 8);
    }
}

/* An Event with wall_time and step, plus file_version, a Summary holding
 * one Value (value: the Value's encoded fields) or a SessionLog START
 * (start), framed and written. */
static kl_status write_event(tb_writer *w, int64_t step, const char *file_version, const kl_pb *value, int start)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    kl_pb ev = {0}, sum = {0}, log = {0};
    kl_pb_double(&ev, 1, (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec);
    kl_pb_int(&ev, 2, step); /* int64: negative values as 10-byte two's complement */
    if (file_version) kl_pb_str(&ev, 3, file_version);
    if (value) {
        kl_pb_msg(&sum, 1, value); /* Summary.value (repeated Value) */
        kl_pb_msg(&ev, 5, &sum);   /* Event.summary */
    }
    if (start) {
        kl_pb_int(&log, 1, 1);     /* SessionLog.status = START */
        kl_pb_msg(&ev, 7, &log);   /* Event.session_log (6 is the deprecated log_message) */
    }
    kl_status s = ev.oom || sum.oom || log.oom ? kl_fail(KL_ENOMEM, "out of memory encoding a TensorBoard event") : KL_OK;
    unsigned char *rec = s == KL_OK ? kl_malloc(ev.n + 16) : NULL;
    if (s == KL_OK && !rec) s = KL_ENOMEM;
    if (s == KL_OK) {
        tb_frame(ev.p, ev.n, rec);
        if (fwrite(rec, 1, ev.n + 16, w->f) != ev.n + 16)
            s = kl_fail(KL_EIO, "%s: write failed: %s", w->path, strerror(errno));
    }
    kl_free(rec);
    kl_free(ev.p);
    kl_free(sum.p);
    kl_free(log.p);
    return s;
}

kl_status tb_writer_open(const char *dir, int64_t resumed_step, tb_writer **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "tb_writer_open: out is NULL");
    *out = NULL;
    if (!dir) return kl_fail(KL_EMISUSE, "tb_writer_open: dir is NULL");
    KL_TRY(kl_mkdir_p(dir));
    char host[256] = "localhost";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0]) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = 0;
    for (char *c = host; *c; c++)
        if (*c == '/') *c = '_';
    size_t n = strlen(dir) + strlen(host) + 64;
    tb_writer *w = kl_calloc(1, sizeof *w);
    char *path = kl_malloc(n);
    if (!w || !path) {
        kl_free(w);
        kl_free(path);
        return KL_ENOMEM;
    }
    snprintf(path, n, "%s/events.out.tfevents.%lld.%s", dir, (long long)time(NULL), host);
    w->path = path;
    w->f = fopen(path, "ab"); /* append: a second writer in the same second adds to the file */
    if (!w->f) {
        kl_status s = kl_fail(KL_EIO, "%s: cannot open for writing: %s", path, strerror(errno));
        tb_writer_close(w);
        return s;
    }
    kl_status s = write_event(w, 0, "brain.Event:2", NULL, 0);
    /* with file_version 2 TensorBoard drops the earlier files' points from
     * this step on only at a SessionLog START: else repeated steps show twice */
    if (s == KL_OK && resumed_step >= 0) s = write_event(w, resumed_step + 1, NULL, NULL, 1);
    if (s == KL_OK) s = tb_writer_flush(w);
    if (s != KL_OK) {
        tb_writer_close(w);
        return s;
    }
    *out = w;
    return KL_OK;
}

void tb_writer_close(tb_writer *w)
{
    if (!w) return;
    if (w->f) fclose(w->f);
    kl_free(w->path);
    kl_free(w);
}

const char *tb_writer_path(const tb_writer *w) { return w ? w->path : NULL; }

kl_status tb_writer_flush(tb_writer *w)
{
    if (!w) return kl_fail(KL_EMISUSE, "tb_writer_flush: writer is NULL");
    if (fflush(w->f) != 0 || ferror(w->f)) return kl_fail(KL_EIO, "%s: write failed: %s", w->path, strerror(errno));
    return KL_OK;
}

kl_status tb_scalar(tb_writer *w, const char *tag, int64_t step, double value)
{
    if (!w || !tag) return kl_fail(KL_EMISUSE, "tb_scalar: %s is NULL", w ? "tag" : "writer");
    kl_pb v = {0};
    kl_pb_str(&v, 1, tag);                  /* Value.tag */
    kl_pb_float(&v, 2, (float)value);       /* Value.simple_value */
    kl_status s = v.oom ? kl_fail(KL_ENOMEM, "out of memory encoding scalar '%s'", tag)
                        : write_event(w, step, NULL, &v, 0);
    kl_free(v.p);
    return s;
}

kl_status tb_histogram(tb_writer *w, const char *tag, int64_t step, const float *x, int64_t n)
{
    if (!w || !tag || (!x && n > 0)) return kl_fail(KL_EMISUSE, "tb_histogram: null argument");
    double lo = INFINITY, hi = -INFINITY, sum = 0, sq = 0;
    int64_t finite = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i];
        if (!isfinite(d)) continue;
        finite++;
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
        sum += d, sq += d * d;
    }
    if (!finite) lo = hi = 0;
    /* equal-width buckets over [lo, hi]; bucket i holds (limit[i-1], limit[i]] */
    int nb = !finite ? 0 : hi > lo ? HIST_BUCKETS : 1;
    double limit[HIST_BUCKETS], count[HIST_BUCKETS] = {0}, width = nb > 1 ? (hi - lo) / nb : 0;
    for (int i = 0; i < nb; i++) limit[i] = i == nb - 1 ? hi : lo + width * (i + 1);
    for (int64_t i = 0; i < n && nb; i++) {
        double d = x[i];
        if (!isfinite(d)) continue;
        int k = nb > 1 ? (int)((d - lo) / width) : 0;
        if (k >= nb) k = nb - 1;
        while (k > 0 && d <= limit[k - 1]) k--; /* rounding at the edges */
        while (k < nb - 1 && d > limit[k]) k++;
        count[k] += 1;
    }
    kl_pb h = {0}, v = {0};
    kl_pb_double(&h, 1, lo);
    kl_pb_double(&h, 2, hi);
    kl_pb_double(&h, 3, (double)finite); /* num: what the buckets hold (NaN/Inf are in none) */
    kl_pb_double(&h, 4, sum);
    kl_pb_double(&h, 5, sq);
    if (nb) {
        put_packed_doubles(&h, 6, limit, nb);
        put_packed_doubles(&h, 7, count, nb);
    }
    kl_pb_str(&v, 1, tag);  /* Value.tag */
    kl_pb_msg(&v, 5, &h);   /* Value.histo */
    kl_status s = h.oom || v.oom ? kl_fail(KL_ENOMEM, "out of memory encoding histogram '%s'", tag)
                                 : write_event(w, step, NULL, &v, 0);
    kl_free(h.p);
    kl_free(v.p);
    return s;
}
