/* libFuzzer target for the YAML config reader: parse arbitrary bytes, read
 * through getters and paths, apply an override, and check that writing and
 * re-reading gives an equal tree. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/config.h"

static void read_some(const kl_cfg_node *root)
{
    static const char *const kinds[] = {"sgd", "adam", "adamw", NULL};
    static const char *const keys[] = {"name", "model", "train", "optim", NULL};
    static const char *const paths[] = {"", "a", "train.batch", "model.layers[2].kernel",
                                        "[0]", "a[0].b", "model.input", "x..y", "a[99999999999]"};
    int64_t iv, list[8];
    double fv, fl[4];
    int bv, ev, n;
    const char *sv;
    kl_cfg_node *sub;
    for (size_t p = 0; p < sizeof paths / sizeof *paths; p++) {
        const kl_cfg_node *node = kl_cfg_at(root, paths[p]);
        if (!node) continue;
        (void)kl_cfg_path(node);
        (void)kl_cfg_str_value(node);
        kl_cfg_fail(node, KL_EINVAL, "fuzz %d", (int)p);
        for (int i = 0; i < kl_cfg_map_len(node) && i < 8; i++) {
            const char *k = kl_cfg_map_key(node, i);
            kl_cfg_int(node, k, 0, 0, &iv);
            kl_cfg_int_range(node, k, 1, 0, -5, 5, &iv);
            kl_cfg_float(node, k, 1, 0, &fv);
            kl_cfg_bool(node, k, 0, 0, &bv);
            kl_cfg_string(node, k, 0, "", &sv);
            kl_cfg_enum(node, k, 1, kinds, 0, &ev);
            kl_cfg_int_list(node, k, 0, 8, list, &n);
            kl_cfg_float_list(node, k, 1, 4, fl, &n);
            kl_cfg_get_map(node, k, 0, &sub);
            kl_cfg_get_seq(node, k, 1, &sub);
            (void)kl_cfg_path(kl_cfg_map_value(node, i));
        }
        kl_cfg_check_keys(node, keys);
        for (int i = 0; i < kl_cfg_len(node) && i < 8; i++)
            (void)kl_cfg_path(kl_cfg_item(node, i));
    }
}

/* Writing then re-reading must give an equal tree. */
static void round_trip(const kl_cfg *c)
{
    char *text;
    if (kl_cfg_to_string(c, &text) != KL_OK) abort();
    kl_cfg *back;
    if (kl_cfg_parse(text, strlen(text), "again", &back) != KL_OK) abort();
    if (!kl_cfg_equal(kl_cfg_root(c), kl_cfg_root(back))) abort();
    kl_cfg_free(back);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An optional first line "=path=value" is applied as an override. */
    char *assign = NULL;
    if (size > 1 && data[0] == '=') {
        const uint8_t *nl = memchr(data, '\n', size);
        size_t len = nl ? (size_t)(nl - data) : size;
        assign = malloc(len);
        if (!assign) return 0;
        memcpy(assign, data + 1, len - 1);
        assign[len - 1] = 0;
        data += len;
        size -= len;
    }
    kl_cfg *c;
    if (kl_cfg_parse((const char *)data, size, "fuzz.yaml", &c) == KL_OK) {
        read_some(kl_cfg_root(c));
        round_trip(c);
        if (assign && kl_cfg_set(c, assign) == KL_OK) {
            read_some(kl_cfg_root(c));
            round_trip(c);
        }
        kl_cfg_free(c);
    }
    free(assign);
    return 0;
}
