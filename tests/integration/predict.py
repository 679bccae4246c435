#!/usr/bin/python3
"""The model as a predictor, through the real binaries: nmfd with
model.holdout reports holdout_loss (metric, manifest) and keeps it across
a restart from its checkpoint, refuses a checkpoint whose share differs;
GET /users/ID/recommend answers the top n outside the profile, strongest
first, and 404/400 to every bad request; nmfctl recommend agrees with a
numpy computation from the snapshot and refuses every bad argument."""
import http.client
import json
import os
import subprocess
import sys

import msgpack
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (Procs, check, folded_all, http_get,  # noqa: E402
                     metric, read_topic_all, stop, wait_for)
from http_common import NMFCTL, NMFD, gen_events, start_embedded  # noqa: E402

EVENTS = 6000


def run(*args):
    return subprocess.run(list(args), capture_output=True, timeout=120)


def get_json(port, path):
    status, body = http_get(port, path)
    check(status == 200, "%s answered %d: %r" % (path, status, body))
    return json.loads(body)


def daemon_side(ps):
    events = gen_events(ps, events=EVENTS)
    # No idle refinement and no clock refresh: once the events are in,
    # the model stands still, so its score can be compared across a
    # restart.
    sets = ["model.k=4", "model.holdout=0.2", "snapshot.interval=300ms",
            "model.warmup_events=1000", "model.refine_users=0",
            "model.refresh_interval=0"]
    d = start_embedded(ps, "nmfd-ho", sets=sets)
    ps.produce(d.brokers, events)
    wait_for(lambda: folded_all(d.port, EVENTS), 60, "every event folded")
    ho = wait_for(lambda: metric(d.port, "nmfd_holdout_loss"), 30,
                  "nmfd_holdout_loss above 0")
    check(0 < ho < 1.5, "holdout loss %g" % ho)

    def last_manifest():
        man = read_topic_all(d.brokers, "nmf.snapshots")
        last = msgpack.unpackb(man[-1].value(), raw=False) if man else {}
        return last if last.get("events") == EVENTS else None
    last = wait_for(last_manifest, 30, "a manifest with every event")
    check("holdout_loss" in last and last["holdout_loss"] > 0,
          "manifest: %r" % sorted(last))
    check(last["model"]["holdout"] == 0.2, "model map: %r" % last["model"])
    check(last["events"] == EVENTS, "events %r" % last["events"])
    print("holdout_loss %.4f (metric), %.4f (manifest)" %
          (ho, last["holdout_loss"]))

    # The dashboard's feed carries it too (a card beside the loss).
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    conn.request("GET", "/events")
    resp = conn.getresponse()
    check(resp.status == 200, "/events answered %d" % resp.status)
    seen = []
    while len(seen) < 20 and not (seen and seen[-1] > 0):
        line = resp.fp.readline().decode()
        check(line != "", "/events ended")
        if line.startswith("data: "):
            data = json.loads(line[6:])
            check(isinstance(data.get("holdout_loss"), float),
                  "epoch event: %r" % sorted(data))
            seen.append(data["holdout_loss"])
    conn.close()
    check(seen[-1] > 0, "holdout_loss in the epoch events: %r" % seen)

    # Recommendations: a user with a profile.
    with open(events) as f:
        f.readline()
        user = f.readline().split(",")[0]
    prof = {it for it, _ in get_json(d.port, "/users/" + user)["profile"]}
    rec = get_json(d.port, "/users/%s/recommend?n=7" % user)
    check(rec["user"] == user, "user %r" % rec["user"])
    check(len(rec["items"]) == 7, "items %r" % rec["items"])
    scores = [s for _, s in rec["items"]]
    check(scores == sorted(scores, reverse=True), "order %r" % scores)
    check(not prof & {it for it, _ in rec["items"]}, "a profile item")
    check(len(get_json(d.port, "/users/%s/recommend" % user)["items"]) == 10,
          "default n")
    many = get_json(d.port, "/users/%s/recommend?n=1000" % user)["items"]
    check(0 < len(many) <= 60 - len(prof), "n=1000: %d items" % len(many))
    check(get_json(d.port, "/users/%s/recommend?n=007" % user)["items"] ==
          rec["items"], "n=007 is n=7")
    bad = [("/users/nosuchuser/recommend?n=3", 404, b"no such user\n"),
           ("/users/%s/recommend?n=0" % user, 400, b"bad n"),
           ("/users/%s/recommend?n=-1" % user, 400, b"bad n"),
           ("/users/%s/recommend?n=abc" % user, 400, b"bad n"),
           ("/users/%s/recommend?n=1.5" % user, 400, b"bad n"),
           ("/users/%s/recommend?n=" % user, 400, b"bad n"),
           ("/users/%s/recommend?n=%%201" % user, 400, b"bad n"),
           ("/users/%s/recommend?n=1001" % user, 400, b"n over its bound"),
           ("/users/%s/recommend?n=99999999999999999999" % user, 400,
            b"n over its bound"),
           ("/users//recommend", 400, b"empty user id"),
           ("/users/%ZZ/recommend", 400, b"bad percent-encoding")]
    for path, code, text in bad:
        status, body = http_get(d.port, path)
        check(status == code and body.startswith(text),
              "%s: %d %r, wanted %d %r" % (path, status, body, code, text))
    print("recommend: %d bad requests answered 404/400" % len(bad))

    # A restart from the checkpoint keeps the held-out pairs and score.
    ho = metric(d.port, "nmfd_holdout_loss")
    check(stop(d) == 0, "nmfd did not stop cleanly")
    d = start_embedded(ps, "nmfd-ho", sets=sets)
    again = wait_for(lambda: metric(d.port, "nmfd_holdout_loss"), 30,
                     "nmfd_holdout_loss after the restart")
    check(abs(again - ho) <= 1e-9 * ho, "after restart %r vs %r" % (again, ho))
    check(stop(d) == 0, "nmfd did not stop cleanly")
    # Another share would change the held-out pairs: refused.
    r = run(NMFD, "--embedded-broker", "--set", "checkpoint.dir=" + d.state,
            "--set", "http.listen=", *sum((["--set", s] for s in sets[:1]), []),
            "--set", "model.holdout=0.3")
    check(r.returncode != 0 and b"model.holdout=0.2" in r.stderr,
          "other share: exit %d %r" % (r.returncode, r.stderr[-300:]))
    print("restart: holdout_loss %.6f kept; another share refused" % again)
    return events


def offline(ps, events):
    snap = os.path.join(ps.tmp, "fit.msgpack")
    r = run(NMFCTL, "fit", "--events", events, "--set", "model.k=4",
            "--out", snap)
    check(r.returncode == 0, "fit: %r" % r.stderr)
    with open(snap, "rb") as f:
        doc = msgpack.unpackb(f.read(), raw=False)
    k = doc["k"]
    W = np.frombuffer(doc["W"], "<f4").reshape(len(doc["items"]), k)
    H = np.frombuffer(doc["H"], "<f4").reshape(len(doc["users"]), k)
    user = doc["users"][3]
    have = set()
    with open(events) as f:
        f.readline()
        for line in f:
            u, it = line.split(",")[:2]
            if u == user:
                have.add(it)
    s = W.astype(np.float64) @ H[3].astype(np.float64)
    order = [i for i in np.argsort(-s, kind="stable")
             if doc["items"][i] not in have and s[i] > 0][:5]
    r = run(NMFCTL, "recommend", "--snapshot", snap, "--user", user,
            "--n", "5", "--events", events)
    check(r.returncode == 0, "recommend: %r" % r.stderr)
    got = json.loads(r.stdout)
    check([it for it, _ in got["items"]] == [doc["items"][i] for i in order],
          "recommend %r vs numpy %r" % (got["items"],
                                        [doc["items"][i] for i in order]))
    for (it, sc), i in zip(got["items"], order):
        check(abs(sc - s[i]) <= 1e-5 * s[i], "score %r vs %r" % (sc, s[i]))
    # Without --events nothing is left out: the profile's items come back.
    r = run(NMFCTL, "recommend", "--snapshot", snap, "--user", user)
    check(r.returncode == 0 and len(json.loads(r.stdout)["items"]) == 10,
          "default n: %r" % r.stdout)
    check(have & {it for it, _ in json.loads(r.stdout)["items"]},
          "without --events the user's own items rank first")

    notsnap = os.path.join(ps.tmp, "not.msgpack")
    with open(notsnap, "wb") as f:
        f.write(b"hello")
    S = ["--snapshot", snap]
    bad = [([], 2, "--snapshot FILE is required"),
           (["--snapshot", snap], 2, "--user ID is required"),
           (S + ["--user", user, "--n", "0"], 2, "--n wants a whole number"),
           (S + ["--user", user, "--n", "x"], 2, "--n wants a whole number"),
           (S + ["--user", user, "--n", "-3"], 2, "--n wants a whole number"),
           (S + ["--user", user, "--n", "1001"], 2, "--n is at most 1000"),
           (S + ["--user", user, "--n"], 2, "missing value for"),
           (S + ["--user", user, "--bogus"], 2, "unknown option"),
           (S + ["--user", user, "extra"], 2, "unexpected argument"),
           (S + ["--user", "x" * 257], 2, "at most 256 bytes"),
           (S + ["--user", user, "--events", ""], 2, "--events wants a file"),
           (["--snapshot", os.path.join(ps.tmp, "none"), "--user", user], 1,
            "No such file"),
           (["--snapshot", notsnap, "--user", user], 1, notsnap),
           (S + ["--user", "nosuchuser"], 1, "no such user 'nosuchuser'"),
           (S + ["--user", user, "--events", os.path.join(ps.tmp, "no.csv")],
            1, "no.csv")]
    for args, code, text in bad:
        r = run(NMFCTL, "recommend", *args)
        err = r.stderr.decode()
        check(r.returncode == code and text in err and not r.stdout,
              "recommend %r: exit %d %r, wanted %d %r" % (
                  args, r.returncode, err, code, text))
    print("nmfctl recommend: matches numpy; %d bad arguments refused" % len(bad))


def main():
    with Procs() as ps:
        events = daemon_side(ps)
        offline(ps, events)
    print("OK")


if __name__ == "__main__":
    main()
