/* Config tree: documents, nodes, paths and navigation. */
#include "io/config_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"

/* ---- building ------------------------------------------------------------ */

kl_cfg_node *cfg_node_new(kl_cfg_kind kind, const char *origin, int line,
                          int col)
{
    kl_cfg_node *n = kl_calloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->origin = origin;
    n->line = line;
    n->col = col;
    return n;
}

void cfg_node_free(kl_cfg_node *n)
{
    if (!n) return;
    for (int i = 0; i < n->n; i++) {
        if (n->kind == KL_CFG_MAP) {
            kl_free(n->entries[i].key);
            cfg_node_free(n->entries[i].value);
        } else if (n->kind == KL_CFG_SEQ) {
            cfg_node_free(n->items[i]);
        }
    }
    kl_free(n->entries);
    kl_free(n->items);
    kl_free(n->text);
    kl_free(n->path);
    kl_free(n);
}

/* Grows an array of elem-sized slots to hold n + 1. */
static kl_status grow(void **arr, int *cap, int n, size_t elem)
{
    if (n < *cap) return KL_OK;
    if (n >= INT_MAX / 2) return kl_fail(KL_ENOMEM, "config: too many items");
    int nc = *cap ? *cap * 2 : 4;
    void *p = kl_realloc(*arr, (size_t)nc * elem);
    if (!p) return KL_ENOMEM;
    *arr = p;
    *cap = nc;
    return KL_OK;
}

kl_status cfg_map_add(kl_cfg_node *map, char *key, const char *origin,
                      int line, int col, kl_cfg_node *value)
{
    if (grow((void **)&map->entries, &map->cap, map->n, sizeof(kl_cfg_entry))) {
        kl_free(key);
        return KL_ENOMEM;
    }
    kl_cfg_entry *e = &map->entries[map->n++];
    e->key = key;
    e->origin = origin;
    e->line = line;
    e->col = col;
    e->value = value;
    value->parent = map;
    value->key = key;
    return KL_OK;
}

kl_status cfg_seq_add(kl_cfg_node *seq, kl_cfg_node *item)
{
    KL_TRY(grow((void **)&seq->items, &seq->cap, seq->n, sizeof(kl_cfg_node *)));
    item->parent = seq;
    item->index = seq->n;
    seq->items[seq->n++] = item;
    return KL_OK;
}

int cfg_depth(const kl_cfg_node *n)
{
    int d = 0;
    for (; n && n->parent; n = n->parent) d++;
    return d;
}

void cfg_mark_origin(kl_cfg_node *n, const char *origin)
{
    n->origin = origin;
    n->line = n->col = 0;
    for (int i = 0; i < n->n; i++) {
        if (n->kind == KL_CFG_MAP) {
            n->entries[i].origin = origin;
            n->entries[i].line = n->entries[i].col = 0;
            cfg_mark_origin(n->entries[i].value, origin);
        } else if (n->kind == KL_CFG_SEQ) {
            cfg_mark_origin(n->items[i], origin);
        }
    }
}

const char *cfg_add_origin(kl_cfg *c, const char *s)
{
    if (grow((void **)&c->origins, &c->cap_origins, c->n_origins,
             sizeof(char *)))
        return NULL;
    char *d = kl_strdup(s);
    if (d) c->origins[c->n_origins++] = d;
    return d;
}

int cfg_is_null_word(const char *s)
{
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") ||
           !strcmp(s, "Null") || !strcmp(s, "NULL");
}

int cfg_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p++;
        int more;
        unsigned min;
        if (c < 0x80) continue;
        if ((c & 0xE0) == 0xC0) more = 1, min = 0x80, c &= 0x1F;
        else if ((c & 0xF0) == 0xE0) more = 2, min = 0x800, c &= 0x0F;
        else if ((c & 0xF8) == 0xF0) more = 3, min = 0x10000, c &= 0x07;
        else return 0;
        if (end - p < more) return 0;
        for (int i = 0; i < more; i++, p++) {
            if ((*p & 0xC0) != 0x80) return 0;
            c = (c << 6) | (*p & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    }
    return 1;
}

/* ---- documents ------------------------------------------------------------ */

kl_status kl_cfg_new_empty(const char *name, kl_cfg **out)
{
    *out = NULL;
    kl_cfg *c = kl_calloc(1, sizeof *c);
    if (!c) return KL_ENOMEM;
    c->name = kl_strdup(name ? name : "config");
    if (c->name) c->root = cfg_node_new(KL_CFG_MAP, c->name, 0, 0);
    if (!c->root) {
        kl_cfg_free(c);
        return KL_ENOMEM;
    }
    *out = c;
    return KL_OK;
}

kl_status kl_cfg_parse(const char *text, size_t n, const char *name,
                       kl_cfg **out)
{
    *out = NULL;
    if (!text && n) return kl_fail(KL_EMISUSE, "kl_cfg_parse: NULL text");
    kl_cfg *c = kl_calloc(1, sizeof *c);
    if (!c) return KL_ENOMEM;
    c->name = kl_strdup(name ? name : "config");
    if (!c->name) {
        kl_free(c);
        return KL_ENOMEM;
    }
    kl_status s = cfg_parse_tree(text ? text : "", n, c->name, c->name,
                                 &c->root);
    if (s) {
        kl_cfg_free(c);
        return s;
    }
    *out = c;
    return KL_OK;
}

kl_status kl_cfg_load(const char *path, kl_cfg **out)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return kl_fail(KL_EIO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    kl_status s = KL_OK;
    for (;;) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 4096;
            char *p = kl_realloc(buf, nc);
            if (!p) {
                s = KL_ENOMEM;
                break;
            }
            buf = p;
            cap = nc;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f))
                s = kl_fail(KL_EIO, "%s: read failed: %s", path, strerror(errno));
            break;
        }
    }
    fclose(f);
    if (!s) s = kl_cfg_parse(buf, n, path, out);
    kl_free(buf);
    return s;
}

void kl_cfg_free(kl_cfg *c)
{
    if (!c) return;
    cfg_node_free(c->root);
    for (int i = 0; i < c->n_origins; i++) kl_free(c->origins[i]);
    kl_free(c->origins);
    kl_free(c->name);
    kl_free(c);
}

kl_cfg_node *kl_cfg_root(const kl_cfg *c) { return c ? c->root : NULL; }
const char *kl_cfg_name(const kl_cfg *c) { return c ? c->name : ""; }

/* ---- nodes ---------------------------------------------------------------- */

kl_cfg_kind kl_cfg_kind_of(const kl_cfg_node *n) { return n ? n->kind : KL_CFG_NULL; }
int kl_cfg_line(const kl_cfg_node *n) { return n ? n->line : 0; }
int kl_cfg_col(const kl_cfg_node *n) { return n ? n->col : 0; }
const char *kl_cfg_origin(const kl_cfg_node *n) { return n ? n->origin : ""; }

const char *kl_cfg_kind_name(kl_cfg_kind k)
{
    switch (k) {
    case KL_CFG_MAP: return "a map";
    case KL_CFG_SEQ: return "a list";
    case KL_CFG_SCALAR: return "a scalar";
    default: return "null";
    }
}

/* Appends s to buf at *pos; when it does not fit, ends buf with "...". */
static void append(char *buf, size_t cap, size_t *pos, const char *s)
{
    if (*pos >= cap) return; /* already truncated */
    size_t len = strlen(s);
    if (*pos + len < cap) {
        memcpy(buf + *pos, s, len + 1);
        *pos += len;
        return;
    }
    memcpy(buf + *pos, s, cap - 1 - *pos);
    buf[cap - 1] = 0;
    if (cap >= 4) memcpy(buf + cap - 4, "...", 4);
    *pos = cap;
}

static void path_rec(const kl_cfg_node *n, char *buf, size_t cap, size_t *pos)
{
    if (!n->parent) return;
    path_rec(n->parent, buf, cap, pos);
    if (n->parent->kind == KL_CFG_SEQ) {
        char idx[24];
        snprintf(idx, sizeof idx, "[%d]", n->index);
        append(buf, cap, pos, idx);
    } else {
        if (n->parent->parent) append(buf, cap, pos, ".");
        append(buf, cap, pos, n->key);
    }
}

void cfg_path_into(const kl_cfg_node *n, char *buf, size_t cap)
{
    size_t pos = 0;
    if (!cap) return;
    buf[0] = 0;
    if (n) path_rec(n, buf, cap, &pos);
}

/* Exact length of n's path, for the cached copy. */
static size_t path_len(const kl_cfg_node *n)
{
    size_t len = 0;
    for (; n && n->parent; n = n->parent) {
        if (n->parent->kind == KL_CFG_SEQ) {
            char idx[24];
            len += (size_t)snprintf(idx, sizeof idx, "[%d]", n->index);
        } else {
            len += strlen(n->key) + (n->parent->parent ? 1 : 0);
        }
    }
    return len;
}

const char *kl_cfg_path(const kl_cfg_node *n)
{
    if (!n) return "";
    if (!n->path) {
        size_t cap = path_len(n) + 1;
        char *p = kl_malloc(cap);
        if (!p) return "?";
        cfg_path_into(n, p, cap);
        ((kl_cfg_node *)n)->path = p; /* cache: logically const */
    }
    return n->path;
}

static kl_cfg_node *get_n(const kl_cfg_node *map, const char *key, size_t klen)
{
    if (!map || map->kind != KL_CFG_MAP) return NULL;
    for (int i = 0; i < map->n; i++) {
        const char *k = map->entries[i].key;
        if (!strncmp(k, key, klen) && k[klen] == 0) return map->entries[i].value;
    }
    return NULL;
}

kl_cfg_node *kl_cfg_get(const kl_cfg_node *map, const char *key)
{
    return key ? get_n(map, key, strlen(key)) : NULL;
}

int cfg_path_step(const char **s, int first, const char **key, size_t *klen,
                  long *index)
{
    const char *p = *s;
    if (!*p) return 0;
    *index = -1;
    if (*p == '[') {
        long v = 0;
        p++;
        if (*p < '0' || *p > '9') return -1;
        for (; *p >= '0' && *p <= '9'; p++) {
            v = v * 10 + (*p - '0');
            if (v > INT_MAX) return -1;
        }
        if (*p != ']') return -1;
        *index = v;
        *s = p + 1;
        return 1;
    }
    if (!first) {
        if (*p != '.') return -1;
        p++;
    }
    *key = p;
    while (*p && *p != '.' && *p != '[') p++;
    *klen = (size_t)(p - *key);
    if (!*klen) return -1;
    *s = p;
    return 1;
}

kl_cfg_node *kl_cfg_at(const kl_cfg_node *node, const char *dotted_path)
{
    const char *s = dotted_path ? dotted_path : "", *key = NULL;
    size_t klen = 0;
    long index;
    int r;
    for (int first = 1; node && (r = cfg_path_step(&s, first, &key, &klen, &index)) != 0;
         first = 0) {
        if (r < 0) return NULL;
        node = index >= 0 ? kl_cfg_item(node, (int)index) : get_n(node, key, klen);
    }
    return (kl_cfg_node *)node;
}

int kl_cfg_len(const kl_cfg_node *seq)
{
    return seq && seq->kind == KL_CFG_SEQ ? seq->n : 0;
}

kl_cfg_node *kl_cfg_item(const kl_cfg_node *seq, int i)
{
    if (!seq || seq->kind != KL_CFG_SEQ || i < 0 || i >= seq->n) return NULL;
    return seq->items[i];
}

int kl_cfg_map_len(const kl_cfg_node *map)
{
    return map && map->kind == KL_CFG_MAP ? map->n : 0;
}

const char *kl_cfg_map_key(const kl_cfg_node *map, int i)
{
    if (!map || map->kind != KL_CFG_MAP || i < 0 || i >= map->n) return NULL;
    return map->entries[i].key;
}

kl_cfg_node *kl_cfg_map_value(const kl_cfg_node *map, int i)
{
    if (!map || map->kind != KL_CFG_MAP || i < 0 || i >= map->n) return NULL;
    return map->entries[i].value;
}

const char *kl_cfg_str_value(const kl_cfg_node *n)
{
    return n && n->kind == KL_CFG_SCALAR ? n->text : NULL;
}

int kl_cfg_equal(const kl_cfg_node *a, const kl_cfg_node *b)
{
    if (!a || !b) return a == b;
    if (a->kind != b->kind || a->n != b->n) return 0;
    if (a->kind == KL_CFG_SCALAR) return !strcmp(a->text, b->text);
    for (int i = 0; i < a->n; i++) {
        if (a->kind == KL_CFG_MAP) {
            if (strcmp(a->entries[i].key, b->entries[i].key) ||
                !kl_cfg_equal(a->entries[i].value, b->entries[i].value))
                return 0;
        } else if (!kl_cfg_equal(a->items[i], b->items[i])) {
            return 0;
        }
    }
    return 1;
}
