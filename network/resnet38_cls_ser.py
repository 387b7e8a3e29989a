"""SSENet classification network: ResNet38 + a 1x1 CAM head (docs/method.md#ssenet-network).

The output is the class activation map itself, upsampled to the input size, so
the scale-equivariance loss (docs/method.md#ssenet-training) can compare maps of two input
scales directly and the image-level score is its spatial mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from network import resnet38d
from network.heads import CamHead
from tool.camutils import max_norm


class Net(CamHead, resnet38d.Net):
    """SSENet's CAM network on ResNet38: :class:`network.heads.CamHead` (dropout, ``fc8`` to the classes)."""


def downscale(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Bilinear resize by ``rate`` as PyTorch 0.4.1 did it, where the published numbers come from.

    There ``F.interpolate(x, scale_factor=r, mode="bilinear")`` gave the output size floor(in * r) and sampled
    as if only that size had been given, with ``align_corners=False`` (docs/method.md#ssenet-training). Today
    that is ``recompute_scale_factor=True``; without it the sampling grid uses 1/r itself and differs.
    """
    return F.interpolate(x, scale_factor=rate, mode="bilinear", align_corners=False, recompute_scale_factor=True)


def classification_loss(cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multilabel soft-margin loss of the CAM's spatial mean (the image-level score)."""
    return F.multilabel_soft_margin_loss(cam.mean(dim=(2, 3)), labels)


def ser_loss(cam_small: torch.Tensor, cam_rescaled: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Scale-equivariance regularisation: mean squared difference of the max-normalised
    CAMs of the downscaled input and of the downscaled CAM, absent classes zeroed."""
    mask = labels[:, :, None, None]  # (N, 20, 1, 1)
    diff = max_norm(cam_small, shift=True) * mask - max_norm(cam_rescaled, shift=True) * mask
    return torch.mean(diff**2)


def ssenet_loss(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, branch_rate: float = 0.3, ser_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = (L_cls + L_cls_s) / 2 + ser_weight * L_ser`` (docs/method.md#ssenet-training).

    ``ser_weight = 0`` is the baseline: no scale branch, ``L = L_cls``.
    Returns the loss and its parts (``cam`` and ``cam_small`` for visualisation).
    """
    cam = model(images)  # (N, 20, H, W)
    loss_cls = classification_loss(cam, labels)
    if ser_weight == 0:
        return loss_cls, {"loss_cls": loss_cls, "cam": cam}
    images_small = downscale(images, branch_rate)
    cam_small = model(images_small)  # (N, 20, floor(rH), floor(rW))
    cam_rescaled = downscale(cam, branch_rate)  # same size as cam_small: the head upsamples to the input size
    loss_cls_small = classification_loss(cam_small, labels)
    loss_ser = ser_loss(cam_small, cam_rescaled, labels)
    loss = (loss_cls + loss_cls_small) / 2 + ser_weight * loss_ser
    parts = {
        "loss_cls": loss_cls,
        "loss_cls_s": loss_cls_small,
        "loss_ser": loss_ser,
        "cam": cam,
        "cam_small": cam_small,
    }
    return loss, parts
