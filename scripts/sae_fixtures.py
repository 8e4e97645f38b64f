"""Fixtures and independent references for tests/sae_compare.rs (numpy, scipy, torch, safetensors).

Subcommands (each prints JSON on stdout when it has results):
  gemma-npz DIR D F N SEED          random JumpReLU SAE as Gemma Scope's params.npz (thresholds that
                                    bite), activations x.npy, numpy's codes expected.npy
  saelens DIR D F N SEED DTYPE FLAT a SAELens directory written with torch + safetensors, weights in
                                    DTYPE (float16|bfloat16); FLAT=1 writes a pre-6.0 flat cfg
                                    (topk via activation_fn_str/activation_fn_kwargs), FLAT=0 a v6
                                    cfg (standard); x.npy and torch's codes expected.npy
  lsa SEED                          random rectangular matrices and scipy's optimal totals
  compare-ref SAE DICT X.npy TOPK MINACT   §8.2 in numpy/scipy (an independent implementation)
  match-ref A B CUTOFF BASIS        §8.3 in numpy/scipy
"""

import json
import os
import sys

import numpy as np


def _jumprelu(x, w_enc, b_enc, thr):
    pre = x.astype(np.float64) @ w_enc.astype(np.float64) + b_enc
    return np.where(pre > thr, np.maximum(pre, 0.0), 0.0), pre


def gemma_npz(out, d, f, n, seed):
    rng = np.random.default_rng(seed)
    w_enc = rng.normal(0, 1 / np.sqrt(d), (d, f)).astype(np.float32)
    w_dec = rng.normal(0, 1 / np.sqrt(d), (f, d)).astype(np.float32)
    b_enc = rng.normal(0, 0.1, f).astype(np.float32)
    b_dec = rng.normal(0, 0.1, d).astype(np.float32)
    thr = rng.uniform(0.05, 0.6, f).astype(np.float32)
    x = rng.normal(0, 1, (n, d)).astype(np.float32)
    np.savez(os.path.join(out, "params.npz"), W_enc=w_enc, W_dec=w_dec, b_enc=b_enc, b_dec=b_dec,
             threshold=thr)
    np.save(os.path.join(out, "x.npy"), x)
    codes, pre = _jumprelu(x, w_enc, b_enc, thr)
    np.save(os.path.join(out, "expected.npy"), codes.astype(np.float32))
    bitten = int(((pre > 0) & (pre <= thr)).sum())
    print(json.dumps({"bitten": bitten, "active": int((codes > 0).sum()), "total": int(codes.size)}))


def saelens(out, d, f, n, seed, dtype, flat):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    w = {
        "W_enc": torch.randn(d, f) / d ** 0.5,
        "W_dec": torch.randn(f, d) / d ** 0.5,
        "b_enc": torch.randn(f) * 0.1,
        "b_dec": torch.randn(d) * 0.1,
    }
    w = {k: v.to(dt).contiguous() for k, v in w.items()}
    os.makedirs(out, exist_ok=True)
    save_file(w, os.path.join(out, "sae_weights.safetensors"))
    k = 3
    if flat:
        cfg = {"d_in": d, "d_sae": f, "dtype": dtype, "apply_b_dec_to_input": True,
               "activation_fn_str": "topk", "activation_fn_kwargs": {"k": k},
               "hook_point": "blocks.0.hook_resid_post", "model_name": "tiny",
               "normalize_activations": "none"}
    else:
        cfg = {"architecture": "standard", "d_in": d, "d_sae": f, "dtype": dtype,
               "apply_b_dec_to_input": False, "normalize_activations": "none",
               "metadata": {"hook_name": "blocks.0.hook_resid_post"}}
    with open(os.path.join(out, "cfg.json"), "w") as fh:
        json.dump(cfg, fh)
    x = torch.randn(n, d)
    np.save(os.path.join(out, "x.npy"), x.numpy())
    p = {kk: v.float() for kk, v in w.items()}
    xin = x - p["b_dec"] if cfg["apply_b_dec_to_input"] else x
    pre = xin @ p["W_enc"] + p["b_enc"]
    if flat:
        vals, idx = pre.topk(k, dim=-1)
        codes = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    else:
        codes = pre.relu()
    np.save(os.path.join(out, "expected.npy"), codes.numpy())


def lsa(seed):
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(seed)
    cases = []
    for n, m in [(1, 1), (3, 7), (7, 3), (12, 12), (20, 9), (9, 20), (40, 33), (25, 60)]:
        for maximize in (False, True):
            for ints in (False, True):
                c = rng.integers(0, 5, (n, m)).astype(np.float64) if ints else rng.normal(0, 1, (n, m))
                r, k = linear_sum_assignment(c, maximize=maximize)
                cases.append({"n": n, "m": m, "maximize": maximize, "cost": c.ravel().tolist(),
                              "total": float(c[r, k].sum()), "pairs": len(r)})
    print(json.dumps(cases))


def _metadata(path):
    """The safetensors __metadata__ map (plain JSON after an 8-byte length)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(n))["__metadata__"]


def _dict_tensors(path):
    from safetensors.numpy import load_file

    return load_file(path)


def _load_sae(path):
    """(encode function, d_sae) for a Gemma Scope npz or a SAELens directory, in numpy."""
    if path.endswith(".npz"):
        p = np.load(path)
        w_enc, b_enc, thr = p["W_enc"], p["b_enc"], p["threshold"]
        return (lambda x: _jumprelu(x, w_enc, b_enc, thr)[0]), w_enc.shape[1]
    from safetensors.numpy import load_file

    cfg = json.load(open(os.path.join(path, "cfg.json")))
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(path, "sae_weights.safetensors")).items()}

    def enc(x):
        x = x.astype(np.float64)
        if cfg.get("apply_b_dec_to_input", True):
            x = x - w["b_dec"]
        pre = x @ w["W_enc"] + w["b_enc"]
        arch = cfg.get("architecture", "standard")
        if arch == "topk":
            k = cfg["k"]
            idx = np.argsort(-pre, axis=1, kind="stable")[:, :k]
            out = np.zeros_like(pre)
            np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, 1), 0), 1)
            return out
        if arch == "jumprelu":
            return np.where(pre > w["threshold"], np.maximum(pre, 0), 0)
        return np.maximum(pre, 0)

    return enc, cfg["d_sae"]


def _top_sets(codes, top_k, min_act):
    """Active counts, top sets (ties to the lowest sample: stable sort) and eligibility per column."""
    n_active = (codes > 0).sum(0)
    order = np.argsort(-codes, axis=0, kind="stable")
    sets = []
    for f in range(codes.shape[1]):
        t = min(top_k, int(n_active[f]))
        sets.append(set(order[:t, f].tolist()))
    return n_active, sets, order, n_active >= max(min_act, 1)


def compare_ref(sae_path, dict_path, x_path, top_k, min_act):
    from scipy.optimize import linear_sum_assignment

    enc, _ = _load_sae(sae_path)
    x = np.load(x_path).astype(np.float64)
    t = _dict_tensors(dict_path)
    a_sae = enc(x)
    sae_argmax = a_sae.argmax(1)
    n_s, sets_s, _, el_s = _top_sets(a_sae, top_k, min_act)
    out = {}
    for basis, key in (("exemplar", "exemplars"), ("mean", "mean_directions")):
        a_ep = (x - t["center"].astype(np.float64)) @ t[key].astype(np.float64).T
        n_e, sets_e, order_e, el_e = _top_sets(a_ep, top_k, min_act)
        F, K = a_sae.shape[1], a_ep.shape[1]
        ov = np.zeros((F, K), dtype=np.int64)
        for i in range(F):
            if el_s[i]:
                for j in range(K):
                    if el_e[j]:
                        ov[i, j] = len(sets_s[i] & sets_e[j])
        size_s = np.array([len(s) for s in sets_s], dtype=np.float64)
        size_e = np.array([len(s) for s in sets_e], dtype=np.float64)
        s2e, e2s = [], []
        masked = np.where(el_e[None, :], ov, -1)
        for i in np.flatnonzero(el_s):
            j = int(masked[i].argmax())
            if masked[i, j] > 0:
                p, r = ov[i, j] / size_s[i], ov[i, j] / size_e[j]
                s2e.append({"sae_feature": int(i), "ep_feature": j, "overlap": int(ov[i, j]),
                            "precision": p, "recall": r, "f1": 2 * p * r / (p + r)})
        masked = np.where(el_s[:, None], ov, -1)
        for j in np.flatnonzero(el_e):
            i = int(masked[:, j].argmax())
            if masked[i, j] > 0:
                p, r = ov[i, j] / size_e[j], ov[i, j] / size_s[i]
                e2s.append({"ep_feature": int(j), "sae_feature": i, "overlap": int(ov[i, j]),
                            "precision": p, "recall": r, "f1": 2 * p * r / (p + r)})
        ri, ci = np.flatnonzero(el_s), np.flatnonzero(el_e)
        sub = ov[np.ix_(ri, ci)]
        f1 = 2 * sub / (size_s[ri][:, None] + size_e[ci][None, :])
        r, c = linear_sum_assignment(-f1)
        keep = sub[r, c] > 0
        hung = f1[r, c][keep]
        hist = [0] * 5
        for j in range(K):
            if n_e[j] >= 5:
                hist[len(set(sae_argmax[order_e[:5, j]].tolist())) - 1] += 1
        tot = sum(hist)
        e2s_f1 = np.array([m["f1"] for m in e2s])
        out[basis] = {
            "sae_to_ep": s2e, "ep_to_sae": e2s,
            "hungarian_total": float(hung.sum()), "hungarian_n": int(keep.sum()),
            "histogram": hist,
            "frac_all_same": hist[0] / tot if tot else None,
            "mean_distinct": sum((k + 1) * h for k, h in enumerate(hist)) / tot if tot else None,
            "headline": float((e2s_f1 > 0.5).mean()) if len(e2s) else None,
            "ep_mean_f1": float(e2s_f1.mean()) if len(e2s) else None,
            "ep_median_f1": float(np.median(e2s_f1)) if len(e2s) else None,
            "n_eligible_sae": int(el_s.sum()), "n_eligible_ep": int(el_e.sum()),
        }
    print(json.dumps(out))


def match_ref(a_path, b_path, cutoff, basis):
    from scipy.optimize import linear_sum_assignment

    a, b = _dict_tensors(a_path), _dict_tensors(b_path)
    key = "exemplars" if basis == "exemplar" else "mean_directions"
    s = a[key].astype(np.float64) @ b[key].astype(np.float64).T
    r, c = linear_sum_assignment(-s)
    cos = s[r, c]
    pers = cos >= cutoff
    dropped = sorted(set(range(len(a[key]))) - set(r[pers].tolist()))
    introduced = sorted(set(range(len(b[key]))) - set(c[pers].tolist()))
    ce = np.clip((a["exemplars"].astype(np.float64)[r] * b["exemplars"].astype(np.float64)[c]).sum(1), -1, 1)
    cm = np.clip((a["mean_directions"].astype(np.float64)[r] * b["mean_directions"].astype(np.float64)[c]).sum(1), -1, 1)
    theta_a = json.loads(_metadata(a_path)["exemplar"])["theta"]
    theta_b = json.loads(_metadata(b_path)["exemplar"])["theta"]
    dist = 1 - np.clip(cos, -1, 1)
    extra = {}
    for name, v in (("dist_over_theta_a", dist / theta_a), ("dist_over_theta_b", dist / theta_b)):
        extra[name] = {"mean": float(v.mean()), "median": float(np.median(v)),
                       "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90))}
    extra["seed_stability"] = {
        "median_cos_mean": float(np.median(cm)), "p10_cos_mean": float(np.percentile(cm, 10)),
        "median_cos_exemplar": float(np.median(ce)), "p10_cos_exemplar": float(np.percentile(ce, 10)),
        "gap_median_mean_minus_exemplar": float(np.median(cm) - np.median(ce))}
    print(json.dumps({
        **extra,
        "total_cos": float(cos.sum()), "n_pairs": len(r), "n_persisted": int(pers.sum()),
        "dropped": dropped, "introduced": introduced,
        "cos_mean": float(cos.mean()), "cos_median": float(np.median(cos)),
        "cos_p10": float(np.percentile(cos, 10)), "cos_p90": float(np.percentile(cos, 90)),
        "cos_min": float(cos.min()), "cos_max": float(cos.max()),
    }))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gemma-npz":
        gemma_npz(args[0], *map(int, args[1:5]))
    elif cmd == "saelens":
        saelens(args[0], *map(int, args[1:5]), args[5], args[6] == "1")
    elif cmd == "lsa":
        lsa(int(args[0]))
    elif cmd == "compare-ref":
        compare_ref(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif cmd == "match-ref":
        match_ref(args[0], args[1], float(args[2]), args[3])
    else:
        sys.exit(f"unknown subcommand {cmd}")
