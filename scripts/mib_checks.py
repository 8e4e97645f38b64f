#!/usr/bin/env python3
"""Independent checks of `exemplar mib-export` (tests/mib_export.rs runs them), with torch and
numpy:

    mib_checks.py featurizer DIR UNIT DICT TOP_N

* the layout MIB's verify_submission.py checks: in featurizer.py a class whose base is named
  `Featurizer` and classes based on `torch.nn.Module`; `{UNIT}_indices` whose first line is
  `null` or a Python list; `{UNIT}_featurizer` and `{UNIT}_inverse_featurizer` torch pickles
  (loaded with `weights_only=True`) holding `model_info` (the two module classes, n_features)
  and `state_dict`;
* the state equals the dictionary (center, exemplars, read with safetensors);
* inverse(forward(x)) = x (float64 rows: to 1e-5; float32 rows: to 1e-5 of their scale);
* the features equal numpy's: the nearest exemplar's projection (TOP_N = 1), or the
  least-squares coefficients on the TOP_N exemplars of largest projection;
* interchanging region k's feature between a base and a source row through the modules equals
  base + (f_source[k] - f_base[k]) E_k computed by hand.
Exits non-zero on the first mismatch and prints `ok ...` otherwise.
"""

import ast
import importlib.util
import os
import sys

import numpy as np
import torch
from safetensors import safe_open


def check_layout(d, unit):
    tree = ast.parse(open(os.path.join(d, "featurizer.py")).read())
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    sub = [c.name for c in classes if any(isinstance(b, ast.Name) and b.id == "Featurizer" for b in c.bases)]
    mods = [c.name for c in classes if any(isinstance(b, ast.Attribute) and b.attr == "Module" for b in c.bases)]
    assert sub, "featurizer.py: no class based on Featurizer"
    assert mods[:2] == ["EPFeaturizerModule", "EPInverseFeaturizerModule"], mods
    first = open(os.path.join(d, f"{unit}_indices")).readlines()[0]
    assert first == "null" or isinstance(ast.literal_eval(first), list), first
    out = {}
    for suffix, key in (("featurizer", "featurizer_class"), ("inverse_featurizer", "inverse_featurizer_class")):
        ck = torch.load(os.path.join(d, f"{unit}_{suffix}"), map_location="cpu", weights_only=True)
        assert "model_info" in ck and "state_dict" in ck, ck.keys()
        assert ck["model_info"][key] in mods, ck["model_info"]
        out[suffix] = ck
    return out


def check_featurizer(d, unit, dict_path, top_n):
    top_n = int(top_n)
    ck = check_layout(d, unit)
    with safe_open(dict_path, framework="numpy") as f:
        mu = f.get_tensor("center").astype(np.float64)
        e = f.get_tensor("exemplars").astype(np.float64)
        res = f.get_tensor("reservoir")
        rows = f.get_tensor("reservoir_rows")
    k, dim = e.shape
    info = ck["featurizer"]["model_info"]
    assert info["n_features"] == k and info["additional_config"]["top_n"] == top_n, info
    for s in ("featurizer", "inverse_featurizer"):
        sd = ck[s]["state_dict"]
        assert np.array_equal(sd["center"].numpy(), mu.astype(np.float32)), s
        assert np.array_equal(sd["exemplars"].numpy(), e.astype(np.float32)), s

    spec = importlib.util.spec_from_file_location("ep_featurizer", os.path.join(d, "featurizer.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    fz, inv = m.load(os.path.join(d, unit))

    # Rows near the dictionary's members: the center plus a member direction (the reservoir) at
    # a random radius plus noise, and pure Gaussian rows around the center.
    rng = np.random.default_rng(0)
    dirs = res[rows >= 0].astype(np.float64)
    scale = np.sqrt(np.mean(mu * mu)) + 1.0
    n = min(64, len(dirs))
    x = np.concatenate([
        mu + dirs[rng.choice(len(dirs), n, replace=False)] * rng.uniform(0.5, 3, (n, 1)) * scale
        + rng.normal(0, 0.05 * scale, (n, dim)),
        mu + rng.normal(0, scale, (16, dim)),
    ])
    with torch.no_grad():
        xt = torch.tensor(x)
        f, err = fz(xt)
        back = inv(f, err)
        d64 = (back - xt).abs().max().item()
        assert d64 <= 1e-5, f"float64 rows: inverse(forward(x)) off by {d64}"
        x32 = xt.float()
        f32, err32 = fz(x32)
        d32 = (inv(f32, err32) - x32).abs().max().item()
        assert d32 <= 1e-5 * max(1.0, x32.abs().max().item()), f"float32 rows: off by {d32}"
        # Leading dimensions are kept: [2, B/2, d] as [B, d].
        f3, _ = fz(xt.reshape(2, -1, dim))
        assert torch.equal(f3.reshape(-1, k), f)

    # The features by hand.
    xc = x - mu
    s = xc @ e.T
    want = np.zeros_like(s)
    for i in range(len(x)):
        if top_n == 1:
            j = np.argmax(s[i])
            want[i, j] = s[i, j]
        else:
            js = np.argsort(-s[i], kind="stable")[:top_n]
            c, *_ = np.linalg.lstsq(e[js].T, xc[i], rcond=None)
            want[i, js] = c
    fn = f.numpy()
    tol = 1e-4 * max(1.0, np.abs(want).max())
    assert np.abs(fn - want).max() <= tol, f"features off by {np.abs(fn - want).max()}"
    assert ((fn != 0).sum(1) == top_n).all(), "features per row"

    # Interchange of one region's feature, through the modules and by hand.
    checked = 0
    with torch.no_grad():
        for i in range(0, n - 1, 2):
            base, src = xt[i : i + 1], xt[i + 1 : i + 2]
            fb, eb = fz(base)
            fs, _ = fz(src)
            for r in {int(fs.abs().argmax()), int(fb.abs().argmax())}:
                g = fb.clone()
                g[:, r] = fs[:, r]
                out = inv(g, eb).numpy()[0]
                hand = x[i] + (want[i + 1, r] - want[i, r]) * e[r]
                err = np.abs(out - hand).max()
                assert err <= 1e-4 * max(1.0, np.abs(hand).max()), f"interchange of region {r}: off by {err}"
                checked += 1
    print(f"ok featurizer: {unit} K={k} d={dim} top_n={top_n}, {len(x)} rows, {checked} interchanges; "
          f"inverse(forward(x)) max |dx| {d64:.2e} (f64), {d32:.2e} (f32)")


def main():
    cmd, *a = sys.argv[1:]
    if cmd == "featurizer":
        check_featurizer(*a)
    else:
        raise SystemExit(f"unknown check {cmd}")


if __name__ == "__main__":
    main()
