"""Procedural knee MR phantoms: sagittal DESS-like volumes with OAI-ZIB label maps, deterministic by seed.

Why: the bundle must train, evaluate and be tested without any licensed data. The phantoms follow OAI-ZIB's conventions
(label codes 0 background, 1 femoral bone, 2 femoral cartilage, 3 tibial bone, 4 tibial cartilage; RAS with axis 0
left-right, so `vol[i]` is a sagittal slice; 160 x 384 x 384 voxels of 0.7 x 0.3646 x 0.3646 mm by default) so that
every config, transform and metric written for the real data runs unchanged on them.

Anatomy model. Every structure is an approximate signed distance field (SDF, mm, negative inside) built from a few
analytic primitives, so that cartilage thickness, gaps and partial volume are in physical units at any resolution:

- Femur (in its own frame, rotated by a random flexion angle about the condyle centre): medial and lateral condyles are
  superellipsoids, elliptic in the sagittal plane (flat distally, round posteriorly) and box-like across, separated by
  the intercondylar notch; a wider trochlea with a patellar groove joins them anteriorly; a shaft rises to the top of
  the field of view. The parts are merged with a smooth minimum, which gives the metaphyseal flare.
- Tibia: a plateau height field (medial compartment concave, lateral convex, posterior slope, intercondylar spines)
  intersected with a superelliptic outline that narrows to the shaft, plus the tuberosity. Each compartment is placed
  from the femoral condyle above it so that cartilage, a thin joint space, and cartilage stack up without overlap.
- Cartilage: a shell `0 < d_bone < t` over the articular part of each bone, whose thickness t (about 1.5-3.5 mm) varies
  smoothly, tapers to zero at the margins and can carry focal defects (osteoarthritis). Femoral cartilage covers the
  condyles (distal and posterior) and the trochlea; tibial cartilage the two plateaus; so only the slices through the
  condyles and the trochlea hold cartilage, with the notch between them.
- Unlabelled structures that make the task hard: patella with its own (thick) cartilage, menisci (dark wedges at the
  joint periphery), cruciate and collateral ligaments, patellar and quadriceps tendons, fibula head, joint fluid that
  lines the cartilage, suprapatellar bursa, Hoffa's and popliteal fat, popliteal vessels, muscle, subcutaneous fat,
  skin, bone-marrow lesions and physeal scars.

Image model (OAI DESS, water excitation): tissues are painted in anatomical order with partial-volume alpha from the
SDFs; fluid brightest, cartilage bright with a depth gradient, marrow darker with trabecular texture, cortex, menisci,
ligaments and tendons dark, muscle intermediate-dark with fibre streaks, fat suppressed; the tissue levels are jittered
and raised to a random gamma per case. Then a random gain, an anisotropic Gaussian point-spread function in mm, a smooth
multiplicative bias field, and Rician noise; stored as int16 (about 0..1000).

Determinism: anatomy and textures are drawn from `seed` before anything that depends on the grid, so one seed gives the
same physical knee at any shape; dataset case i uses a seed derived from (seed, i), independent of the number of cases.

Modules: `conventions` (grid and tissue codes), `sdf` (distance primitives), `anatomy` (the random knee), `fields`
(grid, textures, the knee's SDFs), `painting`, `acquisition`, `simulate` (one case), `dataset` (folders, CLI).

Command line (the docstring of `scripts.phantom.dataset.main` is the help):
    python -m scripts.phantom OUTPUT_DIR --num_cases 12 --shape 40,96,96 --seed 0 --num_test 3 --format nii.gz
"""

from scripts.phantom.conventions import DEFAULT_SHAPE, DEFAULT_SPACING, FIELD_OF_VIEW_MM, TISSUES
from scripts.phantom.dataset import main, write_phantom_dataset
from scripts.phantom.simulate import KneePhantom, case_seed, default_spacing, generate_knee_phantom, simulate_knee

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING",
    "FIELD_OF_VIEW_MM",
    "TISSUES",
    "KneePhantom",
    "case_seed",
    "default_spacing",
    "simulate_knee",
    "generate_knee_phantom",
    "write_phantom_dataset",
    "main",
]
