"""ONNX export (`python -m scripts.export onnx`): the eval-mode network, dynamic batch and in-plane size, opset 18,
onnxruntime output equal to PyTorch within 1e-4; strict weight loading; no silent overwrite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts.export import DEFAULT_OPSET, check_onnx, load_network
from scripts.export import onnx as export_onnx_cli

onnx = pytest.importorskip("onnx", reason="onnx is in requirements.txt")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements.txt")

REPO_ROOT = Path(__file__).resolve().parents[1]
INFERENCE = REPO_ROOT / "configs" / "inference.json"


def random_checkpoint(path: Path, overrides: dict | None = None) -> Path:
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    for key, value in (overrides or {}).items():
        parser[key] = value
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, model.onnx) written by the documented command line."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = random_checkpoint(root / "model.pt")
    output = root / "model.onnx"
    cmd = [sys.executable, "-m", "scripts.export", "onnx", "--checkpoint", str(checkpoint), "--output", str(output)]
    cmd += ["--config", str(INFERENCE)]
    result = subprocess.run(
        cmd, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return checkpoint, output


def test_onnx_model_is_valid_with_documented_opset_and_names(exported):
    model = onnx.load(str(exported[1]))
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}.get("", None) == DEFAULT_OPSET == 18
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["pred"]


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (3, 1, 48, 112), (1, 1, 160, 96)])
def test_onnxruntime_matches_pytorch(exported, shape):
    """Dynamic batch and in-plane size (multiples of 16), within 1e-4 of the eval-mode PyTorch network."""
    network = load_network(exported[0], INFERENCE)
    assert check_onnx(network, exported[1], [shape], atol=1e-4) <= 1e-4


def test_onnx_output_is_the_fused_map(exported):
    session = onnxruntime.InferenceSession(str(exported[1]), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)})
    assert len(outputs) == 1 and outputs[0].shape == (2, 3, 32, 32)  # eval mode: no deep-supervision side outputs


def test_existing_output_is_kept(exported):
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx_cli(checkpoint=str(exported[0]), output=str(exported[1]), config=str(INFERENCE))


def test_checkpoint_of_another_network_is_refused(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "small.pt", {"network_def#features": [8, 16, 32, 64, 128]})
    with pytest.raises(SystemExit, match=r"^error: checkpoint .*small.pt does not fit the configured network EASUNet"):
        load_network(checkpoint, INFERENCE)
    with pytest.raises(SystemExit, match=r"^error: no model checkpoint at .*missing.pt"):
        load_network(tmp_path / "missing.pt", INFERENCE)
    assert not (tmp_path / "model.onnx").exists()


def test_training_record_travels_in_the_onnx_metadata(tmp_path, exported):
    """The preprocessing the model was trained with (model_preprocessing.json beside the checkpoint) is stored in the
    ONNX file; a checkpoint without a record gives a file without the entry, not an invented one."""
    import json

    from scripts.export import RECORD_METADATA_KEY
    from scripts.model_record import write_record

    checkpoint = random_checkpoint(tmp_path / "model.pt")
    record = {"inplane_spacing": -1, "intensity_percentiles": [0.5, 99.5]}
    write_record(checkpoint, record)
    output = tmp_path / "model.onnx"
    export_onnx_cli(checkpoint=str(checkpoint), output=str(output), config=str(INFERENCE))
    props = {p.key: p.value for p in onnx.load(str(output)).metadata_props}
    assert json.loads(props[RECORD_METADATA_KEY]) == record
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map[RECORD_METADATA_KEY]) == record

    assert RECORD_METADATA_KEY not in {p.key for p in onnx.load(str(exported[1])).metadata_props}


def test_unreadable_training_record_stops_the_export(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "model.pt")
    (tmp_path / "model_preprocessing.json").write_text("[1, 2")
    with pytest.raises(SystemExit, match=r"^error: cannot read the model's training record .*model_preprocessing"):
        export_onnx_cli(checkpoint=str(checkpoint), output=str(tmp_path / "model.onnx"), config=str(INFERENCE))
    assert not (tmp_path / "model.onnx").exists()
