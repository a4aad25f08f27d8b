"""A minimal PyTorch DDRNet-23 / 23-slim with the module structure and parameter names of the official
code (ydhongHIT/DDRNet, segmentation/DDRNet_23_slim.py), used to write checkpoints in the official key
layout for the converter's tests.

Two deliberate differences in forward only, no parameter changes: the official code resizes to
`input // 8`, which fails at sizes not divisible by 8, so the high branch is resized to its own size;
and the official model returns 1/8-resolution logits that its evaluation upsamples, so that upsample
(bilinear, align_corners=False) is done here. The pools keep PyTorch's defaults (count_include_pad=True).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, no_relu=False):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else self.relu(out)


class Bottleneck(nn.Module):
    expansion = 2

    def __init__(self, inplanes, planes, stride=1, downsample=None, no_relu=True):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else self.relu(out)


def _bn_relu_conv(cin, cout, k, pool=None) -> nn.Sequential:
    layers = ([pool] if pool is not None else []) + [
        nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2, bias=False)]
    return nn.Sequential(*layers)


class DAPPM(nn.Module):
    def __init__(self, inplanes, branch_planes, outplanes):
        super().__init__()
        self.scale1 = _bn_relu_conv(inplanes, branch_planes, 1, nn.AvgPool2d(kernel_size=5, stride=2, padding=2))
        self.scale2 = _bn_relu_conv(inplanes, branch_planes, 1, nn.AvgPool2d(kernel_size=9, stride=4, padding=4))
        self.scale3 = _bn_relu_conv(inplanes, branch_planes, 1, nn.AvgPool2d(kernel_size=17, stride=8, padding=8))
        self.scale4 = _bn_relu_conv(inplanes, branch_planes, 1, nn.AdaptiveAvgPool2d((1, 1)))
        self.scale0 = _bn_relu_conv(inplanes, branch_planes, 1)
        self.process1 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.process2 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.process3 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.process4 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.compression = _bn_relu_conv(branch_planes * 5, outplanes, 1)
        self.shortcut = _bn_relu_conv(inplanes, outplanes, 1)

    def forward(self, x):
        x0 = self.scale0(x)
        x1 = self.process1(_resize(self.scale1(x), x) + x0)
        x2 = self.process2(_resize(self.scale2(x), x) + x1)
        x3 = self.process3(_resize(self.scale3(x), x) + x2)
        x4 = self.process4(_resize(self.scale4(x), x) + x3)
        return self.compression(torch.cat([x0, x1, x2, x3, x4], 1)) + self.shortcut(x)


class segmenthead(nn.Module):
    def __init__(self, inplanes, interplanes, outplanes):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, interplanes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(interplanes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(interplanes, outplanes, kernel_size=1, padding=0, bias=True)

    def forward(self, x):
        return self.conv2(self.relu(self.bn2(self.conv1(self.relu(self.bn1(x))))))


def _make_layer(block, inplanes, planes, blocks, stride=1) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample)]
    for i in range(1, blocks):
        layers.append(block(planes * block.expansion, planes, no_relu=(i == blocks - 1)))
    return nn.Sequential(*layers)


class DualResNet(nn.Module):
    """Official DDRNet structure: 23 is planes=64; 23-slim planes=32, head_planes=64; 39 is
    layers=(3, 4, 6, 3), head_planes=256 with stage 3 split in two fused halves (DDRNet_39.py)."""

    def __init__(self, num_classes=19, layers=(2, 2, 2, 2), planes=64, spp_planes=128, head_planes=128,
                 augment=False):
        super().__init__()
        high = planes * 2
        self.split_stage3 = layers[2] > 2
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, planes, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(planes), nn.ReLU(),
            nn.Conv2d(planes, planes, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(planes), nn.ReLU())
        self.relu = nn.ReLU()
        self.layer1 = _make_layer(BasicBlock, planes, planes, layers[0])
        self.layer2 = _make_layer(BasicBlock, planes, planes * 2, layers[1], stride=2)
        if self.split_stage3:
            self.layer3_1 = _make_layer(BasicBlock, planes * 2, planes * 4, layers[2] // 2, stride=2)
            self.layer3_2 = _make_layer(BasicBlock, planes * 4, planes * 4, layers[2] // 2)
            self.compression3_1 = nn.Sequential(nn.Conv2d(planes * 4, high, 1, bias=False), nn.BatchNorm2d(high))
            self.compression3_2 = nn.Sequential(nn.Conv2d(planes * 4, high, 1, bias=False), nn.BatchNorm2d(high))
            self.down3_1 = nn.Sequential(conv3x3(high, planes * 4, 2), nn.BatchNorm2d(planes * 4))
            self.down3_2 = nn.Sequential(conv3x3(high, planes * 4, 2), nn.BatchNorm2d(planes * 4))
            self.layer3_1_ = _make_layer(BasicBlock, planes * 2, high, layers[2] // 2)
            self.layer3_2_ = _make_layer(BasicBlock, high, high, layers[2] // 2)
        else:
            self.layer3 = _make_layer(BasicBlock, planes * 2, planes * 4, layers[2], stride=2)
            self.compression3 = nn.Sequential(nn.Conv2d(planes * 4, high, 1, bias=False), nn.BatchNorm2d(high))
            self.down3 = nn.Sequential(conv3x3(high, planes * 4, 2), nn.BatchNorm2d(planes * 4))
            self.layer3_ = _make_layer(BasicBlock, planes * 2, high, layers[2])
        self.layer4 = _make_layer(BasicBlock, planes * 4, planes * 8, layers[3], stride=2)
        self.compression4 = nn.Sequential(nn.Conv2d(planes * 8, high, 1, bias=False), nn.BatchNorm2d(high))
        self.down4 = nn.Sequential(conv3x3(high, planes * 4, 2), nn.BatchNorm2d(planes * 4), nn.ReLU(),
                                   conv3x3(planes * 4, planes * 8, 2), nn.BatchNorm2d(planes * 8))
        self.layer4_ = _make_layer(BasicBlock, high, high, layers[3])
        self.layer5_ = _make_layer(Bottleneck, high, high, 1)
        self.layer5 = _make_layer(Bottleneck, planes * 8, planes * 8, 1, stride=2)
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4)
        if augment:
            self.seghead_extra = segmenthead(high, head_planes, num_classes)
        self.final_layer = segmenthead(planes * 4, head_planes, num_classes)

    def _fuse(self, x, x_, down, compression):
        return x + down(self.relu(x_)), x_ + _resize(compression(self.relu(x)), x_)

    def forward(self, image):
        x = self.relu(self.layer2(self.relu(self.layer1(self.conv1(image)))))
        if self.split_stage3:
            x, x_ = self._fuse(self.layer3_1(x), self.layer3_1_(x), self.down3_1, self.compression3_1)
            x, x_ = self._fuse(self.layer3_2(self.relu(x)), self.layer3_2_(self.relu(x_)),
                               self.down3_2, self.compression3_2)
        else:
            x, x_ = self._fuse(self.layer3(x), self.layer3_(x), self.down3, self.compression3)
        x, x_ = self._fuse(self.layer4(self.relu(x)), self.layer4_(self.relu(x_)), self.down4, self.compression4)
        x_ = self.layer5_(self.relu(x_))
        x = _resize(self.spp(self.layer5(self.relu(x))), x_)
        return _resize(self.final_layer(x + x_), image)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random conv weights and BN affine parameters AND running statistics, so a converter that drops
    or swaps any of them produces different logits. Scaled to keep activations in a sane range."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 1.5 + 0.5)
                m.num_batches_tracked.fill_(1000)
    return model.eval()
