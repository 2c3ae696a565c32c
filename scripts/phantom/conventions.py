"""The phantoms' conventions: OAI-ZIB's default grid and field of view, and the tissue codes of the full tissue map.

Why a module of its own: the anatomy, the painter, the acquisition and the writer all use these, and they must agree.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SHAPE: tuple[int, int, int] = (160, 384, 384)
DEFAULT_SPACING: tuple[float, float, float] = (0.7, 0.3646, 0.3646)
FIELD_OF_VIEW_MM: tuple[float, ...] = tuple(n * s for n, s in zip(DEFAULT_SHAPE, DEFAULT_SPACING))

# Tissue codes of the phantom's full tissue map; codes 0-4 are the OAI-ZIB label codes, the rest are unlabelled (0).
TISSUES: dict[int, str] = {
    0: "background",
    1: "femoral bone",
    2: "femoral cartilage",
    3: "tibial bone",
    4: "tibial cartilage",
    5: "patellar bone",
    6: "patellar cartilage",
    7: "fibula",
    8: "meniscus",
    9: "synovial fluid",
    10: "ligament or tendon",
    11: "muscle",
    12: "fat",
    13: "skin",
    14: "vessel",
}
TISSUE_CODES: dict[str, int] = {name: code for code, name in TISSUES.items()}
LABEL_OF_TISSUE = np.array([c if c <= 4 else 0 for c in range(256)], dtype=np.uint8)
