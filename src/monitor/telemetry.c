/* Telemetry: a sampling thread, a small ring of samples for the training
 * thread to drain, and NVML loaded at run time. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dlfcn, pthread_condattr_setclock */
#endif
#include "monitor/telemetry.h"
#include "core/error.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define RING TELEMETRY_RING

/* The few NVML declarations used (nvml.h is not needed to build). */
typedef struct nvml_device *nvml_dev;
typedef struct { unsigned int gpu, memory; } nvml_util;
typedef struct { unsigned long long total, free, used; } nvml_mem;
enum { NVML_TEMPERATURE_GPU = 0, NVML_CLOCK_SM = 1, NVML_CLOCK_MEM = 2 };

typedef struct {
    void *lib;
    nvml_dev dev;
    int (*init)(void);
    int (*shutdown)(void);
    int (*handle)(unsigned int, nvml_dev *);
    int (*handle_pci)(const char *, nvml_dev *); /* optional */
    int (*util)(nvml_dev, nvml_util *);
    int (*mem)(nvml_dev, nvml_mem *);
    int (*power)(nvml_dev, unsigned int *);                /* mW */
    int (*energy)(nvml_dev, unsigned long long *);         /* mJ since driver load */
    int (*temp)(nvml_dev, int, unsigned int *);
    int (*clock)(nvml_dev, int, unsigned int *);           /* MHz */
    int has_counter;
    unsigned long long energy0_mj;
} nvml;

struct telemetry {
    pthread_t th;
    int running;
    pthread_mutex_t mu; /* ring, stop */
    pthread_cond_t cv;
    int stop;
    telemetry_sample ring[RING];
    int head, count;
    pthread_mutex_t smu; /* sampling state below */
    double interval, t0, last_cpu, last_wall;
    double integral_j, last_power_w, last_power_t;
    int64_t power_n; /* power readings integrated */
    nvml nv;
};

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Loads NVML; on failure says why (once per process) and leaves lib NULL. */
static void nvml_load(nvml *nv, int index, const char *pci, FILE *log)
{
    static int said;
    const char *path = getenv("KILN_NVML_LIB");
    char why[512] = "";
    if (!path || !*path) path = "libnvidia-ml.so.1";
    nv->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!nv->lib) {
        const char *e = dlerror();
        snprintf(why, sizeof why, "%s", e ? e : path);
    } else {
        static const char *const names[] = {"nvmlInit_v2", "nvmlShutdown", "nvmlDeviceGetHandleByIndex_v2",
                                            "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo",
                                            "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEnergyConsumption",
                                            "nvmlDeviceGetTemperature", "nvmlDeviceGetClockInfo"};
        void *fn[9];
        for (int i = 0; i < 9 && !why[0]; i++)
            if (!(fn[i] = dlsym(nv->lib, names[i]))) snprintf(why, sizeof why, "%s: no symbol %s", path, names[i]);
        if (!why[0]) {
            /* object-to-function pointer conversions through memcpy (ISO C) */
            memcpy(&nv->init, &fn[0], sizeof fn[0]);
            memcpy(&nv->shutdown, &fn[1], sizeof fn[1]);
            memcpy(&nv->handle, &fn[2], sizeof fn[2]);
            memcpy(&nv->util, &fn[3], sizeof fn[3]);
            memcpy(&nv->mem, &fn[4], sizeof fn[4]);
            memcpy(&nv->power, &fn[5], sizeof fn[5]);
            memcpy(&nv->energy, &fn[6], sizeof fn[6]);
            memcpy(&nv->temp, &fn[7], sizeof fn[7]);
            memcpy(&nv->clock, &fn[8], sizeof fn[8]);
            void *bypci = dlsym(nv->lib, "nvmlDeviceGetHandleByPciBusId_v2");
            memcpy(&nv->handle_pci, &bypci, sizeof bypci);
            int rc = nv->init();
            if (rc != 0) snprintf(why, sizeof why, "nvmlInit_v2 failed (NVML error %d)", rc);
            else {
                if (pci && pci[0] && nv->handle_pci) { /* CUDA's and NVML's numberings may differ: not by index */
                    if ((rc = nv->handle_pci(pci, &nv->dev)) != 0)
                        snprintf(why, sizeof why, "no NVML device at PCI address %s (NVML error %d)", pci, rc);
                } else if ((rc = nv->handle((unsigned)index, &nv->dev)) != 0)
                    snprintf(why, sizeof why, "no NVML device %d (NVML error %d)", index, rc);
                if (rc != 0) nv->shutdown();
            }
        }
        if (why[0]) {
            dlclose(nv->lib);
            nv->lib = NULL;
        }
    }
    if (!nv->lib) {
        if (!said) fprintf(log ? log : stderr, "telemetry: no GPU telemetry (%s)\n", why);
        said = 1;
        return;
    }
    nv->has_counter = nv->energy(nv->dev, &nv->energy0_mj) == 0;
}

void telemetry_sample_now(telemetry *t, telemetry_sample *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_lock(&t->smu);
    double now = mono();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    s->wall_s = now - t->t0;
    s->cpu_s = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
               1e-6 * (double)ru.ru_stime.tv_usec;
    /* over a span this short (the first sample, just after the start; one
     * taken at the run's end) CPU time measures its own granularity, not
     * load: no cpu_util, and the next sample's covers this span too */
    double min_span = 0.1 * t->interval < 0.05 ? 0.1 * t->interval : 0.05;
    if (now - t->last_wall >= min_span) {
        s->cpu_util = (s->cpu_s - t->last_cpu) / (now - t->last_wall);
        s->have |= TEL_CPU;
        t->last_cpu = s->cpu_s, t->last_wall = now;
    }
    s->rss_peak_mb = (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
    FILE *f = fopen("/proc/self/statm", "r");
    long pages_total, pages_res;
    if (f && fscanf(f, "%ld %ld", &pages_total, &pages_res) == 2)
        s->rss_mb = (double)pages_res * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
    if (f) fclose(f);
    if (s->rss_mb > s->rss_peak_mb) s->rss_peak_mb = s->rss_mb; /* ru_maxrss lags statm: a peak is at least now */
    nvml *nv = &t->nv;
    if (nv->lib) {
        nvml_util u;
        nvml_mem m;
        unsigned int v;
        unsigned long long e;
        s->gpu = 1;
        if (nv->util(nv->dev, &u) == 0) s->gpu_util = u.gpu, s->gpu_mem_util = u.memory, s->have |= TEL_UTIL;
        if (nv->mem(nv->dev, &m) == 0)
            s->gpu_mem_mb = (double)m.used / 1048576.0, s->gpu_mem_total_mb = (double)m.total / 1048576.0, s->have |= TEL_MEM;
        if (nv->power(nv->dev, &v) == 0) {
            double w = v / 1000.0;
            if (t->power_n++ > 0) t->integral_j += 0.5 * (w + t->last_power_w) * (now - t->last_power_t);
            t->last_power_w = w, t->last_power_t = now;
            s->gpu_power_w = w, s->have |= TEL_POWER;
        }
        if (nv->temp(nv->dev, NVML_TEMPERATURE_GPU, &v) == 0) s->gpu_temp_c = v, s->have |= TEL_TEMP;
        if (nv->clock(nv->dev, NVML_CLOCK_SM, &v) == 0) s->gpu_sm_mhz = v, s->have |= TEL_SM;
        if (nv->clock(nv->dev, NVML_CLOCK_MEM, &v) == 0) s->gpu_mem_mhz = v, s->have |= TEL_MEMCLK;
        if (nv->has_counter && nv->energy(nv->dev, &e) == 0)
            s->gpu_energy_j = (double)(e - nv->energy0_mj) / 1000.0, s->have |= TEL_ENERGY;
        else if (!nv->has_counter && t->power_n > 1) s->gpu_energy_j = t->integral_j, s->have |= TEL_ENERGY;
    }
    pthread_mutex_unlock(&t->smu);
    pthread_mutex_lock(&t->mu);
    t->ring[t->head] = *s;
    t->head = (t->head + 1) % RING;
    if (t->count < RING) t->count++;
    pthread_mutex_unlock(&t->mu);
}

static void *run(void *arg)
{
    telemetry *t = arg;
    telemetry_sample s;
    double next = mono();
    pthread_mutex_lock(&t->mu);
    while (!t->stop) {
        pthread_mutex_unlock(&t->mu);
        telemetry_sample_now(t, &s);
        next += t->interval;
        double now = mono();
        if (next < now) next = now + t->interval; /* fell behind (suspended): no burst of samples */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double wait = next - now, secs = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec + wait;
        ts.tv_sec = (time_t)secs;
        ts.tv_nsec = (long)((secs - (double)ts.tv_sec) * 1e9);
        pthread_mutex_lock(&t->mu);
        while (!t->stop && pthread_cond_timedwait(&t->cv, &t->mu, &ts) == 0) {
        }
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

kl_status telemetry_start(const telemetry_opts *o, telemetry **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "telemetry_start: out is NULL");
    *out = NULL;
    telemetry *t = kl_calloc(1, sizeof *t);
    if (!t) return KL_ENOMEM;
    t->interval = o && o->interval_s > 0 ? o->interval_s : 1.0;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&t->mu, NULL);
    pthread_mutex_init(&t->smu, NULL);
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    nvml_load(&t->nv, o ? o->gpu_index : 0, o ? o->pci_bus_id : NULL, o ? o->log : NULL);
    /* times count from here, with the energy counter's baseline: nvmlInit
     * can take seconds (no persistence mode), and no energy covers them */
    t->t0 = t->last_wall = mono();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    t->last_cpu = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
                  1e-6 * (double)ru.ru_stime.tv_usec;
    int rc = pthread_create(&t->th, NULL, run, t);
    if (rc != 0) {
        telemetry_stop(t);
        return kl_fail(KL_EIO, "telemetry: cannot start the sampling thread: %s", strerror(rc));
    }
    t->running = 1;
    *out = t;
    return KL_OK;
}

void telemetry_stop(telemetry *t)
{
    if (!t) return;
    if (t->running) {
        pthread_mutex_lock(&t->mu);
        t->stop = 1;
        pthread_cond_signal(&t->cv);
        pthread_mutex_unlock(&t->mu);
        pthread_join(t->th, NULL);
    }
    if (t->nv.lib) {
        t->nv.shutdown();
        dlclose(t->nv.lib);
    }
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    pthread_mutex_destroy(&t->smu);
    kl_free(t);
}

int telemetry_has_gpu(const telemetry *t) { return t && t->nv.lib != NULL; }

int telemetry_drain(telemetry *t, telemetry_sample *out, int max)
{
    pthread_mutex_lock(&t->mu);
    int n = t->count < max ? t->count : max;
    for (int i = 0; i < n; i++) out[i] = t->ring[(t->head - n + i + RING) % RING]; /* the newest n */
    t->count = 0;
    pthread_mutex_unlock(&t->mu);
    return n;
}

double telemetry_energy(telemetry *t, const char **source)
{
    const char *src = "none";
    double j = 0;
    pthread_mutex_lock(&t->smu);
    nvml *nv = &t->nv;
    unsigned long long e;
    unsigned int mw;
    if (nv->lib && nv->has_counter && nv->energy(nv->dev, &e) == 0) {
        src = "nvml_energy_counter";
        j = (double)(e - nv->energy0_mj) / 1000.0;
    } else if (nv->lib && !nv->has_counter) {
        double now = mono();
        int measured = t->power_n > 1; /* the integral covers an interval, or the reading now closes one */
        j = t->integral_j;
        if (t->power_n > 0 && nv->power(nv->dev, &mw) == 0) {
            j += 0.5 * (mw / 1000.0 + t->last_power_w) * (now - t->last_power_t);
            measured = 1;
        }
        if (measured) src = "nvml_power_integral";
        else j = 0;
    }
    pthread_mutex_unlock(&t->smu);
    if (source) *source = src;
    return j;
}
