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
DeepLab-v1 head with trainable BatchNorm instead; docs/scripts.md, train_seg.py). The new
layers are Xavier-uniform initialised and get the 10x / 20x learning rates of
the backbone's ``parameter_groups``. The head is :class:`network.heads.SegHead`, the loss is here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from network import resnet38d
from network.heads import SegHead
from tool.metrics import IGNORE_INDEX


class Net(SegHead, resnet38d.Net):
    pass


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
