/* Protobuf wire format, written by hand for the few messages kiln emits
 * (TensorBoard events: monitor/tb_writer.c; ONNX models: nn/model_onnx.c):
 * varints, fixed32/fixed64, length-delimited fields. A buffer that fails
 * to grow remembers it (oom) and ignores further writes. */
#ifndef KL_IO_PB_H
#define KL_IO_PB_H

#include <stddef.h>
#include <stdint.h>

typedef struct kl_pb {
    unsigned char *p;
    size_t n, cap;
    int oom;
} kl_pb;

void kl_pb_free(kl_pb *b);
void kl_pb_raw(kl_pb *b, const void *src, size_t n);
/* room for n more bytes, exactly (a large buffer's size known ahead need
 * not double past it) */
void kl_pb_reserve(kl_pb *b, size_t n);
void kl_pb_varint(kl_pb *b, uint64_t v);
void kl_pb_tag(kl_pb *b, int field, int wire);
/* field as a varint (int32/int64/enum/bool; negative values take 10 bytes) */
void kl_pb_int(kl_pb *b, int field, int64_t v);
void kl_pb_float(kl_pb *b, int field, float v);   /* fixed32 */
void kl_pb_double(kl_pb *b, int field, double v); /* fixed64 */
void kl_pb_bytes(kl_pb *b, int field, const void *data, size_t n);
void kl_pb_str(kl_pb *b, int field, const char *s);
/* an embedded message: child's bytes (child->oom passes on) */
void kl_pb_msg(kl_pb *b, int field, const kl_pb *child);
/* little-endian stores */
void kl_pb_le64(unsigned char *o, uint64_t v);
void kl_pb_le32(unsigned char *o, uint32_t v);

#endif
