#!/usr/bin/env bash
# Create .venv with the pinned PyTorch, install this project and compile its C++/CUDA samplers.
# Idempotent: re-running it on a set-up checkout only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
# The CUDA kernels compile wherever nvcc exists, GPU or not; without nvcc only the C++ kernel is built.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
.venv/bin/python -m stn.ops.build --quiet
