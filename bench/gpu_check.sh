#!/usr/bin/env bash
# One short check on a GPU machine (one H100/H200: about 5-8 minutes): bf16 training images/s of
# SphereFace-20, the training loader, batched MTCNN, LFW-size feature extraction (each checked against
# the CPU where it matters), then the test suite in the time left; one summary table at the end.
#   bash bench/gpu_check.sh [--json FILE] [--no_compile] [--budget SECONDS]
#   bash bench/gpu_check.sh --quick --device cpu          # tiny sizes, no tests: a smoke run anywhere
# Uses .venv/bin/python when present (a clone after `make venv`), else python (the Docker image).
set -euo pipefail
cd "$(dirname "$0")/.."
python=python
[[ -x .venv/bin/python ]] && python=.venv/bin/python
tests=(--tests)
for arg in "$@"; do
  [[ "$arg" == "--quick" ]] && tests=()
done
PYTHONPATH=code exec "$python" bench/gpu_check.py ${tests[@]+"${tests[@]}"} "$@"
