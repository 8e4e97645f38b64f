#!/usr/bin/env bash
# GPU checks, in two halves, because the GPU machine has no Rust toolchain and no network.
#
#   scripts/gpu-run.sh bundle     (here) builds the GPU test binaries (NVRTC compile test,
#                                 CUDA kernel parity incl. leaders, both screens and the torch
#                                 zero-copy view; the clustering tests, whose *_cuda halves
#                                 build on the GPU; Gemma-2 bf16 parity) and the benches
#                                 (cuda_kernels, gemma2_forward), copies them with the HF
#                                 fixtures into .gpu-bundle/ (git-ignored)
#   scripts/gpu-run.sh pipeline   (on the GPU machine, a separate call) `exemplar bench` at
#                                 Gemma-2-2B's shape (build from text, zero-copy, vs harvest),
#                                 into $OUT/pipeline.txt + gpu-text-build.json
#   scripts/gpu-run.sh sweep      (on the GPU machine, a separate call) an EP vs TopK SAE
#                                 budget sweep at Gemma-2-2B's width, into $OUT/sweep.txt +
#                                 JSON/PNG
#   scripts/gpu-run.sh run        (on the GPU machine, from the repository root, with
#                                 .gpu-bundle carried over) runs the GPU tests and benches and
#                                 writes their raw output under $OUT (or .gpu-bundle/out):
#                                 device.txt, tests.txt, benches.txt, commit.txt. A missing
#                                 driver, NVRTC or CUDA torch is a failure there, not a skip.
#                                 Copy $OUT to docs/benchmarks/<date>-<gpu>/ and commit it.
#
# On the GPU machine torch 2.11.0+cu130 comes from its own Python; the libraries are found
# from that Python's torch/lib and nvidia/cu13/lib.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUNDLE=.gpu-bundle

# The GPU machine's own torch: its lib/ and NVIDIA's cu13 libraries on the library path.
torch_libs() {
    PY="${PYTHON:-python3}"
    TORCH_DIR="$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
    NV="$(dirname "$TORCH_DIR")/nvidia/cu13/lib"
    export LD_LIBRARY_PATH="$TORCH_DIR/lib:$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

case "${1:-}" in
bundle)
    scripts/test.sh --no-run >/dev/null # venv, fixtures, and the test binaries
    export PATH="$PWD/.venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/bin"
    cargo test --release --features torch --no-run --message-format=json 2>/dev/null |
        "$PWD/.venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("gemma", "cuda_parity", "cuda_kernels", "clustering"):
        print(m["executable"])' | while read -r exe; do cp "$exe" "$BUNDLE/bin/"; done
    cargo bench --features torch --no-run --bench gemma2_forward --bench cuda_kernels --message-format=json 2>/dev/null |
        "$PWD/.venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        print(m["executable"])' | while read -r exe; do cp "$exe" "$BUNDLE/bin/bench-$(basename "$exe")"; done
    # The CLI itself, for the pipeline runs (build from text, EP vs SAE sweep).
    cargo build --release --features torch --bin exemplar 2>/dev/null
    cp target/release/exemplar "$BUNDLE/bin/exemplar"
    cp -r target/gemma-fixtures "$BUNDLE/fixtures"
    { git rev-parse HEAD; git status --short | head -20; } >"$BUNDLE/commit.txt"
    strip "$BUNDLE"/bin/* 2>/dev/null || true
    du -sh "$BUNDLE"
    ;;
run)
    OUT="${OUT:-$BUNDLE/out}"
    mkdir -p "$OUT"
    torch_libs
    export EXEMPLAR_GEMMA_FIXTURES="$PWD/$BUNDLE/fixtures"
    export EXEMPLAR_REQUIRE_CUDA=1 EXEMPLAR_REQUIRE_NVRTC=1
    cp "$BUNDLE/commit.txt" "$OUT/commit.txt" 2>/dev/null || true
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    } 2>&1 | tee "$OUT/device.txt"
    for t in "$BUNDLE"/bin/cuda_kernels-* "$BUNDLE"/bin/cuda_parity-* "$BUNDLE"/bin/clustering-* "$BUNDLE"/bin/gemma-*; do
        [[ "$(basename "$t")" == bench-* ]] && continue
        # The CLI test needs the exemplar binary at this checkout's build path; the CPU
        # machine's CI runs it, so it is skipped here.
        # A hung binary must not eat the call's ten minutes: each gets a limit, and its exit
        # status is logged.
        echo "==> $t --nocapture --skip activations_cli" | tee -a "$OUT/tests.txt"
        rc=0
        timeout 200 "$t" --nocapture --skip activations_cli >>"$OUT/tests.txt" 2>&1 || rc=$?
        echo "==> exit $rc" | tee -a "$OUT/tests.txt"
    done
    grep -E "^test result|FAILED|panicked" "$OUT/tests.txt" || true
    for b in "$BUNDLE"/bin/bench-*; do
        echo "==> $b" | tee -a "$OUT/benches.txt"
        rc=0
        timeout 150 "$b" --bench >>"$OUT/benches.txt" 2>&1 || rc=$?
        echo "==> exit $rc" | tee -a "$OUT/benches.txt"
    done
    tail -n 60 "$OUT/benches.txt"
    ;;
pipeline | sweep)
    # The end-to-end GPU runs, one per call (each may take minutes; a call has 10):
    #  * pipeline (issue 5): a build from text at Gemma-2-2B's shape (random weights), layer 12,
    #    ctx 128, 128 documents per batch, with the harvest path and the reference's cost model;
    #  * sweep (issue 6): EP vs a TopK SAE at Gemma-2-2B's width (F = 16,384, k = 64) on
    #    synthetic structured activations, both on the GPU.
    OUT="${OUT:-$BUNDLE/out}"
    mkdir -p "$OUT"
    torch_libs
    E="$PWD/$BUNDLE/bin/exemplar"
    cp "$BUNDLE/commit.txt" "$OUT/commit.txt" 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/device.txt" 2>&1 || true
    LOG="$OUT/$1.txt"
    run_logged() { echo "\$ $*" | tee -a "$LOG"; "$@" 2>&1 | tee -a "$LOG"; }
    if [[ "$1" == pipeline ]]; then
        run_logged "$E" bench --shape gemma-2-2b --hook blocks.12.hook_resid_post --documents 16384 \
            --batch-documents 128 --percentile 1 --device cuda -o "$OUT/gpu-text-build.json" --force
        # The same build with the cuBLAS screen (the harvest path is the same as above).
        run_logged env EXEMPLAR_NEAREST_SCREEN=cublas-bf16 "$E" bench --shape gemma-2-2b \
            --hook blocks.12.hook_resid_post --documents 16384 --batch-documents 128 --percentile 1 \
            --device cuda --no-harvest -o "$OUT/gpu-text-build-cublas.json" --force
    else
        W="$(mktemp -d)"
        run_logged "$E" synth -o "$W/train.safetensors" --dim 2304 --rows 400000 --features 8192 --seed 1
        run_logged "$E" synth -o "$W/held.safetensors" --dim 2304 --rows 10000 --features 8192 --seed 1 --row-seed 2
        run_logged "$E" budget-sweep -a "$W/train.safetensors" --eval-activations "$W/held.safetensors" \
            --ground-truth "$W/held.safetensors" --budgets 25000,100000,400000 -p 1 --device cuda \
            --width 16384 -k 64 --sae-batch-size 4096 --sae-device cuda -o "$W/sweep" --force
        cp "$W/sweep/report.json" "$OUT/sweep-report.json"
        cp "$W/sweep/quality_vs_compute.png" "$OUT/sweep-quality_vs_compute.png"
    fi
    ;;
*)
    echo "usage: scripts/gpu-run.sh bundle|run|pipeline|sweep" >&2
    exit 2
    ;;
esac
