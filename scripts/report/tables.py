"""Markdown tables: Table 1 (ours beside the paper's) and the comparison of models over seeds, paired per test
volume and per subject."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from scripts.datalist import subject_id
from scripts.io_utils import atomic_write_text
from scripts.report.common import STRUCTURES, _names
from scripts.report.stats import _p_text, sign_flip_p

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


# paired metrics: the factor from the CSV's value to the table's unit, and that unit
PAIRED_UNITS = {"dice": (100.0, "points"), "precision": (100.0, "points"), "recall": (100.0, "points")}
PAIRED_UNITS.update({m: (1.0, "mm") for m in ("hd", "hd95", "assd")})


def _per_case(run_dir: Path, summary: str, metric: str = "dice") -> dict[tuple[str, str], float]:
    """(case, structure) -> one 3D metric of one run, from its metrics_volume.csv; cases where it is empty (a
    distance of an empty prediction) are left out."""
    path = run_dir / summary / "metrics_volume.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no per-case metrics at {path}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and metric not in rows[0]:
        raise ValueError(f"{path} has no column {metric!r}")
    return {(r["case"], r["class"]): float(r[metric]) for r in rows if r[metric] not in ("", "nan")}


def seeds(
    *seed_dirs: str,
    models: str = "eas_unet,unet,unetplusplus,attention_unet",
    names: str | None = None,
    reference: str = "eas_unet",
    seed_names: str | None = None,
    summary: str = "evaluation",
    paired_metrics: str = "dice",
    run_kind: str = "seed",
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
        paired_metrics: the per-volume metrics to pair, ','-separated, each in its own table (dice, precision,
            recall in points; hd, hd95, assd in mm): where a model's advantage comes from, and whether it holds.
        run_kind: what one folder is, for the column headers: "seed" (default), or "fold" for cross-validation folds.
        output: also write the markdown there (atomically).
    """
    if not seed_dirs:
        raise ValueError("no seed folders given")
    keys = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    labels = dict(zip(keys, _names(names, keys)))
    if reference not in keys:
        raise ValueError(f"reference {reference!r} is not among the models {keys}")
    metrics = [m.strip() for m in paired_metrics.split(",")] if isinstance(paired_metrics, str) else paired_metrics
    unknown = [m for m in metrics if m not in PAIRED_UNITS]
    if unknown or not metrics:
        raise ValueError(f"paired_metrics {unknown or metrics} unknown: choose among {', '.join(PAIRED_UNITS)}")
    seed_labels = _names(seed_names, seed_dirs)
    means = {(s, m): _summary_means(Path(d) / m, summary) for s, d in zip(seed_labels, seed_dirs) for m in keys}

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
    for metric in metrics:
        cases = {(s, m): _per_case(Path(d) / m, summary, metric) for s, d in zip(seed_labels, seed_dirs) for m in keys}
        rows += [""] + _paired_rows(cases, metric, keys, labels, reference, seed_labels, run_kind)
    text = "\n".join(rows) + "\n"
    if output:
        atomic_write_text(output, text)
    return text


def _paired_rows(
    cases: dict[tuple[str, str], dict[tuple[str, str], float]],
    metric: str,
    keys: list[str],
    labels: dict[str, str],
    reference: str,
    seed_labels: list[str],
    run_kind: str = "seed",
) -> list[str]:
    """The table pairing `reference` with every other model on one per-volume metric, per volume and per subject."""
    factor, unit = PAIRED_UNITS[metric]
    ref = labels[reference]
    per_seed = " / ".join(seed_labels)
    what = "" if metric == "dice" else f" ({metric})"
    rows = [
        f"| structure | {ref} against{what} | volumes where {ref} is lower | mean difference/{unit} |"
        f" range over volumes/{unit} | per {run_kind} ({per_seed}) |"
        f" subjects where {ref} is lower | p (sign-flip over subjects; smallest possible) |",
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
                    raise ValueError(f"{run_kind} {s}: {reference} and {m} share no test volume for {structure}")
                diffs_by_seed.append([factor * (ours[k] - theirs[k]) for k in shared])
                for k in shared:
                    by_subject.setdefault(subject_id(k[0]), []).append(factor * (ours[k] - theirs[k]))
            flat = [d for ds in diffs_by_seed for d in ds]
            subjects = [float(np.mean(v)) for v in by_subject.values()]
            p, smallest = sign_flip_p(subjects), min(1.0, 2 / 2 ** len(subjects))
            rows.append(
                f"| {structure} | {labels[m]} | {sum(d < 0 for d in flat)} of {len(flat)} | {np.mean(flat):+.2f} |"
                f" {min(flat):+.2f} to {max(flat):+.2f} |"
                f" {' / '.join(f'{np.mean(ds):+.2f}' for ds in diffs_by_seed)} |"
                f" {sum(d < 0 for d in subjects)} of {len(subjects)} | {_p_text(p)} ({_p_text(smallest)}) |"
            )
    return rows
