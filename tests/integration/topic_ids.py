#!/usr/bin/python3
"""Topic identity across a crash and a re-seed (DESIGN.md section 1): nmfd
folds the first part of a planted stream from its random start (the
warm-up is set beyond it, so the seed comes when the stream pauses, after
W has been refreshed and topics published), converges, is killed
(SIGKILL) after a checkpoint, starts again on the same state and folds
the rest, which doubles the data, so the idle refinement tries a restart
from a fresh seed as well. The re-seeds must have happened (the columns
re-seeded count, from /metrics); when the stream pauses early the seed
can come before the first epoch checked here, which test_model's
a_*_keeps_each_topic_id check deterministically. Read back from
nmf.topics, every topic keeps its meaning from epoch to epoch, across the
crash too: its best cosine match among the previous epoch's topics is
itself. Every record carries `continuity`, a cosine in [0, 1] that agrees
with the one computed here from the records, and is high once the model
has settled; /topics and /metrics show it too."""
import math
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import (NMFCTL, Procs, check, converged, folded_all,  # noqa: E402
                     http_get, metric, read_topic_all, stop, wait_for)

K = 4
FIRST, REST = 12000, 24000
SETS = ["model.k=%d" % K, "model.warmup_events=%d" % (FIRST + 4000),
        "snapshot.interval=300ms", "snapshot.top_items=1000",
        "checkpoint.interval=1s", "model.refresh_interval=1s"]


def cosine(a, b):
    dot = sum(w * b.get(i, 0.0) for i, w in a.items())
    na = math.sqrt(sum(w * w for w in a.values()))
    nb = math.sqrt(sum(w * w for w in b.values()))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


def topic_epochs(brokers):
    """{epoch: {topic: record}} from nmf.topics, and {epoch: events} from
    the manifests."""
    import msgpack
    out, events = {}, {}
    for m in read_topic_all(brokers, "nmf.topics", timeout=60,
                            isolation="read_committed"):
        doc = msgpack.unpackb(m.value(), raw=False)
        out.setdefault(doc["epoch"], {})[doc["topic"]] = doc
    for m in read_topic_all(brokers, "nmf.snapshots", timeout=60,
                            isolation="read_committed"):
        doc = msgpack.unpackb(m.value(), raw=False)
        events[doc["epoch"]] = doc["events"]
    return out, events


def vec(rec):
    return {str(i): w for i, w in rec["top"]}


def main():
    import msgpack  # noqa: F401 (fail early without it)
    with Procs() as ps:
        events = os.path.join(ps.tmp, "events.csv")
        with open(events, "wb") as f:
            r = subprocess.run([NMFCTL, "gen", "--users", "800",
                                "--items", "120", "--k", str(K), "--events",
                                str(FIRST + REST), "--seed", "11"],
                               stdout=f, timeout=60)
        check(r.returncode == 0, "nmfctl gen failed")
        lines = open(events).read().splitlines(True)
        first = os.path.join(ps.tmp, "first.csv")
        rest = os.path.join(ps.tmp, "rest.csv")
        with open(first, "w") as f:
            f.writelines(lines[:1 + FIRST])
        with open(rest, "w") as f:
            f.writelines(lines[:1] + lines[1 + FIRST:])

        brokers = ps.broker(partitions=2)
        state = os.path.join(ps.tmp, "state")
        d = ps.nmfd(brokers, sets=SETS, state=state, name="first")
        ps.produce(brokers, first, extra=["--rate", "6000"])
        wait_for(lambda: folded_all(d.port, FIRST), 60, "the first part folded")
        wait_for(lambda: converged(d.port), 60, "the first model to converge")
        # The stream has paused short of warmup_events: the refinement
        # seeds W (model_refine) once a round of it has passed without an
        # event, which may come after the model first reads as converged;
        # read too early, the count missed a seed whose checkpoint then
        # kept the second process from seeding again.
        wait_for(lambda: (metric(d.port, "nmfd_topic_columns_reseeded") or 0) >= K,
                 60, "the warm-up's seed once the stream paused")
        wait_for(lambda: converged(d.port), 60, "the seeded model to converge")
        seeded = metric(d.port, "nmfd_topic_columns_reseeded")
        ck = metric(d.port, "nmfd_checkpoints_total") or 0
        wait_for(lambda: (metric(d.port, "nmfd_checkpoints_total") or 0) >= ck + 2,
                 30, "a checkpoint of the converged model")
        d.send_signal(signal.SIGKILL)
        d.wait()
        before, _ = topic_epochs(brokers)
        check(before, "no topic records before the crash")
        crash = max(before)

        d = ps.nmfd(brokers, sets=SETS, state=state, name="second")
        wait_for(lambda: metric(d.port, "nmfd_model_events") == FIRST, 30,
                 "the state loaded")
        ps.produce(brokers, rest, extra=["--rate", "8000"])
        wait_for(lambda: (metric(d.port, "nmfd_model_events") or 0) >= FIRST + REST,
                 90, "the rest folded")
        wait_for(lambda: converged(d.port), 90, "the second model to converge")
        epoch = metric(d.port, "nmfd_epoch")
        wait_for(lambda: metric(d.port, "nmfd_epoch") >= epoch + 2, 30,
                 "two epochs of the converged model")
        status, body = http_get(d.port, "/topics")
        check(status == 200, "/topics answered %d" % status)
        import json
        tops = json.loads(body)["topics"]
        check(len(tops) == K and all(0 <= t["continuity"] <= 1 for t in tops),
              "/topics without continuity: %s" % body[:300])
        lo = metric(d.port, "nmfd_topic_continuity_min")
        check(lo is not None and lo >= 0.95, "nmfd_topic_continuity_min %s" % lo)
        for j in range(K):
            v = metric(d.port, "nmfd_topic_continuity", '{topic="%d"}' % j)
            check(v is not None and lo <= v <= 1, "continuity of topic %d: %s" % (j, v))
        restarts = metric(d.port, "nmfd_model_restarts")
        reseeded = seeded + metric(d.port, "nmfd_topic_columns_reseeded")
        check(stop(d) == 0, "clean stop")
        epochs, folded = topic_epochs(brokers)

    after = sorted(e for e in epochs if e > crash)
    check(after, "no topic records after the crash")
    # From the first epoch that holds some of the first part (the random
    # start's topics, refined: the planted ones) on, every pair of
    # consecutive epochs: the crash and the rest of the stream included.
    # Under the sanitizers (folds ten times slower against the same 300 ms
    # epochs, so a random start still settling spans many epochs) from
    # the converged model before the crash.
    start = min(e for e in epochs if folded.get(e, 0) >= FIRST // 12)
    if os.environ.get("NMFD_SANITIZED"):
        start = max(e for e in epochs if e <= crash)
    order = sorted(e for e in epochs if e >= start)
    check(crash in order and len(order) > len(after),
          "no epoch before the crash to check")
    low, fresh = [], []
    for prev, cur in zip(order, order[1:]):
        a, b = epochs[prev], epochs[cur]
        check(sorted(a) == list(range(K)) and sorted(b) == list(range(K)),
              "epoch %d or %d lacks topics" % (prev, cur))
        for j in range(K):
            c = b[j].get("continuity")
            check(isinstance(c, float) and 0 <= c <= 1,
                  "epoch %d topic %d: continuity %r" % (cur, j, c))
            sims = [cosine(vec(b[j]), vec(a[i])) for i in range(K)]
            best = max(range(K), key=lambda i: sims[i])
            if max(sims) < 0.2 and cur <= crash:
                # A dead column re-seeded from a user's profile while the
                # random start settles (how soon depends on the machine's
                # speed against the 300 ms epochs): it continues no topic,
                # so it has no id to keep, and its record says so.
                check(c < 0.2, "epoch %d topic %d: a new topic with "
                      "continuity %.4f" % (cur, j, c))
                fresh.append((cur, j))
                continue
            check(best == j, "epoch %d: topic %d is now closest to topic %d of "
                  "epoch %d (cosines %s)" % (cur, j, best, prev,
                                             ["%.3f" % x for x in sims]))
            # The records' continuity is the cosine to the previous epoch's
            # column; the top lists hold whole columns here (120 items).
            check(abs(c - sims[j]) < 1e-3,
                  "epoch %d topic %d: continuity %.5f, records say %.5f"
                  % (cur, j, c, sims[j]))
            low.append(c)
    check(min(low) >= 0.5, "continuity fell to %.4f" % min(low))
    # Under the sanitizers the folds are ten times slower against the same
    # 300 ms epochs and the pauses where a seed comes move: there the run
    # is for memory errors, and the ids are checked on whatever re-seeds
    # happened; the release run must see them.
    if not os.environ.get("NMFD_SANITIZED"):
        check(reseeded is not None and reseeded >= K,
              "no re-seed after the crash (%s columns): the test tests nothing"
              % reseeded)
    first_after = epochs[after[0]]
    check(all(first_after[j]["continuity"] >= 0.99 for j in range(K)),
          "the first epoch after the crash changed the topics: %s"
          % [first_after[j]["continuity"] for j in range(K)])
    if os.environ.get("TOPIC_IDS_DEBUG"):
        for e in sorted(epochs):
            print(e, folded.get(e), ["%.3f" % epochs[e][j].get("continuity", -1)
                                     for j in sorted(epochs[e])])
    settled = [epochs[e][j]["continuity"] for e in after[-5:] for j in range(K)]
    check(min(settled) >= 0.99, "the settled model's continuity: %s" % settled)
    print("topic ids: epochs %d..%d, crash after %d, every topic its own best "
          "match; continuity min %.4f; restarts %s, columns re-seeded %s; "
          "dead columns re-seeded early %s"
          % (order[0], order[-1], crash, min(low), restarts, reseeded, fresh))


if __name__ == "__main__":
    main()
