/* Loading `kiln train`'s datasets: training, validation (split off the
 * training set) and test sets, normalised with the training set's stats. */
#include "cli/train_opts.h"
#include "core/error.h"

#include <stdio.h>

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
        kl_csv_opts co = {.label_col = (int)o->label_col, .header = -1, .delim = ','};
        if (test && !o->test_path) return KL_OK;
        return kl_dataset_load_csv(test ? o->test_path : o->path, &co, out);
    }
    default:
        if (test && !o->test_path) return KL_OK;
        return kl_dataset_load_pngdir(test ? o->test_path : o->path, out);
    }
}

kl_status train_load_data(const train_opts *o, kl_dataset **train, kl_dataset **val, kl_dataset **test, float *mean_out,
                          float *std_out)
{
    kl_dataset *all = NULL, *tr = NULL, *va = NULL, *te = NULL;
    *train = *val = *test = NULL;
    if (o->data_kind == DATA_TEXT) /* text corpora are read by cli/train_text.c */
        return kl_fail(KL_EUNSUPPORTED, "data.kind text is a corpus for token models, not a dataset of samples "
                       "(kiln train reads it; use kiln generate to sample from the model)");
    kl_status s = load_one(o, 0, &all);
    if (s == KL_OK && o->limit > 0 && o->limit < kl_dataset_count(all)) {
        kl_dataset *sub;
        s = kl_dataset_subset(all, 0, o->limit, &sub);
        if (s == KL_OK) {
            kl_dataset_free(all);
            all = sub;
        }
    }
    if (s == KL_OK && o->val_split > 0) {
        if (o->val_split >= kl_dataset_count(all))
            s = kl_fail(KL_EINVAL, "data.val_split %lld leaves no training samples (%lld in all)",
                        (long long)o->val_split, (long long)kl_dataset_count(all));
        else
            s = kl_dataset_split(all, o->val_split, o->seed, &tr, &va);
        kl_dataset_free(all);
    } else {
        tr = all;
    }
    all = NULL;
    if (s == KL_OK) s = load_one(o, 1, &te);
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
