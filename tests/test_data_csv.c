/* Data layer: numeric CSV datasets. */
#define _GNU_SOURCE
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "kiln/data.h"
#include "testutil.h"

static char g_dir[64];

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(p);
}

/* Parses text from an exact-size heap copy, so ASan catches over-reads. */
static kl_status parse(const char *text, const kl_csv_opts *o, kl_dataset **out)
{
    size_t n = strlen(text);
    char *copy = malloc(n ? n : 1);
    memcpy(copy, text, n);
    kl_status s = kl_dataset_parse_csv_mem(copy, n, "data.csv", o, out);
    free(copy);
    return s;
}

static int feats_equal(const kl_dataset *ds, const float *want, int n)
{
    for (int i = 0; i < n; i++)
        if (fabsf(kl_dataset_features(ds)[i] - want[i]) > 1e-6f) return 0;
    return 1;
}

static void test_csv_ok(void)
{
    kl_dataset *ds = NULL;
    /* Auto header, label last, CRLF, blank lines, spaces, quotes. */
    CHECK_OK(parse("\xEF\xBB\xBF" "sepal len, \"w, cm\" ,class\r\n"
                   "5.1, 3.5 ,0\r\n\r\n  \n"
                   "-4.9e-1,\"3\",2\r\n"
                   "7,0x10,1", NULL, &ds));
    if (ds) {
        float want[6] = {5.1f, 3.5f, -0.49f, 3, 7, 16};
        CHECK(kl_dataset_count(ds) == 3 && kl_dataset_sample_ndim(ds) == 1);
        CHECK(kl_dataset_sample_dims(ds)[0] == 2 && feats_equal(ds, want, 6));
        const int32_t *y = kl_dataset_labels(ds);
        CHECK(y[0] == 0 && y[1] == 2 && y[2] == 1 && kl_dataset_classes(ds) == 3);
    }
    kl_dataset_free(ds);
    /* Auto: a numeric first row is data. Label in column 0, ';' separated. */
    kl_csv_opts o = {.label_col = 0, .header = -1, .delim = ';'};
    CHECK_OK(parse("3;1.25;-2\n0;4;8\n", &o, &ds));
    if (ds) {
        float want[4] = {1.25f, -2, 4, 8};
        CHECK(kl_dataset_count(ds) == 2 && feats_equal(ds, want, 4));
        CHECK(kl_dataset_labels(ds)[0] == 3 && kl_dataset_labels(ds)[1] == 0);
    }
    kl_dataset_free(ds);
    /* Forced header skips a numeric first row; no labels keeps all columns. */
    o = (kl_csv_opts){.label_col = -2, .header = 1};
    CHECK_OK(parse("9,9,9\n1,2,3\n4,5,6\n", &o, &ds));
    if (ds) {
        float want[6] = {1, 2, 3, 4, 5, 6};
        CHECK(kl_dataset_count(ds) == 2 && kl_dataset_sample_dims(ds)[0] == 3);
        CHECK(feats_equal(ds, want, 6) && kl_dataset_labels(ds) == NULL);
        CHECK(kl_dataset_classes(ds) == 0);
    }
    kl_dataset_free(ds);
    /* Labels written as 2.0 are integers. */
    CHECK_OK(parse("1,2.0\n", NULL, &ds));
    CHECK(ds && kl_dataset_labels(ds)[0] == 2);
    kl_dataset_free(ds);
}

static void test_csv_errors(void)
{
    kl_dataset *ds = (kl_dataset *)&ds;
    CHECK_ERR(parse("a,b,c\n1,2,0\n1,abc,1\n", NULL, &ds), KL_EFORMAT,
              "data.csv:3: column 2: 'abc' is not a number");
    CHECK(ds == NULL);
    CHECK_ERR(parse("a,b,c\n1,2,0\n\n1,2\n", NULL, &ds), KL_EFORMAT, "data.csv:4: 2 columns, expected 3");
    CHECK_ERR(parse("1,2,0\n1,2,3,4\n", NULL, &ds), KL_EFORMAT, "data.csv:2: 4 columns, expected 3");
    kl_csv_opts o = {.label_col = -1, .header = 0};
    CHECK_ERR(parse("x,y\n1,2\n", &o, &ds), KL_EFORMAT, "data.csv:1: column 1: 'x' is not a number");
    CHECK_ERR(parse("1,2,-1\n", NULL, &ds), KL_EFORMAT,
              "data.csv:1: column 3: label '-1' is not a non-negative integer");
    CHECK_ERR(parse("1,2,0\n1,2,1.5\n", NULL, &ds), KL_EFORMAT, "data.csv:2: column 3: label '1.5'");
    CHECK_ERR(parse("1,2,3e10\n", NULL, &ds), KL_EFORMAT, "label '3e10'");
    CHECK_ERR(parse("1,,0\n", NULL, &ds), KL_EFORMAT, "data.csv:1: column 2: empty field");
    CHECK_ERR(parse(",a,b\n1,,0\n", NULL, &ds), KL_EFORMAT, "data.csv:2: column 2: empty field");
    CHECK_ERR(parse("inf,1,0\n", NULL, &ds), KL_EFORMAT, "column 1: 'inf' is not a finite f32 number");
    CHECK_ERR(parse("1e39,1,0\n", NULL, &ds), KL_EFORMAT, "'1e39' is not a finite f32 number");
    CHECK_ERR(parse("1,\"2,0\n", NULL, &ds), KL_EFORMAT, "data.csv:1: column 2: unterminated quote");
    CHECK_ERR(parse("1,\"2\"x,0\n", NULL, &ds), KL_EFORMAT, "column 2: text after the closing quote");
    CHECK_ERR(parse("a,b\n", NULL, &ds), KL_EFORMAT, "data.csv: no data rows");
    CHECK_ERR(parse("", NULL, &ds), KL_EFORMAT, "data.csv: no data rows");
    CHECK_ERR(parse("3\n4\n", NULL, &ds), KL_EFORMAT, "data.csv:1: only a label column");
    o = (kl_csv_opts){.label_col = 3, .header = -1};
    CHECK_ERR(parse("1,2,3\n", &o, &ds), KL_EINVAL, "label_col 3 out of range for 3 columns");
    o = (kl_csv_opts){.label_col = -3, .header = -1};
    CHECK_ERR(parse("1,2,3\n", &o, &ds), KL_EINVAL, "label_col -3");
    o = (kl_csv_opts){.label_col = -1, .header = 2};
    CHECK_ERR(parse("1,2,3\n", &o, &ds), KL_EINVAL, "header 2");
    o = (kl_csv_opts){.label_col = -1, .header = -1, .delim = '"'};
    CHECK_ERR(parse("1,2,3\n", &o, &ds), KL_EINVAL, "delimiter 0x22");
    /* Long and non-printable fields are shortened in messages. */
    char line[200];
    memset(line, '7', sizeof line);
    memcpy(line, "1,0\n", 4);
    memcpy(line + 100, "\x01,0\n", 5);
    CHECK_ERR(parse(line, NULL, &ds), KL_EFORMAT, "'7777777777777777777777777777777777777777...'");
    CHECK(ds == NULL);
}

static void test_csv_files(void)
{
    char p[512], pz[512];
    snprintf(p, sizeof p, "%s/iris.csv", g_dir);
    snprintf(pz, sizeof pz, "%s/iris.csv.gz", g_dir);
    const char *text = "a,b,label\n0.5,1,1\n2,-3,0\n";
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    gzFile gz = gzopen(pz, "wb");
    gzputs(gz, text);
    gzclose(gz);
    const char *paths[2] = {p, pz};
    for (int i = 0; i < 2; i++) {
        kl_dataset *ds = NULL;
        CHECK_OK(kl_dataset_load_csv(paths[i], NULL, &ds));
        float want[4] = {0.5f, 1, 2, -3};
        CHECK(ds && kl_dataset_count(ds) == 2 && feats_equal(ds, want, 4));
        CHECK(ds && kl_dataset_labels(ds)[0] == 1);
        CHECK_ERR(kl_dataset_check_labels(ds, 1), KL_EFORMAT, "iris.csv");
        CHECK_ERR(kl_dataset_check_labels(ds, 1), KL_EFORMAT, ":2: label 1 out of range [0,1) (sample 0)");
        kl_dataset_free(ds);
    }
    f = fopen(p, "w");
    fputs("a,b,label\n1,2,0\n3,x4,1\n", f);
    fclose(f);
    kl_dataset *ds;
    CHECK_ERR(kl_dataset_load_csv(p, NULL, &ds), KL_EFORMAT, "iris.csv:3: column 2: 'x4' is not a number");
    snprintf(p, sizeof p, "%s/none.csv", g_dir);
    CHECK_ERR(kl_dataset_load_csv(p, NULL, &ds), KL_EIO, "none.csv: cannot open");
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/kiln_csv_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_csv_ok();
    test_csv_errors();
    test_csv_files();
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return kl_test_done("test_data_csv");
}
