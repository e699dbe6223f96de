/* Text data: vocabulary, token files (round trip and bad files), and
 * deterministic random windows. */
#include "kiln/text.h"
#include "testutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
    char dir[] = "/tmp/kl_text_XXXXXX", path[256];
    if (!mkdtemp(dir)) return 1;
    const char *a = "hello world\n", *b = "kiln trains\n";
    snprintf(path, sizeof path, "%s/b.txt", dir);
    FILE *f = fopen(path, "w");
    fputs(b, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/a.txt", dir);
    f = fopen(path, "w");
    fputs(a, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/a.dat", dir); /* fortune index files are skipped */
    f = fopen(path, "w");
    fputs("\x01\x02", f);
    fclose(f);

    kl_text *t;
    CHECK_OK(kl_text_load_dir(dir, &t));
    CHECK(kl_text_size(t) == strlen(a) + strlen(b));
    CHECK(memcmp(kl_text_data(t), "hello world\nkiln", 16) == 0); /* sorted by name */
    kl_vocab *v, *v2;
    CHECK_OK(kl_vocab_build(kl_text_data(t), kl_text_size(t), &v));
    CHECK(kl_vocab_size(v) == 15); /* \n space a d e h i k l n o r s t w */
    CHECK(kl_vocab_id(v, '\n') == 0 && kl_vocab_byte(v, kl_vocab_id(v, 'w')) == 'w' && kl_vocab_id(v, 'z') == -1);
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    CHECK_OK(kl_vocab_save(v, path));
    CHECK_OK(kl_vocab_load(path, &v2));
    CHECK(kl_vocab_size(v2) == kl_vocab_size(v) && kl_vocab_id(v2, 'k') == kl_vocab_id(v, 'k'));
    kl_vocab_free(v2);

    kl_tokens *tok, *tok2;
    CHECK_OK(kl_tokens_encode(v, kl_text_data(t), kl_text_size(t), &tok));
    CHECK_ERR(kl_tokens_encode(v, (const uint8_t *)"hez", 3, &tok2), KL_EINVAL, "text byte 122 at offset 2 is not in the vocabulary");
    snprintf(path, sizeof path, "%s/tok.bin", dir);
    CHECK_OK(kl_tokens_save(tok, path));
    CHECK_OK(kl_tokens_load(path, &tok2));
    CHECK(kl_tokens_count(tok2) == kl_tokens_count(tok) && kl_tokens_vocab(tok2) == kl_vocab_size(v));
    CHECK(memcmp(kl_tokens_data(tok2), kl_tokens_data(tok), (size_t)kl_tokens_count(tok) * 4) == 0);
    kl_tokens_free(tok2);
    CHECK(truncate(path, 30) == 0);
    CHECK_ERR(kl_tokens_load(path, &tok2), KL_EFORMAT, "header says 24 tokens of 2 bytes, file holds 6 bytes of tokens");
    f = fopen(path, "w");
    fputs("NOTTOKENS-and-more-bytes-here", f);
    fclose(f);
    CHECK_ERR(kl_tokens_load(path, &tok2), KL_EFORMAT, "not a kiln token file (bad magic)");

    /* windows: y is x shifted by one; the same (seed, step) gives the same batch */
    int32_t x1[3 * 5], y1[3 * 5], x2[3 * 5], y2[3 * 5];
    CHECK_OK(kl_tokens_batch(tok, 0, 20, 42, 7, 3, 5, x1, y1));
    CHECK_OK(kl_tokens_batch(tok, 0, 20, 42, 7, 3, 5, x2, y2));
    CHECK(!memcmp(x1, x2, sizeof x1) && !memcmp(y1, y2, sizeof y1));
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 4; i++) CHECK(y1[r * 5 + i] == x1[r * 5 + i + 1]);
    int differ = 0;
    for (int s = 8; s < 16 && !differ; s++) {
        CHECK_OK(kl_tokens_batch(tok, 0, 20, 42, s, 3, 5, x2, y2));
        differ = memcmp(x1, x2, sizeof x1) != 0;
    }
    CHECK(differ);
    CHECK_ERR(kl_tokens_batch(tok, 20, 10, 1, 0, 1, 5, x1, y1), KL_EINVAL, "range [20, 30) of 24 tokens");
    /* bad sizes and ranges are refused before any copy: T < 0 was a negative
     * memcpy, first + n overflowing a read past the tokens */
    CHECK_ERR(kl_tokens_batch(tok, 0, 20, 1, 0, 1, -3, x1, y1), KL_EINVAL, "B and T must be >= 1");
    CHECK_ERR(kl_tokens_batch(tok, 0, 20, 1, 0, 1, 0, x1, y1), KL_EINVAL, "B and T must be >= 1");
    CHECK_ERR(kl_tokens_batch(tok, 0, 20, 1, 0, 0, 5, x1, y1), KL_EINVAL, "B and T must be >= 1");
    CHECK_ERR(kl_tokens_batch(tok, 0, 20, 1, 0, -1, 5, x1, y1), KL_EINVAL, "B and T must be >= 1");
    CHECK_ERR(kl_tokens_batch(tok, 5, INT64_MAX, 1, 0, 1, 2, x1, y1), KL_EINVAL, "of 24 tokens cannot hold");
    CHECK_ERR(kl_tokens_batch(tok, INT64_MAX, 1, 1, 0, 1, 2, x1, y1), KL_EINVAL, "of 24 tokens cannot hold");
    CHECK_ERR(kl_tokens_batch(tok, 0, 20, 1, 0, 1, INT64_MAX, x1, y1), KL_EINVAL, "cannot hold a window of 9223372036854775808");
    CHECK_ERR(kl_tokens_batch(tok, -1, 20, 1, 0, 1, 5, x1, y1), KL_EINVAL, "range start -1 and length 20 must be >= 0");
    CHECK_ERR(kl_tokens_batch(tok, 0, 20, 1, 0, INT64_MAX, 5, x1, y1), KL_EINVAL, "tokens overflow");
    CHECK_OK(kl_tokens_batch(tok, 18, 6, 1, 0, 1, 5, x1, y1)); /* the last T + 1 tokens: still a window */
    CHECK(y1[4] == kl_tokens_data(tok)[23]);

    /* NULL arguments are KL_EMISUSE naming them, not a crash */
    CHECK_ERR(kl_tokens_batch(NULL, 0, 20, 1, 0, 1, 5, x1, y1), KL_EMISUSE, "kl_tokens_batch: tokens is NULL");
    CHECK_ERR(kl_tokens_batch(tok, 0, 20, 1, 0, 1, 5, NULL, y1), KL_EMISUSE, "kl_tokens_batch: x is NULL");
    CHECK_ERR(kl_tokens_batch(tok, 0, 20, 1, 0, 1, 5, x1, NULL), KL_EMISUSE, "kl_tokens_batch: y is NULL");
    CHECK_ERR(kl_tokens_encode(NULL, (const uint8_t *)"a", 1, &tok2), KL_EMISUSE, "kl_tokens_encode: vocab is NULL");
    CHECK_ERR(kl_tokens_encode(v, NULL, 1, &tok2), KL_EMISUSE, "kl_tokens_encode: data is NULL");
    CHECK_ERR(kl_tokens_encode(v, (const uint8_t *)"h", 1, NULL), KL_EMISUSE, "kl_tokens_encode: out is NULL");
    CHECK_ERR(kl_tokens_save(NULL, path), KL_EMISUSE, "kl_tokens_save: tokens is NULL");
    CHECK_ERR(kl_tokens_save(tok, NULL), KL_EMISUSE, "kl_tokens_save: path is NULL");
    CHECK_ERR(kl_tokens_load(path, NULL), KL_EMISUSE, "kl_tokens_load: out is NULL");
    CHECK_ERR(kl_tokens_load(NULL, &tok2), KL_EMISUSE, "kl_tokens_load: path is NULL");
    CHECK_ERR(kl_vocab_build(NULL, 4, &v2), KL_EMISUSE, "kl_vocab_build: data is NULL");
    CHECK_ERR(kl_vocab_build((const uint8_t *)"ab", 2, NULL), KL_EMISUSE, "kl_vocab_build: out is NULL");
    CHECK_ERR(kl_vocab_save(NULL, path), KL_EMISUSE, "kl_vocab_save: vocab is NULL");
    CHECK_ERR(kl_vocab_save(v, NULL), KL_EMISUSE, "kl_vocab_save: path is NULL");
    CHECK_ERR(kl_vocab_load(path, NULL), KL_EMISUSE, "kl_vocab_load: out is NULL");
    CHECK_ERR(kl_vocab_load(NULL, &v2), KL_EMISUSE, "kl_vocab_load: path is NULL");
    kl_text *t2;
    CHECK_ERR(kl_text_load_file(path, NULL), KL_EMISUSE, "kl_text_load_file: out is NULL");
    CHECK_ERR(kl_text_load_file(NULL, &t2), KL_EMISUSE, "kl_text_load_file: path is NULL");
    CHECK_ERR(kl_text_load_dir(dir, NULL), KL_EMISUSE, "kl_text_load_dir: out is NULL");
    CHECK_ERR(kl_text_load_dir(NULL, &t2), KL_EMISUSE, "kl_text_load_dir: dir is NULL");
    CHECK(t2 == NULL);
    CHECK(!kl_text_data(NULL) && kl_text_size(NULL) == 0 && kl_vocab_size(NULL) == 0 && kl_vocab_id(NULL, 'a') == -1);
    CHECK(kl_vocab_byte(NULL, 0) == '?' && kl_tokens_count(NULL) == 0 && kl_tokens_vocab(NULL) == 0 && !kl_tokens_data(NULL));
    kl_tokens_free(tok);
    kl_vocab_free(v);
    kl_text_free(t);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) return 1;
    return kl_test_done("test_text");
}
