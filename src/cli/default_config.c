/* The reference CNN on Fashion-MNIST: what `kiln train` runs with no config
 * (the same text as models/cnn.yaml). */
#include "cli/cli.h"

const char kl_default_config[] =
    "name: cnn\n"
    "model:\n"
    "  input: [1, 28, 28]\n"
    "  layers:\n"
    "    - {type: conv2d, out: 32, kernel: 3, padding: 1}\n"
    "    - {type: relu}\n"
    "    - {type: maxpool2d, kernel: 2}\n"
    "    - {type: conv2d, out: 64, kernel: 3, padding: 1}\n"
    "    - {type: relu}\n"
    "    - {type: maxpool2d, kernel: 2}\n"
    "    - {type: flatten}\n"
    "    - {type: linear, out: 128}\n"
    "    - {type: relu}\n"
    "    - {type: linear, out: 10}\n"
    "data: {kind: fashion_mnist, normalize: true, val_split: 5000, shuffle: true}\n"
    "optim: {kind: adam, lr: 1.0e-3}\n"
    "schedule: {kind: constant}\n"
    "train: {epochs: 5, batch: 128, seed: 1, log_every: 50}\n";
