/* The kiln command's subcommands and shared helpers. */
#ifndef KL_CLI_H
#define KL_CLI_H

#include "kiln/kiln.h"

int kl_cmd_train(int argc, char **argv);
int kl_cmd_inspect(int argc, char **argv);
int kl_cmd_eval(int argc, char **argv);
int kl_cmd_predict(int argc, char **argv);
int kl_cmd_export(int argc, char **argv); /* export.c: ONNX */
int kl_cmd_generate(int argc, char **argv); /* generate.c: sampling from language models */
int kl_cmd_devices(int argc, char **argv); /* devices.c */
/* monitoring hooks: report.c, plan.c */
int kl_cmd_report(int argc, char **argv);
int kl_cmd_plan(int argc, char **argv);
int kl_cmd_bench(int argc, char **argv); /* bench.c: inference latency and throughput */

/* The built-in default config: the reference CNN on Fashion-MNIST. */
extern const char kl_default_config[];

#endif
