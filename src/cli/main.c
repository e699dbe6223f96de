/* The kiln command. */
#include "cli/cli.h"
#include "cli/train_monitor.h" /* monitoring hook: kiln train flags */
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: kiln <command> [options]\n\n"
               "commands:\n"
               "  train [CONFIG.yaml]   train a model (default: the reference CNN on Fashion-MNIST)\n"
               "  eval CKPT             loss, accuracy (and --confusion) of a checkpoint on a dataset\n"
               "  predict CKPT INPUT... top-k classes for PNG/IDX images or CSV rows\n"
               "  export CKPT --onnx F  the model as an ONNX file\n"
               "  generate CKPT         sample text from a language model (--prompt, --tokens, --seed)\n"
               "  inspect FILE          what a checkpoint, safetensors or IDX file holds\n"
               "  devices               the CPU and the CUDA devices kiln can use\n"
               "  report RUN_DIR        summary table, report.md and plots of a training run\n"
               "  plan CONFIG           memory a training step needs, and the largest batch that fits\n"
               "  bench CKPT            inference latency (p50, p99) and throughput of a checkpoint\n"
               "  --version             print the version\n"
               "  --help                this message\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "train")) {
        /* monitoring hook: takes --no-tensorboard and --mem-limit out of argv */
        int n = argc - 2, rc = monitor_flags_take(&n, argv + 2);
        if (rc) return rc;
        rc = kl_cmd_train(n, argv + 2);
        if (g_monitor_flags.help) monitor_flags_usage(stdout);
        return rc;
    }
    if (!strcmp(argv[1], "inspect")) return kl_cmd_inspect(argc - 2, argv + 2);
    if (!strcmp(argv[1], "devices")) return kl_cmd_devices(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return kl_cmd_eval(argc - 2, argv + 2);
    if (!strcmp(argv[1], "predict")) return kl_cmd_predict(argc - 2, argv + 2);
    if (!strcmp(argv[1], "export")) return kl_cmd_export(argc - 2, argv + 2);
    if (!strcmp(argv[1], "generate")) return kl_cmd_generate(argc - 2, argv + 2); /* sequence models */
    if (!strcmp(argv[1], "report")) return kl_cmd_report(argc - 2, argv + 2); /* monitoring hook */
    if (!strcmp(argv[1], "plan")) return kl_cmd_plan(argc - 2, argv + 2);     /* monitoring hook */
    if (!strcmp(argv[1], "bench")) return kl_cmd_bench(argc - 2, argv + 2);   /* monitoring hook */
    if (!strcmp(argv[1], "--version")) {
        printf("kiln %s\n", KILN_VERSION);
        return 0;
    }
    fprintf(stderr, "kiln: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
