"""ResNet38 as a plain image classifier, trained from scratch: the CPU demo's stand-in for ImageNet pretraining.

The published pipeline starts both SSENet and AffinityNet from ImageNet weights and keeps every BatchNorm
frozen at the ImageNet statistics. No such weights exist for the toy data, and a randomly initialised
ResNet38 with frozen BatchNorm hardly learns in the few hundred steps a CPU demo can afford. So the demo
first trains this network on a separate generated classification set (as ImageNet is separate from VOC),
the way an ImageNet classifier is trained: BatchNorm in training mode, every layer trainable, SGD with
momentum. Its backbone weights (BatchNorm statistics included) are then passed as ``--weights`` to
``train_cls_ser.py`` and ``train_aff.py``, which run exactly as on VOC (docs/method.md#toy-data-and-the-cpu-demo).

The classifier head ``fc_pretrain`` (1x1 conv, the score is its spatial mean, i.e. global average pooling +
linear) is dropped when the weights are loaded into another network, like ``linear1000`` of the ImageNet file.
Train it with ``python train_cls_ser.py --network network.resnet38_pretrain --ser_weight 0 --from_scratch``.
"""

from __future__ import annotations

import torch
from torch import nn

from network import resnet38d
from voc12.voc import NUM_FG_CLASSES


class Net(resnet38d.Net):
    new_layer_names = ("fc_pretrain",)

    def __init__(self, width_mult: float = 1.0, num_classes: int = NUM_FG_CLASSES):
        super().__init__(width_mult)
        for p in self.parameters():  # undo the backbone's freezing: everything trains here
            p.requires_grad_(True)
        self.num_classes = num_classes
        self.fc_pretrain = nn.Conv2d(self.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc_pretrain.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class score maps (N, num_classes, H/8, W/8); their spatial mean is the image-level score."""
        return self.fc_pretrain(super().forward(x))

    def train(self, mode: bool = True) -> Net:
        # BatchNorm learns its statistics here (nn.Module.train, not the backbone's frozen-BN override).
        nn.Module.train(self, mode)
        return self

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """Every layer trains from scratch here, so all share one learning rate: [weights, biases, [], []]
        (the conv weights and BatchNorm scales, then the BatchNorm shifts)."""
        groups = super().parameter_groups()
        weights, biases = groups[0] + groups[2], groups[1] + groups[3]
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                weights.append(m.weight)
                biases.append(m.bias)
        return [weights, biases, [], []]
