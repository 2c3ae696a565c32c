"""Experiment tracking: `python -m monai.bundle run ... --tracking mlflow` records the run with MONAI's default
settings (an SQLite store at `<output_dir>/mlruns.db`; mlflow >= 3.13 refuses the old `file://` store), and the
TensorBoard logs that train.json writes by default hold the training loss and the validation Dice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_cli import TINY_EPOCH, as_cli

from scripts.phantom import write_phantom_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
ITERATIONS = 2  # slices_per_epoch // batch_size
EXPERIMENT = "knee_cartilage_test"

mlflow = pytest.importorskip("mlflow", reason="mlflow is in requirements-dev.txt")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    """One tiny epoch with `--tracking mlflow`, run from a scratch folder; returns its output_dir."""
    root = tmp_path_factory.mktemp("tracking")
    write_phantom_dataset(root / "phantoms", num_cases=4, shape=(16, 64, 64), num_test=0)
    output_dir = root / "eval"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(REPO_ROOT / "configs" / "train.json"),
        "--meta_file",
        str(REPO_ROOT / "configs" / "metadata.json"),
        "--logging_file",
        str(REPO_ROOT / "configs" / "logging.conf"),
        "--tracking",
        "mlflow",
        "--experiment_name",
        EXPERIMENT,
        "--dataset_dir",
        str(root / "phantoms"),
        "--output_dir",
        str(output_dir),
        "--ckpt_dir",
        str(root / "models"),
        *as_cli({**TINY_EPOCH, "slices_per_epoch": str(4 * ITERATIONS)}),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return output_dir


@pytest.mark.slow
def test_mlflow_run_has_train_loss_and_validation_metrics(tracked_run):
    from monai.utils import path_to_sqlite_uri

    store = tracked_run / "mlruns.db"
    assert store.is_file(), f"no MLflow store under {tracked_run}: {sorted(p.name for p in tracked_run.iterdir())}"
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(store))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, ITERATIONS + 1))  # one value per iteration
    assert all(m.value > 0 for m in history)
    assert {"val_mean_dice", "val_femoral_dice", "val_tibial_dice"} <= set(runs[0].data.metrics)


@pytest.mark.slow
def test_tensorboard_logs_have_train_loss_and_validation_dice(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in sorted((tracked_run / "logs").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train_loss", "val_mean_dice"} <= tags
