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
 * The weight is smoothed as d_u = 1 / max(||r_u||, eps ||v_u||)
 * (MODEL_L21_EPS): bounded for a user fitted almost exactly.
 *
 * Kong's weights alone do not keep bots out of the topics when the bots
 * are heavy: a few ids clicking uniformly at random, with as many events
 * as every genuine user together, make a uniform floor worth a topic (or
 * most of one). Once they own it they are fitted to their Poisson noise,
 * about half their norm, no worse in relation to their volume than a
 * genuine user, so no test on the residual alone can single them out at
 * that point; what sets them apart is that their volume buys them the
 * topic. So the weight is also discounted by the profile's norm:
 *     d_u = 1 / (max(||r_u||, eps ||v_u||) ||v_u||^gamma),
 * the reweighting of sum_u c_u ||v_u - W h_u|| / ||v_u||^gamma, which
 * goes from Kong's l2,1 norm (gamma = 0) to the l2,1 norm of the
 * normalised profiles (gamma = 1, every user one vote). MODEL_L21_GAMMA =
 * 0.35 is the smallest of those measured (docs/benchmarks.md, section 8)
 * that took the bots' topic back in every seed of the planted stream with
 * bots; 0.15 to 0.25 did in some seeds and not in others. It costs the
 * genuine heavy users some of their say, so the loss of a clean stream
 * rises (the same section). The weight is scale-free up to a common
 * factor, which changes no minimiser, and a function of the user's
 * stored loss and v^T v only (model__uweight), so it is never stored and
 * a checkpoint carries it.
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
        double w = model__uweight(m, us->loss, us->vnorm) / mean;
        if (w < below)
            out->below++;
        if (w < lo)
            lo = w;
    }
    out->lowest = isfinite(lo) ? lo : 1;
    out->mean = mean;
}

/* sum_u c_u ||r_u|| / ||v_u||^gamma: what a restart's candidate must beat under
 * robust = l21 (model_restart.c compares objectives, not squared losses,
 * or it would put back the fit to the outliers robust keeps out). */
double model__l21_objective(const struct model *m)
{
    double s = 0;
    for (uint32_t u = 0, U = ids_slots(m->uids); u < U; u++) {
        const struct model_user *us = &m->u[u];
        if ((us->flags & MODEL_U_LIVE) && us->loss > 0)
            s += model__frame_weight(m, us->t) *
                 model__l21_term(us->loss, us->vnorm);
    }
    return s;
}
