"""End-to-end throughput of nmfd against the transport's limit.

Every run starts a fresh `nmfctl broker` (a separate process), the
consumers, then `nmfctl produce` with the generated stream, and records
for each consumer the wall-clock curve of events consumed (bare_consumer's
progress lines; nmfd's nmfd_events_folded_total polled from /metrics),
the CPU time of every process, and after the run the low watermark of
every input partition (0 everywhere proves the mock's ~5 MiB retention
evicted nothing the consumers still needed).

Scenarios (--scenario, repeatable):
  producer   the producer alone: its own maximum rate
  side       bare_consumer and nmfd side by side while the producer runs
  bare       bare_consumer alone with the producer
  nmfd       nmfd alone with the producer
  perf       `side`, with perf record --call-graph dwarf on nmfd (report
             in the run's directory)

Results go to stdout as one JSON object per run and, summarised (medians
of --runs), as a table; --out DIR keeps every log and a results.json.
Run through bench/e2e-run, which builds the programs first.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TOPIC = "events"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What KAFKA-MOCK.md prescribes for consumers of the mock, for both
# consumers alike (bare_consumer sets the same by default).
KAFKA_TUNING = {
    "fetch.wait.max.ms": "10",
    "fetch.error.backoff.ms": "10",
    "queued.min.messages": "1000000",
    "queued.max.messages.kbytes": "1048576",
    "session.timeout.ms": "6000",
    "heartbeat.interval.ms": "1000",
}


def log(msg):
    print("[e2e %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def uptime():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_seconds(pid):
    """utime + stime of a live process (all its threads), in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return None


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))


class Procs:
    """Starts processes with logs in a directory; stops exactly those."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def start(self, args, name, stdout=None):
        err = open(os.path.join(self.logdir, name + ".log"), "wb")
        out = stdout or open(os.path.join(self.logdir, name + ".out"), "wb")
        p = subprocess.Popen(args, stdout=out, stderr=err)
        p.name = name
        self.procs.append(p)
        return p

    def log(self, name, ext=".log"):
        try:
            with open(os.path.join(self.logdir, name + ext), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, p, sig=signal.SIGTERM, timeout=120):
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                self.stop(p, signal.SIGTERM, 60)


def http_get(port, path, timeout=5):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                timeout=timeout) as r:
        return r.status, r.read()


def metric_value(port, name):
    try:
        _, body = http_get(port, "/metrics", timeout=2)
    except OSError:
        return None
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.split()[-1])
    return None


def readyz(port):
    try:
        status, _ = http_get(port, "/readyz", timeout=2)
        return status == 200
    except OSError:
        return False


def watermarks(brokers, topic, nparts):
    """[(low, high)] of every partition of topic."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": brokers, "group.id": "e2e-watermarks",
                  "enable.auto.commit": False})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                        cached=False) for p in range(nparts)]
    finally:
        c.close()


def crossing(series, x):
    """Time at which a non-decreasing (t, count) series reaches x, linearly
    interpolated between samples; None if it never does."""
    prev = None
    for t, n in series:
        if n >= x:
            if prev is None or n == prev[1]:
                return t
            t0, n0 = prev
            return t0 + (t - t0) * (x - n0) / (n - n0)
        prev = (t, n)
    return None


def crossing_count(series, t):
    """Count of a (t, count) series at time t (the last sample before)."""
    c = 0
    for ts, n in series:
        if ts > t:
            break
        c = n
    return c


def bare_series(r):
    series = []
    for line in r.ps.log("bare").splitlines():
        if line.startswith("progress "):
            _, t, c = line.split()
            series.append((int(t) / 1000.0, int(c)))
    return series


def bare_stalled(r, stall):
    s = bare_series(r)
    return len(s) > 1 and s[-1][1] == crossing_count(s, time.time() - stall)


def curve_figures(series, n, t_start, t_prod_end, produced_at_end):
    """Rates of one consumer from its (t, count) curve: over the whole run
    (producer start to the n-th event) and between 10% and 90% of what it
    reached (its own pace, also when evictions kept it short of n)."""
    final = series[-1][1] if series else 0
    t10, t90 = crossing(series, 0.1 * final), crossing(series, 0.9 * final)
    tn = crossing(series, n)
    at_end = 0
    for t, c in series:
        if t <= t_prod_end:
            at_end = c
    out = {
        "reached": series[-1][1] if series else 0,
        "seconds_to_n": tn - t_start if tn else None,
        "rate": n / (tn - t_start) if tn else None,
        "rate_10_90": 0.8 * final / (t90 - t10) if t90 and t10 and t90 > t10 else None,
        "lag_at_producer_end": produced_at_end - at_end,
        "drain_s": tn - t_prod_end if tn else None,
    }
    return out


class Run:
    """One broker, its consumers and one producer pass over the stream."""

    def __init__(self, a, name, logdir):
        self.a = a
        self.name = name
        self.logdir = logdir
        os.makedirs(logdir, exist_ok=True)
        self.ps = Procs(logdir)
        build = a.daemon_build or a.build
        self.bin = os.path.join(build, "daemon")
        # nmfctl lives in ctl/; revisions before the move built it in daemon/.
        self.nmfctl = os.path.join(build, "ctl", "nmfctl")
        if not os.path.exists(self.nmfctl):
            self.nmfctl = self.nmfctl

    def broker(self):
        bf = os.path.join(self.logdir, "bootstrap")
        fifo = os.path.join(self.logdir, "broker.control")
        self.brk = self.ps.start(
            [self.nmfctl, "broker", "--partitions",
             str(self.a.partitions), "--topics", TOPIC + ",nmf.segments",
             "--bootstrap-file", bf, "--control", fifo], "broker")
        self.brokers = wait_for(lambda: os.path.exists(bf) and open(bf).read().strip(),
                                20, "the broker's bootstrap file")
        wait_for(lambda: os.path.exists(fifo), 10, "the broker's control FIFO")
        # Epoch records in order: one partition, as nmfd --embedded-broker.
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"topic nmf.topics 1\ntopic nmf.snapshots 1\n")
        os.close(fd)
        wait_for(lambda: self.ps.log("broker").count("ok") >= 2, 10,
                 "the broker's topics")
        return self.brokers

    def start_bare(self, n):
        args = [os.path.join(self.a.build, "bench", "bare_consumer"),
                "--brokers", self.brokers, "--topic", TOPIC, "--events", str(n),
                "--group", "bare-" + self.name, "--timeout", str(self.a.timeout),
                "--progress", "50", "--api", self.a.bare_api]
        self.bare = self.ps.start(args, "bare")
        return self.bare

    def start_nmfd(self, extra_sets=()):
        state = os.path.join(self.logdir, "nmfd-state")
        os.makedirs(state, exist_ok=True)
        sets = ["kafka.bootstrap.servers=" + self.brokers,
                "kafka.group.id=nmfd-" + self.name,
                "input.topics=" + TOPIC,
                "checkpoint.dir=" + state,
                "http.listen=127.0.0.1:0",
                "log.level=info",
                "model.k=%d" % self.a.k]
        sets += ["kafka.%s=%s" % kv for kv in KAFKA_TUNING.items()]
        sets += list(self.a.nmfd_set) + list(extra_sets)
        args = [os.path.join(self.bin, "nmfd")]
        for s in sets:
            args += ["--set", s]
        self.nmfd = self.ps.start(args, "nmfd")

        def port():
            if self.nmfd.poll() is not None:
                raise RuntimeError("nmfd exited %d:\n%s" % (self.nmfd.returncode,
                                                            self.ps.log("nmfd")))
            m = re.search(r"http on .*\(port (\d+)\)", self.ps.log("nmfd"))
            return int(m.group(1)) if m else None
        self.nmfd.port = wait_for(port, 30, "nmfd's HTTP port")
        return self.nmfd

    def producer_args(self, rate=None):
        args = [self.nmfctl, "produce", "--brokers", self.brokers,
                "--topic", TOPIC, "--batch", str(self.a.batch)]
        if self.a.codec != "none":
            args += ["-X", "compression.codec=" + self.a.codec]
        for x in self.a.producer_x:
            args += ["-X", x]
        if rate:
            args += ["--rate", str(rate)]
        return args + [self.a.csv]

    def produce(self, rate=None):
        """Starts the producer; returns (Popen, start time)."""
        t0 = time.time()
        p = self.ps.start(self.producer_args(rate), "producer")
        return p, t0

    def close(self):
        self.ps.stop_all()


def parse_producer(text):
    m = re.search(r"(\d+) events in (\d+) messages .*\((\d+) delivered, (\d+) failed\) "
                  r"in ([\d.]+) s, (\d+) events/s", text)
    if not m:
        return {}
    return {"events": int(m.group(1)), "messages": int(m.group(2)),
            "delivered": int(m.group(3)), "failed": int(m.group(4)),
            "seconds": float(m.group(5)), "rate": int(m.group(6))}


def wait_producer(p):
    """Waits for the producer; returns (end time, its CPU seconds)."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return time.time(), ru.ru_utime + ru.ru_stime


def scenario_producer(a, name, logdir):
    r = Run(a, name, logdir)
    try:
        r.broker()
        load = uptime()
        b0 = cpu_seconds(r.brk.pid)
        p, t0 = r.produce(a.rate)
        t1, pcpu = wait_producer(p)
        b1 = cpu_seconds(r.brk.pid)
        prod = parse_producer(r.ps.log("producer"))
        return {"scenario": "producer", "load": load, "producer": prod,
                "producer_cpu_s": pcpu, "broker_cpu_s": b1 - b0,
                "wall_s": t1 - t0}
    finally:
        r.close()


def scenario_consumers(a, name, logdir, with_bare, with_nmfd, perf=False):
    n = a.events
    r = Run(a, name, logdir)
    res = {"scenario": name.split("-")[0], "load_before": uptime()}
    try:
        r.broker()
        if with_nmfd:
            r.start_nmfd()
        if with_bare:
            r.start_bare(n)
        # Both members of their groups before the first event: the first
        # join takes 3 s in the mock.
        if with_nmfd:
            wait_for(lambda: readyz(r.nmfd.port), 60, "nmfd's assignment")
        if with_bare:
            wait_for(lambda: "assigned" in r.ps.log("bare"), 60, "bare_consumer's assignment")
        perfp = None
        if perf and with_nmfd:
            perfp = subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", str(a.perf_freq),
                 "--call-graph", "dwarf,16384",
                 "-p", str(r.nmfd.pid), "-o", os.path.join(logdir, "perf.data")],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(logdir, "perf.log"), "wb"))
            time.sleep(0.5)
        cpu0 = {"broker": cpu_seconds(r.brk.pid)}
        if with_nmfd:
            cpu0["nmfd"] = cpu_seconds(r.nmfd.pid)
        p, t0 = r.produce(a.rate)
        nmfd_series, nmfd_cpu = [], []
        t_prod_end = None
        deadline = t0 + a.timeout
        nmfd_done = not with_nmfd
        bare_done = not with_bare
        pcpu = None
        while time.time() < deadline:
            if t_prod_end is None:
                try:
                    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                except ChildProcessError:
                    pid = 0
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    t_prod_end = time.time()
                    pcpu = ru.ru_utime + ru.ru_stime
            if with_nmfd and not nmfd_done:
                v = metric_value(r.nmfd.port, "nmfd_events_folded_total")
                if v is not None:
                    nmfd_series.append((time.time(), v))
                    nmfd_cpu.append(cpu_seconds(r.nmfd.pid))
                    if v >= n:
                        nmfd_done = True
                        # Stale users re-solved while the stream was folded.
                        res["nmfd_refined"] = metric_value(r.nmfd.port,
                                                           "nmfd_users_refined_total")
            if with_bare and not bare_done and r.bare.poll() is not None:
                bare_done = True
            if nmfd_done and bare_done and t_prod_end is not None:
                break
            # Evicted events never come: stop waiting once the producer is
            # done and nothing moved for a while.
            if t_prod_end is not None and time.time() - t_prod_end > a.stall:
                if with_nmfd and not nmfd_done and len(nmfd_series) > 1 and \
                        nmfd_series[-1][1] == crossing_count(nmfd_series, time.time() - a.stall):
                    log("nmfd stalled at %d events" % nmfd_series[-1][1])
                    nmfd_done = True
                if with_bare and not bare_done and bare_stalled(r, a.stall):
                    log("bare_consumer stalled")
                    r.ps.stop(r.bare, signal.SIGINT)
                    bare_done = True
            time.sleep(0.05)
        if perfp:
            perfp.send_signal(signal.SIGINT)
            perfp.wait(120)
        if t_prod_end is None:
            r.ps.stop(p, signal.SIGINT)
            t_prod_end = time.time()
        res["broker_cpu_s"] = cpu_seconds(r.brk.pid) - cpu0["broker"]
        res["load_after"] = uptime()
        prod = parse_producer(r.ps.log("producer"))
        res["producer"] = prod
        res["producer_cpu_s"] = pcpu
        produced = prod.get("events", n)
        if with_bare:
            if r.bare.poll() is None:
                r.ps.stop(r.bare, signal.SIGINT)
            series = bare_series(r)
            out = r.ps.log("bare", ".out")
            kv = dict(x.split("=", 1) for x in out.split()[1:] if "=" in x)
            fig = curve_figures(series, n, t0, t_prod_end, produced)
            fig["complete"] = fig["reached"] >= n
            fig["cpu_s"] = float(kv.get("cpu_s", "nan"))
            fig["events_per_cpu_s"] = fig["reached"] / fig["cpu_s"] if fig["cpu_s"] else None
            fig["own_events_per_s"] = float(kv.get("events_per_s", "nan"))
            fig["messages"] = int(kv.get("messages", "0"))
            res["bare"] = fig
        if with_nmfd:
            with open(os.path.join(logdir, "nmfd.series"), "w") as f:
                f.write("# t_since_producer_start events_folded\n")
                for t, c in nmfd_series:
                    f.write("%.3f %d\n" % (t - t0, c))
            fig = curve_figures(nmfd_series, n, t0, t_prod_end, produced)
            fig["complete"] = fig["reached"] >= n
            if nmfd_series:
                # CPU up to the sample that first showed the final count:
                # idle refinement after the input ended is not ingest.
                final = nmfd_series[-1][1]
                i = next(j for j, (t, c) in enumerate(nmfd_series) if c == final)
                fig["cpu_s"] = nmfd_cpu[i] - cpu0["nmfd"]
                fig["events_per_cpu_s"] = final / fig["cpu_s"] if fig["cpu_s"] > 0 else None
            res["nmfd"] = fig
        wm = watermarks(r.brokers, TOPIC, a.partitions)
        res["low_watermarks_nonzero"] = [p for p, (lo, hi) in enumerate(wm) if lo != 0]
        # Retention (~5 MiB a partition) drops old batches even when every
        # consumer has read them; the counts above say whether any consumer
        # missed one.
        res["evicted_messages"] = sum(lo for lo, hi in wm)
        highs = [hi for lo, hi in wm]
        res["messages_in_topic"] = sum(highs)
        res["hot_partition_share"] = max(highs) / max(1, sum(highs))
        if with_bare and with_nmfd and res["bare"]["rate"] and res["nmfd"]["rate"]:
            res["nmfd_over_bare"] = res["nmfd"]["rate"] / res["bare"]["rate"]
        return res
    finally:
        r.close()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarise(results):
    rows = []
    keyf = lambda r: r["config"]
    for cfg in sorted(set(map(keyf, results))):
        rs = [r for r in results if keyf(r) == cfg]
        row = {"config": cfg, "runs": len(rs)}
        if rs[0]["scenario"] == "producer":
            row["producer_rate"] = median([r["producer"].get("rate") for r in rs])
            row["producer_cpu_s"] = median([r["producer_cpu_s"] for r in rs])
            row["broker_cpu_s"] = median([r["broker_cpu_s"] for r in rs])
        else:
            row["producer_rate"] = median([r["producer"].get("rate") for r in rs])
            for who in ("bare", "nmfd"):
                if who in rs[0]:
                    row[who + "_rate"] = median([r[who]["rate"] for r in rs])
                    row[who + "_rate_10_90"] = median([r[who]["rate_10_90"] for r in rs])
                    row[who + "_per_cpu_s"] = median([r[who].get("events_per_cpu_s") for r in rs])
                    row[who + "_drain_s"] = median([r[who]["drain_s"] for r in rs])
            if "nmfd_over_bare" in rs[0]:
                row["nmfd_over_bare"] = median([r.get("nmfd_over_bare") for r in rs])
            if "nmfd" in rs[0]:
                row["nmfd_refined"] = median([r.get("nmfd_refined") for r in rs])
            row["evicted_partitions"] = sorted(set(
                p for r in rs for p in r["low_watermarks_nonzero"]))
        row["loads"] = [r.get("load") or r.get("load_before") for r in rs]
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True, help="meson build directory")
    ap.add_argument("--daemon-build", help="build directory of nmfd and nmfctl "
                    "(default: --build, which always holds bare_consumer)")
    ap.add_argument("--csv", required=True, help="event stream (nmfctl gen)")
    ap.add_argument("--events", type=int, required=True, help="events in --csv")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--partitions", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1, help="nmfctl produce --batch")
    ap.add_argument("--codec", default="lz4", help="producer compression.codec or none")
    ap.add_argument("--rate", type=float, default=0, help="producer --rate (0: unpaced)")
    ap.add_argument("--producer-x", action="append", default=[], help="-X for the producer")
    ap.add_argument("--nmfd-set", action="append", default=[], help="--set for nmfd")
    ap.add_argument("--bare-api", default="poll", choices=["poll", "batch"])
    ap.add_argument("--scenario", action="append", default=[],
                    choices=["producer", "side", "bare", "nmfd", "perf"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--stall", type=float, default=10,
                    help="seconds without progress after the producer ended that end a run")
    ap.add_argument("--perf-freq", type=int, default=499)
    ap.add_argument("--label", default="", help="added to the config name")
    ap.add_argument("--out", help="directory for logs and results.json")
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    a.daemon_build = os.path.abspath(a.daemon_build) if a.daemon_build else None
    a.csv = os.path.abspath(a.csv)
    out = a.out or tempfile.mkdtemp(prefix="nmfd-e2e.")
    os.makedirs(out, exist_ok=True)
    scenarios = a.scenario or ["producer", "side"]
    cfg = "P=%d batch=%d %s%s%s" % (a.partitions, a.batch, a.codec,
                                    " rate=%g" % a.rate if a.rate else "",
                                    " " + a.label if a.label else "")
    results = []
    for sc in scenarios:
        for i in range(a.runs):
            name = "%s-%d-%d" % (sc, i, int(time.time()))
            logdir = os.path.join(out, name)
            log("%s run %d (%s), load %s" % (sc, i + 1, cfg, uptime()))
            try:
                if sc == "producer":
                    res = scenario_producer(a, name, logdir)
                else:
                    res = scenario_consumers(a, name, logdir,
                                             with_bare=sc in ("side", "bare", "perf"),
                                             with_nmfd=sc in ("side", "nmfd", "perf"),
                                             perf=sc == "perf")
            except Exception as e:  # keep the other runs
                log("run failed: %s" % e)
                res = {"scenario": sc, "error": str(e)}
            res["config"] = "%s %s" % (sc, cfg)
            res["logdir"] = logdir
            print(json.dumps(res), flush=True)
            results.append(res)
            if sc == "perf":
                report = os.path.join(logdir, "perf.txt")
                with open(report, "w") as f:
                    subprocess.run(["perf", "report", "-i", os.path.join(logdir, "perf.data"),
                                    "--stdio", "--no-children", "--percent-limit", "0.5"],
                                   stdout=f, stderr=subprocess.DEVNULL)
                log("perf report: %s" % report)
            else:
                shutil.rmtree(os.path.join(logdir, "nmfd-state"), ignore_errors=True)
    good = [r for r in results if "error" not in r]
    summary = summarise(good)
    with open(os.path.join(out, "results.json"), "a") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    for row in summary:
        print("SUMMARY " + json.dumps(row), flush=True)
    return 0 if len(good) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
