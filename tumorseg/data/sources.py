"""Fill data/raw/ with the figshare slices (one N.mat per slice, plus cvind.mat) from the chosen source.

Sources: "figshare" (download the four zips and cvind.mat, tumorseg.data.fetch),
"synthetic" (generated slices), or a local folder of N.mat files or of the
downloaded zips (tumorseg.data.archives). The output folder is built aside and
renamed into place only when complete.
"""

from collections.abc import Iterable
from pathlib import Path

from tumorseg.atomic import atomic_dir
from tumorseg.config import Synthetic
from tumorseg.data.archives import SourceError, copy_loose, extract_zips, is_wanted
from tumorseg.data.cvind import CVIND
from tumorseg.data.fetch import FIGSHARE_FILES, FIGSHARE_URL, download_files
from tumorseg.data.matfile import SLICE_NAME
from tumorseg.data.synthetic import write_dataset

TOTAL_SLICES = 3064
# data.source may be figshare, synthetic or a folder, and a dvc.yaml dependency cannot depend on a
# parameter's kind, so DVC does not watch a local folder's files
LOCAL_SOURCE_NOTE = ("{source}: a local source is read, not tracked: DVC does not see later changes to its files. "
                     "After adding, removing or replacing slices there, run: dvc repro -f download")


def prepare_raw(source: str, out_dir: str | Path, base_url: str = FIGSHARE_URL, synthetic: Synthetic | None = None,
                download_dir: str | Path | None = None, *,
                files: Iterable[tuple[str, int, str, int | None]] = FIGSHARE_FILES, retries: int = 4,
                backoff: float = 2.0) -> Path:
    """Fill `out_dir` with N.mat slices (plus cvind.mat) from `source`, atomically.

    `synthetic` (data.synthetic, a tumorseg.config.Synthetic) sizes the generated data of source 'synthetic'.
    """
    out_dir = Path(out_dir)
    if source == "synthetic":
        if synthetic is None:
            raise SourceError("data.source 'synthetic' needs the data.synthetic settings of params.yaml.")
        with atomic_dir(out_dir) as build:
            write_dataset(build, synthetic.patients, synthetic.slices_per_patient, synthetic.image_size,
                          seed=synthetic.seed)
        return out_dir
    if source == "figshare":
        download_dir = Path(download_dir) if download_dir else out_dir.parent / "downloads"
        paths = download_files(base_url, download_dir, files=files, retries=retries, backoff=backoff)
        zips = [p for p in paths if p.suffix.lower() == ".zip"]
        loose = [p for p in paths if p.suffix.lower() != ".zip"]
        with atomic_dir(out_dir) as build:
            extract_zips(zips, build)
            copy_loose(loose, build)
            report_slices(_slice_indices(build))
        return out_dir
    return _prepare_local(Path(source).expanduser(), out_dir)


def _prepare_local(source, out_dir):
    """Copy N.mat files found under source, or else extract the zips found there."""
    if not source.is_dir():
        raise SourceError(
            f"data.source {str(source)!r} is not 'figshare', 'synthetic' or an existing folder; "
            "give a folder of N.mat slice files or of the downloaded figshare zips."
        )
    mats = [p for p in sorted(source.rglob("*.mat")) if is_wanted(p.name) and "__MACOSX" not in p.parts]
    zips = sorted(p for p in source.rglob("*.zip") if "__MACOSX" not in p.parts)
    if not any(SLICE_NAME.match(p.name) for p in mats) and not zips:
        raise SourceError(
            f"{source}: no N.mat slice files and no .zip files found; expected the figshare slices "
            "(1.mat ... 3064.mat, searched recursively) or the downloaded zips "
            "(brainTumorDataPublic_*.zip or the whole-article zip)."
        )
    with atomic_dir(out_dir) as build:
        if any(SLICE_NAME.match(p.name) for p in mats):
            if zips:
                print(f"{source}: using the N.mat files found; ignoring {len(zips)} zip file(s).")
            copy_loose(mats, build)
        else:
            extract_zips(zips, build)
            copy_loose([p for p in mats if p.name == CVIND], build)
        report_slices(_slice_indices(build))
    print(LOCAL_SOURCE_NOTE.format(source=source))
    return out_dir


def format_ranges(indices: Iterable[int]) -> str:
    """Summarise integers as ranges: [1, 2, 3, 7] -> "1-3, 7"."""
    runs = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def report_slices(indices: Iterable[int], total: int = TOTAL_SLICES) -> list[int]:
    """Print how many slices were found and which of 1..total are missing."""
    indices = set(indices)
    missing = set(range(1, total + 1)) - indices
    line = f"found {len(indices)} slices"
    line += f"; missing {format_ranges(missing)}" if missing else f"; all {total} present"
    extra = sorted(i for i in indices if i > total)
    if extra:
        line += f"; beyond {total}: {format_ranges(extra)}"
    print(line)
    if not indices:
        raise SourceError("no N.mat slices found in the source; nothing to write to data/raw.")
    return sorted(missing)


def _slice_indices(folder):
    return [int(m.group(1)) for p in Path(folder).iterdir() if (m := SLICE_NAME.match(p.name))]
