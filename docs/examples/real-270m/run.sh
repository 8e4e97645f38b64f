#!/usr/bin/env bash
# Every output in this directory, on the real google/gemma-3-270m (f32, CPU), from a fresh
# corpus of text found on the machine (scripts/make_corpus.py). Deterministic but for timings.
#
#     source scripts/env.sh            # after scripts/test.sh (or scripts/get-model.sh) ran once
#     cargo build --release --features torch --bin exemplar
#     docs/examples/real-270m/run.sh WORKDIR
#
# WORKDIR receives the corpus, the activations and the dictionaries (about 4 GB); this directory
# receives the reports. About 45 minutes on 2 cores.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
E="${EXEMPLAR_BIN:-$ROOT/target/release/exemplar}"
M="${EXEMPLAR_GEMMA3_270M:?source scripts/env.sh after scripts/get-model.sh gemma-3-270m}"
PY="$ROOT/.venv/bin/python"
H=blocks.9.hook_resid_post
W="${1:?usage: run.sh WORKDIR}"
mkdir -p "$W"
cd "$W"
step() { echo "==> $*" >&2; }

step "corpus and inputs"
[[ -f corpus.jsonl ]] || "$PY" "$ROOT/scripts/make_corpus.py" corpus.jsonl --max-docs 5000
"$PY" "$HERE/make_inputs.py" corpus.jsonl .

step "three document orders, three resolutions each (one forward per order)"
for s in 0 1 2; do
    "$E" build --model "$M" --hook $H --corpus mixed.jsonl --ctx 64 --batch-documents 64 \
        -p 5,10,20 --reservoir 10 --shuffle-seed $s --shuffle-buffer 1500 --device cpu \
        -o seed$s --force >"$HERE/build-seed$s.txt" 2>&1
done

step "hierarchy (seed 0: p20 ⊃ p10 ⊃ p5)"
"$E" hierarchy seed0/$H.p5.safetensors seed0/$H.p10.safetensors seed0/$H.p20.safetensors \
    --path 0,1 --path 0,5 --path-level 2 -o hierarchy.json --force >"$HERE/hierarchy.txt"

step "stability across the three orders"
for p in 10 20; do
    "$E" stability seed0/$H.p$p.safetensors seed1/$H.p$p.safetensors seed2/$H.p$p.safetensors \
        --regions-csv "$HERE/stability-p$p-regions.csv" -o stability-p$p.json --force \
        >"$HERE/stability-p$p.txt"
done

step "labels (seed 0, p20: the 30 largest regions)"
"$E" label -d seed0/$H.p20.safetensors --model "$M" --top 30 \
    -o "$HERE/labels-p20.jsonl" --markdown "$HERE/labels-p20.md" --force >"$HERE/labels-p20.txt"

step "steering: 8 regions drawn among those with >= 50 members, against random directions"
R="$("$PY" "$HERE/choose_regions.py" seed0/$H.p20.safetensors 8 50 0)"
echo "$R" >"$HERE/steer-regions.txt"
"$E" steer -d seed0/$H.p20.safetensors --model "$M" --prompts prompts.txt -r "$R" \
    --edit add --alpha 500,1000,2000 --random-control --baseline --new-tokens 24 --measure \
    -o "$HERE/steer-add.jsonl" --summary "$HERE/steer-add-summary.json" --force \
    >"$HERE/steer-add.txt"
R20="$("$PY" "$HERE/choose_regions.py" seed0/$H.p20.safetensors 20 50 1)"
echo "$R20" >"$HERE/steer-20-regions.txt"
"$E" steer -d seed0/$H.p20.safetensors --model "$M" --prompts prompts.txt -r "$R20" \
    --edit add --alpha 1000 --random-control --baseline --new-tokens 24 --measure \
    -o "$HERE/steer-20.jsonl" --summary "$HERE/steer-20-summary.json" --force \
    >"$HERE/steer-20.txt"
"$E" steer -d seed0/$H.p20.safetensors --model "$M" --prompts prompts.txt -r "$R" \
    --edit add --alpha 1000 --gated --random-control --new-tokens 24 --measure \
    -o "$HERE/steer-add-gated.jsonl" --summary "$HERE/steer-add-gated-summary.json" --force \
    >"$HERE/steer-add-gated.txt"

step "ablation: regions chosen by a label (Python source vs English prose), then code behaviour"
"$PY" - <<'EOF'
import json
with open("labelled.jsonl", "w") as f:
    for name, code in (("code.jsonl", True), ("prose-held.jsonl", False)):
        for line in open(name):
            d = json.loads(line)
            f.write(json.dumps({"text": d["text"], "label": code}) + "\n")
with open("code-prompts.jsonl", "w") as f:
    for p in ["def area(width, height):", "class Stack:", "for item in items:",
              "if value is None:", "with open(path) as handle:", "while queue:",
              "try:", "def __init__(self, name):"]:
        f.write(json.dumps({"text": p + "\n"}) + "\n")
EOF
"$E" ablate -d seed0/$H.p20.safetensors --model "$M" --score-labels labelled.jsonl \
    --label-position all --ctx 64 --top 3 --min-members 20 --min-rate 0.8 \
    --text labelled.jsonl --prompts code-prompts.jsonl --target "    " --target "        " \
    --random-control -o "$HERE/ablate-code.json" --force >"$HERE/ablate-code.txt"

step "saturation: one calibration, three domains"
head -n 300 prose.jsonl >prose-cal.jsonl
"$E" activations --model "$M" --hook $H --corpus prose-cal.jsonl --ctx 64 \
    -o prose-cal.safetensors --force >/dev/null 2>&1
"$E" calibrate -a prose-cal.safetensors -p 5 -o cal-p5.safetensors --force \
    >"$HERE/saturation-calibration.txt"
for c in prose code-build other-lang-build; do
    "$E" build --model "$M" --hook $H --corpus $c.jsonl --ctx 64 --batch-documents 64 \
        -c cal-p5.safetensors --no-saturation --reservoir 10 --device cpu \
        -o sat-$c.safetensors --force >"$HERE/saturation-build-$c.txt" 2>&1
done
"$E" saturation sat-prose.safetensors sat-code-build.safetensors sat-other-lang-build.safetensors \
    --name prose,code,other-language --png "$HERE/saturation.png" -o "$HERE/saturation.json" \
    --force >"$HERE/saturation.txt"

step "OOD: EP's distance against the k-NN baseline (prose dictionary; code and other languages)"
"$E" ood-baseline -d sat-prose.safetensors --model "$M" --reference-text prose.jsonl \
    --text prose-held.jsonl --ood-text code.jsonl --ood-text other-lang.jsonl --ctx 64 \
    -k 1,10 --seed 0 -o "$HERE/ood-baseline.json" --force >"$HERE/ood-baseline.txt"
step "done"
