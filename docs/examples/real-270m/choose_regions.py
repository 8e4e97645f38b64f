#!/usr/bin/env python3
"""Prints N region ids of a dictionary, drawn uniformly (numpy, seeded) among the regions with at
least MIN members, comma-separated: the steering experiment's regions.

    python3 choose_regions.py DICT N MIN SEED
"""
import sys

import numpy as np
from safetensors import safe_open

path, n, lo, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with safe_open(path, framework="numpy") as f:
    counts = f.get_tensor("member_counts")
eligible = np.nonzero(counts >= lo)[0]
pick = np.sort(np.random.default_rng(seed).choice(eligible, size=n, replace=False))
print(",".join(str(i) for i in pick))
print(f"{len(eligible)} of {len(counts)} regions have >= {lo} members; chose {n}", file=sys.stderr)
