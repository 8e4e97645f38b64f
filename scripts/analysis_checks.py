#!/usr/bin/env python3
"""Independent checks of the analyses (tests/analyses.rs runs them): numpy / scipy /
scikit-learn re-implementations of `exemplar hierarchy`, `stability`, `ood-baseline` and the
logit lens of `label`, the MI explanations of `explain` (words, scores, baselines, statistics), and HF transformers with PyTorch forward hooks for `steer` and `ablate`.

Each subcommand reads the dictionaries with safetensors + numpy only and compares with the
JSON / JSON Lines the CLI wrote; it exits non-zero (AssertionError) on the first mismatch and
prints `ok ...` otherwise.

    analysis_checks.py hierarchy TREE.json DICT...
    analysis_checks.py stability REPORT.json CUTOFF BASIS DICT...
    analysis_checks.py ood REPORT.json DICT REFERENCE.npy IN.npy OOD.npy...
    analysis_checks.py lens MODEL_DIR DICT LABELS.jsonl
    analysis_checks.py mi MODEL_DIR DICT EXPLANATIONS.jsonl REPORT.json
    analysis_checks.py hf-steer MODEL_DIR DICT STEER.jsonl...
    analysis_checks.py hf-shift MODEL_DIR DICT SHIFT.jsonl
    analysis_checks.py hf-ablate MODEL_DIR DICT REPORT.json PER_POSITION.jsonl PROMPTS TARGETS...
"""

import json
import sys
from collections import deque

import numpy as np
from safetensors import safe_open

TOL = 1e-4


def load_dict(path):
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys() if k != "document_tokens"}
    info = json.loads(meta["exemplar"])
    res, rows = t["reservoir"], t["reservoir_rows"]
    t["res_list"] = [res[k][rows[k] >= 0] for k in range(len(rows))]
    return info, t


def nearest(u, e):
    s = u.astype(np.float64) @ e.astype(np.float64).T
    ids = s.argmax(axis=1)
    return ids, np.clip(1.0 - s[np.arange(len(u)), ids], 0.0, 2.0)


def close(a, b, what, tol=TOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    err = np.max(np.abs(a - b)) if a.size else 0.0
    assert err <= tol, f"{what}: max |Δ| {err} > {tol}\n{a}\n{b}"
    return err


# ----------------------------------------------------------------------------------------------
# hierarchy


def knn_graph(e, k):
    s = e.astype(np.float64) @ e.astype(np.float64).T
    n = len(e)
    adj = [set() for _ in range(n)]
    for i in range(n):
        order = sorted((j for j in range(n) if j != i), key=lambda j: (-s[i, j], j))
        for j in order[:k]:
            adj[i].add(j)
            adj[j].add(i)
    return [sorted(a) for a in adj]


def bfs(adj, a, b):
    prev = {a: a}
    q = deque([a])
    while q:
        v = q.popleft()
        if v == b:
            break
        for w in adj[v]:
            if w not in prev:
                prev[w] = v
                q.append(w)
    if b not in prev:
        return None
    path = [b]
    while path[-1] != a:
        path.append(prev[path[-1]])
    return path[::-1]


def check_hierarchy(tree_path, dict_paths):
    out = json.load(open(tree_path))
    ds = [load_dict(p) for p in dict_paths]
    order = sorted(range(len(ds)), key=lambda i: -ds[i][0]["theta"])  # stable: ties keep order
    levels = [ds[i] for i in order]
    assert [l["input_index"] for l in out["levels"]] == order, (out["levels"], order)
    parents = {}
    for i, (fi, ft) in enumerate(levels):
        for j in range(i):
            ci, ct = levels[j]
            ids, dist = nearest(ft["exemplars"], ct["exemplars"])
            for r in range(len(ids)):
                node = out["tree"][i]["nodes"][r]
                got = node["parents"][j]
                assert got["region"] == ids[r], (i, j, r, got, ids[r])
                close(got["distance"], dist[r], f"distance L{i}r{r}→L{j}", 1e-5)
                assert got["within_theta"] == bool(dist[r] <= ci["theta"])
                res = ft["res_list"][r]
                if len(res):
                    rid, _ = nearest(res, ct["exemplars"])
                    close(got["purity"], np.mean(rid == ids[r]), "purity", 1e-12)
                else:
                    assert got["purity"] is None
                if j == i - 1:
                    assert node["parent"] == ids[r]
            parents[(i, j)] = ids
    # children are the inverse of the next-level parents
    for i in range(len(levels) - 1):
        for r, node in enumerate(out["tree"][i]["nodes"]):
            assert node["children"] == [c for c, p in enumerate(parents[(i + 1, i)]) if p == r]
            assert node["members"] == int(levels[i][1]["member_counts"][r])

    def chain(i, r, up_to):
        while i > up_to:
            r = parents[(i, i - 1)][r]
            i -= 1
        return r

    for c in out["consistency"]:
        i, j = c["fine"], c["coarse"]
        n = len(parents[(i, j)])
        want = np.mean([parents[(i, j)][r] == chain(i, r, j) for r in range(n)])
        close(c["chain_consistent"], want, "consistency", 1e-12)
    for p in out["paths"]:
        lv, a, b = p["level"], p["from"], p["to"]

        def up(i, r):
            v = [(i, r)]
            while i > 0:
                r = int(parents[(i, i - 1)][r])
                i -= 1
                v.append((i, r))
            return v

        ca, cb = up(lv, a), up(lv, b)
        want = None
        for ia, n in enumerate(ca):
            if n in cb:
                ib = cb.index(n)
                want = ca[: ia + 1] + cb[:ib][::-1]
                break
        got = p["tree_path"] and [(x["level"], x["region"]) for x in p["tree_path"]]
        assert got == want, (got, want)
        ea, eb = levels[lv][1]["exemplars"][a], levels[lv][1]["exemplars"][b]
        for kp in p["knn_paths"]:
            m = kp["level"]
            e = levels[m][1]["exemplars"]
            if m == lv:
                fa, fb = a, b
            else:
                (fa, fb), _ = nearest(np.stack([ea, eb]), e)
            assert (kp["from"], kp["to"]) == (fa, fb), (kp, fa, fb)
            assert kp["path"] == bfs(knn_graph(e, p["knn"]), int(fa), int(fb)), kp
    print(f"ok hierarchy: {len(levels)} levels, {sum(len(l[1]['exemplars']) for l in levels)} regions, {len(out['paths'])} paths")


# ----------------------------------------------------------------------------------------------
# stability


def check_stability(report_path, cutoff, basis, dict_paths):
    from scipy.optimize import linear_sum_assignment
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    rep = json.load(open(report_path))
    ds = [load_dict(p)[1] for p in dict_paths]
    key = "mean_directions" if basis == "mean" else "exemplars"
    n = len(ds)
    cos = {}
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            s = ds[i][key].astype(np.float64) @ ds[j][key].astype(np.float64).T
            r, c = linear_sum_assignment(-s)
            v = np.full(len(ds[i][key]), np.nan)
            v[r] = s[r, c]
            cos[(i, j)] = v
    regions = rep["regions"]
    k = 0
    rows = []
    for i in range(n):
        N = ds[i]["member_counts"].astype(np.float64)
        c = np.linalg.norm(ds[i]["direction_sums"], axis=1) / N
        others = [j for j in range(n) if j != i]
        for r in range(len(N)):
            g = regions[k]
            k += 1
            assert (g["dictionary"], g["region"]) == (i, r)
            assert g["members"] == N[r]
            close(g["d"], np.log10(N[r] * c[r] ** 2), "D", 1e-9)
            close(g["coherence"], c[r], "coherence", 1e-12)
            m = [cos[(i, j)][r] for j in others]
            for gm, wm in zip(g["matched_cos"], m):
                if np.isnan(wm):
                    assert gm is None
                else:
                    close(gm, wm, "matched cos", 1e-5)
            pers = [not np.isnan(x) and x >= cutoff for x in m]
            # Near the cutoff, f32 vs f64 may round either way: skip those.
            if all(np.isnan(x) or abs(x - cutoff) > 1e-5 for x in m):
                assert g["persisted_in"] == sum(pers), (g, m)
                assert g["persisted"] == all(pers)
            rows.append((np.log10(N[r] * c[r] ** 2), g["persisted"], np.nanmean(np.where(np.isnan(m), 0, m)), np.log10(N[r]), c[r]))
    assert k == len(regions)
    d = np.array([x[0] for x in rows])
    y = np.array([x[1] for x in rows])
    if 0 < y.sum() < len(y):
        close(rep["auroc_d"], roc_auc_score(y, d), "AUROC(D)", 1e-12)
        close(rep["auroc_log_members"], roc_auc_score(y, [x[3] for x in rows]), "AUROC(log N)", 1e-12)
        close(rep["auroc_coherence"], roc_auc_score(y, [x[4] for x in rows]), "AUROC(c)", 1e-9)
    else:
        assert rep["auroc_d"] is None
    close(rep["persisted_fraction"], y.mean(), "persisted fraction", 1e-12)
    close(rep["spearman_d_mean_cos"], spearmanr(d, [x[2] for x in rows]).statistic, "spearman", 1e-6)
    print(f"ok stability: {len(rows)} regions, persisted {y.mean():.3f}, AUROC(D) {rep['auroc_d']}")


# ----------------------------------------------------------------------------------------------
# OOD against the k-NN baseline


def check_ood(report_path, dict_path, ref_path, in_path, ood_paths):
    from sklearn.metrics import roc_auc_score

    rep = json.load(open(report_path))
    info, t = load_dict(dict_path)
    c, e, theta = t["center"].astype(np.float64), t["exemplars"], info["theta"]

    def unit(x):
        xc = x.astype(np.float64) - c
        return xc / (np.linalg.norm(xc, axis=1, keepdims=True) + 1e-12)

    ref = np.load(ref_path)
    idx = np.array(rep["sampled_reference_rows"])
    assert len(idx) == rep["sample_size"] == len(e) and len(set(idx.tolist())) == len(idx)
    assert idx.min() >= 0 and idx.max() < len(ref)
    sample = unit(ref[idx])
    ks = rep["ks"]

    def score(x):
        u = unit(x)
        ep = nearest(u, e)[1]
        s = np.sort(u @ sample.T, axis=1)[:, ::-1]
        return ep, [np.clip(1 - s[:, k - 1], 0, 2) for k in ks]

    in_ep, in_knn = score(np.load(in_path))
    sets = [rep["in_distribution"]] + rep["out_of_distribution"]
    for rec, path in zip(sets, [in_path] + ood_paths):
        ep, knn = score(np.load(path))
        assert rec["rows"] == len(ep)
        close(rec["ep"]["mean"], ep.mean(), "EP mean", 1e-5)
        close(rec["ep"]["within_theta_rate"], np.mean(ep <= theta), "EP within θ", 1e-12)
        for kr, kd in zip(rec["knn"], knn):
            close(kr["mean"], kd.mean(), "kNN mean", 1e-5)
            close(kr["median"], np.median(kd), "kNN median", 1e-5)
            close(kr["within_theta_rate"], np.mean(kd <= theta), "kNN within θ", 1e-12)
        if rec is sets[0]:
            continue
        y = np.r_[np.ones(len(ep)), np.zeros(len(in_ep))]
        close(rec["ep"]["auroc"], roc_auc_score(y, np.r_[ep, in_ep]), "EP AUROC", 1e-6)
        close(rec["ep_outside_theta_auroc"], roc_auc_score(y, np.r_[ep > theta, in_ep > theta]), "EP θ AUROC", 1e-9)
        for kr, kd, ki in zip(rec["knn"], knn, in_knn):
            close(kr["auroc"], roc_auc_score(y, np.r_[kd, ki]), "kNN AUROC", 1e-6)
    print(f"ok ood: {len(sets)} sets, ks {ks}")


# ----------------------------------------------------------------------------------------------
# logit lens (label)


def lens_logits(model_dir, dirs):
    """Final RMSNorm (eps from config, weight 1 + w) then the tied unembedding, in float64."""
    import glob

    cfg = json.load(open(f"{model_dir}/config.json"))
    w = {}
    for p in glob.glob(f"{model_dir}/*.safetensors"):
        if "expected" in p:
            continue
        with safe_open(p, framework="numpy") as f:
            for k in f.keys():
                if k.endswith("norm.weight") and k.count(".") == 2 or k.endswith("embed_tokens.weight"):
                    w[k] = f.get_tensor(k).astype(np.float64)
    norm = next(v for k, v in w.items() if k.endswith("model.norm.weight"))
    emb = next(v for k, v in w.items() if k.endswith("embed_tokens.weight"))
    x = dirs.astype(np.float64)
    h = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + cfg["rms_norm_eps"]) * (1 + norm)
    lg = h @ emb.T
    cap = cfg.get("final_logit_softcapping")
    if cap:
        lg = np.tanh(lg / cap) * cap
    return lg


def check_lens(model_dir, dict_path, labels_path):
    info, t = load_dict(dict_path)
    recs = [json.loads(l) for l in open(labels_path)]
    regions = [r["region"] for r in recs]
    md = t["mean_directions"]
    for name, dirs in (("exemplar_lens", t["exemplars"][regions]), ("mean_lens", md[regions])):
        lg = lens_logits(model_dir, dirs)
        lp = lg - np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)) - lg.max(1, keepdims=True)
        for rec, row, lrow in zip(recs, lg, lp):
            got = rec[name]
            want = np.argsort(-row, kind="stable")[: len(got)]
            # f32 model vs f64 here: only near-equal logits may swap.
            for g, wi in zip(got, want):
                if g["id"] != wi:
                    assert abs(row[g["id"]] - row[wi]) < 1e-4 * max(1, abs(row[wi])), (g, wi)
                close(g["logit"], row[g["id"]], "lens logit", 1e-4 * max(1, abs(row[g["id"]])))
                close(g["logprob"], lrow[g["id"]], "lens logprob", 1e-4)
    print(f"ok lens: {len(recs)} regions")


# ----------------------------------------------------------------------------------------------
# MI explanations (Wu et al.)


def lens_weights(model_dir):
    """(rms_norm_eps, 1 + final norm weight, tied unembedding), float64."""
    import glob

    cfg = json.load(open(f"{model_dir}/config.json"))
    norm = emb = None
    for p in glob.glob(f"{model_dir}/*.safetensors"):
        if "expected" in p:
            continue
        with safe_open(p, framework="numpy") as f:
            for k in f.keys():
                if k.endswith("model.norm.weight"):
                    norm = f.get_tensor(k).astype(np.float64)
                elif k.endswith("embed_tokens.weight"):
                    emb = f.get_tensor(k).astype(np.float64)
    return cfg["rms_norm_eps"], 1 + norm, emb


def log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def mi_quality(lists, superficial):
    """Wu et al.'s Diversity / Lexical / Dominate; 10% of the regions with a non-empty list."""
    uses = {}
    for l in lists:
        for w in set(l):
            uses[w] = uses.get(w, 0) + 1
    regions = sum(1 for l in lists if l)
    sup = {w for w, s in enumerate(superficial) if s}
    n_sup, n_deep = len(sup), len(superficial) - len(sup)
    used_sup = sum(1 for w in uses if w in sup)
    used_deep = len(uses) - used_sup
    dom = sum(1 for c in uses.values() if c / max(regions, 1) > 0.1)
    r = lambda a, b: a / b if b else None
    return dict(diversity=r(used_deep, n_deep), lexical=r(used_sup, n_sup), dominate=r(dom, len(uses)),
                words_used=len(uses), dominating=dom, regions=regions)


def check_ranked(got_words, got_vals, row, words, what, tol):
    """`got_words` are the top of `row` (descending, ties to the lower index) with values
    `got_vals`; only near-equal values may swap."""
    index = {w: i for i, w in enumerate(words)}
    want = np.argsort(-row, kind="stable")[: len(got_words)]
    for g, wi in zip(got_words, want):
        gi = index[g]
        if gi != wi:
            assert abs(row[gi] - row[wi]) < tol, (what, g, words[wi], row[gi], row[wi])
    close(got_vals, row[[index[g] for g in got_words]], what, tol)


def check_mi(model_dir, dict_path, expl_path, report_path):
    import regex
    from tokenizers import Tokenizer

    info, t = load_dict(dict_path)
    rep = json.load(open(report_path))
    recs = [json.loads(l) for l in open(expl_path)]
    voc = rep["vocabulary"]
    words, opts = voc["words"], rep["options"]
    tok = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    unk = tok.token_to_id("<unk>")
    ids = [tok.encode(" " + w, add_special_tokens=False).ids for w in words]
    assert all(ids) and (unk is None or all(unk not in i for i in ids)), "an encoded word has <unk>"
    for s in voc["skipped"]:
        if "<unk>" in s["reason"]:
            assert unk in tok.encode(" " + s["word"], add_special_tokens=False).ids, s
    eps, scale, emb = lens_weights(model_dir)
    wv = np.stack([emb[i].mean(axis=0) for i in ids])
    x = (t["exemplars"] if rep["direction"] == "exemplar" else t["mean_directions"]).astype(np.float64)
    h = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps) * scale
    a = h @ wv.T
    lp_w = log_softmax(a / opts["alpha"], 1)
    lp_c = log_softmax(a / opts["beta"], 0)
    score = np.exp(lp_w) * lp_c
    assert [r["region"] for r in recs] == list(range(len(x))), "one record per region, in order"
    tol = 1e-4 * max(1.0, np.abs(a).max())
    index = {w: i for i, w in enumerate(words)}
    for r, rec in enumerate(recs):
        mi = rec["mi"]
        assert len(mi) == min(opts["top"], len(words))
        got = [m["word"] for m in mi]
        check_ranked(got, [m["score"] for m in mi], score[r], words, f"r{r} score", 1e-4)
        gi = [index[g] for g in got]
        close([m["log_p_word"] for m in mi], lp_w[r, gi], f"r{r} log p(w|c)", tol)
        close([m["log_p_region"] for m in mi], lp_c[r, gi], f"r{r} log p(c|w)", tol)
        check_ranked([l["word"] for l in rec["lens"]], [l["a"] for l in rec["lens"]], a[r], words, f"r{r} lens", tol)
        counts = {}
        for s in rec["snippets"]:
            # Rust's char::is_alphabetic is the Unicode Alphabetic property.
            for w in regex.findall(r"\p{Alphabetic}+", s):
                if w in index:
                    counts[index[w]] = counts.get(index[w], 0) + 1
        want = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: opts["top"]]
        got = [(index[m["word"]], m["count"]) for m in rec["top_members"]]
        assert got == want, (r, got, want)
    sup = [i < 250 or len(w) < 4 for i, w in enumerate(words)]
    assert voc["superficial"] == sum(sup)
    for name, key in (("mi", "mi"), ("logit_lens", "lens"), ("top_members", "top_members")):
        lists = [[index[m["word"]] for m in rec[key]] for rec in recs]
        want = mi_quality(lists, sup)
        got = rep["quality"][name]
        for k, v in want.items():
            if v is None or isinstance(v, int):
                assert got[k] == v, (name, k, got[k], v)
            else:
                close(got[k], v, f"{name} {k}", 1e-12)
    print(f"ok mi: {len(recs)} regions x {len(words)} words, {len(voc['skipped'])} skipped")


# ----------------------------------------------------------------------------------------------
# HF transformers with a PyTorch forward hook


def load_hf(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    return model, tok


class Hook:
    """The edit of one record, on the output of decoder layer L (= blocks.L.hook_resid_post),
    computed in float64 from the dictionary file and cast back to float32."""

    def __init__(self, edit, t, theta):
        import torch

        self.torch = torch
        self.edit = edit
        c = t["center"].astype(np.float64)
        basis = t["mean_directions"] if edit["basis"] == "mean" else t["exemplars"]
        self.c = torch.tensor(c)
        self.dirs = torch.tensor(basis[edit["regions"]].astype(np.float64))
        self.E = torch.tensor(t["exemplars"].astype(np.float64))
        self.theta = theta
        self.opened = 0
        self.seen = 0
        self.near_out = 0  # nearest exemplar in the gate's set, but outside θ
        self.band = 0  # inside, within 20% of θ from the edge

    def __call__(self, module, args, out):
        torch = self.torch
        x = out[0] if isinstance(out, tuple) else out
        x64 = x.double()
        e = self.edit
        xc = x64 - self.c
        if e["kind"] == "add":
            y = x64 + e["alpha"] * self.dirs[0]
        elif e["kind"] in ("raise", "clamp"):
            d = self.dirs[0]
            proj = xc @ d
            delta = e["value"] - proj
            if e["kind"] == "raise":
                delta = delta.clamp_min(0)
            y = x64 + delta[..., None] * d
        else:
            q, _ = np.linalg.qr(self.dirs.numpy().T)
            q = torch.tensor(q)
            y = xc - (xc @ q) @ q.T + self.c
        if e["keep_norm"]:
            y = y * (x64.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True))
        if e["gate"] is not None:
            u = xc / (xc.norm(dim=-1, keepdim=True) + 1e-12)
            s = u @ self.E.T
            best, idx = s.max(dim=-1)
            member = torch.isin(idx, torch.tensor(e["gate"]))
            gate = member & (1 - best <= self.theta)
            self.opened += int(gate.sum())
            self.seen += gate.numel()
            self.near_out += int((member & (1 - best > self.theta)).sum())
            self.band += int((gate & (1 - best > 0.8 * self.theta)).sum())
            y = torch.where(gate[..., None], y, x64)
        y = y.to(x.dtype)
        return (y,) + tuple(out[1:]) if isinstance(out, tuple) else y


def uniform(seed, counter):
    """The crate's counter-based draw (build::uniform_below with n = 2^53) / 2^53."""
    m = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + counter + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return ((z * (1 << 53)) >> 64) / float(1 << 53)


def check_hf_steer(model_dir, dict_path, steer_paths):
    import torch

    model, tok = load_hf(model_dir)
    info, t = load_dict(dict_path)
    eos = model.config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    recs = [json.loads(l) for p in steer_paths for l in open(p)]
    worst = 0.0
    gates = []
    for r in recs:
        layer = int(r["hook"].split(".")[1])
        assert r["hook"].endswith("hook_resid_post")
        h = None
        if r["edit"] is not None:
            assert r["edit"]["random_seed"] is None, "random controls are not checked here"
            h = Hook(r["edit"], t, info["theta"])
            handle = model.model.layers[layer].register_forward_hook(h)
        ids = tok(r["prompt"], return_tensors="pt").input_ids[0].tolist()
        assert len(ids) == r["prompt_tokens"], (ids, r["prompt_tokens"])
        got_ids, got_lp = [], []
        n_new = len(r["ids"])
        for step in range(n_new):
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            lp = torch.log_softmax(logits, -1)
            if r["seed"] is None:
                nxt = int(logits.argmax())
            else:
                temp, topk = r["temperature"], r["top_k"]
                sc = logits / temp
                if topk is not None and topk < len(sc):
                    kth = torch.topk(sc, topk).values[-1]
                    sc = sc.masked_fill(sc < kth, float("-inf"))
                p = torch.softmax(sc, -1).numpy()
                u = uniform(r["seed"], step)
                cum = np.cumsum(p)
                nxt = int(np.searchsorted(cum, u, side="right"))
                nxt = min(nxt, int(np.nonzero(p > 0)[0][-1]))
            got_ids.append(nxt)
            got_lp.append(float(lp[nxt]))
            ids.append(nxt)
            if nxt in eos and r["stopped_at_eos"]:
                break
        if h is not None:
            handle.remove()
            if h.edit["gate"] is not None:
                gates.append((h.opened, h.seen, h.near_out, h.band))
        assert got_ids == r["ids"], f"{r['edit_label']} prompt {r['prompt_index']}: HF {got_ids} vs exemplar {r['ids']}"
        worst = max(worst, close(got_lp, r["logprobs"], f"{r['edit_label']} log-probs"))
    for o, s, near_out, band in gates:
        assert 0 < o < s, f"the gate opened at {o} of {s} positions: not a partial gate"
    assert any(g[2] for g in gates), f"no gated position had its nearest region in the set but lay outside θ: {gates}"
    assert any(g[3] for g in gates), f"no gated position lay within 20% of θ from the edge: {gates}"
    print(f"ok hf-steer: {len(recs)} continuations, worst log-prob |Δ| {worst:.2e}, gates (opened, positions, nearest in set outside θ, within 20% of θ from the edge) {gates}")


def check_hf_shift(model_dir, dict_path, shift_path):
    """`explain-steer`: the next-token log-mass on each record's tokens, unedited, with its edit
    and with its control edit, from HF transformers with the same edits as forward hooks."""
    import torch

    from transformers import AutoModelForCausalLM

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    info, t = load_dict(dict_path)
    recs = [json.loads(l) for l in open(shift_path)]
    worst = 0.0
    for r in recs:
        layer = int(r["hook"].split(".")[1])
        assert r["hook"].endswith("hook_resid_post")
        ids = torch.tensor([r["prompt_ids"]])
        tokens = torch.tensor(r["tokens"])
        assert r["edit"]["regions"] == [r["region"]] and r["control_edit"]["regions"] == [r["control_region"]]
        assert r["control_region"] != r["region"]
        got = {}
        for key, edit in (("base", None), ("steered", r["edit"]), ("control", r["control_edit"])):
            handle = None
            if edit is not None:
                assert edit["kind"] == "raise" and edit["keep_norm"], edit
                handle = model.model.layers[layer].register_forward_hook(Hook(edit, t, info["theta"]))
            lp = torch.log_softmax(model(ids).logits[0, -1].double(), -1)
            if handle is not None:
                handle.remove()
            got[key] = float(torch.logsumexp(lp[tokens], 0))
            worst = max(worst, close(r[key], got[key], f"r{r['region']} p{r['prompt_index']} {key}"))
    print(f"ok hf-shift: {len(recs)} records, max |Δ log-mass| {worst:.2e}")


def check_hf_ablate(model_dir, dict_path, report_path, per_position_path, prompts_path, targets):
    import torch

    model, tok = load_hf(model_dir)
    info, t = load_dict(dict_path)
    rep = json.load(open(report_path))
    layer = int(rep["target"]["hook"].split(".")[1])
    edit = {"kind": "ablate", "regions": rep["regions"], "basis": rep["basis"], "gate": None, "keep_norm": False}
    E, c, theta = t["exemplars"], t["center"].astype(np.float64), info["theta"]
    worst = 0.0
    n_in = n_all = n_near_out = 0
    for line in open(per_position_path):
        r = json.loads(line)
        ids = torch.tensor([r["ids"]])
        out = model(ids, output_hidden_states=True)
        clean = torch.log_softmax(out.logits[0].double(), -1)
        act = out.hidden_states[layer + 1][0].double().numpy()
        handle = model.model.layers[layer].register_forward_hook(Hook(edit, t, theta))
        abl = torch.log_softmax(model(ids).logits[0].double(), -1)
        handle.remove()
        pos = np.array(r["positions"])
        nxt = torch.tensor(r["ids"])[pos + 1]
        worst = max(worst, close(r["clean_loss"], -clean[pos, nxt].numpy(), "clean loss"))
        worst = max(worst, close(r["ablated_loss"], -abl[pos, nxt].numpy(), "ablated loss"))
        xc = act[pos] - c
        u = xc / (np.linalg.norm(xc, axis=1, keepdims=True) + 1e-12)
        k, d = nearest(u, E)
        want = np.isin(k, rep["regions"]) & (d <= theta)
        assert r["in_region"] == want.tolist(), (r["in_region"], want)
        n_in += int(want.sum())
        n_all += len(want)
        n_near_out += int((np.isin(k, rep["regions"]) & (d > theta)).sum())
    assert 0 < n_in < n_all, f"{n_in} of {n_all} positions inside: the test needs both kinds"
    assert n_near_out > 0, "no position has its nearest exemplar in the set but lies outside θ"
    prompts = [l for l in open(prompts_path).read().splitlines() if l.strip()]
    b = rep["behaviour"]

    def target_lp(hook):
        res = []
        for p in prompts:
            pid = tok(p).input_ids
            row = []
            for s in targets:
                tid = tok(s, add_special_tokens=False).input_ids
                if hook is not None:
                    hd = model.model.layers[layer].register_forward_hook(hook)
                lp = torch.log_softmax(model(torch.tensor([pid + tid])).logits[0].double(), -1)
                if hook is not None:
                    hd.remove()
                row.append(float(sum(lp[len(pid) - 1 + i, x] for i, x in enumerate(tid))))
            res.append(row)
        return res

    worst = max(worst, close(b["before"]["logprobs"], target_lp(None), "target log-probs before"))
    for k in b["k_sweep"]:
        e = dict(edit, regions=k["regions"])
        worst = max(worst, close(k["after"]["logprobs"], target_lp(Hook(e, t, theta)), f"target log-probs after k={k['k']}"))
    assert [k["regions"] for k in b["k_sweep"]][-1] == rep["regions"]
    print(f"ok hf-ablate: {n_all} positions ({n_in} inside, {n_near_out} nearest in the set outside θ), worst |Δ| {worst:.2e}")


def main():
    cmd, *a = sys.argv[1:]
    if cmd == "hierarchy":
        check_hierarchy(a[0], a[1:])
    elif cmd == "stability":
        check_stability(a[0], float(a[1]), a[2], a[3:])
    elif cmd == "ood":
        check_ood(a[0], a[1], a[2], a[3], a[4:])
    elif cmd == "lens":
        check_lens(a[0], a[1], a[2])
    elif cmd == "mi":
        check_mi(a[0], a[1], a[2], a[3])
    elif cmd == "hf-steer":
        check_hf_steer(a[0], a[1], a[2:])
    elif cmd == "hf-shift":
        check_hf_shift(a[0], a[1], a[2])
    elif cmd == "hf-ablate":
        check_hf_ablate(a[0], a[1], a[2], a[3], a[4], a[5:])
    else:
        raise SystemExit(f"unknown check {cmd}")


if __name__ == "__main__":
    main()
