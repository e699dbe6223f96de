/* Command-line overrides: "--set model.layers[1].out=128". */
#include "io/config_internal.h"

#include <stdio.h>
#include <string.h>

#include "core/error.h"

typedef struct step {
    const char *key; /* NULL for an index step */
    size_t klen;
    long index;
} step;

/* Collection levels from n down (0 for a scalar, 1 for a flat list): a node
 * at depth d fits when d + height <= KL_CFG_MAX_DEPTH, as in the parser. */
static int height(const kl_cfg_node *n)
{
    if (n->kind != KL_CFG_MAP && n->kind != KL_CFG_SEQ) return 0;
    int h = 1;
    for (int i = 0; i < n->n; i++) {
        const kl_cfg_node *k = n->kind == KL_CFG_MAP ? n->entries[i].value : n->items[i];
        int hk = height(k) + 1;
        if (hk > h) h = hk;
    }
    return h;
}

/* Puts node (taken, also on failure) at the path; the tree is unchanged on
 * failure. origin is the pool text naming the override for messages. */
static kl_status put(kl_cfg *c, const char *path, kl_cfg_node *node,
                     const char *origin)
{
    step steps[KL_CFG_MAX_DEPTH];
    int ns = 0, r;
    const char *s = path;
    kl_status st;
    for (;;) {
        step t = {0};
        r = cfg_path_step(&s, ns == 0, &t.key, &t.klen, &t.index);
        if (r <= 0) break;
        if (t.index >= 0) t.key = NULL;
        if (ns == KL_CFG_MAX_DEPTH) {
            st = cfg_fail_loc(origin, 0, 0, NULL, KL_EINVAL,
                              "path '%s' is deeper than %d levels", path,
                              KL_CFG_MAX_DEPTH);
            goto fail;
        }
        steps[ns++] = t;
    }
    if (r < 0 || ns == 0) {
        st = cfg_fail_loc(origin, 0, 0, NULL, KL_EINVAL,
                          "bad path '%s' at character %d (expected names "
                          "joined by '.' and [index], e.g. model.layers[2].out)",
                          path, (int)(s - path) + 1);
        goto fail;
    }
    kl_cfg_node *cur = c->root;
    for (int i = 0; i < ns; i++) {
        const step *t = &steps[i];
        char g[80];
        if (!t->key) {
            if (cur->kind != KL_CFG_SEQ) {
                st = cfg_fail_loc(origin, 0, 0, cur, KL_EINVAL,
                                  "cannot index [%ld]: expected a list, got %s",
                                  t->index, kl_cfg_kind_name(cur->kind));
                goto fail;
            }
            if (t->index >= cur->n) {
                st = cfg_fail_loc(origin, 0, 0, cur, KL_EINVAL,
                                  "index %ld out of range (the list has %d "
                                  "items; --set cannot add items)", t->index, cur->n);
                goto fail;
            }
            if (i == ns - 1) {
                if (cfg_depth(cur) + 1 + height(node) > KL_CFG_MAX_DEPTH)
                    goto too_deep;
                cfg_node_free(cur->items[t->index]);
                cur->items[t->index] = node;
                node->parent = cur;
                node->index = (int)t->index;
                return KL_OK;
            }
            cur = cur->items[t->index];
            continue;
        }
        if (cur->kind != KL_CFG_MAP && cur->kind != KL_CFG_NULL) {
            cfg_quote(kl_cfg_str_value(cur) ? cur->text : "", g, sizeof g);
            st = cfg_fail_loc(origin, 0, 0, cur, KL_EINVAL,
                              "cannot set key '%.*s': expected a map, got %s%s%s",
                              (int)t->klen, t->key, kl_cfg_kind_name(cur->kind),
                              cur->kind == KL_CFG_SCALAR ? " " : "",
                              cur->kind == KL_CFG_SCALAR ? g : "");
            goto fail;
        }
        int e = 0;
        while (e < cur->n && (strncmp(cur->entries[e].key, t->key, t->klen) ||
                              cur->entries[e].key[t->klen]))
            e++;
        if (cur->kind == KL_CFG_MAP && e < cur->n) {
            if (i == ns - 1) {
                if (cfg_depth(cur) + 1 + height(node) > KL_CFG_MAX_DEPTH)
                    goto too_deep;
                kl_cfg_entry *en = &cur->entries[e];
                cfg_node_free(en->value);
                en->value = node;
                node->parent = cur;
                node->key = en->key;
                return KL_OK;
            }
            cur = cur->entries[e].value;
            continue;
        }
        /* Missing key: build the rest of the path as new maps, then attach. */
        for (int j = i + 1; j < ns; j++)
            if (!steps[j].key) {
                st = cfg_fail_loc(origin, 0, 0, cur, KL_EINVAL,
                                  "no key '%.*s' here, so [%ld] cannot be set "
                                  "(--set creates map keys, not list items)",
                                  (int)t->klen, t->key, steps[j].index);
                goto fail;
            }
        if (cfg_depth(cur) + ns - i + height(node) > KL_CFG_MAX_DEPTH)
            goto too_deep;
        kl_cfg_node *v = node;
        node = NULL;
        for (int j = ns - 1; j >= i; j--) {
            char *key = kl_malloc(steps[j].klen + 1);
            if (!key) {
                cfg_node_free(v);
                return KL_ENOMEM;
            }
            memcpy(key, steps[j].key, steps[j].klen);
            key[steps[j].klen] = 0;
            kl_cfg_node *m = j > i ? cfg_node_new(KL_CFG_MAP, origin, 0, 0) : cur;
            kl_cfg_kind was = cur->kind;
            if (m == cur) cur->kind = KL_CFG_MAP; /* null becomes a map */
            st = m ? cfg_map_add(m, key, origin, 0, 0, v) : (kl_free(key), KL_ENOMEM);
            if (st) {
                cur->kind = was;
                cfg_node_free(v);
                if (m != cur) cfg_node_free(m);
                return st;
            }
            v = m;
        }
        return KL_OK;
    }
    st = kl_fail(KL_EINTERNAL, "config: override walk fell through");
    goto fail;
too_deep:
    st = cfg_fail_loc(origin, 0, 0, NULL, KL_EINVAL,
                      "the value at '%s' would nest deeper than %d levels",
                      path, KL_CFG_MAX_DEPTH);
fail:
    cfg_node_free(node);
    return st;
}

/* Adds origin text to the pool, runs put, and drops the text on failure. */
static kl_status apply(kl_cfg *c, const char *path, const char *value,
                       int verbatim, const char *origin_text)
{
    if (!c) return kl_fail(KL_EMISUSE, "kl_cfg_set: NULL config");
    if (!cfg_utf8_valid(origin_text, strlen(origin_text)))
        return kl_fail(KL_EINVAL, "%s: not valid UTF-8", origin_text);
    const char *origin = cfg_add_origin(c, origin_text);
    if (!origin) return KL_ENOMEM;
    kl_cfg_node *node = NULL;
    kl_status st = KL_OK;
    const char *v = value + strspn(value, " \t");
    if (verbatim) {
        node = cfg_node_new(KL_CFG_SCALAR, origin, 0, 0);
        if (!node || !(node->text = kl_strdup(value))) st = KL_ENOMEM;
    } else if (!*v) {
        node = cfg_node_new(KL_CFG_NULL, origin, 0, 0);
        if (!node) st = KL_ENOMEM;
    } else {
        st = cfg_parse_tree(value, strlen(value), origin, origin, &node);
        if (st == KL_EFORMAT) st = KL_EINVAL; /* a bad argument, not a bad file */
        if (!st) cfg_mark_origin(node, origin);
    }
    if (!st) {
        st = put(c, path, node, origin);
        node = NULL;
    }
    cfg_node_free(node);
    if (st) kl_free(c->origins[--c->n_origins]); /* nothing points at it */
    return st;
}

kl_status kl_cfg_set(kl_cfg *c, const char *assignment)
{
    const char *eq = assignment ? strchr(assignment, '=') : NULL;
    if (!eq || eq == assignment)
        return kl_fail(KL_EINVAL, "--set %s: expected path=value, e.g. train.batch=64",
                       assignment ? assignment : "(null)");
    size_t plen = (size_t)(eq - assignment);
    char *path = kl_malloc(plen + 1), *origin = kl_malloc(strlen(assignment) + 7);
    kl_status st = KL_ENOMEM;
    if (path && origin) {
        memcpy(path, assignment, plen);
        path[plen] = 0;
        sprintf(origin, "--set %s", assignment);
        st = apply(c, path, eq + 1, 0, origin);
    }
    kl_free(path);
    kl_free(origin);
    return st;
}

kl_status kl_cfg_set_scalar_from(kl_cfg *c, const char *dotted_path,
                                 const char *value, const char *origin)
{
    if (!dotted_path || !value)
        return kl_fail(KL_EMISUSE, "kl_cfg_set_scalar: NULL path or value");
    if (origin) return apply(c, dotted_path, value, 1, origin);
    char *o = kl_malloc(strlen(dotted_path) + strlen(value) + 8);
    if (!o) return KL_ENOMEM;
    sprintf(o, "--set %s=%s", dotted_path, value);
    kl_status st = apply(c, dotted_path, value, 1, o);
    kl_free(o);
    return st;
}

kl_status kl_cfg_set_scalar(kl_cfg *c, const char *dotted_path, const char *value)
{
    return kl_cfg_set_scalar_from(c, dotted_path, value, NULL);
}
