"""Backbones (DESIGN §3 'Networks'; LUCIR_REFERENCE §2.1).

* ResNet-32 for 32x32 images: 3 stages x 5 BasicBlocks, widths 16/32/64, 1x1-conv+BN shortcut
  where the shape changes, **no ReLU after the last block**, global average pool -> 64-d.
* ResNet-18 for ImageNet-size images with the ReLU removed after the last block of layer4 -> 512-d.
  For small images (``image_size`` <= 64) it takes the CIFAR-style stem (3x3 conv, stride 1, no
  max-pool), as CIL code does for 32-64 px inputs (e.g. PyCIL's ``convs/resnet.py`` for CIFAR); the
  ImageNet stem would shrink a 32 px image to 8 px before the first block.
* A small conv net for 8x8 digits in the same spirit (last conv without ReLU) -> 64-d.

Every backbone maps images to a feature vector that can be negative; heads live in ``heads.py``.
Conv weights: Kaiming-normal, fan_out; BN weight 1, bias 0.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, last: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.last = last

    def forward(self, x):
        # In-place ReLU and residual add on fresh BN outputs (BN's backward needs its input, not its
        # output), as the reference's ReLU(inplace=True) / ``out += residual``: no new activation
        # buffer per op, so no page faults of a fresh 8 MB tensor per op on the CPU
        # (docs/PERFORMANCE.md, "Where the time goes").  Same values, bit for bit.
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.shortcut is None else self.shortcut(x)
        return out if self.last else F.relu(out, inplace=True)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _ResNet(nn.Module):
    """Stem (``conv1``, BN, ReLU, and a 3x3 max-pool stride 2 when ``max_pool``), ``stages`` of ``blocks``
    BasicBlocks each ((width, stride of the first block)), global average pool; no ReLU after the last
    block unless ``last_relu`` (feature_dim: the last width)."""

    def __init__(self, conv1: nn.Conv2d, stages, blocks: int, last_relu: bool, max_pool: bool = False):
        super().__init__()
        self.conv1, self.bn1, self.max_pool = conv1, nn.BatchNorm2d(conv1.out_channels), max_pool
        layers, cin = [], conv1.out_channels
        for stage, (cout, stride) in enumerate(stages):
            for i in range(blocks):
                last = stage == len(stages) - 1 and i == blocks - 1 and not last_relu
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1, last=last))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.feature_dim = cin
        _init(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        if self.max_pool:
            x = F.max_pool2d(x, 3, 2, 1)
        x = self.blocks(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class ResNetCifar(_ResNet):
    """ResNet-(6n+2) for 32x32 inputs; n=5 gives ResNet-32 (feature_dim 64)."""

    def __init__(self, n: int = 5, in_channels: int = 3, last_relu: bool = False):
        super().__init__(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), ((16, 1), (32, 2), (64, 2)), n, last_relu)


class ResNet18(_ResNet):
    """ResNet-18 with no ReLU after the last block of layer4 (feature_dim 512).

    ``small_stem=False``: the ImageNet stem (7x7 conv stride 2 + 3x3 max-pool stride 2, reference
    ``modified_resnet.py``); ``True``: a 3x3 conv stride 1 and no max-pool, for images of 64 px or less."""

    def __init__(self, in_channels: int = 3, last_relu: bool = False, small_stem: bool = False):
        conv1 = (nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False) if small_stem
                 else nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False))
        super().__init__(conv1, ((64, 1), (128, 2), (256, 2), (512, 2)), 2, last_relu, max_pool=not small_stem)
        self.small_stem = small_stem


class ConvNet(nn.Module):
    """Small conv net for 8x8 digits: 3 conv-BN layers (the last without ReLU), avg pool -> 64-d."""

    def __init__(self, in_channels: int = 1, width: int = 32, last_relu: bool = False):
        super().__init__()
        self.last_relu = last_relu
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 64, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.feature_dim = 64
        _init(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = self.bn3(self.conv3(x))  # no ReLU: features may be negative, as in the modified ResNets
        if self.last_relu:
            x = F.relu(x, inplace=True)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


#: resnet18 takes the CIFAR-style stem for images of at most this many pixels a side
SMALL_STEM_MAX = 64


def make_backbone(name: str, in_channels: int, last_relu: bool = False, image_size: int | None = None) -> nn.Module:
    """``last_relu=True`` gives the plain networks the reference uses for its FC baseline
    (``resnet_cifar.py``: ReLU everywhere); the cosine rungs use the modified ones.

    Every backbone takes any ``image_size`` (global average pooling); ``resnet18`` uses the small stem
    when ``image_size`` <= ``SMALL_STEM_MAX`` (None: the ImageNet stem, as before)."""
    if name == "resnet32":
        return ResNetCifar(5, in_channels, last_relu)
    if name == "resnet18":
        return ResNet18(in_channels, last_relu,
                        small_stem=image_size is not None and image_size <= SMALL_STEM_MAX)
    if name == "convnet":
        return ConvNet(in_channels, last_relu=last_relu)
    raise ValueError(f"backbone={name!r} is invalid: allowed one of ['convnet', 'resnet18', 'resnet32']")


class IncrementalNet(nn.Module):
    """Backbone + head; ``forward`` returns (features, scores, logits) so no hooks are needed.

    For the cosine head, scores are the cosines before eta and logits = eta * scores;
    for the linear head scores and logits are the same tensor.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        f = self.backbone(x)
        scores, logits = self.head(f)
        return f, scores, logits


class _GroupedConv(nn.Module):
    """N members' ``Conv2d`` as one grouped convolution over their weights, concatenated per forward (each
    member keeps its own ``Parameter``, so an optimiser param group per member sees it).  A B x C_in input
    (the same batch for every member: the first layer's images) is read by all N filter banks at once."""

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        c = convs[0]
        if c.groups != 1 or c.padding_mode != "zeros":
            raise ValueError(f"cannot group {c}: groups=1 and zero padding only")
        self.convs, self.n, self.member_in = list(convs), len(convs), c.in_channels  # plain list: not registered
        self.stride, self.padding, self.dilation = c.stride, c.padding, c.dilation

    def forward(self, x):
        w = torch.cat([c.weight for c in self.convs])
        b = None if self.convs[0].bias is None else torch.cat([c.bias for c in self.convs])
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, 1 if x.shape[1] == self.member_in else self.n)


class _GroupedBatchNorm(nn.Module):
    """N members' ``BatchNorm2d(C)`` as one batch norm over N C channels (each member keeps its batch and
    running statistics): the members' running statistics become views into one N C buffer that the grouped
    forward updates in place, so every member's state dict stays its own without copies."""

    def __init__(self, bns: list[nn.BatchNorm2d]):
        super().__init__()
        self.bns, c = list(bns), bns[0].num_features
        self.eps, self.momentum = bns[0].eps, bns[0].momentum
        for name in ("running_mean", "running_var"):
            shared = torch.cat([getattr(b, name) for b in bns])
            for i, b in enumerate(bns):
                b._buffers[name] = shared[i * c:(i + 1) * c]
            self.__dict__[name] = shared  # not a registered buffer: the members' state dicts hold it

    def forward(self, x):
        if self.training:
            torch._foreach_add_([b.num_batches_tracked for b in self.bns], 1)
        return F.batch_norm(x, self.running_mean, self.running_var, torch.cat([b.weight for b in self.bns]),
                            torch.cat([b.bias for b in self.bns]), self.training, self.momentum, self.eps)


def grouped_backbone(backbones: list[nn.Module]) -> nn.Module:
    """The ``grouped`` backend (HFTA: Wang et al., MLSys 2021): one backbone over the N members' own layers,
    ``Conv2d`` -> ``_GroupedConv``, ``BatchNorm2d`` -> ``_GroupedBatchNorm``; ReLU, residual adds and pooling
    act per channel and are kept.  Input B x C (shared) or B x (N C) (a batch per member), features
    B x (N D).  Build it on the members' final device and dtype (their BN statistics become views)."""
    grouped = copy.deepcopy(backbones[0])
    for name, mod in list(grouped.named_modules()):
        if isinstance(mod, (nn.Conv2d, nn.BatchNorm2d)):
            layers = [b.get_submodule(name) for b in backbones]
            new = _GroupedConv(layers) if isinstance(mod, nn.Conv2d) else _GroupedBatchNorm(layers)
            new.train(mod.training)
            parent = grouped.get_submodule(name.rpartition(".")[0])
            setattr(parent, name.rpartition(".")[2], new)
    if any(True for _ in grouped.parameters()) or any(True for _ in grouped.buffers()):
        raise ValueError("cannot group a backbone with layers other than Conv2d, BatchNorm2d and parameter-free ones")
    return grouped


class Members(nn.Module):
    """N ``IncrementalNet``s over a leading member axis: the trainer's model for one run (N = 1) or a fused
    array of trials (``lucir.fused``).  ``forward`` returns one (features, scores, logits) per member for a
    B x C batch (every member reads it) or B x (N C) (member i reads channels i C .. (i + 1) C).  Two
    implementations of the backbones alone (``backend``): "loop" runs each member's own backbone in turn
    (N = 1: exactly ``IncrementalNet``); "grouped" runs ``grouped_backbone`` (one grouped model).  Heads and
    parameters stay each member's own."""

    def __init__(self, nets: list[IncrementalNet], backend: str = "loop"):
        super().__init__()
        if backend not in ("loop", "grouped"):
            raise ValueError(f"backend={backend!r} is invalid: allowed 'loop' or 'grouped'")
        self.nets, self.backend = nn.ModuleList(nets), backend
        self.feature_dim = nets[0].backbone.feature_dim
        self.member_in = next(m for m in nets[0].modules() if isinstance(m, nn.Conv2d)).in_channels
        self.grouped = grouped_backbone([n.backbone for n in nets]) if backend == "grouped" else None

    def features(self, x) -> list:
        n = len(self.nets)
        if self.grouped is not None:
            return list(self.grouped(x).chunk(n, 1))
        xs = [x] * n
        if n > 1 and x.shape[1] == n * self.member_in:
            cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            xs = [c.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
                  for c in x.chunk(n, 1)]
        return [net.backbone(xi) for net, xi in zip(self.nets, xs)]

    def forward(self, x) -> list:
        return [(f, *net.head(f)) for net, f in zip(self.nets, self.features(x))]
