#!/usr/bin/python3
"""Refinement yields to a backlog. nmfd started behind a stream already in
the broker folds the stream first: users whose h went stale at a W refresh
and who send nothing more are not re-solved while events wait. Once it has
caught up, refinement re-solves them until the model converges, and the
segments come out as `nmfctl fit` makes them from the same events."""
import json
import os
import sys
import time

from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Procs, check, converged, fail, fit_segments, gen_planted,  # noqa: E402
                     http_get, metrics, wait_for)

K = 8
USERS, ITEMS, EVENTS = 20000, 1000, 300000
# While streaming and keeping up, nmfd re-solves one stale user per 4
# events folded; behind, none. A tenth of that pace leaves room for the
# passes that drain the queue while the fetcher refills it.
PACE = 4 * 10


def main():
    with Procs() as ps:
        events, planted = gen_planted(ps, USERS, ITEMS, K, EVENTS, seed=5)

        # The whole stream waits in the broker before nmfd starts.
        brokers = ps.broker(partitions=8, topics="nmf.events")
        ps.produce(brokers, events, extra=["--batch", "10"])
        d = ps.nmfd(brokers, sets=["model.k=%d" % K, "model.refresh_events=10000",
                                   "kafka.queued.min.messages=1000000"])

        samples = []  # (folded, refined, stale) while catching up
        deadline = time.time() + 120
        while time.time() < deadline:
            m = metrics(d.port)
            folded = m.get(("nmfd_events_folded_total", ""), 0)
            samples.append((folded, m.get(("nmfd_users_refined_total", ""), 0),
                            m.get(("nmfd_stale_users", ""), 0)))
            if folded >= EVENTS:
                break
            time.sleep(0.005)
        else:
            fail("nmfd folded %d of %d events" % (samples[-1][0], EVENTS))

        # Mid-backlog: stale users waiting, hardly any re-solved.
        mid = [s for s in samples if 0.1 * EVENTS <= s[0] <= 0.9 * EVENTS]
        print("%d samples, %d mid-backlog; at the last of them folded %d, "
              "refined %d, stale %d" % ((len(samples), len(mid)) + (mid[-1] if mid else (0, 0, 0))))
        check(mid, "no sample while nmfd caught up (it folded too fast to see)")
        check(max(s[2] for s in mid) > 0, "no user went stale while catching up")
        for folded, refined, stale in mid:
            check(refined <= folded / PACE,
                  "refined %d users with %d events folded and a backlog waiting"
                  % (refined, folded))

        # Caught up: refinement takes over and converges.
        wait_for(lambda: converged(d.port), 120, "refinement to converge")
        m = metrics(d.port)
        check(m[("nmfd_users_refined_total", "")] > mid[-1][1],
              "nothing refined after the backlog")
        check(m[("nmfd_stale_users", "")] == 0, "stale users left after converging")

        # Segments as nmfctl fit makes them (it folds the whole stream, then
        # refines: the limit of a daemon that starts behind).
        fit = fit_segments(ps, events, K, ["model.refresh_events=10000"])
        users = sorted(planted)[::10]  # one HTTP request each
        daemon = {}
        for u in users:
            status, body = http_get(d.port, "/users/" + u)
            check(status == 200, "/users/%s: %d" % (u, status))
            daemon[u] = json.loads(body)["segment"]
        ari = adjusted_rand_score([fit[u] for u in users], [daemon[u] for u in users])
        ari_truth = adjusted_rand_score([planted[u] for u in users], [daemon[u] for u in users])
        print("ARI daemon/fit %.4f, daemon/truth %.4f" % (ari, ari_truth))
        check(ari >= 0.95, "daemon vs fit ARI %.4f" % ari)
    print("ok")


if __name__ == "__main__":
    main()
