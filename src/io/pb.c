/* Protobuf wire format (see pb.h). */
#include "io/pb.h"
#include "core/error.h"

#include <string.h>

void kl_pb_free(kl_pb *b)
{
    kl_free(b->p);
    *b = (kl_pb){0};
}

void kl_pb_le64(unsigned char *o, uint64_t v)
{
    for (int i = 0; i < 8; i++) o[i] = (unsigned char)(v >> (8 * i));
}

void kl_pb_le32(unsigned char *o, uint32_t v)
{
    for (int i = 0; i < 4; i++) o[i] = (unsigned char)(v >> (8 * i));
}

void kl_pb_reserve(kl_pb *b, size_t n)
{
    if (b->oom || b->n + n <= b->cap) return;
    unsigned char *p = kl_realloc(b->p, b->n + n);
    if (!p) {
        b->oom = 1;
        return;
    }
    b->p = p, b->cap = b->n + n;
}

void kl_pb_raw(kl_pb *b, const void *src, size_t n)
{
    if (b->oom || n == 0) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        unsigned char *p = kl_realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

void kl_pb_varint(kl_pb *b, uint64_t v)
{
    unsigned char t[10];
    int k = 0;
    do {
        t[k] = (unsigned char)(v & 0x7F);
        v >>= 7;
        if (v) t[k] |= 0x80;
        k++;
    } while (v);
    kl_pb_raw(b, t, (size_t)k);
}

void kl_pb_tag(kl_pb *b, int field, int wire) { kl_pb_varint(b, (uint64_t)field << 3 | (uint64_t)wire); }

void kl_pb_int(kl_pb *b, int field, int64_t v)
{
    kl_pb_tag(b, field, 0);
    kl_pb_varint(b, (uint64_t)v);
}

/* a fixed32 (nbytes 4) or fixed64 (8) field of bits u, little-endian */
static void fixed(kl_pb *b, int field, uint64_t u, int nbytes)
{
    unsigned char t[8];
    for (int i = 0; i < nbytes; i++) t[i] = (unsigned char)(u >> (8 * i));
    kl_pb_tag(b, field, nbytes == 4 ? 5 : 1);
    kl_pb_raw(b, t, (size_t)nbytes);
}

void kl_pb_float(kl_pb *b, int field, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    fixed(b, field, u, 4);
}

void kl_pb_double(kl_pb *b, int field, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    fixed(b, field, u, 8);
}

void kl_pb_bytes(kl_pb *b, int field, const void *data, size_t n)
{
    kl_pb_tag(b, field, 2);
    kl_pb_varint(b, n);
    kl_pb_raw(b, data, n);
}

void kl_pb_str(kl_pb *b, int field, const char *s) { kl_pb_bytes(b, field, s, strlen(s)); }

void kl_pb_msg(kl_pb *b, int field, const kl_pb *child)
{
    if (child->oom) b->oom = 1;
    kl_pb_bytes(b, field, child->p, child->n);
}
