#!/usr/bin/python3
"""What a group of nmfd processes refuses, each through the real binary:

- a second process in a group with cluster.enabled off: it refuses to
  start (exit 1, a clear error), and the first keeps every partition and
  every event;
- cluster.enabled with model.half_life > 0, or with model.loss = kl: a
  configuration error (2);
- a cluster topic with a partition count that cannot work: exit 1 naming
  the topic, its count and the count needed;
- on the group's topics, written here with python3-confluent-kafka: a W
  of another k and a corrupt W record (the member keeps its W, counts
  them), statistics of another group and of another k (the leader counts
  them and never sums them), and an event on another partition than its
  user's key gives (rejected as wrong_partition). The daemons keep
  running and the group's manifest still counts exactly the events
  produced;
- a partition's state that cannot be read back within
  cluster.restore_timeout (every fetch of the broker failing, its
  watermarks still answered): the member stops (exit 1) naming the
  partition and how far it read, rather than fold on a part of it."""
import os
import subprocess
import sys
import time

import msgpack
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

sys.path.insert(0, os.path.dirname(__file__))
from harness import (BIN, KAFKA_TEST_SETS, NMFCTL, Procs, broker_fault, check, http_get,  # noqa: E402
                     metric, metrics, stop, wait_for)
from cluster_common import (PARTS, leaders, manifest_latest, member_sets, read_csv,  # noqa: E402
                            settled, start_member)

K = 4


def assigned(port):
    return {labels for (name, labels), _ in metrics(port).items()
            if name == "nmfd_consumer_lag" and labels}


def exits(ps, args, name, timeout=60):
    p = ps.start(args, name)
    try:
        return p.wait(timeout), ps.log(name)
    except subprocess.TimeoutExpired:
        p.kill()
        return None, ps.log(name)


def last_record(brokers, topic):
    c = Consumer({"bootstrap.servers": brokers, "group.id": "refusal-reader-%d" % time.time_ns(),
                  "enable.partition.eof": True, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    last = None
    end = time.time() + 10
    while time.time() < end:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                break
            continue
        last = m.value()
    c.close()
    return last


def rejected(port, record):
    return metric(port, "nmfd_cluster_rejected_total", '{record="%s"}' % record) or 0


def main():
    with Procs() as ps:
        # -- alone, a second process refuses ---------------------------------
        brokers = ps.broker(partitions=PARTS)
        events = os.path.join(ps.tmp, "events.csv")
        with open(events, "wb") as f:
            check(subprocess.run([NMFCTL, "gen", "--users", "500", "--items", "80", "--k",
                                  str(K), "--events", "8000", "--seed", "2"],
                                 stdout=f, timeout=60).returncode == 0, "gen")
        V, n_events, weight = read_csv(events)
        sets = ["model.k=%d" % K, "kafka.group.id=alone"]
        first = ps.nmfd(brokers, sets=sets, name="first")
        wait_for(lambda: len(assigned(first.port)) == PARTS, 60, "the first process assigned")
        second = ps.nmfd(brokers, sets=sets, name="second")
        rc = second.wait(90)
        log = ps.log("second")
        check(rc == 1, "the second process exited %r, want 1:\n%s" % (rc, log[-2000:]))
        check("another process consumes group alone" in log and "cluster.enabled" in log,
              "no clear refusal:\n" + log[-2000:])
        check(http_get(first.port, "/healthz")[0] == 200, "the first process is unhealthy")
        check("another process joined group alone" in ps.log("first"),
              "the first process did not say another joined")
        wait_for(lambda: len(assigned(first.port)) == PARTS, 60,
                 "every partition back to the first process")
        ps.produce(brokers, events)
        wait_for(lambda: (metric(first.port, "nmfd_events_folded_total") or 0) == n_events,
                 90, "the first process to fold every event")
        check(stop(first) == 0, "the first process did not stop cleanly")

        # -- configuration and topics refused at start ----------------------
        rc, log = exits(ps, [os.path.join(BIN, "nmfd"), "--set", "cluster.enabled=true",
                             "--set", "model.half_life=1h", "--set",
                             "checkpoint.dir=" + os.path.join(ps.tmp, "hl")], "halflife")
        check(rc == 2 and "cluster.enabled = true needs model.half_life = 0" in log,
              "half_life with the group: exit %r\n%s" % (rc, log[-1500:]))
        rc, log = exits(ps, [os.path.join(BIN, "nmfd"), "--set", "cluster.enabled=true",
                             "--set", "model.loss=kl", "--set",
                             "checkpoint.dir=" + os.path.join(ps.tmp, "kl")], "kl")
        check(rc == 2 and "cluster.enabled = true needs model.loss = frobenius" in log,
              "kl with the group: exit %r\n%s" % (rc, log[-1500:]))
        # nmf.stats made with the input's four partitions.
        bf = os.path.join(ps.tmp, "bad-bootstrap")
        ps.start([NMFCTL, "broker", "--partitions", str(PARTS), "--topics",
                  "nmf.events,nmf.stats,nmf.model,nmf.state", "--bootstrap-file", bf], "badbroker")
        bad = wait_for(lambda: os.path.exists(bf) and open(bf).read().strip(), 20, "bootstrap")
        args = [os.path.join(BIN, "nmfd"), "--set", "kafka.bootstrap.servers=" + bad,
                "--set", "checkpoint.dir=" + os.path.join(ps.tmp, "wrongcount")]
        for x in KAFKA_TEST_SETS + member_sets(K):
            args += ["--set", x]
        os.makedirs(os.path.join(ps.tmp, "wrongcount"), exist_ok=True)
        rc, log = exits(ps, args, "wrongcount")
        check(rc == 1 and "cluster.stats_topic = nmf.stats has 4 partitions; the group needs 1"
              in log, "wrong partition count: exit %r\n%s" % (rc, log[-1500:]))

        # -- records of the group's topics refused while running ------------
        cb = ps.broker(partitions=PARTS, cluster=True, name="groupbroker",
                       topics="nmf.events,nmf.segments,nmf.topics,nmf.snapshots")
        ms = [start_member(ps, cb, n, K) for n in ("m1", "m2")]
        wait_for(lambda: settled(ms), 120, "two members")
        ps.produce(cb, events)
        wait_for(lambda: sum(metric(d.port, "nmfd_events_folded_total") or 0 for d in ms)
                 == n_events, 120, "the members to fold every event")
        wait_for(lambda: all((metric(d.port, "nmfd_cluster_model_version") or 0) > 0
                             for d in ms), 60, "a W on every member")
        lead = leaders(ms)[0]
        prod = Producer({"bootstrap.servers": cb})

        # W records: another k, and bytes that are no msgpack at all.
        w = msgpack.unpackb(last_record(cb, "nmf.model"), raw=False)
        versions = [metric(d.port, "nmfd_cluster_model_version") for d in ms]
        other = dict(w)
        other["k"] = 3
        other["model_version"] = 1000000
        n_items = len(w["items"])
        other["W"] = bytes(n_items * 3 * 4)
        other["A"] = bytes(9 * 4)
        other["model"] = dict(w["model"], k=3)
        # One at a time: a member examines only the newest W of a pass.
        for n, rec in enumerate((msgpack.packb(other), b"\xc1not msgpack")):
            prod.produce("nmf.model", key=b"w", value=rec, partition=0)
            prod.flush(10)
            wait_for(lambda: all((metric(d.port, "nmfd_cluster_w_refused_total") or 0) >= n + 1
                                 for d in ms), 30, "W record %d refused on every member" % n)
        for d, v in zip(ms, versions):
            now = metric(d.port, "nmfd_cluster_model_version")
            check(now is not None and now < 1000000 and now >= v,
                  "%s took a W it cannot use (version %r)" % (d.name, now))
            check(rejected(d.port, "model") >= 2, "%s did not count the W records" % d.name)
            check(http_get(d.port, "/healthz")[0] == 200, "%s unhealthy" % d.name)
        check(sum(ps.log(d.name).count("model record refused") for d in ms) == len(ms),
              "a refused W is logged once per member")

        # Statistics of another group and of another k.
        st = msgpack.unpackb(last_record(cb, "nmf.stats"), raw=False)
        foreign = dict(st, cluster="someone-else", events=10 ** 9)
        prod.produce("nmf.stats", key=b"0", value=msgpack.packb(foreign), partition=0)
        k3 = dict(st, k=3, events=10 ** 9, sizes=[0, 0, 0], mass=bytes(24), A=bytes(72),
                  B=bytes(len(st["items"]) * 24))
        prod.produce("nmf.stats", key=b"0", value=msgpack.packb(k3), partition=0)
        # A record of version 2 (every row, no base: an older build), and
        # rows changed since a record the leader does not hold (a base it
        # never saw): refused, and not applied.
        v2 = {x: y for x, y in st.items() if x != "base"}
        v2.update(v=2, events=10 ** 9)
        prod.produce("nmf.stats", key=b"0", value=msgpack.packb(v2), partition=0)
        gaps = metric(lead.port, "nmfd_cluster_stats_gaps_total") or 0
        gap = dict(st, base=st["seq"] + 5, seq=st["seq"] + 10, events=10 ** 9)
        prod.produce("nmf.stats", key=b"0", value=msgpack.packb(gap), partition=0)
        prod.flush(10)
        wait_for(lambda: rejected(lead.port, "stats") >= 3, 30,
                 "the leader to refuse the three statistics records")
        wait_for(lambda: (metric(lead.port, "nmfd_cluster_stats_gaps_total") or 0) > gaps, 30,
                 "the leader to leave the record of an unknown base aside")
        check("version 2 (every row, no base" in ps.log(lead.name)
              or "statistics of another group" in ps.log(lead.name),
              "the refusal is logged")
        time.sleep(2)
        m = manifest_latest(cb)
        check(m and m["events"] == n_events and m["weight_sum"] == weight,
              "foreign statistics were summed: manifest %r" % {x: m.get(x) for x in ("events", "weight_sum")})

        # An event on another partition than its user's key: the key says
        # one user, the value another.
        before = sum(metric(d.port, "nmfd_events_rejected_total", '{reason="wrong_partition"}') or 0
                     for d in ms)
        for i in range(8):
            prod.produce("nmf.events", key=("key-user-%d" % i).encode(),
                         value=msgpack.packb({"user": "other-user-%d" % (i * 7919), "item": "x",
                                              "weight": 1}))
        prod.flush(10)
        wait_for(lambda: sum(metric(d.port, "nmfd_events_rejected_total",
                                    '{reason="wrong_partition"}') or 0 for d in ms) > before,
                 30, "an event on the wrong partition to be rejected")
        for d in ms:
            check(http_get(d.port, "/healthz")[0] == 200, "%s unhealthy" % d.name)
            check(stop(d) == 0, "%s did not stop cleanly" % d.name)

        # -- a state not read back within cluster.restore_timeout -----------
        bf = os.path.join(ps.tmp, "slow.bootstrap")
        fifo = os.path.join(ps.tmp, "slow.control")
        ps.start([NMFCTL, "broker", "--partitions", str(PARTS), "--topics", "nmf.events",
                  "--bootstrap-file", bf, "--control", fifo, "--cluster"], "slowbroker")
        sb = wait_for(lambda: os.path.exists(bf) and open(bf).read().strip(), 20, "bootstrap")
        wait_for(lambda: os.path.exists(fifo), 10, "the broker's control FIFO")
        first = start_member(ps, sb, "s1", K)
        wait_for(lambda: settled([first]), 120, "one member")
        ps.produce(sb, events)
        wait_for(lambda: (metric(first.port, "nmfd_events_folded_total") or 0) == n_events,
                 90, "the member to fold every event")
        # Stopped, it writes the state of every partition as it leaves it.
        check(stop(first) == 0, "s1 did not stop cleanly")
        check(ps.log("s1").count("users handed on") == PARTS, "s1 did not hand every partition on")
        # From now on every fetch fails: the state's watermarks are known,
        # its messages never come.
        broker_fault(ps, fifo, "error Fetch 100000 NOT_LEADER_FOR_PARTITION", name="slowbroker")
        args = [os.path.join(BIN, "nmfd"), "--set", "kafka.bootstrap.servers=" + sb,
                "--set", "checkpoint.dir=" + os.path.join(ps.tmp, "s2-state"),
                "--set", "http.listen=127.0.0.1:0"]
        for x in KAFKA_TEST_SETS + member_sets(K, ["cluster.restore_timeout=1s"]):
            args += ["--set", x]
        os.makedirs(os.path.join(ps.tmp, "s2-state"), exist_ok=True)
        t0 = time.time()
        rc, log = exits(ps, args, "s2", timeout=90)
        check(rc == 1, "a member that could not read its state exited %r, want 1:\n%s"
              % (rc, log[-2000:]))
        check("cluster: state: nmf.state/" in log and "within 1000 ms" in log
              and "partitions not read to their end" in log,
              "no clear words for the state not read in time:\n" + log[-2000:])
        check("stopping rather than fold on a part of it" in log,
              "the member did not say why it stopped:\n" + log[-2000:])
        check("restored:" not in log, "a partition was restored from a state read in part")
        check(time.time() - t0 < 60, "the stop took %.0f s" % (time.time() - t0))
    print("cluster refusals: every one clear, nothing summed, nothing lost")


if __name__ == "__main__":
    main()
