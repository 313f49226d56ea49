"""Brain-tumor segmentation on the figshare T1-contrast MRI dataset.

The subpackages follow the pipeline: data -> model -> train -> evaluate -> serve, with experiments (recipes,
summaries) beside them; errors, config (typed params), atomic (outputs written atomically) and cli (the one
exit convention) are shared by all.
"""

import os

# TensorFlow uses its oneDNN CPU kernels by default only on some CPUs. On an AVX2 CPU without them
# (AMD EPYC) they train the U-Net 1.3x (128x128) to 1.6x (64x64) faster, with the same results under
# op determinism (benchmarks/train.py; docs/cpu.md). Set TF_ENABLE_ONEDNN_OPTS=0 to turn them off.
# It must be set before TensorFlow loads: import tumorseg before keras or tensorflow.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

LABEL_NAMES = {1: "meningioma", 2: "glioma", 3: "pituitary"}
