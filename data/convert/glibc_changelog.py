#!/usr/bin/python3
"""glibc's ChangeLogs as an engagement log: author x file touched x date.

Reads the ChangeLog.old/ChangeLog.N files (1992-2022) straight out of the
upstream tarball that Debian's glibc-source package ships, and writes

  glibc_changelog.csv        user,item,weight,ts  (one row per file named
                             in an entry; ts = the entry's date, ms UTC)
  glibc_changelog_items.csv  item,name            (name = the file's path)

user is the entry's first author, numbered in order of first appearance
(the name, not the e-mail address, which changes over the years); item is
a file path, numbered likewise. A file named twice in one entry counts
once. Rows are in time order (stable within a day).

  apt-get download glibc-source && dpkg -x glibc-source_*.deb pkg
  data/convert/glibc_changelog.py pkg/usr/src/glibc/glibc-2.36.tar.xz data/
"""
import calendar
import csv
import os
import re
import sys
import tarfile
import time

ISO = re.compile(r"^(\d{4})-(\d\d)-(\d\d)\s+(\S.*?)\s*[<(]")
# "Thu Sep  3 17:31:13 1992  Roland McGrath  (roland@...)", sometimes with
# a time zone before the year.
OLD = re.compile(r"^[A-Z][a-z]{2} +([A-Z][a-z]{2}) +(\d+) +(\d\d):(\d\d):"
                 r"(\d\d) +(?:[A-Z]{3,5} +)?(\d{4})\s+(\S.*?)\s*[<(]")
MONTHS = {m: i for i, m in enumerate(
    "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}
ENTRY = re.compile(r"^\s+\*\s*(.*)$")
PATH = re.compile(r"^[A-Za-z0-9_.+-][A-Za-z0-9_./+-]*$")
# Top-level files with no dot and no slash; any other bare word at the head
# of an entry is prose ("* Version 1.05.", "* All files: ...").
BARE = {"Makefile", "Makerules", "Makeconfig", "Rules", "NEWS", "INSTALL",
        "README", "FAQ", "LICENSES", "configure", "shlib-versions",
        "Make-dist", "MakeTAGS", "abi-tags", "rellns-sh", "COPYING", "BUGS",
        "PROJECTS", "CONFORMANCE", "MAINTAINERS", "Versions", "ChangeLog"}


def is_path(tok):
    if not PATH.match(tok) or len(tok) > 200 or tok.endswith("."):
        return False
    if "/" in tok:
        return re.search(r"[A-Za-z]", tok) is not None
    if "." in tok:
        return re.search(r"[A-Za-z]", tok.rsplit(".", 1)[1]) is not None
    return tok in BARE


def header(line):
    """(ts in ms, author) of an entry's first line, or None."""
    m = ISO.match(line)
    if m:
        y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if not (1 <= mo <= 12 and 1 <= d <= 31):
            return None
        ts = calendar.timegm((y, mo, d, 0, 0, 0))
        return ts * 1000, " ".join(m.group(4).split())
    m = OLD.match(line)
    if m and m.group(1) in MONTHS:
        ts = calendar.timegm((int(m.group(6)), MONTHS[m.group(1)],
                              int(m.group(2)), int(m.group(3)),
                              int(m.group(4)), int(m.group(5))))
        return ts * 1000, " ".join(m.group(7).split())
    return None


def files(text):
    """The paths at the head of a '* a.c, b/c.h (fn): ...' line."""
    head = re.split(r"[:(\[]", text, maxsplit=1)[0]
    out = []
    for tok in re.split(r"[,\s]+", head):
        tok = tok.strip()
        if tok.startswith("./"):
            tok = tok[2:]
        if "/" in tok and tok.endswith("."):
            tok = tok[:-1]  # the end of a sentence
        if is_path(tok):
            out.append(tok)
    return out


def parse(lines, rows):
    cur = None  # (ts, author, set of files)
    pending = ""
    for raw in lines:
        line = raw.rstrip("\n")
        h = header(line)
        if h:
            cur = (h[0], h[1], set())
            pending = ""
            continue
        if cur is None:
            continue
        m = ENTRY.match(line)
        if m:
            pending = m.group(1)
        elif pending and line.strip():
            pending += " " + line.strip()
        else:
            pending = ""
            continue
        # A list of files may go on over the next line: "* a.c, b.c,"
        if pending.rstrip().endswith(",") and not re.search(r"[:(\[]",
                                                             pending):
            continue
        for f in files(pending):
            if f not in cur[2]:
                cur[2].add(f)
                rows.append((cur[0], cur[1], f))
        pending = ""


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: glibc_changelog.py glibc-X.Y.tar.xz OUTDIR")
    tar, out = sys.argv[1], sys.argv[2]
    rows = []
    with tarfile.open(tar) as t:
        members = [m for m in t.getmembers()
                   if re.search(r"/ChangeLog\.old/ChangeLog\.\d+$", m.name)]
        members.sort(key=lambda m: int(m.name.rsplit(".", 1)[1]))
        for m in members:
            text = t.extractfile(m).read().decode("utf-8", "replace")
            parse(text.splitlines(), rows)
    # Time order; Python's sort is stable, so a day keeps file order.
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])
    users, items = {}, {}
    with open(os.path.join(out, "glibc_changelog.csv"), "w",
              newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user", "item", "weight", "ts"])
        for i in order:
            ts, author, path = rows[i]
            u = users.setdefault(author, len(users) + 1)
            it = items.setdefault(path, len(items) + 1)
            w.writerow([u, it, 1, ts])
    with open(os.path.join(out, "glibc_changelog_items.csv"), "w",
              newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["item", "name"])
        for path, it in items.items():
            w.writerow([it, path])
    print("glibc_changelog: %d events, %d users, %d items"
          % (len(rows), len(users), len(items)), file=sys.stderr)


if __name__ == "__main__":
    main()
