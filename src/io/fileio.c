/* Whole-file reads, atomic writes and directory helpers (POSIX). */
#include "io/fileio.h"
#include "core/error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* Writes all n bytes, retrying short writes and EINTR. Returns 0 or errno. */
static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        size_t step = n > (1u << 30) ? (1u << 30) : n;
        ssize_t k = write(fd, p, step);
        if (k < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (k == 0) return EIO;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* The directory part of path ("." when there is none); buf has PATH_MAX. */
static const char *dir_of(const char *path, char *buf, size_t n)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return ".";
    if (slash == path) return "/";
    size_t len = (size_t)(slash - path);
    if (len >= n) len = n - 1;
    memcpy(buf, path, len);
    buf[len] = 0;
    return buf;
}

kl_status kl_fsync_dir(const char *dir)
{
    if (!dir) return kl_fail(KL_EMISUSE, "kl_fsync_dir: null path");
    if (!*dir) dir = ".";
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return kl_fail(KL_EIO, "%s: cannot open directory to sync it: %s", dir,
                       strerror(errno));
    int rc = fsync(fd), err = errno;
    close(fd);
    /* Some filesystems cannot sync directories; that is not a failure. */
    if (rc != 0 && err != EINVAL && err != ENOTSUP && err != EROFS)
        return kl_fail(KL_EIO, "%s: cannot sync directory: %s", dir, strerror(err));
    return KL_OK;
}

/* What st is, for a refusal: "a FIFO", "a directory"... */
static const char *kind_of(mode_t m)
{
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device"
         : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : "not a plain file";
}

/* The file a write of path replaces, into out (PATH_MAX): path itself when
 * it does not exist or is a regular file, a symlink's regular target; any
 * other existing path is refused, as a rename over it would replace a
 * device node or FIFO with a regular file. */
static kl_status target_of(const char *path, char *out)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno != ENOENT && errno != ENOTDIR)
            return kl_fail(KL_EIO, "%s: cannot stat: %s", path, strerror(errno));
        snprintf(out, PATH_MAX, "%s", path); /* a missing folder fails at the create */
        return KL_OK;
    }
    if (S_ISLNK(st.st_mode)) {
        if (!realpath(path, out))
            return kl_fail(KL_EIO, "%s: is a symbolic link whose target cannot be resolved: %s; "
                           "not replacing it", path, strerror(errno));
        if (stat(out, &st) != 0)
            return kl_fail(KL_EIO, "%s: cannot stat its target %s: %s", path, out, strerror(errno));
    } else {
        snprintf(out, PATH_MAX, "%s", path);
    }
    if (!S_ISREG(st.st_mode))
        return kl_fail(KL_EIO, "%s: is %s, not a regular file; not replacing it", path,
                       kind_of(st.st_mode));
    return KL_OK;
}

kl_status kl_file_stage(kl_staged_file *f, const char *path, const void *const *chunks,
                        const size_t *sizes, int nchunks)
{
    if (!f || !path || !*path || nchunks < 0 || (nchunks > 0 && (!chunks || !sizes)))
        return kl_fail(KL_EMISUSE, "kl_write_file_atomic: null or empty argument");
    f->path[0] = f->tmp[0] = 0;
    if (strlen(path) >= PATH_MAX)
        return kl_fail(KL_EIO, "%.200s...: path longer than %d bytes", path, PATH_MAX);
    KL_TRY(target_of(path, f->path));
    snprintf(f->tmp, sizeof f->tmp, "%s.tmp.%ld", f->path, (long)getpid());

    int fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        f->tmp[0] = 0;
        return kl_fail(KL_EIO, "%s: cannot create temporary file %s.tmp.%ld: %s", path, f->path,
                       (long)getpid(), strerror(e));
    }
    const char *what = "write";
    int err = 0;
    for (int i = 0; i < nchunks && !err; i++) {
        if (sizes[i] == 0) continue;
        if (!chunks[i]) {
            close(fd);
            kl_file_discard(f);
            return kl_fail(KL_EMISUSE, "kl_write_file_atomic: chunk %d is NULL", i);
        }
        err = write_all(fd, chunks[i], sizes[i]);
    }
    if (!err && fsync(fd) != 0) { what = "sync"; err = errno; }
    if (close(fd) != 0 && !err) { what = "close"; err = errno; }
    if (err) {
        kl_status s = kl_fail(KL_EIO, "%s: cannot %s temporary file %s: %s (old file left as "
                              "it was)", path, what, f->tmp, strerror(err));
        kl_file_discard(f);
        return s;
    }
    return KL_OK;
}

void kl_file_discard(kl_staged_file *f)
{
    if (f && f->tmp[0]) unlink(f->tmp);
    if (f) f->tmp[0] = 0;
}

kl_status kl_files_publish(kl_staged_file *f, int n)
{
    if (!f || n < 0) return kl_fail(KL_EMISUSE, "kl_files_publish: null argument");
    enum { MAXF = 8 };
    if (n > MAXF) return kl_fail(KL_EMISUSE, "kl_files_publish: more than %d files", MAXF);
    char old[MAXF][PATH_MAX + 32];
    int had[MAXF] = {0}, i, err = 0;
    /* the old content of every file but the last, to undo an early rename */
    for (i = 0; i + 1 < n && !err; i++) {
        snprintf(old[i], sizeof old[i], "%s.old.%ld", f[i].path, (long)getpid());
        unlink(old[i]);
        if (link(f[i].path, old[i]) == 0) had[i] = 1;
        else if (errno != ENOENT) err = errno;
    }
    if (err) {
        kl_status s = kl_fail(KL_EIO, "%s: cannot keep the old file as %s while replacing it: %s "
                              "(old file left as it was)", f[i - 1].path, old[i - 1], strerror(err));
        for (int j = 0; j < i; j++) if (had[j]) unlink(old[j]);
        for (int j = 0; j < n; j++) kl_file_discard(&f[j]);
        return s;
    }
    for (i = 0; i < n; i++)
        if (rename(f[i].tmp, f[i].path) != 0) { err = errno; break; }
        else f[i].tmp[0] = 0;
    kl_status s = KL_OK;
    if (err) {
        s = kl_fail(KL_EIO, "%s: cannot rename %s over it: %s (old file%s)", f[i].path, f[i].tmp,
                    strerror(err), n > 1 ? "s left as they were" : " left as it was");
        for (int j = 0; j < i; j++) { /* undo the renames done; a failed undo keeps old[j] */
            if (had[j]) rename(old[j], f[j].path);
            else unlink(f[j].path);
            had[j] = 0;
        }
        for (int j = i; j < n; j++) kl_file_discard(&f[j]);
    }
    char dirbuf[PATH_MAX];
    for (int j = 0; j < n; j++) {
        if (j + 1 < n && had[j]) unlink(old[j]);
        if (s == KL_OK) s = kl_fsync_dir(dir_of(f[j].path, dirbuf, sizeof dirbuf));
    }
    return s;
}

kl_status kl_write_file_atomic(const char *path, const void *const *chunks,
                               const size_t *sizes, int nchunks)
{
    kl_staged_file f;
    KL_TRY(kl_file_stage(&f, path, chunks, sizes, nchunks));
    return kl_files_publish(&f, 1);
}

kl_status kl_read_file_raw(const char *path, void **data, size_t *n)
{
    if (data) *data = NULL;
    if (n) *n = 0;
    if (!path || !data || !n) return kl_fail(KL_EMISUSE, "kl_read_file_raw: null argument");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kl_fail(KL_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return kl_fail(KL_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return kl_fail(KL_EIO, "%s: is a directory, expected a file", path);
    }
    /* Regular files: st_size bytes (less if it shrinks meanwhile). Pipes,
     * devices and size-0 files (/proc): until end of file, growing. */
    int regular = S_ISREG(st.st_mode) && st.st_size > 0;
    size_t cap = regular ? (size_t)st.st_size + 1 : 65536, len = 0;
    unsigned char *buf = kl_malloc(cap);
    if (!buf) { close(fd); return KL_ENOMEM; }
    for (;;) {
        if (regular && len + 1 == cap) break;
        if (len + 1 >= cap) {
            unsigned char *nb = cap > SIZE_MAX / 2 ? NULL : kl_realloc(buf, cap * 2);
            if (!nb) {
                kl_free(buf);
                close(fd);
                return kl_fail_prefix(KL_ENOMEM, "%s: reading %zu bytes", path, len);
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t k = read(fd, buf + len, cap - 1 - len);
        if (k < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            kl_free(buf);
            close(fd);
            return kl_fail(KL_EIO, "%s: read failed after %zu bytes: %s", path, len, strerror(e));
        }
        if (k == 0) break;
        len += (size_t)k;
    }
    close(fd);
    buf[len] = 0;
    *data = buf;
    *n = len;
    return KL_OK;
}

kl_status kl_mkdir_p(const char *path)
{
    if (!path || !*path) return kl_fail(KL_EMISUSE, "kl_mkdir_p: null or empty path");
    char buf[PATH_MAX];
    size_t len = strlen(path);
    if (len >= sizeof buf)
        return kl_fail(KL_EIO, "%.200s...: path longer than %d bytes", path, PATH_MAX);
    memcpy(buf, path, len + 1);
    /* Create each prefix ending before a '/', then the whole path. */
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        if (buf[i - 1] == '/') continue; /* "a//b" */
        char saved = buf[i];
        buf[i] = 0;
        if (mkdir(buf, 0777) != 0) {
            int e = errno;
            struct stat st;
            if (e != EEXIST || stat(buf, &st) != 0)
                return kl_fail(KL_EIO, "%s: cannot create directory %s: %s", path, buf,
                               strerror(e));
            if (!S_ISDIR(st.st_mode))
                return kl_fail(KL_EIO, "%s: cannot create directory: %s exists and is "
                               "not a directory", path, buf);
        }
        buf[i] = saved;
    }
    return KL_OK;
}

int kl_json_escape(unsigned char c, char esc[8])
{
    if (c == '"' || c == '\\') return esc[0] = '\\', esc[1] = (char)c, 2;
    if (c < 0x20) return snprintf(esc, 8, "\\u%04x", c);
    esc[0] = (char)c;
    return 1;
}
