#!/usr/bin/python3
"""nmfctl rank through the real binary: one table row per k with the
training loss, held-out error and its spread, a last line k=N that
follows the one-standard-error rule (on the standard error of the
difference from the best, paired by fold) from the printed table, a plot that
is well-formed SVG marking the choice, the same result on a second run,
and every bad argument refused with exit 2 (1 for a missing or empty
file)."""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Procs, check  # noqa: E402
from http_common import NMFCTL, gen_events  # noqa: E402


def run(*args):
    return subprocess.run([NMFCTL, "rank"] + list(args), capture_output=True,
                          timeout=300)


def table(out):
    lines = out.decode().strip().splitlines()
    check(lines[0].startswith("# ") and "held out 0.2" in lines[0],
          "first line %r" % lines[0])
    check(lines[1].split() == ["k", "train_loss", "holdout_loss",
                               "holdout_se", "diff_se", "seconds"],
          "head %r" % lines[1])
    check(lines[-1].startswith("k="), "last line %r" % lines[-1])
    rows = [l.split() for l in lines[2:-1]]
    return ([(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]),
              float(r[5])) for r in rows], int(lines[-1][2:]), rows)


def main():
    with Procs() as ps:
        events = gen_events(ps, users=400, items=80, k=4, events=12000)
        plot = os.path.join(ps.tmp, "rank.svg")
        r = run("--events", events, "--k", "2:6:2,", "--holdout", "0.2")
        check(r.returncode == 2, "2:6:2, accepted")
        r = run("--events", events, "--k", "2,4", "--set", "model.loss=kl")
        check(r.returncode == 2 and b"model.loss = kl is not supported" in
              r.stderr, "kl accepted: %r" % r.stderr)
        r = run("--events", events, "--k", "2:6:2", "--holdout", "0.2",
                "--folds", "3", "--plot", plot)
        check(r.returncode == 0, "rank: %r" % r.stderr)
        rows, choice, raw = table(r.stdout)
        check([x[0] for x in rows] == [2, 4, 6], "ks %r" % rows)
        for k, tr, ho, se, dse, sec in rows:
            check(0 <= tr < 1 and 0 < ho and se >= 0 and dse >= 0 and
                  sec >= 0, "row %r" % ((k, tr, ho, se, dse, sec),))
        # The training loss falls with k on the same data.
        check(rows[0][1] > rows[-1][1], "training loss %r" % rows)
        best = min(rows, key=lambda x: x[2])
        check(best[4] == 0, "the best's paired se %r" % (best,))
        want = next(x[0] for x in rows if x[2] <= best[2] + x[4])
        check(choice == want, "k=%d, the rule gives %d" % (choice, want))
        check([r_ for r_ in raw if r_[-1] == "best"][0][0] == str(best[0]),
              "best marked")
        svg = ET.parse(plot).getroot()
        check(svg.tag.endswith("svg"), "plot root %r" % svg.tag)
        texts = [t.text for t in svg.iter() if t.tag.endswith("text")]
        check("k=%d" % choice in texts, "choice not marked: %r" % texts)
        check(len([p for p in svg.iter() if p.tag.endswith("polyline")]) == 2,
              "two curves")
        again = run("--events", events, "--k", "6,2,4", "--holdout", "0.2",
                    "--folds", "3")
        check(again.returncode == 0, "list form: %r" % again.stderr)
        rows2, choice2, _ = table(again.stdout)
        check([x[:5] for x in rows2] == [x[:5] for x in rows] and
              choice2 == choice, "not reproducible: %r vs %r" % (rows2, rows))
        print("rank: k=%d; %s" % (choice, rows))

        empty = os.path.join(ps.tmp, "empty.csv")
        with open(empty, "w") as f:
            f.write("user,item,weight,ts\n")
        # One user, whom no fold at a share of 0.2 holds out.
        one = os.path.join(ps.tmp, "one.csv")
        with open(one, "w") as f:
            f.write("user,item,weight,ts\nu0,i0,1,1\nu0,i1,1,2\n")
        E = ["--events", events]
        bad = [([], 2, "--events FILE.csv is required"),
               (E, 2, "--k LIST|FROM:TO[:STEP] is required"),
               (E + ["--k", "0:4"], 2, "wants ranks 1..256"),
               (E + ["--k", "2:300"], 2, "wants ranks 1..256"),
               (E + ["--k", "5:2"], 2, "FROM is above TO"),
               (E + ["--k", "2:8:0"], 2, "STEP must be 1..256"),
               (E + ["--k", "2,x"], 2, "separated by commas"),
               (E + ["--k", "3,3"], 2, "lists a rank twice"),
               (E + ["--k", ""], 2, "separated by commas"),
               (E + ["--k", "2", "--holdout", "0"], 2, "--holdout wants"),
               (E + ["--k", "2", "--holdout", "1"], 2, "--holdout wants"),
               (E + ["--k", "2", "--holdout", "x"], 2, "--holdout wants"),
               (E + ["--k", "2", "--folds", "0"], 2, "--folds wants"),
               (E + ["--k", "2", "--folds", "21"], 2, "--folds wants"),
               (E + ["--k", "2", "--set", "model.k=3"], 2,
                "--k and --holdout set these"),
               (E + ["--k", "2", "--set", "model.holdout=0.1"], 2,
                "--k and --holdout set these"),
               (E + ["--k", "2", "--set", "http.listen=x"], 2,
                "model.* keys only"),
               (E + ["--k", "2", "--set", "model.alpha_h=-1"], 2,
                "model.alpha_h = -1: out of range"),
               (E + ["--k", "2", "--set", "model.nope=1"], 2, "model.nope"),
               (E + ["--k", "2", "--refine-rounds", "-1"], 2,
                "--refine-rounds wants"),
               (E + ["--k", "2", "--plot", ""], 2, "--plot wants a file"),
               (E + ["--k", "2", "--bogus"], 2, "unknown option"),
               (E + ["--k", "2", "extra"], 2, "unexpected argument"),
               (E + ["--k"], 2, "missing value for"),
               (["--events", os.path.join(ps.tmp, "none.csv"), "--k", "2"], 1,
                "none.csv"),
               (["--events", empty, "--k", "2"], 1, "no events"),
               (["--events", one, "--k", "2"], 1, "holds out no user"),
               (E + ["--k", "2", "--plot", os.path.join(ps.tmp, "no", "x.svg")],
                1, "x.svg")]
        for args, code, text in bad:
            r = run(*args)
            err = r.stderr.decode()
            check(r.returncode == code and text in err,
                  "rank %r: exit %d %r, wanted %d %r" % (
                      args, r.returncode, err, code, text))
        print("rank: %d bad arguments refused" % len(bad))
    print("OK")


if __name__ == "__main__":
    main()
