#!/usr/bin/python3
"""Live view of nmfd's output for script/demo: reads the topic records and
the manifests from Kafka (read_committed, so each epoch is seen whole) and
prints, per epoch, the segment sizes, each topic's top items by name, and
the loss. Ends once every event of the stream is folded and a few more
epochs have shown the idle refinement, or at the deadline."""
import argparse
import csv
import sys
import time

import msgpack
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def item_names(path):
    names = {}
    if path:
        with open(path, newline="") as f:
            for row in csv.reader(f):
                if len(row) >= 2 and row[0] != "item":
                    names[row[0]] = row[1]
    return names


def bar(n, most, width=28):
    full = int(round(width * n / most)) if most else 0
    return "█" * full + "·" * (width - full)


def show(man, topics, names, total):
    k = man["k"]
    sizes = man["segment_sizes"]
    most = max(sizes) if sizes else 0
    print("\nepoch %d  %s  events %d/%d  users %d  items %d  loss %.4f  "
          "(%d segment records%s)"
          % (man["epoch"], time.strftime("%H:%M:%S"), man["events"], total,
             man["users"], man["items"], man["loss"], man["segments"],
             ", full" if man["full"] else ""))
    for j in range(k):
        t = topics.get(j)
        tops = ""
        if t:
            tops = ", ".join("%s %.2f" % (names.get(str(i), str(i)), w)
                             for i, w in t["top"][:4])
        print("  segment %-2d %6d users %s  %s" % (j, sizes[j],
                                                   bar(sizes[j], most), tops))
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--items", default="")
    ap.add_argument("--events", type=int, required=True,
                    help="events in the stream; the view ends after them")
    ap.add_argument("--after", type=int, default=3,
                    help="epochs to show once every event is folded")
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--topics-topic", default="nmf.topics")
    ap.add_argument("--manifest-topic", default="nmf.snapshots")
    a = ap.parse_args()

    names = item_names(a.items)
    c = Consumer({"bootstrap.servers": a.brokers, "group.id": "nmfd-demo-view",
                  "enable.auto.commit": False,
                  "isolation.level": "read_committed",
                  "fetch.wait.max.ms": 50})
    c.assign([TopicPartition(a.topics_topic, 0, OFFSET_BEGINNING),
              TopicPartition(a.manifest_topic, 0, OFFSET_BEGINNING)])
    topics, manifests = {}, {}
    shown, after = 0, 0
    deadline = time.time() + a.timeout
    try:
        while time.time() < deadline:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                rec = msgpack.unpackb(msg.value(), raw=False)
                if msg.topic() == a.topics_topic:
                    topics.setdefault(rec["epoch"], {})[rec["topic"]] = rec
                else:
                    manifests[rec["epoch"]] = rec
            for e in sorted(manifests):
                if e <= shown or len(topics.get(e, {})) < manifests[e]["k"]:
                    continue
                show(manifests[e], topics.pop(e), names, a.events)
                shown = e
                if manifests[e]["events"] >= a.events:
                    after += 1
                del manifests[e]
                break
            if after > a.after:
                return 0
    finally:
        c.close()
    print("demo-view: deadline reached after epoch %d" % shown,
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
