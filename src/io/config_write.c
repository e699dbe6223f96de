/* Config tree -> YAML text through libyaml's emitter; numbers as text. */
#include "core/cnum.h"
#include "io/config_internal.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "core/error.h"

typedef struct sink {
    char *buf;
    size_t n, cap;
} sink;

static int sink_write(void *data, unsigned char *bytes, size_t size)
{
    sink *s = data;
    if (s->n + size + 1 > s->cap) {
        size_t nc = s->cap ? s->cap : 1024;
        while (nc < s->n + size + 1) nc *= 2;
        char *p = kl_realloc(s->buf, nc);
        if (!p) return 0;
        s->buf = p;
        s->cap = nc;
    }
    memcpy(s->buf + s->n, bytes, size);
    s->n += size;
    s->buf[s->n] = 0;
    return 1;
}

/* Scalars read back with the same text: quoted when they were quoted, or
 * when plain text would read as null. */
static int emit_scalar(yaml_emitter_t *e, const char *text, int quoted)
{
    yaml_event_t ev;
    int force = cfg_is_null_word(text);
    yaml_scalar_style_t style = quoted || force ? YAML_DOUBLE_QUOTED_SCALAR_STYLE
                                                : YAML_ANY_SCALAR_STYLE;
    return yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)text,
                                        (int)strlen(text), !force, 1, style) &&
           yaml_emitter_emit(e, &ev);
}

static int emit_node(yaml_emitter_t *e, const kl_cfg_node *n)
{
    yaml_event_t ev;
    switch (n->kind) {
    case KL_CFG_SCALAR: return emit_scalar(e, n->text, n->quoted);
    case KL_CFG_NULL:
        return yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)"null",
                                            4, 1, 1, YAML_PLAIN_SCALAR_STYLE) &&
               yaml_emitter_emit(e, &ev);
    case KL_CFG_MAP:
        if (!yaml_mapping_start_event_initialize(
                &ev, NULL, NULL, 1,
                n->flow ? YAML_FLOW_MAPPING_STYLE : YAML_BLOCK_MAPPING_STYLE) ||
            !yaml_emitter_emit(e, &ev))
            return 0;
        for (int i = 0; i < n->n; i++)
            if (!emit_scalar(e, n->entries[i].key, 0) ||
                !emit_node(e, n->entries[i].value))
                return 0;
        return yaml_mapping_end_event_initialize(&ev) && yaml_emitter_emit(e, &ev);
    case KL_CFG_SEQ:
        if (!yaml_sequence_start_event_initialize(
                &ev, NULL, NULL, 1,
                n->flow ? YAML_FLOW_SEQUENCE_STYLE : YAML_BLOCK_SEQUENCE_STYLE) ||
            !yaml_emitter_emit(e, &ev))
            return 0;
        for (int i = 0; i < n->n; i++)
            if (!emit_node(e, n->items[i])) return 0;
        return yaml_sequence_end_event_initialize(&ev) && yaml_emitter_emit(e, &ev);
    }
    return 0;
}

kl_status kl_cfg_to_string(const kl_cfg *c, char **out)
{
    *out = NULL;
    if (!c) return kl_fail(KL_EMISUSE, "kl_cfg_to_string: NULL config");
    yaml_emitter_t e;
    sink s = {0};
    yaml_event_t ev;
    if (!yaml_emitter_initialize(&e))
        return kl_fail(KL_ENOMEM, "%s: out of memory starting the YAML emitter",
                       c->name);
    yaml_emitter_set_output(&e, sink_write, &s);
    yaml_emitter_set_unicode(&e, 1);
    int ok = yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) &&
             yaml_emitter_emit(&e, &ev) &&
             yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) &&
             yaml_emitter_emit(&e, &ev) && emit_node(&e, c->root) &&
             yaml_document_end_event_initialize(&ev, 1) &&
             yaml_emitter_emit(&e, &ev) &&
             yaml_stream_end_event_initialize(&ev) && yaml_emitter_emit(&e, &ev) &&
             yaml_emitter_flush(&e);
    kl_status st = KL_OK;
    if (!ok) {
        if (e.error == YAML_EMITTER_ERROR)
            st = kl_fail(KL_EINTERNAL, "%s: YAML emitter: %s", c->name,
                         e.problem ? e.problem : "failed");
        else if (e.error == YAML_WRITER_ERROR)
            st = KL_ENOMEM; /* sink_write's kl_realloc set the message */
        else
            st = kl_fail(KL_ENOMEM, "%s: out of memory writing YAML", c->name);
    }
    yaml_emitter_delete(&e);
    if (!st && !s.buf && !sink_write(&s, (unsigned char *)"", 0)) st = KL_ENOMEM;
    if (st) {
        kl_free(s.buf);
        return st;
    }
    *out = s.buf;
    return KL_OK;
}

kl_status kl_cfg_write(const kl_cfg *c, const char *path)
{
    char *text;
    KL_TRY(kl_cfg_to_string(c, &text));
    kl_status st = KL_OK;
    FILE *f = fopen(path, "wb");
    if (!f) {
        st = kl_fail(KL_EIO, "%s: cannot write: %s", path, strerror(errno));
    } else {
        size_t n = strlen(text);
        int bad = fwrite(text, 1, n, f) != n;
        bad |= fclose(f) != 0;
        if (bad) st = kl_fail(KL_EIO, "%s: write failed: %s", path, strerror(errno));
    }
    kl_free(text);
    return st;
}

char *kl_cfg_fmt_double(char *buf, size_t n, double v)
{
    for (int prec = 6; prec <= 17; prec++) { /* from 6: 300, not 3e+02 */
        kl_snprintf_c(buf, n, "%.*g", prec, v);
        if (kl_strtod(buf, NULL) == v) break;
    }
    return buf;
}

const char *kl_cfg_shown(const char *text, char *buf, size_t n)
{
    char *end;
    if (!text || !*text) return text;
    (void)strtoll(text, &end, 10); /* integers stay as written: past 2^53 a double would change them */
    if (!*end) return text;
    double v = kl_strtod(text, &end);
    if (*end || !isfinite(v)) return text;
    return kl_cfg_fmt_double(buf, n, v);
}
