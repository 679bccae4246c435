#!/usr/bin/python3
"""Crash recovery: nmfd is killed with SIGKILL at random moments and
restarted on the same state directory while it folds a stream from the
standalone broker. At the end the engagement matrix V it holds (read from
its checkpoint with `nmfctl inspect --profiles`) must equal the V of the
events themselves (summed weights per user and item, what an uninterrupted
run holds with no decay): no event lost, none counted twice. The manifest
counters must agree too.

In the suite: --events 150000 --kills 6. The full run of the issue:
    tests/integration/e2e_crash.py --events 1000000 --kills 20 --seconds 40
(--partitions 16 keeps each partition well under the mock's retention)
"""
import argparse
import collections
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, os.path.dirname(__file__))
from harness import NMFCTL, Procs, check, fail, http_get, metric, stop, wait_for  # noqa: E402


def watermarks(brokers, topic, partitions):
    c = Consumer({"bootstrap.servers": brokers, "group.id": "crash-wm"})
    out = [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
           for p in range(partitions)]
    c.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=150000)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=40,
                    help="how long the stream takes to produce")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    print("seed %d" % a.seed)
    users = max(1000, a.events // 20)

    with Procs() as ps:
        # Users uniformly active (unlike nmfctl gen's Zipf): the partitions
        # are then even, and none outgrows the mock's ~5 MiB retention
        # while the daemon is down between a kill and its restart.
        events = os.path.join(ps.tmp, "events.csv")
        with open(events, "w") as f:
            f.write("user,item,weight,ts\n")
            for n in range(a.events):
                u = rnd.randrange(users)
                item = (u % 8) * 250 + int(rnd.paretovariate(1.2)) % 250
                f.write("u%d,i%d,%d,%d\n" % (u, item, 1 + (n % 3),
                                             1700000000000 + n))
        V = collections.defaultdict(float)
        wsum = 0.0
        with open(events) as f:
            for row in csv.DictReader(f):
                V[(row["user"], row["item"])] += float(row["weight"])
                wsum += float(row["weight"])

        brokers = ps.broker(partitions=a.partitions, topics="nmf.events")
        state = os.path.join(ps.tmp, "state")
        sets = ["checkpoint.interval=1s", "snapshot.interval=500ms",
                "model.k=8", "model.profile_max=4096",
                "kafka.session.timeout.ms=4000",
                "kafka.max.poll.interval.ms=10000"]
        # The stream is produced while nmfd folds it and is killed, over
        # about --seconds; the partitions are sized so the mock's ~5 MiB
        # retention keeps every event (checked below).
        producer = ps.start([NMFCTL, "produce", "--brokers", brokers,
                             "--topic", "nmf.events", "-X", "linger.ms=50", "--rate",
                             str(max(1000, a.events // a.seconds)), events], "produce")
        mid = last = 0
        for kill in range(a.kills):
            d = ps.nmfd(brokers, sets=sets, state=state, name="nmfd%d" % kill)
            # Kill at a random moment once it folds again (a restart first
            # waits for the group to settle).
            wait_for(lambda: last < (metric(d.port, "nmfd_model_events") or 0)
                     or last == a.events, 60, "folding to resume")
            time.sleep(rnd.uniform(0.0, 1.5))
            held = int(metric(d.port, "nmfd_model_events"))
            d.send_signal(signal.SIGKILL)
            d.wait()
            mid += held < a.events
            last = held
            print("kill %d: the model held %d of %d events" % (kill + 1, held, a.events))
            sys.stdout.flush()
        check(producer.wait(300) == 0, "nmfctl produce failed: " + ps.log("produce"))
        check(mid >= a.kills // 2, "only %d kills hit mid-stream" % mid)
        wm = watermarks(brokers, "nmf.events", a.partitions)
        check(all(lo == 0 for lo, _ in wm), "retention evicted events: %r" % wm)
        check(sum(hi for _, hi in wm) == a.events, "produced %d of %d"
              % (sum(hi for _, hi in wm), a.events))

        d = ps.nmfd(brokers, sets=sets, state=state, name="final")
        wait_for(lambda: metric(d.port, "nmfd_model_events") == a.events, 900,
                 "the model to hold every event")
        check(stop(d) == 0, "final nmfd did not stop cleanly:\n" + ps.log("final"))

        r = subprocess.run([NMFCTL, "inspect", "--checkpoint", state],
                           capture_output=True, timeout=120)
        check(r.returncode == 0, "inspect: %s" % r.stderr.decode())
        info = dict(line.split(" ", 1) for line in r.stdout.decode().splitlines()
                    if not line.startswith("offset"))
        check(int(info["events"]) == a.events, "checkpoint events %s != %d"
              % (info["events"], a.events))
        check(abs(float(info["weight_sum"]) - wsum) <= 1e-9 * wsum,
              "weight_sum %s != %r" % (info["weight_sum"], wsum))

        r = subprocess.run([NMFCTL, "inspect", "--checkpoint", state,
                            "--profiles"], capture_output=True, timeout=300)
        check(r.returncode == 0, "inspect --profiles: %s" % r.stderr.decode())
        got = {}
        for line in r.stdout.decode().splitlines():
            doc = json.loads(line)
            for item, value in doc["profile"].items():
                got[(doc["user"], item)] = value
        check(len(got) == len(V), "V has %d entries, expected %d" % (len(got), len(V)))
        bad = [(key, got.get(key), v) for key, v in V.items()
               if abs(got.get(key, -1) - v) > 1e-4 * max(1.0, v)]
        check(not bad, "%d entries of V differ, e.g. %r" % (len(bad), bad[:5]))
    print("crash recovery: %d kills, %d events, V exact" % (a.kills, a.events))


if __name__ == "__main__":
    main()
