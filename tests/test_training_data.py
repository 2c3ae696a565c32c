"""What the training loader hands the trainer, and the handlers that keep the loop free of host syncs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor, list_data_collate

from scripts.augmentation import to_device
from scripts.handlers import NoLossScalingInBFloat16, OutputAsList
from scripts.phantom import write_phantom_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPE = (10, 50, 70)  # in-plane size not a multiple of 16: the cached volume is padded to 64 x 80


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, num_cases=3, shape=SHAPE, num_test=0)
    return root


def _train_dataset(configs: list[str], overrides: dict):
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / c) for c in configs])
    parser.update({"bundle_root": str(REPO_ROOT), "num_workers": 0, "inplane_spacing": -1, **overrides})
    return parser.get_parsed_content("train#dataset"), parser


@pytest.mark.parametrize(
    "configs, subdir, overrides",
    [
        (["configs/train.json"], ".", {}),
        (
            ["configs/train.json", "configs/train_from_labels.json"],
            "labelsTr",
            {"datalist_layout": "labels", "label_preset": "oai-zib", "synthesis_seed": 3},
        ),
    ],
    ids=["images", "labels-only"],
)
def test_loader_gives_plain_padded_cartilage_slices(phantoms, configs, subdir, overrides):
    dataset, parser = _train_dataset(configs, {"dataset_dir": str(phantoms / subdir), **overrides})
    per_volume = parser.get_parsed_content("slices_per_volume")
    item = dataset[0]
    assert isinstance(item, list) and len(item) == per_volume
    batch = list_data_collate([dataset[0], dataset[1]])
    image, label = batch["image"], batch["label"]
    # plain tensors: no MetaTensor bookkeeping per slice (the augmentation on the device drops it anyway)
    assert type(image) is torch.Tensor and type(label) is torch.Tensor
    assert not isinstance(image, MetaTensor)
    assert image.shape == (2 * per_volume, 1, 64, 80) and label.shape == image.shape
    assert image.dtype == torch.float32 and label.dtype == torch.uint8
    # every slice holds cartilage (crop ratios 0:1:1), nothing outside the original field of view
    assert all(int(s.max()) > 0 for s in label)
    assert int(label[..., 50:, :].max()) == 0 and int(label[..., 70:].max()) == 0
    assert set(torch.unique(label).tolist()) <= {0, 1, 2}


def test_no_loss_scaling_in_bfloat16_only():
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # a stand-in for MONAI's enabled one
    bf16 = SimpleNamespace(scaler=scaler, amp_kwargs={"dtype": torch.bfloat16})
    NoLossScalingInBFloat16()(bf16)
    assert bf16.scaler is not scaler and not bf16.scaler.is_enabled()
    fp16 = SimpleNamespace(scaler=scaler, amp_kwargs={})  # float16 autocast, MONAI's default: keep the scaler
    NoLossScalingInBFloat16()(fp16)
    assert fp16.scaler is scaler
    off = SimpleNamespace(scaler=None, amp_kwargs={"dtype": torch.bfloat16})  # amp off
    NoLossScalingInBFloat16()(off)
    assert off.scaler is None


def test_output_as_list_feeds_monai_loggers():
    from monai.handlers import from_engine

    loss = torch.tensor(0.25)
    engine = SimpleNamespace(state=SimpleNamespace(output={"loss": loss, "pred": [torch.zeros(2, 3)]}))
    OutputAsList()(engine)
    assert isinstance(engine.state.output, list) and len(engine.state.output) == 1
    assert from_engine(["loss"], first=True)(engine.state.output) is loss  # still a tensor: no .item()
    OutputAsList()(engine)  # already a list: unchanged
    assert len(engine.state.output) == 1 and isinstance(engine.state.output[0], dict)


def test_to_device_on_cpu_is_a_plain_copy():
    x = torch.arange(4)
    y = to_device(x, torch.device("cpu"))
    assert torch.equal(x, y) and y.device.type == "cpu"
