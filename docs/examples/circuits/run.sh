#!/usr/bin/env bash
# The circuit runs of docs/examples/circuits/README.md on the real Gemma 3 270M (CPU, f32).
# From the repository root, after `source scripts/env.sh` and a build with `--features torch`:
#   docs/examples/circuits/run.sh [EXEMPLAR_BINARY]
set -euo pipefail
EX="${1:-target/debug/exemplar}"
M="$EXEMPLAR_GEMMA3_270M"
OUT=docs/examples/circuits
# The tasks (deterministic): data/circuits/{ioi,induction,greater-than}.jsonl, 40 pairs each.
python scripts/make_circuit_tasks.py data/circuits 40
# 1. Full runs: EP codes (per head and shared), exact patching, MIB faithfulness.
for t in ioi induction greater-than; do
    extra=()
    [[ $t == ioi ]] && extra=(--mib "$OUT/ioi-mib.json")
    "$EX" circuits --model "$M" --task "data/circuits/$t.jsonl" -o "$OUT/$t.json" --force \
        "${extra[@]}" | tee "$OUT/$t.txt"
done
# 2. EP alone over pooling × percentile (no patching: the ROC-AUCs against the full runs'
#    patching effects are computed by sweep_auc.py with scikit-learn).
mkdir -p "$OUT/sweep"
for t in ioi induction greater-than; do
    for pool in last mean; do
        for p in 1 2 5 10 20; do
            "$EX" circuits --model "$M" --task "data/circuits/$t.jsonl" --pool "$pool" -p "$p" \
                --no-patching --no-faithfulness -o "$OUT/sweep/$t-$pool-p$p.json" --force >/dev/null
        done
    done
done
python "$OUT/sweep_auc.py" "$OUT" | tee "$OUT/sweep.txt"
