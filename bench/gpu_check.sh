#!/usr/bin/env bash
# One short check on a GPU machine (one H100/H200): bf16 training images/s of SphereFace-20, the training
# loader, batched MTCNN, LFW-size feature extraction (each checked against the CPU where it matters), the
# uniform loss at 85,742 classes, the plain step and uniform_loss_of's (split-bf16 products checked
# against float64)
# beside SphereFace-20's and IResNet-50's bf16 step (a "skipped" row where build_model lacks iresnet50), then
# the test suite (at least --test_reserve 150 s of the budget); one summary table at the end. Each stage
# runs under a deadline, so the whole check ends within --budget (450 s) plus start-up: under 8 minutes.
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
