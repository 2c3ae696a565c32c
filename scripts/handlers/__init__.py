"""Ignite handlers MONAI lacks, referenced from the configs as `scripts.handlers.<name>`: progress lines with ETA
(`progress`), the loop's own adjustments (`loop`), exact resume of an interrupted training with an atomic best-model
saver that survives it (`checkpoints`), a clean stop at an epoch boundary (`stopping`), and MONAI Label detection
(`server`)."""

from scripts.handlers.checkpoints import (
    BestModelSaver,
    ResumeFromLatest,
    TrainingStateSaver,
    check_run_dir,
    latest_checkpoint,
    saved_states,
    stretch_schedule,
    track_best_metric,
)
from scripts.handlers.loop import EpochSeeder, FoldBatchNorms, NoLossScalingInBFloat16, OutputAsList, ValidateFinalEpoch
from scripts.handlers.progress import ProgressLogger
from scripts.handlers.server import monailabel_server
from scripts.handlers.stopping import StopAtEpochBoundary, process_start_time

__all__ = [
    "BestModelSaver",
    "EpochSeeder",
    "FoldBatchNorms",
    "NoLossScalingInBFloat16",
    "OutputAsList",
    "ProgressLogger",
    "ResumeFromLatest",
    "StopAtEpochBoundary",
    "TrainingStateSaver",
    "ValidateFinalEpoch",
    "check_run_dir",
    "latest_checkpoint",
    "monailabel_server",
    "process_start_time",
    "saved_states",
    "stretch_schedule",
    "track_best_metric",
]
