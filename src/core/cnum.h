/* Numbers in kiln's files (CSV, configs, checkpoint metadata) are C-locale
 * text: a program embedding kiln may have set a locale with a decimal
 * comma, and the same file must read and write the same there. */
#ifndef KL_CORE_CNUM_H
#define KL_CORE_CNUM_H

#include <stddef.h>

/* strtod in the C locale */
double kl_strtod(const char *s, char **end);
/* snprintf in the C locale */
int kl_snprintf_c(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
