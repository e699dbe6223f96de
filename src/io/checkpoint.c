/* Checkpoint saving. A checkpoint is written as <root>/.<tag>.tmp, every
 * file fsynced, then renamed to <root>/<tag> (swapped with an existing one
 * in one atomic renameat2 where the kernel can) and only then is
 * <root>/latest replaced; a crash at any point leaves latest naming a
 * complete directory. */
#define _GNU_SOURCE
#include "core/cnum.h"
#include "io/checkpoint_internal.h"
#include "io/config.h"
#include "io/fileio.h"
#include "core/graph.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- shared helpers ---------------------------------------------------- */

kl_status kl_ckpt_join(char *out, size_t n, const char *a, const char *b)
{
    size_t la = strlen(a);
    while (la > 1 && a[la - 1] == '/') la--; /* "ck/" + "x" -> "ck/x" */
    int k = snprintf(out, n, "%.*s/%s", (int)la, a, b);
    if (k < 0 || (size_t)k >= n)
        return kl_fail(KL_EINVAL, "%.200s/%.200s: path longer than %zu bytes", a, b, n ? n - 1 : 0);
    return KL_OK;
}

bool kl_ckpt_is_dir(const char *path)
{
    struct stat s;
    return stat(path, &s) == 0 && S_ISDIR(s.st_mode);
}

bool kl_ckpt_is_file(const char *path)
{
    struct stat s;
    return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

bool kl_ckpt_complete(const char *dir)
{
    char p[PATH_MAX];
    return snprintf(p, sizeof p, "%s/" KL_CKPT_MODEL, dir) < (int)sizeof p && kl_ckpt_is_file(p) &&
           snprintf(p, sizeof p, "%s/" KL_CKPT_STATE, dir) < (int)sizeof p && kl_ckpt_is_file(p);
}

bool kl_ckpt_tag_ok(const char *tag)
{
    size_t n = strlen(tag);
    if (n == 0 || n > 200 || tag[0] == '.' || !strcmp(tag, KL_CKPT_LATEST)) return false;
    for (size_t i = 0; i < n; i++)
        if (tag[i] == '/' || (unsigned char)tag[i] < 0x20 || tag[i] == 0x7f) return false;
    return true;
}

kl_status kl_ckpt_optim_family(kl_optim *opt, const char **out)
{
    *out = "sgd";
    if (kl_optim_state_count(opt) == 0) return KL_OK; /* SGD without momentum */
    const char *name;
    KL_TRY(kl_optim_state(opt, 0, &name, NULL, NULL));
    if (strcmp(name, "momentum_buffer")) *out = "adam";
    return KL_OK;
}

const char *kl_ckpt_kind_family(const char *kind) { return strcmp(kind, "adamw") ? kind : "adam"; }

kl_status kl_ckpt_model_writer(kl_ctx *c, kl_st_writer **wout, unsigned char **hold)
{
    *wout = NULL;
    *hold = NULL;
    /* the CPU's parameters are host memory already: the writer borrows them */
    bool host = c->backend == KL_BACKEND_CPU;
    size_t total = 0;
    for (int i = 0; i < c->n_slots; i++) total += c->slots[i].nbytes;
    unsigned char *buf = host ? NULL : kl_malloc(total ? total : 1);
    if (!host && !buf) return kl_fail(KL_ENOMEM, "checkpoint: %zu bytes of host copy of the parameters", total);
    kl_st_writer *w = NULL;
    kl_status s = kl_st_writer_new(&w);
    size_t pos = 0;
    for (int i = 0; i < c->n_slots && s == KL_OK; i++) {
        const kl_param_slot *sl = &c->slots[i];
        unsigned char *src = host ? kl_slot_data(c, i) : buf + pos;
        if (!host) s = kl_ctx_param_get(c, i, src, sl->nbytes);
        if (s == KL_OK) s = kl_st_writer_add(w, sl->name, sl->dtype, sl->ndim, sl->ne, src);
        pos += sl->nbytes;
    }
    if (s == KL_OK) s = kl_st_writer_meta(w, "format", KL_CKPT_FORMAT);
    if (s == KL_OK) s = kl_st_writer_meta(w, "kiln_version", KILN_VERSION);
    if (s != KL_OK) {
        kl_st_writer_free(w);
        kl_free(buf);
        return s;
    }
    *wout = w;
    *hold = buf;
    return KL_OK;
}

/* ---- directories ------------------------------------------------------- */

/* Removes path and, for a directory, everything in it (symlinks are not
 * followed). Best effort: returns 0 or an errno, never sets the message, so
 * it can run on error paths without hiding the first failure. */
static int remove_tree(const char *path, int depth)
{
    struct stat s;
    if (lstat(path, &s) != 0) return errno == ENOENT ? 0 : errno;
    if (!S_ISDIR(s.st_mode)) return unlink(path) ? errno : 0;
    if (depth > 8) return ELOOP;
    DIR *d = opendir(path);
    if (!d) return errno;
    int err = 0;
    struct dirent *e;
    char sub[PATH_MAX];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        int r = snprintf(sub, sizeof sub, "%s/%s", path, e->d_name) < (int)sizeof sub
                    ? remove_tree(sub, depth + 1)
                    : ENAMETOOLONG;
        if (r && !err) err = r;
    }
    closedir(d);
    if (rmdir(path) != 0 && !err) err = errno;
    return err;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcmp(s + n - k, suf);
}

/* Removes what interrupted saves left in root: ".<tag>.tmp" directories,
 * "latest.tmp.<pid>" files, and ".<tag>.old" directories once <tag> is
 * complete again (until then .old is the copy resolve falls back to). */
static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

kl_status kl_checkpoint_prune(const char *root, int64_t keep)
{
    if (keep <= 0) return KL_OK;
    DIR *d = opendir(root);
    if (!d) return kl_fail(KL_EIO, "%s: cannot list: %s", root, strerror(errno));
    char latest[PATH_MAX] = "", p[PATH_MAX], **tags = NULL;
    if (kl_checkpoint_resolve(root, latest, sizeof latest) == KL_OK) { /* latest's tag, as --resume reads it */
        const char *slash = strrchr(latest, '/');
        memmove(latest, slash ? slash + 1 : latest, strlen(slash ? slash + 1 : latest) + 1);
    } else {
        latest[0] = 0; /* none readable: every checkpoint is old but the keep newest */
    }
    size_t n = 0, cap = 0;
    kl_status s = KL_OK;
    struct dirent *e;
    while (s == KL_OK && (e = readdir(d))) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, KL_CKPT_LATEST)) continue;
        if (snprintf(p, sizeof p, "%s/%s", root, e->d_name) >= (int)sizeof p || !kl_ckpt_complete(p)) continue;
        if (n == cap) {
            char **t = kl_realloc(tags, (cap = cap ? 2 * cap : 16) * sizeof *tags);
            if (!t) { s = KL_ENOMEM; break; }
            tags = t;
        }
        if (!(tags[n] = kl_strdup(e->d_name))) s = KL_ENOMEM;
        else n++;
    }
    closedir(d);
    if (s == KL_OK && n) qsort(tags, n, sizeof *tags, by_name);
    for (size_t i = 0; s == KL_OK && n > (size_t)keep && i < n - (size_t)keep; i++) {
        if (!strcmp(tags[i], latest)) continue;
        snprintf(p, sizeof p, "%s/%s", root, tags[i]);
        int r = remove_tree(p, 0);
        if (r) s = kl_fail(KL_EIO, "%s: cannot remove an old checkpoint: %s", p, strerror(r));
    }
    for (size_t i = 0; i < n; i++) kl_free(tags[i]);
    kl_free(tags);
    return s;
}

static void clean_stale(const char *root)
{
    DIR *d = opendir(root);
    if (!d) return;
    struct dirent *e;
    char p[PATH_MAX], tag[PATH_MAX], t[PATH_MAX];
    while ((e = readdir(d))) {
        const char *nm = e->d_name;
        bool tmp_dir = nm[0] == '.' && strlen(nm) > 5 && has_suffix(nm, ".tmp");
        bool old_dir = nm[0] == '.' && strlen(nm) > 5 && has_suffix(nm, ".old");
        bool tmp_latest = !strncmp(nm, KL_CKPT_LATEST ".tmp.", 11);
        if (!tmp_dir && !old_dir && !tmp_latest) continue;
        if (snprintf(p, sizeof p, "%s/%s", root, nm) >= (int)sizeof p) continue;
        if (old_dir) {
            snprintf(tag, sizeof tag, "%.*s", (int)strlen(nm) - 5, nm + 1);
            if (snprintf(t, sizeof t, "%s/%s", root, tag) >= (int)sizeof t || !kl_ckpt_complete(t)) continue;
        }
        if (tmp_latest ? kl_ckpt_is_file(p) : kl_ckpt_is_dir(p)) remove_tree(p, 0);
    }
    closedir(d);
}

/* Moves the finished tmp directory to final. An existing final is swapped
 * out; *leftover gets the path now holding it (to remove once latest is
 * written), or "" when there was none. */
static kl_status publish(const char *tmp, const char *final, const char *old, char *leftover, size_t n)
{
    leftover[0] = 0;
    struct stat s;
    if (lstat(final, &s) != 0) {
        if (rename(tmp, final) != 0)
            return kl_fail(KL_EIO, "%s: cannot rename %s to it: %s", final, tmp, strerror(errno));
        return KL_OK;
    }
    if (!S_ISDIR(s.st_mode))
        return kl_fail(KL_EIO, "%s: exists and is not a checkpoint directory; not replacing it", final);
#ifdef RENAME_EXCHANGE
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0) {
        snprintf(leftover, n, "%s", tmp);
        return KL_OK;
    }
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return kl_fail(KL_EIO, "%s: cannot swap in %s: %s", final, tmp, strerror(errno));
#endif
    /* No atomic swap here: move the old one aside first; resolve falls back
     * to .<tag>.old if a crash comes between the two renames. */
    remove_tree(old, 0);
    if (rename(final, old) != 0)
        return kl_fail(KL_EIO, "%s: cannot move it aside to %s: %s", final, old, strerror(errno));
    if (rename(tmp, final) != 0) {
        int e = errno;
        rename(old, final);
        return kl_fail(KL_EIO, "%s: cannot rename %s to it: %s", final, tmp, strerror(e));
    }
    snprintf(leftover, n, "%s", old);
    return KL_OK;
}

/* ---- saving ------------------------------------------------------------ */

static kl_status meta_num(kl_st_writer *w, const char *key, unsigned long long v, bool is_signed)
{
    char num[32];
    snprintf(num, sizeof num, is_signed ? "%lld" : "%llu", v);
    return kl_st_writer_meta(w, key, num);
}

/* Train state metadata and, with opt, its state per trainable parameter as
 * "<state>.<param>" slices of the flat buffers (borrowed by the writer). */
static kl_status state_fill(kl_st_writer *w, kl_ctx *c, kl_optim *opt, const kl_train_state *st)
{
    const char *kind = st->optim_kind, *family = NULL;
    if (opt) KL_TRY(kl_ckpt_optim_family(opt, &family));
    if (!kind[0] && opt) kind = family;
    if (family && strcmp(kl_ckpt_kind_family(kind), family))
        return kl_fail(KL_EINVAL, "kl_checkpoint_save: train state says optimizer '%s' but the optimizer keeps "
                       "%s state", kind, family);
    KL_TRY(kl_st_writer_meta(w, "format", KL_CKPT_FORMAT));
    KL_TRY(kl_st_writer_meta(w, "kiln_version", KILN_VERSION));
    KL_TRY(meta_num(w, "step", (unsigned long long)st->step, true));
    KL_TRY(meta_num(w, "epoch", (unsigned long long)st->epoch, true));
    KL_TRY(meta_num(w, "batch", (unsigned long long)st->batch, true));
    KL_TRY(meta_num(w, "graph_runs", st->graph_runs, false));
    KL_TRY(meta_num(w, "seed", st->seed, false));
    KL_TRY(kl_st_writer_meta(w, "optimizer", kind));
    if (memchr(st->watch, 0, sizeof st->watch) == NULL)
        return kl_fail(KL_EINVAL, "kl_checkpoint_save: train state's watch text is not terminated");
    if (st->watch[0]) KL_TRY(kl_st_writer_meta(w, "train_watch", st->watch));
    if (st->epoch_count > 0) {
        char sum[40];
        kl_snprintf_c(sum, sizeof sum, "%a", st->epoch_loss_sum); /* exact */
        KL_TRY(kl_st_writer_meta(w, "epoch_loss_sum", sum));
        KL_TRY(meta_num(w, "epoch_count", (unsigned long long)st->epoch_count, true));
        KL_TRY(meta_num(w, "epoch_correct", (unsigned long long)st->epoch_correct, true));
    }
    if (st->data_count > 0) {
        KL_TRY(meta_num(w, "data_count", (unsigned long long)st->data_count, true));
        KL_TRY(meta_num(w, "data_hash", st->data_hash, false));
    }
    if (!opt) return KL_OK;
    KL_TRY(meta_num(w, "optim_steps", (unsigned long long)kl_optim_steps(opt), true));
    double scale; /* the loss scaler, and the skipped updates Adam's t leaves out */
    int64_t good, skipped;
    KL_TRY(kl_optim_scaler(opt, &scale, &good, &skipped));
    char sc[40];
    kl_snprintf_c(sc, sizeof sc, "%.17g", scale);
    KL_TRY(kl_st_writer_meta(w, "loss_scale", sc));
    KL_TRY(meta_num(w, "loss_scale_good", (unsigned long long)good, true));
    KL_TRY(meta_num(w, "optim_skipped", (unsigned long long)skipped, true));
    char lr[40]; /* informational (the config sets it): shortest text that reads back exactly */
    KL_TRY(kl_st_writer_meta(w, "lr", kl_cfg_fmt_double(lr, sizeof lr, kl_optim_lr(opt))));
    for (int k = 0; k < kl_optim_state_count(opt); k++) {
        const char *sname;
        void *data;
        size_t bytes;
        KL_TRY(kl_optim_state(opt, k, &sname, &data, &bytes));
        for (int i = 0; i < c->n_slots; i++) {
            const kl_param_slot *sl = &c->slots[i];
            if (!sl->trainable) continue;
            if (sl->off + sl->nbytes > bytes)
                return kl_fail(KL_EINTERNAL, "optimizer state '%s' holds %zu bytes, parameter '%s' needs [%zu,%zu) "
                               "(optimizer of another context?)", sname, bytes, sl->name, sl->off, sl->off + sl->nbytes);
            char tname[1024];
            if (snprintf(tname, sizeof tname, "%s.%s", sname, sl->name) >= (int)sizeof tname)
                return kl_fail(KL_EINVAL, "parameter name '%.100s...' is too long", sl->name);
            KL_TRY(kl_st_writer_add(w, tname, sl->dtype, sl->ndim, sl->ne, (unsigned char *)data + sl->off));
        }
    }
    return KL_OK;
}

/* Writes model.safetensors, state.safetensors and config.yaml into dir. */
static kl_status write_files(const char *dir, kl_ctx *c, kl_optim *opt, const kl_train_state *st,
                             const char *config_yaml)
{
    char path[PATH_MAX];
    kl_st_writer *w;
    unsigned char *hold;
    KL_TRY(kl_ckpt_model_writer(c, &w, &hold));
    kl_status s = kl_ckpt_join(path, sizeof path, dir, KL_CKPT_MODEL);
    if (s == KL_OK) s = kl_st_writer_save(w, path);
    kl_st_writer_free(w);
    kl_free(hold);
    KL_TRY(s);

    KL_TRY(kl_st_writer_new(&w));
    s = state_fill(w, c, opt, st);
    if (s == KL_OK) s = kl_ckpt_join(path, sizeof path, dir, KL_CKPT_STATE);
    if (s == KL_OK) s = kl_st_writer_save(w, path);
    kl_st_writer_free(w);
    KL_TRY(s);

    KL_TRY(kl_ckpt_join(path, sizeof path, dir, KL_CKPT_CONFIG));
    const void *chunk = config_yaml ? config_yaml : "";
    size_t size = config_yaml ? strlen(config_yaml) : 0;
    KL_TRY(kl_write_file_atomic(path, &chunk, &size, 1));
    return st->extra_files ? st->extra_files(dir, st->extra_arg) : KL_OK;
}

kl_status kl_checkpoint_save(const char *root, const char *tag, kl_ctx *ctx, kl_optim *opt,
                             const kl_train_state *st, const char *config_yaml, char *out_path, size_t n)
{
    if (out_path && n) out_path[0] = 0;
    if (!root || !*root || !tag || !ctx || !st)
        return kl_fail(KL_EMISUSE, "kl_checkpoint_save: %s is NULL or empty",
                       !root || !*root ? "ckpt_root" : !tag ? "tag" : !ctx ? "ctx" : "train state");
    if (!kl_ckpt_tag_ok(tag))
        return kl_fail(KL_EINVAL, "checkpoint tag '%.200s': must be a plain file name (1-200 bytes, no '/', "
                       "not starting with '.', not 'latest')", tag);
    if (st->step < 0 || st->epoch < 0 || st->batch < 0)
        return kl_fail(KL_EINVAL, "kl_checkpoint_save: step %lld, epoch %lld, batch %lld must be >= 0",
                       (long long)st->step, (long long)st->epoch, (long long)st->batch);
    if (!memchr(st->optim_kind, 0, sizeof st->optim_kind))
        return kl_fail(KL_EINVAL, "kl_checkpoint_save: optim_kind is not a NUL-terminated string");
    char tmp[PATH_MAX], final[PATH_MAX], old[PATH_MAX], leftover[PATH_MAX], name[256];
    snprintf(name, sizeof name, ".%s.tmp", tag);
    KL_TRY(kl_ckpt_join(tmp, sizeof tmp, root, name));
    snprintf(name, sizeof name, ".%s.old", tag);
    KL_TRY(kl_ckpt_join(old, sizeof old, root, name));
    KL_TRY(kl_ckpt_join(final, sizeof final, root, tag));
    if (out_path && strlen(final) >= n)
        return kl_fail(KL_EINVAL, "kl_checkpoint_save: %s does not fit in %zu bytes", final, n);

    KL_TRY(kl_mkdir_p(root));
    clean_stale(root);
    if (mkdir(tmp, 0777) != 0)
        return kl_fail(KL_EIO, "%s: cannot create directory: %s", tmp, strerror(errno));
    kl_status s = write_files(tmp, ctx, opt, st, config_yaml);
    if (s == KL_OK) s = kl_fsync_dir(tmp);
    if (s == KL_OK) s = publish(tmp, final, old, leftover, sizeof leftover);
    if (s != KL_OK) {
        remove_tree(tmp, 0);
        return s;
    }
    /* The new directory is durable before latest names it. */
    s = kl_fsync_dir(root);
    if (s == KL_OK) {
        char line[256];
        snprintf(line, sizeof line, "%s\n", tag);
        const void *chunk = line;
        size_t size = strlen(line);
        char lp[PATH_MAX];
        s = kl_ckpt_join(lp, sizeof lp, root, KL_CKPT_LATEST);
        if (s == KL_OK) s = kl_write_file_atomic(lp, &chunk, &size, 1);
    }
    if (leftover[0]) remove_tree(leftover, 0);
    if (s == KL_OK) remove_tree(old, 0); /* a crashed fallback swap's copy: <tag> is complete now */
    if (s == KL_OK && out_path) snprintf(out_path, n, "%s", final);
    return s;
}
