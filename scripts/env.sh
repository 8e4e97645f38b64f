# Source this (after .venv exists, e.g. after one run of scripts/test.sh) to build and run with the
# `torch` feature by hand: `source scripts/env.sh && cargo test --features torch --test NAME`.
# It sets exactly what scripts/test.sh sets (the real model's variables once get-model.sh ran).
_EXEMPLAR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_EXEMPLAR_ROOT/.venv/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
_TORCH_LIB="$("$_EXEMPLAR_ROOT/.venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$_TORCH_LIB:$(dirname "$(dirname "$_TORCH_LIB")")/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export EXEMPLAR_PYTHON="$_EXEMPLAR_ROOT/.venv/bin/python"
export EXEMPLAR_GEMMA_FIXTURES="$_EXEMPLAR_ROOT/target/gemma-fixtures"
if [[ -f "$_EXEMPLAR_ROOT/.cache/models/gemma-3-270m/STAMP" ]]; then
    export EXEMPLAR_GEMMA3_270M="$_EXEMPLAR_ROOT/.cache/models/gemma-3-270m"
    export EXEMPLAR_GEMMA3_270M_FIXTURES="$_EXEMPLAR_ROOT/.cache/fixtures/gemma-3-270m"
fi
unset _EXEMPLAR_ROOT _TORCH_LIB
