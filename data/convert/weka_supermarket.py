#!/usr/bin/python3
"""Weka's supermarket.arff as an engagement log: basket x department.

Reads the ARFF file that Debian's weka package ships among its examples
and writes

  weka_supermarket.csv        user,item,weight,ts  (one row per department
                              marked 't' in a basket; ts = the row's
                              ordinal, which nmfd reads as seconds)
  weka_supermarket_items.csv  item,name            (the attribute names)

user is the basket (1-based data row), item the 1-based attribute index.
The last attribute, 'total' (low/high spend), is a class label, not a
department, and is left out.

  apt-get download weka && dpkg -x weka_*.deb pkg
  data/convert/weka_supermarket.py \
      pkg/usr/share/doc/weka/examples/supermarket.arff data/
"""
import csv
import os
import re
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: weka_supermarket.py supermarket.arff OUTDIR")
    arff, out = sys.argv[1], sys.argv[2]
    names, rows, in_data = [], [], False
    with open(arff, encoding="latin-1") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("%"):
                continue
            if not in_data:
                m = re.match(r"@attribute\s+'([^']*)'", line, re.I)
                if m:
                    names.append(m.group(1))
                elif line.lower().startswith("@data"):
                    in_data = True
                continue
            rows.append(line.split(","))
    depts = [n for n in names if n != "total"]
    with open(os.path.join(out, "weka_supermarket.csv"), "w",
              newline="") as f:
        w = csv.writer(f)  # CRLF line ends, as csv writes them
        w.writerow(["user", "item", "weight", "ts"])
        ts = 0
        for u, row in enumerate(rows, 1):
            for i, v in enumerate(row[:len(depts)], 1):
                if v == "t":
                    ts += 1
                    w.writerow([u, i, 1, ts])
    with open(os.path.join(out, "weka_supermarket_items.csv"), "w",
              newline="") as f:
        w = csv.writer(f)  # CRLF line ends, as csv writes them
        w.writerow(["item", "name"])
        for i, n in enumerate(depts, 1):
            w.writerow([i, n])


if __name__ == "__main__":
    main()
