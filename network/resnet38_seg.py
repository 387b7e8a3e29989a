"""Segmentation network on ResNet38: the last stage of the method (docs/method.md#segmentation).

Every WSSS paper of the AffinityNet line ends by training a fully supervised
segmentation network on the random-walk pseudo labels. AffinityNet's ResNet38
numbers (VOC val 61.7 / test 63.7) come from the ResNet38 segmentation code of
Wu et al. ("FCRNA model A1": the backbone at output stride 8 and two 3x3
convolutions of dilation 12), and most ResNet38 WSSS code since then keeps that
head as it is:

    conv6 (N, 4096, H/8, W/8) -> fc8_seg_conv1: 3x3, dilation 12, 4096 -> 512, bias -> ReLU
                              -> fc8_seg_conv2: 3x3, dilation 12, 512 -> 21, bias
                              -> bilinear to the input size (align_corners=False)

No BatchNorm and no dropout in the head, so it trains with the backbone's
frozen BatchNorm like the other heads (SEAM's retraining code uses a
DeepLab-v1 head with trainable BatchNorm instead; see the README). The new
layers are Xavier-uniform initialised and get the 10x / 20x learning rates of
``resnet38d.Net.parameter_groups``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from network import resnet38d
from tool.metrics import IGNORE_INDEX
from voc12.voc import NUM_CLASSES

HEAD_CHANNELS = 512
HEAD_DILATION = 12


class Net(resnet38d.Net):
    new_layer_names = ("fc8_seg_conv1", "fc8_seg_conv2")

    def __init__(self, width_mult: float = 1.0, num_classes: int = NUM_CLASSES):
        super().__init__(width_mult)
        d = HEAD_DILATION
        self.num_classes = num_classes
        mid = resnet38d.scaled(HEAD_CHANNELS, width_mult)
        self.fc8_seg_conv1 = nn.Conv2d(self.out_channels, mid, 3, padding=d, dilation=d, bias=True)
        self.fc8_seg_conv2 = nn.Conv2d(mid, num_classes, 3, padding=d, dilation=d, bias=True)
        for layer in (self.fc8_seg_conv1, self.fc8_seg_conv2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores on the stride-8 grid, (N, num_classes, ceil(H/8), ceil(W/8))."""
        conv6 = super().forward(x)
        return self.fc8_seg_conv2(F.relu(self.fc8_seg_conv1(conv6)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) at the input size, (N, num_classes, H, W)."""
        return F.interpolate(self.forward_logits(x), size=x.shape[2:], mode="bilinear", align_corners=False)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise cross-entropy, averaged over the pixels whose label is not ``ignore_index``.

    ``logits`` (N, C, H, W), ``labels`` (N, H, W) integer class indices. A batch
    without a single labelled pixel (an all-255 pseudo label cropped to padding)
    gives a zero loss that still depends on ``logits`` (so backward works), not NaN.
    """
    labels = labels.long()
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
