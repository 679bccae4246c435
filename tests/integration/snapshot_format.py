#!/usr/bin/python3
"""The dense snapshot read exactly as docs/snapshot-format.md shows.

Writes a snapshot with `nmfctl fit` on a small generated stream, then runs
the Python block of the document on it (the block itself, taken from the
file) and checks what it read against the contract: keys and types,
shapes, non-negativity, unit columns of W, A = H^T H without decay, the
ids and the counts against the CSV.

Needs Debian's /usr/bin/python3 (msgpack, numpy) and the environment meson
sets: NMFCTL (the path of nmfctl) and NMFD_SRC (the source tree).
"""

import csv
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import msgpack
import numpy as np

NMFCTL = os.environ.get("NMFCTL", "build/ctl/nmfctl")
SRC = os.environ.get(
    "NMFD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
DOC = os.path.join(SRC, "docs", "snapshot-format.md")
TIMEOUT = 120
K = 4

SNAPSHOT_KEYS = {"v", "epoch", "ts", "k", "events", "weight_sum", "loss",
                 "users", "items", "W", "H", "A", "model"}
MODEL_KEYS = {"k", "half_life", "alpha_h", "alpha_w", "l1_ratio",
              "profile_max", "refresh_events", "ttl", "seed",
              "warmup_events", "nnls_sweeps", "nnls_tol", "hals_sweeps",
              "refine_tol", "robust", "loss"}


def nmfctl(*args, stdin=None):
    p = subprocess.run([NMFCTL] + list(args), input=stdin,
                       capture_output=True, timeout=TIMEOUT)
    if p.returncode != 0:
        raise AssertionError("nmfctl %s: exit %d\n%s" % (
            " ".join(args), p.returncode, p.stderr.decode(errors="replace")))
    return p.stdout


def doc_reader():
    """The first ```python block of the document."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"```python\n(.*?)```", text, re.S)
    if not m:
        raise AssertionError("no python block in " + DOC)
    code = m.group(1)
    if 'path = "snapshot.msgpack"' not in code:
        raise AssertionError("the reader no longer names its path")
    return code


class SnapshotFormat(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="nmfd-snapfmt-")
        cls.csv = os.path.join(cls.tmp, "events.csv")
        cls.snap = os.path.join(cls.tmp, "snapshot.msgpack")
        out = nmfctl("gen", "--users", "300", "--items", "80", "--k", str(K),
                     "--events", "6000", "--seed", "5")
        with open(cls.csv, "wb") as f:
            f.write(out)
        nmfctl("fit", "--events", cls.csv, "--set", "model.k=%d" % K,
               "--out", cls.snap)
        cls.ns = {}
        code = doc_reader().replace('path = "snapshot.msgpack"',
                                    "path = %r" % cls.snap)
        exec(compile(code, DOC, "exec"), cls.ns)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_keys_and_types(self):
        doc = self.ns["doc"]
        self.assertEqual(set(doc), SNAPSHOT_KEYS)
        self.assertEqual(doc["v"], 1)
        for key in ("epoch", "ts", "k", "events"):
            self.assertIsInstance(doc[key], int, key)
        for key in ("weight_sum", "loss"):
            self.assertIsInstance(doc[key], float, key)
        for key in ("W", "H", "A"):
            self.assertIsInstance(doc[key], bytes, key)
        self.assertTrue(all(isinstance(u, str) for u in doc["users"]))
        self.assertTrue(all(isinstance(i, str) for i in doc["items"]))
        self.assertLessEqual(MODEL_KEYS, set(doc["model"]))
        self.assertLessEqual(set(doc["model"]), MODEL_KEYS | {"refresh_interval"})
        self.assertEqual(doc["model"]["k"], K)
        self.assertEqual(doc["model"]["robust"], "none")
        self.assertEqual(doc["model"]["loss"], "frobenius")
        self.assertEqual(self.ns["K"], K)

    def test_shapes_and_values(self):
        ns = self.ns
        U, M = ns["U"], ns["M"]
        W, H, A = ns["W"], ns["H"], ns["A"]
        self.assertEqual(W.shape, (M, K))
        self.assertEqual(H.shape, (U, K))
        self.assertEqual(A.shape, (K, K))
        for X in (W, H, A):
            self.assertEqual(X.dtype, np.float32)
            self.assertTrue(np.isfinite(X).all())
        self.assertTrue((W >= 0).all() and (H >= 0).all())
        norms = np.linalg.norm(W, axis=0)
        for n in norms:
            self.assertTrue(abs(n - 1) < 1e-4 or n == 0, norms)
        # No decay: A is H^T H.
        HtH = H.astype(np.float64).T @ H.astype(np.float64)
        np.testing.assert_allclose(A, HtH, rtol=1e-3,
                                   atol=1e-4 * np.abs(HtH).max())
        self.assertEqual(ns["segment"].shape, (U,))
        self.assertTrue(((ns["share"] >= 0) & (ns["share"] <= 1)).all())
        self.assertEqual(len(ns["top_items"]), K)
        self.assertEqual(ns["V_hat"].shape, (M, U))

    def test_ids_and_counts_match_the_events(self):
        ns, doc = self.ns, self.ns["doc"]
        with open(self.csv, newline="") as f:
            rows = list(csv.DictReader(f))
        users = {r["user"] for r in rows}
        items = {r["item"] for r in rows}
        self.assertEqual(len(set(ns["users"])), ns["U"])
        self.assertEqual(len(set(ns["items"])), ns["M"])
        self.assertEqual(set(ns["users"]), users)
        self.assertEqual(set(ns["items"]), items)
        self.assertEqual(doc["events"], len(rows))
        total = sum(float(r["weight"] or 1) for r in rows)
        self.assertAlmostEqual(doc["weight_sum"], total,
                               delta=1e-9 * max(1.0, total))
        self.assertGreaterEqual(doc["loss"], 0.0)
        self.assertLess(doc["loss"], 1.0)

    def test_loss_is_the_relative_loss_of_the_factors(self):
        ns = self.ns
        with open(self.csv, newline="") as f:
            rows = list(csv.DictReader(f))
        ui = {u: n for n, u in enumerate(ns["users"])}
        ii = {i: n for n, i in enumerate(ns["items"])}
        V = np.zeros((ns["M"], ns["U"]))
        for r in rows:
            V[ii[r["item"]], ui[r["user"]]] += float(r["weight"] or 1)
        rel = ((V - ns["V_hat"]) ** 2).sum() / (V ** 2).sum()
        self.assertAlmostEqual(ns["doc"]["loss"], rel, delta=0.01 + 0.05 * rel)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
