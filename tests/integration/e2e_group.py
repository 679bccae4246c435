#!/usr/bin/python3
"""Two nmfd processes in one consumer group split the input: each folds
only the users of its own partitions. The users they hold are disjoint,
together they are every user, every user's whole profile sits in one
process, and each process's users all come from the partitions the group
gave it (read back from Kafka with python3-confluent-kafka)."""
import collections
import csv
import json
import os
import subprocess
import sys
import urllib.parse

import msgpack
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

sys.path.insert(0, os.path.dirname(__file__))
from harness import NMFCTL, Procs, check, fail, http_get, metric, metrics, stop, wait_for  # noqa: E402

EVENTS = 30000
PARTS = 4


def user_partitions(brokers):
    """user -> the input partition its events are in, from Kafka itself."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "group-test-reader",
                  "enable.partition.eof": True, "enable.auto.commit": False})
    c.assign([TopicPartition("nmf.events", p, OFFSET_BEGINNING) for p in range(PARTS)])
    where, eof = {}, set()
    for _ in range(EVENTS * 2):
        m = c.poll(2.0)
        if m is None:
            break
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
                if len(eof) == PARTS:
                    break
                continue
            fail(str(m.error()))
        u = msgpack.unpackb(m.value(), raw=False)["user"]
        check(where.setdefault(u, m.partition()) == m.partition(),
              "user %s in two partitions" % u)
    c.close()
    return where


def assigned(port):
    """Partitions an nmfd was assigned: the lag gauges it exports."""
    out = set()
    for (name, labels), _ in metrics(port).items():
        if name == "nmfd_consumer_lag" and labels:
            out.add(int(labels.split('partition="')[1].split('"')[0]))
    return out


def main():
    with Procs() as ps:
        events = os.path.join(ps.tmp, "events.csv")
        with open(events, "wb") as f:
            r = subprocess.run([NMFCTL, "gen", "--users", "800",
                                "--items", "200", "--k", "4", "--events", str(EVENTS),
                                "--seed", "3"], stdout=f, timeout=60)
        check(r.returncode == 0, "nmfctl gen failed")
        weight = collections.Counter()
        with open(events) as f:
            for row in csv.DictReader(f):
                weight[row["user"]] += float(row["weight"])

        brokers = ps.broker(partitions=PARTS)
        sets = ["model.k=4", "kafka.group.id=split", "snapshot.interval=1s"]
        a = ps.nmfd(brokers, sets=sets, name="a")
        b = ps.nmfd(brokers, sets=sets, name="b")
        # Both members in the group (the second join rebalances) before
        # any event arrives.
        wait_for(lambda: assigned(a.port) and assigned(b.port)
                 and http_get(a.port, "/readyz")[0] == 200
                 and http_get(b.port, "/readyz")[0] == 200, 60, "both members assigned")
        ps.produce(brokers, events)
        wait_for(lambda: (metric(a.port, "nmfd_model_events") or 0)
                 + (metric(b.port, "nmfd_model_events") or 0) == EVENTS,
                 120, "the two members to fold every event")

        held = {}
        for d in (a, b):
            status, body = http_get(d.port, "/snapshot")
            check(status == 200, "/snapshot %d" % status)
            held[d.name] = set(msgpack.unpackb(body, raw=False)["users"])
        check(held["a"] and held["b"], "each member must hold users: %d, %d"
              % (len(held["a"]), len(held["b"])))
        check(not (held["a"] & held["b"]), "%d users in both members"
              % len(held["a"] & held["b"]))
        check(held["a"] | held["b"] == set(weight), "users missing from both")

        where = user_partitions(brokers)
        for d in (a, b):
            parts = {where[u] for u in held[d.name]}
            check(parts <= assigned(d.port), "%s holds users of partitions %r, assigned %r"
                  % (d.name, parts, assigned(d.port)))
            # A few whole profiles: every event of the user is here.
            for u in sorted(held[d.name])[:25]:
                status, body = http_get(d.port, "/users/" + urllib.parse.quote(u))
                check(status == 200, "/users/%s %d" % (u, status))
                total = sum(v for _, v in json.loads(body)["profile"])
                check(abs(total - weight[u]) < 1e-3 * weight[u],
                      "user %s: profile %.3f, events %.3f" % (u, total, weight[u]))
        for d in (a, b):
            rc = stop(d)
            check(rc == 0, "%s exited %d:\n%s" % (d.name, rc, ps.log(d.name)[-3000:]))
    print("group split: %d + %d users, disjoint, whole" % (len(held["a"]), len(held["b"])))


if __name__ == "__main__":
    main()
