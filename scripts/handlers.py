"""Ignite handlers MONAI lacks: progress lines with ETA, exact resume of an interrupted training (per-epoch seeding,
full state incl. the best validation metric), and an atomic best-model saver that survives a resume."""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.handlers import CheckpointLoader, CheckpointSaver

from scripts.checks import check_state_dict, load_checkpoint, state_dict_of
from scripts.io_utils import atomic_path

__all__ = [
    "ProgressLogger",
    "saved_states",
    "EpochSeeder",
    "NoLossScalingInBFloat16",
    "OutputAsList",
    "BestModelSaver",
    "ResumeFromLatest",
    "TrainingStateSaver",
    "StopAtEpochBoundary",
    "ValidateFinalEpoch",
    "latest_checkpoint",
    "check_run_dir",
    "monailabel_server",
]

BEST_METRIC_KEYS = ("best_metric", "best_metric_epoch")

logger = logging.getLogger(__name__)


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

    def _loss(self, engine) -> float:
        output = engine.state.output
        if isinstance(output, list) and output:
            output = output[0]
        loss = output.get("loss") if isinstance(output, Mapping) else None
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
            self._lr(engine),
            self._samples / max(self._last_iteration - self._epoch_start, 1e-9),  # training only, not validation
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )


class EpochSeeder:
    """Seed every random source from (seed, epoch) when an epoch starts and restart the data iterator, so epoch k
    draws the same slices, augmentations and shuffling whether the run went straight through or was resumed at k.

    Args:
        seed: the config key `seed`.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        epoch_seed = (self.seed * 1_000_003 + engine.state.epoch) % (2**31)
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)
        dataset = getattr(engine.state.dataloader, "dataset", None)
        transform = getattr(dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=epoch_seed)
        prepare_batch = getattr(engine, "prepare_batch", None)  # the batch augmentation on the device
        if hasattr(prepare_batch, "set_random_state"):
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            prepare_batch.set_random_state(epoch_seed + 7919 * rank)  # ranks augment their slices differently
        engine.set_data(engine.state.dataloader)  # a fresh iterator: shuffling and worker seeds drawn just now


class NoLossScalingInBFloat16:
    """Give the trainer a disabled GradScaler when it trains in bfloat16 autocast.

    Why: MONAI's SupervisedTrainer creates a GradScaler whenever `amp` is on. Loss scaling exists for float16's narrow
    exponent range; bfloat16 has float32's, so the scaler only multiplies and divides by a power of two, and its
    overflow check reads a flag back from the GPU at every optimizer step, which makes the CPU wait for the step to
    finish instead of preparing the next batch meanwhile. A disabled scaler passes the loss through and calls
    `optimizer.step()` directly. Float16 autocast keeps MONAI's scaler.
    """

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)  # after Trainer.run() has created its scaler

    def __call__(self, engine) -> None:
        dtype = (getattr(engine, "amp_kwargs", None) or {}).get("dtype", torch.float16)
        if getattr(engine, "scaler", None) is not None and dtype == torch.bfloat16:
            engine.scaler = torch.amp.GradScaler("cuda", enabled=False)


class OutputAsList:
    """Wrap the trainer's output dict in a one-element list after every iteration, the layout of a decollated output
    that MONAI's loggers read (`from_engine(["loss"], first=True)`: TensorBoard, MLflow, StatsHandler).

    Why: the trainer runs with `decollate: false`. MONAI's decollation turns the 0-dim loss into a Python float
    (`.item()`), which makes the CPU wait for the GPU at every iteration instead of queueing the next step; nothing
    in training needs per-sample outputs. Attach it before the loggers (handlers of one event run in order).
    """

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        if isinstance(engine.state.output, Mapping):
            engine.state.output = [engine.state.output]


class FoldBatchNorms:
    """Fold the network's batch norms into its convolutions when the evaluator starts, i.e. after the checkpoint
    loader (attach this handler after it), so inference skips 43 full passes per slice with the same logits up to float
    rounding (`scripts.networks.fold_batch_norms`). The weights on disk are not touched.

    Args:
        network: the module the checkpoint is loaded into.
        enabled: the config key `fold_batch_norm`.
    """

    def __init__(self, network: torch.nn.Module, enabled: bool = True) -> None:
        self.network, self.enabled = network, bool(enabled)
        self.logger = logging.getLogger(__name__)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.enabled:
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        from scripts.networks import fold_batch_norms

        net = self.network.module if hasattr(self.network, "module") else self.network  # DDP / DataParallel
        net.eval()
        folded = fold_batch_norms(net)
        self.logger.info("folded %d batch norms into their convolutions for inference", folded)


class BestModelSaver:
    """Write the network's plain state_dict to `save_path` (atomically) whenever the evaluator's key metric reaches a
    new best. The best value lives in the evaluator's state, which the training checkpoint saves and a resume restores,
    so a resumed run never replaces a better model.pt with a worse one.

    Args:
        network: the module whose weights are saved (unwrapped, not DDP).
        save_path: the model file (`models/model.pt`).
    """

    def __init__(self, network: torch.nn.Module, save_path: str) -> None:
        self.network, self.save_path = network, Path(save_path)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        track_best_metric(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        with atomic_path(self.save_path) as tmp:
            torch.save(self.network.state_dict(), tmp)
        logger.info(
            "saved %s (%s %.4f at epoch %d)",
            self.save_path,
            "best metric",
            engine.state.best_metric,
            engine.state.epoch,
        )


class ValidateFinalEpoch:
    """Validate once more after the last epoch of the schedule when `interval` does not divide `max_epochs`, so that
    every completed training has validated its final weights and written `models/model.pt` if they are the best.

    Why: MONAI's ValidationHandler validates only every `interval` epochs; a MONAI Label train request sets
    `max_epochs` alone (e.g. 1 or 3 with the default `val_interval` 5) and its training would otherwise end without
    any model.pt for the infer task to load. A training stopped early at an epoch boundary (`stop_after_epoch`,
    `time_limit`) is not validated here: it will be resumed, and the resumed run validates on the schedule, as an
    uninterrupted run does. It runs at the end of the last epoch, after ValidationHandler and before the training
    state is saved (attach it between the two), so the saved state holds the final best metric. Under
    torch.distributed every rank runs it (the validation is distributed), like ValidationHandler.

    Args:
        validator: the evaluator that ValidationHandler runs.
        interval: ValidationHandler's interval in epochs.
        enabled: False turns it off (the speed benchmark times a training loop without validation).
    """

    def __init__(self, validator: Any, interval: int, enabled: bool = True) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval ({interval}) must be >= 1 epoch")
        self.validator, self.interval, self.enabled = validator, int(interval), bool(enabled)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.enabled:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        epoch = engine.state.epoch
        if epoch != engine.state.max_epochs or epoch % self.interval == 0:
            return  # not the last epoch, or ValidationHandler has just validated it
        logger.info("validating the final epoch %d (val_interval %d does not divide it)", epoch, self.interval)
        self.validator.run(epoch)


def track_best_metric(evaluator) -> None:
    """Make the evaluator's best metric part of its state_dict (MONAI keeps it out), so checkpoints carry it."""
    for key in BEST_METRIC_KEYS:
        if key not in evaluator.state_dict_user_keys:
            evaluator.state_dict_user_keys.append(key)


def monailabel_server(environ: Mapping[str, str] | None = None) -> bool:
    """True when the bundle runs under a MONAI Label server, whose `start_server` exports its settings as environment
    variables (`MONAI_LABEL_APP_DIR` is the app folder). MONAI Label's datastore holds labels in the bundle's own
    classes (0, 1 femoral, 2 tibial cartilage) and it fine-tunes `models/model.pt` in place, so `train.json` then reads
    labels with the `cartilage` preset and lets training write into a `models/` that holds earlier files."""
    app_dir = (os.environ if environ is None else environ).get("MONAI_LABEL_APP_DIR", "")
    if app_dir:
        logger.info(
            "MONAI Label server detected (MONAI_LABEL_APP_DIR=%s): labels are read as the bundle's classes "
            "(label_preset 'cartilage'), and training may write into a models/ folder that holds earlier files",
            app_dir,
        )
    return bool(app_dir)


def check_run_dir(ckpt_dir: str, resume: bool = False, overwrite: bool = False) -> bool:
    """Refuse to start a fresh training over the models of an earlier run in `ckpt_dir` (exit with a clear message)
    unless the user resumes it or sets `overwrite`, and a resume with nothing to resume from, before any data is
    loaded."""
    folder = Path(ckpt_dir)
    if resume and latest_checkpoint(folder) is None:
        raise SystemExit(
            f"error: --resume True was given, but {folder} holds no checkpoint_*.pt file to resume from. Train "
            "without --resume first, or point --ckpt_dir at the folder of the run to resume."
        )
    earlier = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    if earlier and not resume and not overwrite:
        raise SystemExit(
            f"error: {folder} already holds {', '.join(earlier[:4])} from an earlier run. Continue it with "
            "--resume True, write elsewhere with --ckpt_dir DIR, or replace it with --overwrite True."
        )
    return True


def saved_states(folder: str | Path, prefix: str = "checkpoint") -> list[tuple[int, Path]]:
    """(epoch, file) of the states CheckpointSaver(file_prefix=prefix) wrote in `folder`, oldest first."""
    pattern = re.compile(rf"{re.escape(prefix)}.*?=(\d+)\.pt$")
    return sorted((int(m.group(1)), p) for p in Path(folder).glob(f"{prefix}*.pt") if (m := pattern.search(p.name)))


def latest_checkpoint(folder: str | Path, prefix: str = "checkpoint") -> Path | None:
    """The checkpoint with the highest epoch number written by CheckpointSaver(file_prefix=prefix), or None."""
    found = saved_states(folder, prefix)
    return found[-1][1] if found else None


class ResumeFromLatest:
    """Resume training from the newest `checkpoint_*.pt` in `load_dir` (model, optimizer, scheduler, and the
    trainer's epoch and iteration) when `enabled`; a clear error when resuming is asked for but nothing was saved.

    Args:
        load_dir: folder that CheckpointSaver writes the latest state to.
        load_dict: objects to restore, as given to CheckpointSaver.
        enabled: the config key `resume`.
        map_location: where to load tensors (the training device).
        prefix: CheckpointSaver's `file_prefix`.
    """

    def __init__(
        self,
        load_dir: str,
        load_dict: Mapping[str, Any],
        enabled: bool = False,
        map_location: Any = None,
        prefix: str = "checkpoint",
    ) -> None:
        self.load_dir, self.load_dict, self.enabled = Path(load_dir), dict(load_dict), bool(enabled)
        self.map_location, self.prefix = map_location, prefix

    def attach(self, engine) -> None:
        if not self.enabled:
            return
        path = latest_checkpoint(self.load_dir, self.prefix)
        if path is None:
            raise FileNotFoundError(
                f"resume was requested but {self.load_dir} holds no {self.prefix}_*.pt file; train without "
                "--resume first, or point ckpt_dir at the run to resume"
            )
        logger.info("resuming from %s", path)
        if isinstance(self.load_dict.get("model"), torch.nn.Module):  # a clear message, not load_state_dict's dump
            check_state_dict(state_dict_of(load_checkpoint(path)), self.load_dict["model"], str(path))
        load_dict = {**self.load_dict, "trainer": engine}  # the trainer state restores epoch and iteration
        if "validator" in load_dict:
            track_best_metric(load_dict["validator"])
        scheduler = self.load_dict.get("lr_scheduler")
        configured = getattr(scheduler, "total_iters", None)
        CheckpointLoader(str(path), load_dict, map_location=self.map_location, strict=True).attach(engine)
        if configured is not None:  # after the loader: handlers of one event run in the order they were added
            from ignite.engine import Events

            engine.add_event_handler(Events.STARTED, lambda _: stretch_schedule(scheduler, configured, path))


def stretch_schedule(scheduler: Any, total_iters: int, path: Path | str) -> None:
    """Give a restored LR schedule the length this run asks for (`max_epochs`), and set the learning rate to where
    the new schedule stands.

    Why: the checkpoint restores the schedule of the run that saved it; a run resumed with a larger `max_epochs`
    would otherwise keep that schedule's end, e.g. a learning rate of 0 for every added epoch of a finished
    polynomial schedule, and train nothing without a word. An interrupted run resumed with its own `max_epochs`
    is untouched.
    """
    restored = scheduler.total_iters
    if restored == total_iters:
        return
    if not isinstance(scheduler, torch.optim.lr_scheduler.PolynomialLR):
        raise ValueError(
            f"{path} holds a {type(scheduler).__name__} of {restored} epochs, this run asks for {total_iters} "
            "(max_epochs), and only a PolynomialLR schedule (train.json's) can be stretched: resume with the "
            "max_epochs of the saved run"
        )
    scheduler.total_iters = total_iters
    # PolynomialLR's closed form from its public attributes; its chained update continues from the lr set here
    done = min(total_iters, scheduler.last_epoch) / total_iters
    for group, base_lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base_lr * (1.0 - done) ** scheduler.power
    if hasattr(scheduler, "_last_lr"):  # what get_last_lr() reports until the next step (a private attribute)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    logger.warning(
        "%s was saved with a learning-rate schedule of %d epochs; this run has max_epochs %d, so the schedule is "
        "stretched to %d epochs and training continues after epoch %d at learning rate %s",
        path,
        restored,
        total_iters,
        total_iters,
        scheduler.last_epoch,
        ", ".join(f"{group['lr']:.3g}" for group in scheduler.optimizer.param_groups),
    )


class TrainingStateSaver(CheckpointSaver):
    """CheckpointSaver that also saves the engine it is attached to (epoch, iteration), so `ResumeFromLatest` can
    continue an interrupted run (a config cannot name the trainer inside the trainer's own handler list), and the
    validator's best metric when a `validator` is in `save_dict`."""

    def attach(self, engine) -> None:
        self.save_dict["trainer"] = engine  # the same dict object the internal ignite Checkpoint saves
        if "validator" in self.save_dict:
            track_best_metric(self.save_dict["validator"])
        super().attach(engine)
        if self._interval_checkpoint is not None and self.epoch_level:  # after the saver's own handler (added first)
            from ignite.engine import Events

            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self._remove_older_states)

    def _remove_older_states(self, engine) -> None:
        """Keep `n_saved` for a resumed run too: ignite only rotates the files its own process wrote, so the state a
        run was resumed from (tens of MB) would stay beside the newer one for good. Removed only once a newer state
        of this run is on disk."""
        saver = self._interval_checkpoint
        found = saved_states(self.save_dir, saver.filename_prefix)
        if not found or found[-1][0] != engine.state.epoch:
            return
        for _, path in found[: -max(1, saver.n_saved or 1)]:
            path.unlink(missing_ok=True)
            logger.info("removed %s: a newer training state is saved", path.name)


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
