#!/usr/bin/python3
"""Bad input through Kafka: every rejection reason of io/event.h, produced
as raw bytes with python3-confluent-kafka to the standalone broker and
interleaved with good events of known weights, goes through a real nmfd
configured with a dead-letter topic, a type weight table (so unknown_type
and missing_type are reachable) and small message limits.

Asserted, all exactly:
- nmfd_events_rejected_total{reason=R} for every reason R;
- one record on the dead-letter topic per bad message, with the original
  key and value and the headers nmfd.reason (the first reason of the
  message) and nmfd.source (topic/partition/offset of the original);
- every good event folded: nmfd_events_folded_total, the weight sum, the
  model's event count, the manifest's events, weight_sum and rejected;
- W and H of /snapshot finite and non-negative;
- nmfd still running, /healthz 200, rejection log lines bounded by the
  rate limit;
- config files and --set values with errors, [kafka] keys librdkafka
  refuses included: exit 2 and "file:line: msg".
"""
import math
import os
import struct
import subprocess
import sys
import time

import msgpack
import numpy as np
from confluent_kafka import Producer

sys.path.insert(0, os.path.dirname(__file__))
from harness import (BIN, Procs, check, fail, http_get, metric, metrics,  # noqa: E402
                     read_topic_all, stop, wait_for)

TOPIC = "nmf.events"
DEAD = "nmf.dead"
MAX_BYTES = 4096
MAX_EVENTS = 50
LOG_BURST = 5
TS0 = 1700000000000
TYPES = {"click": 1.0, "buy": 5.0}
REASONS = [
    "empty_message", "invalid_msgpack", "invalid_json", "too_large",
    "too_many_events", "too_deep", "duplicate_field", "not_an_object",
    "missing_user", "missing_item", "bad_user", "bad_item", "empty_id",
    "id_too_long", "bad_weight", "negative_weight", "nonfinite_weight",
    "bad_ts", "bad_type", "unknown_type", "missing_type", "weight_too_large",
]


class Raw:
    """Pre-encoded msgpack bytes inside a hand-built map."""

    def __init__(self, b):
        self.b = b


def mp(obj):
    return msgpack.packb(obj, use_bin_type=True)


def mpmap(pairs):
    """A msgpack map from (key, value) pairs, duplicates allowed."""
    out = bytearray()
    n = len(pairs)
    out += bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    for k, v in pairs:
        for x in (k, v):
            out += x.b if isinstance(x, Raw) else mp(x)
    return bytes(out)


def ev(seq=0, **kw):
    """An event map: a good one unless kw says otherwise (None drops a
    field)."""
    d = {"user": "u%d" % (seq % 37), "item": "i%d" % (seq % 23), "weight": 1.0,
         "type": "click", "ts": TS0 + seq}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not None}


def js(s):
    return s.encode()


F32_NAN = b"\xca" + struct.pack(">f", float("nan"))
BAD_UTF8 = Raw(b"\xa2\xff\xfe")  # fixstr of two bytes that are not UTF-8


def bad_cases():
    """(value, [reasons in message order], [weights of the good events the
    message also holds])."""
    deep_mp = b"\x91" * 3000 + b"\x01"
    deep_js = b"[" * 2000 + b"]" * 2000
    c = [
        (b"", ["empty_message"], []),
        (None, ["empty_message"], []),
        (mp(ev(1))[:-4], ["invalid_msgpack"], []),
        (b"\xc1", ["invalid_msgpack"], []),
        (mp(ev(2)) + b"\x01", ["invalid_msgpack"], []),
        (b"\x92\x01", ["invalid_msgpack"], []),
        (js('{"user": "a", "item": '), ["invalid_json"], []),
        (js("{user: a}"), ["invalid_json"], []),
        (js('[{"user":"a","item":"b","type":"click"},]'), ["invalid_json"], []),
        (js(" nope"), ["invalid_json"], []),
        (js('{"user":"a","item":"b","weight":NaN,"type":"click"}'), ["invalid_json"], []),
        (mp(ev(3, pad="x" * 5000)), ["too_large"], []),
        (js('{"user":"a","item":"b","pad":"%s"}' % ("x" * 6000)), ["too_large"], []),
        (mp(ev(4, pad="y" * 100000)), ["too_large"], []),
        (mp([{"user": "a", "item": "b", "type": "click"}] * (MAX_EVENTS + 1)),
         ["too_many_events"], []),
        (js("[" + ",".join('{"user":"a","item":"b","type":"click"}'
                           for _ in range(MAX_EVENTS + 1)) + "]"),
         ["too_many_events"], []),
        (mp(ev(5, x=[[[[[[[[[1]]]]]]]]])), ["too_deep"], []),
        (js('{"user":"a","item":"b","type":"click","x":[[[[[[[[[1]]]]]]]]]}'),
         ["too_deep"], []),
        (deep_mp, ["too_deep"], []),
        (deep_js, ["too_deep"], []),
        (mpmap([("user", "a"), ("user", "b"), ("item", "i"), ("type", "click")]),
         ["duplicate_field"], []),
        (js('{"user":"a","user":"b","item":"i","type":"click"}'), ["duplicate_field"], []),
        (mp(42), ["not_an_object"], []),
        (mp("just a string"), ["not_an_object"], []),
        (mp([1]), ["not_an_object"], []),
        (js('[1, "x"]'), ["not_an_object", "not_an_object"], []),
        (mp(ev(6, user=None)), ["missing_user"], []),
        (js('{"item":"b","type":"click"}'), ["missing_user"], []),
        (mp(ev(7, item=None)), ["missing_item"], []),
        (mp(ev(8, user=[1])), ["bad_user"], []),
        (mp(ev(9, user=True)), ["bad_user"], []),
        (mp(ev(10, user=-5)), ["bad_user"], []),
        (mp(ev(11, user=1.5)), ["bad_user"], []),
        (mp(ev(12, user=b"binary")), ["bad_user"], []),
        (mpmap([("user", BAD_UTF8), ("item", "i"), ("type", "click")]), ["bad_user"], []),
        (mp(ev(13, item={"a": 1})), ["bad_item"], []),
        (mpmap([("user", "u"), ("item", BAD_UTF8), ("type", "click")]), ["bad_item"], []),
        (mp(ev(14, user="")), ["empty_id"], []),
        (mp(ev(15, item="")), ["empty_id"], []),
        (js('{"user":"","item":"b","type":"click"}'), ["empty_id"], []),
        (mp(ev(16, user="a" * 257)), ["id_too_long"], []),
        (mp(ev(17, item="\u00e9" * 129)), ["id_too_long"], []),
        (mp(ev(18, weight="3")), ["bad_weight"], []),
        (mp(ev(19, weight=True)), ["bad_weight"], []),
        (mp(ev(20, weight=[1])), ["bad_weight"], []),
        (mp(ev(21, weight=-1)), ["negative_weight"], []),
        (mp(ev(22, weight=-0.5)), ["negative_weight"], []),
        (js('{"user":"a","item":"b","weight":-2,"type":"click"}'), ["negative_weight"], []),
        (mp(ev(23, weight=float("nan"))), ["nonfinite_weight"], []),
        (mp(ev(24, weight=float("inf"))), ["nonfinite_weight"], []),
        (mp(ev(25, weight=float("-inf"))), ["nonfinite_weight"], []),
        (mpmap([("user", "u"), ("item", "i"), ("weight", Raw(F32_NAN)),
                ("type", "click")]), ["nonfinite_weight"], []),
        # Finite, but infinite once multiplied by the type weight.
        (mp(ev(26, weight=1e308, type="buy")), ["nonfinite_weight"], []),
        (mp(ev(27, ts=-1)), ["bad_ts"], []),
        (mp(ev(28, ts="2024-01-01")), ["bad_ts"], []),
        (mp(ev(29, ts=1.5)), ["bad_ts"], []),
        (mp(ev(30, ts=253402300800000)), ["bad_ts"], []),
        (mp(ev(31, ts=2 ** 64 - 1)), ["bad_ts"], []),
        (mp(ev(32, ts=True)), ["bad_ts"], []),
        (mp(ev(33, type=7)), ["bad_type"], []),
        (mp(ev(34, type=["click"])), ["bad_type"], []),
        (mp(ev(35, type="view")), ["unknown_type"], []),
        (mp(ev(36, type="CLICK")), ["unknown_type"], []),
        (js('{"user":"a","item":"b","type":"view"}'), ["unknown_type"], []),
        (mp(ev(37, type=None)), ["missing_type"], []),
        (mpmap([("user", "u"), ("item", "i"), ("type", None)]), ["missing_type"], []),
        (js('{"user":"a","item":"b"}'), ["missing_type"], []),
        (mp(ev(38, weight=1e12 + 1)), ["weight_too_large"], []),
        (mp(ev(39, weight=3e11, type="buy")), ["weight_too_large"], []),
        # Arrays mixing good and bad events: the good ones are folded, the
        # message is dead-lettered under its first reason.
        (mp([ev(40, weight=2.0), ev(41, user=None), ev(42, weight=1.0, type="buy")]),
         ["missing_user"], [2.0, 5.0]),
        (js('[{"user":"j1","item":"b","weight":3,"type":"click"},'
            '{"user":"j2","item":"b","weight":1,"type":"view"},'
            '{"user":"j3","item":"b","weight":-1,"type":"click"}]'),
         ["unknown_type", "negative_weight"], [3.0]),
    ]
    for v, reasons, _ in c:
        if reasons != ["too_large"] and v is not None and len(v) > MAX_BYTES:
            fail("case %r is %d bytes, over the limit" % (reasons, len(v)))
    return c


def good_cases():
    """(value, [weights folded]) for messages with only good events."""
    g = []
    for i in range(300):
        w = 0.5 + 0.25 * (i % 5)
        t = "buy" if i % 3 == 0 else "click"
        g.append((mp(ev(1000 + i, weight=w, type=t)), [w * TYPES[t]]))
    g += [
        (mp(ev(2000, user="a" * 256)), [1.0]),                  # 256 bytes: accepted
        (mp(ev(2001, item="\u00fc" * 128)), [1.0]),             # 256 bytes of UTF-8
        (mp(ev(2002, user=12345, item=2 ** 64 - 1)), [1.0]),    # uint ids
        (mp(ev(2003, weight=0.0)), [0.0]),
        (mp(ev(2004, weight=0)), [0.0]),
        (mp(ev(2005, weight=None)), [1.0]),
        (mpmap([("user", "n"), ("item", "i"), ("weight", None), ("type", "buy")]), [5.0]),
        (mp(ev(2006, ts=None)), [1.0]),                         # Kafka timestamp
        (mp(ev(2007, ts=float(TS0))), [1.0]),                   # integral float ts
        (mp(ev(2008, weight=1e12)), [1e12]),                    # the largest weight
        (mp(ev(2009, weight=2e11, type="buy")), [1e12]),
        (mp(ev(2010, extra={"nested": [1, 2]})), [1.0]),        # unknown keys ignored
        (mp([ev(2011 + i, weight=float(i + 1)) for i in range(MAX_EVENTS)]),
         [float(i + 1) for i in range(MAX_EVENTS)]),            # exactly max events
        (js('{"user":"j9","item":"b","weight":2,"type":"buy"}'), [10.0]),
        (js(' [{"user":"j9","item":"c","type":"click"},'
            '{"user":"j8","item":"c","weight":0.5,"type":"buy"}]'), [1.0, 2.5]),
        (mp(ev(2200, pad="z" * (MAX_BYTES - 200))), [1.0]),     # just under the limit
    ]
    for v, _ in g[-1:]:
        check(len(v) <= MAX_BYTES, "the under-limit case is %d bytes" % len(v))
    return g


def produce_all(brokers, msgs):
    """Produces (value, key) in order; returns each one's
    (topic, partition, offset) from its delivery report."""
    p = Producer({"bootstrap.servers": brokers, "partitioner": "murmur2_random",
                  "message.max.bytes": 4 << 20, "linger.ms": 5,
                  "enable.idempotence": True})
    where = [None] * len(msgs)

    def dr(i):
        def cb(err, m):
            if err is None:
                where[i] = (m.topic(), m.partition(), m.offset())
            else:
                where[i] = err
        return cb

    for i, (value, key) in enumerate(msgs):
        p.produce(TOPIC, value=value, key=key, on_delivery=dr(i))
        p.poll(0)
    check(p.flush(30) == 0, "producer did not deliver everything")
    bad = [(i, w) for i, w in enumerate(where) if not isinstance(w, tuple)]
    check(not bad, "deliveries failed: %r" % bad[:5])
    return where


def config_errors(tmp):
    """Config files and --set values with errors stop the start with exit 2
    and a message naming the place."""
    nmfd = os.path.join(BIN, "nmfd")
    files = [
        ("[model]\nk = 8\n\n[input]\nbogus = 1\n", 5, "unknown key input.bogus"),
        ("[model]\nk = 0\n", 2, "model.k = 0: out of range"),
        ("[snapshot]\ninterval = 5 parsecs\n", 2, "bad duration"),
        ("[checkpoint]\ninterval = 10ms\n", 2, "out of range"),
        ("# comment\n[nosuch]\nx = 1\n", 2, "unknown section"),
        ("[model]\nk 8\n", 2, "syntax error"),
        ("[input]\nweight.click = nan\n", 2, "finite number"),
        ("[input]\nmax_message_bytes = 10\n", 2, "out of range"),
        ("[input]\nformat = xml\n", 2, "bad value"),
    ]
    state = os.path.join(tmp, "cfg-state")
    for i, (text, line, msg) in enumerate(files):
        path = os.path.join(tmp, "bad%d.conf" % i)
        with open(path, "w") as f:
            f.write(text)
        for extra in (["--check-config"],
                      ["--set", "checkpoint.dir=" + state, "--set", "http.listen="]):
            r = subprocess.run([nmfd, "--config", path] + extra, capture_output=True,
                               timeout=30)
            err = r.stderr.decode()
            check(r.returncode == 2, "%s %s: exit %d, not 2: %s"
                  % (text.strip(), extra[0], r.returncode, err))
            check("%s:%d: " % (path, line) in err and msg in err,
                  "%r: expected '%s:%d: ...%s' in: %s" % (text, path, line, msg, err))
    sets = [
        ("model.k=abc", "not an integer"),
        ("nosuch.key=1", "unknown section"),
        ("model.k", "missing '='"),
        ("model.half_life=-1s", "bad duration"),
        ("snapshot.interval=50ms", "out of range"),
        ("input.max_events_per_message=0", "out of range"),
        ("input.nosuch=1", "unknown key"),
    ]
    for s, msg in sets:
        r = subprocess.run([nmfd, "--set", s, "--check-config"], capture_output=True,
                           timeout=30)
        err = r.stderr.decode()
        check(r.returncode == 2 and "--set" in err and msg in err,
              "--set %s: exit %d: %s" % (s, r.returncode, err))
    r = subprocess.run([nmfd, "--config", os.path.join(tmp, "missing.conf"),
                        "--check-config"], capture_output=True, timeout=30)
    check(r.returncode == 2 and "missing.conf" in r.stderr.decode(),
          "missing config file: exit %d: %s" % (r.returncode, r.stderr.decode()))
    # [kafka] keys go to librdkafka; one it refuses is a config error too
    # (docs/design.md section 6): exit 2 with the place, also for
    # --check-config.
    path = os.path.join(tmp, "badkafka.conf")
    with open(path, "w") as f:
        f.write("[kafka]\nbootstrap.servers = 127.0.0.1:9\nno.such.property = 1\n")
    r = subprocess.run([nmfd, "--config", path, "--set", "checkpoint.dir=" + state,
                        "--set", "http.listen="], capture_output=True, timeout=30)
    err = r.stderr.decode()
    check(r.returncode == 2 and "%s:3: " % path in err and "no.such.property" in err,
          "bad kafka key: exit %d: %s" % (r.returncode, err))
    r = subprocess.run([nmfd, "--config", path, "--check-config"], capture_output=True,
                       timeout=30)
    check(r.returncode == 2 and "%s:3: " % path in r.stderr.decode(),
          "--check-config on a bad kafka key: exit %d: %s"
          % (r.returncode, r.stderr.decode()))
    r = subprocess.run([nmfd, "--set", "kafka.session.timeout.ms=banana", "--check-config"],
                       capture_output=True, timeout=30)
    check(r.returncode == 2 and "--set" in r.stderr.decode()
          and "session.timeout.ms" in r.stderr.decode(),
          "--set of a bad kafka value: exit %d: %s" % (r.returncode, r.stderr.decode()))
    print("config errors: %d files, %d --set values: exit 2 with the place"
          % (len(files), len(sets)))


def main():
    t_start = time.time()
    with Procs() as ps:
        config_errors(ps.tmp)

        brokers = ps.broker(partitions=4, topics="%s,%s" % (TOPIC, DEAD))
        d = ps.nmfd(brokers, sets=[
            "input.dead_letter_topic=" + DEAD,
            "input.weight.click=1", "input.weight.buy=5",
            "input.max_message_bytes=%d" % MAX_BYTES,
            "input.max_events_per_message=%d" % MAX_EVENTS,
            "input.reject_log_interval=1h",
            "input.reject_log_burst=%d" % LOG_BURST,
            "model.k=4", "model.warmup_events=50", "snapshot.interval=500ms",
            "kafka.message.max.bytes=4194304", "kafka.fetch.max.bytes=8388608",
        ])
        wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 30, "/readyz 200")

        bad, good = bad_cases(), good_cases()
        # Interleave: a few good messages between two bad ones.
        msgs, kinds = [], []
        gi = 0
        for bi, (value, reasons, _) in enumerate(bad):
            for _ in range(4):
                if gi < len(good):
                    msgs.append((good[gi][0], b"g%d" % gi))
                    kinds.append(("good", gi))
                    gi += 1
            msgs.append((value, b"b%d" % bi))
            kinds.append(("bad", bi))
        for gi in range(gi, len(good)):
            msgs.append((good[gi][0], b"g%d" % gi))
            kinds.append(("good", gi))
        where = produce_all(brokers, msgs)

        want = dict.fromkeys(REASONS, 0)
        for _, reasons, _ in bad:
            for r in reasons:
                want[r] += 1
        check(all(want[r] > 0 for r in REASONS),
              "reasons not exercised: %r" % [r for r in REASONS if not want[r]])
        weights = [w for _, ws in good for w in ws] + [w for _, _, ws in bad for w in ws]
        n_good, w_good = len(weights), math.fsum(weights)
        n_rejected = sum(want.values())

        wait_for(lambda: metric(d.port, "nmfd_messages_consumed_total") == len(msgs),
                 60, "nmfd to consume all %d messages" % len(msgs))
        m = metrics(d.port)
        for r in REASONS:
            got = m.get(("nmfd_events_rejected_total", '{reason="%s"}' % r))
            check(got == want[r], "rejected{reason=%s} = %r, expected %d" % (r, got, want[r]))
        # Every other label (model_refused: the decoder let through what
        # the model refuses) stays at 0.
        others = {lab: v for (name, lab), v in m.items()
                  if name == "nmfd_events_rejected_total"
                  and lab[len('{reason="'):-2] not in REASONS}
        check(all(v == 0 for v in others.values()), "unexpected rejections: %r" % others)
        check(m[("nmfd_events_folded_total", "")] == n_good,
              "folded %r, expected %d" % (m[("nmfd_events_folded_total", "")], n_good))
        wf = m[("nmfd_weight_folded_total", "")]
        # Weights are multiples of 1/4: their sums are exact in binary64.
        check(abs(wf - w_good) <= 1e-3, "weight folded %r, expected %r" % (wf, w_good))
        check(m[("nmfd_model_events", "")] == n_good, "model events %r"
              % m[("nmfd_model_events", "")])
        # The model's memory by part adds up, and holds at most one profile
        # entry per good event (the gauges are read at most once a second).
        wait_for(lambda: (metric(d.port, "nmfd_model_profile_entries") or 0) > 0, 10,
                 "model memory gauges")
        m = metrics(d.port)
        mem = {lab: v for (name, lab), v in m.items() if name == "nmfd_model_bytes"}
        parts = ['{part="users"}', '{part="items"}', '{part="profiles"}', '{part="total"}']
        check(sorted(mem) == sorted(parts), "model bytes parts %r" % sorted(mem))
        check(all(mem[p] > 0 for p in parts), "model bytes %r" % mem)
        check(mem['{part="total"}'] >= mem['{part="users"}'] + mem['{part="items"}']
              + mem['{part="profiles"}'], "model bytes total %r" % mem)
        entries = m[("nmfd_model_profile_entries", "")]
        check(0 < entries <= n_good, "profile entries %r for %d events" % (entries, n_good))

        # Dead letters: one per bad message, original key and value, the
        # first reason, the source of the original.
        wait_for(lambda: metric(d.port, "nmfd_dead_letters_total") == len(bad), 30,
                 "%d dead letters" % len(bad))
        check(metric(d.port, "nmfd_dead_letter_errors_total") == 0, "dead-letter errors")
        dead = wait_for(lambda: (lambda x: x if len(x) >= len(bad) else None)(
            read_topic_all(brokers, DEAD)), 30, "the dead-letter records")
        check(len(dead) == len(bad), "%d dead-letter records for %d bad messages"
              % (len(dead), len(bad)))
        expect = {}
        for (kind, idx), w in zip(kinds, where):
            if kind == "bad":
                expect["%s/%d/%d" % w] = idx
        seen = set()
        for rec in dead:
            h = {}
            for k, v in rec.headers() or []:
                check(k not in h, "header %s twice" % k)
                h[k] = v.decode() if v is not None else None
            src = h.get("nmfd.source")
            check(src in expect, "dead letter with nmfd.source %r matches no bad message "
                  "(headers %r)" % (src, h))
            check(src not in seen, "two dead letters for %s" % src)
            seen.add(src)
            value, reasons, _ = bad[expect[src]]
            check(h.get("nmfd.reason") == reasons[0], "%s: nmfd.reason %r, expected %r"
                  % (src, h.get("nmfd.reason"), reasons[0]))
            check((rec.value() or b"") == (value or b""),
                  "%s: dead-letter value differs from the original" % src)
            check(rec.key() == b"b%d" % expect[src], "%s: key %r" % (src, rec.key()))

        # The published manifest and the dense snapshot agree, and hold
        # nothing but finite numbers.
        e0 = metric(d.port, "nmfd_epoch")
        wait_for(lambda: metric(d.port, "nmfd_epoch") >= e0 + 2, 30, "two more epochs")
        mans = [msgpack.unpackb(r.value(), raw=False)
                for r in read_topic_all(brokers, "nmf.snapshots", isolation="read_committed")]
        check(mans, "no manifest published")
        last = max(mans, key=lambda x: x["epoch"])
        check(last["events"] == n_good, "manifest events %r, expected %d"
              % (last["events"], n_good))
        check(abs(last["weight_sum"] - w_good) <= 1e-3,
              "manifest weight_sum %r, expected %r" % (last["weight_sum"], w_good))
        check(last["rejected"] == n_rejected, "manifest rejected %r, expected %d"
              % (last["rejected"], n_rejected))
        check(math.isfinite(last["loss"]), "manifest loss %r" % last["loss"])
        status, body = http_get(d.port, "/snapshot")
        check(status == 200, "/snapshot answered %d" % status)
        snap = msgpack.unpackb(body, raw=False)
        k, M, U = snap["k"], len(snap["items"]), len(snap["users"])
        W = np.frombuffer(snap["W"], "<f4").reshape(M, k)
        H = np.frombuffer(snap["H"], "<f4").reshape(U, k)
        A = np.frombuffer(snap["A"], "<f4")
        for name, x in (("W", W), ("H", H), ("A", A)):
            check(np.isfinite(x).all(), "%s holds NaN or Inf" % name)
        check((W >= 0).all() and (H >= 0).all(), "negative entries in W or H")
        check(snap["events"] == n_good, "snapshot events %r" % snap["events"])
        check("a" * 256 in snap["users"], "the 256-byte user id is missing")
        check("12345" in snap["users"] and str(2 ** 64 - 1) in snap["items"],
              "uint ids not kept as their decimal strings")
        check(not any(len(u.encode()) > 256 for u in snap["users"] + snap["items"]),
              "an id over 256 bytes reached the model")

        # Still alive and healthy; the rejection log stayed within its
        # burst (the interval is an hour).
        check(d.poll() is None, "nmfd exited")
        check(http_get(d.port, "/healthz")[0] == 200, "/healthz not 200")
        check(http_get(d.port, "/readyz")[0] == 200, "/readyz not 200")
        log = ps.log("nmfd")
        rej_lines = [l for l in log.splitlines() if "rejected event" in l]
        check(len(rej_lines) == LOG_BURST, "%d rejection log lines for %d rejections, "
              "burst %d" % (len(rej_lines), n_rejected, LOG_BURST))
        check("model refused" not in log, "the model refused an event the decoder took")
        check(stop(d) == 0, "nmfd did not stop cleanly:\n" + ps.log("nmfd")[-3000:])
        log = ps.log("nmfd")
        for mark in ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer"):
            if mark in log:
                at = max(0, log.index(mark) - 200)
                fail("sanitizer report in nmfd's log:\n" + log[at:at + 3000])
    print("bad input: %d bad messages (%d rejections, %d reasons), %d good events "
          "(weight %.6g) in %d messages: counted, dead-lettered, folded exactly; %.1f s"
          % (len(bad), n_rejected, len(REASONS), n_good, w_good, len(msgs),
             time.time() - t_start))


if __name__ == "__main__":
    main()
