"""cpu_runtime: the network in onnxruntime where PyTorch would run it in fp32 on a CPU, with the same outputs."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SliceInferer

from scripts import onnx_runtime, precision
from scripts.networks import EASUNet, fold_batch_norms

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch's exporter imports it

TINY = (8, 16, 32, 64, 128)


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = EASUNet(features=TINY)
    for m in net.modules():  # batch-norm statistics that are not the identity, so folding and export matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _slices(sw: int = 3) -> SliceInferer:
    return SliceInferer(roi_size=[-1, -1], spatial_dim=0, sw_batch_size=sw, progress=False)


@pytest.fixture
def fp32_cpu(monkeypatch):
    """A CPU without native bf16, where `auto` picks onnxruntime."""
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)


def test_auto_runs_onnxruntime_with_pytorchs_outputs(fp32_cpu, caplog):
    net = _net()
    x = torch.randn(1, 1, 5, 48, 64)  # 5 slices in chunks of 3: a full and a partial chunk through the same session
    inferer = onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="auto", amp=True)
    assert inferer.uses_onnxruntime(net)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="scripts.onnx_runtime"):
        expected = _slices()(x, net)
        actual = inferer(x, net)
    assert actual.shape == expected.shape == (1, 3, 5, 48, 64)
    assert float((actual - expected).abs().max()) < 1e-4
    assert "runs in onnxruntime" in caplog.text
    assert inferer._network is not None and inferer._network._session is not None


def test_session_is_reused_and_rebuilt_when_the_weights_change(fp32_cpu):
    net = _net(0)
    x = torch.randn(1, 1, 2, 32, 32)
    inferer = onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="auto")
    with torch.inference_mode():  # an engine's inference mode: the export must still trace
        first = inferer(x, net)
    session = inferer._network._session
    with torch.no_grad():
        inferer(x, net)
    assert inferer._network._session is session  # same weights: no second export
    net.load_state_dict(_net(1).state_dict())  # a checkpoint loaded in place (MONAI Label's reload of a new model)
    with torch.no_grad():
        second = inferer(x, net)
        expected = net(x[0].permute(1, 0, 2, 3)).permute(1, 0, 2, 3).unsqueeze(0)
    assert inferer._network._session is not session
    assert float((second - expected).abs().max()) < 1e-4
    assert float((second - first).abs().max()) > 1e-3  # the new weights are the ones that ran
    fold_batch_norms(net)  # batch norms folded: other modules and tensors, another export, the same function
    with torch.no_grad():
        folded = inferer(x, net)
    assert float((folded - second).abs().max()) < 1e-4


@pytest.mark.parametrize("case", ["torch", "train_mode", "native_bf16", "amp_off_torch", "compiled"])
def test_pytorch_runs_where_onnxruntime_would_not_help_or_cannot_serve(case, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: case == "native_bf16")
    net = _net()
    runtime = "torch" if case in ("torch", "amp_off_torch") else "auto"
    inferer = onnx_runtime.OnnxRuntimeInferer(_slices(), runtime=runtime, amp=case != "amp_off_torch")
    if case == "train_mode":
        net.train()  # MONAI Label's dropout sampling runs the network in train mode
    if case == "compiled":
        net = torch.compile(net)  # `--compile True`: the compiled module, not an export of it
    assert not inferer.uses_onnxruntime(net)


def test_auto_without_native_bf16_but_amp_off_still_uses_onnxruntime(fp32_cpu):
    assert onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="auto", amp=False).uses_onnxruntime(_net())


def test_forced_onnxruntime_runs_even_where_bf16_is_native(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="onnxruntime").uses_onnxruntime(_net())
    assert not onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="auto").uses_onnxruntime(_net())


def test_unknown_runtime_and_missing_package_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="cpu_runtime 'tensorrt' is not one of auto, torch, onnxruntime"):
        onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="tensorrt")
    monkeypatch.setattr(onnx_runtime, "onnxruntime_available", lambda: False)
    with pytest.raises(ValueError, match="needs the onnx and onnxruntime packages"):
        onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="onnxruntime")
    auto = onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="auto")  # auto: PyTorch when it is missing
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    assert not auto.uses_onnxruntime(_net())


class _Unexportable(torch.nn.Module):
    """A network the ONNX exporter refuses (data-dependent Python control flow on a tensor value)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            raise RuntimeError("cannot export this")
        return self.conv(x)


def test_auto_falls_back_to_pytorch_when_the_export_fails(fp32_cpu, caplog):
    net = _Unexportable().eval()
    x = torch.randn(1, 1, 2, 16, 16)
    inferer = onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="auto")
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="scripts.onnx_runtime"):
        out = inferer(x, net)
        assert torch.allclose(out, _slices()(x, net))
        assert "the ONNX export failed (cannot export this)" in caplog.text
        assert not inferer.uses_onnxruntime(net)  # not tried again for this network
    forced = onnx_runtime.OnnxRuntimeInferer(_slices(), runtime="onnxruntime")
    with torch.no_grad(), pytest.raises(RuntimeError, match="cannot export this"):
        forced(x, net)


@pytest.mark.parametrize(
    ("files", "key"),
    [
        (["configs/inference.json"], "inferer"),  # also what MONAI Label's infer task instantiates
        (["configs/train.json"], "validate#inferer"),
        (["configs/train.json", "configs/evaluate.json"], "validate#inferer"),
    ],
)
def test_configs_chain_autocast_cpu_runtime_and_the_slice_inferer(files, key):
    """Every config's inference chain: AutocastInferer(amp) -> OnnxRuntimeInferer(cpu_runtime, amp) ->
    SliceInferer over sagittal slices (axis 0)."""
    for runtime, amp in (("auto", True), ("torch", False), ("auto", False)):
        parser = ConfigParser()
        parser.read_config(files)
        parser.update({"cpu_runtime": runtime, "amp": amp})
        inferer = parser.get_parsed_content(key)
        assert isinstance(inferer, precision.AutocastInferer) and inferer.amp is amp
        inner = inferer.inferer
        assert isinstance(inner, onnx_runtime.OnnxRuntimeInferer)
        assert inner.runtime == runtime and inner.amp is amp
        assert isinstance(inner.inferer, SliceInferer) and inner.inferer.spatial_dim == 0
