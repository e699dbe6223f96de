/* kiln file I/O: safetensors reading and writing.
 *
 * safetensors is the weight format of the Hugging Face ecosystem: an 8-byte
 * little-endian header length N, N bytes of JSON naming each tensor's dtype,
 * shape and byte range, then the raw little-endian tensor bytes. kiln reads
 * and writes F32, F16, BF16, I32, U8, F64 and I64 tensors.
 *
 *   kl_st_file *f;
 *   if (kl_st_open("model.safetensors", &f) != KL_OK)
 *       fprintf(stderr, "kiln: %s\n", kl_last_error());
 *       // model.safetensors: tensor 'fc1.weight': data_offsets [0,100] hold
 *       // 100 bytes but shape [10,784] f32 needs 31360
 *   int i = kl_st_find(f, "fc1.weight");
 *   float w[10 * 784];
 *   kl_st_read(f, i, w, sizeof w);     // or kl_st_data(f, i, &nbytes)
 *   kl_st_close(f);
 *
 *   kl_st_writer *w;
 *   kl_st_writer_new(&w);
 *   kl_st_writer_add(w, "fc1.weight", KL_F32, 2, dims, host_floats);
 *   kl_st_writer_meta(w, "step", "7");
 *   kl_st_writer_save(w, "model.safetensors");   // atomic replace
 *   kl_st_writer_free(w);
 */
#ifndef KILN_IO_H
#define KILN_IO_H

#include <stddef.h>
#include <stdint.h>
#include "kiln/status.h"
#include "kiln/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- reading ---------------------------------------------------------- */

/* An opened safetensors file whose header and byte ranges were all checked. */
typedef struct kl_st_file kl_st_file;

/* Opens the file at path and validates its header against the file's size.
 * A regular file stays open and only its header is read now: tensor bytes
 * are read by kl_st_read or kl_st_data (other files, such as pipes, are
 * read whole). Caller owns *out (kl_st_close); on failure *out = NULL,
 * KL_EIO/KL_EFORMAT/KL_EUNSUPPORTED/KL_ENOMEM and a message naming the file
 * and tensor. */
KL_API kl_status kl_st_open(const char *path, kl_st_file **out);

/* Like kl_st_open on n bytes in memory (copied); name is used in messages
 * (NULL: "<memory>"). Caller owns *out; on failure *out = NULL. */
KL_API kl_status kl_st_open_mem(const void *buf, size_t n, const char *name,
                                kl_st_file **out);

/* Number of tensors (metadata not counted); 0 for NULL. */
KL_API int kl_st_count(const kl_st_file *f);

/* Tensor i's name, dtype and shape, in header order; any output may be NULL.
 * *name is borrowed until kl_st_close. KL_EINVAL if i is out of range. */
KL_API kl_status kl_st_info(const kl_st_file *f, int i, const char **name,
                            kl_dtype *dt, int *ndim, int64_t dims[KL_MAX_DIMS]);

/* Index of the tensor called name, or -1 (no error is recorded). */
KL_API int kl_st_find(const kl_st_file *f, const char *name);

/* Tensor i's little-endian bytes and their count (nbytes may be NULL).
 * Borrowed until kl_st_close; the data section starts 8-byte aligned, so a
 * tensor is aligned to its element size when its offset is. The first call
 * on a file opened from disk reads its whole data section into memory.
 * NULL if i is out of range, or (message set) if that read fails. */
KL_API const void *kl_st_data(const kl_st_file *f, int i, size_t *nbytes);

/* Copies tensor i's nbytes little-endian bytes into dst (any alignment),
 * reading them from the file without holding the rest. KL_EINVAL if i is
 * out of range or nbytes is not the tensor's size; KL_EIO if the file
 * changed since kl_st_open and ends early; KL_EFORMAT if the bytes do not
 * match the CRC-32 the metadata holds for them ("crc32:<name>", 8 hex
 * digits: kl_st_writer_save writes one for every tensor; files of other
 * writers have none and are not checked). kl_st_data does not check. */
KL_API kl_status kl_st_read(const kl_st_file *f, int i, void *dst, size_t nbytes);

/* The "__metadata__" value for key, or NULL. Borrowed until kl_st_close. */
KL_API const char *kl_st_meta(const kl_st_file *f, const char *key);

/* Frees the file and everything borrowed from it. NULL is a no-op. */
KL_API void kl_st_close(kl_st_file *f);

/* ---- writing ---------------------------------------------------------- */

/* Collects tensors and metadata, then writes them as one safetensors file. */
typedef struct kl_st_writer kl_st_writer;

/* Makes an empty writer. Caller owns *out (kl_st_writer_free); on failure
 * *out = NULL and KL_ENOMEM. */
KL_API kl_status kl_st_writer_new(kl_st_writer **out);

/* Adds a tensor of ndim dims (0..KL_MAX_DIMS) from host bytes in data.
 * name is copied; data is borrowed until kl_st_writer_save returns. KL_EINVAL
 * for a duplicate or reserved name, bad dtype or shape; writer unchanged. */
KL_API kl_status kl_st_writer_add(kl_st_writer *w, const char *name, kl_dtype dt,
                                  int ndim, const int64_t *dims, const void *data);

/* Sets a "__metadata__" entry (replaces an earlier value for key). Both
 * strings are copied and must be UTF-8; KL_EINVAL otherwise. */
KL_API kl_status kl_st_writer_meta(kl_st_writer *w, const char *key,
                                   const char *value);

/* Writes the file atomically: a temporary file, fsync, then rename over path.
 * On failure (KL_EIO, KL_ENOMEM) any old file at path is left as it was.
 * The writer stays usable and can be saved again. */
KL_API kl_status kl_st_writer_save(kl_st_writer *w, const char *path);

/* Frees the writer (not the borrowed data). NULL is a no-op. */
KL_API void kl_st_writer_free(kl_st_writer *w);

#ifdef __cplusplus
}
#endif
#endif
