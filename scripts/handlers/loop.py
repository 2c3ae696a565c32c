"""Handlers that shape the training and evaluation loops: per-epoch seeding for exact resumes, no loss scaling in
bfloat16, loss outputs that keep the loop free of host syncs, batch-norm folding for inference, and a validation of
the final epoch."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["EpochSeeder", "NoLossScalingInBFloat16", "OutputAsList", "FoldBatchNorms", "ValidateFinalEpoch"]

logger = logging.getLogger(__name__)


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
