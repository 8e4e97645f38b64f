#!/usr/bin/env python3
"""ROC-AUC (scikit-learn) of the EP node scores of each sweep report (sweep/TASK-POOL-pP.json)
against the top 10% of heads (7 of 72) by patching effect in the task's full run (TASK.json),
with the number of heads whose score is positive.

    sweep_auc.py DIR
"""

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

d = Path(sys.argv[1])
print(f"{'task':<13} {'pool':<5} {'p':>3}  {'per-head AUC':>12} {'>0':>3} {'K range':>8}  {'shared AUC':>10} {'>0':>3} {'K':>4}")
for task in ["ioi", "induction", "greater-than"]:
    full = json.load(open(d / f"{task}.json"))
    eff = np.array(full["patching"]["effects"])
    top = set(full["patching"]["top_heads"])
    n = len(eff)
    name = lambda i: f"a{i // full['heads_per_layer']}.h{i % full['heads_per_layer']}"
    labels = np.array([name(i) in top for i in range(n)])
    for pool in ["last", "mean"]:
        for p in [1, 2, 5, 10, 20]:
            r = json.load(open(d / "sweep" / f"{task}-{pool}-p{p}.json"))
            cells = []
            for c in r["codes"]:
                s = np.array(c["node_scores"])
                ks = [x["regions"] for x in c["dictionaries"]]
                k = f"{min(ks)}..{max(ks)}" if len(ks) > 1 else str(ks[0])
                cells.append((roc_auc_score(labels, s), int((s > 0).sum()), k))
            (a1, n1, k1), (a2, n2, k2) = cells
            print(f"{task:<13} {pool:<5} {p:>3}  {a1:>12.3f} {n1:>3} {k1:>8}  {a2:>10.3f} {n2:>3} {k2:>4}")
