#!/usr/bin/python3
"""Integration tests of nmfctl gen, fit and eval: real processes, small
sizes, every run bounded by a timeout.

Needs Debian's /usr/bin/python3 (numpy, scikit-learn, msgpack) and the
environment meson sets: NMFCTL (the path of nmfctl) and
NMFD_DATA (the data sets; default: the repository's data/).
"""

import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

import msgpack
import numpy as np
from sklearn.metrics import adjusted_rand_score

NMFCTL = os.environ.get("NMFCTL", "build/ctl/nmfctl")
DATA = os.environ.get("NMFD_DATA", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "data"))
TIMEOUT = 120


def run(*args, stdin=None, check=None):
    p = subprocess.run([NMFCTL] + list(args), input=stdin,
                       capture_output=True, timeout=TIMEOUT)
    if check is not None and p.returncode != check:
        raise AssertionError("nmfctl %s: exit %d, wanted %d\nstderr: %s" % (
            " ".join(args), p.returncode, check,
            p.stderr.decode(errors="replace")))
    return p


def slurp(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def truth_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def kv(out):
    line = out.decode().strip().splitlines()[-1]
    return dict(t.split("=", 1) for t in line.split() if "=" in t)


def load_snapshot(path):
    with open(path, "rb") as f:
        doc = msgpack.unpackb(f.read(), raw=False)
    k = doc["k"]
    W = np.frombuffer(doc["W"], "<f4").reshape(len(doc["items"]), k)
    H = np.frombuffer(doc["H"], "<f4").reshape(len(doc["users"]), k)
    return doc, W, H


def read_events(text):
    rd = csv.DictReader(io.StringIO(text))
    return [(r["user"], r["item"], float(r["weight"] or 1), r["ts"])
            for r in rd]


def dense_loss(events, doc, W, H):
    """||V - W H||^2 / ||V||^2 on the CSV's items x users, dense, numpy."""
    users = sorted({e[0] for e in events})
    items = sorted({e[1] for e in events})
    ui = {u: j for j, u in enumerate(users)}
    ii = {i: j for j, i in enumerate(items)}
    V = np.zeros((len(items), len(users)))
    for u, i, w, _ in events:
        V[ii[i], ui[u]] += w
    k = doc["k"]
    Wd = np.zeros((len(items), k))
    Hd = np.zeros((k, len(users)))
    for j, i in enumerate(doc["items"]):
        if i in ii:
            Wd[ii[i]] = W[j]
    for j, u in enumerate(doc["users"]):
        if u in ui:
            Hd[:, ui[u]] = H[j]
    R = V - Wd @ Hd
    return float((R * R).sum() / (V * V).sum())


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nmfd-tools-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def gen(self, *args):
        return run("gen", *args, check=0).stdout


class Gen(Base):
    ARGS = ("--users", "300", "--items", "60", "--k", "4", "--events",
            "5000")

    def test_format_and_determinism(self):
        a = self.gen(*self.ARGS, "--seed", "7")
        b = self.gen(*self.ARGS, "--seed", "7")
        c = self.gen(*self.ARGS, "--seed", "8")
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)
        lines = a.decode().splitlines()
        self.assertEqual(lines[0], "user,item,weight,ts")
        self.assertEqual(len(lines), 5001)
        ts = [int(l.split(",")[3]) for l in lines[1:]]
        self.assertTrue(all(x < y for x, y in zip(ts, ts[1:])))
        self.assertGreaterEqual(ts[0], 10 ** 11, "ts in milliseconds")
        users = {l.split(",")[0] for l in lines[1:]}
        items = {l.split(",")[1] for l in lines[1:]}
        self.assertLessEqual(len(items), 60)
        self.assertLessEqual(len(users), 300)
        self.assertTrue(all(l.split(",")[2] == "1" for l in lines[1:]))

    def test_truth_and_bundles(self):
        truth = self.path("truth.csv")
        out = self.gen(*self.ARGS, "--truth", truth, "--noise", "0")
        seg = {r["user"]: int(r["segment"])
               for r in truth_rows(truth)}
        ev = read_events(out.decode())
        self.assertEqual(set(seg), {e[0] for e in ev})
        self.assertEqual(set(seg.values()), {0, 1, 2, 3})
        # Without noise every item belongs to exactly one segment.
        owner = {}
        for u, i, _, _ in ev:
            self.assertEqual(owner.setdefault(i, seg[u]), seg[u])

    def test_drift(self):
        truth = self.path("truth.csv")
        out = self.gen("--users", "2000", "--items", "40", "--k", "4",
                       "--events", "4000", "--drift", "1000", "--truth",
                       truth, "--noise", "0")
        rows = truth_rows(truth)
        moved = [r for r in rows if r["segment"] != r["after"]]
        self.assertTrue(0.12 < len(moved) / len(rows) < 0.28)
        ev = read_events(out.decode())
        switch = int(moved[0]["switch_ts"])
        self.assertEqual(switch, int(ev[1000][3]))
        for r in rows:
            if r["segment"] == r["after"]:
                self.assertEqual(r["switch_ts"], "")
        # Before the drift the stream equals the stream without drift.
        plain = self.gen("--users", "2000", "--items", "40", "--k", "4",
                         "--events", "4000", "--noise", "0")
        self.assertEqual(out.splitlines()[:1001], plain.splitlines()[:1001])
        self.assertNotEqual(out, plain)

    def test_bad_usage(self):
        cases = [
            (), ("--users", "10"),
            ("--users", "10", "--items", "10", "--k", "2"),
            ("--users", "0", "--items", "10", "--k", "2", "--events", "1"),
            ("--users", "x", "--items", "10", "--k", "2", "--events", "1"),
            ("--users", "10", "--items", "3", "--k", "4", "--events", "1"),
            ("--users", "10", "--items", "10", "--k", "2", "--events", "-1"),
            ("--users", "10", "--items", "10", "--k", "2", "--events", "5",
             "--drift", "6"),
            ("--users", "10", "--items", "10", "--k", "2", "--events", "5",
             "--noise", "2"),
            ("--users", "10", "--items", "10", "--k", "2", "--events", "5",
             "--bogus"),
            ("--users", "10", "--items", "10", "--k", "2", "--events", "5",
             "extra"),
            ("--users",),
        ]
        for args in cases:
            p = run("gen", *args)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(b"nmfctl gen: ", p.stderr, args)
            self.assertEqual(p.stdout, b"", args)

    def test_help(self):
        p = run("gen", "--help", check=0)
        self.assertIn(b"--drift", p.stdout)

    def test_stdout_full(self):
        if not os.path.exists("/dev/full"):
            self.skipTest("no /dev/full")
        with open("/dev/full", "wb") as full:
            p = subprocess.run([NMFCTL, "gen", *self.ARGS], stdout=full,
                               stderr=subprocess.PIPE, timeout=TIMEOUT)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"writing the events", p.stderr)

    def test_truth_unwritable(self):
        p = run("gen", *self.ARGS, "--truth", "/nonexistent/dir/t.csv")
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"/nonexistent/dir/t.csv", p.stderr)


class FitEval(Base):
    def fit(self, events, out, *extra, check=0):
        p = run("fit", "--events", events, "--out", out, *extra,
                check=check)
        return p

    def test_recovers_planted_segments(self):
        truth = self.path("truth.csv")
        ev = self.write("ev.csv", self.gen(
            "--users", "1500", "--items", "240", "--k", "6", "--events",
            "60000", "--seed", "3", "--truth", truth).decode())
        snap = self.path("s.snap")
        st = kv(self.fit(ev, snap, "--set", "model.k=6").stdout)
        self.assertEqual(int(st["events"]), 60000)
        self.assertEqual(int(st["rejected"]), 0)
        doc, W, H = load_snapshot(snap)
        seg = {r["user"]: int(r["segment"])
               for r in truth_rows(truth)}
        counts = {}
        for u, _, _, _ in read_events(slurp(ev)):
            counts[u] = counts.get(u, 0) + 1
        # Users with a handful of events: one noise event among two can
        # legitimately mislead, so score those with enough evidence.
        pred, want = [], []
        for j, u in enumerate(doc["users"]):
            if counts[u] >= 5:
                pred.append(int(np.argmax(H[j])))
                want.append(seg[u])
        self.assertGreater(len(pred), 500)
        ari = adjusted_rand_score(want, pred)
        print("ARI %.4f over %d users with >= 5 events" % (ari, len(pred)),
              file=sys.stderr)
        self.assertGreaterEqual(ari, 0.95, "ARI %.4f" % ari)
        # And overall, with every user.
        allp = [int(np.argmax(H[j])) for j in range(len(doc["users"]))]
        allw = [seg[u] for u in doc["users"]]
        self.assertGreaterEqual(adjusted_rand_score(allw, allp), 0.8)
        ev_st = kv(run("eval", "--snapshot", snap, "--events", ev,
                       check=0).stdout)
        self.assertLess(float(ev_st["loss"]), 0.9)

    def test_deterministic_and_ts(self):
        ev = self.write("ev.csv", self.gen(
            "--users", "400", "--items", "80", "--k", "4", "--events",
            "8000").decode())
        a, b = self.path("a.snap"), self.path("b.snap")
        self.fit(ev, a, "--set", "model.k=4")
        self.fit(ev, b, "--set", "model.k=4")
        self.assertEqual(slurp(a, "rb"), slurp(b, "rb"))
        doc, _, _ = load_snapshot(a)
        last_ts = int(slurp(ev).splitlines()[-1].split(",")[3])
        self.assertEqual(doc["ts"], last_ts)
        self.assertEqual(doc["epoch"], 0)
        self.assertEqual(doc["k"], 4)
        self.assertEqual(doc["events"], 8000)
        # stdin gives the same model.
        c = self.path("c.snap")
        with open(ev, "rb") as f:
            p = subprocess.run([NMFCTL, "fit", "--events", "-", "--out", c,
                                "--set", "model.k=4"], stdin=f,
                               capture_output=True, timeout=TIMEOUT)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(slurp(a, "rb"), slurp(c, "rb"))

    def test_eval_matches_numpy(self):
        text = self.gen("--users", "200", "--items", "50", "--k", "3",
                        "--events", "3000", "--seed", "5").decode()
        ev = self.write("ev.csv", text)
        snap = self.path("s.snap")
        self.fit(ev, snap, "--set", "model.k=3")
        st = kv(run("eval", "--snapshot", snap, "--events", ev,
                    check=0).stdout)
        doc, W, H = load_snapshot(snap)
        want = dense_loss(read_events(text), doc, W, H)
        self.assertAlmostEqual(float(st["loss"]), want, delta=1e-9 + 1e-7 *
                               want)
        self.assertEqual(int(st["events"]), 3000)
        self.assertEqual(int(st["users_missing"]), 0)
        # Repeated pairs are summed, new users and items count with zero
        # factors, weights are honoured.
        extra = ("newuser,i0,2,1\nnewuser,newitem,1.5,2\nu0,newitem,3,3\n"
                 "u0,i1,2.5,4\n")
        ev2 = self.write("ev2.csv", text + extra)
        st = kv(run("eval", "--snapshot", snap, "--events", ev2,
                    check=0).stdout)
        want = dense_loss(read_events(text + extra), doc, W, H)
        self.assertAlmostEqual(float(st["loss"]), want, delta=1e-9 + 1e-7 *
                               want)
        self.assertEqual(int(st["users_missing"]), 1)
        self.assertEqual(int(st["items_missing"]), 1)

    def test_perfect_fit_near_zero(self):
        # Two users, two disjoint items: rank 2 fits exactly.
        ev = self.write("ev.csv", "user,item,weight,ts\na,x,2,1\nb,y,3,2\n"
                        "a,x,1,3\n")
        snap = self.path("s.snap")
        self.fit(ev, snap, "--set", "model.k=2", "--set",
                 "model.warmup_events=0")
        st = kv(run("eval", "--snapshot", snap, "--events", ev,
                    check=0).stdout)
        self.assertLess(abs(float(st["loss"])), 1e-6)

    def test_rejected_rows(self):
        ev = self.write("ev.csv", "user,item,weight,ts\n"
                        "a,x,1,1\n"
                        ",x,1,2\n"
                        "b,x,abc,3\n"
                        "b,y,-1,4\n"
                        "b,y,1\n"
                        "c,z,1,zz\n"
                        "d,w,1,5\n")
        snap = self.path("s.snap")
        p = self.fit(ev, snap, "--set", "model.k=2")
        st = kv(p.stdout)
        self.assertEqual(int(st["events"]), 2)
        self.assertEqual(int(st["rejected"]), 5)
        err = p.stderr.decode()
        for line in (3, 4, 5, 6, 7):
            self.assertIn("%s:%d: " % (ev, line), err)
        doc, _, _ = load_snapshot(snap)
        self.assertEqual(sorted(doc["users"]), ["a", "d"])
        st = kv(run("eval", "--snapshot", snap, "--events", ev,
                    check=0).stdout)
        self.assertEqual(int(st["rejected"]), 5)
        self.assertEqual(int(st["events"]), 2)

    def test_set_keys_like_the_daemon(self):
        ev = self.write("ev.csv", self.gen(
            "--users", "100", "--items", "30", "--k", "3", "--events",
            "1000").decode())
        snap = self.path("s.snap")
        self.fit(ev, snap, "--set", "model.k=5", "--set",
                 "model.half_life=1h", "--set", "model.seed=9")
        doc, W, H = load_snapshot(snap)
        self.assertEqual(doc["k"], 5)
        self.assertEqual(W.shape[1], 5)

    def test_ttl_forgets_on_event_time(self):
        # a and b are last seen at 10 s, c keeps coming until 200 s.
        rows = ["a,x,1,1", "b,y,1,10"] + ["c,%s,1,%d" % ("xy"[t % 2], t)
                                          for t in range(20, 201, 5)]
        ev = self.write("ev.csv", "user,item,weight,ts\n" +
                        "\n".join(rows) + "\n")
        snap = self.path("s.snap")
        st = kv(self.fit(ev, snap, "--set", "model.k=2", "--set",
                         "model.ttl=60s").stdout)
        doc, _, _ = load_snapshot(snap)
        self.assertEqual(doc["users"], ["c"])
        self.assertEqual(int(st["users"]), 1)
        self.assertGreaterEqual(int(st["expired"]), 2)
        st = kv(self.fit(ev, snap, "--set", "model.k=2").stdout)
        doc, _, _ = load_snapshot(snap)
        self.assertEqual(sorted(doc["users"]), ["a", "b", "c"])
        self.assertEqual(int(st["expired"]), 0)

    def test_refine_rounds_bound(self):
        ev = self.write("ev.csv", self.gen(
            "--users", "300", "--items", "60", "--k", "4", "--events",
            "5000").decode())
        snap = self.path("s.snap")
        st = kv(self.fit(ev, snap, "--set", "model.k=4", "--refine-rounds",
                         "0").stdout)
        self.assertEqual(int(st["refine_rounds"]), 0)
        st1 = kv(self.fit(ev, snap, "--set", "model.k=4", "--refine-rounds",
                          "3").stdout)
        self.assertLessEqual(int(st1["refine_rounds"]), 3)
        st2 = kv(self.fit(ev, snap, "--set", "model.k=4").stdout)
        e0 = float(kv(run("eval", "--snapshot", snap, "--events", ev,
                          check=0).stdout)["loss"])
        self.assertGreater(e0, 0)
        self.assertLessEqual(float(st2["loss"]), float(st["loss"]) + 1e-6)

    def test_refine_work_bound(self):
        # A stream long enough to warm up in the pass: by default the
        # refinement stops on its work bound, at a quarter of the pass's
        # work or a round past it, below the pass's loss; unbounded (0)
        # it runs to convergence, lower still; a larger bound lies between.
        ev = self.write("ev.csv", self.gen(
            "--users", "2000", "--items", "200", "--k", "6", "--events",
            "30000", "--noise", "0.3").decode())
        snap = self.path("s.snap")
        sets = ("--set", "model.k=6")
        p0 = kv(self.fit(ev, snap, *sets, "--refine-rounds", "0").stdout)
        self.assertEqual(p0["refine_stop"], "rounds")
        self.assertGreater(int(p0["fold_refreshes"]), 0)
        d = kv(self.fit(ev, snap, *sets).stdout)
        self.assertEqual(d["refine_stop"], "work")
        self.assertEqual(d["converged"], "no")
        self.assertGreaterEqual(float(d["refine_work"]), 0.25)
        self.assertLess(float(d["refine_work"]), 1.0)
        loss_d = float(kv(run("eval", "--snapshot", snap, "--events", ev,
                              check=0).stdout)["loss"])
        self.assertLess(loss_d, float(p0["loss"]))
        u = kv(self.fit(ev, snap, *sets, "--refine-work", "0").stdout)
        self.assertEqual(u["refine_stop"], "converged")
        self.assertEqual(u["converged"], "yes")
        self.assertGreater(float(u["refine_work"]), float(d["refine_work"]))
        self.assertLess(float(u["loss"]), loss_d)
        m = kv(self.fit(ev, snap, *sets, "--refine-work", "2").stdout)
        self.assertIn(m["refine_stop"], ("work", "converged"))
        self.assertLessEqual(float(m["loss"]), loss_d + 1e-9)
        self.assertGreaterEqual(float(m["loss"]), float(u["loss"]) - 1e-9)
        # The bound counts operations, not time: the same bytes again.
        with open(snap, "rb") as f:
            first = f.read()
        self.fit(ev, snap, *sets, "--refine-work", "2")
        with open(snap, "rb") as f:
            self.assertEqual(f.read(), first)

    def test_refine_work_short_stream(self):
        # Too short to warm up in the pass (W still its random start): the
        # refinement seeds W and always gets its first 6 rounds, however
        # small the bound.
        ev = self.write("ev.csv", self.gen(
            "--users", "300", "--items", "60", "--k", "4", "--events",
            "5000").decode())
        snap = self.path("s.snap")
        p0 = kv(self.fit(ev, snap, "--set", "model.k=4", "--refine-rounds",
                         "0").stdout)
        self.assertEqual(int(p0["fold_refreshes"]), 0)
        st = kv(self.fit(ev, snap, "--set", "model.k=4", "--refine-work",
                         "1e-9").stdout)
        self.assertGreaterEqual(int(st["refine_rounds"]), 6)
        self.assertLess(float(st["loss"]), 0.5 * float(p0["loss"]))

    def test_fit_bad_usage(self):
        ev = self.write("ev.csv", "user,item,weight,ts\na,x,1,1\n")
        out = self.path("s.snap")
        cases = [
            (),
            ("--events", ev),
            ("--out", out),
            ("--events", ev, "--out", out, "--bogus"),
            ("--events", ev, "--out", out, "extra"),
            ("--events", ev, "--out", out, "--set", "kafka.x=1"),
            ("--events", ev, "--out", out, "--set", "snapshot.interval=1s"),
            ("--events", ev, "--out", out, "--set", "model.k=abc"),
            ("--events", ev, "--out", out, "--set", "model.k=0"),
            ("--events", ev, "--out", out, "--set", "model.nokey=1"),
            ("--events", ev, "--out", out, "--set", "model.k"),
            ("--events", ev, "--out", out, "--refine-rounds", "x"),
            ("--events", ev, "--out", out, "--refine-rounds", "-1"),
            ("--events", ev, "--out", out, "--refine-work", "x"),
            ("--events", ev, "--out", out, "--refine-work", "-0.5"),
            ("--events", ev, "--out", out, "--refine-work", "nan"),
            ("--events", ev, "--out", out, "--refine-work", "inf"),
            ("--events", ev, "--out", out, "--refine-work", ""),
            ("--events", ev, "--out", out, "--refine-work"),
            ("--events", ev, "--out"),
            ("--events", ev, "--out", "-"),
        ]
        for args in cases:
            p = run("fit", *args)
            self.assertEqual(p.returncode, 2, (args, p.stderr))
            self.assertIn(b"nmfctl fit: ", p.stderr, args)
            self.assertFalse(os.path.exists(out), args)

    def test_fit_runtime_failures(self):
        out = self.path("s.snap")
        p = run("fit", "--events", self.path("missing.csv"), "--out", out)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"missing.csv", p.stderr)
        noheader = self.write("nh.csv", "a,x,1,1\n")
        p = run("fit", "--events", noheader, "--out", out)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"nh.csv:1: ", p.stderr)
        ev = self.write("ev.csv", "user,item,weight,ts\na,x,1,1\n")
        p = run("fit", "--events", ev, "--out", "/nonexistent/dir/s.snap")
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"/nonexistent/dir/s.snap", p.stderr)

    def test_eval_bad_usage_and_failures(self):
        ev = self.write("ev.csv", "user,item,weight,ts\na,x,1,1\n")
        snap = self.path("s.snap")
        self.fit(ev, snap, "--set", "model.k=2")
        for args in [(), ("--snapshot", snap), ("--events", ev),
                     ("--snapshot", snap, "--events", ev, "--bogus"),
                     ("--snapshot", snap, "--events", ev, "x"),
                     ("--snapshot",)]:
            p = run("eval", *args)
            self.assertEqual(p.returncode, 2, args)
            self.assertIn(b"nmfctl eval: ", p.stderr, args)
        bad = self.write("bad.snap", "not msgpack at all")
        p = run("eval", "--snapshot", bad, "--events", ev)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"bad.snap", p.stderr)
        p = run("eval", "--snapshot", self.path("none.snap"), "--events", ev)
        self.assertEqual(p.returncode, 1)
        p = run("eval", "--snapshot", snap, "--events", self.path("no.csv"))
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"no.csv", p.stderr)

    def rescaled(self, name, text, step_ms):
        """The events of text, in the same order, ending at the same time
        (the snapshot's ts is the last event's), step_ms apart."""
        lines = text.splitlines()
        n = len(lines) - 1
        end = 10 ** 13  # milliseconds (>= 1e11) for every step below
        out = [lines[0]]
        for j, line in enumerate(lines[1:]):
            u, i, w, _ = line.split(",")
            out.append("%s,%s,%s,%d" % (u, i, w, end - (n - 1 - j) * step_ms))
        return self.write(name, "\n".join(out) + "\n")

    def test_same_model_whatever_the_timestamps(self):
        # W is refreshed by work, never by the spacing of the timestamps:
        # the same events a millisecond or a day apart (no decay) give the
        # same bytes, and the same refreshes during the pass.
        text = self.gen("--users", "2000", "--items", "300", "--k", "6",
                        "--events", "40000", "--seed", "5").decode()
        ms = self.rescaled("ms.csv", text, 1)
        day = self.rescaled("day.csv", text, 86400000)
        a, b = self.path("a.snap"), self.path("b.snap")
        sets = ("--set", "model.k=6", "--set", "model.half_life=0")
        sa = kv(self.fit(ms, a, *sets, "--refine-rounds", "20").stdout)
        sb = kv(self.fit(day, b, *sets, "--refine-rounds", "20").stdout)
        self.assertEqual(slurp(a, "rb"), slurp(b, "rb"))
        self.assertEqual(sa["fold_refreshes"], sb["fold_refreshes"])
        self.assertEqual(sa["loss"], sb["loss"])
        # The warm-up's rounds and then refreshes by work, many more than
        # the refresh_events bound alone would give (none in 40 k).
        self.assertGreater(int(sa["fold_refreshes"]), 40)

    def test_refreshes_follow_work(self):
        # The same number of events; with ten times the items a refresh
        # costs about ten times more, so the pass refreshes less often.
        # Timestamps play no part (all equal here).
        small = self.write("small.csv", self.gen(
            "--users", "2000", "--items", "200", "--k", "6", "--events",
            "40000", "--seed", "6").decode())
        big = self.write("big.csv", self.gen(
            "--users", "2000", "--items", "2000", "--k", "6", "--events",
            "40000", "--seed", "6").decode())
        snap = self.path("s.snap")
        args = ("--set", "model.k=6", "--refine-rounds", "0")
        fs = int(kv(self.fit(small, snap, *args).stdout)["fold_refreshes"])
        fb = int(kv(self.fit(big, snap, *args).stdout)["fold_refreshes"])
        self.assertGreater(fs, 2 * fb, "%d vs %d" % (fs, fb))
        # refresh_events stays an upper bound on the gap.
        fe = int(kv(self.fit(big, snap, *args, "--set",
                             "model.refresh_events=1000").stdout)
                 ["fold_refreshes"])
        self.assertGreaterEqual(fe, 30)

    def test_progress_only_on_a_terminal(self):
        ev = self.write("ev.csv", self.gen(
            "--users", "20000", "--items", "2000", "--k", "8", "--events",
            "300000").decode())
        snap = self.path("s.snap")
        # Not a terminal: stderr stays empty.
        p = self.fit(ev, snap, "--set", "model.k=8", "--refine-rounds", "0")
        self.assertEqual(p.stderr, b"")
        # On a terminal (a pty as stderr): the line is drawn and erased.
        # The events come through a pipe with a pause in the middle, longer
        # than the line's least interval, so that a fast machine still
        # draws it.
        import pty
        import threading
        master, slave = pty.openpty()
        data = open(ev, "rb").read()
        half = data.index(b"\n", len(data) // 2) + 1

        def feed(pipe):
            pipe.write(data[:half])
            pipe.flush()
            time.sleep(1.0)
            pipe.write(data[half:])
            pipe.close()

        try:
            q = subprocess.Popen([NMFCTL, "fit", "--events", "-", "--out",
                                  snap, "--set", "model.k=8",
                                  "--refine-rounds", "0"],
                                 stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=slave)
            os.close(slave)
            slave = -1
            feeder = threading.Thread(target=feed, args=(q.stdin,))
            feeder.start()
            got = b""
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the pty
                    break
                if not chunk:
                    break
                got += chunk
            feeder.join()
            out = q.stdout.read()
            q.wait(timeout=TIMEOUT)
        finally:
            os.close(master)
            if slave >= 0:
                os.close(slave)
        self.assertEqual(q.returncode, 0)
        self.assertIn(b"fit: ", got)
        # From a pipe the size is unknown: a count, a rate and the time
        # so far, no share or time left (test_progress has those).
        self.assertRegex(got, rb"fit: [0-9.]+[kM]? events, [0-9.]+[kM]?/s, "
                              rb"[0-9]+:[0-9]+")
        self.assertTrue(got.endswith(b"\r\x1b[K"), got[-40:])
        self.assertIn(b"events=300000", out)

    def test_help(self):
        for cmd in ("fit", "eval"):
            p = run(cmd, "--help", check=0)
            self.assertIn(b"below 1e11 are seconds", p.stdout)

    def test_real_data_set(self):
        ev = os.path.join(DATA, "bayesm_scotch.csv")
        snap = self.path("s.snap")
        st = kv(self.fit(ev, snap).stdout)
        self.assertEqual(int(st["events"]), 5085)
        self.assertEqual(int(st["users"]), 2218)
        self.assertEqual(int(st["items"]), 21)
        e = kv(run("eval", "--snapshot", snap, "--events", ev,
                   check=0).stdout)
        self.assertLess(float(e["loss"]), 0.2)


if __name__ == "__main__":
    if not os.access(NMFCTL, os.X_OK):
        print("no nmfctl at %s" % NMFCTL, file=sys.stderr)
        sys.exit(1)
    unittest.main(verbosity=2)
