/* kiln: neural-network training in C. Include this for the whole API. */
#ifndef KILN_KILN_H
#define KILN_KILN_H
#include "kiln/status.h"
#include "kiln/tensor.h"
#include "kiln/graph.h"
#include "kiln/ops.h"
#include "kiln/optim.h"
#include "kiln/data.h"
#include "kiln/io.h"
#include "kiln/text.h"
#endif
