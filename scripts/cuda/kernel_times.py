#!/usr/bin/env python3
"""Sums ncu's per-launch kernel times (`ncu --metrics gpu__time_duration.sum
--csv --print-units base`) per kernel name and prints them largest first:
launches, total µs, mean µs, share. Used by `scripts/test-cuda.sh profile`
to see where a decode step's time goes.

Forward passes are cut at each embedding launch (the first kernel of a
pass); with `--skip N` the first N passes (the prompt) are left out and
the table is per remaining pass (a decode step), so prompt launches do not
blur the decode numbers."""
import argparse
import csv
from collections import defaultdict

ap = argparse.ArgumentParser()
ap.add_argument("csv")
ap.add_argument("--skip", type=int, default=0, help="forward passes to leave out")
a = ap.parse_args()

rows = [l for l in open(a.csv) if l.startswith('"')]
launches = []
for r in csv.DictReader(rows):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"].split("(")[0]
    launches.append((name, float(r["Metric Value"].replace(",", "")) / 1e3))  # ns -> µs

passes = 0
total = defaultdict(float)
count = defaultdict(int)
for name, us in launches:
    if "embedding" in name:
        passes += 1
    if passes <= a.skip:
        continue
    total[name] += us
    count[name] += 1
kept = max(passes - a.skip, 1)
s = sum(total.values())
print(f"{passes} forward passes, {a.skip} left out; per remaining pass:")
print(f"{'kernel':48} {'launches':>8} {'µs/pass':>9} {'mean µs':>9} {'share':>6}")
for name, t in sorted(total.items(), key=lambda kv: -kv[1]):
    print(f"{name[:48]:48} {count[name] / kept:8.1f} {t / kept:9.1f} {t / count[name]:9.2f} {t / s:6.1%}")
print(f"{'all':48} {sum(count.values()) / kept:8.1f} {s / kept:9.1f}")
