/* kiln eval CKPT and kiln predict CKPT INPUT...: a trained model from its
 * checkpoint (weights + the run's resolved config, which records the
 * normalisation), evaluated on a dataset or applied to images and rows. */
#include "cli/cli.h"
#include "cli/ckpt_open.h"
#include "cli/evaluator.h"
#include "cli/train_text.h"
#include "cli/train_opts.h"
#include "core/error.h"
#include "io/checkpoint.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A language model (data.kind text) on its run's held-out windows: the
 * fixed validation windows each epoch of its training was validated on
 * (train_text.c), so the loss is the epoch record's val_loss. */
static kl_status eval_text(loaded *l, const char *split, int confusion)
{
    if (strcmp(split, "val"))
        return kl_fail(KL_EINVAL, "--data %s: a language model (data.kind text) is evaluated on its run's held-out "
                       "windows, --data val (the default for it)", split);
    if (confusion) return kl_fail(KL_EINVAL, "--confusion: a language model predicts characters, not classes");
    text_corpus c = {0};
    char vp[4200];
    double loss = 0;
    kl_status s = text_vocab_path(l->dir, vp, sizeof vp);
    if (s == KL_OK) s = text_corpus_load(&c, l->cfg, &l->o, vp);
    if (s == KL_OK) s = text_corpus_split(&c, &l->o, kl_model_tokens(l->model));
    if (s == KL_OK && !c.n_val)
        s = kl_fail(KL_EINVAL, "data.val_fraction 0: the run held no text out to evaluate on (--set "
                    "data.val_fraction=F evaluates on the last F of the corpus)");
    if (s == KL_OK) s = text_corpus_graphs(&c, l->model, l->ctx, l->o.batch);
    if (s == KL_OK) s = text_validate(&c, &l->o, l->model, &loss);
    if (s == KL_OK)
        printf("val: %lld windows of %lld tokens (of %lld held out)  loss %.4f  perplexity %.3f  bpc %.3f\n",
               (long long)(l->o.val_batches * l->o.batch), (long long)c.T, (long long)c.n_val, loss, exp(loss),
               loss / M_LN2);
    text_corpus_free(&c);
    return s;
}

int kl_cmd_eval(int argc, char **argv)
{
    const char *ckpt = NULL, *split = NULL, *sets[32], *device = NULL;
    int nsets = 0, confusion = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: kiln eval CKPT [--data test|val|train] [--confusion] [--device D] [--set KEY=VALUE]\n\n"
                   "Prints loss and accuracy of a checkpoint (or run directory) on a dataset split\n"
                   "(default test).\n"
                   "A language model (data.kind text) is evaluated on its run's held-out windows (--data\n"
                   "val, its default): the fixed validation windows of training, so the loss is the\n"
                   "epoch records' val_loss; it prints loss, perplexity and bits per character.\n"
                   "--device cpu (default), cuda:N or auto.\n"
                   "--set data.* changes the data, e.g. --set data.kind=idx --set data.test_images=...\n");
            return 0;
        }
        const char *a = argv[i];
        if (!strcmp(a, "--data") || !strcmp(a, "--device") || !strcmp(a, "--set")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kiln eval: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--data")) split = v;
            else if (!strcmp(a, "--device")) device = v;
            else if (nsets < 32) sets[nsets++] = v;
            else {
                fprintf(stderr, "kiln eval: at most 32 --set options\n");
                return 2;
            }
        } else if (!strcmp(a, "--confusion")) confusion = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "kiln eval: unknown option '%s' (see kiln eval --help)\n", argv[i]);
            return 2;
        } else ckpt = argv[i];
    }
    if (!ckpt) {
        fprintf(stderr, "kiln eval: which checkpoint? (kiln eval CKPT)\n");
        return 2;
    }
    if (split && strcmp(split, "test") && strcmp(split, "val") && strcmp(split, "train")) {
        fprintf(stderr, "kiln eval: --data must be test, val or train, got '%s'\n", split);
        return 2;
    }
    loaded l = {0};
    kl_dataset *tr = NULL, *va = NULL, *te = NULL;
    int64_t *cm = NULL;
    float mean, std;
    kl_status s = open_ckpt(ckpt, sets, nsets, device, &l);
    if (s == KL_OK && l.o.data_kind == DATA_TEXT) {
        s = eval_text(&l, split ? split : "val", confusion);
        if (s != KL_OK) fprintf(stderr, "kiln eval: %s\n", kl_last_error());
        loaded_free(&l);
        return s == KL_OK ? 0 : 1;
    }
    if (!split) split = "test";
    if (s == KL_OK) s = train_load_data(&l.o, (int)kl_model_outputs(l.model), &tr, &va, &te, &mean, &std);
    const kl_dataset *ds = !strcmp(split, "test") ? te : !strcmp(split, "val") ? va : tr;
    if (s == KL_OK && !ds) s = kl_fail(KL_EINVAL, "the run's data has no %s split", split);
    int64_t C = s == KL_OK ? kl_model_outputs(l.model) : 0;
    if (s == KL_OK) s = kl_dataset_check_labels(ds, (int)C);
    if (s == KL_OK && !(cm = calloc((size_t)(C * C), sizeof *cm))) s = kl_fail(KL_ENOMEM, "out of memory");
    double loss = 0, acc = 0;
    evaluator e = {.model = l.model, .ctx = l.ctx, .batch = l.o.batch};
    if (s == KL_OK) s = evaluator_run(&e, ds, &loss, &acc, cm);
    if (s == KL_OK) {
        printf("%s: %lld samples  loss %.4f  accuracy %.4f\n", split, (long long)kl_dataset_count(ds), loss, acc);
        if (confusion) {
            printf("confusion (rows: true class, columns: predicted)\n      ");
            for (int64_t c = 0; c < C; c++) printf("%6lld", (long long)c);
            printf("\n");
            for (int64_t r = 0; r < C; r++) {
                printf("%6lld", (long long)r);
                for (int64_t c = 0; c < C; c++) printf("%6lld", (long long)cm[r * C + c]);
                printf("\n");
            }
        }
    } else {
        fprintf(stderr, "kiln eval: %s\n", kl_last_error());
    }
    evaluator_free(&e);
    free(cm);
    kl_dataset_free(tr);
    kl_dataset_free(va);
    kl_dataset_free(te);
    loaded_free(&l);
    return s == KL_OK ? 0 : 1;
}

/* The samples of one INPUT: an IDX image file, a PNG image, or a CSV file
 * of feature rows (no label column). */
static kl_status read_input(const char *path, const kl_model *m, float **x, int64_t *n)
{
    size_t len = strlen(path);
    int64_t need = 1, d[3];
    for (int i = 0; i < kl_model_input_ndim(m); i++) need *= kl_model_input_shape(m)[i];
    if (len > 4 && !strcmp(path + len - 4, ".png")) {
        const int64_t *in = kl_model_input_shape(m);
        char sh[96];
        if (kl_model_input_ndim(m) != 3 || in[0] > 4) /* a PNG holds 1 to 4 channels */
            return kl_fail(KL_EINVAL, "%s: the model's input is %s, not an image [C, H, W] of 1 to 4 channels: "
                           "give a CSV of feature rows or an IDX file", path,
                           kl_shape_str(sh, sizeof sh, kl_model_input_ndim(m), in));
        KL_TRY(kl_png_load(path, (int)in[0], x, d));
        *n = 1;
        if (d[0] * d[1] * d[2] != need) {
            free(*x);
            *x = NULL; /* the caller frees it too */
            return kl_fail(KL_EINVAL, "%s: image is [%lld,%lld,%lld], the model takes %lld values per sample", path,
                           (long long)d[0], (long long)d[1], (long long)d[2], (long long)need);
        }
        return KL_OK;
    }
    kl_dataset *ds;
    if ((len > 4 && !strcmp(path + len - 4, ".csv")) || (len > 7 && !strcmp(path + len - 7, ".csv.gz"))) {
        kl_csv_opts co = {.label_col = -2, .header = -1, .delim = ','};
        KL_TRY(kl_dataset_load_csv(path, &co, &ds));
    } else {
        KL_TRY(kl_dataset_load_idx(path, NULL, &ds));
    }
    kl_status s = KL_OK;
    if (kl_dataset_sample_size(ds) != need)
        s = kl_fail(KL_EINVAL, "%s: %lld values per sample, the model takes %lld", path,
                    (long long)kl_dataset_sample_size(ds), (long long)need);
    *n = kl_dataset_count(ds);
    *x = s == KL_OK ? malloc((size_t)(*n * need) * sizeof **x) : NULL;
    if (s == KL_OK && !*x) s = kl_fail(KL_ENOMEM, "out of memory");
    if (s == KL_OK) memcpy(*x, kl_dataset_features(ds), (size_t)(*n * need) * sizeof **x);
    kl_dataset_free(ds);
    return s;
}

int kl_cmd_predict(int argc, char **argv)
{
    const char *ckpt = NULL, *inputs[256], *device = NULL;
    int ninputs = 0, topk = 3, logits = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: kiln predict CKPT INPUT... [--top-k K] [--logits] [--device D]\n\n"
                   "Prints the top-K classes for each sample of each INPUT: a PNG image, an IDX image\n"
                   "file, or a CSV file of feature rows. --logits: every class's logit instead.\n"
                   "--device cpu (default), cuda:N or auto.\n");
            return 0;
        }
        const char *a = argv[i];
        if (!strcmp(a, "--top-k") || !strcmp(a, "--device")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kiln predict: %s needs a value\n", a);
                return 2;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--device")) {
                device = v;
                continue;
            }
            char *end;
            long long k = strtoll(v, &end, 10);
            if (k < 1 || k > (1 << 24) || *end || end == v) {
                fprintf(stderr, "kiln predict: --top-k needs a count >= 1, got '%s'\n", v);
                return 2;
            }
            topk = (int)k;
        } else if (!strcmp(a, "--logits")) logits = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "kiln predict: unknown option '%s' (see kiln predict --help)\n", argv[i]);
            return 2;
        } else if (!ckpt) ckpt = argv[i];
        else if (ninputs < 256) inputs[ninputs++] = argv[i];
        else {
            fprintf(stderr, "kiln predict: at most 256 inputs\n");
            return 2;
        }
    }
    if (!ckpt || !ninputs) {
        fprintf(stderr, "kiln predict: usage: kiln predict CKPT INPUT...\n");
        return 2;
    }
    loaded l = {0};
    kl_status s = open_ckpt(ckpt, NULL, 0, device, &l);
    if (s == KL_OK && kl_model_tokens(l.model))
        s = kl_fail(KL_EINVAL, "%s is a language model (token ids in, next-token logits out): use kiln generate", ckpt);
    int64_t C = s == KL_OK ? kl_model_outputs(l.model) : 0;
    if (topk > C) topk = (int)C; /* every class, ranked */
    for (int f = 0; f < ninputs && s == KL_OK; f++) {
        float *x = NULL;
        int64_t n = 0, ss = 1;
        s = read_input(inputs[f], l.model, &x, &n);
        for (int i = 0; i < kl_model_input_ndim(l.model); i++) ss *= kl_model_input_shape(l.model)[i];
        if (s == KL_OK && l.o.normalize)
            for (int64_t i = 0; i < n * ss; i++) x[i] = (x[i] - (float)l.o.mean) / (float)(l.o.std ? l.o.std : 1);
        step_graph sg = {0};
        float *lg = s == KL_OK ? malloc((size_t)(n * C) * sizeof *lg) : NULL;
        int32_t *y = s == KL_OK ? calloc((size_t)n, sizeof *y) : NULL;
        if (s == KL_OK && (!lg || !y)) s = kl_fail(KL_ENOMEM, "out of memory");
        if (s == KL_OK) s = step_graph_build(&sg, l.model, l.ctx, NULL, n);
        double lsum = 0;
        int64_t corr = 0;
        if (s == KL_OK) s = step_graph_run(&sg, l.model, x, y, &lsum, &corr, NULL, lg);
        for (int64_t i = 0; s == KL_OK && i < n; i++) { /* softmax, then the k best */
            float *r = lg + i * C, mx = r[0], sum = 0;
            if (logits) {
                printf("%s", inputs[f]);
                if (n > 1) printf("[%lld]", (long long)i);
                for (int64_t c = 0; c < C; c++) printf(" %.9g", r[c]);
                printf("\n");
                continue;
            }
            for (int64_t c = 1; c < C; c++) mx = r[c] > mx ? r[c] : mx;
            for (int64_t c = 0; c < C; c++) sum += r[c] = expf(r[c] - mx);
            printf("%s", inputs[f]);
            if (n > 1) printf("[%lld]", (long long)i);
            for (int k = 0; k < topk; k++) {
                int64_t best = 0;
                for (int64_t c = 1; c < C; c++)
                    if (r[c] > r[best]) best = c;
                printf("  %lld (%.3f)", (long long)best, r[best] / sum);
                r[best] = -1;
            }
            printf("\n");
        }
        step_graph_free(&sg);
        free(x);
        free(lg);
        free(y);
    }
    if (s != KL_OK) fprintf(stderr, "kiln predict: %s\n", kl_last_error());
    loaded_free(&l);
    return s == KL_OK ? 0 : 1;
}
