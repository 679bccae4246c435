#!/usr/bin/python3
"""nmfctl rank picks the planted k on nmfctl gen streams: for k = 3, 5
and 8 segments, each at gen's default noise (0.05) and at a noisier 0.2,
a stream of 2000 users (Zipf activity: a few users hold much of the
data) over 200 items is ranked over k-2..k+3 with rank's defaults, and
the last line must be the planted k. The generator runs with its
defaults apart from users, items, k, events and noise. Under the
sanitizers (ten times slower; that run looks for memory errors) one
case, k = 5 at the default noise."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Procs, check  # noqa: E402
from http_common import NMFCTL  # noqa: E402

USERS, ITEMS, EVENTS = 2000, 200, 40000


def main():
    misses = []
    cases = [(k, noise) for k in (3, 5, 8) for noise in ("0.05", "0.2")]
    if os.environ.get("NMFD_SANITIZED"):
        cases = [(5, "0.05")]
    with Procs() as ps:
        for k, noise in cases:
            path = os.path.join(ps.tmp, "g%d_%s.csv" % (k, noise))
            with open(path, "wb") as f:
                r = subprocess.run(
                    [NMFCTL, "gen", "--users", str(USERS), "--items",
                     str(ITEMS), "--k", str(k), "--events", str(EVENTS),
                     "--noise", noise], stdout=f, timeout=60)
            check(r.returncode == 0, "nmfctl gen failed")
            ks = "%d:%d" % (max(2, k - 2), k + 3)
            r = subprocess.run([NMFCTL, "rank", "--events", path, "--k",
                                ks], capture_output=True, timeout=300)
            check(r.returncode == 0, "rank: %r" % r.stderr)
            lines = r.stdout.decode().strip().splitlines()
            got = int(lines[-1][2:])
            print("k=%d noise=%s: rank says k=%d" % (k, noise, got))
            if got != k:
                misses.append((k, noise, got, lines))
    for k, noise, got, lines in misses:
        print("planted k=%d noise=%s, chose %d:\n%s" % (
            k, noise, got, "\n".join(lines)))
    check(not misses, "%d of %d planted streams missed" % (len(misses),
                                                         len(cases)))
    print("OK")


if __name__ == "__main__":
    main()
