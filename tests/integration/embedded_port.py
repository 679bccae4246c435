"""A fixed bootstrap port for a broker whose own ports are random:
`nmfctl broker --port P` and `nmfd --embedded-broker --embedded-port P`.
Clients written by others (kcat, python3-confluent-kafka) bootstrap at P
and reach the broker at the address its metadata names; a producer keeps
its configuration across a restart of nmfd; a port in use is refused with
a clear error and bad values are usage errors."""
import json
import os
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (BIN, DATA, KAFKA_TEST_SETS, NMFCTL, Procs, check,  # noqa
                     folded_all, metric, read_topic_all, stop, wait_for)

NMFD = os.path.join(BIN, "nmfd")
CSV = os.path.join(DATA, "bayesm_scotch.csv")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(args, **kw):
    return subprocess.run(args, capture_output=True, timeout=60, **kw)


def csv_rows(path):
    with open(path) as f:
        return sum(1 for _ in f) - 1


def standalone_broker(ps):
    port = free_port()
    bf = os.path.join(ps.tmp, "bootstrap")
    b = ps.start([NMFCTL, "broker", "--port", str(port), "--topics", "jev",
                  "--bootstrap-file", bf], "broker")
    want = "127.0.0.1:%d" % port
    got = wait_for(lambda: os.path.exists(bf) and open(bf).read().strip(), 20,
                   "the bootstrap file")
    check(got == want, "bootstrap file %r, want %r" % (got, want))

    # The metadata names the broker's own, random, port: clients go there.
    r = run(["kcat", "-b", want, "-L"])
    check(r.returncode == 0, "kcat -L: %s" % r.stderr.decode())
    md = r.stdout.decode()
    check("broker 1 at 127.0.0.1:" in md and
          "broker 1 at %s\n" % want not in md, "metadata: %s" % md)

    # kcat produces through the fixed port, confluent-kafka reads through it.
    src = [{"user": "u%d" % i, "item": "i%d" % (i % 9), "weight": 1 + i % 3,
            "ts": 1700000000000 + i} for i in range(300)]
    payload = "".join("%s\t%s\n" % (e["user"], json.dumps(e))
                      for e in src).encode()
    r = run(["kcat", "-b", want, "-P", "-t", "jev", "-K", "\t"], input=payload)
    check(r.returncode == 0, "kcat produce: %s" % r.stderr.decode())
    got = [json.loads(m.value()) for m in read_topic_all(want, "jev")]
    key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
    check(sorted(map(key, got)) == sorted(map(key, src)),
          "read %d of %d events back through the fixed port"
          % (len(got), len(src)))

    # The port is taken: a second broker says so and exits 1; the first
    # one goes on serving.
    r = run([NMFCTL, "broker", "--port", str(port)])
    check(r.returncode == 1 and b"address already in use" in r.stderr,
          "second broker: rc %d %s" % (r.returncode, r.stderr.decode()))
    r = run(["kcat", "-b", want, "-L"])
    check(r.returncode == 0, "first broker after the refusal: %s"
          % r.stderr.decode())
    for bad in ("0", "65536", "x", "-5"):
        r = run([NMFCTL, "broker", "--port", bad])
        check(r.returncode == 2 and b"--port" in r.stderr,
              "--port %s: rc %d %s" % (bad, r.returncode, r.stderr.decode()))

    check(stop(b) == 0, "broker exit code")
    check(not os.path.exists(bf), "bootstrap file removed at exit")
    # Free again once the broker is gone.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.close()
    print("nmfctl broker --port %d: %d events through kcat and "
          "confluent-kafka" % (port, len(got)))


def start_nmfd(ps, port, state, name):
    args = [NMFD, "--embedded-broker", "--embedded-port", str(port),
            "--set", "checkpoint.dir=" + state,
            "--set", "http.listen=127.0.0.1:0"]
    for s in KAFKA_TEST_SETS:
        args += ["--set", s]
    p = ps.start(args, name)
    p.port = wait_for(lambda: ps._port(name, p), 30, "nmfd's HTTP port")
    want = "127.0.0.1:%d" % port
    out = os.path.join(ps.tmp, name + ".out")
    wait_for(lambda: ("embedded broker at %s\n" % want) in open(out).read(),
             20, "the fixed address on stdout")
    with open(os.path.join(state, "bootstrap")) as f:
        check(f.read().strip() == want, "state dir's bootstrap file")
    return p


def embedded(ps):
    n = csv_rows(CSV)
    port = free_port()
    want = "127.0.0.1:%d" % port
    state = os.path.join(ps.tmp, "state")
    os.makedirs(state)

    # The same producer command before and after a restart of nmfd: the
    # broker's own port changes, the fixed one does not.
    for run_no in (1, 2):
        name = "nmfd%d" % run_no
        p = start_nmfd(ps, port, state, name)
        v0 = metric(p.port, "nmfd_events_folded_total") or 0
        r = run([NMFCTL, "produce", "--brokers", want, "--topic",
                 "nmf.events", CSV])
        check(r.returncode == 0, "produce %d: %s" % (run_no, r.stderr.decode()))
        wait_for(lambda: folded_all(p.port, v0 + n), 60,
                 "run %d: %d events folded" % (run_no, n))
        check(stop(p) == 0, "nmfd run %d exit code" % run_no)
    print("nmfd --embedded-port %d: %d events folded in each of 2 runs"
          % (port, n))

    # Usage errors exit 2; a port held by another socket exits 1 with the
    # reason, before anything is consumed.
    r = run([NMFD, "--embedded-port", str(port), "--set",
             "checkpoint.dir=" + state])
    check(r.returncode == 2 and b"needs --embedded-broker" in r.stderr,
          "--embedded-port alone: rc %d %s" % (r.returncode,
                                                r.stderr.decode()))
    r = run([NMFD, "--embedded-broker", "--embedded-port", "99999"])
    check(r.returncode == 2 and b"--embedded-port" in r.stderr,
          "--embedded-port 99999: rc %d" % r.returncode)
    hold = socket.socket()
    hold.bind(("127.0.0.1", port))
    hold.listen(1)
    try:
        r = run([NMFD, "--embedded-broker", "--embedded-port", str(port),
                 "--set", "checkpoint.dir=" + state,
                 "--set", "http.listen=127.0.0.1:0"])
    finally:
        hold.close()
    check(r.returncode == 1 and b"address already in use" in r.stderr,
          "port in use: rc %d %s" % (r.returncode, r.stderr.decode()))
    print("nmfd --embedded-port: usage errors exit 2, a taken port exits 1")


def main():
    with Procs() as ps:
        standalone_broker(ps)
        embedded(ps)
    print("OK")


if __name__ == "__main__":
    main()
