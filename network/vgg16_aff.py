"""AffinityNet on the DeepLab-LargeFOV VGG16 (docs/method.md#vgg16, docs/method.md#affinitynet).

fc6 dilation 4. conv4, conv5 and conv5fc are embedded by 1x1 convolutions
(``f8_3``, ``f8_4``, ``f8_5``), each followed by GroupNorm (8 / 16 / 32 groups)
and ELU, concatenated and mixed by ``f9``; pair affinities as the ResNet38
AffinityNet (:func:`network.resnet38_aff.pair_affinities`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from network import vgg16d
from network.resnet38_aff import fusion_layer, pair_affinities
from network.resnet38d import scaled
from tool.randomwalk import DEFAULT_RADIUS


def group_norm(groups: int, channels: int) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, fewer at reduced width (the largest count dividing ``channels``)."""
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class Net(vgg16d.Net):
    # The published split: the GroupNorms are not "from scratch" layers, so their weights and biases
    # train in the pretrained groups (1x / 2x lr); they are still head layers, absent from ImageNet files.
    new_layer_names = ("f8_3", "f8_4", "f8_5", "f9")
    head_layer_names = (*new_layer_names, "gn8_3", "gn8_4", "gn8_5")

    def __init__(self, width_mult: float = 1.0, radius: int = DEFAULT_RADIUS):
        super().__init__(width_mult, fc6_dilation=4)
        self.radius = radius

        def c(n):
            return scaled(n, width_mult)

        self.f8_3 = nn.Conv2d(c(512), c(64), 1, bias=False)
        self.f8_4 = nn.Conv2d(c(512), c(128), 1, bias=False)
        self.f8_5 = nn.Conv2d(c(1024), c(256), 1, bias=False)
        self.gn8_3 = group_norm(8, c(64))
        self.gn8_4 = group_norm(16, c(128))
        self.gn8_5 = group_norm(32, c(256))
        self.f9 = fusion_layer((self.f8_3, self.f8_4, self.f8_5))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The affinity feature map, (N, 448, H/8, W/8) at full width."""
        d = self.forward_as_dict(x)
        f8_3 = F.elu(self.gn8_3(self.f8_3(d["conv4"])))
        f8_4 = F.elu(self.gn8_4(self.f8_4(d["conv5"])))
        f8_5 = F.elu(self.gn8_5(self.f8_5(d["conv5fc"])))
        return F.elu(self.f9(torch.cat([f8_3, f8_4, f8_5], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pair affinities (N, 34, n_from) in the order of ``tool.randomwalk.pair_indices``."""
        return pair_affinities(self.embed(x), self.radius)
