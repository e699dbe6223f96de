/* kiln data: in-memory datasets and a prefetching batch loader.
 *
 * A kl_dataset holds n samples: features as f32 [n, sample dims...] in one
 * contiguous block, and optional i32 labels [n]. Datasets load from IDX
 * files (MNIST format, raw or gzip), numeric CSV files, or a folder of PNGs
 * with one subfolder per class. A kl_loader walks a dataset in batches; a
 * worker thread gathers the next batches while the caller trains.
 *
 *   char img[512], lab[512];
 *   kl_dataset *all, *train, *val;
 *   kl_loader *ld;
 *   float mean, std;
 *   if (kl_fashion_mnist_paths("train", img, lab, sizeof img) ||
 *       kl_dataset_load_idx(img, lab, &all) ||         // [60000] x [1,28,28]
 *       kl_dataset_check_labels(all, 10) ||
 *       kl_dataset_stats(all, &mean, &std) ||
 *       kl_dataset_normalize(all, mean, std) ||
 *       kl_dataset_split(all, 5000, 42, &train, &val))
 *       fprintf(stderr, "kiln: %s\n", kl_last_error()); // says which file, why
 *   kl_loader_opts o = {.batch = 128, .shuffle = 1, .seed = 42};
 *   kl_loader_new(train, &o, &ld);
 *   for (int64_t epoch = 0; epoch < 10; epoch++) {
 *       kl_batch b;
 *       while (kl_loader_next(ld, &b) == KL_OK && b.n > 0)
 *           train_step(b.x, b.y, b.n);                  // b.x: [b.n,1,28,28]
 *   }
 *   kl_loader_free(ld);
 *   kl_dataset_free(train); kl_dataset_free(val); kl_dataset_free(all);
 *
 * Shuffles are Fisher-Yates driven by splitmix64 seeded from (seed, epoch):
 * the order is a pure function of those two numbers, the same on every
 * machine and independent of thread timing.
 *
 * A NULL handle, output or buffer is KL_EMISUSE (status.h); bad values are
 * KL_EINVAL.
 */
#ifndef KILN_DATA_H
#define KILN_DATA_H

#include <stddef.h>
#include <stdint.h>
#include "kiln/status.h"
#include "kiln/graph.h" /* kl_ctx, kl_graph, kl_tensor */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- IDX files ---------------------------------------------------------- */

typedef struct kl_idx kl_idx; /* one parsed IDX array */

/* IDX element types (the third magic byte). */
typedef enum kl_idx_type {
    KL_IDX_U8 = 0x08,
    KL_IDX_I8 = 0x09,
    KL_IDX_I16 = 0x0B,
    KL_IDX_I32 = 0x0C,
    KL_IDX_F32 = 0x0D,
    KL_IDX_F64 = 0x0E
} kl_idx_type;

/* Parses an IDX array from memory: magic 00 00 <type> <ndim>, ndim (1..8)
 * big-endian u32 dims, then exactly prod(dims) elements. `name` (may be NULL)
 * prefixes error messages ("train.idx: truncated: ...").
 * Owns nothing of buf; *out is freed with kl_idx_free. KL_EFORMAT on bad
 * magic, type, 0 dims, truncation or trailing bytes, KL_EUNSUPPORTED on more
 * than 8 dims; *out = NULL on failure. */
KL_API kl_status kl_idx_parse_mem(const void *buf, size_t n, const char *name,
                                  kl_idx **out);
/* Reads and parses an IDX file, gzip-compressed (detected by magic 1f 8b) or
 * raw. KL_EIO if it cannot be read, KL_EFORMAT as kl_idx_parse_mem. */
KL_API kl_status kl_idx_load(const char *path, kl_idx **out);
/* Element type, dims (ndim of them), element count. */
KL_API kl_idx_type kl_idx_elem_type(const kl_idx *a);
KL_API int kl_idx_ndim(const kl_idx *a);
KL_API const int64_t *kl_idx_dims(const kl_idx *a);
KL_API int64_t kl_idx_count(const kl_idx *a);
/* Element i converted to double (host byte order); 0 if i is out of range. */
KL_API double kl_idx_get(const kl_idx *a, int64_t i);
/* Frees the array; NULL is a no-op. */
KL_API void kl_idx_free(kl_idx *a);

/* ---- datasets ------------------------------------------------------------ */

typedef struct kl_dataset kl_dataset;

/* Loads images (and labels, or NULL for none) from IDX files, each raw or
 * gzip. u8 images are scaled to [0,1]; other types are converted as is.
 * Sample dims are the image dims after the first; 2-D images get a channel
 * dim: [n,28,28] -> [1,28,28]. Labels must be a 1-D integer array with one
 * non-negative label per image. *out = NULL and a message naming the file on
 * failure (KL_EIO, KL_EFORMAT). */
KL_API kl_status kl_dataset_load_idx(const char *images, const char *labels,
                                     kl_dataset **out);

typedef struct kl_csv_opts {
    int label_col; /* 0-based column of the label; -1 = last; -2 = no labels */
    int header;    /* 1 = first row is a header, 0 = none, -1 = auto: a
                      header if no first-row field is a number */
    char delim;    /* field separator; 0 = ',' */
} kl_csv_opts;
/* Default CSV options: label in the last column, auto header, commas. */
#define KL_CSV_OPTS_DEFAULT {-1, -1, ','}

/* Loads a numeric CSV file (or .gz): every non-label column is a feature;
 * sample dims are [columns - 1] ([columns] without labels). Blank lines are
 * skipped; fields may be double-quoted. Labels must be non-negative integers.
 * o NULL means KL_CSV_OPTS_DEFAULT. Errors name file, line and 1-based
 * column: "data.csv:17: column 3: 'abc' is not a number",
 * "data.csv:9: 5 columns, expected 6". *out = NULL on failure. */
KL_API kl_status kl_dataset_load_csv(const char *path, const kl_csv_opts *o,
                                     kl_dataset **out);
/* Same, from a buffer of n bytes (not NUL-terminated); `name` (may be NULL)
 * stands for the file name in messages. Copies what it keeps. */
KL_API kl_status kl_dataset_parse_csv_mem(const void *buf, size_t n,
                                          const char *name,
                                          const kl_csv_opts *o,
                                          kl_dataset **out);

/* Loads a folder with one subfolder per class (class ids follow the sorted
 * subfolder names, which are kept: kl_dataset_class_name). Every regular file
 * in a class folder must be a PNG; files directly in `dir` and hidden entries
 * are ignored. All images must have the same width and height. Gray images
 * give [1,H,W]; if any image has color, all give [3,H,W] (gray replicated,
 * alpha dropped, palettes expanded). 8- and 16-bit values are scaled to
 * [0,1]. Errors name the file. *out = NULL on failure. */
KL_API kl_status kl_dataset_load_pngdir(const char *dir, kl_dataset **out);

/* Makes a dataset from n samples of shape dims[0..ndim) (ndim 1..8, dims > 0):
 * copies x (n * prod(dims) floats) and y (n labels >= 0, or NULL). */
KL_API kl_status kl_dataset_from_memory(int64_t n, int ndim,
                                        const int64_t *dims, const float *x,
                                        const int32_t *y, kl_dataset **out);

/* Sample count; shape of one sample; floats per sample. */
KL_API int64_t kl_dataset_count(const kl_dataset *ds);
KL_API int kl_dataset_sample_ndim(const kl_dataset *ds);
KL_API const int64_t *kl_dataset_sample_dims(const kl_dataset *ds);
KL_API int64_t kl_dataset_sample_size(const kl_dataset *ds);
/* Number of classes: the class folder count for PNG folders, else the
 * largest label + 1; 0 without labels. */
KL_API int kl_dataset_classes(const kl_dataset *ds);
/* Features [n, sample dims...] and labels [n] (NULL when unlabeled).
 * Borrowed: valid until the dataset is freed. */
KL_API const float *kl_dataset_features(const kl_dataset *ds);
KL_API const int32_t *kl_dataset_labels(const kl_dataset *ds);
/* Name of class c (PNG folder datasets); NULL otherwise or out of range. */
KL_API const char *kl_dataset_class_name(const kl_dataset *ds, int c);
/* Renumbers ds's labels to by's class ids by class name (a test folder
 * with fewer or other classes than the training folder's); a class of ds
 * that by lacks is KL_EINVAL naming it. No-op unless both have class names. */
KL_API kl_status kl_dataset_match_classes(kl_dataset *ds, const kl_dataset *by);

/* Checks every label lies in [0, n_classes): KL_EFORMAT naming the label
 * source, e.g. "labels.idx: sample 513: label 12 out of range [0,10)".
 * KL_EINVAL if the dataset has no labels or n_classes < 1. */
KL_API kl_status kl_dataset_check_labels(const kl_dataset *ds, int n_classes);
/* Mean and (population) standard deviation over all feature values.
 * KL_EINVAL for an empty dataset. */
KL_API kl_status kl_dataset_stats(const kl_dataset *ds, float *mean,
                                  float *std);
/* In place: x = (x - mean) / std. KL_EINVAL unless std > 0 and both finite.
 * Do not call while a loader reads the dataset. */
KL_API kl_status kl_dataset_normalize(kl_dataset *ds, float mean, float std);
/* Shuffles the sample indices with kl_shuffle_indices(seed, epoch 0); the
 * first n_val go to *val, the rest (in shuffled order) to *train. Copies
 * that keep the source's class count, class names and label source; either
 * may be empty. KL_EINVAL unless 0 <= n_val <= count; both NULL on failure. */
KL_API kl_status kl_dataset_split(const kl_dataset *ds, int64_t n_val,
                                  uint64_t seed, kl_dataset **train,
                                  kl_dataset **val);
/* kl_dataset_split without the second copy of the training samples: *ds
 * becomes the training set (the same samples, in the same order, as
 * kl_dataset_split's *train), its rows permuted in place; *val is a new
 * dataset. On failure *ds is unchanged and *val is NULL. */
KL_API kl_status kl_dataset_split_take(kl_dataset *ds, int64_t n_val,
                                       uint64_t seed, kl_dataset **val);
/* Copies samples [first, first + n) (class count and names kept).
 * KL_EINVAL if out of range; *out = NULL on failure. */
KL_API kl_status kl_dataset_subset(const kl_dataset *ds, int64_t first,
                                   int64_t n, kl_dataset **out);
/* Frees the dataset; NULL is a no-op. */
KL_API void kl_dataset_free(kl_dataset *ds);

/* Writes a permutation of 0..n-1 into idx: Fisher-Yates from i = n-1 down,
 * j = uniform [0, i] by rejection from a splitmix64 stream seeded by
 * (seed, epoch). A pure function of (n, seed, epoch). KL_EMISUSE for a NULL
 * idx when n > 0, KL_EINVAL for n < 0; idx is untouched then. */
KL_API kl_status kl_shuffle_indices(int64_t *idx, int64_t n, uint64_t seed,
                                    uint64_t epoch);

/* Locates Fashion-MNIST's IDX files for split "train" or "test" in
 * $KILN_DATA_DIR or else /usr/share/datasets/fashion-mnist (Debian package
 * dataset-fashion-mnist); either may be .gz or raw. Writes both paths (n
 * bytes each). KL_EIO with a hint to install the package when missing;
 * KL_EINVAL for another split or too small a buffer. */
KL_API kl_status kl_fashion_mnist_paths(const char *split, char *images,
                                        char *labels, size_t n);

/* ---- datasets kept in device memory ------------------------------------- */

/* A dataset's features and labels in a ctx's device memory, so a training
 * step takes its batch there (kl_gather_rows) with nothing copied per step:
 *
 *   kl_device_data *dd;  kl_device_data_new(ctx, train, &dd);
 *   kl_tensor *start, *x, *y;
 *   kl_device_data_batch(g, dd, 128, &start, &x, &y);   // x [128, ...], y [128]
 *   ... model on x, loss on y, backward, update ...
 *   kl_device_data_order(dd, 1, seed, epoch);          // once per epoch
 *   for (int32_t k = 0; k < batches; k++) {
 *       int32_t at = k * 128;  kl_tensor_set(start, &at, sizeof at);
 *       kl_graph_run(g);
 *   }
 */
typedef struct kl_device_data kl_device_data;
/* Copies ds (labels required) to ctx's device once; on the CPU it reads
 * ds's own arrays, so ds must outlive dd there. KL_EDEVMEM with the sizes
 * when it does not fit; KL_EINVAL without labels or above 2^31 samples. */
KL_API kl_status kl_device_data_new(kl_ctx *ctx, const kl_dataset *ds, kl_device_data **out);
/* Frees the device copy; NULL is a no-op. Free graphs that read it first. */
KL_API void kl_device_data_free(kl_device_data *dd);
/* The order of the samples from now on: kl_shuffle_indices(seed, epoch)
 * when shuffle, else 0..n-1 (what a kl_loader with the same options walks).
 * Ordered after the runs issued before it. KL_EMISUSE for streamed data. */
KL_API kl_status kl_device_data_order(kl_device_data *dd, int shuffle, uint64_t seed, int64_t epoch);
/* The current order on the host: the sample at each position (n of them). */
KL_API const int32_t *kl_device_data_order_host(const kl_device_data *dd);
/* Adds to g a batch of `rows` samples: positions [*start, *start + rows)
 * of the current order. *start is an i32 [1] input to set before each run;
 * x [rows, sample dims] f32 and y [rows] i32 are g's. */
KL_API kl_status kl_device_data_batch(kl_graph *g, kl_device_data *dd, int64_t rows, kl_tensor **start,
                                      kl_tensor **x, kl_tensor **y);

/* Streamed data, for a training set too big for device memory: `slots`
 * slots of `rows` rows in device memory, each with a pinned host copy.
 * kl_device_data_batch reads one slot (rows at most) at *start; each step
 * puts its batch first (a kl_loader's, say), and the copy to the device
 * overlaps the kernels of the steps before it:
 *
 *   kl_device_data_stream_new(ctx, train, 128, 4, &dd);
 *   kl_device_data_batch(g, dd, 128, &start, &x, &y);
 *   while (kl_loader_next(ld, &b) == KL_OK && b.n) {
 *       int32_t at;  kl_device_data_put(dd, b.x, b.y, b.n, &at);
 *       kl_tensor_set(start, &at, sizeof at);
 *       kl_graph_run(g);
 *   }
 * ds gives the sample shape only. KL_EINVAL unless 2 <= slots <= 64. */
#define KL_STREAM_SLOTS_MAX 64
KL_API kl_status kl_device_data_stream_new(kl_ctx *ctx, const kl_dataset *ds, int64_t rows, int slots,
                                           kl_device_data **out);
/* Puts a batch of n <= rows samples into the next slot (round robin) and
 * gives its start. The slot's previous batch counts as read by the runs
 * issued before the put that followed it; a put waits (on the host) only
 * for the copy of the slot's previous batch. */
KL_API kl_status kl_device_data_put(kl_device_data *dd, const float *x, const int32_t *y, int64_t n,
                                    int32_t *start);
/* The host copy of the batch put at start, valid until slots - 1 more puts. */
KL_API kl_status kl_device_data_slot_host(const kl_device_data *dd, int32_t start, const float **x,
                                          const int32_t **y);
/* Rows: the dataset's samples, or (streamed) slots * rows. */
KL_API int64_t kl_device_data_count(const kl_device_data *dd);
/* 1 for streamed data, else 0. */
KL_API int kl_device_data_streamed(const kl_device_data *dd);

/* ---- batch loader -------------------------------------------------------- */

/* One PNG image as f32 [channels, H, W] in [0, 1]; channels 0 keeps the
 * file's (1 for gray, 3 for color; alpha dropped). Free *out with free(). */
KL_API kl_status kl_png_load(const char *path, int channels, float **out, int64_t dims[3]);

typedef struct kl_loader kl_loader;

typedef struct kl_loader_opts {
    int64_t batch;  /* rows per batch, > 0 */
    int shuffle;    /* 1 = new order each epoch from (seed, epoch) */
    uint64_t seed;
    int drop_last;  /* 1 = skip the final short batch */
    int prefetch;   /* batches prepared ahead; 0 = default 2; max 64 */
} kl_loader_opts;

typedef struct kl_batch {
    const float *x;   /* [n, sample dims...] */
    const int32_t *y; /* [n]; NULL when the dataset has no labels */
    int64_t n;        /* rows in this batch; 0 = end of epoch */
    int64_t index;    /* batch index in the epoch */
    int64_t epoch;
} kl_batch;

/* Starts a loader over ds at epoch 0, batch 0, and its worker thread.
 * Borrows ds: it must outlive the loader and not change meanwhile. Buffers
 * for prefetch + 1 batches are allocated once. KL_EINVAL for bad options,
 * KL_EIO if the thread cannot start; *out = NULL on failure. */
KL_API kl_status kl_loader_new(const kl_dataset *ds, const kl_loader_opts *o,
                               kl_loader **out);
/* Batches per epoch (count / batch, rounded up unless drop_last). */
KL_API int64_t kl_loader_batches(const kl_loader *ld);
/* Moves to (epoch, batch_index), 0 <= batch_index <= batches; the next
 * kl_loader_next returns exactly what an uninterrupted run returns there.
 * Invalidates the last batch returned. KL_EINVAL when out of range
 * (epoch in [0, 2^62], so that counting epochs on cannot overflow). */
KL_API kl_status kl_loader_seek(kl_loader *ld, int64_t epoch,
                                int64_t batch_index);
/* Next batch of the current epoch; at the end of an epoch it returns KL_OK
 * with b->n == 0 once and moves on to the next epoch. b's buffers are the
 * loader's, valid until the next kl_loader_next/seek/free. One caller thread
 * at a time. */
KL_API kl_status kl_loader_next(kl_loader *ld, kl_batch *b);
/* Stops and joins the worker (at any point) and frees; NULL is a no-op. */
KL_API void kl_loader_free(kl_loader *ld);

#ifdef __cplusplus
}
#endif
#endif
