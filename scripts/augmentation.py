"""In-plane training augmentation of a whole batch at once, on the training device.

Why: the per-sample MONAI chain (RandAffined, RandBiasFieldd, RandAdjustContrastd, RandScaleIntensityd,
RandShiftIntensityd, RandGaussianSmoothd, RandGaussianNoised) cost about 80 % of a loader worker's time per
384x384 slice on the CPU, so the GPU waited for the loader. The same operations, with the same parameter ranges and
probabilities, applied to a (B, 1, H, W) batch on the GPU take a handful of kernels per batch, whatever B is. The
loader keeps only what must see the whole volume (caching, the cartilage-slice crop, label synthesis).

Each sample draws its own parameters exactly as the MONAI transform of the same name would (probabilities and
ranges below are theirs); the affine follows MONAI's `Affine` (rotation about the image centre, then translation,
then scaling, bilinear image, nearest label, zero padding) and the bias field MONAI's Legendre-polynomial field.
Parameters are drawn from a CPU generator (`set_random_state`, reseeded every epoch by `EpochSeeder`), so a run is
reproducible on a given device and a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.networks.layers.convutils import gaussian_1d
from monai.utils import convert_to_tensor

__all__ = ["BatchAugmentation", "AugmentedBatch", "to_device"]


def _pair(value: float | Sequence[float]) -> tuple[float, float]:
    """A symmetric range given as one number (MONAI's convention) or per axis."""
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if len(value) != 2:
        raise ValueError(f"expected one value or two (one per in-plane axis), got {list(value)}")
    return float(value[0]), float(value[1])


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor to `device` without making the CPU wait for the GPU.

    Why: a plain copy from pageable host memory to CUDA waits until the stream is idle, so each of the augmentation's
    parameter copies would let the GPU run dry while the CPU queues the next step. From pinned memory with
    `non_blocking=True` the copy is queued like a kernel (the caching host allocator keeps the pinned buffer alive
    until the copy is done)."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _interval(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """A (low, high) range; one number x means (-x, x), as MONAI's `factors` and `offsets`."""
    if isinstance(value, (int, float)):
        return -abs(float(value)), abs(float(value))
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name}: low {lo} is above high {hi}")
    return lo, hi


class BatchAugmentation:
    """Random in-plane augmentation of a batch of 2D slices (image (B, C, H, W) float, label (B, 1, H, W)).

    Args:
        affine_prob: probability of the affine (RandAffined `prob`).
        rotate_range: rotation drawn uniformly in [-r, r] radians.
        scale_range: per-axis scale 1 + uniform(-s, s) (one number or one per axis).
        translate_range: per-axis shift uniform(-t, t) in pixels.
        bias_prob, bias_coeff_range, bias_degree: RandBiasFieldd: image * exp(Legendre polynomial field).
        contrast_prob, gamma: RandAdjustContrastd: ((x - min) / range) ** gamma * range + min, per sample.
        scale_intensity_prob, scale_factors: RandScaleIntensityd: x * (1 + f).
        shift_intensity_prob, shift_offsets: RandShiftIntensityd: x + o.
        smooth_prob, smooth_sigma: RandGaussianSmoothd with sigma per axis uniform in `smooth_sigma`.
        noise_prob, noise_std: RandGaussianNoised: x + N(0, s), s uniform in [0, noise_std].
        seed: initial seed of the parameter generator.
    """

    def __init__(
        self,
        affine_prob: float = 0.8,
        rotate_range: float = 0.26,
        scale_range: float | Sequence[float] = 0.15,
        translate_range: float | Sequence[float] = 20.0,
        bias_prob: float = 0.3,
        bias_coeff_range: Sequence[float] = (0.0, 0.3),
        bias_degree: int = 3,
        contrast_prob: float = 0.5,
        gamma: Sequence[float] = (0.7, 1.5),
        scale_intensity_prob: float = 0.5,
        scale_factors: float | Sequence[float] = 0.2,
        shift_intensity_prob: float = 0.5,
        shift_offsets: float | Sequence[float] = 0.1,
        smooth_prob: float = 0.2,
        smooth_sigma: Sequence[float] = (0.25, 1.0),
        noise_prob: float = 0.3,
        noise_std: float = 0.03,
        seed: int = 0,
    ) -> None:
        for name, p in (
            ("affine_prob", affine_prob),
            ("bias_prob", bias_prob),
            ("contrast_prob", contrast_prob),
            ("scale_intensity_prob", scale_intensity_prob),
            ("shift_intensity_prob", shift_intensity_prob),
            ("smooth_prob", smooth_prob),
            ("noise_prob", noise_prob),
        ):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        self.affine_prob, self.rotate_range = float(affine_prob), abs(float(rotate_range))
        self.scale_range, self.translate_range = _pair(scale_range), _pair(translate_range)
        self.bias_prob, self.bias_coeff_range, self.bias_degree = (
            float(bias_prob),
            _interval(bias_coeff_range, "bias_coeff_range"),
            int(bias_degree),
        )
        self.contrast_prob, self.gamma = float(contrast_prob), _interval(gamma, "gamma")
        if self.gamma[0] <= 0:
            raise ValueError(f"gamma must be positive, got {list(gamma)}")
        self.scale_intensity_prob, self.scale_factors = (
            float(scale_intensity_prob),
            _interval(scale_factors, "scale_factors"),
        )
        self.shift_intensity_prob, self.shift_offsets = (
            float(shift_intensity_prob),
            _interval(shift_offsets, "shift_offsets"),
        )
        self.smooth_prob, self.smooth_sigma = float(smooth_prob), _interval(smooth_sigma, "smooth_sigma")
        if self.smooth_sigma[0] <= 0:
            raise ValueError(f"smooth_sigma must be positive, got {list(smooth_sigma)}")
        self.noise_prob, self.noise_std = float(noise_prob), abs(float(noise_std))
        self.generator = torch.Generator()
        self.set_random_state(seed)
        self._basis: dict[tuple, torch.Tensor] = {}

    def set_random_state(self, seed: int) -> BatchAugmentation:
        """Reseed the parameter generator (what MONAI's `Randomizable.set_random_state` does for a transform)."""
        self.generator.manual_seed(int(seed) % (2**63))
        return self

    # -- parameter draws (CPU, one row per sample) ------------------------------------------------------------------
    def _uniform(self, n: int, lo: float, hi: float, cols: int = 1) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, cols, generator=self.generator, dtype=torch.float64)

    def _coin(self, n: int, prob: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64) < prob

    # -- the operations ----------------------------------------------------------------------------------------------
    def affine_matrices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, 2, 3) output->input maps in centred pixel coordinates (MONAI's rotate @ translate @ scale), and which
        samples get one."""
        apply = self._coin(n, self.affine_prob)
        angle = self._uniform(n, -self.rotate_range, self.rotate_range)[:, 0]
        scale = torch.cat([self._uniform(n, -s, s) for s in self.scale_range], dim=1) + 1.0
        shift = torch.cat([self._uniform(n, -t, t) for t in self.translate_range], dim=1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], 1)  # (n, 2, 2)
        linear = rotation * scale[:, None, :]  # R @ diag(scale)
        offset = (rotation @ shift[:, :, None])[:, :, 0]  # R @ t
        return torch.cat([linear, offset[:, :, None]], dim=2), apply

    @staticmethod
    def warp(image: torch.Tensor, label: torch.Tensor | None, matrices: torch.Tensor) -> tuple:
        """Resample image (bilinear) and label (nearest) with per-sample output->input maps in centred pixel
        coordinates (spatial axis 0 = H, axis 1 = W, as MONAI's `Affine`), zero padding."""
        n, _, h, w = image.shape
        # theta on the CPU, one non-blocking copy to the device
        m = matrices.detach().to(device="cpu", dtype=torch.float64)
        # grid_sample's normalised coordinates (align_corners=False): u = 2 * c / size, with c centred pixels;
        # its grid is (x = W, y = H) ordered, so swap the axes of the map
        to_norm = torch.tensor([2.0 / h, 2.0 / w], dtype=torch.float64)
        lin = m[:, :, :2] * to_norm[:, None] / to_norm[None, :]
        off = m[:, :, 2] * to_norm
        theta = torch.stack(
            [
                torch.stack([lin[:, 1, 1], lin[:, 1, 0], off[:, 1]], -1),
                torch.stack([lin[:, 0, 1], lin[:, 0, 0], off[:, 0]], -1),
            ],
            1,
        )
        theta = to_device(theta.float(), image.device)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        warped = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if label is None:
            return warped.to(image.dtype), None
        warped_label = F.grid_sample(label.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return warped.to(image.dtype), warped_label.round().to(label.dtype)

    def _legendre_basis(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(K, H, W) products P_i(y) P_j(x), i + j <= degree, in the order of MONAI's RandBiasField coefficients."""
        key = (h, w, str(device))
        if key not in self._basis:
            d = self.bias_degree
            eye = np.eye(d + 1)
            py = np.stack(
                [np.polynomial.legendre.legval(np.linspace(-1, 1, h, dtype=np.float32), eye[i]) for i in range(d + 1)]
            )
            px = np.stack(
                [np.polynomial.legendre.legval(np.linspace(-1, 1, w, dtype=np.float32), eye[j]) for j in range(d + 1)]
            )
            rows, cols = np.tril_indices(d + 1)  # MONAI fills coeff_mat[tril_indices] in this order
            basis = np.stack([np.outer(py[i], px[j]) for i, j in zip(rows, cols)])
            self._basis[key] = torch.as_tensor(basis, dtype=torch.float32, device=device)
        return self._basis[key]

    def _smooth(self, image: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian of each sample with its own (sigma_H, sigma_W), kernels from MONAI's `gaussian_1d`
        (erf approximation, truncated at 4 sigma), all samples in one grouped convolution per axis."""
        n, c, h, w = image.shape
        radius = max(int(4.0 * float(sigmas.max()) + 0.5), 1)
        out = image.reshape(1, n * c, h, w).float()
        for axis in (0, 1):
            kernels = torch.zeros(n * c, 2 * radius + 1, dtype=torch.float32)
            for i, s in enumerate(sigmas[:, axis].tolist()):
                k = gaussian_1d(torch.tensor(s), truncated=4.0, approx="erf", normalize=False)
                r = k.numel() // 2
                kernels[i * c : (i + 1) * c, radius - r : radius + r + 1] = k
            kernels = to_device(kernels, image.device)
            shape = (n * c, 1, 2 * radius + 1, 1) if axis == 0 else (n * c, 1, 1, 2 * radius + 1)
            padding = (radius, 0) if axis == 0 else (0, radius)
            out = F.conv2d(out, kernels.view(shape), padding=padding, groups=n * c)  # zero padding, as MONAI's filter
        return out.reshape(n, c, h, w).to(image.dtype)

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        if image.ndim != 4:
            raise ValueError(
                f"BatchAugmentation expects a (B, C, H, W) batch of 2D slices, got shape {tuple(image.shape)}"
            )
        if label is not None and (label.shape[0] != image.shape[0] or label.shape[2:] != image.shape[2:]):
            raise ValueError(f"image {tuple(image.shape)} and label {tuple(label.shape)} of the batch do not match")
        n, _, h, w = image.shape
        device = image.device
        image = image.float()

        matrices, apply = self.affine_matrices(n)
        if bool(apply.any()):
            idx = to_device(apply.nonzero()[:, 0], device)
            warped, warped_label = self.warp(image[idx], None if label is None else label[idx], matrices[apply])
            image = image.index_copy(0, idx, warped)
            if label is not None:
                label = label.index_copy(0, idx, warped_label)

        def per_sample(values: torch.Tensor, apply: torch.Tensor, neutral: float) -> torch.Tensor:
            v = torch.where(apply[:, None], values, torch.full_like(values, neutral))
            return to_device(v.float(), device).view(n, 1, 1, 1)

        # bias field (RandBiasFieldd)
        apply = self._coin(n, self.bias_prob)
        n_coeff = (self.bias_degree + 1) * (self.bias_degree + 2) // 2
        coeff = self._uniform(n, *self.bias_coeff_range, cols=n_coeff)
        if bool(apply.any()):
            basis = self._legendre_basis(h, w, device)
            field = torch.einsum("nk,khw->nhw", to_device(coeff.float(), device), basis).exp()
            image = torch.where(to_device(apply, device).view(n, 1, 1, 1), image * field[:, None], image)
        # contrast (RandAdjustContrastd): per-sample min / range
        apply = self._coin(n, self.contrast_prob)
        gamma = self._uniform(n, *self.gamma)
        if bool(apply.any()):
            lo = image.amin(dim=(1, 2, 3), keepdim=True)
            span = image.amax(dim=(1, 2, 3), keepdim=True) - lo
            adjusted = ((image - lo) / (span + 1e-7)).clamp_min(0) ** per_sample(gamma, apply, 1.0) * span + lo
            image = torch.where(to_device(apply, device).view(n, 1, 1, 1), adjusted, image)
        # scale and shift (RandScaleIntensityd, RandShiftIntensityd)
        apply = self._coin(n, self.scale_intensity_prob)
        image = image * (1.0 + per_sample(self._uniform(n, *self.scale_factors), apply, 0.0))
        apply = self._coin(n, self.shift_intensity_prob)
        image = image + per_sample(self._uniform(n, *self.shift_offsets), apply, 0.0)
        # smoothing (RandGaussianSmoothd)
        apply = self._coin(n, self.smooth_prob)
        sigmas = self._uniform(n, *self.smooth_sigma, cols=2)
        if bool(apply.any()):
            idx = to_device(apply.nonzero()[:, 0], device)
            image = image.index_copy(0, idx, self._smooth(image[idx], sigmas[apply]))
        # noise (RandGaussianNoised): std uniform in [0, noise_std]
        apply = self._coin(n, self.noise_prob)
        std = self._uniform(n, 0.0, self.noise_std)
        if bool(apply.any()):
            noise_gen = torch.Generator(device=device).manual_seed(
                int(torch.randint(0, 2**62, (1,), generator=self.generator))
            )
            noise = torch.randn(image.shape, generator=noise_gen, device=device)
            image = image + noise * per_sample(std, apply, 0.0)
        return image, label


class AugmentedBatch(PrepareBatch):
    """`prepare_batch` of the SupervisedTrainer: move the batch to the device as MONAI's default does, then augment it
    there with `augmentation` (a `BatchAugmentation`).

    Args:
        augmentation: the batch augmentation; None passes the batch through (validation, or augmentation off).
    """

    def __init__(self, augmentation: BatchAugmentation | None) -> None:
        self.augmentation = augmentation

    def set_random_state(self, seed: int) -> None:
        if self.augmentation is not None:
            self.augmentation.set_random_state(seed)

    def __call__(self, batchdata: dict[str, torch.Tensor], device=None, non_blocking: bool = False, **kwargs: Any):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if self.augmentation is None:
            return image, label
        # plain tensors: MetaTensor bookkeeping of every batched op would cost more than the ops themselves
        image = convert_to_tensor(image, track_meta=False)
        label = None if label is None else convert_to_tensor(label, track_meta=False)
        return self.augmentation(image, label)
