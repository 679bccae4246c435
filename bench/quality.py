#!/usr/bin/python3
"""Quality benchmark: nmfd's streaming fit against scikit-learn's NMF.

For every events CSV in the data directory (user,item,weight,ts; the
*_items.csv name files are skipped) at rank k (default 16):

  nmfd       nmfctl fit --refine-work 0 (one pass in file order through
             the daemon's model, then its idle refinement run to
             convergence, as the daemon does when a stream goes quiet),
             scored by nmfctl eval
  nmfd-pass  the same single pass without refinement (--refine-rounds 0)
  NMF        sklearn NMF(solver='cd'), run to convergence: the batch
             reference
  MB-1pass   sklearn MiniBatchNMF, one epoch (max_iter=1) over the users
             in order of first appearance
  partial    sklearn MiniBatchNMF.partial_fit fed the users in order of
             first appearance in the stream, batch_size users a call,
             one pass

The matrix is X = users x items with the weights of each (user, item)
summed, as nmfctl eval builds it. Every loss is the relative Frobenius
loss ||X - W H||^2 / ||X||^2 computed by the same sparse formula

    ||X||^2 - 2 sum_{(u,i) in nnz(X)} X_ui (W H)_ui + trace((W^T W)(H H^T))

For the scikit-learn streaming models the user factors are a final
transform(X) with transform_max_iter=500, i.e. they get a full re-solve
of every user against their final components, which only helps them.
nmfd's loss is taken from nmfctl eval and recomputed here from the
snapshot; the two must agree.

With --stream, a second comparison instead, of the streaming peers on
the same stream, alternating runs (--runs, medians of the times):

  fit        nmfctl fit, as it is (one pass, then the idle refinement,
             bounded by default to a quarter of the pass's work); its
             loss recomputed here from the dense snapshot
  fit-pass   the same with --refine-rounds 0, the pass alone
  partial    MiniBatchNMF.partial_fit fed the events in file order: after
             every --chunk events (default 2000), one call on the current
             rows of X (summed weights so far) of the users those events
             touched; the item set is the whole file's from the start,
             which scikit-learn needs and a stream would not give it.
             Its user factors are a final transform(X) (500 iterations)
             of the final X; the time is that of the partial_fit calls
             and the transform only, not of building the rows in Python.

With --reach, for each stream: partial_fit's final loss and time as
above, then the time nmfctl fit takes to get at or below that loss: the
pass alone, fit as it is, then fit --refine-work 0 with --refine-rounds
1, 2, 4, ..., the first that gets there (median of --runs). A stream
where partial_fit takes very long (the planted 2 M-event one: over 1000
s) need not run it each time: --baseline FILE (JSON) keeps each result
with what it depends on (the file's sha256, k, the chunk, scikit-learn's
version) and the host it ran on, and reuses it when they match;
--partial-only only fills it.

k is min(--k, items) there. Every loss is computed here, by the formula
above, from X and the factors (nmfd's snapshot, scikit-learn's
components_ and transform): none comes from nmfd's own code.

Run with Debian's /usr/bin/python3 (numpy, scipy, scikit-learn, msgpack).
"""

import argparse
import csv
import glob
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import msgpack
import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import NMF, MiniBatchNMF
from sklearn.exceptions import ConvergenceWarning


def ts_ms(raw):
    """The CSV ts rule: below 1e11 seconds, else milliseconds."""
    v = int(raw)
    return v * 1000 if v < 100000000000 else v


def read_events(path):
    """Users in first-appearance order, items, and X (users x items,
    summed weights, CSR float64). Rows nmfctl would reject are skipped
    the same way (empty ids, bad weights)."""
    users, items = {}, {}
    rows, cols, vals = [], [], []
    events = 0
    with open(path, newline="", encoding="utf-8") as f:
        rd = csv.reader(f)
        header = [h.strip().lower() for h in next(rd)]
        cu, ci = header.index("user"), header.index("item")
        cw = header.index("weight") if "weight" in header else None
        for rec in rd:
            if not rec or len(rec) != len(header):
                continue
            u, i = rec[cu], rec[ci]
            if not u or not i:
                continue
            w = 1.0
            if cw is not None and rec[cw].strip():
                try:
                    w = float(rec[cw])
                except ValueError:
                    continue
                if not np.isfinite(w) or w < 0:
                    continue
            rows.append(users.setdefault(u, len(users)))
            cols.append(items.setdefault(i, len(items)))
            vals.append(w)
            events += 1
    X = sp.csr_matrix(
        (np.asarray(vals, dtype=np.float64), (rows, cols)),
        shape=(len(users), len(items)),
    )
    X.sum_duplicates()
    return list(users), list(items), X, events


def sparse_loss(X, W, H):
    """(||X - W H||^2, ||X||^2) by the sparse formula, float64."""
    W = np.asarray(W, dtype=np.float64)
    H = np.asarray(H, dtype=np.float64)
    coo = X.tocoo()
    norm = float(coo.data @ coo.data)
    pred = np.einsum("ij,ij->i", W[coo.row], H[:, coo.col].T)
    cross = float(coo.data @ pred)
    trace = float(np.sum((W.T @ W) * (H @ H.T)))
    return norm - 2.0 * cross + trace, norm


def kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


def run_nmfd(nmfctl, path, k, rounds, snap, extra_sets, work=None):
    cmd = [nmfctl, "fit", "--events", path, "--set", "model.k=%d" % k,
           "--out", snap]
    for s in extra_sets:
        cmd += ["--set", s]
    if rounds is not None:
        cmd += ["--refine-rounds", str(rounds)]
    if work is not None:
        cmd += ["--refine-work", str(work)]
    t0 = time.monotonic()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd),
                                                   p.returncode, p.stderr))
    fit = kv(p.stdout.strip().splitlines()[-1])
    # CPU seconds of the fit process (user + system), which a loaded host
    # stretches far less than the wall clock.
    fit["_cpu"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    p = subprocess.run([nmfctl, "eval", "--snapshot", snap, "--events",
                        path], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("eval failed (%d): %s" % (p.returncode, p.stderr))
    ev = kv(p.stdout.strip().splitlines()[-1])
    return fit, ev, secs


def snapshot_factors(snap, users, items):
    """W (users x k) and H (k x items) in scikit-learn's orientation from
    a dense snapshot file; ids the snapshot lacks get zero factors."""
    with open(snap, "rb") as f:
        return doc_factors(msgpack.unpackb(f.read(), raw=False), users, items)


def doc_factors(doc, users, items):
    """The same from a decoded dense snapshot (docs/snapshot-format.md)."""
    k = doc["k"]
    su, si = doc["users"], doc["items"]
    Wm = np.frombuffer(doc["W"], "<f4").reshape(len(si), k)
    Hm = np.frombuffer(doc["H"], "<f4").reshape(len(su), k)
    uidx = {u: j for j, u in enumerate(su)}
    iidx = {i: j for j, i in enumerate(si)}
    W = np.zeros((len(users), k))
    H = np.zeros((k, len(items)))
    for r, u in enumerate(users):
        j = uidx.get(u)
        if j is not None:
            W[r] = Hm[j]
    for c, i in enumerate(items):
        j = iidx.get(i)
        if j is not None:
            H[:, c] = Wm[j]
    return W, H


def run_nmf(X, k, max_iter, tol):
    t0 = time.monotonic()
    m = NMF(n_components=k, solver="cd", max_iter=max_iter, tol=tol,
            random_state=0)
    W = m.fit_transform(X)
    secs = time.monotonic() - t0
    return sparse_loss(X, W, m.components_), secs, m.n_iter_


def mb_model(k, batch, seed):
    return MiniBatchNMF(n_components=k, batch_size=batch, max_iter=1,
                        transform_max_iter=500, random_state=seed)


def run_mb_pass(X, k, batch):
    t0 = time.monotonic()
    m = mb_model(k, batch, 0)
    m.fit(X)
    W = m.transform(X)
    secs = time.monotonic() - t0
    return sparse_loss(X, W, m.components_), secs


def run_partial(X, k, batch):
    """partial_fit over the users in first-appearance order (X's row
    order), batch users a call, one pass. The first call initialises
    from its own batch only, as a stream would."""
    t0 = time.monotonic()
    m = mb_model(k, batch, 0)
    n = X.shape[0]
    for s in range(0, n, batch):
        m.partial_fit(X[s:s + batch])
    W = m.transform(X)
    secs = time.monotonic() - t0
    return sparse_loss(X, W, m.components_), secs


def read_stream(path, users, items):
    """The events in file order as index arrays (user, item, weight), by
    the same rules as read_events."""
    uidx = {u: j for j, u in enumerate(users)}
    iidx = {i: j for j, i in enumerate(items)}
    us, its, ws = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        rd = csv.reader(f)
        header = [h.strip().lower() for h in next(rd)]
        cu, ci = header.index("user"), header.index("item")
        cw = header.index("weight") if "weight" in header else None
        for rec in rd:
            if not rec or len(rec) != len(header):
                continue
            u, i = rec[cu], rec[ci]
            if not u or not i:
                continue
            w = 1.0
            if cw is not None and rec[cw].strip():
                try:
                    w = float(rec[cw])
                except ValueError:
                    continue
                if not np.isfinite(w) or w < 0:
                    continue
            us.append(uidx[u])
            its.append(iidx[i])
            ws.append(w)
    return (np.asarray(us, dtype=np.int64), np.asarray(its, dtype=np.int64),
            np.asarray(ws, dtype=np.float64))


def stream_batches(ev, nusers, nitems, chunk):
    """For each chunk of events: the touched users and their rows of the
    summed matrix so far (CSR), built before any timing starts."""
    us, its, ws = ev
    rows = {}
    out = []
    for s in range(0, len(us), chunk):
        touched = []
        seen = set()
        for u, i, w in zip(us[s:s + chunk], its[s:s + chunk],
                           ws[s:s + chunk]):
            r = rows.setdefault(int(u), {})
            r[int(i)] = r.get(int(i), 0.0) + float(w)
            if u not in seen:
                seen.add(u)
                touched.append(int(u))
        indptr, ind, val = [0], [], []
        for u in touched:
            r = rows[u]
            ind.extend(r.keys())
            val.extend(r.values())
            indptr.append(len(ind))
        out.append(sp.csr_matrix((np.asarray(val), np.asarray(ind),
                                  np.asarray(indptr)),
                                 shape=(len(touched), nitems)))
    return out


def run_partial_stream(X, batches, k, seed):
    """The loss, the wall seconds and the CPU seconds of this process
    (every thread's, numpy's BLAS included) of partial_fit's pass."""
    t0 = time.monotonic()
    c0 = time.process_time()
    m = MiniBatchNMF(n_components=k, batch_size=2048,
                     transform_max_iter=500, random_state=seed)
    for b in batches:
        m.partial_fit(b)
    W = m.transform(X)
    secs = time.monotonic() - t0
    cpu = time.process_time() - c0
    return sparse_loss(X, W, m.components_), secs, cpu


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def baseline_key(path, k, chunk):
    """What a recorded partial_fit result depends on: the stream's bytes,
    k, the chunk, scikit-learn's version (the seed is fixed)."""
    import sklearn
    return {"file": os.path.basename(path), "sha256": file_digest(path),
            "k": k, "chunk": chunk, "sklearn": sklearn.__version__}


def baseline_load(fname, key):
    """A recorded (loss, seconds) for key, or None."""
    if not fname or not os.path.exists(fname):
        return None
    with open(fname) as f:
        for rec in json.load(f):
            if rec["key"] == key:
                return rec
    return None


def baseline_save(fname, key, loss, secs):
    recs = []
    if os.path.exists(fname):
        with open(fname) as f:
            recs = [r for r in json.load(f) if r["key"] != key]
    recs.append({"key": key, "loss": loss, "seconds": secs,
                 "host": platform.node(), "cpus": os.cpu_count(),
                 "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    tmp = fname + ".tmp"
    with open(tmp, "w") as f:
        json.dump(recs, f, indent=1)
        f.write("\n")
    os.replace(tmp, fname)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def stream_main(args, paths):
    head = ("| dataset | events | users | items | k | fit loss | fit-pass "
            "loss | partial loss | fit / partial loss | s fit | s fit-pass "
            "| s partial | s partial + read | fit / partial time | "
            "fit / (partial + read) | cpu s fit | cpu s partial | "
            "cpu s partial + read | fit / partial cpu | "
            "fit / (partial + read) cpu | runs |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    misses = []
    tmp = tempfile.mkdtemp(prefix="nmfd-stream-")
    for path in paths:
        name = os.path.basename(path)[:-4]
        users, items, X, events = read_events(path)
        k = min(args.k, X.shape[1])
        snap = os.path.join(tmp, name + ".snap")
        snap0 = os.path.join(tmp, name + ".pass.snap")
        s_fit, s_pass, s_pf, c_fit, c_pf = [], [], [], [], []
        s_pr, c_pr = [], []
        rel_fit = rel_pass = rel_pf = None
        for r in range(args.runs):
            # Alternate the order so that neither always runs first.
            order = ("fit", "partial") if r % 2 == 0 else ("partial", "fit")
            for what in order:
                if what == "fit":
                    fit, _, secs = run_nmfd(args.nmfctl, path, k, None, snap,
                                            args.set)
                    s_fit.append(secs)
                    c_fit.append(fit["_cpu"])
                    _, _, secs = run_nmfd(args.nmfctl, path, k, 0, snap0,
                                          args.set)
                    s_pass.append(secs)
                else:
                    # What fit's clock holds beside the model's work, a
                    # partial_fit user pays too: reading the CSV and
                    # building each chunk's rows. Timed apart, per run.
                    t0, c0 = time.monotonic(), time.process_time()
                    batches = stream_batches(read_stream(path, users, items),
                                             X.shape[0], X.shape[1],
                                             args.chunk)
                    rd, rc = time.monotonic() - t0, time.process_time() - c0
                    (l, norm), secs, cpu = run_partial_stream(X, batches, k,
                                                              0)
                    s_pf.append(secs)
                    c_pf.append(cpu)
                    s_pr.append(secs + rd)
                    c_pr.append(cpu + rc)
                    rel_pf = l / norm
        W, H = snapshot_factors(snap, users, items)
        l, norm = sparse_loss(X, W, H)
        rel_fit = l / norm
        W, H = snapshot_factors(snap0, users, items)
        l, _ = sparse_loss(X, W, H)
        rel_pass = l / norm
        mf, mp, mpf = median(s_fit), median(s_pass), median(s_pf)
        mpr, cf, cpr = median(s_pr), median(c_fit), median(c_pr)
        cpf = median(c_pf)
        # Judged on the wall clock, each side from the same CSV: fit's
        # process (start, read, fold, refine, write) against partial_fit
        # with its reading. The ratio to partial_fit's model work alone
        # (its input built before its clock starts) is printed beside it;
        # the CPU seconds say what a loaded host did to either wall time.
        ok = rel_fit < rel_pf and mf <= mpr
        if not ok:
            misses.append(name)
        print("| %s | %d | %d | %d | %d | %s | %s | %s | %.3f | %.3f | %.3f "
              "| %.3f | %.3f | %.2f | %.2f%s | %.3f | %.3f | %.3f | %.2f "
              "| %.2f | %d |" % (
                  name, events, X.shape[0], X.shape[1], k, fmt_loss(rel_fit),
                  fmt_loss(rel_pass), fmt_loss(rel_pf),
                  rel_fit / rel_pf if rel_pf > 0 else float("nan"), mf, mp,
                  mpf, mpr, mf / mpf, mf / mpr, "" if ok else " MISS", cf,
                  cpf, cpr, cf / cpf, cf / cpr, args.runs),
              flush=True)
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)
    print()
    print("times: medians of %d alternating runs, wall seconds, and CPU "
          "seconds (fit: its process, from getrusage; partial: this "
          "process's, every thread's); partial: "
          "MiniBatchNMF.partial_fit every %d events on the touched users' "
          "rows, then transform(X); + read: with the CSV read and each "
          "chunk's rows built, as fit's own time holds its reading; the "
          "target is judged on fit / (partial + read)" % (args.runs,
                                                           args.chunk))
    if misses:
        print("target missed (fit no slower than partial_fit, at a lower "
              "loss): %s" % ", ".join(misses))
        return 1
    print("target met on every dataset")
    return 0


def partial_baseline(args, path, users, items, X):
    """partial_fit's final loss and time on the stream of path: taken from
    --baseline when it holds a record for these bytes and settings (a
    large stream takes partial_fit a long time), else run now and, with
    --baseline, recorded there. Returns (loss, seconds, recorded?)."""
    k = min(args.k, X.shape[1])
    key = baseline_key(path, k, args.chunk) if args.baseline else None
    rec = baseline_load(args.baseline, key) if key else None
    if rec is not None:
        return rec["loss"], rec["seconds"], rec["date"]
    batches = stream_batches(read_stream(path, users, items), X.shape[0],
                             X.shape[1], args.chunk)
    (l, norm), secs, _ = run_partial_stream(X, batches, k, 0)
    if key:
        baseline_save(args.baseline, key, l / norm, secs)
    return l / norm, secs, None


def reach_main(args, paths):
    """For each stream: the time nmfctl fit takes to reach partial_fit's
    final loss. fit runs as the pass alone (--refine-rounds 0), then as
    it is (its default bound), then with --refine-work 0 --refine-rounds
    1, 2, 4, ... (each a whole run from the file, --runs times, median
    time) until the loss computed here from its snapshot is at most
    partial_fit's; the first that gets there gives the time."""
    head = ("| dataset | events | users | items | k | partial loss | s partial "
            "| partial measured | fit run | fit loss | s fit | fit / "
            "partial time |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    tmp = tempfile.mkdtemp(prefix="nmfd-reach-")
    misses = []
    for path in paths:
        name = os.path.basename(path)[:-4]
        users, items, X, events = read_events(path)
        k = min(args.k, X.shape[1])
        rel_pf, s_pf, when = partial_baseline(args, path, users, items, X)
        if args.partial_only:
            print("| %s | %d | %d | %d | %d | %s | %.2f | %s | | | | |" % (
                name, events, X.shape[0], X.shape[1], k, fmt_loss(rel_pf),
                s_pf, when or "now"), flush=True)
            continue
        snap = os.path.join(tmp, name + ".snap")
        tries = [("pass", 0, None), ("default", None, None)]
        r = 1
        while r <= args.reach_max_rounds:
            tries.append(("%d rounds" % r, r, 0))
            r *= 2
        found = None
        for label, rounds, work in tries:
            secs = []
            for _ in range(args.runs):
                _, _, s = run_nmfd(args.nmfctl, path, k, rounds, snap,
                                   args.set, work)
                secs.append(s)
            W, H = snapshot_factors(snap, users, items)
            l, norm = sparse_loss(X, W, H)
            print("  %s: %s: loss %s, %.2f s" % (name, label,
                                                 fmt_loss(l / norm),
                                                 median(secs)),
                  file=sys.stderr, flush=True)
            if l / norm <= rel_pf:
                found = (label, l / norm, median(secs))
                break
        if found is None:
            misses.append(name)
            print("| %s | %d | %d | %d | %d | %s | %.2f | %s | > %d rounds | "
                  "not reached | | MISS |" % (
                      name, events, X.shape[0], X.shape[1], k,
                      fmt_loss(rel_pf), s_pf, when or "now",
                      args.reach_max_rounds), flush=True)
            continue
        r, lf, sf = found
        ok = sf <= args.reach_target * s_pf
        if not ok:
            misses.append(name)
        print("| %s | %d | %d | %d | %d | %s | %.2f | %s | %s | %s | %.2f "
              "| %.4f%s |" % (name, events, X.shape[0], X.shape[1], k,
                              fmt_loss(rel_pf), s_pf, when or "now", r,
                              fmt_loss(lf), sf, sf / s_pf,
                              "" if ok else " MISS"), flush=True)
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)
    if args.partial_only:
        return 0
    print()
    print("fit: median of %d runs of the first of: the pass alone, fit as "
          "it is, fit --refine-work 0 --refine-rounds 1, 2, 4, ... whose "
          "loss is at most partial_fit's; target: at most %g x partial_fit's "
          "time" % (args.runs, args.reach_target))
    if misses:
        print("target missed: %s" % ", ".join(misses))
        return 1
    print("target met")
    return 0


def fmt_loss(rel):
    return "%.4f" % rel if rel >= 1e-4 else "%.2e" % rel


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nmfctl", required=True, help="path of nmfctl")
    ap.add_argument("--data", default=os.path.join(repo, "data"),
                    help="directory of events CSVs (default <repo>/data)")
    ap.add_argument("--stream", action="store_true",
                    help="compare nmfctl fit with partial_fit on the stream")
    ap.add_argument("--chunk", type=int, default=2000,
                    help="--stream: events per partial_fit call")
    ap.add_argument("--runs", type=int, default=3,
                    help="--stream: alternating runs per dataset")
    ap.add_argument("--reach", action="store_true",
                    help="time for nmfctl fit to reach partial_fit's "
                    "final loss on the stream")
    ap.add_argument("--reach-target", type=float, default=0.2,
                    help="--reach: fit / partial_fit time to meet "
                    "(default 0.2)")
    ap.add_argument("--reach-max-rounds", type=int, default=512,
                    help="--reach: give up past this many rounds")
    ap.add_argument("--baseline", default=None,
                    help="--reach, --stream: JSON file of recorded "
                    "partial_fit results, reused when the stream's bytes "
                    "and settings match, else written")
    ap.add_argument("--partial-only", action="store_true",
                    help="only run (or look up) partial_fit on each stream "
                    "and record it in --baseline")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1024,
                    help="MiniBatchNMF batch size in users (default 1024)")
    ap.add_argument("--nmf-max-iter", type=int, default=5000)
    ap.add_argument("--nmf-tol", type=float, default=1e-8)
    ap.add_argument("--refine-rounds", type=int, default=None,
                    help="passed to nmfctl fit (default: its own)")
    ap.add_argument("--set", action="append", default=[],
                    help="extra model.key=value for nmfctl fit")
    ap.add_argument("--only", action="append", default=[],
                    help="dataset name (file stem) to run; repeatable")
    ap.add_argument("--target", type=float, default=1.02,
                    help="nmfd / NMF loss ratio to meet (default 1.02)")
    args = ap.parse_args()

    warnings.simplefilter("ignore", ConvergenceWarning)
    paths = sorted(p for p in glob.glob(os.path.join(args.data, "*.csv"))
                   if not p.endswith("_items.csv"))
    if args.only:
        paths = [p for p in paths
                 if os.path.basename(p)[:-4] in args.only]
    if not paths:
        print("quality: no events CSV in %s" % args.data, file=sys.stderr)
        return 2
    if args.reach or args.partial_only:
        return reach_main(args, paths)
    if args.stream:
        return stream_main(args, paths)

    head = ("| dataset | users | items | events | nnz | nmfd | nmfd-pass "
            "| NMF | nmfd/NMF | MB-1pass | partial | ||X||^2 | nmfd abs "
            "| NMF abs | s nmfd | s NMF | s MB | s partial | rounds |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    misses = []
    tmp = tempfile.mkdtemp(prefix="nmfd-quality-")
    for path in paths:
        name = os.path.basename(path)[:-4]
        users, items, X, events = read_events(path)
        snap = os.path.join(tmp, name + ".snap")
        fit, ev, s_nmfd = run_nmfd(args.nmfctl, path, args.k,
                                   args.refine_rounds, snap, args.set, 0)
        W, H = snapshot_factors(snap, users, items)
        (l_py, norm) = sparse_loss(X, W, H)
        rel_nmfd = float(ev["loss"])
        if abs(l_py / norm - rel_nmfd) > 1e-6 * max(1.0, rel_nmfd):
            raise RuntimeError("%s: nmfctl eval says %g, numpy %g" %
                               (name, rel_nmfd, l_py / norm))
        snap0 = os.path.join(tmp, name + ".pass.snap")
        _, ev0, _ = run_nmfd(args.nmfctl, path, args.k, 0, snap0, args.set)
        (l_nmf, _), s_nmf, nmf_iter = run_nmf(X, args.k, args.nmf_max_iter,
                                              args.nmf_tol)
        (l_mb, _), s_mb = run_mb_pass(X, args.k, args.batch)
        (l_pf, _), s_pf = run_partial(X, args.k, args.batch)
        rel_nmf, rel_mb, rel_pf = l_nmf / norm, l_mb / norm, l_pf / norm
        # Below 1e-6 a relative loss is at the precision of float32
        # factors (the snapshot stores float32): both fits are exact.
        tiny = 1e-6
        if rel_nmf > tiny:
            ratio = "%.4f" % (rel_nmfd / rel_nmf)
            ok = rel_nmfd <= args.target * rel_nmf
        else:
            ratio = "n/a (both ~0)" if rel_nmfd <= tiny else "n/a (NMF ~0)"
            ok = rel_nmfd <= tiny
        ok = ok and rel_nmfd < rel_mb and rel_nmfd < rel_pf
        if not ok:
            misses.append(name)
        print("| %s | %d | %d | %d | %d | %s | %s | %s | %s%s | %s | %s "
              "| %.6g | %.4g | %.4g | %.2f | %.2f | %.2f | %.2f | %s%s |" % (
                  name, X.shape[0], X.shape[1], events, X.nnz,
                  fmt_loss(rel_nmfd), fmt_loss(float(ev0["loss"])),
                  fmt_loss(rel_nmf), ratio, "" if ok else " MISS",
                  fmt_loss(rel_mb), fmt_loss(rel_pf), norm, l_py, l_nmf,
                  s_nmfd, s_nmf, s_mb, s_pf, fit.get("refine_rounds", "?"),
                  "" if fit.get("converged") == "yes" else "*"),
              flush=True)
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)
    print()
    print("k=%d; NMF: solver=cd max_iter=%d tol=%g; MiniBatchNMF: "
          "batch_size=%d, transform_max_iter=500; rounds: nmfd refinement "
          "rounds (* = stopped by the bound, not converged)" % (
              args.k, args.nmf_max_iter, args.nmf_tol, args.batch))
    if misses:
        print("target missed (nmfd <= %.2f x NMF and below both streaming "
              "peers): %s" % (args.target, ", ".join(misses)))
        return 1
    print("target met on every dataset")
    return 0


if __name__ == "__main__":
    sys.exit(main())
