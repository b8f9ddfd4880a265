#!/usr/bin/env bash
# Build the image from the repository root (.dockerignore keeps data/, log/ and .venv out of the context):
#   ./docker_build.sh [tag]        (default tag: uniformface; docker_run.sh reads IMAGE)
set -euo pipefail
cd "$(dirname "$0")"
exec docker build -t "${1:-uniformface}" .
