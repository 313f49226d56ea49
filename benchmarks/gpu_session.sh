#!/usr/bin/env bash
# The one prepared run for a GPU machine without network (one H200, 10 minutes a command): the GPU recipe's
# cross-validation on the official folds (python -m tumorseg.experiments.offline_cv train, every fold at once, each stopped at
# a deadline with its best epoch so far), then the train-step benchmark of the reference U-Net
# (benchmarks/gpu_step.py). Everything it brings back lands in $OUT.
#
# Prepare here first (docs/scale-out.md, "GPU cross-validation"):
#   python -m tumorseg.experiments.offline_cv pack       # gpu_cv/: the dev set at 256x256 (JPEG), splits, params
#   bash benchmarks/gpu_wheels.sh                        # .whl/: keras, optree, namex, pydantic for Python 3.12
#                                                        # and the tumorseg wheel (re-run after changing the code)
# then copy the repository with gpu_cv/ and .whl/ to that machine and run there, in its root, within 600 s:
#   bash benchmarks/gpu_session.sh
# and score the predictions here:
#   python -m tumorseg.experiments.offline_cv score --predictions <the folder the files of $OUT were copied back to>
#
#   python -m tumorseg.experiments.offline_cv pack --quick --work /tmp/gpu_cv_quick
#   WORK=/tmp/gpu_cv_quick bash benchmarks/gpu_session.sh quick    # a dry run on any machine with jax and keras
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh  # $python, KERAS_BACKEND=jax, the wheels copied in .whl/
work=${WORK:-gpu_cv}
out=${OUT:-$work/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ "${1:-}" = quick ]; then
    cv_options=(--parallel 2 --deadline 1800)
    step_options=(--quick)
    session_s=${SESSION_S:-7200}
else
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    cv_options=(--parallel 4 --deadline "${CV_DEADLINE:-360}")  # seconds of training; most of the rest for the step benchmark
    step_options=()
    session_s=${SESSION_S:-590}  # the device's 600 s a command, less a margin
fi
"$python" -m tumorseg.experiments.offline_cv train --work "$work" --out "$out" "${cv_options[@]}" 2>&1 | tail -n 60 \
    || echo "the cross-validation failed: see $out/train.log"
# what is left of the command's time (each row of gpu_step.json is written as soon as it is measured)
left=$(( session_s - SECONDS ))
if (( left < 30 )); then
    echo "no time left for gpu_step.py (${left} s)"
else
    timeout "$left" "$python" benchmarks/gpu_step.py --out "$out" "${step_options[@]}" 2>&1 \
        | grep -v -E '^(W|I)[0-9]{4}' || echo "gpu_step.py stopped at the time limit"
fi
# back in $OUT: fold<k>.npz, gpu_cv.json, train.log, gpu_step.json, trace.tar.gz (8 files at most come back)
