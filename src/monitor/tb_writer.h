/* A small TensorBoard event-file writer: TFRecord framing around
 * hand-encoded Event protobufs carrying scalar and histogram summaries, so
 * `tensorboard --logdir runs/` shows kiln runs with no TensorFlow or
 * protobuf library.
 *
 *   tb_writer *w;
 *   tb_writer_open("runs/x/tb", -1, &w);  // events.out.tfevents.<time>.<host>
 *   tb_scalar(w, "train/loss", step, 0.42f);
 *   tb_histogram(w, "params/layers.1.weight", step, values, n);
 *   tb_writer_flush(w);
 *   tb_writer_close(w);
 */
#ifndef KL_MONITOR_TB_WRITER_H
#define KL_MONITOR_TB_WRITER_H

#include <stddef.h>
#include <stdint.h>
#include "kiln/status.h"

typedef struct tb_writer tb_writer;

/* Creates dir (and parents) and a new event file in it whose first record
 * is the file_version event; resumed_step >= 0 (a run resumed from that
 * step) adds a SessionLog START at resumed_step + 1, so TensorBoard drops
 * the earlier files' points from there on. KL_EIO with the path on
 * failure; *out NULL. */
kl_status tb_writer_open(const char *dir, int64_t resumed_step, tb_writer **out);
/* Flushes and closes; NULL: no-op. */
void tb_writer_close(tb_writer *w);
/* The event file's path (owned by w). */
const char *tb_writer_path(const tb_writer *w);
/* Writes buffered events to disk. KL_EIO on a write error. */
kl_status tb_writer_flush(tb_writer *w);

/* One scalar event (Summary.Value.simple_value) at step. */
kl_status tb_scalar(tb_writer *w, const char *tag, int64_t step, double value);
/* One histogram event over n floats (non-finite values are kept out of
 * num, min/max/sum and the buckets). n may be 0. */
kl_status tb_histogram(tb_writer *w, const char *tag, int64_t step, const float *v, int64_t n);

/* ---- encoding helpers (exposed for tests) ------------------------------- */

/* CRC-32C (Castagnoli) of n bytes; "123456789" gives 0xE3069283. */
uint32_t tb_crc32c(const void *data, size_t n);
/* TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8. */
uint32_t tb_masked_crc32c(const void *data, size_t n);
/* Frames n bytes as one TFRecord into out (n + 16 bytes): uint64 length,
 * masked CRC of the length, the data, masked CRC of the data (little endian). */
void tb_frame(const void *data, size_t n, unsigned char *out);

#endif
