#!/usr/bin/env bash
# The checks CI cannot run (it has no GPU), for a machine with a CUDA GPU, most important first: build the
# extension with its CUDA kernels, run every CUDA test (failing, not skipping, if the kernels are missing),
# cost Table 1's protocol in GPU-hours (eager and whole-step CUDA graphs, fp32 and bf16; its CNNs again with
# cuDNN's autotuning), measure how many training runs should share the GPU (whole-step CUDA graphs: k
# processes, then runs on CUDA streams of one process; then eager processes), time the transformer step and
# the sampler against F.affine_grid + F.grid_sample at N = 256 and N = 16,384, compare torch.compile's CUDA
# graphs with eager steps for three models, train three models a few steps on the GPU, time the CPU bar's
# cases on the GPU, and time stn's pooling against torch's there.
#
# Usage: scripts/gpu_check.sh [LOG_DIR]
#   PYTHON           the interpreter (default python3)
#   GPU_CHECK_SECONDS  a time budget for the whole check (default: none). Each step gets its own limit
#                    and never more than what is left; steps that no longer fit are skipped and named.
# Eight log files at most land in LOG_DIR (gpu.txt, build.log, tests.log, train.log, sampler.log,
# bench_train.log, share.log, summary.txt).
set -uo pipefail
logs=${1:-gpu_check_logs}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 STN_REQUIRE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export STN_EXT_DIR=${STN_EXT_DIR:-/tmp/stn-ext-gpu-check}
py=${PYTHON:-python3}
budget=${GPU_CHECK_SECONDS:-0}
began=$(date +%s)
status=0
summary="$logs/summary.txt"
: > "$summary"

# step NAME LIMIT_S LOG CMD...: runs CMD (its output appended to LOG) for at most LIMIT_S seconds, and
# no longer than the budget leaves; the summary gets one line per step.
step() {
    local name=$1 limit=$2 log=$3; shift 3
    if [ "$budget" -gt 0 ]; then
        local left=$(( budget - ($(date +%s) - began) ))
        if [ "$left" -lt 15 ]; then
            echo "SKIP  $name (${left}s of the budget left)" | tee -a "$summary"; status=1; return 1
        fi
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    echo "== $name (at most ${limit}s)" | tee -a "$logs/$log"
    local t0=$(date +%s) rc
    timeout -k 5 "$limit" "$@" >> "$logs/$log" 2>&1
    rc=$?
    local verdict=ok
    [ "$rc" -ne 0 ] && { verdict="FAIL rc=$rc"; [ "$rc" -eq 124 ] && verdict="TIMEOUT"; status=1; }
    printf '%-5s %s [%ss]\n' "${verdict%% *}" "$name" "$(( $(date +%s) - t0 ))" | tee -a "$summary"
    [ "$rc" -eq 0 ]
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $py -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  nproc; } > "$logs/gpu.txt" 2>&1
step build 300 build.log $py -m stn.ops.build --quiet || exit 1
xdist=$($py -c 'import xdist' >/dev/null 2>&1 && echo "-n 4")
step "CUDA tests" 240 tests.log $py -m pytest -q -rs -p no:cacheprovider $xdist -m cuda \
    tests/test_ops.py tests/test_fused.py tests/test_train.py
step "Table 1's protocol in GPU-hours (eager, and whole-step CUDA graphs)" 200 bench_train.log \
    $py -m stn.bench train --device cuda --modes none,graph --steps 10
step "Table 1's CNNs with cuDNN autotuning" 90 bench_train.log \
    $py -m stn.bench train --device cuda --models CNN,ST-CNN-Aff,ST-CNN-TPS --modes graph --precisions fp32 --steps 10 \
    --cudnn-benchmark
step "jobs sharing the GPU, whole-step CUDA graphs" 150 share.log \
    $py -m stn.bench share --device cuda --dataset RTS --models CNN,ST-CNN-Aff --jobs 1,2,4 --seconds 4 --mode graph
step "runs sharing the GPU on CUDA streams of one job, whole-step CUDA graphs" 150 share.log \
    $py -m stn.bench share --device cuda --dataset RTS --models CNN,ST-CNN-Aff --jobs 1,2 --streams 4 --seconds 4 --mode graph
step "jobs sharing the GPU" 150 share.log \
    $py -m stn.bench share --device cuda --dataset RTS --models CNN,ST-CNN-Aff --jobs 1,2,4,8 --seconds 4
for n in 256 16384; do
    step "sampler bench N=$n" 60 sampler.log $py -m stn.bench sampler --device cuda --cases 0,1 --n $n --repeats 50
done
# torch.compile reduce-overhead (forward and backward CUDA-graphed) for three models; each compiles for ~half a minute
step "torch.compile reduce-overhead against eager" 150 bench_train.log \
    $py -m stn.bench train --device cuda --datasets RTS --models CNN,ST-FCN-Aff,ST-CNN-Aff --precisions fp32 \
    --modes none,reduce-overhead,graph --steps 20
step "training on the GPU" 60 train.log env PYTHONPATH="$PWD" $py scripts/train_smoke.py cuda
step "sampler bench, the CPU bar's cases" 60 sampler.log \
    $py -m stn.bench sampler --device cuda --part step --cases 2,3,4 --repeats 50
step "pooling against torch's" 60 sampler.log $py -m stn.bench pool --device cuda
echo "whole check: $(( $(date +%s) - began ))s" | tee -a "$summary"
exit $status
