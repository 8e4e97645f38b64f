"""Makes the harvest's window ids (`doc_id` in each shard's provenance sidecar) unique across
shards, so that a build streaming several shards accepts their sidecars (`exemplar` refuses a
doc_id seen twice). `exemplar activations` numbers each shard's windows from 0; shard i's ids are
shifted by the number of windows in shards 0..i-1. Idempotent: a shard already shifted is left
as it is. Each sidecar is rewritten under a temporary name and renamed.

    python renumber_docs.py WORKDIR
"""
import glob
import json
import os
import sys


def main(workdir):
    offset = 0
    for side in sorted(glob.glob(os.path.join(workdir, "harvest", "shard-[0-9][0-9].safetensors.provenance.jsonl"))):
        with open(side) as f:
            recs = [json.loads(line) for line in f]
        if not recs:
            sys.exit(f"{side}: empty sidecar")
        first = recs[0]["doc_id"]
        if first not in (0, offset):
            sys.exit(f"{side}: line 1: doc_id {first}, expected 0 (as written) or {offset} (renumbered)")
        if first != offset:
            tmp = side + ".tmp"
            with open(tmp, "w") as f:
                for r in recs:
                    r["doc_id"] += offset
                    f.write(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n")
            os.replace(tmp, side)
            print(f"{os.path.basename(side)}: doc_id += {offset}", file=sys.stderr)
        offset = max(r["doc_id"] for r in recs) + 1
    print(f"harvest window ids: 0..{offset - 1}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
