"""AffinityNet on ResNet38 (Ahn & Kwak, CVPR 2018; docs/method.md#affinitynet).

Features from three depths (conv4, conv5, conv6) are embedded, concatenated and compared pairwise
(:class:`network.heads.AffinityHead`): the affinity of two stride-8 grid pixels is ``exp(-mean_c |f_i - f_j|)``
for every pair within the radius-5 neighbourhood of ``tool.randomwalk``. The loss is here.
"""

from __future__ import annotations

import torch

from network import resnet38d
from network.heads import AffinityHead


class Net(AffinityHead, resnet38d.Net):
    pass


def affinity_loss(
    aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor, neg: torch.Tensor, eps: float = 1e-5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = L_bg / 4 + L_fg / 4 + L_neg / 2`` (docs/method.md#affinitynet).

    ``L_bg``, ``L_fg``: mean ``-log(a + eps)`` over background / foreground positive
    pairs; ``L_neg``: mean ``-log(1 + eps - a)`` over negative pairs. All tensors
    are (N, n_pairs, n_from); the means run over the whole batch.
    """
    loss_bg = torch.sum(-bg_pos * torch.log(aff + eps)) / (torch.sum(bg_pos) + eps)
    loss_fg = torch.sum(-fg_pos * torch.log(aff + eps)) / (torch.sum(fg_pos) + eps)
    loss_neg = torch.sum(-neg * torch.log(1.0 + eps - aff)) / (torch.sum(neg) + eps)
    loss = loss_bg / 4 + loss_fg / 4 + loss_neg / 2
    return loss, {"loss_bg": loss_bg, "loss_fg": loss_fg, "loss_neg": loss_neg}
