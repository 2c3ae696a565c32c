"""bf16 on the CPU: when the configs switch it on, and that the evaluators then really run the network in bf16."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedEvaluator
from monai.inferers import SliceInferer

from scripts import precision
from scripts.batch import FailSafeEvaluator, FailureLog


class _DtypeProbe(torch.nn.Module):
    """A 2D conv that records the dtype its output had (bf16 under CPU autocast, float32 otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.seen.append(y.dtype)
        return y


def _run(evaluator_cls, cpu_amp: bool, **extra) -> tuple[_DtypeProbe, torch.Tensor]:
    net = _DtypeProbe().eval()
    data = [{"image": torch.randn(1, 1, 4, 8, 8), "label": torch.zeros(1, 1, 4, 8, 8)}]
    outputs = []
    evaluator = evaluator_cls(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=net,
        inferer=SliceInferer(roi_size=[-1, -1], spatial_dim=0, sw_batch_size=2),
        cpu_amp=cpu_amp,
        decollate=False,
        **extra,
    )
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output["pred"]))
    evaluator.run()
    return net, outputs[0]


@pytest.mark.parametrize("evaluator_cls", [precision.CpuAutocastEvaluator, FailSafeEvaluator])
@pytest.mark.parametrize("cpu_amp", [True, False])
def test_evaluators_autocast_the_network_on_cpu_only_when_asked(evaluator_cls, cpu_amp, tmp_path):
    extra = {"failures": FailureLog(str(tmp_path))} if evaluator_cls is FailSafeEvaluator else {}
    net, pred = _run(evaluator_cls, cpu_amp, **extra)
    assert len(net.seen) == 2  # 4 slices in chunks of 2
    assert set(net.seen) == {torch.bfloat16 if cpu_amp else torch.float32}
    assert pred.dtype == torch.float32  # the inferer accumulates in the input's dtype
    assert pred.shape == (1, 3, 4, 8, 8)
    assert issubclass(evaluator_cls, SupervisedEvaluator)


def test_cpu_autocast_rule(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: True)
    assert precision.cpu_autocast_enabled(True, "cpu") is True
    assert precision.cpu_autocast_enabled(True, torch.device("cpu")) is True
    assert precision.cpu_autocast_enabled(False, "cpu") is False
    assert precision.cpu_autocast_enabled(True, "cuda:0") is False  # MONAI's own amp handles CUDA
    monkeypatch.setattr(precision, "cpu_bf16_supported", lambda: False)
    with caplog.at_level(logging.INFO, logger="scripts.precision"):
        assert precision.cpu_autocast_enabled(True, "cpu") is False
    assert "no native bf16" in caplog.text


def test_cpu_bf16_supported_is_false_without_onednn(monkeypatch):
    assert isinstance(precision.cpu_bf16_supported(), bool)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert precision.cpu_bf16_supported() is False


@pytest.mark.parametrize(
    ("files", "key"),
    [
        (["configs/inference.json"], "evaluator#cpu_amp"),
        (["configs/train.json"], "validate#evaluator#cpu_amp"),
        (["configs/train.json", "configs/evaluate.json"], "validate#evaluator#cpu_amp"),
    ],
)
def test_configs_switch_cpu_bf16_with_amp(files, key):
    for amp in (True, False):
        parser = ConfigParser()
        parser.read_config(files)
        parser.update({"amp": amp, "device": "cpu"})
        assert parser.get_parsed_content(key) is (amp and precision.cpu_bf16_supported())
