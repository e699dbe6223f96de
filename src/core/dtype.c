/* dtype and device names, shape formatting. */
#include "kiln/tensor.h"
#include "core/error.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const struct { const char *name; size_t size; const char *alias[3]; } dtypes[KL_DTYPE_COUNT] = {
    [KL_F32] = {"f32", 4, {"float32", "float", NULL}},
    [KL_F16] = {"f16", 2, {"float16", "half", NULL}},
    [KL_BF16] = {"bf16", 2, {"bfloat16", NULL, NULL}},
    [KL_I32] = {"i32", 4, {"int32", NULL, NULL}},
    [KL_U8] = {"u8", 1, {"uint8", NULL, NULL}},
    [KL_F64] = {"f64", 8, {"float64", "double", NULL}},
    [KL_I64] = {"i64", 8, {"int64", NULL, NULL}},
};

size_t kl_dtype_size(kl_dtype dt)
{
    return (unsigned)dt < KL_DTYPE_COUNT ? dtypes[dt].size : 0;
}

const char *kl_dtype_name(kl_dtype dt)
{
    return (unsigned)dt < KL_DTYPE_COUNT ? dtypes[dt].name : "?";
}

kl_status kl_dtype_parse(const char *s, kl_dtype *out)
{
    if (!s || !out) return kl_fail(KL_EMISUSE, "kl_dtype_parse: null argument");
    for (int i = 0; i < KL_DTYPE_COUNT; i++) {
        if (!strcasecmp(s, dtypes[i].name)) { *out = (kl_dtype)i; return KL_OK; }
        for (int a = 0; a < 3 && dtypes[i].alias[a]; a++)
            if (!strcasecmp(s, dtypes[i].alias[a])) { *out = (kl_dtype)i; return KL_OK; }
    }
    char names[64] = "";
    for (int i = 0; i < KL_DTYPE_COUNT; i++) /* the list is the table's */
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", dtypes[i].name);
    return kl_fail(KL_EINVAL, "unknown dtype '%s' (expected one of %s)", s, names);
}

kl_status kl_device_parse(const char *s, kl_device *out)
{
    if (!s || !out) return kl_fail(KL_EMISUSE, "kl_device_parse: null argument");
    if (!strcmp(s, "cpu")) { *out = (kl_device){KL_DEVICE_CPU, 0}; return KL_OK; }
    if (!strncmp(s, "cuda", 4)) {
        if (s[4] == 0) { *out = (kl_device){KL_DEVICE_CUDA, 0}; return KL_OK; }
        char *end;
        long idx = s[4] == ':' ? strtol(s + 5, &end, 10) : -1;
        if (s[4] == ':' && end != s + 5 && *end == 0 && idx >= 0 && idx < 1024) {
            *out = (kl_device){KL_DEVICE_CUDA, (int)idx};
            return KL_OK;
        }
    }
    return kl_fail(KL_EINVAL, "unknown device '%s' (expected cpu, cuda or cuda:N)", s);
}

char *kl_shape_str(char *buf, size_t n, int ndim, const int64_t *dims)
{
    size_t k = 0;
    if (n == 0) return buf;
    k += snprintf(buf + k, n - k, "[");
    for (int i = 0; i < ndim && k < n; i++)
        k += snprintf(buf + k, n - k, i ? ",%lld" : "%lld", (long long)dims[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    buf[n - 1] = 0;
    return buf;
}
