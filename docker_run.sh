#!/usr/bin/env bash
# Run a command in the image with data/ and log/ mounted, all GPUs and host IPC (DataLoader workers share
# batches through /dev/shm, which is 64 MB in a container without it):
#   ./docker_run.sh python code/train.py --config code/config.yaml --logdir log
#   ./docker_run.sh bash bench/gpu_check.sh
# With no command it opens a shell. It runs as your user, so that what lands in log/ is yours
# (ROOT=1 runs as root instead). IMAGE picks another image tag (default uniformface).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p data log
flags=(--rm --gpus all --ipc=host -v "$PWD/data:/workspace/data" -v "$PWD/log:/workspace/log")
[[ -t 0 && -t 1 ]] && flags+=(-it)
if [[ "${ROOT:-0}" != 1 ]]; then
  # No passwd entry for this uid in the image: HOME and USER keep caches (matplotlib, torch.compile) working.
  flags+=(--user "$(id -u):$(id -g)" -e HOME=/tmp -e USER="$(id -un)")
fi
if [[ $# -eq 0 ]]; then
  set -- bash
fi
exec docker run "${flags[@]}" "${IMAGE:-uniformface}" "$@"
