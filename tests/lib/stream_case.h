/* One streamed-data case for the CPU and the GPU tests: `steps` batches put
 * into 3 slots of 8 rows (every 4th batch 5 rows, read by a second graph),
 * each step's softmax cross-entropy and correct count read back through
 * rings without waiting, so on a GPU the copies overlap the runs and every
 * slot is reused while earlier steps may still read it. */
#ifndef KL_TEST_STREAM_CASE_H
#define KL_TEST_STREAM_CASE_H

#include "kiln/kiln.h"

enum { STREAM_CASE_MAX_STEPS = 60 };

/* Runs the case on dev: loss[k] and correct[k] for each step k. */
kl_status stream_case_run(kl_device dev, int steps, double *loss, double *correct);
/* The same figures computed here on the host, in double. */
void stream_case_expect(int steps, double *loss, double *correct);

#endif
