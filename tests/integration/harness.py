"""Test harness for nmfd's integration tests: starts real processes (the
standalone broker, nmfd, the producer) on 127.0.0.1, waits for them with
bounded loops, and stops everything it started, whatever happens."""
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.environ.get("NMFD_BIN", os.path.join(os.getcwd(), "build", "daemon"))
NMFCTL = os.environ.get("NMFCTL", os.path.join(os.getcwd(), "build", "ctl", "nmfctl"))
# The repository's data/ (tests/integration/../../data), or NMFD_DATA.
DATA = os.environ.get("NMFD_DATA", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "data"))
SANITIZED = os.environ.get("NMFD_SANITIZED") == "1"

# Group timing the mock coordinator needs (KAFKA-MOCK.md), and low-latency
# fetches.
KAFKA_TEST_SETS = [
    "kafka.session.timeout.ms=6000",
    "kafka.heartbeat.interval.ms=1000",
    "kafka.fetch.wait.max.ms=10",
    "kafka.fetch.error.backoff.ms=10",
]


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    fail("timed out after %.0f s waiting for %s" % (timeout, what))


class Procs:
    """Every process started through it is killed at exit."""

    def __init__(self):
        self.procs = []
        self.tmp = tempfile.mkdtemp(prefix="nmfd-it.")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        return False

    def start(self, args, name, **kw):
        out = open(os.path.join(self.tmp, name + ".out"), "wb")
        err = open(os.path.join(self.tmp, name + ".log"), "wb")
        p = subprocess.Popen(args, stdout=out, stderr=err, **kw)
        p.name = name
        self.procs.append(p)
        return p

    def log(self, name):
        try:
            with open(os.path.join(self.tmp, name + ".log"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def broker(self, partitions=4, topics="nmf.events", cluster=False, name="broker"):
        bf = os.path.join(self.tmp, "bootstrap" if name == "broker" else name + ".bootstrap")
        self.start([NMFCTL, "broker", "--partitions",
                    str(partitions), "--topics", topics, "--bootstrap-file", bf]
                   + (["--cluster"] if cluster else []), name)
        return wait_for(lambda: os.path.exists(bf) and open(bf).read().strip(),
                        20, "the broker's bootstrap file")

    def nmfd(self, brokers, sets=(), name="nmfd", state=None, extra=()):
        state = state or os.path.join(self.tmp, name + "-state")
        os.makedirs(state, exist_ok=True)
        args = [os.path.join(BIN, "nmfd"), "--set", "kafka.bootstrap.servers=" + brokers,
                "--set", "checkpoint.dir=" + state, "--set", "http.listen=127.0.0.1:0"]
        for s in KAFKA_TEST_SETS + list(sets):
            args += ["--set", s]
        p = self.start(args + list(extra), name)
        p.state = state
        p.port = wait_for(lambda: self._port(name, p), 30, "nmfd's HTTP port")
        return p

    def _port(self, name, p):
        if p.poll() is not None:
            fail("%s exited with %d:\n%s" % (name, p.returncode, self.log(name)))
        m = re.search(r"http on .*\(port (\d+)\)", self.log(name))
        return int(m.group(1)) if m else None

    def produce(self, brokers, csv_path, topic="nmf.events", fmt="msgpack", extra=()):
        r = subprocess.run([NMFCTL, "produce", "--brokers", brokers,
                            "--topic", topic, "--format", fmt] + list(extra) + [csv_path],
                           capture_output=True, timeout=300)
        check(r.returncode == 0, "nmfctl produce failed: %s" % r.stderr.decode())
        return r


def gen_planted(ps, users, items, k, events, seed):
    """`nmfctl gen` of a planted stream into ps.tmp: the CSV's path and
    {user: planted segment}."""
    path = os.path.join(ps.tmp, "events.csv")
    truth = os.path.join(ps.tmp, "truth.csv")
    with open(path, "wb") as f:
        r = subprocess.run([NMFCTL, "gen", "--users", str(users),
                            "--items", str(items), "--k", str(k), "--events",
                            str(events), "--seed", str(seed), "--truth", truth],
                           stdout=f, timeout=60)
    check(r.returncode == 0, "nmfctl gen failed")
    with open(truth) as f:
        planted = {row["user"]: int(row["segment"]) for row in csv.DictReader(f)}
    return path, planted


def fit_segments(ps, events, k, sets=(), args=()):
    """`nmfctl fit` of a CSV (more options in args): {user: segment
    (argmax of h)}."""
    import msgpack
    import numpy as np
    out = os.path.join(ps.tmp, "fit.msgpack")
    cmd = [NMFCTL, "fit", "--events", events,
           "--set", "model.k=%d" % k] + list(args)
    for s in sets:
        cmd += ["--set", s]
    r = subprocess.run(cmd + ["--out", out], capture_output=True, timeout=300)
    check(r.returncode == 0, "nmfctl fit failed: %s" % r.stderr.decode())
    with open(out, "rb") as f:
        doc = msgpack.unpackb(f.read(), raw=False)
    H = np.frombuffer(doc["H"], "<f4").reshape(len(doc["users"]), k)
    return dict(zip(doc["users"], H.argmax(axis=1)))


def http_get(port, path, timeout=5):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                    timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metrics(port):
    """Prometheus text -> {(name, labels): value}."""
    status, body = http_get(port, "/metrics")
    check(status == 200, "/metrics answered %d" % status)
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$', line)
        check(m is not None, "bad metrics line: %r" % line)
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def metric(port, name, labels=""):
    return metrics(port).get((name, labels))


def stop(p, timeout=60):
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        fail("%s did not stop within %d s of SIGTERM" % (p.name, timeout))


def folded_all(port, n):
    v = metric(port, "nmfd_events_folded_total")
    return v is not None and v >= n


# ---- fault control, topic reading, checkpoint inspection -------------------

def broker_with_control(ps, partitions=4, topics="nmf.events", name="broker"):
    """Starts `nmfctl broker --control FIFO`; returns (bootstrap, fifo)."""
    bf = os.path.join(ps.tmp, name + ".bootstrap")
    fifo = os.path.join(ps.tmp, name + ".control")
    ps.start([NMFCTL, "broker", "--partitions", str(partitions),
              "--topics", topics, "--bootstrap-file", bf, "--control", fifo], name)
    brokers = wait_for(lambda: os.path.exists(bf) and open(bf).read().strip(),
                       20, "the broker's bootstrap file")
    wait_for(lambda: os.path.exists(fifo), 10, "the broker's control FIFO")
    return brokers, fifo


def broker_fault(ps, fifo, cmd, name="broker", timeout=10):
    """Sends one fault command (io/broker.h) and waits for the broker's
    answer on its stderr; fails the test unless it is "ok"."""
    def answers():
        return [line for line in ps.log(name).splitlines()
                if line == "ok" or line.startswith("error:")]
    before = len(answers())
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (cmd + "\n").encode())
    finally:
        os.close(fd)
    got = wait_for(lambda: answers()[before:], timeout, "the answer to '%s'" % cmd)
    check(got[0] == "ok", "broker refused '%s': %s" % (cmd, got[0]))


def read_topic_all(brokers, topic, timeout=30, isolation="read_uncommitted"):
    """Every message of every partition of topic, from the beginning to the
    end as of the call: a list of confluent_kafka Message objects."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    c = Consumer({"bootstrap.servers": brokers, "group.id": "harness-reader",
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "isolation.level": isolation, "fetch.wait.max.ms": 10,
                  "auto.offset.reset": "earliest"})
    try:
        md = c.list_topics(topic, timeout=10)
        check(topic in md.topics and not md.topics[topic].error,
              "topic %s not found" % topic)
        parts = sorted(md.topics[topic].partitions)
        ends = {}
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                ends[p] = hi
        out = []
        if not ends:
            return out
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.time() + timeout
        done = set()
        while len(done) < len(ends):
            check(time.time() < deadline, "reading %s timed out (%d of %d partitions)"
                  % (topic, len(done), len(ends)))
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    if m.partition() in ends and m.offset() >= ends[m.partition()]:
                        done.add(m.partition())
                    continue
                fail("reading %s: %s" % (topic, m.error()))
            out.append(m)
            if m.offset() + 1 >= ends.get(m.partition(), 0):
                done.add(m.partition())
        return out
    finally:
        c.close()


def inspect_checkpoint(state):
    """`nmfctl inspect --checkpoint DIR` as {key: value-string}; offsets
    under "offsets" as a list of lines."""
    r = subprocess.run([NMFCTL, "inspect", "--checkpoint", state],
                       capture_output=True, timeout=120)
    check(r.returncode == 0, "nmfctl inspect: %s" % r.stderr.decode())
    info = {"offsets": []}
    for line in r.stdout.decode().splitlines():
        if line.startswith("offset"):
            info["offsets"].append(line)
        elif " " in line:
            k, v = line.split(" ", 1)
            info[k] = v
    return info


def converged(port):
    """The idle refinement has nothing left to do (stale users re-solved,
    W refreshed to convergence, restarts tried)."""
    return metric(port, "nmfd_refining") == 0 and metric(port, "nmfd_stale_users") == 0


# ---- the loss, computed from scratch ------------------------------------

def read_events(path, limit=None):
    """The first `limit` events of a CSV: [(user, item, weight, ts)]."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if limit is not None and len(out) >= limit:
                break
            out.append((row["user"], row["item"], float(row["weight"]),
                        int(row["ts"])))
    return out


def true_rel_loss(events, doc, half_life_ms=0):
    """sum_u c_u ||v_u - W h_u||^2 / sum_u c_u ||v_u||^2 for the W and H of
    a dense snapshot (docs/snapshot-format.md) and the events it folded,
    computed from nothing but the two: v_u is every event of u summed,
    decayed to u's latest time t_u (nothing evicted, nothing capped), c_u =
    2^(-(T - t_u)/half_life) with T the latest time of all, as docs/design.md
    section 1 weighs them. A dense residual, no identity."""
    import numpy as np
    k = doc["k"]
    users = {u: n for n, u in enumerate(doc["users"])}
    items = {i: n for n, i in enumerate(doc["items"])}
    W = np.frombuffer(doc["W"], "<f4").reshape(len(items), k).astype(np.float64)
    H = np.frombuffer(doc["H"], "<f4").reshape(len(users), k).astype(np.float64)
    tu = {}
    for u, _, _, t in events:
        tu[u] = max(tu.get(u, t), t)
    T = max(tu.values())
    V = np.zeros((len(users), len(items)))
    for u, i, w, t in events:
        f = 2.0 ** (-(tu[u] - t) / half_life_ms) if half_life_ms > 0 else 1.0
        V[users[u], items[i]] += w * f
    c = np.ones(len(users))
    if half_life_ms > 0:
        for u, n in users.items():
            c[n] = 2.0 ** (-(T - tu[u]) / half_life_ms)
    R = V - H @ W.T
    return float((c * (R * R).sum(axis=1)).sum() / (c * (V * V).sum(axis=1)).sum())


def true_rel_kl(events, doc):
    """D(V || W H) / sum V for the W and H of a dense snapshot and the
    events it folded (no decay), from nothing but the two: the
    generalised Kullback-Leibler divergence of model.loss = kl over every
    item and user of the snapshot, dense:
    sum_iu V log(V / P) - V + P with P = W H (0 log 0 = 0)."""
    import numpy as np
    k = doc["k"]
    users = {u: n for n, u in enumerate(doc["users"])}
    items = {i: n for n, i in enumerate(doc["items"])}
    W = np.frombuffer(doc["W"], "<f4").reshape(len(items), k).astype(np.float64)
    H = np.frombuffer(doc["H"], "<f4").reshape(len(users), k).astype(np.float64)
    V = np.zeros((len(users), len(items)))
    for u, i, w, _ in events:
        V[users[u], items[i]] += w
    P = H @ W.T
    nz = V > 0
    d = float((V[nz] * np.log(V[nz] / P[nz]) - V[nz]).sum() + P.sum())
    return d / float(V.sum())

