import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of stage logs

from tumorseg.cli import run  # noqa: E402, F401  (after the line above: tumorseg may load TensorFlow)
