#!/usr/bin/env bash
# EP against TopK SAEs on the real google/gemma-3-270m (f32, CPU), blocks.9.hook_resid_post:
# every file in this directory but the scripts was written by these commands (issue 16).
#
#     source scripts/env.sh
#     cargo build --release --features torch --bin exemplar
#     docs/benchmarks/2026-12-06-ep-vs-sae-gemma-3-270m/run.sh WORKDIR
#
# WORKDIR receives the split corpus, the harvest (~2.8 GB for 1.1M rows), the held-out
# activations, the builds and their scores; each step skips what is already there, so a rerun
# resumes. What ran in the committed report, and what did not, is in README.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HERE
ROOT="$(cd "$HERE/../../.." && pwd)"
export EXEMPLAR_BIN="${EXEMPLAR_BIN:-$ROOT/target/release/exemplar}"
M="${EXEMPLAR_GEMMA3_270M:?source scripts/env.sh after scripts/get-model.sh gemma-3-270m}"
PY="$ROOT/.venv/bin/python"
W="${1:?usage: run.sh WORKDIR}"
mkdir -p "$W"
step() { echo "==> $*" >&2; }

step "corpus: text found on the machine (scripts/make_corpus.py), split into harvest and held-out"
[[ -f "$W/corpus.jsonl" ]] || "$PY" "$ROOT/scripts/make_corpus.py" "$W/corpus.jsonl" --max-docs 5000
[[ -f "$W/heldout-docs.jsonl" ]] || "$PY" "$HERE/split_corpus.py" "$W/corpus.jsonl" "$W"

step "harvest: >= 1M rows, one activation file per shard (resumable)"
nice -n 5 "$HERE/harvest.sh" "$W" 1000000

step "labelled held-out data and its activations (one document per segment)"
[[ -f "$W/concepts.jsonl" ]] || "$PY" "$HERE/make_labelled.py" "$W" >"$W/labelled.log"
[[ -f "$W/heldout.safetensors" ]] || "$EXEMPLAR_BIN" activations --model "$M" \
    --hook blocks.9.hook_resid_post --corpus "$W/segments.jsonl" --ctx 48 --batch-prompts 64 \
    --device cpu -o "$W/heldout.safetensors"

step "builds and scores (each finished run is kept; see README.md for the time limits used)"
B=(run "$W" --percentiles 1,2,5 --sae 4096:32,4096:64,16384:32,16384:64)
# 10k: builds, then every score (in the committed run the 16,384-wide SAEs' probes and
# correspondence were stopped unfinished; the raw and TF-IDF baselines come at the end).
"$PY" "$HERE/run_benchmark.py" "${B[@]}" --budgets 10000 --sae-max-seconds 150
# 100k: builds, then (as committed) concept detection only, for every build.
"$PY" "$HERE/run_benchmark.py" "${B[@]}" --budgets 100000 --sae-max-seconds 240 --skip-eval
"$PY" - "$W" <<'PYEOF'
import sys
import os; sys.path.insert(0, os.environ["HERE"])
import run_benchmark as rb
W = rb.Work(sys.argv[1], rb.os.environ["EXEMPLAR_BIN"])
for p in (1, 2, 5):
    rb.detect(W, rb.ep_name(100000, p), "ep")
for w, k in ((4096, 32), (4096, 64), (16384, 32), (16384, 64)):
    rb.detect(W, rb.sae_name(100000, w, k), "sae")
PYEOF

step "report, plots and the numpy recomputation"
"$PY" "$HERE/run_benchmark.py" report "$W" "$HERE" \
    --not-run-reason "not run: did not fit in this session's CPU time (2 shared cores)"
"$PY" "$HERE/recompute.py" "$W" "$HERE/report.json" --budgets 10000 >"$HERE/recompute.txt"
