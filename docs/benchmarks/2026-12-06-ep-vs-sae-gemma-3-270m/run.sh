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

step "builds and scores (each finished run is kept, so a rerun resumes; README.md says what ran)"
# SAEs train until the held-out FVU (first 5,000 held-out rows, checked every 20,000 training
# rows) has not improved by 1 % for 2 checks, or until the wall-clock cap of their budget.
RB() { "$PY" "$HERE/run_benchmark.py" run "$W" --percentiles 1,2,5 "$@"; }
# 10k: every build, its detection, EP's held-out FVU and the EP<->SAE correspondence...
RB --budgets 10000 --sae 4096:32,4096:64 --sae-max-seconds 900 --evals detect,fvu,compare
# ...the 16,384-wide SAEs at 10k (the committed ones: the fourth session's, on the idle
# machine; the second session's stopped at a 900 s cap on the loaded one and were set aside)...
RB --budgets 10000 --sae 16384:32,16384:64 --sae-max-seconds 1800 \
    --evals detect,compare,probe --ep-probes none
# ...100k: the same for EP and the SAEs (the 16,384-wide ones with a 1,800 s cap, and their
# probes here too)...
RB --budgets 100000 --sae 4096:32,4096:64 --sae-max-seconds 1500 --evals detect,fvu,compare
RB --budgets 100000 --sae 16384:64,16384:32 --sae-max-seconds 1800 \
    --evals detect,compare,probe --ep-probes none
# ...1M: EP, then the four SAEs with their detection, probes and correspondence with EP p5...
RB --budgets 1000000 --sae "" --evals detect,fvu
RB --budgets 1000000 --percentiles 5 --sae 4096:64,4096:32,16384:64,16384:32 \
    --sae-max-seconds 1800 --evals detect,compare,probe --ep-probes none
# ...then the probes and the baselines (raw hidden state, TF-IDF).
RB --budgets 10000 --sae 4096:32,4096:64 --evals probe,baselines
RB --budgets 100000 --sae 4096:32,4096:64 --evals probe
# ...and EP's probes and correspondence at 1M.
RB --budgets 1000000 --percentiles 5,2,1 --sae "" --evals probe
RB --budgets 1000000 --evals compare

step "report, plots and the numpy recomputation"
"$PY" "$HERE/run_benchmark.py" report "$W" "$HERE" \
    --not-run-reason "not run: did not fit in the five sessions' CPU time (2 cores)"
"$PY" "$HERE/recompute.py" "$W" "$HERE/report.json" >"$HERE/recompute.txt"
