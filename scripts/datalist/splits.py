"""Subject-disjoint splits: seeded train/validation/test, K cross-validation folds, and committed split files."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.datalist.names import SPLITS, DatasetError
from scripts.io_utils import atomic_write_text


def split_by_subject(
    entries: Sequence[Mapping[str, str]], num_val: int | float, num_test: int | float = 0, seed: int = 0
) -> dict[str, list[dict[str, str]]]:
    """Split entries into training/validation/test with disjoint subjects, reproducibly for a given seed.

    Args:
        entries: dicts with a `subject` key.
        num_val: validation subjects, a count (int) or a fraction of subjects (float < 1).
        num_test: test subjects, likewise.
        seed: shuffling seed.
    """
    subjects = sorted({e["subject"] for e in entries})
    random.Random(seed).shuffle(subjects)

    def count(n: int | float) -> int:
        return int(round(n * len(subjects))) if isinstance(n, float) and n < 1 else int(n)

    n_val, n_test = count(num_val), count(num_test)
    if n_val + n_test >= len(subjects):
        raise DatasetError(
            f"{len(subjects)} subjects cannot give {n_val} validation and {n_test} test subjects and keep any for "
            "training; add data or lower num_val/num_test"
        )
    groups = {
        "test": set(subjects[:n_test]),
        "validation": set(subjects[n_test : n_test + n_val]),
        "training": set(subjects[n_test + n_val :]),
    }
    return {split: [dict(e) for e in entries if e["subject"] in groups[split]] for split in SPLITS}


def cross_validation_folds(
    entries: Sequence[Mapping[str, str]], folds: int, num_val: int | float = 4, seed: int = 0
) -> list[dict[str, list[dict[str, str]]]]:
    """`folds` subject-disjoint splits in which every subject is a test subject exactly once (k-fold cross-validation).

    Why: a test set of a few subjects cannot tell models 1-2 Dice points apart; scoring every subject once, each by
    a model that never saw it, can. The seeded shuffle of `split_by_subject` is cut into `folds` test groups (sizes
    differ by at most one); fold i validates on `num_val` subjects taken from the groups after group i, and trains
    on the rest.
    """
    subjects = sorted({e["subject"] for e in entries})
    if isinstance(num_val, bool) or num_val != int(num_val) or num_val < 1:
        raise DatasetError(
            f"num_val must be a whole number of validation subjects (at least 1) per fold, got {num_val!r}"
        )
    num_val = int(num_val)
    if folds < 2 or folds > len(subjects):
        raise DatasetError(f"folds must be from 2 to the number of subjects ({len(subjects)}), got {folds}")
    random.Random(seed).shuffle(subjects)
    groups = [subjects[i::folds] for i in range(folds)]
    out = []
    for i in range(folds):
        others = [s for g in groups[i + 1 :] + groups[:i] for s in g]
        if num_val >= len(others):
            raise DatasetError(
                f"fold {i}: {len(others)} non-test subjects cannot give {num_val} validation subjects and keep any "
                "for training; lower num_val or folds"
            )
        owner = {s: "test" for s in groups[i]}
        owner.update({s: "validation" for s in others[:num_val]})
        owner.update({s: "training" for s in others[num_val:]})
        out.append({split: [dict(e) for e in entries if owner[e["subject"]] == split] for split in SPLITS})
    return out


def _apply_split_file(entries: Sequence[Mapping[str, str]], split_file: Path) -> dict[str, list[dict[str, str]]]:
    """Assign entries to splits by the subject ids listed in a committed split file."""
    try:
        spec = json.loads(split_file.read_text())
    except FileNotFoundError:
        raise DatasetError(f"split_file {split_file} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"split_file {split_file} cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(spec, Mapping) or not any(isinstance(spec.get(s), list) for s in SPLITS):
        raise DatasetError(f"split_file {split_file} must be a JSON object with subject-id lists under {list(SPLITS)}")
    owner = {str(s): split for split in SPLITS for s in spec.get(split, [])}
    missing = sorted({e["subject"] for e in entries} - owner.keys())
    if missing:
        raise DatasetError(f"subjects {missing[:10]} are not assigned to any split in {split_file}")
    out: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for e in entries:
        out[owner[e["subject"]]].append(dict(e))
    return out


def fold_path(output: str, fold: int) -> str:
    """OUTPUT with `{fold}` replaced, or with `_fold<i>` before its suffix (`cv.json` -> `cv_fold0.json`)."""
    if "{fold}" in output:
        return output.replace("{fold}", str(fold))
    path = Path(output)
    return str(path.with_name(f"{path.stem}_fold{fold}{path.suffix}"))


def _write_split_file(
    output: str, splits: Mapping[str, Sequence[Mapping[str, str]]], seed: int, overwrite: bool, extra=None
) -> str:
    spec: dict[str, Any] = {s: sorted({e["subject"] for e in splits[s]}) for s in SPLITS}
    spec["seed"] = seed
    spec.update(extra or {})
    atomic_write_text(output, json.dumps(spec, indent=2) + "\n", overwrite=overwrite)
    print(f"wrote {output}: " + ", ".join(f"{len(spec[s])} {s} subjects" for s in SPLITS))
    return output
