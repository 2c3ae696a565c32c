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
    epochs, means = report.logs._per_epoch(values, iterations_per_epoch=2)
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


def _seed_run(root, model: str, dice: float, per_case: dict[str, tuple[float, float]]) -> None:
    """One model folder of one seed: summary.json at `dice` and a metrics_volume.csv with per-case Dice."""
    folder = root / model / "evaluation"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(_summary(dice)))
    lines = ["case,protocol,class,dice,precision,recall,hd,hd95,assd,gt_voxels,pred_voxels,flags"]
    for case, (femoral, tibial) in per_case.items():
        lines.append(f"{case},volume,femoral cartilage,{femoral},1,1,1,1,1,10,10,")
        lines.append(f"{case},volume,tibial cartilage,{tibial},1,1,1,1,1,10,10,")
    (folder / "metrics_volume.csv").write_text("\n".join(lines) + "\n")


def test_seeds_means_ranges_and_paired_differences(tmp_path):
    # seed a: EAS below U-Net on case 1 (femoral 0.80 vs 0.90), above on case 2 (0.85 vs 0.75)
    # seed b: EAS below on both (0.70 vs 0.72, 0.60 vs 0.66); tibial always 0.05 above
    _seed_run(tmp_path / "a", "eas", 0.82, {"c1": (0.80, 0.90), "c2": (0.85, 0.80)})
    _seed_run(tmp_path / "a", "unet", 0.86, {"c1": (0.90, 0.85), "c2": (0.75, 0.75)})
    _seed_run(tmp_path / "b", "eas", 0.78, {"c1": (0.70, 0.90), "c2": (0.60, 0.80)})
    _seed_run(tmp_path / "b", "unet", 0.84, {"c1": (0.72, 0.85), "c2": (0.66, 0.75)})
    out = tmp_path / "seeds.md"
    text = report.seeds(
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        models="eas,unet",
        names="EAS U-Net,U-Net",
        reference="eas",
        seed_names="s0,s1",
        output=str(out),
    )
    assert out.read_text() == text
    lines = text.splitlines()
    eas = [c.strip() for c in next(r for r in lines if r.startswith("| femoral cartilage | EAS U-Net |")).split("|")]
    assert eas[3:6] == ["82.00 / 78.00", "80.00", "4.00"]  # per seed, mean, range of the volume Dice
    assert eas[8:10] == ["2.00 / 2.00", "2.00"]  # HD95 per seed and mean
    paired = next(r for r in lines if r.startswith("| femoral cartilage | U-Net | 3 of"))
    femoral = [c.strip() for c in paired.split("|")]
    # differences in points: -10, +10 (seed a), -2, -6 (seed b): 3 of 4 lower, mean -2, from -10 to +10 over the
    # volumes, per seed 0 / -4
    assert femoral[3:7] == ["3 of 4", "-2.00", "-10.00 to +10.00", "+0.00 / -4.00"]
    # per subject (each case its own here): c1 (-10 - 2) / 2 = -6, c2 (10 - 6) / 2 = +2; all four sign patterns
    # of (6, 2) reach |mean| 2: p = 1; with 2 subjects no p can be below 2 / 2^2 = 0.5
    assert femoral[7:9] == ["1 of 2", "1.000 (0.500)"]
    tibial = next(r for r in lines if r.startswith("| tibial cartilage | U-Net |") and " of 4 " in r)
    assert "| 0 of 4 | +5.00 | +5.00 to +5.00 | +5.00 / +5.00 | 0 of 2 | 0.500 (0.500) |" in tibial


def test_seeds_pairs_the_visits_of_one_subject_as_one_unit(tmp_path):
    """Two OAI subjects with two visits each: 4 volumes, but 2 independent subjects for the test."""
    volumes = {"9014797_00m.nii.gz": (0.9, 0.9), "9014797_72m.nii.gz": (0.8, 0.9), "9135902_00m.nii.gz": (0.7, 0.9)}
    volumes["9135902_96m.nii.gz"] = (0.6, 0.9)
    _seed_run(tmp_path / "a", "eas", 0.8, volumes)
    _seed_run(tmp_path / "a", "unet", 0.8, {k: (f + 0.02, t) for k, (f, t) in volumes.items()})
    text = report.seeds(str(tmp_path / "a"), models="eas,unet", names="EAS U-Net,U-Net", reference="eas")
    femoral = next(r for r in text.splitlines() if r.startswith("| femoral cartilage | U-Net | 4 of 4"))
    assert "| 2 of 2 | 0.500 (0.500) |" in femoral


@pytest.mark.parametrize(
    "differences, p",
    [
        ([1.0, 1.0, 1.0, 1.0], 2 / 16),  # only all-plus and all-minus reach |mean| 1
        ([2.0, 1.0, 1.0], 2 / 8),  # sums +-2 +-1 +-1: only 4 and -4 reach |4|
        ([3.0, -1.0], 1.0),  # every pattern has |mean| >= 1
        ([0.0, 0.0, 0.0], 1.0),
        ([-0.5], 1.0),
    ],
)
def test_sign_flip_p_against_hand_counts(differences, p):
    assert report.sign_flip_p(differences) == pytest.approx(p)


def test_sign_flip_p_many_units_and_no_units():
    assert report.sign_flip_p([1.0] * 22) == 2 / 2**22  # exact up to 24 units (in chunks of 2^20 patterns)
    assert report.sign_flip_p([1.0, -1.0] * 11) == 1.0
    sampled = report.sign_flip_p([1.0] * 30, draws=999)  # beyond 24: estimated, and never 0
    assert sampled == 1 / 1000
    assert report.stats._p_text(2 / 2**24) == "1.2e-07" and report.stats._p_text(0.125) == "0.125"
    with pytest.raises(ValueError, match="no paired differences"):
        report.sign_flip_p([])


def test_seeds_errors_name_the_problem(tmp_path):
    _seed_run(tmp_path / "a", "eas", 0.8, {"c1": (0.8, 0.8)})
    with pytest.raises(ValueError, match="reference 'nnunet' is not among the models"):
        report.seeds(str(tmp_path / "a"), models="eas", reference="nnunet")
    with pytest.raises(FileNotFoundError, match="unet.evaluation.summary.json"):
        report.seeds(str(tmp_path / "a"), models="eas,unet", reference="eas")
    with pytest.raises(ValueError, match="no seed folders"):
        report.seeds(models="eas", reference="eas")


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


def test_read_scalars_of_a_resumed_run_keeps_the_later_values(tmp_path):
    """An interrupted run logged steps 1-5; the resumed run restarts after the last checkpoint (step 3) and logs 4-6:
    steps 4-5 once each, with the resumed run's values."""
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "logs"
    for offset, steps, value in ((0, range(1, 6), 1.0), (10, range(4, 7), 2.0)):
        writer = SummaryWriter(log_dir=str(logs), filename_suffix=f".part{offset}")
        for step in steps:
            writer.add_scalar("train_loss", value, step)
        writer.close()
    files = sorted(logs.glob("events.out.tfevents.*"))
    assert len(files) == 2
    early, late = sorted(files, key=report.logs._event_file_time)
    stamp = early.name.split(".")[3]
    early.rename(logs / early.name.replace(stamp, str(int(stamp) - 100), 1))  # its write time: 100 s before
    scalars = report.read_scalars(logs)
    assert scalars["train_loss"] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0), (6, 2.0)]


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


def test_seeds_over_cross_validation_folds_pairs_every_test_subject(tmp_path):
    """Folds score different subjects: given one folder per fold, the subject columns cover all of them."""
    _seed_run(tmp_path / "f0", "eas", 0.8, {"9000001_00m": (0.8, 0.9), "9000002_00m": (0.7, 0.9)})
    _seed_run(tmp_path / "f0", "unet", 0.8, {"9000001_00m": (0.9, 0.9), "9000002_00m": (0.8, 0.9)})
    _seed_run(tmp_path / "f1", "eas", 0.8, {"9000003_00m": (0.6, 0.9), "9000004_00m": (0.7, 0.9)})
    _seed_run(tmp_path / "f1", "unet", 0.8, {"9000003_00m": (0.7, 0.9), "9000004_00m": (0.8, 0.9)})
    text = report.seeds(str(tmp_path / "f0"), str(tmp_path / "f1"), models="eas,unet", reference="eas", run_kind="fold")
    femoral = next(r for r in text.splitlines() if r.startswith("| femoral cartilage | unet | 4 of 4"))
    assert "| 4 of 4 | 0.125 (0.125) |" in femoral  # 4 subjects, all 10 points lower: the floor 2 / 2^4
    assert "| per fold (f0 / f1) |" in text and "per seed" not in text


def test_seeds_pairs_other_metrics_in_their_units_and_skips_empty_distances(tmp_path):
    """--paired_metrics: precision in points, HD95 in mm, each in its own table; a volume with an empty HD95 (an
    empty prediction) drops out of that metric's pairs only; an unknown metric is refused by name."""
    for model, precision, hd95 in (("eas", "0.7", ""), ("unet", "0.9", "3")):
        folder = tmp_path / "a" / model / "evaluation"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(_summary(0.8)))
        lines = ["case,protocol,class,dice,precision,recall,hd,hd95,assd,gt_voxels,pred_voxels,flags"]
        for case, hd in (("9000001_00m", hd95), ("9000002_00m", "2")):
            for cls in ("femoral cartilage", "tibial cartilage"):
                lines.append(f"{case},volume,{cls},0.8,{precision},1,1,{hd},1,10,10,")
        (folder / "metrics_volume.csv").write_text("\n".join(lines) + "\n")
    text = report.seeds(str(tmp_path / "a"), models="eas,unet", reference="eas", paired_metrics="precision,hd95")
    tables = text.split("\n\n")
    assert len(tables) == 3 and "(precision)" in tables[1] and "mean difference/mm" in tables[2]
    assert "| femoral cartilage | unet | 2 of 2 | -20.00 |" in tables[1]  # 0.7 - 0.9 in points, both volumes
    assert "| femoral cartilage | unet | 0 of 1 | +0.00 |" in tables[2]  # 2 - 2 mm; the empty HD95 left out
    with pytest.raises(ValueError, match="paired_metrics \\['volume'\\] unknown"):
        report.seeds(str(tmp_path / "a"), models="eas,unet", reference="eas", paired_metrics="dice,volume")


def _write_training_log(path, epochs, stop_in_epoch=None, metrics=None):
    """A console log as a training writes it: the bundle's ProgressLogger on an ignite engine (4 iterations per
    epoch, a loss line every 2), MONAI's validation metrics line, in configs/logging.conf's format."""
    import logging

    from ignite.engine import Engine, Events

    from scripts.handlers import ProgressLogger

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logger = logging.getLogger("progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        engine = Engine(lambda e, b: {"loss": float(e.state.epoch * 10 + (e.state.iteration - 1) % 4 + 1)})
        ProgressLogger(iteration_interval=2).attach(engine)

        @engine.on(Events.ITERATION_COMPLETED)
        def _stop(e):
            if stop_in_epoch is not None and e.state.epoch == stop_in_epoch and (e.state.iteration - 1) % 4 == 2:
                raise KeyboardInterrupt  # killed mid-epoch, after its iteration-2 loss line

        @engine.on(Events.EPOCH_COMPLETED)
        def _validate(e):
            if metrics:
                logger.info(
                    "Epoch[%d] Metrics -- val_femoral_dice: %.4f val_mean_dice: 0.5000 ",
                    e.state.epoch,
                    metrics[e.state.epoch],
                )

        if epochs[0] > 1:  # resumed: the state of the last finished epoch, as a checkpoint restores it
            engine.load_state_dict({"epoch": epochs[0] - 1, "epoch_length": 4, "max_epochs": epochs[-1]})
        try:
            engine.run(range(4), max_epochs=epochs[-1])
        except KeyboardInterrupt:
            pass
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_read_log_scalars_from_the_progress_logger_and_a_resumed_run(tmp_path):
    """Part 1 finishes epoch 1 and is killed in epoch 2; part 2 resumes at epoch 2 and finishes 2-3. Loss samples at
    iterations 2 and 4 of each finished epoch (steps of 4 per epoch); epoch 2's values are part 2's (a later file
    wins); the validation metric per epoch."""
    part1, part2 = tmp_path / "train_part1.log", tmp_path / "train_part2.log"
    _write_training_log(part1, [1, 2], stop_in_epoch=2, metrics={1: 0.25, 2: 0.1})
    _write_training_log(part2, [2, 3], metrics={2: 0.5, 3: 0.75})
    scalars = report.read_log_scalars(part1, part2)
    assert scalars["train_loss"] == [(2, 12.0), (4, 14.0), (6, 22.0), (8, 24.0), (10, 32.0), (12, 34.0)]
    assert scalars["val_femoral_dice"] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    assert scalars["val_mean_dice"] == [(1, 0.5), (2, 0.5), (3, 0.5)]


def test_read_log_scalars_drops_the_loss_of_an_epoch_cut_off(tmp_path):
    """A run killed in epoch 2 logged one loss sample of it; with no resumed part the epoch has no loss point."""
    log = tmp_path / "train.log"
    _write_training_log(log, [1, 2], stop_in_epoch=2)
    assert "epoch 2 iteration 2/4 loss 22.0000" in log.read_text()
    assert report.read_log_scalars(log)["train_loss"] == [(2, 12.0), (4, 14.0)]


def test_curves_fall_back_to_the_console_logs(tmp_path):
    run = tmp_path / "unet"
    run.mkdir()
    _write_training_log(run / "train.log", [1, 2], metrics={1: 0.5, 2: 0.6})
    png = tmp_path / "curves.png"
    assert report.curves(str(run), names="U-Net", output=str(png), iterations_per_epoch=4) == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="epochs of \\[4\\] iterations, not 250: pass --iterations_per_epoch 4"):
        report.curves(str(run), output=str(png))  # the default 250 would bin the losses into the wrong epochs


def test_read_log_scalars_bad_input_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.log"):
        report.read_log_scalars(tmp_path / "train.log")
    other = tmp_path / "notes.txt"
    other.write_text("no training here\n")
    with pytest.raises(ValueError, match="notes.txt"):
        report.read_log_scalars(other)
    mixed = tmp_path / "mixed.log"
    mixed.write_text("epoch 1 iteration 2/4 loss 1.0\nepoch 1/2 done in\nepoch 2 iteration 2/8 loss 1.0\n")
    with pytest.raises(ValueError, match=r"mix epochs of \[4, 8\] iterations"):
        report.read_log_scalars(mixed)
    with pytest.raises(FileNotFoundError, match="no train.*log"):
        report.curves(str(tmp_path), output=str(tmp_path / "c.png"))


def test_progress_logger_reads_a_loss_that_still_carries_its_graph(caplog):
    """MONAI's SupervisedTrainer puts the loss tensor, graph attached, in engine.state.output: the progress line
    logs its value without torch's "requires_grad ... to a scalar" warning."""
    import logging
    import warnings

    import torch
    from ignite.engine import Engine

    from scripts.handlers import ProgressLogger

    weight = torch.tensor(2.0, requires_grad=True)
    engine = Engine(lambda e, b: {"loss": weight * 1.5})
    ProgressLogger(iteration_interval=1).attach(engine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with caplog.at_level(logging.INFO, logger="progress"):
            engine.run(range(2), max_epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert "epoch 1 iteration 2/2 loss 3.0000" in lines
    assert any(line.startswith("epoch 1/1 done in") and "loss 3.0000" in line for line in lines)


def test_progress_line_shows_the_learning_rate_the_epoch_used(caplog):
    """The LR scheduler steps at EPOCH_COMPLETED before the progress line is written; the line must show the rate
    the epoch trained with (0.05 for epoch 1 of a run starting at 0.05), not the next epoch's."""
    import logging

    import torch
    from ignite.engine import Engine, Events

    from scripts.handlers import ProgressLogger

    weight = torch.nn.Parameter(torch.zeros(1))
    engine = Engine(lambda e, b: {"loss": 1.0})
    engine.optimizer = torch.optim.SGD([weight], lr=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(engine.optimizer, lambda epoch: 0.5**epoch)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: schedule.step())  # before the logger, as in train.json
    ProgressLogger().attach(engine)
    with caplog.at_level(logging.INFO, logger="progress"):
        engine.run(range(2), max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if "done in" in r.getMessage()]
    assert "lr 0.05," in lines[0] and "lr 0.025," in lines[1], lines
