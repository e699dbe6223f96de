/* Internal file helpers: whole-file reads, atomic writes, directories.
 *
 *   const void *chunks[2] = {header, body};
 *   size_t sizes[2] = {header_len, body_len};
 *   KL_TRY(kl_write_file_atomic("run/ckpt.bin", chunks, sizes, 2));
 */
#ifndef KL_IO_FILEIO_H
#define KL_IO_FILEIO_H

#include <stddef.h>
#include "kiln/status.h"

/* Writes the chunks, in order, as the new content of path, atomically: data
 * goes to "<path>.tmp.<pid>", is fsynced and renamed over path, then the
 * directory is fsynced. Chunks of size 0 may be NULL.
 * On failure (KL_EIO naming the path and errno text) the old file at path is
 * untouched and the temporary file removed. */
kl_status kl_write_file_atomic(const char *path, const void *const *chunks,
                               const size_t *sizes, int nchunks);

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

#endif
