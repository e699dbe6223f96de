/* System telemetry sampled by a background thread: process CPU time and
 * memory, and (when NVML can be loaded) GPU utilisation, memory, power,
 * temperature, clocks and energy.
 *
 * NVML is loaded with dlopen("libnvidia-ml.so.1") (or $KILN_NVML_LIB), so
 * kiln neither links nor needs the NVIDIA driver: without it the GPU fields
 * stay empty and "no GPU telemetry" is printed once.
 *
 *   telemetry_opts o = {.interval_s = 1.0};
 *   telemetry *t;
 *   telemetry_start(&o, &t);
 *   ...   telemetry_sample s[16];
 *   int n = telemetry_drain(t, s, 16);   // samples since the last drain
 *   telemetry_stop(t);
 */
#ifndef KL_MONITOR_TELEMETRY_H
#define KL_MONITOR_TELEMETRY_H

#include <stdio.h>
#include "kiln/status.h"

typedef struct telemetry telemetry;

/* Samples kept for telemetry_drain: a drain of this many loses none. */
#define TELEMETRY_RING 64

/* telemetry_sample.have: the GPU values NVML gave (a call can fail or be
 * unsupported, e.g. utilisation under MIG: that value is absent, not 0),
 * and whether cpu_util was measured */
enum {
    TEL_UTIL = 1,   /* gpu_util, gpu_mem_util */
    TEL_MEM = 2,    /* gpu_mem_mb, gpu_mem_total_mb */
    TEL_POWER = 4,  /* gpu_power_w */
    TEL_TEMP = 8,   /* gpu_temp_c */
    TEL_SM = 16,    /* gpu_sm_mhz */
    TEL_MEMCLK = 32, /* gpu_mem_mhz */
    TEL_ENERGY = 64, /* gpu_energy_j */
    TEL_CPU = 128    /* cpu_util: the sample spans at least 10% of the interval (at most 50 ms needed) */
};

typedef struct telemetry_sample {
    double wall_s;                 /* seconds since telemetry_start */
    double cpu_s;                  /* process user + system CPU time */
    double cpu_util;               /* with TEL_CPU: cores busy since the previous such sample (2.0 = two cores) */
    double rss_mb, rss_peak_mb;    /* resident memory now, and its peak (MiB; at least rss_mb) */
    int gpu;                       /* 1: NVML is loaded; which gpu_* fields hold values: have */
    unsigned have;                 /* TEL_* bits */
    double gpu_util, gpu_mem_util; /* percent of time busy (kernels, memory) */
    double gpu_mem_mb, gpu_mem_total_mb;
    double gpu_power_w, gpu_temp_c, gpu_sm_mhz, gpu_mem_mhz;
    double gpu_energy_j;           /* since telemetry_start (see telemetry_energy) */
} telemetry_sample;

typedef struct telemetry_opts {
    double interval_s; /* sampling period; <= 0 means 1 s */
    int gpu_index;     /* NVML device index, used when pci_bus_id is empty (or NVML cannot look it up) */
    char pci_bus_id[32]; /* the GPU's PCI address ("0000:3b:00.0"), as CUDA reports it */
    FILE *log;         /* where "no GPU telemetry" goes (NULL: stderr) */
} telemetry_opts;

/* Starts the sampling thread (the first sample is taken at once). A missing
 * or unusable NVML is not an error. Fails only on thread or memory errors. */
kl_status telemetry_start(const telemetry_opts *o, telemetry **out);
/* Stops and joins the thread, unloads NVML; NULL: no-op. */
void telemetry_stop(telemetry *t);
/* 1 when GPU values are sampled. */
int telemetry_has_gpu(const telemetry *t);
/* Copies the newest (up to max) samples taken since the previous drain,
 * oldest first; returns how many. Older undrained samples are dropped. */
int telemetry_drain(telemetry *t, telemetry_sample *out, int max);
/* Takes a sample now (also handed out by the next drain). */
void telemetry_sample_now(telemetry *t, telemetry_sample *out);
/* GPU energy in joules since start; *source (may be NULL) is
 * "nvml_energy_counter", "nvml_power_integral" (the counter unsupported:
 * power read at each sample, integrated) or "none" (no measurement yet:
 * returns 0). */
double telemetry_energy(telemetry *t, const char **source);

#endif
