"""DeepLab-LargeFOV on the VGG16 backbone: the segmentation network of docs/method.md#segmentation.

The classic network that DeepLab's ``vgg16_20M.caffemodel`` initialises (docs/method.md#vgg16)::

    conv1_1 ... conv5_3 (pools at stride 8, conv5_* dilation 2)
    fc6: 3x3, dilation 12, 512 -> 1024, bias -> ReLU -> Dropout2d(0.5)      (pretrained, in the caffemodel)
    fc7: 1x1, 1024 -> 1024, bias -> ReLU -> Dropout2d(0.5)                  (pretrained, in the caffemodel)
    fc8: 1x1, 1024 -> 21, bias (Gaussian std 0.01, bias 0)                  (new layer)
    -> bilinear to the input size (align_corners=False)

The 20M model's fc6 is already the subsampled 1024 x 512 x 3 x 3 layer, so
fc6 and fc7 load from it and train at the pretrained learning rates (1x / 2x);
only ``fc8`` is new (10x / 20x), and an ``fc8`` found in an ImageNet file
(the 1000-class classifier) is ignored by the weight loader. ``conv1_*`` and
``conv2_*`` stay frozen, as in every VGG16 network here
(:data:`network.vgg16d.FROZEN_MODULES`). Images are normalised with Caffe's BGR
means (``Net.normalize``), which the scripts take from the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from network import vgg16d
from voc12.voc import NUM_CLASSES

FC6_DILATION = 12  # "LargeFOV": 3x3 kernel at dilation 12 on the stride-8 grid
FC8_INIT_STD = 0.01


class Net(vgg16d.Net):
    new_layer_names = ("fc8",)

    def __init__(self, width_mult: float = 1.0, num_classes: int = NUM_CLASSES):
        super().__init__(width_mult, fc6_dilation=FC6_DILATION)
        self.drop7 = nn.Dropout2d(0.5)
        self.num_classes = num_classes
        self.fc8 = nn.Conv2d(self.out_channels, num_classes, 1, bias=True)
        nn.init.normal_(self.fc8.weight, std=FC8_INIT_STD)
        nn.init.zeros_(self.fc8.bias)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores on the stride-8 grid, (N, num_classes, ceil(H/8), ceil(W/8))."""
        return self.fc8(self.drop7(super().forward(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) at the input size, (N, num_classes, H, W)."""
        return F.interpolate(self.forward_logits(x), size=x.shape[2:], mode="bilinear", align_corners=False)
