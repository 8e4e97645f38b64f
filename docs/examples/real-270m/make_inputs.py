#!/usr/bin/env python3
"""Splits the real-text corpus (scripts/make_corpus.py, 5,000 documents) into the inputs of the
analyses in this directory. Deterministic: the corpus order, no randomness except the seeded
region choice in `choose_regions`.

    python3 docs/examples/real-270m/make_inputs.py CORPUS.jsonl OUTDIR

Writes into OUTDIR:
  mixed.jsonl       the first 1,500 documents (every source, round-robin): the steering and
                    stability dictionaries' corpus
  prose.jsonl       English prose (info, man/en, license, pydoc_topics), the first 900: the OOD
                    dictionary's corpus (the saturation curve "prose")
  prose-held.jsonl  the next 150 English prose documents (held out)
  code.jsonl        Python source (python_source), 150 documents
  other-lang.jsonl  translated messages and manual pages (messages, man in a language other
                    than English), 150 documents
  code-build.jsonl, other-lang-build.jsonl: up to 900 more of each, for the saturation curves
  prompts.txt       the steering prompts
"""
import json
import sys

src, out = sys.argv[1], sys.argv[2]
docs = [json.loads(l) for l in open(src)]


def prose(d):
    return d["source"] in ("info", "license", "pydoc_topics") or (d["source"] == "man" and d["lang"] == "en")


def code(d):
    return d["source"] == "python_source"


def other(d):
    return d["source"] == "messages" or (d["source"] == "man" and d["lang"] != "en")


def write(name, rows):
    with open(f"{out}/{name}", "w") as f:
        for d in rows:
            f.write(json.dumps({"text": d["text"], "source": d["source"], "lang": d["lang"]}) + "\n")
    print(f"{name}: {len(rows)} documents")


write("mixed.jsonl", docs[:1500])
p = [d for d in docs if prose(d)]
c = [d for d in docs if code(d)]
o = [d for d in docs if other(d)]
write("prose.jsonl", p[:900])
write("prose-held.jsonl", p[900:1050])
write("code.jsonl", c[:150])
write("other-lang.jsonl", o[:150])
write("code-build.jsonl", c[150:1050])
write("other-lang-build.jsonl", o[150:1050])
with open(f"{out}/prompts.txt", "w") as f:
    f.write("The weather today is\n")
    f.write("My favourite thing about the city is\n")
    f.write("In the beginning of the story, the\n")
    f.write("Here is what you need to know:\n")
