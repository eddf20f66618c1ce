#!/usr/bin/env bash
# Create .venv with the pinned PyTorch, install this project and compile its C++/CUDA samplers.
# Idempotent: re-running it on a set-up checkout only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${PYTHON:-}" ]; then  # python3.11, else python3; PYTHON=... chooses (e.g. a python3.12)
  PYTHON=python3.11
  "$PYTHON" --version >/dev/null 2>&1 || PYTHON=python3
fi
# The pinned torch==2.14.1 has wheels for CPython 3.11 and 3.12: check before installing anything.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' 2>/dev/null; then
  echo "setup.sh: needs Python 3.11 or 3.12 (pyproject.toml: requires-python >=3.11,<3.13); $PYTHON is" \
       "$("$PYTHON" --version 2>/dev/null || echo "not runnable"). Set PYTHON=/path/to/python3.12 (or 3.11)." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
# Snakemake reads a --configfile before the Snakefile and words a YAML error without file or line: this hook
# (stn/snakemake_errors.py, a .pth in .venv's site-packages) makes that error name both.
.venv/bin/stn snakemake-hook >/dev/null
# The CUDA kernels compile wherever nvcc exists, GPU or not; without nvcc only the C++ kernel is built.
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
.venv/bin/python -m stn.ops.build --quiet
