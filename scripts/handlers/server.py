"""Whether the bundle runs under a MONAI Label server, which changes how training reads labels and writes models."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

__all__ = ["monailabel_server"]

logger = logging.getLogger(__name__)


def monailabel_server(environ: Mapping[str, str] | None = None, announce: bool = True) -> bool:
    """True when the bundle runs under a MONAI Label server, whose `start_server` exports its settings as environment
    variables (`MONAI_LABEL_APP_DIR` is the app folder). MONAI Label's datastore holds labels in the bundle's own
    classes (0, 1 femoral, 2 tibial cartilage) and it fine-tunes `models/model.pt` in place, so `train.json` then reads
    labels with the `cartilage` preset and lets training write into a `models/` that holds earlier files.
    `announce`: log that (train.json); inference.json asks without it."""
    app_dir = (os.environ if environ is None else environ).get("MONAI_LABEL_APP_DIR", "")
    if app_dir and announce:
        logger.info(
            "MONAI Label server detected (MONAI_LABEL_APP_DIR=%s): labels are read as the bundle's classes "
            "(label_preset 'cartilage'), and training may write into a models/ folder that holds earlier files",
            app_dir,
        )
    return bool(app_dir)
