/* Data layer: PNG folder datasets (one subfolder per class). */
#define _GNU_SOURCE
#include <ftw.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kiln/data.h"
#include "testutil.h"

static char g_dir[64];

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(p);
}

static const char *at(const char *rel)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, rel);
    return buf[k];
}

/* Writes a w x h PNG of color type ct; px holds rows of raw samples
 * (16-bit samples big-endian). Palette images use a 4-entry palette. */
static void write_png(const char *rel, int w, int h, int ct, int depth, const unsigned char *px)
{
    FILE *f = fopen(at(rel), "wb");
    CHECK(f != NULL);
    if (!f) return;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) {
        CHECK(!"libpng write failed");
        png_destroy_write_struct(&png, &info);
        fclose(f);
        return;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, w, h, depth, ct, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (ct == PNG_COLOR_TYPE_PALETTE) {
        png_color pal[4] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {10, 20, 30}};
        png_set_PLTE(png, info, pal, 4);
    }
    png_write_info(png, info);
    int ch = ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_PALETTE ? 1
           : ct == PNG_COLOR_TYPE_GRAY_ALPHA ? 2 : ct == PNG_COLOR_TYPE_RGB ? 3 : 4;
    size_t rowbytes = (size_t)w * ch * depth / 8;
    for (int r = 0; r < h; r++) png_write_row(png, (png_const_bytep)(px + r * rowbytes));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
}

static void write_text(const char *rel, const char *text, size_t n)
{
    FILE *f = fopen(at(rel), "wb");
    if (f) fwrite(text, 1, n, f), fclose(f);
}

static int near(float a, float b) { return a - b < 1e-6f && b - a < 1e-6f; }

static void test_gray(void)
{
    enum { W = 4, H = 3 };
    mkdir(at("g"), 0700), mkdir(at("g/dog"), 0700), mkdir(at("g/cat"), 0700);
    unsigned char a[W * H], b[W * H], c16[W * H * 2];
    for (int i = 0; i < W * H; i++) a[i] = (unsigned char)(i * 21 + 3), b[i] = (unsigned char)(250 - i * 7);
    for (int i = 0; i < W * H; i++) c16[2 * i] = (unsigned char)(i * 19), c16[2 * i + 1] = (unsigned char)(i * 33 + 1);
    write_png("g/cat/b.png", W, H, PNG_COLOR_TYPE_GRAY, 8, b);
    write_png("g/cat/a.png", W, H, PNG_COLOR_TYPE_GRAY, 8, a);
    write_png("g/dog/x16.png", W, H, PNG_COLOR_TYPE_GRAY, 16, c16);
    write_text("g/dog/.hidden", "junk", 4);   /* hidden: ignored */
    write_text("g/README", "not a class", 11); /* top-level file: ignored */
    kl_dataset *ds = NULL;
    CHECK_OK(kl_dataset_load_pngdir(at("g"), &ds));
    if (!ds) return;
    const int64_t *d = kl_dataset_sample_dims(ds);
    CHECK(kl_dataset_count(ds) == 3 && kl_dataset_sample_ndim(ds) == 3);
    CHECK(d[0] == 1 && d[1] == H && d[2] == W);
    CHECK(kl_dataset_classes(ds) == 2);
    CHECK(!strcmp(kl_dataset_class_name(ds, 0), "cat") && !strcmp(kl_dataset_class_name(ds, 1), "dog"));
    CHECK(kl_dataset_class_name(ds, 2) == NULL && kl_dataset_class_name(ds, -1) == NULL);
    const int32_t *y = kl_dataset_labels(ds);
    CHECK(y[0] == 0 && y[1] == 0 && y[2] == 1);
    const float *x = kl_dataset_features(ds);
    int ok = 1;
    for (int i = 0; i < W * H; i++) {
        ok &= near(x[i], a[i] / 255.0f);             /* cat/a.png first (sorted) */
        ok &= near(x[W * H + i], b[i] / 255.0f);
        ok &= near(x[2 * W * H + i], (c16[2 * i] << 8 | c16[2 * i + 1]) / 65535.0f);
    }
    CHECK(ok);
    /* Copies keep the class names. */
    kl_dataset *tr, *va;
    CHECK_OK(kl_dataset_split(ds, 1, 5, &tr, &va));
    CHECK(va && !strcmp(kl_dataset_class_name(va, 1), "dog") && kl_dataset_classes(va) == 2);
    kl_dataset_free(tr);
    kl_dataset_free(va);
    kl_dataset_free(ds);
}

static void test_color(void)
{
    enum { W = 2, H = 2 };
    mkdir(at("c"), 0700), mkdir(at("c/a"), 0700), mkdir(at("c/b"), 0700), mkdir(at("c/c"), 0700);
    unsigned char rgb[W * H * 3], rgba[W * H * 4], gray[W * H] = {0, 85, 170, 255};
    unsigned char pal[W * H] = {0, 1, 2, 3};
    for (int i = 0; i < W * H * 3; i++) rgb[i] = (unsigned char)(i * 20 + 5);
    for (int i = 0; i < W * H * 4; i++) rgba[i] = (unsigned char)(255 - i * 9);
    write_png("c/a/rgb.png", W, H, PNG_COLOR_TYPE_RGB, 8, rgb);
    write_png("c/b/rgba.png", W, H, PNG_COLOR_TYPE_RGBA, 8, rgba);
    write_png("c/b/gray.png", W, H, PNG_COLOR_TYPE_GRAY, 8, gray);
    write_png("c/c/pal.png", W, H, PNG_COLOR_TYPE_PALETTE, 8, pal);
    kl_dataset *ds = NULL;
    CHECK_OK(kl_dataset_load_pngdir(at("c"), &ds));
    if (!ds) return;
    const int64_t *d = kl_dataset_sample_dims(ds);
    CHECK(kl_dataset_count(ds) == 4 && d[0] == 3 && d[1] == H && d[2] == W);
    const float *x = kl_dataset_features(ds);
    const int32_t *y = kl_dataset_labels(ds);
    CHECK(y[0] == 0 && y[1] == 1 && y[2] == 1 && y[3] == 2);
    int ok = 1;
    enum { P = W * H };
    for (int p = 0; p < P; p++)
        for (int k = 0; k < 3; k++) {
            ok &= near(x[0 * 3 * P + k * P + p], rgb[p * 3 + k] / 255.0f);  /* CHW */
            ok &= near(x[1 * 3 * P + k * P + p], gray[p] / 255.0f);         /* b/gray.png */
            ok &= near(x[2 * 3 * P + k * P + p], rgba[p * 4 + k] / 255.0f); /* alpha dropped */
        }
    const float red[3] = {1, 0, 0}, navy[3] = {10 / 255.0f, 20 / 255.0f, 30 / 255.0f};
    for (int k = 0; k < 3; k++)
        ok &= near(x[3 * 3 * P + k * P + 1], red[k]) && near(x[3 * 3 * P + k * P + 3], navy[k]);
    CHECK(ok);
    kl_dataset_free(ds);
}

static void test_errors(void)
{
    kl_dataset *ds = (kl_dataset *)&ds;
    unsigned char px[5 * 3] = {0};
    mkdir(at("e1"), 0700), mkdir(at("e1/a"), 0700), mkdir(at("e1/b"), 0700);
    write_png("e1/a/one.png", 4, 3, PNG_COLOR_TYPE_GRAY, 8, px);
    write_png("e1/b/two.png", 5, 3, PNG_COLOR_TYPE_GRAY, 8, px);
    CHECK_ERR(kl_dataset_load_pngdir(at("e1"), &ds), KL_EFORMAT, "e1/b/two.png: 5x3 pixels, expected 4x3");
    CHECK(ds == NULL);
    remove(at("e1/b/two.png"));
    write_text("e1/b/notes.txt", "hello, not an image", 19);
    CHECK_ERR(kl_dataset_load_pngdir(at("e1"), &ds), KL_EFORMAT, "e1/b/notes.txt: not a PNG file");
    remove(at("e1/b/notes.txt"));
    /* A PNG cut short after its header. */
    FILE *f = fopen(at("e1/a/one.png"), "rb");
    unsigned char buf[256];
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f) fclose(f);
    write_text("e1/b/cut.png", (const char *)buf, n > 40 ? 40 : n);
    CHECK_ERR(kl_dataset_load_pngdir(at("e1"), &ds), KL_EFORMAT, "e1/b/cut.png: bad PNG");
    remove(at("e1/b/cut.png"));
    mkdir(at("e1/b/sub"), 0700);
    CHECK_ERR(kl_dataset_load_pngdir(at("e1"), &ds), KL_EFORMAT, "e1/b/sub: not a regular file");
    remove(at("e1/b/sub"));
    CHECK_OK(kl_dataset_load_pngdir(at("e1"), &ds)); /* an empty class keeps its id */
    CHECK(ds && kl_dataset_count(ds) == 1 && kl_dataset_classes(ds) == 2);
    kl_dataset_free(ds);
    mkdir(at("e2"), 0700);
    CHECK_ERR(kl_dataset_load_pngdir(at("e2"), &ds), KL_EFORMAT, "e2: no class subfolders");
    mkdir(at("e2/only"), 0700);
    CHECK_ERR(kl_dataset_load_pngdir(at("e2"), &ds), KL_EFORMAT, "e2: no images in 1 class folders");
    CHECK_ERR(kl_dataset_load_pngdir(at("nowhere"), &ds), KL_EIO, "nowhere: cannot open folder");
    CHECK(ds == NULL);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/kiln_png_XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_gray();
    test_color();
    test_errors();
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return kl_test_done("test_data_png");
}
