#!/usr/bin/env bash
# The resumable harvest: each corpus shard (split_corpus.py) goes through the real model to
# $HOOK with `exemplar activations --pack --ctx $CTX` (BOS + 64-token windows), one activation
# file + provenance sidecar per shard. A shard whose files exist is skipped, and a shard is
# written under a temporary name and renamed when finished, so an interrupted harvest resumes at
# the shard it was in. Stops once the finished shards hold >= TARGET rows.
#
#     harvest.sh WORKDIR [TARGET_ROWS]      (after split_corpus.py CORPUS WORKDIR)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
E="${EXEMPLAR_BIN:-$ROOT/target/release/exemplar}"
M="${EXEMPLAR_GEMMA3_270M:?source scripts/env.sh}"
PY="$ROOT/.venv/bin/python"
HOOK="${HOOK:-blocks.9.hook_resid_post}"
CTX="${CTX:-64}"
W="${1:?usage: harvest.sh WORKDIR [TARGET_ROWS]}"
TARGET="${2:-1000000}"
rows() { "$PY" -c 'import json,struct,sys
n=0
for p in sys.argv[1:]:
    with open(p,"rb") as f:
        h=json.loads(f.read(struct.unpack("<Q",f.read(8))[0]))
    n+=h["activations"]["shape"][0]
print(n)' "$@"; }
total=0
for s in "$W"/harvest/shard-[0-9][0-9].jsonl; do
    out="${s%.jsonl}.safetensors"
    if [[ -f "$out" && -f "$out.provenance.jsonl" ]]; then
        echo "skip $(basename "$out") (done)" >&2
    else
        tmp="${s%.jsonl}.partial.safetensors"
        t0=$(date +%s.%N)
        "$E" activations --model "$M" --hook "$HOOK" --corpus "$s" --pack --ctx "$CTX" \
            --batch-prompts 64 --device cpu -o "$tmp" --force
        t1=$(date +%s.%N)
        mv "$tmp.provenance.jsonl" "$out.provenance.jsonl"
        mv "$tmp" "$out"
        n=$(rows "$out")
        echo "{\"shard\": \"$(basename "$out")\", \"rows\": $n, \"seconds\": $(awk "BEGIN { printf \"%.3f\", $t1 - $t0 }"), \"finished\": \"$(date -u +%FT%TZ)\"}" >>"$W/harvest/timings.jsonl"
    fi
    total=$(( total + $(rows "$out") ))
    echo "harvest: $total rows" >&2
    (( total >= TARGET )) && break
done
# One window id space over all shards, so a build can stream several shards with their sidecars.
"$PY" "$HERE/renumber_docs.py" "$W"
echo "harvest complete: $total rows (target $TARGET)" >&2
