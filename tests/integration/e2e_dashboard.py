#!/usr/bin/python3
"""The live dashboard of a real nmfd: a planted stream goes through the
standalone broker into nmfd (with item names), then headless Chromium
renders http://.../ and tests/dashboard/check_dashboard.py checks what a
person would see (header numbers, one card per topic with item names, the
segment chart) and keeps a screenshot. Each topic's top items must also be
one planted bundle: the page shows the segments of the stream."""
import collections
import csv
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import NMFCTL, Procs, check, converged, folded_all, http_get, metric, wait_for  # noqa: E402

K = 5
SRC = os.environ.get("NMFD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.environ.get("NMFD_BUILD", ".")


def main():
    if not os.path.exists("/usr/bin/chromium"):
        print("SKIP: no /usr/bin/chromium")
        sys.exit(77)
    with Procs() as ps:
        events = os.path.join(ps.tmp, "events.csv")
        truth = os.path.join(ps.tmp, "truth.csv")
        with open(events, "wb") as f:
            r = subprocess.run([NMFCTL, "gen", "--users", "2000",
                                "--items", "100", "--k", str(K), "--events", "40000",
                                "--seed", "5", "--noise", "0.02", "--truth", truth],
                               stdout=f, timeout=60)
        check(r.returncode == 0, "nmfctl gen failed")
        with open(truth) as f:
            seg = {r["user"]: int(r["segment"]) for r in csv.DictReader(f)}
        votes = collections.defaultdict(collections.Counter)
        with open(events) as f:
            for r in csv.DictReader(f):
                votes[r["item"]][seg[r["user"]]] += 1
        bundle = {i: c.most_common(1)[0][0] for i, c in votes.items()}
        names = os.path.join(ps.tmp, "items.csv")
        with open(names, "w") as f:
            f.write("item,name\n")
            for i in sorted(bundle):
                f.write('%s,"Product %s (line %d)"\n' % (i, i[1:], bundle[i]))

        brokers = ps.broker(partitions=4)
        d = ps.nmfd(brokers, sets=["model.k=%d" % K, "snapshot.interval=1s",
                                   "snapshot.item_names=" + names])
        ps.produce(brokers, events)
        wait_for(lambda: folded_all(d.port, 40000), 120, "every event folded")
        wait_for(lambda: converged(d.port), 120, "refinement to converge")

        status, body = http_get(d.port, "/topics")
        check(status == 200, "/topics %d" % status)
        topics = json.loads(body)["topics"]
        check(len(topics) == K, "%d topics" % len(topics))
        for t in topics:
            lines = [int(name.rsplit("line ", 1)[1].rstrip(")"))
                     for name, _ in t["top"][:5]]
            check(len(set(lines)) == 1, "topic %d mixes planted bundles: %r"
                  % (t["topic"], t["top"][:5]))
        check(sorted(int(t["top"][0][0].rsplit("line ", 1)[1].rstrip(")"))
                     for t in topics) == list(range(K)),
              "each planted bundle should be one topic")

        shot = os.path.join(OUT, "dashboard-nmfd.png")
        r = subprocess.run(["/usr/bin/python3",
                            os.path.join(SRC, "tests", "dashboard", "check_dashboard.py"),
                            "--url", "http://127.0.0.1:%d/" % d.port, "--k", str(K),
                            "--screenshot", shot], timeout=180)
        check(r.returncode == 0, "check_dashboard.py failed (%d)" % r.returncode)
    print("dashboard of a real nmfd: OK, screenshot %s" % shot)


if __name__ == "__main__":
    main()
