#!/usr/bin/python3
"""Prints the shape of event CSVs (user,item,weight,ts), one line each:
events, users, items, the three heaviest users' distinct items (and the
events of the heaviest), and the time span. ts is read as
nmfd reads it (below 1e11: seconds, else ms).

  data/convert/shape.py data/*.csv
"""
import collections
import csv
import datetime
import sys

for path in sys.argv[1:]:
    if path.endswith("_items.csv"):
        continue
    items = collections.defaultdict(set)
    events = collections.Counter()
    lo = hi = raw_hi = None
    n = 0
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            n += 1
            items[r["user"]].add(r["item"])
            events[r["user"]] += 1
            ts = int(r["ts"])
            raw_hi = ts if raw_hi is None else max(raw_hi, ts)
            ts = ts * 1000 if ts < 10**11 else ts
            lo = ts if lo is None else min(lo, ts)
            hi = ts if hi is None else max(hi, ts)
    every = set().union(*items.values())
    top = sorted(items, key=lambda u: -len(items[u]))[:3]
    heavy = top[0]

    def day(ms):
        return datetime.datetime.fromtimestamp(
            ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")

    if raw_hi < 10**9:
        span = "ts %d .. %d (row ordinals, seconds)" % (lo // 1000, raw_hi)
    else:
        span = "ts %s .. %s (%.1f years)" % (
            day(lo), day(hi), (hi - lo) / 1000 / 86400 / 365.25)
    print("%s: %d events, %d users, %d items; heaviest users' items %s "
          "(user %s: %d events); %s"
          % (path, n, len(items), len(every),
             "/".join(str(len(items[u])) for u in top), heavy,
             events[heavy], span))
