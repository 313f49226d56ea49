#!/usr/bin/env bash
# Training speed of the reference U-Net (64 base filters, 128x128) on a GPU under JAX, in float32 and
# mixed_bfloat16, at batch 32 and 128: slices/s through the input pipeline and on a batch held on the GPU,
# prediction slices/s, the GPU's name and peak memory (benchmarks/train.py prints each).
#
#   bash benchmarks/gpu.sh          # on the GPU machine; installs Keras from .whl/ first if it is missing
#   bash benchmarks/gpu.sh quick    # dry run of every configuration with a tiny model (any machine with jax)
#
# The GPU machine has no network: fetch the wheels beforehand into .whl/ (bash benchmarks/gpu_wheels.sh)
# and copy that folder to the GPU machine with the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh  # $python, KERAS_BACKEND=jax, the carried wheels
if [ "${1:-}" = quick ]; then
    size_options=(--filters 4 --depth 2 --size 32)
    slices=256
else
    slices=6400  # timed at every batch size
    size_options=(--filters 64 --depth 4 --size 128)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
for precision in float32 mixed_bfloat16; do
    for batch in 32 128; do
        steps=$(( slices / batch ))
        echo "== $precision, batch $batch"
        "$python" benchmarks/train.py "${size_options[@]}" --batch "$batch" --steps "$steps" \
            --precision "$precision" --compare-feed 2>&1 | grep -E '^(command|machine|accelerator|config|train|predict)'
    done
done
