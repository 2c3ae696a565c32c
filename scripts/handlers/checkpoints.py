"""What training writes and reads back: the best model (atomically, surviving a resume), the full training state,
resuming from it on the same schedule, and a refusal to train over an earlier run's models."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader, CheckpointSaver

from scripts.checks import check_state_dict, load_checkpoint, state_dict_of
from scripts.io_utils import atomic_path
from scripts.model_record import RECORD_SUFFIX, write_record

__all__ = [
    "BestModelSaver",
    "ResumeFromLatest",
    "TrainingStateSaver",
    "check_run_dir",
    "latest_checkpoint",
    "saved_states",
    "stretch_schedule",
    "track_best_metric",
]

BEST_METRIC_KEYS = ("best_metric", "best_metric_epoch")

logger = logging.getLogger(__name__)


class BestModelSaver:
    """Write the network's plain state_dict to `save_path` (atomically) whenever the evaluator's key metric reaches a
    new best. The best value lives in the evaluator's state, which the training checkpoint saves and a resume restores,
    so a resumed run never replaces a better model.pt with a worse one.

    Args:
        network: the module whose weights are saved (unwrapped, not DDP).
        save_path: the model file (`models/model.pt`).
        settings: the preprocessing the network was trained with (train.json's `preprocessing_settings`), written
            beside the model (`scripts.model_record`) so that inference can refuse other settings.
    """

    def __init__(self, network: torch.nn.Module, save_path: str, settings: Mapping[str, Any] | None = None) -> None:
        self.network, self.save_path = network, Path(save_path)
        self.settings = settings

    def attach(self, engine) -> None:
        from ignite.engine import Events

        track_best_metric(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        with atomic_path(self.save_path) as tmp:
            torch.save(self.network.state_dict(), tmp)
        if self.settings is not None:
            write_record(self.save_path, self.settings)
        logger.info(
            "saved %s (%s %.4f at epoch %d)",
            self.save_path,
            "best metric",
            engine.state.best_metric,
            engine.state.epoch,
        )


def track_best_metric(evaluator) -> None:
    """Make the evaluator's best metric part of its state_dict (MONAI keeps it out), so checkpoints carry it."""
    for key in BEST_METRIC_KEYS:
        if key not in evaluator.state_dict_user_keys:
            evaluator.state_dict_user_keys.append(key)


# what a training run and the exports of its model write into ckpt_dir (docs/export.md, "models/ layout")
RUN_FILES = ("model.pt", f"model{RECORD_SUFFIX}", "checkpoint*.pt", "model.ts", "model.onnx")


def check_run_dir(ckpt_dir: str, resume: bool = False, overwrite: bool = False, fine_tune: bool = False) -> bool:
    """Refuse to start a fresh training over the models of an earlier run in `ckpt_dir` (exit with a clear message)
    unless the user resumes it, replaces it (`overwrite`: its model, checkpoints and exports are deleted now, so that
    a later `--resume` or evaluation cannot pick up the old run's files), or fine-tunes its `model.pt` in place
    (`fine_tune`, MONAI Label: the files stay); and a resume with nothing to resume from, before any data is loaded."""
    folder = Path(ckpt_dir)
    if resume and latest_checkpoint(folder) is None:
        raise SystemExit(
            f"error: --resume True was given, but {folder} holds no checkpoint_*.pt file to resume from. Train "
            "without --resume first, or point --ckpt_dir at the folder of the run to resume."
        )
    earlier = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    if not earlier or resume or fine_tune:
        return True
    if not overwrite:
        raise SystemExit(
            f"error: {folder} already holds {', '.join(earlier[:4])} from an earlier run. Continue it with "
            "--resume True, write elsewhere with --ckpt_dir DIR, or replace it with --overwrite True."
        )
    replaced = sorted({p for pattern in RUN_FILES for p in folder.glob(pattern) if p.is_file()})
    for path in replaced:
        path.unlink()
    logger.warning(
        "overwrite: removed the earlier run's %s from %s", ", ".join(p.name for p in replaced) or "nothing", folder
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
