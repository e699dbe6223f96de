/* YAML config reader: --set overrides, writing and re-reading, and
 * allocation failures. (Reading and error messages: test_config.c.) */
#include "io/config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "testutil.h"

static const char CNN[] =
    "name: cnn\n"
    "model:\n"
    "  input: [1, 28, 28]\n"
    "  layers:\n"
    "    - {type: conv2d, out: 32, kernel: 3, padding: 1}\n"
    "    - {type: relu}\n"
    "    - {type: maxpool2d, kernel: 2}\n"
    "    - type: conv2d\n"
    "      out: 64\n"
    "      kernel: 3\n"
    "      padding: 1\n"
    "    - {type: relu}\n"
    "    - {type: maxpool2d, kernel: 2}\n"
    "    - {type: flatten}\n"
    "    - {type: linear, out: 128}\n"
    "    - {type: relu}\n"
    "    - {type: linear, out: 10}\n"
    "data: {kind: fashion_mnist, normalize: true, val_split: 5000, shuffle: true}\n"
    "optim: {kind: adam, lr: 1.0e-3, betas: [0.9, 0.999], eps: 1.0e-8, weight_decay: 0}\n"
    "schedule: {kind: constant, warmup_steps: 0}\n"
    "clip: {max_norm: 0}\n"
    "train: {epochs: 5, batch: 128, seed: 1, log_every: 50, eval_every_epoch: true, "
    "checkpoint_every_epoch: true}\n";

static char g_dir[64];

static kl_cfg *parse(const char *text)
{
    kl_cfg *c = NULL;
    CHECK_OK(kl_cfg_parse(text, strlen(text), "cnn.yaml", &c));
    return c;
}

static char *dump(const kl_cfg *c)
{
    char *s = NULL;
    CHECK_OK(kl_cfg_to_string(c, &s));
    return s;
}

/* kl_cfg_set must fail with msg and leave the tree as it was. */
static void set_err(kl_cfg *c, const char *assignment, const char *msg)
{
    char *before = dump(c);
    CHECK_ERR(kl_cfg_set(c, assignment), KL_EINVAL, msg);
    char *after = dump(c);
    CHECK(before && after && !strcmp(before, after));
    free(before);
    free(after);
}

static int64_t get_int(kl_cfg *c, const char *path)
{
    kl_cfg_node *n = kl_cfg_at(kl_cfg_root(c), path);
    const char *s = kl_cfg_str_value(n);
    CHECK(s != NULL);
    return s ? strtoll(s, NULL, 10) : INT64_MIN;
}

static void test_overrides(void)
{
    kl_cfg *c = parse(CNN);
    if (!c) return;
    kl_cfg_node *root = kl_cfg_root(c);
    int64_t v = 0, dims[4];
    int n = 0;
    double d = 0;

    /* Existing key: value and origin are replaced. */
    CHECK_OK(kl_cfg_set(c, "train.batch=64"));
    CHECK_OK(kl_cfg_int(kl_cfg_get(root, "train"), "batch", 1, 0, &v));
    CHECK(v == 64);
    kl_cfg_node *b = kl_cfg_at(root, "train.batch");
    CHECK(!strcmp(kl_cfg_origin(b), "--set train.batch=64") && kl_cfg_line(b) == 0);
    CHECK(!strcmp(kl_cfg_path(b), "train.batch"));
    CHECK_OK(kl_cfg_set(c, "train.batch=abc"));
    const char *bad = "--set train.batch=abc: train.batch: expected an integer, got \"abc\"";
    CHECK_ERR(kl_cfg_int(kl_cfg_get(root, "train"), "batch", 1, 0, &v), KL_EINVAL, bad);
    CHECK(!strcmp(kl_last_error(), bad));
    CHECK_OK(kl_cfg_set(c, "optim.lr=3e-4"));
    CHECK_OK(kl_cfg_float(kl_cfg_get(root, "optim"), "lr", 1, 0, &d));
    CHECK(d == 3e-4);

    /* New keys, including new nested maps. */
    CHECK_OK(kl_cfg_set(c, "train.steps=1000"));
    CHECK(get_int(c, "train.steps") == 1000);
    CHECK(!strcmp(kl_cfg_map_key(kl_cfg_get(root, "train"), 6), "steps"));
    CHECK_OK(kl_cfg_set(c, "optim.schedule.kind=cosine"));
    CHECK(!strcmp(kl_cfg_str_value(kl_cfg_at(root, "optim.schedule.kind")), "cosine"));
    CHECK(!strcmp(kl_cfg_path(kl_cfg_at(root, "optim.schedule.kind")), "optim.schedule.kind"));
    CHECK_OK(kl_cfg_set(c, "train.stepz=3"));
    static const char *const tkeys[] = {"epochs", "steps", "batch", "seed", "log_every",
                                        "eval_every_epoch", "checkpoint_every_epoch", NULL};
    CHECK_ERR(kl_cfg_check_keys(kl_cfg_get(root, "train"), tkeys), KL_EINVAL,
              "--set train.stepz=3: train: unknown key 'stepz' (expected one of: epochs, steps, "
              "batch, seed, log_every, eval_every_epoch, checkpoint_every_epoch); did you mean "
              "'steps'?");
    CHECK_OK(kl_cfg_set(c, "extra.x=1"));
    CHECK_ERR(kl_cfg_int(kl_cfg_get(root, "extra"), "kind", 1, 0, &v), KL_EINVAL,
              "--set extra.x=1: extra: missing required key 'kind'");

    /* Into sequence items: a new key, an existing key, a whole item. */
    CHECK_OK(kl_cfg_set(c, "model.layers[1].out=128"));
    CHECK(get_int(c, "model.layers[1].out") == 128);
    CHECK_OK(kl_cfg_set(c, "model.layers[3].out=96"));
    CHECK(get_int(c, "model.layers[3].out") == 96);
    CHECK_OK(kl_cfg_set(c, "model.layers[0]={type: linear, out: 7}"));
    kl_cfg_node *l0 = kl_cfg_at(root, "model.layers[0].out");
    CHECK(l0 && !strcmp(kl_cfg_path(l0), "model.layers[0].out"));
    CHECK(kl_cfg_map_len(kl_cfg_at(root, "model.layers[0]")) == 2);
    CHECK(kl_cfg_len(kl_cfg_at(root, "model.layers")) == 10);
    CHECK_OK(kl_cfg_set(c, "model.input=[3, 32, 32]"));
    CHECK_OK(kl_cfg_int_list(kl_cfg_get(root, "model"), "input", 1, 4, dims, &n));
    CHECK(n == 3 && dims[0] == 3 && dims[1] == 32 && dims[2] == 32);
    CHECK_OK(kl_cfg_set(c, "model.input[0]=1"));
    CHECK(get_int(c, "model.input[0]") == 1);

    /* Blank is null; a null node becomes a map when a key is set in it. */
    CHECK_OK(kl_cfg_set(c, "clip="));
    CHECK(kl_cfg_kind_of(kl_cfg_get(root, "clip")) == KL_CFG_NULL);
    CHECK_OK(kl_cfg_set(c, "clip.max_norm=1.5"));
    CHECK_OK(kl_cfg_float(kl_cfg_get(root, "clip"), "max_norm", 1, 0, &d));
    CHECK(d == 1.5);

    /* Scalars for CLI flags: verbatim text, origin for messages. */
    CHECK_OK(kl_cfg_set_scalar(c, "train.epochs", "7"));
    CHECK(get_int(c, "train.epochs") == 7);
    CHECK(!strcmp(kl_cfg_origin(kl_cfg_at(root, "train.epochs")), "--set train.epochs=7"));
    CHECK_OK(kl_cfg_set_scalar_from(c, "train.epochs", "7x", "--epochs 7x"));
    CHECK_ERR(kl_cfg_int(kl_cfg_get(root, "train"), "epochs", 1, 0, &v), KL_EINVAL,
              "--epochs 7x: train.epochs: expected an integer, got \"7x\"");
    CHECK_OK(kl_cfg_set_scalar(c, "name", "null: [x]"));
    CHECK(!strcmp(kl_cfg_str_value(kl_cfg_get(root, "name")), "null: [x]"));

    /* Failures name the override and the step, and change nothing. */
    set_err(c, "name.x=1", "--set name.x=1: name: cannot set key 'x': expected a map, got a scalar \"null: [x]\"");
    set_err(c, "model.input.x=1", "--set model.input.x=1: model.input: cannot set key 'x': expected a map, got a list");
    set_err(c, "train[0]=1", "--set train[0]=1: train: cannot index [0]: expected a list, got a map");
    set_err(c, "nokey[0]=1", "--set nokey[0]=1: no key 'nokey' here, so [0] cannot be set");
    set_err(c, "a..b=1", "--set a..b=1: bad path 'a..b' at character 2");
    set_err(c, "a[x]=1", "--set a[x]=1: bad path 'a[x]'");
    set_err(c, "noeq", "--set noeq: expected path=value");
    set_err(c, "=5", "--set =5: expected path=value");
    set_err(c, "a\xff=1", "not valid UTF-8");
    set_err(c, "a=*x", "YAML aliases (*x) are not supported");
    CHECK_ERR(kl_cfg_set(c, "a=b: c: d"), KL_EINVAL,
              "--set a=b: c: d:1:5: mapping values are not allowed in this context");
    char deep[400] = "a";
    for (int i = 0; i < 70; i++) strcat(deep, ".k");
    strcat(deep, "=1");
    set_err(c, deep, "deeper than 64 levels");
    kl_cfg_free(c);

    c = parse("model:\n  layers: [{type: relu}, {type: flatten}, {type: linear, out: 10}]\n");
    set_err(c, "model.layers[9].x=1",
            "--set model.layers[9].x=1: model.layers: index 9 out of range (the list has 3 "
            "items; --set cannot add items)");
    kl_cfg_free(c);

    /* Overrides nest exactly as deep as files may, and the result re-reads. */
    for (int keys = 63; keys <= 64; keys++)
        for (int list = 0; list <= 1; list++) {
            char a[300] = "k", *text;
            kl_cfg *e, *back;
            for (int i = 1; i < keys; i++) strcat(a, ".k");
            strcat(a, list ? "=[]" : "=1");
            CHECK_OK(kl_cfg_new_empty("deep", &e));
            if (keys == 64 && list) {
                set_err(e, a, "would nest deeper than 64 levels");
            } else {
                CHECK_OK(kl_cfg_set(e, a));
                CHECK_OK(kl_cfg_to_string(e, &text));
                CHECK_OK(kl_cfg_parse(text, strlen(text), "deep", &back));
                CHECK(kl_cfg_equal(kl_cfg_root(e), kl_cfg_root(back)));
                kl_cfg_free(back);
                free(text);
            }
            kl_cfg_free(e);
        }

    /* Building a config from flags alone. */
    CHECK_OK(kl_cfg_new_empty("flags", &c));
    CHECK_OK(kl_cfg_set_scalar(c, "train.epochs", "3"));
    CHECK_OK(kl_cfg_set(c, "optim.betas=[0.5, 0.75]"));
    char *text = dump(c);
    CHECK(text && !strcmp(text, "train:\n  epochs: 3\noptim:\n  betas: [0.5, 0.75]\n"));
    free(text);
    kl_cfg_free(c);
}

static const char TRICKY[] =
    "s1: \"null\"\n"
    "s2: \"\"\n"
    "s3: 'true'\n"
    "s4: 'it''s'\n"
    "s5: \"line1\\nline2\\n\"\n"
    "s6: \"  spaces  \"\n"
    "s7: \"#hash\"\n"
    "s8: \"a: b\"\n"
    "s9: \"\xc3\xbc" "n" "\xc3\xaf" "c" "\xc3\xb6" "d" "\xc3\xa9 \xe2\x9c\x93\"\n"
    "s10: \"\\t tab \\x01 \\u2028\"\n"
    "s11: \"[not a list]\"\n"
    "s12: \"-\"\n"
    "s13: \"- dash\"\n"
    "empty_map: {}\n"
    "empty_seq: []\n"
    "nulls: [~, null, NULL]\n"
    "block: |\n  literal\n   text\n"
    "folded: >\n  folded\n  text\n"
    "\"key with spaces\": 1\n"
    "\"\": empty key\n"
    "\"x.y\": dotted\n"
    "? [not, allowed]\n";

static void test_round_trip(void)
{
    char path[128], longkey[300], longval[700], *text;
    snprintf(path, sizeof path, "%s/resolved.yaml", g_dir);
    memset(longkey, 'k', 200);
    longkey[200] = 0;
    for (int i = 0; i < 600; i++) longval[i] = i % 7 == 6 ? ' ' : 'a' + i % 26;
    longval[600] = 0;

    kl_cfg *c = parse(CNN), *back = NULL;
    if (!c) return;
    CHECK_OK(kl_cfg_set(c, "train.batch=64"));
    CHECK_OK(kl_cfg_set(c, "optim.schedule={kind: cosine, t_max: 10}"));
    CHECK_OK(kl_cfg_set(c, "clip="));
    CHECK_OK(kl_cfg_set_scalar(c, "notes.empty", ""));
    CHECK_OK(kl_cfg_set_scalar(c, "notes.null", "null"));
    CHECK_OK(kl_cfg_set_scalar(c, "notes.long", longval));
    CHECK_OK(kl_cfg_set_scalar(c, "notes.list", "[1, 2]"));
    CHECK_OK(kl_cfg_set_scalar(c, longkey, "v"));
    CHECK_OK(kl_cfg_write(c, path));
    CHECK_OK(kl_cfg_load(path, &back));
    CHECK(back && kl_cfg_equal(kl_cfg_root(c), kl_cfg_root(back)));
    if (back) {
        CHECK(get_int(back, "train.batch") == 64);
        CHECK(!strcmp(kl_cfg_str_value(kl_cfg_at(kl_cfg_root(back), "notes.null")), "null"));
        CHECK(kl_cfg_kind_of(kl_cfg_get(kl_cfg_root(back), "clip")) == KL_CFG_NULL);
    }
    kl_cfg_free(back);
    kl_cfg_free(c);
    unlink(path);

    /* Tricky scalars keep their text and kind; the last key is refused. */
    CHECK_ERR(kl_cfg_parse(TRICKY, sizeof TRICKY - 1, "t.yaml", &c), KL_EFORMAT,
              "t.yaml:26:3: map keys must be plain names, got a list");
    char trimmed[sizeof TRICKY];
    memcpy(trimmed, TRICKY, sizeof TRICKY);
    *strstr(trimmed, "? [not") = 0;
    c = parse(trimmed);
    if (!c) return;
    kl_cfg_node *r = kl_cfg_root(c);
    CHECK(kl_cfg_kind_of(kl_cfg_get(r, "s1")) == KL_CFG_SCALAR);
    CHECK(!strcmp(kl_cfg_str_value(kl_cfg_get(r, "s4")), "it's"));
    CHECK(!strcmp(kl_cfg_str_value(kl_cfg_get(r, "block")), "literal\n text\n"));
    CHECK(!strcmp(kl_cfg_str_value(kl_cfg_get(r, "folded")), "folded text\n"));
    CHECK(kl_cfg_len(kl_cfg_get(r, "nulls")) == 3);
    CHECK(kl_cfg_get(r, "") && kl_cfg_get(r, "x.y") && !kl_cfg_at(r, "x.y"));
    text = dump(c);
    CHECK(text != NULL);
    if (text) {
        CHECK_OK(kl_cfg_parse(text, strlen(text), "again.yaml", &back));
        CHECK(back && kl_cfg_equal(r, kl_cfg_root(back)));
        char *again = back ? dump(back) : NULL;
        CHECK(again && !strcmp(text, again)); /* stable after one pass */
        free(again);
        kl_cfg_free(back);
    }
    free(text);
    CHECK(!kl_cfg_equal(r, kl_cfg_get(r, "nulls")));
    kl_cfg_free(c);

    CHECK_OK(kl_cfg_new_empty("x", &c));
    CHECK_ERR(kl_cfg_write(c, "/nonexistent-dir/x.yaml"), KL_EIO,
              "/nonexistent-dir/x.yaml: cannot write: No such file or directory");
    kl_cfg_free(c);
}

/* Every allocation failure is KL_ENOMEM, leaves *out NULL and leaks nothing. */
static void test_alloc_failures(void)
{
    int fails = 0;
    for (long i = 1; i < 100000; i++) {
        kl_cfg *c = (kl_cfg *)1;
        kl_test_fail_alloc(i);
        kl_status s = kl_cfg_parse(CNN, sizeof CNN - 1, "cnn.yaml", &c);
        kl_test_fail_alloc(0);
        if (s == KL_OK) {
            kl_cfg_free(c);
            break;
        }
        fails++;
        CHECK(s == KL_ENOMEM && c == NULL);
    }
    CHECK(fails > 100);

    kl_cfg *c = parse(CNN);
    if (!c) return;
    char *before = dump(c);
    const char *sets[] = {"optim.sched.kind=cosine", "model.layers[2]={type: relu, x: [1, 2]}",
                          "clip.max_norm=1", "train.batch=64"};
    for (int k = 0; k < 4; k++) {
        for (long i = 1; i < 1000; i++) {
            kl_test_fail_alloc(i);
            kl_status s = kl_cfg_set(c, sets[k]);
            kl_test_fail_alloc(0);
            if (s == KL_OK) break;
            CHECK(s == KL_ENOMEM);
            char *now = dump(c);
            CHECK(now && before && !strcmp(now, before));
            free(now);
        }
        free(before);
        before = dump(c);
    }
    for (long i = 1; i < 1000; i++) {
        char *text = (char *)1;
        kl_test_fail_alloc(i);
        kl_status s = kl_cfg_to_string(c, &text);
        kl_test_fail_alloc(0);
        if (s == KL_OK) {
            CHECK(text && before && !strcmp(text, before));
            free(text);
            break;
        }
        CHECK(s == KL_ENOMEM && text == NULL);
    }
    for (long i = 1; i < 1000; i++) {
        kl_test_fail_alloc(i);
        kl_status s = kl_cfg_set_scalar(c, "train.new_key", "1");
        kl_test_fail_alloc(0);
        if (s == KL_OK) break;
        CHECK(s == KL_ENOMEM && !kl_cfg_at(kl_cfg_root(c), "train.new_key"));
    }
    for (long i = 1; i < 1000; i++) {
        kl_cfg *e = (kl_cfg *)1;
        kl_test_fail_alloc(i);
        kl_status s = kl_cfg_new_empty("x", &e);
        kl_test_fail_alloc(0);
        if (s == KL_OK) {
            kl_cfg_free(e);
            break;
        }
        CHECK(s == KL_ENOMEM && e == NULL);
    }
    free(before);
    kl_cfg_free(c);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/kiln_cfgset_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_overrides();
    test_round_trip();
    test_alloc_failures();
    rmdir(g_dir);
    return kl_test_done("test_config_set");
}
