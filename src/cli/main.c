/* The kiln command. */
#include "cli/cli.h"
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: kiln <command> [options]\n\n"
               "commands:\n"
               "  train [CONFIG.yaml]   train a model (default: the reference CNN on Fashion-MNIST)\n"
               "  eval CKPT             loss, accuracy (and --confusion) of a checkpoint on a dataset\n"
               "  predict CKPT INPUT... top-k classes for PNG/IDX images or CSV rows\n"
               "  inspect FILE          what a checkpoint, safetensors or IDX file holds\n"
               "  --version             print the version\n"
               "  --help                this message\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "train")) return kl_cmd_train(argc - 2, argv + 2);
    if (!strcmp(argv[1], "inspect")) return kl_cmd_inspect(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return kl_cmd_eval(argc - 2, argv + 2);
    if (!strcmp(argv[1], "predict")) return kl_cmd_predict(argc - 2, argv + 2);
    if (!strcmp(argv[1], "--version")) {
        printf("kiln %s\n", KILN_VERSION);
        return 0;
    }
    fprintf(stderr, "kiln: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
