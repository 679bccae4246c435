"""Markdown tables from the JSON lines of e2e.py and latency.py.

    summary.py OUT/*.jsonl

Medians over the runs of each configuration. A consumer "kept up" with a
paced producer when it counted every event and finished within 2 % of the
run's length (at least 0.5 s) after the producer did.
"""
import json
import statistics
import sys


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def k(x):
    if x is None:
        return "-"
    if x >= 1e6:
        return "%.2f M" % (x / 1e6)
    return "%.0f k" % (x / 1e3)


def loads(rs):
    ls = [float((r.get("load") or r.get("load_before") or "nan").split()[0]) for r in rs]
    return "%.1f-%.1f" % (min(ls), max(ls))


def kept_up(fig, run_s):
    """Counted every event, and finished within 2 % of the run (at least
    0.5 s) after the producer did."""
    return bool(fig and fig.get("complete") and fig.get("drain_s") is not None
                and fig["drain_s"] <= max(0.5, 0.02 * run_s))


def main(paths):
    runs = []
    for p in paths:
        with open(p) as f:
            for line in f:
                if line.startswith("{"):
                    runs.append(json.loads(line))
    runs = [r for r in runs if "error" not in r]
    cfgs = []
    for r in runs:
        if r.get("config") and r["config"] not in cfgs:
            cfgs.append(r["config"])
    print("| configuration | runs | load (1 min) | producer ev/s | bare ev/s | "
          "nmfd ev/s | nmfd/bare | bare ev/CPU-s | nmfd ev/CPU-s | "
          "complete bare/nmfd | messages evicted |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cfgs:
        rs = [r for r in runs if r.get("config") == c]
        if rs[0]["scenario"] == "producer":
            print("| %s | %d | %s | %s | | | | | | | |" % (
                c, len(rs), loads(rs), k(med([r["producer"].get("rate") for r in rs]))))
            continue
        if rs[0]["scenario"] == "latency":
            continue

        def f(who, key):
            return med([r[who].get(key) for r in rs if who in r])

        def done(who):
            return "%d/%d" % (sum(1 for r in rs if r.get(who, {}).get("complete")), len(rs)) \
                if who in rs[0] else "-"
        ratio = med([r.get("nmfd_over_bare") for r in rs])
        print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |" % (
            c, len(rs), loads(rs), k(med([r["producer"].get("rate") for r in rs])),
            k(f("bare", "rate")), k(f("nmfd", "rate")),
            "%.0f %%" % (100 * ratio) if ratio else "-",
            k(f("bare", "events_per_cpu_s")), k(f("nmfd", "events_per_cpu_s")),
            done("bare"), done("nmfd"),
            k(med([r.get("evicted_messages") for r in rs]))))
    paced = [r for r in runs if r.get("scenario") == "side" and " rate=" in r.get("config", "")]
    if paced:
        print()
        print("| paced configuration | runs | bare kept up | nmfd kept up | "
              "nmfd lag at producer end | nmfd drain s | nmfd ev/s (10-90 %) |")
        print("|---|---|---|---|---|---|---|")
        for c in cfgs:
            rs = [r for r in paced if r["config"] == c]
            if not rs:
                continue
            print("| %s | %d | %d/%d | %d/%d | %s | %s | %s |" % (
                c, len(rs),
                sum(kept_up(r.get("bare"), r["producer"].get("seconds", 0)) for r in rs),
                len(rs),
                sum(kept_up(r.get("nmfd"), r["producer"].get("seconds", 0)) for r in rs),
                len(rs),
                k(med([r["nmfd"].get("lag_at_producer_end") for r in rs])),
                "%.1f" % med([r["nmfd"].get("drain_s") for r in rs])
                if med([r["nmfd"].get("drain_s") for r in rs]) is not None else "-",
                k(med([r["nmfd"].get("rate_10_90") for r in rs]))))
    lat = [r for r in runs if r.get("scenario") == "latency" and r.get("median_s")]
    if lat:
        print()
        print("| latency run | load | markers received | produce->fold median | "
              "produce->segment median | p99 | max | produce->epoch manifest "
              "median / p99 | epoch records (median) | epoch publish s (median/max) |")
        print("|---|---|---|---|---|---|---|---|---|---|")

        def s2(x):
            return "%.2f" % x if x is not None else "-"
        for i, r in enumerate(lat):
            print("| %d | %s | %d/%d | %.3f s | %.2f s | %.2f s | %.2f s | %s / %s s | %s | "
                  "%.2f / %.2f |" % (
                      i + 1, r["load_before"].split()[0], r["received"], r["markers"],
                      r["fold_median_s"], r["median_s"], r["p99_s"], r["max_s"],
                      s2(r.get("epoch_complete_median_s")), s2(r.get("epoch_complete_p99_s")),
                      k(r.get("epoch_records_median")), r.get("epoch_publish_s_median", 0),
                      r.get("epoch_publish_s_max", 0)))
        print("| median | | | %.3f s | %.2f s | %.2f s | | %s / %s s | | |" % (
            med([r["fold_median_s"] for r in lat]), med([r["median_s"] for r in lat]),
            med([r["p99_s"] for r in lat]),
            s2(med([r.get("epoch_complete_median_s") for r in lat])),
            s2(med([r.get("epoch_complete_p99_s") for r in lat]))))


if __name__ == "__main__":
    main(sys.argv[1:])
