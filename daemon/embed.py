#!/usr/bin/env python3
"""Turns a file into a C header holding it as one string, so the dashboard
page ships inside the nmfd binary and needs no files at run time."""
import sys

src, dst, name = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, "rb").read()
with open(dst, "w") as out:
    out.write("/* generated from %s; do not edit */\n" % src.split("/")[-1])
    out.write("static const unsigned char %s[] = {\n" % name)
    for i in range(0, len(data), 16):
        out.write("  " + ", ".join("0x%02x" % b for b in data[i:i + 16]) + ",\n")
    out.write("  0x00};\n")
    out.write("static const unsigned long %s_len = %d;\n" % (name, len(data)))
