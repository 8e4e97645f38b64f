"""Labelled held-out data from the held-out corpus documents (split_corpus.py): every label comes
from the corpus itself (a document's `source` and `lang` fields, written by make_corpus.py from
the package the text was read from) or from a fixed rule on the text (a regular expression), never
from a model.

    python make_labelled.py WORKDIR [--seed 0] [--max-tokens 48]

WORKDIR/heldout-docs.jsonl is cut into segments at line boundaries of at most --max-tokens tokens
(Gemma 3 tokenizer, so the label describes exactly the text the model sees), a few per document.
Writes, in WORKDIR:
* segments.jsonl — one line per segment (the activation documents: `exemplar activations` reads
  them in order, so line i is doc_id i): text, source, lang, doc (corpus line), seg;
* concepts.jsonl — detection (AxBench latent protocol): per concept its positives and as many
  negatives drawn (seeded) from the other segments, each row with `split` train/eval fixed by the
  seed (half each, per concept and category); concept ids 0..;
* task-source.jsonl, task-code-prose-lang.jsonl, task-lang-family.jsonl — classification tasks
  ({"text", "label", "doc_id"}), split by `exemplar probe --seed`;
* labelled-summary.json — counts per concept/task and split.
Refuses (exit 1, naming the concept) a concept without positives or negatives in a split.
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import tokenizers

CYRILLIC = {"ru", "uk", "bg", "sr", "kk", "be", "mn", "mk", "ky", "tg"}
ROMANCE = {"fr", "es", "it", "pt", "pt_BR", "pt_PT", "ro", "ca", "ca@valencia", "gl", "oc", "ast", "fur", "an", "wa"}
GERMANIC = {"de", "nl", "sv", "da", "nb", "nn", "no", "is", "fo", "li", "yi", "af", "fy", "lb"}


def concepts():
    """(name, predicate on a segment). Source/lang labels come from make_corpus.py's fields."""
    src = lambda s: (lambda g: g["source"] == s)
    return [
        ("Python source code (python_source)", src("python_source")),
        ("a Unix manual page (man)", src("man")),
        ("a GNU info manual (info)", src("info")),
        ("a Python docstring (docstring)", src("docstring")),
        ("a translated message catalogue (messages)", src("messages")),
        ("a Python documentation topic (pydoc_topics)", src("pydoc_topics")),
        ("a software licence text (license)", src("license")),
        ("text in a Cyrillic-script language", lambda g: g["source"] == "messages" and g["lang"] in CYRILLIC),
        ("text in a Romance language", lambda g: g["source"] == "messages" and g["lang"] in ROMANCE),
        ("text in a Germanic language other than English", lambda g: g["source"] == "messages" and g["lang"] in GERMANIC),
        ("a command-line option (-x or --name)", lambda g: re.search(r"(^|[\s\[(])--?[A-Za-z]", g["text"]) is not None),
        ("a year (1900-2099)", lambda g: re.search(r"(?<!\d)(19|20)\d\d(?!\d)", g["text"]) is not None),
        ("a URL or an e-mail address", lambda g: re.search(r"https?://|www\.|\b[\w.+-]+@[\w-]+\.\w", g["text"]) is not None),
        ("a number of three or more digits", lambda g: re.search(r"\d{3,}", g["text"]) is not None),
        ("a Python def or class line", lambda g: re.search(r"(^|\n)\s*(def|class) \w", g["text"]) is not None),
    ]


def segments_of(doc, tok, max_tokens, n_seg):
    """Up to n_seg segments of whole lines at evenly spaced starts, each <= max_tokens tokens."""
    text = doc["text"]
    starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
    starts = [s for s in starts if s < len(text) and text[s:s + 1].strip()]
    if not starts:
        return []
    picks = sorted({starts[int(i * len(starts) / n_seg)] for i in range(n_seg)})
    out = []
    for s in picks:
        chunk = text[s:s + 8 * max_tokens]
        enc = tok.encode(chunk, add_special_tokens=False)
        if len(enc.ids) > max_tokens:
            end = enc.offsets[max_tokens - 1][1]
            cut = chunk.rfind("\n", 0, end)
            chunk = chunk[:cut] if cut > 0 else chunk[:end]
        chunk = chunk.strip("\n")
        if len(chunk.strip()) >= 20:
            out.append(chunk)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--segments", type=int, default=2, help="segments per document (messages: 2x)")
    ap.add_argument("--max-positives", type=int, default=200)
    ap.add_argument("--tokenizer", default=os.path.join(os.environ.get("EXEMPLAR_GEMMA3_270M", ""), "tokenizer.json"))
    a = ap.parse_args()
    tok = tokenizers.Tokenizer.from_file(a.tokenizer)
    segs = []
    with open(os.path.join(a.workdir, "heldout-docs.jsonl")) as f:
        for line in f:
            d = json.loads(line)
            n = a.segments * (2 if d["source"] == "messages" else 1)
            for j, t in enumerate(segments_of(d, tok, a.max_tokens, n)):
                segs.append({"text": t, "source": d["source"], "lang": d["lang"],
                             "doc": d["corpus_line"], "seg": j})
    rng = np.random.default_rng(a.seed)

    def write(name, rows):
        p = os.path.join(a.workdir, name)
        with open(p + ".tmp", "w") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(p + ".tmp", p)

    write("segments.jsonl", segs)
    summary = {"segments": len(segs), "seed": a.seed, "max_tokens": a.max_tokens, "concepts": [], "tasks": []}
    rows = []
    for cid, (name, pred) in enumerate(concepts()):
        pos = [i for i, g in enumerate(segs) if pred(g)]
        neg = [i for i, g in enumerate(segs) if not pred(g)]
        pos = sorted(rng.permutation(pos)[: a.max_positives].tolist()) if pos else []
        neg = sorted(rng.permutation(neg)[: len(pos)].tolist()) if neg else []
        counts = {}
        for cat, ids in (("positive", pos), ("negative", neg)):
            order = rng.permutation(len(ids))
            n_eval = len(ids) // 2
            for rank, j in enumerate(order):
                split = "eval" if rank < n_eval else "train"
                counts[f"{split}_{cat}"] = counts.get(f"{split}_{cat}", 0) + 1
                rows.append({"concept_id": cid, "concept": name, "category": cat,
                             "doc_id": ids[j], "output": segs[ids[j]]["text"], "split": split})
        for k in ("train_positive", "eval_positive", "train_negative", "eval_negative"):
            if counts.get(k, 0) == 0:
                sys.exit(f"concept {cid} ({name}): no {k.replace('_', ' ')} example among {len(segs)} segments")
        summary["concepts"].append({"concept_id": cid, "concept": name, **counts})
    write("concepts.jsonl", rows)

    def family(g):
        if g["source"] != "messages":
            return None
        for fam, s in (("cyrillic", CYRILLIC), ("romance", ROMANCE), ("germanic", GERMANIC)):
            if g["lang"] in s:
                return fam
        return "other"

    tasks = {
        "task-source.jsonl": lambda g: g["source"],
        "task-code-prose-lang.jsonl": lambda g: "code" if g["source"] == "python_source"
        else ("other-language" if g["source"] == "messages" else "english-prose"),
        "task-lang-family.jsonl": family,
    }
    for name, lab in tasks.items():
        out = [{"text": g["text"], "label": lab(g), "doc_id": i} for i, g in enumerate(segs) if lab(g) is not None]
        write(name, out)
        counts = {}
        for r in out:
            counts[r["label"]] = counts.get(r["label"], 0) + 1
        summary["tasks"].append({"task": name, "documents": len(out), "classes": counts})
    with open(os.path.join(a.workdir, "labelled-summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
