/* kiln's YAML config reader (internal; used by `kiln train` and the model
 * builder).
 *
 * A config is one YAML document read into a tree. Every node remembers where
 * it came from (file, line, column, or the --set override that made it) and
 * its dotted path ("model.layers[2].kernel"), so typed getters and callers'
 * own checks report errors like
 *
 *   cnn.yaml:14:9: model.layers[2].kernel: expected an integer, got "3x3"
 *   cnn.yaml:21:9: train: unknown key 'epoch' (expected one of: epochs,
 *       steps, batch, seed); did you mean 'epochs'?
 *   cnn.yaml:7:3: optim: missing required key 'kind'
 *   --set train.batch=abc: train.batch: expected an integer, got "abc"
 *
 * Usage:
 *   kl_cfg *cfg;
 *   KL_TRY(kl_cfg_load("cnn.yaml", &cfg));
 *   KL_TRY(kl_cfg_set(cfg, "train.batch=64"));            // --set
 *   kl_cfg_node *train;
 *   static const char *const keys[] = {"epochs", "batch", "seed", NULL};
 *   int64_t epochs, batch;
 *   if (kl_cfg_get_map(kl_cfg_root(cfg), "train", 1, &train) ||
 *       kl_cfg_check_keys(train, keys) ||
 *       kl_cfg_int(train, "epochs", 1, 0, &epochs) ||
 *       kl_cfg_int_range(train, "batch", 0, 32, 1, 1 << 20, &batch)) {
 *       fprintf(stderr, "kiln: %s\n", kl_last_error());
 *   }
 *   kl_cfg_free(cfg);
 *
 * YAML subset and choices:
 *  - exactly one document; anything else is an error. Any node may be the
 *    root (kl_cfg_new_empty gives a map).
 *  - scalars keep their text; typed getters interpret it on demand (quoted
 *    "3" reads as an integer too). A plain empty, ~, null, Null or NULL
 *    scalar is a KL_CFG_NULL node; a quoted one is a string.
 *  - aliases (*name) are refused with their location; anchors (&name) and
 *    tags (!!str) are accepted and ignored.
 *  - map keys must be scalars; duplicate keys are an error naming both lines.
 *  - nesting deeper than KL_CFG_MAX_DEPTH and NUL characters are refused.
 *  - keys containing '.' or '[' can be read with kl_cfg_get but not through
 *    dotted paths.
 * Getters treat a NULL map pointer or a null node (e.g. "clip:" with nothing
 * after it) as an empty map, and a key whose value is null as absent.
 * Trees are not thread-safe (paths are computed lazily and cached).
 */
#ifndef KL_IO_CONFIG_H
#define KL_IO_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include "kiln/status.h"

#define KL_CFG_MAX_DEPTH 64

typedef struct kl_cfg kl_cfg;           /* a document; owns all nodes */
typedef struct kl_cfg_node kl_cfg_node; /* borrowed from its kl_cfg */

typedef enum kl_cfg_kind {
    KL_CFG_MAP,
    KL_CFG_SEQ,
    KL_CFG_SCALAR,
    KL_CFG_NULL
} kl_cfg_kind;

/* ---- documents ---------------------------------------------------------- */

/* Reads and parses a YAML file; messages name the file as `path`.
 * *out is NULL on failure: KL_EIO (cannot read), KL_EFORMAT
 * ("path:line:col: <libyaml problem>", duplicate keys, aliases ...), KL_ENOMEM. */
kl_status kl_cfg_load(const char *path, kl_cfg **out);

/* Parses n bytes of YAML text (need not be NUL-terminated); `name` is used in
 * messages (copied). Same failures as kl_cfg_load, without KL_EIO. */
kl_status kl_cfg_parse(const char *text, size_t n, const char *name,
                       kl_cfg **out);

/* A document whose root is an empty map, for building configs from flags. */
kl_status kl_cfg_new_empty(const char *name, kl_cfg **out);

/* Frees the document and all its nodes; NULL is a no-op. */
void kl_cfg_free(kl_cfg *c);

/* The root node (never NULL for a document). Borrowed from c. */
kl_cfg_node *kl_cfg_root(const kl_cfg *c);

/* The name messages use for c (the file path given to load/parse). */
const char *kl_cfg_name(const kl_cfg *c);

/* ---- nodes -------------------------------------------------------------- */

kl_cfg_kind kl_cfg_kind_of(const kl_cfg_node *n);
/* "a map", "a list", "a scalar" or "null": for messages. */
const char *kl_cfg_kind_name(kl_cfg_kind k);
/* 1-based line and column in the file; 0 for nodes made by --set. */
int kl_cfg_line(const kl_cfg_node *n);
int kl_cfg_col(const kl_cfg_node *n);
/* The file name, or "--set a.b=1" for nodes made by an override. Borrowed. */
const char *kl_cfg_origin(const kl_cfg_node *n);
/* Dotted path from the root: "" for the root, "model.layers[2].kernel".
 * Borrowed, cached in the node; "?" if it could not be allocated. */
const char *kl_cfg_path(const kl_cfg_node *n);

/* The value of `key` in a map; NULL if absent or if map is not a map. */
kl_cfg_node *kl_cfg_get(const kl_cfg_node *map, const char *key);
/* Follows a dotted path such as "train.batch" or "model.layers[2].kernel"
 * ("" is node itself); NULL when any step is absent or the path is malformed. */
kl_cfg_node *kl_cfg_at(const kl_cfg_node *node, const char *dotted_path);

/* Items of a sequence: count (0 if not a sequence) and item i (NULL if out of
 * range). */
int kl_cfg_len(const kl_cfg_node *seq);
kl_cfg_node *kl_cfg_item(const kl_cfg_node *seq, int i);

/* Entries of a map in file order: count (0 if not a map), key i and value i
 * (NULL if out of range). */
int kl_cfg_map_len(const kl_cfg_node *map);
const char *kl_cfg_map_key(const kl_cfg_node *map, int i);
kl_cfg_node *kl_cfg_map_value(const kl_cfg_node *map, int i);

/* A scalar's text; NULL for maps, sequences and null nodes. Borrowed. */
const char *kl_cfg_str_value(const kl_cfg_node *scalar);

/* Structural equality: same kinds, scalar texts, keys and key order
 * (locations and quoting are ignored). */
int kl_cfg_equal(const kl_cfg_node *a, const kl_cfg_node *b);

/* ---- typed getters -------------------------------------------------------
 * On a map key; when the key is absent (or null) *out = def, unless required
 * is nonzero, in which case "missing required key 'k'" (KL_EINVAL). A value
 * of the wrong form is KL_EINVAL with "file:line:col: path: expected ..". */

kl_status kl_cfg_int(const kl_cfg_node *map, const char *key, int required,
                     int64_t def, int64_t *out);
/* As kl_cfg_int, also checking lo <= value <= hi (def is not checked). */
kl_status kl_cfg_int_range(const kl_cfg_node *map, const char *key,
                           int required, int64_t def, int64_t lo, int64_t hi,
                           int64_t *out);
/* Accepts 1e-3, 0.001, 1, -2.5e+3; refuses nan/inf (and .inf, .nan). */
kl_status kl_cfg_float(const kl_cfg_node *map, const char *key, int required,
                       double def, double *out);
/* true/false, yes/no, on/off (any case); *out is 0 or 1. */
kl_status kl_cfg_bool(const kl_cfg_node *map, const char *key, int required,
                      int def, int *out);
/* A scalar's text (borrowed from the tree; def is returned as given). */
kl_status kl_cfg_string(const kl_cfg_node *map, const char *key, int required,
                        const char *def, const char **out);
/* One of a NULL-terminated list of names; *out is its index (def when
 * absent). Errors: "expected one of: sgd, adam, adamw; got "adma" (did you
 * mean 'adam'?)". */
kl_status kl_cfg_enum(const kl_cfg_node *map, const char *key, int required,
                      const char *const *choices, int def, int *out);
/* A list of integers, or one integer scalar read as a list of one ("kernel:
 * 3" or "kernel: [3, 3]"). 1 to maxn items ([] is refused); *n = 0 when
 * absent. */
kl_status kl_cfg_int_list(const kl_cfg_node *map, const char *key,
                          int required, int maxn, int64_t *out, int *n);
/* As kl_cfg_int_list for finite floats ("betas: [0.9, 0.999]"). */
kl_status kl_cfg_float_list(const kl_cfg_node *map, const char *key,
                            int required, int maxn, double *out, int *n);
/* A sub-map (*out NULL when absent or null and not required); "expected a
 * map, got a list" otherwise. */
kl_status kl_cfg_get_map(const kl_cfg_node *map, const char *key,
                         int required, kl_cfg_node **out);
/* A sequence (*out NULL when absent or null and not required). */
kl_status kl_cfg_get_seq(const kl_cfg_node *map, const char *key,
                         int required, kl_cfg_node **out);

/* Fails on the first key of map not in the NULL-terminated allowed list:
 * "file:line:col: train: unknown key 'epoch' (expected one of: epochs, ...);
 * did you mean 'epochs'?" (the suggestion only when the name is close). The
 * location is the unknown key's. A null node or NULL map passes. */
kl_status kl_cfg_check_keys(const kl_cfg_node *map,
                            const char *const *allowed);

/* Sets a message "file:line:col: path: <fmt...>" located at n and returns s,
 * for callers' semantic errors. n NULL gives just the message. */
kl_status kl_cfg_fail(const kl_cfg_node *n, kl_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- overrides ------------------------------------------------------------ */

/* Applies "path=value" (e.g. "train.batch=64", "optim.lr=3e-4",
 * "model.layers[1].out=128", "model.input=[3,32,32]"). The value is parsed as
 * YAML (so flow lists/maps work; blank is null). Missing map keys are
 * created, sequence items are not. New nodes' origin is "--set <assignment>"
 * for later messages. Errors (KL_EINVAL) name the assignment and the failing
 * step, e.g. "--set model.layers[9].x=1: model.layers: index 9 out of range
 * (the list has 3 items)". On failure the tree is unchanged. */
kl_status kl_cfg_set(kl_cfg *c, const char *assignment);

/* Sets path to a string scalar holding `value` verbatim (no YAML parsing);
 * for the CLI's --epochs etc. Origin is "--set path=value". */
kl_status kl_cfg_set_scalar(kl_cfg *c, const char *dotted_path,
                            const char *value);
/* As kl_cfg_set_scalar with the origin text messages should show, e.g.
 * "--epochs 5" (copied). */
kl_status kl_cfg_set_scalar_from(kl_cfg *c, const char *dotted_path,
                                 const char *value, const char *origin);

/* ---- writing -------------------------------------------------------------- */

/* Writes the tree as YAML (libyaml's emitter) to path; reading it back gives
 * a kl_cfg_equal tree. KL_EIO with the path and errno text on failure. */
kl_status kl_cfg_write(const kl_cfg *c, const char *path);

/* The tree as YAML text, NUL-terminated; caller frees *out with free(). */
kl_status kl_cfg_to_string(const kl_cfg *c, char **out);

/* v as the shortest %g text (6 to 17 digits) that reads back as v, as a
 * user would write it: 0.1, not %.17g's 0.10000000000000001. Returns buf. */
char *kl_cfg_fmt_double(char *buf, size_t n, double v);

/* A scalar's text as messages show it: a finite float (written back with
 * %.17g) in its kl_cfg_fmt_double form in buf, any other text (integers,
 * words) as it is. Returns buf or text. */
const char *kl_cfg_shown(const char *text, char *buf, size_t n);

#endif
