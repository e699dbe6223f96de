/* Monitoring hooks of the training loop: TensorBoard mirroring of the
 * metrics records, parameter/gradient histograms and telemetry. */
#include "cli/train_monitor.h"
#include "core/error.h"
#include "backends/backend.h" /* kl_cuda_device_info_get */

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

monitor_flags g_monitor_flags;

int monitor_flags_take(int *argc, char **argv)
{
    int n = 0;
    for (int i = 0; i < *argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--no-tensorboard")) {
            g_monitor_flags.no_tensorboard = 1;
        } else if (!strcmp(a, "--mem-limit") || !strncmp(a, "--mem-limit=", 12)) {
            if (a[11] == '=') g_monitor_flags.mem_limit = a + 12;
            else if (i + 1 < *argc) g_monitor_flags.mem_limit = argv[++i];
            else {
                fprintf(stderr, "kiln train: --mem-limit needs a value (bytes, or e.g. 512M, 2G)\n");
                return 2;
            }
        } else if (!strcmp(a, "--profile")) {
            g_monitor_flags.profile_steps = 20;
            if (i + 1 < *argc && argv[i + 1][0] >= '0' && argv[i + 1][0] <= '9') {
                char *end;
                long long n = strtoll(argv[++i], &end, 10);
                if (*end || n < 1 || n > 1000000000) {
                    fprintf(stderr, "kiln train: --profile takes a number of steps from 1 up, got '%s'\n", argv[i]);
                    return 2;
                }
                g_monitor_flags.profile_steps = n;
            }
        } else if (!strcmp(a, "--no-graph")) {
            g_monitor_flags.no_graph = 1;
            /* every graph of the run (a last partial batch's, evaluation's, a
             * sequence model's), not only the training step's */
            setenv("KILN_CUDA_GRAPH", "0", 1);
        } else if (!strcmp(a, "--batch") && i + 1 < *argc && !strcmp(argv[i + 1], "auto")) {
            g_monitor_flags.batch_auto = 1;
            i++;
        } else {
            if (!strcmp(a, "--help") || !strcmp(a, "-h")) g_monitor_flags.help = 1;
            argv[n++] = argv[i];
        }
    }
    *argc = n;
    return 0;
}

void monitor_flags_usage(FILE *f)
{
    fprintf(f, "monitoring:\n"
               "  --no-tensorboard  do not write TensorBoard event files to <run>/tb\n"
               "  --mem-limit SIZE  refuse to start when the planned memory exceeds SIZE\n"
               "                    (bytes, or 512M, 2G; see kiln plan)\n"
               "  --batch auto      the largest power-of-two batch whose step fits --mem-limit\n"
               "                    (else the available RAM)\n"
               "  --profile [N]     after N steps (default 20) print the per-op time table and\n"
               "                    the data-loading wait; also a \"profile\" record in metrics.jsonl\n"
               "  --no-graph        on a GPU, launch every kernel of a step (no CUDA graph\n"
               "                    capture and replay; for debugging)\n"
               "  config keys: train.histogram_every (steps; 0 = each epoch end),\n"
               "               train.telemetry_interval (seconds; 0 = off; default 1),\n"
               "               train.nan_watch (default true: name the layer that made a NaN/Inf),\n"
               "               train.plateau_patience, train.early_stop, train.grad_norm_warn\n");
}

/* Removes key from a map node (the node and its entry are freed). */

kl_status monitor_cfg_read(kl_cfg *cfg, monitor_opts *o)
{
    o->histogram_every = 0;
    o->telemetry_interval = 1.0;
    o->nan_watch = 1;
    kl_cfg_node *train = kl_cfg_get(kl_cfg_root(cfg), "train");
    if (!train || kl_cfg_kind_of(train) != KL_CFG_MAP) return KL_OK; /* train_opts_read reports the form */
    KL_TRY(kl_cfg_int_range(train, "histogram_every", 0, 0, 0, INT64_MAX / 2, &o->histogram_every));
    KL_TRY(kl_cfg_float(train, "telemetry_interval", 0, 1.0, &o->telemetry_interval));
    KL_TRY(kl_cfg_bool(train, "nan_watch", 0, 1, &o->nan_watch));
    /* below 10 ms the sampler would spin on /proc and NVML reads */
    if (o->telemetry_interval != 0 && !(o->telemetry_interval >= 0.01 && o->telemetry_interval <= 86400))
        return kl_cfg_fail(kl_cfg_get(train, "telemetry_interval"), KL_EINVAL,
                           "telemetry_interval must be 0 (off) or 0.01 to 86400 seconds, got %g", o->telemetry_interval);
    /* written back resolved, so config.yaml and checkpoints carry them */
    char v[64];
    snprintf(v, sizeof v, "%lld", (long long)o->histogram_every);
    KL_TRY(kl_cfg_set_scalar(cfg, "train.histogram_every", v));
    snprintf(v, sizeof v, "%.17g", o->telemetry_interval);
    KL_TRY(kl_cfg_set_scalar(cfg, "train.telemetry_interval", v));
    return kl_cfg_set_scalar(cfg, "train.nan_watch", o->nan_watch ? "true" : "false");
}

/* CLOCK_MONOTONIC in seconds (run_t0's clock) */
static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A TensorBoard write failed: say so once and stop writing. */
static void tb_failed(train_monitor *m)
{
    fprintf(stderr, "kiln train: warning: TensorBoard output disabled: %s\n", kl_last_error());
    tb_writer_close(m->tb);
    m->tb = NULL;
}

/* v as a metrics.jsonl record printed with fmt holds it, so TensorBoard's
 * value equals the record's (as float32) */
static double as_logged(const char *fmt, double v)
{
    char t[64];
    snprintf(t, sizeof t, fmt, v);
    return strtod(t, NULL);
}

/* A non-finite value is left out, as the records leave it (JSON has no
 * NaN): a language model's accuracy, a perplexity past a loss of 709. */
static void scalar(train_monitor *m, const char *tag, int64_t step, const char *fmt, double v)
{
    if (m->tb && isfinite(v) && tb_scalar(m->tb, tag, step, as_logged(fmt, v)) != KL_OK) tb_failed(m);
}

void train_monitor_scalar(train_monitor *m, const char *tag, int64_t step, const char *fmt, double v)
{
    scalar(m, tag, step, fmt, v);
}

static void flush(train_monitor *m)
{
    if (m->tb && tb_writer_flush(m->tb) != KL_OK) tb_failed(m);
}

kl_status train_monitor_open(train_monitor *m, const char *run_dir, kl_ctx *ctx, const kl_optim *opt, FILE *metrics,
                            double run_t0, int64_t resumed_step)
{
    m->ctx = ctx;
    /* a process that logs no step (resumed at the end, or interrupted before
     * its first step) writes its points at the checkpoint's step, not at 0;
     * the checkpoint's histograms are the earlier process's */
    m->step = resumed_step > 0 ? resumed_step : 0;
    m->opt = opt;
    m->metrics = metrics;
    /* where a process's records begin (a resumed run appends): kiln report
     * adds up time and energy per process */
    fprintf(metrics, "{\"type\":\"start\",\"wall_s\":%.3f}\n", mono_s() - run_t0);
    m->last_hist_step = resumed_step > 0 ? resumed_step : -1;
    m->nan.off = !m->o.nan_watch;
    if (!g_monitor_flags.no_tensorboard) {
        size_t n = strlen(run_dir) + 8;
        char *dir = kl_malloc(n);
        if (!dir) return KL_ENOMEM;
        snprintf(dir, n, "%s/tb", run_dir);
        kl_status s = tb_writer_open(dir, resumed_step, &m->tb);
        kl_free(dir);
        KL_TRY(s);
    }
    if (m->o.telemetry_interval > 0) {
        kl_device dev = kl_ctx_device(ctx);
        telemetry_opts to = {.interval_s = m->o.telemetry_interval,
                             .gpu_index = dev.type == KL_DEVICE_CPU ? 0 : dev.index,
                             .log = stdout};
        kl_cuda_device_info info; /* NVML's numbering may differ from CUDA's: find the GPU by its PCI address */
        if (dev.type == KL_DEVICE_CUDA && kl_cuda_device_info_get(dev.index, &info) == KL_OK)
            snprintf(to.pci_bus_id, sizeof to.pci_bus_id, "%s", info.pci_bus_id);
        KL_TRY(telemetry_start(&to, &m->tel));
        m->tel_t0 = m->epoch_t0 = mono_s(); /* after NVML's start, as the energy baseline */
        m->t_offset = m->tel_t0 - run_t0;
    }
    return KL_OK;
}

/* metrics.jsonl fields (and, tb: sys/<name> scalars) of the GPU values, by TEL_* bit */
static const struct {
    unsigned bit;
    const char *name, *fmt;
    size_t off;
    int tb;
} gpu_fields[] = {
#define F(bit, name, fmt, tb) {bit, #name, fmt, offsetof(telemetry_sample, name), tb}
    F(TEL_UTIL, gpu_util, "%.0f", 1),         F(TEL_UTIL, gpu_mem_util, "%.0f", 1), F(TEL_MEM, gpu_mem_mb, "%.1f", 1),
    F(TEL_MEM, gpu_mem_total_mb, "%.1f", 0), F(TEL_POWER, gpu_power_w, "%.3f", 1), F(TEL_TEMP, gpu_temp_c, "%.0f", 1),
    F(TEL_SM, gpu_sm_mhz, "%.0f", 1),         F(TEL_MEMCLK, gpu_mem_mhz, "%.0f", 0), F(TEL_ENERGY, gpu_energy_j, "%.3f", 1),
#undef F
};

/* Writes the samples taken since the last call: metrics.jsonl and sys/...;
 * a GPU value NVML did not give is left out, not written as 0. */
static void telemetry_out(train_monitor *m, int64_t step)
{
    telemetry_sample s[TELEMETRY_RING];
    int n = m->tel ? telemetry_drain(m->tel, s, TELEMETRY_RING) : 0;
    for (int i = 0; i < n; i++) {
        const telemetry_sample *t = &s[i];
        fprintf(m->metrics, "{\"type\":\"telemetry\",\"step\":%lld,\"wall_s\":%.3f,\"cpu_s\":%.3f", (long long)step,
                t->wall_s + m->t_offset, t->cpu_s);
        if (t->have & TEL_CPU) fprintf(m->metrics, ",\"cpu_util\":%.3f", t->cpu_util);
        fprintf(m->metrics, ",\"rss_mb\":%.1f,\"rss_peak_mb\":%.1f", t->rss_mb, t->rss_peak_mb);
        if (t->have & TEL_CPU) scalar(m, "sys/cpu_util", step, "%.3f", t->cpu_util);
        scalar(m, "sys/rss_mb", step, "%.1f", t->rss_mb);
        scalar(m, "sys/rss_peak_mb", step, "%.1f", t->rss_peak_mb);
        for (size_t k = 0; t->gpu && k < sizeof gpu_fields / sizeof gpu_fields[0]; k++) {
            if (!(t->have & gpu_fields[k].bit)) continue;
            double v = *(const double *)((const char *)t + gpu_fields[k].off);
            char tag[64];
            fprintf(m->metrics, ",\"%s\":", gpu_fields[k].name);
            fprintf(m->metrics, gpu_fields[k].fmt, v);
            snprintf(tag, sizeof tag, "sys/%s", gpu_fields[k].name);
            if (gpu_fields[k].tb) scalar(m, tag, step, gpu_fields[k].fmt, v);
        }
        fprintf(m->metrics, "}\n");
        telemetry_sample prev = m->last; /* the progress line keeps the last measured cpu_util */
        m->last = *t;
        if (!(t->have & TEL_CPU)) m->last.cpu_util = prev.cpu_util, m->last.have |= prev.have & TEL_CPU;
    }
}

/* One energy record (GPU only, once NVML has measured some): scope "epoch"
 * (since the last epoch end) or "run" (since telemetry started), with the
 * seconds it covers, the mean power over them, the training samples in
 * them and samples per joule. */
static void energy_out(train_monitor *m, const char *scope, int64_t epoch, int64_t step, int64_t samples)
{
    if (!telemetry_has_gpu(m->tel)) return;
    const char *src;
    double now = mono_s();
    int run = !strcmp(scope, "run");
    double e = telemetry_energy(m->tel, &src), j = run ? e : e - m->energy_epoch0;
    if (!run) samples += m->samples_carry, m->samples_carry = 0;
    if (!strcmp(src, "none")) { /* nothing measured: no record rather than 0 J; the next epoch's covers these samples */
        if (!run) m->samples_carry = samples;
        return;
    }
    double secs = now - (run ? m->tel_t0 : m->epoch_t0);
    if (!run) m->energy_epoch0 = e, m->epoch_t0 = now;
    double spj = j > 0 ? (double)samples / j : 0;
    fprintf(m->metrics, "{\"type\":\"energy\",\"scope\":\"%s\",\"epoch\":%lld,\"step\":%lld,\"joules\":%.3f,"
            "\"seconds\":%.3f,\"mean_w\":%.3f,\"samples\":%lld,\"samples_per_j\":%.4g,\"source\":\"%s\"}\n",
            scope, (long long)epoch, (long long)step, j, secs, secs > 0 ? j / secs : 0.0, (long long)samples, spj, src);
    scalar(m, run ? "sys/run_energy_j" : "sys/epoch_energy_j", step, "%.3f", j);
    if (j > 0) scalar(m, run ? "sys/run_samples_per_j" : "sys/epoch_samples_per_j", step, "%.4g", spj);
}

void train_monitor_close(train_monitor *m)
{
    telemetry_stop(m->tel);
    m->tel = NULL;
    flush(m);
    tb_writer_close(m->tb);
    m->tb = NULL;
    free(m->buf);
    m->buf = NULL;
}

/* params/<name> and grads/<name> histograms of every parameter and buffer. */
static void histograms(train_monitor *m, int64_t step)
{
    if (!m->tb || step == m->last_hist_step) return;
    m->last_hist_step = step;
    for (int i = 0; m->tb && i < kl_ctx_param_count(m->ctx); i++) {
        const char *name;
        kl_dtype dt;
        int nd, trainable;
        int64_t d[KL_MAX_DIMS], numel = 1;
        if (kl_ctx_param_info(m->ctx, i, &name, &dt, &nd, d, &trainable) != KL_OK || dt != KL_F32) continue;
        for (int k = 0; k < nd; k++) numel *= d[k];
        size_t bytes = (size_t)numel * sizeof(float);
        if (bytes > m->buf_cap) {
            float *b = realloc(m->buf, bytes);
            if (!b) continue;
            m->buf = b, m->buf_cap = bytes;
        }
        char tag[300];
        for (int g = 0; g < 1 + trainable && m->tb; g++) {
            /* gradients as the update saw them: the cycle's mean, unscaled */
            kl_status s = g ? kl_optim_grad_get(m->opt, i, m->buf, bytes) : kl_ctx_param_get(m->ctx, i, m->buf, bytes);
            if (s != KL_OK) continue;
            snprintf(tag, sizeof tag, "%s/%s", g ? "grads" : "params", name);
            if (tb_histogram(m->tb, tag, step, m->buf, numel) != KL_OK) tb_failed(m);
        }
    }
}

void train_monitor_step(train_monitor *m, int64_t step, int64_t samples, double loss, double acc, double lr)
{
    m->step = step;
    m->samples += samples;
    telemetry_out(m, step);
    scalar(m, "train/loss", step, MON_LOSS, loss);
    scalar(m, "train/accuracy", step, MON_ACC, acc);
    scalar(m, "train/lr", step, MON_LOSS, lr);
    if (m->o.histogram_every && step % m->o.histogram_every == 0) histograms(m, step);
}

void train_monitor_throughput(train_monitor *m, int64_t step, double samples_per_s)
{
    scalar(m, "train/samples_per_s", step, MON_RATE, samples_per_s);
    flush(m);
}

void train_monitor_epoch(train_monitor *m, int64_t epoch, int64_t step, int64_t samples, double loss, double acc,
                         int has_val, double val_loss, double val_acc, double lr)
{
    scalar(m, "epoch/loss", step, MON_LOSS, loss);
    scalar(m, "epoch/accuracy", step, MON_ACC, acc);
    scalar(m, "epoch/lr", step, MON_LOSS, lr);
    if (has_val) {
        scalar(m, "val/loss", step, MON_LOSS, val_loss);
        scalar(m, "val/accuracy", step, MON_ACC, val_acc);
    }
    if (!m->o.histogram_every) histograms(m, step);
    telemetry_out(m, step); /* validation's samples, before the ring wraps */
    energy_out(m, "epoch", epoch, step, samples);
    m->epoch = epoch;
    flush(m);
}

void train_monitor_test(train_monitor *m, double loss, double acc)
{
    scalar(m, "test/loss", m->step, MON_LOSS, loss);
    scalar(m, "test/accuracy", m->step, MON_ACC, acc);
    flush(m);
}

void train_monitor_end(train_monitor *m)
{
    if (m->step > 0) histograms(m, m->step);
    if (m->tel) {
        telemetry_sample s;
        telemetry_sample_now(m->tel, &s);
        telemetry_out(m, m->step);
        energy_out(m, "run", m->epoch, m->step, m->samples);
    }
    fflush(m->metrics);
    flush(m);
}

void train_monitor_progress(const train_monitor *m, char *buf, size_t cap)
{
    const telemetry_sample *t = &m->last;
    if (!cap) return;
    buf[0] = 0;
    if (!m->tel || t->wall_s <= 0) return;
    int n = t->have & TEL_CPU ? snprintf(buf, cap, "  cpu %.1f cores  rss %.0f MB", t->cpu_util, t->rss_mb)
                              : snprintf(buf, cap, "  rss %.0f MB", t->rss_mb); /* none measured yet */
    if ((t->have & (TEL_UTIL | TEL_MEM | TEL_POWER)) && n > 0 && (size_t)n < cap) /* have: GPU values only */
        n += snprintf(buf + n, cap - (size_t)n, "  gpu");
    if ((t->have & TEL_UTIL) && n > 0 && (size_t)n < cap) n += snprintf(buf + n, cap - (size_t)n, " %.0f%%", t->gpu_util);
    if ((t->have & TEL_MEM) && n > 0 && (size_t)n < cap)
        n += snprintf(buf + n, cap - (size_t)n, " %.1f GB", t->gpu_mem_mb / 1024);
    if ((t->have & TEL_POWER) && n > 0 && (size_t)n < cap) snprintf(buf + n, cap - (size_t)n, " %.0f W", t->gpu_power_w);
}
