"""A backbone is one file: this one defines a tiny backbone, and every stage trains and runs its three heads on it.

``--network tests.test_new_backbone`` names this module; :func:`network.build_network` finds :class:`Backbone`
here and puts on it the head each script needs (:mod:`network.heads`): no other file knows it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from network import build_network
from network.backbone import Backbone as BackboneContract
from network.backbone import scaled
from network.resnet38d import denormalize, normalize
from tests.test_datasets import Shapes3, run_every_stage, shapes_root  # noqa: F401 (a fixture)


class Backbone(BackboneContract):
    """Three convolutions: a stride-8 stem and two 3x3 layers, all three outputs on the stride-8 grid."""

    feature_levels = {"stem": 64, "mid": 128, "top": 256}
    out_feature = "top"
    affinity_features = ("stem", "mid", "top")
    frozen_modules = ("stem",)
    normalize = staticmethod(normalize)
    denormalize = staticmethod(denormalize)

    def __init__(self, width_mult: float = 1.0):
        super().__init__(width_mult)
        channels = [scaled(c, width_mult) for c in self.feature_levels.values()]
        self.stem = nn.Conv2d(3, channels[0], 8, stride=8)
        self.mid = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.top = nn.Conv2d(channels[1], channels[2], 3, padding=2, dilation=2)
        self.freeze()

    def forward_as_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stem = F.relu(self.stem(x))
        mid = F.relu(self.mid(stem))
        return {"stem": stem, "mid": mid, "top": F.relu(self.top(mid))}


def test_the_three_heads_are_built_from_the_contract():
    cam = build_network(__name__, 0.125, num_classes=3, head="cam")
    aff = build_network(__name__, 0.125, head="aff")
    seg = build_network(__name__, 0.125, num_classes=4, head="seg")
    x = torch.zeros(1, 3, 96, 80)
    assert cam(x).shape == (1, 3, 96, 80) and seg(x).shape == (1, 4, 96, 80)
    assert aff(x).shape[:2] == (1, 34) and aff.f8_5.in_channels == 32  # top: 256 channels at 1/8
    groups = [{id(p) for p in group} for group in cam.parameter_groups()]
    assert id(cam.fc8.weight) in groups[2] and id(cam.mid.weight) in groups[0] and id(cam.mid.bias) in groups[1]
    assert not any(id(cam.stem.weight) in group for group in groups)  # frozen


def test_every_stage_trains_and_runs_on_a_new_backbone(shapes_root, tmp_path, monkeypatch):  # noqa: F811
    from engine import datasets

    monkeypatch.setitem(datasets.DATASETS, "shapes3", Shapes3)
    result = run_every_stage("shapes3", shapes_root, tmp_path, shapes_root / "all.txt", network=__name__)
    assert list(result["IoU"]) == ["background", "disc", "bar", "cross"]
    for session, layer in (("cls", "fc8.weight"), ("aff", "f9.weight"), ("seg", "fc8_seg_conv2.weight")):
        state = torch.load(tmp_path / f"{session}.pth", weights_only=True)
        assert layer in state and "top.weight" in state  # the new backbone's layers under their own names
