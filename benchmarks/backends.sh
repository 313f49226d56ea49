#!/usr/bin/env bash
# Training speed of one recipe under each Keras backend installed here, side by side (same model, loss,
# input pipeline with augmentation; TensorFlow with its oneDNN kernels on and off).
#   bash benchmarks/backends.sh [RECIPE] [STEPS]      # default: cpu, 20 steps
# JAX and PyTorch come from requirements-backends.txt; a backend that is not installed is skipped.
set -u
cd "$(dirname "$0")/.."
recipe=${1:-cpu}
steps=${2:-20}
run() {
  echo "== $*"
  env "$@" python benchmarks/train.py --recipe "$recipe" --steps "$steps" 2>/dev/null | grep -E "^(machine|train|predict):"
}
run KERAS_BACKEND=tensorflow TF_ENABLE_ONEDNN_OPTS=1
run KERAS_BACKEND=tensorflow TF_ENABLE_ONEDNN_OPTS=0
for backend in jax torch; do
  if python -c "import $backend" 2>/dev/null; then run KERAS_BACKEND=$backend; else echo "== KERAS_BACKEND=$backend: not installed, skipped"; fi
done
