"""bf16 wherever the bundle's inferer runs: the rule (a GPU or CPU with native bf16), that the wrapped inferer
really runs the network in bf16 and still returns float32, and that the configs wire it to `amp`."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SliceInferer

from scripts import precision


class _DtypeProbe(torch.nn.Module):
    """A 2D conv that records the dtype of its output (bf16 under CPU autocast, float32 otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.seen.append(y.dtype)
        return y


def _infer(amp: bool) -> tuple[_DtypeProbe, torch.Tensor]:
    """Call the inferer as MONAI Label's infer task does: `inferer(inputs, network)` under no_grad, no autocast."""
    net = _DtypeProbe().eval()
    inferer = precision.AutocastInferer(SliceInferer(roi_size=[-1, -1], spatial_dim=0, sw_batch_size=2), amp=amp)
    with torch.no_grad():
        pred = inferer(torch.randn(1, 1, 4, 8, 8), net)
    return net, pred


@pytest.mark.parametrize(
    ("amp", "native", "expected"),
    [(True, True, torch.bfloat16), (True, False, torch.float32), (False, True, torch.float32)],
)
def test_autocast_inferer_runs_the_network_in_bf16_only_where_asked_and_native(amp, native, expected, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: native)  # CPU autocast itself works on any CPU
    net, pred = _infer(amp)
    assert net.seen == [expected, expected]  # 4 slices in chunks of 2
    assert pred.dtype == torch.float32  # the slice inferer accumulates in the input's dtype
    assert pred.shape == (1, 3, 4, 8, 8)


def test_bf16_output_close_to_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    torch.manual_seed(0)
    net = _DtypeProbe().eval()
    x = torch.randn(1, 1, 4, 8, 8)
    slices = SliceInferer(roi_size=[-1, -1], spatial_dim=0, sw_batch_size=4)
    with torch.no_grad():
        low = precision.AutocastInferer(slices, amp=True)(x, net)
        ref = precision.AutocastInferer(slices, amp=False)(x, net)
    assert not torch.equal(low, ref)  # bf16 really ran
    assert torch.allclose(low, ref, atol=0.05)


def test_autocast_rule_and_log(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "cuda_bf16_supported", lambda device="cuda": True)
    assert precision.autocast_enabled(True, "cpu") is True
    assert precision.autocast_enabled(True, torch.device("cuda:0")) is True
    assert precision.autocast_enabled(False, "cuda") is False
    assert precision.autocast_enabled(True, "meta") is False
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    assert precision.autocast_enabled(True, "cpu") is False
    assert precision.autocast_enabled(True, "cuda") is True
    monkeypatch.setattr(precision, "cuda_bf16_supported", lambda device="cuda": False)  # a V100 or T4
    assert precision.autocast_enabled(True, "cuda:0") is False
    with caplog.at_level(logging.INFO, logger="scripts.precision"):
        _infer(amp=True)
    assert caplog.text.count("no native bf16") == 1  # logged once per inferer and device, not per chunk


def test_autocast_follows_the_device_the_network_runs_on():
    """CPU inputs with the network (or the inferer's sw_device) on a GPU must autocast for the GPU, not the CPU."""
    slices = SliceInferer(roi_size=[-1, -1], spatial_dim=0, sw_batch_size=2)
    inferer = precision.AutocastInferer(slices, amp=True)
    x = torch.zeros(1, 1, 4, 8, 8)
    assert inferer.compute_device(x, _DtypeProbe()) == torch.device("cpu")
    assert inferer.compute_device(x, _DtypeProbe().to("meta")) == torch.device("meta")  # parameters decide
    on_gpu = precision.AutocastInferer(SliceInferer(roi_size=[-1, -1], spatial_dim=0, sw_device="cuda:0"), amp=True)
    assert on_gpu.compute_device(x, lambda t: t) == torch.device("cuda:0")  # no parameters: the sw_device
    assert inferer.compute_device(x, lambda t: t) == torch.device("cpu")  # neither: the input's device


@pytest.mark.parametrize(
    ("available", "capability", "expected"),
    [(True, (7, 0), False), (True, (7, 5), False), (True, (8, 0), True), (True, (9, 0), True), (False, (9, 0), False)],
)
def test_cuda_bf16_needs_compute_capability_8(available, capability, expected, monkeypatch):
    """V100 (7.0) and T4 (7.5) have no bf16 convolutions in cuDNN; A100 (8.0) and H100 (9.0) do."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.cuda_bf16_supported("cuda:0") is expected
    assert precision.autocast_enabled(True, "cuda:0") is expected


def test_cuda_bf16_supported_is_false_where_the_device_cannot_be_queried(monkeypatch):
    def no_device(device=None):
        raise RuntimeError("CUDA error: invalid device ordinal")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", no_device)
    assert precision.cuda_bf16_supported("cuda:7") is False


def test_cuda_autocast_for_monai_engines_warns_once_per_older_gpu(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(precision, "_WARNED_GPUS", set())
    assert precision.cuda_autocast(True, "cpu") is False  # MONAI's engines autocast CUDA only
    monkeypatch.setattr(precision, "cuda_bf16_supported", lambda device="cuda": True)
    assert precision.cuda_autocast(True, "cuda:0") is True
    assert precision.cuda_autocast(False, "cuda:0") is False
    monkeypatch.setattr(precision, "cuda_bf16_supported", lambda device="cuda": False)
    with caplog.at_level(logging.WARNING, logger="scripts.precision"):
        assert precision.cuda_autocast(True, "cuda:0") is False
        assert precision.cuda_autocast(True, "cuda:0") is False
        assert precision.cuda_autocast(False, "cuda:1") is False  # amp off: nothing to say
    assert caplog.text.count("no native bf16") == 1 and "cuda:0" in caplog.text


def test_cpu_bf16_supported_is_false_without_onednn(monkeypatch):
    assert isinstance(precision.cpu_bf16_supported(), bool)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert precision.cpu_bf16_supported() is False


@pytest.mark.parametrize(("device", "amp", "expected"), [("cpu", True, torch.bfloat16), ("cpu", False, torch.float32)])
def test_training_inferer_autocasts_on_native_cpus_and_hands_the_loss_float32(device, amp, expected, monkeypatch):
    """train.json's training forward: bf16 on a CPU with native bf16 when `amp`, float32 outputs for the loss either
    way, and float32 gradients for the float32 weights."""
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    parser = ConfigParser()
    parser.read_config("configs/train.json")
    parser.update({"amp": amp, "device": f"$torch.device('{device}')"})
    inferer = parser.get_parsed_content("train#inferer")
    net = _DtypeProbe().train()
    outputs = inferer(torch.randn(2, 1, 8, 8), net)
    assert net.seen == [expected]
    assert outputs.dtype == torch.float32
    outputs.square().mean().backward()
    assert net.conv.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_training_inferer_leaves_cuda_autocast_to_the_trainer(native, monkeypatch):
    """On a GPU MONAI's engines autocast, in bf16 where the GPU has it natively and in fp32 on older GPUs."""
    monkeypatch.setattr(precision, "cuda_bf16_supported", lambda device="cuda": native)
    parser = ConfigParser()
    parser.read_config(["configs/train.json", "configs/evaluate.json"])
    parser.update({"amp": True, "device": "$torch.device('cuda:0')"})
    inferer = parser.get_parsed_content("train#inferer")
    assert isinstance(inferer, precision.AutocastInferer) and inferer.amp is False  # MONAI's trainer autocasts CUDA
    assert parser.get_parsed_content("train#trainer#amp") is native
    assert parser.get_parsed_content("validate#evaluator#amp") is native
    infer = ConfigParser()
    infer.read_config("configs/inference.json")
    infer.update({"amp": True, "device": "$torch.device('cuda:0')"})
    assert infer.get_parsed_content("evaluator#amp") is native


def test_float_outputs_cast_every_floating_tensor_in_lists_and_dicts():
    half = torch.ones(2, dtype=torch.bfloat16)
    labels = torch.ones(2, dtype=torch.int64)
    out = precision._to_float32([half, (half, labels), {"a": half}, None])
    assert out[0].dtype == torch.float32 and out[1][0].dtype == torch.float32 and out[2]["a"].dtype == torch.float32
    assert out[1][1] is labels and out[3] is None and isinstance(out[1], tuple)
