"""Figures and tables of a model comparison, made from the runs' own outputs (TensorBoard logs, evaluation
summaries, checkpoints): the paper's Fig. 8/9 (training loss, validation Dice), Fig. 10 (image / truth / U-Net /
EAS U-Net overlays) and Table 1 (ours beside the paper's).

    python -m scripts.report curves RUN_DIR... --names "EAS U-Net,U-Net,..." --output docs/images/curves.png
    python -m scripts.report table RUN_DIR... --names ... --output docs/results_table.md
    python -m scripts.report seeds SEED_DIR... --models eas_unet,unet --names ... --output docs/seeds.md
    python -m scripts.report dump_slices --configs ... --checkpoints ... --output slices.npz  (where the models are)
    python -m scripts.report overlays slices.npz --output docs/images/overlays.png
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.datalist import subject_id
from scripts.io_utils import atomic_path, atomic_write_text

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

#: The seed paper's Table 1 (test set; %, HD in mm).
PAPER_TABLE1: dict[tuple[str, str], tuple[float, float, float, float]] = {
    ("femoral cartilage", "U-Net"): (89.13, 90.54, 88.32, 8.13),
    ("femoral cartilage", "U-Net++"): (89.40, 90.68, 89.74, 7.53),
    ("femoral cartilage", "Attention U-Net"): (89.17, 90.58, 89.95, 7.26),
    ("femoral cartilage", "EAS U-Net"): (90.37, 91.69, 90.27, 6.34),
    ("tibial cartilage", "U-Net"): (88.26, 87.94, 89.36, 5.46),
    ("tibial cartilage", "U-Net++"): (88.97, 88.23, 88.69, 5.58),
    ("tibial cartilage", "Attention U-Net"): (88.29, 88.14, 90.20, 5.14),
    ("tibial cartilage", "EAS U-Net"): (89.90, 89.09, 90.37, 4.34),
}


def _names(names: str | Sequence[str] | None, runs: Sequence[str]) -> list[str]:
    if names is None:
        return [Path(r).name for r in runs]
    out = names.split(",") if isinstance(names, str) else list(names)
    if len(out) != len(runs):
        raise ValueError(f"{len(out)} names for {len(runs)} runs")
    return [n.strip() for n in out]


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


def _fmt(stats: dict[str, Any], scale: float) -> str:
    if not stats or not stats.get("n"):
        return "n/a"
    sd = stats.get("sd", math.nan)
    return f"{stats['mean'] * scale:.2f}" + ("" if sd is None or math.isnan(sd) else f" ± {sd * scale:.2f}")


def table(*run_dirs: str, names: str | None = None, output: str | None = None, summary: str = "evaluation") -> str:
    """Markdown Table 1: per structure and model, ours in both protocols beside the paper's numbers."""
    labels = _names(names, run_dirs)
    rows = [
        "| structure | model | protocol | DSC/% | Precision/% | Recall/% | HD/mm | HD95/mm | ASSD/mm | n | empty pred |"
        " paper DSC / Prec / Rec / HD |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summaries = {
        label: json.loads((Path(r) / summary / "summary.json").read_text()) for r, label in zip(run_dirs, labels)
    }
    for structure in ("femoral cartilage", "tibial cartilage"):
        for label in labels:
            paper = PAPER_TABLE1.get((structure, label))
            paper_cell = " / ".join(f"{v:.2f}" for v in paper) if paper else "-"
            for entry in summaries[label]:
                if entry["class"] != structure:
                    continue
                cells = [_fmt(entry[m], 100.0) for m in ("dice", "precision", "recall")]
                cells += [_fmt(entry[m], 1.0) for m in ("hd", "hd95", "assd")]
                rows.append(
                    f"| {structure} | {label} | {entry['protocol']} | "
                    + " | ".join(cells)
                    + f" | {entry['n']} | {entry['empty_pred']} | {paper_cell} |"
                )
    text = "\n".join(rows) + "\n"
    if output:
        atomic_write_text(output, text)
    return text


STRUCTURES = ("femoral cartilage", "tibial cartilage")


def _summary_means(run_dir: Path, summary: str) -> dict[tuple[str, str], dict[str, float]]:
    """(protocol, structure) -> metric -> mean, from a run's evaluation summary.json."""
    path = run_dir / summary / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation summary at {path} (run configs/evaluate.json for this model first)")
    out: dict[tuple[str, str], dict[str, float]] = {}
    for entry in json.loads(path.read_text()):
        stats = {m: v["mean"] for m, v in entry.items() if isinstance(v, dict) and v.get("n")}
        out[(entry["protocol"], entry["class"])] = stats
    return out


def _per_case_dice(run_dir: Path, summary: str) -> dict[tuple[str, str], float]:
    """(case, structure) -> 3D Dice of one run, from its metrics_volume.csv."""
    path = run_dir / summary / "metrics_volume.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no per-case metrics at {path}")
    with path.open(newline="") as f:
        return {(row["case"], row["class"]): float(row["dice"]) for row in csv.DictReader(f)}


def sign_flip_p(differences: Sequence[float], draws: int = 100_000, seed: int = 0) -> float:
    """Two-sided p of a paired sign-flip permutation test of "mean difference 0": the share of the 2^n sign patterns
    whose |mean| reaches the observed one, exact up to n = 24 (all 2^24 patterns of a 24-subject cross-validation,
    in chunks), beyond that estimated from `draws` random patterns as (hits + 1) / (draws + 1), never 0.

    Why this test: it assumes only differences symmetric about 0 under the null, no normality, and with n
    independent units its smallest possible p is 2 / 2^n, which states plainly what a test set of n subjects can
    and cannot show (4 subjects: never below 0.125).
    """
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        raise ValueError("no paired differences to test")
    n = d.size
    threshold = abs(d.mean()) * n - 1e-12 * max(1.0, abs(d.sum()))  # compare |sum|: no division per pattern
    if n > 24:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(draws, n))
        return float((np.count_nonzero(np.abs(signs @ d) >= threshold) + 1) / (draws + 1))
    hits, chunk = 0, 1 << min(n, 20)
    bits = np.arange(n)
    for first in range(0, 1 << n, chunk):
        signs = 1.0 - 2.0 * ((np.arange(first, first + chunk)[:, None] >> bits) & 1)
        hits += np.count_nonzero(np.abs(signs @ d) >= threshold)
    return hits / (1 << n)


def _p_text(p: float) -> str:
    """0.125 as 0.125, 1.19e-07 as 1.2e-07 (a 24-subject floor would print as 0.000)."""
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.2g}"


def seeds(
    *seed_dirs: str,
    models: str = "eas_unet,unet,unetplusplus,attention_unet",
    names: str | None = None,
    reference: str = "eas_unet",
    seed_names: str | None = None,
    summary: str = "evaluation",
    output: str | None = None,
) -> str:
    """Markdown: each model's test scores per seed, their mean and range, and the reference model paired per test
    volume against every other model over all seeds (how often it is lower, by how much on average and at the
    extremes), and per subject, the independent unit (visits and seeds of one subject averaged), with a sign-flip
    test's p (`sign_flip_p`): volumes of one subject and seeds on one test set are not independent samples.

    Args:
        seed_dirs: one folder per seed (a `real_anatomy.sh` OUT_DIR), each with one sub-folder per model.
        models: the model sub-folders, ','-separated; `names` their display names in the same order.
        reference: the model sub-folder that is compared with every other one, volume by volume.
        seed_names: display names of the seed folders (default: the folder names).
        summary: the evaluation folder inside each model folder.
        output: also write the markdown there (atomically).
    """
    if not seed_dirs:
        raise ValueError("no seed folders given")
    keys = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    labels = dict(zip(keys, _names(names, keys)))
    if reference not in keys:
        raise ValueError(f"reference {reference!r} is not among the models {keys}")
    seed_labels = _names(seed_names, seed_dirs)
    means = {(s, m): _summary_means(Path(d) / m, summary) for s, d in zip(seed_labels, seed_dirs) for m in keys}
    cases = {(s, m): _per_case_dice(Path(d) / m, summary) for s, d in zip(seed_labels, seed_dirs) for m in keys}

    per_seed = " / ".join(seed_labels)
    rows = [
        f"| structure | model | volume DSC/% ({per_seed}) | mean | range | paper DSC/% ({per_seed}) | mean |"
        f" volume HD95/mm ({per_seed}) | mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for structure in STRUCTURES:
        for m in keys:
            vol = [100 * means[(s, m)][("volume", structure)]["dice"] for s in seed_labels]
            pap = [100 * means[(s, m)][("paper", structure)]["dice"] for s in seed_labels]
            hd95 = [means[(s, m)][("volume", structure)].get("hd95", math.nan) for s in seed_labels]
            rows.append(
                f"| {structure} | {labels[m]} | {' / '.join(f'{v:.2f}' for v in vol)} | {np.mean(vol):.2f} |"
                f" {max(vol) - min(vol):.2f} | {' / '.join(f'{v:.2f}' for v in pap)} | {np.mean(pap):.2f} |"
                f" {' / '.join(f'{v:.2f}' for v in hd95)} | {np.mean(hd95):.2f} |"
            )
    ref = labels[reference]
    rows += [
        "",
        f"| structure | {ref} against | volumes where {ref} is lower | mean difference/points |"
        " range over volumes/points |"
        f" per seed ({per_seed}) | subjects where {ref} is lower | p (sign-flip over subjects; smallest possible) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for structure in STRUCTURES:
        for m in keys:
            if m == reference:
                continue
            diffs_by_seed = []
            by_subject: dict[str, list[float]] = {}
            for s in seed_labels:
                ours, theirs = cases[(s, reference)], cases[(s, m)]
                shared = sorted(k for k in ours if k[1] == structure and k in theirs)
                if not shared:
                    raise ValueError(f"seed {s}: {reference} and {m} share no test volume for {structure}")
                diffs_by_seed.append([100 * (ours[k] - theirs[k]) for k in shared])
                for k in shared:
                    by_subject.setdefault(subject_id(k[0]), []).append(100 * (ours[k] - theirs[k]))
            flat = [d for ds in diffs_by_seed for d in ds]
            subjects = [float(np.mean(v)) for v in by_subject.values()]
            p, smallest = sign_flip_p(subjects), min(1.0, 2 / 2 ** len(subjects))
            rows.append(
                f"| {structure} | {labels[m]} | {sum(d < 0 for d in flat)} of {len(flat)} | {np.mean(flat):+.2f} |"
                f" {min(flat):+.2f} to {max(flat):+.2f} |"
                f" {' / '.join(f'{np.mean(ds):+.2f}' for ds in diffs_by_seed)} |"
                f" {sum(d < 0 for d in subjects)} of {len(subjects)} | {_p_text(p)} ({_p_text(smallest)}) |"
            )
    text = "\n".join(rows) + "\n"
    if output:
        atomic_write_text(output, text)
    return text


def dump_slices(
    configs: str,
    checkpoints: str,
    names: str,
    output: str = "slices.npz",
    cases: int = 2,
    split: str = "test",
    overrides: str = "{}",
) -> str:
    """Predict chosen sagittal slices of `cases` test volumes with several models and save image, truth and
    predictions to an .npz for `overlays` (run where the checkpoints and data are, e.g. on the GPU machine).

    Args:
        configs: ';'-separated config-file lists, one per model, each ','-separated (the first model's data chain
            is used for all).
        checkpoints: ','-separated model.pt paths, one per model.
        names: ','-separated display names.
        output: .npz path.
        cases: test volumes to take slices from (one medial and one lateral slice each).
        split: datalist split.
        overrides: JSON dict of config overrides applied to every model (e.g. dataset_dir, split_file).
    """
    import torch
    from monai.bundle import ConfigParser

    model_configs = [c.split(",") for c in configs.split(";")]
    paths, labels = checkpoints.split(","), names.split(",")
    extra = json.loads(overrides) if isinstance(overrides, str) else dict(overrides)
    parsers = []
    for files in model_configs:
        parser = ConfigParser()
        parser.read_config(files)
        parser.update(extra)
        parsers.append(parser)
    data = parsers[0].get_parsed_content("datalist")[split][:cases]
    transform = parsers[0].get_parsed_content("validate#preprocessing")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nets = []
    for parser, path in zip(parsers, paths):
        net = parser.get_parsed_content("network_def").to(device).eval()
        net.load_state_dict(torch.load(path, map_location=device, weights_only=True), strict=True)
        nets.append(net)
    out: dict[str, Any] = {"names": np.array(labels)}
    panels = []
    for item in data:
        d = transform(dict(item))
        image, label = d["image"], d["label"]
        fg = label[0].flatten(1).any(1).nonzero().flatten()
        picks = [int(fg[len(fg) // 4]), int(fg[3 * len(fg) // 4])] if len(fg) else [label.shape[1] // 2]
        batch = torch.as_tensor(image[0, picks])[:, None].float().to(device)  # only the shown slices: cheap on CPU
        with torch.inference_mode():
            preds = [net(batch).argmax(1).cpu().numpy() for net in nets]
        for i, s in enumerate(picks):
            panels.append((np.asarray(image[0, s]), np.asarray(label[0, s]), [p[i] for p in preds]))
    out["images"] = np.stack([p[0] for p in panels])
    out["labels"] = np.stack([p[1] for p in panels])
    out["predictions"] = np.stack([np.stack(p[2]) for p in panels])  # (panel, model, H, W)
    with atomic_path(output) as tmp:
        np.savez_compressed(tmp, **out)
    return output


def overlays(npz: str, output: str = "docs/images/overlays.png", models: str | None = None) -> str:
    """Image / truth / one column per model (the paper's Fig. 10), femoral cartilage red, tibial blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(npz)
    names = [str(n) for n in data["names"]]
    keep = [names.index(m) for m in models.split(",")] if models else list(range(len(names)))
    n = data["images"].shape[0]
    cols = 2 + len(keep)
    fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.6 * n), squeeze=False)
    colours = np.array([[0, 0, 0, 0], [1, 0.2, 0.2, 0.6], [0.2, 0.5, 1, 0.6]])
    for r in range(n):
        image = np.rot90(data["images"][r])
        layers = [None, data["labels"][r]] + [data["predictions"][r, k] for k in keep]
        titles = ["image", "truth"] + [names[k] for k in keep]
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray")
            if layers[c] is not None:
                ax.imshow(colours[np.rot90(layers[c]).astype(int)])
            ax.set_axis_off()
            if r == 0:
                ax.set_title(titles[c])
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return output


if __name__ == "__main__":
    import fire

    fire.Fire({"curves": curves, "table": table, "seeds": seeds, "dump_slices": dump_slices, "overlays": overlays})
