"""SSENet classification network: ResNet38 + a 1x1 CAM head (SPEC section 2).

The output is the class activation map itself, upsampled to the input size, so
the scale-equivariance loss (SPEC section 3) can compare maps of two input
scales directly and the image-level score is its spatial mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from network import resnet38d
from voc12.voc import NUM_FG_CLASSES


class Net(resnet38d.Net):
    new_layer_names = ("fc8",)

    def __init__(self, width_mult: float = 1.0, num_classes: int = NUM_FG_CLASSES):
        super().__init__(width_mult)
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(self.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CAM scores before ReLU, (N, num_classes, H, W) at the input size."""
        conv6 = super().forward(x)  # (N, C, H/8, W/8)
        cam = self.fc8(self.dropout7(conv6))
        return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
