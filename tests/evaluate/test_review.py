"""The review page: every test slice worst Dice first, pictures beside it, a class filter and a sort by
confidence that work."""

import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from tests.helpers import identity_model, write_tiny_dataset
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.confidence import ConfidenceModel
from tumorseg.evaluate.postprocess import PostProcess
from tumorseg.evaluate.render import Sample
from tumorseg.evaluate.review import review_page, write_review

SIZE = 32


class Rows(HTMLParser):
    """The table rows (their data-* attributes and cell texts), the images and the filter's options."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.options, self.hidden, self.cell, self.links = [], [], [], [], None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-class" in attrs:
            self.rows.append({"class": attrs["data-class"], "dice": float(attrs["data-dice"]),
                              "confidence": float(attrs["data-confidence"]), "cells": []})
            self.hidden.append("hidden" in attrs)
        elif tag == "td" and self.rows:
            self.cell = ""
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "option":
            self.options.append(attrs["value"])
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1]["cells"].append(self.cell)
            self.cell = None


def parse(text):
    parser = Rows()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def review(tmp_path_factory):
    root = write_tiny_dataset(tmp_path_factory.mktemp("review"), SIZE)
    model = identity_model(root / "model.keras", SIZE)
    count = write_review(model, root / "numpy", root / "split.csv", root / "review", Choices(threshold=0.5))
    return root, count


def test_page_lists_every_test_slice_worst_first_with_its_picture(review):
    root, count = review
    split = pd.read_csv(root / "split.csv")
    test = split[split["subset"] == "test"]
    page = parse((root / "review" / "index.html").read_text())
    assert count == len(test) == len(page.rows)
    dice = [row["dice"] for row in page.rows]
    assert dice == sorted(dice)
    assert sorted(int(row["cells"][1]) for row in page.rows) == sorted(test["index"])
    for src in page.images:
        assert (root / "review" / src).is_file()
    assert page.options == ["all", *sorted(set(test["label"].map({1: "meningioma", 2: "glioma", 3: "pituitary"})),
                                          key=["meningioma", "glioma", "pituitary"].index), "dice", "confidence"]
    assert all(0.0 < row["confidence"] < 1.0 for row in page.rows)
    assert not [link for link in page.links if "//" in link]  # nothing fetched from a network


def hand_made_samples():
    image = np.zeros((4, 4), np.float32)
    truth = np.zeros((4, 4), bool)
    truth[0, :4] = True  # 4 tumour pixels
    half = truth.copy()
    half[0, 2:] = False  # 2 of them found: Dice 2 * 2 / (4 + 2) = 0.667
    empty = np.zeros((4, 4), bool)
    return [Sample(7, 3, image, truth, truth, 1.0, 0.9), Sample(5, 2, image, truth, half, 2 * 2 / 6, 0.2, True),
            Sample(9, 2, image, truth, empty, 0.0, 0.4, True)]


FITTED = Choices(0.35, PostProcess("largest"), "hflip", ConfidenceModel({"mean_inside": 2.0}, -1.0, 0.45, True))


def test_row_values_on_a_hand_made_case():
    page = parse(review_page(hand_made_samples(), {7: "P7", 5: "MR5", 9: "MR9"}, FITTED))
    assert [row["cells"][1:] for row in page.rows] == [
        ["9", "glioma", "MR9", "0.000", "4", "0", "0.400", "yes"],
        ["5", "glioma", "MR5", "0.667", "4", "2", "0.200", "yes"],
        ["7", "pituitary", "P7", "1.000", "4", "4", "0.900", ""],
    ]
    assert page.options == ["all", "glioma", "pituitary", "dice", "confidence"]


def test_header_states_the_choices_and_the_confidence_auroc():
    text = review_page(hand_made_samples(), {7: "P7", 5: "MR5", 9: "MR9"}, FITTED)
    assert "Threshold 0.35, post-processing largest, test-time augmentation hflip" in text
    # one poor slice (Dice 0 < 0.5, confidence 0.4) against two good slices (0.2 and 0.9): it ranks below
    # one of the two, so AUROC = 1/2
    assert "AUROC 0.500 for finding slices with Dice below 0.5" in text
    assert "flagged for review at confidence 0.45 or less" in text
    unfitted = review_page(hand_made_samples(), {7: "P7", 5: "MR5", 9: "MR9"}, Choices())
    assert "not fitted" in unfitted


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browser_dom(url, tmp_path):
    """The page's DOM after its script ran, from headless Chromium."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    result = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)")
@pytest.mark.parametrize("choice", ["all", "meningioma", "glioma", "pituitary"])
def test_page_renders_in_a_browser_and_the_class_filter_works(review, tmp_path, choice):
    root, count = review
    url = (root / "review" / "index.html").resolve().as_uri() + f"#class={choice}"
    result = browser_dom(url, tmp_path)
    page = parse(result.stdout)
    assert len(page.rows) == count
    shown = [row["class"] for row, hidden in zip(page.rows, page.hidden) if not hidden]
    expected = [row["class"] for row in page.rows if choice in ("all", row["class"])]
    assert shown == expected and (choice == "all" or set(shown) <= {choice})
    assert f'<span id="shown">{len(expected)}</span>' in result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium)")
def test_page_sorts_by_confidence_in_a_browser(tmp_path):
    (tmp_path / "index.html").write_text(review_page(hand_made_samples(), {7: "P7", 5: "MR5", 9: "MR9"}, FITTED))
    url = (tmp_path / "index.html").resolve().as_uri() + "#class=glioma&sort=confidence"
    result = browser_dom(url, tmp_path)
    page = parse(result.stdout)
    assert [row["cells"][1] for row in page.rows] == ["5", "9", "7"]  # confidence 0.2, 0.4, 0.9
    assert [row["cells"][1] for row, hidden in zip(page.rows, page.hidden) if not hidden] == ["5", "9"]
