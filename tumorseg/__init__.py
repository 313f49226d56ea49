"""Brain-tumor segmentation on the figshare T1-contrast MRI dataset.

    from tumorseg import Segmenter
    result = Segmenter.load("models/unet")("scan.dcm")  # a model folder: trained, released or exported

The subpackages follow the pipeline: data -> model -> train -> evaluate -> serve, with experiments (recipes,
summaries) beside them; errors, config (typed params), atomic (outputs written atomically) and cli (the one
exit convention) are shared by all. The public API below is imported on first use, so that the pipeline's
stages, which import this package, neither load the serving code nor depend on it in dvc.yaml.
"""

import importlib
import os

# TensorFlow uses its oneDNN CPU kernels by default only on some CPUs. On an AVX2 CPU without them
# (AMD EPYC) they train the U-Net 1.3x (128x128) to 1.6x (64x64) faster, with the same results under
# op determinism (benchmarks/train.py; docs/cpu.md). Set TF_ENABLE_ONEDNN_OPTS=0 to turn them off.
# It must be set before TensorFlow loads: import tumorseg before keras or tensorflow.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

LABEL_NAMES = {1: "meningioma", 2: "glioma", 3: "pituitary"}

PUBLIC = {  # name -> the module that defines it
    "Segmenter": "tumorseg.serve.segmenter",
    "Segmentation": "tumorseg.serve.segmenter",
    "ProjectError": "tumorseg.errors",
    "InputError": "tumorseg.errors",
    "load_params": "tumorseg.config",
}
__all__ = ["LABEL_NAMES", *PUBLIC]


def __getattr__(name: str):
    if name in PUBLIC:
        return getattr(importlib.import_module(PUBLIC[name]), name)
    raise AttributeError(f"module 'tumorseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *PUBLIC])
