#!/usr/bin/env bash
# Run a command in the image with data/ and log/ mounted, all GPUs and host IPC (DataLoader shared memory):
#   ./docker_run.sh python code/train.py --config code/config.yaml --logdir log
# With no command it opens a shell.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p data log
tty_flag=()
[[ -t 0 ]] && tty_flag=(-it)
exec docker run --rm "${tty_flag[@]}" --gpus all --ipc=host \
  -v "$PWD/data:/workspace/data" -v "$PWD/log:/workspace/log" \
  "${IMAGE:-uniformface}" "${@:-bash}"
