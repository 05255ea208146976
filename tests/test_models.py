"""lucir.models: ResNet-32 / ResNet-18 with no ReLU after the last block, the digits ConvNet
(DESIGN §3 'Networks', LUCIR_REFERENCE §2.1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.heads import CosineHead
from lucir.models import BasicBlock, ConvNet, IncrementalNet, ResNet18, ResNetCifar, make_backbone


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_resnet32_has_3_stages_of_5_basic_blocks_with_widths_16_32_64():
    net = ResNetCifar(5)
    blocks = [b for b in net.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 15
    widths = [b.conv2.out_channels for b in blocks]
    assert widths == [16] * 5 + [32] * 5 + [64] * 5
    strides = [b.conv1.stride[0] for b in blocks]
    assert strides == [1] * 5 + [2] + [1] * 4 + [2] + [1] * 4
    # 1x1-conv + BN shortcut exactly where the shape changes
    with_shortcut = [i for i, b in enumerate(blocks) if b.shortcut is not None]
    assert with_shortcut == [5, 10]
    assert all(isinstance(blocks[i].shortcut[0], nn.Conv2d) and blocks[i].shortcut[0].kernel_size == (1, 1)
               and isinstance(blocks[i].shortcut[1], nn.BatchNorm2d) for i in with_shortcut)
    # only the very last block has no ReLU
    assert [b.last for b in blocks] == [False] * 14 + [True]
    # 0.46 M parameters (LUCIR_REFERENCE §9): 32 weight layers = 1 stem conv + 30 block convs + (the head)
    assert 0.45e6 < _n_params(net) < 0.48e6
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 31


def test_resnet32_gives_64d_features_that_can_be_negative_and_blocks_before_are_relud():
    torch.manual_seed(0)
    net = ResNetCifar(5)
    x = torch.randn(8, 3, 32, 32)
    seen = {}
    net.blocks[13].register_forward_hook(lambda m, i, o: seen.__setitem__("penultimate", o))
    net.blocks[14].register_forward_hook(lambda m, i, o: seen.__setitem__("last", o))
    for mode in (net.train, net.eval):
        mode()
        f = net(x)
        assert f.shape == (8, 64) and net.feature_dim == 64
        assert (seen["penultimate"] >= 0).all()  # ReLU after every block but the last
        assert (seen["last"] < 0).any()          # no ReLU after the last block
        assert torch.allclose(f, seen["last"].mean(dim=(2, 3)), atol=1e-6)  # global average pool of it
    # a trained network can shift the last block's output below zero: nothing clips it
    with torch.no_grad():
        net.blocks[14].bn2.bias.fill_(-5.0)
    net.eval()
    assert (net(x) < 0).any(), "pooled features never negative: a ReLU after the last block?"
    net.blocks[14].last = False  # the unmodified network: features are never negative
    assert (net(x) >= 0).all()


def test_resnet32_kaiming_fan_out_init_and_bn_ones_zeros():
    torch.manual_seed(0)
    net = ResNetCifar(5)
    conv = net.blocks[14].conv2  # 64 -> 64, 3x3: fan_out = 64 * 9
    std = float(conv.weight.detach().std())
    assert std == pytest.approx((2.0 / (64 * 9)) ** 0.5, rel=0.1)
    bn = net.blocks[3].bn1
    assert torch.equal(bn.weight.detach(), torch.ones_like(bn.weight)) and torch.equal(bn.bias.detach(), torch.zeros_like(bn.bias))


def test_resnet18_gives_512d_features_that_can_be_negative():
    torch.manual_seed(0)
    net = ResNet18()
    blocks = [b for b in net.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 8 and [b.last for b in blocks] == [False] * 7 + [True]
    assert [b.conv2.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    net.eval()
    x = torch.randn(2, 3, 64, 64)  # any size works with the adaptive pool; 224 in real use
    f = net(x)
    assert f.shape == (2, 512) and net.feature_dim == 512
    with torch.no_grad():
        net.blocks[7].bn2.bias.fill_(-5.0)
    assert (net(x) < 0).any()  # no ReLU after layer4's last block
    net.blocks[7].last = False
    assert (net(x) >= 0).all()
    assert 11.0e6 < _n_params(net) < 11.3e6  # torchvision resnet18 without its fc: 11.18 M


def test_convnet_on_1x8x8_gives_64d_features():
    torch.manual_seed(0)
    net = ConvNet(1)
    f = net(torch.randn(5, 1, 8, 8))
    assert f.shape == (5, 64) and net.feature_dim == 64
    assert (f < 0).any()  # the last conv-BN has no ReLU (train-mode BN centres it)


@pytest.mark.parametrize("name, shape", [("resnet32", (4, 3, 32, 32)), ("convnet", (4, 1, 8, 8))])
def test_plain_backbone_for_the_fc_rungs_has_the_last_relu(name, shape):
    torch.manual_seed(0)
    plain, modified = make_backbone(name, shape[1], last_relu=True), make_backbone(name, shape[1])
    x = torch.randn(shape)
    assert (plain(x) >= 0).all()
    assert (modified(x) < 0).any() or name == "resnet32"  # a fresh ResNet-32 happens to stay positive
    assert plain.feature_dim == modified.feature_dim == 64


def test_make_backbone_names_and_unknown_name():
    assert isinstance(make_backbone("resnet32", 3), ResNetCifar)
    assert isinstance(make_backbone("resnet18", 3), ResNet18)
    assert isinstance(make_backbone("convnet", 1), ConvNet)
    with pytest.raises(ValueError, match="resnet32"):
        make_backbone("vgg", 3)


def test_incremental_net_returns_features_scores_and_logits():
    torch.manual_seed(0)
    bb = ConvNet(1)
    head = CosineHead(64, 0, 3, eta_init=4.0)
    net = IncrementalNet(bb, head).eval()
    x = torch.randn(2, 1, 8, 8)
    f, s, z = net(x)
    assert torch.allclose(f, bb(x))
    assert s.shape == (2, 3) and torch.allclose(z, 4.0 * s)
    assert (s.abs() <= 1 + 1e-6).all()
