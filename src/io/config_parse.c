/* YAML text -> config tree, through libyaml's event parser (no alias
 * expansion, explicit depth limit, locations for every node and key). */
#include "io/config_internal.h"

#include <string.h>
#include <yaml.h>

#include "core/error.h"

typedef struct frame {
    kl_cfg_node *node;
    char *key; /* pending key of a map, waiting for its value */
    int kline, kcol;
} frame;

typedef struct parse_ctx {
    const char *text;
    size_t n;
    const char *name, *origin;
    kl_cfg_node *root;
    frame stack[KL_CFG_MAX_DEPTH];
    int depth, ndocs, done;
} parse_ctx;

static kl_status fail_at(const parse_ctx *x, yaml_mark_t m,
                         const kl_cfg_node *path_node, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static kl_status fail_at(const parse_ctx *x, yaml_mark_t m,
                         const kl_cfg_node *path_node, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kl_status s = cfg_vfail_loc(x->name, (int)m.line + 1, (int)m.column + 1,
                                path_node, KL_EFORMAT, fmt, ap);
    va_end(ap);
    return s;
}

/* Byte offset of 0-based (line, column) in the text, or n if past the end. */
static size_t offset_of(const parse_ctx *x, size_t line, size_t col)
{
    size_t i = 0;
    for (; i < x->n && line; i++)
        if (x->text[i] == '\n') line--;
    for (; i < x->n && col; col--) /* one character: lead + continuations */
        for (i++; i < x->n && ((unsigned char)x->text[i] & 0xC0) == 0x80; i++) {}
    return i;
}

static kl_status yaml_error(const parse_ctx *x, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR)
        return kl_fail(KL_ENOMEM, "%s: out of memory parsing YAML", x->name);
    const char *problem = p->problem ? p->problem : "invalid YAML";
    if (p->error == YAML_READER_ERROR) {
        /* Only a byte offset is known: count lines and characters to it. */
        size_t off = p->problem_offset < x->n ? p->problem_offset : x->n;
        int line = 1, col = 1;
        for (size_t i = 0; i < off; i++) {
            if (x->text[i] == '\n') line++, col = 1;
            else if (((unsigned char)x->text[i] & 0xC0) != 0x80) col++;
        }
        if (p->problem_value >= 0)
            return kl_fail(KL_EFORMAT, "%s:%d:%d: %s (byte 0x%02x)", x->name,
                           line, col, problem, (unsigned)p->problem_value & 0xFF);
        return kl_fail(KL_EFORMAT, "%s:%d:%d: %s", x->name, line, col, problem);
    }
    char ctx[160] = "";
    yaml_mark_t pm = p->problem_mark, cm = p->context_mark;
    if (p->context) {
        if (cm.line != pm.line || cm.column != pm.column)
            snprintf(ctx, sizeof ctx, " (%s at %d:%d)", p->context,
                     (int)cm.line + 1, (int)cm.column + 1);
        else
            snprintf(ctx, sizeof ctx, " (%s)", p->context);
    }
    size_t at = offset_of(x, pm.line, pm.column);
    const char *hint = at < x->n && x->text[at] == '\t'
                           ? "; tabs cannot indent YAML, use spaces" : "";
    return kl_fail(KL_EFORMAT, "%s:%d:%d: %s%s%s", x->name, (int)pm.line + 1,
                   (int)pm.column + 1, problem, ctx, hint);
}

/* Attaches a new node to the open collection (or makes it the root). */
static kl_status attach(parse_ctx *x, kl_cfg_node *node, yaml_mark_t m)
{
    if (!x->depth) {
        x->root = node;
        return KL_OK;
    }
    frame *f = &x->stack[x->depth - 1];
    if (f->node->kind == KL_CFG_SEQ) {
        kl_status s = cfg_seq_add(f->node, node);
        if (s) cfg_node_free(node);
        return s;
    }
    if (!f->key) {
        kl_status s = fail_at(x, m, f->node, "map keys must be plain names, got %s",
                              kl_cfg_kind_name(node->kind));
        cfg_node_free(node);
        return s;
    }
    char *key = f->key;
    f->key = NULL;
    kl_status s = cfg_map_add(f->node, key, x->origin, f->kline, f->kcol, node);
    if (s) cfg_node_free(node);
    return s;
}

static kl_status on_scalar(parse_ctx *x, const yaml_event_t *ev)
{
    const char *v = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    yaml_mark_t m = ev->start_mark;
    frame *f = x->depth ? &x->stack[x->depth - 1] : NULL;
    if (memchr(v, 0, len))
        return fail_at(x, m, f ? f->node : NULL,
                       "NUL characters in text are not supported");
    int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    if (f && f->node->kind == KL_CFG_MAP && !f->key) { /* a key */
        for (int i = 0; i < f->node->n; i++)
            if (!strcmp(f->node->entries[i].key, v))
                return fail_at(x, m, f->node,
                               "duplicate key '%s' (first defined on line %d)",
                               v, f->node->entries[i].line);
        f->key = kl_malloc(len + 1);
        if (!f->key) return KL_ENOMEM;
        memcpy(f->key, v, len + 1);
        f->kline = (int)m.line + 1;
        f->kcol = (int)m.column + 1;
        return KL_OK;
    }
    int is_null = plain && cfg_is_null_word(v);
    kl_cfg_node *n = cfg_node_new(is_null ? KL_CFG_NULL : KL_CFG_SCALAR,
                                  x->origin, (int)m.line + 1, (int)m.column + 1);
    if (!n) return KL_ENOMEM;
    if (!is_null) {
        n->quoted = !plain;
        n->text = kl_malloc(len + 1);
        if (!n->text) {
            cfg_node_free(n);
            return KL_ENOMEM;
        }
        memcpy(n->text, v, len + 1);
    }
    return attach(x, n, m);
}

static kl_status on_start(parse_ctx *x, const yaml_event_t *ev, kl_cfg_kind kind)
{
    yaml_mark_t m = ev->start_mark;
    if (x->depth == KL_CFG_MAX_DEPTH)
        return fail_at(x, m, x->stack[x->depth - 1].node,
                       "nesting deeper than %d levels", KL_CFG_MAX_DEPTH);
    kl_cfg_node *n = cfg_node_new(kind, x->origin, (int)m.line + 1,
                                  (int)m.column + 1);
    if (!n) return KL_ENOMEM;
    n->flow = kind == KL_CFG_MAP
                  ? ev->data.mapping_start.style == YAML_FLOW_MAPPING_STYLE
                  : ev->data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE;
    KL_TRY(attach(x, n, m));
    x->stack[x->depth++] = (frame){.node = n};
    return KL_OK;
}

static kl_status on_event(parse_ctx *x, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (++x->ndocs > 1)
            return fail_at(x, ev->start_mark, NULL,
                           "a second YAML document starts here; a config "
                           "must be exactly one document");
        return KL_OK;
    case YAML_ALIAS_EVENT:
        return fail_at(x, ev->start_mark,
                       x->depth ? x->stack[x->depth - 1].node : NULL,
                       "YAML aliases (*%s) are not supported; write the "
                       "value out", (const char *)ev->data.alias.anchor);
    case YAML_SCALAR_EVENT: return on_scalar(x, ev);
    case YAML_MAPPING_START_EVENT: return on_start(x, ev, KL_CFG_MAP);
    case YAML_SEQUENCE_START_EVENT: return on_start(x, ev, KL_CFG_SEQ);
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        if (x->depth) {
            x->depth--;
            kl_free(x->stack[x->depth].key); /* always NULL: keys pair with values */
            x->stack[x->depth].key = NULL;
        }
        return KL_OK;
    case YAML_STREAM_END_EVENT:
        x->done = 1;
        if (!x->ndocs || !x->root)
            return kl_fail(KL_EFORMAT, "%s: no YAML document (the text is "
                           "empty or only comments)", x->name);
        return KL_OK;
    default: return KL_OK;
    }
}

kl_status cfg_parse_tree(const char *text, size_t n, const char *name,
                         const char *origin, kl_cfg_node **root)
{
    *root = NULL;
    parse_ctx x = {.text = text, .n = n, .name = name, .origin = origin};
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p))
        return kl_fail(KL_ENOMEM, "%s: out of memory starting the YAML parser",
                       name);
    yaml_parser_set_input_string(&p, (const unsigned char *)text, n);
    kl_status s = KL_OK;
    while (!s && !x.done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            s = yaml_error(&x, &p);
            break;
        }
        s = on_event(&x, &ev);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    for (int i = 0; i < KL_CFG_MAX_DEPTH; i++) kl_free(x.stack[i].key);
    if (s) {
        cfg_node_free(x.root);
        return s;
    }
    *root = x.root;
    return KL_OK;
}
