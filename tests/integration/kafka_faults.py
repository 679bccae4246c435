"""Fault commands through `nmfctl broker --control FIFO`, seen by real
clients: every command answers ok or error on the broker's stderr; with
all brokers down `nmfctl produce` fails its deliveries and exits 1; after
`up` it delivers; injected Produce request errors are retried to
completion; a consumer group member (python3-confluent-kafka) reading
while the broker goes down and up loses nothing; `rtt` delays requests
measurably; a topic created through the FIFO has its partitions."""
import os
import sys
import threading
import time

from confluent_kafka import Consumer, Producer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kafka_common import (CONSUMER_TUNING, NMFCTL, Broker, check,  # noqa
                          fail, run)


def write_csv(path, n, prefix):
    with open(path, "w") as f:
        f.write("user,item,weight,ts\n")
        for i in range(n):
            f.write("%s%d,i%d,1,%d\n" % (prefix, i % 97, i, 1700000000 + i))


def produce(b, topic, csv, *extra, timeout=60):
    return run([NMFCTL, "produce", "--brokers", b.bootstrap, "--topic", topic]
               + list(extra) + [csv], timeout=timeout)


def count_topic(b, topic, want, timeout=30):
    rc, out, err = run([NMFCTL, "dump", "--brokers", b.bootstrap,
                        "--topic", topic, "--timeout", "2"], timeout=timeout)
    check(rc == 0, "dump %s rc %d: %s" % (topic, rc, err))
    return len(out.splitlines())


def main():
    b = Broker(partitions=2, topics="f1,f2,f3,f4", brokers=1)
    try:
        # Every bad command is answered with an error, the broker lives on.
        for cmd, want in (("bogus", "error: unknown command"),
                          ("down 7", "error: no broker 7"),
                          ("rtt 1", "error: usage"),
                          ("error Nope 1 _TRANSPORT", "error: unknown api"),
                          ("error Produce 1 NOPE", "error: unknown error"),
                          ("topic f1 2", "error: topic 'f1' exists"),
                          ("x" * 600, "error: command too long")):
            b.command(cmd, want)
        check(b.proc.poll() is None, "broker survives bad commands")

        csv = os.path.join(b.tmp, "ev.csv")
        write_csv(csv, 2000, "u")

        # All brokers down: deliveries time out, produce says so, exit 1.
        b.command("down -1")
        rc, _, err = produce(b, "f1", csv, "-X", "message.timeout.ms=1500")
        check(rc == 1, "produce with the broker down: rc %d (%s)" % (rc, err))
        check("not delivered" in err, "says what failed: %s" % err)
        b.command("up -1")
        rc, _, err = produce(b, "f1", csv)
        check(rc == 0, "produce after up: rc %d (%s)" % (rc, err))
        check(count_topic(b, "f1", 2000) == 2000, "2000 records after up")

        # Produce requests failing (retriable): retried to completion, and
        # no record lost.
        b.command("error Produce 5 NOT_LEADER_FOR_PARTITION")
        rc, _, err = produce(b, "f2", csv)
        check(rc == 0, "produce through request errors: rc %d (%s)" %
              (rc, err))
        n = count_topic(b, "f2", 2000)
        check(n >= 2000, "f2 has %d records, want >= 2000" % n)
        print("request errors: %d records for 2000 produced" % n)

        # A consumer group member keeps reading across an outage.
        got = []
        stop = threading.Event()

        def consume():
            conf = {"bootstrap.servers": b.bootstrap, "group.id": "it-flap",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False}
            conf.update(CONSUMER_TUNING)
            c = Consumer(conf)
            c.subscribe(["f3"])
            deadline = time.time() + 90
            while not stop.is_set() and time.time() < deadline:
                m = c.poll(0.1)
                if m is not None and not m.error():
                    got.append((m.partition(), m.offset()))
            c.close()

        t = threading.Thread(target=consume)
        t.start()
        p = Producer({"bootstrap.servers": b.bootstrap,
                      "enable.idempotence": True,
                      "partitioner": "murmur2_random"})
        for i in range(3000):
            p.produce("f3", key=b"k%d" % (i % 50), value=b"v%d" % i)
            if i == 1000:
                p.flush(10)
                b.command("down 1")
                time.sleep(2)
                b.command("up 1")
            p.poll(0)
        check(p.flush(30) == 0, "producer delivered everything")
        deadline = time.time() + 60
        while len(set(got)) < 3000 and time.time() < deadline:
            time.sleep(0.1)
        stop.set()
        t.join(30)
        check(len(set(got)) == 3000,
              "consumer saw %d distinct records of 3000 (%d with repeats)"
              % (len(set(got)), len(got)))

        # rtt: a request takes at least the delay.
        b.command("rtt 1 300")
        t0 = time.time()
        rc, _, err = produce(b, "f4", csv)
        slow = time.time() - t0
        b.command("rtt 1 0")
        t0 = time.time()
        rc2, _, err2 = produce(b, "f4", csv)
        fast = time.time() - t0
        check(rc == 0 and rc2 == 0, "produce under rtt: %s %s" % (err, err2))
        check(slow > fast + 0.25, "rtt 300 ms: %.2f s vs %.2f s" %
              (slow, fast))
        print("rtt: %.2f s with 300 ms, %.2f s without" % (slow, fast))

        # A topic made through the FIFO has its partitions.
        b.command("topic made.here 5")
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "it-md"})
        md = c.list_topics("made.here", timeout=10)
        c.close()
        check(len(md.topics["made.here"].partitions) == 5, "5 partitions")

        rc = b.stop()
        check(rc == 0, "broker exit %d" % rc)
        check(not os.path.exists(b.fifo) and not os.path.exists(b.bootfile),
              "nothing left behind")
    finally:
        b.kill()
    print("kafka_faults: ok")


if __name__ == "__main__":
    main()
