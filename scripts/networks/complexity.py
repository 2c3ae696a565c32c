"""Parameters and forward FLOPs per slice of the bundle's networks, built from the configs themselves.

python -m scripts.networks.complexity                  # the table of docs/README.md (CPU, 1x1x384x384, eval)
python -m scripts.networks.complexity --device meta    # the same counts in a second, no data, no compute
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .eas_unet import PAPER_FEATURES

__all__ = ["NETWORKS", "bundle_network", "complexity", "main"]

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
# name -> (config overrides applied after configs/train.json, extra key overrides)
NETWORKS: dict[str, tuple[list[str], dict]] = {
    "EAS U-Net (32..512)": ([], {}),
    "EAS U-Net (64..1024, paper widths)": ([], {"network_def#features": list(PAPER_FEATURES)}),
    "U-Net (BasicUNet)": (["configs/networks/unet.json"], {}),
    "U-Net++ (BasicUNetPlusPlus)": (["configs/networks/unetplusplus.json"], {}),
    "Attention U-Net (AttentionUnet)": (["configs/networks/attention_unet.json"], {}),
}


def bundle_network(overrides: list[str] | tuple[str, ...] = (), **keys) -> nn.Module:
    """`network_def` of configs/train.json (+ override files, relative to the bundle root, + `keys` overrides)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / "configs" / "train.json")] + [str(BUNDLE_ROOT / f) for f in overrides])
    parser.update(keys)
    return parser.get_parsed_content("network_def")


def complexity(network: nn.Module, size: int = 384, in_channels: int = 1, device: str = "cpu") -> dict[str, int]:
    """Trainable parameters and forward FLOPs of one `1 x in_channels x size x size` input in eval mode, counted by
    `torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs; convolutions and matrix products only)."""
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in network.parameters() if p.requires_grad)
    net = network.to(device).eval()
    x = torch.zeros(1, in_channels, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return {"parameters": int(params), "flops": int(counter.get_total_flops())}


def main(size: int = 384, device: str = "cpu") -> None:
    """Print a markdown table of parameters and forward FLOPs per `1 x 1 x size x size` slice for EAS U-Net at the
    default and the paper's widths and for the baselines of configs/networks/*.json.

    Args:
        size: in-plane size of the slice.
        device: "cpu" runs the forward passes; "meta" counts the same FLOPs without data.
    """
    torch.set_num_threads(1)
    lines = ["| network | parameters | GFLOPs per slice |", "|---|---:|---:|"]
    for name, (files, keys) in NETWORKS.items():
        c = complexity(bundle_network(files, **keys), size=size, device=device)
        lines.append(f"| {name} | {c['parameters']:,} | {c['flops'] / 1e9:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    import fire

    fire.Fire(main)
