"""A per-scan quality number for unattended batch segmentation: the expected Dice of each cartilage class, from the
network's own class probabilities, so the scans whose segmentation most needs a human look can be found without
ground truth.

For class c with probability map p and predicted mask m = (argmax == c), the expected Dice is

    E[Dice] = 2 * sum(p * m) / (sum(p) + sum(m))

approximately the Dice the prediction m would score if each voxel truly belonged to c with probability p (the soft
Dice between the probabilities and the decision: the ratio of expectations, not the expectation of the ratio). It
is 1 when the network is certain everywhere and falls where probability mass lies outside the predicted mask or the
mask holds uncertain voxels. It is only as good as the probabilities are calibrated:
a confidently wrong prediction keeps a high expected Dice, so it ranks scans for review, it does not replace a check.
How well it follows the measured Dice is measured in docs/measurements.md ("Expected Dice").
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["expected_dice", "ExpectedDiced", "COMPARTMENT_CLASSES"]

#: the bundle's classes 1 and 2, as named in the measurement CSV's compartments
COMPARTMENT_CLASSES: tuple[str, ...] = ("femoral", "tibial")


def expected_dice(probabilities: torch.Tensor, classes: Sequence[int] = (1, 2)) -> dict[int, float]:
    """Expected Dice per class of a channel-first probability map (C x spatial, channels summing to 1).

    A class that is neither predicted nor given any probability scores 1.0 (nothing there, and the network agrees);
    a class with probability mass but no predicted voxel scores 0.0.
    """
    if hasattr(probabilities, "as_tensor"):  # a MetaTensor: plain torch ops, no metadata bookkeeping per op
        probabilities = probabilities.as_tensor()
    shape = tuple(probabilities.shape)
    if len(shape) < 2:
        raise ValueError(f"expected a channel-first probability map (C x spatial), got shape {shape}")
    classes = list(classes)
    if not classes or min(classes) < 0:
        raise ValueError(f"classes must be channel indices >= 0, got {classes}")
    if max(classes) >= shape[0]:
        raise ValueError(
            f"class {max(classes)} asked for, but the probability map has {shape[0]} channels (a discrete map? "
            "place it before AsDiscreted(argmax=True))"
        )
    if problem := _not_probabilities(probabilities):
        raise ValueError(f"expected class probabilities (softmax over the channels), but the map {problem}")
    # one pass for all classes (0.45 s for a 3 x 160 x 384 x 384 map on 2 CPU cores, 9x a loop over class masks):
    # the winning probability of each voxel summed per winning class is sum(p * m); counts give sum(m)
    values, decision = probabilities.max(dim=0)
    decision = decision.flatten()
    hit = torch.bincount(decision, weights=values.flatten().double(), minlength=shape[0])
    count = torch.bincount(decision, minlength=shape[0]).double()
    mass = probabilities.flatten(1).double().sum(dim=1)
    out: dict[int, float] = {}
    for c in classes:
        denominator = float(mass[c] + count[c])
        out[c] = 1.0 if denominator == 0.0 else 2.0 * float(hit[c]) / denominator
    return out


def _not_probabilities(p: torch.Tensor) -> str:
    """Why `p` is no softmax output ('' if it may be one): logits or a discrete map would give numbers that look
    like scores and mean nothing. Checked on about 4096 evenly spaced voxels, not a pass over the whole map (this runs
    on every inferred scan)."""
    if not torch.is_floating_point(p):
        return f"has the integer type {p.dtype} (a label map?)"
    flat = p.flatten(1)
    sample = flat[:, :: max(1, flat.shape[1] // 4096)].double()
    low, high = float(sample.min()), float(sample.max())
    if low < -1e-3 or high > 1 + 1e-3:
        return f"holds values from {low:.3g} to {high:.3g} (logits? apply the softmax first)"
    if float((sample.sum(dim=0) - 1).abs().max()) > 1e-2:
        return "has channels that do not sum to 1"
    if not bool(((sample > 0) & (sample < 1)).any()):
        return "holds only 0 and 1 (a one-hot map: place ExpectedDiced before AsDiscreted)"
    return ""


class ExpectedDiced(MapTransform):
    """Add `{class name: expected Dice}` of a softmax prediction under `output_key`, before the prediction is made
    discrete (place it after `Activationsd(softmax=True)` and `Invertd`, before `AsDiscreted(argmax=True)`).

    Args:
        keys: key of the probability map (C x D x H x W).
        output_key: key of the added dict, read by `scripts.quantify.CartilageReportd` into the CSV.
        class_names: names of classes 1, 2, ... in the order of the channels after background.
        allow_missing_keys: don't raise if `keys` is absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key: str = "expected_dice",
        class_names: Sequence[str] = COMPARTMENT_CLASSES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.class_names = tuple(class_names)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            scores = expected_dice(d[key], range(1, len(self.class_names) + 1))
            d[self.output_key] = {name: scores[i + 1] for i, name in enumerate(self.class_names)}
        return d
