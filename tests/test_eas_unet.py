"""EAS U-Net: shapes in both modes, gradients, ECA kernel sizes, parameter budget, TorchScript round trip."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet

from scripts.networks import EAS, ECA, EASUNet, FirstOutput, default_dilations, eca_kernel_size
from scripts.networks.complexity import NETWORKS, bundle_network, complexity

TINY = (8, 16, 32, 64, 128)


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (48, 160)])
def test_shapes_train_and_eval(size):
    net = EASUNet(features=TINY)
    x = torch.randn(2, 1, *size)
    net.train()
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == 5
    assert all(o.shape == (2, 3, *size) for o in outputs)
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


def test_train_mode_without_gradients_returns_fused_logits():
    """MONAI Label's epistemic scoring runs the network in train mode (dropout on) under no_grad: one tensor."""
    net = EASUNet(features=TINY, dropout=0.2).train()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(0)
        out = net(x)
    torch.manual_seed(0)
    fused = net(x)[0]
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, fused)


def test_eval_output_equals_fused_train_output():
    net = EASUNet(features=TINY).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        fused = net(x)
        net.training = True  # top-level flag only: BN keeps its running statistics, forward returns the list
        outputs = net(x)
    assert torch.allclose(outputs[0], fused)


def test_gradients_reach_every_parameter():
    net = EASUNet(features=TINY, eas_levels=(3, 4)).train()
    outputs = net(torch.randn(2, 1, 32, 32))
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


@pytest.mark.parametrize("channels,k", [(16, 3), (32, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5)])
def test_eca_kernel_size(channels, k):
    assert eca_kernel_size(channels) == k
    assert ECA(2, channels).conv.kernel_size == (k,)


def test_eca_rescales_channels_only():
    eca = ECA(2, 16)
    x = torch.rand(2, 16, 8, 8) + 0.1
    y = eca(x)
    ratio = y / x  # one sigmoid weight per (sample, channel), constant over space, in (0, 1)
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-6)
    assert bool(((ratio > 0) & (ratio < 1)).all())


def test_eas_branches_and_shape():
    eas = EAS(2, 32, 48, dilations=(1, 2, 3))
    assert [b.depthwise.conv.dilation for b in eas.atrous] == [(1, 1), (2, 2), (3, 3)]
    assert eas(torch.randn(2, 32, 12, 12)).shape == (2, 48, 12, 12)
    assert eas.train()(torch.randn(1, 32, 12, 12)).shape == (1, 48, 12, 12)  # batch of 1 trains (no BN on pooling)


@pytest.mark.parametrize("level,rates", [(4, (2, 4, 8)), (3, (4, 8, 16)), (2, (8, 16, 32))])
def test_default_dilations(level, rates):
    assert default_dilations(level, 384) == rates


def test_eas_placement_is_configurable():
    net = EASUNet(features=TINY, eas_levels=(2, 4))
    assert hasattr(net.down_2, "eas") and hasattr(net.down_4, "eas")
    assert not hasattr(net.down_1, "eas") and not hasattr(net.down_3, "eas")
    with pytest.raises(ValueError, match="encoder levels 1..4"):
        EASUNet(features=TINY, eas_levels=(0,))
    with pytest.raises(ValueError, match="5 widths"):
        EASUNet(features=(8, 16, 32))


def test_deep_supervision_off_is_plain_unet_path():
    net = EASUNet(features=TINY, deep_supervision=False)
    assert net.fusion is None
    x = torch.randn(1, 1, 32, 32)
    out = net.train()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 32, 32)
    assert torch.allclose(out, net.head(net.upcat_1(*_decoder_inputs(net, x))))


def _decoder_inputs(net: EASUNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = net.stem(x)
    x1 = net.down_1(x0)
    x2 = net.down_2(x1)
    x3 = net.down_3(x2)
    u4 = net.upcat_4(net.down_4(x3), x3)
    return net.upcat_2(net.upcat_3(u4, x2), x1), x0


@pytest.mark.parametrize("features", [(32, 64, 128, 256, 512), (64, 128, 256, 512, 1024)])
def test_fewer_parameters_than_basic_unet(features):
    ours = sum(p.numel() for p in EASUNet(features=features).parameters())
    basic = sum(
        p.numel() for p in BasicUNet(spatial_dims=2, out_channels=3, features=(*features, features[0])).parameters()
    )
    print(f"EAS U-Net {ours:,} vs BasicUNet {basic:,} parameters at widths {features}: ratio {ours / basic:.3f}")
    assert ours < basic


def test_dropout_argument_is_applied():
    net = EASUNet(features=TINY, dropout=0.3)
    rates = {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3}


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_torchscript_round_trip(tmp_path, deep_supervision):
    net = EASUNet(features=TINY, deep_supervision=deep_supervision).eval()
    scripted = torch.jit.script(net)
    path = tmp_path / "model.ts"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        assert (loaded(x) - net(x)).abs().max() < 1e-4


def test_first_output_wrapper():
    class TwoOutputs(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x + 1, x + 2]

    wrapped = FirstOutput(TwoOutputs())
    x = torch.zeros(1, 1, 4, 4)
    assert len(wrapped.train()(x)) == 2
    assert torch.equal(wrapped.eval()(x), x + 1)


def test_unetplusplus_config_uses_its_full_depth_output():
    """BasicUNetPlusPlus lists X^{0,1}..X^{0,4}; the bundle must evaluate (and weigh most) the deepest, X^{0,4}."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(["configs/train.json", "configs/networks/unetplusplus.json"])
    parser["network_def"]["network"]["features"] = [4, 8, 16, 32, 64, 4]
    net = parser.get_parsed_content("network_def")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        train_out = net.train()(x)  # first: a train-mode pass updates the batch-norm statistics
        assert len(train_out) == 4
        assert torch.equal(train_out[0], net.network.train()(x)[-1])  # weight 1 in DeepSupervisionLoss
        shallow_to_deep = net.network.eval()(x)
        assert len(shallow_to_deep) == 4
        assert torch.equal(net.eval()(x), shallow_to_deep[-1])
    scripted = torch.jit.script(net.eval())
    with torch.no_grad():
        assert torch.allclose(scripted(x), shallow_to_deep[-1])


def test_3d_variant():
    net = EASUNet(spatial_dims=3, features=(4, 8, 16, 32, 64), reference_size=32).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


@pytest.mark.parametrize(
    "name,parameters,flops",
    [
        ("EAS U-Net (32..512)", 3_901_443, 11_344_024_576),
        ("EAS U-Net (64..1024, paper widths)", 15_482_819, 43_815_118_848),
        ("U-Net (BasicUNet)", 7_782_915, 57_491_324_928),
        ("U-Net++ (BasicUNetPlusPlus)", 9_119_020, 147_267_256_320),
        ("Attention U-Net (AttentionUnet)", 7_939_811, 47_534_505_984),
    ],
)
def test_bundle_network_complexity(name, parameters, flops):
    """The parameter and FLOP table of docs/README.md, networks built from the configs (FLOPs of one 1x1x384x384
    slice in eval mode counted on the meta device, which gives the same counts as on CPU without the compute)."""
    files, keys = NETWORKS[name]
    counts = complexity(bundle_network(files, **keys), size=384, device="meta")
    assert counts == {"parameters": parameters, "flops": flops}
