"""nmfctl broker, produce and dump as separate processes, checked with
independent clients: kcat and python3-confluent-kafka read back what
nmfctl produced (counts, keys, Java partitions, msgpack contents, per-user
order); kcat produces JSON events that nmfctl dump reads; usage errors
give exit 2; the broker leaves nothing behind."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import msgpack
from confluent_kafka import Consumer, TopicPartition

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kafka_common import (CONSUMER_TUNING, DATA, NMFCTL, Broker, check,  # noqa
                          csv_events, fail, java_partition, run)

CSV = os.path.join(DATA, "bayesm_scotch.csv")
PARTS = 4


def read_all(bootstrap, topic, want, timeout=30):
    """Every message of every partition from the beginning, read_committed,
    as (partition, offset, key, value, headers)."""
    conf = {"bootstrap.servers": bootstrap, "group.id": "it-read-" + topic,
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "enable.partition.eof": True}
    conf.update(CONSUMER_TUNING)
    c = Consumer(conf)
    md = c.list_topics(topic, timeout=10)
    parts = sorted(md.topics[topic].partitions)
    c.assign([TopicPartition(topic, p, 0) for p in parts])  # 0 = beginning
    out, eof = [], set()
    import time
    deadline = time.time() + timeout
    while time.time() < deadline and (len(out) < want or
                                      len(eof) < len(parts)):
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                eof.add(m.partition())
                continue
            fail("consume: %s" % m.error())
        eof.discard(m.partition())
        out.append((m.partition(), m.offset(), m.key(), m.value(),
                    m.headers()))
    c.close()
    return out


def check_events_topic(bootstrap, topic, events, batched, fmt):
    msgs = read_all(bootstrap, topic, 1 if batched else len(events))
    got = []
    for part, off, key, value, _ in msgs:
        if fmt == "msgpack":
            v = msgpack.unpackb(value, raw=False)
        else:
            v = json.loads(value)
        evs = v if batched else [v]
        check(isinstance(evs, list) and all(isinstance(e, dict) for e in evs),
              "value shape %r" % (v,))
        for e in evs:
            # Every event sits in the partition Java would pick for its
            # user, also inside a batch keyed by another user.
            check(java_partition(e["user"].encode(), PARTS) == part,
                  "user %s in partition %d" % (e["user"], part))
            got.append((part, off, e))
        if not batched:
            check(key == evs[0]["user"].encode(),
                  "key %r for user %r" % (key, evs[0]["user"]))
    check(len(got) == len(events),
          "%s: %d events read, %d produced" % (topic, len(got), len(events)))
    # Per user, the events come in file order with the same contents.
    by_user_file, by_user_got = {}, {}
    for e in events:
        by_user_file.setdefault(e["user"], []).append(e)
    for part, off, e in sorted(got, key=lambda x: (x[0], x[1])):
        by_user_got.setdefault(e["user"], []).append(e)
    check(by_user_file.keys() == by_user_got.keys(), "same users")
    for u, evs in by_user_file.items():
        g = by_user_got[u]
        for a, b in zip(evs, g):
            check(a["item"] == b["item"] and abs(a["weight"] - b["weight"])
                  < 1e-12 and a.get("ts") == b.get("ts"),
                  "user %s: file %r, topic %r" % (u, a, b))
    return len(msgs)


def main():
    check(shutil.which("kcat") is not None, "kcat is installed")
    events = csv_events(CSV)
    check(len(events) > 5000, "CSV has %d events" % len(events))
    b = Broker(partitions=PARTS, topics="events,evjson,evbatch,evrate,jev")
    try:
        check(b.stdout().strip() == b.bootstrap,
              "stdout %r equals the bootstrap file %r" % (b.stdout(),
                                                          b.bootstrap))

        # msgpack, one event per message.
        rc, _, err = run([NMFCTL, "produce", "--brokers", b.bootstrap,
                          "--topic", "events", CSV])
        check(rc == 0, "produce rc %d: %s" % (rc, err))
        check("%d events in %d messages" % (len(events), len(events)) in err,
              "summary: %s" % err)
        n = check_events_topic(b.bootstrap, "events", events, False,
                               "msgpack")
        print("msgpack: %d messages checked" % n)

        # kcat sees the same keys, count and partitions.
        rc, out, err = run(["kcat", "-b", b.bootstrap, "-C", "-t", "events",
                            "-o", "beginning", "-e", "-q",
                            "-f", "%p %k\\n"])
        check(rc == 0, "kcat rc %d: %s" % (rc, err))
        lines = out.decode().splitlines()
        check(len(lines) == len(events),
              "kcat read %d, want %d" % (len(lines), len(events)))
        keys = sorted(line.split(" ", 1)[1] for line in lines)
        check(keys == sorted(e["user"] for e in events), "kcat keys")
        for line in lines:
            p, k = line.split(" ", 1)
            check(int(p) == java_partition(k.encode(), PARTS),
                  "kcat: key %s in partition %s" % (k, p))

        # JSON, batched per partition.
        rc, _, err = run([NMFCTL, "produce", "--brokers", b.bootstrap,
                          "--topic", "evbatch", "--format", "json",
                          "--batch", "64", CSV])
        check(rc == 0, "batched produce rc %d: %s" % (rc, err))
        n = check_events_topic(b.bootstrap, "evbatch", events, True, "json")
        check(n < len(events) / 10, "batching made %d messages" % n)
        print("json batches: %d messages checked" % n)

        # Paced and batched: a partial batch lingers a few ms for more
        # events of its partition instead of leaving at every pause of the
        # rate limit (10 k events/s over 4 partitions: ~12 events per
        # partition per 5 ms; without the linger about 3 per message).
        rc, _, err = run([NMFCTL, "produce", "--brokers", b.bootstrap,
                          "--topic", "evrate", "--rate", "10000",
                          "--batch", "64", CSV])
        check(rc == 0, "paced batched produce rc %d: %s" % (rc, err))
        n = check_events_topic(b.bootstrap, "evrate", events, True, "msgpack")
        check(n <= len(events) / 8,
              "paced batches: %d messages for %d events" % (n, len(events)))
        print("paced batches: %d messages, %.1f events each"
              % (n, len(events) / n))

        # nmfctl dump reads msgpack back as JSON lines.
        rc, out, err = run([NMFCTL, "dump", "--brokers", b.bootstrap,
                            "--topic", "events", "--count", str(len(events)),
                            "--key"])
        check(rc == 0, "dump rc %d: %s" % (rc, err))
        rows = [json.loads(line) for line in out.decode().splitlines()]
        check(len(rows) == len(events), "dump printed %d" % len(rows))
        check(all(r["key"] == r["value"]["user"] for r in rows), "dump keys")
        check(sorted((r["value"]["user"], r["value"]["item"],
                      r["value"]["ts"]) for r in rows)
              == sorted((e["user"], e["item"], e["ts"]) for e in events),
              "dump contents")

        # kcat produces JSON events; dump prints them unchanged.
        src = [{"user": "u%d" % i, "item": "i%d" % (i % 7), "weight": i / 4,
                "ts": 1700000000000 + i} for i in range(200)]
        payload = "".join("%s\t%s\n" % (e["user"], json.dumps(e))
                          for e in src).encode()
        rc, _, err = run(["kcat", "-b", b.bootstrap, "-P", "-t", "jev",
                          "-K", "\t", "-X", "partitioner=murmur2_random"],
                         input=payload)
        check(rc == 0, "kcat produce rc %d: %s" % (rc, err))
        rc, out, err = run([NMFCTL, "dump", "--brokers", b.bootstrap,
                            "--topic", "jev", "--count", "200", "--key"])
        check(rc == 0, "dump jev rc %d: %s" % (rc, err))
        rows = [json.loads(line) for line in out.decode().splitlines()]
        check(sorted(json.dumps(r["value"], sort_keys=True) for r in rows)
              == sorted(json.dumps(e, sort_keys=True) for e in src),
              "kcat JSON round trip")

        # An idle topic ends the dump after --timeout with nothing printed.
        rc, out, err = run([NMFCTL, "dump", "--brokers", b.bootstrap,
                            "--topic", "evjson", "--timeout", "1"])
        check(rc == 0 and out == b"" and "0 records" in err,
              "idle dump: rc %d out %r err %s" % (rc, out, err))

        # Bad rows are reported with their line and skipped.
        bad = os.path.join(b.tmp, "bad.csv")
        with open(bad, "w") as f:
            f.write("user,item,weight,ts\nu1,i1,2.5,1700000000\nu2,,1,5\n"
                    "u3,i3,-1,5\nu4,i4,x,5\nu5,i5,,\n")
        rc, _, err = run([NMFCTL, "produce", "--brokers", b.bootstrap,
                          "--topic", "evjson", "--format", "json", bad])
        check(rc == 0, "bad rows rc %d" % rc)
        for line in (3, 4, 5):
            check("bad.csv:%d:" % line in err, "line %d reported: %s" %
                  (line, err))
        check("2 events" in err and "3 bad rows" in err, err)
        msgs = read_all(b.bootstrap, "evjson", 2)
        vals = sorted(json.loads(m[3])["user"] for m in msgs)
        check(vals == ["u1", "u5"], "good rows only: %r" % vals)
        u5 = [json.loads(m[3]) for m in msgs if m[2] == b"u5"][0]
        check(u5 == {"user": "u5", "item": "i5", "weight": 1,
                     "ts": 1700000000000},
              "empty weight is 1, empty ts repeats: %r" % u5)

        # Snapshot files: dump --file.
        snap = os.path.join(b.tmp, "snap.msgpack")
        doc = {"v": 1, "epoch": 7, "k": 2, "users": ["a"], "items": ["x"],
               "W": b"\0" * 8, "H": b"\0" * 8, "A": b"\0" * 16}
        with open(snap, "wb") as f:
            f.write(msgpack.packb(doc, use_bin_type=True))
        rc, out, err = run([NMFCTL, "dump", "--file", snap, "--bin-length"])
        check(rc == 0, "dump --file rc %d: %s" % (rc, err))
        got = json.loads(out)
        check(got["epoch"] == 7 and got["W"] == {"bin": 8}
              and got["A"] == {"bin": 16}, "dump --file: %r" % got)
        with open(snap, "wb") as f:
            f.write(b"\xc1garbage")
        rc, out, err = run([NMFCTL, "dump", "--file", snap])
        check(rc == 1 and err, "bad snapshot rc %d: %s" % (rc, err))

        # Usage errors say so and exit 2; runtime errors exit 1.
        for args, code in (
                (["produce", "--topic", "t", CSV], 2),
                (["produce", "--brokers", b.bootstrap, CSV], 2),
                (["produce", "--brokers", b.bootstrap, "--topic", "t"], 2),
                (["produce", "--brokers", b.bootstrap, "--topic", "t",
                  "--format", "xml", CSV], 2),
                (["produce", "--brokers", b.bootstrap, "--topic", "t",
                  "--rate", "-3", CSV], 2),
                (["produce", "--brokers", b.bootstrap, "--topic", "t",
                  "--batch", "0", CSV], 2),
                (["produce", "--brokers", b.bootstrap, "--topic", "t",
                  "-X", "no.such.property=1", CSV], 2),
                (["produce", "--brokers", b.bootstrap, "--topic", "t",
                  "/nonexistent.csv"], 1),
                (["dump", "--topic", "t"], 2),
                (["dump", "--brokers", b.bootstrap], 2),
                (["dump", "--file", snap, "--topic", "t"], 2),
                (["dump", "--brokers", b.bootstrap, "--topic", "t",
                  "--count", "0"], 2),
                (["dump", "--file", "/nonexistent"], 1),
                (["broker", "--partitions", "0"], 2),
                (["broker", "--topics", "bad name"], 2),
                (["broker", "--control", CSV], 2),
        ):
            rc, _, err = run([NMFCTL] + args, timeout=30)
            check(rc == code, "%s: rc %d, want %d (%s)" %
                  (" ".join(args), rc, code, err.strip()))
            check(err.strip() != "", "%s: says why" % " ".join(args))
        for sub in ("produce", "dump", "broker"):
            rc, out, _ = run([NMFCTL, sub, "--help"])
            check(rc == 0 and b"usage: nmfctl " + sub.encode() in out,
                  "%s --help" % sub)
        rc, out, _ = run([NMFCTL, "produce", "--help"])
        check(b"below 1e11 are seconds" in out, "ts rule documented")

        # The Kafka commands run in nmfctl-kafka; nmfctl itself loads no
        # Kafka library, and without its companion it says what it lacks.
        p = subprocess.run([NMFCTL, "--version"], capture_output=True,
                           env=dict(os.environ, LD_DEBUG="libs"), timeout=30)
        check(p.returncode == 0 and b"libc.so" in p.stderr and
              b"librdkafka" not in p.stderr, "nmfctl loads no librdkafka")
        alone = tempfile.mkdtemp(prefix="nmfd-alone.")
        try:
            shutil.copy(NMFCTL, alone)
            rc, _, err = run([os.path.join(alone, "nmfctl"), "produce",
                              "--help"])
            check(rc == 1 and "needs nmfctl-kafka" in err,
                  "nmfctl without nmfctl-kafka: rc %d, %s" % (rc, err.strip()))
        finally:
            shutil.rmtree(alone)

        rc = b.stop()
        check(rc == 0, "broker exit %d: %s" % (rc, b.log()))
        check(not os.path.exists(b.bootfile), "bootstrap file removed")
        check(not os.path.exists(b.fifo), "control FIFO removed")
    finally:
        b.kill()
    print("kafka_tools: ok")


if __name__ == "__main__":
    main()
