#!/usr/bin/python3
"""The HTTP listener under hostile clients. One address (127.0.0.2) runs
a slowloris: up to 300 connections, each with half a request line and a
byte more every second, reopened as the server cuts them. Another
(127.0.0.3) opens /events streams that it never reads, with 4 KiB receive
buffers. Throughout both, a third address (127.0.0.4) gets every /healthz
and /metrics answered within 1 s, a fourth (127.0.0.5) opens a working
/events stream, nmfd's VmRSS stays bounded, and the metrics name each
refusal. Every loop is bounded; all traffic stays on 127.0.0.0/8."""
import os
import select
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Procs, check, fail, folded_all, stop, wait_for  # noqa: E402
from http_common import (connect_from, gen_events, http_from,  # noqa: E402
                         metric_lines, start_embedded, vmrss_kib)

ATTACK_S = 20          # how long both attacks run
PROBE_EVERY_S = 0.2
RSS_GROWTH_MAX_KIB = 64 * 1024


def closed(s):
    """The server closed s (or reset it)."""
    p = select.poll()
    p.register(s, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(p.poll(0))


def slowloris(port, halt, st):
    socks = []
    last_drip = time.time()
    while not halt.is_set():
        if len(socks) < 300:
            try:
                s = connect_from("127.0.0.2", port, timeout=1)
                s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
                socks.append(s)
                st["opened"] += 1
            except OSError:
                st["failed"] += 1
        if time.time() - last_drip >= 1:
            last_drip = time.time()
            alive = []
            for s in socks:
                try:
                    if closed(s):
                        raise OSError("closed")
                    s.send(b"s")
                    alive.append(s)
                except OSError:
                    st["cut"] += 1
                    s.close()
            socks = alive
            st["held_max"] = max(st["held_max"], len(socks))
        time.sleep(0.005)
    for s in socks:
        s.close()


def sse_hog(port, halt, st):
    socks = []
    while not halt.is_set():
        if len(socks) < 20:
            try:
                s = connect_from("127.0.0.3", port, timeout=1, rcvbuf=4096)
                s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
                socks.append(s)
                st["opened"] += 1
            except OSError:
                st["failed"] += 1
        socks2 = []
        for s in socks:
            if closed(s):
                st["cut"] += 1
                s.close()
            else:
                socks2.append(s)
        socks = socks2
        time.sleep(0.05)
    for s in socks:
        s.close()


def sse_works(port):
    """A fresh /events stream from 127.0.0.5 starts within 1 s."""
    s = connect_from("127.0.0.5", port, timeout=1)
    try:
        s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        deadline = time.time() + 1
        while b"retry: 2000" not in data and time.time() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data.startswith(b"HTTP/1.1 200") and b"retry: 2000" in data
    finally:
        s.close()


def main():
    with Procs() as ps:
        d = start_embedded(ps, "nmfd", sets=["model.k=4",
                                             "snapshot.interval=500ms"])
        events = gen_events(ps)
        ps.produce(d.brokers, events)
        wait_for(lambda: folded_all(d.port, 6000), 120, "every event folded")
        rss0 = vmrss_kib(d.pid)

        halt = threading.Event()
        sl = {"opened": 0, "failed": 0, "cut": 0, "held_max": 0}
        hog = {"opened": 0, "failed": 0, "cut": 0}
        threads = [threading.Thread(target=slowloris, args=(d.port, halt, sl)),
                   threading.Thread(target=sse_hog, args=(d.port, halt, hog))]
        for t in threads:
            t.start()
        probes = slow = 0
        worst = 0.0
        failures = []
        rss_max = rss0
        sse_ok = None
        conns_max = 0
        t0 = time.time()
        try:
            while time.time() - t0 < ATTACK_S:
                path = "/healthz" if probes % 2 == 0 else "/metrics"
                a = time.time()
                try:
                    status, body = http_from("127.0.0.4", d.port, path,
                                             timeout=1)
                    if status != 200:
                        failures.append("%s: %d" % (path, status))
                    elif path == "/metrics":
                        conns_max = max(conns_max, metric_lines(body).get(
                            "nmfd_http_connections", 0))
                except OSError as e:
                    failures.append("%s: %s" % (path, e))
                took = time.time() - a
                worst = max(worst, took)
                slow += took > 1
                probes += 1
                rss_max = max(rss_max, vmrss_kib(d.pid))
                if sse_ok is None and time.time() - t0 > ATTACK_S / 2:
                    try:
                        sse_ok = sse_works(d.port)
                    except OSError as e:
                        sse_ok = False
                        failures.append("/events from 127.0.0.5: %s" % e)
                time.sleep(PROBE_EVERY_S)
        finally:
            halt.set()
            for t in threads:
                t.join(10)
        check(not any(t.is_alive() for t in threads), "attackers stopped")

        print("slowloris from 127.0.0.2: %d connections opened, %d cut, at "
              "most %d held; unread streams from 127.0.0.3: %d opened, %d "
              "cut" % (sl["opened"], sl["cut"], sl["held_max"], hog["opened"],
                       hog["cut"]))
        print("probes from 127.0.0.4: %d, %d failed, slowest %.3f s; VmRSS "
              "%d KiB before, at most %d KiB during"
              % (probes, len(failures), worst, rss0, rss_max))
        check(not failures, "probes failed: %s" % failures[:5])
        check(slow == 0, "%d probes took over 1 s (slowest %.3f s)"
              % (slow, worst))
        check(probes >= ATTACK_S / (PROBE_EVERY_S + 1), "only %d probes" % probes)
        check(sse_ok, "a new /events stream from 127.0.0.5 during the attack")
        check(rss_max - rss0 < RSS_GROWTH_MAX_KIB,
              "VmRSS grew by %d KiB" % (rss_max - rss0))
        # 16 per address (the defaults) for each attacker, the probe, and
        # the stream from 127.0.0.5, which the server notices gone at its
        # next write.
        print("nmfd_http_connections at most %d" % conns_max)
        check(0 < conns_max <= 16 + 16 + 2, "%d connections open at once"
              % conns_max)

        status, body = http_from("127.0.0.4", d.port, "/metrics", timeout=5)
        check(status == 200, "/metrics %d" % status)
        m = metric_lines(body)
        for reason in ("per_address", "header_deadline", "sse_per_address"):
            v = m.get('nmfd_http_refused_total{reason="%s"}' % reason, 0)
            print("nmfd_http_refused_total{reason=\"%s\"} %d" % (reason, v))
            check(v > 0, "no refusal counted for %s" % reason)
        check(stop(d) == 0, "nmfd exit code after the attack")
    print("http under a slowloris and unread streams: OK")


if __name__ == "__main__":
    try:
        main()
    except socket.timeout as e:
        fail("socket timeout: %s" % e)
