/* kiln inspect FILE: what a safetensors file, a checkpoint directory or an
 * IDX file holds. */
#include "cli/cli.h"
#include "kiln/data.h"
#include "kiln/io.h"
#include "io/checkpoint.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static int inspect_safetensors(const char *path)
{
    kl_st_file *f;
    if (kl_st_open(path, &f) != KL_OK) {
        fprintf(stderr, "kiln inspect: %s\n", kl_last_error());
        return 1;
    }
    static const char *meta[] = {"format", "step", "epoch", "batch", "optimizer", "kiln_version", NULL};
    printf("%s: safetensors, %d tensors\n", path, kl_st_count(f));
    for (int i = 0; meta[i]; i++)
        if (kl_st_meta(f, meta[i])) printf("  %s: %s\n", meta[i], kl_st_meta(f, meta[i]));
    for (int i = 0; i < kl_st_count(f); i++) {
        const char *name;
        kl_dtype dt;
        int nd;
        int64_t d[KL_MAX_DIMS];
        char sh[128];
        kl_st_info(f, i, &name, &dt, &nd, d);
        printf("  %-40s %-5s %s\n", name, kl_dtype_name(dt), kl_shape_str(sh, sizeof sh, nd, d));
    }
    kl_st_close(f);
    return 0;
}

/* By content, not name: IDX starts 00 00 <type> <ndim>; safetensors with an
 * 8-byte little-endian header length that fits the file, then '{'. */
static int looks_safetensors(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char b[9];
    size_t n = f ? fread(b, 1, sizeof b, f) : 0;
    long size = f && fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (f) fclose(f);
    if (n < 9 || b[8] != '{') return 0;
    unsigned long long len = 0;
    for (int i = 7; i >= 0; i--) len = len << 8 | b[i];
    return size >= 8 && len <= (unsigned long long)size - 8;
}

int kl_cmd_inspect(int argc, char **argv)
{
    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        printf("usage: kiln inspect FILE\n\nPrints what a checkpoint directory, a safetensors file or an IDX "
               "dataset file holds.\n");
        return argc < 1 ? 2 : 0;
    }
    const char *path = argv[0];
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "kiln inspect: %s: no such file or directory\n", path);
        return 1;
    }
    char dir[4096];
    if (S_ISDIR(st.st_mode) && kl_checkpoint_resolve(path, dir, sizeof dir) == KL_OK)
        path = dir; /* a run directory: its latest checkpoint, as the other commands take it */
    if (S_ISDIR(st.st_mode)) {
        char p[4200];
        int rc = 0;
        snprintf(p, sizeof p, "%s/model.safetensors", path);
        rc |= inspect_safetensors(p);
        snprintf(p, sizeof p, "%s/state.safetensors", path);
        rc |= inspect_safetensors(p);
        snprintf(p, sizeof p, "%s/config.yaml", path); /* the run's resolved config */
        FILE *f = fopen(p, "r");
        if (f) {
            char line[1024];
            printf("%s:\n", p);
            while (fgets(line, sizeof line, f)) printf("  %s", line);
            fclose(f);
        }
        return rc;
    }
    if (looks_safetensors(path)) return inspect_safetensors(path);
    kl_idx *a;
    if (kl_idx_load(path, &a) != KL_OK) {
        fprintf(stderr, "kiln inspect: %s\n", kl_last_error());
        return 1;
    }
    char sh[128];
    printf("%s: IDX, %s, %lld items of %lld values\n", path, kl_shape_str(sh, sizeof sh, kl_idx_ndim(a), kl_idx_dims(a)),
           (long long)kl_idx_dims(a)[0], (long long)(kl_idx_dims(a)[0] ? kl_idx_count(a) / kl_idx_dims(a)[0] : 0));
    kl_idx_free(a);
    return 0;
}
