"""The evaluation metrics: MONAI's definitions of HD, HD95 and ASSD computed once per item and class, hand-computed
cases in mm, empty predictions reported rather than averaged away, and the paper's per-slice protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from scripts.evaluation import segmentation_metrics, slice_rows, summarise, surface_distances, volume_rows


def one_hot(labels: np.ndarray, num_classes: int = 3) -> torch.Tensor:
    """(*spatial) integer labels -> (C, *spatial) float one-hot."""
    t = torch.as_tensor(labels).long()
    return torch.nn.functional.one_hot(t, num_classes).movedim(-1, 0).float()


def blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random smooth-ish label maps with classes 1 and 2 (thresholded, box-filtered noise)."""
    rng = np.random.default_rng(seed)
    noise = rng.random(shape)
    for axis in range(len(shape)):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / 3
    labels = np.zeros(shape, dtype=np.int64)
    labels[noise > 0.55] = 1
    labels[noise < 0.45] = 2
    return labels


@pytest.mark.parametrize(
    "shape, spacing",
    [((2, 48, 40), (0.3646, 0.5)), ((1, 12, 24, 20), (0.7, 0.3646, 0.3646))],
    ids=["2d", "3d"],
)
def test_surface_distances_match_monai_metrics(shape, spacing):
    batch = shape[0]
    pred = torch.stack([one_hot(blobs(shape[1:], seed=2 * b)) for b in range(batch)])
    truth = torch.stack([one_hot(blobs(shape[1:], seed=2 * b + 1)) for b in range(batch)])
    both = torch.ones(batch, 2, dtype=torch.bool)
    ours = surface_distances(pred, truth, spacing, both)
    sp = list(spacing)
    reference = {
        "hd": compute_hausdorff_distance(pred, truth, spacing=sp),
        "hd95": compute_hausdorff_distance(pred, truth, percentile=95, spacing=sp),
        "assd": compute_average_surface_distance(pred, truth, symmetric=True, spacing=sp),
    }
    for name, value in reference.items():
        assert torch.allclose(ours[name], value.double(), rtol=1e-5, atol=1e-5), name
        assert torch.isfinite(ours[name]).all()


def test_shifted_square_distances_in_mm():
    """A 10x10 square of class 1 shifted by 3 voxels along an axis of 0.5 mm: every boundary point of the shifted
    edges is at most 3 voxels (1.5 mm) away, Dice = 7/10, and the other axis's spacing does not enter."""
    truth = np.zeros((32, 32), dtype=np.int64)
    truth[10:20, 10:20] = 1
    pred = np.roll(truth, 3, axis=0)
    m = segmentation_metrics(one_hot(pred)[None], one_hot(truth)[None], spacing=(0.5, 2.0))
    assert m["dice"][0, 0].item() == pytest.approx(0.7)
    assert m["precision"][0, 0].item() == pytest.approx(0.7)
    assert m["hd"][0, 0].item() == pytest.approx(1.5)
    assert m["hd95"][0, 0].item() <= 1.5
    assert 0 < m["assd"][0, 0].item() < 1.5
    assert math.isnan(m["hd"][0, 1].item())  # class 2 is absent in both: undefined, not 0


def test_empty_prediction_is_reported_not_averaged_away():
    truth = np.zeros((4, 16, 16), dtype=np.int64)
    truth[1:3, 4:12, 4:12] = 1
    truth[1:3, 12:14, 4:12] = 2
    good = truth.copy()
    missed = np.where(truth == 2, 0, truth)  # the model found no tibial cartilage
    affine = np.diag([0.7, 0.3646, 0.3646, 1.0])
    rows = volume_rows("a", one_hot(good), one_hot(truth), affine)
    rows += volume_rows("b", one_hot(missed), one_hot(truth), affine)
    b_tibial = [r for r in rows if r["case"] == "b" and r["class"] == "tibial cartilage"][0]
    assert b_tibial["dice"] == 0.0 and math.isnan(b_tibial["hd"]) and "empty_pred" in b_tibial["flags"]
    tibial = [e for e in summarise(rows) if e["protocol"] == "volume" and e["class"] == "tibial cartilage"][0]
    assert tibial["n"] == 2 and tibial["empty_pred"] == 1
    assert tibial["dice"]["mean"] == pytest.approx(0.5)  # the miss counts as Dice 0
    assert tibial["hd"]["n"] == 1 and tibial["hd"]["mean"] == pytest.approx(0.0)  # distances of case a only


def test_paper_protocol_scores_only_slices_holding_the_class():
    truth = np.zeros((5, 16, 16), dtype=np.int64)
    truth[1, 4:8, 4:8] = 1
    truth[2, 4:8, 4:8] = 1
    truth[2, 10:12, 4:8] = 2
    affine = np.diag([0.7, 0.3646, 0.3646, 1.0])
    rows = slice_rows("c", one_hot(truth), one_hot(truth), affine)
    assert sorted((r["slice"], r["class"]) for r in rows) == [
        (1, "femoral cartilage"),
        (2, "femoral cartilage"),
        (2, "tibial cartilage"),
    ]
    assert all(r["dice"] == 1.0 and r["hd"] == 0.0 for r in rows)


def test_segmentation_report_logs_each_case_and_writes_the_tables(tmp_path, caplog):
    import json
    import logging
    from types import SimpleNamespace

    from monai.data import MetaTensor

    from scripts.evaluation import SegmentationReport

    truth = np.zeros((4, 16, 16), dtype=np.int64)
    truth[1:3, 4:12, 4:12] = 1
    truth[1:3, 12:14, 4:12] = 2
    pred = np.where(truth == 2, 0, truth)  # tibial cartilage missed
    affine = torch.diag(torch.tensor([0.7, 0.3646, 0.3646, 1.0], dtype=torch.float64))
    meta = {"filename_or_obj": "/data/knee_07.nii.gz"}
    item = {
        "pred": MetaTensor(one_hot(pred), affine=affine, meta=dict(meta)),
        "label": MetaTensor(one_hot(truth), affine=affine, meta=dict(meta)),
    }
    report = SegmentationReport(str(tmp_path / "eval"))
    engine = SimpleNamespace(state=SimpleNamespace(output=[item], iteration=1, epoch_length=2))
    with caplog.at_level(logging.INFO, logger="scripts.evaluation"):
        report.iteration_completed(engine)
    assert "scored knee_07.nii.gz (1/2): Dice femoral cartilage 1.0000, tibial cartilage 0.0000" in caplog.text
    summary = report.completed()
    assert json.loads((tmp_path / "eval" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    volume_csv = (tmp_path / "eval" / "metrics_volume.csv").read_text().splitlines()
    assert volume_csv[0].startswith("case,protocol,class,dice")
    assert len(volume_csv) == 1 + 2  # header + femoral and tibial of the one case
    assert (tmp_path / "eval" / "metrics_paper.csv").is_file() and (tmp_path / "eval" / "summary.md").is_file()
    assert "Scored: the test split (1 cases)." in (tmp_path / "eval" / "summary.md").read_text()

    # a datalist without a test split is scored on its validation cases: said in the log and in summary.md
    fallback = SegmentationReport(str(tmp_path / "val"), scored_split="validation")
    with caplog.at_level(logging.WARNING, logger="scripts.evaluation"):
        fallback.attach(SimpleNamespace(add_event_handler=lambda *args: None))
    assert "Scoring the VALIDATION cases" in caplog.text
    fallback.iteration_completed(engine)
    fallback.completed()
    text = (tmp_path / "val" / "summary.md").read_text()
    assert "Scored: the validation split (1 cases). Scoring the VALIDATION cases" in text and "optimistic" in text
    with pytest.raises(ValueError, match="scored_split 'tset' is not one of"):
        SegmentationReport(str(tmp_path / "x"), scored_split="tset")
