"""Label map -> MR-like knee image, randomised (domain randomisation in the spirit of SynthSeg, Billot et al. 2023).

Why: no real knee MR image with cartilage labels is available to train on, but real label maps are (bones and
cartilage only). A network trained on images synthesised from them with intensities, textures, surroundings, blur,
bias, noise and contrast all randomised widely can only rely on what stays constant across draws: the *shape and
context* of cartilage (a thin layer on a bone surface, facing the opposing cartilage). That is what transfers to real
3D DESS scans from other sites and scanners.

Generative model (one draw per call; every range below is a keyword of `SynthesisParams`, default shown; sizes and
gamma are drawn log-uniformly, everything else uniformly):

1. **Roles.** Each code of the label preset gets a role from its name in `scripts.labels` (`tissues`): background,
   bone, cartilage, lesion or other. Femoral and tibial cartilage codes are remembered for the meniscus model.
2. **Structure intensities.** With probability `prior_prob` (0.75) the sample follows a DESS-like prior (`DESS_PRIOR`,
   our reading of water-excitation DESS: cartilage and fluid bright, fat-suppressed marrow darker, muscle
   intermediate, fat, tendon, meniscus and cortex dark); each structure still leaves that prior with probability
   `outlier_prob` (0.15). Otherwise every structure's mean is uniform in [0, 1] (SynthSeg style: the contrast between
   ALL structures is random). Cartilage codes share a base mean (+-15 %), so do bone codes; lesion codes (7-9) each get
   their own. One constraint keeps the label meaningful: cartilage differs by at least `min_contrast` (0.15) from the
   bone surface it sits on and from the fluid touching it; any other neighbour may match it.
3. **Surroundings** (everything the label map calls background): a base tissue (muscle or fat) under
   `background_layers` (2-6) thresholded smooth noise fields, feature size `background_scale_mm` (5-60 mm), area
   `background_fraction` (3-35 %), each with its own intensity from a palette (muscle, fat, tendon, vessel, fluid,
   cartilage-like). One layer is always as bright as cartilage and one as bright as fluid, and `ribbons` (1-4) thin
   curved bands (`ribbon_width_mm` 1-3 mm: the zero level set of a smooth field) are half the time cartilage-bright:
   brightness and thinness alone never mean cartilage. Air far from the anatomy with probability `air_prob` (0.25).
4. **Joint structures.** Bright synovial fluid / effusion in a patchy band next to cartilage (`fluid_prob` 0.7, width
   `fluid_width_mm` 0.3-5 mm). Dark meniscus-like wedges where femoral and tibial cartilage come within
   `meniscus_reach_mm` (2-8 mm) of each other (`meniscus_prob` 0.7). A dark cortical / subchondral rim inside every
   bone surface, also under cartilage (`rim_prob` 0.9, thickness `rim_thickness_mm` 0.4-2 mm, full resolution).
5. **Texture.** Every structure is multiplied by 1 + s * n, n a smooth noise field (feature size `texture_scale_mm`
   1-10 mm) and s a per-structure relative std from `texture_std` (0.02-0.2).
6. **Acquisition.** Partial-volume blur (Gaussian, sigma drawn per axis in mm from `blur_sigma_mm` 0-0.5, so
   anisotropic), a smooth multiplicative bias field exp(b * n) (`bias_strength` 0-0.4, feature size `bias_scale_mm`
   40-150 mm), scaling so the 99.5th percentile is 1, Rician noise (magnitude of a complex Gaussian, sigma
   `noise_std` 0-0.06 of that level), gamma (`gamma` 0.6-1.6), contrast and brightness (`contrast` 0.8-1.2,
   `brightness` -0.08-0.08), clipped to [0, 1] like a percentile-normalised real scan.

Speed: smooth fields and the surroundings (steps 3-5) are composed on a ~1 mm grid (the label map subsampled by whole
voxels) with soft-edged weights, then upsampled in one call; only background voxels take the surroundings, so every
labelled edge (cartilage included) stays at full resolution. Hence the fluid band and the meniscus wedges have outer
edges about 1 mm smooth, and the thinnest fluid band is about one grid cell.

All lengths are in mm and converted with the voxel spacing, so a 0.36 mm slice and a 1.5 mm thick-slice volume get
the same anatomy-sized features. Everything is pure torch on the label's device (CPU or CUDA); random scalars come
from a numpy Generator and noise fields from a torch Generator seeded from it, so one seed gives one image per device.
`synthesize_knee_mr` is the single implementation; `RandSynthesizeKneeMRd` (training) and `SynthesizeKneeMRd`
(validation: fixed per case, cacheable) only draw the seed and carry the metadata.

Modules: `params` (prior and ranges), `draws` (the random scalars), `fields` (tensor helpers), `render` (the image),
`transforms` (the entry point and the MONAI transforms).
"""

from scripts.synthesis.params import DESS_PRIOR, SynthesisParams
from scripts.synthesis.transforms import (
    RandSynthesizeKneeMRd,
    SynthesizeKneeMRd,
    case_rng,
    resolve_spacing,
    synthesize_knee_mr,
)

__all__ = [
    "DESS_PRIOR",
    "SynthesisParams",
    "synthesize_knee_mr",
    "RandSynthesizeKneeMRd",
    "SynthesizeKneeMRd",
    "resolve_spacing",
    "case_rng",
]
