/* Telemetry without a GPU: CPU time and memory samples at the configured
 * interval, drain semantics, and an unloadable NVML ($KILN_NVML_LIB pointing
 * at a non-library) reported once and otherwise ignored. */
#include "testutil.h"
#include "monitor/telemetry.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static volatile double sink;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Uses `seconds` of CPU time, at least `wall` seconds of wall time, at most
 * 20 s (a loaded machine gives this process less than a core). */
static void burn(double seconds, double wall)
{
    double t = mono(), c = cpu_now(), x = 1;
    while ((cpu_now() - c < seconds || mono() - t < wall) && mono() - t < 20)
        for (int i = 0; i < 10000; i++) x = x * 1.0000001 + 1e-9;
    sink = x;
}

int main(void)
{
    char dir[] = "/tmp/kiln_tel_XXXXXX", fake[600], logp[600];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(fake, sizeof fake, "%s/not-a-library.so", dir);
    snprintf(logp, sizeof logp, "%s/log.txt", dir);
    FILE *f = fopen(fake, "w");
    CHECK(f != NULL);
    if (f) {
        fprintf(f, "this is not an ELF file\n");
        fclose(f);
    }
    setenv("KILN_NVML_LIB", fake, 1);
    FILE *log = fopen(logp, "w+");
    CHECK(log != NULL);

    telemetry *t = NULL;
    telemetry_opts o = {.interval_s = 0.05, .log = log};
    CHECK_OK(telemetry_start(&o, &t));
    CHECK(t != NULL && !telemetry_has_gpu(t));
    burn(0.3, 0.4);
    telemetry_sample s[64];
    int n = telemetry_drain(t, s, 64);
    CHECK(n >= 4 && n <= 64);
    for (int i = 1; i < n; i++) {
        CHECK(s[i].wall_s > s[i - 1].wall_s);
        CHECK(s[i].cpu_s >= s[i - 1].cpu_s);
        CHECK(s[i].rss_mb > 0 && s[i].rss_peak_mb >= s[i].rss_mb && !s[i].gpu);
    }
    /* the first sample, taken as the thread starts, spans too little time for
     * cpu_util (10% of the interval: 5 ms) unless the thread started late */
    CHECK(n > 0 && !!(s[0].have & TEL_CPU) == (s[0].wall_s >= 0.005));
    CHECK(n > 0 && s[0].rss_peak_mb >= s[0].rss_mb);
    /* the busy loop's CPU time shows (the first sample was taken at the start) */
    /* (a sample taken now, not the sampler's last one: under load the
     * sampler thread may have run well before the busy loop ended) */
    telemetry_sample fin;
    telemetry_sample_now(t, &fin);
    CHECK(n > 2 && fin.cpu_s - s[0].cpu_s > 0.2);
    double umax = 0;
    for (int i = 1; i < n; i++) umax = s[i].cpu_util > umax ? s[i].cpu_util : umax;
    CHECK(umax > 0.01 && umax < 4.0);
    CHECK(telemetry_drain(t, s, 64) <= 3); /* drained: only what came since */
    telemetry_sample now;
    telemetry_sample_now(t, &now);
    CHECK(now.wall_s >= s[n - 1].wall_s && now.wall_s >= 0.4 && now.cpu_s >= s[n - 1].cpu_s);
    n = telemetry_drain(t, s, 64);
    CHECK(n >= 1 && s[n - 1].wall_s == now.wall_s);
    /* a sample right after one that measured cpu_util spans microseconds: none */
    telemetry_sample a, b;
    do telemetry_sample_now(t, &a);
    while (!(a.have & TEL_CPU));
    telemetry_sample_now(t, &b);
    CHECK((a.have & TEL_CPU) && a.cpu_util >= 0 && (b.wall_s - a.wall_s >= 0.005 || !(b.have & TEL_CPU)));
    const char *src = NULL;
    CHECK(telemetry_energy(t, &src) == 0 && src && !strcmp(src, "none"));
    telemetry_stop(t);

    /* a second telemetry in the process says nothing more */
    CHECK_OK(telemetry_start(&o, &t));
    telemetry_stop(t);
    telemetry_stop(NULL);
    fflush(log);
    rewind(log);
    char text[2048] = "";
    size_t k = fread(text, 1, sizeof text - 1, log);
    text[k] = 0;
    fclose(log);
    CHECK(strstr(text, "telemetry: no GPU telemetry (") && strstr(text, "not-a-library.so"));
    CHECK(strstr(text, "no GPU") && !strstr(strstr(text, "no GPU") + 1, "no GPU")); /* once */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return kl_test_done("test_telemetry");
}
