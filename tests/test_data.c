/* Data layer: IDX and CSV loading, dataset operations, shuffles. */
#define _GNU_SOURCE
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "core/error.h"
#include "kiln/data.h"
#include "testutil.h"

static char g_dir[64];
static char g_path[512];

static const char *path(const char *name)
{
    snprintf(g_path, sizeof g_path, "%s/%s", g_dir, name);
    return g_path;
}

static void write_file(const char *name, const void *p, size_t n)
{
    FILE *f = fopen(path(name), "wb");
    CHECK(f != NULL);
    if (!f) return;
    CHECK(fwrite(p, 1, n, f) == n);
    fclose(f);
}

static void write_gz(const char *name, const void *p, size_t n)
{
    gzFile gz = gzopen(path(name), "wb");
    CHECK(gz != NULL);
    if (!gz) return;
    CHECK(gzwrite(gz, p, (unsigned)n) == (int)n);
    gzclose(gz);
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(p);
}

/* Builds an IDX buffer: header for (type, ndim, dims) and nbytes of data. */
static size_t make_idx(unsigned char *out, int type, int ndim, const uint32_t *dims,
                       const void *data, size_t nbytes)
{
    size_t k = 0;
    out[k++] = 0, out[k++] = 0, out[k++] = (unsigned char)type, out[k++] = (unsigned char)ndim;
    for (int i = 0; i < ndim; i++) {
        out[k++] = dims[i] >> 24, out[k++] = dims[i] >> 16;
        out[k++] = dims[i] >> 8, out[k++] = dims[i];
    }
    memcpy(out + k, data, nbytes);
    return k + nbytes;
}

static uint32_t g_rng = 12345;
static uint32_t rnd(void) { return g_rng = g_rng * 1664525u + 1013904223u; }

static void test_idx_roundtrip(void)
{
    enum { N = 5, H = 3, W = 4 };
    unsigned char px[N * H * W], lab[N], buf[512];
    for (int i = 0; i < N * H * W; i++) px[i] = rnd() >> 24;
    for (int i = 0; i < N; i++) lab[i] = (rnd() >> 24) % 10;
    lab[2] = 9;
    uint32_t d3[3] = {N, H, W}, d1[1] = {N};
    size_t ni = make_idx(buf, 0x08, 3, d3, px, sizeof px);
    write_file("images.idx", buf, ni);
    write_gz("images.idx.gz", buf, ni);
    size_t nl = make_idx(buf, 0x08, 1, d1, lab, sizeof lab);
    write_file("labels.idx", buf, nl);
    write_gz("labels.idx.gz", buf, nl);
    const char *pairs[2][2] = {{"images.idx", "labels.idx"}, {"images.idx.gz", "labels.idx.gz"}};
    for (int v = 0; v < 2; v++) {
        char im[512], lb[512];
        snprintf(im, sizeof im, "%s", path(pairs[v][0]));
        snprintf(lb, sizeof lb, "%s", path(pairs[v][1]));
        kl_dataset *ds = NULL;
        CHECK_OK(kl_dataset_load_idx(im, lb, &ds));
        if (!ds) continue;
        CHECK(kl_dataset_count(ds) == N);
        CHECK(kl_dataset_sample_ndim(ds) == 3);
        const int64_t *d = kl_dataset_sample_dims(ds);
        CHECK(d[0] == 1 && d[1] == H && d[2] == W);
        CHECK(kl_dataset_sample_size(ds) == H * W);
        CHECK(kl_dataset_classes(ds) == 10);
        CHECK(kl_dataset_class_name(ds, 0) == NULL);
        int same = 1;
        for (int i = 0; i < N * H * W; i++)
            same &= fabsf(kl_dataset_features(ds)[i] - px[i] / 255.0f) < 1e-7f;
        for (int i = 0; i < N; i++) same &= kl_dataset_labels(ds)[i] == lab[i];
        CHECK(same);
        CHECK_OK(kl_dataset_check_labels(ds, 10));
        CHECK_ERR(kl_dataset_check_labels(ds, 9), KL_EFORMAT, "labels.idx");
        CHECK_ERR(kl_dataset_check_labels(ds, 9), KL_EFORMAT, "sample 2: label 9 out of range [0,9)");
        kl_dataset_free(ds);
    }
    /* Images only; 2-D images [n, d] keep sample dims [d]. */
    kl_dataset *ds = NULL;
    int16_t v16[6] = {-300, 2, 7, 32767, -32768, 0};
    unsigned char be16[12];
    for (int i = 0; i < 6; i++) be16[2 * i] = (uint16_t)v16[i] >> 8, be16[2 * i + 1] = v16[i] & 0xff;
    uint32_t d2[2] = {2, 3};
    write_file("i16.idx", buf, make_idx(buf, 0x0B, 2, d2, be16, sizeof be16));
    CHECK_OK(kl_dataset_load_idx(path("i16.idx"), NULL, &ds));
    if (ds) {
        CHECK(kl_dataset_sample_ndim(ds) == 1 && kl_dataset_sample_dims(ds)[0] == 3);
        CHECK(kl_dataset_labels(ds) == NULL && kl_dataset_classes(ds) == 0);
        CHECK(kl_dataset_features(ds)[0] == -300.0f && kl_dataset_features(ds)[4] == -32768.0f);
        CHECK_ERR(kl_dataset_check_labels(ds, 3), KL_EINVAL, "no labels");
    }
    kl_dataset_free(ds);
}

static void test_idx_types(void)
{
    unsigned char buf[256];
    uint32_t d[1] = {2};
    kl_idx *a = NULL;
    struct { int type; unsigned char data[16]; double v0, v1; } cases[] = {
        {0x08, {200, 3}, 200, 3},
        {0x09, {0xfe, 0x7f}, -2, 127},
        {0x0B, {0xff, 0xfe, 0x01, 0x00}, -2, 256},
        {0x0C, {0xff, 0xff, 0xff, 0xf9, 0, 1, 0, 0}, -7, 65536},
        {0x0D, {0x3f, 0xc0, 0, 0, 0xc1, 0x20, 0, 0}, 1.5, -10},
        {0x0E, {0x40, 0x09, 0x21, 0xfb, 0x54, 0x44, 0x2d, 0x18, 0xbf, 0xf0, 0, 0, 0, 0, 0, 0},
         3.141592653589793, -1},
    };
    size_t esz[] = {1, 1, 2, 4, 4, 8};
    for (int i = 0; i < 6; i++) {
        size_t n = make_idx(buf, cases[i].type, 1, d, cases[i].data, 2 * esz[i]);
        CHECK_OK(kl_idx_parse_mem(buf, n, "t.idx", &a));
        if (!a) continue;
        CHECK((int)kl_idx_elem_type(a) == cases[i].type && kl_idx_ndim(a) == 1);
        CHECK(kl_idx_dims(a)[0] == 2 && kl_idx_count(a) == 2);
        CHECK(kl_idx_get(a, 0) == cases[i].v0 && kl_idx_get(a, 1) == cases[i].v1);
        CHECK(kl_idx_get(a, 2) == 0 && kl_idx_get(a, -1) == 0);
        kl_idx_free(a);
    }
    kl_idx_free(NULL);
    /* An f32 [2,2,1,1] image file: 4-D keeps [2,1,1]; values unscaled. */
    uint32_t d4[4] = {2, 2, 1, 1};
    unsigned char f[16] = {0x3f, 0xc0, 0, 0, 0xc1, 0x20, 0, 0, 0x42, 0x28, 0, 0, 0, 0, 0, 0};
    write_file("f32.idx", buf, make_idx(buf, 0x0D, 4, d4, f, 16));
    kl_dataset *ds = NULL;
    CHECK_OK(kl_dataset_load_idx(path("f32.idx"), NULL, &ds));
    if (ds) {
        CHECK(kl_dataset_sample_ndim(ds) == 3 && kl_dataset_sample_dims(ds)[0] == 2);
        CHECK(kl_dataset_features(ds)[1] == -10.0f && kl_dataset_features(ds)[2] == 42.0f);
    }
    kl_dataset_free(ds);
    /* f64 beyond the f32 range cannot become a feature. */
    unsigned char big[8] = {0x7f, 0xef, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    uint32_t d11[2] = {1, 1};
    write_file("big.idx", buf, make_idx(buf, 0x0E, 2, d11, big, 8));
    CHECK_ERR(kl_dataset_load_idx(path("big.idx"), NULL, &ds), KL_EFORMAT, "outside the f32 range");
    CHECK(ds == NULL);
}

static void test_idx_errors(void)
{
    unsigned char buf[512], px[64] = {0}, lab[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    kl_idx *a = (kl_idx *)&a;
    uint32_t d3[3] = {5, 3, 4}, d1[1] = {5};
    size_t n = make_idx(buf, 0x08, 3, d3, px, 60);
    CHECK_ERR(kl_idx_parse_mem(buf, n - 10, "img.idx", &a), KL_EFORMAT,
              "img.idx: truncated: dims [5,3,4] u8 need 60 data bytes, got 50");
    CHECK(a == NULL);
    CHECK_ERR(kl_idx_parse_mem(buf, 3, "img.idx", &a), KL_EFORMAT, "img.idx: truncated: 3 bytes");
    CHECK_ERR(kl_idx_parse_mem(buf, 9, "img.idx", &a), KL_EFORMAT,
              "img.idx: truncated header: 9 bytes, 3 dims need 16");
    CHECK_ERR(kl_idx_parse_mem(buf, n + 3, "img.idx", &a), KL_EFORMAT,
              "img.idx: trailing data: 3 bytes after the 60 data bytes");
    CHECK_ERR(kl_idx_parse_mem(NULL, 0, "e.idx", &a), KL_EFORMAT, "e.idx: truncated");
    unsigned char bad[sizeof buf];
    memcpy(bad, buf, n);
    bad[0] = 0x12;
    CHECK_ERR(kl_idx_parse_mem(bad, n, "img.idx", &a), KL_EFORMAT, "img.idx: bad magic 12 00 08 03");
    bad[0] = 0, bad[2] = 0x0A;
    CHECK_ERR(kl_idx_parse_mem(bad, n, "img.idx", &a), KL_EFORMAT,
              "img.idx: unsupported element type 0x0a");
    bad[2] = 0x08, bad[3] = 0;
    CHECK_ERR(kl_idx_parse_mem(bad, n, "img.idx", &a), KL_EFORMAT, "img.idx: 0 dims");
    bad[3] = 9;
    CHECK_ERR(kl_idx_parse_mem(bad, n, "img.idx", &a), KL_EUNSUPPORTED, "img.idx: 9 dims, supported 1 to 8");
    uint32_t huge[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 3};
    size_t nh = make_idx(bad, 0x0E, 4, huge, px, 8);
    CHECK_ERR(kl_idx_parse_mem(bad, nh, "h.idx", &a), KL_EFORMAT, "need more than the 8 data bytes");
    uint32_t zero[2] = {0xffffffffu, 0};
    nh = make_idx(bad, 0x0E, 2, zero, px, 0);
    CHECK_OK(kl_idx_parse_mem(bad, nh, "z.idx", &a));
    CHECK(a && kl_idx_count(a) == 0);
    kl_idx_free(a);

    /* The dataset loader names the file on every error. */
    kl_dataset *ds = (kl_dataset *)&ds;
    write_file("short.idx", buf, n - 1);
    CHECK_ERR(kl_dataset_load_idx(path("short.idx"), NULL, &ds), KL_EFORMAT, "short.idx: truncated");
    CHECK(ds == NULL);
    write_file("img.idx", buf, n);
    char img[512];
    snprintf(img, sizeof img, "%s", path("img.idx"));
    uint32_t d4l[1] = {4};
    write_file("lab4.idx", buf, make_idx(buf, 0x08, 1, d4l, lab, 4));
    CHECK_ERR(kl_dataset_load_idx(img, path("lab4.idx"), &ds), KL_EFORMAT,
              "lab4.idx has 4 labels but");
    CHECK_ERR(kl_dataset_load_idx(img, path("lab4.idx"), &ds), KL_EFORMAT, "img.idx has 5 images");
    unsigned char neg[5] = {1, 0xfe, 0, 0, 0};
    write_file("neg.idx", buf, make_idx(buf, 0x09, 1, d1, neg, 5));
    CHECK_ERR(kl_dataset_load_idx(img, path("neg.idx"), &ds), KL_EFORMAT,
              "neg.idx: sample 1: label -2 is negative");
    write_file("flt.idx", buf, make_idx(buf, 0x0D, 1, d1, px, 20));
    CHECK_ERR(kl_dataset_load_idx(img, path("flt.idx"), &ds), KL_EFORMAT,
              "flt.idx: labels must be integers, got f32");
    uint32_t d51[2] = {5, 1};
    write_file("twod.idx", buf, make_idx(buf, 0x08, 2, d51, lab, 5));
    CHECK_ERR(kl_dataset_load_idx(img, path("twod.idx"), &ds), KL_EFORMAT,
              "twod.idx: labels must be 1-D, got dims [5,1]");
    uint32_t d0[3] = {0, 3, 4};
    write_file("none.idx", buf, make_idx(buf, 0x08, 3, d0, px, 0));
    CHECK_ERR(kl_dataset_load_idx(path("none.idx"), NULL, &ds), KL_EFORMAT, "none.idx: no samples");
    uint32_t dz[3] = {2, 0, 4};
    write_file("zdim.idx", buf, make_idx(buf, 0x08, 3, dz, px, 0));
    CHECK_ERR(kl_dataset_load_idx(path("zdim.idx"), NULL, &ds), KL_EFORMAT, "zdim.idx: dim 1 is 0");
    CHECK_ERR(kl_dataset_load_idx(path("missing.idx"), NULL, &ds), KL_EIO, "missing.idx: cannot open");
    /* A gzip file cut short. */
    n = make_idx(buf, 0x08, 3, d3, px, 60);
    write_gz("full.gz", buf, n);
    FILE *f = fopen(path("full.gz"), "rb");
    unsigned char gzb[512];
    size_t gn = f ? fread(gzb, 1, sizeof gzb, f) : 0;
    if (f) fclose(f);
    write_file("cut.gz", gzb, gn / 2);
    CHECK_ERR(kl_dataset_load_idx(path("cut.gz"), NULL, &ds), KL_EFORMAT, "cut.gz: bad gzip data");
    CHECK(ds == NULL);
}

/* Every allocation failure leaves *out NULL and leaks nothing (ASan). */
static void test_alloc_failures(void)
{
    unsigned char buf[256], px[24];
    for (int i = 0; i < 24; i++) px[i] = (unsigned char)i;
    uint32_t d3[3] = {2, 3, 4}, d1[1] = {2};
    write_file("a_img.idx", buf, make_idx(buf, 0x08, 3, d3, px, 24));
    write_file("a_lab.idx", buf, make_idx(buf, 0x08, 1, d1, px, 2));
    char img[512];
    snprintf(img, sizeof img, "%s", path("a_img.idx"));
    const char *csv = "x,y,label\n1,2,0\n3,4,1\n5,6,1\n";
    int fails = 0;
    for (long k = 1; k < 40; k++) {
        kl_dataset *ds = (kl_dataset *)&ds, *tr, *va;
        kl_test_fail_alloc(k);
        kl_status s = kl_dataset_load_idx(img, path("a_lab.idx"), &ds);
        kl_test_fail_alloc(0);
        if (s != KL_OK) fails += s == KL_ENOMEM && ds == NULL;
        kl_dataset_free(ds);
        kl_test_fail_alloc(k);
        s = kl_dataset_parse_csv_mem(csv, strlen(csv), "m.csv", NULL, &ds);
        kl_test_fail_alloc(0);
        if (s != KL_OK) fails += s == KL_ENOMEM && ds == NULL;
        if (s == KL_OK) {
            kl_test_fail_alloc(k);
            s = kl_dataset_split(ds, 1, 7, &tr, &va);
            kl_test_fail_alloc(0);
            if (s != KL_OK) fails += s == KL_ENOMEM && tr == NULL && va == NULL;
            if (s == KL_OK) kl_dataset_free(tr), kl_dataset_free(va);
        }
        kl_dataset_free(ds);
    }
    CHECK(fails > 10);
}

static void test_dataset_ops(void)
{
    enum { N = 37, S = 6 };
    float x[N * S];
    int32_t y[N];
    for (int i = 0; i < N; i++) {
        y[i] = i; /* labels identify samples through copies */
        for (int j = 0; j < S; j++) x[i * S + j] = (float)(rnd() % 1000) / 37.0f - 9.0f;
    }
    int64_t dims[2] = {2, 3};
    kl_dataset *ds = NULL, *sub = NULL, *tr = NULL, *va = NULL;
    CHECK_OK(kl_dataset_from_memory(N, 2, dims, x, y, &ds));
    if (!ds) return;
    CHECK(kl_dataset_classes(ds) == N && kl_dataset_sample_size(ds) == S);
    double sum = 0, sq = 0;
    for (int i = 0; i < N * S; i++) sum += x[i];
    for (int i = 0; i < N * S; i++) sq += (x[i] - sum / (N * S)) * (x[i] - sum / (N * S));
    float mean, std;
    CHECK_OK(kl_dataset_stats(ds, &mean, &std));
    CHECK(fabs(mean - sum / (N * S)) < 1e-5 && fabs(std - sqrt(sq / (N * S))) < 1e-5);

    CHECK_OK(kl_dataset_subset(ds, 5, 7, &sub));
    if (sub) {
        CHECK(kl_dataset_count(sub) == 7 && kl_dataset_labels(sub)[0] == 5);
        CHECK(!memcmp(kl_dataset_features(sub), x + 5 * S, 7 * S * sizeof(float)));
        CHECK(kl_dataset_sample_ndim(sub) == 2 && kl_dataset_sample_dims(sub)[1] == 3);
        CHECK(kl_dataset_classes(sub) == N);
    }
    kl_dataset_free(sub);
    CHECK_ERR(kl_dataset_subset(ds, 30, 8, &sub), KL_EINVAL, "[30,30+8) out of range for 37 samples");
    CHECK(sub == NULL);
    CHECK_ERR(kl_dataset_subset(ds, -1, 1, &sub), KL_EINVAL, "out of range");
    CHECK_OK(kl_dataset_subset(ds, 37, 0, &sub));
    CHECK(sub && kl_dataset_count(sub) == 0);
    kl_dataset_free(sub);

    CHECK_OK(kl_dataset_split(ds, 10, 99, &tr, &va));
    if (tr && va) {
        CHECK(kl_dataset_count(tr) == 27 && kl_dataset_count(va) == 10);
        int seen[N] = {0}, rows_ok = 1;
        const kl_dataset *parts[2] = {tr, va};
        for (int p = 0; p < 2; p++)
            for (int64_t i = 0; i < kl_dataset_count(parts[p]); i++) {
                int32_t id = kl_dataset_labels(parts[p])[i];
                seen[id]++;
                rows_ok &= !memcmp(kl_dataset_features(parts[p]) + i * S, x + id * S, S * sizeof(float));
            }
        int once = 1, moved = 0;
        for (int i = 0; i < N; i++) once &= seen[i] == 1;
        for (int i = 0; i < 10; i++) moved += kl_dataset_labels(va)[i] != i;
        CHECK(once && rows_ok && moved > 5);
        /* Same seed, same split; another seed, another split. */
        int64_t idx[N];
        kl_shuffle_indices(idx, N, 99, 0);
        int same = 1;
        for (int i = 0; i < 10; i++) same &= kl_dataset_labels(va)[i] == idx[i];
        for (int i = 10; i < N; i++) same &= kl_dataset_labels(tr)[i - 10] == idx[i];
        CHECK(same);
        kl_dataset *tr2, *va2;
        CHECK_OK(kl_dataset_split(ds, 10, 100, &tr2, &va2));
        CHECK(va2 && memcmp(kl_dataset_labels(va), kl_dataset_labels(va2), 10 * sizeof(int32_t)));
        kl_dataset_free(tr2);
        kl_dataset_free(va2);
    }
    kl_dataset_free(tr);
    kl_dataset_free(va);
    CHECK_ERR(kl_dataset_split(ds, 38, 1, &tr, &va), KL_EINVAL, "n_val 38 out of range [0,37]");
    CHECK(tr == NULL && va == NULL);
    CHECK_OK(kl_dataset_split(ds, 0, 1, &tr, &va));
    CHECK(tr && va && kl_dataset_count(va) == 0 && kl_dataset_count(tr) == N);
    kl_dataset_free(tr);
    kl_dataset_free(va);

    /* split_take: the split's datasets, the training set in place of the source */
    int64_t nvals[] = {0, 1, 10, 36, 37};
    for (int k = 0; k < 5; k++) {
        kl_dataset *cp, *va2 = NULL;
        CHECK_OK(kl_dataset_subset(ds, 0, N, &cp));
        CHECK_OK(kl_dataset_split(ds, nvals[k], 5 + k, &tr, &va));
        CHECK_OK(kl_dataset_split_take(cp, nvals[k], 5 + k, &va2));
        if (cp && tr && va && va2) {
            int64_t nt = kl_dataset_count(tr), nv = kl_dataset_count(va);
            CHECK(kl_dataset_count(cp) == nt && kl_dataset_count(va2) == nv && nt + nv == N);
            CHECK(!memcmp(kl_dataset_features(cp), kl_dataset_features(tr), (size_t)(nt * S) * sizeof(float)));
            CHECK(!memcmp(kl_dataset_labels(cp), kl_dataset_labels(tr), (size_t)nt * sizeof(int32_t)));
            CHECK(!memcmp(kl_dataset_features(va2), kl_dataset_features(va), (size_t)(nv * S) * sizeof(float)));
            CHECK(!memcmp(kl_dataset_labels(va2), kl_dataset_labels(va), (size_t)nv * sizeof(int32_t)));
            CHECK(kl_dataset_classes(cp) == N && kl_dataset_classes(va2) == N);
        }
        kl_dataset_free(cp);
        kl_dataset_free(tr);
        kl_dataset_free(va);
        kl_dataset_free(va2);
    }
    CHECK_ERR(kl_dataset_split_take(ds, 38, 1, &va), KL_EINVAL, "n_val 38 out of range [0,37]");
    CHECK(va == NULL && kl_dataset_count(ds) == N);
    CHECK_ERR(kl_dataset_split_take(NULL, 1, 1, &va), KL_EMISUSE, "dataset is NULL"); /* status.h: a null handle is misuse */
    CHECK_ERR(kl_dataset_normalize(NULL, 0, 1), KL_EMISUSE, "dataset_normalize: dataset is NULL");

    CHECK_OK(kl_dataset_normalize(ds, mean, std));
    float m2, s2;
    CHECK_OK(kl_dataset_stats(ds, &m2, &s2));
    CHECK(fabsf(m2) < 1e-5f && fabsf(s2 - 1) < 1e-5f);
    CHECK_ERR(kl_dataset_normalize(ds, 0, 0), KL_EINVAL, "std > 0, got mean 0 std 0");
    CHECK_ERR(kl_dataset_normalize(ds, NAN, 1), KL_EINVAL, "finite mean");
    kl_dataset_free(ds);

    /* from_memory argument checks. */
    int32_t bad[2] = {0, -4};
    CHECK_ERR(kl_dataset_from_memory(2, 2, dims, x, bad, &ds), KL_EINVAL, "sample 1: label -4 is negative");
    CHECK(ds == NULL);
    int64_t zd[2] = {2, 0};
    CHECK_ERR(kl_dataset_from_memory(2, 2, zd, x, NULL, &ds), KL_EINVAL, "sample dim 1 is 0");
    CHECK_ERR(kl_dataset_from_memory(2, 9, dims, x, NULL, &ds), KL_EINVAL, "ndim 9 out of range");
    CHECK_OK(kl_dataset_from_memory(0, 2, dims, NULL, NULL, &ds));
    CHECK(ds && kl_dataset_count(ds) == 0);
    CHECK_ERR(kl_dataset_stats(ds, &mean, &std), KL_EINVAL, "empty");
    kl_dataset_free(ds);
    kl_dataset_free(NULL);
}

static void test_shuffle(void)
{
    /* Golden values: the order must be the same on every machine. */
    int64_t idx[10], again[10], other[10];
    const int64_t golden[10] = {3, 1, 0, 4, 9, 7, 6, 2, 5, 8};
    kl_shuffle_indices(idx, 10, 42, 0);
    int same = 1;
    for (int i = 0; i < 10; i++) same &= idx[i] == golden[i];
    CHECK(same);
    if (!same) {
        for (int i = 0; i < 10; i++) fprintf(stderr, "%lld,", (long long)idx[i]);
        fprintf(stderr, "\n");
    }
    kl_shuffle_indices(again, 10, 42, 0);
    kl_shuffle_indices(other, 10, 42, 1);
    CHECK(!memcmp(idx, again, sizeof idx) && memcmp(idx, other, sizeof idx));
    /* Always a permutation, also for n = 0 and 1. */
    enum { M = 1000 };
    static int64_t big[M];
    static char seen[M];
    kl_shuffle_indices(big, M, 7, 3);
    int perm = 1;
    for (int i = 0; i < M; i++) perm &= big[i] >= 0 && big[i] < M && !seen[big[i]]++;
    CHECK(perm);
    kl_shuffle_indices(big, 1, 7, 3);
    CHECK(big[0] == 0);
    CHECK_OK(kl_shuffle_indices(NULL, 0, 7, 3));
    CHECK_ERR(kl_shuffle_indices(NULL, 4, 7, 3), KL_EMISUSE, "kl_shuffle_indices: idx is NULL"); /* was a SEGV */
    CHECK_ERR(kl_shuffle_indices(big, -1, 7, 3), KL_EINVAL, "kl_shuffle_indices: n is -1");
}

static void test_fashion_mnist(void)
{
    char im[512], lb[512];
    /* KILN_DATA_DIR overrides the folder; a missing file says what to do. */
    char *old = getenv("KILN_DATA_DIR");
    char *saved = old ? strdup(old) : NULL;
    setenv("KILN_DATA_DIR", g_dir, 1);
    CHECK_ERR(kl_fashion_mnist_paths("train", im, lb, sizeof im), KL_EIO,
              "apt-get install dataset-fashion-mnist");
    write_file("t10k-images-idx3-ubyte.gz", "x", 1);
    write_file("t10k-labels-idx1-ubyte", "x", 1);
    CHECK_OK(kl_fashion_mnist_paths("test", im, lb, sizeof im));
    CHECK(!strcmp(im, path("t10k-images-idx3-ubyte.gz")));
    CHECK(!strcmp(lb, path("t10k-labels-idx1-ubyte")));
    CHECK_ERR(kl_fashion_mnist_paths("test", im, lb, 8), KL_EINVAL, "buffer too small");
    CHECK_ERR(kl_fashion_mnist_paths("val", im, lb, sizeof im), KL_EINVAL, "split 'val'");
    if (saved) setenv("KILN_DATA_DIR", saved, 1);
    else unsetenv("KILN_DATA_DIR");
    free(saved);

    const char *splits[2] = {"train", "test"};
    const int64_t counts[2] = {60000, 10000};
    for (int i = 0; i < 2; i++) {
        if (kl_fashion_mnist_paths(splits[i], im, lb, sizeof im) != KL_OK) {
            printf("test_data: skipping Fashion-MNIST %s: %s\n", splits[i], kl_last_error());
            continue;
        }
        kl_dataset *ds = NULL;
        CHECK_OK(kl_dataset_load_idx(im, lb, &ds));
        if (!ds) continue;
        const int64_t *d = kl_dataset_sample_dims(ds);
        CHECK(kl_dataset_count(ds) == counts[i]);
        CHECK(kl_dataset_sample_ndim(ds) == 3 && d[0] == 1 && d[1] == 28 && d[2] == 28);
        CHECK_OK(kl_dataset_check_labels(ds, 10));
        CHECK(kl_dataset_classes(ds) == 10);
        float mean, std;
        CHECK_OK(kl_dataset_stats(ds, &mean, &std));
        CHECK(mean > 0.2f && mean < 0.4f && std > 0.25f && std < 0.45f); /* ~0.286, ~0.353 */
        kl_dataset_free(ds);
    }
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/kiln_data_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_idx_roundtrip();
    test_idx_types();
    test_idx_errors();
    test_alloc_failures();
    test_dataset_ops();
    test_shuffle();
    test_fashion_mnist();
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return kl_test_done("test_data");
}
