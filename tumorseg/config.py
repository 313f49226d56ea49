"""params.yaml as typed settings: one model per section, checked once, before a stage does any work.

Types, ranges and the rules between keys live here and nowhere else. params.yaml
holds every value (DVC tracks it); a key missing from it, an unknown key (with a
"did you mean"), a value of the wrong type or out of range raises ConfigError
naming the key and the fix. Stages load the whole file, so a bad value fails the
first stage that runs, whichever section it is in.

    params = load_params()          # a Params, read-only
    params.train.epochs             # 50
    params.replaced({"train.epochs": 3})
"""

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from tumorseg import LABEL_NAMES
from tumorseg.errors import ProjectError

ENCODER_NAMES = ("none", "vgg16", "resnet50", "efficientnetb0", "efficientnet_lite0")
MONITOR_MODES = {"val_dice": "max", "val_loss": "min"}  # train.monitor -> better when higher / lower

MAX_THRESHOLDS = 10_000  # thresholds of evaluate's validation sweep (0.01 steps over 0.01..0.95: 95)
SEED_LIMIT = 2**32  # seeds are 0 .. 2**32 - 1 (numpy's and TensorFlow's range)
Count = StrictInt  # a whole number in the YAML (2.7 or true is refused, not rounded or counted as 1)


class ConfigError(ProjectError, ValueError):
    """params.yaml (or a value given with -S) is not usable; the message names the key and the fix."""


class Section(BaseModel):
    # allow_inf_nan: inf, Infinity, 1e400 or nan in any float is refused (an infinite lr_max trains NaN)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Synthetic(Section):
    patients: Count = Field(ge=3)
    slices_per_patient: Count = Field(ge=1)
    image_size: Count = Field(ge=32)
    seed: Count = Field(ge=0, lt=SEED_LIMIT)


class Data(Section):
    source: str = Field(min_length=1)
    figshare_url: str
    image_size: Count = Field(ge=8)
    normalize_percentile: float = Field(gt=0, le=100)
    synthetic: Synthetic

    @model_validator(mode="after")
    def _https(self):
        if not self.figshare_url.startswith("https://"):
            raise ValueError(f"data.figshare_url must start with https:// (got {self.figshare_url!r})")
        return self


class Split(Section):
    scheme: Literal["random", "cvind"]
    val: float = Field(gt=0, lt=1)
    test: float = Field(ge=0, lt=1)
    folds: Count = Field(ge=2)
    fold: Optional[Count] = Field(ge=0)
    val_fold: Optional[Count] = Field(default=None, ge=0, le=4)  # absent from params.yaml before it existed

    @model_validator(mode="after")
    def _fractions(self):
        if self.scheme == "cvind":
            if self.fold is None or self.fold > 4:
                raise ValueError(
                    f"split.scheme cvind tests on official fold split.fold + 1, so split.fold must be 0..4, "
                    f"got {self.fold}: e.g. -S split.fold=0 (official fold 1), or -S split.scheme=random"
                )
            if self.val_fold == self.fold:
                raise ValueError(f"split.val_fold ({self.val_fold}) is the test fold split.fold: choose another "
                                 "official fold for validation, or null")
            return self
        if self.val_fold is not None:
            raise ValueError("split.val_fold takes an official fold: it needs split.scheme cvind; set it to null")
        if self.fold is None and self.val + self.test >= 1:
            raise ValueError(f"split.val + split.test ({self.val} + {self.test}) must be below 1: lower one of them")
        if self.fold is not None and self.fold >= self.folds:
            raise ValueError(f"split.fold ({self.fold}) must be below split.folds ({self.folds}), or null")
        return self


class Model(Section):
    depth: Count = Field(ge=1, le=6)
    filters: Count = Field(ge=1)
    batchnorm_momentum: float = Field(ge=0, lt=1)
    dropout: float = Field(ge=0, lt=1)
    hypercolumns: StrictBool
    deep_supervision: StrictBool
    separable: StrictBool
    full_resolution_skip: StrictBool
    encoder: Literal[ENCODER_NAMES]
    encoder_weights: str = Field(min_length=1)
    classify: StrictBool

    @model_validator(mode="after")
    def _skip_for_an_encoder(self):
        if self.full_resolution_skip and self.encoder == "none":
            raise ValueError("model.full_resolution_skip is for a model.encoder without a full-resolution map; "
                             "the reference U-Net (model.encoder none) has one: set it false or choose an encoder")
        return self


class Loss(Section):
    bce_weight: float = Field(ge=0)
    dice_weight: float = Field(ge=0)
    smooth: float = Field(gt=0)
    lovasz_weight: float = Field(ge=0)
    lovasz_from_epoch: Count = Field(ge=0)
    class_weight: float = Field(ge=0)

    @model_validator(mode="after")
    def _some_term(self):
        if self.bce_weight == 0 and self.dice_weight == 0:
            raise ValueError("train.loss.bce_weight and train.loss.dice_weight are both 0: set at least one")
        return self


class Augment(Section):
    """Training augmentation; the defaults are what the library functions use when given none."""

    hflip: StrictBool = True
    vflip: StrictBool = False
    brightness: float = Field(0.0, ge=0, le=1)
    zoom: float = Field(0.0, ge=0, lt=1)  # scale drawn from [1 - zoom, 1 + zoom]
    contrast: float = Field(0.0, ge=0, lt=1)
    rotation: float = Field(0.0, ge=0, le=180)  # degrees either way


class Oversample(Section):
    meningioma: Count = Field(ge=1)
    glioma: Count = Field(ge=1)
    pituitary: Count = Field(ge=1)

    def times(self, label: int) -> int:
        """How many times a slice of class `label` (1, 2, 3) appears per epoch."""
        return getattr(self, LABEL_NAMES[int(label)])


class Progressive(Section):
    """Progressive resizing: the first `epochs` epochs on slices shrunk to `size` px (0 and 0: off)."""

    size: Count = Field(ge=0)
    epochs: Count = Field(ge=0)


class Crop(Section):
    """Training on random square crops of the slices (size 0: off); validation and evaluation see whole
    slices. `tumour` is the share of crops placed to contain a random tumour pixel, the others anywhere."""

    size: Count = Field(ge=0)
    tumour: float = Field(ge=0, le=1)


class Train(Section):
    epochs: Count = Field(ge=1)
    batch_size: Count = Field(ge=1)
    lr_max: float = Field(gt=0)
    lr_min: float = Field(gt=0)
    lr_schedule: Literal["cosine", "exponential", "plateau"]
    plateau_patience: Count = Field(ge=1)
    plateau_factor: float = Field(gt=0, lt=1)
    monitor: Literal[tuple(MONITOR_MODES)]
    early_stopping_patience: Count = Field(ge=0)
    freeze_encoder_epochs: Count = Field(ge=0)
    finetune_lr_factor: float = Field(gt=0)
    encoder_lr_factor: float = Field(gt=0, le=1)
    loss: Loss
    augment: Augment
    oversample: Oversample
    progressive: Progressive
    crop: Crop
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"]
    strategy: Literal["default", "mirrored", "multiworker"]
    init_from: str | None = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self):
        if self.lr_min > self.lr_max:
            raise ValueError(f"train.lr_min ({self.lr_min}) must be at most train.lr_max ({self.lr_max})")
        if self.freeze_encoder_epochs > self.epochs:
            raise ValueError(f"train.freeze_encoder_epochs ({self.freeze_encoder_epochs}) must be at most "
                             f"train.epochs ({self.epochs})")
        if self.loss.lovasz_weight > 0 and self.loss.lovasz_from_epoch >= self.epochs:
            raise ValueError(f"train.loss.lovasz_from_epoch ({self.loss.lovasz_from_epoch}) must be below "
                             f"train.epochs ({self.epochs}), or the Lovasz term never switches on")
        if (self.progressive.size == 0) != (self.progressive.epochs == 0):
            raise ValueError(f"train.progressive.size ({self.progressive.size}) and train.progressive.epochs "
                             f"({self.progressive.epochs}) are both 0 (off) or both set: set the other one")
        if self.progressive.epochs >= self.epochs:
            raise ValueError(f"train.progressive.epochs ({self.progressive.epochs}) must be below train.epochs "
                             f"({self.epochs}): the last epochs train at data.image_size")
        return self

    @property
    def first_compared_epoch(self) -> int:
        """The kept epoch is chosen from this epoch on: validation before the end of a Lovasz warm-up lacks
        that term, and before the end of the progressive epochs it is measured on smaller slices."""
        warm_up = self.loss.lovasz_from_epoch if self.loss.lovasz_weight else 0
        return max(warm_up, self.progressive.epochs)

    @property
    def monitor_mode(self) -> str:
        """Whether train.monitor is better when higher ("max") or lower ("min")."""
        return MONITOR_MODES[self.monitor]


class Evaluate(Section):
    threshold_min: float = Field(gt=0, lt=1)
    threshold_max: float = Field(gt=0, lt=1)
    threshold_step: float = Field(gt=0, lt=1)  # with at most MAX_THRESHOLDS thresholds in the sweep
    postprocess: Literal["none", "largest", "min_size", "auto"]
    tta: Literal["none", "hflip"]
    bootstrap: Count = Field(ge=1)

    @model_validator(mode="after")
    def _sweep(self):
        if self.threshold_min > self.threshold_max:
            raise ValueError(f"evaluate.threshold_min ({self.threshold_min}) must be at most "
                             f"evaluate.threshold_max ({self.threshold_max})")
        count = (self.threshold_max - self.threshold_min) / self.threshold_step + 1
        if count > MAX_THRESHOLDS:
            raise ValueError(f"evaluate.threshold_step ({self.threshold_step}) gives {count:.3g} thresholds to sweep, "
                             f"more than {MAX_THRESHOLDS}: use a step of at least "
                             f"{(self.threshold_max - self.threshold_min) / (MAX_THRESHOLDS - 1):.2g}")
        return self


class Render(Section):
    per_class: Count = Field(ge=1)


class Params(Section):
    seed: Count = Field(ge=0, lt=SEED_LIMIT)
    data: Data
    split: Split
    model: Model
    train: Train
    evaluate: Evaluate
    render: Render

    @model_validator(mode="after")
    def _fits_the_model(self):
        size, depth = self.data.image_size, self.model.depth
        if size % 2**depth:
            raise ValueError(f"data.image_size ({size}) must be divisible by 2**model.depth ({2**depth}): "
                             "change one of them")
        if self.train.freeze_encoder_epochs and self.model.encoder == "none":
            raise ValueError("train.freeze_encoder_epochs needs a pretrained model.encoder: "
                             "set it to 0 with model.encoder none")
        crop = self.train.crop.size
        if crop:
            if self.model.encoder != "none" or self.train.progressive.size:
                raise ValueError("train.crop needs model.encoder none and no train.progressive (both build the "
                                 "model for one size): set train.crop.size to 0, or turn the others off")
            if crop >= size or crop % 2**depth:
                raise ValueError(f"train.crop.size ({crop}) must be below data.image_size ({size}) and divisible "
                                 f"by 2**model.depth ({2**depth}): e.g. {size // 2}")
        small = self.train.progressive.size
        if small:
            if self.model.encoder != "none":
                raise ValueError("train.progressive needs model.encoder none (the pretrained encoders are built "
                                 "for one size): set train.progressive.size and .epochs to 0")
            if small >= size or size % small or small % 2**depth:
                raise ValueError(f"train.progressive.size ({small}) must be below data.image_size ({size}), divide "
                                 f"it, and be divisible by 2**model.depth ({2**depth}): e.g. {size // 2}")
        return self

    def replaced(self, overrides: dict[str, object]) -> "Params":
        """A copy with {"section.key": value} overrides applied, checked again."""
        tree = self.model_dump()
        for dotted, value in overrides.items():
            *sections, key = dotted.split(".")
            node = tree
            for section in sections:
                if not isinstance(node.get(section), dict):
                    node[section] = {}  # an unknown section: reported by the check below
                node = node[section]
            node[key] = value
        return parse_params(tree)


def _known_keys(loc):
    """The keys allowed beside the unknown key at `loc`."""
    model = Params
    for part in loc[:-1]:
        model = model.model_fields[part].annotation
    return list(model.model_fields)


def _describe(error, source):
    loc = tuple(part for part in error["loc"] if isinstance(part, str))
    key = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _known_keys(loc), n=1)
        hint = f"did you mean {'.'.join(loc[:-1] + (close[0],))}?" if close else "remove it"
        return f"{source}: unknown key {key}: {hint}"
    if kind == "missing":
        return f"{source}: {key} is missing: add it (the repository's params.yaml lists every key)"
    message = error["msg"].removeprefix("Value error, ")
    if not key or kind == "value_error":
        return f"{source}: {message}"
    return f"{source}: {key} = {error['input']!r}: {message[0].lower()}{message[1:]}"


def parse_params(tree: object, source: str = "params.yaml") -> Params:
    """Params from the parsed YAML `tree`; ConfigError listing every problem, one per line."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of parameter sections, found {type(tree).__name__}")
    try:
        return Params.model_validate(tree)
    except ValidationError as error:
        raise ConfigError("\n".join(_describe(item, source) for item in error.errors())) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice: keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """Parsed YAML, a key given twice in one mapping refused (yaml.YAMLError)."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def load_params(path: str | Path = "params.yaml") -> Params:
    """The checked Params of a params file."""
    path = Path(path)
    try:
        tree = load_yaml(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror}); run the stage from the repository root") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error}); fix the file") from None
    return parse_params(tree, str(path))
