"""The comparison report: per-epoch means, Table 1 rows beside the paper, curves and overlay figures from files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scripts import report


def _stats(mean: float, sd: float, n: int) -> dict[str, float]:
    return {"mean": mean, "sd": sd, "n": n}


def _summary(dice: float) -> list[dict]:
    entries = []
    for protocol, n in (("volume", 8), ("paper", 700)):
        for structure in ("femoral cartilage", "tibial cartilage"):
            entries.append(
                {
                    "protocol": protocol,
                    "class": structure,
                    "n": n,
                    "empty_pred": 1 if protocol == "paper" else 0,
                    "dice": _stats(dice, 0.05, n),
                    "precision": _stats(0.8, 0.1, n),
                    "recall": _stats(0.7, math.nan, n),
                    "hd": _stats(6.5, 1.25, n),
                    "hd95": _stats(2.0, 0.5, n),
                    "assd": _stats(0.4, 0.1, n),
                }
            )
    return entries


def test_per_epoch_means_iterations_of_each_epoch():
    values = [(1, 1.0), (2, 3.0), (3, 5.0), (4, 7.0), (5, 9.0)]  # 2 iterations per epoch, 1-based steps
    epochs, means = report._per_epoch(values, iterations_per_epoch=2)
    assert epochs.tolist() == [1, 2, 3]
    assert means.tolist() == [2.0, 6.0, 9.0]


def test_table_rows_and_paper_numbers(tmp_path):
    runs = []
    for name, dice in (("eas", 0.85), ("unet", 0.8)):
        (tmp_path / name / "evaluation").mkdir(parents=True)
        (tmp_path / name / "evaluation" / "summary.json").write_text(json.dumps(_summary(dice)))
        runs.append(str(tmp_path / name))
    out = tmp_path / "table.md"
    text = report.table(*runs, names="EAS U-Net,U-Net", output=str(out))
    assert out.read_text() == text
    lines = text.splitlines()
    assert len(lines) == 2 + 2 * 2 * 2  # header + (2 structures x 2 models x 2 protocols)
    row = next(r for r in lines if r.startswith("| femoral cartilage | EAS U-Net | volume |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:9] == ["85.00 ± 5.00", "80.00 ± 10.00", "70.00", "6.50 ± 1.25", "2.00 ± 0.50", "0.40 ± 0.10"]
    assert cells[9:11] == ["8", "0"]
    assert cells[11] == "90.37 / 91.69 / 90.27 / 6.34"  # the paper's EAS U-Net femoral row
    tibial_unet = next(r for r in lines if r.startswith("| tibial cartilage | U-Net | paper |"))
    assert tibial_unet.rstrip().endswith("| 700 | 1 | 88.26 / 87.94 / 89.36 / 5.46 |")


def test_table_refuses_mismatched_names(tmp_path):
    with pytest.raises(ValueError, match="1 names for 2 runs"):
        report.table(str(tmp_path / "a"), str(tmp_path / "b"), names="only one")


def test_read_scalars_and_curves_from_tensorboard_logs(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    writer = SummaryWriter(log_dir=str(run / "logs"))
    for step in range(1, 7):
        writer.add_scalar("train_loss", 2.0 / step, step)
    for epoch, value in ((1, 0.5), (2, 0.7)):
        writer.add_scalar("val_femoral_dice", value, epoch)
        writer.add_scalar("val_tibial_dice", value - 0.1, epoch)
    writer.close()
    scalars = report.read_scalars(run / "logs")
    assert [s for s, _ in scalars["train_loss"]] == [1, 2, 3, 4, 5, 6]
    assert scalars["val_tibial_dice"][1][1] == pytest.approx(0.6)
    png = tmp_path / "curves.png"
    assert report.curves(str(run), names="EAS U-Net", output=str(png), iterations_per_epoch=3) == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_scalars_without_logs_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        report.read_scalars(tmp_path)


def test_overlays_figure(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "slices.npz"
    labels = rng.integers(0, 3, size=(2, 32, 32))
    np.savez(
        npz,
        names=np.array(["EAS U-Net", "U-Net"]),
        images=rng.random((2, 32, 32)).astype(np.float32),
        labels=labels,
        predictions=np.stack([labels, labels], axis=1),
    )
    png = tmp_path / "overlays.png"
    report.overlays(str(npz), output=str(png), models="U-Net")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError):
        report.overlays(str(npz), output=str(tmp_path / "x.png"), models="nnU-Net")
