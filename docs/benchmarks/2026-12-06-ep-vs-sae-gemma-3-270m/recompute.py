"""Recomputes report.json's numbers from the files the run wrote, with numpy alone (its own
safetensors reader, its own encoders and AUROC), and fails (exit 1) on any disagreement.

    python recompute.py WORKDIR REPORT.json [--model MODEL_DIR] [--max-builds N]

Checked for every build in the report:
* EP: the partition count and θ from the dictionary file; per concept the region chosen on the
  training rows (largest mean positive − negative cosine code per token, mean-direction basis) and
  its held-out AUROC (max over tokens of cos(x_t − c, w_k*)), and the mean AUROC; the held-out FVU
  of the nearest exemplar's reconstruction c + ((x − c)·e_k) e_k on the first `heldout_rows` rows;
* SAE: per concept the feature chosen the same way from its TopK codes and its AUROC (max over
  tokens of the code), the mean AUROC; the held-out FVU and the fraction of features that never
  fire on the first `eval_rows` held-out rows (the training's own end-of-run check);
* both: forward FLOPs (budget × the forward formula of the model's config.json), and the forward
  shares of FLOPs and seconds.
Not recomputed here (each has its own reference test: tests/sae_compare.rs against numpy/scipy,
tests/ep_vs_sae_bench.rs against scikit-learn's tree, tests/eval_metrics.rs for the logistic
probe): the probes' accuracies and the EP↔SAE F1 shares.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

DT = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8,
      "BOOL": np.bool_, "F16": np.float16}


def read_st(path, names=None):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for k, v in h.items():
            if k == "__metadata__" or (names is not None and k not in names):
                continue
            a, b = v["data_offsets"]
            f.seek(base + a)
            out[k] = np.frombuffer(f.read(b - a), dtype=DT[v["dtype"]]).reshape(v["shape"])
    return out, h.get("__metadata__", {})


def auroc(pos, neg):
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    s = np.concatenate([pos, neg])
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sv = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


class Heldout:
    def __init__(self, workdir):
        t, _ = read_st(os.path.join(workdir, "heldout.safetensors"))
        self.x = t["activations"].astype(np.float64)
        self.rows = {}
        r = 0
        with open(os.path.join(workdir, "heldout.safetensors.provenance.jsonl")) as f:
            for line in f:
                d = json.loads(line)
                n = len(d["positions"])
                self.rows[d["doc_id"]] = (r, r + n)
                r += n
        assert r == len(self.x), f"sidecar covers {r} rows, the file has {len(self.x)}"

    def doc(self, i):
        a, b = self.rows[i]
        return self.x[a:b]


def concept_rows(workdir):
    by = {}
    for line in open(os.path.join(workdir, "concepts.jsonl")):
        r = json.loads(line)
        g = by.setdefault(r["concept_id"], {"train_pos": [], "train_neg": [], "eval_pos": [], "eval_neg": []})
        key = ("eval_" if r["split"] == "eval" else "train_") + ("pos" if r["category"] == "positive" else "neg")
        g[key].append(r["doc_id"])
    return by


def detect(codes_of, by):
    """codes_of(doc) -> (tokens × width) codes; per concept the argmax of the positive −
    negative mean code per token (train rows) and the AUROC of the max over tokens (eval rows).
    Per document only the sum and the max over its tokens are kept."""
    stats = {}

    def st(i):
        if i not in stats:
            c = codes_of(i)
            stats[i] = (c.sum(0), c.max(0), len(c))
        return stats[i]
    out = {}
    for cid, g in sorted(by.items()):
        def mean(ids):
            s = sum(st(i)[0] for i in ids)
            return s / sum(st(i)[2] for i in ids)
        k = int(np.argmax(mean(g["train_pos"]) - mean(g["train_neg"])))
        out[cid] = (k, auroc([st(i)[1][k] for i in g["eval_pos"]],
                             [st(i)[1][k] for i in g["eval_neg"]]))
    return out


def unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-30)


def sae_encode(p, x):
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    k = p["k"]
    idx = np.argpartition(-pre, k - 1, axis=1)[:, :k]
    z = np.zeros_like(pre)
    rows = np.arange(len(x))[:, None]
    z[rows, idx] = np.maximum(pre[rows, idx], 0)
    return z


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("report")
    ap.add_argument("--model", default=os.environ.get("EXEMPLAR_GEMMA3_270M"))
    ap.add_argument("--max-builds", type=int, default=None)
    ap.add_argument("--budgets", default=None, help="check only the builds of these budgets")
    ap.add_argument("--tol", type=float, default=1e-6)
    a = ap.parse_args()
    if not a.model:
        ap.error("the model directory is needed for the forward FLOPs: pass --model DIR or set "
                 "EXEMPLAR_GEMMA3_270M (source scripts/env.sh)")
    rep = json.load(open(a.report))
    H = Heldout(a.workdir)
    by = concept_rows(a.workdir)
    failures, checks = [], 0

    def same(what, got, want, tol=a.tol):
        nonlocal checks
        checks += 1
        if isinstance(want, (int, np.integer)) and isinstance(got, (int, np.integer)):
            ok = got == want
        else:
            ok = abs(float(got) - float(want)) <= tol * max(1.0, abs(float(want)))
        if not ok:
            failures.append(f"{what}: report {want!r}, recomputed {got!r}")

    cfg = json.load(open(os.path.join(a.model, "config.json")))
    c = cfg.get("text_config", cfg)
    layer = int(rep["hook"].split(".")[1])
    seq = int(os.environ.get("CTX", "64")) + 1  # BOS + ctx, as harvest.sh packed them
    per_tok = 2.0 * (c["hidden_size"] * c["num_attention_heads"] * c["head_dim"] * 2
                     + c["hidden_size"] * c["num_key_value_heads"] * c["head_dim"] * 2
                     + 3 * c["hidden_size"] * c["intermediate_size"]
                     + 2 * seq * c["num_attention_heads"] * c["head_dim"]) * (layer + 1)
    per_row = per_tok * seq / (seq - 1)
    same("forward FLOPs per row", per_row, rep["harvest"]["forward_flops_per_row"])
    builds = rep["builds"][: a.max_builds] if a.max_builds else rep["builds"]
    if a.budgets:
        keep = {int(v) for v in a.budgets.split(",")}
        builds = [b for b in builds if b["budget"] in keep]
    for b in builds:
        name = b["name"]
        same(f"{name} forward FLOPs", b["budget"] * per_row, b["forward_flops"])
        same(f"{name} forward share (FLOPs)",
             b["forward_flops"] / (b["forward_flops"] + b["build_flops"]), b["forward_share_flops"])
        same(f"{name} forward share (seconds)",
             b["forward_seconds"] / (b["forward_seconds"] + b["build_seconds"]),
             b["forward_share_seconds"])
        if b["kind"] == "ep":
            t, meta = read_st(os.path.join(a.workdir, "runs", name + ".safetensors"),
                              {"center", "direction_sums", "exemplars"})
            m = json.loads(meta["exemplar"])
            same(f"{name} partitions", int(t["exemplars"].shape[0]), b["partitions"])
            same(f"{name} theta", m["theta"], b["theta"])
            center = t["center"].astype(np.float64)
            w = unit(t["direction_sums"].astype(np.float64))
            res = detect(lambda i: unit(H.doc(i) - center) @ w.T, by)
            if b.get("heldout_fvu") is not None:
                # the nearest exemplar by cosine (= largest projection: one norm per row), and
                # the hard featurizer's reconstruction c + ((x - c).e_k) e_k
                rows = H.x[: b["heldout_rows"]]
                e = t["exemplars"].astype(np.float64)
                xc = rows - center
                proj = xc @ e.T
                k = proj.argmax(1)
                recon = center + proj[np.arange(len(k)), k][:, None] * e[k]
                fvu = ((rows - recon) ** 2).sum() / ((rows - rows.mean(0)) ** 2).sum()
                same(f"{name} held-out FVU (nearest exemplar)", fvu, b["heldout_fvu"], 1e-3)
        else:
            d = os.path.join(a.workdir, "runs", name)
            t, _ = read_st(os.path.join(d, "sae_weights.safetensors"))
            sc = json.load(open(os.path.join(d, "cfg.json")))
            p = {k: t[k].astype(np.float64) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
            p["k"] = b["k"]
            same(f"{name} width", int(p["W_enc"].shape[1]), b["width"])
            assert sc.get("d_sae", b["width"]) == b["width"]
            res = detect(lambda i: sae_encode(p, H.doc(i)), by)
            rows = H.x[: b["heldout_rows"]]
            z = sae_encode(p, rows)
            recon = z @ p["W_dec"] + p["b_dec"]
            fvu = ((rows - recon) ** 2).sum() / ((rows - rows.mean(0)) ** 2).sum()
            same(f"{name} held-out FVU", fvu, b["heldout_fvu"], 1e-3)
            same(f"{name} held-out never-firing fraction", float((z > 0).sum(0).__eq__(0).mean()),
                 b["heldout_dead_fraction"], 2.0 / b["width"])
        if "detection" in b:
            # exemplar computes in float32, this script in float64: a pair of eval scores that
            # (nearly) tie may be ordered differently, which moves an AUROC by at most one
            # pair's weight, 1 / (positives × negatives).
            pair = {cid: 1.0 / (len(g["eval_pos"]) * len(g["eval_neg"])) for cid, g in by.items()}
            for row in b["detection"]:
                k, auc = res[row["concept_id"]]
                key = "region" if b["kind"] == "ep" else "feature"
                same(f"{name} concept {row['concept_id']} {key}", k, row[key])
                same(f"{name} concept {row['concept_id']} AUROC", auc, row["auroc"],
                     pair[row["concept_id"]] + 1e-9)
            same(f"{name} mean AUROC", np.mean([res[r["concept_id"]][1] for r in b["detection"]]),
                 b["detection_mean_auroc"], np.mean(list(pair.values())) + 1e-9)
    print(json.dumps({"checks": checks, "failures": failures, "builds": len(builds)}, indent=1))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
