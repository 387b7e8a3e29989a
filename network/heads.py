"""The heads, generic over every backbone of :mod:`network.backbone` (docs/method.md#backbones).

Each head is a mixin put before a backbone in the bases, ``class Net(CamHead, resnet38d.Net)``, so that its
layers sit beside the backbone's in one flat state dict (the published names: ``fc8.weight``, ``b2.bn_branch2a...``).
A head reads what it needs from the backbone (feature levels, their channels, the options it wants of the
backbone's ``__init__`` in ``head_options[head_kind]``) and states its own layers in ``new_layer_names``.
:func:`compose` builds ``Head + Backbone`` for a backbone module that has no networks of its own.

- :class:`CamHead`: SSENet's CAM head (docs/method.md#ssenet-network);
- :class:`AffinityHead`: AffinityNet's embedding and pair affinities (docs/method.md#affinitynet);
- :class:`SegHead`: the segmentation head of Wu et al.'s ResNet38 code, FCRNA-A1 (docs/method.md#segmentation);
- :class:`LargeFOVHead`: DeepLab-LargeFOV's ``fc8``, for backbones whose ``fc6`` / ``fc7`` are already the
  large-field-of-view layers (VGG16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from network.backbone import Backbone, scaled
from tool.randomwalk import DEFAULT_RADIUS, pair_indices
from voc12.voc import NUM_CLASSES, NUM_FG_CLASSES  # the published networks' defaults are VOC's

AFFINITY_EMBED = (64, 128, 256)  # f8_3, f8_4, f8_5 output channels at full width (448 in all)
SEG_HEAD_CHANNELS = 512
SEG_HEAD_DILATION = 12
FC8_INIT_STD = 0.01  # DeepLab's fc8 init


class _Head:
    """What every head shares: the backbone's options for this head kind, then the backbone's ``__init__``."""

    head_kind = ""

    def __init__(self, width_mult: float = 1.0, **backbone) -> None:
        options = {**self.head_options.get(self.head_kind, {}), **backbone}
        super().__init__(width_mult, **options)


class CamHead(_Head):
    """Dropout2d(0.5) and a bias-free 1x1 ``fc8`` (Xavier uniform) on the backbone's last features; the CAM is
    upsampled (bilinear, ``align_corners=False``) to the input size. Keyword arguments beyond ``width_mult`` and
    ``num_classes`` go to the backbone."""

    head_kind = "cam"
    new_layer_names = ("fc8",)

    def __init__(self, width_mult: float = 1.0, num_classes: int = NUM_FG_CLASSES, **backbone):
        super().__init__(width_mult, **backbone)
        self.num_classes = num_classes
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(self.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CAM scores before ReLU, (N, num_classes, H, W) at the input size."""
        features = super().forward(x)  # (N, C, H / stride, W / stride)
        cam = self.fc8(self.dropout7(features))
        return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)


def group_norm(groups: int, channels: int) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, fewer at reduced width (the largest count dividing ``channels``)."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def fusion_layer(f8_layers: tuple[nn.Conv2d, ...]) -> nn.Conv2d:
    """The 1x1 f9 over the concatenated f8 features; initialises the f8 convs (He) and f9 (Xavier, gain 4)."""
    embed = sum(layer.out_channels for layer in f8_layers)
    f9 = nn.Conv2d(embed, embed, 1, bias=False)
    for layer in f8_layers:
        nn.init.kaiming_normal_(layer.weight)
    nn.init.xavier_uniform_(f9.weight, gain=4)
    return f9


def pair_affinities(feat: torch.Tensor, radius: int = DEFAULT_RADIUS) -> torch.Tensor:
    """``exp(-mean_c |f_from - f_to|)`` for every pair of an (N, C, h, w) feature map -> (N, n_pairs, n_from)."""
    n, c, h, w = feat.shape
    idx_from, idx_to = pair_indices(h, w, radius)
    flat = feat.reshape(n, c, h * w)
    f_from = flat[:, :, torch.tensor(idx_from, device=feat.device)].unsqueeze(2)  # (N, C, 1, n_from)
    f_to = flat[:, :, torch.tensor(idx_to, device=feat.device)]  # (N, C, n_pairs, n_from)
    return torch.exp(-torch.mean(torch.abs(f_to - f_from), dim=1))


class AffinityHead(_Head):
    """AffinityNet: the three :attr:`~network.backbone.Backbone.affinity_features` levels embedded by 1x1 convs
    ``f8_3``, ``f8_4``, ``f8_5`` (64 / 128 / 256 channels, no bias; with the backbone's ``affinity_group_norm``
    each followed by GroupNorm ``gn8_*``), ELU, concatenated and mixed by the 1x1 ``f9``, ELU; the affinity of two
    grid pixels within ``radius`` is ``exp(-mean_c |f_i - f_j|)``."""

    head_kind = "aff"
    new_layer_names = ("f8_3", "f8_4", "f8_5", "f9")

    def __init__(self, width_mult: float = 1.0, radius: int = DEFAULT_RADIUS, **backbone):
        super().__init__(width_mult, **backbone)
        self.radius = radius
        widths = [scaled(c, width_mult) for c in AFFINITY_EMBED]
        for k, (level, width) in enumerate(zip(self.affinity_features, widths, strict=True), start=3):
            setattr(self, f"f8_{k}", nn.Conv2d(self.feature_channels(level), width, 1, bias=False))
        norms = self.affinity_group_norm or ()
        for k, (groups, width) in enumerate(zip(norms, widths[: len(norms)], strict=True), start=3):
            setattr(self, f"gn8_{k}", group_norm(groups, width))
        # The GroupNorms train at the pretrained rates (the published split) but are absent from ImageNet files.
        self.head_layer_names = (*self.new_layer_names, *(f"gn8_{k}" for k in range(3, 3 + len(norms))))
        self.f9 = fusion_layer((self.f8_3, self.f8_4, self.f8_5))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The affinity feature map, (N, 448 * width_mult, H / stride, W / stride)."""
        features = self.forward_as_dict(x)
        embedded = []
        for k, level in enumerate(self.affinity_features, start=3):
            f = getattr(self, f"f8_{k}")(features[level])
            if self.affinity_group_norm:
                f = getattr(self, f"gn8_{k}")(f)
            embedded.append(F.elu(f))
        return F.elu(self.f9(torch.cat(embedded, dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pair affinities (N, n_pairs, n_from) in the order of ``tool.randomwalk.pair_indices``."""
        return pair_affinities(self.embed(x), self.radius)


class _SegmentationHead(_Head):
    """What both segmentation heads share: logits on the stride grid (``forward_logits``), upsampled to the input."""

    head_kind = "seg"

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) at the input size, (N, num_classes, H, W)."""
        return F.interpolate(self.forward_logits(x), size=x.shape[2:], mode="bilinear", align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last features (its ``forward``; this class's own ``forward`` is the head's)."""
        return self.forward_as_dict(x)[self.out_feature]


class SegHead(_SegmentationHead):
    """Two 3x3 convolutions of dilation 12 with bias (``fc8_seg_conv1`` to 512 channels, ReLU, ``fc8_seg_conv2``
    to the classes), Xavier-uniform weights and zero biases, then bilinear to the input size. No BatchNorm and no
    dropout, so it trains with a frozen-BatchNorm backbone like the other heads."""

    new_layer_names = ("fc8_seg_conv1", "fc8_seg_conv2")

    def __init__(self, width_mult: float = 1.0, num_classes: int = NUM_CLASSES, **backbone):
        super().__init__(width_mult, **backbone)
        self.num_classes = num_classes
        d = SEG_HEAD_DILATION
        mid = scaled(SEG_HEAD_CHANNELS, width_mult)
        self.fc8_seg_conv1 = nn.Conv2d(self.out_channels, mid, 3, padding=d, dilation=d, bias=True)
        self.fc8_seg_conv2 = nn.Conv2d(mid, num_classes, 3, padding=d, dilation=d, bias=True)
        for layer in (self.fc8_seg_conv1, self.fc8_seg_conv2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores on the stride grid, (N, num_classes, ceil(H / stride), ceil(W / stride))."""
        return self.fc8_seg_conv2(F.relu(self.fc8_seg_conv1(self.features(x))))


class LargeFOVHead(_SegmentationHead):
    """DeepLab-LargeFOV's classifier on a backbone whose last features are already its fc6 / fc7: Dropout2d(0.5)
    and a 1x1 ``fc8`` with bias (Gaussian std 0.01, bias 0), then bilinear to the input size."""

    new_layer_names = ("fc8",)

    def __init__(self, width_mult: float = 1.0, num_classes: int = NUM_CLASSES, **backbone):
        super().__init__(width_mult, **backbone)
        self.num_classes = num_classes
        self.drop7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(self.out_channels, num_classes, 1, bias=True)
        nn.init.normal_(self.fc8.weight, std=FC8_INIT_STD)
        nn.init.zeros_(self.fc8.bias)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores on the stride grid, (N, num_classes, ceil(H / stride), ceil(W / stride))."""
        return self.fc8(self.drop7(self.features(x)))


HEADS = {"cam": CamHead, "aff": AffinityHead, "seg": SegHead}


def compose(backbone: type[Backbone], head: str) -> type[nn.Module]:
    """The network of head kind ``head`` (``cam``, ``aff``, ``seg``) on ``backbone``: ``class Net(Head, backbone)``."""
    name = f"{backbone.__name__}With{HEADS[head].__name__}"
    return type(name, (HEADS[head], backbone), {"__module__": backbone.__module__})
