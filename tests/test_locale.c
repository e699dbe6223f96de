/* A program embedding kiln may set a locale whose decimal point is a comma:
 * CSV numbers, config floats and checkpoint metadata still read and write
 * as C text (core/cnum.h). The de_DE locale is built for the test with
 * localedef (Debian's locales package) into a temporary LOCPATH. */
#include "kiln/kiln.h"
#include "core/cnum.h"
#include "io/config.h"
#include "testutil.h"

#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    char dir[] = "/tmp/kiln_locale_XXXXXX", cmd[256];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(cmd, sizeof cmd, "localedef -i de_DE -f UTF-8 %s/de_DE.UTF-8 >/dev/null 2>&1", dir);
    CHECK(system(cmd) == 0);
    setenv("LOCPATH", dir, 1);
    CHECK(setlocale(LC_ALL, "de_DE.UTF-8") != NULL);
    CHECK(strtod("1,5", NULL) == 1.5); /* the locale is in force: the checks below mean something */

    const char *csv = "x1,x2,label\n1.5,2.25,0\n-3.5e-1,4.75,1\n";
    kl_dataset *ds;
    CHECK_OK(kl_dataset_parse_csv_mem(csv, strlen(csv), "data.csv", NULL, &ds));
    const float *f = kl_dataset_features(ds);
    CHECK(kl_dataset_count(ds) == 2 && f[0] == 1.5f && f[1] == 2.25f && f[2] == -0.35f && f[3] == 4.75f);
    kl_dataset_free(ds);

    const char *yaml = "optim: {lr: 1.5e-3, momentum: 0.9}\n";
    kl_cfg *c;
    double lr = 0, m = 0;
    CHECK_OK(kl_cfg_parse(yaml, strlen(yaml), "t.yaml", &c));
    kl_cfg_node *o = kl_cfg_get(kl_cfg_root(c), "optim");
    CHECK_OK(kl_cfg_float(o, "lr", 1, 0, &lr));
    CHECK_OK(kl_cfg_float(o, "momentum", 1, 0, &m));
    CHECK(lr == 1.5e-3 && m == 0.9);
    kl_cfg_free(c);

    char buf[64];
    CHECK(!strcmp(kl_cfg_fmt_double(buf, sizeof buf, 0.25), "0.25")); /* the config write-back */
    double x = 1.0 / 3; /* checkpoint metadata: hex floats, exact */
    kl_snprintf_c(buf, sizeof buf, "%a", x);
    CHECK(strchr(buf, '.') != NULL && kl_strtod(buf, NULL) == x);

    setlocale(LC_ALL, "C");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return kl_test_done("test_locale");
}
