"""Training curves read back from a run: TensorBoard event files, or the console logs where those were not kept."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series (tag -> [(step, value)]) of the TensorBoard event files under `log_dir`.

    A resumed training writes a new event file that repeats the steps its interrupted predecessor logged after the
    last saved checkpoint; for a step logged twice the value of the later file (by its write time) is kept, so the
    curve is the one the finished model went through."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"), key=_event_file_time)
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files under {log_dir}")
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, {}).update((e.step, e.value) for e in acc.Scalars(tag))
    return {tag: sorted(values.items()) for tag, values in series.items()}


def _event_file_time(path: Path) -> tuple[float, str]:
    """Write time of an event file from its name (`events.out.tfevents.<unix time>.<host>...`), then the name."""
    parts = path.name.split(".")
    try:
        return float(parts[3]), path.name
    except (IndexError, ValueError):
        return float("inf"), path.name


_LOG_LOSS = re.compile(r"\bepoch (\d+) iteration (\d+)/(\d+) loss ([-+0-9.einfa]+)")  # scripts.handlers.ProgressLogger


_LOG_METRICS = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)")  # MONAI's StatsHandler


_LOG_EPOCH_DONE = re.compile(r"\bepoch (\d+)/\d+ done in")


def read_log_scalars(
    *log_files: str | Path, iterations_per_epoch: int | None = None
) -> dict[str, list[tuple[int, float]]]:
    """The curves' series from a training's console logs (`train.log`; the parts of a resumed run in order), for runs
    whose TensorBoard files were not kept: `train_loss` at the iterations the progress handler logged (a sample, one
    every `iteration_interval` iterations, not every one) of the epochs that finished, and each validation metric per
    epoch. As in `read_scalars`, a step logged again by a later file (a resumed run repeating an epoch) keeps the
    later value; an epoch cut off by a stop contributes no loss, so no epoch's mean rests on a few early samples.
    The loss lines state the epoch length; `iterations_per_epoch`, if given, must match it (a caller that bins the
    steps into epochs with another length would put the losses in the wrong epochs)."""
    series: dict[str, dict[int, float]] = {}
    loss_epochs: dict[int, int] = {}  # step -> epoch of each loss sample
    finished: set[int] = set()
    lengths: set[int] = set()
    for path in log_files:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no training log at {path}")
        for line in path.read_text(errors="replace").splitlines():
            if loss := _LOG_LOSS.search(line):
                epoch, iteration, length, value = loss.groups()
                step = (int(epoch) - 1) * int(length) + int(iteration)
                lengths.add(int(length))
                series.setdefault("train_loss", {})[step] = float(value)
                loss_epochs[step] = int(epoch)
            elif done := _LOG_EPOCH_DONE.search(line):
                finished.add(int(done.group(1)))
            elif metrics := _LOG_METRICS.search(line):
                for tag, value in re.findall(r"(\w+): ([-+0-9.einfa]+)", metrics.group(2)):
                    series.setdefault(tag, {})[int(metrics.group(1))] = float(value)
    names = ", ".join(map(str, log_files))
    if len(lengths) > 1:
        raise ValueError(f"{names} mix epochs of {sorted(lengths)} iterations: not one training's logs")
    if iterations_per_epoch is not None and lengths and lengths != {iterations_per_epoch}:
        raise ValueError(
            f"{names} have epochs of {sorted(lengths)} iterations, not {iterations_per_epoch}:"
            f" pass --iterations_per_epoch {lengths.pop()}"
        )
    if "train_loss" in series:
        series["train_loss"] = {k: v for k, v in series["train_loss"].items() if loss_epochs[k] in finished}
    series = {tag: values for tag, values in series.items() if values}
    if not series:
        raise ValueError(f"no loss or validation lines in {names} (not a training log?)")
    return {tag: sorted(values.items()) for tag, values in series.items()}


def _run_scalars(run: Path, log_subdir: str, iterations_per_epoch: int) -> dict[str, list[tuple[int, float]]]:
    """A run folder's series: its TensorBoard files, else its console logs (`train*.log`, in name order)."""
    if any((run / log_subdir).rglob("events.out.tfevents.*")):
        return read_scalars(run / log_subdir)
    logs = sorted(run.glob("train*.log"))
    if not logs:
        raise FileNotFoundError(f"no TensorBoard event files under {run / log_subdir} and no train*.log in {run}")
    return read_log_scalars(*logs, iterations_per_epoch=iterations_per_epoch)


def _per_epoch(values: list[tuple[int, float]], iterations_per_epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of an iteration-level series per epoch (iterations are 1-based)."""
    steps = np.array([s for s, _ in values])
    vals = np.array([v for _, v in values])
    epochs = (steps - 1) // iterations_per_epoch + 1
    keys = np.unique(epochs)
    return keys, np.array([vals[epochs == k].mean() for k in keys])
