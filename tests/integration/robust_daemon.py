#!/usr/bin/python3
"""model.robust = l21 in the daemon, as an operator sees it: on a planted
stream with a few bots clicking items at random, /users/ID shows each
user's weight relative to the mean, the bots' far below the typical
user's, and nmfd_robust_outliers and nmfd_robust_lowest_weight point at
them; the dense snapshot's model map (as the manifest's) says robust = l21. Without robust every
weight is 1 (tests/integration/e2e_pipeline.py runs that default)."""
import json
import os

import msgpack
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Procs, check, converged, folded_all, gen_planted,  # noqa: E402
                     http_get, metric, stop, wait_for)

K = 6
USERS, ITEMS, EVENTS, BOTS = 1000, 300, 30000, 5


def main():
    with Procs() as ps:
        events, planted = gen_planted(ps, USERS, ITEMS, K, EVENTS, seed=21)
        with open(events) as f:
            header, rows = f.readline(), f.read().splitlines()
        rng = random.Random(21)
        ts = [int(r.split(",")[3]) for r in rows]
        bots = ["bot%d,i%d,1,%d" % (rng.randrange(BOTS), rng.randrange(ITEMS),
                                    rng.randint(ts[0], ts[-1]))
                for _ in range(len(rows) // 2)]
        rows = sorted(rows + bots, key=lambda r: int(r.split(",")[3]))
        with open(events, "w") as f:
            f.write(header + "\n".join(rows) + "\n")

        brokers = ps.broker(partitions=2, topics="nmf.events")
        snapfile = os.path.join(ps.tmp, "snapshot.msgpack")
        d = ps.nmfd(brokers, sets=["model.k=%d" % K, "model.robust=l21",
                                   "snapshot.interval=1s",
                                   "snapshot.file=" + snapfile])
        wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 30, "/readyz 200")
        ps.produce(brokers, events)
        wait_for(lambda: folded_all(d.port, len(rows)), 120, "every event folded")
        wait_for(lambda: converged(d.port), 120, "refinement to converge")

        def weight(user):
            status, body = http_get(d.port, "/users/" + user)
            check(status == 200, "/users/%s: %d" % (user, status))
            doc = json.loads(body)
            check(doc["weight_raw"] > 0, "%s: weight_raw %r" % (user, doc))
            return doc["weight"]

        bot_w = [weight("bot%d" % b) for b in range(BOTS)]
        normal = sorted(planted)[:200]
        user_w = [weight(u) for u in normal]
        print("bots' weights %s; normal users' %.3f..%.3f (mean %.3f)" %
              (["%.3f" % w for w in bot_w], min(user_w), max(user_w),
               sum(user_w) / len(user_w)))
        check(max(bot_w) < 0.25, "a bot weighs %.3f of the mean" % max(bot_w))
        # l21 weighs a user by the inverse of its absolute residual,
        # discounted by its volume: the heaviest genuine users weigh little
        # too, so the bots are below the typical user, not necessarily
        # below every one.
        med = sorted(user_w)[len(user_w) // 2]
        check(max(bot_w) < med / 4, "bots %r against the median user %.3f"
              % (bot_w, med))
        out = metric(d.port, "nmfd_robust_outliers")
        lo = metric(d.port, "nmfd_robust_lowest_weight")
        check(out >= BOTS, "nmfd_robust_outliers %r, want >= %d" % (out, BOTS))
        # The daemon's clock refreshes re-solve users between the reads,
        # which moves the mean the weights are relative to by a little.
        check(0 < lo <= min(bot_w) * 1.05,
              "nmfd_robust_lowest_weight %r, lowest bot %r" % (lo, min(bot_w)))
        check(stop(d) == 0, "nmfd did not exit 0 on SIGTERM:\n" + ps.log("nmfd"))
        with open(snapfile, "rb") as f:
            doc = msgpack.unpackb(f.read(), raw=False)
        check(doc["model"]["robust"] == "l21", "model map %r" % doc["model"])
    print("ok")


if __name__ == "__main__":
    main()
