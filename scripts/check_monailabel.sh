#!/usr/bin/env bash
# MONAI Label check (not part of CI: monailabel 0.8.5 needs its own environment of about 8 GB and several minutes).
# Builds .venv-monailabel/ (git-ignored) on first use, then drives the bundle through MONAI Label's own BundleInferTask
# and BundleTrainTask (tests/monailabel_check.py) and prints a JSON summary; exit status 0 when every check passed.
#
#   bash scripts/check_monailabel.sh [--keep] [--workdir DIR] [--shape 32,128,128]
#
# Why the order below: monailabel 0.8.5 pulls torchvision 0.29.1, which needs torch 2.14.1; installing both first keeps
# pip from resolving them again. monailabel then pins numpy<2 (1.26.4) and jsonschema<4 next to monai 1.6.1.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MONAILABEL_VENV:-.venv-monailabel}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import monailabel" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install torch==2.14.1 torchvision==0.29.1
    "$VENV/bin/pip" install monailabel==0.8.5 monai==1.6.1 pytorch-ignite==0.5.5 nibabel==5.4.2 fire==0.7.1
fi
# onnx and onnxruntime (requirements.txt; configs' cpu_runtime), also into environments built before they were
# required; "numpy<2" keeps monailabel's pin (the newest ml_dtypes, an onnx dependency, would pull numpy 2)
"$VENV/bin/python" -c "import onnx, onnxruntime" 2>/dev/null \
    || "$VENV/bin/pip" install onnx==1.23.2 onnxruntime==1.32.0 "numpy<2"
"$VENV/bin/python" -c "import monailabel, monai, torch, numpy; print('monailabel', monailabel.__version__, \
'monai', monai.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"
exec "$VENV/bin/python" tests/monailabel_check.py "$@"
