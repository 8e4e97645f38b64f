#!/usr/bin/env python3
"""Write a JSON Lines corpus of real text found on this machine (no network).

Usage
    python scripts/make_corpus.py OUT.jsonl [--max-docs N] [--sources LIST] [--seed S] [--force]

    python scripts/make_corpus.py /tmp/corpus.jsonl                  # everything (see below)
    python scripts/make_corpus.py /tmp/small.jsonl --max-docs 5000   # a balanced 5,000-doc prefix
    python scripts/make_corpus.py /tmp/en.jsonl --sources pydoc_topics,docstring,info

Each output line is one document:

    {"text": "...", "source": "docstring", "lang": "en", "name": "docstring:json.decoder#0"}

and the file is what `exemplar build --model DIR --corpus OUT.jsonl` (default `--text-field
text`) and `exemplar activations` read (docs/corpora.md). The script uses the Python standard
library only.

Sources (the `source` field; a source that is missing on this machine is skipped, and the
script says so on stderr and in the summary)

    pydoc_topics   The Python Language Reference excerpts behind `help('topic')`, shipped as
                   `pydoc_data/topics.py` in the standard library. License: PSF License v2.
    docstring      Docstrings of the standard library: for every `.py` module (outside
                   site-packages and the test suites) the module, class, function and method
                   docstrings, read with `ast` (no module is imported, so nothing runs), each
                   headed by its `def`/`class` line; plus the docstrings of the built-in and
                   `lib-dynload` C modules and their members, via `importlib` + `inspect.getdoc`.
                   A module's docstrings are packed into documents in source order.
                   License: PSF License v2.
    python_source  Standard-library `.py` files (same selection as `docstring`, minus
                   `encodings/` code tables and `pydoc_data/`), cut at top-level `def`/`class`
                   boundaries (a block's leading comments and decorators stay with it); blocks
                   are packed into documents, a block that is too long is cut at its nested
                   `def`s, then at blank lines. License: PSF License v2.
    messages       Translated message catalogues: the `*.mo` files under
                   /usr/share/locale/<lang>/LC_MESSAGES (gettext binary format, parsed with
                   `struct`, decoded with the catalogue's declared charset). Of each catalogue
                   and language, the translations (`msgstr`; the first form of plural entries)
                   that differ from their `msgid` and were not already emitted for that language,
                   in catalogue order, joined with newlines into documents of a few hundred
                   words. The artificial `en@quot`, `en@boldquot` and `en@shaw` locales are
                   skipped. License: that of each package (mostly GPL/LGPL; iso-codes
                   LGPL-2.1+; see /usr/share/doc/<package>/copyright); redistributable.
    info           GNU Info manuals under /usr/share/info (`*.info*.gz`: coreutils, grep, sed,
                   find, gettext, ...), split into nodes, then packed by paragraph.
                   License: GNU Free Documentation License (or GPL) of each manual.
    man            Manual pages under /usr/share/man (`man*/` is English, `<lang>/man*/` a
                   translation), roff markup stripped by a small converter (man(7) macros and
                   common escapes; mdoc pages lose their macro lines). Symlinks and `.so` stubs
                   are skipped, and so are the ~16,600 auto-generated `gcloud*` pages (one
                   repetitive template; they would swamp the rest). License: that of each
                   package (GPL, BSD, MIT, Apache-2.0, ...); redistributable.
    license        The license texts in /usr/share/common-licenses (GPL, LGPL, Apache-2.0,
                   MPL, GFDL, Artistic, BSD, CC0), symlinked duplicates removed. Their terms
                   permit verbatim copying and distribution.

The `lang` field

    The natural language of the text: "en" for the English sources; for `messages` the locale
    directory name as found (e.g. "de", "pt_BR", "sr@latin", "zh_CN"); for `man` "en" for the
    untranslated sections and the locale directory name (e.g. "fr", "pt_BR") for translations.
    `python_source` documents are program code and carry lang "python" (their comments and
    docstrings are English).

Documents

    Text is split into paragraphs (blank lines), and consecutive paragraphs are packed into
    documents of at most --max-chars characters (default 2,000); a paragraph that is too long
    is cut at line breaks, then at sentence ends, then hard. Documents shorter than
    --min-chars (default 300) are merged into their predecessor when both fit within
    1.25 x --max-chars, or dropped. Exact duplicate texts are dropped (the first is kept, in
    the fixed processing order). So a document is a few hundred to ~2,000 characters,
    enough for 128-512 token contexts.

Order and determinism

    Every input is enumerated in sorted order. Each source's documents are shuffled with
    `random.Random(seed)` (default seed 0; `--seed -1` keeps the enumeration order), then the
    sources are interleaved round-robin (sorted by name; a source that runs out drops out), so
    any prefix of the file, and `--max-docs N`, is a balanced mix of sources. The same machine
    (same Python, same /usr/share) and the same flags give the same file, byte for byte.
    The file is written to OUT.tmp, then renamed to OUT; an existing OUT is refused unless
    --force is given. Counts per source and language, and the size, are printed to stderr.

    On the project's image (Python 3.11.7) the full run takes ~20 s and writes 55,270 documents,
    121.5 MB: pydoc_topics 282, docstring 1,609, python_source 6,219, messages 27,232 (161
    languages), info 2,673, man 17,121 (26 languages), license 134. A machine without
    /usr/share/locale, man or info pages gets only the sources it has (the standard-library
    ones are always there), with a note per missing source.
"""

from __future__ import annotations

import argparse
import ast
import codecs
import gzip
import hashlib
import importlib
import inspect
import io
import json
import os
import random
import re
import struct
import sys
import sysconfig
import tokenize
import unicodedata
import warnings
from collections import Counter, defaultdict

SOURCES = ("pydoc_topics", "docstring", "python_source", "messages", "info", "man", "license")
LOCALE_DIR = "/usr/share/locale"
INFO_DIR = "/usr/share/info"
MAN_DIR = "/usr/share/man"
LICENSE_DIR = "/usr/share/common-licenses"

MIN_CHARS = 300
MAX_CHARS = 2000


# --------------------------------------------------------------------------- packing


def clean(text: str) -> str:
    """Normalise line ends, drop NULs and trailing spaces, squeeze runs of blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def split_long(piece: str, max_chars: int) -> list[str]:
    """Cut a piece longer than max_chars at line breaks, then sentence ends, then hard."""
    if len(piece) <= max_chars:
        return [piece]
    for sep in ("\n", ". ", "。", " "):
        parts = piece.split(sep)
        if sum(1 for p in parts if p.strip()) < 2:
            continue
        out, cur = [], ""
        for i, part in enumerate(parts):
            part = part + (sep if i < len(parts) - 1 else "")
            if cur and len(cur) + len(part) > max_chars:
                out.append(cur)
                cur = ""
            cur += part
        if cur:
            out.append(cur)
        out = [p.strip() for p in out if p.strip()]
        return [q for p in out for q in split_long(p, max_chars)]
    return [piece[i : i + max_chars] for i in range(0, len(piece), max_chars)]


def pack(paragraphs: list[str], sep: str = "\n\n", min_chars: int | None = None,
         max_chars: int | None = None) -> list[str]:
    """Greedily pack paragraphs, in order, into documents of at most max_chars."""
    min_chars = MIN_CHARS if min_chars is None else min_chars
    max_chars = MAX_CHARS if max_chars is None else max_chars
    pieces = []
    for p in paragraphs:
        p = p.strip("\n")
        if p.strip():
            pieces.extend(split_long(p, max_chars))
    docs: list[str] = []
    cur = ""
    for p in pieces:
        if cur and len(cur) + len(sep) + len(p) > max_chars:
            docs.append(cur)
            cur = ""
        cur = p if not cur else cur + sep + p
    if cur:
        docs.append(cur)
    out: list[str] = []
    for d in docs:
        if len(d) < min_chars:
            if out and len(out[-1]) + len(sep) + len(d) <= max_chars * 5 // 4:
                out[-1] = out[-1] + sep + d
            continue
        out.append(d)
    return out


def paragraphs_of(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", clean(text)) if p.strip()]


# --------------------------------------------------------------------------- python stdlib


def stdlib_dir() -> str:
    return sysconfig.get_paths()["stdlib"]


SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_py_files() -> list[tuple[str, str]]:
    """(module name, path) of every stdlib .py file outside site-packages and test suites."""
    root = stdlib_dir()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            path = os.path.join(dirpath, fn)
            rel = os.path.relpath(path, root)
            mod = rel[:-3].replace(os.sep, ".")
            if mod.endswith(".__init__"):
                mod = mod[: -len(".__init__")]
            out.append((mod, path))
    return out


def read_py(path: str) -> str | None:
    try:
        with tokenize.open(path) as f:
            return f.read()
    except (OSError, SyntaxError, UnicodeDecodeError, LookupError):
        return None


def parse_py(src: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(src)
        except (SyntaxError, ValueError):
            return None


def source_pydoc_topics(log):
    try:
        from pydoc_data.topics import topics  # data only: a dict of strings
    except ImportError:
        log("pydoc_topics: pydoc_data.topics not importable: skipped")
        return []
    docs = []
    for key in sorted(topics):
        for i, d in enumerate(pack(paragraphs_of(topics[key]))):
            docs.append((d, "en", f"pydoc_topics:{key}#{i}"))
    return docs


def _signature(node) -> str:
    try:
        args = ast.unparse(node.args)
    except Exception:  # pragma: no cover - ast.unparse is total on parsed trees
        args = "..."
    ret = ""
    if getattr(node, "returns", None) is not None:
        try:
            ret = " -> " + ast.unparse(node.returns)
        except Exception:
            ret = ""
    return f"({args}){ret}"


def _docstring_entries(tree, mod: str) -> list[str]:
    entries = []
    doc = ast.get_docstring(tree, clean=True)
    if doc:
        entries.append(f"Module {mod}\n\n{doc}")

    def walk(body, prefix, in_function):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}.{node.name}"
                if not in_function:
                    d = ast.get_docstring(node, clean=True)
                    if d:
                        if isinstance(node, ast.ClassDef):
                            head = f"class {qual}"
                        else:
                            kw = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
                            head = f"{kw} {qual}{_signature(node)}"
                        entries.append(f"{head}\n\n{d}")
                walk(node.body, qual, in_function or not isinstance(node, ast.ClassDef))

    walk(tree.body, mod, False)
    return entries


C_MODULE_SKIP = re.compile(r"^(_test|_xx|xx|_ctypes_test|_testcapi|_testinternalcapi|_testbuffer"
                           r"|_testimportmultiple|_testmultiphase|_testclinic|_testsinglephase|antigravity|this)")


def c_module_names() -> list[str]:
    names = set(sys.builtin_module_names)
    dyn = os.path.join(stdlib_dir(), "lib-dynload")
    if os.path.isdir(dyn):
        for fn in os.listdir(dyn):
            if fn.endswith(".so") or fn.endswith(".pyd"):
                names.add(fn.split(".")[0])
    return sorted(n for n in names if not C_MODULE_SKIP.match(n))


def _c_docstring_entries(mod_name: str) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(mod_name)
    except BaseException:  # an optional C module that is not built here
        return []
    entries = []
    doc = inspect.getdoc(mod)
    if doc:
        entries.append(f"Module {mod_name}\n\n{doc}")
    for name in sorted(vars(mod)):
        if name.startswith("__"):
            continue
        obj = vars(mod)[name]
        if not (inspect.isbuiltin(obj) or inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", mod_name) not in (mod_name, None):
            continue
        d = inspect.getdoc(obj)
        if not d:
            continue
        kind = "class" if inspect.isclass(obj) else "def"
        entries.append(f"{kind} {mod_name}.{name}\n\n{d}")
        if inspect.isclass(obj):
            for mname in sorted(vars(obj)):
                if mname.startswith("_"):
                    continue
                md = inspect.getdoc(vars(obj)[mname]) if callable(vars(obj)[mname]) else None
                if md and md != d:
                    entries.append(f"def {mod_name}.{name}.{mname}\n\n{md}")
    return entries


def source_docstring(log):
    docs = []
    files = stdlib_py_files()
    if not files:
        log("docstring: no standard-library .py files found: skipped")
    for mod, path in files:
        src = read_py(path)
        tree = parse_py(src) if src is not None else None
        if tree is None:
            continue
        for i, d in enumerate(pack([clean(e) for e in _docstring_entries(tree, mod)])):
            docs.append((d, "en", f"docstring:{mod}#{i}"))
    for mod in c_module_names():
        entries = _c_docstring_entries(mod)
        for i, d in enumerate(pack([clean(e) for e in entries])):
            docs.append((d, "en", f"docstring:{mod}#{i}"))
    return docs


def _python_blocks(src: str, tree) -> list[str]:
    """Top-level blocks of a module: each def/class with its decorators and leading comments."""
    lines = src.split("\n")
    starts = [0]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            s = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            # keep the comment lines right above the block with it
            while s > 0 and lines[s - 1].lstrip().startswith("#"):
                s -= 1
            if s > starts[-1]:
                starts.append(s)
    starts.append(len(lines))
    blocks = []
    for a, b in zip(starts, starts[1:]):
        block = "\n".join(lines[a:b]).strip("\n")
        if block.strip():
            blocks.append(block)
    return blocks


NESTED_DEF = re.compile(r"\n(?=[ \t]+(?:@|async def |def |class ))")


def _split_block(block: str, max_chars: int) -> list[str]:
    if len(block) <= max_chars:
        return [block]
    parts = NESTED_DEF.split(block)
    out: list[str] = []
    for p in parts:
        if len(p) <= max_chars:
            out.append(p)
        else:
            out.extend(split_long_code(p, max_chars))
    return out


def split_long_code(text: str, max_chars: int) -> list[str]:
    parts = re.split(r"\n(?=\s*\n)", text)
    if len(parts) > 1 and all(len(p) <= max_chars for p in parts):
        return parts
    out, cur = [], ""
    for line in text.split("\n"):
        if cur and len(cur) + 1 + len(line) > max_chars:
            out.append(cur)
            cur = ""
        cur = line if not cur else cur + "\n" + line
    if cur:
        out.append(cur)
    return [o[:max_chars] for o in out]


def source_python_source(log):
    docs = []
    files = [(m, p) for m, p in stdlib_py_files()
             if not (m.startswith("encodings.") or m.startswith("pydoc_data"))]
    if not files:
        log("python_source: no standard-library .py files found: skipped")
    for mod, path in files:
        src = read_py(path)
        tree = parse_py(src) if src is not None else None
        if tree is None:
            continue
        src = src.replace("\r\n", "\n").replace("\r", "\n")
        pieces = [clean(q) for b in _python_blocks(src, tree) for q in _split_block(b, MAX_CHARS)]
        for i, d in enumerate(pack(pieces)):
            docs.append((d, "python", f"python_source:{mod}#{i}"))
    return docs


# --------------------------------------------------------------------------- gettext catalogues


def read_mo(path: str) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a GNU .mo file, in file order (header entry dropped)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 28:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    if magic == 0x950412DE:
        e = "<"
    elif magic == 0xDE120495:
        e = ">"
    else:
        return []
    _rev, n, o_off, t_off = struct.unpack(e + "4I", data[4:20])
    raw = []
    for i in range(n):
        olen, ooff = struct.unpack(e + "2I", data[o_off + 8 * i : o_off + 8 * i + 8])
        tlen, toff = struct.unpack(e + "2I", data[t_off + 8 * i : t_off + 8 * i + 8])
        raw.append((data[ooff : ooff + olen], data[toff : toff + tlen]))
    charset = "utf-8"
    for mid, mstr in raw:
        if mid == b"":
            m = re.search(rb"charset=([A-Za-z0-9_.:-]+)", mstr)
            if m:
                charset = m.group(1).decode("ascii", "replace")
    try:
        codecs.lookup(charset)
    except LookupError:
        charset = "utf-8"
    out = []
    for mid, mstr in raw:
        if mid == b"":
            continue
        msgid = mid.split(b"\x00")[0]
        if b"\x04" in msgid:  # msgctxt EOT msgid
            msgid = msgid.split(b"\x04", 1)[1]
        msgstr = mstr.split(b"\x00")[0]
        out.append((msgid.decode(charset, "replace"), msgstr.decode(charset, "replace")))
    return out


def source_messages(log):
    if not os.path.isdir(LOCALE_DIR):
        log(f"messages: {LOCALE_DIR} not found: skipped")
        return []
    docs = []
    catalogues = []
    for lang in sorted(os.listdir(LOCALE_DIR)):
        if lang.startswith("en@"):
            continue
        d = os.path.join(LOCALE_DIR, lang, "LC_MESSAGES")
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            if fn.endswith(".mo"):
                catalogues.append((lang, fn[:-3], os.path.join(d, fn)))
    if not catalogues:
        log(f"messages: no .mo catalogues under {LOCALE_DIR}: skipped")
        return []
    seen: dict[str, set] = defaultdict(set)
    for lang, cat, path in catalogues:
        try:
            pairs = read_mo(path)
        except (OSError, struct.error):
            continue
        texts = []
        for msgid, msgstr in pairs:
            s = clean(msgstr).strip()
            if not s or s == clean(msgid).strip() or s in seen[lang]:
                continue
            seen[lang].add(s)
            texts.append(s)
        for i, d in enumerate(pack(texts, sep="\n")):
            docs.append((d, lang, f"messages:{cat}/{lang}#{i}"))
    return docs


# --------------------------------------------------------------------------- info, man, licenses


def read_gz_text(path: str) -> str | None:
    try:
        with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def source_info(log):
    if not os.path.isdir(INFO_DIR):
        log(f"info: {INFO_DIR} not found: skipped")
        return []
    docs = []
    files = sorted(fn for fn in os.listdir(INFO_DIR) if ".info" in fn and fn.endswith(".gz"))
    for fn in files:
        text = read_gz_text(os.path.join(INFO_DIR, fn))
        if text is None:
            continue
        manual = fn.split(".info")[0]
        part = fn[len(manual) + len(".info"):].replace(".gz", "")
        for node_i, node in enumerate(text.split("\x1f")):
            node = node.strip("\n")
            if not node.startswith("File:"):
                continue  # preamble, Tag Table, Indirect table
            head, _, body = node.partition("\n")
            m = re.search(r"Node: ([^,\n]+)", head)
            node_name = m.group(1).strip() if m else str(node_i)
            # drop menus' "* Menu:" header lines and the underline rules of headings
            body = re.sub(r"^[=*\-.]{3,}$", "", body, flags=re.M)
            for i, d in enumerate(pack(paragraphs_of(body))):
                docs.append((d, "en", f"info:{manual}{part}:{node_name}#{i}"))
    if not docs:
        log(f"info: no Info manuals under {INFO_DIR}: skipped")
    return docs


ROFF_CHARS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "aq": "'", "dq": '"', "lq": "\u201c",
    "rq": "\u201d", "oq": "\u2018", "cq": "\u2019", "bu": "\u2022", "co": "\u00a9",
    "rg": "\u00ae", "tm": "\u2122", "mu": "\u00d7", "de": "\u00b0", "+-": "\u00b1",
    "<=": "\u2264", ">=": "\u2265", "->": "\u2192", "<-": "\u2190", "ti": "~", "ha": "^",
    "rs": "\\", "dg": "\u2020", "sc": "\u00a7", "Fo": "\u00ab", "Fc": "\u00bb",
}


ROFF_CHARS.update({
    "ss": "\u00df", "AE": "\u00c6", "ae": "\u00e6", "OE": "\u0152", "oe": "\u0153",
    "/o": "\u00f8", "/O": "\u00d8", "oa": "\u00e5", "oA": "\u00c5", "-D": "\u00d0",
    "Sd": "\u00f0", "TP": "\u00de", "Tp": "\u00fe", "Po": "\u00a3", "Eu": "\u20ac",
    "eu": "\u20ac", "Ye": "\u00a5", "ct": "\u00a2", "r!": "\u00a1", "r?": "\u00bf",
    "fo": "\u2039", "fc": "\u203a", "bq": "\u201e", "Bq": "\u201a", "pc": "\u00b7",
    "at": "@", "sh": "#", "dq": '"', "ga": "`", "aa": "\u00b4", "sl": "/", "ba": "|",
    "br": "|", "lh": "\u261c", "rh": "\u261e", "ci": "\u25cb", "sq": "\u25a1",
    "ul": "_", "rn": "\u203e", "em": "\u2014", "hy": "-", "mi": "-", "pl": "+", "eq": "=",
    "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "\u27e8", "ra": "\u27e9",
    "OK": "\u2713", "==": "\u2261", "!=": "\u2260", "~=": "\u2245", "di": "\u00f7",
    "no": "\u00ac", "12": "\u00bd", "14": "\u00bc", "34": "\u00be", "S1": "\u00b9",
    "S2": "\u00b2", "S3": "\u00b3", "*m": "\u03bc", "mc": "\u00b5", "ps": "\u00b6",
})
ROFF_ACCENTS = {":": "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303",
                ",": "\u0327", "v": "\u030c", "o": "\u030a", "-": "\u0304", ".": "\u0307"}


def roff_glyph(name: str) -> str:
    """A groff special character name (\\(xx or \\[name]) as text; unknown ones vanish."""
    if name in ROFF_CHARS:
        return ROFF_CHARS[name]
    m = re.fullmatch(r"u([0-9A-Fa-f]{4,6})(?:_([0-9A-Fa-f]{4,6}))*", name)
    if m:
        try:
            return unicodedata.normalize(
                "NFC", "".join(chr(int(h, 16)) for h in name[1:].split("_")))
        except ValueError:
            return ""
    if len(name) == 2 and name[0] in ROFF_ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + ROFF_ACCENTS[name[0]])
    return ""


def roff_inline(s: str) -> str:
    s = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", s)          # font changes
    s = re.sub(r"\\s[+-]?(\d|\(\d\d|\[\d+\])", "", s)      # size changes
    s = re.sub(r"\\\*(\[[^\]]*\]|\(..|.)", lambda m: {"(lq": "\u201c", "(rq": "\u201d", "R": "\u00ae"}.get(m.group(1), ""), s)
    s = re.sub(r"\\\((..)", lambda m: roff_glyph(m.group(1)), s)
    s = re.sub(r"\\\[([^\]]*)\]", lambda m: roff_glyph(m.group(1)), s)
    s = re.sub(r"\\[nk](\[[^\]]*\]|\(..|.)", "", s)
    s = re.sub(r"\\[hvwoxlLDbSZ]'[^']*'", "", s)
    s = s.replace("\\-", "-").replace("\\ ", " ").replace("\\~", " ").replace("\\e", "\\")
    s = s.replace("\\&", "").replace("\\%", "").replace("\\c", "").replace("\\:", "")
    s = s.replace("\\|", "").replace("\\^", "").replace("\\/", "").replace("\\,", "")
    s = s.replace("\\(", "(").replace("\\.", ".").replace("\\'", "'").replace("\\`", "`")
    s = s.replace('\\"', "")
    return s


def roff_args(rest: str) -> list[str]:
    return [a[1:-1] if len(a) >= 2 and a.startswith('"') and a.endswith('"') else a
            for a in re.findall(r'"[^"]*"|\S+', rest)]


def roff_to_text(src: str) -> str:
    """Plain text of a man(7) page: fill mode joins text lines into paragraphs."""
    out: list[str] = []
    para: list[str] = []
    fill = True

    def flush(blank: bool = True) -> None:
        if para:
            out.append(" ".join(para))
            para.clear()
        if blank and out and out[-1] != "":
            out.append("")

    def text(t: str) -> None:
        t = t.strip() if fill else t.rstrip()
        if not t:
            return
        if fill:
            para.append(t)
        else:
            out.append(t)

    for line in src.split("\n"):
        line = re.sub(r'(^|[^\\])\\".*$', r"\1", line)  # comments
        if line.startswith(".") or line.startswith("'"):
            m = re.match(r"[.']\s*(\S+)\s*(.*)$", line)
            if not m:
                continue
            req, rest = m.group(1), m.group(2)
            if req in ("SH", "SS", "Sh", "Ss"):
                flush()
                out.append(roff_inline(" ".join(roff_args(rest))))
                out.append("")
            elif req in ("PP", "LP", "P", "TP", "sp", "Pp", "HP", "RS", "RE", "TQ"):
                flush()
            elif req == "br":
                flush(blank=False)
            elif req == "nf" or req == "EX":
                flush()
                fill = False
            elif req == "fi" or req == "EE":
                flush()
                fill = True
            elif req == "IP":
                flush()
                args = roff_args(rest)
                if args:
                    text(roff_inline(args[0]))
            elif req in ("B", "I", "SM", "SB"):
                text(roff_inline(" ".join(roff_args(rest))))
            elif req in ("BR", "RB", "IR", "RI", "BI", "IB"):
                text(roff_inline("".join(roff_args(rest))))
            elif req == "Nd":
                text("- " + roff_inline(rest))
            # other requests (TH, de, ds, in, ti, ...) carry no running text
            continue
        if fill and not line.strip():
            flush()
            continue
        text(roff_inline(line))
    flush()
    return "\n".join(out)


def source_man(log):
    if not os.path.isdir(MAN_DIR):
        log(f"man: {MAN_DIR} not found: skipped")
        return []
    docs = []
    for top in sorted(os.listdir(MAN_DIR)):
        tpath = os.path.join(MAN_DIR, top)
        if not os.path.isdir(tpath) or os.path.islink(tpath):
            continue
        if top.startswith("man"):
            lang, sections = "en", [(top, tpath)]
        else:
            lang = top.split(".")[0]  # de.UTF-8 -> de
            if lang.startswith("en"):
                continue
            sections = [(s, os.path.join(tpath, s)) for s in sorted(os.listdir(tpath))
                        if s.startswith("man") and os.path.isdir(os.path.join(tpath, s))]
        for sname, spath in sections:
            for fn in sorted(os.listdir(spath)):
                path = os.path.join(spath, fn)
                if os.path.islink(path) or not os.path.isfile(path) or fn.startswith("gcloud"):
                    continue
                src = read_gz_text(path)
                if src is None or src.lstrip().startswith(".so "):
                    continue
                text = roff_to_text(src)
                page = re.sub(r"\.gz$", "", fn)
                for i, d in enumerate(pack(paragraphs_of(text))):
                    where = sname if top == sname else f"{top}/{sname}"
                    docs.append((d, lang, f"man:{where}/{page}#{i}"))
    if not docs:
        log(f"man: no manual pages under {MAN_DIR}: skipped")
    return docs


def source_license(log):
    if not os.path.isdir(LICENSE_DIR):
        log(f"license: {LICENSE_DIR} not found: skipped")
        return []
    docs = []
    seen = set()
    for fn in sorted(os.listdir(LICENSE_DIR)):
        path = os.path.join(LICENSE_DIR, fn)
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        text = read_gz_text(real)
        if text is None:
            continue
        for i, d in enumerate(pack(paragraphs_of(text))):
            docs.append((d, "en", f"license:{fn}#{i}"))
    return docs


BUILDERS = {
    "pydoc_topics": source_pydoc_topics,
    "docstring": source_docstring,
    "python_source": source_python_source,
    "messages": source_messages,
    "info": source_info,
    "man": source_man,
    "license": source_license,
}


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    global MIN_CHARS, MAX_CHARS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output .jsonl file")
    ap.add_argument("--max-docs", type=int, default=None,
                    help="write at most N documents (a prefix of the interleaved order)")
    ap.add_argument("--sources", default=",".join(SOURCES),
                    help=f"comma-separated sources (default: all of {','.join(SOURCES)})")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the per-source shuffle (default 0; -1: enumeration order)")
    ap.add_argument("--min-chars", type=int, default=MIN_CHARS)
    ap.add_argument("--max-chars", type=int, default=MAX_CHARS)
    ap.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    args = ap.parse_args(argv)

    MIN_CHARS, MAX_CHARS = args.min_chars, args.max_chars

    wanted = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in BUILDERS]
    if unknown:
        ap.error(f"unknown source(s) {unknown}; known: {', '.join(SOURCES)}")
    if args.max_docs is not None and args.max_docs < 1:
        ap.error("--max-docs must be >= 1")
    if os.path.exists(args.out) and not args.force:
        print(f"error: {args.out} exists (use --force to overwrite)", file=sys.stderr)
        return 2

    notes: list[str] = []

    def log(msg: str) -> None:
        notes.append(msg)
        print(msg, file=sys.stderr)

    seen_hash: set[bytes] = set()
    per_source: dict[str, list] = {}
    dupes = 0
    for name in sorted(set(wanted), key=SOURCES.index):
        # C-module imports may print (e.g. readline escapes): keep stdout clean
        saved = sys.stdout
        sys.stdout = io.StringIO()
        try:
            raw = BUILDERS[name](log)
        finally:
            sys.stdout = saved
        kept = []
        for text, lang, dname in raw:
            h = hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()
            if h in seen_hash:
                dupes += 1
                continue
            seen_hash.add(h)
            kept.append((text, lang, dname))
        if args.seed >= 0:
            random.Random(f"{args.seed}:{name}").shuffle(kept)
        per_source[name] = kept
        print(f"{name}: {len(kept)} documents", file=sys.stderr)

    # round-robin interleave, sources sorted by name
    order = sorted(k for k in per_source if per_source[k])
    iters = {k: iter(per_source[k]) for k in order}
    out_docs = []
    limit = args.max_docs if args.max_docs is not None else sum(len(v) for v in per_source.values())
    while order and len(out_docs) < limit:
        for k in list(order):
            item = next(iters[k], None)
            if item is None:
                order.remove(k)
                continue
            out_docs.append((k,) + item)
            if len(out_docs) >= limit:
                break

    tmp = args.out + ".tmp"
    counts: Counter = Counter()
    chars: Counter = Counter()
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for source, text, lang, dname in out_docs:
            text = text.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
            f.write(json.dumps({"text": text, "source": source, "lang": lang, "name": dname},
                               ensure_ascii=False) + "\n")
            counts[(source, lang)] += 1
            chars[source] += len(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.out)

    size = os.path.getsize(args.out)
    print(f"\nwrote {args.out}: {len(out_docs)} documents, {size:,} bytes "
          f"({dupes} duplicate texts dropped)", file=sys.stderr)
    print(f"{'source':<14} {'docs':>7} {'chars':>12} {'mean':>6}  languages", file=sys.stderr)
    for source in [s for s in SOURCES if s in per_source]:
        langs = Counter({lang: n for (s, lang), n in counts.items() if s == source})
        n = sum(langs.values())
        c = chars[source]
        if n == 0:
            print(f"{source:<14} {0:>7} {0:>12} {'-':>6}  (none)", file=sys.stderr)
            continue
        lang_txt = ", ".join(f"{l} {k}" for l, k in sorted(langs.items(), key=lambda x: (-x[1], x[0])))
        print(f"{source:<14} {n:>7} {c:>12,} {c // n:>6}  {len(langs)}: {lang_txt}", file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
