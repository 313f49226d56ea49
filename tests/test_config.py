"""The typed params: every bad value is refused with a message naming the key and the fix, before any work."""

import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO, make_params
from tumorseg.config import Augment, ConfigError, Params, load_params, parse_params
from tumorseg.experiments.recipe import load_recipe


def test_the_repository_params_load_as_typed_settings():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.model.encoder == "none" and params.model.hypercolumns is False
    assert params.train.loss.lovasz_weight == 0.0 and params.train.freeze_encoder_epochs == 0
    assert params.train.monitor_mode == "max" and params.train.oversample.times(2) == 1
    # the defaults are the CPU recipe, tested on official fold 1
    assert params == params.replaced(load_recipe("cpu"))
    assert (params.split.scheme, params.split.fold) == ("cvind", 0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        # unknown keys, with the nearest known one
        ({"train.loss.lovasz_weigth": 1.0}, "unknown key train.loss.lovasz_weigth: did you mean train.loss.lovasz_weight?"),
        ({"train.augment.rotaton": 10}, "unknown key train.augment.rotaton: did you mean train.augment.rotation?"),
        ({"trian.epochs": 3}, "unknown key trian: did you mean train?"),
        ({"train.oversample.gliomas": 2}, "unknown key train.oversample.gliomas: did you mean train.oversample.glioma?"),
        # types: no silent casts
        ({"train.augment.hflip": "no"}, "train.augment.hflip = 'no': input should be a valid boolean"),
        ({"train.epochs": 2.7}, "train.epochs = 2.7: input should be a valid integer"),
        ({"train.epochs": True}, "train.epochs = True: input should be a valid integer"),
        ({"train.oversample.glioma": 1.5}, "train.oversample.glioma = 1.5: input should be a valid integer"),
        ({"train.lr_max": "fast"}, "train.lr_max = 'fast': input should be a valid number"),
        # ranges and choices
        ({"train.augment.zoom": 3.0}, "train.augment.zoom = 3.0: input should be less than 1"),
        ({"train.augment.contrast": 1.5}, "train.augment.contrast = 1.5"),
        ({"train.augment.rotation": 270.0}, "train.augment.rotation = 270.0"),
        ({"train.epochs": 0}, "train.epochs = 0: input should be greater than or equal to 1"),
        ({"train.lr_schedule": "linear"}, "train.lr_schedule = 'linear': input should be 'cosine', 'exponential' or 'plateau'"),
        ({"train.precision": "float8"}, "train.precision = 'float8'"),
        ({"train.strategy": "tpu"}, "train.strategy = 'tpu'"),
        ({"train.monitor": "val_iou"}, "train.monitor = 'val_iou'"),
        ({"model.encoder": "vgg19"}, "model.encoder = 'vgg19'"),
        ({"evaluate.postprocess": "biggest"}, "evaluate.postprocess = 'biggest'"),
        ({"evaluate.tta": "rotate"}, "evaluate.tta = 'rotate'"),
        ({"evaluate.bootstrap": 0}, "evaluate.bootstrap = 0"),
        ({"train.finetune_lr_factor": 0.0}, "train.finetune_lr_factor = 0.0"),
        ({"train.loss.lovasz_weight": -1.0}, "train.loss.lovasz_weight = -1.0"),
        ({"data.figshare_url": "http://example.org/files"}, "data.figshare_url must start with https://"),
        # rules between keys
        ({"data.image_size": 100}, "data.image_size (100) must be divisible by 2**model.depth (16)"),
        ({"train.lr_min": 1.0e-2}, "train.lr_min (0.01) must be at most train.lr_max (0.001)"),
        ({"train.loss.bce_weight": 0.0, "train.loss.dice_weight": 0.0}, "both 0"),
        ({"train.loss.lovasz_weight": 1.0, "train.loss.lovasz_from_epoch": 50}, "never switches on"),
        ({"train.freeze_encoder_epochs": 1}, "needs a pretrained model.encoder"),
        ({"model.encoder": "vgg16", "train.epochs": 50, "train.freeze_encoder_epochs": 60}, "must be at most train.epochs (50)"),
        ({"train.progressive.size": 64}, "both 0 (off) or both set"),
        ({"train.progressive.size": 64, "train.progressive.epochs": 50}, "must be below train.epochs (50)"),
        ({"train.progressive.size": 48, "train.progressive.epochs": 5}, "(48) must be below data.image_size (128), divide it"),
        ({"train.progressive.size": 128, "train.progressive.epochs": 5}, "e.g. 64"),
        ({"model.depth": 6, "train.progressive.size": 32, "train.progressive.epochs": 5}, "divisible by 2**model.depth (64)"),
        ({"model.encoder": "vgg16", "train.progressive.size": 64, "train.progressive.epochs": 5}, "needs model.encoder none"),
        ({"split.val": 0.5, "split.test": 0.5}, "split.val + split.test (0.5 + 0.5) must be below 1"),
        ({"split.fold": 5}, "split.fold (5) must be below split.folds (5)"),
        ({"evaluate.threshold_min": 0.9, "evaluate.threshold_max": 0.1}, "evaluate.threshold_min (0.9) must be at most"),
    ],
)
def test_bad_values_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        make_params(overrides)
    assert message in str(error.value)
    assert str(error.value).startswith("params.yaml: ")


def test_every_problem_is_listed_one_per_line():
    with pytest.raises(ConfigError) as error:
        make_params({"train.epochs": 2.7, "train.augment.zoom": 3.0})
    lines = str(error.value).splitlines()
    assert len(lines) == 2 and "train.epochs" in lines[0] and "train.augment.zoom" in lines[1]


def test_a_missing_key_is_named():
    tree = make_params().model_dump()
    del tree["train"]["monitor"]
    with pytest.raises(ConfigError, match="train.monitor is missing: add it"):
        parse_params(tree)


def test_unreadable_or_empty_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("")
    with pytest.raises(ConfigError, match="expected a mapping of parameter sections"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_replaced_returns_a_checked_copy():
    params = make_params({"train.epochs": 50, "train.augment.zoom": 0.0})
    changed = params.replaced({"train.epochs": 3, "train.augment.zoom": 0.1})
    assert (changed.train.epochs, changed.train.augment.zoom) == (3, 0.1)
    assert params.train.epochs == 50 and params.train.augment.zoom == 0.0
    with pytest.raises(Exception):
        params.train.epochs = 3  # read-only


def test_numbers_that_dvc_writes_as_strings_still_parse():
    # `dvc exp run -S train.lr_max=3e-3` writes 3e-3, which PyYAML reads as the string "3e-3"
    tree = make_params().model_dump()
    tree["train"]["lr_max"] = yaml.safe_load("3e-3")
    assert parse_params(tree).train.lr_max == 0.003


def test_augment_defaults_are_the_library_defaults():
    assert Augment() == Augment(hflip=True, vflip=False, brightness=0.0, zoom=0.0, contrast=0.0, rotation=0.0)


def test_a_stage_with_a_bad_value_fails_in_one_line_before_any_work(tmp_path):
    tree = make_params().model_dump()
    tree["data"]["image_size"] = 100
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    result = subprocess.run([sys.executable, "-m", "stages.mat_to_numpy"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert result.returncode == 1
    assert result.stderr.strip() == ("mat_to_numpy: error: params.yaml: data.image_size (100) must be divisible by "
                                     "2**model.depth (16): change one of them")
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"train.lr_max": float("inf")}, "train.lr_max = inf: input should be a finite number"),
    ({"train.loss.smooth": float("nan")}, "train.loss.smooth = nan: input should be a finite number"),
    ({"seed": -1}, "seed = -1: input should be greater than or equal to 0"),
    ({"seed": 2**32}, "seed = 4294967296: input should be less than 4294967296"),
    ({"evaluate.threshold_step": 1e-300}, "gives 9.4e\\+299 thresholds to sweep, more than 10000"),
])
def test_values_that_would_fail_later_are_refused_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_params(REPO / "params.yaml").replaced(overrides)


def test_a_key_given_twice_is_refused(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("seed: 42", "seed: 42\nseed: 7", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match="the key 'seed' is given twice"):
        load_params(tmp_path / "params.yaml")
