/* Located error messages and the typed getters of the config reader. */
#include "core/cnum.h"
#include "io/config_internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/error.h"

/* ---- messages ------------------------------------------------------------- */

kl_status cfg_vfail_loc(const char *origin, int line, int col,
                        const kl_cfg_node *path_node, kl_status s,
                        const char *fmt, va_list ap)
{
    char path[512], msg[1024], loc[512] = "";
    cfg_path_into(path_node, path, sizeof path);
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (origin && line > 0)
        snprintf(loc, sizeof loc, "%s:%d:%d: ", origin, line, col);
    else if (origin && *origin)
        snprintf(loc, sizeof loc, "%s: ", origin);
    if (path[0]) return kl_fail(s, "%s%s: %s", loc, path, msg);
    return kl_fail(s, "%s%s", loc, msg);
}

kl_status cfg_fail_loc(const char *origin, int line, int col,
                       const kl_cfg_node *path_node, kl_status s,
                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s = cfg_vfail_loc(origin, line, col, path_node, s, fmt, ap);
    va_end(ap);
    return s;
}

kl_status kl_cfg_fail(const kl_cfg_node *n, kl_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (n) s = cfg_vfail_loc(n->origin, n->line, n->col, n, s, fmt, ap);
    else s = cfg_vfail_loc(NULL, 0, 0, NULL, s, fmt, ap);
    va_end(ap);
    return s;
}

void cfg_quote(const char *t, char *buf, size_t cap)
{
    size_t o = 0, limit = cap > 12 ? cap - 8 : 0; /* room for ..." and NUL */
    if (cap < 3) {
        if (cap) buf[0] = 0;
        return;
    }
    buf[o++] = '"';
    for (; *t && o < limit; t++) {
        unsigned char ch = (unsigned char)*t;
        if (ch == '"' || ch == '\\') o += snprintf(buf + o, cap - o, "\\%c", ch);
        else if (ch == '\n') o += snprintf(buf + o, cap - o, "\\n");
        else if (ch < 0x20 || ch == 0x7F) o += snprintf(buf + o, cap - o, "\\x%02x", ch);
        else buf[o++] = (char)ch;
    }
    if (*t) {
        while (o > 1 && ((unsigned char)buf[o - 1] & 0xC0) == 0x80) o--;
        if (o > 1 && ((unsigned char)buf[o - 1] & 0xC0) == 0xC0) o--; /* whole chars */
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o++] = '"';
    buf[o] = 0;
}

/* "got ..." text for a value: its quoted text or its kind. */
static const char *got(const kl_cfg_node *v, char *buf, size_t cap)
{
    if (v->kind == KL_CFG_SCALAR) cfg_quote(v->text, buf, cap);
    else snprintf(buf, cap, "%s", kl_cfg_kind_name(v->kind));
    return buf;
}

/* Finds key's value. *v is NULL (and KL_OK) when absent or null and not
 * required; `what` names the expected value for a required null. */
static kl_status lookup(const kl_cfg_node *map, const char *key, int required,
                        const char *what, kl_cfg_node **v)
{
    *v = NULL;
    if (map && map->kind != KL_CFG_MAP && map->kind != KL_CFG_NULL) {
        char g[80];
        return kl_cfg_fail(map, KL_EINVAL, "expected a map (with key '%s'), got %s",
                           key, got(map, g, sizeof g));
    }
    kl_cfg_node *n = kl_cfg_get(map, key);
    if (n && n->kind == KL_CFG_NULL) {
        if (required) return kl_cfg_fail(n, KL_EINVAL, "expected %s, got null", what);
        return KL_OK;
    }
    if (!n) {
        if (required) return kl_cfg_fail(map, KL_EINVAL, "missing required key '%s'", key);
        return KL_OK;
    }
    *v = n;
    return KL_OK;
}

/* ---- scalar readers --------------------------------------------------------- */

static kl_status read_int(const kl_cfg_node *v, int64_t *out)
{
    char g[80];
    if (v->kind != KL_CFG_SCALAR)
        return kl_cfg_fail(v, KL_EINVAL, "expected an integer, got %s", got(v, g, sizeof g));
    const char *t = v->text, *p = t + (*t == '+' || *t == '-');
    int ok = *p != 0;
    for (; *p; p++) ok &= *p >= '0' && *p <= '9';
    if (!ok)
        return kl_cfg_fail(v, KL_EINVAL, "expected an integer, got %s", got(v, g, sizeof g));
    errno = 0;
    long long x = strtoll(t, NULL, 10);
    if (errno == ERANGE)
        return kl_cfg_fail(v, KL_EINVAL, "expected an integer, got %s (out of range)",
                           got(v, g, sizeof g));
    *out = x;
    return KL_OK;
}

static kl_status read_float(const kl_cfg_node *v, double *out)
{
    char g[80];
    if (v->kind != KL_CFG_SCALAR)
        return kl_cfg_fail(v, KL_EINVAL, "expected a number, got %s", got(v, g, sizeof g));
    const char *t = v->text, *u = t + (*t == '+' || *t == '-');
    if (!strcasecmp(u, ".inf") || !strcasecmp(u, ".nan"))
        return kl_cfg_fail(v, KL_EINVAL, "expected a finite number, got %s",
                           got(v, g, sizeof g));
    char *end;
    errno = 0;
    double x = *t && !isspace((unsigned char)*t) ? kl_strtod(t, &end) : 0;
    if (!*t || isspace((unsigned char)*t) || *end)
        return kl_cfg_fail(v, KL_EINVAL, "expected a number, got %s", got(v, g, sizeof g));
    if (!isfinite(x))
        return kl_cfg_fail(v, KL_EINVAL, "expected a finite number, got %s%s",
                           got(v, g, sizeof g), errno == ERANGE ? " (out of range)" : "");
    *out = x;
    return KL_OK;
}

kl_status kl_cfg_int(const kl_cfg_node *map, const char *key, int required,
                     int64_t def, int64_t *out)
{
    kl_cfg_node *v;
    *out = def;
    KL_TRY(lookup(map, key, required, "an integer", &v));
    return v ? read_int(v, out) : KL_OK;
}

kl_status kl_cfg_int_range(const kl_cfg_node *map, const char *key,
                           int required, int64_t def, int64_t lo, int64_t hi,
                           int64_t *out)
{
    kl_cfg_node *v;
    int64_t x;
    *out = def;
    KL_TRY(lookup(map, key, required, "an integer", &v));
    if (!v) return KL_OK;
    KL_TRY(read_int(v, &x));
    if (x < lo || x > hi)
        return kl_cfg_fail(v, KL_EINVAL, "expected an integer in [%lld, %lld], got %lld",
                           (long long)lo, (long long)hi, (long long)x);
    *out = x;
    return KL_OK;
}

kl_status kl_cfg_float(const kl_cfg_node *map, const char *key, int required,
                       double def, double *out)
{
    kl_cfg_node *v;
    *out = def;
    KL_TRY(lookup(map, key, required, "a number", &v));
    return v ? read_float(v, out) : KL_OK;
}

kl_status kl_cfg_bool(const kl_cfg_node *map, const char *key, int required,
                      int def, int *out)
{
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
    kl_cfg_node *v;
    char g[80];
    *out = def;
    KL_TRY(lookup(map, key, required, "a boolean", &v));
    if (!v) return KL_OK;
    for (int i = 0; i < 3 && v->kind == KL_CFG_SCALAR; i++) {
        if (!strcasecmp(v->text, yes[i])) return *out = 1, KL_OK;
        if (!strcasecmp(v->text, no[i])) return *out = 0, KL_OK;
    }
    return kl_cfg_fail(v, KL_EINVAL, "expected a boolean (true/false, yes/no, on/off), got %s",
                       got(v, g, sizeof g));
}

kl_status kl_cfg_string(const kl_cfg_node *map, const char *key, int required,
                        const char *def, const char **out)
{
    kl_cfg_node *v;
    char g[80];
    *out = def;
    KL_TRY(lookup(map, key, required, "a string", &v));
    if (!v) return KL_OK;
    if (v->kind != KL_CFG_SCALAR)
        return kl_cfg_fail(v, KL_EINVAL, "expected a string, got %s", got(v, g, sizeof g));
    *out = v->text;
    return KL_OK;
}

static kl_status get_kind(const kl_cfg_node *map, const char *key, int required,
                          kl_cfg_kind kind, kl_cfg_node **out)
{
    char g[80];
    const char *what = kl_cfg_kind_name(kind);
    KL_TRY(lookup(map, key, required, what, out));
    if (*out && (*out)->kind != kind) {
        kl_cfg_node *v = *out;
        *out = NULL;
        return kl_cfg_fail(v, KL_EINVAL, "expected %s, got %s", what, got(v, g, sizeof g));
    }
    return KL_OK;
}

kl_status kl_cfg_get_map(const kl_cfg_node *map, const char *key, int required,
                         kl_cfg_node **out)
{
    return get_kind(map, key, required, KL_CFG_MAP, out);
}

kl_status kl_cfg_get_seq(const kl_cfg_node *map, const char *key, int required,
                         kl_cfg_node **out)
{
    return get_kind(map, key, required, KL_CFG_SEQ, out);
}

/* ---- lists ------------------------------------------------------------------ */

static kl_status read_list(const kl_cfg_node *map, const char *key, int required,
                           int maxn, int is_int, int64_t *iout, double *fout, int *n)
{
    const char *what = is_int ? "integers" : "numbers";
    kl_cfg_node *v;
    char g[80];
    *n = 0;
    KL_TRY(lookup(map, key, required, is_int ? "a list of integers" : "a list of numbers", &v));
    if (!v) return KL_OK;
    if (v->kind == KL_CFG_MAP)
        return kl_cfg_fail(v, KL_EINVAL, "expected a list of %s, got %s", what,
                           got(v, g, sizeof g));
    int count = v->kind == KL_CFG_SEQ ? v->n : 1;
    if (count == 0) /* [] is no value: it must not stand for the default */
        return kl_cfg_fail(v, KL_EINVAL, "expected at least 1 %s, got an empty list",
                           is_int ? "integer" : "number");
    if (count > maxn)
        return kl_cfg_fail(v, KL_EINVAL, "expected at most %d %s, got %d", maxn,
                           what, count);
    for (int i = 0; i < count; i++) {
        const kl_cfg_node *item = v->kind == KL_CFG_SEQ ? v->items[i] : v;
        KL_TRY(is_int ? read_int(item, &iout[i]) : read_float(item, &fout[i]));
    }
    *n = count;
    return KL_OK;
}

kl_status kl_cfg_int_list(const kl_cfg_node *map, const char *key, int required,
                          int maxn, int64_t *out, int *n)
{
    return read_list(map, key, required, maxn, 1, out, NULL, n);
}

kl_status kl_cfg_float_list(const kl_cfg_node *map, const char *key, int required,
                            int maxn, double *out, int *n)
{
    return read_list(map, key, required, maxn, 0, NULL, out, n);
}

/* ---- names: enums and key checks -------------------------------------------- */

/* Edit distance (with transpositions), case-insensitive; big for long names. */
static int distance(const char *a, const char *b)
{
    enum { MAXN = 64 };
    size_t la = strlen(a), lb = strlen(b);
    if (la > MAXN || lb > MAXN) return 1 << 20;
    int d[MAXN + 1][MAXN + 1];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int m = d[i - 1][j - 1] + cost;
            if (d[i - 1][j] + 1 < m) m = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < m) m = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < m)
                m = d[i - 2][j - 2] + 1;
            d[i][j] = m;
        }
    return d[la][lb];
}

/* Writes "; did you mean 'x'?" for the closest name, or "" if none is close. */
static void suggest(const char *name, const char *const *names, char *buf, size_t cap)
{
    int best = -1, bestd = 1 << 20;
    buf[0] = 0;
    for (int i = 0; names[i]; i++) {
        int d = distance(name, names[i]);
        if (d < bestd) bestd = d, best = i;
    }
    if (best < 0) return;
    size_t la = strlen(name), lb = strlen(names[best]);
    size_t maxlen = la > lb ? la : lb;
    if ((size_t)bestd * 3 <= maxlen + 1)
        snprintf(buf, cap, "did you mean '%s'?", names[best]);
}

/* "a, b, c" into buf (truncated with "..."). */
static void join(const char *const *names, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; names[i] && o < cap; i++) {
        int w = snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", names[i]);
        if (w < 0 || (size_t)w >= cap - o) {
            if (cap > 4) memcpy(buf + cap - 4, "...", 4);
            return;
        }
        o += (size_t)w;
    }
}

kl_status kl_cfg_enum(const kl_cfg_node *map, const char *key, int required,
                      const char *const *choices, int def, int *out)
{
    kl_cfg_node *v;
    char g[80], list[512], hint[160];
    *out = def;
    KL_TRY(lookup(map, key, required, "a name", &v));
    if (!v) return KL_OK;
    for (int i = 0; v->kind == KL_CFG_SCALAR && choices[i]; i++)
        if (!strcmp(v->text, choices[i])) return *out = i, KL_OK;
    join(choices, list, sizeof list);
    hint[0] = 0;
    if (v->kind == KL_CFG_SCALAR) {
        char s[140];
        suggest(v->text, choices, s, sizeof s);
        if (s[0]) snprintf(hint, sizeof hint, " (%s)", s);
    }
    return kl_cfg_fail(v, KL_EINVAL, "expected one of: %s; got %s%s", list,
                       got(v, g, sizeof g), hint);
}

kl_status kl_cfg_check_keys(const kl_cfg_node *map, const char *const *allowed)
{
    char g[80], list[512], hint[160];
    if (!map || map->kind == KL_CFG_NULL) return KL_OK;
    if (map->kind != KL_CFG_MAP)
        return kl_cfg_fail(map, KL_EINVAL, "expected a map, got %s", got(map, g, sizeof g));
    for (int i = 0; i < map->n; i++) {
        const kl_cfg_entry *e = &map->entries[i];
        int j = 0;
        while (allowed[j] && strcmp(allowed[j], e->key)) j++;
        if (allowed[j]) continue;
        join(allowed, list, sizeof list);
        char s[140];
        suggest(e->key, allowed, s, sizeof s);
        snprintf(hint, sizeof hint, "%s%s", s[0] ? "; " : "", s);
        cfg_quote(e->key, g, sizeof g);
        g[strlen(g) - 1] = 0; /* drop quotes: shown as 'key' */
        return cfg_fail_loc(e->origin, e->line, e->col, map, KL_EINVAL,
                            "unknown key '%s' (expected one of: %s)%s", g + 1, list, hint);
    }
    return KL_OK;
}
