#!/usr/bin/env python3
"""Independent checks of `exemplar iia` (tests/iia.rs runs them), with HF transformers forward
hooks and the torch featurizers `exemplar mib-export` writes:

    iia_checks.py hf MODEL REPORT RECORDS HARD_DIR SOFT_DIR [MAX_PAIRS]

HARD_DIR / SOFT_DIR: `mib-export --top-n 1` / `--top-n N` of the report's dictionaries, one unit
`L{layer}` per layer. For every pair of the report, the unedited greedy answers of base and source
(HF forward) equal the report's; the train-split feature choices equal numpy's recount of the
rule (class-mean range over the causal variable / standard deviation, on the kept train pairs'
base and source features at the hook: identity features are the activations, EP features come
from the exported torch featurizer); and for every record, the interchange done with the torch
featurizer (f_b[idx] = f_s[idx], inverse(f_b, error_b)) written into decoder layer L's output at
the record's position gives the record's prediction and logits. Finally the report's counts
equal a recount of the records. With MAX_PAIRS, the interchanges of only the first MAX_PAIRS test
pairs are redone (the recounts still cover every record). Exits non-zero on the first mismatch, prints `ok ...`.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import torch


def close(a, b, what, tol=1e-4):
    d = abs(a - b)
    assert d <= tol * max(1.0, abs(a), abs(b)), f"{what}: {a} vs {b}"
    return d


def check_hf(model_dir, report_path, records_path, hard_dir, soft_dir, max_pairs=None):
    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    rep = json.load(open(report_path))
    res = rep["result"]
    task = {}
    for line in open(rep["task"]):
        r = json.loads(line)
        task[str(r["id"])] = r
    layers = rep["layers"]
    k_from_end = rep["position_from_end"]

    spec = importlib.util.spec_from_file_location("ep_featurizer", os.path.join(hard_dir, "featurizer.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    fz = {}
    for l in layers:
        fz[("hard", l)] = m.load(os.path.join(hard_dir, f"L{l}"))
        fz[("soft", l)] = m.load(os.path.join(soft_dir, f"L{l}"))
    methods = {x["name"]: x for x in res["methods"]}
    soft_n = {x["top_n"] for x in res["methods"] if x["top_n"] not in (None, 1)}
    for l in layers:
        assert fz[("soft", l)][0].top_n in soft_n, (fz[("soft", l)][0].top_n, soft_n)

    def featurizer(name, l):
        mt = methods[name]
        if mt["featurizer"] == "identity":
            return (lambda x: (x.clone(), torch.zeros_like(x))), (lambda f, e: f + e)
        return fz[("hard" if mt["top_n"] == 1 else "soft", l)]

    # Activations at every layer's output, at the position, for every pair; unedited answers.
    def run(ids, edit=None):
        acts = {}
        handles = []
        for l in layers:
            def h(module, args, out, l=l):
                x = out[0] if isinstance(out, tuple) else out
                if edit is not None and edit[0] == l:
                    x = x.clone()
                    x[:, edit[1]] = edit[2].to(x.dtype)
                acts[l] = x[0].clone()
                return (x,) + tuple(out[1:]) if isinstance(out, tuple) else x
            handles.append(model.model.layers[l].register_forward_hook(h))
        logits = model(torch.tensor([ids])).logits[0, -1].double()
        for hd in handles:
            hd.remove()
        return acts, logits

    recs = [json.loads(x) for x in open(records_path)]
    redo = []
    for r in recs:
        if r["id"] not in redo:
            redo.append(r["id"])
    redo = set(redo[: int(max_pairs)] if max_pairs is not None else redo)
    pairs, unedited = {}, {}
    for p in res["pairs"]:
        pb, ps = len(p["base_ids"]) - k_from_end, len(p["source_ids"]) - k_from_end
        # The activations are needed for the train-split choices and the redone interchanges;
        # with MAX_PAIRS the other test pairs are not run.
        if max_pairs is not None and p["id"] not in redo and not (p["split"] == "train" and p["kept"]):
            pairs[p["id"]] = (p, None, None, pb, ps)
            continue
        ab, lb = run(p["base_ids"])
        as_, ls = run(p["source_ids"])
        assert int(lb.argmax()) == p["base_prediction"], (p["id"], "base", int(lb.argmax()), p["base_prediction"])
        assert int(ls.argmax()) == p["source_prediction"], (p["id"], "source", int(ls.argmax()), p["source_prediction"])
        pairs[p["id"]] = (p, {l: ab[l][pb] for l in layers}, {l: as_[l][ps] for l in layers}, pb, ps)
        unedited[p["id"]] = lb

    # The train-split choices, recounted in numpy.
    chosen = 0
    for name, per_layer in res["indices"].items():
        mt = methods[name]
        k = mt["selection"]["Top"]
        for l_str, idx in per_layer.items():
            l = int(l_str)
            f, _ = featurizer(name, l)
            rows, labels = [], []
            for pid, (p, xb, xs, _, _) in pairs.items():
                if p["split"] == "train" and p["kept"]:
                    rows += [xb[l], xs[l]]
                    labels += [str(task[pid]["base_variable"]), str(task[pid]["source_variable"])]
            feats = f(torch.stack(rows))[0].double().numpy()
            labels = np.array(labels)
            means = np.stack([feats[labels == c].mean(0) for c in sorted(set(labels))])
            score = (means.max(0) - means.min(0)) / (feats.std(0) + 1e-12)
            want = sorted(range(len(score)), key=lambda j: (-score[j], j))[:k]
            # Equal scores up to rounding may order differently: compare the scores' sets.
            got_s, want_s = np.sort(score[idx]), np.sort(score[want])
            assert np.allclose(got_s, want_s, rtol=1e-6, atol=1e-9), (name, l, idx, want)
            chosen += 1

    # Every record, redone with HF hooks and the torch featurizers.
    redone = 0
    worst = 0.0
    count = {}
    moved = full = 0
    for r in recs:
        p, xb, xs, pb, ps = pairs[r["id"]]
        assert p["split"] == "test" and p["kept"], r["id"]
        assert (r["base_position"], r["source_position"]) == (pb, ps), r
        assert r["correct"] == (r["prediction"] == r["counterfactual"]), r
        c = count.setdefault((r["layer"], r["method"]), [0, 0])
        c[0] += r["correct"]
        c[1] += 1
        if r["id"] not in redo:
            continue
        redone += 1
        l, name = r["layer"], r["method"]
        f, inv = featurizer(name, l)
        fb, eb = f(xb[l][None])
        fs, _ = f(xs[l][None])
        g = fb.clone()
        idx = res["indices"].get(name, {}).get(str(l))
        if idx is None:
            g = fs
        else:
            g[:, idx] = fs[:, idx]
        x2 = inv(g, eb)[0]
        _, logits = run(p["base_ids"], (l, pb, x2))
        pred = int(logits.argmax())
        if name == "full" and not torch.equal(xb[l], xs[l]):
            # The edit reached the logits: they moved off the unedited base's.
            moved += bool((logits - unedited[r["id"]]).abs().max() > 1e-3)
            full += 1
        if pred != r["prediction"]:
            # Only a near tie may flip.
            assert abs(float(logits[pred] - logits[r["prediction"]])) < 1e-3, (r, pred)
        worst = max(worst, close(r["prediction_logit"], float(logits[r["prediction"]]), f"{name} L{l} {r['id']} prediction logit"))
        worst = max(worst, close(r["counterfactual_logit"], float(logits[r["counterfactual"]]), f"{name} L{l} {r['id']} counterfactual logit"))
    for cell in res["cells"]:
        c = count.get((cell["layer"], cell["method"]), [0, 0])
        assert [cell["correct"], cell["total"]] == c, (cell, c)
        if c[1]:
            assert abs(cell["iia"] - c[0] / c[1]) < 1e-12, cell
    assert full and moved == full, f"the full-vector interchange moved {moved} of {full} base runs"
    kept_test = sum(p["kept"] and p["split"] == "test" for p, *_ in pairs.values())
    assert all(c[1] == kept_test for c in count.values()), (count, kept_test)
    print(f"ok iia hf: {len(unedited)} of {len(pairs)} pairs run, {redone} of {len(recs)} interchanges ({len(redo)} test pairs) redone with HF hooks, "
          f"{chosen} feature choices recounted, {len(res['cells'])} cells recounted; "
          f"max |Δ logit| {worst:.2e}")


def main():
    cmd, *a = sys.argv[1:]
    if cmd == "hf":
        check_hf(*a)
    else:
        raise SystemExit(f"unknown check {cmd}")


if __name__ == "__main__":
    main()
