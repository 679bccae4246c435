/* online/robust.c -- robust NMF: the l21 weights of the users.
 *
 * With model.robust = l21 the model minimises, instead of the sum of
 * squared residuals of model.c,
 *     sum_u c_u ||v_u - W h_u||_2
 * the l2,1 norm of the residual (Kong, Ding & Huang, "Robust nonnegative
 * matrix factorization using L21-norm", CIKM 2011): a user's cost grows
 * with its residual, not with its square, so a few ids that click
 * everything at random (bots, crawlers) cannot pull topics to themselves.
 * The paper solves it by iterative reweighting: with the diagonal
 * D_uu = 1 / ||v_u - W h_u|| of the current fit, the next W and H
 * minimise the weighted squares sum_u D_uu ||v_u - W h_u||^2, whose
 * statistics are A = sum_u c_u d_u h_u h_u^T and B = sum_u c_u d_u v_u
 * h_u^T. A user's weight multiplies its whole term, so its own h is the
 * same NNLS solve as without weights; only its share of A and B changes.
 * The online form follows from model.c's exact statistics: each re-solve
 * takes out the user's share with the weight it was added with and puts
 * it back with the weight of the new residual, so A and B are always the
 * exact weighted sums for the current h and weights, and the weights are
 * iterated as the users are re-solved (by events and by model_refine).
 *
 * Kong's weight 1 / ||r_u|| discounts every heavy user, genuine or not:
 * on a clean stream, where the heaviest users carry most of the loss, it
 * costs loss (+3.9% on the planted stream, docs/benchmarks.md section 8),
 * and it does not keep heavy bots out (ARI 0.887 there); a discount by
 * the volume ||v||^0.35 did keep them out but cost 29%. What sets bots
 * that click at random apart from people is that their profiles are
 * diffuse: a bot's residual, fitted or not, is about its Poisson noise
 * over thousands of items, while a person of the same volume clicks a
 * few hundred items again and again. Per unit of norm the residual
 * energy s^2 = ||r||^2 / ||v|| of bots is about 37 on that stream, that
 * of people 1 to 7 (median 2). So the weight is relative to the
 * population: with q_u = ||r_u||^4 / ||v_u||^2 (= s^4) and its median
 * over the users,
 *     d_u = 1                  if q_u <= Q = C^4 median_u q_u,
 *     d_u = max(Q / q_u, 2^-8) above,
 * C = MODEL_L21_C = 1.75 (s up to 1.75 times its median weighs 1): on a
 * clean stream nearly every user weighs 1 and l21 is none; the bots of
 * the planted stream weigh about 1/30. d is the reweighting of sum_u c_u
 * rho(||r_u||^2) with rho(L) = L up to t = sqrt(Q ||v_u||^2), then
 * 2 t - t^2 / L (model__l21_term), whose slope is Q / q, the weight
 * above the floor. The floor keeps a heavy genuine user the topics
 * happen not to fit from being written off for good, and lets heavy bots
 * keep some pull: a bot's pull on W, d ||v||^2 = Q / (||r|| / ||v||)^4,
 * grows as its relative noise falls with its volume. Measured
 * (docs/benchmarks.md, section 8): without a floor glibc's converged
 * loss is 5.5 times none's; at 2^-5 1.01 times, but 5 or 10 bots with
 * as many events as the users together take a topic; at 2^-8 they do
 * not, and glibc is 2.1 times none's converged (1.5 with the volume
 * discount before, 1.9 against its 5.9 under fit's default bound).
 *
 * Q moves with the population: it is set at each refresh (0, every
 * weight 1, before the first) from a histogram of q kept exact with
 * every re-solve, and a user's share holds the weight it went in with
 * until its next re-solve, stored as a code (model_user.wq, MODEL_L21_
 * STEPS per halving) so that the same weight comes out, bit for bit, as
 * went in. A and B are thus exact for the weights stored, which follow
 * Q lazily, as the weights followed the residuals before. A checkpoint
 * carries Q and the codes.
 *
 * This file owns what robust adds outside the fold: the loss, which the
 * identity of model.c cannot give from weighted statistics and which is
 * computed here by a pass over the users, and the summary of the weights
 * that metrics and records show. It changes no state.
 */
#include <math.h>
#include <string.h>

#include "model_impl.h"

/*
 * The true loss for the current W and H when A and B are weighted:
 *     sum_u c_u ||v_u - W h_u||^2
 *         = sum_u c_u (v_u^T v_u - 2 h_u^T (W^T v_u) + h_u^T G h_u),
 * each user's term against the current W and G (not the loss stored at
 * its solve), with v^T v counting the evicted mass as model.c does. One
 * pass over the profiles: O(nnz k + users k^2), the price of robust's
 * reported loss.
 */
void model__loss_users(const struct model *m, double *loss, double *norm)
{
    const uint32_t k = m->k, U = ids_slots(m->uids);
    double sl = 0, sn = 0;
    for (uint32_t u = 0; u < U; u++) {
        const struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE) || !(us->vnorm > 0))
            continue;
        double c = model__frame_weight(m, us->t);
        double h[MODEL_K_MAX], b[MODEL_K_MAX];
        const float *hu = m->H + (size_t)u * k;
        for (uint32_t j = 0; j < k; j++) {
            h[j] = (double)hu[j] * m->hs[j];
            b[j] = 0;
        }
        if (us->n) {
            const uint32_t *it = pool_items(&m->pool, us->cls, us->slab);
            const float *va = pool_vals(&m->pool, us->cls, us->slab);
            for (uint32_t q = 0; q < us->n; q++) {
                const float *wi = m->W + (size_t)it[q] * k;
                double v = va[q];
                for (uint32_t j = 0; j < k; j++)
                    b[j] += v * wi[j];
            }
        }
        double hb = 0, hgh = 0;
        for (uint32_t j = 0; j < k; j++) {
            if (h[j] == 0)
                continue;
            const double *gj = m->G + (size_t)j * k;
            double x = 0;
            for (uint32_t l = 0; l < k; l++)
                x += gj[l] * h[l];
            hgh += h[j] * x;
            hb += h[j] * b[j];
        }
        double l = us->vnorm - 2 * hb + hgh;
        sl += c * (l > 0 ? l : 0);
        sn += c * us->vnorm;
    }
    *loss = sl;
    *norm = sn;
}

void model_robust_summary(const struct model *m, double below,
                          struct model_robust_summary *out)
{
    memset(out, 0, sizeof(*out));
    out->lowest = 1;
    out->mean = 1;
    if (m->p.robust != MODEL_ROBUST_L21 || !m->nprof || !(m->dsum > 0))
        return;
    const double mean = m->dsum / m->nprof;
    double lo = INFINITY;
    for (uint32_t u = 0, U = ids_slots(m->uids); u < U; u++) {
        const struct model_user *us = &m->u[u];
        if (!(us->flags & MODEL_U_LIVE) || !us->n)
            continue;
        double w = model__uweight(m, us) / mean;
        if (w < below)
            out->below++;
        if (w < lo)
            lo = w;
    }
    out->lowest = isfinite(lo) ? lo : 1;
    out->mean = mean;
}

/* sum_u c_u rho(||r_u||^2): what a restart's candidate must beat under
 * robust = l21 (model_restart.c compares objectives, not squared losses,
 * or it would put back the fit to the outliers robust keeps out). */
double model__l21_objective(const struct model *m)
{
    double s = 0;
    for (uint32_t u = 0, U = ids_slots(m->uids); u < U; u++) {
        const struct model_user *us = &m->u[u];
        if ((us->flags & MODEL_U_LIVE) && us->loss > 0)
            s += model__frame_weight(m, us->t) *
                 model__l21_term(m, us->loss, us->vnorm);
    }
    return s;
}

/* The threshold Q on q = ||r||^4 / ||v||^2: MODEL_L21_C^4 times the
 * users' median q, read from the histogram at the middle of its bin (in
 * q's float bits: within 2^(1/16) of the median, 2^(1/64) in ||r||);
 * 0, every weight 1, while no user has a profile. */
void model__l21_threshold(struct model *m)
{
    if (!m->l21_users) {
        m->l21_q = 0;
        return;
    }
    const uint32_t half = (m->l21_users + 1) / 2;
    uint32_t b = 0, seen = 0;
    for (; b < MODEL_L21_BINS - 1; b++)
        if ((seen += m->l21_hist[b]) >= half)
            break;
    uint32_t bits = b << 20 | 1u << 19;
    float q;
    memcpy(&q, &bits, sizeof(q));
    double c2 = MODEL_L21_C * MODEL_L21_C;
    m->l21_q = isfinite(q) ? c2 * c2 * (double)q : 0;
}

void model__l21_recount(struct model *m)
{
    if (m->p.robust != MODEL_ROBUST_L21)
        return;
    memset(m->l21_hist, 0, MODEL_L21_BINS * sizeof(uint32_t));
    m->l21_users = 0;
    for (uint32_t u = 0, U = ids_slots(m->uids); u < U; u++) {
        const struct model_user *us = &m->u[u];
        if (us->flags & MODEL_U_LIVE)
            model__l21_count(m, us->loss, us->vnorm, 1);
    }
}
