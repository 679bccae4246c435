"""Delay from an event's produce to its user's segment record.

While a background stream runs at a moderate, paced rate (`nmfctl produce
--rate`), the probe produces marker events for fresh users (ids never
seen before, so the user's first segment record can only come from the
marker), each stamped with its produce time, and consumes nmf.segments
with isolation.level=read_committed from the end. For each marker it
records when nmfd had folded it (GET /users/ID answers 200), when the
user's first segment record arrived, and when the manifest of that
record's epoch arrived on nmf.snapshots. At the default snapshot.interval
(5 s) expect about interval/2 for the wait for the next epoch plus the
time the epoch takes to publish. librdkafka 2.0.2's mock shows
read_committed readers uncommitted records, so the record can arrive
before its epoch commits; the manifest (produced last in the epoch's
transaction) is what a read_committed reader on a real cluster waits for,
give or take the commit itself.

One JSON line per run on stdout, and a summary (medians over runs of the
per-run median and p99). Uses the helpers of e2e.py (same directory).
"""
import argparse
import json
import os
import random
import re
import signal
import statistics
import sys
import threading
import time
import urllib.error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402

import msgpack  # noqa: E402
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition  # noqa: E402


MANIFESTS = "nmf.snapshots"


def pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    i = min(len(xs) - 1, max(0, int(round(q / 100.0 * len(xs) + 0.5)) - 1))
    return xs[i]


class SegmentReader(threading.Thread):
    """Reads nmf.segments and nmf.snapshots from their current ends;
    remembers when the first segment record of each wanted key arrived
    (and its epoch), and when each epoch's manifest arrived."""

    def __init__(self, brokers, topic, nparts, prefix):
        super().__init__(daemon=True)
        self.prefix = prefix.encode()
        self.first = {}
        self.manifests = {}
        self.records = 0
        self.stop = False
        self.c = Consumer({"bootstrap.servers": brokers, "group.id": "latency-probe",
                           "enable.auto.commit": False,
                           "isolation.level": "read_committed",
                           "fetch.wait.max.ms": 10, "fetch.error.backoff.ms": 10})
        tps = []
        for p in range(nparts):
            _, hi = self.c.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                 cached=False)
            tps.append(TopicPartition(topic, p, hi if hi >= 0 else OFFSET_END))
        _, hi = self.c.get_watermark_offsets(TopicPartition(MANIFESTS, 0), timeout=10,
                                             cached=False)
        tps.append(TopicPartition(MANIFESTS, 0, hi if hi >= 0 else OFFSET_END))
        self.c.assign(tps)

    def run(self):
        while not self.stop:
            for m in self.c.consume(num_messages=1000, timeout=0.1):
                if m.error():
                    continue
                k = m.key()
                if m.topic() == MANIFESTS:
                    self.manifests.setdefault(int(k), time.time())
                    continue
                self.records += 1
                if k and k.startswith(self.prefix) and k not in self.first:
                    self.first[k] = (time.time(), msgpack.unpackb(m.value())["epoch"])
        self.c.close()


def fold_watch(port, pending, folded, stop):
    """Polls GET /users/ID for markers not yet folded."""
    while not stop.is_set():
        for user, _ in list(pending.items()):
            try:
                status, _ = e2e.http_get(port, "/users/" + user, timeout=2)
            except urllib.error.HTTPError:
                status = 404
            except OSError:
                continue
            if status == 200:
                folded[user] = time.time()
                pending.pop(user, None)
        time.sleep(0.002)


def one_run(a, idx):
    name = "latency-%d-%d" % (idx, int(time.time()))
    logdir = os.path.join(a.out, name)
    r = e2e.Run(a, name, logdir)
    res = {"scenario": "latency", "load_before": e2e.uptime(), "logdir": logdir}
    try:
        r.broker()
        # Debug level: nmfd logs each epoch's record count and duration.
        r.start_nmfd(["log.level=debug"] +
                     (["snapshot.interval=%s" % a.interval] if a.interval else []))
        e2e.wait_for(lambda: e2e.readyz(r.nmfd.port), 60, "nmfd's assignment")
        bg, _ = r.produce(a.bg_rate)
        e2e.wait_for(lambda: (e2e.metric_value(r.nmfd.port, "nmfd_events_folded_total") or 0)
                     > a.bg_rate, 60, "the background stream")
        prefix = "probe-%s-" % name
        reader = SegmentReader(r.brokers, "nmf.segments", a.partitions, prefix)
        reader.start()
        time.sleep(1)  # the reader's fetches are running
        prod = Producer({"bootstrap.servers": r.brokers, "linger.ms": 0,
                         "partitioner": "murmur2_random"})
        # A first message connects the producer (about 1 s here); markers
        # are timed only after it.
        prod.produce("events", key=(prefix + "warmup").encode(),
                     value=msgpack.packb({"user": prefix + "warmup", "item": "i0"}))
        prod.flush(10)
        sent, pending, folded = {}, {}, {}
        stop = threading.Event()
        watcher = threading.Thread(target=fold_watch,
                                   args=(r.nmfd.port, pending, folded, stop), daemon=True)
        watcher.start()
        rnd = random.Random(idx)
        for i in range(a.markers):
            user = "%s%d" % (prefix, i)
            t = time.time()
            value = msgpack.packb({"user": user, "item": "i%d" % rnd.randrange(1000),
                                   "weight": 1.0, "ts": int(t * 1000)})
            prod.produce("events", key=user.encode(), value=value)
            prod.poll(0)
            sent[user] = t
            pending[user] = t
            # Exponential gaps: marker phases uniform against the epochs.
            time.sleep(rnd.expovariate(a.marker_rate))
        prod.flush(10)
        deadline = time.time() + 3 * a.interval_s + 30
        while time.time() < deadline and \
                sum(u.encode() in reader.first for u in sent) < len(sent):
            time.sleep(0.1)
        time.sleep(2)  # the manifest of the last marker's epoch
        stop.set()
        reader.stop = True
        reader.join(10)
        r.ps.stop(bg, signal.SIGINT)
        lat, fold, whole = [], [], []
        for user, t in sent.items():
            got = reader.first.get(user.encode())
            if got:
                lat.append(got[0] - t)
                if got[1] in reader.manifests:
                    whole.append(reader.manifests[got[1]] - t)
            if user in folded:
                fold.append(folded[user] - t)
        res.update({
            "load_after": e2e.uptime(),
            "markers": len(sent), "received": len(lat),
            "median_s": statistics.median(lat) if lat else None,
            "p99_s": pct(lat, 99), "max_s": max(lat) if lat else None,
            "min_s": min(lat) if lat else None,
            "fold_median_s": statistics.median(fold) if fold else None,
            # The mock shows read_committed readers uncommitted records, so
            # a record can arrive before its epoch commits; the epoch's
            # manifest, produced last, bounds the commit from below.
            "epoch_complete_median_s": statistics.median(whole) if whole else None,
            "epoch_complete_p99_s": pct(whole, 99),
            "fold_p99_s": pct(fold, 99),
            "segment_records_read": reader.records,
            "bg_rate": a.bg_rate, "interval": a.interval or "5s (default)",
            "folded_total": e2e.metric_value(r.nmfd.port, "nmfd_events_folded_total"),
            "epochs": e2e.metric_value(r.nmfd.port, "nmfd_epochs_published_total"),
        })
        epochs = [(int(m.group(2)), float(m.group(3))) for m in re.finditer(
            r"epoch (\d+): (\d+) segment records(?: \(full\))?, ([\d.]+) s",
            r.ps.log("nmfd"))]
        if epochs:
            res["epoch_records_median"] = statistics.median(n for n, _ in epochs)
            res["epoch_publish_s_median"] = statistics.median(s for _, s in epochs)
            res["epoch_publish_s_max"] = max(s for _, s in epochs)
        with open(os.path.join(logdir, "latencies.txt"), "w") as f:
            f.write("# user produce_to_fold_s produce_to_segment_s "
                    "produce_to_epoch_manifest_s\n")
            for user, t in sent.items():
                got = reader.first.get(user.encode())
                man = reader.manifests.get(got[1]) if got else None
                f.write("%s %s %s %s\n" % (
                    user, "%.4f" % (folded[user] - t) if user in folded else "-",
                    "%.4f" % (got[0] - t) if got else "-",
                    "%.4f" % (man - t) if man else "-"))
        return res
    finally:
        r.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--daemon-build", help="build directory of nmfd and nmfctl")
    ap.add_argument("--csv", required=True, help="background stream (nmfctl gen)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--bg-rate", type=float, default=50000, help="background events/s")
    ap.add_argument("--markers", type=int, default=200)
    ap.add_argument("--marker-rate", type=float, default=10, help="markers/s (mean)")
    ap.add_argument("--interval", default="", help="snapshot.interval (default: nmfd's 5s)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nmfd-set", action="append", default=[])
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    a.daemon_build = os.path.abspath(a.daemon_build) if a.daemon_build else None
    a.csv = os.path.abspath(a.csv)
    # What e2e.Run expects of its arguments.
    a.batch, a.codec, a.producer_x = 1, "lz4", []
    a.bare_api, a.timeout = "poll", 600
    a.interval_s = 5.0
    if a.interval:
        v = a.interval
        a.interval_s = float(v[:-2]) / 1000 if v.endswith("ms") else float(v.rstrip("s"))
    os.makedirs(a.out, exist_ok=True)
    results = []
    for i in range(a.runs):
        e2e.log("latency run %d, load %s" % (i + 1, e2e.uptime()))
        try:
            res = one_run(a, i)
        except Exception as e:
            e2e.log("run failed: %s" % e)
            res = {"scenario": "latency", "error": str(e)}
        print(json.dumps(res), flush=True)
        results.append(res)
    good = [r for r in results if r.get("median_s") is not None]
    with open(os.path.join(a.out, "results.json"), "a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    if good:
        print("SUMMARY " + json.dumps({
            "config": "latency bg=%g/s interval=%s" % (a.bg_rate, a.interval or "5s"),
            "runs": len(good),
            "median_s": statistics.median(r["median_s"] for r in good),
            "p99_s": statistics.median(r["p99_s"] for r in good),
            "fold_median_s": statistics.median(r["fold_median_s"] for r in good
                                               if r["fold_median_s"] is not None),
            "epoch_publish_s_median": statistics.median(
                r.get("epoch_publish_s_median", float("nan")) for r in good),
            "epoch_records_median": statistics.median(
                r.get("epoch_records_median", float("nan")) for r in good),
            "epoch_complete_median_s": statistics.median(
                r.get("epoch_complete_median_s") or float("nan") for r in good),
            "epoch_complete_p99_s": statistics.median(
                r.get("epoch_complete_p99_s") or float("nan") for r in good),
            "received": [r["received"] for r in good],
            "loads": [r["load_before"] for r in good]}), flush=True)
    return 0 if len(good) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
