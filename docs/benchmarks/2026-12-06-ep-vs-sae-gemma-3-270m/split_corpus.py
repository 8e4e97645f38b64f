"""Split the corpus into a harvest part (sharded, for the SAE/EP builds) and a held-out part
(the labelled documents), by a seeded permutation; the held-out documents never reach a build.

    python split_corpus.py CORPUS.jsonl WORKDIR [--heldout 1000] [--shard-docs 250] [--seed 0]

Writes WORKDIR/heldout-docs.jsonl and WORKDIR/harvest/shard-NN.jsonl (each line keeps the
corpus fields text/source/lang/name plus its corpus line number `corpus_line`).
"""
import argparse
import json
import os

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("workdir")
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--shard-docs", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    docs = []
    with open(a.corpus) as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            d["corpus_line"] = i + 1
            docs.append(d)
    if a.heldout >= len(docs):
        raise SystemExit(f"{a.corpus}: {len(docs)} documents, cannot hold out {a.heldout}")
    perm = np.random.default_rng(a.seed).permutation(len(docs))
    held = sorted(perm[: a.heldout].tolist())
    rest = perm[a.heldout :].tolist()
    os.makedirs(os.path.join(a.workdir, "harvest"), exist_ok=True)

    def write(path, rows):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            for d in rows:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        os.replace(tmp, path)

    write(os.path.join(a.workdir, "heldout-docs.jsonl"), [docs[i] for i in held])
    n_shards = 0
    for s in range(0, len(rest), a.shard_docs):
        write(
            os.path.join(a.workdir, "harvest", f"shard-{n_shards:02d}.jsonl"),
            [docs[i] for i in rest[s : s + a.shard_docs]],
        )
        n_shards += 1
    print(f"{len(held)} held-out documents, {len(rest)} harvest documents in {n_shards} shards")


if __name__ == "__main__":
    main()
