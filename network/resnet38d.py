"""ResNet38 backbone ("wide ResNet-38, a1", Wu et al. 2016), output stride 8 (docs/method.md#resnet38).

Pre-activation residual blocks: each block's BatchNorm + ReLU output feeds both
its residual path and, when the shape changes, its 1x1 shortcut. The last three
stages keep stride 8 and use dilation 2 and 4 instead.

Also here: the MXNet name mapping of its ImageNet weights (``convert_mxnet_to_torch``), which
:mod:`network.weights` reads ``.params`` files with.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from network.backbone import Backbone, scaled
from tool import imutils, mxnet_params

logger = logging.getLogger(__name__)

IMAGENET_PARAMS_MD5 = "ff21f45d6bf03284100dcbec571edfad"  # ilsvrc-cls_rna-a1_cls1000_ep-0001.params
FROZEN_MODULES = ("conv1a", "b2", "b2_1", "b2_2")


class _PreActivationBlock(nn.Module):
    """What both residual blocks share: BN-ReLU of the input, the shortcut and the first branch conv."""

    def _pre_activation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_bn_relu = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(x_bn_relu)
        return x_bn_relu, shortcut, self.conv_branch2a(x_bn_relu)


class ResBlock(_PreActivationBlock):
    """Two 3x3 convolutions, pre-activation; 1x1 shortcut when the shape changes."""

    def __init__(self, in_ch, mid_ch, out_ch, stride=1, first_dilation=None, dilation=1):
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_ch == out_ch and stride == 1
        # Registration order fixes the state-dict order of tests/data/resnet38_*_keys.txt.
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(
            in_ch, mid_ch, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (block output, the block's BN-ReLU'd input)."""
        x_bn_relu, shortcut, branch = self._pre_activation(x)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        return shortcut + branch, x_bn_relu


class ResBlockBottleneck(_PreActivationBlock):
    """1x1 -> 3x3 (dilated) -> 1x1 with Dropout2d, pre-activation, 1x1 shortcut."""

    def __init__(self, in_ch, out_ch, stride=1, dilation=1, dropout=0.0):
        super().__init__()
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_bn_relu, shortcut, branch = self._pre_activation(x)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return shortcut + branch, x_bn_relu


# ImageNet statistics used by the MXNet ResNet38 (RGB order), docs/method.md#resnet38.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def normalize(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB uint8 -> float32 ``(x / 255 - mean) / std`` with the ImageNet statistics: ResNet38's input."""
    return imutils.normalize(img, _MEAN, _STD)


def denormalize(img: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize` for display: float32 (H, W, 3) -> uint8, rounded and clipped."""
    return imutils.denormalize(img, _MEAN, _STD)


# --------------------------------------------------------------------------- weights

_MX_BLOCK = re.compile(r"^(res|bn)(\d)(a|b\d+)_branch(\w+?)_(weight|gamma|beta|moving_mean|moving_var)$")
_MX_BN7 = re.compile(r"^bn7_(gamma|beta|moving_mean|moving_var)$")
_MX_SUFFIX = {
    "weight": "weight",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_var": "running_var",
}


def mxnet_to_torch_name(mx_name: str) -> str | None:
    """Our name for an MXNet ResNet38 'a1' name (``arg:``/``aux:`` stripped); None for ``linear1000_*``."""
    if mx_name.startswith("linear1000_"):
        return None
    if mx_name == "conv1a_weight":
        return "conv1a.weight"
    if m := _MX_BN7.match(mx_name):
        return f"bn7.{_MX_SUFFIX[m.group(1)]}"
    if m := _MX_BLOCK.match(mx_name):
        kind, stage, block, branch, suffix = m.groups()
        module = f"b{stage}" if block == "a" else f"b{stage}_{block[1:]}"
        layer = "conv" if kind == "res" else "bn"
        return f"{module}.{layer}_branch{branch}.{_MX_SUFFIX[suffix]}"
    raise KeyError(f"cannot map MXNet parameter {mx_name!r} to a ResNet38 name")


def _md5(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert_mxnet_to_torch(path: str | Path, check_md5: bool = True) -> dict[str, torch.Tensor]:
    """Read an MXNet ResNet38 'a1' ``.params`` file into a state dict with our names.

    ``linear1000_*`` (the ImageNet classifier) is dropped; any other name that
    does not map raises a KeyError naming it.
    """
    path = Path(path)
    arrays = mxnet_params.load(path)
    if not isinstance(arrays, dict):
        raise ValueError(f"{path}: an unnamed MXNet array list; expected named ResNet38 parameters")
    if check_md5 and path.name == "ilsvrc-cls_rna-a1_cls1000_ep-0001.params" and _md5(path) != IMAGENET_PARAMS_MD5:
        logger.warning("%s: md5 differs from the published %s; the file may be corrupt", path, IMAGENET_PARAMS_MD5)
    state_dict = {}
    for full_name, array in arrays.items():
        name = full_name.split(":", 1)[1] if full_name.split(":", 1)[0] in ("arg", "aux") else full_name
        try:
            torch_name = mxnet_to_torch_name(name)
        except KeyError as e:
            raise KeyError(f"{path}: {e.args[0]}") from None
        if torch_name is not None:
            state_dict[torch_name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return state_dict


# --------------------------------------------------------------------------- the backbone


class Net(Backbone):
    """The backbone. ``forward(x)`` gives conv6 (N, 4096 * width_mult, H/8, W/8)."""

    feature_levels = {"conv4": 512, "conv5": 1024, "conv6": 4096}
    out_feature = "conv6"
    affinity_features = ("conv4", "conv5", "conv6")
    frozen_modules = FROZEN_MODULES
    frozen_batchnorm = True
    #: the input normalisation this network was trained with (ImageNet mean / std), used by every dataset and script
    normalize = staticmethod(normalize)
    denormalize = staticmethod(denormalize)
    weight_readers = {".params": convert_mxnet_to_torch}  # the ImageNet file of ademxapp

    def __init__(self, width_mult: float = 1.0):
        super().__init__(width_mult)

        def c(n):
            return scaled(n, width_mult)

        self.conv1a = nn.Conv2d(3, c(64), 3, padding=1, bias=False)
        self.b2 = ResBlock(c(64), c(128), c(128), stride=2)
        self.b2_1 = ResBlock(c(128), c(128), c(128))
        self.b2_2 = ResBlock(c(128), c(128), c(128))
        self.b3 = ResBlock(c(128), c(256), c(256), stride=2)
        self.b3_1 = ResBlock(c(256), c(256), c(256))
        self.b3_2 = ResBlock(c(256), c(256), c(256))
        self.b4 = ResBlock(c(256), c(512), c(512), stride=2)
        self.b4_1 = ResBlock(c(512), c(512), c(512))
        self.b4_2 = ResBlock(c(512), c(512), c(512))
        self.b4_3 = ResBlock(c(512), c(512), c(512))
        self.b4_4 = ResBlock(c(512), c(512), c(512))
        self.b4_5 = ResBlock(c(512), c(512), c(512))
        self.b5 = ResBlock(c(512), c(512), c(1024), first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(c(1024), c(512), c(1024), dilation=2)
        self.b5_2 = ResBlock(c(1024), c(512), c(1024), dilation=2)
        self.b6 = ResBlockBottleneck(c(1024), c(2048), dilation=4, dropout=0.3)
        self.b7 = ResBlockBottleneck(c(2048), c(4096), dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(c(4096))
        self.freeze()  # the stem and every BatchNorm affine

    def forward_as_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """conv4 (input of b5, BN-ReLU'd), conv5 (input of b6, BN-ReLU'd) and conv6."""
        x = self.conv1a(x)
        for name in ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5"):
            x, _ = getattr(self, name)(x)
        x, conv4 = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        conv6 = F.relu(self.bn7(x))
        return {"conv4": conv4, "conv5": conv5, "conv6": conv6}
