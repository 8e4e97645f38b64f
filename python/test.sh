#!/usr/bin/env bash
# Builds the Python package's wheel (release, abi3) into the venv and runs its tests, which
# compare it with the `exemplar` CLI bit for bit (docs/python.md).
#
#   EXEMPLAR_PYTHON  the venv's python (default: .venv/bin/python, set up by scripts/venv.sh)
#   EXEMPLAR_CLI     the CLI binary to compare with (default: `cargo build --bin exemplar`,
#                    target/debug/exemplar); scripts/test.sh passes the one its tests built
#   CARGO_TARGET_DIR the wheel's cargo build directory (default: target/python, kept between
#                    runs so a rebuild is incremental)
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

if [[ -z "${EXEMPLAR_PYTHON:-}" ]]; then
    source scripts/venv.sh
    EXEMPLAR_PYTHON="$VENV_PY"
fi
PY="$EXEMPLAR_PYTHON"

# The build and test tools, pinned (the same pins as scripts/venv.sh; installed here only when
# the venv lacks them).
TOOLS=(maturin==1.16.0 pytest==9.2.0 ml-dtypes==0.6.0)
if ! "$PY" -c '
import importlib.metadata as m, sys
sys.exit(0 if all(m.version(n) == v for n, v in (a.split("==") for a in sys.argv[1:])) else 1)
' "${TOOLS[@]}" 2>/dev/null; then
    echo "==> installing ${TOOLS[*]}" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check "${TOOLS[@]}" >&2
fi

if [[ -z "${EXEMPLAR_CLI:-}" ]]; then
    echo "==> cargo build --bin exemplar"
    cargo build --bin exemplar
    EXEMPLAR_CLI="$ROOT/target/debug/exemplar"
fi
export EXEMPLAR_CLI

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/python}"
WHEELS="$CARGO_TARGET_DIR/wheels"
rm -rf "$WHEELS"
echo "==> maturin build --release (python/) → $WHEELS"
start=$SECONDS
"$PY" -m maturin build --release --quiet -m python/Cargo.toml -o "$WHEELS"
echo "    built in $((SECONDS - start)) s"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$WHEELS"/exemplar-*.whl

echo "==> cargo test (python/: the extension's own unit tests)"
cargo test --release --quiet --manifest-path python/Cargo.toml --lib

echo "==> pytest python/tests $*"
# From the repository root, so the installed package is imported, not python/exemplar/.
CI="${CI:-1}" "$PY" -m pytest python/tests -q "$@"
