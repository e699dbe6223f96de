/* Loading `kiln train`'s datasets: training, validation (split off the
 * training set) and test sets, normalised with the training set's stats;
 * and placing them on the device: in device memory when they fit, else the
 * training set streamed through pinned slots. */
#include "cli/train_opts.h"
#include "cli/plan.h"
#include "core/error.h"

#include <stdio.h>
#include <string.h>

static kl_status load_one(const train_opts *o, int test, kl_dataset **out)
{
    *out = NULL;
    char img[4096], lab[4096];
    switch (o->data_kind) {
    case 0:
        KL_TRY(kl_fashion_mnist_paths(test ? "test" : "train", img, lab, sizeof img));
        return kl_dataset_load_idx(img, lab, out);
    case 1:
        if (test && !o->test_images) return KL_OK;
        return kl_dataset_load_idx(test ? o->test_images : o->train_images, test ? o->test_labels : o->train_labels, out);
    case 2: {
        kl_csv_opts co = {.label_col = (int)o->label_col, .header = o->header, .delim = ','};
        if (test && !o->test_path) return KL_OK;
        return kl_dataset_load_csv(test ? o->test_path : o->path, &co, out);
    }
    default:
        if (test && !o->test_path) return KL_OK;
        return kl_dataset_load_pngdir(test ? o->test_path : o->path, out);
    }
}

/* te's samples against the training set's (before anything trains on them) */
static kl_status same_samples(const train_opts *o, const kl_dataset *tr, const kl_dataset *te)
{
    int nd = kl_dataset_sample_ndim(tr);
    if (kl_dataset_sample_ndim(te) == nd && !memcmp(kl_dataset_sample_dims(te), kl_dataset_sample_dims(tr), (size_t)nd * sizeof(int64_t)))
        return KL_OK;
    char a[64], b[64];
    const char *path = o->data_kind == 1 ? o->test_images : o->test_path;
    return kl_fail(KL_EINVAL, "%s: the test set's samples are %s, the training set's %s", path ? path : "test set",
                   kl_shape_str(a, sizeof a, kl_dataset_sample_ndim(te), kl_dataset_sample_dims(te)),
                   kl_shape_str(b, sizeof b, nd, kl_dataset_sample_dims(tr)));
}

kl_status train_load_data(const train_opts *o, int classes, kl_dataset **train, kl_dataset **val, kl_dataset **test,
                          float *mean_out, float *std_out)
{
    kl_dataset *all = NULL, *tr = NULL, *va = NULL, *te = NULL;
    *train = *val = *test = NULL;
    if (o->data_kind == DATA_TEXT) /* text corpora are read by cli/train_text.c */
        return kl_fail(KL_EUNSUPPORTED, "data.kind text is a corpus for token models, not a dataset of samples "
                       "(kiln train reads it; kiln eval evaluates the model on its held-out windows, kiln generate samples from it)");
    kl_status s = load_one(o, 0, &all);
    if (s == KL_OK && o->limit > 0 && o->limit < kl_dataset_count(all)) {
        kl_dataset *sub;
        s = kl_dataset_subset(all, 0, o->limit, &sub);
        if (s == KL_OK) {
            kl_dataset_free(all);
            all = sub;
        }
    }
    /* labels checked in the file's order, before val_split reorders them, so a message's sample is the file's */
    if (s == KL_OK && classes > 0) s = kl_dataset_check_labels(all, classes);
    if (s == KL_OK && o->val_split > 0) {
        if (o->val_split >= kl_dataset_count(all))
            s = kl_fail(KL_EINVAL, "data.val_split %lld leaves no training samples (%lld in all)",
                        (long long)o->val_split, (long long)kl_dataset_count(all));
        else
            s = kl_dataset_split_take(all, o->val_split, o->seed, &va);
    }
    if (s == KL_OK) tr = all;
    else kl_dataset_free(all);
    all = NULL;
    if (s == KL_OK) s = load_one(o, 1, &te);
    if (s == KL_OK && te) s = same_samples(o, tr, te);
    if (s == KL_OK && te) s = kl_dataset_match_classes(te, tr); /* a test folder's classes by name */
    if (s == KL_OK && te && classes > 0) s = kl_dataset_check_labels(te, classes);
    if (s == KL_OK && o->normalize) {
        float mean = (float)o->mean, std = (float)o->std;
        if (o->std == 0) s = kl_dataset_stats(tr, &mean, &std);
        if (s == KL_OK) s = kl_dataset_normalize(tr, mean, std);
        if (s == KL_OK && va) s = kl_dataset_normalize(va, mean, std);
        if (s == KL_OK && te) s = kl_dataset_normalize(te, mean, std);
        *mean_out = mean;
        *std_out = std;
    }
    if (s != KL_OK) {
        kl_dataset_free(tr);
        kl_dataset_free(va);
        kl_dataset_free(te);
        return s;
    }
    *train = tr;
    *val = va;
    *test = te;
    return KL_OK;
}

/* ---- where the data lives on the device ---- */

/* Pinned slots for a streamed training set: up to this many bytes. */
#define STREAM_BYTES ((int64_t)256 << 20)

/* Bytes a dataset's device copy takes (features, labels, order). */
static size_t device_bytes(const kl_dataset *ds)
{
    return ds ? (size_t)kl_dataset_count(ds) * ((size_t)kl_dataset_sample_size(ds) * sizeof(float) + 2 * sizeof(int32_t))
              : 0;
}

kl_status train_data_place(kl_ctx *ctx, const train_opts *o, const plan_budget *bu, const kl_dataset *tr,
                           const kl_dataset *va, const kl_dataset *te, int depth, train_data *d)
{
    *d = (train_data){0};
    size_t need = device_bytes(tr), room = bu->known && bu->limit > bu->step ? bu->limit - bu->step : 0;
    char why[512] = "", a[32], b[32], c[32];
    if (!o->on_device) snprintf(why, sizeof why, "data.on_device is false");
    else if (bu->known && need > room)
        snprintf(why, sizeof why, "its %s do not fit beside the planned %s of the step and its other graphs in %s",
                 fmt_bytes(a, sizeof a, (double)need), fmt_bytes(b, sizeof b, (double)bu->step),
                 fmt_bytes(c, sizeof c, (double)bu->limit));
    if (!why[0]) {
        kl_status s = kl_device_data_new(ctx, tr, &d->train);
        if (s != KL_OK && s != KL_EDEVMEM) return s;
        if (s != KL_OK) snprintf(why, sizeof why, "%s", kl_last_error());
    }
    if (d->train) {
        d->depth = depth;
        room = room > need ? room - need : 0;
        const kl_dataset *ev[2] = {va, te};
        kl_device_data **dev[2] = {&d->val, &d->test};
        for (int i = 0; i < 2; i++) { /* where they do not fit: evaluated from the host */
            if (!ev[i] || (bu->known && device_bytes(ev[i]) > room)) continue;
            kl_status s = kl_device_data_new(ctx, ev[i], dev[i]);
            if (s != KL_OK && s != KL_EDEVMEM) return s;
            if (bu->known && *dev[i]) room -= device_bytes(ev[i]);
        }
        return KL_OK;
    }
    int64_t B = o->batch, slot = B * (kl_dataset_sample_size(tr) * (int64_t)sizeof(float) + (int64_t)sizeof(int32_t));
    /* the ring in what the plan leaves (it streams because memory is short), less the epoch's order */
    int64_t left = (int64_t)room - kl_dataset_count(tr) * (int64_t)sizeof(int32_t);
    int64_t ring = bu->known && left < STREAM_BYTES ? left : STREAM_BYTES;
    int64_t slots = ring / slot;
    slots = slots < 2 ? 2 : slots > depth + 1 ? depth + 1 : slots;
    printf("note: the training set streams from host memory through %d slots of %lld samples (%s)\n", (int)slots,
           (long long)B, why);
    KL_TRY(kl_device_data_stream_new(ctx, tr, B, (int)slots, &d->train));
    d->depth = (int)slots - 1; /* a step's slot (and its host copy) is rewritten only after it was handled */
    kl_loader_opts lo = {.batch = B, .shuffle = o->shuffle, .seed = o->seed, .drop_last = o->drop_last, .prefetch = 2};
    return kl_loader_new(tr, &lo, &d->loader);
}

void train_data_free(train_data *d)
{
    kl_loader_free(d->loader);
    kl_device_data_free(d->train);
    kl_device_data_free(d->val);
    kl_device_data_free(d->test);
    *d = (train_data){0};
}
