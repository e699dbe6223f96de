/* Resolving a --resume argument to a checkpoint directory. */
#include "io/checkpoint_internal.h"
#include "io/fileio.h"
#include "core/error.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

static kl_status copy_out(char *out, size_t n, const char *dir)
{
    size_t len = strlen(dir);
    if (len >= n) return kl_fail(KL_EINVAL, "%s: checkpoint path does not fit in %zu bytes", dir, n);
    memcpy(out, dir, len + 1);
    return KL_OK;
}

/* Follows <root>/latest to a complete checkpoint directory. */
static kl_status resolve_latest(const char *root, char *out, size_t n)
{
    char lp[PATH_MAX], dir[PATH_MAX], old[PATH_MAX];
    KL_TRY(kl_ckpt_join(lp, sizeof lp, root, KL_CKPT_LATEST));
    void *data;
    size_t len;
    KL_TRY(kl_read_file_raw(lp, &data, &len));
    char *tag = data;
    while (len && isspace((unsigned char)tag[len - 1])) tag[--len] = 0;
    while (len && isspace((unsigned char)*tag)) tag++, len--;
    kl_status s = KL_OK;
    if (strlen(tag) != len || !kl_ckpt_tag_ok(tag))
        s = kl_fail(KL_EFORMAT, "%s: '%.100s' is not a checkpoint tag (one line naming a directory beside it)",
                    lp, tag);
    if (s == KL_OK) s = kl_ckpt_join(dir, sizeof dir, root, tag);
    if (s == KL_OK && !kl_ckpt_is_dir(dir)) {
        /* A save that could not swap directories atomically moved the old
         * checkpoint to .<tag>.old just before renaming the new one in. */
        char name[256];
        snprintf(name, sizeof name, ".%s.old", tag);
        s = kl_ckpt_join(old, sizeof old, root, name);
        if (s == KL_OK && kl_ckpt_complete(old)) {
            kl_free(data);
            return copy_out(out, n, old);
        }
        if (s == KL_OK) s = kl_fail(KL_EIO, "%s names '%s' which does not exist", lp, tag);
    }
    if (s == KL_OK && !kl_ckpt_complete(dir))
        s = kl_fail(KL_EIO, "%s names '%s' which is not a complete checkpoint (needs %s and %s)", lp, tag,
                    KL_CKPT_MODEL, KL_CKPT_STATE);
    kl_free(data);
    KL_TRY(s);
    return copy_out(out, n, dir);
}

/* 1 if the last path component looks like ".<tag>.tmp" (an interrupted save). */
static bool is_unfinished(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    return n - b > 5 && path[b] == '.' && !strncmp(path + n - 4, ".tmp", 4);
}

kl_status kl_checkpoint_resolve(const char *path, char *ckpt_dir, size_t n)
{
    if (!path || !*path || !ckpt_dir || !n)
        return kl_fail(KL_EMISUSE, "kl_checkpoint_resolve: null or empty argument");
    ckpt_dir[0] = 0;
    struct stat s;
    if (stat(path, &s) != 0) return kl_fail(KL_EIO, "%s: no checkpoint found (%s)", path, strerror(errno));
    if (!S_ISDIR(s.st_mode))
        return kl_fail(KL_EIO, "%s: not a checkpoint (expected a directory holding %s and %s, a checkpoints "
                       "directory with 'latest', or a run directory)", path, KL_CKPT_MODEL, KL_CKPT_STATE);
    char p[PATH_MAX];
    if (kl_ckpt_complete(path)) {
        if (is_unfinished(path))
            return kl_fail(KL_EIO, "%s: unfinished checkpoint (its save was interrupted); resume from the "
                           "checkpoints directory to use 'latest'", path);
        return copy_out(ckpt_dir, n, path);
    }
    KL_TRY(kl_ckpt_join(p, sizeof p, path, KL_CKPT_MODEL));
    if (kl_ckpt_is_file(p))
        return kl_fail(KL_EIO, "%s: incomplete checkpoint (has %s but no %s)", path, KL_CKPT_MODEL, KL_CKPT_STATE);
    KL_TRY(kl_ckpt_join(p, sizeof p, path, KL_CKPT_LATEST));
    if (kl_ckpt_is_file(p)) return resolve_latest(path, ckpt_dir, n);
    KL_TRY(kl_ckpt_join(p, sizeof p, path, "checkpoints/" KL_CKPT_LATEST));
    if (kl_ckpt_is_file(p)) {
        KL_TRY(kl_ckpt_join(p, sizeof p, path, "checkpoints"));
        return resolve_latest(p, ckpt_dir, n);
    }
    return kl_fail(KL_EIO, "%s: no checkpoint found (no checkpoints/latest)", path);
}
