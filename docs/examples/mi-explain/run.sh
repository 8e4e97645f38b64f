#!/usr/bin/env bash
# MI explanations (Wu et al.) of the real google/gemma-3-270m's seed-0 dictionaries at
# blocks.9.hook_resid_post (p20: K = 892, p10: K = 5220), against the logit-lens and
# top-members baselines, each checked against numpy; and the p20 dictionary exported as an MIB
# featurizer (hard and soft), checked with torch.
#
#     source scripts/env.sh
#     cargo build --release --features torch --bin exemplar
#     docs/examples/mi-explain/run.sh WORKDIR
#
# WORKDIR is the work directory of docs/examples/real-270m/run.sh (corpus.jsonl, seed0/). A few
# minutes on 2 cores.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
E="${EXEMPLAR_BIN:-$ROOT/target/release/exemplar}"
M="${EXEMPLAR_GEMMA3_270M:?source scripts/env.sh after scripts/get-model.sh gemma-3-270m}"
PY="$ROOT/.venv/bin/python"
H=blocks.9.hook_resid_post
W="${1:?usage: run.sh WORKDIR}"
cd "$W"
step() { echo "==> $*" >&2; }

for p in 20 10; do
    step "explain p$p (vocabulary: the 5000 most frequent words of corpus.jsonl seen ≥ 3 times)"
    "$E" explain -d seed0/$H.p$p.safetensors --model "$M" --vocab-from corpus.jsonl \
        --vocab-size 5000 --min-count 3 --labeller mi-labeller-p$p.jsonl --report mi-report-p$p.json \
        -o mi-p$p.jsonl --force >"$HERE/explain-p$p.txt" 2>&1
    step "numpy check p$p"
    "$PY" "$ROOT/scripts/analysis_checks.py" mi "$M" seed0/$H.p$p.safetensors mi-p$p.jsonl \
        mi-report-p$p.json >"$HERE/check-p$p.txt"
done
# The statistics of both, and the labeller's lines of p20's 30 largest regions.
"$PY" - "$HERE" <<'PY'
import json, sys
here = sys.argv[1]
q = {f"p{p}": json.load(open(f"mi-report-p{p}.json"))["quality"] for p in (20, 10)}
json.dump(q, open(f"{here}/quality.json", "w"), indent=1)
recs = [json.loads(l) for l in open("mi-labeller-p20.jsonl")]
recs.sort(key=lambda r: (-r["members"], r["region"]))
with open(f"{here}/labeller-p20-top30.jsonl", "w") as f:
    for r in recs[:30]:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
PY

step "MIB featurizer export of p20 (hard, then soft with 8 regions per row) and torch checks"
: >"$HERE/mib-check.txt"
for n in 1 8; do
    "$E" mib-export --unit "ResidualStream(Layer:9)=seed0/$H.p20.safetensors" --top-n $n \
        -o mib-p20-n$n --force >>"$HERE/mib-check.txt"
    "$PY" "$ROOT/scripts/mib_checks.py" featurizer mib-p20-n$n "ResidualStream(Layer:9)" \
        seed0/$H.p20.safetensors $n >>"$HERE/mib-check.txt"
done
(cd mib-p20-n1 && ls -l) >>"$HERE/mib-check.txt"
