#!/usr/bin/env bash
# The project's test command: sets up the Python used by the interop tests (a git-ignored venv
# `.venv` at the repository root with pinned numpy, scipy and safetensors), then runs the whole
# Rust test suite (unit, integration and doc tests) with those tests required, not skipped.
#
# Needs: a Rust toolchain, python3 (3.11+) with the venv module, and network access to PyPI the
# first time (packages already importable in .venv are not reinstalled).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned versions of the Python packages the interop tests use.
PY_PACKAGES=(numpy==2.4.6 scipy==1.17.1 safetensors==0.8.0)

if [[ ! -x .venv/bin/python ]]; then
    echo "==> creating .venv (python3 -m venv .venv)"
    python3 -m venv .venv
fi
PY="$PWD/.venv/bin/python"
if "$PY" -c 'import numpy, scipy.spatial, safetensors.numpy' 2>/dev/null; then
    echo "==> .venv has numpy, scipy and safetensors: $("$PY" -c 'import numpy, scipy, safetensors; print("numpy", numpy.__version__, "scipy", scipy.__version__, "safetensors", safetensors.__version__)')"
else
    echo "==> installing ${PY_PACKAGES[*]} into .venv"
    "$PY" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

export EXEMPLAR_PYTHON="$PY"
export EXEMPLAR_REQUIRE_PYTHON=1
echo "==> EXEMPLAR_PYTHON=$EXEMPLAR_PYTHON EXEMPLAR_REQUIRE_PYTHON=1"
echo "==> cargo test --no-fail-fast $*"
cargo test --no-fail-fast "$@"
