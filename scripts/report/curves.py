"""The paper's Fig. 8 and 9: training loss per epoch and validation Dice per validation, one line per run."""

from __future__ import annotations

from pathlib import Path

from scripts.io_utils import atomic_path
from scripts.report.common import _names
from scripts.report.logs import _per_epoch, _run_scalars


def curves(
    *run_dirs: str,
    names: str | None = None,
    output: str = "docs/images/curves.png",
    iterations_per_epoch: int = 250,
    log_subdir: str = "logs",
) -> str:
    """Training loss per epoch and validation Dice per validation, one line per run (the paper's Fig. 8 and 9), from
    each run's TensorBoard logs, or from its console logs (`train*.log`) where those were not kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = _names(names, run_dirs)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run, label in zip(run_dirs, labels):
        scalars = _run_scalars(Path(run), log_subdir, iterations_per_epoch)
        if "train_loss" in scalars:
            ep, loss = _per_epoch(scalars["train_loss"], iterations_per_epoch)
            axes[0].plot(ep, loss, label=label)
        for ax, tag in ((axes[1], "val_femoral_dice"), (axes[2], "val_tibial_dice")):
            if tag in scalars:
                ax.plot([s for s, _ in scalars[tag]], [v for _, v in scalars[tag]], marker="o", label=label)
    titles = ("training loss (Dice + CE, deep supervision)", "validation Dice, femoral", "validation Dice, tibial")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return output
