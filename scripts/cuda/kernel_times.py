#!/usr/bin/env python3
"""Sums ncu's per-launch kernel times (`ncu --metrics gpu__time_duration.sum
--csv --print-units base`) per kernel name and prints them largest first:
launches, total µs, mean µs, share. Used by `scripts/test-cuda.sh profile`
to see where a decode step's time goes."""
import csv
import sys
from collections import defaultdict

rows = [l for l in open(sys.argv[1]) if l.startswith('"')]
total = defaultdict(float)
count = defaultdict(int)
for r in csv.DictReader(rows):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"].split("(")[0]
    total[name] += float(r["Metric Value"].replace(",", "")) / 1e3  # ns -> µs
    count[name] += 1
s = sum(total.values())
print(f"{'kernel':48} {'launches':>8} {'total µs':>10} {'mean µs':>9} {'share':>6}")
for name, t in sorted(total.items(), key=lambda kv: -kv[1]):
    print(f"{name[:48]:48} {count[name]:8} {t:10.1f} {t / count[name]:9.2f} {t / s:6.1%}")
print(f"{'all':48} {sum(count.values()):8} {s:10.1f}")
