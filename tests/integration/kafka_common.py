"""Shared pieces of the kafka_* integration tests: a standalone
`nmfctl broker` on 127.0.0.1 (read through its bootstrap file), bounded
subprocess runs, the CSV rules of io/csv.h, and Java's murmur2
partitioner, so tests can say where a key must land."""
import os
import signal
import subprocess
import sys
import tempfile
import time

# The repository's data/ (tests/integration/../../data), or NMFD_DATA.
DATA = os.environ.get("NMFD_DATA", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "data"))
NMFCTL = os.environ.get("NMFCTL", os.path.join(os.getcwd(), "build", "ctl", "nmfctl"))

# KAFKA-MOCK.md: group timing and fetch tuning for the mock cluster.
CONSUMER_TUNING = {
    "session.timeout.ms": 6000,
    "fetch.wait.max.ms": 10,
    "fetch.error.backoff.ms": 10,
}


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def run(args, timeout=60, input=None):
    """Runs a command to completion; returns (rc, stdout bytes, stderr)."""
    try:
        p = subprocess.run(args, input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail("timed out after %d s: %s" % (timeout, " ".join(args)))
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def murmur2(data):
    """org.apache.kafka.common.utils.Utils.murmur2, as unsigned 32 bits."""
    m = 0x5BD1E995
    mask = 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    i = 0
    while i + 4 <= length:
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
        i += 4
    rest = length & 3
    if rest == 3:
        h ^= data[i + 2] << 16
    if rest >= 2:
        h ^= data[i + 1] << 8
    if rest >= 1:
        h ^= data[i]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def java_partition(key, nparts):
    return (murmur2(key) & 0x7FFFFFFF) % nparts


def csv_events(path):
    """The events of a user,item,weight,ts file by io/csv.h's rules (the
    clean files of the data directory only: no quotes, no bad rows)."""
    out = []
    with open(path, encoding="utf-8-sig") as f:
        cols = f.readline().strip().split(",")
        last_ts = 0
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            row = dict(zip(cols, line.split(",")))
            ev = {"user": row["user"], "item": row["item"]}
            w = row.get("weight", "")
            ev["weight"] = float(w) if w != "" else 1.0
            ts = row.get("ts")
            if ts is not None and ts != "":
                ts = int(ts)
                last_ts = ts * 1000 if ts < 10**11 else ts
                ev["ts"] = last_ts
            elif ts is not None and last_ts:
                ev["ts"] = last_ts
            out.append(ev)
    return out


class Broker:
    """`nmfctl broker` with a bootstrap file and a control FIFO."""

    def __init__(self, partitions=4, topics="events", brokers=1):
        self.tmp = tempfile.mkdtemp(prefix="nmfd-kafka-it.")
        self.bootfile = os.path.join(self.tmp, "bootstrap")
        self.fifo = os.path.join(self.tmp, "control")
        self.errpath = os.path.join(self.tmp, "broker.log")
        self.outpath = os.path.join(self.tmp, "broker.out")
        self.proc = subprocess.Popen(
            [NMFCTL, "broker", "--partitions", str(partitions),
             "--topics", topics, "--brokers", str(brokers),
             "--bootstrap-file", self.bootfile, "--control", self.fifo],
            stdout=open(self.outpath, "wb"), stderr=open(self.errpath, "wb"))
        deadline = time.time() + 20
        while not os.path.exists(self.bootfile):
            if self.proc.poll() is not None:
                fail("broker exited %d: %s" % (self.proc.returncode,
                                               self.log()))
            if time.time() > deadline:
                fail("no bootstrap file after 20 s")
            time.sleep(0.05)
        with open(self.bootfile) as f:
            self.bootstrap = f.read().strip()
        check(self.bootstrap.startswith("127.0.0.1:"),
              "bootstrap %r" % self.bootstrap)
        # The fd stays open so that writing never blocks on a missing
        # reader and the broker never sees EOF.
        self.ctl = os.open(self.fifo, os.O_WRONLY)

    def log(self):
        with open(self.errpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stdout(self):
        with open(self.outpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def command(self, line, want="ok", timeout=10):
        """Sends one fault command; waits for its answer on stderr."""
        before = self.log().count("\n")
        os.write(self.ctl, (line + "\n").encode())
        deadline = time.time() + timeout
        while time.time() < deadline:
            lines = self.log().splitlines()
            if len(lines) > before:
                got = lines[before]
                check(got.startswith(want),
                      "command %r answered %r, want %r" % (line, got, want))
                return got
            time.sleep(0.02)
        fail("no answer to %r" % line)

    def stop(self):
        os.close(self.ctl)
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail("broker did not stop on SIGTERM")
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
