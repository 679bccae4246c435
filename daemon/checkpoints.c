/* checkpoints.c -- durability (DESIGN.md §4).
 *
 * A checkpoint holds the model and the input positions it has folded up
 * to, in one atomic file (io/checkpoint). While the daemon runs it is
 * written by a forked child: the child holds the loop's memory as it was
 * at fork(), so the model and the offsets agree exactly, and the loop only
 * pays for the fork. Once a checkpoint is durable its positions are
 * committed to Kafka, which then shows the group's lag. The final
 * checkpoint at stop is written on the loop. The dense snapshot file
 * (snapshot.file) is written the same forked way after each epoch, and
 * the last published epoch is kept beside the checkpoint so that epochs
 * are never numbered twice.
 *
 * This file owns the two forked writers and their bookkeeping, the
 * checkpoint metrics and the files in checkpoint.dir. It reads the model
 * and ingest's positions; it must never change either, and never block
 * the loop but for the final checkpoint and waiting on a writer at stop.
 */
#include "checkpoints.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "config.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "records.h"

/* A forked writer: checkpoints and snapshot files. */
struct bgjob {
    pid_t pid;
    uint64_t started_ms;
    struct ingest_positions *pos; /* checkpoint: the offsets it holds */
};

struct checkpoints {
    const struct config *cfg;
    struct ingest *ing;
    struct bgjob ckpt, snapfile;
    uint64_t last_ms; /* wall clock of the last good checkpoint */
    struct metric *seconds, *stall, *written, *failures;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double gauge_age(void *ctx)
{
    struct checkpoints *cp = ctx;
    if (!cp->last_ms)
        return -1;
    return (double)(now_ms() - cp->last_ms) / 1000.0;
}

struct checkpoints *checkpoints_new(const struct config *cfg,
                                    struct ingest *ing, struct metrics *m)
{
    struct checkpoints *cp = calloc(1, sizeof(*cp));
    if (!cp)
        return NULL;
    cp->cfg = cfg;
    cp->ing = ing;
    cp->seconds =
        metrics_gauge(m, "nmfd_checkpoint_duration_seconds",
                      "Time the last checkpoint took to write.", NULL);
    cp->stall = metrics_gauge(
        m, "nmfd_checkpoint_stall_seconds",
        "Time ingest stopped for the last checkpoint (fork).", NULL);
    cp->written = metrics_counter(m, "nmfd_checkpoints_total",
                                  "Checkpoints written.", NULL);
    cp->failures = metrics_counter(m, "nmfd_checkpoint_failures_total",
                                   "Checkpoints that failed.", NULL);
    metrics_gauge_fn(m, "nmfd_checkpoint_age_seconds",
                     "Seconds since the last good checkpoint (-1: none).", NULL,
                     gauge_age, cp);
    return cp;
}

void checkpoints_free(struct checkpoints *cp)
{
    if (!cp)
        return;
    ingest_positions_free(cp->ckpt.pos);
    free(cp);
}

static int ensure_dir(const char *dir)
{
    char path[4096];
    size_t len = strlen(dir);
    if (!len || len >= sizeof(path))
        return -EINVAL;
    memcpy(path, dir, len + 1);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(path, 0700) && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(path, 0700) && errno != EEXIST)
        return -errno;
    return 0;
}

/* Temp files of checkpoint writers that died with a crashed daemon. */
static void remove_stale_temps(const char *dir)
{
    char path[4096];
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d)
        return;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "." CHECKPOINT_FILE ".", 11) &&
            strstr(e->d_name, ".tmp")) {
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
            if (!unlink(path))
                log_info("removed %s, left by an interrupted checkpoint", path);
        }
    closedir(d);
}

int checkpoints_prepare(const char *dir)
{
    int rc = ensure_dir(dir);
    if (rc)
        return rc;
    remove_stale_temps(dir);
    return 0;
}

void checkpoints_loaded(struct checkpoints *cp, uint64_t written_ms)
{
    cp->last_ms = written_ms;
}

int checkpoints_write(struct checkpoints *cp, struct model *m, uint64_t epoch)
{
    struct ingest_stats is;
    ingest_stats(cp->ing, &is);
    struct checkpoint_meta meta = {epoch, is.rejected, is.consumed,
                                   (int64_t)now_ms()};
    size_t n;
    char err[512];
    struct checkpoint_offset *o = ingest_offsets(cp->ing, &n);
    double t0 = mono_s();
    int rc;

    if (!o)
        return -ENOMEM;
    rc = checkpoint_write(cp->cfg->checkpoint.dir, &meta, o, n, m, err,
                          sizeof(err));
    free(o);
    if (rc) {
        metric_inc(cp->failures);
        log_err("checkpoint: %s", err);
        return rc;
    }
    metric_inc(cp->written);
    metric_set(cp->seconds, mono_s() - t0);
    cp->last_ms = now_ms();
    return 0;
}

void checkpoints_fork(struct checkpoints *cp, struct model *m, uint64_t epoch)
{
    struct ingest_stats is;
    ingest_stats(cp->ing, &is);
    struct checkpoint_meta meta = {epoch, is.rejected, is.consumed,
                                   (int64_t)now_ms()};
    struct checkpoint_offset *o;
    size_t n;
    double t0;
    pid_t pid;

    if (cp->ckpt.pid > 0)
        return;
    o = ingest_offsets(cp->ing, &n);
    cp->ckpt.pos = ingest_positions_take(cp->ing);
    if (!o || !cp->ckpt.pos) {
        free(o);
        ingest_positions_free(cp->ckpt.pos);
        cp->ckpt.pos = NULL;
        return;
    }
    t0 = mono_s();
    pid = fork();
    if (pid == 0) {
        /* The child holds the loop's memory as it was at fork(): the model
         * and the offsets agree exactly. It touches nothing but them, and
         * dies with its parent rather than outlive it. */
        char err[512];
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int rc = checkpoint_write(cp->cfg->checkpoint.dir, &meta, o, n, m, err,
                                  sizeof(err));
        if (rc) {
            char line[600];
            int len = snprintf(line, sizeof(line), "<3>checkpoint: %s\n", err);
            if (write(2, line, (size_t)len) < 0)
                _exit(2);
        }
        _exit(rc ? 1 : 0);
    }
    metric_set(cp->stall, mono_s() - t0);
    free(o);
    if (pid < 0) {
        log_err("checkpoint: fork: %s", strerror(errno));
        metric_inc(cp->failures);
        ingest_positions_free(cp->ckpt.pos);
        cp->ckpt.pos = NULL;
        return;
    }
    cp->ckpt.pid = pid;
    cp->ckpt.started_ms = now_ms();
}

void checkpoints_snapshot_file(struct checkpoints *cp, struct model *m,
                               uint64_t epoch)
{
    struct records_epoch ep = {
        .epoch = epoch,
        .ts = (int64_t)now_ms(),
        .refresh_interval_ms = (int64_t)cp->cfg->model.refresh_interval_ms};
    pid_t pid;
    if (cp->snapfile.pid > 0)
        return; /* the previous file is still being written: skip */
    pid = fork();
    if (pid == 0) {
        int rc = records_snapshot_save(m, &ep, cp->cfg->snapshot.file);
        _exit(rc ? 1 : 0);
    }
    if (pid < 0) {
        log_warn("snapshot file: fork: %s", strerror(errno));
        return;
    }
    cp->snapfile.pid = pid;
    cp->snapfile.started_ms = now_ms();
}

void checkpoints_reap(struct checkpoints *cp)
{
    int status;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (pid == cp->ckpt.pid) {
            cp->ckpt.pid = 0;
            if (ok) {
                metric_inc(cp->written);
                metric_set(cp->seconds,
                           (double)(now_ms() - cp->ckpt.started_ms) / 1000.0);
                cp->last_ms = cp->ckpt.started_ms;
                /* Kafka's copy of the offsets, for lag monitoring. */
                ingest_positions_commit(cp->ing, cp->ckpt.pos);
            } else {
                metric_inc(cp->failures);
                log_err("checkpoint writer failed (status %d)", status);
            }
            ingest_positions_free(cp->ckpt.pos);
            cp->ckpt.pos = NULL;
        } else if (pid == cp->snapfile.pid) {
            cp->snapfile.pid = 0;
            if (!ok)
                log_warn("snapshot file %s not written",
                         cp->cfg->snapshot.file);
        }
    }
}

static void bgjob_wait(struct bgjob *j)
{
    int status;
    if (j->pid > 0)
        waitpid(j->pid, &status, 0);
    j->pid = 0;
    ingest_positions_free(j->pos);
    j->pos = NULL;
}

void checkpoints_wait(struct checkpoints *cp)
{
    bgjob_wait(&cp->ckpt);
}

void checkpoints_wait_snapshot(struct checkpoints *cp)
{
    bgjob_wait(&cp->snapfile);
}

/* The last published epoch, beside the checkpoint: epochs published after
 * the last checkpoint must not be numbered again after a crash or a fresh
 * start. Written with rename, without fsync: it is cheap on the loop, and
 * a lost update only matters if the machine itself crashed. */
void checkpoints_epoch_write(const struct checkpoints *cp, uint64_t epoch)
{
    char path[4096], tmp[4200];
    int fd, len;
    char buf[32];

    snprintf(path, sizeof(path), "%s/epoch", cp->cfg->checkpoint.dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    len = snprintf(buf, sizeof(buf), "%" PRIu64 "\n", epoch);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    if (write(fd, buf, (size_t)len) != len || close(fd) || rename(tmp, path))
        log_debug("%s: %s", path, strerror(errno));
}

uint64_t checkpoints_epoch_read(const struct checkpoints *cp)
{
    char path[4096];
    unsigned long long e = 0;
    FILE *f;
    snprintf(path, sizeof(path), "%s/epoch", cp->cfg->checkpoint.dir);
    f = fopen(path, "r");
    if (!f)
        return 0;
    if (fscanf(f, "%llu", &e) != 1)
        e = 0;
    fclose(f);
    return e;
}
