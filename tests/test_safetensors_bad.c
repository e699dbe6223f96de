/* safetensors reader on malformed input: every refusal's message, files
 * cut short at every byte, unaligned headers and empty files. */
#include "testutil.h"
#include "kiln/io.h"
#include "core/error.h"
#include "io/fileio.h"

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

static char g_dir[] = "/tmp/kiln_stbad_XXXXXX";

/* "<g_dir>/name" in a rotating buffer: valid for the next 15 calls. */
static const char *in_dir(const char *name)
{
    static char buf[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

/* A file image: 8-byte length, the JSON text, then data_len pattern bytes. */
static unsigned char *image(const char *json, size_t data_len, size_t *n)
{
    size_t h = strlen(json);
    unsigned char *b = malloc(8 + h + data_len + 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, json, h);
    for (size_t i = 0; i < data_len; i++) b[8 + h + i] = (unsigned char)(i * 7 + 1);
    *n = 8 + h + data_len;
    return b;
}

static void write_bytes(const char *path, const void *b, size_t n)
{
    FILE *fp = fopen(path, "wb");
    CHECK(fp && fwrite(b, 1, n, fp) == n);
    if (fp) fclose(fp);
}

/* The image must be refused from memory and from a file, both naming it. */
static void expect_bad(const char *json, size_t data_len, kl_status st, const char *msg)
{
    size_t n;
    unsigned char *b = image(json, data_len, &n);
    kl_st_file *f = (kl_st_file *)1;
    CHECK_ERR(kl_st_open_mem(b, n, "bad.safetensors", &f), st, msg);
    CHECK(f == NULL);
    CHECK(!strncmp(kl_last_error(), "bad.safetensors: ", 17));
    const char *path = in_dir("bad.safetensors");
    write_bytes(path, b, n);
    f = (kl_st_file *)1;
    CHECK_ERR(kl_st_open(path, &f), st, msg);
    CHECK(f == NULL && strstr(kl_last_error(), path) == kl_last_error());
    unlink(path);
    free(b);
}

static void test_malformed(void)
{
    kl_st_file *f;
    CHECK_ERR(kl_st_open_mem("\x02\0\0\0\0", 5, "short.st", &f), KL_EFORMAT,
              "short.st: not a safetensors file: 5 bytes, shorter than the 8-byte");
    CHECK_ERR(kl_st_open_mem("\x64\0\0\0\0\0\0\0{}", 10, "t.st", &f), KL_EFORMAT,
              "t.st: truncated: header length is 100 bytes but only 2 follow");
    CHECK_ERR(kl_st_open_mem("\0\xca\x9a\x3b\0\0\0\0{}", 10, "big.st", &f), KL_EFORMAT,
              "big.st: header length 1000000000 is over the 100000000 byte limit");
    CHECK_ERR(kl_st_open_mem("\0\0\0\0\0\0\0\x80{}", 10, NULL, &f), KL_EFORMAT,
              "<memory>: header length 9223372036854775808 is over");
    expect_bad("{\"a\": ", 0, KL_EFORMAT, "header is not valid JSON: line 1, column 6");
    expect_bad("{\"a\": {}}\n\n x", 0, KL_EFORMAT, "header is not valid JSON: line 3");
    expect_bad("", 0, KL_EFORMAT, "header is not valid JSON");
    expect_bad("{\"a\xff\": 1}", 0, KL_EFORMAT, "header is not valid JSON");
    expect_bad("[1, 2]", 0, KL_EFORMAT, "header is a list, expected a JSON object");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]}}", 8,
               KL_EFORMAT, "duplicate object key");
    expect_bad("{\"w\": 5}", 0, KL_EFORMAT, "tensor 'w' is an integer, expected an object");
    expect_bad("{\"w\": {\"shape\":[],\"data_offsets\":[0,4]}}", 4, KL_EFORMAT,
               "tensor 'w': missing \"dtype\"");
    expect_bad("{\"w\": {\"dtype\":\"F32\",\"shape\":[]}}", 4, KL_EFORMAT,
               "tensor 'w': missing \"data_offsets\"");
    expect_bad("{\"w\": {\"dtype\":7,\"shape\":[],\"data_offsets\":[0,4]}}", 4, KL_EFORMAT,
               "tensor 'w': dtype is an integer, expected a string");
    expect_bad("{\"w\": {\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               KL_EFORMAT, "tensor 'w': unknown dtype 'F33'");
    expect_bad("{\"mask\": {\"dtype\":\"BOOL\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
               KL_EUNSUPPORTED, "tensor 'mask': unsupported dtype 'BOOL' (kiln reads F32");
    expect_bad("{\"q\": {\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
               KL_EUNSUPPORTED, "tensor 'q': unsupported dtype 'F8_E4M3'");
    const char *bad_shapes[] = {"3", "[-1]", "[2.5]", "[\"2\"]", "[1,1,1,1,1,1,1,1,1]", "null"};
    for (int i = 0; i < 6; i++) {
        char json[200];
        snprintf(json, sizeof json,
                 "{\"w\": {\"dtype\":\"U8\",\"shape\":%s,\"data_offsets\":[0,1]}}",
                 bad_shapes[i]);
        char want[200];
        snprintf(want, sizeof want, "tensor 'w': shape must be a list of at most 8 "
                 "non-negative integers, got %s", bad_shapes[i]);
        expect_bad(json, 1, KL_EFORMAT, want);
    }
    const char *bad_offs[] = {"[0]", "[0,1,2]", "[-1,1]", "[0,\"1\"]", "{}", "[0.0,1]"};
    for (int i = 0; i < 6; i++) {
        char json[200];
        snprintf(json, sizeof json,
                 "{\"w\": {\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":%s}}", bad_offs[i]);
        char want[200];
        snprintf(want, sizeof want, "tensor 'w': data_offsets must be [begin, end] with "
                 "non-negative integers, got %s", bad_offs[i]);
        expect_bad(json, 1, KL_EFORMAT, want);
    }
    expect_bad("{\"w\": {\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[5,2]}}", 5,
               KL_EFORMAT, "tensor 'w': data_offsets [5,2] end before they begin");
    expect_bad("{\"fc1.weight\": {\"dtype\":\"F32\",\"shape\":[10,784],"
               "\"data_offsets\":[0,100]}}", 100, KL_EFORMAT,
               "bad.safetensors: tensor 'fc1.weight': data_offsets [0,100] hold 100 bytes "
               "but shape [10,784] f32 needs 31360");
    expect_bad("{\"w\": {\"dtype\":\"I64\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,0]}}", 0, KL_EFORMAT,
               "tensor 'w': shape [4294967296,4294967296] i64 is too large");
    expect_bad("{\"w\": {\"dtype\":\"F32\",\"shape\":[1024],\"data_offsets\":[0,4096]}}",
               1000, KL_EFORMAT,
               "bad.safetensors: truncated: header says 4096 data bytes, file has 1000");
    expect_bad("{\"a\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
               KL_EFORMAT, "tensors 'a' [0,8] and 'b' [4,12] overlap");
    expect_bad("{\"a\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20,
               KL_EFORMAT, "tensors not contiguous: 4 unused bytes before tensor 'b' at "
               "offset 12");
    expect_bad("{\"b\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16,
               KL_EFORMAT, "not contiguous: 8 unused bytes before tensor 'b' at offset 8");
    expect_bad("{\"a\": {\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12,
               KL_EFORMAT, "4 trailing bytes: tensors end at data offset 8 but the file "
               "has 12 data bytes");
    expect_bad("{}", 3, KL_EFORMAT, "3 trailing bytes");
    expect_bad("{\"__metadata__\": [1]}", 0, KL_EFORMAT,
               "__metadata__ is a list, expected an object of strings");
    expect_bad("{\"__metadata__\": {\"step\": 7}}", 0, KL_EFORMAT,
               "__metadata__ key 'step' is an integer, expected a string");

    CHECK_ERR(kl_st_open(in_dir("missing.safetensors"), &f), KL_EIO,
              "missing.safetensors: cannot open: No such file or directory");
    CHECK_ERR(kl_st_open(g_dir, &f), KL_EIO, "is a directory");
    CHECK_ERR(kl_st_open(NULL, &f), KL_EMISUSE, "null argument");
}

/* Odd-length header: data must still come back correct and aligned. */
static void test_unaligned_and_empty(void)
{
    size_t n;
    unsigned char *b = image("{\"__metadata__\":{\"k\":\"v\"},\"z\":{\"dtype\":\"F64\","
                             "\"shape\":[2],\"data_offsets\":[0,16]},\"e\":{\"dtype\":"
                             "\"BF16\",\"shape\":[3,0],\"data_offsets\":[16,16]}}", 16, &n);
    CHECK((n - 16) % 8 != 0);
    kl_st_file *f;
    CHECK_OK(kl_st_open_mem(b, n, "odd", &f));
    size_t nb;
    const unsigned char *d = kl_st_data(f, kl_st_find(f, "z"), &nb);
    CHECK(nb == 16 && ((uintptr_t)d % 8) == 0 && !memcmp(d, b + n - 16, 16));
    CHECK(kl_st_data(f, kl_st_find(f, "e"), &nb) && nb == 0);
    CHECK(kl_st_count(f) == 2 && kl_st_find(f, "__metadata__") == -1);
    CHECK(!strcmp(kl_st_meta(f, "k"), "v") && kl_st_meta(f, "x") == NULL);
    kl_st_close(f);
    free(b);

    b = image("{}", 0, &n);
    CHECK_OK(kl_st_open_mem(b, n, "empty", &f));
    CHECK(kl_st_count(f) == 0 && kl_st_find(f, "a") == -1 && kl_st_data(f, 0, &nb) == NULL);
    CHECK_ERR(kl_st_info(f, 0, NULL, NULL, NULL, NULL), KL_EINVAL,
              "empty: tensor index 0 out of range (file has 0)");
    kl_st_close(f);
    free(b);
    kl_st_close(NULL);
    CHECK(kl_st_count(NULL) == 0);
}

static void test_torn_file(void)
{
    kl_st_writer *w;
    CHECK_OK(kl_st_writer_new(&w));
    float a[10];
    int32_t b[3] = {-1, 7, 1 << 30};
    for (int i = 0; i < 10; i++) a[i] = 0.1f * (float)i - 0.3f;
    int64_t da[1] = {10}, db[1] = {3};
    CHECK_OK(kl_st_writer_add(w, "a", KL_F32, 1, da, a));
    CHECK_OK(kl_st_writer_add(w, "b", KL_I32, 1, db, b));
    const char *path = in_dir("torn.safetensors");
    CHECK_OK(kl_st_writer_save(w, path));
    kl_st_writer_free(w);
    void *raw;
    size_t n;
    CHECK_OK(kl_read_file_raw(path, &raw, &n));
    int refused = 0;
    for (size_t cut = 0; cut < n; cut++) {
        write_bytes(path, raw, cut);
        kl_st_file *f = (kl_st_file *)1;
        refused += kl_st_open(path, &f) == KL_EFORMAT && f == NULL;
    }
    CHECK(refused == (int)n);
    write_bytes(path, raw, n - 4);
    kl_st_file *f;
    char msg[200];
    snprintf(msg, sizeof msg, "%s: truncated: header says 52 data bytes, file has 48", path);
    CHECK_ERR(kl_st_open(path, &f), KL_EFORMAT, msg);
    kl_free(raw);
}

int main(void)
{
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_malformed();
    test_unaligned_and_empty();
    test_torn_file();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    CHECK(system(cmd) == 0);
    return kl_test_done("test_safetensors_bad");
}
