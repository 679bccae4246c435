#!/usr/bin/python3
"""End to end through Kafka: a planted stream goes from `nmfctl produce`
(and kcat, producing JSON) through the standalone broker into nmfd; a
python3-confluent-kafka consumer reads every record nmfd publishes, checks
each against the contract (docs/design.md section 3), and the segments must
agree with `nmfctl fit` on the same events and with the planted truth."""
import csv
import math
import os
import subprocess
import sys

import msgpack
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Procs, check, converged, fail, fit_segments, folded_all,  # noqa: E402
                     gen_planted, http_get, metric, stop, wait_for)

K = 6
USERS, ITEMS, EVENTS = 1500, 300, 40000


def read_topic(brokers, topic):
    """Every committed record of a topic, in partition order."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "e2e-reader",
                  "enable.auto.commit": False, "isolation.level": "read_committed",
                  "enable.partition.eof": True, "fetch.wait.max.ms": 10})
    md = c.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out, eof = [], set()
    for _ in range(200000):
        m = c.poll(1.0)
        if m is None:
            break
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
                if len(eof) == len(parts):
                    break
                continue
            fail("consumer error on %s: %s" % (topic, m.error()))
        out.append((m.key(), msgpack.unpackb(m.value(), raw=False), m.partition()))
    c.close()
    return out


def main():
    with Procs() as ps:
        events, planted = gen_planted(ps, USERS, ITEMS, K, EVENTS, seed=11)

        brokers = ps.broker(partitions=4, topics="nmf.events")
        snapfile = os.path.join(ps.tmp, "snapshot.msgpack")
        d = ps.nmfd(brokers, sets=["model.k=%d" % K, "snapshot.interval=1s",
                                   "snapshot.file=" + snapfile])
        wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 30, "/readyz 200")
        ps.produce(brokers, events)

        # kcat, a client nobody here wrote, producing JSON events keyed by
        # user: three new users on items of the stream.
        lines = b"".join(b'kc%d:{"user":"kc%d","item":"i%d","weight":2,"ts":1700000000000}\n'
                         % (i, i, i) for i in range(3))
        r = subprocess.run(["kcat", "-b", brokers, "-P", "-t", "nmf.events", "-K:"],
                           input=lines, timeout=30)
        check(r.returncode == 0, "kcat produce failed")

        wait_for(lambda: folded_all(d.port, EVENTS + 3), 120, "every event folded")
        check(metric(d.port, "nmfd_events_rejected_total", '{reason="invalid_json"}') == 0,
              "no event should be rejected")
        # Let idle refinement converge, then stop: final epoch and checkpoint.
        wait_for(lambda: converged(d.port), 120, "refinement to converge")
        status, body = http_get(d.port, "/users/kc1")
        check(status == 200 and b'"segment"' in body, "/users/kc1: %d %r" % (status, body))
        check(stop(d) == 0, "nmfd did not exit 0 on SIGTERM:\n" + ps.log("nmfd"))

        # --- every record type against the contract ---
        manifests = [v for _, v, _ in read_topic(brokers, "nmf.snapshots")]
        check(manifests, "no manifest published")
        epochs = [m["epoch"] for m in manifests]
        check(epochs == sorted(epochs) and len(set(epochs)) == len(epochs),
              "manifest epochs not strictly increasing: %r" % epochs)
        check(manifests[0]["full"], "the first epoch after start must be full")
        last = manifests[-1]
        for key in ("v", "epoch", "ts", "k", "full", "users", "items", "events",
                    "weight_sum", "rejected", "loss", "evicted_weight", "segments", "segment_sizes", "model"):
            check(key in last, "manifest lacks %s" % key)
        check(last["v"] == 1 and last["k"] == K, "manifest v/k")
        check(last["events"] == EVENTS + 3, "manifest events %d" % last["events"])
        weights = 0.0
        with open(events) as f:
            for row in csv.DictReader(f):
                weights += float(row["weight"])
        check(abs(last["weight_sum"] - (weights + 6)) < 1e-6 * weights,
              "manifest weight_sum %r vs %r" % (last["weight_sum"], weights + 6))
        check(len(last["segment_sizes"]) == K and sum(last["segment_sizes"]) == last["users"],
              "segment_sizes must sum to users")
        check(0 <= last["loss"] < 1, "loss %r" % last["loss"])
        check(isinstance(last["model"], dict) and last["model"].get("k") == K, "model map")

        topics = read_topic(brokers, "nmf.topics")
        final = [v for _, v, _ in topics if v["epoch"] == last["epoch"]]
        check(len(final) == K, "epoch %d has %d topic records" % (last["epoch"], len(final)))
        for key, v, _ in topics[-K:]:
            check(key == ("topic-%d" % v["topic"]).encode(), "topic key %r" % key)
            for f in ("v", "epoch", "topic", "k", "top", "users", "mass",
                      "continuity"):
                check(f in v, "topic record lacks " + f)
            check(0 <= v["continuity"] <= 1, "continuity %r" % v["continuity"])
            ws = [w for _, w in v["top"]]
            check(ws == sorted(ws, reverse=True), "top items not strongest first")
            check(0 < len(v["top"]) <= 20, "top has %d items" % len(v["top"]))
        check(sum(v["users"] for v in final) == last["users"], "topic users sum")

        segs = {}
        for key, v, part in read_topic(brokers, "nmf.segments"):
            for f in ("v", "epoch", "user", "h", "segment", "share", "ts"):
                check(f in v, "segment record lacks " + f)
            check(key.decode() == v["user"], "segment key must be the user id")
            check(len(v["h"]) == K and all(x >= 0 and math.isfinite(x) for x in v["h"]), "h")
            check(v["segment"] == int(np.argmax(v["h"])), "segment is argmax h")
            s = sum(v["h"])
            check(abs(v["share"] - (v["h"][v["segment"]] / s if s else 0)) < 1e-5, "share")
            segs[v["user"]] = v["segment"]  # the latest per key wins
        check(len(segs) == last["users"], "segment records for %d of %d users"
              % (len(segs), last["users"]))

        # --- the same events through nmfctl fit ---
        fit = fit_segments(ps, events, K)
        users = sorted(planted)
        ari_fit_daemon = adjusted_rand_score([fit[u] for u in users], [segs[u] for u in users])
        ari_daemon = adjusted_rand_score([planted[u] for u in users], [segs[u] for u in users])
        ari_fit = adjusted_rand_score([planted[u] for u in users], [fit[u] for u in users])
        print("ARI daemon/truth %.4f, fit/truth %.4f, daemon/fit %.4f"
              % (ari_daemon, ari_fit, ari_fit_daemon))
        check(ari_daemon >= 0.95, "daemon ARI vs truth %.4f" % ari_daemon)
        check(ari_fit_daemon >= 0.95, "daemon vs fit ARI %.4f" % ari_fit_daemon)

        # The snapshot file is the dense snapshot of the last epoch.
        wait_for(lambda: os.path.exists(snapfile), 10, "snapshot.file")
        with open(snapfile, "rb") as f:
            snap = msgpack.unpackb(f.read(), raw=False)
        check(snap["k"] == K and len(snap["users"]) == last["users"], "snapshot file")
    print("e2e pipeline: OK")


if __name__ == "__main__":
    main()
