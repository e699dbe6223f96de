/* Plots for kiln report: one gnuplot script on a pipe, the data inline as
 * datablocks, one PNG per figure. */
#include "cli/report.h"
#include "core/error.h"
#include "io/fileio.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    const series *s;
    const char *title, *style;
    int y2;
} curve;

/* Writes s as datablock $name (skipped when empty). */
static void block(FILE *g, const char *name, const series *s)
{
    if (!s->n) return;
    fprintf(g, "$%s << EOD\n", name);
    for (int i = 0; i < s->n; i++) fprintf(g, "%.9g %.9g\n", s->x[i], s->y[i]);
    fprintf(g, "EOD\n");
}

/* gnuplot single-quoted string: ' doubled. */
static void quoted(FILE *g, const char *s)
{
    fputc('\'', g);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', g);
        fputc(*s, g);
    }
    fputc('\'', g);
}

/* One figure from the non-empty curves; returns 1 if it was drawn. */
static int figure(FILE *g, const char *dir, const char *file, const char *title, const char *xlabel,
                  const char *ylabel, const char *y2label, const curve *c, int n)
{
    int any = 0;
    for (int i = 0; i < n; i++) any |= c[i].s->n > 0;
    if (!any) return 0;
    char out[4400];
    snprintf(out, sizeof out, "%s/plots/%s.png.tmp.%ld", dir, file, (long)getpid()); /* renamed in by keep() */
    fprintf(g, "reset\nset terminal pngcairo size 900,520 noenhanced font ',10'\nset output ");
    quoted(g, out);
    fprintf(g, "\nset title '%s'\nset xlabel '%s'\nset ylabel '%s'\nset grid\nset key outside bottom center horizontal\n",
            title, xlabel, ylabel);
    if (y2label) fprintf(g, "set y2label '%s'\nset y2tics\nset ytics nomirror\n", y2label);
    fprintf(g, "plot ");
    int first = 1;
    for (int i = 0; i < n; i++) {
        if (!c[i].s->n) continue;
        fprintf(g, "%s$%s using 1:2 axes x1y%d with %s title '%s'", first ? "" : ", ", c[i].s->title, c[i].y2 ? 2 : 1,
                c[i].style, c[i].title);
        first = 0;
    }
    fprintf(g, "\nunset output\n");
    return 1;
}

/* 1 if the PNG at p is whole: it ends with the IEND chunk (a full disk
 * leaves cairo's output cut short, or empty, without gnuplot failing). */
static int png_whole(const char *p)
{
    static const unsigned char iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
    unsigned char tail[12];
    FILE *f = fopen(p, "rb");
    if (!f) return 0;
    int ok = fseek(f, -12, SEEK_END) == 0 && fread(tail, 1, 12, f) == 12 && !memcmp(tail, iend, 12);
    fclose(f);
    return ok;
}

/* Moves plots/<name>.png.tmp.<pid> over plots/<name>.png if publish and
 * the PNG is whole, else removes it (an old plot stays; a torn one is
 * named on stderr); 1 if moved. */
static int keep(const char *plots, const char *name, int publish)
{
    char p[4300], t[4400];
    snprintf(p, sizeof p, "%s/%s.png", plots, name);
    snprintf(t, sizeof t, "%s.tmp.%ld", p, (long)getpid());
    if (!publish || !png_whole(t)) {
        if (publish)
            fprintf(stderr, "kiln report: warning: %s: not written (gnuplot's output is missing or cut short: disk "
                    "full?); any old plot left as it was\n", p);
        unlink(t);
        return 0;
    }
    if (rename(t, p) != 0) {
        fprintf(stderr, "kiln report: warning: %s: cannot rename %s to it: %s\n", p, t, strerror(errno));
        unlink(t);
        return 0;
    }
    return 1;
}

kl_status report_plot(const char *dir, const run_data *d, const char *names[8], int *n)
{
    *n = 0;
    char plots[4200];
    snprintf(plots, sizeof plots, "%s/plots", dir);
    KL_TRY(kl_mkdir_p(plots));
    const char *gp = getenv("KILN_GNUPLOT");
    if (!gp || !*gp) gp = "gnuplot";
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "command -v '%s' >/dev/null 2>&1", gp);
    if (strchr(gp, '\'') || system(cmd) != 0)
        return kl_fail(KL_EUNSUPPORTED, "%s not found: no plots (install gnuplot, e.g. apt-get install gnuplot-nox)", gp);
    /* gnuplot's messages go to a file: shown only if it fails */
    char errp[] = "/tmp/kiln_gnuplot_XXXXXX";
    int fd = mkstemp(errp);
    if (fd < 0) return kl_fail(KL_EIO, "cannot create a temporary file: %s", strerror(errno));
    close(fd);
    snprintf(cmd, sizeof cmd, "'%s' 2>'%s'", gp, errp);
    FILE *g = popen(cmd, "w");
    if (!g) {
        unlink(errp);
        return kl_fail(KL_EIO, "cannot run %s: %s", gp, strerror(errno));
    }
    void (*old)(int) = signal(SIGPIPE, SIG_IGN); /* gnuplot dying must not kill kiln */
    /* datablock names are the series' titles */
    series s[13] = {d->loss, d->acc, d->lr, d->sps, d->ep_loss, d->ep_acc, d->val_loss, d->val_acc,
                    d->cpu, d->rss, d->gpu_util, d->gpu_mem, d->gpu_power};
    static const char *const ids[13] = {"loss", "acc", "lr", "sps", "eploss", "epacc", "valloss", "valacc",
                                        "cpu", "rss", "gpuutil", "gpumem", "gpupower"};
    for (int i = 0; i < 13; i++) {
        s[i].title = ids[i];
        block(g, ids[i], &s[i]);
    }
    const char *thin = "lines lw 1 lc rgb '#9ecae1'", *pts = "linespoints lw 2 pt 7 ps 0.8";
    curve loss[] = {{&s[0], "train (step)", thin, 0}, {&s[4], "train (epoch mean)", pts, 0}, {&s[6], "validation", pts, 0}};
    curve acc[] = {{&s[1], "train (step)", thin, 0}, {&s[5], "train (epoch mean)", pts, 0}, {&s[7], "validation", pts, 0}};
    curve lr[] = {{&s[2], "learning rate", "lines lw 2", 0}};
    curve sps[] = {{&s[3], "samples/s", "linespoints lw 2 pt 7 ps 0.6", 0}};
    curve tel[] = {{&s[8], "CPU cores busy", "lines lw 2", 0}, {&s[9], "RSS (MB)", "lines lw 2", 1}};
    curve gpu[] = {{&s[10], "GPU busy (%)", "lines lw 2", 0}, {&s[12], "power (W)", "lines lw 2", 0},
                   {&s[11], "memory (MB)", "lines lw 2", 1}};
    if (figure(g, dir, "loss", "Loss", "step", "loss", NULL, loss, 3)) names[(*n)++] = "loss";
    if (figure(g, dir, "accuracy", "Accuracy", "step", "accuracy", NULL, acc, 3)) names[(*n)++] = "accuracy";
    if (figure(g, dir, "lr", "Learning rate", "step", "lr", NULL, lr, 1)) names[(*n)++] = "lr";
    if (figure(g, dir, "throughput", "Throughput", "step", "samples/s", NULL, sps, 1)) names[(*n)++] = "throughput";
    if (figure(g, dir, "telemetry", "CPU and memory", "seconds", "cores", "MB", tel, 2)) names[(*n)++] = "telemetry";
    if (figure(g, dir, "gpu", "GPU", "seconds", "% / W", "MB", gpu, 3)) names[(*n)++] = "gpu";
    int st = pclose(g);
    signal(SIGPIPE, old);
    if (st != 0) {
        char msg[600] = "";
        FILE *e = fopen(errp, "r");
        size_t k = e ? fread(msg, 1, sizeof msg - 1, e) : 0;
        if (e) fclose(e);
        msg[k] = 0;
        unlink(errp);
        for (int i = 0; i < *n; i++) keep(plots, names[i], 0);
        *n = 0;
        return kl_fail(KL_EIO, "%s failed (exit status %d) drawing the plots in %s: %s", gp,
                       WIFEXITED(st) ? WEXITSTATUS(st) : -1, plots, msg);
    }
    unlink(errp);
    /* keep only the plots drawn whole (gnuplot reports errors but goes on) */
    int k = 0;
    for (int i = 0; i < *n; i++)
        if (keep(plots, names[i], 1)) names[k++] = names[i];
    *n = k;
    return KL_OK;
}
