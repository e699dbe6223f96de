#include "testutil.h"

int kl_test_failures;
int kl_test_checks;

int kl_test_done(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, kl_test_checks,
           kl_test_failures);
    return kl_test_failures ? 1 : 0;
}
