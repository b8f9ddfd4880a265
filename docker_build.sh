#!/usr/bin/env bash
# Build the image: ./docker_build.sh [tag]
set -euo pipefail
cd "$(dirname "$0")"
docker build -t "${1:-uniformface}" .
