"""bf16 against fp32 predictions of the same model on phantom test volumes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scripts.benchmark.common import _autocast, _cudnn, _free, _row, build_model, make_loss


def _load_case(folder: Path, entry: dict[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image scaled like the configs: 0.5-99.5 percentiles to 0..1, (D, 1, H, W) float32; classes (D, H, W) uint8)."""
    import nibabel as nib

    image = np.asarray(nib.load(str(folder / entry["image"])).dataobj, dtype=np.float32)
    label = np.asarray(nib.load(str(folder / entry["label"])).dataobj, dtype=np.uint8)
    lo, hi = (float(v) for v in np.percentile(image, [0.5, 99.5]))
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    classes = np.zeros_like(label)
    classes[label == 2], classes[label == 4] = 1, 2  # oai-zib: femoral cartilage 2 -> 1, tibial cartilage 4 -> 2
    return torch.from_numpy(image).unsqueeze(1), torch.from_numpy(classes)


def _dice(a: torch.Tensor, b: torch.Tensor, cls: int) -> float:
    pa, pb = a == cls, b == cls
    denom = int(pa.sum()) + int(pb.sum())
    return 1.0 if denom == 0 else 2.0 * int((pa & pb).sum()) / denom


def _predict(net, volume: torch.Tensor, device: torch.device, precision: str, sw: int) -> torch.Tensor:
    out = torch.empty(volume.shape[0], *volume.shape[2:], dtype=torch.uint8, device=device)
    with torch.inference_mode(), _autocast(device, precision):
        for i in range(0, volume.shape[0], sw):
            out[i : i + sw] = net(volume[i : i + sw].to(device)).argmax(1).to(torch.uint8)
    return out


def _train_briefly(model, folder: Path, entries: list[dict], device: torch.device, steps: int, batch: int, seed: int):
    """A few SGD steps on random cartilage-containing slices of the phantom training cases, so the predictions
    compared below are those of a model that has learnt something (a random model's logits are near ties)."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = zip(*(_load_case(folder, e) for e in entries))
    pool = [
        (i, s) for i, lab in enumerate(labels) for s in torch.nonzero(lab.flatten(1).amax(1) > 0).flatten().tolist()
    ]
    if not pool:
        raise RuntimeError("no cartilage-containing slices in the phantom training cases")
    loss_fn = make_loss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model.to(memory_format=fmt).train()
    for _ in range(steps):
        pick = [pool[int(j)] for j in torch.randint(len(pool), (batch,), generator=gen)]
        x = torch.stack([images[i][s] for i, s in pick]).to(device).contiguous(memory_format=fmt)
        y = torch.stack([labels[i][s] for i, s in pick]).unsqueeze(1).long().to(device)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, "bf16" if device.type == "cuda" else "fp32"):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def measure_agreement(
    model_name: str,
    device: torch.device,
    features: Sequence[int],
    dataset_dir: Path,
    size: int = 384,
    sw_batch_size: int = 32,
    checkpoint: str | None = None,
    train_steps: int = 0,
    train_batch: int = 16,
    seed: int = 0,
) -> list[dict]:
    """bf16 autocast against fp32 predictions (argmax label maps) of the same eval-mode model on the phantom test
    cases: fraction of voxels that differ, Dice between the two label maps per class, and Dice against the phantom
    labels in each precision (meaningful only for a trained model). The model is `checkpoint` if given, else a
    random initialisation trained here for `train_steps` steps on the phantom training cases."""
    _cudnn(benchmark=True, deterministic=False)
    torch.manual_seed(seed)
    model = build_model(model_name, features, size).to(device)
    datalist = json.loads((Path(dataset_dir) / "datalist.json").read_text())
    if checkpoint:
        model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
        source = f"checkpoint {Path(checkpoint).name}"
        final_loss = None
    elif train_steps > 0:
        final_loss = _train_briefly(
            model, Path(dataset_dir), datalist["training"], device, train_steps, train_batch, seed
        )
        source = f"random initialisation trained here for {train_steps} steps on {len(datalist['training'])} phantoms"
    else:
        source, final_loss = "random initialisation (seed 0), untrained: Dice against labels is meaningless", None
    model.eval()
    cases = []
    differ, total = 0, 0
    for entry in datalist["test"]:
        image, truth = _load_case(Path(dataset_dir), entry)
        image = image.to(device)
        ref = _predict(model, image, device, "fp32", sw_batch_size).cpu()
        low = _predict(model, image, device, "bf16", sw_batch_size).cpu()
        d = int((ref != low).sum())
        differ, total = differ + d, total + ref.numel()
        cases.append(
            {
                "case": entry["subject"],
                "voxels_differing": d,
                "dice_bf16_vs_fp32": {c: _dice(ref, low, c) for c in (1, 2)},
                "dice_fp32_vs_label": {c: _dice(ref, truth, c) for c in (1, 2)},
                "dice_bf16_vs_label": {c: _dice(low, truth, c) for c in (1, 2)},
            }
        )
    if not cases:
        raise RuntimeError("the phantom dataset has no test cases")

    def mean(key: str, c: int) -> float:
        return float(np.mean([case[key][c] for case in cases]))

    delta = max(abs(mean("dice_bf16_vs_label", c) - mean("dice_fp32_vs_label", c)) for c in (1, 2))
    details = {
        "model_source": source,
        "trained": bool(checkpoint or train_steps > 0),
        "final_training_loss": final_loss,
        "fraction_voxels_differing": differ / max(total, 1),
        "min_dice_bf16_vs_fp32": min(mean("dice_bf16_vs_fp32", c) for c in (1, 2)),
        "mean_dice_fp32_vs_label": {c: mean("dice_fp32_vs_label", c) for c in (1, 2)},
        "mean_dice_bf16_vs_label": {c: mean("dice_bf16_vs_label", c) for c in (1, 2)},
        "cases": cases,
    }
    rows = [
        _row("agreement", "max_dice_change", model_name, "bf16 vs fp32", delta, "Dice", **details),
        _row(
            "agreement",
            "voxels_differing",
            model_name,
            "bf16 vs fp32",
            differ / max(total, 1),
            "fraction",
            model_source=source,
        ),
    ]
    del model
    _free(device)
    return rows
