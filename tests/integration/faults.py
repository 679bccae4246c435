#!/usr/bin/python3
"""Broker faults: nmfd folds a stream produced in the background while the
standalone broker (`nmfctl broker --control FIFO`) injects faults.

outage: every broker goes down for 10 s in the middle of the stream, then
  comes back. nmfd must keep running and answering HTTP, report the outage
  (a log line, /readyz 503 with its reason, nmfd_consumer_errors_total),
  resume folding within 5 s of the brokers coming back, and end holding
  exactly the events of the topic (nmfd_model_events, the weight sum, the
  checkpoint read by `nmfctl inspect`); its output producer must survive
  too: epochs published after the outage, numbered without gaps, the last
  manifest counting every event.

errors: the same end state after 200 ms of latency on every response,
  failed Fetch requests (NOT_LEADER_FOR_PARTITION, OFFSET_OUT_OF_RANGE,
  which rewinds the consumer to the start of every partition), a forced
  rebalance, failed offset commits, and failed Produce, AddPartitionsToTxn
  and EndTxn requests of the output producer (one not retriable: that
  epoch is aborted and published again).

restart: a daemon stopped before its first event leaves a checkpoint of an
  empty model; the next start loads it and folds what comes next.

backpressure: the output producer's queue is small (50 records) and the
  broker slow (20 ms a response), so every epoch fills the queue; epochs
  must wait for room, not fail. A failure there is reported as an XFAIL
  line (a known gap) unless NMFD_XFAIL_STRICT=1.

Every nmfd must stop cleanly, with no sanitizer report in its log
(tests/integration/sanitized.sh runs this against an ASan+UBSan build).

The producer here is python3-confluent-kafka, not idempotent (the mock does
not deduplicate idempotent producers anyway): what nmfd must hold is what
the topic holds, read back at the end; the test also checks the topic holds
every event produced.
"""
import argparse
import os
import signal
import subprocess
import sys
import threading
import time

import msgpack
from confluent_kafka import Producer

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Procs, broker_fault, broker_with_control, check, fail,  # noqa: E402
                     http_get, inspect_checkpoint, metric, metrics, read_topic_all,
                     stop, wait_for)

TOPIC = "nmf.events"
TS0 = 1700000000000
# The mock's group timing (KAFKA-MOCK.md); the rest of the Kafka settings
# are nmfd's own (its 1 s reconnect backoff cap is what makes it resume
# within 5 s of an outage's end).
NMFD_SETS = [
    "model.k=4", "model.warmup_events=500", "snapshot.interval=500ms",
    "checkpoint.interval=2s", "kafka.session.timeout.ms=4000",
    "kafka.heartbeat.interval.ms=500", "kafka.max.poll.interval.ms=20000",
]


def event(seq):
    return msgpack.packb({"user": "u%d" % (seq % 400), "item": "i%d" % (seq * 7 % 250),
                          "weight": 0.25 * (1 + seq % 8), "ts": TS0 + seq, "seq": seq})


class StreamProducer(threading.Thread):
    """Produces events 0..n-1 at rate per second, keyed by user; whatever
    failed to deliver (the brokers were down too long) is produced again
    until everything is delivered or the deadline passes."""

    def __init__(self, brokers, n, rate, deadline):
        super().__init__(daemon=True)
        self.brokers, self.n, self.rate, self.deadline = brokers, n, rate, deadline
        self.delivered = set()
        self.failed = []
        self.retried = 0
        self.error = None
        self.lock = threading.Lock()

    def _cb(self, seq):
        def cb(err, m):
            with self.lock:
                if err is None:
                    self.delivered.add(seq)
                else:
                    self.failed.append(seq)
        return cb

    def _produce(self, p, seq):
        while True:
            try:
                p.produce(TOPIC, value=event(seq), key=b"u%d" % (seq % 400),
                          on_delivery=self._cb(seq))
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)

    def run(self):
        try:
            p = Producer({"bootstrap.servers": self.brokers,
                          "partitioner": "murmur2_random", "linger.ms": 5,
                          "enable.idempotence": False, "acks": "all",
                          "max.in.flight.requests.per.connection": 1,
                          "message.timeout.ms": 30000,
                          "reconnect.backoff.max.ms": 200,
                          "queue.buffering.max.messages": 1000000,
                          "log_level": 2})
            t0 = time.time()
            for seq in range(self.n):
                delay = t0 + seq / self.rate - time.time()
                if delay > 0:
                    p.poll(delay)
                self._produce(p, seq)
            while time.time() < self.deadline:
                p.flush(1.0)
                with self.lock:
                    again, self.failed = self.failed, []
                    if not again and len(self.delivered) == self.n:
                        break
                self.retried += len(again)
                for seq in again:
                    self._produce(p, seq)
            p.flush(5)
        except Exception as e:  # reported by the main thread
            self.error = e


class Sampler(threading.Thread):
    """Samples /readyz, /healthz and the folded counter every 100 ms."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.samples = []  # (t, readyz status, body, healthz status, folded, took)
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = time.time()
            try:
                rs, rb = http_get(self.port, "/readyz", timeout=5)
                hs, _ = http_get(self.port, "/healthz", timeout=5)
                m = metrics(self.port)
                folded = m.get(("nmfd_events_folded_total", ""), 0)
            except Exception as e:  # noqa: BLE001 (recorded, judged later)
                rs, rb, hs, folded = -1, str(e).encode(), -1, -1
            self.samples.append((t, rs, rb.decode("utf-8", "replace").strip(), hs,
                                 folded, time.time() - t))
            self.stop.wait(0.1)


def topic_truth(brokers, n):
    """What the input topic holds: (messages, weight sum, duplicates)."""
    recs = read_topic_all(brokers, TOPIC, timeout=60)
    seqs = {}
    wsum = 0.0
    for r in recs:
        d = msgpack.unpackb(r.value(), raw=False)
        seqs[d["seq"]] = seqs.get(d["seq"], 0) + 1
        wsum += d["weight"]
    missing = [s for s in range(n) if s not in seqs]
    check(not missing, "the topic lacks %d produced events, e.g. %r"
          % (len(missing), missing[:5]))
    dups = len(recs) - n
    if dups:
        print("note: the producer wrote %d duplicates (retries after lost acks); "
              "nmfd must fold them as the topic holds them" % dups)
    return len(recs), wsum, dups


def check_end_state(ps, d, brokers, n, t_after, what):
    """nmfd holds exactly what the topic holds; epochs were published after
    t_after, without gaps, the last one counting everything; the final
    checkpoint agrees."""
    total, wsum, _ = topic_truth(brokers, n)
    wait_for(lambda: metric(d.port, "nmfd_model_events") >= total, 60,
             "%s: nmfd to hold %d events" % (what, total))
    time.sleep(1.0)  # anything more would be a double count
    m = metrics(d.port)
    check(m[("nmfd_model_events", "")] == total, "%s: model holds %r events, the topic %d"
          % (what, m[("nmfd_model_events", "")], total))
    check(m[("nmfd_events_folded_total", "")] == total, "%s: folded %r, topic %d"
          % (what, m[("nmfd_events_folded_total", "")], total))
    wf = m[("nmfd_weight_folded_total", "")]
    check(abs(wf - wsum) <= 1e-6, "%s: weight %r, topic %r" % (what, wf, wsum))
    check(sum(v for (k, _), v in m.items() if k == "nmfd_events_rejected_total") == 0,
          "%s: events rejected" % what)

    # Two epochs after everything was folded, then the manifests.
    e0 = m[("nmfd_epoch", "")]
    wait_for(lambda: metric(d.port, "nmfd_epoch") >= e0 + 2, 60,
             "%s: two epochs after the stream" % what)
    mans = {}
    for r in read_topic_all(brokers, "nmf.snapshots", isolation="read_committed"):
        doc = msgpack.unpackb(r.value(), raw=False)
        mans.setdefault(doc["epoch"], []).append(doc)
    epochs = sorted(mans)
    check(epochs, "%s: no manifest" % what)
    gaps = [e for e in range(epochs[0], epochs[-1] + 1) if e not in mans]
    check(not gaps, "%s: epochs missing from nmf.snapshots: %r" % (what, gaps[:10]))
    check(epochs[0] == 1, "%s: first epoch %d" % (what, epochs[0]))
    again = {e: len(v) for e, v in mans.items() if len(v) > 1}
    if again:
        # An aborted epoch's records stay visible on the mock (KAFKA-MOCK.md).
        print("note: %s: epochs published more than once (aborted, then again): %r"
              % (what, again))
    prev = -1
    for e in epochs:
        ev = mans[e][-1]["events"]
        check(ev >= prev, "%s: manifest events went back at epoch %d" % (what, e))
        prev = ev
    after = [e for e in epochs if mans[e][-1]["ts"] > t_after * 1000]
    check(after, "%s: no epoch published after the faults ended" % what)
    last = mans[epochs[-1]][-1]
    check(last["events"] == total, "%s: last manifest events %r, topic %d"
          % (what, last["events"], total))
    check(abs(last["weight_sum"] - wsum) <= 1e-6, "%s: last manifest weight_sum %r, "
          "topic %r" % (what, last["weight_sum"], wsum))
    check(metric(d.port, "nmfd_epoch") >= epochs[-1], "%s: nmfd_epoch behind the topic"
          % what)

    check(d.poll() is None, "%s: nmfd exited" % what)
    check(stop(d) == 0, "%s: nmfd did not stop cleanly:\n%s" % (what, ps.log(d.name)[-3000:]))
    sanitizer_clean(ps, d.name)
    info = inspect_checkpoint(d.state)
    check(int(info["events"]) == total, "%s: checkpoint events %s, topic %d"
          % (what, info["events"], total))
    check(abs(float(info["weight_sum"]) - wsum) <= 1e-6, "%s: checkpoint weight_sum %s"
          % (what, info["weight_sum"]))
    offs = sum(int(line.rsplit(" ", 1)[1]) for line in info["offsets"]
               if line.startswith("offset %s/" % TOPIC))
    check(offs == total, "%s: checkpoint offsets sum to %d, the topic holds %d"
          % (what, offs, total))
    return total, len(epochs), len(after)


def start(ps, tag, partitions=4, sets=()):
    brokers, fifo = broker_with_control(ps, partitions=partitions, topics=TOPIC,
                                        name="broker-" + tag)
    # Records of one epoch in order: one partition for topics and manifests.
    broker_fault(ps, fifo, "topic nmf.snapshots 1", name="broker-" + tag)
    broker_fault(ps, fifo, "topic nmf.topics 1", name="broker-" + tag)
    broker_fault(ps, fifo, "topic nmf.segments %d" % partitions, name="broker-" + tag)
    d = ps.nmfd(brokers, sets=NMFD_SETS + list(sets), name="nmfd-" + tag)
    wait_for(lambda: d.poll() is not None or readyz(d.port) == 200, 30,
             "%s: /readyz 200" % tag)
    check(d.poll() is None, "%s: nmfd exited %r:\n%s" % (tag, d.returncode,
                                                         ps.log(d.name)[-3000:]))
    return brokers, fifo, d


def outage(ps, n, rate, down_s):
    brokers, fifo, d = start(ps, "outage")
    name = "broker-outage"
    t_begin = time.time()
    prod = StreamProducer(brokers, n, rate, deadline=t_begin + 100)
    prod.start()
    samp = Sampler(d.port)
    samp.start()
    wait_for(lambda: (metric(d.port, "nmfd_events_folded_total") or 0) > n * 0.1, 30,
             "outage: folding to start")
    err0 = metric(d.port, "nmfd_consumer_errors_total")
    broker_fault(ps, fifo, "down -1", name=name)
    t_down = time.time()
    time.sleep(down_s)
    broker_fault(ps, fifo, "up -1", name=name)
    t_up = time.time()
    folded_at_up = metric(d.port, "nmfd_events_folded_total")
    t_resume = wait_for(lambda: time.time() if metric(d.port, "nmfd_events_folded_total")
                        > folded_at_up else None, 30, "outage: folding to resume")
    wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 30,
             "outage: /readyz 200 after the brokers came back")
    t_ready = time.time()
    prod.join(120)
    check(not prod.is_alive(), "outage: the producer did not finish")
    check(prod.error is None, "outage: producer: %r" % prod.error)
    check(len(prod.delivered) == n, "outage: %d of %d events delivered"
          % (len(prod.delivered), n))
    samp.stop.set()
    samp.join(10)

    during = [s for s in samp.samples if t_down <= s[0] <= t_up]
    check(during, "outage: no samples while the brokers were down")
    check(all(s[3] == 200 for s in samp.samples),
          "outage: /healthz not always 200: %r" % sorted({s[3] for s in samp.samples}))
    slow = max(s[5] for s in samp.samples)
    check(slow < 1.0, "outage: an HTTP answer took %.2f s (the loop blocked?)" % slow)
    r503 = [s for s in during if s[1] == 503]
    check(r503, "outage: /readyz never 503 during a %d s outage" % down_s)
    first503 = min(s[0] for s in r503) - t_down
    reasons = sorted({s[2] for s in r503})
    check(first503 <= 2.0, "outage: /readyz 503 only %.1f s after the brokers went down"
          % first503)
    late = [s for s in during if s[0] > t_down + 2 and s[1] != 503]
    check(not late, "outage: /readyz %r again %.1f s into the outage"
          % ((late[0][1], late[0][0] - t_down) if late else (0, 0)))
    check(any("brokers unreachable" in r for r in reasons),
          "outage: /readyz reasons while down were %r, none says brokers unreachable"
          % reasons)
    errs = metric(d.port, "nmfd_consumer_errors_total")
    check(errs > err0, "outage: nmfd_consumer_errors_total did not grow (%r)" % errs)
    log = ps.log(d.name)
    outage_lines = [line for line in log.splitlines()
                    if line.startswith(("<3>", "<4>")) and "kafka" in line]
    check(outage_lines, "outage: nothing logged about the outage")
    check("brokers unreachable" in log,
          "outage: no 'brokers unreachable' line in nmfd's log")
    check("brokers reachable again" in log,
          "outage: no 'brokers reachable again' line in nmfd's log")
    resume = t_resume - t_up
    print("outage: down %.1f s; /readyz 503 after %.1f s (%s); folding resumed %.2f s "
          "after up, ready %.2f s after up; consumer errors %d; producer retried %d"
          % (t_up - t_down, first503, "; ".join(reasons), resume, t_ready - t_up,
             errs - err0, prod.retried))
    check(resume <= 5.0, "outage: folding resumed %.1f s after the brokers came back "
          "(limit 5 s)" % resume)
    total, nep, nafter = check_end_state(ps, d, brokers, n, t_up, "outage")
    print("outage: %d events, nothing lost or doubled; %d epochs, %d after the outage; "
          "epoch failures %s" % (total, nep, nafter,
                                 "see log" if "not published" in log else "0"))


def errors(ps, n, rate):
    brokers, fifo, d = start(ps, "errors")
    name = "broker-errors"
    t_begin = time.time()
    prod = StreamProducer(brokers, n, rate, deadline=t_begin + 100)
    prod.start()
    plan = [
        (1.0, "rtt -1 200"),
        (2.5, "error Fetch 5 NOT_LEADER_FOR_PARTITION"),
        (4.0, "rtt -1 0"),
        (4.5, "error Fetch 1 OFFSET_OUT_OF_RANGE"),
        (6.0, "error Heartbeat 1 REBALANCE_IN_PROGRESS"),
        (7.0, "error OffsetCommit 3 COORDINATOR_NOT_AVAILABLE"),
    ]
    for at, cmd in plan:
        delay = t_begin + at - time.time()
        if delay > 0:
            time.sleep(delay)
        broker_fault(ps, fifo, cmd, name=name)
        check(d.poll() is None, "errors: nmfd exited after '%s'" % cmd)
    prod.join(120)
    check(not prod.is_alive() and prod.error is None and len(prod.delivered) == n,
          "errors: producer: %r, %d of %d delivered" % (prod.error, len(prod.delivered), n))
    wait_for(lambda: metric(d.port, "nmfd_model_events") >= n, 60,
             "errors: nmfd to fold the stream")
    # The output producer alone now: its requests fail.
    for cmd in ("error Produce 3 NOT_LEADER_FOR_PARTITION",
                "error AddPartitionsToTxn 2 COORDINATOR_LOAD_IN_PROGRESS",
                "error EndTxn 1 COORDINATOR_NOT_AVAILABLE",
                "error Produce 2 REQUEST_TIMED_OUT",
                # Not retriable: the epoch is aborted and published again.
                "error Produce 1 INVALID_RECORD"):
        e0 = metric(d.port, "nmfd_epoch")
        broker_fault(ps, fifo, cmd, name=name)
        wait_for(lambda: metric(d.port, "nmfd_epoch") >= e0 + 2, 60,
                 "errors: two epochs after '%s'" % cmd)
    t_end = time.time()
    m = metrics(d.port)
    # OFFSET_OUT_OF_RANGE rewound every partition to offset 0: the messages
    # below the folded offsets came again and were skipped.
    replayed = m[("nmfd_messages_consumed_total", "")] - n
    check(replayed > 0, "errors: the rewind replayed nothing (consumed %r)"
          % m[("nmfd_messages_consumed_total", "")])
    print("errors: %d messages replayed and skipped, consumer errors %d, producer "
          "errors %d, epoch failures %d, folded %d in %.1f s"
          % (replayed, m[("nmfd_consumer_errors_total", "")],
                                   m[("nmfd_producer_errors_total", "")],
                                   m[("nmfd_epoch_failures_total", "")],
                                   m[("nmfd_events_folded_total", "")], t_end - t_begin))
    total, nep, _ = check_end_state(ps, d, brokers, n, t_end - 1.5, "errors")
    print("errors: %d events, nothing lost or doubled; %d epochs without gaps"
          % (total, nep))


def readyz(port):
    """/readyz status, or None while nothing answers (a dying process)."""
    try:
        return http_get(port, "/readyz")[0]
    except OSError:
        return None


def sanitizer_clean(ps, name):
    """No ASan/UBSan/LSan report in a process's log (sanitized builds)."""
    log = ps.log(name)
    for mark in ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer"):
        if mark in log:
            at = max(0, log.index(mark) - 200)
            fail("%s: sanitizer report:\n%s" % (name, log[at:at + 3000]))


def restart(ps, n):
    """A daemon stopped before any event leaves a checkpoint of an empty
    model; the next start must load it and go on folding."""
    brokers, fifo, d = start(ps, "restart")
    state = d.state
    check(stop(d) == 0, "restart: the first nmfd did not stop cleanly:\n%s"
          % ps.log(d.name)[-3000:])
    sanitizer_clean(ps, d.name)
    info = inspect_checkpoint(state)
    check(int(info["events"]) == 0, "restart: the empty checkpoint holds %s events"
          % info["events"])
    d2 = ps.nmfd(brokers, sets=NMFD_SETS, name="nmfd-restart2", state=state)
    wait_for(lambda: d2.poll() is not None or readyz(d2.port) == 200,
             30, "restart: /readyz 200 on the empty checkpoint")
    check(d2.poll() is None, "restart: nmfd exited %r on the empty checkpoint:\n%s"
          % (d2.returncode, ps.log(d2.name)[-3000:]))
    prod = StreamProducer(brokers, n, 5000, deadline=time.time() + 60)
    prod.start()
    prod.join(90)
    check(len(prod.delivered) == n, "restart: %d of %d delivered" % (len(prod.delivered), n))
    wait_for(lambda: metric(d2.port, "nmfd_model_events") == n, 60,
             "restart: nmfd to fold %d events after the restart" % n)
    check(stop(d2) == 0, "restart: nmfd did not stop cleanly")
    sanitizer_clean(ps, d2.name)
    check(int(inspect_checkpoint(state)["events"]) == n, "restart: checkpoint events")
    print("restart: empty checkpoint loaded, %d events folded after it" % n)


def backpressure(ps, n):
    brokers, fifo, d = start(ps, "backpressure", sets=[
        "snapshot.full_every=1", "kafka.queue.buffering.max.messages=50",
        "kafka.batch.num.messages=1"])
    prod = StreamProducer(brokers, n, 20000, deadline=time.time() + 60)
    prod.start()
    prod.join(90)
    check(len(prod.delivered) == n, "backpressure: %d of %d delivered"
          % (len(prod.delivered), n))
    wait_for(lambda: metric(d.port, "nmfd_model_events") == n, 60,
             "backpressure: nmfd to fold %d events" % n)
    broker_fault(ps, fifo, "rtt -1 20", name="broker-backpressure")
    e0, f0 = metric(d.port, "nmfd_epoch"), metric(d.port, "nmfd_epoch_failures_total")
    time.sleep(8)
    e1, f1 = metric(d.port, "nmfd_epoch"), metric(d.port, "nmfd_epoch_failures_total")
    broker_fault(ps, fifo, "rtt -1 0", name="broker-backpressure")
    t = time.time()
    while time.time() < t + 10 and metric(d.port, "nmfd_epoch") < e1 + 2:
        time.sleep(0.1)
    e2, t2 = metric(d.port, "nmfd_epoch"), time.time() - t
    d.send_signal(signal.SIGTERM)
    t = time.time()
    try:
        rc = d.wait(5)
    except subprocess.TimeoutExpired:
        rc = None
        d.kill()
        d.wait()
    took = time.time() - t
    sanitizer_clean(ps, d.name)
    ok = f1 == f0 and e2 >= e1 + 2 and rc == 0
    msg = ("backpressure: %d epochs published and %d failed in 8 s of a full "
           "producer queue (every epoch %d segment records, queue 50), then %d "
           "in %.1f s with a fast broker; stop: %s in %.1f s"
           % (e1 - e0, f1 - f0, 400, e2 - e1, t2,
              "exit %d" % rc if rc is not None else "no exit", took))
    if ok:
        print(msg)
    elif os.environ.get("NMFD_XFAIL_STRICT") == "1":
        fail(msg)
    else:
        print("XFAIL: " + msg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario",
                    choices=["outage", "errors", "restart", "backpressure", "all"],
                    default="all")
    ap.add_argument("--events", type=int, default=30000)
    ap.add_argument("--rate", type=int, default=1500)
    ap.add_argument("--down", type=float, default=10.0)
    a = ap.parse_args()
    t0 = time.time()
    with Procs() as ps:
        if a.scenario in ("outage", "all"):
            outage(ps, a.events, a.rate, a.down)
        if a.scenario in ("errors", "all"):
            errors(ps, a.events // 2, a.rate)
        if a.scenario in ("restart", "all"):
            restart(ps, 2000)
        if a.scenario in ("backpressure", "all"):
            backpressure(ps, 2000)
    print("faults: done in %.1f s" % (time.time() - t0))


if __name__ == "__main__":
    main()
