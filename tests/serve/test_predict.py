"""The predict command: readers, outputs at native resolution, areas, bad inputs, exports."""

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tests.helpers import identity_model, model_folder
from tumorseg.bundle import PREPROCESSING_FILE, Preprocessing
from tumorseg.cli import exit_status
from tumorseg.data.matfile import read_slice
from tumorseg.data.preprocess import preprocess_image
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.confidence import FEATURES, ConfidenceModel
from tumorseg.evaluate.postprocess import PostProcess
from tumorseg.model.probabilities import predict as predict_all
from tumorseg.model.probabilities import predict_probabilities
from tumorseg.model.unet import build_unet
from tumorseg.serve import export
from tumorseg.serve.predict import main, parse_args
from tumorseg.serve.readers import ReadError, find_inputs, read_dicom, read_image, read_scan

SIZE = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The model folder of an untrained tiny U-Net (its input and output shapes are the real ones)."""
    keras.utils.set_random_seed(0)
    return model_folder(tmp_path_factory.mktemp("model"), build_unet(SIZE, depth=2, filters=4))


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder so no models/unet/ is picked up."""
    monkeypatch.chdir(tmp_path)


def predict(argv):
    """The exit status of the predict command run with argv, as from the shell."""
    return exit_status("predict", main, argv)


def scan_image(shape, seed=0):
    """A bright disc on a darker noisy background, float in [0, 1]."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    disc = (rows - shape[0] / 2) ** 2 + (cols - shape[1] / 3) ** 2 < (min(shape) / 4) ** 2
    return np.clip(0.3 + 0.6 * disc + 0.1 * rng.random(shape), 0, 1)


def write_png(path, shape, bits=8, rgb=False):
    image = scan_image(shape)
    if bits == 16:
        Image.fromarray((image * 65535).astype(np.uint16)).save(path)
    elif rgb:
        Image.fromarray((np.stack([image, image * 0.8, image * 0.5], axis=2) * 255).astype(np.uint8)).save(path)
    else:
        Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


def write_dicom(path, shape, spacing=(0.5, 0.8), slope=2.0, intercept=-100.0):
    raw = (scan_image(shape) * 1000 + 100).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [str(spacing[0]), str(spacing[1])]
    ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
    ds.PixelData = raw.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return raw


def write_nifti(path, shape=(36, 28, 3), zooms=(0.9, 1.1, 3.0)):
    volume = np.stack([scan_image(shape[:2], seed) * 800 for seed in range(shape[2])], axis=2).astype(np.int16)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return affine


def read_rows(out_dir):
    with open(out_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def png_shape(path):
    return np.asarray(Image.open(path)).shape[:2]


def test_png_masks_keep_native_resolution(tmp_path, model_dir):
    inputs = [
        write_png(tmp_path / "gray8.png", (50, 70)),
        write_png(tmp_path / "gray16.png", (60, 64), bits=16),
        write_png(tmp_path / "colour.jpg", (40, 30), rgb=True),
    ]
    out = tmp_path / "out"
    assert predict([*map(str, inputs), "--out", str(out), "--model", str(model_dir)]) == 0
    rows = read_rows(out)
    assert [row["input"] for row in rows] == [str(p) for p in inputs]
    for row, shape in zip(rows, [(50, 70), (60, 64), (40, 30)]):
        assert png_shape(out / row["mask_png"]) == shape
        assert np.asarray(Image.open(out / row["overlay_png"])).shape == (*shape, 3)
        assert (int(row["height"]), int(row["width"])) == shape
        assert row["tumor_area_mm2"] == ""  # PNG records no pixel spacing
        assert float(row["threshold"]) == 0.5
        mask = np.asarray(Image.open(out / row["mask_png"])) > 0
        assert int(row["tumor_pixels"]) == mask.sum()


def test_image_reader_keeps_16_bits_and_converts_colour(tmp_path):
    sixteen = read_image(write_png(tmp_path / "a.png", (20, 24), bits=16)).slices[0]
    assert sixteen.dtype == np.uint16 and sixteen.max() > 255
    colour = read_image(write_png(tmp_path / "b.png", (20, 24), rgb=True)).slices[0]
    assert colour.shape == (20, 24)


def test_dicom_rescale_spacing_and_area(tmp_path, model_dir):
    raw = write_dicom(tmp_path / "slice.dcm", (48, 40), spacing=(0.5, 0.8), slope=2.0, intercept=-100.0)
    scan = read_dicom(tmp_path / "slice.dcm")
    np.testing.assert_allclose(scan.slices[0], raw * 2.0 - 100.0)
    assert scan.spacing == (0.5, 0.8)

    out = tmp_path / "out"
    argv = [str(tmp_path / "slice.dcm"), "--out", str(out), "--model", str(model_dir), "--threshold", "0"]
    assert predict(argv) == 0
    (row,) = read_rows(out)
    assert int(row["tumor_pixels"]) == 48 * 40  # threshold 0: every pixel is tumour
    assert float(row["tumor_area_mm2"]) == pytest.approx(48 * 40 * 0.5 * 0.8)
    assert png_shape(out / row["mask_png"]) == (48, 40)


@pytest.mark.parametrize("spacing", [(0.0, -1.0), (1e308, 1.0), (0.5, 500.0)])
def test_a_dicom_spacing_that_is_no_size_is_refused(tmp_path, spacing):
    write_dicom(tmp_path / "slice.dcm", (8, 8), spacing=spacing)
    with pytest.raises(ReadError, match=r"pixel spacing .* is not a pair of positive sizes of at most 100 mm"):
        read_dicom(tmp_path / "slice.dcm")


def test_jpeg_exif_orientation_is_applied(tmp_path):
    """A camera JPEG stored sideways with orientation 6 (rotate 90 clockwise to view): the slice and so the
    mask are read as a viewer shows them."""
    stored = np.zeros((20, 30), np.uint8)
    stored[:5, :] = 255  # a bright band along the stored top edge
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    (slice_,) = read_image(tmp_path / "photo.jpg").slices
    assert slice_.shape == (30, 20)  # rotated: 30 rows, 20 columns
    assert slice_[:, -5:].mean() > 200 and slice_[:, :10].mean() < 30  # the band is now along the right edge


def test_nifti_slices_area_and_mask_volume(tmp_path, model_dir):
    affine = write_nifti(tmp_path / "volume.nii.gz", shape=(36, 28, 3), zooms=(0.9, 1.1, 3.0))
    out = tmp_path / "out"
    argv = [str(tmp_path / "volume.nii.gz"), "--out", str(out), "--model", str(model_dir), "--threshold", "0"]
    assert predict(argv) == 0
    rows = read_rows(out)
    assert [int(row["slice"]) for row in rows] == [0, 1, 2]
    for row in rows:
        assert int(row["tumor_pixels"]) == 36 * 28
        assert float(row["tumor_area_mm2"]) == pytest.approx(36 * 28 * 0.9 * 1.1, rel=1e-5)
        assert sorted(png_shape(out / row["mask_png"])) == [28, 36]
    volume = nib.load(out / "volume_mask.nii.gz")
    assert volume.shape == (36, 28, 3)
    np.testing.assert_allclose(volume.affine, affine)
    assert np.asarray(volume.dataobj).min() == 1


def test_nifti_mask_volume_matches_slice_masks(tmp_path, model_dir):
    write_nifti(tmp_path / "volume.nii", shape=(36, 28, 3))
    out = tmp_path / "out"
    argv = [str(tmp_path / "volume.nii"), "--out", str(out), "--model", str(model_dir), "--axis", "0"]
    assert predict(argv) == 0
    rows = read_rows(out)
    assert len(rows) == 36  # one slice per index along voxel axis 0
    volume = np.asarray(nib.load(out / "volume_mask.nii.gz").dataobj)
    for row in rows:
        slice_mask = np.asarray(Image.open(out / row["mask_png"])) > 0
        np.testing.assert_array_equal(np.rot90(slice_mask, -1), volume[int(row["slice"])] > 0)


def test_real_figshare_slices(tmp_path, model_dir, real_sample):
    files = sorted((real_sample / "mat").glob("*.mat"))[:2]
    out = tmp_path / "out"
    assert predict([*map(str, files), "--out", str(out), "--model", str(model_dir)]) == 0
    rows = read_rows(out)
    assert len(files) == len(rows) == 2
    for row, path in zip(rows, files):
        assert png_shape(out / row["mask_png"]) == read_slice(path).image.shape


def test_mixed_folder_with_a_corrupt_file(tmp_path, model_dir, capsys):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    write_png(folder / "sub" / "a.png", (30, 34))
    write_dicom(folder / "IM0001", (32, 32))  # DICOM without a suffix, found by its marker
    write_nifti(folder / "b.nii.gz", shape=(20, 24, 2))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not a scan")
    out = tmp_path / "out"

    assert predict([str(folder), "--out", str(out), "--model", str(model_dir)]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert {row["input"] for row in read_rows(out)} == {
        str(folder / "sub" / "a.png"), str(folder / "IM0001"), str(folder / "b.nii.gz")
    }
    for name in ("sub/a_mask.png", "IM0001_mask.png", "b_slice001_mask.png", "b_mask.nii.gz"):
        assert (out / name).is_file()
    with open(out / "failures.csv", newline="") as f:
        (failure,) = list(csv.DictReader(f))
    assert failure["input"] == str(folder / "broken.png") and failure["reason"]


def test_every_output_name_is_unique_and_an_unnamable_input_is_skipped(tmp_path, model_dir, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    write_nifti(folder / "vol.nii.gz", shape=(20, 24, 2))  # its slice 1 would be vol_slice001
    write_png(folder / "vol_slice001.png", (30, 30))
    odd = tmp_path / "..png"  # its name minus .png is "."
    odd.write_bytes((folder / "vol_slice001.png").read_bytes())
    out = tmp_path / "out"
    assert predict([str(folder), str(odd), "--out", str(out), "--model", str(model_dir)]) == 1
    assert "..png: its name gives no output name" in capsys.readouterr().err
    rows = read_rows(out)
    assert len(rows) == 3
    masks = [row["mask_png"] for row in rows]
    assert len(set(masks)) == 3 and all((out / name).is_file() for name in masks)
    by_input = {(Path(row["input"]).name, row["slice"]): row["mask_png"] for row in rows}
    assert by_input[("vol.nii.gz", "1")] == "vol_slice001_mask.png"
    assert by_input[("vol_slice001.png", "0")] == "vol_slice001-2_mask.png"


def test_every_frame_of_a_multipage_tiff_is_a_slice(tmp_path, model_dir):
    frames = [Image.fromarray((scan_image((30, 26), seed) * 255).astype(np.uint8)) for seed in range(3)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    assert predict([str(tmp_path / "stack.tif"), "--out", str(out), "--model", str(model_dir)]) == 0
    rows = read_rows(out)
    assert [(row["slice"], row["mask_png"]) for row in rows] == [
        (str(k), f"stack_slice{k:03d}_mask.png") for k in range(3)
    ]
    assert all(png_shape(out / row["mask_png"]) == (30, 26) for row in rows)
    assert len({row["max_probability_in_image"] for row in rows}) > 1  # three different images


def test_an_overwrite_rerun_reports_only_its_own_failures(tmp_path, model_dir):
    folder = tmp_path / "scans"
    folder.mkdir()
    write_png(folder / "a.png", (30, 30))
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert predict([str(folder), "--out", str(out), "--model", str(model_dir)]) == 1
    assert (out / "failures.csv").is_file()
    (folder / "broken.png").unlink()
    assert predict([str(folder), "--out", str(out), "--model", str(model_dir), "--overwrite"]) == 0
    assert not (out / "failures.csv").exists()
    assert [row["mask_png"] for row in read_rows(out)] == ["a_mask.png"]


def test_an_overwrite_rerun_replaces_links_in_the_output_folder_not_what_they_point_to(tmp_path, model_dir):
    write_png(tmp_path / "a.png", (30, 30))
    victim, out = tmp_path / "victim", tmp_path / "out"
    victim.mkdir()
    out.mkdir()
    for name in ("notes.txt", "table.txt", "picture.txt"):
        (victim / name).write_text(f"keep {name}")
    (out / "a_mask.png").symlink_to("../victim/notes.txt")
    (out / "summary.csv").symlink_to(victim / "table.txt")
    (out / "a_overlay.png").symlink_to(victim / "picture.txt")
    assert predict(["a.png", "--out", str(out), "--model", str(model_dir), "--overwrite"]) == 0
    assert {path.name: path.read_text() for path in victim.iterdir()} == {
        "notes.txt": "keep notes.txt", "table.txt": "keep table.txt", "picture.txt": "keep picture.txt"}
    for name in ("a_mask.png", "a_overlay.png", "summary.csv"):
        assert not (out / name).is_symlink() and (out / name).is_file()
    assert png_shape(out / "a_mask.png") == (30, 30) and read_rows(out)[0]["mask_png"] == "a_mask.png"


def test_a_file_name_that_a_spreadsheet_would_run_is_escaped_in_the_tables(tmp_path, model_dir):
    write_png(tmp_path / "=HYPERLINK(1).png", (30, 30))
    (tmp_path / "@broken.png").write_bytes(b"not a png")
    assert predict(["=HYPERLINK(1).png", "@broken.png", "--out", "out", "--model", str(model_dir)]) == 1
    row = read_rows(tmp_path / "out")[0]
    assert row["input"] == "'=HYPERLINK(1).png" and row["mask_png"] == "'=HYPERLINK(1)_mask.png"
    assert (tmp_path / "out" / "=HYPERLINK(1)_mask.png").is_file()  # the file keeps its name
    failures = (tmp_path / "out" / "failures.csv").read_text().splitlines()
    assert failures[1].startswith("'@broken.png,")


def test_unsupported_file_named_explicitly_fails(tmp_path, model_dir, capsys):
    (tmp_path / "notes.txt").write_text("not a scan")
    good = write_png(tmp_path / "good.png", (30, 30))
    out = tmp_path / "out"
    assert predict([str(tmp_path / "notes.txt"), str(good), "--out", str(out), "--model", str(model_dir)]) == 1
    assert "unsupported file type" in capsys.readouterr().err
    assert (out / "good_mask.png").is_file()


def test_nothing_overwritten_without_flag(tmp_path, model_dir, capsys):
    image = write_png(tmp_path / "a.png", (30, 30))
    out = tmp_path / "out"
    argv = [str(image), "--out", str(out), "--model", str(model_dir)]
    assert predict(argv + ["--threshold", "0"]) == 0
    before = (out / "a_mask.png").read_bytes()

    assert predict(argv + ["--threshold", "1"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "a_mask.png").read_bytes() == before

    assert predict(argv + ["--threshold", "1", "--overwrite"]) == 0
    assert (out / "a_mask.png").read_bytes() != before


def test_missing_or_foreign_model_fails_before_any_work(tmp_path, capsys):
    image = write_png(tmp_path / "a.png", (30, 30))
    out = tmp_path / "out"
    assert predict([str(image), "--out", str(out), "--model", str(tmp_path / "absent")]) == 1
    assert "no such model folder" in capsys.readouterr().err

    inputs = keras.Input((SIZE, SIZE, 3))
    classifier = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))
    foreign = model_folder(tmp_path / "classifier", classifier)
    assert predict([str(image), "--out", str(out), "--model", str(foreign)]) == 1
    assert "segmentation model" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("kind, message", [
    ("garbage", "not a Keras model (a .keras file is a zip archive"),
    ("truncated", "not a Keras model (a .keras file is a zip archive"),
    ("fifo", "not a regular file (a folder, FIFO or device)"),
    ("folder", "not a regular file (a folder, FIFO or device)"),
])
def test_a_model_file_that_is_no_model_is_named_for_what_it_is(tmp_path, model_dir, capsys, kind, message):
    folder = model_folder(tmp_path / "bad", model_dir / "model.keras")
    bad = folder / "model.keras"
    bad.unlink()
    if kind == "garbage":
        bad.write_bytes(np.random.default_rng(0).bytes(1000))
    elif kind == "truncated":
        bad.write_bytes((model_dir / "model.keras").read_bytes()[:2000])
    elif kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.mkdir()
    image = write_png(tmp_path / "a.png", (30, 30))
    assert predict([str(image), "--out", "out", "--model", str(folder)]) == 1
    err = capsys.readouterr().err
    assert message in err and "not found" not in err


def test_a_fifo_or_device_given_as_input_is_named_for_what_it_is(tmp_path, model_dir, capsys):
    os.mkfifo(tmp_path / "scan.png")
    image = write_png(tmp_path / "a.png", (30, 30))
    assert predict([str(image), "scan.png", "/dev/zero", "--out", "out", "--model", str(model_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("not a regular file (a FIFO, device or socket)") == 2 and "not found" not in err
    assert len(read_rows(tmp_path / "out")) == 1  # the good input is still segmented


def test_threshold_from_the_model_folder_and_override(tmp_path, model_dir):
    folder = model_folder(tmp_path / "model", model_dir / "model.keras", choices=Choices(0.0))
    image = write_png(tmp_path / "a.png", (30, 30))
    assert predict([str(image), "--out", "out1", "--model", str(folder)]) == 0
    (row,) = read_rows(tmp_path / "out1")
    assert float(row["threshold"]) == 0.0 and int(row["tumor_pixels"]) == 900

    assert predict([str(image), "--out", "out2", "--model", str(folder), "--threshold", "1"]) == 0
    (row,) = read_rows(tmp_path / "out2")
    assert float(row["threshold"]) == 1.0 and int(row["tumor_pixels"]) == 0


def test_postprocessing_and_tta_from_the_model_folder_and_override(tmp_path):
    identity = identity_model(tmp_path / "identity.keras", SIZE)  # probability = normalised image
    model = model_folder(tmp_path / "model", identity, choices=Choices(0.5, PostProcess("largest"), "hflip"))
    image = np.zeros((SIZE, SIZE), np.uint8)
    image[2:12, 2:12] = 255  # a 100-pixel blob
    image[20:23, 20:23] = 255  # and a 9-pixel one
    Image.fromarray(image).save(tmp_path / "two.png")
    assert predict(["two.png", "--out", "out1", "--model", str(model)]) == 0
    (row,) = read_rows(tmp_path / "out1")
    assert (row["postprocess"], row["tta"], int(row["tumor_pixels"])) == ("largest", "hflip", 100)
    assert predict(["two.png", "--out", "out2", "--model", str(model), "--postprocess", "none", "--tta", "none"]) == 0
    (row,) = read_rows(tmp_path / "out2")
    assert (row["postprocess"], row["tta"], int(row["tumor_pixels"])) == ("none", "none", 109)
    chosen = json.loads((model / "choices.json").read_text())
    (model / "choices.json").write_text(json.dumps({**chosen, "tta": "rotate"}))
    assert predict(["two.png", "--out", "out3", "--model", str(model)]) == 1
    (model / "choices.json").write_text("{not json")
    assert predict(["two.png", "--out", "out4", "--model", str(model), "--threshold", "0.5"]) == 1


def test_exports_match_keras(tmp_path, model_dir):
    exported = tmp_path / "exported"
    assert predict(["--export", str(exported), "--float16", "--model", str(model_dir)]) == 0
    files = [write_png(tmp_path / "a.png", (50, 70)), write_png(tmp_path / "b.png", (64, 48), bits=16)]
    write_dicom(tmp_path / "c.dcm", (40, 40))
    files.append(tmp_path / "c.dcm")
    images = np.stack([preprocess_image(read_scan(path).slices[0], SIZE) for path in files])
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    reference = predict_probabilities(model, images, np.arange(len(images)))

    saved = export.run_saved_model(exported / export.SAVED_MODEL_DIR, images)
    np.testing.assert_allclose(saved, reference, atol=1e-4)
    lite = export.run_tflite(exported / export.TFLITE_FLOAT32, images)
    np.testing.assert_allclose(lite, reference, atol=1e-4)
    half = export.run_tflite(exported / export.TFLITE_FLOAT16, images)
    assert ((half >= 0.5) == (reference >= 0.5)).mean() >= 0.995
    onnx = export.run_onnx(exported / export.ONNX, images)
    np.testing.assert_allclose(onnx, reference, atol=1e-4)
    assert Preprocessing.load(exported / PREPROCESSING_FILE).image_size == SIZE
    assert "files" in json.loads((exported / export.METADATA).read_text())


def test_predict_runs_on_the_onnx_export_without_tensorflow(tmp_path, model_dir):
    """The ONNX file gives the masks the Keras model gives, in a process where TensorFlow and Keras cannot
    be imported."""
    assert predict(["--export", "exported", "--model", str(model_dir)]) == 0
    files = [str(write_png(tmp_path / "a.png", (50, 70))), str(write_png(tmp_path / "b.png", (64, 48), bits=16))]
    assert predict([*files, "--out", "keras_out", "--model", str(model_dir), "--tta", "hflip"]) == 0
    script = (
        "import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None\n"
        "from tumorseg.cli import exit_status\n"
        "from tumorseg.serve.predict import main\n"
        f"status = exit_status('predict', main, {files!r} + ['--out', 'onnx_out', '--model', "
        "'exported', '--tta', 'hflip'])\n"
        "assert not [name for name in sys.modules if name.startswith(('tensorflow', 'keras')) and sys.modules[name]]\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("a_mask.png", "b_mask.png"):
        with Image.open(tmp_path / "keras_out" / name) as keras_mask, Image.open(tmp_path / "onnx_out" / name) as onnx_mask:
            assert (np.asarray(keras_mask) == np.asarray(onnx_mask)).mean() >= 0.999
    confidences = [[float(row["confidence"]) for row in read_rows(tmp_path / out)] for out in ("keras_out", "onnx_out")]
    assert confidences[0] == pytest.approx(confidences[1], abs=1e-4)


def test_export_folder_not_replaced_without_overwrite(tmp_path, model_dir, capsys):
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "keep.txt").write_text("mine")
    assert predict(["--export", str(exported), "--model", str(model_dir)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (exported / "keep.txt").read_text() == "mine"


def test_an_overwritten_export_replaces_only_its_own_files(tmp_path, model_dir):
    exported = tmp_path / "exported"
    assert predict(["--export", str(exported), "--model", str(model_dir)]) == 0
    (exported / "keep.txt").write_text("mine")
    (exported / export.METADATA).write_text("stale")
    assert predict(["--export", str(exported), "--model", str(model_dir), "--overwrite"]) == 0
    assert (exported / "keep.txt").read_text() == "mine"
    assert "files" in json.loads((exported / export.METADATA).read_text())
    assert (exported / export.SAVED_MODEL_DIR).is_dir() and not list(tmp_path.glob(".exported.*"))


@pytest.mark.parametrize("inside", [".", "sub"])
def test_an_export_folder_holding_the_model_is_refused(tmp_path, model_dir, capsys, inside):
    folder = tmp_path / "models"
    model_folder(folder / inside, model_dir / "model.keras")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    assert predict(["--export", str(folder), "--model", str(folder / inside), "--overwrite"]) == 1
    assert "holds the model" in capsys.readouterr().err
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert (folder / inside / "model.keras").read_bytes() == (model_dir / "model.keras").read_bytes()


def test_output_stems_are_unique_and_keep_uid_names(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_png(tmp_path / folder / "x.png", (8, 8))
    write_dicom(tmp_path / "a" / "1.2.840.5", (8, 8))
    found, problems, ignored = find_inputs([tmp_path / "a", tmp_path / "b", tmp_path / "absent"], out_dir=None)
    assert [stem for _, stem in found] == ["1.2.840.5", "x", "x-2"]
    assert problems == [(tmp_path / "absent", "not found")] and ignored == 0


def test_confidence_and_review_flag_per_slice(tmp_path, model_dir, capsys):
    files = [write_png(tmp_path / "a.png", (50, 70)), write_png(tmp_path / "b.png", (64, 48), bits=16)]
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    images = np.stack([preprocess_image(read_scan(path).slices[0], SIZE) for path in files])
    predicted = predict_all(model, images, np.arange(2), tta="hflip")
    # a score model that flags exactly the less confident of the two slices
    scorer = ConfidenceModel({"mean_inside": 3.0, "uncertainty": -1.0, "agreement": 2.0}, -1.0, fitted=True)
    _, expected, _ = Choices(0.5, PostProcess(), "hflip", scorer).score(predicted)
    scorer = replace(scorer, review_threshold=float(expected.min()))
    folder = model_folder(tmp_path / "model", model_dir / "model.keras", choices=Choices(0.5, tta="hflip",
                                                                                           confidence=scorer))
    assert predict([*map(str, files), "--out", "out", "--model", str(folder)]) == 0
    rows = {Path(row["input"]).name: row for row in read_rows(tmp_path / "out")}
    found = [float(rows[path.name]["confidence"]) for path in files]
    assert found == pytest.approx(expected, abs=1e-6)
    assert [rows[path.name]["review"] == "True" for path in files] == list(expected == expected.min())
    assert "1 of 2 slice(s) flagged for review" in capsys.readouterr().out
    # the export is a model folder with the same choices, the score's model among them
    assert predict(["--export", "exported", "--model", str(folder)]) == 0
    assert Choices.load(tmp_path / "exported" / "choices.json") == Choices.load(folder / "choices.json")
    assert all(name in json.loads((tmp_path / "exported" / export.METADATA).read_text())["confidence"]
               for name in FEATURES)


def test_a_small_file_declaring_a_huge_image_is_refused_before_its_pixels_are_read(tmp_path):
    import tracemalloc

    pages = [Image.new("L", (4096, 4096)) for _ in range(10)]  # 168 M values, a few hundred kB as a TIFF
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:], compression="tiff_deflate")
    del pages
    assert (tmp_path / "pages.tif").stat().st_size < 2_000_000
    tracemalloc.start()
    with pytest.raises(ReadError, match=r"pages.tif: declares 10 page\(s\) of up to 4096 x 4096, 167,772,160 pixel"):
        read_scan(tmp_path / "pages.tif")
    assert tracemalloc.get_traced_memory()[1] < 32 * 2**20
    tracemalloc.stop()
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 64))
    header.set_data_dtype(np.uint8)
    (tmp_path / "big.nii").write_bytes(header.binaryblock + b"\0" * 4)  # the header alone: the data is cut
    with pytest.raises(ReadError, match=r"big.nii: declares a volume of \(2048, 2048, 64\)"):
        read_scan(tmp_path / "big.nii")
