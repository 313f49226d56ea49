"""End to end: the DVC pipeline in a temporary copy of the repository, offline, on the synthetic source."""

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.dvc_helpers import (
    DVC_TEST_MARKS,
    STAGES,
    copy_project,
    dvc,
    git,
    keep_reproduced,
    ran_stages,
    reproduced_project,
)
from tumorseg.cli import exit_status
from tumorseg.data.cvind import read_cvind
from tumorseg.data.matfile import read_slice
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.metrics import dice_per_image
from tumorseg.model.load import load_model
from tumorseg.serve.predict import main as predict_main
from tumorseg.serve.readers import read_scan
from tumorseg.serve.segmenter import Segmenter

pytestmark = DVC_TEST_MARKS


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the repository's files (as git sees them) with small parameters, as its own git repo."""
    return copy_project(tmp_path_factory.mktemp("project"))


def test_pipeline_end_to_end(project, tmp_path, tmp_path_factory):
    # dvc repro runs all six stages and produces every declared output
    output = dvc("repro", cwd=project)
    assert ran_stages(output) == set(STAGES)
    for path in ("data/raw/1.mat", "data/numpy/images.npy", "data/split.csv", "models/unet/model.keras",
                 "models/unet/preprocessing.json", "models/unet/choices.json", "metrics/train.json",
                 "metrics/eval.json", "metrics/eval_details.json", "plots/train/metrics/eval/loss.tsv",
                 "plots/eval/threshold_sweep.csv", "plots/eval/per_image.csv", "plots/eval/per_class.csv",
                 "plots/samples/grid.png", "plots/review/index.html"):
        assert (project / path).exists(), path
    assert len(list((project / "plots/samples").glob("*.png"))) == 4  # one per class + the grid
    eval_metrics = json.loads((project / "metrics/eval.json").read_text())
    assert 0 <= eval_metrics["dice"] <= 1 and 0 < Choices.load(project / "models/unet/choices.json").threshold < 1

    # a second dvc repro runs nothing
    output = dvc("repro", cwd=project)
    assert ran_stages(output) == set()
    assert "Data and pipelines are up to date" in dvc("status", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "baseline run", cwd=project)
    keep_reproduced(tmp_path_factory, project)  # the queue and remote tests start from a copy of it

    # the model folder is a DVC model artifact: a version registered (an annotated tag, as `gto register`
    # writes it), dvc artifacts get fetches all of it
    git("tag", "-a", "unet@v0.1.0", "-m", "Registering artifact unet version v0.1.0", cwd=project)
    dvc("artifacts", "get", str(project), "unet", "--rev", "v0.1.0", "-o", str(tmp_path / "fetched"), cwd=tmp_path)
    fetched = {p.name for p in (tmp_path / "fetched").iterdir()} - {".gitignore"}  # DVC's own, beside its outputs
    assert fetched == {"choices.json", "model.keras", "preprocessing.json"}

    # an experiment with another epoch count shows up with its metrics
    output = dvc("exp", "run", "-n", "longer", "-S", "train.epochs=2", cwd=project)
    assert ran_stages(output) == {"train", "evaluate", "render_samples"}
    experiments = json.loads(dvc("exp", "show", "--json", cwd=project))
    found = json.dumps(experiments)
    assert '"longer"' in found and '"dice"' in found and '"iou"' in found
    diff = dvc("metrics", "diff", "--json", cwd=project)
    changed = json.loads(diff)["metrics/train.json"]
    assert changed["epochs"] == {"old": 1, "new": 2, "diff": 1}
    table = dvc("metrics", "diff", "--all", "--md", cwd=project)
    for metric in ("dice", "iou"):
        assert re.search(rf"\|\s*metrics/eval.json\s*\|\s*{metric}\s*\|", table), table

    # dvc plots show writes a page with the training curves and the sample images
    dvc("plots", "show", "-o", str(tmp_path / "plots"), cwd=project)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "Loss per epoch" in page and "Dice per epoch" in page and "Validation IoU by threshold" in page
    assert "grid.png" in page
    assert any(p.name.endswith("grid.png") for p in (tmp_path / "plots" / "static").iterdir())

    # changing only an evaluate parameter re-runs evaluate, not the stages before it
    output = dvc("exp", "run", "-S", "evaluate.bootstrap=40", cwd=project)
    assert "evaluate" in ran_stages(output)
    assert not ran_stages(output) & {"download", "mat_to_numpy", "split", "train"}


def test_official_folds_end_to_end(tmp_path_factory):
    """split.scheme=cvind on the synthetic source (which writes its own cvind.mat): official fold 1 is the
    test set, and the rest of the chain runs on that split."""
    project = reproduced_project(tmp_path_factory, "cvind")
    output = dvc("exp", "run", "-n", "official-fold-1", "-S", "split.scheme=cvind", "-S", "split.fold=0",
                 cwd=project)
    assert {"split", "train", "evaluate", "render_samples"} <= ran_stages(output)
    assert not ran_stages(output) & {"download", "mat_to_numpy"}
    assert "slices moved to their family's official fold: 0" in output
    split = pd.read_csv(project / "data" / "split.csv", dtype={"pid": str})
    folds = read_cvind(project / "data" / "raw" / "cvind.mat")
    assert set(folds[split.loc[split["subset"] == "test", "index"] - 1]) == {1}
    assert 1 not in set(folds[split.loc[split["subset"] != "test", "index"] - 1])
    test_images = json.loads((project / "metrics" / "eval_details.json").read_text())["test_images"]
    assert test_images == (split["subset"] == "test").sum()


def test_the_model_folder_alone_segments_each_slice_as_evaluate_did(tmp_path_factory, tmp_path, monkeypatch):
    """models/unet/ copied on its own to another folder: predict there gives the raw test slices the masks
    (native-resolution Dice), confidence and review flag that evaluate wrote into plots/eval/per_image.csv."""
    project = reproduced_project(tmp_path_factory, "confidence")
    per_image = pd.read_csv(project / "plots" / "eval" / "per_image.csv").set_index("index")
    inputs = [str(project / "data" / "raw" / f"{index}.mat") for index in per_image.index[:6]]
    shutil.copytree(project / "models" / "unet", tmp_path / "elsewhere" / "unet")
    monkeypatch.chdir(tmp_path / "elsewhere")  # no params.yaml, no metrics, no data here
    out = tmp_path / "predicted"
    assert exit_status("predict", predict_main, [*inputs, "--out", str(out), "--model", "unet"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    indices = summary["input"].map(lambda path: int(path.rsplit("/", 1)[1].split(".")[0]))
    expected = per_image.loc[indices]
    assert len(summary) == len(inputs)
    assert summary["confidence"].to_numpy() == pytest.approx(expected["confidence"].to_numpy(), abs=1e-4)
    assert summary["review"].tolist() == expected["review"].tolist()
    for (index, row), name in zip(expected.iterrows(), summary["mask_png"]):
        truth = read_slice(project / "data" / "raw" / f"{index}.mat", with_border=False).mask > 0
        with Image.open(out / name) as png:
            mask = np.asarray(png) > 0
        assert dice_per_image(truth[None], mask[None])[0] == pytest.approx(row["dice_native"], abs=1e-3)


def test_the_offline_pretrained_encoder_end_to_end(tmp_path_factory):
    """model.encoder efficientnet_lite0 with its ImageNet weights from the installed package (no network):
    a decoder-only epoch, a fine-tuning one, then evaluate and render on the model it trained."""
    project = reproduced_project(tmp_path_factory, "lite0")
    output = dvc("exp", "run", "-n", "lite0", "-S", "model.encoder=efficientnet_lite0", "-S", "train.epochs=2",
                 "-S", "train.freeze_encoder_epochs=1", cwd=project)
    assert ran_stages(output) == {"train", "evaluate", "render_samples"}
    model = load_model(project / "models" / "unet" / "model.keras")
    assert model.name == "efficientnet_lite0_unet" and model.get_layer("encoder").get_layer("block5_expand_activation")  # depth 3
    eval_metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert 0 <= eval_metrics["dice"] <= 1
    assert (project / "plots" / "samples" / "grid.png").is_file()
    segmenter = Segmenter.load(project / "models" / "unet")
    raw = project / "data" / "raw" / "1.mat"
    result = segmenter(raw)  # segmented at 64x64, the mask back at the slice's size
    assert result.mask.shape == read_scan(raw).slices[0].shape and result.mask.shape[0] > 64
    assert result.choices == Choices.load(project / "models" / "unet" / "choices.json")
