/* kiln devices: the CPU and the CUDA devices this build can use. */
#include "cli/cli.h"
#include "backends/backend.h"

#include <stdio.h>
#include <string.h>

static void devices_usage(FILE *f)
{
    fprintf(f, "usage: kiln devices\n\n"
               "Lists the CPU and each CUDA device: name, compute capability, SMs, total and\n"
               "free memory, driver and runtime versions. Train on one with --device cuda:N.\n");
}

int kl_cmd_devices(int argc, char **argv)
{
    if (argc > 0 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
        devices_usage(stdout);
        return 0;
    }
    if (argc > 0) {
        fprintf(stderr, "kiln devices: unexpected argument '%s'\n", argv[0]);
        devices_usage(stderr);
        return 2;
    }
    printf("cpu: %d cores\n", kl_cpu_cores());
    int n = 0;
    if (kl_cuda_device_count(&n) != KL_OK) { /* CPU-only build, or no driver */
        printf("cuda: %s\n", kl_last_error());
        return 0;
    }
    if (n == 0) {
        printf("cuda: no CUDA device found\n");
        return 0;
    }
    const double gib = 1024.0 * 1024.0 * 1024.0;
    for (int i = 0; i < n; i++) {
        kl_cuda_device_info d;
        if (kl_cuda_device_info_get(i, &d) != KL_OK) {
            printf("cuda:%d: %s\n", i, kl_last_error());
            return 1;
        }
        printf("cuda:%d: %s, compute capability %d.%d, %d SMs, %.1f GiB (%.1f GiB free), driver %d.%d, runtime %d.%d\n",
               i, d.name, d.major, d.minor, d.sm_count, (double)d.total_bytes / gib, (double)d.free_bytes / gib,
               d.driver_version / 1000, d.driver_version % 1000 / 10, d.runtime_version / 1000,
               d.runtime_version % 1000 / 10);
        if (!d.usable && kl_cuda_available(i) != KL_OK) printf("  not usable: %s\n", kl_last_error());
    }
    printf("cuda convolutions: %s\n", kl_cuda_conv_engine());
    return 0;
}
