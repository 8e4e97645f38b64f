#!/usr/bin/env python3
"""Independent checks of `exemplar circuits` (tests/circuits.rs runs them): HF transformers with
PyTorch forward pre-hooks for the patched forwards on the real model, numpy for MIB's
faithfulness, CPR and CMD, Python sets for the node and edge scores, and scikit-learn for the
ROC-AUC. Each reads the JSON report the CLI wrote, exits non-zero (AssertionError) on the first
mismatch and prints `ok ...` otherwise.

    circuits_checks.py hf-patch MODEL_DIR TASK.jsonl REPORT.json HEAD...
    circuits_checks.py metrics REPORT.json
    circuits_checks.py scores REPORT.json
"""

import json
import sys

import numpy as np

LD_TOL = 1e-4  # logit differences: tch vs HF eager, both f32 on the CPU (worst seen 8.3e-6)
TOL = 1e-9


def close(a, b, what, tol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert err <= tol, f"{what}: max |Δ| {err} > {tol}\n{a}\n{b}"
    return err


# ----------------------------------------------------------------------------------------------
# HF transformers: the same patch as a forward pre-hook on o_proj (its input is hook_z, heads
# concatenated: [B, T, heads·head_dim])


def check_hf_patch(model_dir, task_path, report_path, heads):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    rep = json.load(open(report_path))
    hd = model.config.head_dim
    nh = model.config.num_attention_heads
    nl = model.config.num_hidden_layers
    rows = [json.loads(l) for l in open(task_path) if l.strip()]
    layers = model.model.layers

    def ids_of(s):
        return tok(s, add_special_tokens=False).input_ids

    def ld(logits, a, w):
        return float(logits[0, -1, a].double() - logits[0, -1, w].double())

    clean_ld, corr_ld, z_corr = [], [], []
    for r in rows:
        a, w = ids_of(r["answer"]), ids_of(r["wrong_answer"])
        assert len(a) == 1 and len(w) == 1
        c = torch.tensor([[tok.bos_token_id] + ids_of(r["prompt"])])
        x = torch.tensor([[tok.bos_token_id] + ids_of(r["corrupted_prompt"])])
        clean_ld.append(ld(model(c).logits, a[0], w[0]))
        # The corrupted run, recording every layer's o_proj input (hook_z).
        rec = {}
        hs = [
            layers[l].self_attn.o_proj.register_forward_pre_hook(
                lambda m, args, l=l: rec.__setitem__(l, args[0].clone())
            )
            for l in range(nl)
        ]
        corr_ld.append(ld(model(x).logits, a[0], w[0]))
        for h in hs:
            h.remove()
        z_corr.append(rec)
    worst = close([p["clean"] for p in rep["task"]["per_prompt"]], clean_ld, "clean LD", LD_TOL)
    worst = max(worst, close([p["corrupted"] for p in rep["task"]["per_prompt"]], corr_ld, "corrupted LD", LD_TOL))

    def patched_mean(patch):  # patch: set of (layer, head)
        out = []
        for i, r in enumerate(rows):
            a, w = ids_of(r["answer"])[0], ids_of(r["wrong_answer"])[0]
            c = torch.tensor([[tok.bos_token_id] + ids_of(r["prompt"])])

            def pre(m, args, l):
                z = args[0].clone()
                for (pl, ph) in patch:
                    if pl == l:
                        z[..., ph * hd:(ph + 1) * hd] = z_corr[i][l][..., ph * hd:(ph + 1) * hd]
                return (z,)

            hs = [layers[l].self_attn.o_proj.register_forward_pre_hook(lambda m, args, l=l: pre(m, args, l))
                  for l in sorted({pl for pl, _ in patch})]
            out.append(ld(model(c).logits, a, w))
            for h in hs:
                h.remove()
        return float(np.mean(out))

    base = float(np.mean(clean_ld))
    effects = rep["patching"]["effects"]
    for name in heads:
        l, h = (int(v) for v in name[1:].split(".h"))
        got = base - patched_mean({(l, h)})
        worst = max(worst, close(effects[l * nh + h], got, f"patching effect of {name}", LD_TOL))
    fr = rep["faithfulness"]
    everything = {(l, h) for l in range(nl) for h in range(nh)}
    worst = max(worst, close(fr["m_empty"], patched_mean(everything), "m(∅): every head patched", LD_TOL))
    # One point of the EP curve: keep its top heads at 10%, patch the others.
    cv = fr["curves"][0]
    i = cv["fractions"].index(0.1)
    keep = cv["kept"][i]
    ranking = rep["codes"][0]["ranking"][:keep]
    kept = {(int(n[1:].split(".h")[0]), int(n.split(".h")[1])) for n in ranking}
    worst = max(worst, close(cv["metric"][i], patched_mean(everything - kept), f"{cv['ranking']} circuit at 10%", LD_TOL))
    print(f"ok hf-patch: {len(rows)} prompts, heads {' '.join(heads)}, m(∅), one circuit; worst |Δ| {worst:.2e}")


# ----------------------------------------------------------------------------------------------
# numpy: MIB faithfulness, CPR, CMD (MIB_circuit_track/evaluation.py's definitions)


def check_metrics(report_path):
    rep = json.load(open(report_path))
    fr = rep["faithfulness"]
    m_n, m_0 = fr["m_full"], fr["m_empty"]
    for cv in fr["curves"]:
        x = np.array(cv["fractions"], dtype=np.float64)
        m = np.array(cv["metric"], dtype=np.float64)
        f = (m - m_0) / (m_n - m_0)
        close(cv["faithfulness"], f, f"{cv['ranking']} faithfulness", 1e-12)
        n = rep["layers"] * rep["heads_per_layer"]
        assert cv["kept"] == [int(k * n) for k in x], cv["kept"]
        xs = x / x[-1]
        cpr = float(np.sum(np.diff(xs) * (f[1:] + f[:-1]) / 2))
        d = np.abs(1.0 - f)
        cmd = float(np.sum(np.diff(xs) * (d[1:] + d[:-1]) / 2))
        close(cv["cpr"], cpr, f"{cv['ranking']} CPR", 1e-12)
        close(cv["cmd"], cmd, f"{cv['ranking']} CMD", 1e-12)
        assert cv["faithfulness"][0] == 0.0 and abs(cv["faithfulness"][-1] - 1.0) < 1e-12
    print(f"ok metrics: {len(fr['curves'])} curves")


# ----------------------------------------------------------------------------------------------
# Python sets: node and edge scores from the report's codes; scikit-learn: ROC-AUC


def check_scores(report_path):
    from sklearn.metrics import roc_auc_score

    rep = json.load(open(report_path))
    norm = rep["normalize"]
    n = rep["layers"] * rep["heads_per_layer"]
    for c in rep["codes"]:
        pos, neg = np.array(c["codes_clean"]), np.array(c["codes_corrupted"])
        want = []
        for h in range(n):
            p, q = set(pos[:, h].tolist()), set(neg[:, h].tolist())
            only, distinct = len(p - q), len(p | q)
            want.append(only / distinct if norm else only)
            assert c["positive_only"][h] == only and c["distinct"][h] == distinct
        close(c["node_scores"], want, f"{c['sharing']} node scores", TOL)
        edges = {}
        for a in range(n):
            for b in range(a + 1, n):
                p = set(zip(pos[:, a].tolist(), pos[:, b].tolist()))
                q = set(zip(neg[:, a].tolist(), neg[:, b].tolist()))
                only = len(p - q)
                if only:
                    edges[(a, b)] = only / len(p | q) if norm else only
        name = lambda i: f"a{i // rep['heads_per_layer']}.h{i % rep['heads_per_layer']}"
        assert c["edges_positive"] == len(edges), (c["edges_positive"], len(edges))
        best = sorted(edges.items(), key=lambda kv: (-kv[1], kv[0]))[: len(c["edges"])]
        got = [(e["from"], e["to"], e["score"]) for e in c["edges"]]
        assert got == [(name(a), name(b), s) for (a, b), s in best], (got[:5], best[:5])
        if rep.get("patching"):
            top = set(rep["patching"]["top_heads"])
            labels = [name(h) in top for h in range(n)]
            auc = roc_auc_score(labels, c["node_scores"])
            close(c["auroc"], auc, f"{c['sharing']} ROC-AUC", 1e-12)
    print(f"ok scores: {len(rep['codes'])} code reports")


def main():
    cmd, *a = sys.argv[1:]
    if cmd == "hf-patch":
        check_hf_patch(a[0], a[1], a[2], a[3:])
    elif cmd == "metrics":
        check_metrics(a[0])
    elif cmd == "scores":
        check_scores(a[0])
    else:
        raise SystemExit(f"unknown check {cmd}")


if __name__ == "__main__":
    main()
