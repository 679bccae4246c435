/* test_group.c -- the model's side of a group sharing one W (group.c):
 * per-partition statistics that sum to the whole model's, users handed
 * from one model to another with their exact contributions, a W
 * installed by item id, a follower that never changes W itself, and a
 * user-less leader whose refresh from the summed statistics gives the W
 * the whole model's own refresh gives. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "rng.h"

#define USERS 400
#define ITEMS 60
#define K     4
#define PARTS 3

static struct model *model_k(int follower)
{
    struct model_params p;
    model_params_default(&p);
    p.k = K;
    p.warmup_events = follower ? 0 : 2000;
    p.refresh_events = follower ? 0 : 3000;
    struct model *m = model_new(&p);
    cr_assert_not_null(m);
    model_follow(m, follower);
    return m;
}

/* A user's partition: a hash of the id, as Kafka's keyed partitioning. */
static int32_t part_of(void *ctx, const char *id, size_t len)
{
    (void)ctx;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)id[i]) * 1099511628211ull;
    return (int32_t)(h % PARTS);
}

static void fold_planted(struct model *m, uint64_t seed, int n)
{
    uint64_t s = seed;
    int64_t ts = 1000;
    for (int e = 0; e < n; e++) {
        uint64_t a = rng_splitmix64(&s), b = rng_splitmix64(&s);
        uint32_t u = (uint32_t)(a % USERS), i;
        if ((b >> 40) % 10 == 0)
            i = (uint32_t)(b % ITEMS);
        else
            i = (u % K) * (ITEMS / K) + (uint32_t)(b % (ITEMS / K));
        char user[32], item[32];
        size_t ul = (size_t)snprintf(user, sizeof(user), "user-%u", u);
        size_t il = (size_t)snprintf(item, sizeof(item), "item-%u", i);
        ts += 1;
        cr_assert_eq(model_fold(m, user, ul, item, il,
                                0.5 + (double)(a >> 60) / 4.0, ts),
                     0);
    }
}

struct pstats {
    double A[K * K];
    double *B; /* item slots x K */
    struct model_part_sums sums;
};

static void take(const struct model *m, int32_t p, struct pstats *ps)
{
    ps->B = calloc((size_t)model_item_slots(m) * K + 1, sizeof(double));
    cr_assert_not_null(ps->B);
    cr_assert_eq(model_part_stats(m, part_of, NULL, p, ps->A, ps->B, &ps->sums),
                 0);
}

/* The row of item id in B, NULL-safe: zeros when the model lacks it. */
static void row_of(const struct model *m, const double *B, const char *id,
                   double out[K])
{
    for (uint32_t i = 0; i < model_item_slots(m); i++) {
        size_t len;
        const char *s = model_item_id(m, i, &len);
        if (s && len == strlen(id) && !memcmp(s, id, len)) {
            memcpy(out, B + (size_t)i * K, K * sizeof(double));
            return;
        }
    }
    memset(out, 0, K * sizeof(double));
}

static int save_cb(void *ctx, const void *buf, size_t len)
{
    return fwrite(buf, 1, len, ctx) == len ? 0 : -EIO;
}

static double rel(double a, double b)
{
    return fabs(a - b) / (fabs(a) + fabs(b) + 1e-300);
}

Test(group, partitions_sum_to_the_model)
{
    struct model *m = model_k(0);
    fold_planted(m, 7, 20000);
    double A[K * K], *B = calloc((size_t)model_item_slots(m) * K, sizeof(*B));
    model_A(m, A);
    model_B(m, B);
    struct pstats ps[PARTS];
    double sumA[K * K] = {0}, norm = 0;
    uint64_t users = 0;
    for (int32_t p = 0; p < PARTS; p++) {
        take(m, p, &ps[p]);
        cr_assert_gt(ps[p].sums.users, 50, "every partition has users");
        for (int q = 0; q < K * K; q++)
            sumA[q] += ps[p].A[q];
        norm += ps[p].sums.norm;
        users += ps[p].sums.users;
    }
    for (int q = 0; q < K * K; q++)
        cr_assert_lt(rel(sumA[q], A[q]), 1e-9, "A[%d] %g vs %g", q, sumA[q],
                     A[q]);
    for (size_t q = 0; q < (size_t)model_item_slots(m) * K; q++) {
        double s = 0;
        for (int32_t p = 0; p < PARTS; p++)
            s += ps[p].B[q];
        cr_assert_lt(fabs(s - B[q]), 1e-9 * (fabs(B[q]) + 1), "B[%zu]", q);
    }
    struct model_stats st;
    model_stats(m, &st);
    cr_assert_eq(users, st.users);
    cr_assert_lt(rel(norm, st.norm), 1e-6);
    cr_assert_lt(rel(model_stats_loss(m, st.norm), st.loss), 1e-4,
                 "loss from the statistics %g, the model's %g",
                 model_stats_loss(m, st.norm), st.loss);
    for (int32_t p = 0; p < PARTS; p++)
        free(ps[p].B);
    free(B);
    model_free(m);
}

/* model_users_stats_add adds B to what is there and leaves every row
 * no listed user holds untouched: on a B of zeros it gives the
 * partition's statistics bit for bit, and on top of another partition's
 * the sum of both; A and the sums are the list's alone each time. */
Test(group, listed_users_add_to_b)
{
    struct model *m = model_k(0);
    fold_planted(m, 11, 20000);
    const uint32_t U = model_user_slots(m);
    const size_t nb = (size_t)model_item_slots(m) * K;
    uint32_t *list = malloc(((size_t)U + 1) * sizeof(*list));
    double *B = calloc(nb + 1, sizeof(double));
    cr_assert(list && B);
    struct pstats ps[2];
    for (int32_t p = 0; p < 2; p++)
        take(m, p, &ps[p]);
    double A[K * K];
    struct model_part_sums sums;
    for (int32_t p = 0; p < 2; p++) {
        size_t n = 0;
        for (uint32_t u = 0; u < U; u++) {
            struct model_user_view v;
            if (!model_user_get(m, u, &v) && part_of(NULL, v.id, v.id_len) == p)
                list[n++] = u;
        }
        cr_assert_eq(model_users_stats_add(m, list, n, A, B, &sums), 0);
        cr_assert_eq(sums.users, ps[p].sums.users);
        cr_assert_eq(memcmp(A, ps[p].A, sizeof(A)), 0);
        if (p == 0)
            cr_assert_eq(memcmp(B, ps[0].B, nb * sizeof(double)), 0);
    }
    /* Added in another order than the two sums apart: equal to the
     * rounding, and exactly where only one partition has the item. */
    size_t touched = 0;
    for (size_t q = 0; q < nb; q++) {
        double want = ps[0].B[q] + ps[1].B[q];
        cr_assert_leq(fabs(B[q] - want), 1e-12 * fabs(want), "B[%zu]", q);
        if (!ps[0].B[q] || !ps[1].B[q])
            cr_assert_eq(B[q], want, "B[%zu]", q);
        touched += ps[1].B[q] != 0;
    }
    cr_assert_gt(touched, 0);
    cr_assert_eq(model_users_stats_add(m, NULL, 1, A, B, &sums), -EINVAL);
    for (int32_t p = 0; p < 2; p++)
        free(ps[p].B);
    free(B);
    free(list);
    model_free(m);
}

/* The statistics of a list of user slots are those of the partition the
 * list holds, bit for bit; a dead slot in the list adds nothing; a slot
 * beyond the model's and a NULL list are refused. */
Test(group, listed_users_give_their_partition)
{
    struct model *m = model_k(0);
    fold_planted(m, 11, 20000);
    const uint32_t U = model_user_slots(m);
    uint32_t *list = malloc(((size_t)U + 1) * sizeof(*list));
    cr_assert_not_null(list);
    double *B = calloc((size_t)model_item_slots(m) * K + 1, sizeof(double));
    cr_assert_not_null(B);
    for (int32_t p = 0; p < PARTS; p++) {
        size_t n = 0;
        for (uint32_t u = 0; u < U; u++) {
            struct model_user_view v;
            if (!model_user_get(m, u, &v) && part_of(NULL, v.id, v.id_len) == p)
                list[n++] = u;
        }
        struct pstats ps;
        take(m, p, &ps);
        double A[K * K];
        struct model_part_sums sums;
        cr_assert_eq(model_users_stats(m, list, n, A, B, &sums), 0);
        cr_assert_eq(sums.users, ps.sums.users);
        cr_assert_gt(sums.users, 50);
        cr_assert_eq(sums.norm, ps.sums.norm);
        cr_assert_eq(memcmp(A, ps.A, sizeof(A)), 0);
        cr_assert_eq(memcmp(B, ps.B, (size_t)model_item_slots(m) * K *
                                         sizeof(double)),
                     0);
        cr_assert_eq(memcmp(sums.sizes, ps.sums.sizes, sizeof(sums.sizes)), 0);
        free(ps.B);
    }
    /* A forgotten user's slot in the list: skipped, not counted. */
    struct model_user_view v0;
    uint32_t gone = 0;
    while (model_user_get(m, gone, &v0))
        gone++;
    cr_assert_eq(model_user_forget(m, gone), 0);
    double A[K * K];
    struct model_part_sums sums;
    list[0] = gone;
    cr_assert_eq(model_users_stats(m, list, 1, A, B, &sums), 0);
    cr_assert_eq(sums.users, 0);
    cr_assert_eq(sums.norm, 0);
    list[0] = U;
    cr_assert_eq(model_users_stats(m, list, 1, A, B, &sums), -EINVAL);
    cr_assert_eq(model_users_stats(m, NULL, 1, A, B, &sums), -EINVAL);
    cr_assert_eq(model_users_stats(m, NULL, 0, A, B, &sums), 0);
    cr_assert_eq(sums.users, 0);
    free(B);
    free(list);
    model_free(m);

    /* Statistics with a half-life have no common time frame: refused. */
    struct model_params pp;
    model_params_default(&pp);
    pp.k = K;
    pp.half_life_ms = 60000;
    struct model *h = model_new(&pp);
    cr_assert_not_null(h);
    fold_planted(h, 3, 500);
    uint32_t one = 0;
    double *Bh = calloc((size_t)model_item_slots(h) * K + 1, sizeof(double));
    cr_assert_eq(model_users_stats(h, &one, 1, A, Bh, &sums), -EINVAL);
    free(Bh);
    model_free(h);
}

/* Copies every user of partition p from src into dst. */
static void hand_over(const struct model *src, struct model *dst, int32_t p)
{
    for (uint32_t u = 0; u < model_user_slots(src); u++) {
        struct model_user_view v;
        if (model_user_get(src, u, &v) || part_of(NULL, v.id, v.id_len) != p)
            continue;
        const uint32_t *it;
        const float *va;
        uint32_t n;
        cr_assert_eq(model_user_profile(src, u, &it, &va, &n), 0);
        const char *ids[512];
        size_t lens[512];
        cr_assert_leq(n, 512);
        for (uint32_t q = 0; q < n; q++)
            ids[q] = model_item_id(src, it[q], &lens[q]);
        struct model_user_state st = {
            .id = v.id, .id_len = v.id_len, .t = v.ts, .h = v.h, .n = n,
            .items = ids, .item_lens = lens, .values = va};
        cr_assert_eq(model_user_sums(src, u, &st.loss, &st.vnorm,
                                     &st.evicted),
                     0);
        cr_assert_eq(model_user_put(dst, &st), 0);
        cr_assert_eq(model_user_put(dst, &st), -EEXIST);
    }
}

Test(group, a_partition_moves_with_its_contributions)
{
    struct model *a = model_k(0), *b = model_k(1);
    fold_planted(a, 11, 20000);
    struct pstats before;
    take(a, 1, &before);

    hand_over(a, b, 1);
    struct pstats after;
    take(b, 1, &after);
    cr_assert_eq(after.sums.users, before.sums.users);
    cr_assert_lt(rel(after.sums.norm, before.sums.norm), 1e-9);
    for (int q = 0; q < K * K; q++)
        cr_assert_lt(rel(after.A[q], before.A[q]), 1e-6, "A[%d]", q);
    for (int i = 0; i < ITEMS; i++) {
        char id[32];
        snprintf(id, sizeof(id), "item-%d", i);
        double x[K], y[K];
        row_of(a, before.B, id, x);
        row_of(b, after.B, id, y);
        for (int j = 0; j < K; j++)
            cr_assert_lt(fabs(x[j] - y[j]), 1e-6 * (fabs(x[j]) + 1),
                         "B[%s][%d] %g vs %g", id, j, x[j], y[j]);
    }
    /* The B the model keeps itself agrees with its users. */
    double *Bb = calloc((size_t)model_item_slots(b) * K, sizeof(double));
    model_B(b, Bb);
    for (size_t q = 0; q < (size_t)model_item_slots(b) * K; q++)
        cr_assert_lt(fabs(Bb[q] - after.B[q]), 1e-6 * (fabs(Bb[q]) + 1));
    free(Bb);

    /* Forgotten at the source: nothing of partition 1 is left there. */
    uint64_t gone = 0;
    for (uint32_t u = 0; u < model_user_slots(a); u++) {
        struct model_user_view v;
        if (!model_user_get(a, u, &v) && part_of(NULL, v.id, v.id_len) == 1) {
            cr_assert_eq(model_user_forget(a, u), 0);
            gone++;
        }
    }
    cr_assert_eq(gone, before.sums.users);
    /* Every user forgotten: the state saves and loads (a state with no
     * profile must have exactly zero statistics). */
    {
        struct model *c = model_k(1);
        hand_over(a, c, 2);
        for (uint32_t u = 0; u < model_user_slots(c); u++)
            model_user_forget(c, u);
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        cr_assert_eq(model_save(c, save_cb, f), 0);
        fclose(f);
        const char *why = NULL;
        struct model *back = model_load(buf, len, &why);
        cr_assert_not_null(back, "%s", why);
        model_free(back);
        free(buf);
        model_free(c);
    }
    for (uint32_t u = 0; u < model_user_slots(a); u++) {
        struct model_user_view v;
        if (model_user_get(a, u, &v) == -ENOENT) {
            cr_assert_eq(model_user_forget(a, u), -ENOENT);
            break;
        }
    }
    struct pstats empty;
    take(a, 1, &empty);
    cr_assert_eq(empty.sums.users, 0);
    double A[K * K], sumA[K * K] = {0};
    model_A(a, A);
    for (int32_t p = 0; p < PARTS; p += 2) {
        struct pstats ps;
        take(a, p, &ps);
        for (int q = 0; q < K * K; q++)
            sumA[q] += ps.A[q];
        free(ps.B);
    }
    for (int q = 0; q < K * K; q++)
        cr_assert_lt(fabs(sumA[q] - A[q]), 1e-6 * (fabs(A[q]) + 1));
    free(before.B);
    free(after.B);
    free(empty.B);
    model_free(a);
    model_free(b);
}

static void install_from(struct model *dst, const struct model *src)
{
    uint32_t M = model_item_slots(src), n = 0;
    const char **ids = calloc(M + 1, sizeof(*ids));
    size_t *lens = calloc(M + 1, sizeof(*lens));
    float *W = calloc((size_t)M * K + 1, sizeof(float));
    for (uint32_t i = 0; i < M; i++) {
        ids[n] = model_item_id(src, i, &lens[n]);
        if (!ids[n])
            continue;
        memcpy(W + (size_t)n * K, model_W(src) + (size_t)i * K,
               K * sizeof(float));
        n++;
    }
    cr_assert_eq(model_w_install(dst, n, ids, lens, W), 0);
    free(ids);
    free(lens);
    free(W);
}

Test(group, a_follower_takes_w_and_never_changes_it)
{
    struct model *a = model_k(0), *f = model_k(1);
    fold_planted(a, 3, 20000);
    cr_assert(model_following(f));
    install_from(f, a);
    uint64_t r0 = model_refreshes(f);
    fold_planted(f, 5, 20000);
    while (model_refine(f, 1000))
        ;
    cr_assert_eq(model_refreshes(f), r0, "a follower refreshed its own W");
    struct model_stats st;
    model_stats(f, &st);
    cr_assert_eq(st.stale, 0);
    /* Every row of f's W is a's, by id, whatever f's slot order. */
    for (uint32_t i = 0; i < model_item_slots(f); i++) {
        size_t len;
        const char *id = model_item_id(f, i, &len);
        for (uint32_t r = 0; r < model_item_slots(a); r++) {
            size_t l2;
            const char *s = model_item_id(a, r, &l2);
            if (s && l2 == len && !memcmp(s, id, len))
                for (int j = 0; j < K; j++)
                    cr_assert_eq(model_W(f)[(size_t)i * K + j],
                                 model_W(a)[(size_t)r * K + j]);
        }
    }
    /* A W f cannot use is refused whole. */
    const char *bad_id[] = {"item-1"};
    size_t bad_len[] = {6};
    float bad[K] = {1, -1, 0, 0};
    cr_assert_eq(model_w_install(f, 1, bad_id, bad_len, bad), -EINVAL);
    bad[1] = NAN;
    cr_assert_eq(model_w_install(f, 1, bad_id, bad_len, bad), -EINVAL);
    model_free(a);
    model_free(f);
}

/* What a member's statistics say of the W they are of: every user stale
 * after an install, none once the refinement re-solved them all, and
 * every user again while a restart is under way (on a model that may
 * restart: a follower never does). */
Test(group, stale_users_count_the_users_not_solved_against_w)
{
    struct model *a = model_k(0), *f = model_k(1);
    fold_planted(a, 3, 20000);
    fold_planted(f, 5, 20000);
    while (model_refine(f, 1000))
        ;
    cr_assert_eq(model_stale_users(f), 0);
    struct model_stats st;
    model_stats(f, &st);
    cr_assert_gt(st.users, 0);
    install_from(f, a);
    cr_assert_eq(model_stale_users(f), st.users);
    cr_assert_gt(model_refine(f, 10), 0);
    cr_assert_eq(model_stale_users(f), st.users - 10);
    while (model_refine(f, 1000))
        ;
    cr_assert_eq(model_stale_users(f), 0);

    /* A round ends on a refresh, whose users are stale again. */
    for (int i = 0; i < 100000; i++)
        if (!model_refine(a, 1000) && !model_stale_users(a))
            break;
    model_stats(a, &st);
    cr_assert_eq(model_stale_users(a), 0);
    cr_assert_eq(model_restart_try(a), 0);
    cr_assert_eq(model_stale_users(a), st.users);
    model_free(a);
    model_free(f);
}

Test(group, the_leader_refreshes_as_the_whole_model_would)
{
    struct model *a = model_k(0), *lead = model_k(0);
    fold_planted(a, 9, 20000);
    while (model_refine(a, 100000))
        ;
    fold_planted(a, 10, 500); /* statistics W has not seen yet */
    install_from(lead, a);
    float *W0 = malloc((size_t)model_item_slots(a) * K * sizeof(float));
    memcpy(W0, model_W(a), (size_t)model_item_slots(a) * K * sizeof(float));
    /* The leader's statistics: the sum of the partitions', by item id in
     * the leader's slots. */
    uint32_t M = model_item_slots(lead);
    double A[K * K] = {0}, *B = calloc((size_t)M * K, sizeof(double));
    for (int32_t p = 0; p < PARTS; p++) {
        struct pstats ps;
        take(a, p, &ps);
        for (int q = 0; q < K * K; q++)
            A[q] += ps.A[q];
        for (uint32_t i = 0; i < model_item_slots(a); i++) {
            size_t len;
            const char *id = model_item_id(a, i, &len);
            if (!id)
                continue;
            int64_t r = model_item_ensure(lead, id, len);
            cr_assert_geq(r, 0);
            for (int j = 0; j < K; j++)
                B[(size_t)r * K + j] += ps.B[(size_t)i * K + j];
        }
        free(ps.B);
    }
    cr_assert_eq(model_stats_set(lead, A, B), 0);
    model_refresh(lead);
    model_refresh(a);
    double moved = 0;
    for (size_t q = 0; q < (size_t)model_item_slots(a) * K; q++)
        moved = fmax(moved, fabs(model_W(a)[q] - W0[q]));
    cr_assert_gt(moved, 1e-4, "the refresh must move W for this to test it");
    free(W0);
    for (uint32_t i = 0; i < model_item_slots(a); i++) {
        size_t len;
        const char *id = model_item_id(a, i, &len);
        int64_t r = model_item_ensure(lead, id, len);
        for (int j = 0; j < K; j++)
            cr_assert_lt(fabs(model_W(a)[(size_t)i * K + j] -
                              model_W(lead)[(size_t)r * K + j]),
                         1e-5, "W[%s][%d]", id, j);
    }
    /* Statistics are not set over users' own. */
    cr_assert_eq(model_stats_set(a, A, B), -EINVAL);
    free(B);
    model_free(a);
    model_free(lead);
}
