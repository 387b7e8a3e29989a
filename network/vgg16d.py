"""DeepLab-LargeFOV VGG16 backbone ("vgg16_20M"), output stride 8 (docs/method.md#vgg16).

VGG16's thirteen 3x3 convolutions with ReLU; 3x3 max-pools with padding 1 and
stride 2 after blocks 1-3 and stride 1 after block 4, so the stride stays 8;
conv5_* dilated by 2; ``fc6`` a 3x3 convolution to 1024 channels with a
configurable dilation, then Dropout2d(0.5) and the 1x1 ``fc7``.

Its input normalisation is Caffe's, not ResNet38's: RGB -> BGR minus the
per-channel means, no scaling (:func:`normalize`). Every network carries its
own as ``Net.normalize``, and every dataset and script takes it from there.

ImageNet weights: DeepLab's ``vgg16_20M.caffemodel``, read without Caffe by
:func:`convert_caffe_to_torch` (layer names equal our module names).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from network.backbone import Backbone, scaled
from tool.caffemodel import read_caffemodel

# Caffe's VGG16 means, BGR order.
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)
_BGR_MEAN = np.asarray(CAFFE_BGR_MEAN, dtype=np.float64)
FROZEN_MODULES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2")
# (name, input channels, output channels) of the convolutions, by block; pools follow blocks 1-4.
BLOCKS = (
    (("conv1_1", 3, 64), ("conv1_2", 64, 64)),
    (("conv2_1", 64, 128), ("conv2_2", 128, 128)),
    (("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256)),
    (("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512)),
    (("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)),
)


def normalize(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> float32 (H, W, 3) BGR minus :data:`CAFFE_BGR_MEAN`, no scaling."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"normalize expects an (H, W, 3) RGB image, got shape {img.shape}")
    return (img[..., ::-1].astype(np.float64) - _BGR_MEAN).astype(np.float32)


def denormalize(img: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize` for display: float32 (H, W, 3) BGR -> uint8 RGB, rounded and clipped."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"denormalize expects an (H, W, 3) image, got shape {img.shape}")
    rgb = (img.astype(np.float64) + _BGR_MEAN)[..., ::-1]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def convert_caffe_to_torch(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights of a ``.caffemodel`` as ``{"<layer>.weight": tensor, "<layer>.bias": tensor}``.

    Every layer with blobs is returned (no prototxt needed): blob 0 is the
    weight, blob 1 the bias (legacy files store a bias as 1x1x1xN: flattened),
    further blobs ``<layer>.blob<i>``. Raises ``tool.caffemodel.CaffeModelError``
    (naming the file and byte offset) on a truncated or foreign file.
    """
    state_dict = {}
    for layer, blobs in read_caffemodel(path).items():
        for i, blob in enumerate(blobs):
            if i == 0:
                state_dict[f"{layer}.weight"] = torch.from_numpy(blob)
            elif i == 1:
                state_dict[f"{layer}.bias"] = torch.from_numpy(blob.reshape(-1))
            else:
                state_dict[f"{layer}.blob{i}"] = torch.from_numpy(blob)
    return state_dict


class Net(Backbone):
    """The backbone. ``forward(x)`` gives conv5fc, (N, 1024 * width_mult, ceil(H/8), ceil(W/8))."""

    feature_levels = {"conv4": 512, "conv5": 512, "conv5fc": 1024}
    out_feature = "conv5fc"
    affinity_features = ("conv4", "conv5", "conv5fc")
    affinity_group_norm = (8, 16, 32)  # the published VGG16 AffinityNet normalises its embeddings
    # fc6's dilation per head: 1 for SSENet, 4 for AffinityNet (as published), 12 for DeepLab-LargeFOV.
    head_options = {"cam": {"fc6_dilation": 1}, "aff": {"fc6_dilation": 4}, "seg": {"fc6_dilation": 12}}
    frozen_modules = FROZEN_MODULES
    param_layer_types = (nn.Conv2d, nn.GroupNorm, nn.BatchNorm2d)  # the published split counts the GroupNorms
    normalize = staticmethod(normalize)
    denormalize = staticmethod(denormalize)
    weight_readers = {".caffemodel": convert_caffe_to_torch}  # DeepLab's vgg16_20M.caffemodel

    def __init__(self, width_mult: float = 1.0, fc6_dilation: int = 1):
        super().__init__(width_mult)

        def c(n):
            return n if n == 3 else scaled(n, width_mult)

        # Registration order: conv1_1 ... conv5_3, pools, fc6, fc7 (the published module order).
        for block, convs in enumerate(BLOCKS, start=1):
            for name, in_ch, out_ch in convs:
                dilation = 2 if block == 5 else 1
                setattr(self, name, nn.Conv2d(c(in_ch), c(out_ch), 3, padding=dilation, dilation=dilation))
            if block <= 4:
                setattr(self, f"pool{block}", nn.MaxPool2d(kernel_size=3, stride=2 if block < 4 else 1, padding=1))
        self.fc6 = nn.Conv2d(c(512), c(1024), 3, padding=fc6_dilation, dilation=fc6_dilation)
        self.drop6 = nn.Dropout2d(0.5)
        self.fc7 = nn.Conv2d(c(1024), c(1024), 1)
        self.freeze()

    def forward_as_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """conv4 (ReLU'd conv4_3, before pool4), conv5 (ReLU'd conv5_3) and conv5fc (ReLU'd fc7)."""
        feats = {}
        for block, convs in enumerate(BLOCKS, start=1):
            for name, _, _ in convs:
                x = F.relu(getattr(self, name)(x))
            if block >= 4:
                feats[f"conv{block}"] = x
            if block <= 4:
                x = getattr(self, f"pool{block}")(x)
        x = self.drop6(F.relu(self.fc6(x)))
        feats["conv5fc"] = F.relu(self.fc7(x))
        return feats
