# Sourced by benchmarks/gpu.sh and benchmarks/gpu_session.sh: Keras under JAX, and the packages the offline
# GPU image lacks installed from the wheels copied in .whl/ (bash benchmarks/gpu_wheels.sh fetches them).
python=${PYTHON:-python3}
export KERAS_BACKEND=jax  # before keras is first imported: its default backend, TensorFlow, is not there
if ! "$python" -c "import keras, pydantic, optree" 2>/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
