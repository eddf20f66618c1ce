#!/usr/bin/env bash
# The checks CI cannot run (it has no GPU), for a machine with a CUDA GPU: build the extension with
# its CUDA kernels, run every CUDA test (failing, not skipping, if the kernels are missing), train
# three models a few steps on the GPU, cost Table 1's protocol in GPU-hours (eager and compiled
# with CUDA graphs), then time the transformer step against F.affine_grid + F.grid_sample at
# N = 256 and N = 16,384.
# Usage: scripts/gpu_check.sh [LOG_DIR]   (PYTHON picks the interpreter; default python3)
set -uo pipefail
logs=${1:-gpu_check_logs}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 STN_REQUIRE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export STN_EXT_DIR=${STN_EXT_DIR:-/tmp/stn-ext-gpu-check}
py=${PYTHON:-python3}
status=0
step() {
    local name=$1; shift
    echo "== $name"
    if ! "$@"; then echo "!! $name failed"; status=1; return 1; fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$logs/gpu.txt"
$py -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' \
    | tee -a "$logs/gpu.txt"
step build bash -o pipefail -c "$py -m stn.ops.build --quiet 2>&1 | tee '$logs/build.log'" || exit 1
step tests bash -o pipefail -c "$py -m pytest -q -rs -p no:cacheprovider -m cuda tests/test_ops.py tests/test_fused.py tests/test_train.py 2>&1 | tee '$logs/tests.log'"
step "training on the GPU" bash -o pipefail -c "PYTHONPATH=\"$PWD\" $py scripts/train_smoke.py cuda 2>&1 | tee '$logs/train.log'"
for n in 256 16384; do
    step "bench N=$n" bash -o pipefail -c "$py -m stn.bench sampler --device cuda --part step --cases 0,1 --n $n --repeats 50 2>&1 | tee '$logs/bench_n$n.log'"
done
# every Table 1 model eager; CUDA graphs for three (each compiles for ~half a minute)
step "Table 1's protocol in GPU-hours" bash -o pipefail -c "$py -m stn.bench train --device cuda --modes none --steps 20 2>&1 | tee '$logs/bench_train.log'"
step "CUDA graphs against eager" bash -o pipefail -c "$py -m stn.bench train --device cuda --datasets RTS --models CNN,ST-FCN-Aff,ST-CNN-Aff --steps 20 2>&1 | tee '$logs/bench_train_compiled.log'"
step "bench, the CPU bar's cases" bash -o pipefail -c "$py -m stn.bench sampler --device cuda --part step --cases 2,3,4 --repeats 50 2>&1 | tee '$logs/bench_cases.log'"
exit $status
