#!/usr/bin/env bash
# The project's test command. It sets up the Python the tests use, a git-ignored venv `.venv`
# at the repository root with pinned numpy, scipy, safetensors, torch 2.11.0, transformers and
# scikit-learn (the independent implementations the evaluation metrics are checked against).
# It writes the Hugging Face Gemma-2 fixtures, then runs the whole Rust test suite with the
# `torch` feature (tch links the venv's libtorch) and with the Python-backed tests required,
# not skipped. It also checks that the default (no-feature) build compiles.
#
# Needs: a Rust toolchain, python3 (3.11+) with the venv module, and network access to PyPI the
# first time (packages already importable in .venv are not reinstalled).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned versions of the Python packages the tests use (tch 0.24 needs torch 2.11.0 exactly).
PY_PACKAGES=(numpy==2.4.6 scipy==1.17.1 safetensors==0.8.0 torch==2.11.0 transformers==5.23.0 scikit-learn==1.9.1)

if [[ ! -x .venv/bin/python ]]; then
    echo "==> creating .venv (python3 -m venv .venv)"
    python3 -m venv .venv
fi
PY="$PWD/.venv/bin/python"
if "$PY" -c 'import numpy, scipy.spatial, safetensors.numpy, transformers, tokenizers, torch, sklearn; assert torch.__version__.startswith("2.11.0")' 2>/dev/null; then
    echo "==> .venv has $("$PY" -c 'import numpy, scipy, safetensors, torch, transformers as t; print("numpy", numpy.__version__, "scipy", scipy.__version__, "safetensors", safetensors.__version__, "torch", torch.__version__, "transformers", t.__version__)')"
else
    echo "==> installing ${PY_PACKAGES[*]} into .venv"
    "$PY" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

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

export EXEMPLAR_PYTHON="$PY"
export EXEMPLAR_REQUIRE_PYTHON=1
echo "==> cargo check --all-targets (default features) and --no-default-features"
cargo check --all-targets
cargo check --all-targets --no-default-features
echo "==> cargo test --features torch --no-fail-fast $*"
cargo test --features torch --no-fail-fast "$@"
