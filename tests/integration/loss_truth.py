#!/usr/bin/python3
"""The loss nmfd reports is the loss of the model it publishes.

Every reported relative loss must be ||V - WH||^2 / ||V||^2 for the W and H
of that moment (docs/design.md section 1), not a sum of per-user losses taken
against older W's. Each case recomputes it from the dense snapshot and the
events alone (harness.true_rel_loss: a dense residual, every event summed,
nothing evicted) and asks for agreement within 1%:

  - `nmfctl fit` after one pass without refinement, on prefixes of real
    data sets (mid-stream: users solved against many older W's);
  - with eviction: crawlers click thousands of distinct items past
    model.profile_max; the evicted weight is counted exactly;
  - with decay: a half-life a fifth of the stream's span;
  - the daemon mid-stream: /snapshot at several epochs while a real data
    set streams through the broker, against the events folded so far.
"""
import csv
import os
import random
import subprocess
import sys
import time

import msgpack

sys.path.insert(0, os.path.dirname(__file__))
from harness import (DATA, NMFCTL, Procs, check, gen_planted, http_get,  # noqa: E402
                     read_events, true_rel_loss)

TOL = 0.01


def write_csv(path, events):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "weight", "ts"])
        for e in events:
            w.writerow(e)


def fit(ps, events_path, sets, name="fit"):
    out = os.path.join(ps.tmp, name + ".msgpack")
    args = [NMFCTL, "fit", "--events", events_path]
    for s in sets:
        args += ["--set", s]
    r = subprocess.run(args + ["--out", out], capture_output=True, timeout=300)
    check(r.returncode == 0, "nmfctl fit failed: %s" % r.stderr.decode())
    line = dict(kv.split("=", 1) for kv in r.stdout.decode().split())
    with open(out, "rb") as f:
        doc = msgpack.unpackb(f.read(), raw=False)
    # fit prints nine significant digits: 5e-9 apart at most.
    check(abs(float(line["loss"]) - doc["loss"]) <= 1e-8 * max(doc["loss"], 1e-300),
          "fit printed loss %s, its snapshot says %r" % (line["loss"], doc["loss"]))
    return doc, line


def agree(what, reported, truth):
    rel = abs(reported - truth) / truth
    print("%s: reported %.6g, recomputed %.6g (%.3f%% apart)"
          % (what, reported, truth, 100 * rel))
    check(rel <= TOL, "%s: the reported loss %.6g is %.2f%% away from the "
          "recomputed %.6g" % (what, reported, 100 * rel, truth))


def case_one_pass(ps):
    """Real data, one pass, no refinement, at several points of the stream."""
    for name in ("dslabs_movielens.csv", "lme4_insteval.csv"):
        path = os.path.join(DATA, name)
        check(os.path.exists(path), "no data set " + path)
        events = read_events(path)
        for share in (0.3, 0.6, 1.0):
            part = events[:int(len(events) * share)]
            prefix = os.path.join(ps.tmp, "prefix.csv")
            write_csv(prefix, part)
            doc, _ = fit(ps, prefix, ["model.refine_users=0", "model.k=16",
                                      "model.warmup_events=2000"])
            check(doc["events"] == len(part), "fit folded %d of %d events"
                  % (doc["events"], len(part)))
            agree("%s, first %d%% of the stream, one pass" % (name, 100 * share),
                  doc["loss"], true_rel_loss(part, doc))


def case_eviction(ps):
    """Bots past profile_max: what they lose is counted, exactly, and stays
    in the loss as residual."""
    path, _ = gen_planted(ps, 1500, 600, 6, 60000, 7)
    events = read_events(path)
    rng = random.Random(11)
    t0 = events[-1][3]
    # Crawlers: each visits 3,000 pages drawn from 200,000, far past a cap
    # that no real user of the stream reaches (its 600 items).
    bots = []
    cap = 1024
    for b in range(4):
        for n in range(3000):
            item = "page%d" % rng.randrange(200000)
            bots.append(("bot%d" % b, item, 1.0, t0 + 1 + b * 3000 + n))
    allev = events + bots
    allev.sort(key=lambda e: e[3])
    # Unit weights, no decay: once a user holds cap distinct items, every
    # new item ties the weakest and is dropped; a held item only grows.
    held = {}
    expected = 0.0
    for u, i, w, _ in allev:
        h = held.setdefault(u, set())
        if i not in h:
            if len(h) < cap:
                h.add(i)
            else:
                expected += w
    p = os.path.join(ps.tmp, "bots.csv")
    write_csv(p, allev)
    doc, line = fit(ps, p, ["model.profile_max=%d" % cap, "model.k=6",
                            "model.refine_users=0"], "bots")
    ev = float(line["evicted_weight"])
    print("evicted weight %g, expected %g" % (ev, expected))
    check(expected > 0 and ev == expected,
          "evicted_weight %g, expected %g" % (ev, expected))
    agree("planted stream with bots past profile_max=%d" % cap, doc["loss"],
          true_rel_loss(allev, doc))
    # The same with refinement: the truth still holds at convergence.
    doc, _ = fit(ps, p, ["model.profile_max=%d" % cap, "model.k=6"], "bots-refined")
    agree("the same, refined", doc["loss"], true_rel_loss(allev, doc))


def case_decay(ps):
    path, _ = gen_planted(ps, 2000, 800, 8, 80000, 3)
    events = read_events(path)
    span = events[-1][3] - events[0][3]
    hl = span // 5
    for refine in ("0", "2000"):
        doc, _ = fit(ps, path, ["model.half_life=%dms" % hl, "model.k=8",
                                "model.refine_users=" + refine], "decay")
        agree("planted stream, half_life %d ms, refine_users=%s" % (hl, refine),
              doc["loss"], true_rel_loss(events, doc, hl))


def case_daemon(ps):
    """/snapshot at several epochs while a real data set streams: each
    against the events folded by then (one partition keeps the order)."""
    path = os.path.join(DATA, "lme4_insteval.csv")
    events = read_events(path)
    brokers = ps.broker(partitions=1)
    d = ps.nmfd(brokers, ["snapshot.interval=500ms", "model.k=8",
                          "input.topics=nmf.events"])
    prod = ps.start([NMFCTL, "produce", "--brokers", brokers,
                     "--topic", "nmf.events", "--rate", "6000", path], "produce")
    seen = {}
    deadline = time.time() + 90
    while time.time() < deadline and len(events) not in seen:
        status, body = http_get(d.port, "/snapshot", timeout=10)
        if status == 200:
            doc = msgpack.unpackb(body, raw=False)
            if doc["events"] > 0:
                seen.setdefault(doc["events"], doc)
        time.sleep(0.2)
    print("snapshots at", sorted(seen))
    check(prod.wait(60) == 0, "nmfctl produce failed")
    check(len(events) in seen, "no snapshot of the whole stream")
    mid = sorted(n for n in seen if n < len(events))
    check(len(mid) >= 3, "only %d mid-stream snapshots" % len(mid))
    for n in mid[:: max(1, len(mid) // 4)] + [len(events)]:
        agree("daemon, epoch %d, %d of %d events" % (seen[n]["epoch"], n, len(events)),
              seen[n]["loss"], true_rel_loss(events[:n], seen[n]))


def main():
    with Procs() as ps:
        case_one_pass(ps)
        case_eviction(ps)
        case_decay(ps)
        case_daemon(ps)
    print("ok")


if __name__ == "__main__":
    main()
