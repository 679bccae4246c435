#!/usr/bin/python3
"""The project stands alone: `git clone` of the source tree's committed
HEAD into an empty temporary directory, with nothing beside it, then
`script/demo` there, as a new user would run it. The demo builds nmfd in
the clone, streams a data set of the clone's data/ through it at a high
NMFD_DEMO_RATE and ends by itself; the test wants exit status 0, epochs
with live segments (users in them, top items by name) after every event
was folded, and nmfd's clean stop.

Skips (77) when the source tree is not a git checkout, and under the
sanitizer suite: the clone builds its own release tree, so that run would
only repeat this one. Uncommitted changes are not in the clone, by
design: the test is about what a clone gets."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SRC = os.environ.get("NMFD_SRC", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEADLINE = 540  # s; the build is most of it, the demo about 10 s
DATASET = "factominer_hobbies"  # script/demo's default


def skip(msg):
    print("SKIP: " + msg)
    sys.exit(77)


def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def git(*args, cwd=None):
    return subprocess.run(["git"] + list(args), cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def main():
    if os.environ.get("NMFD_SANITIZED") == "1":
        skip("the clone builds its own release tree; run once, not per build")
    if shutil.which("git") is None:
        skip("no git")
    src = os.path.realpath(SRC)
    top = git("rev-parse", "--show-toplevel", cwd=src)
    if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != src:
        skip("%s is not a git checkout" % src)
    head = git("rev-parse", "HEAD", cwd=src).stdout.strip()
    if not re.fullmatch(r"[0-9a-f]{40}", head):
        skip("%s has no commit" % src)

    tmp = tempfile.mkdtemp(prefix="nmfd-clone-")
    started = time.time()
    try:
        clone = os.path.join(tmp, "nmfd")
        r = git("clone", "--quiet", "--no-checkout", src, clone)
        if r.returncode != 0:
            fail("git clone: " + r.stderr)
        r = git("checkout", "--quiet", "--detach", head, cwd=clone)
        if r.returncode != 0:
            fail("git checkout: " + r.stderr)
        if os.listdir(tmp) != ["nmfd"]:
            fail("%s holds more than the clone: %s" % (tmp, os.listdir(tmp)))
        data = os.path.join(clone, "data", DATASET + ".csv")
        if not os.path.isfile(data):
            fail("the clone has no %s" % data)
        with open(data) as f:
            events = sum(1 for _ in f) - 1

        # Nothing of the test's environment may point the demo back at this
        # tree: no NMFD_* at all, only the demo's rate.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NMFD_", "ASAN_", "UBSAN_"))}
        env["NMFD_DEMO_RATE"] = "200000"
        p = subprocess.Popen(["script/demo"], cwd=clone, env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        try:
            out, _ = p.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                out, _ = p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                out, _ = p.communicate()
            print(out)
            fail("script/demo did not end within %d s" % DEADLINE)
        print(out)
        took = time.time() - started
        if p.returncode != 0:
            fail("script/demo exited %d" % p.returncode)
        if not os.access(os.path.join(clone, "build", "daemon", "nmfd"),
                         os.X_OK):
            fail("the demo did not build nmfd in the clone")

        # Epochs after every event was folded, each with its segments.
        done = re.findall(r"^epoch (\d+) .* events %d/%d .*$" % (events,
                                                                 events),
                          out, re.M)
        if not done:
            fail("no epoch showed all %d events folded" % events)
        segs = re.findall(r"^  segment (\d+) +(\d+) users \S+  (.*)$", out,
                          re.M)
        live = [s for s in segs if int(s[1]) > 0 and s[2].strip()]
        if len(live) < 2:
            fail("no live segments shown: %r" % segs[-5:])
        # Item names from data/DATASET_items.csv, not bare ids.
        if not re.search(r"[A-Za-z]{3,} \d\.\d\d", live[-1][2]):
            fail("top items not named: %r" % live[-1][2])
        if "stopped cleanly" not in out:
            fail("nmfd did not report a clean stop")
        print("fresh clone: %d epochs with all events, %d live segment lines,"
              " %.0f s in all (build included)" % (len(done), len(live), took))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
