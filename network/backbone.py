"""The backbone contract: what every head and script asks of a backbone, written down once (docs/method.md#backbones).

A backbone is one file with one :class:`Backbone` subclass that sets the class attributes below and implements
``__init__`` (its layers, then :meth:`Backbone.freeze`) and :meth:`Backbone.forward_as_dict`. The heads of
:mod:`network.heads` read everything they need from it (the feature levels and their channel counts, the stride,
the options a head wants of the backbone), so ``build_network("my.module", head)`` composes a CAM, AffinityNet or
segmentation network on it; the weight reader (:mod:`network.weights`) reads the backbone's ImageNet files through
its :attr:`Backbone.weight_readers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


def scaled(channels: int, width_mult: float) -> int:
    """``channels`` at ``--width_mult`` (at least 1): the channel count of every layer of a reduced network."""
    return max(1, int(round(channels * width_mult)))


class Backbone(nn.Module):
    """A backbone at output stride :attr:`stride`. ``forward(x)`` gives its last feature level, :attr:`out_feature`.

    Class attributes a backbone sets:

    - ``stride``: the output stride of every feature level (8 here: the affinity grid, the walk's pooling);
    - ``feature_levels``: the named levels of :meth:`forward_as_dict`, full-width channel counts (``--width_mult``
      scales them: :meth:`feature_channels`);
    - ``out_feature``: the level the CAM and segmentation heads read; ``affinity_features``: the three levels
      AffinityNet embeds; ``affinity_group_norm``: GroupNorm group counts after AffinityNet's embeddings, or None;
    - ``head_options``: keyword arguments of the backbone's ``__init__`` per head kind (``cam``, ``aff``, ``seg``),
      e.g. VGG16's fc6 dilation;
    - ``frozen_modules``: layers never trained; ``frozen_batchnorm``: every BatchNorm in eval mode with its affine
      frozen (the reference's ResNet38);
    - ``param_layer_types``: the layers whose trainable weights and biases the optimiser gets;
    - ``normalize`` / ``denormalize``: the input normalisation ((H, W, 3) RGB uint8 -> float32) and its inverse;
    - ``weight_readers``: ``{file suffix: path -> state dict with our names}`` for ImageNet files
      (``.pth`` state dicts are read for every backbone).

    A head adds ``new_layer_names`` (trained from scratch, 10x / 20x lr) and ``head_layer_names`` (absent from
    ImageNet files; more than the new layers only where a head's layers train at the pretrained rates).
    """

    stride: ClassVar[int] = 8
    feature_levels: ClassVar[Mapping[str, int]] = {}
    out_feature: ClassVar[str] = ""
    affinity_features: ClassVar[tuple[str, str, str]] = ("", "", "")
    affinity_group_norm: ClassVar[tuple[int, int, int] | None] = None
    head_options: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    frozen_modules: ClassVar[tuple[str, ...]] = ()
    frozen_batchnorm: ClassVar[bool] = False
    param_layer_types: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv2d,)
    weight_readers: ClassVar[Mapping[str, Callable[[Path], dict[str, torch.Tensor]]]] = {}
    new_layer_names: ClassVar[tuple[str, ...]] = ()
    head_layer_names: ClassVar[tuple[str, ...]] = ()

    normalize: Callable[[np.ndarray], np.ndarray]
    denormalize: Callable[[np.ndarray], np.ndarray]

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        self.width_mult = width_mult

    def feature_channels(self, level: str) -> int:
        """Channels of feature level ``level`` at this network's width."""
        return scaled(self.feature_levels[level], self.width_mult)

    @property
    def out_channels(self) -> int:
        return self.feature_channels(self.out_feature)

    def freeze(self) -> None:
        """Freeze :attr:`frozen_modules` and, with :attr:`frozen_batchnorm`, every BatchNorm affine: once, at the end
        of ``__init__``; :meth:`train` then only keeps the BatchNorm statistics frozen."""
        for name in self.frozen_modules:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        if self.frozen_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)

    def forward_as_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every level of :attr:`feature_levels`, (N, C_level, H / stride, W / stride)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_as_dict(x)[self.out_feature]

    def train(self, mode: bool = True) -> Backbone:
        # With frozen BatchNorm the statistics stay those of the weights (the batch is small), so BN layers always
        # run in eval mode.
        super().train(mode)
        if self.frozen_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def _new_modules(self) -> set[int]:
        return {id(m) for name in self.new_layer_names for m in getattr(self, name).modules()}

    def init_backbone_from_scratch(self) -> None:
        """He-normal init of the backbone convolutions (zero biases), for training without ImageNet weights.

        PyTorch's default conv init shrinks activations by ~sqrt(3) per layer; with frozen BatchNorm nothing would
        undo that, and the last features of a randomly initialised ResNet38 are ~0 (no gradient reaches the head).
        """
        new_modules = self._new_modules()
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in new_modules:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.no_grad()
    def calibrate_batchnorm(self, forward_batches: Iterable[Callable[[], Any]]) -> None:
        """Set every BatchNorm's running statistics from data, for training without ImageNet weights.

        The reference freezes BN at its ImageNet statistics; from scratch those are the identity (mean 0, var 1),
        so they are estimated once, before training, as the cumulative average over ``forward_batches`` (callables
        that each run a forward pass) with BN in training mode. They stay frozen after. Without BN: nothing to do.
        """
        bns = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        if not bns:
            return
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
        """The trainable weights and biases of the :attr:`param_layer_types` layers, split as
        docs/method.md#ssenet-training: [pretrained weights, pretrained biases, new-layer weights, new-layer
        biases]; the new layers are those named in :attr:`new_layer_names`. One split for every network."""
        groups: list[list[nn.Parameter]] = [[], [], [], []]
        new_modules = self._new_modules()
        for m in self.modules():
            if not isinstance(m, self.param_layer_types):
                continue
            offset = 2 if id(m) in new_modules else 0
            if m.weight is not None and m.weight.requires_grad:
                groups[offset].append(m.weight)
            if m.bias is not None and m.bias.requires_grad:
                groups[offset + 1].append(m.bias)
        return groups

    def get_parameter_groups(self) -> list[list[nn.Parameter]]:
        """The published name of :meth:`parameter_groups`."""
        return self.parameter_groups()
