#!/usr/bin/python3
"""Three nmfd processes with cluster.enabled and one group.id fold a
planted stream and hold one model: the same W at the same version on
every member, disjoint users that cover everyone, segments that agree
with a single process fed the same stream (ARI >= 0.95) and a loss within
2% of it, every loss computed here from the CSV and the dense snapshots.
The leader's manifest, read from Kafka with python3-confluent-kafka,
counts the group's events and weight exactly."""
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import NMFCTL, Procs, check, metric, stop, wait_for  # noqa: E402
from cluster_common import (PARTS, ari, h_of, leaders, manifest_latest, one_w,  # noqa: E402
                            read_csv, settled, snapshot, start_member, true_loss, w_of)

K = 5
EVENTS = 60000


def main():
    with Procs() as ps:
        events = os.path.join(ps.tmp, "events.csv")
        with open(events, "wb") as f:
            r = subprocess.run([NMFCTL, "gen", "--users", "3000", "--items", "300",
                                "--k", str(K), "--events", str(EVENTS), "--seed", "5"],
                               stdout=f, timeout=60)
        check(r.returncode == 0, "nmfctl gen failed")
        V, n_events, weight = read_csv(events)

        brokers = ps.broker(partitions=PARTS, cluster=True,
                            topics="nmf.events,nmf.segments,nmf.topics,nmf.snapshots")
        ms = [start_member(ps, brokers, name, K) for name in ("a", "b", "c")]
        wait_for(lambda: settled(ms), 120, "three members sharing the partitions")
        # The reference: one process alone, in a group of its own.
        solo = ps.nmfd(brokers, name="solo",
                       sets=["model.k=%d" % K, "kafka.group.id=solo",
                             "snapshot.interval=1s", "snapshot.topic.segments=solo.segments",
                             "snapshot.topic.topics=solo.topics",
                             "snapshot.topic.manifest=solo.snapshots"])
        ps.produce(brokers, events)

        wait_for(lambda: sum(metric(d.port, "nmfd_events_folded_total") or 0 for d in ms)
                 == n_events, 180, "the members to fold every event")
        wait_for(lambda: (metric(solo.port, "nmfd_events_folded_total") or 0) == n_events,
                 180, "the single process to fold every event")
        # Idle: the members re-solve against each new W and the leader
        # refreshes until W stops moving; the single process refines.
        wait_for(lambda: (metric(solo.port, "nmfd_stale_users") or 0) == 0
                 and (metric(solo.port, "nmfd_refining") or 0) == 0, 240,
                 "the single process to converge")

        def quiet():
            v0 = [metric(d.port, "nmfd_cluster_model_version") for d in ms]
            import time
            time.sleep(3)
            v1 = [metric(d.port, "nmfd_cluster_model_version") for d in ms]
            return v0 == v1 and len(set(v1)) == 1
        wait_for(quiet, 300, "the group to converge (no new W for 3 s)")

        snaps = one_w(ms)
        W0 = w_of(snaps[0])
        for d, s in zip(ms[1:], snaps[1:]):
            W = w_of(s)
            check(set(W) == set(W0), "%s holds other items than %s" % (d.name, ms[0].name))
            for it in W0:
                check(np.array_equal(W[it], W0[it]),
                      "%s and %s differ on W[%s] at version %d"
                      % (d.name, ms[0].name, it, s["model_version"]))
        # Every item reached W, whichever member saw it first.
        every_item = {i for _, i in V}
        check(set(W0) == every_item, "W holds %d items, the stream %d"
              % (len(W0), len(every_item)))
        users = [set(s["users"]) for s in snaps]
        for i in range(3):
            for j in range(i + 1, 3):
                check(not (users[i] & users[j]), "%d users on two members" % len(users[i] & users[j]))
        every = {u for u, _ in V}
        check(set().union(*users) == every,
              "members hold %d users, the stream has %d" % (len(set().union(*users)), len(every)))

        H = {}
        for s in snaps:
            H.update(h_of(s))
        group_loss = true_loss(V, W0, H)
        solo_snap = snapshot(solo)
        solo_loss = true_loss(V, w_of(solo_snap), h_of(solo_snap))
        seg_group = {u: int(np.argmax(h)) for u, h in H.items()}
        seg_solo = {u: int(np.argmax(h)) for u, h in h_of(solo_snap).items()}
        a = ari(seg_group, seg_solo)
        print("group loss %.6f, single process %.6f (ratio %.4f), ARI %.4f"
              % (group_loss, solo_loss, group_loss / solo_loss, a))
        check(a >= 0.95, "segments agree with the single process at ARI %.4f < 0.95" % a)
        check(group_loss <= 1.02 * solo_loss,
              "group loss %.6f above 1.02 x the single process's %.6f" % (group_loss, solo_loss))

        # The leader's manifest: the whole group's events and weight.
        lead = leaders(ms)
        check(len(lead) == 1, "%d leaders" % len(lead))

        def manifest_whole():
            m = manifest_latest(brokers)
            return m if m and m.get("events") == n_events else None
        m = wait_for(manifest_whole, 60, "a manifest with every event")
        check(abs(m["weight_sum"] - weight) <= 1e-9 * weight,
              "manifest weight_sum %r, produced %r" % (m["weight_sum"], weight))
        check(m["users"] == len(every), "manifest users %d, stream %d" % (m["users"], len(every)))
        check(m.get("cluster") == "grp" and m.get("model_version", 0) >= 1
              and m.get("partitions") == PARTS, "manifest's group fields: %r"
              % {k: m.get(k) for k in ("cluster", "model_version", "partitions")})
        for d in ms + [solo]:
            rc = stop(d)
            check(rc == 0, "%s exited %d:\n%s" % (d.name, rc, ps.log(d.name)[-3000:]))
    print("cluster: three members, one W (version %d), %d users, ARI %.3f"
          % (snaps[0]["model_version"], len(every), a))


if __name__ == "__main__":
    main()
