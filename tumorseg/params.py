"""Read params.yaml."""

from pathlib import Path

import yaml


def load_params(path="params.yaml"):
    with open(Path(path)) as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of parameter sections, found {type(params).__name__}.")
    return params
