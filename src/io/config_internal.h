/* Shared internals of the config reader (config*.c only). */
#ifndef KL_IO_CONFIG_INTERNAL_H
#define KL_IO_CONFIG_INTERNAL_H

#include <stdarg.h>
#include "io/config.h"

typedef struct kl_cfg_entry {
    char *key;          /* owned, NUL-terminated */
    const char *origin; /* where the key was written */
    int line, col;
    kl_cfg_node *value; /* owned */
} kl_cfg_entry;

struct kl_cfg_node {
    kl_cfg_kind kind;
    unsigned char flow;   /* written in flow style: {..} / [..] */
    unsigned char quoted; /* scalar was quoted (written quoted again) */
    int line, col;        /* 1-based; 0 when made by an override */
    const char *origin;   /* file name or "--set ..." (owned by the kl_cfg) */
    kl_cfg_node *parent;
    const char *key;      /* key in the parent map (the entry's string) */
    int index;            /* index in the parent sequence */
    char *path;           /* built on first kl_cfg_path */
    char *text;           /* scalars: owned text; NULL otherwise */
    int n, cap;
    kl_cfg_entry *entries; /* maps */
    kl_cfg_node **items;   /* sequences */
};

struct kl_cfg {
    char *name;
    kl_cfg_node *root;
    char **origins; /* override texts nodes point at */
    int n_origins, cap_origins;
};

/* Tree building (config.c). */
kl_cfg_node *cfg_node_new(kl_cfg_kind kind, const char *origin, int line,
                          int col);
void cfg_node_free(kl_cfg_node *n);
/* Appends key (ownership taken, also on failure) -> value (taken on success). */
kl_status cfg_map_add(kl_cfg_node *map, char *key, const char *origin,
                      int line, int col, kl_cfg_node *value);
kl_status cfg_seq_add(kl_cfg_node *seq, kl_cfg_node *item);
int cfg_depth(const kl_cfg_node *n);
/* Sets origin/line 0 on a whole subtree (nodes made by an override). */
void cfg_mark_origin(kl_cfg_node *n, const char *origin);
/* Copies s into c's origin pool; NULL on ENOMEM. */
const char *cfg_add_origin(kl_cfg *c, const char *s);
/* Writes n's dotted path into buf (truncated with "..."). */
void cfg_path_into(const kl_cfg_node *n, char *buf, size_t cap);
/* 1 if s is a plain-scalar spelling of null: "", ~, null, Null, NULL. */
int cfg_is_null_word(const char *s);
int cfg_utf8_valid(const char *s, size_t n);

/* Path steps: "a.b[2].c". Returns 1 with a step, 0 at the end, -1 if
 * malformed. A key step sets *key and *klen, an index step sets *index >= 0. */
int cfg_path_step(const char **s, int first, const char **key, size_t *klen,
                  long *index);

/* Parsing (config_parse.c): text as a document whose nodes point at origin
 * (must outlive the tree) and whose messages say `name`. */
kl_status cfg_parse_tree(const char *text, size_t n, const char *name,
                         const char *origin, kl_cfg_node **root);

/* Messages (config_get.c): "origin:line:col: path: msg" where line/col/origin
 * are given and the path is path_node's. */
kl_status cfg_fail_loc(const char *origin, int line, int col,
                       const kl_cfg_node *path_node, kl_status s,
                       const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
kl_status cfg_vfail_loc(const char *origin, int line, int col,
                        const kl_cfg_node *path_node, kl_status s,
                        const char *fmt, va_list ap);
/* Writes text as "..." with escapes, truncated, into buf. */
void cfg_quote(const char *text, char *buf, size_t cap);

#endif
