"""Derives the evaluation fixtures of the embedded demo from its provenance sidecar.

Writes (run from the repository root: `python scripts/make_eval_fixtures.py`):

* `data/demo/labels.jsonl`: one line per document for `exemplar probe`, `{"doc_id", "label",
  "text"}`; label `docstring` for "docstrings of <module>" documents and `reference` for
  `pydoc_data.topics[...]` (language-reference) documents. The single Zen of Python document
  (doc 0) is neither and is left out.
* `data/demo/concepts.jsonl`: a small Concept500-style file for `exemplar detect`, three
  concepts chosen by the documents' `source` names. Per concept: positives are reference topics
  about the concept, hard negatives are documents on neighbouring subjects (numeric modules'
  docstrings for "numbers", string modules' docstrings for "strings", topics about truth values
  and exceptions for "control flow"); the remaining docstrings of unrelated modules are negatives
  shared by every concept (`concept_id` −1, as Concept500's shared negatives). Each document is
  used once (`doc_id` ties a row to its activations). `split` alternates train / eval within
  each (concept, category) group.

The text of a document is its WordPiece tokens (without [CLS]/[SEP]) joined back into words.
"""

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SIDECAR = ROOT / "data/demo/minilm-l6-layer3.safetensors.provenance.jsonl"

CONCEPTS = [
    (0, "numbers and numeric types",
     ["pydoc_data.topics['integers']", "pydoc_data.topics['floating']",
      "pydoc_data.topics['numeric-types']", "pydoc_data.topics['operator-summary']"],
     ["docstrings of decimal", "docstrings of fractions", "docstrings of math",
      "docstrings of statistics"]),
    (1, "strings and string formatting",
     ["pydoc_data.topics['strings']", "pydoc_data.topics['string-methods']",
      "pydoc_data.topics['formatstrings']", "pydoc_data.topics['typesseq']"],
     ["docstrings of string", "docstrings of textwrap", "docstrings of re",
      "docstrings of difflib"]),
    (2, "control-flow statements",
     ["pydoc_data.topics['if']", "pydoc_data.topics['while']", "pydoc_data.topics['for']",
      "pydoc_data.topics['try']", "pydoc_data.topics['with']"],
     ["pydoc_data.topics['truth']", "pydoc_data.topics['booleans']",
      "pydoc_data.topics['exceptions']", "pydoc_data.topics['context-managers']"]),
]

SHARED_NEGATIVES = [
    "docstrings of http.client", "docstrings of socket", "docstrings of smtplib",
    "docstrings of ftplib", "docstrings of zipfile", "docstrings of tarfile",
    "docstrings of shutil", "docstrings of tempfile", "docstrings of glob",
    "docstrings of fnmatch", "docstrings of mailbox", "docstrings of email.message",
    "docstrings of uuid", "docstrings of hashlib", "docstrings of base64",
    "docstrings of sqlite3", "docstrings of logging", "docstrings of threading",
]


def detokenize(tokens):
    words = []
    for t in tokens:
        if t in ("[CLS]", "[SEP]", "[PAD]"):
            continue
        if t.startswith("##") and words:
            words[-1] += t[2:]
        else:
            words.append(t)
    return " ".join(words)


def main():
    docs = [json.loads(line) for line in SIDECAR.read_text().splitlines() if line.strip()]
    by_source = {d["source"]: d for d in docs}
    labels = []
    for d in docs:
        src = d["source"]
        if src.startswith("docstrings of "):
            label = "docstring"
        elif src.startswith("pydoc_data.topics"):
            label = "reference"
        else:
            continue  # the Zen of Python
        labels.append({"doc_id": d["doc_id"], "label": label, "text": detokenize(d["tokens"])})
    rows = []

    def add(concept_id, concept, category, sources):
        for i, src in enumerate(sources):
            d = by_source[src]
            row = {"concept_id": concept_id}
            if concept is not None:
                row["concept"] = concept
            row.update({"category": category, "split": "train" if i % 2 == 0 else "eval",
                        "doc_id": d["doc_id"], "output": detokenize(d["tokens"])})
            rows.append(row)

    for cid, name, pos, hard in CONCEPTS:
        add(cid, name, "positive", pos)
        add(cid, name, "hard negative seen", hard)
    add(-1, None, "negative", SHARED_NEGATIVES)
    for name, items in (("labels.jsonl", labels), ("concepts.jsonl", rows)):
        path = ROOT / "data/demo" / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items))
        print(f"wrote {path.relative_to(ROOT)} ({len(items)} lines)")


if __name__ == "__main__":
    main()
