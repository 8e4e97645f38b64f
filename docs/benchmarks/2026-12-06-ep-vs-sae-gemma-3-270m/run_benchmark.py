"""EP against TopK SAEs on one harvest: builds, scores and reports (issue 16).

    python run_benchmark.py run WORKDIR --budgets 10000,100000 [--percentiles 1,2,5]
                                [--sae 4096:32,4096:64,16384:32,16384:64] [...]
    python run_benchmark.py report WORKDIR OUTDIR [--grid-budgets ...] [...]

WORKDIR holds the harvest (harvest/shard-NN.safetensors + sidecars, harvest/timings.jsonl, from
harvest.sh), the held-out activations (heldout.safetensors + sidecar, one document per line of
segments.jsonl) and the labelled files of make_labelled.py. `run` writes every artifact and every
score under WORKDIR/runs/ and skips whatever is already there, so an interrupted run resumes; a
file appears only when its command finished (written under a temporary name, then renamed).
`report` reads WORKDIR/runs/ and writes OUTDIR/report.json, OUTDIR/*.png and the raw outputs it
used (small JSON/text), listing every cell of the intended grid that has no result as not run.

Every number comes from an `exemplar` command (build, train-sae, detect, probe, compare-sae) but
the TF-IDF baseline, which is scikit-learn's TfidfVectorizer + LogisticRegression on the same
split as the probes (the test documents `exemplar probe` reports).
"""
import argparse
import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import time

HOOK = os.environ.get("HOOK", "blocks.9.hook_resid_post")


def log(*a):
    print("[run_benchmark]", *a, file=sys.stderr, flush=True)


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def st_rows(path):
    return st_header(path)["activations"]["shape"][0]


def dict_meta(path):
    return json.loads(st_header(path)["__metadata__"]["exemplar"])


class Work:
    def __init__(self, workdir, exe):
        self.w = os.path.abspath(workdir)
        self.exe = exe
        self.runs = os.path.join(self.w, "runs")
        os.makedirs(self.runs, exist_ok=True)

    def path(self, *p):
        return os.path.join(self.w, *p)

    def run_path(self, name):
        return os.path.join(self.runs, name)

    def shards(self):
        """Finished harvest shards, in order (a shard counts once its sidecar is there too)."""
        out = []
        for p in sorted(glob.glob(self.path("harvest", "shard-*.safetensors"))):
            if p.endswith(".partial.safetensors"):
                continue
            if os.path.exists(p + ".provenance.jsonl"):
                out.append(p)
        return out

    def shards_for(self, budget):
        """The first shards holding >= budget rows; a clear error when the harvest is smaller."""
        total, use = 0, []
        for p in self.shards():
            use.append(p)
            total += st_rows(p)
            if total >= budget:
                return use
        sys.exit(
            f"budget {budget} rows is larger than the harvest: {total} rows in "
            f"{len(use)} finished shard(s) under {self.path('harvest')} (run harvest.sh further)"
        )

    def exemplar(self, args, out_txt):
        """Runs `exemplar ARGS`: the command line and its stdout to out_txt (under a temporary
        name, renamed at the end), stderr to out_txt + ".err". Returns (wall seconds, stdout);
        fails loudly with stderr's tail."""
        tmp = out_txt + ".tmp"
        t0 = time.time()
        with open(out_txt + ".err", "w") as err:
            r = subprocess.run([self.exe] + args, stdout=subprocess.PIPE, stderr=err, text=True)
        dt = time.time() - t0
        if r.returncode != 0:
            with open(out_txt + ".err") as f:
                tail = f.read()[-3000:]
            sys.exit(f"exemplar {args[0]} failed (exit {r.returncode}):\n{tail}")
        with open(tmp, "w") as f:
            f.write("$ exemplar " + " ".join(args) + "\n" + r.stdout)
        os.replace(tmp, out_txt)
        return dt, r.stdout


def parse_sae(spec):
    w, k = spec.split(":")
    return int(w), int(k)


def ep_name(b, p):
    return f"ep-{b}-p{p:g}"


def sae_name(b, w, k):
    return f"sae-{b}-w{w}-k{k}"


# ------------------------------------------------------------------------------------------
# run


def build_ep(W, budget, p, a):
    name = ep_name(budget, p)
    out = W.run_path(name + ".safetensors")
    rec = W.run_path(name + ".json")
    if os.path.exists(out) and os.path.exists(rec):
        return
    shards = W.shards_for(budget)
    batch = min(budget, a.ep_batch)
    args = ["build", "-a", *shards, "--max-activations", str(budget), "--no-saturation",
            "-p", f"{p:g}", "--calibration-activations", str(batch), "--batch-size", str(batch),
            "--reservoir", "0", "--device", "cpu", "--hook", HOOK, "-o", out + ".tmp.safetensors",
            "--force"]
    log("EP", name)
    secs, _ = W.exemplar(args, W.run_path(name + ".build.txt"))
    os.replace(out + ".tmp.safetensors", out)
    with open(rec + ".tmp", "w") as f:
        json.dump({"budget": budget, "percentile": p, "wall_seconds": secs, "args": args}, f)
    os.replace(rec + ".tmp", rec)


def train_sae(W, budget, w, k, a):
    name = sae_name(budget, w, k)
    out = W.run_path(name)
    rec = W.run_path(name + ".train.json")
    if os.path.exists(os.path.join(out, "cfg.json")) and os.path.exists(rec):
        return
    shards = W.shards_for(budget)
    args = ["train-sae", "-a", *shards, "--max-activations", str(budget), "--width", str(w),
            "-k", str(k), "--epochs", str(a.sae_epochs), "--sae-batch-size",
            str(min(a.sae_batch, budget)), "--eval-activations", W.path("heldout.safetensors"),
            "--eval-rows", str(a.eval_rows), "--eval-every", str(a.eval_every),
            "--tolerance", str(a.tolerance), "--patience", str(a.patience), "--sae-device", "cpu",
            "--json", "-o", out + ".tmp", "--force"]
    if a.sae_max_seconds:
        args += ["--max-seconds", str(a.sae_max_seconds)]
    log("SAE", name)
    secs, stdout = W.exemplar(args, W.run_path(name + ".train.txt"))
    record = json.loads(stdout)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(out + ".tmp", out)
    with open(rec + ".tmp", "w") as f:
        json.dump({"budget": budget, "width": w, "k": k, "wall_seconds": secs, "record": record,
                   "args": args}, f)
    os.replace(rec + ".tmp", rec)


def detect(W, name, kind):
    out = W.run_path(name + ".detect.json")
    if os.path.exists(out):
        return
    src = ["-d", W.run_path(name + ".safetensors")] if kind == "ep" else ["--sae", W.run_path(name)]
    args = ["detect", "-a", W.path("heldout.safetensors"), "--concepts", W.path("concepts.jsonl"),
            *src, "-o", out + ".tmp", "--force"]
    log("detect", name)
    W.exemplar(args, W.run_path(name + ".detect.txt"))
    os.replace(out + ".tmp", out)


def heldout_slice(W, n):
    """The first n held-out rows as an .npy (the rows the SAEs' held-out FVU is measured on)."""
    import numpy as np

    out = W.path(f"heldout-first{n}.npy")
    if os.path.exists(out):
        return out
    src = W.path("heldout.safetensors")
    h = st_header(src)
    t = h["activations"]
    if t["dtype"] != "F32":
        sys.exit(f"{src}: activations are {t['dtype']}, expected F32")
    n_all, d = t["shape"]
    if n > n_all:
        sys.exit(f"--eval-rows {n}: {src} has {n_all} rows")
    with open(src, "rb") as f:
        base = 8 + struct.unpack("<Q", f.read(8))[0]
    x = np.memmap(src, dtype=np.float32, mode="r", offset=base + t["data_offsets"][0],
                  shape=(n_all, d))[:n]
    with open(out + ".tmp", "wb") as f:
        np.save(f, np.ascontiguousarray(x))
    os.replace(out + ".tmp", out)
    return out


def ep_fvu(W, name, a):
    """EP's held-out FVU on the SAEs' held-out rows: `exemplar assign` finds each row's nearest
    exemplar k; the reconstruction is the hard featurizer's, x^ = c + ((x - c).e_k) e_k (the
    coefficient may be negative: no ReLU); FVU = sum |x - x^|^2 / sum |x - mean|^2."""
    import numpy as np
    from safetensors.numpy import load_file

    out = W.run_path(name + ".fvu.json")
    if os.path.exists(out):
        return
    rows_path = heldout_slice(W, a.eval_rows)
    npz = W.run_path(f"{name}.assign{a.eval_rows}.npz")
    log("held-out FVU", name)
    W.exemplar(["assign", "-d", W.run_path(name + ".safetensors"), "-a", rows_path,
                "--device", "cpu", "-o", npz + ".tmp.npz", "--force"],
               W.run_path(name + ".assign.txt"))
    os.replace(npz + ".tmp.npz", npz)
    ids = np.load(npz)["ids"]
    t = load_file(W.run_path(name + ".safetensors"))
    c = t["center"].astype(np.float64)
    e = t["exemplars"].astype(np.float64)[ids]
    x = np.load(rows_path).astype(np.float64)
    xc = x - c
    recon = c + (xc * e).sum(1, keepdims=True) * e
    fvu = float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    with open(out + ".tmp", "w") as f:
        json.dump({"rows": len(x), "fvu": fvu, "assignment": os.path.basename(npz),
                   "reconstruction": "c + ((x - c).e_k) e_k, k = nearest exemplar"}, f)
    os.replace(out + ".tmp", out)


TASKS = ["task-source", "task-code-prose-lang", "task-lang-family"]


def probe(W, tag, task, dictionary, extra, a):
    out = W.run_path(f"{tag}.{task}.probe.json")
    if os.path.exists(out):
        return
    args = ["probe", "-a", W.path("heldout.safetensors"), "--labels", W.path(task + ".jsonl"),
            "-d", dictionary, *extra, "--classifier", "both", "--folds", str(a.folds),
            "--c-grid", a.c_grid, "--seed", "0", "-o", out + ".tmp", "--force"]
    log("probe", tag, task)
    W.exemplar(args, W.run_path(f"{tag}.{task}.probe.txt"))
    os.replace(out + ".tmp", out)


def compare(W, ep, sae, a):
    out = W.run_path(f"{ep}--{sae}.compare.json")
    if os.path.exists(out):
        return
    args = ["compare-sae", "-d", W.run_path(ep + ".safetensors"), "--sae", W.run_path(sae),
            "-a", W.path("heldout.safetensors"), "--n-activations", str(a.compare_rows),
            "--basis", "exemplar", "-o", out + ".tmp", "--force"]
    log("compare-sae", ep, sae)
    W.exemplar(args, W.run_path(f"{ep}--{sae}.compare.txt"))
    os.replace(out + ".tmp", out)


def tfidf(W, a):
    """TF-IDF + logistic regression (scikit-learn), on each task's probe split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    for task in TASKS:
        out = W.run_path(f"tfidf.{task}.json")
        if os.path.exists(out):
            continue
        raw = W.run_path(f"raw-mean.{task}.probe.json")
        rep = json.load(open(raw))
        test_ids = set(rep["test_doc_ids"])
        rows = [json.loads(l) for l in open(W.path(task + ".jsonl"))]
        tr = [r for r in rows if r["doc_id"] not in test_ids]
        te = [r for r in rows if r["doc_id"] in test_ids]
        vec = TfidfVectorizer(sublinear_tf=True, min_df=1)
        xtr = vec.fit_transform([r["text"] for r in tr])
        xte = vec.transform([r["text"] for r in te])
        ytr = [r["label"] for r in tr]
        yte = [r["label"] for r in te]
        cs = [float(c) for c in a.c_grid.split(",")]
        gs = GridSearchCV(LogisticRegression(max_iter=2000), {"C": cs},
                          cv=StratifiedKFold(a.folds, shuffle=True, random_state=0))
        gs.fit(xtr, ytr)
        pred = gs.predict(xte)
        res = {"features": "tfidf", "classifier": "logistic (scikit-learn)",
               "vectorizer": "TfidfVectorizer(sublinear_tf=True)", "width": xtr.shape[1],
               "n_train": len(tr), "n_test": len(te), "chosen_c": gs.best_params_["C"],
               "accuracy": accuracy_score(yte, pred),
               "macro_f1": f1_score(yte, pred, average="macro")}
        with open(out + ".tmp", "w") as f:
            json.dump(res, f)
        os.replace(out + ".tmp", out)


def cmd_run(a):
    W = Work(a.workdir, a.exemplar)
    budgets = [int(b) for b in a.budgets.split(",")]
    pcts = [float(p) for p in a.percentiles.split(",")] if a.percentiles else []
    saes = [parse_sae(s) for s in a.sae.split(",")] if a.sae else []
    for b in budgets:
        W.shards_for(b)  # refuse a budget larger than the harvest before any work
    for b in budgets:
        for p in pcts:
            build_ep(W, b, p, a)
        for w, k in saes:
            train_sae(W, b, w, k, a)
    if a.skip_eval:
        return
    evals = set(a.evals.split(","))
    unknown = evals - {"detect", "fvu", "probe", "compare", "baselines"}
    if unknown:
        sys.exit(f"--evals: unknown {sorted(unknown)} (detect, fvu, probe, compare, baselines)")
    first_ep = None
    for b in budgets:
        for p in pcts:
            name = ep_name(b, p)
            first_ep = first_ep or W.run_path(name + ".safetensors")
            if "detect" in evals:
                detect(W, name, "ep")
            if "fvu" in evals:
                ep_fvu(W, name, a)
            for t in TASKS if "probe" in evals else []:
                if "onehot" in a.ep_probes:
                    probe(W, name + ".onehot", t, W.run_path(name + ".safetensors"),
                          ["--features", "ep-onehot", "--pool", "count", "--top-n", "1",
                           "--binarize"], a)
                if "top" in a.ep_probes:
                    probe(W, name + f".top{a.top_n}", t, W.run_path(name + ".safetensors"),
                          ["--features", "ep-topk", "-k", str(a.top_n), "--pool", "count",
                           "--top-n", str(a.top_n), "--binarize"], a)
        for w, k in saes:
            name = sae_name(b, w, k)
            if "detect" in evals:
                detect(W, name, "sae")
            if "compare" in evals:
                for p in pcts:
                    if a.compare_percentiles is None or p in a.compare_percentiles:
                        compare(W, ep_name(b, p), name, a)
            d = W.run_path(ep_name(b, pcts[0]) + ".safetensors") if pcts else first_ep
            for t in TASKS if "probe" in evals else []:
                probe(W, name + f".top{a.top_n}", t, d,
                      ["--features", "sae", "--sae", W.run_path(name), "--pool", "count",
                       "--top-n", str(a.top_n), "--binarize"], a)
    if first_ep and "baselines" in evals:
        for t in TASKS:
            probe(W, "raw-mean", t, first_ep, ["--features", "raw", "--raw-pool", "mean"], a)
            probe(W, "raw-last", t, first_ep, ["--features", "raw", "--raw-pool", "last"], a)
        tfidf(W, a)


# ------------------------------------------------------------------------------------------
# report


def forward_cost(W, model_dir):
    """Per harvested row: nominal forward FLOPs (from the sidecar-less formula of the model's
    config, as `exemplar` counts it) and measured wall seconds (harvest/timings.jsonl)."""
    rows, secs = 0, 0.0
    for line in open(W.path("harvest", "timings.jsonl")):
        t = json.loads(line)
        rows += t["rows"]
        secs += t["seconds"]
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    c = cfg.get("text_config", cfg)
    h, i = c["hidden_size"], c["intermediate_size"]
    nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    layer = int(HOOK.split(".")[1])
    seq = int(os.environ.get("CTX", "64")) + 1  # BOS + ctx (harvest.sh --pack --ctx $CTX)
    per_tok = 2.0 * (h * nh * hd * 2 + h * nkv * hd * 2 + 3 * h * i + 2 * seq * nh * hd) * (layer + 1)
    return {"rows": rows, "seconds": secs, "rows_per_second": rows / secs if secs else None,
            "flops_per_row": per_tok * seq / (seq - 1), "seconds_per_row": secs / rows if rows else None}


def load_probe(W, tag, task):
    p = W.run_path(f"{tag}.{task}.probe.json")
    if not os.path.exists(p):
        return None
    rep = json.load(open(p))
    out = {}
    for r in rep["results"]:
        out[r["classifier"]] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                                "width": r["width"]}
    return out


def cmd_report(a):
    W = Work(a.workdir, None)
    os.makedirs(a.outdir, exist_ok=True)
    raw_dir = os.path.join(a.outdir, "raw")
    os.makedirs(raw_dir, exist_ok=True)
    fwd = forward_cost(W, a.model)
    budgets = [int(b) for b in a.grid_budgets.split(",")]
    pcts = [float(p) for p in a.grid_percentiles.split(",")]
    saes = [parse_sae(s) for s in a.grid_sae.split(",")]
    summary = json.load(open(W.path("labelled-summary.json")))
    report = {
        "model": os.path.basename(os.path.normpath(a.model)), "hook": HOOK,
        "harvest": {"rows": sum(st_rows(p) for p in W.shards()), "shards": len(W.shards()),
                    "bytes": sum(os.path.getsize(p) for p in W.shards()),
                    "forward_rows_per_second": fwd["rows_per_second"],
                    "forward_seconds": fwd["seconds"], "forward_flops_per_row": fwd["flops_per_row"]},
        "heldout": {"rows": st_rows(W.path("heldout.safetensors")),
                    "segments": summary["segments"]},
        "labelled": summary,
        "builds": [], "not_run": [], "baselines": {}, "correspondence": [],
    }
    for t in TASKS:
        report["baselines"][t] = {
            "raw-mean": load_probe(W, "raw-mean", t), "raw-last": load_probe(W, "raw-last", t),
            "tfidf": json.load(open(W.run_path(f"tfidf.{t}.json")))
            if os.path.exists(W.run_path(f"tfidf.{t}.json")) else None,
        }
    copy = []

    def fwd_part(budget):
        return {"forward_flops": budget * fwd["flops_per_row"],
                "forward_seconds": budget * fwd["seconds_per_row"]}

    for b in budgets:
        for p in pcts:
            name = ep_name(b, p)
            f = W.run_path(name + ".safetensors")
            if not (os.path.exists(f) and os.path.exists(W.run_path(name + ".json"))):
                report["not_run"].append({"build": name, "reason": a.not_run_reason})
                continue
            m = dict_meta(f)
            rec = json.load(open(W.run_path(name + ".json")))
            cb = m["calibration_batch_size"]
            nc = m["calibration_activations"]
            cal_flops = 4.0 * m["dim"] * ((nc // cb) * cb * cb + (nc % cb) ** 2)
            e = {"kind": "ep", "name": name, "budget": b, "percentile": p,
                 "partitions": m["partitions"], "theta": m["theta"],
                 "activations": m["activations_streamed"],
                 "build_flops": m["clustering_flops"] + cal_flops,
                 "clustering_flops": m["clustering_flops"], "calibration_flops": cal_flops,
                 "build_seconds": rec["wall_seconds"], **fwd_part(b)}
            fp = W.run_path(name + ".fvu.json")
            if os.path.exists(fp):
                fv = json.load(open(fp))
                e["heldout_fvu"], e["heldout_rows"] = fv["fvu"], fv["rows"]
                copy.append(name + ".assign.txt")
            add_evals(W, e, name, a, copy)
            report["builds"].append(e)
            copy += [name + ".build.txt"]
        for w, k in saes:
            name = sae_name(b, w, k)
            rp = W.run_path(name + ".train.json")
            if not os.path.exists(rp):
                report["not_run"].append({"build": name, "reason": a.not_run_reason})
                continue
            rec = json.load(open(rp))
            r = rec["record"]
            e = {"kind": "sae", "name": name, "budget": b, "width": w, "k": k,
                 "steps": r["steps"], "epochs": r["epochs"], "stopped": r["stopped"],
                 "rows_trained": r["rows"], "final_train_fvu": r["final_fvu"],
                 "heldout_fvu": r["eval_fvu"], "heldout_dead_fraction": r["eval_dead_fraction"],
                 "heldout_rows": r["eval_rows"],
                 "dead_fraction": r["dead_fraction"], "build_flops": r["flops"],
                 "build_seconds": r["seconds"], "heldout_check_flops": r["eval_flops"],
                 "curve": r["curve"], **fwd_part(b)}
            add_evals(W, e, name, a, copy)
            report["builds"].append(e)
            copy += [name + ".train.txt"]
            for p in pcts:
                cp = W.run_path(f"{ep_name(b, p)}--{name}.compare.json")
                if os.path.exists(cp):
                    c = json.load(open(cp))
                    r = c["results_by_basis"]["exemplar"]
                    sm = r["summary"]
                    report["correspondence"].append({
                        "ep": ep_name(b, p), "sae": name, "budget": b, "basis": "exemplar",
                        "rows": c["config"]["n_tokens"],
                        "ep_regions_matched_f1_gt_0_5": sm["headline_frac_ep_f1_gt_0_5"],
                        "sae_features_matched_f1_gt_0_5": sm["sae_to_ep"]["frac_f1_gt_0_5"],
                        "ep_eligible": r["n_eligible_ep"], "sae_eligible": r["n_eligible_sae"],
                        "ep_to_sae_mean_f1": sm["ep_to_sae"]["mean_f1"],
                        "sae_to_ep_mean_f1": sm["sae_to_ep"]["mean_f1"]})
                    copy.append(f"{ep_name(b, p)}--{name}.compare.txt")
    copy += [f"{nm}.{t}.probe.txt" for nm in ("raw-mean", "raw-last") for t in TASKS]
    copy += [f"tfidf.{t}.json" for t in TASKS]
    for b in report["builds"]:
        tot = b["build_flops"] + b["forward_flops"]
        b["forward_share_flops"] = b["forward_flops"] / tot
        b["forward_share_seconds"] = b["forward_seconds"] / (b["forward_seconds"] + b["build_seconds"])
    for c in copy:
        if os.path.exists(W.run_path(c)):
            shutil.copy(W.run_path(c), raw_dir)
    with open(os.path.join(a.outdir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    plots(report, a.outdir)
    with open(os.path.join(a.outdir, "tables.md"), "w") as f:
        f.write(tables(report))
    log("wrote", os.path.join(a.outdir, "report.json"))


def tables(rep):
    """The report as markdown tables (README.md quotes them)."""
    f = lambda v, n=3: "-" if v is None else (f"{v:.{n}f}" if isinstance(v, float) else str(v))
    g = lambda v: "-" if v is None else f"{v:.3g}"
    out = []
    out.append("| build | budget | K / width | steps (stopped) | held-out FVU | never firing | "
               "build FLOPs | build s | forward FLOPs | forward s | forward share (FLOPs / s) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for b in rep["builds"]:
        if b["kind"] == "ep":
            size, steps, fvu, dead = (f"K = {b['partitions']:,}", "1 pass",
                                      b.get("heldout_fvu"), None)
        else:
            size = f"{b['width']:,} (k = {b['k']})"
            steps = f"{b['steps']:,} in {b['epochs']} ep. ({b['stopped']})"
            fvu, dead = b["heldout_fvu"], b["heldout_dead_fraction"]
        out.append(f"| {b['name']} | {b['budget']:,} | {size} | {steps} | {f(fvu)} | {f(dead)} | "
                   f"{g(b['build_flops'])} | {b['build_seconds']:.1f} | {g(b['forward_flops'])} | "
                   f"{b['forward_seconds']:.0f} | {b['forward_share_flops']:.3f} / "
                   f"{b['forward_share_seconds']:.3f} |")
    out.append("")
    concepts = None
    for b in rep["builds"]:
        if b.get("detection"):
            concepts = [(c["concept_id"], c["concept"]) for c in b["detection"]]
            break
    if concepts:
        names = [b["name"] for b in rep["builds"] if b.get("detection")]
        out.append("| concept | " + " | ".join(names) + " |")
        out.append("|---|" + "---|" * len(names))
        for cid, cn in concepts:
            row = []
            for b in rep["builds"]:
                if b.get("detection"):
                    row.append(f(next(c["auroc"] for c in b["detection"] if c["concept_id"] == cid)))
            out.append(f"| {cid}: {cn} | " + " | ".join(row) + " |")
        out.append("| **mean AUROC** | " + " | ".join(
            f"**{f(b['detection_mean_auroc'])}**" for b in rep["builds"] if b.get("detection")) + " |")
        out.append("")
    out.append("| features | " + " | ".join(f"{t} (logistic / tree)" for t in TASKS) + " |")
    out.append("|---|" + "---|" * len(TASKS))
    for nm in ("raw-mean", "raw-last", "tfidf"):
        cells = []
        for t in TASKS:
            v = rep["baselines"][t].get(nm)
            if nm == "tfidf":
                cells.append(f(v and v["accuracy"]) + " / -")
            else:
                cells.append(f((v or {}).get("logistic", {}).get("accuracy")) + " / " +
                             f((v or {}).get("tree", {}).get("accuracy")))
        out.append(f"| {nm} | " + " | ".join(cells) + " |")
    for b in rep["builds"]:
        for tag, per in sorted(b.get("probes", {}).items()):
            cells = [f(per.get(t, {}).get("logistic", {}).get("accuracy")) + " / " +
                     f(per.get(t, {}).get("tree", {}).get("accuracy")) for t in TASKS]
            out.append(f"| {b['name']} {tag} | " + " | ".join(cells) + " |")
    out.append("")
    if rep["correspondence"]:
        out.append("| EP | SAE | rows | EP regions with an SAE feature at F1 > 0.5 | SAE features "
                   "with an EP region at F1 > 0.5 | eligible EP / SAE | mean F1 EP→SAE / SAE→EP |")
        out.append("|---|---|---|---|---|---|---|")
        for c in rep["correspondence"]:
            out.append(f"| {c['ep']} | {c['sae']} | {c['rows']:,} | {f(c['ep_regions_matched_f1_gt_0_5'])} | "
                       f"{f(c['sae_features_matched_f1_gt_0_5'])} | {c['ep_eligible']} / {c['sae_eligible']} | "
                       f"{f(c['ep_to_sae_mean_f1'])} / {f(c['sae_to_ep_mean_f1'])} |")
        out.append("")
    if rep["not_run"]:
        out.append("Not run: " + "; ".join(f"{n['build']} ({n['reason']})" for n in rep["not_run"]))
        out.append("")
    return "\n".join(out)


def add_evals(W, e, name, a, copy):
    dp = W.run_path(name + ".detect.json")
    if os.path.exists(dp):
        d = json.load(open(dp))
        if e["kind"] == "ep":
            e["detection_mean_auroc"] = d["mean_auroc_cosine"]
            e["detection_mean_auroc_reference"] = d["mean_auroc_reference"]
            e["detection"] = [{"concept_id": c["concept_id"], "concept": c["concept"],
                               "region": c["region"], "auroc": c["auroc_cosine"],
                               "auroc_reference": c["auroc_reference"]} for c in d["concepts"]]
        else:
            e["detection_mean_auroc"] = d["mean_auroc"]
            e["detection"] = [{"concept_id": c["concept_id"], "concept": c["concept"],
                               "feature": c["feature"], "auroc": c["auroc"]} for c in d["concepts"]]
        copy.append(name + ".detect.txt")
    e["probes"] = {}
    tags = [f"{name}.onehot", f"{name}.top{a.top_n}"] if e["kind"] == "ep" else [f"{name}.top{a.top_n}"]
    for tag in tags:
        for t in TASKS:
            r = load_probe(W, tag, t)
            if r is not None:
                e["probes"].setdefault(tag[len(name) + 1:], {})[t] = r
                copy.append(f"{tag}.{t}.probe.txt")


def plots(report, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    builds = report["builds"]
    series = {}
    for b in builds:
        key = f"EP p{b['percentile']:g}" if b["kind"] == "ep" else f"SAE {b['width']}/k{b['k']}"
        series.setdefault(key, []).append(b)
    # one colour per series in every panel
    colour = {key: f"C{i}" for i, key in enumerate(sorted(series))}
    panels = [("detection mean AUROC (15 concepts)", lambda b: b.get("detection_mean_auroc"))]
    for t in TASKS:
        def acc(b, t=t, clf="logistic"):
            p = b.get("probes", {})
            tag = "top8" if "top8" in p else next(iter(p), None)
            return p.get(tag, {}).get(t, {}).get(clf, {}).get("accuracy") if tag else None
        panels.append((f"{t}: probe accuracy (logistic, top-8 codes)", acc))
        panels.append((f"{t}: probe accuracy (tree d5, top-8 codes)",
                       lambda b, t=t: acc(b, t, "tree")))
    panels.append(("held-out FVU (EP: nearest exemplar's projection; SAE: TopK)",
                   lambda b: b.get("heldout_fvu")))
    n = len(panels)
    cols = 3
    rows_ = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 3.8 * rows_))
    for ax, (title, fn) in zip(axes.flat, panels):
        for key, bs in sorted(series.items()):
            pts = sorted((b["build_flops"], fn(b), b["budget"]) for b in bs if fn(b) is not None)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if key.startswith("EP") else "s",
                    label=key, linestyle="-" if key.startswith("EP") else "--", color=colour[key])
            for x, y, bud in pts:
                ax.annotate(f"{bud // 1000}k", (x, y), fontsize=6)
        for t in TASKS:
            if t in title:
                base = report["baselines"][t]
                for nm, style in (("raw-mean", ":"), ("raw-last", "-."), ("tfidf", "-")):
                    v = base.get(nm)
                    clf = "tree" if "tree" in title else "logistic"
                    y = (v or {}).get("accuracy") if nm == "tfidf" else ((v or {}).get(clf) or {}).get("accuracy")
                    if y is not None and not (nm == "tfidf" and clf == "tree"):
                        ax.axhline(y, color="grey", linestyle=style, linewidth=0.8, label=f"{nm} ({clf if nm != 'tfidf' else 'logistic'})")
        ax.set_xscale("log")
        ax.set_xlabel("build FLOPs (forward excluded)")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=5)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("EP vs TopK SAEs on Gemma 3 270M, blocks.9.hook_resid_post (CPU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "quality_vs_build_flops.png"), dpi=110)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("workdir")
    r.add_argument("--exemplar", default=os.environ.get("EXEMPLAR_BIN", "exemplar"))
    r.add_argument("--budgets", required=True)
    r.add_argument("--percentiles", default="1,2,5")
    r.add_argument("--sae", default="4096:32,4096:64,16384:32,16384:64")
    r.add_argument("--ep-batch", type=int, default=16384)
    r.add_argument("--sae-batch", type=int, default=256)
    r.add_argument("--sae-epochs", type=int, default=1000)
    r.add_argument("--sae-max-seconds", type=float, default=None)
    r.add_argument("--eval-rows", type=int, default=5000)
    r.add_argument("--eval-every", type=int, default=20000)
    r.add_argument("--tolerance", type=float, default=0.01)
    r.add_argument("--patience", type=int, default=2)
    r.add_argument("--compare-rows", type=int, default=20000)
    r.add_argument("--top-n", type=int, default=8)
    r.add_argument("--folds", type=int, default=3)
    r.add_argument("--c-grid", default="0.1,1,10")
    r.add_argument("--skip-eval", action="store_true")
    r.add_argument("--evals", default="detect,fvu,probe,compare,baselines",
                   help="which scores to run after the builds (comma-separated; each skips what "
                        "is already there)")
    r.add_argument("--ep-probes", default="onehot,top",
                   help="EP probe feature sets: onehot (top-1), top (top-N), comma-separated")
    r.add_argument("--compare-percentiles", type=lambda v: [float(p) for p in v.split(",")],
                   default=None, help="EP percentiles compared with each SAE (default: all)")
    g = sub.add_parser("report")
    g.add_argument("workdir")
    g.add_argument("outdir")
    g.add_argument("--grid-budgets", default="10000,100000,1000000")
    g.add_argument("--grid-percentiles", default="1,2,5")
    g.add_argument("--grid-sae", default="4096:32,4096:64,16384:32,16384:64")
    g.add_argument("--top-n", type=int, default=8)
    g.add_argument("--model", default=os.environ.get("EXEMPLAR_GEMMA3_270M"),
                   help="the model directory (its config.json sets the forward FLOPs)")
    g.add_argument("--not-run-reason", default="not run: did not fit in the session's CPU time")
    a = ap.parse_args()
    if a.cmd == "report" and not a.model:
        ap.error("report: the model directory is needed for the forward FLOPs: pass --model DIR "
                 "or set EXEMPLAR_GEMMA3_270M (source scripts/env.sh)")
    {"run": cmd_run, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
