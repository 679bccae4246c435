#!/usr/bin/python3
"""Robust benchmark: a planted stream with bots, model.robust none vs l21.

The stream: `nmfctl gen` plants --users users in --k segments over
--items items (--events events, 5% noise), then --bots bot users
(b0, b1, ...) click items uniformly at random, as many events in total
as the normal users together (--bot-share 1.0), interleaved with the
normal events at random positions. Each variant is fitted by
`nmfctl fit --set model.k=K --set model.robust=...` (one pass, then the
idle refinement) and scored on the normal users only: the adjusted Rand
index (scikit-learn) of argmax h against the planted segment, and the
relative Frobenius loss of the normal users' part of the matrix. With
--clean the same runs on the stream without bots, which gives what
robust costs where there is nothing to be robust against: loss and fold
rate (events / fit seconds, median of --runs alternating runs).

Run with Debian's /usr/bin/python3 (numpy, scikit-learn, msgpack):
    bench/robust.py --nmfctl build/ctl/nmfctl [--clean] [--refine-work 0]
Prints one line per variant; the exit status is 0 whatever the figures
(docs/benchmarks.md, section 8, has them and the targets).
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

import msgpack
import numpy as np
from sklearn.metrics import adjusted_rand_score


def kv(line):
    return dict(t.split("=", 1) for t in line.split() if "=" in t)


def make_stream(nmfctl, d, users, items, k, events, bots, share, seed):
    """Writes the planted stream (with bots unless bots == 0) and returns
    (path, truth: user -> segment)."""
    base = os.path.join(d, "planted.csv")
    truth = os.path.join(d, "truth.csv")
    with open(base, "w") as f:
        subprocess.run([nmfctl, "gen", "--users", str(users), "--items",
                        str(items), "--k", str(k), "--events", str(events),
                        "--seed", str(seed), "--truth", truth], stdout=f,
                       check=True)
    seg = {}
    with open(truth) as f:
        next(f)
        for line in f:
            u, s = line.strip().split(",")[:2]
            seg[u] = int(s)
    with open(base) as f:
        header = next(f)
        rows = [line.rstrip("\n").split(",") for line in f]
    if bots:
        rng = random.Random(seed)
        nb = int(round(share * len(rows)))
        ts0, ts1 = int(rows[0][3]), int(rows[-1][3])
        bot = [["b%d" % rng.randrange(bots), "i%d" % rng.randrange(items),
                "1", str(rng.randint(ts0, ts1))] for _ in range(nb)]
        rows = sorted(rows + bot, key=lambda r: int(r[3]))
    path = os.path.join(d, "stream%s.csv" % ("_bots" if bots else ""))
    with open(path, "w") as f:
        f.write(header)
        for r in rows:
            f.write(",".join(r) + "\n")
    return path, seg, rows


def fit(nmfctl, path, k, robust, snap, extra):
    cmd = [nmfctl, "fit", "--events", path, "--set", "model.k=%d" % k,
           "--set", "model.robust=" + robust, "--out", snap] + extra
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.monotonic() - t0
    if p.returncode:
        sys.exit("%s: %s" % (" ".join(cmd), p.stderr))
    return kv(p.stdout.strip().splitlines()[-1]), secs


def score(snap, seg, rows):
    with open(snap, "rb") as f:
        doc = msgpack.unpackb(f.read(), raw=False)
    k = doc["k"]
    su, si = doc["users"], doc["items"]
    W = np.frombuffer(doc["W"], "<f4").reshape(len(si), k).astype(float)
    H = np.frombuffer(doc["H"], "<f4").reshape(len(su), k).astype(float)
    uidx = {u: j for j, u in enumerate(su)}
    iidx = {i: j for j, i in enumerate(si)}
    normal = [u for u in seg if u in uidx]
    pred = [int(np.argmax(H[uidx[u]])) for u in normal]
    ari = adjusted_rand_score([seg[u] for u in normal], pred)
    # Relative loss of the normal users' columns, summed weights.
    X = {}
    for u, i, w, _ in rows:
        if u in seg:
            X[(u, i)] = X.get((u, i), 0.0) + float(w)
    norm = sum(v * v for v in X.values())
    cross = sum(v * H[uidx[u]].dot(W[iidx[i]]) for (u, i), v in X.items())
    Hn = H[[uidx[u] for u in normal]]
    quad = np.trace((W.T @ W) @ (Hn.T @ Hn))
    return ari, (norm - 2 * cross + quad) / norm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nmfctl", default="build/ctl/nmfctl")
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--bots", type=int, default=40)
    ap.add_argument("--bot-share", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clean", action="store_true")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--refine-work", help="nmfctl fit's --refine-work "
                    "(0: refine to convergence; default: fit's own)")
    a = ap.parse_args()
    extra = sum((["--set", s] for s in a.set), [])
    if a.refine_work is not None:
        extra += ["--refine-work", a.refine_work]
    with tempfile.TemporaryDirectory() as d:
        path, seg, rows = make_stream(a.nmfctl, d, a.users, a.items, a.k,
                                      a.events, 0 if a.clean else a.bots,
                                      a.bot_share, a.seed)
        print("stream %s: %d events, %d normal users, %d bots" %
              ("clean" if a.clean else "with bots", len(rows), len(seg),
               0 if a.clean else a.bots))
        secs = {"none": [], "l21": []}
        res = {}
        for r in range(a.runs):
            for robust in ("none", "l21"):
                snap = os.path.join(d, robust + ".snap")
                out, s = fit(a.nmfctl, path, a.k, robust, snap, extra)
                secs[robust].append(s)
                res[robust] = (out, score(snap, seg, rows))
        for robust in ("none", "l21"):
            out, (ari, rel) = res[robust]
            med = sorted(secs[robust])[len(secs[robust]) // 2]
            print("robust=%-4s ari=%.4f normal_rel_loss=%.5f "
                  "fit_rel_loss=%s fit_s=%.2f events_per_s=%.0f" %
                  (robust, ari, rel, out.get("loss", "?"), med,
                   len(rows) / med))


if __name__ == "__main__":
    main()
