/* Internal: the dataset layout shared by the loaders in src/data. */
#ifndef KL_DATA_DATASET_H
#define KL_DATA_DATASET_H

#include "kiln/data.h"
#include "kiln/tensor.h"

struct kl_dataset {
    int64_t n;                    /* samples */
    int ndim;                     /* sample dims */
    int64_t dims[KL_MAX_DIMS];
    int64_t sample_size;          /* prod(dims) */
    float *x;                     /* [n, sample_size] */
    int32_t *y;                   /* [n] or NULL */
    int classes;                  /* folder count, or max label + 1 */
    char *label_src;              /* names the labels in messages */
    int64_t *lines;               /* [n] each sample's line in its file (CSV), or NULL: for messages */
    char **class_names;           /* [n_names] or NULL */
    int n_names;
};

/* Allocates an n-sample dataset (features uninitialised, labels too when
 * with_labels). Checks dims and that the sizes fit; label_src may be NULL. */
kl_status kl_dataset_alloc(int64_t n, int ndim, const int64_t *dims,
                           int with_labels, const char *label_src,
                           kl_dataset **out);

/* Sets ds->classes to max label + 1 (0 without labels). */
void kl_dataset_count_classes(kl_dataset *ds);

/* Reads a whole file, gunzipping it when it starts with 1f 8b. *buf is
 * kl_malloc'ed (free with kl_free). KL_EIO / KL_EFORMAT naming the path. */
kl_status kl_read_file(const char *path, unsigned char **buf, size_t *n);

#endif
