/* Internal file helpers: whole-file reads, atomic writes, mkdir -p. */
#include "testutil.h"
#include "core/error.h"
#include "io/fileio.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[] = "/tmp/kiln_fileio_XXXXXX";

/* "<g_dir>/name" in a rotating buffer: valid for the next 15 calls. */
static const char *in_dir(const char *name)
{
    static char buf[16][512];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static void test_atomic_write_and_read(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s", in_dir("out.bin"));
    const void *chunks[4] = {"head:", NULL, "body", ""};
    size_t sizes[4] = {5, 0, 4, 0};
    CHECK_OK(kl_write_file_atomic(path, chunks, sizes, 4));
    void *data;
    size_t n;
    CHECK_OK(kl_read_file_raw(path, &data, &n));
    CHECK(n == 9 && !memcmp(data, "head:body", 9) && ((char *)data)[9] == 0);
    kl_free(data);

    /* Replace with a bigger random file; no temporary file is left. */
    size_t big = 3 << 20;
    unsigned char *buf = malloc(big);
    for (size_t i = 0; i < big; i++) buf[i] = (unsigned char)(i * 2654435761u >> 13);
    const void *c1[1] = {buf};
    CHECK_OK(kl_write_file_atomic(path, c1, &big, 1));
    CHECK_OK(kl_read_file_raw(path, &data, &n));
    CHECK(n == big && !memcmp(data, buf, big));
    kl_free(data);
    free(buf);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) != 0);

    CHECK_OK(kl_write_file_atomic(in_dir("empty"), NULL, NULL, 0));
    CHECK_OK(kl_read_file_raw(in_dir("empty"), &data, &n));
    CHECK(n == 0 && data && ((char *)data)[0] == 0);
    kl_free(data);

    /* Failures name the path and the reason, and leave nothing behind. */
    CHECK_ERR(kl_write_file_atomic(in_dir("no/such/dir/f"), chunks, sizes, 1), KL_EIO,
              "no/such/dir/f: cannot create temporary file");
    CHECK(strstr(kl_last_error(), "No such file or directory"));
    const void *nullchunk[1] = {NULL};
    size_t one = 1;
    CHECK_ERR(kl_write_file_atomic(path, nullchunk, &one, 1), KL_EMISUSE, "chunk 0 is NULL");
    CHECK(access(tmp, F_OK) != 0);
    CHECK_OK(kl_read_file_raw(path, &data, &n));
    CHECK(n == big);
    kl_free(data);
    CHECK_ERR(kl_write_file_atomic("", chunks, sizes, 1), KL_EMISUSE, "null or empty");

    data = (void *)1;
    CHECK_ERR(kl_read_file_raw(in_dir("missing"), &data, &n), KL_EIO,
              "missing: cannot open: No such file or directory");
    CHECK(data == NULL && n == 0);
    CHECK_ERR(kl_read_file_raw(g_dir, &data, &n), KL_EIO, "is a directory, expected a file");
    CHECK_ERR(kl_read_file_raw(NULL, &data, &n), KL_EMISUSE, "null argument");

    /* Not a regular file, or one whose size says 0: read until end of file. */
    CHECK_OK(kl_read_file_raw("/dev/null", &data, &n));
    CHECK(n == 0);
    kl_free(data);
    CHECK_OK(kl_read_file_raw("/proc/self/status", &data, &n));
    CHECK(n > 10 && strstr(data, "Name:") && strlen(data) == n);
    kl_free(data);

    /* Allocation failure while reading. */
    kl_test_fail_alloc(1);
    CHECK_ERR(kl_read_file_raw(path, &data, &n), KL_ENOMEM, "out of host memory");
    kl_test_fail_alloc(0);
    CHECK(data == NULL);
}

/* Only regular files are replaced: a FIFO or device node at the path is
 * refused and left as it was; a symlink is kept and its target written. */
static void test_atomic_write_not_regular(void)
{
    const void *chunks[1] = {"new"};
    size_t sizes[1] = {3};
    struct stat st;
    const char *fifo = in_dir("fifo");
    CHECK(mkfifo(fifo, 0644) == 0);
    CHECK_ERR(kl_write_file_atomic(fifo, chunks, sizes, 1), KL_EIO,
              "fifo: is a FIFO, not a regular file; not replacing it");
    CHECK(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode));
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", fifo, (long)getpid());
    CHECK(access(tmp, F_OK) != 0);
    /* (no real device node here: without the check, a test run as root
     * would replace /dev/null with a regular file) */
    CHECK_ERR(kl_write_file_atomic(g_dir, chunks, sizes, 1), KL_EIO, "is a directory, not a regular file");

    /* through a symlink: the link stays, its target gets the content */
    const char *target = in_dir("target.bin"), *link_ = in_dir("link.bin");
    CHECK_OK(kl_write_file_atomic(target, chunks, sizes, 1));
    CHECK(symlink("target.bin", link_) == 0);
    const void *c2[1] = {"newer"};
    size_t n2 = 5;
    CHECK_OK(kl_write_file_atomic(link_, c2, &n2, 1));
    CHECK(lstat(link_, &st) == 0 && S_ISLNK(st.st_mode));
    void *data;
    size_t n;
    CHECK_OK(kl_read_file_raw(target, &data, &n));
    CHECK(n == 5 && !memcmp(data, "newer", 5));
    kl_free(data);
    /* a symlink to a FIFO, and a dangling one, are refused */
    CHECK(symlink("fifo", in_dir("link_fifo")) == 0);
    CHECK_ERR(kl_write_file_atomic(in_dir("link_fifo"), chunks, sizes, 1), KL_EIO,
              "link_fifo: is a FIFO, not a regular file");
    CHECK(symlink("missing", in_dir("dangling")) == 0);
    CHECK_ERR(kl_write_file_atomic(in_dir("dangling"), chunks, sizes, 1), KL_EIO,
              "dangling: is a symbolic link whose target cannot be resolved");
    CHECK(lstat(in_dir("dangling"), &st) == 0 && S_ISLNK(st.st_mode));
}

/* Staged files are published together or not at all. */
static void test_files_publish(void)
{
    const char *a = in_dir("pair.a"), *b = in_dir("pair.b");
    const void *c[1] = {"old"};
    size_t n3 = 3;
    CHECK_OK(kl_write_file_atomic(a, c, &n3, 1));
    CHECK_OK(kl_write_file_atomic(b, c, &n3, 1));
    kl_staged_file f[2];
    const void *c2[1] = {"new!"};
    size_t n4 = 4;
    CHECK_OK(kl_file_stage(&f[0], a, c2, &n4, 1));
    CHECK_OK(kl_file_stage(&f[1], b, c2, &n4, 1));
    /* the second rename fails (its temporary is gone): the first is undone */
    unlink(f[1].tmp);
    CHECK_ERR(kl_files_publish(f, 2), KL_EIO, "pair.b: cannot rename");
    CHECK(strstr(kl_last_error(), "(old files left as they were)"));
    void *data;
    size_t n;
    CHECK_OK(kl_read_file_raw(a, &data, &n));
    CHECK(n == 3 && !memcmp(data, "old", 3));
    kl_free(data);
    char old[600];
    snprintf(old, sizeof old, "%s.old.%ld", a, (long)getpid());
    CHECK(access(old, F_OK) != 0 && access(f[0].tmp, F_OK) != 0);
    /* both written: both published */
    CHECK_OK(kl_file_stage(&f[0], a, c2, &n4, 1));
    CHECK_OK(kl_file_stage(&f[1], in_dir("pair.c"), c2, &n4, 1));
    CHECK_OK(kl_files_publish(f, 2));
    CHECK_OK(kl_read_file_raw(in_dir("pair.c"), &data, &n));
    CHECK(n == 4);
    kl_free(data);
    CHECK(access(old, F_OK) != 0);
}

static void test_mkdir_p(void)
{
    const char *deep = in_dir("a/b//c/d/");
    CHECK_OK(kl_mkdir_p(deep));
    struct stat st;
    CHECK(stat(in_dir("a/b/c/d"), &st) == 0 && S_ISDIR(st.st_mode));
    CHECK_OK(kl_mkdir_p(deep)); /* already there */
    CHECK_OK(kl_fsync_dir(in_dir("a/b")));
    FILE *fp = fopen(in_dir("a/file"), "w");
    CHECK(fp != NULL);
    if (fp) fclose(fp);
    CHECK_ERR(kl_mkdir_p(in_dir("a/file/x")), KL_EIO, "a/file exists and is not a directory");
    CHECK_ERR(kl_mkdir_p(""), KL_EMISUSE, "empty path");
    CHECK_ERR(kl_fsync_dir(in_dir("nope")), KL_EIO, "nope: cannot open directory");
    CHECK_OK(kl_fsync_dir(""));
}

int main(void)
{
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return 1; }
    test_atomic_write_and_read();
    test_atomic_write_not_regular();
    test_files_publish();
    test_mkdir_p();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    CHECK(system(cmd) == 0);
    return kl_test_done("test_fileio");
}
