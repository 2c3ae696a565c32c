"""Speed and memory of EAS U-Net against MONAI's BasicUNet at the same widths, in one run on one device.

Measurements (each a function returning result rows; `run` composes them):

- `floor`: the two ceilings of the device, measured in this run (a large matrix product per precision, a large
  device-to-device copy), and per model the FLOPs of one 2D slice (forward; forward + deep-supervision loss +
  backward) and the minimum bytes a training / inference slice must move. Every timing below is reported against
  the floor `max(FLOPs / matmul rate, minimum bytes / copy bandwidth)`.
- `train_step` (a): model + `DeepSupervisionLoss(DiceCELoss)` + SGD step on random inputs and random labels,
  batch 16 of 1x384x384; slices/s and peak GPU memory.
- `volume` (b): eval-mode model over a 160x384x384 volume in chunks of `sw_batch_size` slices, and the same through
  MONAI's `SliceInferer` (its own overhead visible); seconds per volume.
- `inference` (c): `configs/inference.json` run by `monai.bundle.ConfigWorkflow` on a phantom NIfTI (load,
  preprocess, infer, invert, save), after a warm-up run; seconds per volume, with a breakdown.
- `train_loop` (d): `configs/train.json` run by `ConfigWorkflow` (SupervisedTrainer, CacheDataset, the real
  transforms) on phantom volumes; slices/s after the first epoch, as a percentage of (a), plus the data loader's
  own throughput without the model.
- `agreement`: bf16 against fp32 predictions of the same model on phantom test volumes (voxels that differ, Dice
  between the two label maps, and the change of Dice against the phantom labels).

Variants are written as `+`-joined tokens: `fp32` or `bf16` (autocast), `cl` (channels_last), `compile` or
`compile=MODE` (torch.compile), `det` (cuDNN deterministic algorithms, as `monai.utils.set_determinism` sets),
`nwN` (data loader workers, train_loop only), `bench` (cuDNN autotuning, inference only), `measure` (inference.json's
cartilage measurements, inference only; off by default, see `Variant`).

One module per measurement (`floor`, `step`, `volume`, `inference`, `loop`, `agreement`), `plan` (what a run
measures on a device), `report` (ratios, floors, targets, the table) and `runner` (`run`, which composes them).

Command line (the docstring of `run` is the help):
    python -m scripts.benchmark                                  # the default set for the device found
    python -m scripts.benchmark --only train_step,volume --device cuda --output bench.json
    python -m scripts.benchmark --quick --device cpu             # tiny sizes (tests, CI)
"""

from scripts.benchmark.agreement import measure_agreement
from scripts.benchmark.common import MEASUREMENTS, MODELS, Variant, build_model, time_calls
from scripts.benchmark.floor import count_model, measure_ceilings
from scripts.benchmark.inference import measure_inference, workflow_runs
from scripts.benchmark.loop import measure_train_loop
from scripts.benchmark.phantoms import ensure_phantoms
from scripts.benchmark.plan import Plan, default_plan
from scripts.benchmark.report import format_table, recorded_command
from scripts.benchmark.runner import run
from scripts.benchmark.step import make_train_step, measure_train_step
from scripts.benchmark.volume import measure_volume

__all__ = [
    "MEASUREMENTS",
    "MODELS",
    "Plan",
    "Variant",
    "build_model",
    "count_model",
    "default_plan",
    "ensure_phantoms",
    "format_table",
    "make_train_step",
    "measure_agreement",
    "measure_ceilings",
    "measure_inference",
    "measure_train_loop",
    "measure_train_step",
    "measure_volume",
    "recorded_command",
    "run",
    "time_calls",
    "workflow_runs",
]
