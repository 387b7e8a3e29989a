"""CAM helpers: the one home of CAM normalisation (docs/method.md#ssenet-training, #ssenet-inference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The constant background score beside max-normalised CAMs in [0, 1] (reference: 0.2): ``infer_cls_ser.py``'s CAM
# predictions and ``infer_aff.py``'s random-walk start (docs/method.md#ssenet-inference, docs/method.md#random-walk).
BG_SCORE = 0.2


def max_norm(cam: torch.Tensor, eps: float = 1e-5, shift: bool = False) -> torch.Tensor:
    """Divide each (image, class) map of ``cam`` (..., H, W) by its spatial maximum + eps, after ReLU.

    ``shift=True`` is the training form of docs/method.md#ssenet-training,
    ``relu(relu(c) - eps) / (max relu(c) + eps)``, which zeroes near-zero
    activations; ``shift=False`` is the inference form of docs/method.md#ssenet-inference
    (``c / (max c + eps)`` for non-negative c).
    """
    cam = F.relu(cam)
    peak = cam.amax(dim=(-2, -1), keepdim=True)
    if shift:
        cam = F.relu(cam - eps)
    return cam / (peak + eps)
