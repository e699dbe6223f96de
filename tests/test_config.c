/* YAML config reader: reading values, located error messages, syntax errors.
 * (Overrides, writing and allocation failures: test_config_set.c.) */
#include "io/config.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "testutil.h"

static const char CNN[] =
    "name: cnn\n"                                                  /* 1 */
    "model:\n"                                                     /* 2 */
    "  input: [1, 28, 28]\n"                                       /* 3 */
    "  layers:\n"                                                  /* 4 */
    "    - {type: conv2d, out: 32, kernel: 3, padding: 1}\n"       /* 5 */
    "    - {type: relu}\n"                                         /* 6 */
    "    - {type: maxpool2d, kernel: 2}\n"                         /* 7 */
    "    - type: conv2d\n"                                         /* 8 */
    "      out: 64\n"                                              /* 9 */
    "      kernel: 3\n"                                            /* 10 */
    "      padding: 1\n"                                           /* 11 */
    "    - {type: relu}\n"                                         /* 12 */
    "    - {type: maxpool2d, kernel: 2}\n"                         /* 13 */
    "    - {type: flatten}\n"                                      /* 14 */
    "    - {type: linear, out: 128}\n"                             /* 15 */
    "    - {type: relu}\n"                                         /* 16 */
    "    - {type: linear, out: 10}\n"                              /* 17 */
    "data: {kind: fashion_mnist, normalize: true, val_split: 5000, shuffle: true}\n"
    "optim: {kind: adam, lr: 1.0e-3, betas: [0.9, 0.999], eps: 1.0e-8, weight_decay: 0}\n"
    "schedule: {kind: constant, warmup_steps: 0}\n"                /* 20 */
    "clip: {max_norm: 0}\n"                                        /* 21 */
    "train: {epochs: 5, batch: 128, seed: 1, log_every: 50, eval_every_epoch: true, "
    "checkpoint_every_epoch: true}\n";                             /* 22 */

static char g_dir[64];

static kl_cfg *parse(const char *text)
{
    kl_cfg *c = NULL;
    CHECK_OK(kl_cfg_parse(text, strlen(text), "cnn.yaml", &c));
    return c;
}

/* Parsing must fail with status st and a message containing msg. */
static void parse_err(const char *text, kl_status st, const char *msg)
{
    kl_cfg *c = (kl_cfg *)1;
    CHECK_ERR(kl_cfg_parse(text, strlen(text), "cnn.yaml", &c), st, msg);
    CHECK(c == NULL);
}

static void test_reference_config(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/cnn.yaml", g_dir);
    FILE *f = fopen(path, "w");
    CHECK(f && fputs(CNN, f) >= 0 && fclose(f) == 0);
    kl_cfg *c;
    CHECK_OK(kl_cfg_load(path, &c));
    if (!c) return;
    kl_cfg_node *root = kl_cfg_root(c);
    CHECK(kl_cfg_kind_of(root) == KL_CFG_MAP && kl_cfg_map_len(root) == 7);
    CHECK(!strcmp(kl_cfg_map_key(root, 6), "train"));
    CHECK(!strcmp(kl_cfg_origin(root), path));

    const char *name;
    CHECK_OK(kl_cfg_string(root, "name", 1, NULL, &name));
    CHECK(name && !strcmp(name, "cnn"));
    int64_t dims[8];
    int nd;
    kl_cfg_node *model = kl_cfg_get(root, "model");
    CHECK_OK(kl_cfg_int_list(model, "input", 1, 8, dims, &nd));
    CHECK(nd == 3 && dims[0] == 1 && dims[1] == 28 && dims[2] == 28);

    kl_cfg_node *layers;
    CHECK_OK(kl_cfg_get_seq(model, "layers", 1, &layers));
    CHECK(kl_cfg_len(layers) == 10);
    kl_cfg_node *l3 = kl_cfg_item(layers, 3);
    CHECK(l3 == kl_cfg_at(root, "model.layers[3]"));
    CHECK(kl_cfg_line(l3) == 8 && kl_cfg_col(l3) == 7);
    CHECK(!strcmp(kl_cfg_path(l3), "model.layers[3]"));
    kl_cfg_node *k = kl_cfg_at(root, "model.layers[3].kernel");
    CHECK(k && kl_cfg_line(k) == 10 && kl_cfg_col(k) == 15);
    CHECK(!strcmp(kl_cfg_path(k), "model.layers[3].kernel"));
    CHECK(!strcmp(kl_cfg_str_value(k), "3"));
    CHECK_OK(kl_cfg_int_list(l3, "kernel", 1, 2, dims, &nd)); /* scalar -> 1 */
    CHECK(nd == 1 && dims[0] == 3);
    CHECK(kl_cfg_at(root, "model.layers[10]") == NULL);
    CHECK(kl_cfg_at(root, "model.layers.x") == NULL);
    CHECK(kl_cfg_at(root, "model..layers") == NULL);
    CHECK(kl_cfg_at(root, "model.layers[x]") == NULL);
    CHECK(kl_cfg_at(root, "") == root);

    static const char *const kinds[] = {"sgd", "adam", "adamw", NULL};
    kl_cfg_node *optim = kl_cfg_get(root, "optim");
    int kind = -1;
    double lr, eps, wd, betas[2];
    CHECK_OK(kl_cfg_enum(optim, "kind", 1, kinds, 0, &kind));
    CHECK(kind == 1);
    CHECK_OK(kl_cfg_float(optim, "lr", 1, 0, &lr));
    CHECK_OK(kl_cfg_float(optim, "eps", 1, 0, &eps));
    CHECK_OK(kl_cfg_float(optim, "weight_decay", 1, 7, &wd));
    CHECK(lr == 1e-3 && eps == 1e-8 && wd == 0);
    CHECK_OK(kl_cfg_float_list(optim, "betas", 1, 2, betas, &nd));
    CHECK(nd == 2 && betas[0] == 0.9 && betas[1] == 0.999);

    kl_cfg_node *train = kl_cfg_get(root, "train");
    static const char *const tkeys[] = {"epochs", "steps", "batch", "seed", "log_every",
                                        "eval_every_epoch", "checkpoint_every_epoch", NULL};
    CHECK_OK(kl_cfg_check_keys(train, tkeys));
    int64_t epochs, batch, steps;
    int eval, shuffle;
    CHECK_OK(kl_cfg_int(train, "epochs", 1, 0, &epochs));
    CHECK_OK(kl_cfg_int_range(train, "batch", 1, 0, 1, 1 << 20, &batch));
    CHECK_OK(kl_cfg_int(train, "steps", 0, -17, &steps)); /* absent: default */
    CHECK(epochs == 5 && batch == 128 && steps == -17);
    CHECK_OK(kl_cfg_bool(train, "eval_every_epoch", 1, 0, &eval));
    CHECK_OK(kl_cfg_bool(kl_cfg_get(root, "data"), "shuffle", 1, 0, &shuffle));
    CHECK(eval == 1 && shuffle == 1);
    /* A missing section reads as empty: defaults apply. */
    double mn = -1;
    CHECK_OK(kl_cfg_float(kl_cfg_get(root, "nothing"), "max_norm", 0, 2.5, &mn));
    CHECK(mn == 2.5);
    kl_cfg_free(c);
    unlink(path);
}

/* Random values written as YAML read back exactly. */
static void test_random_values(void)
{
    srand(0x5eed1);
    for (int iter = 0; iter < 40; iter++) {
        int64_t iv = (int64_t)(((uint64_t)rand() << 33) ^ ((uint64_t)rand() << 9) ^ (uint64_t)rand());
        if (iter & 1) iv = -iv;
        if (iter == 0) iv = INT64_MAX;
        if (iter == 1) iv = INT64_MIN;
        double fv = (rand() - RAND_MAX / 2.0) * pow(10, rand() % 40 - 20);
        int bv = rand() & 1;
        char text[256];
        snprintf(text, sizeof text, "t:\n  i: %" PRId64 "\n  f: %.17g\n  b: %s\n  l: [%" PRId64 ", %d]\n",
                 iv, fv, bv ? "yes" : "Off", iv, iter);
        kl_cfg *c = parse(text);
        if (!c) continue;
        kl_cfg_node *t = kl_cfg_at(kl_cfg_root(c), "t");
        int64_t i = 0, l[2] = {0};
        double f = 0;
        int b = -1, n = 0;
        CHECK_OK(kl_cfg_int(t, "i", 1, 0, &i));
        CHECK_OK(kl_cfg_float(t, "f", 1, 0, &f));
        CHECK_OK(kl_cfg_bool(t, "b", 1, 0, &b));
        CHECK_OK(kl_cfg_int_list(t, "l", 1, 2, l, &n));
        CHECK(i == iv && f == fv && b == bv && n == 2 && l[0] == iv && l[1] == iter);
        kl_cfg_free(c);
    }
}

static void test_value_errors(void)
{
    kl_cfg *c = parse("model:\n"
                      "  layers:\n"
                      "    - {type: conv2d, kernel: 3}\n"
                      "    - {type: relu}\n"
                      "    - type: conv2d\n"
                      "      kernel: 3x3\n"
                      "train:\n"
                      "  epoch: 5\n"
                      "  batch: 128\n"
                      "optim:\n"
                      "  lr: 0.1\n"
                      "sched: {warmup: 3}\n");
    if (!c) return;
    kl_cfg_node *root = kl_cfg_root(c);
    int64_t v = 99, list[4];
    int n = 9;
    const char *bad_kernel =
        "cnn.yaml:6:15: model.layers[2].kernel: expected an integer, got \"3x3\"";
    CHECK_ERR(kl_cfg_int(kl_cfg_at(root, "model.layers[2]"), "kernel", 1, 0, &v),
              KL_EINVAL, bad_kernel);
    CHECK(!strcmp(kl_last_error(), bad_kernel));
    CHECK_ERR(kl_cfg_int_list(kl_cfg_at(root, "model.layers[2]"), "kernel", 1, 2, list, &n),
              KL_EINVAL, bad_kernel);

    static const char *const tkeys[] = {"epochs", "steps", "batch", "seed", NULL};
    const char *unknown = "cnn.yaml:8:3: train: unknown key 'epoch' (expected one of: "
                          "epochs, steps, batch, seed); did you mean 'epochs'?";
    CHECK_ERR(kl_cfg_check_keys(kl_cfg_get(root, "train"), tkeys), KL_EINVAL, unknown);
    CHECK(!strcmp(kl_last_error(), unknown));
    static const char *const far[] = {"alpha", "gamma", NULL};
    CHECK_ERR(kl_cfg_check_keys(kl_cfg_get(root, "train"), far), KL_EINVAL,
              "cnn.yaml:8:3: train: unknown key 'epoch' (expected one of: alpha, gamma)");
    CHECK(!strstr(kl_last_error(), "did you mean"));
    static const char *const rkeys[] = {"model", "train", "optim", "schedule", NULL};
    CHECK_ERR(kl_cfg_check_keys(root, rkeys), KL_EINVAL,
              "cnn.yaml:12:1: unknown key 'sched' (expected one of: model, train, optim, "
              "schedule)"); /* top level: no path */

    static const char *const kinds[] = {"sgd", "adam", "adamw", NULL};
    int k = 5;
    const char *missing = "cnn.yaml:11:3: optim: missing required key 'kind'";
    CHECK_ERR(kl_cfg_enum(kl_cfg_get(root, "optim"), "kind", 1, kinds, 0, &k), KL_EINVAL,
              missing);
    CHECK(!strcmp(kl_last_error(), missing));
    CHECK_OK(kl_cfg_enum(kl_cfg_get(root, "optim"), "kind", 0, kinds, 2, &k));
    CHECK(k == 2);
    CHECK_ERR(kl_cfg_int(kl_cfg_get(root, "sched"), "steps", 1, 0, &v), KL_EINVAL,
              "cnn.yaml:12:8: sched: missing required key 'steps'");
    CHECK_ERR(kl_cfg_int(NULL, "steps", 1, 0, &v), KL_EINVAL, "missing required key 'steps'");

    /* Callers' semantic errors, located at a node. */
    CHECK_ERR(kl_cfg_fail(kl_cfg_at(root, "model.layers[1]"), KL_EINVAL,
                          "linear: in_features %d does not match inferred input %d", 3136, 1568),
              KL_EINVAL,
              "cnn.yaml:4:7: model.layers[1]: linear: in_features 3136 does not match "
              "inferred input 1568");
    CHECK_ERR(kl_cfg_fail(root, KL_EFORMAT, "bad %s", "root"), KL_EFORMAT,
              "cnn.yaml:1:1: bad root");
    kl_cfg_free(c);

    c = parse("a:\n"                          /* 1 */
              "  lr: fast\n"                  /* 2 */
              "  nan: .nan\n"                 /* 3 */
              "  inf: -.Inf\n"                /* 4 */
              "  big: 1e999\n"                /* 5 */
              "  huge: 99999999999999999999\n" /* 6 */
              "  frac: 1.5\n"                 /* 7 */
              "  flag: maybe\n"               /* 8 */
              "  kind: adma\n"                /* 9 */
              "  list: [1, x, 3]\n"           /* 10 */
              "  many: [1, 2, 3]\n"           /* 11 */
              "  sub: {x: 1}\n"               /* 12 */
              "  empty:\n"                    /* 13 */
              "  batch: 0\n"                  /* 14 */
              "  quoted: \"12\"\n"            /* 15 */
              "  nul: ~\n"                    /* 16 */
              "  hexf: 0x1p4\n"               /* 17 */
              "  sp: \" 5\"\n"                /* 18 */
              "  kind2: 7\n"                  /* 19 */
              "  lst: [1, 2]\n"               /* 20 */
              "  word: NaN\n"                 /* 21 */
              "  none: []\n");                /* 22 */
    if (!c) return;
    kl_cfg_node *a = kl_cfg_get(kl_cfg_root(c), "a");
    double d = 4.25;
    int b = 3;
    const char *s = "def";
    kl_cfg_node *node = NULL;
    CHECK_ERR(kl_cfg_float(a, "lr", 1, 0, &d), KL_EINVAL,
              "cnn.yaml:2:7: a.lr: expected a number, got \"fast\"");
    CHECK_ERR(kl_cfg_float(a, "nan", 1, 0, &d), KL_EINVAL,
              "cnn.yaml:3:8: a.nan: expected a finite number, got \".nan\"");
    CHECK_ERR(kl_cfg_float(a, "inf", 1, 0, &d), KL_EINVAL,
              "a.inf: expected a finite number, got \"-.Inf\"");
    CHECK_ERR(kl_cfg_float(a, "word", 1, 0, &d), KL_EINVAL,
              "cnn.yaml:21:9: a.word: expected a finite number, got \"NaN\"");
    CHECK_ERR(kl_cfg_float(a, "big", 1, 0, &d), KL_EINVAL,
              "cnn.yaml:5:8: a.big: expected a finite number, got \"1e999\" (out of range)");
    CHECK_ERR(kl_cfg_int(a, "huge", 1, 0, &v), KL_EINVAL,
              "cnn.yaml:6:9: a.huge: expected an integer, got \"99999999999999999999\" "
              "(out of range)");
    CHECK_ERR(kl_cfg_int(a, "frac", 1, 0, &v), KL_EINVAL,
              "cnn.yaml:7:9: a.frac: expected an integer, got \"1.5\"");
    CHECK_ERR(kl_cfg_int(a, "sp", 1, 0, &v), KL_EINVAL,
              "cnn.yaml:18:7: a.sp: expected an integer, got \" 5\"");
    CHECK_ERR(kl_cfg_bool(a, "flag", 1, 0, &b), KL_EINVAL,
              "cnn.yaml:8:9: a.flag: expected a boolean (true/false, yes/no, on/off), got "
              "\"maybe\"");
    CHECK_ERR(kl_cfg_enum(a, "kind", 1, kinds, 0, &k), KL_EINVAL,
              "cnn.yaml:9:9: a.kind: expected one of: sgd, adam, adamw; got \"adma\" (did you "
              "mean 'adam'?)");
    CHECK_ERR(kl_cfg_enum(a, "kind2", 1, kinds, 0, &k), KL_EINVAL,
              "a.kind2: expected one of: sgd, adam, adamw; got \"7\"");
    CHECK(!strstr(kl_last_error(), "did you mean"));
    CHECK_ERR(kl_cfg_int_list(a, "list", 1, 4, list, &n), KL_EINVAL,
              "cnn.yaml:10:13: a.list[1]: expected an integer, got \"x\"");
    CHECK_ERR(kl_cfg_int_list(a, "many", 1, 2, list, &n), KL_EINVAL,
              "cnn.yaml:11:9: a.many: expected at most 2 integers, got 3");
    /* [] is refused, not read as absent (kernel: [] would become the default) */
    CHECK_ERR(kl_cfg_int_list(a, "none", 0, 2, list, &n), KL_EINVAL,
              "cnn.yaml:22:9: a.none: expected at least 1 integer, got an empty list");
    double fl[2];
    CHECK_ERR(kl_cfg_float_list(a, "none", 0, 2, fl, &n), KL_EINVAL,
              "a.none: expected at least 1 number, got an empty list");
    CHECK_ERR(kl_cfg_int_list(a, "sub", 1, 2, list, &n), KL_EINVAL,
              "cnn.yaml:12:8: a.sub: expected a list of integers, got a map");
    CHECK_ERR(kl_cfg_string(a, "sub", 1, NULL, &s), KL_EINVAL,
              "cnn.yaml:12:8: a.sub: expected a string, got a map");
    CHECK_ERR(kl_cfg_int(a, "sub", 0, 0, &v), KL_EINVAL, "a.sub: expected an integer, got a map");
    CHECK_ERR(kl_cfg_get_map(a, "lst", 1, &node), KL_EINVAL,
              "cnn.yaml:20:8: a.lst: expected a map, got a list");
    CHECK(node == NULL);
    CHECK_ERR(kl_cfg_get_seq(a, "sub", 0, &node), KL_EINVAL, "a.sub: expected a list, got a map");
    CHECK_ERR(kl_cfg_int(a, "empty", 1, 0, &v), KL_EINVAL, "a.empty: expected an integer, got null");
    CHECK_ERR(kl_cfg_int_range(a, "batch", 1, 32, 1, 65536, &v), KL_EINVAL,
              "cnn.yaml:14:10: a.batch: expected an integer in [1, 65536], got 0");
    CHECK_ERR(kl_cfg_int(kl_cfg_get(a, "lr"), "x", 0, 0, &v), KL_EINVAL,
              "cnn.yaml:2:7: a.lr: expected a map (with key 'x'), got \"fast\"");
    CHECK_ERR(kl_cfg_check_keys(kl_cfg_get(a, "lst"), tkeys), KL_EINVAL,
              "a.lst: expected a map, got a list");

    /* Null values count as absent; quoted numbers read as numbers. */
    v = 0;
    CHECK_OK(kl_cfg_int(a, "empty", 0, 41, &v));
    CHECK(v == 41);
    CHECK_OK(kl_cfg_string(a, "nul", 0, "dflt", &s));
    CHECK(!strcmp(s, "dflt"));
    CHECK(kl_cfg_kind_of(kl_cfg_get(a, "nul")) == KL_CFG_NULL);
    CHECK(kl_cfg_str_value(kl_cfg_get(a, "nul")) == NULL);
    CHECK_OK(kl_cfg_get_map(a, "empty", 0, &node));
    CHECK(node == NULL);
    CHECK_OK(kl_cfg_check_keys(kl_cfg_get(a, "empty"), tkeys));
    CHECK_OK(kl_cfg_int(a, "quoted", 1, 0, &v));
    CHECK(v == 12);
    CHECK_OK(kl_cfg_float(a, "hexf", 1, 0, &d));
    CHECK(d == 16.0);
    CHECK_OK(kl_cfg_float(a, "batch", 1, 1, &d));
    CHECK(d == 0.0);
    CHECK_OK(kl_cfg_int_range(a, "quoted", 1, 0, 12, 12, &v));
    kl_cfg_free(c);
}

static void test_syntax_errors(void)
{
    parse_err("a:\n\tb: 1\n", KL_EFORMAT,
              "cnn.yaml:2:1: found character that cannot start any token");
    CHECK(strstr(kl_last_error(), "tabs cannot indent YAML, use spaces") != NULL);
    parse_err("a: [1, 2\nb: 3\n", KL_EFORMAT,
              "cnn.yaml:2:2: did not find expected ',' or ']' (while parsing a flow sequence at 1:4)");
    parse_err("a: 1\n b: 2\n", KL_EFORMAT,
              "cnn.yaml:2:3: mapping values are not allowed in this context");
    parse_err("a: \"open\n", KL_EFORMAT,
              "cnn.yaml:2:1: found unexpected end of stream (while scanning a quoted scalar at 1:4)");
    parse_err("a: &x 1\nb: *x\n", KL_EFORMAT,
              "cnn.yaml:2:4: YAML aliases (*x) are not supported; write the value out");
    parse_err("train:\n  batch: 1\n  seed: 2\n  batch: 3\n", KL_EFORMAT,
              "cnn.yaml:4:3: train: duplicate key 'batch' (first defined on line 2)");
    parse_err("a: 1\n---\nb: 2\n", KL_EFORMAT,
              "cnn.yaml:2:1: a second YAML document starts here; a config must be exactly one document");
    parse_err("", KL_EFORMAT, "cnn.yaml: no YAML document");
    parse_err("# only a comment\n", KL_EFORMAT, "cnn.yaml: no YAML document");
    parse_err("a: 1\nb: \"x\\0y\"\n", KL_EFORMAT,
              "cnn.yaml:2:4: NUL characters in text are not supported");
    parse_err("a: 1\nb: caf\xc3\xa9\xff\n", KL_EFORMAT,
              "cnn.yaml:2:8: invalid leading UTF-8 octet (byte 0xff)");
    parse_err("{[1, 2]: x}\n", KL_EFORMAT, "cnn.yaml:1:2: map keys must be plain names, got a list");

    char deep[200];
    memset(deep, '[', 64);
    memset(deep + 64, ']', 64);
    deep[128] = 0;
    kl_cfg *c = parse(deep); /* 64 levels: fine */
    kl_cfg_node *n = kl_cfg_root(c);
    for (int i = 0; i < 63; i++) n = kl_cfg_item(n, 0);
    CHECK(n && kl_cfg_kind_of(n) == KL_CFG_SEQ && kl_cfg_len(n) == 0);
    kl_cfg_free(c);
    memset(deep, '[', 65);
    memset(deep + 65, ']', 65);
    deep[130] = 0;
    parse_err(deep, KL_EFORMAT, "cnn.yaml:1:65: ");
    CHECK(strstr(kl_last_error(), "nesting deeper than 64 levels") != NULL);

    /* Only n bytes are read: the text need not be NUL-terminated. */
    const char *two = "a: 1\nb: [";
    CHECK_OK(kl_cfg_parse(two, 5, "cnn.yaml", &c));
    CHECK(kl_cfg_map_len(kl_cfg_root(c)) == 1);
    kl_cfg_free(c);

    /* A scalar document is fine, but is not a map. */
    c = parse("5\n");
    int64_t v;
    CHECK_ERR(kl_cfg_int(kl_cfg_root(c), "x", 0, 0, &v), KL_EINVAL,
              "cnn.yaml:1:1: expected a map (with key 'x'), got \"5\"");
    kl_cfg_free(c);

    char path[128];
    snprintf(path, sizeof path, "%s/missing.yaml", g_dir);
    c = (kl_cfg *)1;
    CHECK_ERR(kl_cfg_load(path, &c), KL_EIO, "missing.yaml: cannot open: No such file");
    CHECK(c == NULL);
    kl_cfg_free(NULL);
}

/* Values in messages: floats as a user writes them, other text as it is. */
static void test_shown(void)
{
    char b[40];
    static const char *const cases[][2] = {
        {"0.10000000000000001", "0.1"}, {"0.20000000000000001", "0.2"}, {"0.001", "0.001"}, {"300", "300"},
        {"0.33333333333333331", "0.3333333333333333"}, {"1.0000000000000001e-05", "1e-05"},
        {"9223372036854775807", "9223372036854775807"}, {"123456789012345678901", "123456789012345678901"},
        {"true", "true"}, {"text", "text"}, {"1.5x", "1.5x"}, {"nan", "nan"}, {"", ""}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *got = kl_cfg_shown(cases[i][0], b, sizeof b);
        if (strcmp(got, cases[i][1])) fprintf(stderr, "kl_cfg_shown(%s): %s, expected %s\n", cases[i][0], got, cases[i][1]);
        CHECK(!strcmp(got, cases[i][1]));
    }
    CHECK(kl_cfg_shown(NULL, b, sizeof b) == NULL);
    CHECK(!strcmp(kl_cfg_fmt_double(b, sizeof b, 3e-4), "0.0003") && !strcmp(kl_cfg_fmt_double(b, sizeof b, 1e300), "1e+300"));
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/kiln_cfg_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_reference_config();
    test_random_values();
    test_value_errors();
    test_syntax_errors();
    test_shown();
    rmdir(g_dir);
    return kl_test_done("test_config");
}
