"""The paper's Fig. 10: chosen sagittal slices predicted by several models, and the image / truth / model panels."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from scripts.io_utils import atomic_path


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
