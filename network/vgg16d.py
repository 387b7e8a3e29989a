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

from network.resnet38d import scaled, split_parameter_groups
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


class Net(nn.Module):
    """The backbone. ``forward(x)`` gives conv5fc, (N, 1024 * width_mult, ceil(H/8), ceil(W/8))."""

    #: names of the layers a head adds on top of the backbone (trained from scratch)
    new_layer_names: tuple[str, ...] = ()
    #: every layer of the head (absent from ImageNet weights)
    head_layer_names: tuple[str, ...] = ()
    normalize = staticmethod(normalize)
    denormalize = staticmethod(denormalize)

    def __init__(self, width_mult: float = 1.0, fc6_dilation: int = 1):
        super().__init__()
        self.width_mult = width_mult

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

        for name in FROZEN_MODULES:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)

    @property
    def out_channels(self) -> int:
        return self.fc7.out_channels

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_as_dict(x)["conv5fc"]

    def train(self, mode: bool = True) -> Net:
        # Nothing to keep in eval mode (no BatchNorm); frozen layers were frozen in __init__.
        return super().train(mode)

    def init_backbone_from_scratch(self) -> None:
        """He-normal init of the backbone convolutions (zero biases), for training without ImageNet weights."""
        new_modules = {id(m) for name in self.new_layer_names for m in getattr(self, name).modules()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in new_modules:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def calibrate_batchnorm(self, forward_batches) -> None:
        """No BatchNorm to calibrate: the VGG16 networks train from scratch as they are."""

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """Trainable Conv2d and GroupNorm/BatchNorm weights and biases, split as the published VGG16 code:
        [pretrained weights, pretrained biases, new-layer weights, new-layer biases]."""
        return split_parameter_groups(self, (nn.Conv2d, nn.GroupNorm, nn.BatchNorm2d))

    def get_parameter_groups(self) -> list[list[nn.Parameter]]:
        """The published name of :meth:`parameter_groups`."""
        return self.parameter_groups()


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
