#!/usr/bin/env python3
"""Per layer and method, the share of interventions whose prediction is the counterfactual
answer (IIA) and the share that left the base's own unedited answer.

    outcomes.py REPORT.json RECORDS.jsonl
"""

import collections
import json
import sys

rep = json.load(open(sys.argv[1]))
base = {p["id"]: p["base_prediction"] for p in rep["result"]["pairs"]}
c = collections.defaultdict(lambda: [0, 0, 0])
for line in open(sys.argv[2]):
    r = json.loads(line)
    k = (r["layer"], r["method"])
    c[k][0] += r["correct"]
    c[k][1] += r["prediction"] == base[r["id"]]
    c[k][2] += 1
ms = [m["name"] for m in rep["result"]["methods"]]
print("IIA / share with the base's unedited answer, per layer (rows) and method (columns)")
print(f"{'layer':>5} " + " ".join(f"{m:>11}" for m in ms))
for l in rep["layers"]:
    print(f"{l:>5} " + " ".join(f"{c[(l, m)][0] / c[(l, m)][2]:5.2f}/{c[(l, m)][1] / c[(l, m)][2]:4.2f}" for m in ms))
