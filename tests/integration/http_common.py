"""Helpers of the HTTP integration tests: nmfd on its embedded broker,
clients bound to a loopback alias of their own (127.0.0.2, 127.0.0.3, ...:
on Linux the whole of 127.0.0.0/8 is local), and VmRSS from /proc."""
import os
import socket
import subprocess
import time

from harness import BIN, KAFKA_TEST_SETS, NMFCTL, check, wait_for

NMFD = os.path.join(BIN, "nmfd")


def start_embedded(ps, name, sets=(), listen="127.0.0.1:0"):
    """nmfd --embedded-broker with its HTTP on listen; the process with
    .port (HTTP) and .brokers (the embedded broker's bootstrap)."""
    state = os.path.join(ps.tmp, name + "-state")
    os.makedirs(state, exist_ok=True)
    args = [NMFD, "--embedded-broker", "--set", "checkpoint.dir=" + state,
            "--set", "http.listen=" + listen]
    for s in KAFKA_TEST_SETS + list(sets):
        args += ["--set", s]
    p = ps.start(args, name)
    p.state = state
    p.port = wait_for(lambda: ps._port(name, p), 30, "nmfd's HTTP port")
    bf = os.path.join(state, "bootstrap")
    p.brokers = wait_for(lambda: os.path.exists(bf) and open(bf).read().strip(),
                         20, "the embedded broker's bootstrap file")
    return p


def gen_events(ps, users=300, items=60, k=4, events=6000, seed=3):
    path = os.path.join(ps.tmp, "events.csv")
    with open(path, "wb") as f:
        r = subprocess.run([NMFCTL, "gen", "--users", str(users), "--items",
                            str(items), "--k", str(k), "--events", str(events),
                            "--seed", str(seed)], stdout=f, timeout=60)
    check(r.returncode == 0, "nmfctl gen failed")
    return path


def connect_from(src, port, timeout=5.0, rcvbuf=None):
    """A TCP connection to 127.0.0.1:port from source address src."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def send_get(s, path, headers=None):
    """Sends one HTTP/1.1 GET of path with headers on socket s."""
    req = "GET %s HTTP/1.1\r\nHost: x\r\n" % path
    for k, v in (headers or {}).items():
        req += "%s: %s\r\n" % (k, v)
    s.sendall((req + "\r\n").encode())


def recv_until(s, marker, seconds=None):
    """What s receives until marker (bytes) arrives, the peer closes, or
    seconds pass (None: no bound but the socket's timeout on each read,
    which raises); marker None reads to the close."""
    data = b""
    deadline = time.time() + seconds if seconds is not None else None
    while ((marker is None or marker not in data)
           and (deadline is None or time.time() < deadline)):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def http_from(src, port, path, headers=None, timeout=1.0):
    """One HTTP/1.1 GET from src: (status, body); raises on a timeout or a
    connection the server closed without an answer."""
    s = connect_from(src, port, timeout)
    try:
        send_get(s, path, dict(headers or {}, Connection="close"))
        data = recv_until(s, None)
    finally:
        s.close()
    check(data.startswith(b"HTTP/1.1 "), "no HTTP answer from the server: %r"
          % data[:80])
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def metric_lines(body):
    """Prometheus text -> {"name{labels}": value}."""
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out
