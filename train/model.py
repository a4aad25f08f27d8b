"""DDRNet model zoo: DDRNet-23-slim, DDRNet-23 and DDRNet-39 (Hong et al. 2021).

Parameter names and shapes are those of PaddleSeg 2.8's `DDRNet_23` (ConvBN / ConvBNReLU layers with
`_conv` / `_batch_norm` children, `head`, `aux_head`), so weights trained with PaddleSeg load with
`set_state_dict` unchanged and give the same logits (tests/test_model.py checks this against PaddleSeg
itself). Slim and 39 use the same scheme. Differences from PaddleSeg, none of which changes a parameter
or a result at sizes divisible by 64:
- the high branch is resized to its own size instead of `h // 8`, so odd input sizes work;
- DAPPM's global pool is a mean over H and W, which exports as ReduceMean (TensorRT rejects a
  GlobalAveragePool over dynamic spatial dimensions).
Two numerical details differ between PaddleSeg and the official PyTorch code and are options, so
converted PyTorch weights reproduce PyTorch's outputs (`ddrnet convert-weights` records both):
- `avg_pool_exclusive`: Paddle's pools leave padding out of the mean, PyTorch's count it;
- `down3_same_padding`: PaddleSeg's stage-3 down-sampling conv pads "SAME" (0 before, 1 after on
  even sizes), PyTorch's pads 1 on each side.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ddrnet.runtime.augment import interp_matrix
from ddrnet.train import compat

ARCHS: Dict[str, dict] = {
    # block counts of stages 1-4, base width, DAPPM branch width, head width, fusions in stage 3
    "ddrnet23_slim": dict(layers=(2, 2, 2, 2), planes=32, spp_planes=128, head_planes=64, stage3_splits=1),
    "ddrnet23": dict(layers=(2, 2, 2, 2), planes=64, spp_planes=128, head_planes=128, stage3_splits=1),
    "ddrnet39": dict(layers=(3, 4, 6, 3), planes=64, spp_planes=128, head_planes=256, stage3_splits=2),
}


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False, padding=None) -> nn.Conv2D:
    return nn.Conv2D(cin, cout, k, stride=stride, padding=k // 2 if padding is None else padding,
                     bias_attr=None if bias else False)


class ConvBN(nn.Layer):
    """PaddleSeg's layers.ConvBN (parameter names `_conv.*`, `_batch_norm.*`)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, bias: bool = False, padding=None):
        super().__init__()
        self._conv = _conv(cin, cout, k, stride, bias, padding)
        self._batch_norm = nn.BatchNorm2D(cout)

    def forward(self, x):
        return self._batch_norm(self._conv(x))


class ConvBNReLU(ConvBN):
    """PaddleSeg's layers.ConvBNReLU."""

    def forward(self, x):
        return F.relu(self._batch_norm(self._conv(x)))


def _upsample(x: paddle.Tensor, like: paddle.Tensor) -> paddle.Tensor:
    # bilinear, align_corners=False (half-pixel), to the size of `like`: works for any input size
    return F.interpolate(x, size=paddle.shape(like)[2:], mode="bilinear", align_corners=False)


def _upsample_to_input(x: paddle.Tensor, image: paddle.Tensor) -> paddle.Tensor:
    """The heads' final 8x upsample: as two matrix products when CPU training needs its gradient."""
    if paddle.in_dynamic_mode() and not x.stop_gradient and x.place.is_cpu_place():
        return _upsample_by_matmul(x, int(image.shape[2]), int(image.shape[3]))
    return _upsample(x, image)


_INTERP_MATRICES: Dict[Tuple[int, int], paddle.Tensor] = {}


def _interp_matrix(n_in: int, n_out: int) -> paddle.Tensor:
    key = (n_in, n_out)
    if key not in _INTERP_MATRICES:
        _INTERP_MATRICES[key] = paddle.to_tensor(interp_matrix(n_in, n_out), place=paddle.CPUPlace())
    return _INTERP_MATRICES[key]


def _upsample_by_matmul(x: paddle.Tensor, h: int, w: int) -> paddle.Tensor:
    """The same bilinear interpolation (Paddle's coefficients, tests/test_model.py compares) as two
    matrix products. Why: the backward of Paddle's CPU bilinear_interp of the 19 full-size score maps
    is a slow single-threaded scatter (15 % of a 23-slim training step at 256x256), a matmul's backward
    is two GEMMs. The inner, small upsamples and every exported or evaluated model keep the op."""
    rows = _interp_matrix(int(x.shape[2]), h)
    cols = _interp_matrix(int(x.shape[3]), w)
    return paddle.matmul(rows, paddle.matmul(x, cols, transpose_y=True))


class BasicBlock(nn.Layer):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None, no_relu: bool = False):
        super().__init__()
        self.conv_bn_relu = ConvBNReLU(inplanes, planes, 3, stride)
        self.relu = nn.ReLU()
        self.conv_bn = ConvBN(planes, planes, 3)
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x):
        out = self.conv_bn(self.conv_bn_relu(x))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else self.relu(out)


class Bottleneck(nn.Layer):
    expansion = 2

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None, no_relu: bool = True):
        super().__init__()
        self.conv_bn_relu1 = ConvBNReLU(inplanes, planes, 1)
        self.conv_bn_relu2 = ConvBNReLU(planes, planes, 3, stride)
        self.conv_bn = ConvBN(planes, planes * self.expansion, 1)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.no_relu = no_relu

    def forward(self, x):
        out = self.conv_bn(self.conv_bn_relu2(self.conv_bn_relu1(x)))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else self.relu(out)


def _make_layer(block, inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        # a plain Sequential here, as in PaddleSeg: keys `downsample.0.weight`, `downsample.1.*`
        downsample = nn.Sequential(_conv(inplanes, planes * block.expansion, 1, stride),
                                   nn.BatchNorm2D(planes * block.expansion))
    layers = [block(inplanes, planes, stride, downsample)]
    for i in range(1, blocks):
        # the last block of a stage leaves its output pre-activation: the fusion adds come first
        layers.append(block(planes * block.expansion, planes, no_relu=(i == blocks - 1)))
    return nn.Sequential(*layers)


class GlobalAvgPool(nn.Layer):
    """Mean over H and W; exports as ReduceMean, which TensorRT accepts with dynamic H/W."""

    def forward(self, x):
        return x.mean(axis=[2, 3], keepdim=True)


def _bn_relu_conv(cin: int, cout: int, k: int, pool: nn.Layer = None) -> nn.Sequential:
    layers = ([pool] if pool is not None else []) + [nn.BatchNorm2D(cin), nn.ReLU(), _conv(cin, cout, k)]
    return nn.Sequential(*layers)


class DAPPM(nn.Layer):
    """Deep Aggregation Pyramid Pooling Module: pools 5/2, 9/4, 17/8 and global, fused hierarchically."""

    def __init__(self, inplanes: int, branch_planes: int, outplanes: int, exclusive: bool = True):
        super().__init__()
        pools = [nn.AvgPool2D(k, s, k // 2, exclusive=exclusive) for k, s in ((5, 2), (9, 4), (17, 8))]
        self.scale1 = _bn_relu_conv(inplanes, branch_planes, 1, pools[0])
        self.scale2 = _bn_relu_conv(inplanes, branch_planes, 1, pools[1])
        self.scale3 = _bn_relu_conv(inplanes, branch_planes, 1, pools[2])
        self.scale4 = _bn_relu_conv(inplanes, branch_planes, 1, GlobalAvgPool())
        self.scale0 = _bn_relu_conv(inplanes, branch_planes, 1)
        self.process1 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.process2 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.process3 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.process4 = _bn_relu_conv(branch_planes, branch_planes, 3)
        self.compression = _bn_relu_conv(branch_planes * 5, outplanes, 1)
        self.shortcut = _bn_relu_conv(inplanes, outplanes, 1)

    def set_pool_exclusive(self, exclusive: bool) -> None:
        for scale in (self.scale1, self.scale2, self.scale3):
            compat.set_pool_exclusive(scale[0], exclusive)

    def forward(self, x):
        x0 = self.scale0(x)
        x1 = self.process1(_upsample(self.scale1(x), x) + x0)
        x2 = self.process2(_upsample(self.scale2(x), x) + x1)
        x3 = self.process3(_upsample(self.scale3(x), x) + x2)
        x4 = self.process4(_upsample(self.scale4(x), x) + x3)
        return self.compression(paddle.concat([x0, x1, x2, x3, x4], axis=1)) + self.shortcut(x)


class DDRNetHead(nn.Layer):
    """Pre-activation head: BN-ReLU-(conv3x3-BN-ReLU)-conv1x1 (the last conv has a bias)."""

    def __init__(self, inplanes: int, interplanes: int, outplanes: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2D(inplanes)
        self.relu = nn.ReLU()
        self.conv_bn_relu = ConvBNReLU(inplanes, interplanes, 3)
        self.conv = _conv(interplanes, outplanes, 1, bias=True)

    def forward(self, x):
        return self.conv(self.conv_bn_relu(self.relu(self.bn1(x))))


class DualResNet(nn.Layer):
    """DDRNet. Eval forward: logits [N, C, H, W] at input size. Train forward: [main] or [main, aux]."""

    def __init__(self, num_classes: int = 19, layers: Sequence[int] = (2, 2, 2, 2), planes: int = 64,
                 spp_planes: int = 128, head_planes: int = 128, stage3_splits: int = 1,
                 aux_head: bool = False, avg_pool_exclusive: bool = True, down3_same_padding: bool = True):
        super().__init__()
        high = planes * 2
        self.num_classes = num_classes
        self.stage3_splits = stage3_splits
        self.conv1 = nn.Sequential(ConvBNReLU(3, planes, 3, 2, bias=True), ConvBNReLU(planes, planes, 3, 2, bias=True))
        down3_pad = "SAME" if down3_same_padding else 1
        self.relu = nn.ReLU()
        self.layer1 = _make_layer(BasicBlock, planes, planes, layers[0])
        self.layer2 = _make_layer(BasicBlock, planes, planes * 2, layers[1], stride=2)
        if stage3_splits == 1:  # DDRNet-23: one bilateral fusion in stage 3 (PaddleSeg / official names)
            self.layer3 = _make_layer(BasicBlock, planes * 2, planes * 4, layers[2], stride=2)
            self.layer3_ = _make_layer(BasicBlock, planes * 2, high, layers[2])
            self.compression3 = ConvBN(planes * 4, high, 1)
            self.down3 = ConvBN(high, planes * 4, 3, 2, padding=down3_pad)
        else:  # DDRNet-39: stage 3 split in two halves, each followed by a fusion (official names)
            half = layers[2] // 2
            self.layer3_1 = _make_layer(BasicBlock, planes * 2, planes * 4, half, stride=2)
            self.layer3_2 = _make_layer(BasicBlock, planes * 4, planes * 4, half)
            self.layer3_1_ = _make_layer(BasicBlock, planes * 2, high, half)
            self.layer3_2_ = _make_layer(BasicBlock, high, high, half)
            self.compression3_1 = ConvBN(planes * 4, high, 1)
            self.compression3_2 = ConvBN(planes * 4, high, 1)
            self.down3_1 = ConvBN(high, planes * 4, 3, 2, padding=down3_pad)
            self.down3_2 = ConvBN(high, planes * 4, 3, 2, padding=down3_pad)
        self.layer4 = _make_layer(BasicBlock, planes * 4, planes * 8, layers[3], stride=2)
        self.compression4 = ConvBN(planes * 8, high, 1)
        self.down4 = nn.Sequential(ConvBNReLU(high, planes * 4, 3, 2), ConvBN(planes * 4, planes * 8, 3, 2))
        self.layer4_ = _make_layer(BasicBlock, high, high, layers[3])
        self.layer5_ = _make_layer(Bottleneck, high, high, 1)
        self.layer5 = _make_layer(Bottleneck, planes * 8, planes * 8, 1, stride=2)
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4, exclusive=avg_pool_exclusive)
        if aux_head:
            self.aux_head = DDRNetHead(high, head_planes, num_classes)
        self.head = DDRNetHead(planes * 4, head_planes, num_classes)
        self._init_weights()

    @property
    def has_aux_head(self) -> bool:
        return hasattr(self, "aux_head")

    def _init_weights(self) -> None:
        kaiming = nn.initializer.KaimingNormal()
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                kaiming(layer.weight)
            elif isinstance(layer, nn.BatchNorm2D):
                nn.initializer.Constant(1.0)(layer.weight)
                nn.initializer.Constant(0.0)(layer.bias)

    def _fuse(self, low, high, down, compression):
        """Bilateral fusion: high->low by strided convs, low->high by 1x1 conv + upsampling."""
        fused_low = low + down(self.relu(high))
        fused_high = high + _upsample(compression(self.relu(low)), high)
        return fused_low, fused_high

    def forward(self, image) -> Union[paddle.Tensor, List[paddle.Tensor]]:
        head, high_stage3 = self._head(image)
        logits = _upsample_to_input(head, image)
        if not self.training:
            return logits
        if self.has_aux_head:
            return [logits, _upsample_to_input(self.aux_head(high_stage3), image)]
        return [logits]

    def lowres_logits(self, image) -> paddle.Tensor:
        """Class scores at 1/8 of the input size, before the final bilinear upsample (the export's
        `lowres_logits` output: the runtime upsamples and takes the argmax itself, exactly and faster)."""
        return self._head(image)[0]

    def _head(self, image) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """The head's logits at 1/8 resolution and the high branch after stage 3 (for the aux head)."""
        x = self.layer1(self.conv1(image))
        x = self.layer2(self.relu(x))
        if self.stage3_splits == 1:
            low, high = self.layer3(self.relu(x)), self.layer3_(self.relu(x))
            low, high = self._fuse(low, high, self.down3, self.compression3)
        else:
            low, high = self.layer3_1(self.relu(x)), self.layer3_1_(self.relu(x))
            low, high = self._fuse(low, high, self.down3_1, self.compression3_1)
            low, high = self.layer3_2(self.relu(low)), self.layer3_2_(self.relu(high))
            low, high = self._fuse(low, high, self.down3_2, self.compression3_2)
        high_stage3 = high
        low, high = self.layer4(self.relu(low)), self.layer4_(self.relu(high))
        low, high = self._fuse(low, high, self.down4, self.compression4)
        high = self.layer5_(self.relu(high))
        low = _upsample(self.spp(self.layer5(self.relu(low))), high)
        return self.head(low + high), high_stage3


def build_model(name: str, num_classes: int = 19, aux_head: bool = False,
                avg_pool_exclusive: bool = True, down3_same_padding: bool = True) -> DualResNet:
    """Build a DDRNet by name: "ddrnet23_slim", "ddrnet23" or "ddrnet39".

    `aux_head` adds PaddleSeg's `aux_head` on the high branch after stage 3 (training only).
    Converted official PyTorch weights need `avg_pool_exclusive=False, down3_same_padding=False`.
    """
    if name not in ARCHS:
        from ddrnet.runtime.errors import DDRNetError

        raise DDRNetError("unknown model {!r}; choose one of {}".format(name, ", ".join(ARCHS)))
    return DualResNet(num_classes=num_classes, aux_head=aux_head, avg_pool_exclusive=avg_pool_exclusive,
                      down3_same_padding=down3_same_padding, **ARCHS[name])


def count_macs(model: nn.Layer, input_shape: Sequence[int] = (1, 3, 1024, 2048)) -> int:
    """Multiply-accumulates of the convolutions in one eval forward (the paper's "GFLOPs" are MACs)."""
    total = [0]

    def hook(layer, inputs, output):
        k = layer.weight.shape  # [out, in / groups, kh, kw]
        total[0] += int(output.shape[1] * output.shape[2] * output.shape[3]) * k[1] * k[2] * k[3]

    handles = [m.register_forward_post_hook(hook) for m in model.sublayers() if isinstance(m, nn.Conv2D)]
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros(list(input_shape)))
    finally:
        for h in handles:
            h.remove()
        if was_training:
            model.train()
    return total[0] * int(input_shape[0])
