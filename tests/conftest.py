from pathlib import Path

import pytest

import tumorseg  # noqa: F401  (TensorFlow's CPU defaults, set before any test loads keras)

SAMPLE_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "figshare-sample"


@pytest.fixture
def real_sample():
    """The folder of genuine figshare slices beside the repository, or skip."""
    if not (SAMPLE_DIR / "mat").is_dir():
        pytest.skip(f"real figshare sample not found at {SAMPLE_DIR.resolve()}: these tests read the shared sample beside the repository")
    return SAMPLE_DIR
