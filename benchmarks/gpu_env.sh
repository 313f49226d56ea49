# Sourced by benchmarks/gpu.sh and benchmarks/gpu_session.sh: Keras under JAX, and the packages the offline
# GPU image lacks (and tumorseg itself) installed from the wheels copied in .whl/ (bash benchmarks/gpu_wheels.sh
# fetches and builds them).
python=${PYTHON:-python3}
export KERAS_BACKEND=jax  # before keras is first imported: its default backend, TensorFlow, is not there
if ! (cd / && "$python" -c "import keras, pydantic, optree, tumorseg") 2>/dev/null; then  # from /: not the checkout
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
