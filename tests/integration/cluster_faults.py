#!/usr/bin/python3
"""A group of three nmfd processes loses members while the stream flows,
and grows: nothing is lost or folded twice.

1. Ten kill -9 of random members (the leader at least three times), each
   restarted on its own state directory as systemd would, while events
   are produced at a steady rate.
2. One of the three stopped for good: the two others take its partitions
   and its users.
3. A fourth member added: it takes partitions with their users' state.

After each phase, checked here from Kafka and HTTP, not by nmfd's own
figures: the leader's manifest counts exactly the events and weight
produced; the members' users are disjoint and are every user; and V
rebuilt from the members' state (every user's profile, /users/ID) equals
the produced matrix."""
import os
import random
import signal
import subprocess
import sys
import time
import urllib.parse
import json

sys.path.insert(0, os.path.dirname(__file__))
from harness import NMFCTL, Procs, check, http_get, stop, wait_for  # noqa: E402
from cluster_common import (PARTS, leaders, manifest_latest, read_csv, settled,  # noqa: E402
                            snapshot, start_member)

K = 4
EVENTS = 60000
RATE = 1000


def whole(ps, brokers, ms, V, n_events, weight, what):
    wait_for(lambda: settled(ms), 120, "the group settled (%s)" % what)

    def manifest_whole():
        m = manifest_latest(brokers)
        return m if m and m.get("events") == n_events else None
    m = wait_for(manifest_whole, 120, "a manifest counting every event (%s)" % what)
    check(m["weight_sum"] == weight, "%s: manifest weight_sum %r, produced %r"
          % (what, m["weight_sum"], weight))
    held = {}
    for d in ms:
        for u in snapshot(d)["users"]:
            check(u not in held, "%s: user %s on %s and %s" % (what, u, held.get(u), d.name))
            held[u] = d
    every = {u for u, _ in V}
    check(set(held) == every, "%s: members hold %d users, the stream has %d (missing %r)"
          % (what, len(held), len(every), sorted(every - set(held))[:5]))
    # V from the members' state, user by user.
    rebuilt = {}
    for u, d in held.items():
        status, body = http_get(d.port, "/users/" + urllib.parse.quote(u))
        check(status == 200, "%s: /users/%s on %s: %d" % (what, u, d.name, status))
        for item, v in json.loads(body)["profile"]:
            rebuilt[(u, item)] = v
    check(set(rebuilt) == set(V), "%s: %d (user, item) pairs rebuilt, %d produced"
          % (what, len(rebuilt), len(V)))
    bad = [(key, rebuilt[key], V[key]) for key in V
           if abs(rebuilt[key] - V[key]) > 1e-5 * max(1.0, V[key])]
    check(not bad, "%s: %d entries of V differ, e.g. %r" % (what, len(bad), bad[:3]))
    print("%s: %d events, %d users, V whole" % (what, n_events, len(held)))


def main():
    rng = random.Random(7)
    with Procs() as ps:
        events = os.path.join(ps.tmp, "events.csv")
        with open(events, "wb") as f:
            r = subprocess.run([NMFCTL, "gen", "--users", "2000", "--items", "200",
                                "--k", str(K), "--events", str(EVENTS), "--seed", "11"],
                               stdout=f, timeout=60)
        check(r.returncode == 0, "nmfctl gen failed")
        V, n_events, weight = read_csv(events)

        brokers = ps.broker(partitions=PARTS, cluster=True,
                            topics="nmf.events,nmf.segments,nmf.topics,nmf.snapshots")
        names = ["a", "b", "c"]
        states = {n: os.path.join(ps.tmp, n + "-state") for n in names}
        ms = {n: start_member(ps, brokers, n, K, state=states[n]) for n in names}
        wait_for(lambda: settled(list(ms.values())), 120, "three members")

        producer = ps.start([NMFCTL, "produce", "--brokers", brokers, "--topic", "nmf.events",
                             "--rate", str(RATE), events], "producer")
        leader_kills = 0
        for i in range(10):
            time.sleep(rng.uniform(2.0, 6.0))
            # The leader four times (once it is elected), the others at
            # random.
            lead = []
            if i % 3 == 0:
                wait_for(lambda: leaders(list(ms.values())), 60, "a leader")
                lead = [n for n, d in ms.items() if d in leaders(list(ms.values()))]
            if lead:
                victim = lead[0]
                leader_kills += 1
            else:
                victim = rng.choice(names)
            ms[victim].send_signal(signal.SIGKILL)
            ms[victim].wait(10)
            time.sleep(rng.uniform(0.0, 2.0))
            ms[victim] = start_member(ps, brokers, "%s-%d" % (victim, i), K,
                                      state=states[victim])
        check(leader_kills >= 3, "the leader was killed %d times" % leader_kills)
        check(producer.wait(300) == 0, "nmfctl produce failed")
        whole(ps, brokers, list(ms.values()), V, n_events, weight, "after ten kills")

        # Scale down: c stops for good.
        gone = ms.pop("c")
        check(stop(gone) == 0, "c did not stop cleanly:\n" + ps.log(gone.name)[-2000:])
        whole(ps, brokers, list(ms.values()), V, n_events, weight, "two members left")

        # Scale up: a fourth.
        ms["d"] = start_member(ps, brokers, "d", K)
        whole(ps, brokers, list(ms.values()), V, n_events, weight, "a fourth member")
        check(snapshot(ms["d"])["users"], "the fourth member took no users")
        for d in ms.values():
            rc = stop(d)
            check(rc == 0, "%s exited %d:\n%s" % (d.name, rc, ps.log(d.name)[-3000:]))
    print("cluster faults: ten kills, a member removed and one added, nothing lost")


if __name__ == "__main__":
    main()
