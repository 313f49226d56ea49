import colorsys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import identity_model, make_params
from tumorseg import LABEL_NAMES
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.render import (
    ALPHA,
    DPI,
    ERROR_COLORS,
    GRID_CELL,
    GRID_MARGIN,
    SAMPLE_FIGSIZE,
    Sample,
    error_view,
    grid_figure,
    render_samples,
    select_samples,
)

SIZE = 32
# test slices per class: pituitary has none, glioma fewer than per_class
TEST_SLICES = {1: 4, 2: 1, 3: 0}
PARAMS = make_params({"seed": 7, "render.per_class": 2})


def brain_slice(size, centre, radius, shift):
    """Grey ellipse 'brain', true tumour disk at centre, bright disk shifted by `shift`."""
    rows, columns = np.mgrid[:size, :size] / size
    brain = ((rows - 0.5) / 0.42) ** 2 + ((columns - 0.5) / 0.36) ** 2 <= 1
    truth = (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2
    bright = (rows - centre[0] - shift) ** 2 + (columns - centre[1] - shift) ** 2 <= radius**2
    image = 0.3 * brain + 0.02 * np.sin(40 * rows) * brain
    image[bright] = 0.9
    return image.astype(np.float32), truth.astype(np.uint8)


def make_dataset(root, size=SIZE, test_slices=TEST_SLICES):
    """data/numpy and data/split.csv under root (an identity model predicts the image)."""
    numpy_dir = root / "numpy"
    numpy_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, masks, labels, pids, ids, rows = [], [], [], [], [], []
    slice_id = 500
    for label, count in test_slices.items():
        for k in range(count + 1):  # one extra train slice per class
            slice_id += 1
            subset = "train" if k == count else "test"
            centre = rng.uniform(0.35, 0.65, size=2)
            image, mask = brain_slice(size, centre, rng.uniform(0.08, 0.15), rng.uniform(0.0, 0.06))
            images.append(image)
            masks.append(mask)
            labels.append(label)
            pids.append(f"p{label}")
            ids.append(slice_id)
            rows.append({"index": slice_id, "pid": f"p{label}", "label": label, "subset": subset})
    np.save(numpy_dir / "images.npy", np.array(images, np.float32))
    np.save(numpy_dir / "masks.npy", np.array(masks, np.uint8))
    np.save(numpy_dir / "labels.npy", np.array(labels, np.uint8))
    np.save(numpy_dir / "pids.npy", np.array(pids, dtype=str))
    np.save(numpy_dir / "ids.npy", np.array(ids, np.int32))
    split_csv = root / "split.csv"
    pd.DataFrame(rows).to_csv(split_csv, index=False)
    return numpy_dir, split_csv


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    numpy_dir, split_csv = make_dataset(root)
    model_path = identity_model(root / "model.keras", SIZE)
    out_dir = root / "samples"
    written = render_samples(model_path, numpy_dir, split_csv, PARAMS, out_dir, Choices(threshold=0.5))
    return out_dir, written


def test_one_png_per_sample_plus_grid(rendered):
    out_dir, written = rendered
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(written)
    assert "grid.png" in names
    per_sample = [n for n in names if n != "grid.png"]
    assert len(per_sample) == 3  # 2 meningioma (of 4), 1 glioma (of 1), 0 pituitary
    assert sum(n.startswith("meningioma_") for n in per_sample) == 2
    assert sum(n.startswith("glioma_") for n in per_sample) == 1
    assert not any(n.startswith("pituitary_") for n in per_sample)
    assert not list(out_dir.parent.glob(".samples*"))  # no temporary folder left


def test_pngs_are_valid_and_sized(rendered):
    out_dir, written = rendered
    sample_size = (round(SAMPLE_FIGSIZE[0] * DPI), round(SAMPLE_FIGSIZE[1] * DPI))
    for name in written:
        with Image.open(out_dir / name) as image:
            image.verify()
        with Image.open(out_dir / name) as image:
            assert image.format == "PNG"
            if name == "grid.png":
                rows = 2
                assert image.size == (round(3 * GRID_CELL * DPI), round((rows * GRID_CELL + GRID_MARGIN) * DPI))
            else:
                assert image.size == sample_size


def test_rendering_is_reproducible(rendered, tmp_path):
    out_dir, written = rendered
    numpy_dir, split_csv = make_dataset(tmp_path)
    again = render_samples(identity_model(tmp_path / "model.keras", SIZE), numpy_dir, split_csv, PARAMS,
                           tmp_path / "samples")
    assert sorted(again) == sorted(written)


def test_select_samples_is_seeded_sorted_and_capped():
    ids = np.arange(100, 120)
    labels = np.array([1] * 10 + [2] * 8 + [3] * 2)
    first = select_samples(ids, labels, per_class=3, seed=5)
    assert first == select_samples(ids[::-1], labels[::-1], per_class=3, seed=5)
    assert [len(first[label]) for label in (1, 2, 3)] == [3, 3, 2]
    assert all(chosen == sorted(chosen) for chosen in first.values())
    assert set(first[1]) <= set(range(100, 110)) and set(first[3]) == {118, 119}
    assert select_samples(ids, labels, per_class=3, seed=6) != first
    # one class's choice does not depend on the others
    only_glioma = select_samples(ids[labels == 2], labels[labels == 2], per_class=3, seed=5)
    assert only_glioma[2] == first[2] and only_glioma[1] == []


def test_error_view_colours_each_outcome_as_the_readme_says():
    # README: green = true positive, orange = false positive, blue = false negative
    image = np.zeros((1, 4))
    truth = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    rgb = error_view(image, truth, pred)
    tp, fn, fp, tn = rgb[0]
    np.testing.assert_allclose(tp, ALPHA * np.array(ERROR_COLORS["true positive"]))
    np.testing.assert_allclose(fp, ALPHA * np.array(ERROR_COLORS["false positive"]))
    np.testing.assert_allclose(fn, ALPHA * np.array(ERROR_COLORS["false negative"]))
    hue = {name: colorsys.rgb_to_hsv(*colour)[0] * 360 for name, colour in ERROR_COLORS.items()}
    assert 120 <= hue["true positive"] <= 180  # green (bluish)
    assert 15 <= hue["false positive"] <= 45  # orange (vermillion)
    assert 190 <= hue["false negative"] <= 240  # blue (sky)
    np.testing.assert_array_equal(tn, [0, 0, 0])


def _sample(slice_id, label):
    image, truth = brain_slice(SIZE, (0.5, 0.5), 0.1, 0.03)
    return Sample(slice_id, label, image, truth.astype(bool), image > 0.5, 0.8)


def test_grid_has_one_column_per_class_and_header():
    samples = {1: [_sample(1, 1), _sample(2, 1), _sample(3, 1)], 2: [_sample(4, 2)], 3: []}
    fig = grid_figure(samples, threshold=0.45)
    specs = [ax.get_subplotspec() for ax in fig.axes]
    gridspec = specs[0].get_gridspec()
    assert (gridspec.nrows, gridspec.ncols) == (3, len(LABEL_NAMES))
    assert {spec.colspan.start for spec in specs} == {0, 1, 2}
    texts = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert [name for name in LABEL_NAMES.values() if name in texts] == list(LABEL_NAMES.values())
    assert "no test slices" in texts
    images_per_column = {c: sum(bool(ax.images) for ax, s in zip(fig.axes, specs) if s.colspan.start == c)
                         for c in range(3)}
    assert images_per_column == {0: 3, 1: 1, 2: 0}
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles[0] == "id 1  Dice 0.800"
