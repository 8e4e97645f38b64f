#!/usr/bin/env bash
# Interchange-intervention accuracy (IIA) on the real google/gemma-3-270m (f32, CPU): EP
# featurizers (hard and soft) against the full vector and neurons, per layer, on the seeded
# letter-lookup pointer task of make_task.py; the interchanges of some test pairs redone with HF
# transformers hooks and the torch featurizers of `mib-export`.
#
#     source scripts/env.sh
#     cargo build --release --features torch --bin exemplar
#     docs/examples/mib-iia/run.sh WORKDIR
#
# WORKDIR receives the dictionaries, the exports and the full records; this directory the task,
# the reports, the table and the plot. About 45 minutes on 2 busy cores.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
E="${EXEMPLAR_BIN:-$ROOT/target/release/exemplar}"
M="${EXEMPLAR_GEMMA3_270M:?source scripts/env.sh after scripts/get-model.sh gemma-3-270m}"
PY="$ROOT/.venv/bin/python"
CORPUS="${CORPUS:-/work/data/corpus-5k.jsonl}"
W="${1:?usage: run.sh WORKDIR}"
mkdir -p "$W"
cd "$W"
step() { echo "==> $*" >&2; }

step "tasks: 300 letter-lookup pairs (the one used) and 60 MCQA pairs (the 270M fails it), seed 0"
"$PY" "$HERE/make_task.py" task.jsonl --pairs 300 --seed 0
"$PY" "$HERE/make_task.py" mcqa.jsonl --pairs 60 --seed 0 --template mcqa --choices 4
cp task.jsonl "$HERE/task.jsonl"
"$PY" "$HERE/accuracy.py" "$M" mcqa.jsonl 2>/dev/null >"$HERE/accuracy-mcqa.txt"

step "EP dictionaries at every block's resid_post: p20, ~29k tokens of the corpus, one forward"
[[ -f "$CORPUS" ]] || "$PY" "$ROOT/scripts/make_corpus.py" "$CORPUS" --max-docs 5000
H=$(seq -s, -f 'blocks.%g.hook_resid_post' 0 17)
"$E" build --model "$M" --hook "$H" --corpus "$CORPUS" --ctx 64 --batch-documents 64 -p 20 \
    --calibration-activations 8000 --max-tokens 25000 --reservoir 10 --shuffle-seed 0 \
    --shuffle-buffer 1500 --device cpu -o dicts --force >"$HERE/build.txt" 2>&1
D=$(ls dicts/*.safetensors | paste -sd,)

step "IIA at the queried letter (token 2 from the end), even layers 0-16"
"$E" iia --model "$M" --task task.jsonl -d "$D" --layers 0,2,4,6,8,10,12,14,16 \
    --neurons 1,8,64,256 --soft-top-n 8 --regions 8 --position-from-end 2 \
    --records records.jsonl --markdown "$HERE/iia.md" --plot "$HERE/iia.png" \
    -o "$HERE/report.json" --force >"$HERE/iia.txt"
gzip -9nc records.jsonl >"$HERE/records.jsonl.gz"

step "HF transformers check of the first 3 test pairs' interchanges (all methods, all layers)"
U=()
for l in 0 2 4 6 8 10 12 14 16; do U+=(--unit "L$l=dicts/blocks.$l.hook_resid_post.p20.safetensors"); done
"$E" mib-export "${U[@]}" --top-n 1 -o mib-hard --force >/dev/null
"$E" mib-export "${U[@]}" --top-n 8 -o mib-soft --force >/dev/null
"$PY" "$ROOT/scripts/iia_checks.py" hf "$M" "$HERE/report.json" records.jsonl mib-hard mib-soft 3 \
    2>/dev/null >"$HERE/check.txt"
"$PY" "$HERE/outcomes.py" "$HERE/report.json" records.jsonl >"$HERE/outcomes.txt"
