"""Shared test fixtures: the repository root on sys.path and the optional ../shared folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
OAI_LABELS_DIR = SHARED_DIR / "data" / "oai-labels"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture
def oai_label_files() -> list[Path]:
    """The real OAI label maps from ../shared, or a clean skip in a user's clone where they are absent."""
    files = sorted(OAI_LABELS_DIR.glob("*.nii.gz"))
    if not files:
        pytest.skip("../shared/data/oai-labels is not present (only on the development machines)")
    return files
