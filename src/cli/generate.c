/* kiln generate CKPT: samples text from a language-model checkpoint (its
 * config.yaml, weights and vocab.txt), one character at a time.
 *
 * Recurrent models (no attention or learned positions) run a T = 1 graph
 * whose LSTM/GRU states are inputs and outputs, carried from step to step,
 * so each character costs one step. Transformers decode with a KV cache
 * (nn/model_kv.h): the prompt and then each sampled character go through a
 * one-token graph that attends over the cached keys and values, O(T) a
 * character. Token i sits at position i, so once the text outgrows the
 * context T (and with --no-kv-cache throughout) each character re-runs the
 * forward on the window (the last T characters), in graphs of power-of-two
 * lengths (the window left-aligned, padding after it; causal attention
 * keeps the padding out), so a short context costs a short forward. Both
 * give the same logits up to float rounding, so the same text.
 *
 * Sampling: logits / temperature, the top-k kept (0: all), softmax, and a
 * draw from Philox(seed, character index); temperature 0 is greedy. Same
 * checkpoint, prompt and --seed give the same text. */
#include "cli/cli.h"
#include "cli/train_text.h" /* text_vocab_path */
#include "core/error.h"
#include "core/philox.h"
#include "io/checkpoint.h"
#include "io/config.h"
#include "kiln/text.h"
#include "nn/model.h"
#include "nn/model_kv.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_BUCKETS 26

typedef struct {
    kl_graph *g;
    kl_tensor *x, *logits;
    kl_model_state st;
    int64_t T;
} gen_graph;

typedef struct {
    kl_cfg *cfg;
    kl_model *model;
    kl_vocab *vocab;
    kl_ctx *ctx;
    gen_graph step, win[MAX_BUCKETS]; /* recurrent: step; windowed: win[log2 T] */
    kl_kv_decoder *kv;                /* transformers: the KV-cache decoder (NULL: --no-kv-cache) */
    float *logits, **h, **c;          /* host copies: the last logits, recurrent states */
    int64_t V;
    char vocab_path[4300]; /* for messages */
} generator;

static void usage(FILE *f)
{
    fprintf(f, "usage: kiln generate CKPT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
               "                          [--threads N] [--no-kv-cache] [--logits]\n\n"
               "Samples N characters (default 200) from a language model trained with data.kind text.\n"
               "CKPT is a checkpoint directory or a run directory (its latest checkpoint). The prompt\n"
               "is printed first, then the sampled text; without --prompt the model starts after a\n"
               "newline, which is not printed (a vocabulary without a newline needs --prompt).\n"
               "temperature (default 1) divides the logits, 0 picks the most likely character;\n"
               "--top-k K samples among the K most likely only (default 0: all). The same --seed\n"
               "gives the same text.\n"
               "Transformers cache keys and values while the text fits the context; --no-kv-cache\n"
               "re-runs the whole window for every character instead (slower, the same text).\n"
               "--logits prints the logits of the character after the prompt (one per vocabulary\n"
               "entry, in vocab.txt's order) instead of generating.\n");
}

static kl_status gen_graph_build(generator *gn, gen_graph *gg, int64_t T, int state)
{
    int64_t xd[2] = {1, T};
    gg->T = T;
    KL_TRY(kl_graph_new(gn->ctx, &gg->g));
    KL_TRY(kl_input(gg->g, "x", KL_I32, 2, xd, &gg->x));
    if (state) KL_TRY(kl_model_forward_state(gn->model, gg->g, gg->x, &gg->st, &gg->logits));
    else KL_TRY(kl_model_forward(gn->model, gg->g, gg->x, 0, &gg->logits));
    KL_TRY(kl_output(gg->g, gg->logits));
    return kl_graph_plan(gg->g, NULL);
}

static int64_t bucket(int64_t L, int64_t T, int *k)
{
    int64_t b = 1;
    *k = 0;
    while (b < L && b < T) b *= 2, ++*k;
    return b < T ? b : T;
}

/* The checkpoint's model, vocabulary and weights. */
static kl_status gen_open(generator *gn, const char *path, int threads, int64_t first_len, int kv)
{
    char dir[4096], *p = gn->vocab_path;
    size_t pn = sizeof gn->vocab_path;
    KL_TRY(kl_checkpoint_resolve(path, dir, sizeof dir));
    snprintf(p, pn, "%s/config.yaml", dir);
    KL_TRY(kl_cfg_load(p, &gn->cfg));
    kl_cfg_node *mn;
    KL_TRY(kl_cfg_get_map(kl_cfg_root(gn->cfg), "model", 1, &mn));
    KL_TRY(kl_model_from_cfg(mn, &gn->model));
    if (!kl_model_tokens(gn->model))
        return kl_fail(KL_EINVAL, "%s: not a language model (its model.input is not {tokens: T})", dir);
    KL_TRY(text_vocab_path(dir, p, pn));
    KL_TRY(kl_vocab_load(p, &gn->vocab));
    gn->V = kl_model_vocab(gn->model);
    if (kl_vocab_size(gn->vocab) > gn->V)
        return kl_fail(KL_EFORMAT, "%s has %d characters, more than the model's vocab %lld", p, kl_vocab_size(gn->vocab),
                       (long long)gn->V);
    kl_ctx_opts co = {.threads = threads, .seed = 1, .no_init = 1};
    KL_TRY(kl_ctx_new(&co, &gn->ctx));
    int k;
    /* a first graph (or the KV decoder's) creates the parameters; the checkpoint fills them */
    if (kl_model_windowed(gn->model)) {
        int64_t T = kl_model_tokens(gn->model);
        if (kv && first_len <= T) { /* models it cannot decode (KL_EUNSUPPORTED) re-run the window */
            kl_status s = kl_kv_decoder_new(gn->model, gn->ctx, &gn->kv);
            if (s != KL_OK && s != KL_EUNSUPPORTED) return s;
        }
        if (!gn->kv) {
            T = bucket(first_len, T, &k);
            KL_TRY(gen_graph_build(gn, &gn->win[k], T, 0));
        }
    } else {
        KL_TRY(gen_graph_build(gn, &gn->step, 1, 1));
        int n = gn->step.st.n;
        gn->h = calloc((size_t)n + 1, sizeof *gn->h);
        gn->c = calloc((size_t)n + 1, sizeof *gn->c);
        if (!gn->h || !gn->c) return kl_fail(KL_ENOMEM, "out of memory");
        for (int i = 0; i < n; i++) {
            gn->h[i] = calloc((size_t)gn->step.st.hidden[i], sizeof(float));
            gn->c[i] = calloc((size_t)gn->step.st.hidden[i], sizeof(float));
            if (!gn->h[i] || !gn->c[i]) return kl_fail(KL_ENOMEM, "out of memory");
        }
    }
    if (!(gn->logits = malloc((size_t)gn->V * sizeof(float)))) return kl_fail(KL_ENOMEM, "out of memory");
    return kl_checkpoint_load(dir, gn->ctx, NULL, NULL, NULL);
}

static void gen_free(generator *gn)
{
    kl_kv_decoder_free(gn->kv);
    kl_graph_free(gn->step.g);
    for (int i = 0; i < MAX_BUCKETS; i++) kl_graph_free(gn->win[i].g);
    for (int i = 0; gn->h && i < gn->step.st.n; i++) free(gn->h[i]), free(gn->c[i]);
    free(gn->h);
    free(gn->c);
    free(gn->logits);
    kl_ctx_free(gn->ctx);
    kl_vocab_free(gn->vocab);
    kl_model_free(gn->model);
    kl_cfg_free(gn->cfg);
}

/* Recurrent: feeds one token with the carried states; gn->logits gets the next token's logits. */
static kl_status feed_step(generator *gn, int32_t tok)
{
    gen_graph *gg = &gn->step;
    KL_TRY(kl_tensor_set(gg->x, &tok, sizeof tok));
    for (int i = 0; i < gg->st.n; i++) {
        size_t b = (size_t)gg->st.hidden[i] * sizeof(float);
        KL_TRY(kl_tensor_set(gg->st.h_in[i], gn->h[i], b));
        if (gg->st.c_in[i]) KL_TRY(kl_tensor_set(gg->st.c_in[i], gn->c[i], b));
    }
    KL_TRY(kl_graph_run(gg->g));
    for (int i = 0; i < gg->st.n; i++) {
        size_t b = (size_t)gg->st.hidden[i] * sizeof(float);
        KL_TRY(kl_tensor_get(gg->st.h_out[i], gn->h[i], b));
        if (gg->st.c_out[i]) KL_TRY(kl_tensor_get(gg->st.c_out[i], gn->c[i], b));
    }
    return kl_tensor_get(gg->logits, gn->logits, (size_t)gn->V * sizeof(float));
}

/* Windowed: the forward on the last min(n, T) tokens; logits of the last one. */
static kl_status feed_window(generator *gn, const int32_t *toks, int64_t n)
{
    int64_t T = kl_model_tokens(gn->model), L = n < T ? n : T;
    int k;
    int64_t Tb = bucket(L, T, &k);
    gen_graph *gg = &gn->win[k];
    if (!gg->g) KL_TRY(gen_graph_build(gn, gg, Tb, 0));
    int32_t *x = calloc((size_t)Tb, sizeof *x);
    float *lg = malloc((size_t)(Tb * gn->V) * sizeof *lg);
    kl_status s = x && lg ? KL_OK : kl_fail(KL_ENOMEM, "out of memory");
    if (s == KL_OK) {
        memcpy(x, toks + n - L, (size_t)L * sizeof *x);
        s = kl_tensor_set(gg->x, x, (size_t)Tb * sizeof *x);
    }
    if (s == KL_OK) s = kl_graph_run(gg->g);
    if (s == KL_OK) s = kl_tensor_get(gg->logits, lg, (size_t)(Tb * gn->V) * sizeof *lg);
    if (s == KL_OK) memcpy(gn->logits, lg + (L - 1) * gn->V, (size_t)gn->V * sizeof *lg);
    free(x);
    free(lg);
    return s;
}

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* A token from logits[0..n) (n: the vocabulary, not its padding). */
static kl_status sample(const float *logits, int n, double temp, int top_k, uint64_t seed, uint64_t i, int *out)
{
    int best = 0;
    for (int v = 1; v < n; v++)
        if (logits[v] > logits[best]) best = v;
    if (temp <= 0) {
        *out = best;
        return KL_OK;
    }
    double *z = malloc((size_t)n * 2 * sizeof *z), *sorted = z + n, cut = -INFINITY, sum = 0;
    if (!z) return kl_fail(KL_ENOMEM, "out of memory");
    for (int v = 0; v < n; v++) z[v] = sorted[v] = ((double)logits[v] - (double)logits[best]) / temp;
    if (top_k > 0 && top_k < n) {
        qsort(sorted, (size_t)n, sizeof *sorted, cmp_desc);
        cut = sorted[top_k - 1];
    }
    for (int v = 0; v < n; v++) sum += z[v] = z[v] >= cut ? exp(z[v]) : 0;
    double u = kl_u32_to_unit(kl_philox_word(seed, 0x67656e, 0, i)) * sum, acc = 0;
    *out = best;
    for (int v = 0; v < n; v++)
        if (z[v] > 0 && (acc += z[v]) >= u) {
            *out = v;
            break;
        }
    free(z);
    return KL_OK;
}

typedef struct {
    const char *ckpt, *prompt;
    int64_t tokens, top_k, threads;
    int no_kv, logits; /* logits: print the next token's logits after the prompt, and stop */
    int say_seed;      /* the seed was drawn: tell it when sampling starts */
    double temp;
    uint64_t seed;
} gen_args;

static kl_status generate(const gen_args *a)
{
    generator gn = {0};
    size_t plen = strlen(a->prompt);
    int32_t *toks = malloc((plen + (size_t)a->tokens + 1) * sizeof *toks);
    int64_t n = 0;
    kl_status s = toks ? gen_open(&gn, a->ckpt, (int)a->threads, plen ? (int64_t)plen : 1, !a->no_kv) : kl_fail(KL_ENOMEM, "out of memory");
    for (size_t i = 0; s == KL_OK && i < plen; i++) {
        int id = kl_vocab_id(gn.vocab, (uint8_t)a->prompt[i]);
        if (id < 0) {
            char ch[8] = "";
            if (isprint((unsigned char)a->prompt[i])) snprintf(ch, sizeof ch, "'%c' ", a->prompt[i]);
            s = kl_fail(KL_EINVAL, "--prompt: character %s(byte %u) at offset %zu is not in the model's vocabulary", ch,
                        (unsigned)(uint8_t)a->prompt[i], i);
        }
        toks[n++] = id;
    }
    if (s == KL_OK && !n) { /* no prompt: start after a newline (not printed), as a text's lines do */
        int nl = kl_vocab_id(gn.vocab, '\n');
        if (nl < 0) /* any other start would be an arbitrary character the user did not ask for */
            s = kl_fail(KL_EINVAL, "%s has no newline (the corpus had none) to start the text after: give --prompt TEXT",
                        gn.vocab_path);
        toks[n++] = nl;
    }
    int windowed = s == KL_OK && kl_model_windowed(gn.model), V = s == KL_OK ? kl_vocab_size(gn.vocab) : 0;
    for (int64_t i = 0; s == KL_OK && !windowed && i < n; i++) s = feed_step(&gn, toks[i]);
    for (int64_t i = 0; s == KL_OK && gn.kv && i < n; i++) s = kl_kv_decoder_feed(gn.kv, toks[i], gn.logits);
    if (s == KL_OK && a->logits) {
        if (windowed && (!gn.kv || kl_kv_decoder_len(gn.kv) < n)) s = feed_window(&gn, toks, n);
        for (int c = 0; s == KL_OK && c < V; c++) printf(c ? " %.9g" : "%.9g", gn.logits[c]);
        if (s == KL_OK) printf("\n");
        free(toks);
        gen_free(&gn);
        return s;
    }
    if (s == KL_OK && a->say_seed) /* not before: a run that fails has nothing to repeat */
        fprintf(stderr, "(seed %llu: pass --seed %llu to repeat)\n", (unsigned long long)a->seed,
                (unsigned long long)a->seed);
    if (s == KL_OK) {
        fwrite(a->prompt, 1, plen, stdout);
        fflush(stdout);
    }
    for (int64_t i = 0; s == KL_OK && i < a->tokens; i++) {
        int id = 0;
        if (windowed && (!gn.kv || kl_kv_decoder_len(gn.kv) < n)) s = feed_window(&gn, toks, n);
        if (s == KL_OK) s = sample(gn.logits, V, a->temp, (int)a->top_k, a->seed, (uint64_t)i, &id);
        if (s != KL_OK) break;
        toks[n++] = id;
        putchar(kl_vocab_byte(gn.vocab, id));
        if (i % 16 == 15) fflush(stdout);
        if (!windowed && i + 1 < a->tokens) s = feed_step(&gn, id);
        /* the cache holds the text while it fits the context; past that, the window */
        if (gn.kv && n <= kl_kv_decoder_capacity(gn.kv) && i + 1 < a->tokens) s = kl_kv_decoder_feed(gn.kv, id, gn.logits);
    }
    if (s == KL_OK) putchar('\n');
    fflush(stdout);
    free(toks);
    gen_free(&gn);
    return s;
}

/* A number in [lo, hi] (whole: a whole number); the message says so otherwise. */
static int num_arg(const char *flag, const char *v, double lo, double hi, int whole, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno || !(d >= lo && d <= hi) || (whole && d != floor(d))) {
        if (whole) fprintf(stderr, "kiln generate: %s expects a whole number from %.0f to %.0f, got '%s'\n", flag, lo, hi, v);
        else fprintf(stderr, "kiln generate: %s expects a number in [%g, %g], got '%s'\n", flag, lo, hi, v);
        return 0;
    }
    *out = d;
    return 1;
}

int kl_cmd_generate(int argc, char **argv)
{
    gen_args a = {.prompt = "", .tokens = 200, .temp = 1.0};
    int have_seed = 0;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        double d;
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(arg, "--no-kv-cache") || !strcmp(arg, "--logits")) {
            if (arg[2] == 'n') a.no_kv = 1;
            else a.logits = 1;
            continue;
        }
        int takes = !strcmp(arg, "--prompt") || !strcmp(arg, "--tokens") || !strcmp(arg, "--temperature") ||
                    !strcmp(arg, "--top-k") || !strcmp(arg, "--seed") || !strcmp(arg, "--threads");
        if (takes && i + 1 >= argc) {
            fprintf(stderr, "kiln generate: %s needs a value\n", arg);
            return 2;
        }
        if (!strcmp(arg, "--prompt")) a.prompt = argv[++i];
        else if (!strcmp(arg, "--tokens")) {
            if (!num_arg(arg, argv[++i], 0, 1e8, 1, &d)) return 2;
            a.tokens = (int64_t)d;
        } else if (!strcmp(arg, "--temperature")) {
            if (!num_arg(arg, argv[++i], 0, 1e6, 0, &a.temp)) return 2;
        } else if (!strcmp(arg, "--top-k")) {
            if (!num_arg(arg, argv[++i], 0, 1 << 24, 1, &d)) return 2;
            a.top_k = (int64_t)d;
        } else if (!strcmp(arg, "--seed")) {
            char *end;
            const char *v = argv[++i];
            errno = 0;
            a.seed = strtoull(v, &end, 10), have_seed = 1;
            if (end == v || *end || errno || v[0] == '-') {
                fprintf(stderr, "kiln generate: --seed expects a non-negative integer, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(arg, "--threads")) {
            if (!num_arg(arg, argv[++i], 0, 4096, 1, &d)) return 2;
            a.threads = (int64_t)d;
        } else if (arg[0] == '-') {
            fprintf(stderr, "kiln generate: unknown option '%s' (see kiln generate --help)\n", arg);
            return 2;
        } else if (!a.ckpt) a.ckpt = arg;
        else {
            fprintf(stderr, "kiln generate: unexpected argument '%s' (one checkpoint)\n", arg);
            return 2;
        }
    }
    if (!a.ckpt) {
        fprintf(stderr, "kiln generate: which checkpoint? (kiln generate CKPT --prompt TEXT)\n");
        return 2;
    }
    if (!have_seed && !a.logits && a.temp > 0 && a.top_k != 1) { /* (--logits, greedy: nothing drawn) */
        a.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        a.say_seed = 1;
    }
    kl_status s = generate(&a);
    if (s != KL_OK) {
        fprintf(stderr, "kiln generate: %s\n", kl_last_error());
        return 1;
    }
    return 0;
}
