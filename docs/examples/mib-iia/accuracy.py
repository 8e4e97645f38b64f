#!/usr/bin/env python3
"""The model's accuracy on a task file before any intervention, with HF transformers (f32, CPU):
greedy next token of each base and source prompt against its answer.

    accuracy.py MODEL TASK.jsonl [TASK.jsonl ...]
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_grad_enabled(False)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32, attn_implementation="eager").eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
for path in sys.argv[2:]:
    rows = [json.loads(l) for l in open(path)]
    n = {"base": 0, "source": 0, "both": 0}
    for r in rows:
        ok = {}
        for side in ("base", "source"):
            ids = tok(r[side], return_tensors="pt").input_ids
            ok[side] = tok.decode(model(ids).logits[0, -1].argmax()) == r[side + "_answer"]
            n[side] += ok[side]
        n["both"] += ok["base"] and ok["source"]
    print(f"{path}: {len(rows)} pairs; base correct {n['base']}, source correct {n['source']}, "
          f"both {n['both']} ({n['both'] / len(rows):.1%})")
