/* kiln text data: character-level vocabularies, token files and seeded
 * random-window batches for language models.
 *
 *   kl_text *t;     kl_text_load_dir("/usr/share/games/fortunes", &t);
 *   kl_vocab *v;    kl_vocab_build(kl_text_data(t), kl_text_size(t), &v);
 *   kl_tokens *tok; kl_tokens_encode(v, kl_text_data(t), kl_text_size(t), &tok);
 *   int32_t x[B * T], y[B * T];
 *   kl_tokens_batch(tok, 0, n_train, seed, step, B, T, x, y);  // y = x shifted by one
 */
#ifndef KILN_TEXT_H
#define KILN_TEXT_H

#include "kiln/status.h"
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kl_text kl_text;     /* raw bytes of a corpus */
typedef struct kl_vocab kl_vocab;   /* byte -> id and back */
typedef struct kl_tokens kl_tokens; /* a token sequence */

/* A NULL handle, path, buffer or output is KL_EMISUSE naming the argument;
 * getters of a NULL handle return 0, NULL, -1 (kl_vocab_id) or '?'. */

/* Every regular file of dir (sorted by name, skipping fortune's *.dat index
 * files and hidden files; a file linked under two names, like fortune's
 * "art.u8 -> art", is read once, under its first name), or one file,
 * concatenated. */
KL_API kl_status kl_text_load_dir(const char *dir, kl_text **out);
KL_API kl_status kl_text_load_file(const char *path, kl_text **out);
KL_API const uint8_t *kl_text_data(const kl_text *t);
KL_API size_t kl_text_size(const kl_text *t);
KL_API void kl_text_free(kl_text *t);

/* The sorted set of bytes in data: a character-level vocabulary. */
KL_API kl_status kl_vocab_build(const uint8_t *data, size_t n, kl_vocab **out);
/* Saved as one line of space-separated byte values (text, diffable). */
KL_API kl_status kl_vocab_save(const kl_vocab *v, const char *path);
KL_API kl_status kl_vocab_load(const char *path, kl_vocab **out);
KL_API int kl_vocab_size(const kl_vocab *v);
/* Id of byte b, or -1 if the vocabulary lacks it. */
KL_API int kl_vocab_id(const kl_vocab *v, uint8_t b);
KL_API uint8_t kl_vocab_byte(const kl_vocab *v, int id);
KL_API void kl_vocab_free(kl_vocab *v);

/* Encodes bytes; a byte outside the vocabulary is KL_EINVAL naming its offset. */
KL_API kl_status kl_tokens_encode(const kl_vocab *v, const uint8_t *data, size_t n, kl_tokens **out);
/* Token files: "KILNTOK1", u32 token bytes (2 or 4), u32 vocab size, u64
 * count, then the tokens (little-endian). Written atomically. */
KL_API kl_status kl_tokens_save(const kl_tokens *t, const char *path);
KL_API kl_status kl_tokens_load(const char *path, kl_tokens **out);
KL_API int64_t kl_tokens_count(const kl_tokens *t);
KL_API int kl_tokens_vocab(const kl_tokens *t);
KL_API const int32_t *kl_tokens_data(const kl_tokens *t);
KL_API void kl_tokens_free(kl_tokens *t);

/* Batch `step` of B windows of T+1 tokens drawn from [first, first + n):
 * x gets tokens [s, s+T), y tokens [s+1, s+T+1). Window starts are a pure
 * function of (seed, step, row), so a resumed run draws the same batches.
 * KL_EINVAL unless B >= 1, T >= 1, first >= 0 and [first, first + n) lies
 * within the tokens and holds at least T + 1 of them. */
KL_API kl_status kl_tokens_batch(const kl_tokens *t, int64_t first, int64_t n, uint64_t seed, int64_t step,
                                 int64_t B, int64_t T, int32_t *x, int32_t *y);

#ifdef __cplusplus
}
#endif
#endif
