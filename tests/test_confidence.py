"""Expected Dice (scripts.confidence): hand-computed values, the transform's place in the chain, and its columns in
the measurement CSV (inference) and metrics_volume.csv (evaluation)."""

from __future__ import annotations

import csv
import logging
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.confidence import ExpectedDiced, expected_dice
from scripts.evaluation import SegmentationReport, expected_dice_agreement


def probabilities() -> torch.Tensor:
    """4 voxels, 3 classes (channels first): argmax 1, 1, 0, 0."""
    return torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.6, 0.2], [0.6, 0.4, 0.0], [1.0, 0.0, 0.0]]).T.reshape(3, 4, 1, 1)


def test_expected_dice_by_hand():
    scores = expected_dice(probabilities())
    # class 1: mask (1, 1, 0, 0); sum p*m = 0.9 + 0.6 = 1.5; sum p = 1.9; sum m = 2 -> 3.0 / 3.9
    assert scores[1] == pytest.approx(3.0 / 3.9)
    # class 2: probability 0.2 somewhere, never predicted -> 0
    assert scores[2] == 0.0


def test_expected_dice_of_certain_and_absent_classes():
    one_hot = torch.nn.functional.one_hot(torch.tensor([[0, 1], [1, 0]]), 3).permute(2, 0, 1).float()
    certain = torch.where(one_hot > 0, 1.0, 0.0)
    certain[:2] = certain[:2] * 0.998 + 0.001  # classes 0 and 1 share 0.999 / 0.001; class 2 never has any mass
    certain[2] = 0.0
    scores = expected_dice(certain)
    # class 1: 2 voxels at 0.999, 2 at 0.001: 2 * 1.998 / (2.0 + 2) = 0.999; class 2 neither predicted nor likely
    assert scores[1] == pytest.approx(0.999) and scores[2] == 1.0


@pytest.mark.parametrize(
    "value, message",
    [
        (torch.rand(5), "channel-first probability map"),
        (torch.rand(2, 4, 4), "class 2 asked for, but the probability map has 2 channels"),
        (torch.randn(3, 4, 4) * 5, "(logits? apply the softmax first)"),
        (torch.rand(3, 4, 4) * 0.3, "has channels that do not sum to 1"),
        (torch.zeros(3, 4, 4, dtype=torch.long), "integer type torch.int64 (a label map?)"),
        (torch.nn.functional.one_hot(torch.arange(3), 3).T.float(), "holds only 0 and 1 (a one-hot map"),
    ],
)
def test_expected_dice_refuses_what_it_cannot_score(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        expected_dice(value)
    with pytest.raises(ValueError, match="classes must be channel indices"):
        expected_dice(probabilities(), classes=[])


def test_transform_adds_named_scores_and_refuses_discrete_input():
    out = ExpectedDiced(keys="pred")({"pred": probabilities()})
    assert out["expected_dice"] == pytest.approx({"femoral": 3.0 / 3.9, "tibial": 0.0})
    meta = ExpectedDiced(keys="pred")({"pred": MetaTensor(probabilities(), affine=torch.eye(4))})
    assert meta["expected_dice"] == out["expected_dice"] and isinstance(meta["pred"], MetaTensor)
    with pytest.raises(ValueError, match="place it before AsDiscreted"):
        ExpectedDiced(keys="pred")({"pred": torch.zeros(1, 4, 4, 4)})


def test_measurement_rows_carry_the_class_score(tmp_path):
    from scripts.quantify import CartilageReportd

    labels = np.zeros((8, 32, 32), np.uint8)
    labels[1:7, 4:28, 20:24] = 1
    labels[1:7, 4:28, 10:14] = 2
    pred = MetaTensor(torch.as_tensor(labels[None]), affine=torch.diag(torch.tensor([0.7, 0.4, 0.4, 1.0])))
    pred.meta["filename_or_obj"] = "knee.nii.gz"
    step = CartilageReportd(keys="pred", output_dir=str(tmp_path), write_png=False, write_thickness_map=False)
    step({"pred": pred, "expected_dice": {"femoral": 0.91234, "tibial": 0.5}})
    rows = list(csv.DictReader((tmp_path / "measurements.csv").open()))
    by_compartment = {r["compartment"]: r["expected_dice"] for r in rows}
    assert by_compartment["femoral"] == "0.9123"
    assert all(v == "0.5000" for k, v in by_compartment.items() if k.startswith("tibial")) and len(rows) == 4
    other = CartilageReportd(keys="pred", output_dir=str(tmp_path / "b"), write_png=False, write_thickness_map=False)
    other({"pred": pred})  # no scores (a label map, not a prediction): the column stays empty
    assert {r["expected_dice"] for r in csv.DictReader((tmp_path / "b" / "measurements.csv").open())} == {""}


def _one_hot(labels: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.as_tensor(labels), 3).permute(3, 0, 1, 2).float()


def test_evaluation_writes_expected_beside_measured_dice(tmp_path, caplog):
    truth = np.zeros((4, 16, 16), dtype=np.int64)
    truth[1:3, 4:12, 4:12] = 1
    truth[1:3, 12:14, 4:12] = 2
    affine = torch.diag(torch.tensor([0.7, 0.3646, 0.3646, 1.0], dtype=torch.float64))
    report = SegmentationReport(str(tmp_path))
    for case, expected in enumerate([0.5, 0.7, 0.95]):
        meta = {"filename_or_obj": f"knee_{case}.nii.gz"}
        pred = truth.copy()
        pred[1, 4 : 4 + 2 * case, 4:12] = 0  # case 0 perfect, then worse: Dice falls as case grows
        item = {
            "pred": MetaTensor(_one_hot(pred), affine=affine, meta=dict(meta)),
            "label": MetaTensor(_one_hot(truth), affine=affine, meta=dict(meta)),
            "expected_dice": {"femoral": 1.0 - expected / 2, "tibial": expected},
        }
        report.iteration_completed(SimpleNamespace(state=SimpleNamespace(output=[item], iteration=1, epoch_length=3)))
    with caplog.at_level(logging.INFO, logger="scripts.evaluation"):
        report.completed()
    rows = list(csv.DictReader((tmp_path / "metrics_volume.csv").open()))
    assert list(rows[0])[-1] == "expected_dice"
    femoral = [(float(r["dice"]), float(r["expected_dice"])) for r in rows if r["class"] == "femoral cartilage"]
    assert [e for _, e in femoral] == [0.75, 0.65, 0.525]
    assert femoral[0][0] == 1.0 and femoral[0][0] > femoral[1][0] > femoral[2][0]
    # femoral: both fall together (Spearman 1); tibial: Dice 1 throughout (no ranking, nan)
    assert "femoral cartilage: expected Dice against measured Dice over 3 cases: Spearman 1.000" in caplog.text
    assert "tibial cartilage: expected Dice against measured Dice over 3 cases: Spearman nan" in caplog.text


def test_agreement_by_hand():
    rows = [
        {"protocol": "volume", "class": "femoral cartilage", "gt_voxels": 9, "dice": d, "expected_dice": e}
        for d, e in ((0.5, 0.6), (0.7, 0.8), (0.9, 0.85), (0.8, math.nan))
    ]
    (line,) = expected_dice_agreement(rows)
    assert line == (
        "femoral cartilage: expected Dice against measured Dice over 3 cases: Spearman 1.000, mean expected - "
        "measured +0.0500"
    )
    assert expected_dice_agreement(rows[:2]) == []  # fewer than 3 cases: nothing to say
