"""SSENet classification network on the DeepLab-LargeFOV VGG16 (docs/method.md#vgg16).

fc6 dilation 1, Dropout2d(0.5) (``drop7``) and a 1x1 ``fc8`` to the 20 classes
without bias; like the ResNet38 variant its output is the CAM upsampled to the
input size, so :func:`network.resnet38_cls_ser.ssenet_loss` trains it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from network import vgg16d
from voc12.voc import NUM_FG_CLASSES


class Net(vgg16d.Net):
    new_layer_names = ("fc8",)

    def __init__(self, width_mult: float = 1.0, num_classes: int = NUM_FG_CLASSES):
        super().__init__(width_mult, fc6_dilation=1)
        self.drop7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(self.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CAM scores before ReLU, (N, num_classes, H, W) at the input size."""
        conv5fc = super().forward(x)  # (N, C, H/8, W/8)
        cam = self.fc8(self.drop7(conv5fc))
        return F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
