#!/usr/bin/env bash
# Fetch, here, the wheels that the offline GPU machine lacks (its image has JAX, numpy, scipy, h5py, pandas,
# pillow, matplotlib, scikit-learn, pyyaml, rich, tqdm, but not Keras or pydantic) for its Python 3.12, into
# .whl/ (git-ignored), with the wheel of the project's own package (tumorseg) built from this working tree,
# for benchmarks/gpu_session.sh and benchmarks/gpu.sh to install there without network. The versions are
# those of requirements.lock, the environment the project is tested in. Re-run it after changing the code.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
mkdir -p .whl
pinned() { grep -E "^$1==" requirements.lock | head -1 | cut -d' ' -f1; }
for name in keras optree namex pydantic pydantic-core annotated-types typing-inspection typing-extensions; do
    spec=$(pinned "$name")
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${spec:-$name}"
done
rm -f .whl/tumorseg-*.whl
"$python" -m pip wheel --quiet --no-deps --no-build-isolation -w .whl .
du -sh .whl
