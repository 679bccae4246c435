/* bench_checkpoint.c -- what a checkpoint costs the daemon at scale.
 *
 * nmfd writes its checkpoint from a forked child (like Redis BGSAVE): the
 * loop stops only for fork() itself, while the child serialises the model
 * it sees as it was at fork time. This builds a model of N users (uniform
 * activity, E events over M items at rank k), then measures, median of R
 * runs: the stall (the parent's fork() call), the child's checkpoint_write
 * to a temp directory, the file size, and for comparison the same write
 * done in-process (what the final checkpoint at stop costs).
 *
 *   bench_checkpoint [users] [items] [k] [events] [runs] [dir]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "checkpoint.h"
#include "model.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), bench_cmp_double);
    return v[n / 2];
}

static long rss_kib(void)
{
    long kib = -1;
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmRSS:", 6))
            kib = atol(line + 6);
    if (f)
        fclose(f);
    return kib;
}

int main(int argc, char **argv)
{
    uint32_t users = argc > 1 ? (uint32_t)atol(argv[1]) : 1000000;
    uint32_t items = argc > 2 ? (uint32_t)atol(argv[2]) : 100000;
    uint32_t k = argc > 3 ? (uint32_t)atol(argv[3]) : 16;
    uint64_t events = argc > 4 ? (uint64_t)atoll(argv[4]) : 8000000;
    int runs = argc > 5 ? atoi(argv[5]) : 5;
    const char *dir = argc > 6 ? argv[6] : "/tmp/nmfd-bench-ckpt";
    struct model_params p;
    struct checkpoint_meta meta = {1, 0, 0, 0};
    struct checkpoint_offset off = {.topic = (char *)"nmf.events"};
    double stall[64], child[64], inproc[64];
    char err[512], u[32], it[32];
    uint64_t x = 88172645463325252ull;
    struct model *m;
    struct stat st;
    double t0;

    if (runs < 1 || runs > 64)
        runs = 5;
    mkdir(dir, 0700);
    model_params_default(&p);
    p.k = k;
    m = model_new(&p);
    if (!m)
        return 1;
    t0 = now_s();
    for (uint64_t e = 0; e < events; e++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint32_t uu = (uint32_t)(x % users);
        uint32_t ii = (uint32_t)((uu % k) * (items / k) + (x >> 40) % (items / k));
        int ul = snprintf(u, sizeof(u), "u%u", uu);
        int il = snprintf(it, sizeof(it), "i%u", ii);
        model_fold(m, u, (size_t)ul, it, (size_t)il, 1.0, (int64_t)e);
    }
    struct model_stats ms;
    model_stats(m, &ms);
    printf("model: %llu users, %llu items, k=%u, %llu events folded in %.1f s, "
           "RSS %.0f MiB\n",
           (unsigned long long)ms.users, (unsigned long long)ms.items, k,
           (unsigned long long)ms.events, now_s() - t0, rss_kib() / 1024.0);

    for (int r = 0; r < runs; r++) {
        t0 = now_s();
        pid_t pid = fork();
        if (pid == 0)
            _exit(checkpoint_write(dir, &meta, &off, 1, m, err, sizeof(err))
                      ? 1
                      : 0);
        stall[r] = now_s() - t0;
        int status;
        waitpid(pid, &status, 0);
        child[r] = now_s() - t0;
        if (!WIFEXITED(status) || WEXITSTATUS(status)) {
            fprintf(stderr, "checkpoint child failed\n");
            return 1;
        }
        t0 = now_s();
        if (checkpoint_write(dir, &meta, &off, 1, m, err, sizeof(err))) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        inproc[r] = now_s() - t0;
    }
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, CHECKPOINT_FILE);
    stat(path, &st);
    printf("checkpoint: %.1f MiB\n", (double)st.st_size / 1048576.0);
    printf("stall (fork in the parent): median %.2f ms over %d runs\n",
           median(stall, runs) * 1e3, runs);
    printf("forked writer, fork to exit: median %.0f ms\n",
           median(child, runs) * 1e3);
    printf("in-process write (the final checkpoint at stop): median %.0f ms\n",
           median(inproc, runs) * 1e3);
    unlink(path);
    model_free(m);
    return 0;
}
