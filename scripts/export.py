"""Export a trained network to ONNX and check it against PyTorch with onnxruntime.

Why: TorchScript (`python -m monai.bundle ckpt_export network_def ...`) serves PyTorch runtimes; ONNX serves
everything else (onnxruntime, TensorRT, OpenVINO). The network is built from the config's `network_def` (so the same
file that trained or runs it), loaded strictly from a plain state_dict with `weights_only=True`, put in eval mode (one
fused output, no deep-supervision list) and exported with batch, height and width dynamic; height and width must be
multiples of 16 at run time. The exported file is verified with onnxruntime before it is moved to its final name.
The preprocessing the model was trained with (`model_preprocessing.json` beside the checkpoint) travels inside the
ONNX file as the metadata entry `model_preprocessing` (JSON), since the file is useless without it.

Command line (the docstring of each command is its help; `--config` defaults to configs/inference.json):
    python -m scripts.export onnx --checkpoint models/model.pt --output models/model.onnx
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from scripts.cli import as_bool
from scripts.io_utils import atomic_path, check_writable_target
from scripts.model_record import read_record, record_path

__all__ = [
    "DEFAULT_OPSET",
    "RECORD_METADATA_KEY",
    "load_network",
    "export_onnx",
    "add_metadata",
    "check_onnx",
    "missing_onnx_packages",
    "onnx",
]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "pred"  # metadata.json's network_data_format keys
RECORD_METADATA_KEY = "model_preprocessing"  # ONNX metadata_props key of the training record
DYNAMIC_AXES = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}}


def missing_onnx_packages() -> list[str]:
    """Which of onnx (torch's exporter imports it) and onnxruntime (which runs and checks the export) are absent."""
    return [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]


def load_network(
    checkpoint: str | Path,
    config: str | Path | Sequence[str | Path] = "configs/inference.json",
    net_id: str = "network_def",
) -> torch.nn.Module:
    """Build `net_id` from `config` (one file, or a list merged in order), load `checkpoint` strictly, eval mode. A
    missing, damaged or mismatched checkpoint (e.g. the demo's narrower network exported without configs/demo.json)
    ends as one `error:` paragraph (`scripts.checks.require_checkpoint`), not a load_state_dict traceback."""
    from monai.bundle import ConfigParser

    from scripts.checks import check_state_dict, load_checkpoint, require_checkpoint, state_dict_of

    parser = ConfigParser()
    parser.read_config([str(c) for c in config] if isinstance(config, (list, tuple)) else str(config))
    network = parser.get_parsed_content(net_id)
    state = state_dict_of(load_checkpoint(require_checkpoint(str(checkpoint))))  # read once, checked, then loaded
    check_state_dict(state, network, str(checkpoint))
    network.load_state_dict(state, strict=True)
    return network.eval()


def export_onnx(
    network: torch.nn.Module, target: str | Path | BinaryIO, example: torch.Tensor, opset: int = DEFAULT_OPSET
) -> None:
    """Write `network` (eval mode) as ONNX with dynamic batch and in-plane size to `target`, a path or a binary file
    (`scripts.onnx_runtime` exports into memory). Works under an engine's `torch.inference_mode` too, which tracing
    cannot run in: it is left for the export, with a normal copy of `example`."""
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")  # chosen below
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        torch.onnx.export(
            network.eval(),
            (example.clone(),),
            str(target) if isinstance(target, (str, Path)) else target,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=DYNAMIC_AXES,
            dynamo=False,  # the TorchScript-based exporter: no onnxscript dependency, dynamic shapes via dynamic_axes
        )


def add_metadata(path: str | Path, entries: dict[str, str]) -> None:
    """Add (or replace) `entries` in the ONNX file's metadata_props, in place."""
    import onnx as onnx_lib

    model = onnx_lib.load(str(path))
    onnx_lib.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **entries})
    onnx_lib.save(model, str(path))


def check_onnx(
    network: torch.nn.Module, path: str | Path, shapes: Sequence[Sequence[int]], atol: float = 1e-4
) -> float:
    """Run `path` with onnxruntime on random inputs of each shape; return the largest absolute difference to PyTorch,
    or raise AssertionError when it exceeds `atol` (or the ONNX graph is invalid)."""
    import onnx as onnx_lib
    import onnxruntime

    onnx_lib.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected = network.eval()(x).numpy()
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if actual.shape != expected.shape:
            raise AssertionError(f"ONNX output {actual.shape} != PyTorch {expected.shape} for input {tuple(shape)}")
        worst = max(worst, float(np.abs(actual - expected).max()))
    if worst > atol:
        raise AssertionError(f"ONNX output differs from PyTorch by {worst:.3g} > {atol:g}")
    return worst


def onnx(
    checkpoint: str = "models/model.pt",
    output: str = "models/model.onnx",
    config: str = "configs/inference.json",
    net_id: str = "network_def",
    opset: int = DEFAULT_OPSET,
    size: int = 64,
    in_channels: int = 1,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> str:
    """Export the network of CONFIG with the weights of CHECKPOINT to ONNX at OUTPUT, verified with onnxruntime.

    Args:
        checkpoint: plain state_dict written by training (models/model.pt).
        output: the .onnx file to write (an existing file is kept unless --overwrite).
        config: bundle config with `net_id`; add a network override as a list, e.g.
            "['configs/train.json','configs/networks/unet.json']".
        net_id: config id of the network definition.
        opset: ONNX opset version.
        size: in-plane size of the example input used for export (a multiple of 16).
        in_channels: input channels (metadata.json: network_data_format.inputs.image.num_channels).
        atol: largest accepted absolute difference between onnxruntime and PyTorch outputs.
        overwrite: replace an existing OUTPUT.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        overwrite = as_bool(overwrite, "overwrite")  # `--overwrite false` is the text 'false': must not overwrite
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    check_writable_target(output, overwrite)
    missing = missing_onnx_packages()
    if missing:
        raise SystemExit(
            f"error: ONNX export needs {' and '.join(missing)}: pip install -r requirements.txt "
            "(or both at the versions pinned there)"
        )
    network = load_network(checkpoint, config, net_id)
    record = read_record(checkpoint)
    with atomic_path(output, overwrite) as tmp:
        export_onnx(network, tmp, torch.rand(1, in_channels, size, size), opset)
        if record is not None:
            add_metadata(tmp, {RECORD_METADATA_KEY: json.dumps(record, sort_keys=True)})
        worst = check_onnx(network, tmp, [(1, in_channels, size, size), (2, in_channels, size + 32, size + 16)], atol)
    logger.info("wrote %s (opset %d); onnxruntime matches PyTorch within %.2g", output, opset, worst)
    if record is None:
        logger.warning(
            "%s has no %s beside it: the ONNX file does not say which preprocessing its input needs",
            checkpoint,
            record_path(checkpoint).name,
        )
    else:
        logger.info("its metadata entry %r holds the training preprocessing %s", RECORD_METADATA_KEY, record)
    return str(output)


if __name__ == "__main__":
    from scripts.cli import run_command

    run_command({"onnx": onnx}, "scripts.export", user_errors=(FileExistsError,))
