"""Progress lines with loss, learning rate, slices/s and ETA in plain logs, for unattended runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["ProgressLogger"]


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Mapping):
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
    if isinstance(batch, list):
        return len(batch)
    return 1


class ProgressLogger:
    """One log line per epoch (and every `iteration_interval` iterations) with loss, learning rate, slices/s and ETA,
    so an unattended run shows its progress in plain logs, not only in a progress bar.

    Args:
        iteration_interval: also log every this many iterations (0: epoch lines only).
        name: logger name.
    """

    def __init__(self, iteration_interval: int = 0, name: str = "progress") -> None:
        self.iteration_interval = int(iteration_interval)
        self.logger = logging.getLogger(name)
        self._run_start = self._epoch_start = self._last_iteration = 0.0
        self._samples = self._start_epoch = 0
        self._epoch_lr = float("nan")

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine) -> None:
        self._run_start, self._start_epoch = time.perf_counter(), engine.state.epoch  # epoch > 0 when resumed

    def _epoch_started(self, engine) -> None:
        self._epoch_start = self._last_iteration = time.perf_counter()
        self._samples = 0
        self._epoch_lr = self._lr(engine)  # the rate of this epoch: the scheduler steps before the epoch's log line

    def _loss(self, engine) -> float:
        output = engine.state.output
        if isinstance(output, list) and output:
            output = output[0]
        loss = output.get("loss") if isinstance(output, Mapping) else None
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()  # the trainer keeps the graph's loss; float() of it warns on every logged line
        return float(loss) if loss is not None else float("nan")

    def _lr(self, engine) -> float:
        optimizer = getattr(engine, "optimizer", None)
        return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else float("nan")

    def _iteration_completed(self, engine) -> None:
        self._samples += _batch_size(engine.state.batch)
        self._last_iteration = time.perf_counter()
        if self.iteration_interval and engine.state.iteration % self.iteration_interval == 0:
            self.logger.info(
                "epoch %d iteration %d/%d loss %.4f",
                engine.state.epoch,
                (engine.state.iteration - 1) % (engine.state.epoch_length or 1) + 1,
                engine.state.epoch_length or 0,
                self._loss(engine),
            )

    def _epoch_completed(self, engine) -> None:
        now = time.perf_counter()
        epoch_time = now - self._epoch_start
        done, total = engine.state.epoch, engine.state.max_epochs or engine.state.epoch
        per_epoch = (now - self._run_start) / max(done - self._start_epoch, 1)
        eta = per_epoch * (total - done)
        self.logger.info(
            "epoch %d/%d done in %.1f s: loss %.4f, lr %.3g, %.1f training slices/s, ETA %s",
            done,
            total,
            epoch_time,
            self._loss(engine),
            self._epoch_lr,
            self._samples / max(self._last_iteration - self._epoch_start, 1e-9),  # training only, not validation
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )
