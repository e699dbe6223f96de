/* TensorBoard writer: CRC-32C known answers, TFRecord framing, and an event
 * file decoded back record by record (framing CRCs, Event fields, scalar
 * and histogram values). */
#include "testutil.h"
#include "monitor/tb_writer.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rd64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static uint64_t varint(const unsigned char **p, const unsigned char *end)
{
    uint64_t v = 0;
    for (int s = 0; *p < end && s < 64; s += 7) {
        unsigned char c = *(*p)++;
        v |= (uint64_t)(c & 0x7F) << s;
        if (!(c & 0x80)) break;
    }
    return v;
}

/* What one decoded event held (the fields this writer produces). */
typedef struct {
    double wall;
    int64_t step;
    char version[32], tag[64];
    int has_simple, has_histo, session; /* session: SessionLog.status (1 START) */
    float simple;
    double hmin, hmax, hnum, hsum, hsq, limits[64], counts[64];
    int nlim, ncnt;
} event;

static void decode_histo(const unsigned char *p, const unsigned char *end, event *e)
{
    while (p < end) {
        uint64_t key = varint(&p, end);
        int f = (int)(key >> 3), wt = (int)(key & 7);
        if (wt == 1) {
            double d;
            memcpy(&d, p, 8); /* little-endian host */
            p += 8;
            if (f == 1) e->hmin = d;
            if (f == 2) e->hmax = d;
            if (f == 3) e->hnum = d;
            if (f == 4) e->hsum = d;
            if (f == 5) e->hsq = d;
        } else if (wt == 2) {
            uint64_t n = varint(&p, end);
            double *dst = f == 6 ? e->limits : e->counts;
            int *cnt = f == 6 ? &e->nlim : &e->ncnt;
            for (uint64_t i = 0; i < n / 8 && i < 64; i++) memcpy(&dst[(*cnt)++], p + 8 * i, 8);
            p += n;
        } else return;
    }
}

static void decode_event(const unsigned char *p, const unsigned char *end, event *e)
{
    memset(e, 0, sizeof *e);
    while (p < end) {
        uint64_t key = varint(&p, end);
        int f = (int)(key >> 3), wt = (int)(key & 7);
        if (f == 1 && wt == 1) memcpy(&e->wall, p, 8), p += 8;
        else if (f == 2 && wt == 0) e->step = (int64_t)varint(&p, end);
        else if (f == 3 && wt == 2) {
            uint64_t n = varint(&p, end);
            memcpy(e->version, p, n < 31 ? n : 31);
            p += n;
        } else if (f == 5 && wt == 2) { /* Summary -> Value */
            uint64_t n = varint(&p, end);
            const unsigned char *s = p, *se = p + n;
            p += n;
            CHECK(varint(&s, se) == (1 << 3 | 2));
            uint64_t vn = varint(&s, se);
            const unsigned char *ve = s + vn;
            while (s < ve) {
                uint64_t k = varint(&s, ve);
                int vf = (int)(k >> 3);
                if (vf == 1) {
                    uint64_t tn = varint(&s, ve);
                    memcpy(e->tag, s, tn < 63 ? tn : 63);
                    s += tn;
                } else if (vf == 2) {
                    e->has_simple = 1;
                    memcpy(&e->simple, s, 4);
                    s += 4;
                } else if (vf == 5) {
                    uint64_t hn = varint(&s, ve);
                    e->has_histo = 1;
                    decode_histo(s, s + hn, e);
                    s += hn;
                } else break;
            }
        } else if (f == 7 && wt == 2) { /* SessionLog */
            uint64_t n = varint(&p, end);
            const unsigned char *s = p;
            p += n;
            CHECK(n == 2 && varint(&s, p) == (1 << 3 | 0));
            e->session = (int)varint(&s, p);
        } else {
            CHECK(!"unexpected Event field");
            return;
        }
    }
}

static void test_crc_and_frame(void)
{
    CHECK(tb_crc32c("123456789", 9) == 0xE3069283u);
    CHECK(tb_crc32c("", 0) == 0);
    unsigned char zeros[32] = {0}, ones[32];
    memset(ones, 0xFF, sizeof ones);
    CHECK(tb_crc32c(zeros, 32) == 0x8A9136AAu); /* RFC 3720 B.4 test vectors */
    CHECK(tb_crc32c(ones, 32) == 0x62A8AB43u);
    uint32_t c = tb_crc32c("123456789", 9);
    CHECK(tb_masked_crc32c("123456789", 9) == (((c >> 15) | (c << 17)) + 0xa282ead8u));

    unsigned char data[37], rec[37 + 16];
    for (int i = 0; i < 37; i++) data[i] = (unsigned char)(rand() & 0xFF);
    tb_frame(data, sizeof data, rec);
    CHECK(rd64(rec) == 37);
    CHECK(rd32(rec + 8) == tb_masked_crc32c(rec, 8));
    CHECK(!memcmp(rec + 12, data, 37));
    CHECK(rd32(rec + 12 + 37) == tb_masked_crc32c(data, 37));
}

/* Decodes up to max events of the file at path, checking each frame's CRCs; returns how many. */
static int read_events(const char *path, event *ev, int max)
{
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f) return 0;
    static unsigned char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    int ne = 0;
    for (size_t at = 0; at + 12 <= n && ne < max;) {
        uint64_t len = rd64(buf + at);
        CHECK(rd32(buf + at + 8) == tb_masked_crc32c(buf + at, 8));
        CHECK(at + 16 + len <= n);
        if (at + 16 + len > n) break;
        CHECK(rd32(buf + at + 12 + len) == tb_masked_crc32c(buf + at + 12, len));
        decode_event(buf + at + 12, buf + at + 12 + len, &ev[ne++]);
        at += 16 + len;
    }
    return ne;
}

static void test_file(const char *dir)
{
    tb_writer *w = NULL;
    char sub[512];
    snprintf(sub, sizeof sub, "%s/a/tb", dir);
    CHECK_OK(tb_writer_open(sub, -1, &w));
    CHECK(w && strstr(tb_writer_path(w), "/a/tb/events.out.tfevents."));
    float vals[1000], lo = INFINITY, hi = -INFINITY;
    double sum = 0;
    for (int i = 0; i < 1000; i++) {
        vals[i] = (float)(rand() / (double)RAND_MAX * 6 - 2);
        lo = fminf(lo, vals[i]), hi = fmaxf(hi, vals[i]), sum += vals[i];
    }
    float loss = 1.0f + (float)(rand() % 1000) / 997.0f;
    CHECK_OK(tb_scalar(w, "train/loss", 7, loss));
    CHECK_OK(tb_scalar(w, "train/lr", 1234567890123LL, 3e-4));
    CHECK_OK(tb_histogram(w, "params/w", 8, vals, 1000));
    float one = 2.5f, bad[3] = {NAN, 1.0f, INFINITY};
    CHECK_OK(tb_histogram(w, "params/one", 9, &one, 1));
    CHECK_OK(tb_histogram(w, "params/bad", 10, bad, 3));
    CHECK_OK(tb_writer_flush(w));
    char path[600];
    snprintf(path, sizeof path, "%s", tb_writer_path(w));
    tb_writer_close(w);
    tb_writer_close(NULL);

    event ev[8];
    int ne = read_events(path, ev, 8);
    CHECK(ne == 6);
    if (ne != 6) return;
    CHECK(!strcmp(ev[0].version, "brain.Event:2") && ev[0].wall > 1.6e9 && !ev[1].session);
    CHECK(!strcmp(ev[1].tag, "train/loss") && ev[1].step == 7 && ev[1].has_simple && ev[1].simple == loss);
    CHECK(!strcmp(ev[2].tag, "train/lr") && ev[2].step == 1234567890123LL && ev[2].simple == 3e-4f);
    event *h = &ev[3];
    CHECK(!strcmp(h->tag, "params/w") && h->step == 8 && h->has_histo && !h->has_simple);
    CHECK(h->hmin == lo && h->hmax == hi && h->hnum == 1000 && fabs(h->hsum - sum) < 1e-9);
    CHECK(h->nlim == 30 && h->ncnt == 30 && h->limits[29] == hi);
    double total = 0;
    for (int i = 0; i < h->ncnt; i++) total += h->counts[i];
    CHECK(total == 1000);
    for (int i = 1; i < h->nlim; i++) CHECK(h->limits[i] > h->limits[i - 1]);
    CHECK(ev[4].nlim == 1 && ev[4].counts[0] == 1 && ev[4].hmin == 2.5 && ev[4].hmax == 2.5 && ev[4].hsq == 6.25);
    /* num: the finite values only, what the buckets hold */
    CHECK(ev[5].hnum == 1 && ev[5].hmin == 1 && ev[5].hmax == 1 && ev[5].counts[0] == 1);
}

/* A resumed run's file: the version, then a SessionLog START at the step
 * after the checkpoint's (TensorBoard purges the older files' points from
 * there), then the scalars. */
static void test_resumed(const char *dir)
{
    tb_writer *w = NULL;
    char sub[512], path[600];
    snprintf(sub, sizeof sub, "%s/r/tb", dir);
    CHECK_OK(tb_writer_open(sub, 11, &w));
    CHECK_OK(tb_scalar(w, "train/loss", 12, 0.5));
    snprintf(path, sizeof path, "%s", tb_writer_path(w));
    tb_writer_close(w);
    event ev[4];
    int ne = read_events(path, ev, 4);
    CHECK(ne == 3);
    if (ne != 3) return;
    CHECK(!strcmp(ev[0].version, "brain.Event:2") && !ev[0].session);
    CHECK(ev[1].session == 1 && ev[1].step == 12 && !ev[1].version[0] && !ev[1].tag[0] && ev[1].wall > 1.6e9);
    CHECK(!strcmp(ev[2].tag, "train/loss") && ev[2].step == 12 && !ev[2].session);
}

int main(void)
{
    srand((unsigned)getpid());
    test_crc_and_frame();
    char dir[] = "/tmp/kiln_tb_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    test_file(dir);
    test_resumed(dir);
    /* a file where a directory must go: an error naming the path */
    char bad[600];
    snprintf(bad, sizeof bad, "%s/file", dir);
    FILE *f = fopen(bad, "w");
    if (f) fclose(f);
    tb_writer *w = (tb_writer *)1;
    snprintf(bad, sizeof bad, "%s/file/tb", dir);
    CHECK(tb_writer_open(bad, -1, &w) != KL_OK && w == NULL && strstr(kl_last_error(), "file"));
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return kl_test_done("test_tb_writer");
}
