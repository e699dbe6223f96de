/* Internal file helpers: whole-file reads, atomic writes, directories.
 *
 *   const void *chunks[2] = {header, body};
 *   size_t sizes[2] = {header_len, body_len};
 *   KL_TRY(kl_write_file_atomic("run/ckpt.bin", chunks, sizes, 2));
 */
#ifndef KL_IO_FILEIO_H
#define KL_IO_FILEIO_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <zlib.h>
#include "kiln/status.h"

/* Writes the chunks, in order, as the new content of path, atomically: data
 * goes to "<path>.tmp.<pid>", is fsynced and renamed over path, then the
 * directory is fsynced. Chunks of size 0 may be NULL.
 * Only a regular file is replaced: a path that exists and is not one (a
 * FIFO, a device, a directory) is refused, "<path>: is a FIFO, not a regular
 * file; not replacing it". A symbolic link to a regular file is kept and its
 * target written (atomically, beside the target); a dangling one is refused.
 * On failure (KL_EIO naming the path and errno text) the old file at path is
 * untouched and the temporary file removed. */
kl_status kl_write_file_atomic(const char *path, const void *const *chunks,
                               const size_t *sizes, int nchunks);

/* A file written and synced under a temporary name, not yet in place: so
 * that several files can be published together, only once all are written.
 *
 *   kl_staged_file f[2];
 *   KL_TRY(kl_file_stage(&f[0], "m.onnx.data", dc, dn, 1));
 *   if ((s = kl_file_stage(&f[1], "m.onnx", mc, mn, 4)) != KL_OK)
 *       return kl_file_discard(&f[0]), s;
 *   KL_TRY(kl_files_publish(f, 2));
 */
typedef struct kl_staged_file {
    char path[PATH_MAX]; /* the file to replace (a symlink's target) */
    char tmp[PATH_MAX + 32]; /* "<path>.tmp.<pid>", holding the new content */
} kl_staged_file;

/* Writes the chunks to f->tmp and syncs it, with kl_write_file_atomic's
 * checks of path; nothing is renamed. On failure nothing is left behind. */
kl_status kl_file_stage(kl_staged_file *f, const char *path, const void *const *chunks,
                        const size_t *sizes, int nchunks);

/* Removes a staged file's temporary (publishes nothing). */
void kl_file_discard(kl_staged_file *f);

/* Renames the n staged files into place, in order, and syncs their
 * directories. If a rename fails, the files already renamed get their old
 * content back (kept meanwhile as a hard link "<path>.old.<pid>"; a file
 * that did not exist is removed again) and the rest are discarded: either
 * all n are published or none. (A crash between the renames can still leave
 * some published: order them so the first ones alone do no harm.) */
kl_status kl_files_publish(kl_staged_file *f, int n);

/* Reads the whole file at path, byte for byte (no gunzip, unlike data's
 * kl_read_file), into *data: n bytes plus a NUL terminator not counted in
 * *n, so text can be parsed in place. Caller frees *data with
 * kl_free; on failure *data = NULL and KL_EIO/KL_ENOMEM naming path. */
kl_status kl_read_file_raw(const char *path, void **data, size_t *n);

/* Creates path and any missing parents (like mkdir -p). KL_EIO if a part
 * exists and is not a directory or cannot be created. */
kl_status kl_mkdir_p(const char *path);

/* fsyncs a directory so renames and creations in it survive a crash. */
kl_status kl_fsync_dir(const char *dir);

/* Byte c of a JSON string's text: esc gets c itself or its escape (\" \\,
 * \u00XX below 0x20; UTF-8 bytes pass through); returns its length. */
int kl_json_escape(unsigned char c, char esc[8]);

/* zlib's CRC-32 of n bytes at p, continuing from crc (0 to start): the
 * fingerprint in checkpoints (tensors, training data). */
static inline uint32_t kl_crc32(uint32_t crc, const void *p, size_t n) { return (uint32_t)crc32_z(crc, p, n); }

#endif
