"""A page to review the errors: every test slice, worst Dice first, with the true and predicted tumour.

plots/review/index.html is one self-contained page (no server, no network; the
pictures lie beside it in slices/): per slice the MRI with true positive, false
positive and false negative pixels tinted, its class, patient, Dice, the
true and predicted areas, the confidence score and whether it flags the slice
for review (tumorseg.evaluate.confidence); the header states the score's AUROC
for finding the poor slices. A class filter and a sort order, Dice or confidence
(both also set by the address, e.g. index.html#class=glioma&sort=confidence),
choose what is shown. There is no threshold slider: the masks are those of the
threshold evaluate chose on validation.
"""

import html
from pathlib import Path

import numpy as np
from PIL import Image

from tumorseg import LABEL_NAMES
from tumorseg.atomic import atomic_dir
from tumorseg.data.arrays import load_arrays, read_split, subset_positions
from tumorseg.evaluate.choices import Choices
from tumorseg.evaluate.confidence import CATCH, poor_auroc
from tumorseg.evaluate.metrics import POOR_DICE
from tumorseg.evaluate.render import ERROR_COLORS, Sample, build_samples, error_view
from tumorseg.model.load import check_model_input, load_model

MIN_PICTURE_SIZE = 160  # pixels: small model inputs are enlarged (nearest neighbour) to at least this

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Test slices, worst Dice first</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; vertical-align: middle; }}
td.class, td.patient {{ text-align: left; }}
img {{ image-rendering: pixelated; display: block; }}
.key span {{ display: inline-block; width: 0.9em; height: 0.9em; margin: 0 0.3em 0 1em; vertical-align: middle; }}
</style>
</head>
<body>
<h1>Test slices, worst Dice first</h1>
<p>Threshold {threshold}, post-processing {postprocess}, test-time augmentation {tta} (as evaluate chose on validation).
<span class="key">{key}</span></p>
<p id="confidence-note">{confidence_note}</p>
<p><label for="class-filter">Class</label>
<select id="class-filter">
<option value="all">all classes</option>
{options}
</select>
<label for="sort-order">sorted by</label>
<select id="sort-order">
<option value="dice">Dice, worst first</option>
<option value="confidence">confidence, least first</option>
</select>
<span id="shown">{count}</span> of {count} slices shown</p>
<table id="slices">
<thead><tr><th>slice</th><th>id</th><th>class</th><th>patient</th><th>Dice</th><th>true pixels</th><th>predicted pixels</th><th>confidence</th><th>review</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
<script>
const filter = document.getElementById("class-filter");
const order = document.getElementById("sort-order");
const body = document.querySelector("#slices tbody");
function show() {{
  const key = order.value;
  const rows = [...body.rows].sort((a, b) => a.dataset[key] - b.dataset[key] || a.dataset.id - b.dataset.id);
  let shown = 0;
  for (const row of rows) {{
    body.appendChild(row);
    row.hidden = filter.value !== "all" && row.dataset.class !== filter.value;
    if (!row.hidden) shown += 1;
  }}
  document.getElementById("shown").textContent = shown;
}}
function choose() {{ location.hash = "class=" + filter.value + "&sort=" + order.value; show(); }}
filter.addEventListener("change", choose);
order.addEventListener("change", choose);
const asked = new URLSearchParams(location.hash.slice(1));
for (const [select, name] of [[filter, "class"], [order, "sort"]]) {{
  const value = asked.get(name);
  if (value && [...select.options].some(option => option.value === value)) select.value = value;
}}
show();
</script>
</body>
</html>
"""

ROW = ('<tr data-class="{name}" data-id="{id}" data-dice="{dice:.6f}" data-confidence="{confidence:.6f}">'
       '<td><img src="slices/{id}.png" width="{size}" height="{size}" alt="slice {id}"></td><td>{id}</td>'
       '<td class="class">{name}</td><td class="patient">{pid}</td><td>{dice:.3f}</td><td>{true}</td><td>{pred}</td>'
       "<td>{confidence:.3f}</td><td>{review}</td></tr>")


def picture(sample: Sample) -> np.ndarray:
    """uint8 RGB error view of a slice, enlarged to at least MIN_PICTURE_SIZE pixels."""
    rgb = (np.clip(error_view(sample.image, sample.truth, sample.pred), 0, 1) * 255).round().astype(np.uint8)
    factor = max(1, -(-MIN_PICTURE_SIZE // rgb.shape[0]))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def confidence_note(choices: Choices, auroc: float | None) -> str:
    """The header's line on the confidence score: its AUROC on these slices and the review rule."""
    model = choices.confidence
    if not model.fitted:
        return "Confidence score not fitted (validation held no poor slice): rank by it, do not trust the flag."
    found = "n/a (no poor slice, or only poor slices, among these slices)" if auroc is None else f"{auroc:.3f}"
    return (f"Confidence score: AUROC {found} for finding slices with Dice below {POOR_DICE:g}; a slice is "
            f"flagged for review at confidence {model.review_threshold:.3g} or less (the level at which validation "
            f"shows, with 95% confidence, that at least {CATCH:.0%} of the poor slices are flagged).")


def review_page(samples: list[Sample], pids: dict[int, str], choices: Choices = Choices()) -> str:
    """The page's HTML for `samples` (any order; listed worst Dice first) with their patient ids, the masks
    made with evaluate's `choices`."""
    auroc = poor_auroc([sample.confidence for sample in samples], [sample.dice for sample in samples])
    ordered = sorted(samples, key=lambda sample: (sample.dice, sample.id))
    size = max(MIN_PICTURE_SIZE, samples[0].image.shape[0]) if samples else MIN_PICTURE_SIZE
    rows = "\n".join(
        ROW.format(name=sample.class_name, dice=sample.dice, id=sample.id, size=size,
                   pid=html.escape(str(pids[sample.id])), true=int(sample.truth.sum()), pred=int(sample.pred.sum()),
                   confidence=sample.confidence, review="yes" if sample.review else "")
        for sample in ordered
    )
    present = sorted({sample.label for sample in samples})
    options = "\n".join(f'<option value="{LABEL_NAMES[label]}">{LABEL_NAMES[label]}</option>' for label in present)
    key = "".join(f'<span style="background: rgb{tuple(round(255 * c) for c in color)}"></span>{name}'
                  for name, color in ERROR_COLORS.items())
    return PAGE.format(threshold=f"{choices.threshold:g}", postprocess=html.escape(str(choices.postprocess)),
                       tta=choices.tta, key=key, confidence_note=confidence_note(choices, None if np.isnan(auroc) else auroc), options=options,
                       count=len(samples), rows=rows)


def write_review(model_path: str | Path, numpy_dir: str | Path, split_csv: str | Path, out_dir: str | Path,
                 choices: Choices = Choices()) -> int:
    """Write out_dir/index.html and out_dir/slices/<id>.png for every test slice; returns how many."""
    arrays = load_arrays(numpy_dir)
    split = read_split(split_csv, subsets=("test",))
    test = subset_positions(split, arrays, "test", split_csv)
    model = load_model(model_path)
    check_model_input(model, arrays["images"].shape[1], model_path)
    ids, labels = np.asarray(arrays["ids"])[test], np.asarray(arrays["labels"])[test]
    chosen = {label: sorted(int(i) for i in ids[labels == label]) for label in LABEL_NAMES}
    samples = [s for group in build_samples(model, arrays, test, chosen, choices).values() for s in group]
    pids = dict(zip(ids.tolist(), np.asarray(arrays["pids"])[test].tolist()))
    with atomic_dir(out_dir) as tmp:
        (Path(tmp) / "slices").mkdir()
        for sample in samples:
            Image.fromarray(picture(sample)).save(Path(tmp) / "slices" / f"{sample.id}.png")
        (Path(tmp) / "index.html").write_text(review_page(samples, pids, choices))
    print(f"review page of {len(samples)} test slices: {Path(out_dir) / 'index.html'}")
    return len(samples)
