"""What the inference scripts share: the model loading and the multi-scale, flipped forward pass.

``infer_cls_ser.infer_cams`` and ``infer_seg.infer_probs`` differ only in what
they do with each scale's output (docs/method.md#ssenet-inference,
docs/method.md#segmentation); the loop over scales and flips is here.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from network import build_network
from network.resnet38d import load_weights
from tool import torchutils


def load_model(network: str, width_mult: float, weights: str, device: torch.device) -> torch.nn.Module:
    """The network module ``network`` at ``width_mult`` with ``weights`` (head included), in eval mode on ``device``."""
    model = build_network(network, width_mult)
    load_weights(model, weights, allow_missing_head=False)
    return model.eval().to(device)


def msf_outputs(
    model: torch.nn.Module, inputs: list[torch.Tensor], device: torch.device, amp: bool = False, flip: bool = True
) -> Iterator[torch.Tensor]:
    """The model's output for each (2, 3, h_s, w_s) scale pair of ``inputs`` (the image and its flip; only the
    image when ``flip`` is False): (B, C, h_s, w_s), in the autocast dtype."""
    for pair in inputs:
        batch = pair if flip else pair[:1]
        with torchutils.autocast(device, amp):
            yield model(batch.to(device, non_blocking=True))


def unflip_sum(maps: torch.Tensor) -> torch.Tensor:
    """``maps[0] + maps[1]`` un-flipped (horizontal): the two halves of one scale pair summed in the image's frame."""
    return maps[0] + maps[1].flip(-1)
