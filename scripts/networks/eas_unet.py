"""EAS U-Net: a U-Net with depthwise-separable convolutions, an ECA-ASPP ("EAS") encoder module and multi-scale
output fusion with deep supervision (Bi et al., Software Engineering and Applications 12(2), 2023).

Architecture (default widths 32-64-128-256-512, EAS at the bottleneck)::

    x ─ Stem(DS,DS) ───────────────────────────────────────────────────── UpCat(DS,DS) ─ head_1 ─┐
          └ Down(pool,DS,DS) ───────────────────────────────────── UpCat(DS,DS) ─ head_2 ─┐       │
               └ Down(pool,DS,DS) ─────────────────────── UpCat(DS,DS) ─ head_3 ─┐        │       │
                    └ Down(pool,DS,DS) ──────── UpCat(DS,DS) ─ head_4 ─┐          │        │       │
                         └ Down(pool,DS,DS) ─ EAS ┘                     up x8     up x4    up x2    x1
                                                                        └──── concat ─ 1x1 conv ─ fused logits

    DS  = depthwise 3x3 -> BN -> LeakyReLU -> pointwise 1x1 -> BN -> h-swish
    EAS = [ECA(x), atrous DS 3x3 (r1), (r2), (r3), image pooling] -> concat -> 1x1 -> BN -> h-swish

Where the paper is silent (widths, two DS units per stage, EAS placement, dilation rates, the upsampling operator,
deep-supervision weights) the choices are ours; docs/README.md lists them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Conv, Pool

__all__ = ["ECA", "DSConv", "EAS", "EASUNet", "eca_kernel_size", "default_dilations"]

LEAKY = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
HSWISH = (nn.Hardswish, {"inplace": True})  # not in MONAI's Act factory; a callable is accepted
PAPER_FEATURES = (64, 128, 256, 512, 1024)


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive 1D kernel size: the nearest odd number to |(log2 C + b) / gamma| (rounded down first)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


def default_dilations(level: int, reference_size: int = 384) -> tuple[int, int, int]:
    """Atrous rates for an EAS module at encoder `level` (0 = full resolution) of a `reference_size` input.

    The largest rate spans about two thirds of the feature map (2r+1 ~ s*2/3), as DeepLabV3's (6, 12, 18) do on its
    33x33 maps; e.g. the 24x24 bottleneck of a 384 input gets (2, 4, 8).
    """
    size = max(reference_size // 2**level, 1)
    return max(1, size // 12), max(1, size // 6), max(1, size // 3)


class ECA(nn.Module):
    """Efficient channel attention (Wang et al., CVPR 2020): GAP -> 1D conv over channels -> sigmoid -> rescale.

    One k-sized 1D kernel replaces SE-Net's two fully connected layers: k parameters instead of 2C^2/r.
    """

    def __init__(self, spatial_dims: int, channels: int, kernel_size: int | None = None):
        """
        Args:
            spatial_dims: number of spatial dimensions of the input.
            channels: number of input (and output) channels.
            kernel_size: 1D kernel size over channels; defaults to `eca_kernel_size(channels)`.
        """
        super().__init__()
        k = kernel_size or eca_kernel_size(channels)
        self.pool = Pool["adaptiveavg", spatial_dims](1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x)  # (B, C, 1, ...)
        w = self.conv(pooled.flatten(1).unsqueeze(1))  # (B, 1, C): the channels are the 1D conv's axis
        return x * torch.sigmoid(w).view_as(pooled)


class DSConv(nn.Sequential):
    """Depthwise-separable convolution unit: depthwise kxk -> BN -> LeakyReLU, pointwise 1x1 -> BN -> h-swish."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        kernel_size: int = 3,
        dilation: int = 1,
        dropout: float = 0.0,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_chns: number of input channels.
            out_chns: number of output channels.
            kernel_size: depthwise kernel size.
            dilation: depthwise dilation (atrous rate); padding keeps the spatial size.
            dropout: dropout ratio after the pointwise convolution's norm.
        """
        super().__init__()
        self.add_module(
            "depthwise",
            Convolution(
                spatial_dims,
                in_chns,
                in_chns,
                kernel_size=kernel_size,
                groups=in_chns,
                dilation=dilation,
                padding=dilation * (kernel_size - 1) // 2,
                act=LEAKY,
                norm="batch",
                bias=False,
            ),
        )
        self.add_module(
            "pointwise",
            Convolution(
                spatial_dims, in_chns, out_chns, kernel_size=1, act=HSWISH, norm="batch", dropout=dropout, bias=False
            ),
        )


class DSStage(nn.Sequential):
    """Two DS units, the basic stage of every encoder and decoder level."""

    def __init__(self, spatial_dims: int, in_chns: int, out_chns: int, dropout: float = 0.0):
        super().__init__()
        self.add_module("ds_0", DSConv(spatial_dims, in_chns, out_chns, dropout=dropout))
        self.add_module("ds_1", DSConv(spatial_dims, out_chns, out_chns, dropout=dropout))


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average -> 1x1 conv -> h-swish, broadcast back to the map size.

    No norm layer: a BatchNorm on a 1x1 map fails for batch size 1 in training (MONAI Label may train that way).
    """

    def __init__(self, spatial_dims: int, in_chns: int, out_chns: int):
        super().__init__()
        self.pool = Pool["adaptiveavg", spatial_dims](1)
        self.conv = Conv["conv", spatial_dims](in_chns, out_chns, kernel_size=1)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(self.pool(x)))
        return y.expand([-1, -1] + list(x.shape[2:]))


class EAS(nn.Module):
    """ECA + ASPP: atrous DS branches at several rates, an image-pooling branch, and an ECA branch that replaces
    ASPP's plain 1x1 branch; concatenated and projected by 1x1 conv -> BN -> h-swish (-> dropout)."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        dilations: Sequence[int] = (2, 4, 8),
        dropout: float = 0.0,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_chns: number of input channels.
            out_chns: number of output channels (also the width of each atrous and pooling branch).
            dilations: atrous rates of the 3x3 branches.
            dropout: dropout ratio in the atrous branches and after the projection.
        """
        super().__init__()
        self.eca = ECA(spatial_dims, in_chns)
        self.atrous = nn.ModuleList(
            DSConv(spatial_dims, in_chns, out_chns, dilation=int(r), dropout=dropout) for r in dilations
        )
        self.image_pool = ImagePooling(spatial_dims, in_chns, out_chns)
        cat_chns = in_chns + out_chns * (len(dilations) + 1)
        self.project = Convolution(
            spatial_dims, cat_chns, out_chns, kernel_size=1, act=HSWISH, norm="batch", dropout=dropout, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.eca(x)]
        for branch in self.atrous:
            branches.append(branch(x))
        branches.append(self.image_pool(x))
        return self.project(torch.cat(branches, dim=1))


class Down(nn.Sequential):
    """2x max pooling, a DS stage, and optionally an EAS module after it."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        out_chns: int,
        dropout: float = 0.0,
        eas_dilations: Sequence[int] | None = None,
    ):
        super().__init__()
        self.add_module("max_pooling", Pool["max", spatial_dims](kernel_size=2))
        self.add_module("convs", DSStage(spatial_dims, in_chns, out_chns, dropout))
        if eas_dilations is not None:
            self.add_module("eas", EAS(spatial_dims, out_chns, out_chns, eas_dilations, dropout))


class UpCat(nn.Module):
    """Upsample by 2, concatenate the encoder skip, then a DS stage."""

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        cat_chns: int,
        out_chns: int,
        dropout: float = 0.0,
        upsample: str = "deconv",
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            in_chns: channels of the deeper features to upsample (halved by the upsampling).
            cat_chns: channels of the encoder skip.
            out_chns: output channels.
            dropout: dropout ratio in the DS stage.
            upsample: MONAI UpSample mode: "deconv" (transposed conv, the U-Net default), "pixelshuffle" or
                "nontrainable" (bilinear after a 1x1 conv).
        """
        super().__init__()
        up_chns = in_chns // 2
        self.upsample = UpSample(
            spatial_dims, in_chns, up_chns, 2, mode=upsample, interp_mode="bilinear" if spatial_dims == 2 else "linear"
        )
        self.convs = DSStage(spatial_dims, cat_chns + up_chns, out_chns, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat([skip, self.upsample(x)], dim=1))


class MultiScaleFusion(nn.Module):
    """Multi-scale output fusion: a 1x1 class head on each deeper decoder level, every map upsampled to full size,
    concatenated with the top level's map (concat, not add, keeps each scale's evidence) and fused by a 1x1 conv."""

    def __init__(self, spatial_dims: int, level_chns: Sequence[int], out_chns: int):
        """
        Args:
            spatial_dims: number of spatial dimensions.
            level_chns: channels of decoder levels 2, 3, 4 (half, quarter, eighth resolution).
            out_chns: number of classes.
        """
        super().__init__()
        conv = Conv["conv", spatial_dims]
        self.heads = nn.ModuleList(conv(c, out_chns, kernel_size=1) for c in level_chns)
        self.fuse = conv((len(level_chns) + 1) * out_chns, out_chns, kernel_size=1)
        self.interp_mode = "bilinear" if spatial_dims == 2 else "trilinear"

    def forward(self, top: torch.Tensor, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return `[fused, top, side_2, side_3, ...]`, all at the top level's size."""
        size = top.shape[2:]  # not int()s: tracing (ONNX export) keeps the size dynamic
        sides = [top]
        for i, head in enumerate(self.heads):
            sides.append(F.interpolate(head(levels[i]), size=size, mode=self.interp_mode, align_corners=False))
        return [self.fuse(torch.cat(sides, dim=1))] + sides


class EASUNet(nn.Module):
    """EAS U-Net for 2D (or 3D) segmentation with multi-scale output fusion deep supervision.

    In eval mode `forward` returns ONE tensor, the fused logits `(B, out_channels, *spatial)`, which is what MONAI's
    inferers, MONAI Label and `verify_net_in_out` call. In train mode with deep supervision it returns
    `[fused, side_1, side_2, side_3, side_4]`, side outputs upsampled to full size, finest first, for
    `DeepSupervisionLoss`; in train mode under `torch.no_grad()` (MONAI Label's Monte-Carlo dropout scoring, which
    expects one tensor) it returns the fused logits only. Spatial sizes must be multiples of 16.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 3,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        eas_levels: Sequence[int] = (4,),
        dilations: Sequence[Sequence[int]] | None = None,
        reference_size: int = 384,
        deep_supervision: bool = True,
        upsample: str = "deconv",
        dropout: float = 0.0,
    ):
        """
        Args:
            spatial_dims: number of spatial dimensions (2 for sagittal slices).
            in_channels: number of input channels.
            out_channels: number of classes (background, femoral cartilage, tibial cartilage).
            features: five widths, level 0 (full resolution) to level 4 (bottleneck); the paper's U-Net widths are
                `PAPER_FEATURES` (64..1024).
            eas_levels: encoder levels (1-4) that end with an EAS module; default the bottleneck only.
            dilations: atrous rates per entry of `eas_levels`; default `default_dilations(level, reference_size)`.
            reference_size: training in-plane size, used only to derive default dilations.
            deep_supervision: multi-scale output fusion; if False a single 1x1 head on the top decoder level
                (a plain U-Net output path).
            upsample: decoder upsampling mode (see `UpCat`).
            dropout: dropout ratio in every DS unit and EAS projection (MONAI Label passes it for epistemic scoring).
        """
        super().__init__()
        fea = tuple(int(f) for f in features)
        if len(fea) != 5:
            raise ValueError(f"features must have 5 widths (levels 0-4), got {features}")
        levels = [int(level) for level in eas_levels]
        if any(not 1 <= level <= 4 for level in levels):
            raise ValueError(f"eas_levels must be encoder levels 1..4, got {eas_levels}")
        if dilations is not None and len(dilations) != len(levels):
            raise ValueError(f"give one dilation tuple per EAS level: {len(levels)} levels, {len(dilations)} tuples")
        rates = {
            level: tuple(dilations[i]) if dilations is not None else default_dilations(level, reference_size)
            for i, level in enumerate(levels)
        }

        self.stem = DSStage(spatial_dims, in_channels, fea[0], dropout)
        self.down_1 = Down(spatial_dims, fea[0], fea[1], dropout, rates.get(1))
        self.down_2 = Down(spatial_dims, fea[1], fea[2], dropout, rates.get(2))
        self.down_3 = Down(spatial_dims, fea[2], fea[3], dropout, rates.get(3))
        self.down_4 = Down(spatial_dims, fea[3], fea[4], dropout, rates.get(4))

        self.upcat_4 = UpCat(spatial_dims, fea[4], fea[3], fea[3], dropout, upsample)
        self.upcat_3 = UpCat(spatial_dims, fea[3], fea[2], fea[2], dropout, upsample)
        self.upcat_2 = UpCat(spatial_dims, fea[2], fea[1], fea[1], dropout, upsample)
        self.upcat_1 = UpCat(spatial_dims, fea[1], fea[0], fea[0], dropout, upsample)

        self.head = Conv["conv", spatial_dims](fea[0], out_channels, kernel_size=1)
        self.fusion = MultiScaleFusion(spatial_dims, fea[1:4], out_channels) if deep_supervision else None

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:  # noqa: UP007 (TorchScript)
        """
        Args:
            x: `(B, in_channels, *spatial)`, every spatial size a multiple of 16.

        Returns:
            eval mode, or no deep supervision: fused logits `(B, out_channels, *spatial)`;
            train mode with deep supervision: `[fused, side_1, side_2, side_3, side_4]`, all at full size.
        """
        x0 = self.stem(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)

        u4 = self.upcat_4(x4, x3)
        u3 = self.upcat_3(u4, x2)
        u2 = self.upcat_2(u3, x1)
        u1 = self.upcat_1(u2, x0)

        side_1 = self.head(u1)
        if self.fusion is None:
            return side_1
        outputs = self.fusion(side_1, [u2, u3, u4])
        if self.training and torch.is_grad_enabled():  # train mode without gradients = Monte-Carlo dropout scoring
            return outputs
        return outputs[0]
