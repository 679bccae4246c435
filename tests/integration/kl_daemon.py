#!/usr/bin/python3
"""model.loss = kl in the daemon, as an operator meets it: a planted
stream of counts folds; the loss the manifest, the dense snapshot and
/metrics report is the divergence D(V || W H) per unit of weight of the
published W and H (recomputed here from the snapshot and the events,
within 1%); the model map says loss = kl; a clean stop checkpoints and
a restart resumes from it with nothing folded again and the same loss;
the checkpoint is refused under the other loss; and the combinations kl
cannot run (robust = l21, alpha_h, alpha_w, holdout) stop the start with exit 2
and the place that asked for them."""
import os
import subprocess
import sys

import msgpack

sys.path.insert(0, os.path.dirname(__file__))
from harness import (BIN, KAFKA_TEST_SETS, Procs, check, converged,  # noqa: E402
                     folded_all, gen_planted, http_get, metric, read_events,
                     read_topic_all, stop, true_rel_kl, wait_for)

K = 5
USERS, ITEMS, EVENTS = 600, 150, 20000
TOL = 0.01


def snapshot(port):
    status, body = http_get(port, "/snapshot", timeout=10)
    check(status == 200, "/snapshot answered %d" % status)
    return msgpack.unpackb(body, raw=False)


def agree(what, reported, truth):
    rel = abs(reported - truth) / truth
    print("%s: reported %.6g, recomputed %.6g (%.3f%% apart)"
          % (what, reported, truth, 100 * rel))
    check(rel <= TOL, "%s: reported %.6g is %.2f%% from the recomputed %.6g"
          % (what, reported, 100 * rel, truth))


def refusals(tmp):
    nmfd = os.path.join(BIN, "nmfd")
    path = os.path.join(tmp, "kl.conf")
    with open(path, "w") as f:
        f.write("[model]\nk = 4\nloss = kl\nrobust = l21\n")
    r = subprocess.run([nmfd, "--config", path, "--check-config"],
                       capture_output=True, timeout=30)
    err = r.stderr.decode()
    check(r.returncode == 2, "kl + l21: exit %d, not 2: %s" % (r.returncode, err))
    check("%s:3: model.loss = kl: cannot be used with model.robust" % path in err,
          "kl + l21: %s" % err)
    for key in ("alpha_h", "alpha_w", "holdout"):
        r = subprocess.run([nmfd, "--set", "model.%s=0.1" % key, "--set",
                            "model.loss=kl", "--check-config"],
                           capture_output=True, timeout=30)
        err = r.stderr.decode()
        check(r.returncode == 2 and
              "--set: model.loss = kl: cannot be used with model.%s" % key in err,
              "kl + %s: exit %d: %s" % (key, r.returncode, err))


def main():
    with Procs() as ps:
        refusals(ps.tmp)
        events_path, _ = gen_planted(ps, USERS, ITEMS, K, EVENTS, seed=18)
        events = read_events(events_path)
        brokers = ps.broker(partitions=2, topics="nmf.events")
        state = os.path.join(ps.tmp, "state")
        sets = ["model.k=%d" % K, "model.loss=kl", "snapshot.interval=1s"]
        d = ps.nmfd(brokers, sets=sets, state=state, name="first")
        wait_for(lambda: http_get(d.port, "/readyz")[0] == 200, 30, "/readyz 200")
        ps.produce(brokers, events_path)
        wait_for(lambda: folded_all(d.port, EVENTS), 120, "every event folded")
        wait_for(lambda: converged(d.port), 120, "refinement to converge")
        e0 = metric(d.port, "nmfd_epoch")
        wait_for(lambda: metric(d.port, "nmfd_epoch") >= e0 + 2, 30, "two epochs")
        doc = snapshot(d.port)
        check(doc["model"]["loss"] == "kl", "model map %r" % doc["model"])
        truth = true_rel_kl(events, doc)
        agree("snapshot", doc["loss"], truth)
        agree("nmfd_relative_loss", metric(d.port, "nmfd_relative_loss"), truth)
        mans = [msgpack.unpackb(r.value(), raw=False)
                for r in read_topic_all(brokers, "nmf.snapshots",
                                        isolation="read_committed")]
        last = max(mans, key=lambda x: x["epoch"])
        check(last["model"]["loss"] == "kl", "manifest model %r" % last["model"])
        check(last["events"] == EVENTS, "manifest events %r" % last["events"])
        agree("manifest", last["loss"], truth)
        check(stop(d) == 0, "clean stop:\n" + ps.log("first"))

        # A restart resumes from the checkpoint: nothing folded again, the
        # same model and loss.
        d = ps.nmfd(brokers, sets=sets, state=state, name="second")
        wait_for(lambda: metric(d.port, "nmfd_model_events") == EVENTS, 30,
                 "state loaded")
        wait_for(lambda: metric(d.port, "nmfd_ready") == 1, 30, "ready")
        check(metric(d.port, "nmfd_events_folded_total") == 0,
              "events folded again after a restart")
        again = snapshot(d.port)
        check(again["model"]["loss"] == "kl", "model map after restart %r"
              % again["model"])
        agree("after restart", again["loss"], true_rel_kl(events, again))
        check(abs(again["loss"] - doc["loss"]) <= 0.01 * doc["loss"],
              "loss %r after the restart, %r before" % (again["loss"], doc["loss"]))
        check(stop(d) == 0, "clean stop:\n" + ps.log("second"))

        # The KL checkpoint under the Frobenius loss: refused, exit 1.
        args = [os.path.join(BIN, "nmfd"), "--set", "kafka.bootstrap.servers=" + brokers,
                "--set", "checkpoint.dir=" + state, "--set", "http.listen=127.0.0.1:0",
                "--set", "model.k=%d" % K]
        for s in KAFKA_TEST_SETS:
            args += ["--set", s]
        r = subprocess.run(args, capture_output=True, timeout=60)
        err = r.stderr.decode()
        check(r.returncode == 1 and "checkpoint has model.loss=kl but the "
              "configuration says frobenius" in err,
              "frobenius on a kl checkpoint: exit %d: %s" % (r.returncode, err))
    print("ok")


if __name__ == "__main__":
    main()
