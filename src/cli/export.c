/* kiln export: a trained model as an ONNX file. */
#include "cli/cli.h"
#include "cli/ckpt_open.h"

#include <stdio.h>
#include <string.h>

int kl_cmd_export(int argc, char **argv)
{
    const char *ckpt = NULL, *onnx = NULL;
    int external = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: kiln export CKPT --onnx FILE [--external-data]\n\n"
                   "Writes the checkpoint's model (or a run directory's latest) as an ONNX model (opset 17):\n"
                   "input \"input\" [batch, sample shape], raw samples as kiln predict takes them (the\n"
                   "run's normalisation is part of the model); output \"logits\" [batch, classes].\n"
                   "Language models take int32 ids [batch, seq] (vocab.txt's order) and give logits\n"
                   "[batch, seq, vocab]. Every layer type exports; dropout is left out and\n"
                   "batchnorm uses its running statistics (inference).\n"
                   "--external-data: the weights go to FILE.data beside FILE (ONNX external\n"
                   "data); a model past protobuf's 2 GiB is written that way anyway.\n");
            return 0;
        }
        if (!strcmp(argv[i], "--external-data")) external = 1;
        else if (!strcmp(argv[i], "--onnx")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kiln export: --onnx needs a FILE\n");
                return 2;
            }
            onnx = argv[++i];
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "kiln export: unknown option '%s' (see kiln export --help)\n", argv[i]);
            return 2;
        } else if (!ckpt) ckpt = argv[i];
        else {
            fprintf(stderr, "kiln export: one checkpoint, got '%s' and '%s'\n", ckpt, argv[i]);
            return 2;
        }
    }
    if (!ckpt || !onnx) {
        fprintf(stderr, "kiln export: usage: kiln export CKPT --onnx FILE\n");
        return 2;
    }
    loaded l = {0};
    kl_status s = open_ckpt(ckpt, NULL, 0, NULL, &l);
    if (s == KL_OK) {
        kl_onnx_opts o = {.normalize = l.o.normalize, .mean = l.o.mean, .std = l.o.std, .external = external};
        s = kl_model_export_onnx(l.model, l.ctx, &o, onnx);
    }
    if (s == KL_OK) printf("wrote %s (ONNX opset 17): %lld parameters\n", onnx, (long long)kl_model_param_count(l.model));
    else fprintf(stderr, "kiln export: %s\n", kl_last_error());
    loaded_free(&l);
    return s == KL_OK ? 0 : 1;
}
