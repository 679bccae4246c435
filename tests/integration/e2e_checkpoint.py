#!/usr/bin/python3
"""The checkpoint as an operator meets it: nmfd stops cleanly and writes
one; it restarts from it and resumes at the stored offsets (no event
folded twice), and keeps them in the checkpoints it writes before the
group assigns its partitions; a corrupt, truncated or incompatible (other model.k)
checkpoint is refused with a clear error and exit 1, never half-loaded
(nor one of another model.robust);
--ignore-checkpoint starts a fresh model on purpose."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import (BIN, KAFKA_TEST_SETS, NMFCTL, Procs, check, folded_all,  # noqa: E402
                     inspect_checkpoint, metric, stop, wait_for)

EVENTS = 5000


def start_fails(ps, brokers, state, sets, want, name):
    args = [os.path.join(BIN, "nmfd"), "--set", "kafka.bootstrap.servers=" + brokers,
            "--set", "checkpoint.dir=" + state, "--set", "http.listen=127.0.0.1:0"]
    for s in KAFKA_TEST_SETS + sets:
        args += ["--set", s]
    r = subprocess.run(args, capture_output=True, timeout=60)
    err = r.stderr.decode()
    check(r.returncode == 1, "%s: exit %d, want 1:\n%s" % (name, r.returncode, err))
    check(want in err, "%s: %r not in:\n%s" % (name, want, err))
    check("nmfd ready" not in err, "%s: nmfd said ready on a refused state" % name)


def main():
    with Procs() as ps:
        events = os.path.join(ps.tmp, "events.csv")
        with open(events, "wb") as f:
            r = subprocess.run([NMFCTL, "gen", "--users", "300",
                                "--items", "50", "--k", "3", "--events", str(EVENTS),
                                "--seed", "2"], stdout=f, timeout=60)
        check(r.returncode == 0, "gen")
        brokers = ps.broker(partitions=2)
        state = os.path.join(ps.tmp, "state")
        sets = ["model.k=4"]
        d = ps.nmfd(brokers, sets=sets, state=state, name="first")
        ps.produce(brokers, events)
        wait_for(lambda: folded_all(d.port, EVENTS), 60, "every event folded")
        check(stop(d) == 0, "clean stop")
        ckpt = os.path.join(state, "nmfd.ckpt")
        check(os.path.exists(ckpt), "no checkpoint after a clean stop")
        good = open(ckpt, "rb").read()

        # A restart resumes: the model holds the events, none is refolded.
        d = ps.nmfd(brokers, sets=sets, state=state, name="second")
        wait_for(lambda: metric(d.port, "nmfd_model_events") == EVENTS, 30, "state loaded")
        wait_for(lambda: metric(d.port, "nmfd_ready") == 1, 30, "ready")
        check(metric(d.port, "nmfd_events_folded_total") == 0,
              "events folded again after a restart")
        check(stop(d) == 0, "clean stop")
        good = open(ckpt, "rb").read()

        # Checkpoints written before the group assigns the partitions (here
        # the brokers are unreachable, so it never does) keep the offsets
        # the state was loaded with. Without them the next start would fall
        # back to the group's committed offsets, which can lag the model
        # (a kill between a checkpoint and its commit), and fold events
        # twice.
        offsets = inspect_checkpoint(state)["offsets"]
        check(len(offsets) == 2, "offsets of the clean stop: %r" % offsets)
        lone = os.path.join(ps.tmp, "unassigned")
        shutil.copytree(state, lone)
        d = ps.nmfd("127.0.0.1:1", sets=sets + ["checkpoint.interval=1s"], state=lone,
                    name="unassigned")
        wait_for(lambda: (metric(d.port, "nmfd_checkpoints_total") or 0) >= 2, 30,
                 "checkpoints while unassigned")
        check(inspect_checkpoint(lone)["offsets"] == offsets,
              "a checkpoint while unassigned lost the loaded offsets: %r"
              % inspect_checkpoint(lone)["offsets"])
        d.kill()
        d.wait()

        # Refusals, each on its own copy of the state directory.
        cases = [
            ("corrupt", good[:len(good) // 2] + bytes([good[len(good) // 2] ^ 0x40])
             + good[len(good) // 2 + 1:], [], "CRC mismatch"),
            ("truncated", good[:len(good) - 100], [], "truncated"),
            ("not a checkpoint", b"hello, world\n" * 10, [], "bad magic"),
            ("other k", good, ["model.k=8"], "model.k=4"),
            ("other robust", good, ["model.k=4", "model.robust=l21"],
             "checkpoint has model.robust=none but the configuration says l21"),
        ]
        for name, data, extra, want in cases:
            bad = os.path.join(ps.tmp, "bad-" + name.replace(" ", "-"))
            shutil.copytree(state, bad)
            with open(os.path.join(bad, "nmfd.ckpt"), "wb") as f:
                f.write(data)
            start_fails(ps, brokers, bad, extra or sets, want, name)
            with open(os.path.join(bad, "nmfd.ckpt"), "rb") as f:
                check(f.read() == data, "%s: the refused file was changed" % name)

        # --ignore-checkpoint: a fresh model, on purpose.
        bad = os.path.join(ps.tmp, "bad-corrupt")
        d = ps.nmfd(brokers, sets=sets, state=bad, name="fresh",
                    extra=["--ignore-checkpoint"])
        wait_for(lambda: metric(d.port, "nmfd_ready") is not None, 30, "metrics")
        check("starting fresh: --ignore-checkpoint" in ps.log("fresh"), ps.log("fresh"))
        check(stop(d) == 0, "clean stop of the fresh model")
    print("checkpoint: resume exact; corrupt, truncated, foreign and other-k refused; "
          "--ignore-checkpoint starts fresh")


if __name__ == "__main__":
    main()
