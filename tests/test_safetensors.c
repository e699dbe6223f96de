/* safetensors reader/writer: round trips of every dtype, writer errors,
 * atomic saves that fail, tensors read on demand from an open file (also
 * one replaced or cut short while open, and a pipe), and allocation-failure
 * loops (malformed files are in test_safetensors_bad.c).
 *
 * Also a helper for tests/test_safetensors_py.sh:
 *   test_safetensors --write PATH   writes the fixed file the script checks
 *   test_safetensors --check PATH   verifies the file the script wrote */
#include "testutil.h"
#include "kiln/io.h"
#include "core/error.h"
#include "io/fileio.h"

#include <dirent.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_dir[] = "/tmp/kiln_st_XXXXXX";

/* "<g_dir>/name" in a rotating buffer: valid for the next 15 calls. */
static const char *in_dir(const char *name)
{
    static char buf[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static uint64_t g_rng = 0x9E3779B97F4A7C15ull;
static uint8_t rnd8(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint8_t)(g_rng >> 24);
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

/* ---- round trip ------------------------------------------------------ */

typedef struct { const char *name; kl_dtype dt; int ndim; int64_t dims[KL_MAX_DIMS]; } spec;

static const spec g_specs[] = {
    {"layer.0.weight", KL_F32, 2, {7, 5}},
    {"layer.0.bias", KL_F32, 1, {5}},
    {"half", KL_F16, 3, {2, 3, 3}},
    {"brain", KL_BF16, 2, {9, 1}},
    {"ids", KL_I32, 1, {11}},
    {"pixels", KL_U8, 4, {2, 1, 3, 5}},
    {"pixels.odd", KL_U8, 1, {3}}, /* odd size must not misalign later tensors */
    {"grad", KL_F64, 2, {3, 3}},
    {"steps", KL_I64, 1, {4}},
    {"scalar", KL_F32, 0, {0}},
    {"empty", KL_F16, 2, {0, 4}},
    {"deep", KL_I32, 8, {1, 2, 1, 2, 1, 2, 1, 2}},
    {"\xc3\xa9t\xc3\xa9 \xe2\x82\xac", KL_U8, 1, {2}}, /* UTF-8 name */
    {"esc \"q\" \\ \n\x01/", KL_I64, 1, {1}},          /* JSON escapes */
};
#define NSPECS ((int)(sizeof g_specs / sizeof *g_specs))

static size_t spec_bytes(const spec *s)
{
    size_t n = kl_dtype_size(s->dt);
    for (int d = 0; d < s->ndim; d++) n *= (size_t)s->dims[d];
    return n;
}

static void check_file_matches(kl_st_file *f, unsigned char **data)
{
    CHECK(kl_st_count(f) == NSPECS);
    for (int i = 0; i < NSPECS; i++) {
        const spec *s = &g_specs[i];
        int k = kl_st_find(f, s->name);
        CHECK(k >= 0);
        const char *name;
        kl_dtype dt;
        int ndim;
        int64_t dims[KL_MAX_DIMS];
        CHECK_OK(kl_st_info(f, k, &name, &dt, &ndim, dims));
        CHECK(!strcmp(name, s->name) && dt == s->dt && ndim == s->ndim);
        CHECK(!memcmp(dims, s->dims, sizeof(int64_t) * (size_t)ndim));
        size_t nb;
        const void *d = kl_st_data(f, k, &nb);
        CHECK(d && nb == spec_bytes(s) && (nb == 0 || !memcmp(d, data[i], nb)));
        CHECK((uintptr_t)d % kl_dtype_size(dt) == 0);
    }
}

/* Random bytes for every spec (free each data[i]). */
static void random_specs(unsigned char **data)
{
    for (int i = 0; i < NSPECS; i++) {
        size_t n = spec_bytes(&g_specs[i]);
        data[i] = malloc(n + 1);
        for (size_t k = 0; k < n; k++) data[i][k] = rnd8();
    }
}

static kl_st_writer *make_writer(unsigned char **data, int reverse)
{
    kl_st_writer *w;
    CHECK_OK(kl_st_writer_new(&w));
    for (int j = 0; j < NSPECS; j++) {
        int i = reverse ? NSPECS - 1 - j : j;
        CHECK_OK(kl_st_writer_add(w, g_specs[i].name, g_specs[i].dt, g_specs[i].ndim,
                                  g_specs[i].dims, data[i]));
    }
    CHECK_OK(kl_st_writer_meta(w, "step", "1"));
    CHECK_OK(kl_st_writer_meta(w, "arch", "mlp 784-128-10"));
    CHECK_OK(kl_st_writer_meta(w, "step", "1200")); /* replaces */
    CHECK_OK(kl_st_writer_meta(w, "", ""));
    return w;
}

static void test_round_trip(void)
{
    unsigned char *data[NSPECS];
    random_specs(data);
    kl_st_writer *w = make_writer(data, 0);
    const char *path = in_dir("model.safetensors");
    CHECK_OK(kl_st_writer_save(w, path));
    kl_st_file *f;
    CHECK_OK(kl_st_open(path, &f));
    check_file_matches(f, data);
    CHECK(!strcmp(kl_st_meta(f, "step"), "1200"));
    CHECK(!strcmp(kl_st_meta(f, "arch"), "mlp 784-128-10"));
    CHECK(!strcmp(kl_st_meta(f, ""), "") && kl_st_meta(f, "nope") == NULL);
    kl_st_close(f);

    /* Header padded so the data section starts at a multiple of 8. */
    void *raw;
    size_t n1, n2;
    CHECK_OK(kl_read_file_raw(path, &raw, &n1));
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | ((unsigned char *)raw)[i];
    CHECK(hlen % 8 == 0 && ((char *)raw)[8] == '{');

    /* Same tensors added in another order give the same bytes; saving the
     * same writer twice replaces the file. */
    kl_st_writer *w2 = make_writer(data, 1);
    const char *path2 = in_dir("model2.safetensors");
    CHECK_OK(kl_st_writer_save(w2, path2));
    CHECK_OK(kl_st_writer_save(w2, path2));
    void *raw2;
    CHECK_OK(kl_read_file_raw(path2, &raw2, &n2));
    CHECK(n1 == n2 && !memcmp(raw, raw2, n1));
    CHECK_OK(kl_st_open_mem(raw2, n2, "copy", &f));
    check_file_matches(f, data);
    kl_st_close(f);
    /* a flipped bit in the data: the tensor's CRC-32 (metadata "crc32:<name>") catches it */
    ((unsigned char *)raw2)[n2 - 1] ^= 0x10;
    CHECK_OK(kl_st_open_mem(raw2, n2, "flipped", &f));
    {
        int bad = -1, ok = 0;
        for (int i = 0; i < kl_st_count(f); i++) {
            const char *nm;
            kl_dtype dt;
            int nd;
            int64_t dims[KL_MAX_DIMS];
            CHECK_OK(kl_st_info(f, i, &nm, &dt, &nd, dims));
            size_t nb = kl_dtype_size(dt);
            for (int d = 0; d < nd; d++) nb *= (size_t)dims[d];
            unsigned char buf[4096];
            if (nb > sizeof buf) continue;
            kl_status st = kl_st_read(f, i, buf, nb);
            if (st == KL_EFORMAT && strstr(kl_last_error(), "CRC-32") && strstr(kl_last_error(), "the file is damaged")) bad = i;
            else if (st == KL_OK) ok++;
        }
        CHECK(bad >= 0 && ok == kl_st_count(f) - 1); /* the last tensor's bytes changed, the others read */
    }
    kl_st_close(f);
    kl_free(raw);
    kl_free(raw2);
    kl_st_writer_free(w);
    kl_st_writer_free(w2);

    /* An empty writer makes a valid empty file. */
    CHECK_OK(kl_st_writer_new(&w));
    CHECK_OK(kl_st_writer_save(w, path));
    CHECK_OK(kl_st_open(path, &f));
    CHECK(kl_st_count(f) == 0 && kl_st_meta(f, "step") == NULL);
    kl_st_close(f);
    kl_st_writer_free(w);
    kl_st_writer_free(NULL);
    for (int i = 0; i < NSPECS; i++) free(data[i]);
}

static void test_writer_errors(void)
{
    kl_st_writer *w;
    CHECK_OK(kl_st_writer_new(&w));
    float x[6] = {1, 2, 3, 4, 5, 6};
    int64_t d2[2] = {2, 3}, neg[2] = {2, -3}, huge[3] = {1ll << 40, 1ll << 40, 1ll << 40};
    CHECK_OK(kl_st_writer_add(w, "x", KL_F32, 2, d2, x));
    CHECK_ERR(kl_st_writer_add(w, "x", KL_F32, 2, d2, x), KL_EINVAL,
              "tensor 'x' added twice");
    CHECK_ERR(kl_st_writer_add(w, "__metadata__", KL_F32, 2, d2, x), KL_EINVAL, "reserved");
    CHECK_ERR(kl_st_writer_add(w, "", KL_F32, 2, d2, x), KL_EINVAL, "empty tensor name");
    CHECK_ERR(kl_st_writer_add(w, "bad\xff", KL_F32, 2, d2, x), KL_EINVAL, "not valid UTF-8");
    CHECK_ERR(kl_st_writer_add(w, "y", KL_DTYPE_COUNT, 2, d2, x), KL_EINVAL,
              "tensor 'y': invalid dtype 7");
    CHECK_ERR(kl_st_writer_add(w, "y", KL_F32, 9, d2, x), KL_EINVAL,
              "tensor 'y': 9 dims (0 to 8 allowed)");
    CHECK_ERR(kl_st_writer_add(w, "y", KL_F32, 2, neg, x), KL_EINVAL,
              "tensor 'y': shape [2,-3] f32 is negative or too large");
    CHECK_ERR(kl_st_writer_add(w, "y", KL_F32, 3, huge, x), KL_EINVAL, "too large");
    CHECK_ERR(kl_st_writer_add(w, "y", KL_F32, 2, d2, NULL), KL_EMISUSE, "data is NULL");
    CHECK_ERR(kl_st_writer_add(NULL, "y", KL_F32, 2, d2, x), KL_EMISUSE, "null argument");
    CHECK_ERR(kl_st_writer_meta(w, "k", "\xc0\x80"), KL_EINVAL, "not valid UTF-8");
    CHECK_ERR(kl_st_writer_meta(w, "\xed\xa0\x80", "v"), KL_EINVAL, "not valid UTF-8");
    CHECK_ERR(kl_st_writer_meta(w, NULL, "v"), KL_EMISUSE, "null argument");
    CHECK_ERR(kl_st_writer_save(w, NULL), KL_EMISUSE, "null argument");
    /* Failed adds left the writer as it was. */
    const char *path = in_dir("x.safetensors");
    CHECK_OK(kl_st_writer_save(w, path));
    kl_st_file *f;
    CHECK_OK(kl_st_open(path, &f));
    CHECK(kl_st_count(f) == 1 && kl_st_find(f, "x") == 0);
    kl_st_close(f);
    kl_st_writer_free(w);
}

/* A file cut short at any byte is refused, never half-read. */
/* ---- atomic saves that fail ------------------------------------------ */

static int count_tmp_files(void)
{
    int n = 0;
    DIR *d = opendir(g_dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    return n;
}

/* The old file must still hold exactly its tensor "old" = 1..4. */
static void check_old_intact(const char *path)
{
    kl_st_file *f;
    CHECK_OK(kl_st_open(path, &f));
    size_t nb;
    const int32_t *d = kl_st_data(f, kl_st_find(f, "old"), &nb);
    CHECK(kl_st_count(f) == 1 && d && nb == 16 && d[0] == 1 && d[3] == 4);
    kl_st_close(f);
}

static void test_atomic_failures(void)
{
    int32_t old[4] = {1, 2, 3, 4};
    int64_t d4[1] = {4}, dbig[1] = {1 << 16};
    kl_st_writer *w_old, *w_new;
    CHECK_OK(kl_st_writer_new(&w_old));
    CHECK_OK(kl_st_writer_add(w_old, "old", KL_I32, 1, d4, old));
    CHECK_OK(kl_st_writer_new(&w_new));
    float *big = calloc(1 << 16, sizeof(float));
    CHECK_OK(kl_st_writer_add(w_new, "new", KL_F32, 1, dbig, big));

    /* The write itself fails (file size limit): old file untouched. */
    const char *path = in_dir("keep.safetensors");
    CHECK_OK(kl_st_writer_save(w_old, path));
    struct rlimit saved, lim;
    getrlimit(RLIMIT_FSIZE, &saved);
    lim = saved;
    lim.rlim_cur = 4096;
    signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    CHECK_ERR(kl_st_writer_save(w_new, path), KL_EIO, "keep.safetensors: cannot write "
              "temporary file");
    CHECK(strstr(kl_last_error(), "File too large (old file left as it was)"));
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, SIG_DFL);
    check_old_intact(path);
    CHECK(count_tmp_files() == 0);

    /* The target is a directory: refused before writing, directory and contents stay. */
    const char *dir = in_dir("adir");
    CHECK(mkdir(dir, 0755) == 0);
    char inside[600];
    snprintf(inside, sizeof inside, "%s/file", dir);
    write_bytes(inside, "x", 1);
    CHECK_ERR(kl_st_writer_save(w_new, dir), KL_EIO, "adir: is a directory, not a regular file");
    struct stat st;
    CHECK(stat(inside, &st) == 0 && st.st_size == 1 && count_tmp_files() == 0);

    /* No parent directory. */
    CHECK_ERR(kl_st_writer_save(w_new, in_dir("nodir/x.safetensors")), KL_EIO,
              "cannot create temporary file");

    /* A read-only directory (root ignores permissions, so only as a user). */
    if (geteuid() != 0) {
        const char *ro = in_dir("ro");
        char ro_file[600];
        CHECK(mkdir(ro, 0755) == 0);
        snprintf(ro_file, sizeof ro_file, "%s/keep.safetensors", ro);
        CHECK_OK(kl_st_writer_save(w_old, ro_file));
        CHECK(chmod(ro, 0555) == 0);
        CHECK_ERR(kl_st_writer_save(w_new, ro_file), KL_EIO, "Permission denied");
        check_old_intact(ro_file);
        CHECK(chmod(ro, 0755) == 0);
    }
    /* After all that the writer still saves fine. */
    CHECK_OK(kl_st_writer_save(w_new, path));
    kl_st_writer_free(w_old);
    kl_st_writer_free(w_new);
    free(big);
}

/* ---- tensors read on demand -------------------------------------------- */

static void test_read_on_demand(void)
{
    unsigned char *data[NSPECS];
    random_specs(data);
    kl_st_writer *w = make_writer(data, 0);
    const char *path = in_dir("lazy.safetensors");
    CHECK_OK(kl_st_writer_save(w, path));
    kl_st_writer_free(w);
    kl_st_file *f;
    CHECK_OK(kl_st_open(path, &f));
    /* each tensor into an odd address: kl_st_read has no alignment needs */
    for (int i = 0; i < NSPECS; i++) {
        size_t nb = spec_bytes(&g_specs[i]);
        unsigned char *buf = malloc(nb + 2);
        int k = kl_st_find(f, g_specs[i].name);
        CHECK_OK(kl_st_read(f, k, buf + 1, nb));
        CHECK(nb == 0 || !memcmp(buf + 1, data[i], nb));
        free(buf);
    }
    float one[35];
    int k0 = kl_st_find(f, "layer.0.weight");
    CHECK_ERR(kl_st_read(f, k0, one, 4), KL_EINVAL, "tensor 'layer.0.weight' holds 140 bytes, asked for 4");
    CHECK_ERR(kl_st_read(f, NSPECS, one, 4), KL_EINVAL, "tensor index 14 out of range (file has 14)");
    CHECK_ERR(kl_st_read(f, k0, NULL, 4), KL_EMISUSE, "kl_st_read: dst is NULL");
    /* replaced under the open file (an atomic save renames over it): the
     * open file still reads the tensors it was opened with */
    unsigned char *other[NSPECS];
    for (int i = 0; i < NSPECS; i++) {
        other[i] = malloc(spec_bytes(&g_specs[i]) + 1);
        memset(other[i], 0xA5, spec_bytes(&g_specs[i]));
    }
    w = make_writer(other, 0);
    CHECK_OK(kl_st_writer_save(w, path));
    kl_st_writer_free(w);
    CHECK_OK(kl_st_read(f, k0, one, sizeof one));
    CHECK(!memcmp(one, data[0], sizeof one));
    check_file_matches(f, data); /* kl_st_data reads the whole data section once */
    kl_st_close(f);
    /* cut short while open: the read fails and says so */
    CHECK_OK(kl_st_open(path, &f));
    struct stat st;
    CHECK(stat(path, &st) == 0 && truncate(path, st.st_size - 3) == 0);
    kl_status s = KL_OK; /* some tensor ends in the lost bytes */
    for (int i = 0; i < NSPECS && s == KL_OK; i++) {
        size_t nb = spec_bytes(&g_specs[i]);
        unsigned char *buf = malloc(nb + 1);
        s = kl_st_read(f, kl_st_find(f, g_specs[i].name), buf, nb);
        free(buf);
    }
    CHECK(s == KL_EIO && strstr(kl_last_error(), "before the data its header lists (changed while open?)"));
    CHECK(kl_st_data(f, k0, NULL) == NULL && strstr(kl_last_error(), "changed while open?"));
    kl_st_close(f);
    /* a pipe is read whole, and serves tensors the same way */
    w = make_writer(data, 0);
    CHECK_OK(kl_st_writer_save(w, path));
    kl_st_writer_free(w);
    void *raw;
    size_t n;
    CHECK_OK(kl_read_file_raw(path, &raw, &n));
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        _exit(write(fds[1], raw, n) == (ssize_t)n ? 0 : 1);
    }
    close(fds[1]);
    char pp[64];
    snprintf(pp, sizeof pp, "/proc/self/fd/%d", fds[0]);
    CHECK_OK(kl_st_open(pp, &f));
    check_file_matches(f, data);
    CHECK_OK(kl_st_read(f, k0, one, sizeof one));
    CHECK(!memcmp(one, data[0], sizeof one));
    kl_st_close(f);
    close(fds[0]);
    int status = 1;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    kl_free(raw);
    for (int i = 0; i < NSPECS; i++) free(data[i]), free(other[i]);
}

/* ---- allocation failures ---------------------------------------------- */

static void test_alloc_failures(void)
{
    /* Every allocation of kl_st_open_mem fails in turn; the padded header
     * variant makes one of the images take the data-realignment path, and
     * the last two runs route jansson's allocations through kl_malloc. */
    for (int pad = 0; pad < 4; pad++) {
        if (pad == 2) json_set_alloc_funcs(kl_malloc, kl_free);
        char json[300];
        snprintf(json, sizeof json, "{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\"},\"x\":"
                 "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"y\":{"
                 "\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}}%s",
                 pad % 2 ? " " : "");
        size_t n;
        unsigned char *b = image(json, 11, &n);
        int failures = 0, ok = 0;
        for (long k = 1; k < 1000 && !ok; k++) {
            kl_st_file *f = (kl_st_file *)1;
            kl_test_fail_alloc(k);
            kl_status s = kl_st_open_mem(b, n, "mem", &f);
            kl_test_fail_alloc(0);
            if (s == KL_OK) { ok = kl_st_count(f) == 2; kl_st_close(f); break; }
            failures++;
            /* jansson reports some of its allocation failures as syntax errors. */
            CHECK(f == NULL && ((s == KL_ENOMEM && strstr(kl_last_error(), "out of")) ||
                                (pad >= 2 && s == KL_EFORMAT &&
                                 strstr(kl_last_error(), "header is not valid JSON"))));
        }
        CHECK(ok && failures >= 5);
        free(b);
    }
    json_set_alloc_funcs(malloc, free);
    /* The same through the writer and a file. */
    int failures, ok;
    const char *path = in_dir("alloc.safetensors");
    float x[3] = {1.5f, -2, 0.25f};
    int64_t d[1] = {3};
    failures = ok = 0;
    for (long k = 1; k < 1000 && !ok; k++) {
        kl_st_writer *w = NULL;
        kl_test_fail_alloc(k);
        kl_status s = kl_st_writer_new(&w);
        if (s == KL_OK) s = kl_st_writer_add(w, "x", KL_F32, 1, d, x);
        if (s == KL_OK) s = kl_st_writer_meta(w, "k", "v");
        if (s == KL_OK) s = kl_st_writer_meta(w, "k", "w");
        if (s == KL_OK) s = kl_st_writer_save(w, path);
        kl_test_fail_alloc(0);
        kl_st_writer_free(w);
        if (s == KL_OK) { ok = 1; break; }
        failures++;
        CHECK(s == KL_ENOMEM && strstr(kl_last_error(), "out of"));
    }
    CHECK(ok && failures >= 5);
    ok = failures = 0;
    for (long k = 1; k < 1000 && !ok; k++) {
        kl_st_file *f = (kl_st_file *)1;
        kl_test_fail_alloc(k);
        kl_status s = kl_st_open(path, &f);
        kl_test_fail_alloc(0);
        if (s == KL_OK) { ok = !strcmp(kl_st_meta(f, "k"), "w"); kl_st_close(f); break; }
        failures++;
        CHECK(s == KL_ENOMEM && f == NULL);
    }
    CHECK(ok && failures >= 3);
}

/* ---- helper for test_safetensors_py.sh --------------------------------- */

/* a f32 [2,3] = 0, 0.5 .. 2.5; b i32 [4] = 1..4; c bf16 [3] = 1, -2.5, 0.375;
 * 'q"\<newline>' u8 [2] = 9, 8; metadata {"step": "7", "name": "kiln"}. */
static int py_write(const char *path)
{
    float a[6];
    for (int i = 0; i < 6; i++) a[i] = 0.5f * (float)i;
    int32_t b[4] = {1, 2, 3, 4};
    uint16_t c[3] = {0x3F80, 0xC020, 0x3EC0};
    int64_t da[2] = {2, 3}, db[1] = {4}, dc[1] = {3};
    kl_st_writer *w;
    kl_status s = kl_st_writer_new(&w);
    if (!s) s = kl_st_writer_add(w, "a", KL_F32, 2, da, a);
    if (!s) s = kl_st_writer_add(w, "b", KL_I32, 1, db, b);
    if (!s) s = kl_st_writer_add(w, "c", KL_BF16, 1, dc, c);
    uint8_t q[2] = {9, 8};
    int64_t dq[1] = {2};
    if (!s) s = kl_st_writer_add(w, "q\"\\\n", KL_U8, 1, dq, q);
    if (!s) s = kl_st_writer_meta(w, "step", "7");
    if (!s) s = kl_st_writer_meta(w, "name", "kiln");
    if (!s) s = kl_st_writer_save(w, path);
    kl_st_writer_free(w);
    if (s) fprintf(stderr, "--write: %s\n", kl_last_error());
    return s ? 1 : 0;
}

/* Checks one tensor of the Python-written file against expected bytes. */
static void py_expect(kl_st_file *f, const char *name, kl_dtype dt, int ndim,
                      const int64_t *dims, const void *want, size_t nbytes)
{
    int k = kl_st_find(f, name), nd = -1;
    kl_dtype got = KL_DTYPE_COUNT;
    int64_t gd[KL_MAX_DIMS];
    size_t nb = 0;
    const void *d = kl_st_data(f, k, &nb);
    if (k >= 0) CHECK_OK(kl_st_info(f, k, NULL, &got, &nd, gd));
    CHECK(k >= 0 && got == dt && nd == ndim && !memcmp(gd, dims, sizeof *gd * ndim));
    CHECK(d && nb == nbytes && !memcmp(d, want, nbytes));
    if (k < 0 || nb != nbytes) fprintf(stderr, "--check: tensor '%s' differs\n", name);
}

/* The file the script writes with numpy + safetensors.numpy.save_file:
 * w f32 [3,4] = i*0.25-1; h f16 [5] = .5,-1,2,65504,0; d f64 [2,2] =
 * 1.5,-2.25,1e300,3; i i32 [2,3] = -3..2; l i64 [3] = -2^40,0,2^50+7;
 * u u8 [4] = 0,1,128,255; e f32 [0,3]; s f32 [] = 42;
 * metadata {"format": "np", "epoch": "3"}. */
static int py_check(const char *path)
{
    kl_st_file *f;
    if (kl_st_open(path, &f) != KL_OK) {
        fprintf(stderr, "--check: %s\n", kl_last_error());
        return 1;
    }
    float w[12], s = 42, e = 0;
    for (int i = 0; i < 12; i++) w[i] = (float)i * 0.25f - 1;
    uint16_t h[5] = {0x3800, 0xBC00, 0x4000, 0x7BFF, 0};
    double d[4] = {1.5, -2.25, 1e300, 3};
    int32_t iv[6] = {-3, -2, -1, 0, 1, 2};
    int64_t l[3] = {-(1ll << 40), 0, (1ll << 50) + 7};
    uint8_t u[4] = {0, 1, 128, 255};
    int64_t dw[2] = {3, 4}, dh[1] = {5}, dd[2] = {2, 2}, di[2] = {2, 3}, dl[1] = {3},
            du[1] = {4}, de[2] = {0, 3};
    CHECK(kl_st_count(f) == 8);
    py_expect(f, "w", KL_F32, 2, dw, w, sizeof w);
    py_expect(f, "h", KL_F16, 1, dh, h, sizeof h);
    py_expect(f, "d", KL_F64, 2, dd, d, sizeof d);
    py_expect(f, "i", KL_I32, 2, di, iv, sizeof iv);
    py_expect(f, "l", KL_I64, 1, dl, l, sizeof l);
    py_expect(f, "u", KL_U8, 1, du, u, sizeof u);
    py_expect(f, "e", KL_F32, 2, de, &e, 0);
    py_expect(f, "s", KL_F32, 0, de, &s, sizeof s);
    const char *fmt = kl_st_meta(f, "format"), *ep = kl_st_meta(f, "epoch");
    CHECK(fmt && !strcmp(fmt, "np") && ep && !strcmp(ep, "3"));
    kl_st_close(f);
    return kl_test_done("test_safetensors --check");
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write")) return py_write(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "--check")) return py_check(argv[2]);
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_round_trip();
    test_read_on_demand();
    test_writer_errors();
    test_atomic_failures();
    test_alloc_failures();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    CHECK(system(cmd) == 0);
    return kl_test_done("test_safetensors");
}
