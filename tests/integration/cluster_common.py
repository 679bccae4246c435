"""What the tests of a group of nmfd processes share: starting members,
reading their state over HTTP, and the checks of "one model" computed
here with numpy, not by nmfd."""
import csv
import os
import sys
import time

import msgpack
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import check, http_get, metric, wait_for  # noqa: E402

PARTS = 4
GROUP = "grp"


def member_sets(k, extra=()):
    return ["cluster.enabled=true", "model.k=%d" % k, "kafka.group.id=" + GROUP,
            "snapshot.interval=1s", "cluster.interval=300ms",
            "checkpoint.interval=2s", "model.refine_users=100000"] + list(extra)


def start_member(ps, brokers, name, k, extra=(), state=None):
    return ps.nmfd(brokers, sets=member_sets(k, extra), name=name, state=state)


def owned(d):
    return metric(d.port, "nmfd_cluster_partitions") or 0


def leaders(ds):
    return [d for d in ds if (metric(d.port, "nmfd_cluster_leader") or 0) == 1]


def settled(ds, parts=PARTS):
    """Every partition owned once, every member ready, one leader."""
    try:
        return (sum(owned(d) for d in ds) == parts and all(owned(d) >= 1 for d in ds)
                and len(leaders(ds)) == 1
                and all(http_get(d.port, "/readyz")[0] == 200 for d in ds))
    except OSError:
        return False


def snapshot(d):
    status, body = http_get(d.port, "/snapshot")
    check(status == 200, "%s /snapshot %d" % (d.name, status))
    return msgpack.unpackb(body, raw=False)


def w_of(snap):
    k = snap["k"]
    W = np.frombuffer(snap["W"], dtype="<f4").reshape(len(snap["items"]), k)
    return {it: W[i] for i, it in enumerate(snap["items"])}


def h_of(snap):
    k = snap["k"]
    H = np.frombuffer(snap["H"], dtype="<f4").reshape(len(snap["users"]), k)
    return {u: H[i] for i, u in enumerate(snap["users"])}


def one_w(ds, timeout=90):
    """Waits until every member holds the same W version, and returns the
    members' snapshots taken at that version."""
    def same():
        snaps = [snapshot(d) for d in ds]
        vs = {s.get("model_version") for s in snaps}
        if len(vs) == 1 and 0 not in vs and None not in vs:
            return snaps
        return None
    return wait_for(same, timeout, "every member at one W version")


def read_csv(path):
    V = {}
    events, weight = 0, 0.0
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (row["user"], row["item"])
            V[key] = V.get(key, 0.0) + float(row["weight"])
            events += 1
            weight += float(row["weight"])
    return V, events, weight


def true_loss(V, W, H):
    """||V - W H||^2 / ||V||^2 over the dense matrix, from the CSV and the
    factors: W {item: row}, H {user: row}."""
    users = sorted({u for u, _ in V})
    items = sorted({i for _, i in V} | set(W))
    ui = {u: n for n, u in enumerate(users)}
    ii = {i: n for n, i in enumerate(items)}
    k = len(next(iter(W.values())))
    Vd = np.zeros((len(items), len(users)))
    for (u, i), v in V.items():
        Vd[ii[i], ui[u]] = v
    Wd = np.zeros((len(items), k))
    for i, row in W.items():
        Wd[ii[i]] = row
    Hd = np.zeros((k, len(users)))
    for u, row in H.items():
        if u in ui:
            Hd[:, ui[u]] = row
    R = Vd - Wd @ Hd
    return float((R * R).sum() / (Vd * Vd).sum())


def ari(a, b):
    """Adjusted Rand index of two labelings (dicts over the same keys)."""
    keys = sorted(set(a) & set(b))
    la = {v: n for n, v in enumerate(sorted({a[x] for x in keys}))}
    lb = {v: n for n, v in enumerate(sorted({b[x] for x in keys}))}
    C = np.zeros((len(la), len(lb)))
    for x in keys:
        C[la[a[x]], lb[b[x]]] += 1

    def c2(x):
        return x * (x - 1) / 2
    n = len(keys)
    sij = c2(C).sum()
    sa = c2(C.sum(1)).sum()
    sb = c2(C.sum(0)).sum()
    exp = sa * sb / c2(n)
    mx = (sa + sb) / 2
    return float((sij - exp) / (mx - exp)) if mx != exp else 1.0


def manifest_latest(brokers, topic="nmf.snapshots", timeout=10):
    """The newest manifest on the manifest topic, read with
    python3-confluent-kafka."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
    c = Consumer({"bootstrap.servers": brokers, "group.id": "manifest-reader-%d" % time.time_ns(),
                  "enable.partition.eof": True, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    last = None
    end = time.time() + timeout
    while time.time() < end:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                break
            continue
        last = msgpack.unpackb(m.value(), raw=False)
    c.close()
    return last
