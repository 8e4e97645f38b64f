#!/usr/bin/env bash
# MI explanations (Wu et al.) of the real google/gemma-3-270m's seed-0 dictionaries at
# blocks.9.hook_resid_post (p20: K = 892, p10: K = 5220), against the logit-lens and
# top-members baselines, each checked against numpy; and the p20 dictionary exported as an MIB
# featurizer (hard and soft), checked with torch; explanation-guided steering of 20 regions of p20
# against random other regions, checked against HF transformers.
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

step "explanation-guided steering: 20 regions of p20 (>= 50 members, seed 1), raised to 1000 and 2000"
R20="$("$PY" "$ROOT/docs/examples/real-270m/choose_regions.py" seed0/$H.p20.safetensors 20 50 1)"
: >"$HERE/steer-check.txt"
for v in 1000 2000; do
    "$E" explain-steer -d seed0/$H.p20.safetensors --model "$M" --explanations mi-p20.jsonl \
        --prompts prompts.txt -r "$R20" --words 10 --value $v --control-seed 0 \
        -o "$HERE/steer-v$v.jsonl" --summary "$HERE/steer-v$v-summary.json" --force \
        >"$HERE/steer-v$v.txt"
    "$PY" "$ROOT/scripts/analysis_checks.py" hf-shift "$M" seed0/$H.p20.safetensors \
        "$HERE/steer-v$v.jsonl" >>"$HERE/steer-check.txt" 2>/dev/null
done
# The same regions measured on their logit-lens words instead of their MI words.
"$E" explain-steer -d seed0/$H.p20.safetensors --model "$M" --explanations mi-p20.jsonl \
    --prompts prompts.txt -r "$R20" --words 10 --words-from lens --value 1000 --control-seed 0 \
    -o "$HERE/steer-lens-v1000.jsonl" --summary "$HERE/steer-lens-v1000-summary.json" --force \
    >"$HERE/steer-lens-v1000.txt"

step "temperatures: p20 at alpha = beta = 1, 10, 30; where the MI words sit in p(w|c) and p(c|w)"
for t in 10 30; do
    "$E" explain -d seed0/$H.p20.safetensors --model "$M" --vocab-from corpus.jsonl \
        --vocab-size 5000 --min-count 3 --alpha $t --beta $t -o mi-p20-t$t.jsonl --force \
        >"$HERE/explain-p20-t$t.txt" 2>&1
done
"$PY" - "$HERE" <<'PY' >"$HERE/temperatures.txt"
import json, math, sys
import numpy as np
print("alpha=beta  median over regions and MI words of: log p(w|c)  log p(c|w)   (uniform: %.2f, %.2f)"
      % (math.log(1 / 5000), math.log(1 / 892)))
for t, path in ((1, "mi-p20.jsonl"), (10, "mi-p20-t10.jsonl"), (30, "mi-p20-t30.jsonl")):
    lw, lr = [], []
    for l in open(path):
        for m in json.loads(l)["mi"]:
            lw.append(m["log_p_word"]); lr.append(m["log_p_region"])
    print(f"{t:>10}  {np.median(lw):>30.2f}  {np.median(lr):>10.2f}")
PY
