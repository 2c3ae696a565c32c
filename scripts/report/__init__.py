"""Figures and tables of a model comparison, made from the runs' own outputs (TensorBoard logs, evaluation
summaries, checkpoints): the paper's Fig. 8/9 (training loss, validation Dice), Fig. 10 (image / truth / U-Net /
EAS U-Net overlays) and Table 1 (ours beside the paper's).

    python -m scripts.report curves RUN_DIR... --names "EAS U-Net,U-Net,..." --output docs/images/curves.png
    python -m scripts.report table RUN_DIR... --names ... --output docs/results_table.md
    python -m scripts.report seeds SEED_DIR... --models eas_unet,unet --names ... --output docs/seeds.md
    python -m scripts.report dump_slices --configs ... --checkpoints ... --output slices.npz  (where the models are)
    python -m scripts.report overlays slices.npz --output docs/images/overlays.png
"""

from scripts.report.curves import curves
from scripts.report.logs import read_log_scalars, read_scalars
from scripts.report.overlays import dump_slices, overlays
from scripts.report.stats import sign_flip_p
from scripts.report.tables import PAPER_TABLE1, seeds, table

__all__ = [
    "read_scalars",
    "read_log_scalars",
    "curves",
    "table",
    "seeds",
    "sign_flip_p",
    "dump_slices",
    "overlays",
    "PAPER_TABLE1",
]
