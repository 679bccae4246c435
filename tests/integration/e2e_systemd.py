#!/usr/bin/python3
"""nmfd as systemd sees it: this test stands in for systemd with its own
NOTIFY_SOCKET and WATCHDOG_USEC, and checks the daemon's messages and
their order: READY=1 once the state is loaded and the consumer subscribed,
STATUS= lines, WATCHDOG=1 pings at half the interval, RELOADING=1 and
READY=1 around SIGHUP, STOPPING=1 at SIGTERM, then exit 0. SIGHUP applies
a reloadable key from the file and names the ones that need a restart; a
broken file leaves the running configuration untouched. Finally `meson
install` into a DESTDIR puts every file where a distribution would."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import BIN, KAFKA_TEST_SETS, Procs, check, wait_for  # noqa: E402


def main():
    with Procs() as ps:
        brokers = ps.broker(partitions=2)
        sock_path = os.path.join(ps.tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(0.2)
        conf = os.path.join(ps.tmp, "nmfd.conf")
        state = os.path.join(ps.tmp, "state")

        def write_conf(extra):
            with open(conf, "w") as f:
                f.write("[kafka]\nbootstrap.servers = %s\n" % brokers)
                for kv in KAFKA_TEST_SETS:
                    f.write("%s = %s\n" % tuple(kv.split(".", 1)[1].split("=", 1)))
                f.write("[checkpoint]\ndir = %s\n[http]\nlisten = 127.0.0.1:0\n" % state)
                f.write(extra)

        write_conf("[snapshot]\ninterval = 1s\n[log]\nlevel = info\n")
        env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="2000000")
        d = ps.start([os.path.join(BIN, "nmfd"), "--config", conf], "nmfd", env=env)
        env["WATCHDOG_PID"] = str(d.pid)

        msgs = []

        def pump(until, timeout):
            deadline = time.time() + timeout
            while time.time() < deadline:
                try:
                    m = sock.recv(4096).decode()
                    msgs.append((time.time(), m))
                    if until(m):
                        return m
                except socket.timeout:
                    pass
                check(d.poll() is None or until is None, "nmfd exited: " + ps.log("nmfd"))
            return None

        check(pump(lambda m: "READY=1" in m, 30), "no READY=1:\n" + ps.log("nmfd"))
        # STATUS every 5 s, WATCHDOG at half of 2 s.
        pump(lambda m: False, 6)
        kinds = [m for _, m in msgs]
        check(any(m.startswith("STATUS=") and "events/s" in m and "epoch" in m for m in kinds),
              "no STATUS= with events/s and epoch: %r" % kinds)
        pings = [t for t, m in msgs if "WATCHDOG=1" in m]
        check(len(pings) >= 4, "%d WATCHDOG=1 in 6 s at WATCHDOG_USEC=2 s" % len(pings))
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        check(max(gaps) < 1.6, "watchdog gaps %r (interval/2 = 1 s)" % gaps)

        # SIGHUP with a changed file: log.level is reloadable, model.k is not.
        write_conf("[snapshot]\ninterval = 1s\n[log]\nlevel = debug\n[model]\nk = 8\n")
        n0 = len(msgs)
        d.send_signal(signal.SIGHUP)
        check(pump(lambda m: "READY=1" in m, 10), "no READY=1 after SIGHUP")
        after = [m for _, m in msgs[n0:]]
        check(any("RELOADING=1" in m for m in after), "no RELOADING=1: %r" % after)
        check(after.index([m for m in after if "RELOADING=1" in m][0])
              < after.index([m for m in after if "READY=1" in m][-1]), "RELOADING before READY")
        wait_for(lambda: "configuration reloaded" in ps.log("nmfd"), 10, "reload log")
        log = ps.log("nmfd")
        check(re.search(r"configuration reloaded; applied: .*log\.level", log), log[-2000:])
        check(re.search(r"need a restart: .*model\.k", log), log[-2000:])

        # A broken file: refused, the running configuration stays.
        with open(conf, "a") as f:
            f.write("[model]\nk = many\n")
        d.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in ps.log("nmfd"), 10, "the refused reload")
        check(re.search(r"reload refused, running config unchanged: .*nmfd\.conf:\d+: model\.k",
                        ps.log("nmfd")), ps.log("nmfd")[-2000:])
        time.sleep(1.5)
        check(d.poll() is None, "nmfd died on a broken reload")

        n0 = len(msgs)
        d.send_signal(signal.SIGTERM)
        pump(lambda m: "STOPPING=1" in m, 30)
        check(d.wait(60) == 0, "exit %r:\n%s" % (d.returncode, ps.log("nmfd")[-3000:]))
        after = [m for _, m in msgs[n0:]]
        check(any("STOPPING=1" in m for m in after), "no STOPPING=1: %r" % after)
        check(os.path.exists(os.path.join(state, "nmfd.ckpt")), "no final checkpoint")

        # meson install into a DESTDIR.
        build = os.environ.get("NMFD_BUILD")
        if build:
            dest = os.path.join(ps.tmp, "dest")
            r = subprocess.run(["meson", "install", "-C", build, "--destdir", dest,
                                "--no-rebuild", "--quiet"], capture_output=True, timeout=300)
            check(r.returncode == 0, "meson install: %s" % r.stderr.decode())
            found = {os.path.relpath(os.path.join(p, f), dest)
                     for p, _, fs in os.walk(dest) for f in fs}
            for want in (r"sbin/nmfd$", r"bin/nmfctl$", r"systemd/system/nmfd\.service$",
                         r"etc/nmfd/nmfd\.conf$", r"share/doc/nmfd/operations\.md$",
                         r"share/doc/nmfd/snapshot-format\.md$"):
                check(any(re.search(want, f) for f in found), "install lacks %s: %r"
                      % (want, sorted(found)))
    print("systemd protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING in order; install OK")


if __name__ == "__main__":
    main()
