"""ResNet38 backbone ("wide ResNet-38, a1", Wu et al. 2016), output stride 8 (docs/method.md#resnet38).

Pre-activation residual blocks: each block's BatchNorm + ReLU output feeds both
its residual path and, when the shape changes, its 1x1 shortcut. The last three
stages keep stride 8 and use dilation 2 and 4 instead.

Also here: the MXNet name mapping (``convert_mxnet_to_torch``), the one weight
loader every script uses (``load_weights``) and the parameter-group split shared
by the heads (``parameter_groups``).
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

from tool import imutils, mxnet_params, torchutils
from tool.cli import InputError, MissingFileError

logger = logging.getLogger(__name__)

IMAGENET_PARAMS_MD5 = "ff21f45d6bf03284100dcbec571edfad"  # ilsvrc-cls_rna-a1_cls1000_ep-0001.params
FROZEN_MODULES = ("conv1a", "b2", "b2_1", "b2_2")


def scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


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


class Net(nn.Module):
    """The backbone. ``forward(x)`` gives conv6 (N, 4096 * width_mult, H/8, W/8)."""

    #: names of the layers a head adds on top of the backbone (trained from scratch, 10x / 20x lr)
    new_layer_names: tuple[str, ...] = ()
    #: every layer of the head (absent from ImageNet weights); more than new_layer_names only for VGG16 AffinityNet
    head_layer_names: tuple[str, ...] = ()
    #: the input normalisation this network was trained with (ImageNet mean / std), used by every dataset and script
    normalize = staticmethod(normalize)
    denormalize = staticmethod(denormalize)

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        self.width_mult = width_mult

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

        # Frozen once here: the stem and every BatchNorm affine. train() only has
        # to keep BN statistics frozen (eval mode).
        for name in FROZEN_MODULES:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)

    @property
    def out_channels(self) -> int:
        return self.bn7.num_features

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_as_dict(x)["conv6"]

    def train(self, mode: bool = True) -> Net:
        # BatchNorm statistics stay frozen while training (the batch is small and
        # the ImageNet statistics are kept), so BN layers always run in eval mode.
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def init_backbone_from_scratch(self) -> None:
        """He-normal init of the backbone convolutions, for training without ImageNet weights.

        PyTorch's default conv init shrinks activations by ~sqrt(3) per layer; with
        BatchNorm frozen there is nothing to undo that, and conv6 of a randomly
        initialised ResNet38 is ~0 (no gradient reaches the head).
        """
        new_modules = {id(m) for name in self.new_layer_names for m in getattr(self, name).modules()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in new_modules:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    @torch.no_grad()
    def calibrate_batchnorm(self, forward_batches) -> None:
        """Set every BatchNorm's running statistics from data, for training without ImageNet weights.

        The reference freezes BN at its ImageNet statistics; from scratch those are
        the identity (mean 0, var 1), so we estimate them once, before training, as
        the cumulative average over ``forward_batches()`` (an iterable of callables
        that each run a forward pass) with BN in training mode. They stay frozen after.
        """
        bns = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average
        was_training = self.training
        self.eval()
        for bn in bns:
            bn.train()
        for run_forward in forward_batches:
            run_forward()
        for bn in bns:
            bn.momentum = 0.1
        self.train(was_training)

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """Trainable Conv2d parameters split as docs/method.md#ssenet-training:
        [pretrained weights, pretrained biases, new-layer weights, new-layer biases]."""
        return split_parameter_groups(self, (nn.Conv2d,))

    def get_parameter_groups(self) -> list[list[nn.Parameter]]:
        """The published name of :meth:`parameter_groups`."""
        return self.parameter_groups()


def split_parameter_groups(model: nn.Module, layer_types: tuple[type, ...]) -> list[list[nn.Parameter]]:
    """The trainable weights and biases of ``model``'s ``layer_types`` modules as
    [pretrained weights, pretrained biases, new-layer weights, new-layer biases];
    the new layers are the modules named in ``model.new_layer_names``. One split for every network."""
    groups: list[list[nn.Parameter]] = [[], [], [], []]
    new_modules = {id(m) for name in model.new_layer_names for m in getattr(model, name).modules()}
    for m in model.modules():
        if not isinstance(m, layer_types):
            continue
        offset = 2 if id(m) in new_modules else 0
        if m.weight is not None and m.weight.requires_grad:
            groups[offset].append(m.weight)
        if m.bias is not None and m.bias.requires_grad:
            groups[offset + 1].append(m.bias)
    return groups


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


# ImageNet initialisation files: their classifier is not one of our heads.
INIT_SUFFIXES = (".params", ".caffemodel")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".params":
            return convert_mxnet_to_torch(path)
        if path.suffix == ".caffemodel":
            from network.vgg16d import convert_caffe_to_torch

            return convert_caffe_to_torch(path)
    except KeyError as e:  # a parameter name with no ResNet38 counterpart
        raise InputError(f"--weights {e.args[0]}") from None
    except ValueError as e:  # MXNetParamsError, CaffeModelError (truncated or foreign file): they name the file
        raise InputError(f"--weights {e}") from None
    obj = torchutils.load_torch_file(path, "--weights")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a resumable training checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"--weights {path}: expected a state dict (name -> tensor)")
    # DataParallel / DDP checkpoints carry a "module." prefix.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _check_class_count(model: nn.Module, path: Path, key: str, shape: torch.Size) -> None:
    """Refuse, in one line naming both counts, a checkpoint whose class head has another class count."""
    num_classes = getattr(model, "num_classes", None)
    own = model.state_dict()[key].shape
    head_prefixes = tuple(f"{n}." for n in model.new_layer_names)
    same_input = len(shape) == len(own) and tuple(shape[1:]) == tuple(own[1:])
    if num_classes is not None and key.startswith(head_prefixes) and own[0] == num_classes and same_input:
        raise InputError(
            f"--weights {path}: its head ({key}) has {shape[0]} classes, this network {num_classes} "
            "(weights of another --dataset?)"
        )


def load_weights(model: nn.Module, path: str | Path, allow_missing_head: bool = True) -> None:
    """Load ``--weights`` into ``model`` (any of our networks): MXNet ``.params``, Caffe
    ``.caffemodel`` or a ``.pth``/``.pt`` state dict.

    Accepted: our checkpoints, released PyTorch 0.4 ones (no ``num_batches_tracked``),
    ``module.``-prefixed DataParallel ones, and backbone-only files (ImageNet init).
    The ImageNet files (``.params``, ``.caffemodel``) never provide head weights:
    layers of theirs named like one of the model's heads are reported and ignored.
    Every backbone weight must be present. Head weights may be missing only when
    ``allow_missing_head`` (training from ImageNet weights); weights of another
    head (e.g. ``fc8`` when loading into AffinityNet) are reported and ignored.
    Raises InputError (a ValueError) naming the file on a shape mismatch, a missing weight or an unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--weights: file not found: {path}")
    state_dict = _read_state_dict(path)
    own = model.state_dict()
    head_prefixes = tuple(f"{n}." for n in (*model.new_layer_names, *getattr(model, "head_layer_names", ())))
    if path.suffix in INIT_SUFFIXES:
        foreign_head = sorted(k for k in state_dict if k.startswith(head_prefixes))
        if foreign_head:
            logger.info("%s: ignored the ImageNet file's %s (our head starts from scratch)", path, foreign_head)
            state_dict = {k: v for k, v in state_dict.items() if k not in foreign_head}

    unexpected = sorted(k for k in state_dict if k not in own)
    state_dict = {k: v for k, v in state_dict.items() if k in own}
    for k, v in state_dict.items():
        if v.shape != own[k].shape:
            _check_class_count(model, path, k, v.shape)
            raise InputError(
                f"--weights {path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)} "
                "(another --width_mult or --network?)"
            )
    missing = sorted(k for k in own if k not in state_dict and not k.endswith("num_batches_tracked"))
    missing_backbone = [k for k in missing if not k.startswith(head_prefixes)]
    missing_head = [k for k in missing if k.startswith(head_prefixes)]
    if missing_backbone:
        raise InputError(
            f"--weights {path}: {len(missing_backbone)} backbone weights missing (e.g. {missing_backbone[:3]}); "
            f"is this a checkpoint of {type(model).__module__} at the same width?"
        )
    if missing_head and not allow_missing_head:
        raise InputError(f"--weights {path}: head weights missing: {missing_head} (weights of another stage?)")
    model.load_state_dict(state_dict, strict=False)
    logger.info("loaded %s: %d tensors", path, len(state_dict))
    if missing_head:
        logger.info("head layers left at their initialisation: %s", missing_head)
    if unexpected:
        logger.info("ignored weights not in this model: %s", unexpected)
