#!/usr/bin/python3
"""KL benchmark: nmfd's streaming fit under model.loss = kl against
scikit-learn's batch NMF with the same divergence.

For every events CSV in the data directory (the *_items.csv name files
are skipped) at rank k = min(--k, items):

  nmfd   nmfctl fit --set model.loss=kl (one pass in file order through
         the daemon's model, then its idle refinement, to convergence
         unless --refine-work bounds it), its divergence
         recomputed here from the dense snapshot (and nmfctl eval's
         checked against it)
  NMF    sklearn NMF(beta_loss='kullback-leibler', solver='mu',
         init='nndsvda'), max_iter --max-iter and tol --tol: the batch
         reference, converged (its n_iter is printed)

The matrix is X = users x items with the weights of each (user, item)
summed, as nmfctl eval builds it. Both divergences are computed here by
the same sparse formula, from X and the factors only:

    D(X || W H) = sum_{(u,i) in nnz(X)} (X_ui log(X_ui / (W H)_ui) - X_ui)
                  + (sum_u w_u)^T (sum_i h_i)

and reported per unit of weight (D / sum X), nmfd's reported figure.
ratio = nmfd / NMF; the target is <= 1.02 (1 when both fit X exactly,
below 1e-9 per unit of weight). nmfd_s is the last fit's wall clock,
nmfd_cpu the median CPU seconds (user + system) of --runs fits.

Run with Debian's /usr/bin/python3 (numpy, scipy, scikit-learn, msgpack).
"""

import argparse
import glob
import os
import sys
import tempfile
import time
import warnings

import numpy as np
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality import read_events, run_nmfd, snapshot_factors  # noqa: E402


def kl_div(X, W, H):
    """(D(X || W H), sum X) by the sparse formula, float64."""
    W = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    coo = X.tocoo()
    pred = np.einsum("ij,ij->i", W[coo.row], H[:, coo.col].T)
    v = coo.data
    with np.errstate(divide="ignore"):
        terms = np.where(v > 0, v * np.log(v / pred) - v, 0.0)
    total = float(W.sum(axis=0) @ H.sum(axis=1))
    return float(terms.sum()) + total, float(v.sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nmfctl", default="build/ctl/nmfctl")
    ap.add_argument("--data", default="data")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--max-iter", type=int, default=5000)
    ap.add_argument("--tol", type=float, default=1e-7)
    ap.add_argument("--refine-rounds", type=int, default=None)
    ap.add_argument("--refine-work", type=float, default=0,
                    help="nmfctl fit's bound on the refinement, a share of "
                    "the pass's work; 0 (default here) refines to "
                    "convergence")
    ap.add_argument("--only", default=None, help="one data set's name")
    ap.add_argument("--runs", type=int, default=1,
                    help="fits per data set; nmfd_cpu is the median of "
                    "their CPU seconds (the divergence is the same: the "
                    "fit is deterministic, and checked to be)")
    ap.add_argument("--no-ref", action="store_true",
                    help="skip scikit-learn (ratio and its columns: nan)")
    a = ap.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    print("%-22s %4s %12s %12s %7s %8s %8s %8s %6s" %
          ("data", "k", "nmfd", "NMF-KL", "ratio", "nmfd_s", "nmfd_cpu",
           "NMF_s", "iters"))
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(glob.glob(os.path.join(a.data, "*.csv"))):
            name = os.path.basename(path)[:-4]
            if name.endswith("_items") or (a.only and name != a.only):
                continue
            users, items, X, _ = read_events(path)
            k = min(a.k, len(items))
            snap = os.path.join(tmp, name + ".snap")
            cpus, mines = [], []
            for _ in range(max(1, a.runs)):
                fit, ev, secs = run_nmfd(a.nmfctl, path, k, a.refine_rounds,
                                         snap, ["model.loss=kl"],
                                         work=a.refine_work)
                cpus.append(fit["_cpu"])
                W, H = snapshot_factors(snap, users, items)
                d, n = kl_div(X, W, H)
                mine = d / n
                if abs(float(ev["loss"]) - mine) > 1e-6 * mine + 1e-9:
                    raise SystemExit("%s: nmfctl eval says %s, here %.12g" %
                                     (name, ev["loss"], mine))
                mines.append(mine)
            if len(set(mines)) != 1:
                raise SystemExit("%s: the fits differ: %s" % (name, mines))
            cpu = float(np.median(cpus))
            if a.no_ref:
                print("%-22s %4d %12.6g %12s %7s %8.2f %8.2f %8s %6s" %
                      (name, k, mine, "-", "-", secs, cpu, "-", "-"),
                      flush=True)
                continue
            t0 = time.monotonic()
            m = NMF(n_components=k, beta_loss="kullback-leibler",
                    solver="mu", init="nndsvda", max_iter=a.max_iter,
                    tol=a.tol, random_state=0)
            Ws = m.fit_transform(X)
            ssecs = time.monotonic() - t0
            ds, _ = kl_div(X, Ws, m.components_)
            ref = ds / n
            # Both exact (k = the item count fits X exactly): a ratio of
            # rounding errors says nothing; shown as 1.
            exact = mine < 1e-9 and ref < 1e-9
            ratio = 1.0 if exact else (mine / ref if ref > 0 else
                                       float("inf"))
            worst = max(worst, ratio)
            print("%-22s %4d %12.6g %12.6g %7.4f %8.2f %8.2f %8.2f %6d" %
                  (name, k, mine, ref, ratio, secs, cpu, ssecs, m.n_iter_),
                  flush=True)
    if not a.no_ref:
        print("worst ratio %.4f (target <= 1.02)" % worst)


if __name__ == "__main__":
    main()
