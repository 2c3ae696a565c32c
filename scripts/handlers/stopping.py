"""A clean stop at an epoch boundary (after epoch N, or before a wall-clock limit), with the state saved to resume."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

__all__ = ["StopAtEpochBoundary", "process_start_time"]

logger = logging.getLogger(__name__)


class StopAtEpochBoundary:
    """Stop a training cleanly at the end of an epoch, after its state is saved, so that `--resume True` continues it
    on the same learning-rate schedule: after epoch `stop_after_epoch` of `max_epochs`, or before an epoch that would
    run past `time_limit` seconds from this process's start (a cluster job's wall-clock limit, a lent machine's; the
    set-up before training, data caching included, counts).

    Why: a job killed by its time limit loses the epoch it was in and may die while a checkpoint is being written;
    lowering `max_epochs` instead would change the polynomial schedule and so the weights. Attach it after the
    validation and state-saving handlers (handlers of one event run in the order they were added). The next epoch's
    length is estimated as the longest epoch since the second of this process (the first may include compilation),
    including its validation once a validated epoch is among them: before the first validation of this process the
    estimate does not know the validation's time, so leave that much margin. A run resumed past `stop_after_epoch`
    is not stopped again, so the same command with `--resume True` continues to `max_epochs`. Under
    torch.distributed every rank takes rank 0's decision, so no rank waits for the others in a collective they never
    reach.

    Args:
        stop_after_epoch: stop after this epoch (0: never); no effect once it is >= max_epochs.
        time_limit: seconds from this process's start (0: no limit).
    """

    def __init__(self, stop_after_epoch: int = 0, time_limit: float = 0) -> None:
        if stop_after_epoch < 0 or time_limit < 0:
            raise ValueError(
                f"stop_after_epoch ({stop_after_epoch}) and time_limit ({time_limit}) must be >= 0 (0 turns it off)"
            )
        self.stop_after_epoch, self.time_limit = int(stop_after_epoch), float(time_limit)
        self._process_start = process_start_time()
        self._last = 0.0
        self._epoch_seconds: list[float] = []

    def attach(self, engine) -> None:
        if not self.stop_after_epoch and not self.time_limit:
            return
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, engine) -> None:
        self._last = time.time()
        self._epoch_seconds = []

    def reason_to_stop(self, epoch: int, max_epochs: int, now: float) -> str:
        """Why training should stop after `epoch` ('' to go on); `now` is time.time()."""
        self._epoch_seconds.append(now - self._last)
        self._last = now
        if epoch >= max_epochs:
            return ""
        if self.stop_after_epoch and epoch == self.stop_after_epoch:
            return f"stop_after_epoch is {self.stop_after_epoch}"
        if self.time_limit:
            elapsed = now - self._process_start
            next_epoch = max(self._epoch_seconds[1:] or self._epoch_seconds)
            if elapsed + next_epoch > self.time_limit:
                return (
                    f"time_limit is {self.time_limit:.0f} s: {elapsed:.0f} s have passed and an epoch takes up to "
                    f"{next_epoch:.0f} s"
                )
        return ""

    def __call__(self, engine) -> None:
        epoch, max_epochs = engine.state.epoch, engine.state.max_epochs or engine.state.epoch
        reason = self.reason_to_stop(epoch, max_epochs, time.time())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            reason = _rank_zero_choice(reason)
        if reason:
            logger.warning(
                "stopping after epoch %d of %d (%s); the state of epoch %d is saved: run the same command with "
                "--resume True to continue the same schedule",
                epoch,
                max_epochs,
                reason,
                epoch,
            )
            engine.terminate()


def process_start_time() -> float:
    """When this process started (seconds since the epoch), from /proc on Linux; elsewhere, now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _rank_zero_choice(reason: str) -> str:
    """Rank 0's `reason` on every rank (a one-element broadcast on the backend's device)."""
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    choice = [reason]
    dist.broadcast_object_list(choice, src=0, device=device)
    return str(choice[0])
